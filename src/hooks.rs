//! HTTP callbacks in the nginx-rtmp style (`on_publish`, `on_play`, and the
//! `*_done` notifications), made by a small pool of helper threads so that
//! no worker ever waits on the network.
//!
//! A worker that needs a decision hands a [`Job`] to the pool with a
//! closure that posts the [`Answer`] back to that worker (its inbox and
//! `mio::Waker`); the connection waits meanwhile (an RTMP session paused at
//! its publish / play, an HTTP player parked). Each request is bounded: one
//! deadline (`timeout`) covers connecting, writing and reading; at most
//! [`MAX_RESPONSE_HEAD`] bytes of response head and, for JSON hooks,
//! [`MAX_JSON_BODY`] bytes of body are read, whatever the server sends.
//!
//! The answer, as nginx-rtmp: 2xx allows; 3xx with a `Location` renames the
//! stream to that name; anything else, a timeout or an error denies. With
//! `json = true` (SRS-style hooks) the request body is JSON and a 2xx body
//! of `0`, `{"code": 0}` or nothing allows, any other code denies.

use crate::protocol::name::StreamName;
use serde::Deserialize;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most bytes of a callback's response head read (status line, headers).
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Most bytes of a JSON hook's response body read.
pub const MAX_JSON_BODY: usize = 4 * 1024;
/// Default time a callback has to answer.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(3);
/// Helper threads making callbacks. A hung callback holds one for at most
/// its timeout; the rest keep answering.
pub const HOOK_THREADS: usize = 8;
/// Callbacks waiting for a helper thread; past it a deciding callback
/// denies at once and a notification is dropped (a callback server that
/// cannot keep up must not grow memory).
pub const HOOK_QUEUE: usize = 1024;

/// The callbacks of one application.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Asked when an RTMP client connects to the application: 2xx allows,
    /// anything else answers NetConnection.Connect.Rejected and closes.
    pub on_connect: Option<String>,
    /// Asked before a publish: allow, rename or deny.
    pub on_publish: Option<String>,
    /// Asked before a play (RTMP or HTTP-FLV): allow, rename or deny.
    pub on_play: Option<String>,
    /// Told when a publish ends.
    pub on_publish_done: Option<String>,
    /// Told when a play ends.
    pub on_play_done: Option<String>,
    /// Told when an RTMP connection of this application closes.
    pub on_done: Option<String>,
    /// Told when a recording file is finished (closed, or stopped by an
    /// error), with its path.
    pub on_record_done: Option<String>,
    /// Send a JSON body (SRS-style) instead of a form.
    #[serde(default)]
    pub json: bool,
    /// Seconds a callback has to answer (default: [`DEFAULT_HOOK_TIMEOUT`]).
    pub timeout: Option<crate::seconds::Secs>,
}

impl Hooks {
    pub fn timeout(&self) -> Duration {
        self.timeout.map_or(DEFAULT_HOOK_TIMEOUT, |s| s.0)
    }
}

/// What a deciding callback said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allow,
    /// Go ahead under this stream name (a 3xx `Location`).
    Rename(StreamName),
    /// Denied (status, timeout or error), with why (for the log).
    Deny(String),
}

/// What a callback is told.
#[derive(Debug, Clone, Default)]
pub struct Call {
    /// `connect`, `publish`, `play`, `publish_done`, `play_done`, `done`.
    pub call: &'static str,
    pub app: String,
    pub name: String,
    pub addr: String,
    pub client_id: u64,
    pub tc_url: String,
    /// The client's query arguments (`a=1&b=2`), passed on.
    pub query: String,
    /// `record_done`: the recording's file.
    pub path: String,
}

fn form_escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

impl Call {
    /// nginx-rtmp's form: call, app, name, addr, clientid, tcurl, then the
    /// client's own arguments.
    pub fn form(&self) -> String {
        let mut out = String::new();
        let id = self.client_id.to_string();
        for (k, v) in [
            ("call", self.call),
            ("app", &self.app),
            ("name", &self.name),
            ("addr", &self.addr),
            ("clientid", &id),
            ("tcurl", &self.tc_url),
        ] {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(k);
            out.push('=');
            form_escape(v, &mut out);
        }
        if !self.path.is_empty() {
            out.push_str("&path=");
            form_escape(&self.path, &mut out);
        }
        // The client's arguments are passed as they came (already encoded);
        // ours come first, so nginx-style backends reading the first value
        // of `app` or `name` see ours.
        if !self.query.is_empty() {
            out.push('&');
            out.push_str(&self.query);
        }
        out
    }

