//! End-to-end harness: runs the `sluice` binary on loopback and drives it with real RTMP
//! peers (ffmpeg, rtmpdump, GStreamer's rtmp2src), then compares what the players wrote
//! to disk with the published clip, packet by packet, using ffprobe's MD5 data hashes.
//!
//! Everything here is std-only. Every external process:
//! - runs under coreutils `timeout --foreground -s KILL <secs>`, so it cannot outlive its
//!   hard deadline even if the test binary itself dies;
//! - is killed (SIGALRM to the wrapper -> SIGKILL to the peer) when its handle is dropped;
//! - has its stderr captured in memory, printed when a test fails.
//!
//! Peer behaviour worth knowing (observed with nginx-rtmp as the server):
//! - ffmpeg and rtmpdump players exit at once on `NetStream.Play.UnpublishNotify`; the
//!   StreamEOF user-control message alone does not end them. So players also get an idle
//!   timeout (ffmpeg `-rw_timeout`, rtmpdump `--timeout`, rtmp2src `idle-timeout`) and end
//!   cleanly a few seconds after the last data even if the server never says "stopped".
//! - rtmp2src goes EOS on StreamEOF (or UnpublishNotify) and drops the one message it still
//!   held at that moment: its file misses the last published packet.
//! - An ffmpeg player blocked in a network read ignores the first SIGTERM (it only sets a
//!   flag); the second one aborts all I/O, including the output file: no trailer and a
//!   truncated last packet. Signals are therefore only a last resort for ffmpeg players.
#![allow(dead_code)] // each integration-test binary uses a different subset

#[allow(clippy::duplicate_mod)] // `support` loads it too (see there)
pub mod api;
pub mod browser;
pub mod callbacks;
pub mod ffmpeg9;
pub mod haproxy;

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{ErrorKind, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

/// Length of the generated clip.
pub const CLIP_SECS: u64 = 8;
/// Video frame rate and GOP length of the generated clip (keyframe every 2 s).
pub const CLIP_FPS: u64 = 30;
pub const CLIP_GOP: u64 = 60;

/// Default hard deadline for a player process.
pub const PLAYER_HARD_TIMEOUT: Duration = Duration::from_secs(45);
/// Hard deadline for a publisher process (clip length + margin).
pub const PUBLISHER_HARD_TIMEOUT: Duration = Duration::from_secs(CLIP_SECS + 25);

// ---------------------------------------------------------------------------------------
// Required tools
// ---------------------------------------------------------------------------------------

/// What the tests may ask [`require_tool`] for: (name, what it is, the command that
/// installs it on Debian). `./test` installs the same list before it runs the suite.
const TOOLS: &[(&str, &str, &str)] = &[
    (
        "ffmpeg",
        "ffmpeg (publisher, player, clip encoder)",
        "apt-get install -y ffmpeg",
    ),
    (
        "ffprobe",
        "ffprobe (packet lists and hashes)",
        "apt-get install -y ffmpeg",
    ),
    (
        "rtmpdump",
        "rtmpdump (librtmp player)",
        "apt-get install -y rtmpdump",
    ),
    (
        "gstreamer",
        "GStreamer's gst-launch-1.0 with rtmp2src and filesink",
        "apt-get install -y gstreamer1.0-tools gstreamer1.0-plugins-base \
         gstreamer1.0-plugins-good gstreamer1.0-plugins-bad",
    ),
    (
        "nginx",
        "nginx with the rtmp module (a third-party RTMP server)",
        "apt-get install -y nginx libnginx-mod-rtmp",
    ),
    (
        "ffmpeg9",
        "ffmpeg >= 8 (Enhanced RTMP, multitrack FLV) from the PyPI package imageio-ffmpeg, \
         or the binary named by SLUICE_FFMPEG9",
        "python3 -m pip install imageio-ffmpeg",
    ),
    (
        "chromium",
        "Debian's Chromium (headless browser for the player tests, tests/common/browser.rs)",
        "apt-get install -y chromium",
    ),
    (
        "curl",
        "curl (HTTP range requests against video on demand files)",
        "apt-get install -y curl",
    ),
    (
        "haproxy",
        "HAProxy (a TCP load balancer sending the PROXY protocol, tests/common/haproxy.rs)",
        "apt-get install -y haproxy",
    ),
    (
        "timeout",
        "coreutils timeout (every peer's hard deadline)",
        "apt-get install -y coreutils",
    ),
    (
        "kill",
        "kill(1) (signals to peers and servers)",
        "apt-get install -y procps",
    ),
];

/// The program a test runs for `name` (one of [`TOOLS`]): a name on PATH or a path.
/// Fails the test, with the command that installs it, when the tool is missing: a test
/// that needs a peer never passes without running it. Checked once per test binary.
#[track_caller]
pub fn require_tool(name: &str) -> String {
    static FOUND: OnceLock<Mutex<HashMap<String, Result<String, String>>>> = OnceLock::new();
    let &(_, what, install) = TOOLS
        .iter()
        .find(|t| t.0 == name)
        .unwrap_or_else(|| panic!("require_tool({name:?}): not a tool this harness knows"));
    let found = {
        let mut cache = FOUND
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        cache
            .entry(name.to_string())
            .or_insert_with(|| find_tool(name))
            .clone()
    };
    match found {
        Ok(program) => program,
        Err(why) => panic!(
            "this test needs {what}: {why}.\n  Install it with: {install}\n  \
             (or run ./test, which installs everything the suite needs, then runs it)"
        ),
    }
}

/// An executable file called `program` in a PATH directory (or in `extra`).
fn on_path(program: &str, extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| {
            fs::metadata(p).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
}

/// Runs `program args` (≤ 30 s); its stdout when it exits 0.
fn probe_output(program: &str, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("`{program}` does not run: {e}"))?;
    let (out, reader) = capture(child.stdout.take().expect("stdout pipe"));
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = reader.join();
    let out = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(format!("`{program} {}` exited with {s}", args.join(" "))),
        None => Err(format!("`{program} {}` hung", args.join(" "))),
    }
}

fn find_tool(name: &str) -> Result<String, String> {
    let need = |program: &str| {
        on_path(program, &[])
            .map(s)
            .ok_or_else(|| format!("`{program}` is not on PATH"))
    };
    match name {
        "ffmpeg" | "ffprobe" => {
            let program = need(name)?;
            probe_output(&program, &["-hide_banner", "-version"])?;
            Ok(program)
        }
        "gstreamer" => {
            let program = need("gst-launch-1.0")?;
            let inspect = need("gst-inspect-1.0")?;
            for element in ["rtmp2src", "filesink"] {
                probe_output(&inspect, &[element])
                    .map_err(|_| format!("GStreamer has no {element} element"))?;
            }
            Ok(program)
        }
        "nginx" => {
            // Debian's nginx is /usr/sbin/nginx: on root's PATH, not always on a user's.
            let program = on_path("nginx", &["/usr/sbin"])
                .map(s)
                .ok_or("`nginx` is not on PATH nor in /usr/sbin")?;
            if !Path::new(NGINX_RTMP_MODULE).is_file() {
                return Err(format!("the rtmp module {NGINX_RTMP_MODULE} is missing"));
            }
            Ok(program)
        }
        "ffmpeg9" => find_ffmpeg9(),
        "chromium" => {
            let program = need(name)?;
            probe_output(&program, &["--version"])?;
            Ok(program)
        }
        "kill" | "timeout" | "rtmpdump" | "curl" => need(name),
        "haproxy" => {
            // Debian's haproxy is /usr/sbin/haproxy, like nginx.
            let program = on_path("haproxy", &["/usr/sbin"])
                .map(s)
                .ok_or("`haproxy` is not on PATH nor in /usr/sbin")?;
            probe_output(&program, &["-v"])?;
            Ok(program)
        }
        _ => unreachable!("{name} is in TOOLS"),
    }
}

