//! The server's HTTP API and `/metrics` as the tests read them (docs/http.md):
//! what a test asserts about connections, streams, relays and close reasons
//! comes from here rather than from log lines. Std and serde_json only, so
//! both harnesses use it: `common::api` (the `sluice` binary) and
//! `support::api` (an in-process server).
#![allow(dead_code)] // each integration-test binary uses a different subset

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// One HTTP/1.1 request with `Connection: close`: (status, JSON body; Null
/// when the body is not JSON).
pub fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = request_text(addr, method, path, body);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Like [`request`], the body as text.
pub fn request_text(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to the API on {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad response: {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// `GET path`, which must answer 200 with JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    let (status, v) = request(addr, "GET", path, "");
    assert_eq!(status, 200, "GET {path}: {v}");
    v
}

/// `GET /api/streams/KEY` when the stream exists (None on 404).
pub fn stream(addr: SocketAddr, key: &str) -> Option<Value> {
    match request(addr, "GET", &format!("/api/streams/{key}"), "") {
        (200, v) => Some(v),
        (404, _) => None,
        (status, v) => panic!("GET /api/streams/{key}: {status} {v}"),
    }
}

/// `GET /api/clients`: every connection.
pub fn clients(addr: SocketAddr) -> Vec<Value> {
    get_json(addr, "/api/clients")["clients"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The clients in state `playing` on stream `key` (players waiting for a
/// publisher included).
pub fn players_of(addr: SocketAddr, key: &str) -> Vec<Value> {
    clients(addr)
        .into_iter()
        .filter(|c| c["state"] == "playing" && c["stream"] == key)
        .collect()
}

/// `GET /metrics` as text.
pub fn metrics(addr: SocketAddr) -> String {
    let (status, text) = request_text(addr, "GET", "/metrics", "");
    assert_eq!(status, 200, "GET /metrics: {text}");
    text
}

/// The value of sample `name{labels}` in a `/metrics` text: every label
/// given must match; None when no such sample.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        if line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        let matches = n == name
            && labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// `sluice_closes_total{reason}` now.
pub fn closes(addr: SocketAddr, reason: &str) -> f64 {
    let text = metrics(addr);
    metric(&text, "sluice_closes_total", &[("reason", reason)])
        .unwrap_or_else(|| panic!("no sluice_closes_total{{reason={reason:?}}} in:\n{text}"))
}

/// Polls `f` every 50 ms until it holds; panics with `what` after `limit`.
#[track_caller]
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` every 50 ms until it returns Some; panics with `what` after
/// `limit`.
#[track_caller]
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn reads_samples_by_name_and_labels() {
        let text = "# HELP sluice_closes_total Connections closed, by reason.\n\
                    # TYPE sluice_closes_total counter\n\
                    sluice_closes_total{reason=\"peer\"} 4\n\
                    sluice_closes_total{reason=\"stalled\"} 1\n\
                    sluice_streams 2\n\
                    sluice_stream_players{stream=\"live/a\",protocol=\"rtmp\"} 3\n";
        assert_eq!(
            metric(text, "sluice_closes_total", &[("reason", "stalled")]),
            Some(1.0)
        );
        assert_eq!(metric(text, "sluice_streams", &[]), Some(2.0));
        assert_eq!(
            metric(
                text,
                "sluice_stream_players",
                &[("protocol", "rtmp"), ("stream", "live/a")]
            ),
            Some(3.0)
        );
        assert_eq!(
            metric(text, "sluice_closes_total", &[("reason", "api")]),
            None
        );
        assert_eq!(metric(text, "sluice_stream", &[]), None);
    }
}
