//! `sluice-load`: an RTMP load generator on one mio poll loop, no async
//! runtime. One publisher (a generated, stamped stream) and N players ramped
//! over a given time; every player parses what it gets and checks every frame
//! (see `check.rs`); the server's CPU and memory come from /proc. Prints a
//! human summary and writes a JSON record. `--kind vod` plays files a
//! server plays on demand instead, with no publisher, and measures whether
//! each player is delivered in real time (`vod.rs`).
//!
//! ```text
//!  T0: publish started ─ ramp ─► all players started ─ settle ─► window ─► publisher stops ─ drain ─► report
//!                                                              (CPU, bytes, RSS, rates measured here)
//! ```

mod check;
mod flv;
mod hls;
mod proto;
mod stats;
mod stream;
mod tls;
mod vod;

use bytes::{Bytes, BytesMut};
use check::Checker;
use getopts::Options;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use proto::{PlayerKind, Proto, Role, Up};
use serde_json::{json, Value};
use stats::{wall_ns, Histogram};
use std::collections::VecDeque;
use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use stream::{Generator, Shape};

const PUBLISHER: Token = Token(usize::MAX - 1);
/// Bytes read per `read` call; a few frames at 3 Mbit/s.
const READ_CHUNK: usize = 64 * 1024;
/// How long the publisher may take to be accepted.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Most error messages kept for the report.
const MAX_ERRORS: usize = 20;

#[derive(Debug, Clone)]
struct Opts {
    addr: SocketAddr,
    /// Where the RTMP players connect: `addr` unless another server (an
    /// edge pulling the stream from `addr`) is to be played from.
    play_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    app: String,
    name: String,
    players: usize,
    kind: PlayerKind,
    idle: bool,
    publish: bool,
    shape: Shape,
    speed: f64,
    lead: Duration,
    ramp: Duration,
    settle: Duration,
    duration: Duration,
    drain: Duration,
    server_pid: Option<u32>,
    metrics: Option<SocketAddr>,
    /// Read at most once per this interval (see `--read-interval`).
    read_interval: Option<Duration>,
    /// In flight at each edge of the window by design (`--edge-slack-ms`).
    edge_slack: Duration,
    label: String,
    json: Option<String>,
    per_player: bool,
    quiet: bool,
    hls: hls::HlsOpts,
    /// `--kind vod`: `{i}` in the name takes the player's index modulo this.
    files: usize,
    /// `--kind vod`: the SetBufferLength each player sends, ms.
    buffer_ms: u32,
}

fn options() -> Options {
    let mut o = Options::new();
    o.optopt(
        "",
        "addr",
        "RTMP server address [127.0.0.1:1935]",
        "HOST:PORT",
    );
    o.optopt(
        "",
        "play-addr",
        "RTMP server the players connect to, e.g. an edge pulling from --addr [--addr]",
        "HOST:PORT",
    );
    o.optopt(
        "",
        "http",
        "HTTP-FLV server address (for --kind http-flv)",
        "HOST:PORT",
    );
    o.optopt(
        "",
        "tls-addr",
        "RTMPS server address (for --kind rtmps; the publisher uses --addr)",
        "HOST:PORT",
    );
    o.optopt("", "app", "application [live]", "APP");
    o.optopt("", "name", "stream name [bench]", "NAME");
    o.optopt("n", "players", "players [10]", "N");
    o.optopt(
        "",
        "kind",
        "player kind: rtmp | rtmps | http-flv | ll-hls | vod [rtmp] (vod: RTMP players of a file --name that a server plays on demand, no publisher; real-time delivery measured)",
        "KIND",
    );
    o.optopt(
        "",
        "files",
        "--kind vod: `{i}` in --name becomes the player's index modulo N, so players spread over N files [1]",
        "N",
    );
    o.optopt(
        "",
        "buffer-ms",
        "--kind vod: the buffer length each player announces after play (SetBufferLength), as ffmpeg's -rtmp_buffer [3000]",
        "MS",
    );
    hls::add_options(&mut o);
    o.optflag(
        "",
        "idle",
        "players only connect (handshake + connect), for memory per idle connection",
    );
    o.optflag("", "no-publish", "no publisher (someone else publishes)");
    o.optopt("", "bitrate", "total bitrate, bit/s [3000000]", "BPS");
    o.optopt("", "fps", "video frames per second [30]", "N");
    o.optopt("", "gop", "frames per keyframe interval [60]", "N");
    o.optopt(
        "",
        "speed",
        "publish at this multiple of real time [1]",
        "X",
    );
    o.optopt(
        "",
        "lead",
        "seconds of stream before the first player [1]",
        "SECS",
    );
    o.optopt("", "ramp", "seconds over which players start [2]", "SECS");
    o.optopt(
        "",
        "settle",
        "seconds after the ramp before measuring [2]",
        "SECS",
    );
    o.optopt(
        "",
        "duration",
        "seconds measured (the steady window) [10]",
        "SECS",
    );
    o.optopt(
        "",
        "drain",
        "seconds after the publisher stops for players to catch up [2]",
        "SECS",
    );
    o.optopt(
        "",
        "edge-slack-ms",
        "frames a server holds back by design (its write budget, ms) count as in flight at the window's edges for the rate check [0: one frame]",
        "MS",
    );
    o.optopt(
        "",
        "read-interval",
        "players read at most once per this many ms, sleeping in between (fewer, larger reads; adds up to that to the latency measured) [0: as data arrives]",
        "MS",
    );
    o.optopt(
        "",
        "server-pid",
        "server process: CPU seconds and RSS over the window",
        "PID",
    );
    o.optopt(
        "",
        "metrics",
        "a Sluice server's HTTP address: write calls and write waits from its /metrics over the window",
        "HOST:PORT",
    );
    o.optopt(
        "",
        "label",
        "name of the server under test, for the record",
        "NAME",
    );
    o.optopt(
        "",
        "json",
        "write the JSON record here ('-': stdout)",
        "FILE",
    );
    o.optflag(
        "",
        "per-player",
        "include one record per player in the JSON",
    );
    o.optflag("q", "quiet", "no human summary");
    o.optflag("h", "help", "print this help");
    o
}