    /// SRS's hook body (a recording's path as `file`, as SRS's `on_dvr`).
    pub fn json(&self) -> String {
        let mut v = serde_json::json!({
            "action": format!("on_{}", self.call),
            "client_id": self.client_id.to_string(),
            "ip": self.addr,
            "vhost": "__defaultVhost__",
            "app": self.app,
            "stream": self.name,
            "param": if self.query.is_empty() { String::new() } else { format!("?{}", self.query) },
            "tcUrl": self.tc_url,
        });
        if !self.path.is_empty() {
            v["file"] = serde_json::Value::from(self.path.as_str());
        }
        v.to_string()
    }
}

/// `http://host[:port]/path` → (host:port, host, path).
fn split_url(url: &str) -> Result<(String, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// callback URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err("no host in the callback URL".into());
    }
    let host_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((host_port, authority.to_owned(), path.to_owned()))
}

/// Checks a callback URL when the config is loaded.
pub fn check_url(url: &str) -> Result<(), String> {
    split_url(url).map(|_| ())
}

fn left(deadline: Instant) -> Result<Duration, String> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err("timed out".into())
    } else {
        Ok(d)
    }
}

/// POSTs `body` to `url` and returns the status, the Location header and,
/// when `want_body`, up to [`MAX_JSON_BODY`] bytes of body. Blocking; for
/// the helper threads only.
fn post(
    url: &str,
    content_type: &str,
    body: &str,
    timeout: Duration,
    want_body: bool,
) -> Result<(u16, Option<String>, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let (host_port, host, path) = split_url(url)?;
    let addrs: Vec<_> = host_port
        .to_socket_addrs()
        .map_err(|e| format!("resolving {host}: {e}"))?
        .collect();
    let mut sock = None;
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, left(deadline)?) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut sock = sock.ok_or_else(|| format!("connecting: {last}"))?;
    sock.set_write_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice/{}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    sock.write_all(req.as_bytes())
        .map_err(|e| format!("sending: {e}"))?;
    let mut buf = vec![0u8; MAX_RESPONSE_HEAD];
    let mut len = 0;
    loop {
        sock.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        if len == buf.len() {
            return Err(format!("response head over {MAX_RESPONSE_HEAD} bytes"));
        }
        let n = match sock.read(&mut buf[len..]) {
            Ok(0) => return Err("connection closed before a response".into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading: {e}")),
        };
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf[..len]) {
            Ok(httparse::Status::Partial) => continue,
            Err(e) => return Err(format!("bad response: {e}")),
            Ok(httparse::Status::Complete(head)) => {
                let status = resp.code.unwrap_or(0);
                let header = |name: &str| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(|v| v.trim().to_owned())
                };
                let location = header("location");
                let content_len = header("content-length").and_then(|v| v.parse::<usize>().ok());
                let mut body = buf[head..len].to_vec();
                if want_body {
                    let want = content_len.unwrap_or(MAX_JSON_BODY).min(MAX_JSON_BODY);
                    while body.len() < want {
                        sock.set_read_timeout(Some(left(deadline)?))
                            .map_err(|e| e.to_string())?;
                        let mut chunk = [0u8; 1024];
                        match sock.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(n) => body.extend_from_slice(&chunk[..n]),
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(format!("reading the body: {e}")),
                        }
                    }
                    body.truncate(want);
                }
                return Ok((status, location, body));
            }
        }
    }
}

/// Makes a deciding callback (blocking), within `timeout`.
pub fn decide(url: &str, call: &Call, hooks: &Hooks, timeout: Duration) -> Answer {
    let (ct, body) = if hooks.json {
        ("application/json", call.json())
    } else {
        ("application/x-www-form-urlencoded", call.form())
    };
    match post(url, ct, &body, timeout, hooks.json) {
        Err(e) => Answer::Deny(format!("callback failed: {e}")),
        Ok((status, _, body)) if (200..300).contains(&status) => {
            if hooks.json && !srs_allows(&body) {
                Answer::Deny(format!("callback answered {status} with a non-zero code"))
            } else {
                Answer::Allow
            }
        }
        Ok((status, Some(location), _)) if (300..400).contains(&status) => {
            if location.contains("://") {
                // nginx-rtmp relays to another server here; Sluice does not.
                return Answer::Deny(format!(
                    "callback redirected to another server ({status}), which is not supported"
                ));
            }
            let name = location.trim_start_matches('/');
            let name = name.rsplit_once('/').map_or(name, |(_, n)| n);
            match StreamName::new(name) {
                Ok(name) => Answer::Rename(name),
                Err(e) => Answer::Deny(format!(
                    "callback redirected to an invalid name ({status}): {e}"
                )),
            }
        }
        Ok((status, _, _)) => Answer::Deny(format!("callback answered {status}")),
    }
}

