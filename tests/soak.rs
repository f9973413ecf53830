//! Soak (docs/hardening.md case 37): the `sluice` binary as its own process, with
//! publishers reconnecting every few seconds, players joining and leaving,
//! and one player that never reads, for a given duration. Samples the
//! server's resident memory and open file descriptors from /proc over time,
//! prints them, and asserts both stay flat: after a warm-up, the second
//! half's peak RSS stays within the first half's peak plus a small margin,
//! and once every client has gone the descriptor count is back to what the
//! idle server held.
//!
//! Behind a flag, since it runs for minutes:
//!
//! ```sh
//! SLUICE_SOAK_SECS=180 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! `SLUICE_SOAK_CSV=path` also writes the samples as CSV. CI runs 3 minutes;
//! the closing note of issue 6 has a one-hour run.

mod support;

use sluice::protocol::client::ClientEvent;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const STREAMS: usize = 4;
const PLAYERS: usize = 16;
/// How long the server may take to release every client's descriptor after
/// the clients stop.
const SETTLE: Duration = Duration::from_secs(10);

struct Server {
    child: Child,
    addr: SocketAddr,
}

/// `GET /api/server` answered 200 (false while nothing listens).
fn api_answers(http: SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(http) else {
        return false;
    };
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = String::new();
    s.write_all(b"GET /api/server HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")
        .is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.starts_with("HTTP/1.1 200")
}

/// A free loopback port: bind, note it, release it for the server.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    fn start() -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "--rtmp",
                &addr.to_string(),
                "--http",
                &http.to_string(),
                "--workers",
                "2",
                "--player-stall-timeout",
                "5",
                "--handshake-timeout",
                "5",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sluice");
        // Ready once a worker answers the API (every descriptor the idle
        // server holds exists by then), with no RTMP connection ever made:
        // the descriptor count that follows is the idle baseline. The API
        // connection is closed by the server before its answer ends.
        let deadline = Instant::now() + WAIT;
        loop {
            if api_answers(http) {
                break;
            }
            assert!(Instant::now() < deadline, "sluice did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, addr }
    }

    fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map_or(0, |d| d.count())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Default)]
struct Counters {
    publishes: AtomicU64,
    plays: AtomicU64,
    frames_sent: AtomicU64,
    frames_received: AtomicU64,
    stalled_reconnects: AtomicU64,
    client_errors: AtomicU64,
}