fn secs(m: &getopts::Matches, name: &str, default: f64) -> Result<Duration, String> {
    let v = match m.opt_str(name) {
        Some(s) => s
            .parse::<f64>()
            .map_err(|e| format!("--{name} {s:?}: {e}"))?,
        None => default,
    };
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("--{name} must be a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn num<T: std::str::FromStr>(m: &getopts::Matches, name: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match m.opt_str(name) {
        Some(s) => s.parse().map_err(|e| format!("--{name} {s:?}: {e}")),
        None => Ok(default),
    }
}

fn resolve(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s}: no address"))
}

fn parse_opts(args: &[String]) -> Result<Option<Opts>, String> {
    let o = options();
    let m = o.parse(args).map_err(|e| e.to_string())?;
    if m.opt_present("h") {
        print!("{}", o.usage("Usage: sluice-load [options]\n\nDrives an RTMP server with one publisher and N checked players."));
        return Ok(None);
    }
    let kind = match m.opt_str("kind") {
        Some(k) => PlayerKind::parse(&k).ok_or(format!(
            "--kind {k:?}: rtmp, rtmps, http-flv, ll-hls or vod"
        ))?,
        None => PlayerKind::Rtmp,
    };
    let vod = kind == PlayerKind::Vod;
    let http_addr = m.opt_str("http").map(|s| resolve(&s)).transpose()?;
    if kind != PlayerKind::Rtmp && !vod && http_addr.is_none() {
        return Err(format!("--kind {} needs --http HOST:PORT", kind.name()));
    }
    let tls_addr = m.opt_str("tls-addr").map(|s| resolve(&s)).transpose()?;
    if kind == PlayerKind::Rtmps && tls_addr.is_none() {
        return Err("--kind rtmps needs --tls-addr HOST:PORT".into());
    }
    let d = Shape::default();
    let shape = Shape {
        fps: num(&m, "fps", d.fps)?.max(1),
        gop: num(&m, "gop", d.gop)?.max(1),
        bitrate: num(&m, "bitrate", d.bitrate)?,
        ..d
    };
    let speed: f64 = num(&m, "speed", 1.0)?;
    if !(speed.is_finite() && speed > 0.0) {
        return Err("--speed must be positive".into());
    }
    let addr = resolve(&m.opt_str("addr").unwrap_or_else(|| "127.0.0.1:1935".into()))?;
    Ok(Some(Opts {
        addr,
        play_addr: m.opt_str("play-addr").map_or(Ok(addr), |s| resolve(&s))?,
        http_addr,
        tls_addr,
        app: m.opt_str("app").unwrap_or_else(|| "live".into()),
        name: m.opt_str("name").unwrap_or_else(|| "bench".into()),
        players: num(&m, "players", 10)?,
        kind,
        idle: m.opt_present("idle"),
        // Files play without a publisher.
        publish: !m.opt_present("no-publish") && !vod,
        shape,
        speed,
        lead: secs(&m, "lead", 1.0)?,
        ramp: secs(&m, "ramp", 2.0)?,
        settle: secs(&m, "settle", 2.0)?,
        duration: secs(&m, "duration", 10.0)?.max(Duration::from_millis(100)),
        drain: secs(&m, "drain", 2.0)?,
        server_pid: m
            .opt_str("server-pid")
            .map(|s| s.parse().map_err(|e| format!("--server-pid: {e}")))
            .transpose()?,
        metrics: m.opt_str("metrics").map(|s| resolve(&s)).transpose()?,
        edge_slack: Duration::from_millis(num(&m, "edge-slack-ms", 0u64)?),
        read_interval: match num(&m, "read-interval", 0u64)? {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        },
        label: m.opt_str("label").unwrap_or_else(|| "server".into()),
        json: m.opt_str("json"),
        per_player: m.opt_present("per-player"),
        quiet: m.opt_present("q"),
        hls: hls::HlsOpts::from_matches(&m),
        files: num(&m, "files", 1usize)?.max(1),
        buffer_ms: num(&m, "buffer-ms", vod::DEFAULT_BUFFER_MS)?,
    }))
}

/// One TCP connection of the generator.
struct Conn {
    sock: TcpStream,
    /// RTMPS: the TLS session the protocol's bytes go through.
    tls: Option<Box<rustls::ClientConnection>>,
    proto: Proto,
    inbuf: BytesMut,
    out: VecDeque<Bytes>,
    connected: bool,
    ready: bool,
    /// Why it ended, if it did.
    closed: Option<String>,
    /// It ended after the publisher had stopped (the server ending the stream).
    closed_after_stop: bool,
    bytes_in: u64,
    check: Checker,
    /// (bytes_in, video frames) when the window opened.
    at_window: (u64, u64),
    /// (bytes_in, video frames) when the window closed.
    at_window_end: (u64, u64),
    /// Largest out queue (publisher backlog), bytes.
    max_backlog: usize,
    /// `--kind vod`: what it received and when (instead of `check`).
    vod: Option<vod::Progress>,
}

impl Conn {
    fn new(sock: TcpStream, proto: Proto, now_ns: u64) -> Self {
        Self {
            sock,
            tls: None,
            proto,
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            out: VecDeque::new(),
            connected: false,
            ready: false,
            closed: None,
            closed_after_stop: false,
            bytes_in: 0,
            check: Checker::new(now_ns),
            at_window: (0, 0),
            at_window_end: (0, 0),
            max_backlog: 0,
            vod: None,
        }
    }