/// ffmpeg >= 8: `SLUICE_FFMPEG9`, else the binary of python3's imageio_ffmpeg.
fn find_ffmpeg9() -> Result<String, String> {
    let path = match std::env::var("SLUICE_FFMPEG9") {
        Ok(p) => p,
        Err(_) => probe_output(
            "python3",
            &[
                "-c",
                "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())",
            ],
        )
        .map_err(|e| format!("SLUICE_FFMPEG9 is not set and python3's imageio_ffmpeg: {e}"))?
        .trim()
        .to_string(),
    };
    let out = probe_output(&path, &["-hide_banner", "-version"])?;
    // "ffmpeg version n9.0.2-17-g..." or "ffmpeg version 9.0.2 ..."
    let first = out.lines().next().unwrap_or("");
    let major: Option<u32> = first
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.trim_start_matches('n').split('.').next()?.parse().ok());
    match major {
        Some(m) if m >= 8 => {
            eprintln!("[harness] ffmpeg >= 8: {path}: {first}");
            Ok(path)
        }
        _ => Err(format!("{path} is not ffmpeg >= 8: {first:?}")),
    }
}

// ---------------------------------------------------------------------------------------
// Temp dirs
// ---------------------------------------------------------------------------------------

/// A unique directory per test under `std::env::temp_dir()`. Removed on drop when the test
/// passed; kept (and its path printed) when the thread is panicking.
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new() -> TestDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let thread = thread::current();
        let label: String = thread
            .name()
            .unwrap_or("test")
            .rsplit("::")
            .next()
            .unwrap_or("test")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "sluice-it-{}-{}-{}",
            label,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Default for TestDir {
    fn default() -> Self {
        TestDir::new()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("[harness] test failed: keeping {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Signals and waiting (no libc: `kill` via std::process::Command)
// ---------------------------------------------------------------------------------------

/// Sends `signal` (a name such as "TERM") to `pid` with kill(1).
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Polls `child` until it exits or `limit` elapses.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("try_wait: {e}"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Drains a pipe into shared memory on a thread.
fn capture(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buf);
    let handle = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    });
    (buf, handle)
}

// ---------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------

/// A free loopback port: bind 127.0.0.1:0, read the port, drop the listener.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// `sluice --rtmp 127.0.0.1:PORT --workers N EXTRA...`, RUST_LOG=sluice=debug, stderr to `log`.
fn spawn_sluice(
    port: u16,
    http_port: u16,
    workers: usize,
    extra_args: &[&str],
    env: &[(&str, &str)],
    log: fs::File,
) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .envs(env.iter().copied())
        .arg("--rtmp")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--http")
        .arg(format!("127.0.0.1:{http_port}"))
        .arg("--workers")
        .arg(workers.to_string())
        .args(extra_args)
        .env("RUST_LOG", "sluice=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn sluice")
}

/// The `sluice` binary listening on 127.0.0.1:port, stderr (env_logger) in `dir/sluice.log`.
pub struct Server {
    child: Option<Child>,
    port: u16,
    http_port: u16,
    /// The `--api`, `--rtmps` and `--https` addresses it was given: the
    /// server binds them after the RTMP port, so a test waits for them too.
    more_listeners: Vec<SocketAddr>,
    log_path: PathBuf,
    exit: Option<ExitStatus>,
    // Declared last: dropped after the process has been stopped.
    dir: TestDir,
}

const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(10);
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

impl Server {
    /// Starts `sluice --rtmp 127.0.0.1:PORT --workers N EXTRA...` in a fresh [`TestDir`] and
    /// waits (≤ 10 s) until a TCP connect to the port succeeds. Retries on another port if
    /// the process exits early (e.g. the port was taken in between).
    pub fn start(workers: usize, extra_args: &[&str]) -> Server {
        Server::start_with_env(workers, extra_args, &[])
    }

