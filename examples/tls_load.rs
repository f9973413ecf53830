//! N RTMP or RTMPS players against a running sluice, on one mio thread:
//! each connects (TLS first with `--tls`), plays a stream and reads and
//! discards it. After everyone plays and a warm-up, it measures a window:
//! bytes the players read (wire bytes, TLS records included) and, with
//! `--server-pid`, the server's CPU seconds from /proc/PID/stat
//! (utime + stime), and prints CPU-seconds per GB delivered.
//!
//! ```text
//! cargo run --release --example tls_load -- --addr 127.0.0.1:1936 --tls \
//!     --players 500 --stream live/cam --warmup 5 --secs 20 --server-pid PID
//! ```
//!
//! Players connect in waves small enough to stay under the server's
//! pending-handshake cap. Certificates are not verified (a load tool).
//!
//! RTMPS against RTMP on one worker, same server process (issue 4):
//!
//! ```text
//! taskset -c 0 target/release/sluice --workers 1 --rtmp 127.0.0.1:$RTMP \
//!     --rtmps 127.0.0.1:$RTMPS --tls-cert live.test.crt --tls-key live.test.key &
//! taskset -c 1 ffmpeg -re -stream_loop -1 -i clip720.flv -c copy -f flv \
//!     rtmp://127.0.0.1:$RTMP/live/cam &      # 720p30 H.264 at 3 Mbit/s + AAC
//! for mode in "" --tls "" --tls; do
//!     addr=127.0.0.1:$RTMP; [ "$mode" ] && addr=127.0.0.1:$RTMPS
//!     taskset -c 1 target/release/examples/tls_load --addr $addr $mode \
//!         --players 500 --stream live/cam --warmup 5 --secs 20 --server-pid $SLUICE_PID
//! done
//! ```
//!
//! On loopback the receivers' TCP work partly runs in the sender's
//! context (softirq on the sending CPU), so the server's system time
//! includes some of the players' kernel work: compare the two modes, not
//! the absolute figures with a real network.

use bytes::BytesMut;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig as TlsConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use sluice::protocol::client::{ClientConfig, ClientEvent, ClientSession};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

struct Player {
    sock: TcpStream,
    tls: Option<ClientConnection>,
    session: ClientSession,
    buf: BytesMut,
    name: String,
    playing: bool,
    wire_in: u64,
}