/// A small deterministic PRNG per thread (xorshift).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Publishes stream `i` for 2 to 6 s at 30 fps, then disconnects (cleanly
/// or by dropping the socket), and again, until `stop`.
fn publisher(addr: SocketAddr, i: usize, stop: &AtomicBool, c: &Counters) {
    let mut rng = Rng(0x1234_5678 + i as u64);
    let name = format!("soak-{i}");
    while !stop.load(Ordering::Relaxed) {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut p = TestClient::connect(addr, "live");
            let (id, code) = p.publish(&name);
            if code != "NetStream.Publish.Start" {
                // The previous session of this name is still being closed.
                std::thread::sleep(Duration::from_millis(100));
                return;
            }
            c.publishes.fetch_add(1, Ordering::Relaxed);
            let mut synth = Synth::new(30, 6_000 + 1_000 * i);
            for f in synth.headers() {
                p.send(id, &f);
            }
            let until = Instant::now() + Duration::from_millis(2_000 + rng.below(4_000));
            let start = Instant::now();
            let mut n = 0u32;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                for f in synth.next() {
                    p.send(id, &f);
                }
                n += 1;
                c.frames_sent.fetch_add(1, Ordering::Relaxed);
                // Drain acks and pings so the publisher's socket never fills.
                while p.next_event(Duration::ZERO).is_some() {}
                let due = start + Duration::from_millis(u64::from(n) * 1000 / 30);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
            if rng.below(2) == 0 {
                p.delete_stream(id);
            }
        }));
        if r.is_err() {
            c.client_errors.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Plays a random stream for 1 to 6 s, leaves, and again, until `stop`.
fn player(addr: SocketAddr, i: usize, stop: &AtomicBool, c: &Counters) {
    let mut rng = Rng(0x9E37_79B9 + i as u64 * 7919);
    while !stop.load(Ordering::Relaxed) {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut p = TestClient::connect(addr, "live");
            p.play(&format!("soak-{}", rng.below(STREAMS as u64)));
            c.plays.fetch_add(1, Ordering::Relaxed);
            let until = Instant::now() + Duration::from_millis(1_000 + rng.below(5_000));
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                if let Some(ClientEvent::Media { .. }) = p.next_event(Duration::from_millis(100)) {
                    c.frames_received.fetch_add(1, Ordering::Relaxed);
                }
                if p.closed {
                    break;
                }
            }
        }));
        if r.is_err() {
            c.client_errors.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Plays stream 0 and never reads. The server drops it after its stall
/// timeout (5 s here); after 8 s it gives up the socket and stalls again.
fn stalled_player(addr: SocketAddr, stop: &AtomicBool, c: &Counters) {
    while !stop.load(Ordering::Relaxed) {
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut p = TestClient::connect_with_small_buffers(addr, "live");
            p.play("soak-0");
            c.stalled_reconnects.fetch_add(1, Ordering::Relaxed);
            let until = Instant::now() + Duration::from_secs(8);
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        if r.is_err() {
            c.client_errors.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
#[ignore = "soak: SLUICE_SOAK_SECS=180 cargo test --release --test soak -- --ignored --nocapture"]
fn soak_memory_and_descriptors_stay_flat() {
    let secs: u64 = std::env::var("SLUICE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    let duration = Duration::from_secs(secs);
    let interval = Duration::from_secs((secs / 36).clamp(2, 60));
    let server = Server::start();
    let addr = server.addr;
    let idle_fds = server.fds();
    let idle_rss = server.rss_kb();
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    let mut threads = Vec::new();
    for i in 0..STREAMS {
        let (s, c) = (stop.clone(), counters.clone());
        threads.push(std::thread::spawn(move || publisher(addr, i, &s, &c)));
    }
    for i in 0..PLAYERS {
        let (s, c) = (stop.clone(), counters.clone());
        threads.push(std::thread::spawn(move || player(addr, i, &s, &c)));
    }
    {
        let (s, c) = (stop.clone(), counters.clone());
        threads.push(std::thread::spawn(move || stalled_player(addr, &s, &c)));
    }

    let mut csv = std::env::var("SLUICE_SOAK_CSV")
        .ok()
        .map(|p| std::fs::File::create(p).expect("SLUICE_SOAK_CSV"));
    if let Some(f) = &mut csv {
        writeln!(f, "seconds,rss_kb,fds,publishes,plays,frames_sent,frames_received,stalled_reconnects,client_errors").unwrap();
    }
    println!("soak: {secs} s, {STREAMS} reconnecting publishers, {PLAYERS} players joining/leaving, 1 stalled player");
    println!("idle server: rss {idle_rss} kB, {idle_fds} fds");
    println!(
        "{:>7} {:>9} {:>5} {:>9} {:>7} {:>10} {:>10} {:>7} {:>6}",
        "t(s)", "rss(kB)", "fds", "publishes", "plays", "sent", "received", "stalled", "errors"
    );
    let start = Instant::now();
    let mut samples: Vec<(u64, u64, usize)> = Vec::new();
    while start.elapsed() < duration {
        std::thread::sleep(
            interval
                .min(duration.saturating_sub(start.elapsed()))
                .max(Duration::from_millis(1)),
        );
        let t = start.elapsed().as_secs();
        let (rss, fds) = (server.rss_kb(), server.fds());
        let c = &counters;
        let row = [
            c.publishes.load(Ordering::Relaxed),
            c.plays.load(Ordering::Relaxed),
            c.frames_sent.load(Ordering::Relaxed),
            c.frames_received.load(Ordering::Relaxed),
            c.stalled_reconnects.load(Ordering::Relaxed),
            c.client_errors.load(Ordering::Relaxed),
        ];
        println!(
            "{t:>7} {rss:>9} {fds:>5} {:>9} {:>7} {:>10} {:>10} {:>7} {:>6}",
            row[0], row[1], row[2], row[3], row[4], row[5]
        );
        if let Some(f) = &mut csv {
            writeln!(
                f,
                "{t},{rss},{fds},{},{},{},{},{},{}",
                row[0], row[1], row[2], row[3], row[4], row[5]
            )
            .unwrap();
        }
        samples.push((t, rss, fds));
        assert!(
            server.fds() < 1000,
            "descriptor count {fds} with ~25 clients"
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("client thread");
    }
    // Wait for the server to release every client (or fail below with the
    // count where it stopped).
    let settle = Instant::now() + SETTLE;
    while server.fds() > idle_fds && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (end_rss, end_fds) = (server.rss_kb(), server.fds());
    println!("all clients gone: rss {end_rss} kB, {end_fds} fds (idle server had {idle_fds})");
    let c = &counters;
    println!(
        "totals: {} publishes, {} plays, {} frames sent, {} received, {} stalled-player reconnects, {} client errors",
        c.publishes.load(Ordering::Relaxed),
        c.plays.load(Ordering::Relaxed),
        c.frames_sent.load(Ordering::Relaxed),
        c.frames_received.load(Ordering::Relaxed),
        c.stalled_reconnects.load(Ordering::Relaxed),
        c.client_errors.load(Ordering::Relaxed)
    );

    // Descriptors: every connection's socket was released.
    assert_eq!(end_fds, idle_fds, "descriptors leaked");
    // Memory: after a warm-up (the first sixth), the second half's peak
    // stays within the first half's peak + 10% + 4 MiB.
    let warm = samples.len() / 6;
    let steady = &samples[warm..];
    let (first, second) = steady.split_at(steady.len() / 2);
    let peak = |s: &[(u64, u64, usize)]| s.iter().map(|x| x.1).max().unwrap_or(0);
    let (p1, p2) = (peak(first), peak(second));
    println!("rss peak: first half {p1} kB, second half {p2} kB");
    assert!(
        p2 <= p1 + p1 / 10 + 4096,
        "resident memory grew: {p1} kB -> {p2} kB"
    );
    assert!(
        c.publishes.load(Ordering::Relaxed) >= (secs / 6) * STREAMS as u64 / 2,
        "publishers kept reconnecting"
    );
    assert!(
        c.frames_received.load(Ordering::Relaxed) > 0,
        "players received media"
    );
    assert!(c.stalled_reconnects.load(Ordering::Relaxed) >= 1);
    let errors = c.client_errors.load(Ordering::Relaxed);
    assert!(
        errors <= c.plays.load(Ordering::Relaxed) / 100 + 2,
        "{errors} client errors"
    );
}