    /// Like [`Server::start`], with environment variables set for the
    /// process (the test-only knobs, `SLUICE_TEST_*`).
    pub fn start_with_env(workers: usize, extra_args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            match Server::launch(free_port(), workers, extra_args, env) {
                Ok(server) => return server,
                Err(e) => last_failure = e,
            }
        }
        panic!("could not start sluice: {last_failure}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Like [`Server::start`], on RTMP port `port` (a port chosen earlier,
    /// e.g. one a relay was told about before this server existed).
    pub fn start_on(port: u16, workers: usize, extra_args: &[&str]) -> Server {
        Server::launch(port, workers, extra_args, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Spawns sluice on `port` in a fresh [`TestDir`] and waits until it
    /// listens; Err when it exited during startup.
    fn launch(
        port: u16,
        workers: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        // Stopping it (here and on drop) is kill(1).
        require_tool("kill");
        let dir = TestDir::new();
        let log_path = dir.join("sluice.log");
        let http_port = free_port();
        let log = fs::File::create(&log_path).expect("create server log");
        let child = spawn_sluice(port, http_port, workers, extra_args, env, log);
        let more_listeners = extra_args
            .windows(2)
            .filter(|w| matches!(w[0], "--api" | "--rtmps" | "--https"))
            .filter_map(|w| w[1].parse().ok())
            .collect();
        let mut server = Server {
            child: Some(child),
            port,
            http_port,
            more_listeners,
            log_path,
            exit: None,
            dir,
        };
        server.wait_listening()?;
        Ok(server)
    }

    /// Kills the process (SIGKILL: no goodbye to its peers) and starts it
    /// again on the same ports with `--workers 1`, its log appended.
    pub fn restart_killed(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .expect("open server log");
        self.child = Some(spawn_sluice(self.port, self.http_port, 1, &[], &[], log));
        self.more_listeners.clear();
        self.wait_listening().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits (≤ 10 s) until a TCP connect to the port succeeds, then to
    /// each of `more_listeners`; Err when the process exits first (e.g. the
    /// port was taken in between).
    fn wait_listening(&mut self) -> Result<(), String> {
        let rtmp: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        for addr in std::iter::once(rtmp).chain(self.more_listeners.clone()) {
            self.wait_accepting(addr, deadline)?;
        }
        Ok(())
    }

    fn wait_accepting(&mut self, addr: SocketAddr, deadline: Instant) -> Result<(), String> {
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait sluice") {
                self.child = None;
                return Err(format!(
                    "sluice exited during startup with {status}; log tail:\n{}",
                    tail(&self.log(), 40)
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                // (not someone else's listener on a port we failed to bind)
                && child.try_wait().expect("try_wait sluice").is_none()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "sluice did not accept TCP connections on {addr} within {SERVER_READY_TIMEOUT:?}; log tail:\n{}",
                tail(&self.log(), 40)
            );
            thread::sleep(Duration::from_millis(25));
        }
    }
    /// `http://127.0.0.1:HTTP_PORT/APP/NAME.flv`
    pub fn http_url(&self, app: &str, name: &str) -> String {
        format!("http://127.0.0.1:{}/{app}/{name}.flv", self.http_port)
    }

    /// `127.0.0.1:HTTP_PORT`
    pub fn http_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.http_port).into()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `rtmp://127.0.0.1:PORT/APP/NAME`
    pub fn url(&self, app: &str, name: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{app}/{name}", self.port)
    }

    /// The test's temp dir (output files of players go here).
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to `limit`. Returns the exit status (None if still running)
    /// and how long it took.
    pub fn terminate(&mut self, limit: Duration) -> (Option<ExitStatus>, Duration) {
        let start = Instant::now();
        let Some(child) = self.child.as_mut() else {
            return (self.exit, Duration::ZERO);
        };
        if let Some(status) = child.try_wait().expect("try_wait sluice") {
            self.exit = Some(status);
            return (self.exit, Duration::ZERO);
        }
        send_signal(child.id(), "TERM");
        let status = wait_timeout(child, limit);
        if status.is_some() {
            self.exit = status;
        }
        (status, start.elapsed())
    }

    /// Waits up to `limit` for the process to exit by itself (no signal):
    /// its status, None while it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let child = self.child.as_mut()?;
        let status = wait_timeout(child, limit);
        if status.is_some() {
            self.exit = status;
        }
        status
    }

    /// SIGTERM, then asserts the process exits with status 0 within `limit`.
    pub fn assert_sigterm_exits_zero(&mut self, limit: Duration) -> Duration {
        let (status, took) = self.terminate(limit);
        match status {
            Some(s) if s.success() => took,
            Some(s) => panic!(
                "sluice exited with {s} after SIGTERM (expected 0); log tail:\n{}",
                tail(&self.log(), 40)
            ),
            None => panic!(
                "sluice still running {limit:?} after SIGTERM; log tail:\n{}",
                tail(&self.log(), 40)
            ),
        }
    }

    /// `GET /api/streams/KEY` (None while the server has no such stream).
    pub fn stream(&self, key: &str) -> Option<serde_json::Value> {
        api::stream(self.http_addr(), key)
    }

    /// The connections `GET /api/clients` lists as playing stream `key`.
    pub fn players_of(&self, key: &str) -> Vec<serde_json::Value> {
        api::players_of(self.http_addr(), key)
    }

    /// Waits (≤ 10 s) until `n` connections play stream `key` (players waiting for a
    /// publisher count: they are registered and will get the stream from its start);
    /// returns them.
    #[track_caller]
    pub fn wait_players(&self, key: &str, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        loop {
            let last = self.players_of(key);
            if last.len() == n {
                return last;
            }
            assert!(
                Instant::now() < deadline,
                "{n} players of {key} not within {SERVER_READY_TIMEOUT:?}; /api/clients lists \
                 {} playing it: {last:?}",
                last.len()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (≤ 10 s) until stream `key` is live (a publisher is on it); returns it.
    #[track_caller]
    pub fn wait_live(&self, key: &str) -> serde_json::Value {
        api::wait_for(SERVER_READY_TIMEOUT, &format!("{key} live"), || {
            self.stream(key).filter(|s| s["live"] == true)
        })
    }

    /// `GET /metrics` as text (see [`api::metric`]).
    pub fn metrics(&self) -> String {
        api::metrics(self.http_addr())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                send_signal(child.id(), "TERM");
                if wait_timeout(&mut child, SERVER_STOP_TIMEOUT).is_none() {
                    eprintln!(
                        "[harness] sluice ignored SIGTERM for {SERVER_STOP_TIMEOUT:?}: killing it"
                    );
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        if thread::panicking() {
            eprintln!(
                "[harness] sluice log ({}), last 60 lines:\n{}",
                self.log_path.display(),
                tail(&self.log(), 60)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// nginx-rtmp: a third-party RTMP server as a peer
// ---------------------------------------------------------------------------------------

/// The Debian `libnginx-mod-rtmp` module.
pub const NGINX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";
/// Hard deadline for an nginx process. It runs under `timeout -s KILL` like the peers, so it
/// cannot outlive a test binary that died without running destructors.
pub const NGINX_HARD_TIMEOUT: Duration = Duration::from_secs(600);
const NGINX_READY_TIMEOUT: Duration = Duration::from_secs(10);
const NGINX_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole nginx configuration: one single-process nginx in the foreground, every file it
/// writes inside `dir`, one RTMP application `live` on 127.0.0.1:`port`.
///
/// - `master_process off`: no worker process, hence no switch to the `user` (nobody /
///   www-data) that nginx makes in workers when started as root: nginx keeps the test's
///   uid and can write to `dir` whoever runs the tests. The rtmp module works in this mode
///   (it needs a master only for `rtmp_auto_push` between several workers).
/// - No `http` block: nothing of nginx's HTTP side (access log, temp directories) is
///   touched. The early error log (before this file is read) is `-e`.
/// - `error_log ... info` logs every connect/publish/play/disconnect.
/// - `access_log` in `dir` too: the rtmp module's default is the system's
///   /var/log/nginx/access.log (not writable without root).
fn nginx_config(dir: &Path, port: u16, application_directives: &str) -> String {
    let log = dir.join("nginx.log");
    let pid = dir.join("nginx.pid");
    format!(
        r#"# Written by tests/common/mod.rs (NginxRtmp) for one test.
load_module {NGINX_RTMP_MODULE};
daemon off;
master_process off;
worker_processes 1;
error_log "{log}" info;
pid "{pid}";
events {{}}
rtmp {{
    access_log "{access_log}";
    server {{
        listen 127.0.0.1:{port};
        chunk_size 4096;
        application live {{
            live on;
            record off;
            {application_directives}
        }}
    }}
}}
"#,
        log = log.display(),
        access_log = dir.join("access.log").display(),
        pid = pid.display(),
    )
}

/// nginx with the rtmp module (Debian's `libnginx-mod-rtmp`) as a real third-party RTMP
/// server, in its own [`TestDir`] (config, log, pid file) on its own loopback port: tests
/// running in parallel each get their own.
///
/// Command line: `timeout --foreground -s KILL 600s nginx -p DIR/ -e DIR/nginx.log
/// -c DIR/nginx.conf`, stdout and stderr appended to DIR/nginx.log too.
///
/// Behaviour with the default config (`live on; record off;`), nginx 1.22 / rtmp 1.2.2:
/// - a second publisher on a name being published is refused ("Already publishing";
///   ffmpeg exits 1), the first one goes on;
/// - players are not told when the publisher goes away (no UnpublishNotify, no close):
///   they end on their own idle timeout. With `start_with("publish_notify on;")` (or
///   `play_restart on;`) nginx sends it and ffmpeg/rtmpdump players end at once;
/// - a player may wait for a name nobody publishes yet (`idle_streams` is on) and gets the
///   stream from its first frame;
/// - timestamps go out as published (not rebased per player): a player joining late gets
///   audio at once and video from the next keyframe, at the publisher's timestamps;
/// - onMetaData is rebuilt by nginx (`meta on`: Server=NGINX RTMP, width, height, ...), not
///   the publisher's.
pub struct NginxRtmp {
    /// The `timeout` wrapper; nginx is its only child.
    wrapper: Option<Child>,
    /// nginx's own process id (read from its pid file).
    pid: u32,
    port: u16,
    log_path: PathBuf,
    command_line: String,
    exit: Option<ExitStatus>,
    // Declared last: dropped after the process has been stopped.
    dir: TestDir,
}

impl NginxRtmp {
    /// Starts nginx with the default application config; see [`NginxRtmp::start_with`].
    pub fn start() -> NginxRtmp {
        NginxRtmp::start_with("")
    }

    /// Starts nginx in a fresh [`TestDir`] with `application_directives` added inside
    /// `application live { live on; record off; ... }` (e.g. `"push rtmp://127.0.0.1:N/live;"`),
    /// and waits (≤ 10 s) until it has written its pid file (it does so after opening its
    /// listening socket) and accepts a TCP connection. Retries on another port if nginx
    /// exits early (e.g. the port was taken in between). Panics with the log tail on failure.
    pub fn start_with(application_directives: &str) -> NginxRtmp {
        let binary = require_tool("nginx");
        require_tool("timeout");
        let dir = TestDir::new();
        let log_path = dir.join("nginx.log");
        let conf_path = dir.join("nginx.conf");
        let pid_path = dir.join("nginx.pid");
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let port = free_port();
            fs::write(
                &conf_path,
                nginx_config(dir.path(), port, application_directives),
            )
            .unwrap_or_else(|e| panic!("write {}: {e}", conf_path.display()));
            let _ = fs::remove_file(&pid_path);
            fs::File::create(&log_path).expect("create nginx log");
            // Append mode, like nginx's own writes to it: no clobbering each other.
            let log = fs::OpenOptions::new()
                .append(true)
                .open(&log_path)
                .expect("open nginx log");
            let args = [
                "--foreground".to_string(),
                "-s".to_string(),
                "KILL".to_string(),
                format!("{}s", NGINX_HARD_TIMEOUT.as_secs()),
                s(&binary),
                "-p".to_string(),
                format!("{}/", dir.path().display()),
                "-e".to_string(),
                s(&log_path),
                "-c".to_string(),
                s(&conf_path),
            ];
            let command_line = format!("timeout {}", args.join(" "));
            let mut wrapper = Command::new("timeout")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone nginx log handle"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {command_line}: {e}"));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + NGINX_READY_TIMEOUT;
            loop {
                if let Some(status) = wrapper.try_wait().expect("try_wait nginx") {
                    last_failure = format!(
                        "nginx exited during startup with {status} ({command_line}); log tail:\n{}",
                        tail(&fs::read_to_string(&log_path).unwrap_or_default(), 40)
                    );
                    break;
                }
                let pid = fs::read_to_string(&pid_path)
                    .ok()
                    .and_then(|p| p.trim().parse::<u32>().ok());
                if let Some(pid) = pid {
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                        return NginxRtmp {
                            wrapper: Some(wrapper),
                            pid,
                            port,
                            log_path,
                            command_line,
                            exit: None,
                            dir,
                        };
                    }
                }
                if Instant::now() >= deadline {
                    send_signal(wrapper.id(), "ALRM");
                    if wait_timeout(&mut wrapper, Duration::from_secs(2)).is_none() {
                        let _ = wrapper.kill();
                        let _ = wrapper.wait();
                    }
                    panic!(
                        "nginx did not accept TCP connections on {addr} within {:?} \
                         ({command_line}); log tail:\n{}",
                        NGINX_READY_TIMEOUT,
                        tail(&fs::read_to_string(&log_path).unwrap_or_default(), 40)
                    );
                }
                thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("could not start nginx: {last_failure}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `rtmp://127.0.0.1:PORT/APP/NAME`
    pub fn url(&self, app: &str, name: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{app}/{name}", self.port)
    }

    /// nginx's own process id (not the `timeout` wrapper's): for signals such as STOP/CONT.
    /// Stale once nginx has exited.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The test's temp dir (nginx.conf, nginx.log; players' output files can go here too).
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }

    /// Everything nginx logged so far (level info: connects, publish, play, disconnects).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Fast shutdown: SIGTERM (nginx closes every connection and exits 0), SIGKILL if it is
    /// still running 5 s later. Returns its exit status (as the `timeout` wrapper passes it
    /// on); calling it again returns the same status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        send_signal(self.pid, "TERM");
        let wrapper = self.wrapper.as_mut().expect("nginx wrapper");
        match wait_timeout(wrapper, NGINX_STOP_TIMEOUT) {
            Some(status) => {
                self.exit = Some(status);
                status
            }
            None => {
                eprintln!("[harness] nginx ignored SIGTERM for {NGINX_STOP_TIMEOUT:?}: killing it");
                self.kill()
            }
        }
    }

    /// Kills nginx at once (SIGKILL: its connections are closed by the kernel, as if it
    /// crashed) and reaps it. Returns the exit status; idempotent.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exit_status() {
            return status;
        }
        let wrapper = self.wrapper.as_mut().expect("nginx wrapper");
        // SIGALRM makes `timeout` SIGKILL nginx, then exit.
        send_signal(wrapper.id(), "ALRM");
        let status = match wait_timeout(wrapper, Duration::from_secs(2)) {
            Some(status) => status,
            None => {
                send_signal(self.pid, "KILL");
                let _ = wrapper.kill();
                wrapper.wait().expect("wait nginx wrapper")
            }
        };
        self.exit = Some(status);
        status
    }

    /// The exit status if nginx has exited (reaping it).
    fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(wrapper) = self.wrapper.as_mut() {
                self.exit = wrapper.try_wait().expect("try_wait nginx");
            }
        }
        self.exit
    }
}

impl fmt::Debug for NginxRtmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nginx pid {} port {} [{}]",
            self.pid, self.port, self.command_line
        )
    }
}

impl Drop for NginxRtmp {
    fn drop(&mut self) {
        let status = self.kill();
        self.wrapper = None;
        if thread::panicking() {
            eprintln!(
                "[harness] nginx ({}) exit {status}, log ({}), last 60 lines:\n{}",
                self.command_line,
                self.log_path.display(),
                tail(&self.log(), 60)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Peers (ffmpeg / rtmpdump / gst-launch)
// ---------------------------------------------------------------------------------------

/// An external peer process under `timeout --foreground -s KILL <hard timeout>`.
/// Signals sent to the wrapper (TERM, INT) are forwarded to the peer exactly once;
/// SIGALRM makes the wrapper SIGKILL the peer.
pub struct Peer {
    name: String,
    command_line: String,
    child: Child,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
    started: Instant,
    status: Option<ExitStatus>,
    ended_at: Option<Instant>,
    /// Graceful stop: signals to forward, each followed by a wait.
    stop_sequence: &'static [(&'static str, u64)],
    output: Option<PathBuf>,
}

/// How a peer ended.
#[derive(Debug, Clone, Copy)]
pub struct PeerEnd {
    pub status: ExitStatus,
    /// false when it had to be stopped with signals.
    pub by_itself: bool,
    /// Time from spawn to exit.
    pub lifetime: Duration,
    /// When the exit was noticed (20 ms polling).
    pub ended_at: Instant,
}

impl Peer {
    pub fn spawn(
        name: &str,
        program: &str,
        args: &[String],
        hard_timeout: Duration,
        stop_sequence: &'static [(&'static str, u64)],
        output: Option<&Path>,
    ) -> Peer {
        require_tool("timeout");
        require_tool("kill");
        let command_line = format!("{program} {}", args.join(" "));
        let mut child = Command::new("timeout")
            .arg("--foreground")
            .arg("-s")
            .arg("KILL")
            .arg(format!("{}s", hard_timeout.as_secs().max(1)))
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name} ({command_line}): {e}"));
        let (stderr, reader) = capture(child.stderr.take().expect("stderr pipe"));
        Peer {
            name: name.to_string(),
            command_line,
            child,
            stderr,
            reader: Some(reader),
            started: Instant::now(),
            status: None,
            ended_at: None,
            stop_sequence,
            output: output.map(Path::to_path_buf),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    pub fn output(&self) -> Option<&Path> {
        self.output.as_deref()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait peer");
            if self.status.is_some() {
                self.ended_at = Some(Instant::now());
            }
        }
        self.status
    }

