//! Headless Chromium for the browser tests, driven over the Chrome DevTools
//! Protocol (CDP), and a static file server for the pages it opens.
//!
//! [`Browser::launch`] starts Debian's `chromium` headless with a fresh profile
//! directory and `--remote-debugging-port=0`, reads the port Chromium chose from
//! `DevToolsActivePort` in that profile, connects one WebSocket (tungstenite, as
//! the ws-flv tests use) to the browser endpoint and attaches to its page with a
//! flat session (`Target.attachToTarget`, `flatten: true`), so every page
//! command and event goes over that one socket with the page's `sessionId`.
//! CDP is JSON over WebSocket: a command is `{id, method, params, sessionId}`,
//! its answer carries the same `id`, everything else is an event. The harness
//! records the page's events while it waits for an answer: console messages
//! (`Runtime.consoleAPICalled`), uncaught exceptions (`Runtime.exceptionThrown`),
//! browser log entries such as failed loads (`Log.entryAdded`), load events and
//! crashes.
//!
//! Bounds: every CDP call has a deadline ([`CDP_CALL_TIMEOUT`] unless the
//! caller gives one), every wait takes a limit, and Chromium runs under
//! `timeout -s KILL` ([`BROWSER_HARD_TIMEOUT`]) in a process group of its own:
//! dropping the [`Browser`] (also while a test panics) SIGKILLs the whole group
//! (browser, zygotes, renderers, GPU and utility processes), waits until none is
//! left and removes the profile directory. If the test binary itself is killed,
//! `timeout` still kills the group at the hard deadline. Crash uploads are
//! off and `HOME` points into the profile directory, so nothing is written
//! outside it; Chromium's crashpad handler (a session of its own, not in the
//! group) exits with the browser, and the drop waits for it too.
//!
//! Using it (see tests/browser.rs):
//!
//! ```ignore
//! let site = StaticServer::with_players(dir.path());      // /vendor/... + dir at /
//! fs::write(dir.join("play.html"), mpegts_page(&ws_url))?; // or hls_page(url, config)
//! let mut browser = Browser::launch();
//! browser.navigate(&site.url("/play.html"))?;
//! let playback = browser.wait_playback(3.0, Duration::from_secs(30))?;
//! let latency = browser.eval("hls.latency")?;               // any JS expression, as JSON
//! browser.screenshot(&png_path)?;
//! assert!(browser.errors().is_empty());
//! ```
//!
//! Pages made by [`mpegts_page`] and [`hls_page`] share one contract: a
//! `<video id="video" muted autoplay>` and a `window.sluice` object whose
//! `state()` reports the video element (currentTime, videoWidth, readyState,
//! frames decoded and dropped, buffered ranges), the player's figures (hls.js:
//! latency, targetLatency, drift, liveSyncPosition; mpegts.js: its statistics)
//! and the errors the page saw. `sluice.fail(msg)` records an error and logs it
//! with `console.error`, so the harness sees it too.
//!
//! The static server and Sluice are two origins: what a page fetches from
//! Sluice (HTTP-FLV, playlists, segments) needs Sluice's
//! `Access-Control-Allow-Origin` (`*` unless `--cors-origin`; tests/browser.rs
//! checks both ways); a WebSocket (ws-flv) needs none. A page Sluice serves
//! itself is simply navigated to.
//!
//! Chromium's own stderr (D-Bus complaints and the like in a container) is
//! kept in memory and printed when a test fails.

use super::{require_tool, run_tool, send_signal, tail, Peer, FFMPEG_STOP};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::fmt;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// Deadline of one CDP command (answer included) unless the caller gives one.
pub const CDP_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long Chromium may take to start and open its DevTools endpoint (a loaded
/// 2-core machine needs a few seconds).
pub const LAUNCH_TIMEOUT: Duration = Duration::from_secs(30);
/// Chromium's hard deadline (`timeout -s KILL`): it cannot outlive a test binary
/// that died without running destructors by more than this.
pub const BROWSER_HARD_TIMEOUT: Duration = Duration::from_secs(300);
/// How often waits poll the page.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// At most this many console lines are kept (oldest dropped first).
const CONSOLE_KEEP: usize = 500;
/// At most this many errors are kept per page.
const ERRORS_KEEP: usize = 200;
/// The page's viewport, hence the size of a screenshot
/// (`Emulation.setDeviceMetricsOverride`, device scale 1).
pub const WINDOW: (u32, u32) = (800, 600);

/// Where the vendored players are (`/vendor/` of [`StaticServer::with_players`]).
pub fn vendor_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web/vendor")
}

/// Where tests put screenshots and other artefacts worth looking at after a
/// run: `target/tmp/browser/`.
pub fn artefact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// What went wrong in the browser or with it.
#[derive(Debug, Clone)]
pub enum BrowserError {
    /// Chromium did not start or its DevTools endpoint did not answer.
    Launch(String),
    /// The DevTools connection failed, or a command was refused by Chromium.
    Cdp(String),
    /// A command or a wait did not finish in time. `last` is the last value
    /// seen (for waits) or empty.
    Timeout {
        what: String,
        limit: Duration,
        last: String,
    },
    /// The evaluated JavaScript threw (or its promise rejected).
    Exception(String),
    /// The page logged errors (console.error, uncaught exceptions, failed
    /// loads, player errors) while a wait that does not allow them ran.
    PageErrors(Vec<String>),
    /// The page could not be loaded (Chromium's error text, e.g.
    /// `net::ERR_CONNECTION_REFUSED`).
    Navigation { url: String, error: String },
    /// The page's renderer crashed or the page went away.
    Crashed(String),
}

impl fmt::Display for BrowserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrowserError::Launch(why) => write!(f, "chromium did not start: {why}"),
            BrowserError::Cdp(why) => write!(f, "DevTools protocol: {why}"),
            BrowserError::Timeout { what, limit, last } => {
                write!(f, "timed out after {limit:?} waiting for {what}")?;
                if !last.is_empty() {
                    write!(f, "; last seen: {last}")?;
                }
                Ok(())
            }
            BrowserError::Exception(text) => write!(f, "JavaScript exception: {text}"),
            BrowserError::PageErrors(errors) => {
                write!(f, "the page reported {} error(s):", errors.len())?;
                for e in errors {
                    write!(f, "\n  {e}")?;
                }
                Ok(())
            }
            BrowserError::Navigation { url, error } => write!(f, "loading {url} failed: {error}"),
            BrowserError::Crashed(why) => write!(f, "the page crashed: {why}"),
        }
    }
}

