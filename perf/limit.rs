//! `sluice-limit`: the physical limit of fan-out on this machine. Writes the
//! same pre-built frames the server would send (the generated 3 Mbit/s
//! stream, chunked as RTMP with the same chunk size) to N loopback sockets,
//! with one `write`/`writev` per socket per frame wakeup and nothing else: no
//! parsing, no queues beyond a resend offset, no poll for writability. Reports
//! the writer's CPU-seconds per GB delivered; a child process (pinned to
//! another core with `taskset` when it exists) reads and discards.
//!
//! Modes (`--mode`): `frame` writes each frame as one contiguous buffer
//! (headers and payload copied together once, up front) with write(2);
//! `send` does the same with send(2), which skips the VFS layer: the floor;
//! `writev` writes the server's wire form (chunk headers interleaved with
//! payload slices, as iovecs); `sendmsg` writes the same iovecs with
//! sendmsg(2); `sendfile` appends each wakeup's frames once to an in-memory
//! file and sends each socket its range with sendfile(2), which references
//! the file's pages instead of copying the bytes, as Sluice does with its
//! batch files; `chunk` makes one `write` per RTMP chunk, as nginx-rtmp does.
//!
//! `--merge-audio` holds each audio frame until the next video frame and
//! writes them together, which is what Sluice's default write budget does
//! (video at once, audio with the next video frame): the floor for that
//! policy's write sizes. `--batch K` writes K frames per wakeup, a larger
//! budget's shape. Both need a mode that writes everything queued in one
//! call (`writev`, `sendmsg` or `sendfile`).
//!
//! `--touch-lines N` updates one word in each of N cache lines of memory
//! that belongs to the socket before each write: with a thousand sockets,
//! none of it is cached when its turn comes, as a server's per-player state
//! is not. It prices a server's own state around the same writes, its misses
//! and what they evict of the kernel's (perf/README.md).
//!
//! `--player-replies`: the writer sends a few bytes on each socket first and
//! the reader answers them at once, as an RTMP player answers the server's
//! handshake and commands. A socket that has received and then sent within
//! the delayed-acknowledgement time is in the kernel's interactive mode,
//! where reading does not send the acknowledgement; it goes later, from the
//! softirq that delivers the next segment or from the delayed-ACK timer,
//! both on the writer's core. A silent reader's acknowledgements are sent
//! by its reads, on its own core. `sluice-load`'s RTMP players are of the
//! first kind; without this flag the limit leaves the acknowledgements,
//! about 40 % of the loopback packets, to the reader's core.

#[allow(dead_code)]
#[path = "load/stats.rs"]
mod stats;
#[allow(dead_code)]
#[path = "load/stream.rs"]
mod stream;

use bytes::Bytes;
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;
use sluice::protocol::chunk::{wire_form, Message};
use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice, Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, ExitCode, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Frame,
    Send,
    Writev,
    SendMsg,
    Chunk,
    SendFile,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Frame => "frame",
            Mode::Send => "send",
            Mode::Writev => "writev",
            Mode::SendMsg => "sendmsg",
            Mode::Chunk => "chunk",
            Mode::SendFile => "sendfile",
        }
    }
}

/// One frame ready to send: the pieces one syscall writes.
struct Wire {
    /// For `frame` and `writev`: all pieces go in one call. For `chunk`: one
    /// call per (header, payload) pair, built as contiguous chunks.
    pieces: Vec<Bytes>,
    len: usize,
    video: bool,
}

fn build(mode: Mode, chunk_size: u32, f: &stream::Frame) -> Wire {
    let msg = Message {
        csid: f.kind.csid(),
        timestamp: f.timestamp,
        type_id: f.kind.type_id(),
        stream_id: 1,
        payload: f.payload.clone(),
    };
    let form = wire_form(chunk_size, &msg).expect("a frame fits");
    let pieces = match mode {
        Mode::Writev | Mode::SendMsg | Mode::SendFile => form.pieces().to_vec(),
        Mode::Frame | Mode::Send => vec![Bytes::from(form.to_vec())],
        Mode::Chunk => form
            .pieces()
            .chunks(2)
            .map(|hp| Bytes::from(hp.concat()))
            .collect(),
    };
    Wire {
        len: form.len(),
        pieces,
        video: f.kind == sluice::protocol::session::MediaKind::Video,
    }
}

/// A socket's unsent frames and how far into the first one it got.
struct Peer {
    sock: TcpStream,
    queue: VecDeque<Rc<Wire>>,
    offset: usize,
    dead: bool,
    error: Option<String>,
    /// `--touch-lines`: this socket's own memory, one word per cache line
    /// updated before each write.
    state: Vec<u64>,
    /// `sendfile`: how far into the shared file this socket has been sent.
    file_pos: i64,
}