    /// Waits up to `limit` for the peer to exit by itself.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn end(&mut self, by_itself: bool) -> PeerEnd {
        self.join_reader();
        let ended_at = self.ended_at.unwrap_or_else(Instant::now);
        PeerEnd {
            status: self.status.expect("peer has exited"),
            by_itself,
            lifetime: ended_at - self.started,
            ended_at,
        }
    }

    /// Waits up to `limit` for the peer to exit by itself; if it does not, stops it
    /// gracefully (so it finishes its output file) and, as a last resort, kills it.
    pub fn wait_or_stop(&mut self, limit: Duration) -> PeerEnd {
        if self.wait(limit).is_some() {
            return self.end(true);
        }
        self.stop();
        self.end(false)
    }

    /// Graceful stop (peer-specific signal sequence), then SIGKILL.
    pub fn stop(&mut self) -> ExitStatus {
        for (signal, wait_ms) in self.stop_sequence {
            if let Some(status) = self.try_status() {
                self.join_reader();
                return status;
            }
            send_signal(self.child.id(), signal);
            if let Some(status) = self.wait(Duration::from_millis(*wait_ms)) {
                self.join_reader();
                return status;
            }
        }
        self.kill()
    }

    /// Hard kill: SIGALRM makes the `timeout` wrapper SIGKILL the peer; if the wrapper
    /// does not go away, SIGKILL the wrapper too.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            self.join_reader();
            return status;
        }
        send_signal(self.child.id(), "ALRM");
        let status = match self.wait(Duration::from_secs(2)) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait peer");
                self.status = Some(status);
                self.ended_at = Some(Instant::now());
                status
            }
        };
        self.join_reader();
        status
    }

    fn join_reader(&mut self) {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// Panics with the peer's stderr unless it exited with status 0.
    pub fn assert_success(&mut self, end: &PeerEnd) {
        assert!(
            end.status.success(),
            "{} exited with {} ({}); stderr:\n{}",
            self.name,
            end.status,
            self.command_line,
            tail(&self.stderr(), 30)
        );
    }
}