impl std::error::Error for BrowserError {}

// ---------------------------------------------------------------------------------------
// The DevTools connection
// ---------------------------------------------------------------------------------------

/// One WebSocket to Chromium's browser endpoint; commands are numbered.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
}

impl Cdp {
    fn connect(port: u16, path: &str, limit: Duration) -> Result<Cdp, BrowserError> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let sock = TcpStream::connect_timeout(&addr, limit)
            .map_err(|e| BrowserError::Launch(format!("connect to DevTools on {addr}: {e}")))?;
        sock.set_read_timeout(Some(limit)).ok();
        sock.set_write_timeout(Some(limit)).ok();
        sock.set_nodelay(true).ok();
        let url = format!("ws://{addr}{path}");
        let (ws, _) = tungstenite::client(url.as_str(), sock)
            .map_err(|e| BrowserError::Launch(format!("WebSocket handshake with {url}: {e}")))?;
        Ok(Cdp { ws, next_id: 1 })
    }

    /// Sends `method` (to the page session when given) and reads until its
    /// answer, passing every other message to `on_event`. Answers to earlier
    /// commands that timed out are dropped.
    fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        limit: Duration,
        on_event: &mut dyn FnMut(&Value),
    ) -> Result<Value, BrowserError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            command["sessionId"] = json!(session);
        }
        let deadline = Instant::now() + limit;
        self.ws.get_mut().set_write_timeout(Some(limit)).ok();
        let mut sent = self.ws.send(Message::text(command.to_string()));
        // A signal can interrupt the write; the frame stays queued and a
        // flush finishes it.
        while matches!(&sent, Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::Interrupted)
        {
            sent = self.ws.flush();
        }
        sent.map_err(|e| BrowserError::Cdp(format!("sending {method}: {e}")))?;
        loop {
            let Some(message) = self.read_until(deadline, on_event)? else {
                return Err(BrowserError::Timeout {
                    what: format!("the answer to {method}"),
                    limit,
                    last: String::new(),
                });
            };
            if message.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // a late answer to a command that timed out
            }
            if let Some(error) = message.get("error") {
                return Err(BrowserError::Cdp(format!(
                    "{method} failed: {}",
                    error
                        .get("message")
                        .and_then(Value::as_str)
                        .map_or_else(|| error.to_string(), str::to_string)
                )));
            }
            return Ok(message.get("result").cloned().unwrap_or(Value::Null));
        }
    }

    /// Reads messages until one with an `id` arrives (returned) or `deadline`
    /// passes (None); events go to `on_event`.
    fn read_until(
        &mut self,
        deadline: Instant,
        on_event: &mut dyn FnMut(&Value),
    ) -> Result<Option<Value>, BrowserError> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.ws.get_mut().set_read_timeout(Some(wait)).ok();
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    let message: Value = serde_json::from_str(text.as_str()).map_err(|e| {
                        BrowserError::Cdp(format!("a message that is not JSON ({e}): {text}"))
                    })?;
                    if message.get("id").is_some() {
                        return Ok(Some(message));
                    }
                    on_event(&message);
                }
                Ok(Message::Close(frame)) => {
                    return Err(BrowserError::Cdp(format!(
                        "Chromium closed the DevTools connection ({frame:?})"
                    )))
                }
                Ok(_) => {} // pings (tungstenite answers them), binary: not CDP
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {} // a signal (a child exiting) interrupts a read: read again
                Err(e) => {
                    return Err(BrowserError::Cdp(format!(
                        "the DevTools connection failed: {e}"
                    )))
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the page said
// ---------------------------------------------------------------------------------------

/// The page's console, errors and lifecycle, from CDP events.
#[derive(Default)]
pub struct PageLog {
    /// The page's flat session and target: events of others are ignored.
    pub session: String,
    pub target: String,
    /// Every console message and log entry, "kind: text (where)".
    pub console: VecDeque<String>,
    /// Errors of the current page (cleared by navigate).
    pub errors: Vec<String>,
    /// Page.loadEventFired count.
    pub loads: u64,
    /// Set when the renderer crashed or the session went away.
    pub gone: Option<String>,
}

impl PageLog {
    /// Takes one CDP event (a message without an `id`).
    pub fn record(&mut self, event: &Value) {
        let method = event.get("method").and_then(Value::as_str).unwrap_or("");
        let params = event.get("params").unwrap_or(&Value::Null);
        let session = event.get("sessionId").and_then(Value::as_str);
        match (session, method) {
            (None, "Target.detachedFromTarget")
                if params["sessionId"].as_str() == Some(&self.session) =>
            {
                self.gone = Some("the page's DevTools session was detached".into());
            }
            (None, "Target.targetCrashed") if params["targetId"].as_str() == Some(&self.target) => {
                self.gone = Some(format!("the renderer crashed ({})", params["status"]));
            }
            (Some(s), _) if s != self.session => {}
            (Some(_), "Inspector.targetCrashed") => {
                self.gone = Some("the renderer crashed".into());
            }
            (Some(_), "Inspector.detached") => {
                self.gone = Some(format!("the inspector detached ({})", params["reason"]));
            }
            (Some(_), "Page.loadEventFired") => self.loads += 1,
            (Some(_), "Runtime.consoleAPICalled") => {
                let kind = params["type"].as_str().unwrap_or("log");
                let text = params["args"]
                    .as_array()
                    .map(|args| {
                        args.iter()
                            .map(remote_object_text)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                let line = format!("console.{kind}: {text}{}", stack_place(params));
                if matches!(kind, "error" | "assert") {
                    self.error(line.clone());
                }
                self.console_line(line);
            }
            (Some(_), "Runtime.exceptionThrown") => {
                let details = &params["exceptionDetails"];
                let text = details["exception"]["description"]
                    .as_str()
                    .or_else(|| details["text"].as_str())
                    .unwrap_or("(no description)");
                let place = match details["url"].as_str() {
                    Some(url) if !url.is_empty() => {
                        format!(
                            " ({url}:{})",
                            details["lineNumber"].as_u64().unwrap_or(0) + 1
                        )
                    }
                    _ => String::new(),
                };
                let line = format!("uncaught exception: {text}{place}");
                self.error(line.clone());
                self.console_line(line);
            }
            (Some(_), "Log.entryAdded") => {
                let entry = &params["entry"];
                let level = entry["level"].as_str().unwrap_or("info");
                let mut line = format!(
                    "log.{level} ({}): {}",
                    entry["source"].as_str().unwrap_or("?"),
                    entry["text"].as_str().unwrap_or("")
                );
                if let Some(url) = entry["url"].as_str().filter(|u| !u.is_empty()) {
                    line.push_str(&format!(" ({url})"));
                }
                if level == "error" {
                    self.error(line.clone());
                }
                self.console_line(line);
            }
            _ => {}
        }
    }

    fn console_line(&mut self, line: String) {
        if self.console.len() == CONSOLE_KEEP {
            self.console.pop_front();
        }
        self.console.push_back(line);
    }

    fn error(&mut self, line: String) {
        if self.errors.len() < ERRORS_KEEP {
            self.errors.push(line);
        }
    }
}

/// A console argument (a CDP RemoteObject) as text.
fn remote_object_text(object: &Value) -> String {
    match object.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => object
            .get("unserializableValue")
            .or_else(|| object.get("description"))
            .and_then(Value::as_str)
            .map_or_else(|| object["type"].to_string(), str::to_string),
    }
}

/// " (url:line)" of a console call's first stack frame, if any.
fn stack_place(params: &Value) -> String {
    let frame = &params["stackTrace"]["callFrames"][0];
    match frame["url"].as_str() {
        Some(url) if !url.is_empty() => {
            format!(" ({url}:{})", frame["lineNumber"].as_u64().unwrap_or(0) + 1)
        }
        _ => String::new(),
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0 && !x.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

// ---------------------------------------------------------------------------------------
// The browser
// ---------------------------------------------------------------------------------------

/// Headless Chromium with one page, driven over CDP. See the module docs.
pub struct Browser {
    /// The `timeout` wrapper, leader of Chromium's process group.
    wrapper: Option<Child>,
    pgid: u32,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
    cdp: Option<Cdp>,
    log: PageLog,
    profile: PathBuf,
    command_line: String,
}

/// What [`Browser::wait_playback`] saw.
#[derive(Debug, Clone)]
pub struct Playback {
    /// `currentTime` when the video first had data, and when the wait ended.
    pub start: f64,
    pub end: f64,
    pub width: u64,
    pub height: u64,
    /// From navigation (or the call) to the first frame, and to the end.
    pub first_frame_after: Duration,
    pub waited: Duration,
    /// The last `sluice.state()`.
    pub state: Value,
}

impl Browser {
    /// Starts headless Chromium and attaches to its page; panics with the
    /// reason (and Chromium's stderr) when it cannot.
    #[track_caller]
    pub fn launch() -> Browser {
        Browser::try_launch().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts headless Chromium (`require_tool("chromium")`) with a fresh
    /// profile and attaches to its page.
    pub fn try_launch() -> Result<Browser, BrowserError> {
        let chromium = require_tool("chromium");
        require_tool("timeout");
        require_tool("kill");
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let profile = std::env::temp_dir().join(format!(
            "sluice-chromium-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&profile);
        let home = profile.join("home");
        fs::create_dir_all(&home)
            .map_err(|e| BrowserError::Launch(format!("create {}: {e}", home.display())))?;
        let args = chromium_args(&profile);
        let command_line = format!("{chromium} {}", args.join(" "));
        // Without --foreground, `timeout` signals the whole process group at the
        // deadline; process_group(0) makes that group exist before spawn returns.
        let spawned = Command::new("timeout")
            .arg("-s")
            .arg("KILL")
            .arg(format!("{}s", BROWSER_HARD_TIMEOUT.as_secs()))
            .arg(&chromium)
            .args(&args)
            .process_group(0)
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let mut wrapper = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_dir_all(&profile);
                return Err(BrowserError::Launch(format!("spawn {command_line}: {e}")));
            }
        };
        let (stderr, reader) = super::capture(wrapper.stderr.take().expect("stderr pipe"));
        let mut browser = Browser {
            pgid: wrapper.id(),
            wrapper: Some(wrapper),
            stderr,
            stderr_reader: Some(reader),
            cdp: None,
            log: PageLog::default(),
            profile,
            command_line,
        };
        // On error `browser` drops here: the group is killed, the profile removed.
        browser.connect()?;
        Ok(browser)
    }

    /// Waits for DevToolsActivePort, connects and attaches to the page.
    fn connect(&mut self) -> Result<(), BrowserError> {
        let deadline = Instant::now() + LAUNCH_TIMEOUT;
        let port_file = self.profile.join("DevToolsActivePort");
        let (port, path) = loop {
            // Written once the endpoint listens: "PORT\n/devtools/browser/UUID".
            if let Ok(text) = fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(Ok(port)), Some(path)) =
                    (lines.next().map(str::parse::<u16>), lines.next())
                {
                    break (port, path.to_string());
                }
            }
            if let Some(status) = self.exit_status() {
                return Err(BrowserError::Launch(format!(
                    "chromium exited with {status} ({}); stderr:\n{}",
                    self.command_line,
                    tail(&self.stderr(), 30)
                )));
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Launch(format!(
                    "no {} within {LAUNCH_TIMEOUT:?} ({}); stderr:\n{}",
                    port_file.display(),
                    self.command_line,
                    tail(&self.stderr(), 30)
                )));
            }
            thread::sleep(Duration::from_millis(25));
        };
        self.cdp = Some(Cdp::connect(port, &path, CDP_CALL_TIMEOUT)?);
        let targets = self.browser_call("Target.getTargets", json!({}))?;
        let page = targets["targetInfos"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["targetId"].as_str())
            .map(str::to_string);
        let target = match page {
            Some(target) => target,
            None => self.browser_call("Target.createTarget", json!({ "url": "about:blank" }))?
                ["targetId"]
                .as_str()
                .ok_or_else(|| BrowserError::Cdp("Target.createTarget: no targetId".into()))?
                .to_string(),
        };
        let attached = self.browser_call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        )?;
        self.log.session = attached["sessionId"]
            .as_str()
            .ok_or_else(|| BrowserError::Cdp("Target.attachToTarget: no sessionId".into()))?
            .to_string();
        self.log.target = target;
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            self.page_call(domain, json!({}))?;
        }
        // Headless Chromium takes room for a toolbar it does not draw out of
        // --window-size: set the viewport itself.
        self.page_call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": WINDOW.0, "height": WINDOW.1, "deviceScaleFactor": 1, "mobile": false }),
        )?;
        Ok(())
    }

    /// A CDP command to the browser itself (no session).
    pub fn browser_call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.call_with(None, method, params, CDP_CALL_TIMEOUT)
    }

    /// A CDP command to the page (e.g. `Network.enable`, `Emulation.*`), with
    /// the default deadline.
    pub fn page_call(&mut self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.page_call_within(method, params, CDP_CALL_TIMEOUT)
    }

    /// A CDP command to the page with its own deadline.
    pub fn page_call_within(
        &mut self,
        method: &str,
        params: Value,
        limit: Duration,
    ) -> Result<Value, BrowserError> {
        if let Some(why) = &self.log.gone {
            return Err(BrowserError::Crashed(why.clone()));
        }
        let session = self.log.session.clone();
        self.call_with(Some(&session), method, params, limit)
    }

    fn call_with(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
        limit: Duration,
    ) -> Result<Value, BrowserError> {
        let Some(cdp) = self.cdp.as_mut() else {
            return Err(BrowserError::Cdp("not connected".into()));
        };
        let log = &mut self.log;
        let result = cdp.call(session, method, params, limit, &mut |e| log.record(e));
        match result {
            Err(BrowserError::Cdp(why)) => {
                // Say so when the reason is that Chromium is gone.
                match self.exit_status() {
                    Some(status) => Err(BrowserError::Cdp(format!(
                        "{why} (chromium exited with {status}; stderr:\n{})",
                        tail(&self.stderr(), 20)
                    ))),
                    None => Err(BrowserError::Cdp(why)),
                }
            }
            other => other,
        }
    }

    /// Reads events for `duration` (console messages, errors), sending nothing.
    pub fn pump(&mut self, duration: Duration) -> Result<(), BrowserError> {
        let deadline = Instant::now() + duration;
        let Some(cdp) = self.cdp.as_mut() else {
            return Err(BrowserError::Cdp("not connected".into()));
        };
        let log = &mut self.log;
        // Nothing is pending, so nothing with an id arrives; a stray one is dropped.
        while Instant::now() < deadline {
            cdp.read_until(deadline, &mut |e| log.record(e))?;
        }
        Ok(())
    }

    /// Loads `url` in the page and waits (≤ [`CDP_CALL_TIMEOUT`]) for its load
    /// event. Clears the page's errors first. Err with Chromium's error text when
    /// the page cannot be loaded at all; an HTTP error page loads (its errors
    /// show in [`Browser::errors`]).
    pub fn navigate(&mut self, url: &str) -> Result<(), BrowserError> {
        if self.log.loads > 0 && url != "about:blank" {
            // Unload the page first: what it still reports (a player's
            // last errors) arrives before the new page's log starts.
            self.navigate("about:blank")?;
        }
        self.log.errors.clear();
        let loads = self.log.loads;
        let deadline = Instant::now() + CDP_CALL_TIMEOUT;
        let answer = self.page_call("Page.navigate", json!({ "url": url }))?;
        if let Some(error) = answer["errorText"].as_str().filter(|e| !e.is_empty()) {
            return Err(BrowserError::Navigation {
                url: url.to_string(),
                error: error.to_string(),
            });
        }
        while self.log.loads == loads {
            if let Some(why) = &self.log.gone {
                return Err(BrowserError::Crashed(why.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(BrowserError::Timeout {
                    what: format!("the load event of {url}"),
                    limit: CDP_CALL_TIMEOUT,
                    last: String::new(),
                });
            }
            self.pump((deadline - now).min(POLL_INTERVAL))?;
        }
        Ok(())
    }

    /// Evaluates a JavaScript expression in the page (promises are awaited) and
    /// returns its value as JSON (`undefined` is null; values JSON cannot hold,
    /// such as DOM nodes, are null too: return plain data).
    pub fn eval(&mut self, expression: &str) -> Result<Value, BrowserError> {
        self.eval_within(expression, CDP_CALL_TIMEOUT)
    }

    /// [`Browser::eval`] with its own deadline.
    pub fn eval_within(
        &mut self,
        expression: &str,
        limit: Duration,
    ) -> Result<Value, BrowserError> {
        let answer = self.page_call_within(
            "Runtime.evaluate",
            json!({
                "expression": expression,
                "returnByValue": true,
                "awaitPromise": true,
            }),
            limit,
        )?;
        if let Some(details) = answer.get("exceptionDetails") {
            let text = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("(no description)");
            return Err(BrowserError::Exception(text.to_string()));
        }
        let result = &answer["result"];
        Ok(match result.get("value") {
            Some(v) => v.clone(),
            None => match result["unserializableValue"].as_str() {
                Some(u) => Value::String(u.to_string()),
                None => Value::Null,
            },
        })
    }

    /// Polls `expression` until it is truthy (returned), for at most `limit`.
    /// Fails at once when the page reports an error (see [`Browser::errors`]),
    /// when evaluating throws, or when the page crashes.
    pub fn wait_until(&mut self, expression: &str, limit: Duration) -> Result<Value, BrowserError> {
        self.wait_inner(expression, limit, true)
    }

    /// [`Browser::wait_until`] that does not fail on page errors (they are still
    /// recorded).
    pub fn wait_until_ignoring_errors(
        &mut self,
        expression: &str,
        limit: Duration,
    ) -> Result<Value, BrowserError> {
        self.wait_inner(expression, limit, false)
    }

    fn wait_inner(
        &mut self,
        expression: &str,
        limit: Duration,
        fail_on_errors: bool,
    ) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + limit;
        loop {
            if fail_on_errors && !self.log.errors.is_empty() {
                return Err(BrowserError::PageErrors(self.log.errors.clone()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let value = self.eval_within(
                expression,
                left.clamp(Duration::from_secs(1), CDP_CALL_TIMEOUT),
            )?;
            if fail_on_errors && !self.log.errors.is_empty() {
                return Err(BrowserError::PageErrors(self.log.errors.clone()));
            }
            if truthy(&value) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: format!("`{expression}`"),
                    limit,
                    last: value.to_string(),
                });
            }
            self.pump(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())))?;
        }
    }

    /// Waits until the page's video (a page made by [`mpegts_page`] or
    /// [`hls_page`]: `sluice.state()`) has data and its `currentTime` has
    /// advanced by `advance` seconds since, with non-zero dimensions; at most
    /// `limit`. Fails at once on a page error.
    pub fn wait_playback(
        &mut self,
        advance: f64,
        limit: Duration,
    ) -> Result<Playback, BrowserError> {
        let started = Instant::now();
        let deadline = started + limit;
        let mut first: Option<(f64, Duration)> = None;
        loop {
            if !self.log.errors.is_empty() {
                return Err(BrowserError::PageErrors(self.log.errors.clone()));
            }
            let state = self.eval("sluice.state()")?;
            if !self.log.errors.is_empty() {
                return Err(BrowserError::PageErrors(self.log.errors.clone()));
            }
            let now = state["currentTime"].as_f64().unwrap_or(0.0);
            let ready = state["readyState"].as_u64().unwrap_or(0);
            // HAVE_CURRENT_DATA: a frame is there.
            if first.is_none() && ready >= 2 {
                first = Some((now, started.elapsed()));
            }
            let width = state["videoWidth"].as_u64().unwrap_or(0);
            let height = state["videoHeight"].as_u64().unwrap_or(0);
            if let Some((start, first_frame_after)) = first {
                if now - start >= advance && width > 0 && height > 0 {
                    return Ok(Playback {
                        start,
                        end: now,
                        width,
                        height,
                        first_frame_after,
                        waited: started.elapsed(),
                        state,
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: format!("the video to play {advance} s"),
                    limit,
                    last: state.to_string(),
                });
            }
            self.pump(Duration::from_millis(200))?;
        }
    }

    /// The current page's errors so far: console.error and console.assert
    /// calls, uncaught exceptions, browser log entries of level error (failed
    /// loads). Cleared by [`Browser::navigate`].
    pub fn errors(&self) -> &[String] {
        &self.log.errors
    }

    /// The last console lines and log entries (every level), oldest first.
    pub fn console(&self) -> Vec<String> {
        self.log.console.iter().cloned().collect()
    }

    /// Captures the page as a PNG (`Page.captureScreenshot`) into `path`.
    pub fn screenshot(&mut self, path: &Path) -> Result<(), BrowserError> {
        self.capture(path, json!({ "format": "png" }))
    }

    /// Captures the element `selector` (its bounding box) as a PNG into `path`.
    pub fn screenshot_element(&mut self, selector: &str, path: &Path) -> Result<(), BrowserError> {
        let selector_js = serde_json::to_string(selector).expect("a string");
        let rect = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector_js}); if (!e) return null; \
             const r = e.getBoundingClientRect(); \
             return {{x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height}}; }})()"
        ))?;
        if rect.is_null() {
            return Err(BrowserError::Exception(format!(
                "no element matches {selector}"
            )));
        }
        let mut clip = rect;
        clip["scale"] = json!(1);
        self.capture(path, json!({ "format": "png", "clip": clip }))
    }

    fn capture(&mut self, path: &Path, params: Value) -> Result<(), BrowserError> {
        let answer = self.page_call("Page.captureScreenshot", params)?;
        let data = answer["data"]
            .as_str()
            .ok_or_else(|| BrowserError::Cdp("Page.captureScreenshot: no data".into()))?;
        let png = base64_decode(data)
            .map_err(|e| BrowserError::Cdp(format!("Page.captureScreenshot: {e}")))?;
        fs::write(path, png)
            .map_err(|e| BrowserError::Cdp(format!("write {}: {e}", path.display())))
    }

    /// Asks Chromium to close (`Browser.close`) and waits (≤ 5 s) for it to
    /// exit; the drop that follows kills whatever is left.
    pub fn close(mut self) -> Result<ExitStatus, BrowserError> {
        // Chromium may close the socket before it answers.
        let _ = self.call_with(None, "Browser.close", json!({}), Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(BrowserError::Timeout {
                    what: "chromium to exit after Browser.close".into(),
                    limit: Duration::from_secs(5),
                    last: String::new(),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The profile directory (removed on drop).
    pub fn profile_dir(&self) -> &Path {
        &self.profile
    }

    /// The live (not zombie) processes of Chromium's process group.
    pub fn processes(&self) -> Vec<u32> {
        group_processes(self.pgid)
    }

    /// The process group id (that of the `timeout` wrapper).
    pub fn process_group(&self) -> u32 {
        self.pgid
    }

    /// Chromium's stderr so far, without its complaints about D-Bus (there is
    /// none in a container; they are most of what it says there).
    pub fn stderr(&self) -> String {
        let all = String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(|p| p.into_inner()))
            .into_owned();
        all.lines()
            .filter(|l| !l.contains(":ERROR:dbus/") && !l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn exit_status(&mut self) -> Option<ExitStatus> {
        self.wrapper.as_mut()?.try_wait().ok().flatten()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "[harness] chromium page console (last 40 lines):\n{}\n\
                 [harness] chromium stderr (last 20 lines):\n{}",
                tail(&self.console().join("\n"), 40),
                tail(&self.stderr(), 20)
            );
        }
        self.cdp = None;
        // Every process of the group, the wrapper included, at once.
        send_signal_to_group(self.pgid, "KILL");
        if let Some(mut wrapper) = self.wrapper.take() {
            let _ = wrapper.kill();
            let _ = wrapper.wait();
        }
        // The crashpad handlers are not in the group; they exit when the browser
        // does, and every one of them names the profile (its database is there).
        let profile = self.profile.display().to_string();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        let mut left;
        loop {
            left = group_processes(self.pgid);
            left.extend(processes_mentioning(&profile));
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            send_signal_to_group(self.pgid, "KILL");
            // A handler still there after a second: ours (it names our profile).
            if started.elapsed() > Duration::from_secs(1) {
                for pid in &left {
                    send_signal(*pid, "KILL");
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        if !left.is_empty() {
            eprintln!("[harness] chromium processes still alive after SIGKILL: {left:?}");
        }
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        // A process that died a moment ago may still have had a file open.
        for _ in 0..3 {
            if fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Chromium's command line (after the program), with `profile` as its
/// user-data-dir.
fn chromium_args(profile: &Path) -> Vec<String> {
    [
        // As root on a CI machine without a GPU or a display.
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        // Nothing leaves 127.0.0.1.
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        // No crash uploads. (Chromium's crashpad handler still starts, in a
        // session of its own, with its database under HOME, i.e. in the profile;
        // it exits when the browser dies. --disable-crashpad-for-testing would
        // stop it, but makes the network service crash on its first request.)
        "--disable-crash-reporter",
        "--password-store=basic",
        // Players start without a click; the tests' videos are muted anyway.
        "--autoplay-policy=no-user-gesture-required",
        "--mute-audio",
        // A background page's timers and rendering are not throttled.
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
        "--hide-scrollbars",
        "--remote-debugging-port=0",
        "--remote-debugging-address=127.0.0.1",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([
        format!("--window-size={},{}", WINDOW.0, WINDOW.1),
        format!("--user-data-dir={}", profile.display()),
        "about:blank".to_string(),
    ])
    .collect()
}

/// `kill -s SIGNAL -- -PGID`
fn send_signal_to_group(pgid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg("-s")
        .arg(signal)
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The processes whose process group is `pgid` and that are not zombies (a
/// zombie is dead; it waits for a parent, maybe a container's init, to reap it).
pub fn group_processes(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "PID (COMM) STATE PPID PGRP ...": COMM may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (Some(state), Some(pgrp)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        if *state != "Z" && *state != "X" && pgrp.parse::<u32>().ok() == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// The pids of live processes whose command line contains `needle` (e.g. a
/// profile directory: every Chromium process names it).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let zombie = fs::read_to_string(entry.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with(['Z', 'X']))
            })
            .unwrap_or(true);
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

// ---------------------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------------------

/// The part every player page shares: the video element and `window.sluice`.
const PAGE_STATE_JS: &str = r#"
window.sluice = {
  video: document.getElementById('video'),
  errors: [],
  warnings: [],
  // The player's own figures (set by the page).
  extra: () => ({}),
  fail(message) {
    this.errors.push(String(message));
    console.error('[sluice page] ' + message);
  },
  warn(message) {
    if (this.warnings.length < 100) this.warnings.push(String(message));
    console.warn('[sluice page] ' + message);
  },
  state() {
    const v = this.video;
    const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : {};
    const buffered = [];
    for (let i = 0; i < v.buffered.length; i++) buffered.push([v.buffered.start(i), v.buffered.end(i)]);
    let extra;
    try { extra = this.extra(); } catch (e) { extra = { error: String(e) }; }
    return {
      currentTime: v.currentTime, videoWidth: v.videoWidth, videoHeight: v.videoHeight,
      readyState: v.readyState, paused: v.paused, ended: v.ended, buffered,
      totalVideoFrames: q.totalVideoFrames || 0, droppedVideoFrames: q.droppedVideoFrames || 0,
      errors: this.errors, warnings: this.warnings, player: extra,
    };
  },
};
sluice.video.addEventListener('error', () => {
  const e = sluice.video.error;
  sluice.fail('<video> error ' + (e ? e.code + ' ' + e.message : ''));
});
"#;

pub fn page(title: &str, script_src: &str, body_js: &str) -> String {
    format!(
        r#"<!doctype html>
<html>
<head>
<meta charset="utf-8">
<title>{title}</title>
<link rel="icon" href="data:,">
</head>
<body style="margin:0;background:#222">
<video id="video" muted autoplay playsinline width="320" height="240" style="display:block;background:#000"></video>
<script src="{script_src}"></script>
<script>
{PAGE_STATE_JS}
{body_js}
</script>
</body>
</html>
"#
    )
}

/// A page that plays `url` (`ws://.../APP/NAME.flv` or `http://.../APP/NAME.flv`)
/// with the vendored mpegts.js (served at `/vendor/mpegts.js/mpegts.js`, see
/// [`StaticServer::with_players`]). `window.player` is the mpegts.js player;
/// `sluice.state().player` is its `statisticsInfo`; mpegts.js ERROR events
/// become page errors.
pub fn mpegts_page(url: &str) -> String {
    let url = serde_json::to_string(url).expect("a string");
    let body = format!(
        r#"
const url = {url};
if (!mpegts.getFeatureList().mseLivePlayback) {{
  sluice.fail('mpegts.js: this browser has no MSE live playback');
}} else {{
  const player = mpegts.createPlayer({{ type: 'flv', isLive: true, url }},
                                     {{ enableStashBuffer: false }});
  player.on(mpegts.Events.ERROR, (type, detail, info) =>
    sluice.fail(`mpegts.js ${{type}} ${{detail}}: ${{JSON.stringify(info)}}`));
  player.attachMediaElement(sluice.video);
  player.load();
  const started = player.play();
  if (started && started.catch) started.catch((e) => sluice.fail('play(): ' + e));
  sluice.extra = () => player.statisticsInfo || {{}};
  window.player = player;
}}
"#
    );
    page("sluice: mpegts.js", "/vendor/mpegts.js/mpegts.js", &body)
}

/// A page that plays the HLS playlist `url` with the vendored hls.js (served at
/// `/vendor/hls.js/hls.min.js`), with `config_json` (a JSON object, e.g.
/// `{"lowLatencyMode": true}`; `{}` for the defaults) merged into hls.js's
/// config. `window.hls` is the player; `sluice.state().player` holds
/// `latency`, `targetLatency`, `drift`, `liveSyncPosition` and the current
/// level's `details.live`; fatal hls.js errors become page errors, non-fatal
/// ones warnings (`sluice.state().warnings`).
pub fn hls_page(url: &str, config_json: &str) -> String {
    let url = serde_json::to_string(url).expect("a string");
    let body = format!(
        r#"
const url = {url};
if (!Hls.isSupported()) {{
  sluice.fail('hls.js: Hls.isSupported() is false in this browser');
}} else {{
  const hls = new Hls(Object.assign({{ debug: false }}, {config_json}));
  hls.on(Hls.Events.ERROR, (event, data) => {{
    const text = `hls.js ${{data.type}} ${{data.details}}` + (data.error ? ': ' + data.error.message : '');
    if (data.fatal) sluice.fail(text); else sluice.warn(text);
  }});
  hls.on(Hls.Events.MANIFEST_PARSED, () => {{
    const started = sluice.video.play();
    if (started && started.catch) started.catch((e) => sluice.fail('play(): ' + e));
  }});
  hls.loadSource(url);
  hls.attachMedia(sluice.video);
  sluice.extra = () => {{
    const level = hls.levels && hls.levels[hls.currentLevel];
    return {{
      latency: hls.latency, targetLatency: hls.targetLatency, drift: hls.drift,
      liveSyncPosition: hls.liveSyncPosition,
      live: level && level.details ? level.details.live : null,
    }};
  }};
  window.hls = hls;
}}
"#
    );
    page("sluice: hls.js", "/vendor/hls.js/hls.min.js", &body)
}

// ---------------------------------------------------------------------------------------
// A live publisher sized for browsers
// ---------------------------------------------------------------------------------------

/// `ffmpeg -re` publishing a live test card to `url` for `secs` seconds:
/// 320x240 H.264 at 20 fps (keyframe every second, no B-frames) and AAC
/// 44.1 kHz mono. Small on purpose: a headless Chromium decodes it on the CPU
/// of a shared 2-core machine.
pub fn publish_small_live(url: &str, secs: u64) -> Peer {
    let secs_text = secs.to_string();
    let args = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=20",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        &secs_text,
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-profile:v",
        "baseline",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "20",
        "-keyint_min",
        "20",
        "-sc_threshold",
        "0",
        "-b:v",
        "300k",
        "-c:a",
        "aac",
        "-ac",
        "1",
        "-b:a",
        "64k",
        "-f",
        "flv",
        url,
    ]
    .map(String::from);
    Peer::spawn(
        "ffmpeg live publisher",
        &require_tool("ffmpeg"),
        &args,
        Duration::from_secs(secs + 30),
        FFMPEG_STOP,
        None,
    )
}

// ---------------------------------------------------------------------------------------
// A static file server
// ---------------------------------------------------------------------------------------

/// Serves directories over HTTP/1.1 on 127.0.0.1 (a port of its own): GET and
/// HEAD, one request per connection, content types by extension,
/// `Access-Control-Allow-Origin: *`, `Cache-Control: no-store`. Files are read
/// at each request, so a directory being written (HLS segments) can be served.
/// `/favicon.ico` is answered 204 when no mount has it (no 404 in the page's
/// log). Stops on drop.
pub struct StaticServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// Longest request head a test page sends (a browser's is under 2 KB).
const STATIC_HEAD_LIMIT: usize = 16 * 1024;
const STATIC_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
const STATIC_MAX_CONNECTIONS: usize = 32;

impl StaticServer {
    /// Serves each `(url prefix, directory)`; the longest matching prefix wins
    /// (`("/", dir)` is the fallback). A path that names a directory serves its
    /// `index.html`.
    pub fn start(mounts: &[(&str, &Path)]) -> StaticServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let mut mounts: Vec<(String, PathBuf)> = mounts
            .iter()
            .map(|(prefix, dir)| {
                let mut prefix = prefix.trim_end_matches('/').to_string();
                prefix.push('/');
                (prefix, dir.to_path_buf())
            })
            .collect();
        mounts.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        let mounts = Arc::new(mounts);
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (stop, requests) = (Arc::clone(&stop), Arc::clone(&requests));
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    while active.load(Ordering::Relaxed) >= STATIC_MAX_CONNECTIONS {
                        thread::sleep(Duration::from_millis(5));
                    }
                    active.fetch_add(1, Ordering::Relaxed);
                    let (mounts, requests, active) = (
                        Arc::clone(&mounts),
                        Arc::clone(&requests),
                        Arc::clone(&active),
                    );
                    thread::spawn(move || {
                        let line = serve_one(conn, &mounts);
                        if let Some(line) = line {
                            requests
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(line);
                        }
                        active.fetch_sub(1, Ordering::Relaxed);
                    });
                }
            })
        };
        StaticServer {
            addr,
            stop,
            acceptor: Some(acceptor),
            requests,
        }
    }

    /// The vendored players at `/vendor/` ([`vendor_dir`]) and `dir` at `/`.
    pub fn with_players(dir: &Path) -> StaticServer {
        StaticServer::start(&[("/vendor", &vendor_dir()), ("/", dir)])
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests served so far, "METHOD PATH STATUS", in order of completion.
    pub fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Answers one request on `conn`; returns "METHOD PATH STATUS" (None when no
/// request head came).
fn serve_one(mut conn: TcpStream, mounts: &[(String, PathBuf)]) -> Option<String> {
    conn.set_read_timeout(Some(STATIC_IO_TIMEOUT)).ok();
    conn.set_write_timeout(Some(STATIC_IO_TIMEOUT)).ok();
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > STATIC_HEAD_LIMIT {
            respond(
                &mut conn,
                431,
                "text/plain",
                b"request head too large",
                true,
            );
            return Some(format!("? ? 431 (head over {STATIC_HEAD_LIMIT} bytes)"));
        }
        match conn.read(&mut chunk) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("");
    let (status, content_type, body): (u16, &str, Vec<u8>) = if method != "GET" && method != "HEAD"
    {
        (405, "text/plain", b"GET and HEAD only".to_vec())
    } else {
        match resolve_path(mounts, path) {
            Err(status) => (status, "text/plain", b"bad path".to_vec()),
            Ok(None) if path == "/favicon.ico" => (204, "image/x-icon", Vec::new()),
            Ok(None) => (404, "text/plain", b"not found".to_vec()),
            Ok(Some(file)) => match fs::read(&file) {
                Ok(bytes) => (200, content_type(&file), bytes),
                Err(_) => (404, "text/plain", b"not found".to_vec()),
            },
        }
    };
    respond(&mut conn, status, content_type, &body, method != "HEAD");
    let _ = conn.shutdown(Shutdown::Write);
    Some(format!("{method} {path} {status}"))
}

/// The file `path` names under the mounts: Err(400) for a path that is not
/// plain (`..`, `%`, backslashes), Ok(None) when there is no such file.
pub fn resolve_path(mounts: &[(String, PathBuf)], path: &str) -> Result<Option<PathBuf>, u16> {
    if !path.starts_with('/') || path.contains(['%', '\\', '\0']) {
        return Err(400);
    }
    let with_slash = if path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    };
    let Some((prefix, dir)) = mounts
        .iter()
        .find(|(prefix, _)| with_slash.starts_with(prefix.as_str()))
    else {
        return Ok(None);
    };
    let rest = path.get(prefix.len()..).unwrap_or("");
    let relative = Path::new(rest);
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(400);
    }
    let mut file = dir.join(relative);
    if file.is_dir() {
        file = file.join("index.html");
    }
    Ok(file.is_file().then_some(file))
}

fn respond(conn: &mut TcpStream, status: u16, content_type: &str, body: &[u8], with_body: bool) {
    let reason = match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Access-Control-Allow-Origin: *\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    if with_body {
        let _ = conn.write_all(body);
    }
    let _ = conn.flush();
}

/// The Content-Type for a file, by extension.
pub fn content_type(file: &Path) -> &'static str {
    let ext = file
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "ico" => "image/x-icon",
        "wasm" => "application/wasm",
        "m3u8" => "application/vnd.apple.mpegurl",
        "mp4" | "m4s" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "ts" => "video/mp2t",
        "aac" => "audio/aac",
        "flv" => "video/x-flv",
        _ => "application/octet-stream",
    }
}

// ---------------------------------------------------------------------------------------
// Screenshots: base64 and PNG checks
// ---------------------------------------------------------------------------------------

/// Standard base64 (with or without padding) to bytes.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    let mut padding = 0;
    for (i, c) in text.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => {
                padding += 1;
                continue;
            }
            b'\r' | b'\n' => continue,
            _ => return Err(format!("not base64: byte {c:#04x} at {i}")),
        };
        if padding > 0 {
            return Err(format!("base64 data after padding at {i}"));
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if bits >= 6 || padding > 2 {
        return Err("truncated base64".into());
    }
    Ok(out)
}

/// What [`check_png`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PngInfo {
    pub width: u32,
    pub height: u32,
    pub bit_depth: u8,
    pub color_type: u8,
    pub idat_bytes: usize,
}

/// Checks that `bytes` is a well-formed PNG: the signature, IHDR first, every
/// chunk's CRC, at least one IDAT, IEND last. (Whether the pixels decode is
/// [`png_gray_pixels`]'s job.)
pub fn check_png(bytes: &[u8]) -> Result<PngInfo, String> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    if !bytes.starts_with(SIGNATURE) {
        return Err("no PNG signature".into());
    }
    let mut at = SIGNATURE.len();
    let mut info: Option<PngInfo> = None;
    let mut first = true;
    loop {
        let header = bytes
            .get(at..at + 8)
            .ok_or_else(|| format!("truncated chunk header at {at}"))?;
        let len = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
        let kind = &header[4..8];
        let data = bytes.get(at + 8..at + 8 + len).ok_or_else(|| {
            format!(
                "chunk {} at {at} runs past the end",
                String::from_utf8_lossy(kind)
            )
        })?;
        let crc = bytes
            .get(at + 8 + len..at + 12 + len)
            .ok_or_else(|| format!("chunk {} at {at} has no CRC", String::from_utf8_lossy(kind)))?;
        let want = u32::from_be_bytes(crc.try_into().unwrap());
        let got = crc32(&[kind, data]);
        if want != got {
            return Err(format!(
                "chunk {} at {at}: CRC {want:#010x}, computed {got:#010x}",
                String::from_utf8_lossy(kind)
            ));
        }
        match kind {
            b"IHDR" => {
                if !first || data.len() != 13 {
                    return Err("IHDR is not the first chunk or not 13 bytes".into());
                }
                info = Some(PngInfo {
                    width: u32::from_be_bytes(data[0..4].try_into().unwrap()),
                    height: u32::from_be_bytes(data[4..8].try_into().unwrap()),
                    bit_depth: data[8],
                    color_type: data[9],
                    idat_bytes: 0,
                });
            }
            _ if first => return Err("the first chunk is not IHDR".into()),
            b"IDAT" => {
                if let Some(info) = info.as_mut() {
                    info.idat_bytes += len;
                }
            }
            b"IEND" => {
                if at + 12 + len != bytes.len() {
                    return Err("bytes after IEND".into());
                }
                let info = info.expect("IHDR came first");
                if info.idat_bytes == 0 {
                    return Err("no IDAT".into());
                }
                if info.width == 0 || info.height == 0 {
                    return Err(format!("empty image {}x{}", info.width, info.height));
                }
                return Ok(info);
            }
            _ => {}
        }
        first = false;
        at += 12 + len;
    }
}

/// CRC-32 (ISO-HDLC, as PNG uses) of the concatenated parts.
pub fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for part in parts {
        for &byte in *part {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
    }
    !crc
}

/// Decodes the PNG at `path` with ffmpeg into 8-bit gray pixels, row by row
/// (`width * height` bytes): an independent decoder says the PNG is valid.
pub fn png_gray_pixels(path: &Path) -> Result<(u32, u32, Vec<u8>), String> {
    let bytes = fs::read(path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let info = check_png(&bytes)?;
    let raw = path.with_extension("gray");
    let args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        &path.display().to_string(),
        "-f",
        "rawvideo",
        "-pix_fmt",
        "gray",
        &raw.display().to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (status, _, err) = run_tool(&require_tool("ffmpeg"), &args, Duration::from_secs(30));
    let pixels = fs::read(&raw).unwrap_or_default();
    let _ = fs::remove_file(&raw);
    if !status.success() {
        return Err(format!("ffmpeg cannot decode {}: {err}", path.display()));
    }
    let want = info.width as usize * info.height as usize;
    if pixels.len() != want {
        return Err(format!(
            "ffmpeg decoded {} pixels, the header says {}x{}",
            pixels.len(),
            info.width,
            info.height
        ));
    }
    Ok((info.width, info.height, pixels))
}

/// The number of distinct gray levels in the rectangle (x, y, w, h) of an image
/// `width` pixels wide: 1 for a flat area, dozens for a video frame.
pub fn distinct_levels(pixels: &[u8], width: u32, rect: (u32, u32, u32, u32)) -> usize {
    let (x, y, w, h) = rect;
    let mut seen = [false; 256];
    for row in y..y + h {
        let start = (row * width + x) as usize;
        for &p in pixels.get(start..start + w as usize).unwrap_or(&[]) {
            seen[p as usize] = true;
        }
    }
    seen.iter().filter(|&&s| s).count()
}