struct Args {
    addr: SocketAddr,
    tls: bool,
    players: usize,
    app: String,
    name: String,
    warmup: u64,
    secs: u64,
    server_pid: Option<u32>,
    sni: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:1935".parse().unwrap(),
        tls: false,
        players: 100,
        app: "live".into(),
        name: "cam".into(),
        warmup: 5,
        secs: 20,
        server_pid: None,
        sni: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--addr" => a.addr = v().parse().expect("--addr"),
            "--tls" => a.tls = true,
            "--players" => a.players = v().parse().expect("--players"),
            "--stream" => {
                let s = v();
                let (app, name) = s.split_once('/').expect("--stream APP/NAME");
                (a.app, a.name) = (app.into(), name.into());
            }
            "--warmup" => a.warmup = v().parse().expect("--warmup"),
            "--secs" => a.secs = v().parse().expect("--secs"),
            "--server-pid" => a.server_pid = Some(v().parse().expect("--server-pid")),
            "--sni" => a.sni = Some(v()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// (utime, stime) of `pid`, in seconds.
fn cpu_secs(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the ")" that ends the command name: state is field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f[i].parse::<u64>().unwrap() as f64;
    // USER_HZ is 100 on Linux for every architecture we run on.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// Write syscalls `pid` made so far (/proc/PID/io `syscw`; 0 if unreadable).
fn write_calls(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines().find_map(|l| {
                l.strip_prefix("syscw: ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

impl Player {
    /// Moves bytes: socket -> (TLS) -> session, session -> (TLS) -> socket.
    fn pump(&mut self, plain: &mut [u8]) -> io::Result<bool> {
        let mut open = true;
        loop {
            let n = match &mut self.tls {
                Some(tls) => match tls.read_tls(&mut self.sock) {
                    Ok(0) => {
                        open = false;
                        0
                    }
                    Ok(n) => {
                        tls.process_new_packets()
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        loop {
                            match tls.reader().read(plain) {
                                Ok(0) => break,
                                Ok(m) => self.buf.extend_from_slice(&plain[..m]),
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) => return Err(e),
                            }
                        }
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
                None => match self.sock.read(plain) {
                    Ok(0) => {
                        open = false;
                        0
                    }
                    Ok(n) => {
                        self.buf.extend_from_slice(&plain[..n]);
                        n
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                },
            };
            self.wire_in += n as u64;
            self.session
                .handle_input(&mut self.buf)
                .map_err(|e| io::Error::other(e.to_string()))?;
            while let Some(ev) = self.session.poll_event() {
                match ev {
                    ClientEvent::Connected => self.session.create_stream(),
                    ClientEvent::StreamCreated { stream_id } => {
                        self.session.play(stream_id, &self.name)
                    }
                    ClientEvent::Status { code, .. } if code == "NetStream.Play.Start" => {
                        self.playing = true
                    }
                    _ => {}
                }
            }
            if !open {
                break;
            }
        }
        self.flush()?;
        Ok(open)
    }

    fn flush(&mut self) -> io::Result<()> {
        while let Some(b) = self.session.poll_transmit() {
            match &mut self.tls {
                Some(tls) => {
                    tls.writer().write_all(&b)?;
                }
                None => self.sock.write_all(&b)?, // small control messages
            }
        }
        if let Some(tls) = &mut self.tls {
            while tls.wants_write() {
                match tls.write_tls(&mut self.sock) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

fn main() {
    let a = parse_args();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_config = Arc::new(
        TlsConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    );
    let server_name: ServerName<'static> = match &a.sni {
        Some(n) => ServerName::try_from(n.clone()).expect("--sni"),
        None => ServerName::IpAddress(a.addr.ip().into()),
    };
    let scheme = if a.tls { "rtmps" } else { "rtmp" };
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let mut players: Vec<Option<Player>> = Vec::new();
    let mut plain = vec![0u8; 256 * 1024];
    let started = Instant::now();
    let mut window: Option<(Instant, (f64, f64), u64, u64)> = None;
    let mut all_playing_at: Option<Instant> = None;
    let mut closed = 0usize;
    let deadline = started + Duration::from_secs(60 + a.warmup + a.secs);
    loop {
        // Connect in waves of 50, keeping pending handshakes low.
        let pending = players.iter().flatten().filter(|p| !p.playing).count();
        if players.len() < a.players && pending < 50 {
            for _ in 0..(a.players - players.len()).min(50 - pending) {
                let i = players.len();
                let mut sock = TcpStream::connect(a.addr).expect("connect");
                sock.set_nodelay(true).ok();
                poll.registry()
                    .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                    .unwrap();
                let tls = a.tls.then(|| {
                    ClientConnection::new(tls_config.clone(), server_name.clone()).unwrap()
                });
                let url = format!("{scheme}://{}/{}", a.addr, a.app);
                let session = ClientSession::new(ClientConfig::new(a.app.clone(), url), i as u64);
                players.push(Some(Player {
                    sock,
                    tls,
                    session,
                    buf: BytesMut::new(),
                    name: a.name.clone(),
                    playing: false,
                    wire_in: 0,
                }));
            }
        }
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .unwrap();
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(p) = players[i].as_mut() else {
                continue;
            };
            let r = p.pump(&mut plain);
            match r {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    if let Err(e) = &r {
                        eprintln!("player {i}: {e}");
                    }
                    players[i] = None;
                    closed += 1;
                }
            }
        }
        let playing = players.iter().flatten().filter(|p| p.playing).count();
        let now = Instant::now();
        if all_playing_at.is_none() && playing == a.players {
            all_playing_at = Some(now);
            eprintln!(
                "{} {scheme} players playing after {:.1}s",
                a.players,
                started.elapsed().as_secs_f64()
            );
        }
        let wire: u64 = players.iter().flatten().map(|p| p.wire_in).sum();
        if let Some(t) = all_playing_at {
            if window.is_none() && now >= t + Duration::from_secs(a.warmup) {
                let cpu = a.server_pid.map_or((0.0, 0.0), cpu_secs);
                let calls = a.server_pid.map_or(0, write_calls);
                window = Some((now, cpu, wire, calls));
            }
        }
        if let Some((t0, cpu0, wire0, calls0)) = window {
            if now >= t0 + Duration::from_secs(a.secs) {
                let secs = (now - t0).as_secs_f64();
                let (user, sys) = a.server_pid.map_or((0.0, 0.0), cpu_secs);
                let (user, sys) = (user - cpu0.0, sys - cpu0.1);
                let cpu = user + sys;
                let gb = (wire - wire0) as f64 / 1e9;
                let calls = a.server_pid.map_or(0, write_calls) - calls0;
                println!(
                    "{scheme}: players={} playing={playing} closed={closed} window={secs:.1}s \
                     delivered={gb:.3}GB ({:.0} Mbit/s) server_cpu={cpu:.2}s (user {user:.2} + \
                     sys {sys:.2}; {:.0}% of a core) cpu_s_per_GB={:.2} \
                     write_calls={calls} ({:.0} bytes each)",
                    a.players,
                    gb * 8000.0 / secs,
                    cpu / secs * 100.0,
                    if gb > 0.0 { cpu / gb } else { f64::NAN },
                    (wire - wire0) as f64 / calls.max(1) as f64
                );
                return;
            }
        }
        if now >= deadline {
            eprintln!(
                "gave up: {playing} of {} playing, {closed} closed",
                a.players
            );
            std::process::exit(1);
        }
    }
}