/// Waits (polling all of them) up to `limit` for every peer to exit by itself, then stops
/// the ones still running. Exit times are accurate to the polling interval for all peers.
pub fn wait_all_or_stop(peers: &mut [Peer], limit: Duration) -> Vec<PeerEnd> {
    let deadline = Instant::now() + limit;
    loop {
        let mut running = 0;
        for p in peers.iter_mut() {
            if p.try_status().is_none() {
                running += 1;
            }
        }
        if running == 0 || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    peers
        .iter_mut()
        .map(|p| {
            if p.try_status().is_some() {
                p.end(true)
            } else {
                p.stop();
                p.end(false)
            }
        })
        .collect()
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]", self.name, self.command_line)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!(
                "[harness] {} ({}) exit {:?}, stderr tail:\n{}",
                self.name,
                self.command_line,
                self.status,
                tail(&self.stderr(), 20)
            );
        }
    }
}

/// Players end by themselves when no data arrived for this long (a fallback for servers that
/// do not send NetStream.Play.UnpublishNotify when the publisher goes away).
pub const PLAYER_IDLE_TIMEOUT_S: &str = "4";
const FFMPEG_RW_TIMEOUT_US: &str = "3000000";
/// Upper bound for a player to end by itself after the last data it got.
pub const PLAYER_END_GRACE: Duration = Duration::from_secs(9);

/// ffmpeg ignores the first SIGTERM while it is blocked in a network read (it only sets a
/// flag); the second one interrupts the read and ffmpeg still writes its trailer.
const FFMPEG_STOP: &[(&str, u64)] = &[("TERM", 400), ("TERM", 3000)];
const RTMPDUMP_STOP: &[(&str, u64)] = &[("TERM", 3000)];
/// gst-launch -e turns SIGINT into an EOS, so filesink flushes.
const GST_STOP: &[(&str, u64)] = &[("INT", 3000), ("TERM", 1000)];

fn s(x: impl AsRef<std::ffi::OsStr>) -> String {
    x.as_ref().to_string_lossy().into_owned()
}

/// How long a publisher of the clip may take: its length plus a margin.
pub const PUBLISH_LIMIT: Duration = Duration::from_secs(CLIP_SECS + 15);

/// Waits for a publisher of the clip to finish (≤ [`PUBLISH_LIMIT`]) and
/// succeed; returns when it ended.
pub fn wait_publisher(publisher: &mut Peer) -> Instant {
    let status = publisher.wait(PUBLISH_LIMIT).unwrap_or_else(|| {
        panic!(
            "publisher still running after {PUBLISH_LIMIT:?}; stderr:\n{}",
            publisher.stderr()
        )
    });
    assert!(
        status.success(),
        "publisher ({}) exited with {status}; stderr:\n{}",
        publisher.command_line(),
        publisher.stderr()
    );
    Instant::now()
}

/// `ffmpeg -re -i CLIP -c copy -f flv URL`
pub fn publish_ffmpeg(url: &str, clip: &Path) -> Peer {
    let args = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-re",
        "-i",
        &s(clip),
        "-c",
        "copy",
        "-f",
        "flv",
        url,
    ]
    .map(String::from);
    Peer::spawn(
        "ffmpeg publisher",
        &require_tool("ffmpeg"),
        &args,
        PUBLISHER_HARD_TIMEOUT,
        FFMPEG_STOP,
        None,
    )
}

/// `ffmpeg -rw_timeout 3000000 -i URL -c copy -f flv OUT`
pub fn play_ffmpeg(url: &str, out: &Path) -> Peer {
    let args = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-y",
        // No data for this long (µs) ends the input cleanly (trailer written, exit 0). It is
        // applied at both the rtmp and the tcp layer, so ffmpeg gives up after about twice
        // that. Only matters if the server does not send NetStream.Play.UnpublishNotify.
        "-rw_timeout",
        FFMPEG_RW_TIMEOUT_US,
        "-i",
        url,
        "-c",
        "copy",
        "-f",
        "flv",
        &s(out),
    ]
    .map(String::from);
    Peer::spawn(
        "ffmpeg player",
        &require_tool("ffmpeg"),
        &args,
        PLAYER_HARD_TIMEOUT,
        FFMPEG_STOP,
        Some(out),
    )
}

/// `rtmpdump -q -r URL --live --timeout 4 -o OUT` (rtmpdump splits app/playpath from the URL itself:
/// app = first path segment, playpath = the rest).
pub fn play_rtmpdump(url: &str, out: &Path) -> Peer {
    let args = [
        "-q",
        "-r",
        url,
        "--live",
        "--timeout",
        PLAYER_IDLE_TIMEOUT_S,
        "-o",
        &s(out),
    ]
    .map(String::from);
    Peer::spawn(
        "rtmpdump",
        &require_tool("rtmpdump"),
        &args,
        PLAYER_HARD_TIMEOUT,
        RTMPDUMP_STOP,
        Some(out),
    )
}

/// `gst-launch-1.0 -q -e rtmp2src location=URL idle-timeout=4 ! filesink location=OUT`
/// (rtmp2src already emits a complete FLV byte stream, no remux needed).
pub fn play_gst(url: &str, out: &Path) -> Peer {
    let args = [
        "-q".to_string(),
        "-e".to_string(),
        "rtmp2src".to_string(),
        format!("location={url}"),
        format!("idle-timeout={PLAYER_IDLE_TIMEOUT_S}"),
        "!".to_string(),
        "filesink".to_string(),
        format!("location={}", out.display()),
    ];
    Peer::spawn(
        "gst rtmp2src",
        &require_tool("gstreamer"),
        &args,
        PLAYER_HARD_TIMEOUT,
        GST_STOP,
        Some(out),
    )
}

/// Runs a short helper command (ffmpeg/ffprobe) with a hard timeout; returns
/// (status, stdout, stderr).
pub fn run_tool(program: &str, args: &[String], limit: Duration) -> (ExitStatus, String, String) {
    require_tool("timeout");
    let mut child = Command::new("timeout")
        .arg("-s")
        .arg("KILL")
        .arg(format!("{}s", limit.as_secs().max(1)))
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let (out, out_reader) = capture(child.stdout.take().unwrap());
    let (err, err_reader) = capture(child.stderr.take().unwrap());
    let status = child.wait().expect("wait tool");
    let _ = out_reader.join();
    let _ = err_reader.join();
    let out = String::from_utf8_lossy(&out.lock().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&err.lock().unwrap()).into_owned();
    (status, out, err)
}

// ---------------------------------------------------------------------------------------
// The clip
// ---------------------------------------------------------------------------------------

/// H.264 + AAC FLV, 640x360 30 fps, keyframe every 2 s, 8 s. Generated once per test
/// binary (concurrent callers block on the OnceLock) into CARGO_TARGET_TMPDIR.
pub fn clip() -> &'static Path {
    static CLIP: OnceLock<PathBuf> = OnceLock::new();
    CLIP.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(&dir).expect("create CARGO_TARGET_TMPDIR");
        remove_stale_clips(&dir);
        let path = dir.join(format!("sluice-clip-{}.flv", std::process::id()));
        let args: Vec<String> = [
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size=640x360:rate={CLIP_FPS}"),
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
            "-t",
            &CLIP_SECS.to_string(),
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-b:v",
            "1500k",
            "-g",
            &CLIP_GOP.to_string(),
            "-keyint_min",
            &CLIP_GOP.to_string(),
            "-sc_threshold",
            "0",
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "aac",
            "-ar",
            "44100",
            "-ac",
            "2",
            "-b:a",
            "128k",
            "-f",
            "flv",
            &s(&path),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let (status, _, err) = run_tool(&require_tool("ffmpeg"), &args, Duration::from_secs(60));
        assert!(
            status.success(),
            "generating the clip failed ({status}):\n{err}"
        );
        path
    })
}

fn remove_stale_clips(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("sluice-clip-") {
            continue;
        }
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The clip's packets (ffprobe'd once per test binary).
pub fn clip_packets() -> &'static [Packet] {
    static PACKETS: OnceLock<Vec<Packet>> = OnceLock::new();
    PACKETS.get_or_init(|| {
        let packets = packets(clip());
        let video = packets.iter().filter(|p| p.media == Media::Video).count() as u64;
        assert_eq!(
            video,
            CLIP_SECS * CLIP_FPS,
            "unexpected clip video packet count"
        );
        packets
    })
}