/// SRS: a body of `0`, `{"code": 0}` or nothing allows.
fn srs_allows(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return true;
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Number(n)) => n.as_i64() == Some(0),
        Ok(serde_json::Value::Object(o)) => o.get("code").and_then(|c| c.as_i64()) == Some(0),
        _ => false,
    }
}

/// Work for a helper thread.
pub struct Job {
    pub url: String,
    pub call: Call,
    pub hooks: Arc<Hooks>,
    /// Where the answer goes (None: a notification).
    pub reply: Option<Box<dyn FnOnce(Answer) + Send>>,
    /// When it was queued: the timeout counts from here, so time spent
    /// waiting for a free helper thread is part of it.
    pub queued: Instant,
}

/// The helper threads.
pub struct Pool {
    tx: SyncSender<Job>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hooks::Pool")
    }
}

impl Pool {
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel::<Job>(HOOK_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("sluice-hook-{i}"))
                .spawn(move || run(&rx))?;
        }
        Ok(Self { tx })
    }

    /// Queues a job; a deciding job that cannot be queued is denied at once
    /// (through its reply), a notification is dropped.
    pub fn submit(&self, job: Job) {
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                log::warn!(
                    "callback {} for {}/{} not made: {HOOK_QUEUE} callbacks already waiting",
                    job.call.call,
                    job.call.app,
                    job.call.name
                );
                if let Some(reply) = job.reply {
                    reply(Answer::Deny("callback queue full".into()));
                }
            }
        }
    }
}

fn run(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(j) => j,
                Err(_) => return,
            }
        };
        let left = job.hooks.timeout().saturating_sub(job.queued.elapsed());
        let answer = if left.is_zero() {
            Answer::Deny("timed out waiting for a helper thread".into())
        } else {
            decide(&job.url, &job.call, &job.hooks, left)
        };
        match job.reply {
            Some(reply) => reply(answer),
            None => {
                if let Answer::Deny(why) = answer {
                    log::debug!("notification {} to {}: {why}", job.call.call, job.url);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9000/auth?x=1").unwrap(),
            (
                "127.0.0.1:9000".into(),
                "127.0.0.1:9000".into(),
                "/auth?x=1".into()
            )
        );
        assert_eq!(split_url("http://example.com").unwrap().0, "example.com:80");
        assert!(split_url("https://x/").is_err());
    }

    #[test]
    fn form_and_json() {
        let c = Call {
            call: "publish",
            app: "live".into(),
            name: "a b".into(),
            addr: "127.0.0.1".into(),
            client_id: 7,
            tc_url: "rtmp://h/live".into(),
            query: "token=x%20y".into(),
            path: String::new(),
        };
        assert_eq!(
            c.form(),
            "call=publish&app=live&name=a+b&addr=127.0.0.1&clientid=7&tcurl=rtmp%3A%2F%2Fh%2Flive&token=x%20y"
        );
        let j: serde_json::Value = serde_json::from_str(&c.json()).unwrap();
        assert_eq!(j["action"], "on_publish");
        assert_eq!(j["param"], "?token=x%20y");
        assert!(j.get("file").is_none());
        let done = Call {
            call: "record_done",
            app: "live".into(),
            name: "cam".into(),
            path: "/r/live/cam/1 2.mp4".into(),
            ..Default::default()
        };
        assert_eq!(
            done.form(),
            "call=record_done&app=live&name=cam&addr=&clientid=0&tcurl=&path=%2Fr%2Flive%2Fcam%2F1+2.mp4"
        );
        let j: serde_json::Value = serde_json::from_str(&done.json()).unwrap();
        assert_eq!(j["action"], "on_record_done");
        assert_eq!(j["file"], "/r/live/cam/1 2.mp4");
    }

    #[test]
    fn srs_codes() {
        assert!(srs_allows(b""));
        assert!(srs_allows(b"0"));
        assert!(srs_allows(b"{\"code\":0}"));
        assert!(!srs_allows(b"1"));
        assert!(!srs_allows(b"{\"code\":403}"));
        assert!(!srs_allows(b"nope"));
    }
}