/// 64-byte cache lines of `u64` words.
const WORDS_PER_LINE: usize = 8;

impl Peer {
    /// Updates one word in each cache line of this socket's state: what a
    /// server's per-player state costs around the same write.
    fn touch(&mut self) {
        for w in self.state.iter_mut().step_by(WORDS_PER_LINE) {
            *w = w.wrapping_add(1);
        }
    }

    /// One write (or one per chunk in `chunk` mode) for what is queued.
    fn write(&mut self, mode: Mode, syscalls: &mut u64) -> usize {
        let mut total = 0;
        loop {
            if self.queue.is_empty() {
                return total;
            }
            // The slices for this call (a small allocation; the syscall costs
            // a thousand times more).
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(16);
            let mut skip = self.offset;
            let per_call_limit = if mode == Mode::Chunk { 1 } else { usize::MAX };
            'outer: for w in self.queue.iter() {
                for p in &w.pieces {
                    if skip >= p.len() {
                        skip -= p.len();
                        continue;
                    }
                    slices.push(IoSlice::new(&p[skip..]));
                    skip = 0;
                    if slices.len() >= per_call_limit || slices.len() >= 512 {
                        break 'outer;
                    }
                }
            }
            *syscalls += 1;
            let r = if mode == Mode::Send {
                send(&self.sock, &slices[0])
            } else if mode == Mode::SendMsg {
                socket2::SockRef::from(&self.sock).send_vectored(&slices)
            } else if slices.len() == 1 {
                self.sock.write(&slices[0])
            } else {
                self.sock.write_vectored(&slices)
            };
            drop(slices);
            match r {
                Ok(n) => {
                    total += n;
                    let mut n = n + self.offset;
                    while let Some(w) = self.queue.front() {
                        if n >= w.len {
                            n -= w.len;
                            self.queue.pop_front();
                        } else {
                            break;
                        }
                    }
                    self.offset = n;
                    // frame/writev: one call per wakeup; chunk: one per chunk
                    // until the socket is full or the queue is empty.
                    if mode != Mode::Chunk {
                        return total;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return total,
                Err(e) => {
                    self.error = Some(e.to_string());
                    self.dead = true;
                    self.queue.clear();
                    return total;
                }
            }
        }
    }
}

impl Peer {
    /// `sendfile`: one sendfile(2) of what this socket has not been sent of
    /// the shared file, up to `end`.
    fn send_file(&mut self, file: &std::fs::File, end: i64, syscalls: &mut u64) -> usize {
        use std::os::fd::AsRawFd;
        if self.file_pos >= end {
            return 0;
        }
        *syscalls += 1;
        let mut off: libc::off_t = self.file_pos;
        // SAFETY: `off` is a valid off_t for the call; both descriptors are open.
        let n = unsafe {
            libc::sendfile(
                self.sock.as_raw_fd(),
                file.as_raw_fd(),
                &mut off,
                (end - self.file_pos) as usize,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::WouldBlock {
                self.error = Some(e.to_string());
                self.dead = true;
            }
            return 0;
        }
        self.file_pos = off;
        n as usize
    }
}

/// send(2) on the socket: the same bytes as write(2) without the VFS layer
/// (no file position lock), as nginx-rtmp sends.
fn send(sock: &TcpStream, buf: &[u8]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the call.
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn sink(addr: SocketAddr, n: usize, secs: f64, replies: bool) -> ExitCode {
    let mut poll = Poll::new().expect("poll");
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        match MioStream::connect(addr) {
            Ok(mut s) => {
                poll.registry()
                    .register(&mut s, Token(i), Interest::READABLE)
                    .expect("register");
                socks.push(Some((s, !replies)));
            }
            Err(e) => {
                eprintln!("sluice-limit sink: connect {i}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 256 * 1024];
    let mut open = n;
    let mut errors = 0u64;
    while open > 0 && Instant::now() < deadline {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(100)));
        for ev in events.iter() {
            let Some(slot) = socks.get_mut(ev.token().0) else {
                continue;
            };
            let Some((s, replied)) = slot.as_mut() else {
                continue;
            };
            if ev.is_error() {
                if let Ok(Some(e)) | Err(e) = s.take_error() {
                    eprintln!("sluice-limit sink: socket {}: {e}", ev.token().0);
                }
            }
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        *slot = None;
                        open -= 1;
                        break;
                    }
                    Ok(k) if k < buf.len() => {
                        if !*replied {
                            // As a player answers the server's first bytes.
                            *replied = true;
                            let _ = s.write(b"reply");
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => {
                        if errors == 0 {
                            eprintln!("sluice-limit sink: read: {e}");
                        }
                        errors += 1;
                        *slot = None;
                        open -= 1;
                        break;
                    }
                }
            }
        }
    }
    ExitCode::SUCCESS
}

struct Opts {
    players: usize,
    mode: Mode,
    chunk_size: u32,
    bitrate: u64,
    warmup: f64,
    duration: f64,
    sink_cpu: Option<String>,
    json: Option<String>,
    /// Frames written per wakeup: 1 is the strict limit (every frame sent
    /// the moment it exists); more matches a server that batches under load.
    batch: usize,
    /// Audio waits for the next video frame (Sluice's default budget).
    merge_audio: bool,
    /// Cache lines of its own state touched per socket per write.
    touch_lines: usize,
    idle_threads: usize,
    /// The reader answers the writer's first bytes, as a player does.
    player_replies: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("sink") {
        let addr = args[2].parse().expect("sink ADDR N SECS");
        let n = args[3].parse().expect("sink ADDR N SECS");
        let secs = args[4].parse().expect("sink ADDR N SECS");
        let replies = args.get(5).map(String::as_str) == Some("replies");
        return sink(addr, n, secs, replies);
    }
    let mut o = getopts::Options::new();
    o.optopt("n", "players", "sockets [100]", "N");
    o.optopt(
        "",
        "mode",
        "frame | send | writev | sendmsg | sendfile | chunk [frame]",
        "MODE",
    );
    o.optopt("", "chunk-size", "RTMP chunk size [4096]", "BYTES");
    o.optopt("", "bitrate", "stream bitrate, bit/s [3000000]", "BPS");
    o.optopt("", "warmup", "seconds before measuring [2]", "SECS");
    o.optopt("", "duration", "seconds measured [10]", "SECS");
    o.optopt(
        "",
        "sink-cpu",
        "CPU list for the reading process (taskset) [none]",
        "CPUS",
    );
    o.optopt(
        "",
        "json",
        "write the JSON record here ('-': stdout)",
        "FILE",
    );
    o.optopt(
        "",
        "batch",
        "frames per wakeup (one write per socket each) [1]",
        "K",
    );
    o.optflag(
        "",
        "merge-audio",
        "hold audio until the next video frame (writev or sendmsg)",
    );
    o.optopt(
        "",
        "touch-lines",
        "cache lines of per-socket state updated before each write, as a server's per-player state is [0]",
        "N",
    );
    o.optopt(
        "",
        "idle-threads",
        "threads that only sleep, started first: a process with threads shares its descriptor table, so the kernel takes a reference on each descriptor a call uses, as in a server with worker and helper threads [0]",
        "N",
    );
    o.optflag(
        "",
        "player-replies",
        "each socket first carries a message and its immediate reply, as an RTMP session's handshake and commands do",
    );
    o.optflag("h", "help", "print this help");
    let m = match o.parse(&args[1..]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sluice-limit: {e}");
            return ExitCode::from(2);
        }
    };
    if m.opt_present("h") {
        print!("{}", o.usage("Usage: sluice-limit [options]\n\nThe cost of writing pre-built frames to N loopback sockets."));
        return ExitCode::SUCCESS;
    }
    let get = |k: &str, d: &str| m.opt_str(k).unwrap_or_else(|| d.to_owned());
    let opts = Opts {
        players: get("players", "100").parse().expect("--players"),
        mode: match get("mode", "frame").as_str() {
            "frame" => Mode::Frame,
            "send" => Mode::Send,
            "writev" => Mode::Writev,
            "sendmsg" => Mode::SendMsg,
            "chunk" => Mode::Chunk,
            "sendfile" => Mode::SendFile,
            other => {
                eprintln!("sluice-limit: --mode {other:?}: frame, send, writev, sendmsg, sendfile or chunk");
                return ExitCode::from(2);
            }
        },
        chunk_size: get("chunk-size", "4096").parse().expect("--chunk-size"),
        bitrate: get("bitrate", "3000000").parse().expect("--bitrate"),
        warmup: get("warmup", "2").parse().expect("--warmup"),
        duration: get("duration", "10").parse().expect("--duration"),
        sink_cpu: m.opt_str("sink-cpu"),
        json: m.opt_str("json"),
        batch: get("batch", "1").parse::<usize>().expect("--batch").max(1),
        merge_audio: m.opt_present("merge-audio"),
        touch_lines: get("touch-lines", "0").parse().expect("--touch-lines"),
        player_replies: m.opt_present("player-replies"),
        idle_threads: get("idle-threads", "0").parse().expect("--idle-threads"),
    };
    let vectored = matches!(opts.mode, Mode::Writev | Mode::SendMsg | Mode::SendFile);
    if (opts.batch > 1 || opts.merge_audio) && !vectored {
        // frame and send write one buffer per call: several queued frames
        // would go one per wakeup and the backlog would grow without end.
        eprintln!(
            "sluice-limit: --batch and --merge-audio need --mode writev, sendmsg or sendfile"
        );
        return ExitCode::from(2);
    }
    let report = match run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sluice-limit: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "limit ({}{}, {} frame(s) per wakeup): {} sockets, {:.3} Gbit/s, {:.3} CPU-s ({:.2} of a core), {:.3} CPU-s/GB, {:.0} bytes per syscall, backlog max {} bytes",
        opts.mode.name(),
        if opts.merge_audio { ", audio merged" } else { "" },
        opts.batch,
        opts.players,
        report["gbit_per_s"].as_f64().unwrap_or(0.0),
        report["cpu_seconds"].as_f64().unwrap_or(0.0),
        report["cpu_util"].as_f64().unwrap_or(0.0),
        report["cpu_s_per_gb"].as_f64().unwrap_or(0.0),
        report["bytes_per_syscall"].as_f64().unwrap_or(0.0),
        report["max_backlog_bytes"],
    );
    let text = serde_json::to_string_pretty(&report).expect("json");
    match opts.json.as_deref() {
        Some("-") => println!("{text}"),
        Some(p) => {
            if let Err(e) = std::fs::write(p, text + "\n") {
                eprintln!("sluice-limit: {p}: {e}");
                return ExitCode::FAILURE;
            }
        }
        None => {}
    }
    ExitCode::SUCCESS
}

fn run(o: &Opts) -> Result<serde_json::Value, String> {
    // They sleep until the process exits.
    for _ in 0..o.idle_threads {
        std::thread::spawn(|| loop {
            std::thread::park();
        });
    }
    // A backlog that holds every connection at once: with std's 128 the
    // sink's burst of connects overflows the accept queue and the last ones
    // wait for SYN-ACK retransmissions, seconds apart.
    let listener: TcpListener = {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| e.to_string())?;
        let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
        s.bind(&any.into()).map_err(|e| e.to_string())?;
        s.listen(4096).map_err(|e| e.to_string())?;
        s.into()
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let total = o.warmup + o.duration + 60.0;
    let mut cmd = match &o.sink_cpu {
        Some(cpus) if Command::new("taskset").arg("-V").output().is_ok() => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpus).arg(&exe);
            c
        }
        _ => Command::new(&exe),
    };
    let mut child = cmd
        .arg("sink")
        .arg(addr.to_string())
        .arg(o.players.to_string())
        .arg(total.to_string())
        .arg(if o.player_replies {
            "replies"
        } else {
            "silent"
        })
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("sink: {e}"))?;
    let mut peers = Vec::with_capacity(o.players);
    listener.set_nonblocking(false).map_err(|e| e.to_string())?;
    let accept_deadline = Instant::now() + Duration::from_secs(30);
    while peers.len() < o.players {
        if Instant::now() > accept_deadline {
            let _ = child.kill();
            return Err(format!(
                "only {} of {} sockets connected",
                peers.len(),
                o.players
            ));
        }
        let (s, _) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        if o.player_replies {
            // The sink answers this at once (its first read).
            let _ = (&s).write(b"hello");
        }
        peers.push(Peer {
            sock: s,
            queue: VecDeque::new(),
            offset: 0,
            dead: false,
            error: None,
            state: vec![0; o.touch_lines * WORDS_PER_LINE],
            file_pos: 0,
        });
    }
    let shape = stream::Shape {
        bitrate: o.bitrate,
        ..stream::Shape::default()
    };
    let mut gen = stream::Generator::new(shape);
    let start = Instant::now();
    let win_start = Duration::from_secs_f64(o.warmup);
    let win_end = win_start + Duration::from_secs_f64(o.duration);
    let mut measuring = false;
    let (mut t0, mut t0_at) = ((0u64, 0u64), start);
    let (mut bytes, mut syscalls, mut wakeups) = (0u64, 0u64, 0u64);
    let mut max_backlog = 0usize;
    // Pre-build one GOP's frames and reuse them: the writer only writes.
    let mut frames = Vec::new();
    for _ in 0..2 * shape.gop * 2 {
        let f = gen.next(0);
        frames.push((f.due_ns, Rc::new(build(o.mode, o.chunk_size, &f))));
    }
    let cycle_ns = {
        let mut g = stream::Generator::new(shape);
        for _ in 0..frames.len() {
            let _ = g.next(0);
        }
        g.next_due_ns()
    };
    let mut i = 0usize;
    let mut held: Option<usize> = None;
    // `sendfile`: every batch is appended once to a file in memory (tmpfs,
    // unlinked) and each socket is sent its range from there.
    let mut shared = if o.mode == Mode::SendFile {
        let path = format!("/dev/shm/sluice-limit-{}", std::process::id());
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        let _ = std::fs::remove_file(&path);
        Some(f)
    } else {
        None
    };
    loop {
        // The wakeup comes when the last frame of this batch is due.
        let last = i + o.batch - 1;
        let (due_in_cycle, _) = &frames[last % frames.len()];
        let due = Duration::from_nanos((last / frames.len()) as u64 * cycle_ns + due_in_cycle);
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
        let now = start.elapsed();
        if !measuring && now >= win_start {
            measuring = true;
            t0 = stats::cpu_times(None).unwrap_or_default();
            t0_at = Instant::now();
            bytes = 0;
            syscalls = 0;
            wakeups = 0;
        }
        if now >= win_end {
            break;
        }
        // With --merge-audio, a batch ending in audio waits (queued
        // nowhere yet) for the wakeup of the next video frame.
        if o.merge_audio && !frames[last % frames.len()].1.video {
            held.get_or_insert(i);
            i += o.batch;
            continue;
        }
        let first = held.take().unwrap_or(i);
        wakeups += 1;
        if o.mode == Mode::SendFile {
            let file = shared.as_mut().expect("sendfile's file");
            for k in first..i + o.batch {
                for piece in &frames[k % frames.len()].1.pieces {
                    file.write_all(piece)
                        .map_err(|e| format!("shared file: {e}"))?;
                }
            }
            let end = file.stream_position().map_err(|e| e.to_string())? as i64;
            for p in &mut peers {
                if p.dead {
                    continue;
                }
                p.touch();
                bytes += p.send_file(file, end, &mut syscalls) as u64;
                max_backlog = max_backlog.max((end - p.file_pos) as usize);
            }
            i += o.batch;
            continue;
        }
        for p in &mut peers {
            if p.dead {
                continue;
            }
            for k in first..i + o.batch {
                p.queue.push_back(frames[k % frames.len()].1.clone());
            }
            p.touch();
            bytes += p.write(o.mode, &mut syscalls) as u64;
            let backlog: usize = p.queue.iter().map(|w| w.len).sum::<usize>() - p.offset;
            max_backlog = max_backlog.max(backlog);
        }
        i += o.batch;
    }
    let (user, system) = stats::cpu_times(None).unwrap_or_default();
    let (user, system) = (user - t0.0, system - t0.1);
    let secs = t0_at.elapsed().as_secs_f64();
    let cpu = (user + system) as f64 / stats::clock_ticks();
    let dead = peers.iter().filter(|p| p.dead).count();
    // With --player-replies, each reader's answer waits unread on its socket.
    let replies = peers
        .iter()
        .filter(|p| {
            let mut got = [0u8; 8];
            matches!((&p.sock).read(&mut got), Ok(n) if got[..n].starts_with(b"reply"))
        })
        .count();
    let first_error = peers.iter().find_map(|p| p.error.clone());
    drop(peers);
    let sink_status = child.wait().map(|s| s.to_string()).unwrap_or_default();
    let gb = bytes as f64 / 1e9;
    Ok(json!({
        "tool": "sluice-limit",
        "mode": o.mode.name(),
        "batch": o.batch,
        "merge_audio": o.merge_audio,
        "touch_lines": o.touch_lines,
        "idle_threads": o.idle_threads,
        "player_replies": o.player_replies,
        "replies_received": replies,
        "players": o.players,
        "chunk_size": o.chunk_size,
        "bitrate_bps": o.bitrate,
        "seconds": secs,
        "bytes": bytes,
        "gbit_per_s": gb * 8.0 / secs,
        "syscalls": syscalls,
        "wakeups": wakeups,
        "bytes_per_syscall": if syscalls > 0 { bytes as f64 / syscalls as f64 } else { 0.0 },
        "cpu_seconds": cpu,
        "cpu_util": cpu / secs,
        // Its time in its own code, out of all of it (the rest is the kernel's).
        "user_share": if user + system > 0 { Some(user as f64 / (user + system) as f64) } else { None },
        "cpu_s_per_gb": if gb > 0.0 { Some(cpu / gb) } else { None },
        "max_backlog_bytes": max_backlog,
        "dead_sockets": dead,
        "first_error": first_error,
        "sink_exit": sink_status,
    }))
}