// ---------------------------------------------------------------------------------------
// ffprobe
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Video,
    Audio,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub media: Media,
    pub dts: i64,
    pub pts: i64,
    pub keyframe: bool,
    pub size: u32,
    /// "MD5:<hex>" of the packet payload
    pub hash: String,
}

impl fmt::Display for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} dts={} pts={} key={} size={} {}",
            self.media, self.dts, self.pts, self.keyframe, self.size, self.hash
        )
    }
}

/// All audio/video packets of `file`, in file order, via
/// `ffprobe -v error -show_entries packet=stream_index,codec_type,pts,dts,flags,size,data_hash
///  -show_data_hash MD5 -of csv=nokey=0 FILE`
/// (`data_hash` must be named in -show_entries or ffprobe prints no hash at all.)
pub fn packets(file: &Path) -> Vec<Packet> {
    let args: Vec<String> = [
        "-v",
        "error",
        "-show_entries",
        "packet=stream_index,codec_type,pts,dts,flags,size,data_hash",
        "-show_data_hash",
        "MD5",
        "-of",
        "csv=nokey=0",
        &s(file),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (status, out, err) = run_tool(&require_tool("ffprobe"), &args, Duration::from_secs(30));
    assert!(
        status.success(),
        "ffprobe {} failed ({status}): {err}",
        file.display()
    );
    parse_packets(&out)
        .unwrap_or_else(|e| panic!("parsing ffprobe output of {}: {e}", file.display()))
}

/// Parses `packet,codec_type=video,stream_index=0,pts=..,dts=..,size=..,flags=K_,data_hash=MD5:..`
pub fn parse_packets(csv: &str) -> Result<Vec<Packet>, String> {
    let mut packets = Vec::new();
    for line in csv.lines() {
        let mut fields = line.split(',');
        if fields.next() != Some("packet") {
            continue;
        }
        let (mut media, mut dts, mut pts, mut key, mut size, mut hash) =
            (None, None, None, None, None, None);
        for field in fields {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            match k {
                "codec_type" => {
                    media = match v {
                        "video" => Some(Some(Media::Video)),
                        "audio" => Some(Some(Media::Audio)),
                        _ => Some(None),
                    }
                }
                "dts" => dts = v.parse::<i64>().ok(),
                "pts" => pts = v.parse::<i64>().ok(),
                "flags" => key = Some(v.starts_with('K')),
                "size" => size = v.parse::<u32>().ok(),
                "data_hash" => hash = Some(v.to_string()),
                _ => {}
            }
        }
        let media = match media {
            Some(Some(m)) => m,
            Some(None) => continue, // data/subtitle streams
            None => return Err(format!("no codec_type in {line:?}")),
        };
        let dts = dts
            .or(pts)
            .ok_or_else(|| format!("no dts/pts in {line:?}"))?;
        packets.push(Packet {
            media,
            dts,
            pts: pts.unwrap_or(dts),
            keyframe: key.ok_or_else(|| format!("no flags in {line:?}"))?,
            size: size.ok_or_else(|| format!("no size in {line:?}"))?,
            hash: hash.ok_or_else(|| format!("no data_hash in {line:?}"))?,
        });
    }
    Ok(packets)
}

#[derive(Debug, Clone, Default)]
pub struct StreamInfo {
    pub codec_type: String,
    pub codec_name: String,
    pub width: u32,
    pub height: u32,
}

/// Streams of `file` as ffprobe sees them (codec_name, width/height from the codec config).
pub fn streams(file: &Path) -> Vec<StreamInfo> {
    let args: Vec<String> = [
        "-v",
        "error",
        "-show_entries",
        "stream=codec_type,codec_name,width,height",
        "-of",
        "csv=nokey=0",
        &s(file),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (status, out, err) = run_tool(&require_tool("ffprobe"), &args, Duration::from_secs(30));
    assert!(status.success(), "ffprobe {} failed: {err}", file.display());
    out.lines()
        .filter(|l| l.starts_with("stream,"))
        .map(|line| {
            let mut info = StreamInfo::default();
            for (k, v) in line.split(',').filter_map(|f| f.split_once('=')) {
                match k {
                    "codec_type" => info.codec_type = v.to_string(),
                    "codec_name" => info.codec_name = v.to_string(),
                    "width" => info.width = v.parse().unwrap_or(0),
                    "height" => info.height = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
            info
        })
        .collect()
}

/// Asserts the file has an H.264 video stream whose codec config says 640x360.
pub fn assert_h264_640x360(file: &Path) {
    let streams = streams(file);
    let video = streams.iter().find(|s| s.codec_type == "video");
    assert!(
        video.is_some_and(|v| v.codec_name == "h264" && v.width == 640 && v.height == 360),
        "{}: expected an h264 640x360 video stream (AVC sequence header), ffprobe says {streams:?}",
        file.display()
    );
}

/// Decodes the whole file (`ffmpeg -v error -i FILE -f null -`); asserts exit 0 and no
/// error output.
pub fn assert_decodes_cleanly(file: &Path) {
    let args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-i",
        &s(file),
        "-f",
        "null",
        "-",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (status, _, err) = run_tool(&require_tool("ffmpeg"), &args, Duration::from_secs(60));
    assert!(
        status.success() && err.trim().is_empty(),
        "decoding {} failed ({status}):\n{}",
        file.display(),
        tail(&err, 30)
    );
}

// ---------------------------------------------------------------------------------------
// Comparing received with published
// ---------------------------------------------------------------------------------------

/// Where the received stream joined the published one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    /// Index (among published video packets) of the keyframe the player started on.
    pub video_from: usize,
    /// Index of the first received video packet that was compared (the first keyframe).
    pub received_video_from: usize,
    /// Index (among published audio packets) of the first received audio packet.
    pub audio_from: usize,
    /// Published dts of the first received audio packet relative to the join keyframe's dts
    /// (≤ 0: no audio missing from the keyframe's time on).
    pub audio_from_rel_ms: i64,
    pub video_compared: usize,
    pub audio_compared: usize,
    /// Published packets at the very end that the player did not write (≤ tail slack).
    pub missing_at_end: usize,
}

/// Audio must be present from this long after the join keyframe on.
pub const AUDIO_JOIN_GRACE_MS: i64 = 200;

/// See [`compare_from_first_keyframe`]; panics with its message.
pub fn assert_same_from_first_keyframe(published: &[Packet], received: &[Packet]) -> Join {
    compare_from_first_keyframe(published, received, 0).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`assert_same_from_first_keyframe`], but tolerates the player not writing the last
/// `tail_slack` published packets (in published file order; rtmp2src drops the message it
/// holds when the stream ends).
pub fn assert_same_from_first_keyframe_with_tail_slack(
    published: &[Packet],
    received: &[Packet],
    tail_slack: usize,
) -> Join {
    compare_from_first_keyframe(published, received, tail_slack).unwrap_or_else(|e| panic!("{e}"))
}

struct Track<'a> {
    /// (index in the full list, packet)
    packets: Vec<(usize, &'a Packet)>,
}

impl<'a> Track<'a> {
    fn new(all: &'a [Packet], media: Media) -> Track<'a> {
        Track {
            packets: all
                .iter()
                .enumerate()
                .filter(|(_, p)| p.media == media)
                .collect(),
        }
    }
    fn len(&self) -> usize {
        self.packets.len()
    }
    fn get(&self, i: usize) -> Option<&'a Packet> {
        self.packets.get(i).map(|(_, p)| *p)
    }
}

/// Compares what a player received with what was published, from the first received
/// video keyframe on:
/// - video: from that keyframe (located in the published stream by hash), packet for packet
///   to the end of the published stream: same hash, size, keyframe flag, and dts/pts
///   relative to the join keyframe (players rebase timestamps);
/// - audio: the received audio must be one contiguous run of the published audio (same
///   checks, timestamps relative to the same video keyframe, so A/V sync is checked too),
///   starting no later than the join keyframe's time + 200 ms and running to the end.
///
/// The last `tail_slack` packets of the published stream (file order) may be missing.
pub fn compare_from_first_keyframe(
    published: &[Packet],
    received: &[Packet],
    tail_slack: usize,
) -> Result<Join, String> {
    let pv = Track::new(published, Media::Video);
    let pa = Track::new(published, Media::Audio);
    let rv = Track::new(received, Media::Video);
    let ra = Track::new(received, Media::Audio);
    let slack_from = published.len().saturating_sub(tail_slack);

    if rv.len() == 0 {
        return Err(format!(
            "received no video at all ({} audio packets); published {} video packets",
            ra.len(),
            pv.len()
        ));
    }
    let k = (0..rv.len())
        .find(|&i| rv.get(i).unwrap().keyframe)
        .ok_or_else(|| {
            format!(
                "none of the {} received video packets is a keyframe",
                rv.len()
            )
        })?;
    let key = rv.get(k).unwrap();
    let j = (0..pv.len())
        .find(|&i| {
            let p = pv.get(i).unwrap();
            p.keyframe && p.hash == key.hash && p.size == key.size
        })
        .ok_or_else(|| {
            format!(
                "the first received keyframe (received video #{k}: {key}) is not a keyframe of the \
                 published stream"
            )
        })?;
    let p_base = pv.get(j).unwrap().dts;
    let r_base = key.dts;

    let (video_compared, video_missing) =
        compare_track("video", &pv, j, &rv, k, p_base, r_base, slack_from)?;

    // Audio.
    let mut audio_from = 0;
    let mut audio_from_rel_ms = 0;
    let mut audio_compared = 0;
    let mut audio_missing = 0;
    if pa.len() > 0 {
        let first = ra.get(0).ok_or_else(|| {
            format!(
                "received no audio; published {} audio packets from the join point on",
                pa.len()
            )
        })?;
        let candidates: Vec<usize> = (0..pa.len())
            .filter(|&i| {
                let p = pa.get(i).unwrap();
                p.hash == first.hash && p.size == first.size
            })
            .collect();
        let s = candidates
            .iter()
            .copied()
            .find(|&i| pa.get(i).unwrap().dts - p_base == first.dts - r_base)
            .or_else(|| candidates.first().copied())
            .ok_or_else(|| {
                format!(
                    "the first received audio packet ({first}) is not part of the published audio"
                )
            })?;
        let must_start = (0..pa.len())
            .find(|&i| pa.get(i).unwrap().dts >= p_base + AUDIO_JOIN_GRACE_MS)
            .unwrap_or(pa.len());
        if s > must_start {
            let p = pa.get(must_start).unwrap();
            return Err(format!(
                "audio starts too late: received audio begins with published audio #{s} (dts {} \
                 relative to the join keyframe), but everything from published audio #{must_start} \
                 ({} ms after the keyframe) on is required",
                pa.get(s).unwrap().dts - p_base,
                p.dts - p_base
            ));
        }
        (audio_compared, audio_missing) =
            compare_track("audio", &pa, s, &ra, 0, p_base, r_base, slack_from)?;
        audio_from = s;
        audio_from_rel_ms = pa.get(s).unwrap().dts - p_base;
    }

    Ok(Join {
        video_from: j,
        received_video_from: k,
        audio_from,
        audio_from_rel_ms,
        video_compared,
        audio_compared,
        missing_at_end: video_missing + audio_missing,
    })
}

/// Compares `received[r0..]` with `published[p0..]`; returns (compared, missing at the end).
#[allow(clippy::too_many_arguments)]
fn compare_track(
    what: &str,
    published: &Track,
    p0: usize,
    received: &Track,
    r0: usize,
    p_base: i64,
    r_base: i64,
    slack_from: usize,
) -> Result<(usize, usize), String> {
    let rel = |p: &Packet, base: i64| (p.dts - base, p.pts - base);
    let same = |p: &Packet, r: &Packet| {
        p.hash == r.hash
            && p.size == r.size
            && p.keyframe == r.keyframe
            && rel(p, p_base) == rel(r, r_base)
    };
    let show = |p: &Packet, base: i64| {
        let (d, t) = rel(p, base);
        format!(
            "rel dts={d} pts={t} key={} size={} {}",
            p.keyframe, p.size, p.hash
        )
    };
    let mut i = 0;
    loop {
        let (pi, ri) = (p0 + i, r0 + i);
        match (published.get(pi), received.get(ri)) {
            (None, None) => return Ok((i, 0)),
            (Some(p), Some(r)) => {
                if !same(p, r) {
                    let next_p = published.get(pi + 1);
                    let next_r = received.get(ri + 1);
                    let hash_eq =
                        |a: Option<&Packet>, b: &Packet| a.is_some_and(|a| a.hash == b.hash);
                    let what_happened = if hash_eq(next_p, r) && hash_eq(next_r, p) {
                        format!(
                            "published {what} #{pi} and #{} arrived swapped (reordered)",
                            pi + 1
                        )
                    } else if hash_eq(next_p, r) {
                        format!(
                            "published {what} #{pi} is missing (dropped): received {what} #{ri} is published #{}",
                            pi + 1
                        )
                    } else if hash_eq(next_r, p) {
                        format!("received {what} #{ri} is extra: it is not in the published stream here")
                    } else if p.hash == r.hash && p.size == r.size && p.keyframe == r.keyframe {
                        format!("timestamps differ at received {what} #{ri} / published #{pi}")
                    } else if p.hash == r.hash && p.size == r.size {
                        format!("keyframe flag differs at received {what} #{ri} / published #{pi}")
                    } else {
                        format!("payload differs at received {what} #{ri} / published #{pi}")
                    };
                    return Err(format!(
                        "{what} mismatch, {} packets in after the join: {what_happened}\n  \
                         published #{pi}: {}\n  received  #{ri}: {}",
                        i,
                        show(p, p_base),
                        show(r, r_base)
                    ));
                }
            }
            (Some(p), None) => {
                let missing = published.len() - pi;
                let all_in_slack = published.packets[pi..]
                    .iter()
                    .all(|(idx, _)| *idx >= slack_from);
                if all_in_slack {
                    return Ok((i, missing));
                }
                let last = published.get(published.len() - 1).unwrap();
                return Err(format!(
                    "received {what} ends early: the last {missing} published {what} packets \
                     (#{pi}..#{}, rel dts {}..{}) are missing; first missing: {}",
                    published.len() - 1,
                    p.dts - p_base,
                    last.dts - p_base,
                    show(p, p_base)
                ));
            }
            (None, Some(r)) => {
                return Err(format!(
                    "received {} extra {what} packets after the end of the published stream; \
                     first extra (received #{ri}): {}",
                    received.len() - ri,
                    show(r, r_base)
                ));
            }
        }
        i += 1;
    }
}

/// Prints how a player ended (relative to `since`, e.g. when the publisher finished) and
/// asserts it wrote a file; returns its packets.
pub fn received_packets(peer: &Peer, end: &PeerEnd, since: Instant) -> Vec<Packet> {
    let out = peer.output().expect("player has an output file");
    let rel = if end.ended_at >= since {
        format!("{:.2}s after", (end.ended_at - since).as_secs_f64())
    } else {
        format!("{:.2}s before", (since - end.ended_at).as_secs_f64())
    };
    eprintln!(
        "[harness] {}: {}, {} {rel} the reference point (ran {:.1}s)",
        peer.name(),
        end.status,
        if end.by_itself {
            "ended by itself"
        } else {
            "had to be stopped"
        },
        end.lifetime.as_secs_f64()
    );
    let len = fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    assert!(
        len > 0,
        "{} wrote nothing to {} (exit {}); stderr:\n{}",
        peer.name(),
        out.display(),
        end.status,
        tail(&peer.stderr(), 30)
    );
    packets(out)
}

// ---------------------------------------------------------------------------------------
// Unit tests of the comparison itself
// ---------------------------------------------------------------------------------------

/// Writes tags as an FLV file (header, then each tag with its
/// PreviousTagSize): `(tag type: 8 audio, 9 video, 18 data, timestamp,
/// body)`, for the tests that save what a player got and read it back with
/// ffmpeg.
pub fn write_flv_tags<'a>(path: &Path, tags: impl IntoIterator<Item = (u8, u32, &'a [u8])>) {
    let mut b = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
    for (kind, ts, body) in tags {
        let len = body.len() as u32;
        b.push(kind);
        b.extend_from_slice(&len.to_be_bytes()[1..]);
        b.extend_from_slice(&ts.to_be_bytes()[1..]);
        b.push((ts >> 24) as u8);
        b.extend_from_slice(&[0, 0, 0]);
        b.extend_from_slice(body);
        b.extend_from_slice(&(len + 11).to_be_bytes());
    }
    fs::write(path, b).unwrap();
}

#[cfg(test)]
mod compare_tests {
    use super::*;

    /// 6 GOPs of 4 video frames (33 ms) interleaved with audio every 23 ms.
    fn synthetic() -> Vec<Packet> {
        let mut v = Vec::new();
        let mut audio_t = 0;
        for n in 0..24i64 {
            let t = n * 33 + 10;
            while audio_t <= t {
                v.push(Packet {
                    media: Media::Audio,
                    dts: audio_t,
                    pts: audio_t,
                    keyframe: true,
                    size: 300 + (audio_t % 7) as u32,
                    hash: format!("MD5:a{audio_t}"),
                });
                audio_t += 23;
            }
            v.push(Packet {
                media: Media::Video,
                dts: t,
                pts: t,
                keyframe: n % 4 == 0,
                size: 1000 + n as u32,
                hash: format!("MD5:v{n}"),
            });
        }
        v
    }

    /// What a late joiner at frame 4 sees: rebased timestamps, audio from just before.
    fn joined_at_second_gop(published: &[Packet]) -> Vec<Packet> {
        let key_pos = published
            .iter()
            .position(|p| p.media == Media::Video && p.hash == "MD5:v4")
            .unwrap();
        let base = published[key_pos].dts - 5;
        published[key_pos - 1..]
            .iter()
            .map(|p| Packet {
                dts: p.dts - base,
                pts: p.pts - base,
                ..p.clone()
            })
            .collect()
    }

    fn video_positions(list: &[Packet]) -> Vec<usize> {
        list.iter()
            .enumerate()
            .filter(|(_, p)| p.media == Media::Video)
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn identical_passes() {
        let p = synthetic();
        let j = compare_from_first_keyframe(&p, &p, 0).unwrap();
        assert_eq!(j.video_from, 0);
        assert_eq!(j.audio_from, 0);
        assert_eq!(j.video_compared, 24);
    }

    #[test]
    fn late_join_with_rebased_timestamps_passes() {
        let p = synthetic();
        let r = joined_at_second_gop(&p);
        let j = compare_from_first_keyframe(&p, &r, 0).unwrap();
        assert_eq!(j.video_from, 4);
        assert_eq!(j.video_compared, 20);
    }

    #[test]
    fn leading_non_keyframes_are_skipped() {
        let p = synthetic();
        let vp = video_positions(&p);
        let r = p[vp[2]..].to_vec(); // starts on frame 2, first keyframe is frame 4
        let j = compare_from_first_keyframe(&p, &r, 0).unwrap();
        assert_eq!((j.video_from, j.received_video_from), (4, 2));
    }

    #[test]
    fn dropped_frame_fails() {
        let p = synthetic();
        let mut r = p.clone();
        r.remove(video_positions(&p)[6]);
        let e = compare_from_first_keyframe(&p, &r, 0).unwrap_err();
        assert!(e.contains("video #6 is missing"), "{e}");
    }

    #[test]
    fn reordered_frame_fails() {
        let p = synthetic();
        let mut r = p.clone();
        let vp = video_positions(&p);
        r.swap(vp[6], vp[7]);
        // keep timestamps in place, swap payloads only
        let (a, b) = (r[vp[6]].dts, r[vp[7]].dts);
        r[vp[6]].dts = a.min(b);
        r[vp[6]].pts = a.min(b);
        r[vp[7]].dts = a.max(b);
        r[vp[7]].pts = a.max(b);
        let e = compare_from_first_keyframe(&p, &r, 0).unwrap_err();
        assert!(e.contains("swapped"), "{e}");
    }

    #[test]
    fn changed_hash_fails() {
        let p = synthetic();
        let mut r = p.clone();
        r[video_positions(&p)[9]].hash = "MD5:corrupt".into();
        let e = compare_from_first_keyframe(&p, &r, 0).unwrap_err();
        assert!(e.contains("payload differs at received video #9"), "{e}");
    }

    #[test]
    fn changed_timestamp_fails() {
        let p = synthetic();
        let mut r = p.clone();
        r[video_positions(&p)[3]].dts += 1;
        let e = compare_from_first_keyframe(&p, &r, 0).unwrap_err();
        assert!(e.contains("timestamps differ"), "{e}");
    }

    #[test]
    fn audio_shifted_against_video_fails() {
        let p = synthetic();
        let r: Vec<Packet> = p
            .iter()
            .map(|x| match x.media {
                Media::Audio => Packet {
                    dts: x.dts + 40,
                    pts: x.pts + 40,
                    ..x.clone()
                },
                Media::Video => x.clone(),
            })
            .collect();
        let e = compare_from_first_keyframe(&p, &r, 0).unwrap_err();
        assert!(
            e.contains("audio mismatch") && e.contains("timestamps differ"),
            "{e}"
        );
    }

    #[test]
    fn truncated_end_fails_unless_within_slack() {
        let p = synthetic();
        let r = p[..p.len() - 1].to_vec();
        let e = compare_from_first_keyframe(&p, &r, 0).unwrap_err();
        assert!(e.contains("ends early"), "{e}");
        let j = compare_from_first_keyframe(&p, &r, 1).unwrap();
        assert_eq!(j.missing_at_end, 1);
        let r = p[..p.len() - 4].to_vec();
        assert!(compare_from_first_keyframe(&p, &r, 1).is_err());
    }

    #[test]
    fn extra_packet_at_end_fails() {
        let p = synthetic();
        let mut r = p.clone();
        let mut extra = r[r.len() - 1].clone();
        extra.dts += 33;
        extra.pts += 33;
        extra.hash = "MD5:extra".into();
        r.push(extra);
        assert!(compare_from_first_keyframe(&p, &r, 0).is_err());
    }

    #[test]
    fn audio_starting_late_fails() {
        let p = synthetic();
        let mut r = joined_at_second_gop(&p);
        // drop the first 12 received audio packets (≈ 276 ms)
        let mut dropped = 0;
        r.retain(|x| {
            if x.media == Media::Audio && dropped < 12 {
                dropped += 1;
                false
            } else {
                true
            }
        });
        let e = compare_from_first_keyframe(&p, &r, 0).unwrap_err();
        assert!(e.contains("audio starts too late"), "{e}");
    }

    #[test]
    fn gap_in_audio_fails() {
        let p = synthetic();
        let mut r = p.clone();
        let a = r
            .iter()
            .position(|x| x.media == Media::Audio && x.dts == 23 * 5)
            .unwrap();
        r.remove(a);
        let e = compare_from_first_keyframe(&p, &r, 0).unwrap_err();
        assert!(e.contains("audio #5 is missing"), "{e}");
    }

    #[test]
    fn parses_ffprobe_csv() {
        let csv = "packet,codec_type=audio,stream_index=1,pts=0,dts=0,size=338,flags=K_,data_hash=MD5:1fc8\n\
                   packet,codec_type=video,stream_index=0,pts=23,dts=23,size=15615,flags=K_,data_hash=MD5:c782\n\
                   packet,codec_type=video,stream_index=0,pts=56,dts=56,size=7737,flags=__,data_hash=MD5:35cb\n";
        let p = parse_packets(csv).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].media, Media::Video);
        assert!(p[1].keyframe && !p[2].keyframe);
        assert_eq!(
            (p[2].dts, p[2].size, p[2].hash.as_str()),
            (56, 7737, "MD5:35cb")
        );
    }
}