    fn close(&mut self, why: String) {
        if self.closed.is_none() {
            self.closed = Some(why);
            let _ = self.sock.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Sends what the protocol has queued, as far as the socket takes it.
    fn flush(&mut self) {
        while let Some(b) = self.proto.poll_transmit() {
            self.out.push_back(b);
        }
        if self.connected && self.closed.is_none() {
            self.write_out();
        }
        let backlog: usize = self.out.iter().map(Bytes::len).sum();
        self.max_backlog = self.max_backlog.max(backlog);
    }

    fn write_out(&mut self) {
        if self.tls.is_some() {
            return self.write_tls();
        }
        while !self.out.is_empty() {
            let slices: Vec<IoSlice<'_>> =
                self.out.iter().take(64).map(|b| IoSlice::new(b)).collect();
            match self.sock.write_vectored(&slices) {
                Ok(0) => {
                    self.close("write returned 0".into());
                    return;
                }
                Ok(mut n) => {
                    while n > 0 {
                        let front = self.out.front_mut().expect("wrote more than queued");
                        if n >= front.len() {
                            n -= front.len();
                            self.out.pop_front();
                        } else {
                            let _ = front.split_to(n);
                            n = 0;
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.close(format!("write: {e}"));
                    return;
                }
            }
        }
    }

    /// RTMPS: queued bytes into the TLS session, its records to the socket.
    fn write_tls(&mut self) {
        let Some(tls) = self.tls.as_mut() else { return };
        while let Some(b) = self.out.pop_front() {
            if let Err(e) = tls.writer().write_all(&b) {
                return self.close(format!("tls write: {e}"));
            }
        }
        while tls.wants_write() {
            match tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return self.close(format!("tls write: {e}")),
            }
        }
    }

    /// RTMPS: TLS records from the socket, their plaintext to the protocol.
    fn read_tls(&mut self, ups: &mut Vec<Up>) -> io::Result<()> {
        loop {
            let Some(tls) = self.tls.as_mut() else {
                return Ok(());
            };
            match tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    self.close("closed by server".into());
                    return Ok(());
                }
                Ok(n) => self.bytes_in += n as u64,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let plain = match tls.process_new_packets() {
                Ok(state) => state.plaintext_bytes_to_read(),
                Err(e) => {
                    self.close(format!("tls: {e}"));
                    return Ok(());
                }
            };
            if plain > 0 {
                let at = self.inbuf.len();
                self.inbuf.resize(at + plain, 0);
                tls.reader().read_exact(&mut self.inbuf[at..])?;
                if let Err(e) = self.proto.handle_input(&mut self.inbuf, ups) {
                    self.close(e.to_string());
                    return Ok(());
                }
            }
            // The handshake's replies, and the protocol's.
            self.flush();
        }
    }

    /// On a writable event before the connection is up: is it up now?
    fn check_connected(&mut self) {
        if self.connected || self.closed.is_some() {
            return;
        }
        match self.sock.take_error() {
            Ok(Some(e)) | Err(e) => return self.close(format!("connect: {e}")),
            Ok(None) => {}
        }
        match self.sock.peer_addr() {
            Ok(_) => {
                self.connected = true;
                let _ = self.sock.set_nodelay(true);
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => {}
            Err(e) => self.close(format!("connect: {e}")),
        }
    }

    /// Reads until the socket is drained (a short read is enough under
    /// edge-triggered epoll: more data is a new edge), feeding the protocol.
    fn read(&mut self, ups: &mut Vec<Up>) -> io::Result<()> {
        if self.tls.is_some() {
            return self.read_tls(ups);
        }
        loop {
            match recv_into(&self.sock, &mut self.inbuf, READ_CHUNK) {
                Ok(0) => {
                    self.close("closed by server".into());
                    return Ok(());
                }
                Ok(n) => {
                    self.bytes_in += n as u64;
                    if let Err(e) = self.proto.handle_input(&mut self.inbuf, ups) {
                        self.close(e.to_string());
                        return Ok(());
                    }
                    if n < READ_CHUNK {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Receives up to `max` bytes onto the end of `buf`, into its spare
/// capacity: no intermediate buffer, no zeroing.
fn recv_into(sock: &TcpStream, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    buf.reserve(max);
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(max);
    // SAFETY: recv writes at most `len` bytes into the spare capacity, which
    // is valid for writes of `len` bytes and is not read here; exactly the
    // `n` bytes recv reports written become part of `buf` by `set_len`.
    let n = unsafe { libc::recv(sock.as_raw_fd(), spare.as_mut_ptr().cast(), len, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the first `n` bytes of the spare capacity were initialized by recv.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Where the run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    AwaitingPublish,
    Ramping,
    Settling,
    Window,
    Draining,
    Done,
}

/// A sample of the server and of ourselves.
#[derive(Debug, Clone, Default)]
struct Sample {
    at: Option<Instant>,
    server_ticks: Option<u64>,
    /// The part of `server_ticks` in the server's own code (utime).
    server_user_ticks: Option<u64>,
    /// The server's time on CPU, nanoseconds (schedstat).
    server_sched_ns: Option<u64>,
    self_ticks: Option<u64>,
    /// The server's (write syscalls, bytes written).
    server_writes: Option<(u64, u64)>,
    /// A Sluice server's own counters (`--metrics`).
    metrics: Option<stats::ServerMetrics>,
    published_video: u32,
    published_bytes: u64,
}

impl Sample {
    fn take(
        pid: Option<u32>,
        metrics: Option<SocketAddr>,
        published_video: u32,
        published_bytes: u64,
    ) -> Self {
        let server_times = pid.and_then(|p| stats::cpu_times(Some(p)));
        Self {
            metrics: metrics.and_then(stats::ServerMetrics::fetch),
            at: Some(Instant::now()),
            server_ticks: server_times.map(|(user, system)| user + system),
            server_user_ticks: server_times.map(|(user, _)| user),
            server_sched_ns: pid.and_then(stats::sched_ns),
            self_ticks: stats::cpu_ticks(None),
            server_writes: pid.and_then(stats::write_calls),
            published_video,
            published_bytes,
        }
    }
}

struct Run {
    opts: Opts,
    /// RTMPS players' TLS configuration (`--kind rtmps`).
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    poll: Poll,
    publisher: Option<Conn>,
    players: Vec<Conn>,
    gen: Generator,
    t0: Option<Instant>,
    started_at: Instant,
    phase: Phase,
    pub_video_frames: u32,
    pub_audio_frames: u32,
    pub_last_video: Option<u32>,
    pub_last_audio: Option<u32>,
    pub_bytes: u64,
    pub_stopped: bool,
    latency: Histogram,
    win_start: Sample,
    win_end: Sample,
    rss_before: Option<u64>,
    rss_peak: u64,
    hwm: u64,
    next_rss: Instant,
    connect_errors: u64,
    errors: Vec<String>,
    hls: Option<hls::Viewers>,
    /// `--kind vod`: when the players' next per-second check is due.
    next_vod_sample: Option<Instant>,
}

impl Run {
    fn new(opts: Opts) -> io::Result<Self> {
        let gen = Generator::new(opts.shape);
        let poll = Poll::new()?;
        let hls = match (opts.kind, opts.http_addr) {
            (PlayerKind::LlHls, Some(a)) => Some(hls::Viewers::new(
                poll.registry(),
                a,
                &opts.app,
                &opts.name,
                opts.hls.clone(),
                1 << 40,
            )?),
            _ => None,
        };
        Ok(Self {
            tls: (opts.kind == PlayerKind::Rtmps).then(tls::client_config),
            poll,
            hls,
            publisher: None,
            players: Vec::with_capacity(opts.players),
            gen,
            t0: None,
            started_at: Instant::now(),
            phase: Phase::AwaitingPublish,
            pub_video_frames: 0,
            pub_audio_frames: 0,
            pub_last_video: None,
            pub_last_audio: None,
            pub_bytes: 0,
            pub_stopped: false,
            latency: Histogram::new(),
            win_start: Sample::default(),
            win_end: Sample::default(),
            rss_before: None,
            rss_peak: 0,
            hwm: 0,
            next_rss: Instant::now(),
            connect_errors: 0,
            errors: Vec::new(),
            next_vod_sample: None,
            opts,
        })
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }

    fn start_publisher(&mut self) -> io::Result<()> {
        let mut sock = TcpStream::connect(self.opts.addr)?;
        self.poll.registry().register(
            &mut sock,
            PUBLISHER,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let host = self.opts.addr.to_string();
        let proto = Proto::rtmp(Role::Publisher, &host, &self.opts.app, &self.opts.name, 1);
        self.publisher = Some(Conn::new(sock, proto, wall_ns()));
        Ok(())
    }

    fn start_player(&mut self) {
        let i = self.players.len();
        let (addr, proto) = match self.opts.kind {
            PlayerKind::Rtmp | PlayerKind::Rtmps => {
                let role = if self.opts.idle {
                    Role::Idle
                } else {
                    Role::Player
                };
                let addr = match self.opts.kind {
                    PlayerKind::Rtmps => self.opts.tls_addr.expect("checked in parse_opts"),
                    _ => self.opts.play_addr,
                };
                let host = addr.to_string();
                (
                    addr,
                    Proto::rtmp(
                        role,
                        &host,
                        &self.opts.app,
                        &self.opts.name,
                        1000 + i as u64,
                    ),
                )
            }
            PlayerKind::Vod => {
                let addr = self.opts.play_addr;
                let name = vod::expand_name(&self.opts.name, i, self.opts.files);
                let role = if self.opts.idle {
                    Role::Idle
                } else {
                    Role::VodPlayer {
                        buffer_ms: self.opts.buffer_ms,
                    }
                };
                let host = addr.to_string();
                (
                    addr,
                    Proto::rtmp(role, &host, &self.opts.app, &name, 1000 + i as u64),
                )
            }
            PlayerKind::LlHls => {
                if let Some(h) = self.hls.as_mut() {
                    h.start_viewer();
                }
                return;
            }
            PlayerKind::HttpFlv => {
                let a = self.opts.http_addr.expect("checked in parse_opts");
                (
                    a,
                    Proto::http_flv(&a.to_string(), &self.opts.app, &self.opts.name),
                )
            }
        };
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.connect_errors += 1;
                    self.error(format!("player {i}: register: {e}"));
                }
                let mut c = Conn::new(sock, proto, wall_ns());
                if self.opts.kind == PlayerKind::Vod {
                    c.vod = Some(vod::Progress::default());
                }
                if let Some(config) = &self.tls {
                    match tls::connect(config) {
                        Ok(t) => c.tls = Some(t),
                        Err(e) => c.close(format!("tls: {e}")),
                    }
                }
                self.players.push(c);
            }
            Err(e) => {
                self.connect_errors += 1;
                self.error(format!("player {i}: connect: {e}"));
                // Keep indices aligned with tokens: a placeholder that is closed.
                if let Ok(sock) = TcpStream::connect(addr) {
                    let mut c = Conn::new(sock, proto, wall_ns());
                    if self.opts.kind == PlayerKind::Vod {
                        c.vod = Some(vod::Progress::default());
                    }
                    c.close(format!("connect: {e}"));
                    self.players.push(c);
                } else {
                    // Out of descriptors: stop starting players.
                    self.opts.players = self.players.len();
                }
            }
        }
    }

    /// Players (or LL-HLS viewers) started so far.
    fn started(&self) -> usize {
        self.players.len() + self.hls.as_ref().map_or(0, hls::Viewers::len)
    }

    fn since_t0(&self) -> Duration {
        self.t0.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Queues every frame that is due, stamped now.
    fn publish_due(&mut self) {
        let Some(t0) = self.t0 else { return };
        if self.pub_stopped {
            return;
        }
        let Some(p) = self.publisher.as_mut() else {
            return;
        };
        if !p.ready {
            return;
        }
        let elapsed_ns = (t0.elapsed().as_nanos() as f64 * self.opts.speed) as u64;
        let mut sent = false;
        while self.gen.next_due_ns() <= elapsed_ns {
            let f = self.gen.next(wall_ns());
            self.pub_bytes += f.payload.len() as u64;
            match f.kind {
                sluice::protocol::session::MediaKind::Video => {
                    self.pub_last_video = Some(self.pub_video_frames);
                    self.pub_video_frames += 1;
                }
                _ => {
                    self.pub_last_audio = Some(self.pub_audio_frames);
                    self.pub_audio_frames += 1;
                }
            }
            p.proto.send_media(f.kind, f.timestamp, f.payload);
            sent = true;
        }
        if sent {
            p.flush();
        }
    }

    fn time_to_next_frame(&self) -> Duration {
        let Some(t0) = self.t0 else {
            return Duration::from_millis(10);
        };
        if self.pub_stopped || !self.opts.publish {
            return Duration::from_millis(20);
        }
        let due = Duration::from_nanos((self.gen.next_due_ns() as f64 / self.opts.speed) as u64);
        due.saturating_sub(t0.elapsed())
    }

    fn sample_rss(&mut self) {
        let Some(pid) = self.opts.server_pid else {
            return;
        };
        if Instant::now() < self.next_rss {
            return;
        }
        self.next_rss = Instant::now() + Duration::from_millis(200);
        if let Some((rss, hwm)) = stats::rss_bytes(pid) {
            self.rss_peak = self.rss_peak.max(rss);
            self.hwm = hwm;
        }
    }

    fn advance_phase(&mut self) {
        let o = &self.opts.clone();
        let t = self.since_t0();
        let ramp_end = o.lead + o.ramp;
        let win_start = ramp_end + o.settle;
        let win_end = win_start + o.duration;
        let end = win_end + o.drain;
        match self.phase {
            Phase::AwaitingPublish => {
                let ready = self.publisher.as_ref().is_some_and(|p| p.ready) || !o.publish;
                if ready {
                    self.t0 = Some(Instant::now());
                    if let Some(pid) = o.server_pid {
                        self.rss_before = stats::rss_bytes(pid).map(|r| r.0);
                    }
                    self.phase = Phase::Ramping;
                    if o.publish {
                        let headers = self.gen.headers();
                        let p = self.publisher.as_mut().expect("publishing");
                        for h in headers {
                            p.proto.send_media(h.kind, h.timestamp, h.payload);
                        }
                        p.flush();
                    }
                } else if self.started_at.elapsed() > PUBLISH_TIMEOUT {
                    let why = self
                        .publisher
                        .as_ref()
                        .and_then(|p| p.closed.clone())
                        .unwrap_or_else(|| "no NetStream.Publish.Start".into());
                    self.error(format!("publisher: {why}"));
                    self.phase = Phase::Done;
                }
            }
            Phase::Ramping => {
                if t >= o.lead {
                    let n = o.players;
                    let due = if o.ramp.is_zero() {
                        n
                    } else {
                        (((t - o.lead).as_secs_f64() / o.ramp.as_secs_f64()) * n as f64).ceil()
                            as usize
                    };
                    while self.started() < due.min(n) {
                        self.start_player();
                    }
                }
                if t >= ramp_end && self.started() >= self.opts.players {
                    self.phase = Phase::Settling;
                }
            }
            Phase::Settling => {
                if t >= win_start {
                    self.win_start = Sample::take(
                        o.server_pid,
                        o.metrics,
                        self.pub_video_frames,
                        self.pub_bytes,
                    );
                    for p in &mut self.players {
                        p.at_window = (p.bytes_in, p.check.video.frames);
                    }
                    if let Some(h) = self.hls.as_mut() {
                        h.window_start();
                    }
                    if o.kind == PlayerKind::Vod {
                        self.next_vod_sample = Some(Instant::now() + Duration::from_secs(1));
                    }
                    self.phase = Phase::Window;
                }
            }
            Phase::Window => {
                self.sample_rss();
                if t < win_end && self.next_vod_sample.is_some_and(|n| Instant::now() >= n) {
                    self.sample_vod(false);
                    self.next_vod_sample = self.next_vod_sample.map(|n| n + Duration::from_secs(1));
                }
                if t >= win_end {
                    self.sample_vod(true);
                    self.win_end = Sample::take(
                        o.server_pid,
                        o.metrics,
                        self.pub_video_frames,
                        self.pub_bytes,
                    );
                    self.sample_rss();
                    // Sluice's batch files are its memory too, though not
                    // in its RSS (in-memory files it does not map): their
                    // bytes at the window's end (`--metrics`), about what
                    // the players' queues hold, steady over a run.
                    if let Some(m) = &self.win_end.metrics {
                        self.rss_peak += m.batch_file_bytes;
                        self.hwm += m.batch_file_bytes;
                    }
                    for p in &mut self.players {
                        p.at_window_end = (p.bytes_in, p.check.video.frames);
                    }
                    if let Some(h) = self.hls.as_mut() {
                        h.window_end();
                    }
                    self.pub_stopped = true;
                    self.phase = Phase::Draining;
                }
            }
            Phase::Draining => {
                if t >= end {
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
    }

    /// `--kind vod`: every player's per-second check (`end`: the last,
    /// at the window's end).
    fn sample_vod(&mut self, end: bool) {
        let now = wall_ns();
        for p in &mut self.players {
            let (connected, open) = (p.check.started_ns, p.closed.is_none());
            if let Some(v) = p.vod.as_mut() {
                v.sample(now, connected, open, end);
            }
        }
    }

    fn handle_ups(
        check: &mut Checker,
        vod: &mut Option<vod::Progress>,
        ready: &mut bool,
        ups: &mut Vec<Up>,
        lat: &mut Histogram,
    ) {
        if ups.is_empty() {
            return;
        }
        let now = wall_ns();
        for u in ups.drain(..) {
            match u {
                Up::Ready => {
                    *ready = true;
                    check.ready_ns = Some(now);
                    if let Some(v) = vod.as_mut() {
                        v.on_start(now);
                    }
                }
                Up::Media {
                    kind,
                    timestamp,
                    payload,
                } => match vod.as_mut() {
                    Some(v) => v.on_media(kind, timestamp, payload.len()),
                    None => check.on_media(kind, &payload, now, lat),
                },
            }
        }
    }

    fn run(&mut self) -> io::Result<()> {
        if self.opts.publish {
            self.start_publisher()?;
        }
        let mut events = Events::with_capacity(4096);
        let mut ups = Vec::new();
        let mut turn = Instant::now();
        while self.phase != Phase::Done {
            // --read-interval: the players read at most once per interval,
            // so what arrived meanwhile is read in one larger read, and no
            // arrival wakes this thread while it sleeps. The publisher
            // still sends on time.
            if let Some(interval) = self.opts.read_interval {
                let rest = interval
                    .saturating_sub(turn.elapsed())
                    .min(self.time_to_next_frame());
                if !rest.is_zero() {
                    std::thread::sleep(rest);
                }
                turn = Instant::now();
            }
            self.advance_phase();
            self.publish_due();
            if let Some(h) = self.hls.as_mut() {
                h.tick();
            }
            let timeout = self.time_to_next_frame().min(Duration::from_millis(20));
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let stopped = self.pub_stopped;
            for ev in events.iter() {
                if let Some(h) = self.hls.as_mut() {
                    if let Some(i) = h.owns(ev.token()) {
                        h.on_event(i, ev, stopped);
                        continue;
                    }
                }
                let conn = if ev.token() == PUBLISHER {
                    match self.publisher.as_mut() {
                        Some(p) => p,
                        None => continue,
                    }
                } else {
                    match self.players.get_mut(ev.token().0) {
                        Some(p) => p,
                        None => continue,
                    }
                };
                if conn.closed.is_some() {
                    continue;
                }
                if ev.is_writable() || ev.is_readable() {
                    conn.check_connected();
                }
                if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                    if let Err(e) = conn.read(&mut ups) {
                        conn.close(format!("read: {e}"));
                    }
                    Self::handle_ups(
                        &mut conn.check,
                        &mut conn.vod,
                        &mut conn.ready,
                        &mut ups,
                        &mut self.latency,
                    );
                }
                conn.flush();
                if conn.closed.is_some() && stopped {
                    conn.closed_after_stop = true;
                }
            }
        }
        Ok(())
    }

    fn report(&self) -> Value {
        let o = &self.opts;
        let tck = stats::clock_ticks();
        let win = match (self.win_start.at, self.win_end.at) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let delta = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => Some((b.saturating_sub(a)) as f64 / tck),
            _ => None,
        };
        let server_cpu = delta(self.win_start.server_ticks, self.win_end.server_ticks);
        let server_user = delta(
            self.win_start.server_user_ticks,
            self.win_end.server_user_ticks,
        );
        let server_cpu_sched = match (self.win_start.server_sched_ns, self.win_end.server_sched_ns)
        {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e9),
            _ => None,
        };
        let self_cpu = delta(self.win_start.self_ticks, self.win_end.self_ticks);
        let writes = match (self.win_start.server_writes, self.win_end.server_writes) {
            (Some(a), Some(b)) => Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1))),
            _ => None,
        };
        let own = match (&self.win_start.metrics, &self.win_end.metrics) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };
        let own_calls = own.map(|(a, b)| b.write_calls.saturating_sub(a.write_calls));
        let own_bytes = own.map(|(a, b)| b.bytes_out.saturating_sub(a.bytes_out));
        let own_turns = own.map(|(a, b)| b.iterations.saturating_sub(a.iterations));
        let wait = own.and_then(|(a, b)| stats::wait_window(a, b));
        let bytes_window: u64 = self
            .players
            .iter()
            .map(|p| p.at_window_end.0 - p.at_window.0)
            .sum();
        // Without a publisher of its own (--no-publish: another process
        // publishes, as when several generators share one load), the frames
        // the window should hold are the shape's: fps x speed x seconds.
        let pub_window = if o.publish {
            self.win_end
                .published_video
                .saturating_sub(self.win_start.published_video)
        } else {
            (win * f64::from(o.shape.fps) * o.speed).round() as u32
        };
        let mut join = Histogram::new();
        let mut complete = 0usize;
        let (mut missing, mut ooo, mut corrupt, mut before_key) = (0u64, 0u64, 0u64, 0u64);
        let (mut vframes, mut aframes) = (0u64, 0u64);
        let mut min_ratio: Option<f64> = None;
        let mut max_lag: Option<u64> = None;
        let mut ready = 0;
        let mut joined = 0;
        let mut disconnected = 0;
        let mut slow = 0usize;
        let mut per_player = Vec::new();
        let slack_frames = 1 + (o.edge_slack.as_secs_f64() * f64::from(o.shape.fps)).ceil() as u64;
        let pub_last_video = if o.publish { self.pub_last_video } else { None };
        let pub_last_audio = if o.publish { self.pub_last_audio } else { None };
        for (i, p) in self.players.iter().enumerate() {
            let c = &p.check;
            if p.ready {
                ready += 1;
            }
            if c.joined() || p.vod.as_ref().is_some_and(|v| v.max_ts.is_some()) {
                joined += 1;
            }
            if let Some(j) = c.join_us() {
                join.record(j);
            }
            // A close after the publisher stopped is the server ending the
            // stream, not a failure; frames it cut short still count as missing.
            let failed_close = p.closed.is_some() && !p.closed_after_stop;
            if failed_close {
                disconnected += 1;
            }
            let miss = c.missing_through(pub_last_video, pub_last_audio);
            missing += miss;
            ooo += c.video.out_of_order + c.audio.out_of_order;
            corrupt += c.corrupt;
            before_key += c.before_key;
            vframes += c.video.frames;
            aframes += c.audio.frames;
            if let Some(v) = &p.vod {
                vframes += v.video_frames;
                aframes += v.audio_frames;
            }
            let ok = if o.idle {
                p.ready && p.closed.is_none()
            } else if let Some(v) = &p.vod {
                p.ready && !failed_close && v.kept_up()
            } else {
                c.joined()
                    && miss == 0
                    && c.video.out_of_order + c.audio.out_of_order == 0
                    && c.corrupt == 0
                    && !failed_close
            };
            if ok {
                complete += 1;
            }
            let got = p.at_window_end.1 - p.at_window.1;
            let ratio = (pub_window > 0).then(|| got as f64 / f64::from(pub_window));
            // Held: within 1% of the publish rate, give or take the frames
            // in flight at the edges of the window: one, and those a server
            // holds back by design (--edge-slack-ms, its write budget).
            if pub_window > 0 && ((got + slack_frames) as f64) < 0.99 * f64::from(pub_window) {
                slow += 1;
            }
            if let Some(r) = ratio {
                min_ratio = Some(min_ratio.map_or(r, |m: f64| m.min(r)));
            }
            if !o.idle {
                let lag = match (self.win_end.published_video.checked_sub(1), c.video.last) {
                    (Some(sent), Some(got)) => u64::from(sent.saturating_sub(got)),
                    (Some(sent), None) => u64::from(sent) + 1,
                    _ => 0,
                };
                max_lag = Some(max_lag.map_or(lag, |m| m.max(lag)));
            }
            if o.per_player {
                let mut record = json!({
                    "id": i,
                    "ready": p.ready,
                    "bytes": p.bytes_in,
                    "payload_bytes": c.payload_bytes,
                    "video_frames": c.video.frames,
                    "audio_frames": c.audio.frames,
                    "first_video_seq": c.video.last.map(|l| u64::from(l) + 1 - c.video.frames.min(u64::from(l) + 1)),
                    "last_video_seq": c.video.last,
                    "last_audio_seq": c.audio.last,
                    "missing": miss,
                    "out_of_order": c.video.out_of_order + c.audio.out_of_order,
                    "corrupt": c.corrupt,
                    "headers": c.got_metadata && c.got_video_config && c.got_audio_config,
                    "join_ms": c.join_us().map(|u| u as f64 / 1000.0),
                    "max_latency_ms": c.max_latency_us as f64 / 1000.0,
                    "window_rate_ratio": ratio,
                    "closed": p.closed,
                    "ok": ok,
                });
                if let (Some(v), Some(r)) = (&p.vod, record.as_object_mut()) {
                    r.insert("vod".into(), v.json());
                }
                per_player.push(record);
            }
        }
        let n = self.players.len();
        let gen_util = self_cpu.map(|c| if win > 0.0 { c / win } else { 0.0 });
        let saturated = gen_util.is_some_and(|u| u > 0.9);
        let held = o.players > 0
            && n == o.players
            && complete == n
            && self.connect_errors == 0
            && (o.idle || o.kind == PlayerKind::Vod || (min_ratio.is_some() && slow == 0));
        let ms = |us: u64| us as f64 / 1000.0;
        let gb = bytes_window as f64 / 1e9;
        let rss_per = match (self.rss_before, n) {
            (Some(b), n) if n > 0 && self.rss_peak > 0 => {
                Some((self.rss_peak.saturating_sub(b)) as f64 / n as f64)
            }
            _ => None,
        };
        let pub_backlog = self.publisher.as_ref().map_or(0, |p| p.max_backlog);
        let mut errors = self.errors.clone();
        let mut closed: Vec<String> = self
            .players
            .iter()
            .filter_map(|p| p.closed.clone())
            .collect();
        closed.sort();
        closed.dedup();
        for c in closed.into_iter().take(5) {
            errors.push(format!("player closed: {c}"));
        }
        if let Some(why) = self.publisher.as_ref().and_then(|p| p.closed.clone()) {
            errors.push(format!("publisher closed: {why}"));
        }
        let mut record = json!({
            "tool": "sluice-load",
            "version": env!("CARGO_PKG_VERSION"),
            "label": o.label,
            "kind": o.kind.name(),
            "idle": o.idle,
            "players": o.players,
            "config": {
                "addr": o.addr.to_string(),
                "play_addr": o.play_addr.to_string(),
                "http_addr": o.http_addr.map(|a| a.to_string()),
                "app": o.app, "name": o.name,
                "bitrate_bps": o.shape.bitrate, "fps": o.shape.fps, "gop": o.shape.gop,
                "speed": o.speed,
                "read_interval_ms": o.read_interval.map(|d| d.as_millis() as u64),
                "edge_slack_ms": o.edge_slack.as_millis() as u64,
                "lead_s": o.lead.as_secs_f64(), "ramp_s": o.ramp.as_secs_f64(),
                "settle_s": o.settle.as_secs_f64(), "duration_s": o.duration.as_secs_f64(),
                "drain_s": o.drain.as_secs_f64(),
            },
            "publisher": {
                "video_frames": self.pub_video_frames,
                "audio_frames": self.pub_audio_frames,
                "payload_bytes": self.pub_bytes,
                "max_backlog_bytes": pub_backlog,
                "window_video_frames": pub_window,
                "window_bitrate_bps": if win > 0.0 { (self.win_end.published_bytes - self.win_start.published_bytes) as f64 * 8.0 / win } else { 0.0 },
            },
            "counts": {
                "started": n,
                "connect_errors": self.connect_errors,
                "ready": ready,
                "joined": joined,
                "disconnected": disconnected,
                "complete": complete,
            },
            "frames": {
                "video": vframes,
                "audio": aframes,
                "missing": missing,
                "out_of_order": ooo,
                "corrupt": corrupt,
                "video_before_first_keyframe": before_key,
            },
            "join_ms": {
                "count": join.count(),
                "p50": ms(join.quantile(0.5)),
                "p99": ms(join.quantile(0.99)),
                "max": ms(join.max()),
            },
            "latency_ms": {
                "count": self.latency.count(),
                "mean": self.latency.mean() / 1000.0,
                "p50": ms(self.latency.quantile(0.5)),
                "p90": ms(self.latency.quantile(0.9)),
                "p99": ms(self.latency.quantile(0.99)),
                "p999": ms(self.latency.quantile(0.999)),
                "max": ms(self.latency.max()),
            },
            "window": {
                "seconds": win,
                "bytes_delivered": bytes_window,
                "gbit_per_s": if win > 0.0 { gb * 8.0 / win } else { 0.0 },
                "min_rate_ratio": min_ratio,
                "players_below_rate": slow,
                "max_lag_frames": max_lag,
            },
            "server": {
                "pid": o.server_pid,
                "cpu_seconds": server_cpu,
                "cpu_util": server_cpu.map(|c| if win > 0.0 { c / win } else { 0.0 }),
                "cpu_s_per_gb": server_cpu.and_then(|c| (gb > 0.0).then(|| c / gb)),
                // Of cpu_seconds, the time in the server's own code (utime).
                "user_seconds": server_user,
                "user_share": match (server_user, server_cpu) {
                    (Some(u), Some(c)) if c > 0.0 => Some(u / c),
                    _ => None,
                },
                // The same from schedstat: nanoseconds, not 10 ms ticks.
                "cpu_seconds_sched": server_cpu_sched,
                "cpu_util_sched": server_cpu_sched.map(|c| if win > 0.0 { c / win } else { 0.0 }),
                "rss_before_bytes": self.rss_before,
                "rss_peak_bytes": (self.rss_peak > 0).then_some(self.rss_peak),
                "rss_hwm_bytes": (self.hwm > 0).then_some(self.hwm),
                "rss_per_player_bytes": rss_per,
                "write_syscalls": writes.map(|w| w.0),
                // write/writev only: send()/sendmsg() are not counted in /proc/PID/io.
                "bytes_per_write_syscall": writes.and_then(|(n, b)| (n > 0).then(|| b as f64 / n as f64)),
                // Sluice's own counters (--metrics): every sendmsg counted.
                "write_calls": own_calls,
                "write_calls_per_player_s": own_calls.and_then(|n| (win > 0.0 && o.players > 0).then(|| n as f64 / win / o.players as f64)),
                // Loop iterations (wake-ups) per second, all workers.
                "loop_iterations_per_s": own_turns.and_then(|n| (win > 0.0).then(|| n as f64 / win)),
                "bytes_per_write_call": own_calls.zip(own_bytes).and_then(|(n, b)| (n > 0).then(|| b as f64 / n as f64)),
                // How long queued media waited in the server for its write
                // (bucket upper bounds, ms), over the window; the longest
                // since the server started.
                "write_wait_ms": wait.map(|(n, p50, p99, max)| json!({
                    "count": n, "p50_le": finite(p50), "p99_le": finite(p99), "max_le": finite(max),
                    "max_since_start": self.win_end.metrics.as_ref().map(|m| m.wait_max_s * 1000.0),
                })),
            },
            "generator": {
                "cpu_seconds": self_cpu,
                "cpu_util": gen_util,
                "saturated": saturated,
            },
            "held": held,
            "errors": errors,
            "per_player": if o.per_player { Value::Array(per_player) } else { Value::Null },
        });
        if o.kind == PlayerKind::Vod {
            record["vod"] = vod::report(
                self.players.iter().filter_map(|p| p.vod.as_ref()),
                bytes_window,
                win,
            );
            record["config"]["files"] = json!(o.files);
            record["config"]["buffer_ms"] = json!(o.buffer_ms);
        }
        record
    }
}

/// A bound for JSON (which has no infinity): above every bucket is null.
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn summary(r: &Value) -> String {
    let f = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => format!("{x:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    };
    let mut s = String::new();
    s += &format!(
        "{} ({}): {} players{}; {} ready, {} joined, {} complete, {} disconnected, {} connect errors\n",
        r["label"].as_str().unwrap_or("?"),
        r["kind"].as_str().unwrap_or("?"),
        r["players"],
        if r["idle"] == true { " (idle)" } else { "" },
        r["counts"]["ready"],
        r["counts"]["joined"],
        r["counts"]["complete"],
        r["counts"]["disconnected"],
        r["counts"]["connect_errors"],
    );
    s += &format!(
        "  frames: {} video, {} audio; missing {}, out of order {}, corrupt {}\n",
        r["frames"]["video"],
        r["frames"]["audio"],
        r["frames"]["missing"],
        r["frames"]["out_of_order"],
        r["frames"]["corrupt"]
    );
    s += &format!(
        "  window {} s: {} Gbit/s delivered, min rate ratio {}, max lag {} frames\n",
        f(&r["window"]["seconds"]),
        f(&r["window"]["gbit_per_s"]),
        f(&r["window"]["min_rate_ratio"]),
        f(&r["window"]["max_lag_frames"])
    );
    s += &format!(
        "  server: {} CPU-s ({} of a core, {} in its own code), {} CPU-s/GB, {} bytes per write syscall, RSS peak {} (before {}, {} per player)\n",
        f(&r["server"]["cpu_seconds"]),
        f(&r["server"]["cpu_util"]),
        f(&r["server"]["user_share"]),
        f(&r["server"]["cpu_s_per_gb"]),
        f(&r["server"]["bytes_per_write_syscall"]),
        f(&r["server"]["rss_peak_bytes"]),
        f(&r["server"]["rss_before_bytes"]),
        f(&r["server"]["rss_per_player_bytes"])
    );
    if !r["server"]["write_calls"].is_null() {
        let w = &r["server"]["write_wait_ms"];
        s += &format!(
            "  server's own: {} write calls ({} per player a second), {} bytes per write call, {} loop turns a second; write wait ms (bucket bounds): p50 <= {} p99 <= {} max <= {} (longest since start {})\n",
            f(&r["server"]["write_calls"]),
            f(&r["server"]["write_calls_per_player_s"]),
            f(&r["server"]["bytes_per_write_call"]),
            f(&r["server"]["loop_iterations_per_s"]),
            f(&w["p50_le"]),
            f(&w["p99_le"]),
            f(&w["max_le"]),
            f(&w["max_since_start"]),
        );
    }
    s += &format!(
        "  latency ms: p50 {} p99 {} p99.9 {} max {} ({} samples); join ms: p50 {} p99 {} max {}\n",
        f(&r["latency_ms"]["p50"]),
        f(&r["latency_ms"]["p99"]),
        f(&r["latency_ms"]["p999"]),
        f(&r["latency_ms"]["max"]),
        r["latency_ms"]["count"],
        f(&r["join_ms"]["p50"]),
        f(&r["join_ms"]["p99"]),
        f(&r["join_ms"]["max"])
    );
    s += &format!(
        "  generator: {} of a core{}\n  held: {}\n",
        f(&r["generator"]["cpu_util"]),
        if r["generator"]["saturated"] == true {
            " (SATURATED: server figures are lower bounds)"
        } else {
            ""
        },
        r["held"]
    );
    s += &hls::summary(r);
    s += &vod::summary(r);
    if let Some(errs) = r["errors"].as_array() {
        for e in errs {
            s += &format!("  error: {}\n", e.as_str().unwrap_or_default());
        }
    }
    s
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_opts(&args) {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-load: {e}");
            return ExitCode::from(2);
        }
    };
    let mut run = match Run::new(opts.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = run.run() {
        run.error(format!("event loop: {e}"));
    }
    let mut report = run.report();
    if let Some(h) = &run.hls {
        h.amend(&mut report);
    }
    if !opts.quiet {
        eprint!("{}", summary(&report));
    }
    let text = serde_json::to_string_pretty(&report).expect("serializable");
    match opts.json.as_deref() {
        Some("-") => println!("{text}"),
        Some(path) => {
            if let Err(e) = std::fs::write(path, text + "\n") {
                eprintln!("sluice-load: {path}: {e}");
                return ExitCode::FAILURE;
            }
        }
        None => {}
    }
    ExitCode::SUCCESS
}
