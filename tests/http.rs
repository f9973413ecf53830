//! HTTP-FLV, ws-flv, the HTTP API and `/metrics` against independent peers:
//! ffmpeg playing HTTP-FLV from the `sluice` binary, a raw HTTP reader and
//! tungstenite (a WebSocket client Sluice does not share code with) on an
//! in-process server, prometheus-parse reading `/metrics`, and hand-written
//! malformed requests. Every test is bounded (socket read timeouts, hard
//! deadlines on every wait) and ends by itself.

mod common;
mod support;

use serde_json::Value;
use sluice::protocol::client::ClientEvent;
use sluice::server::RunningServer;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};
use support::{assert_complete_from_keyframe, start_server, Received, Synth, TestClient};
use tungstenite::Message;

/// Bound on any single wait for the server in these tests.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// A minimal HTTP/1.1 client (raw sockets, so malformed input is easy to send)
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Response {
    status: u16,
    /// Lower-cased names.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, WAIT).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.set_write_timeout(Some(WAIT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads until `buf` holds a complete response head; returns (status,
/// headers, head length). Panics on EOF or timeout.
fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> (u16, Vec<(String, String)>, usize) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(buf).expect("malformed response head") {
            httparse::Status::Complete(n) => {
                let h = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                return (r.code.unwrap(), h, n);
            }
            httparse::Status::Partial => {
                let mut chunk = [0u8; 8192];
                match sock.read(&mut chunk) {
                    Ok(0) => panic!(
                        "EOF before a complete response head; got {:?}",
                        String::from_utf8_lossy(buf)
                    ),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => panic!("reading a response head: {e}"),
                }
            }
        }
    }
}

/// Reads one response (body by Content-Length, or to EOF when there is none
/// and `head_only` is false). Bytes past it stay in `buf`.
fn read_response(sock: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Response {
    let (status, headers, n) = read_head(sock, buf);
    buf.drain(..n);
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("Content-Length"));
    let body = match (head_only || status == 204, len) {
        (true, _) => Vec::new(),
        (false, Some(len)) => {
            while buf.len() < len {
                let mut chunk = [0u8; 8192];
                match sock.read(&mut chunk) {
                    Ok(0) => panic!("EOF inside a {len}-byte body"),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => panic!("reading a body: {e}"),
                }
            }
            buf.drain(..len).collect()
        }
        (false, None) => {
            sock.read_to_end(buf).expect("reading a body to EOF");
            std::mem::take(buf)
        }
    };
    Response {
        status,
        headers,
        body,
    }
}

/// One request on a fresh connection (`Connection: close`).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut sock = connect(addr);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).expect("write request");
    let mut buf = Vec::new();
    read_response(&mut sock, &mut buf, method == "HEAD")
}

fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[])
}

/// GET that must answer 200 with JSON.
fn get_json(addr: SocketAddr, path: &str) -> Value {
    let r = get(addr, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// Reads until EOF (or a reset); returns how long that took, None on timeout.
fn time_to_eof(sock: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut chunk = [0u8; 65536];
    while start.elapsed() < limit {
        match sock.read(&mut chunk) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// FLV
// ---------------------------------------------------------------------------------------

const FLV_HEADER_AV: [u8; 13] = [b'F', b'L', b'V', 1, 0x05, 0, 0, 0, 9, 0, 0, 0, 0];

/// One FLV tag as sent: 11-byte header, data, 4-byte PreviousTagSize.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tag {
    bytes: Vec<u8>,
}

impl Tag {
    fn kind(&self) -> u8 {
        self.bytes[0]
    }
    fn timestamp(&self) -> u32 {
        let b = &self.bytes;
        u32::from_be_bytes([b[7], b[4], b[5], b[6]])
    }
    fn data(&self) -> &[u8] {
        &self.bytes[11..self.bytes.len() - 4]
    }

    /// Checks the framing: DataSize, StreamID 0, PreviousTagSize.
    fn check(&self) {
        let b = &self.bytes;
        let size = u32::from_be_bytes([0, b[1], b[2], b[3]]) as usize;
        assert_eq!(size + 15, b.len(), "DataSize of {:02x?}", &b[..11]);
        assert_eq!(&b[8..11], &[0, 0, 0], "StreamID is 0");
        let prev = u32::from_be_bytes(b[b.len() - 4..].try_into().unwrap()) as usize;
        assert_eq!(prev, size + 11, "PreviousTagSize");
        assert!(matches!(b[0], 8 | 9 | 18), "tag type {}", b[0]);
    }

    /// What the synthetic stream put in this tag.
    fn decode(&self) -> Option<Received> {
        let p = self.data();
        let index = || u32::from_be_bytes([p[5], p[6], p[7], p[8]]);
        match self.kind() {
            18 => {
                let v = sluice::protocol::amf::decode_all(p, &Default::default()).ok()?;
                (v.first()?.as_str()? == "onMetaData").then_some(Received::Metadata)
            }
            9 if p.len() >= 2 && p[1] == 0 => Some(Received::VideoConfig),
            9 if p.len() >= 9 => Some(Received::Video {
                index: index(),
                key: p[0] >> 4 == 1,
                timestamp: self.timestamp(),
            }),
            8 if p.len() >= 2 && p[1] == 0 => Some(Received::AudioConfig),
            8 if p.len() >= 9 => Some(Received::Audio {
                index: index(),
                timestamp: self.timestamp(),
            }),
            _ => None,
        }
    }
}

/// Splits complete tags off the front of `buf`.
fn split_tags(buf: &mut Vec<u8>, out: &mut Vec<Tag>) {
    let mut at = 0;
    while buf.len() - at >= 11 {
        let size = u32::from_be_bytes([0, buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
        let total = 11 + size + 4;
        if buf.len() - at < total {
            break;
        }
        let tag = Tag {
            bytes: buf[at..at + total].to_vec(),
        };
        tag.check();
        out.push(tag);
        at += total;
    }
    buf.drain(..at);
}

fn video_index(t: &Tag) -> Option<u32> {
    match t.decode() {
        Some(Received::Video { index, .. }) => Some(index),
        _ => None,
    }
}

/// How a reader's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The server closed the TCP connection (after a WebSocket Close frame,
    /// for ws-flv, when `ws_close` is set).
    Eof {
        ws_close: bool,
    },
    /// Our stop flag or our own condition.
    Stopped,
    TimedOut,
    Error(String),
}

/// What a reader thread got.
struct Reading {
    head: Response,
    flv_header: Vec<u8>,
    tags: Vec<Tag>,
    end: End,
    /// When the stream ended, relative to nothing: compare with other Instants.
    ended_at: Instant,
}

/// Stops a reader: after video frame `until_video` (if set), on `stop`, or
/// at `deadline`.
#[derive(Clone)]
struct ReadUntil {
    until_video: Option<u32>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
}

impl ReadUntil {
    fn new(until_video: Option<u32>, limit: Duration) -> Self {
        Self {
            until_video,
            stop: Arc::new(AtomicBool::new(false)),
            deadline: Instant::now() + limit,
        }
    }
    fn done(&self, tags: &[Tag]) -> Option<End> {
        if self.stop.load(Ordering::SeqCst) {
            return Some(End::Stopped);
        }
        if let Some(last) = self.until_video {
            if tags.iter().rev().find_map(video_index) >= Some(last) {
                return Some(End::Stopped);
            }
        }
        (Instant::now() >= self.deadline).then_some(End::TimedOut)
    }
}

/// An HTTP-FLV player in a thread: `GET path`, checks the FLV header, splits
/// tags. Sends `()` on `joined` once the first video tag arrived.
fn spawn_http_flv(
    addr: SocketAddr,
    path: String,
    until: ReadUntil,
    joined: Option<mpsc::Sender<()>>,
    local: Option<mpsc::Sender<SocketAddr>>,
) -> JoinHandle<Reading> {
    thread::spawn(move || {
        let mut sock = connect(addr);
        if let Some(tx) = local {
            let _ = tx.send(sock.local_addr().unwrap());
        }
        sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .unwrap();
        let mut buf = Vec::new();
        let (status, headers, n) = read_head(&mut sock, &mut buf);
        buf.drain(..n);
        let head = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let mut reading = Reading {
            head,
            flv_header: Vec::new(),
            tags: Vec::new(),
            end: End::TimedOut,
            ended_at: Instant::now(),
        };
        if status != 200 {
            reading.end = End::Error(format!("status {status}"));
            return reading;
        }
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut joined = joined;
        let mut chunk = vec![0u8; 65536];
        let end = loop {
            if reading.flv_header.is_empty() && buf.len() >= 13 {
                reading.flv_header = buf.drain(..13).collect();
            }
            if !reading.flv_header.is_empty() {
                split_tags(&mut buf, &mut reading.tags);
            }
            if joined.is_some() && reading.tags.iter().any(|t| video_index(t).is_some()) {
                let _ = joined.take().unwrap().send(());
            }
            if let Some(end) = until.done(&reading.tags) {
                break end;
            }
            match sock.read(&mut chunk) {
                Ok(0) => break End::Eof { ws_close: false },
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => break End::Error(e.to_string()),
            }
        };
        assert!(
            buf.is_empty() || end != (End::Eof { ws_close: false }),
            "a partial tag at EOF"
        );
        reading.end = end;
        reading.ended_at = Instant::now();
        reading
    })
}

/// A ws-flv player (tungstenite, blocking, std TcpStream with a read
/// timeout) in a thread. Each binary message must be the FLV header (first)
/// or exactly one tag.
fn spawn_ws_flv(
    addr: SocketAddr,
    path: String,
    until: ReadUntil,
    joined: Option<mpsc::Sender<()>>,
) -> JoinHandle<Reading> {
    thread::spawn(move || {
        let sock = connect(addr);
        let (mut ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), sock)
            .unwrap_or_else(|e| panic!("WebSocket handshake: {e}"));
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let head = Response {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
                .collect(),
            body: Vec::new(),
        };
        let mut reading = Reading {
            head,
            flv_header: Vec::new(),
            tags: Vec::new(),
            end: End::TimedOut,
            ended_at: Instant::now(),
        };
        let mut joined = joined;
        let mut ws_close = false;
        let end = loop {
            if joined.is_some() && reading.tags.iter().any(|t| video_index(t).is_some()) {
                let _ = joined.take().unwrap().send(());
            }
            if let Some(end) = until.done(&reading.tags) {
                break end;
            }
            match ws.read() {
                Ok(Message::Binary(b)) => {
                    if reading.flv_header.is_empty() {
                        assert_eq!(b.len(), 13, "the first message is the FLV header alone");
                        reading.flv_header = b.to_vec();
                    } else {
                        let mut v = b.to_vec();
                        let mut one = Vec::new();
                        split_tags(&mut v, &mut one);
                        assert!(
                            one.len() == 1 && v.is_empty(),
                            "a ws-flv message is exactly one tag"
                        );
                        reading.tags.extend(one);
                    }
                }
                Ok(Message::Close(_)) => ws_close = true,
                Ok(other) => break End::Error(format!("unexpected message {other:?}")),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(tungstenite::Error::ConnectionClosed) => break End::Eof { ws_close },
                Err(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                )) => break End::Eof { ws_close: false },
                Err(e) => break End::Error(e.to_string()),
            }
        };
        reading.end = end;
        reading.ended_at = Instant::now();
        reading
    })
}

// ---------------------------------------------------------------------------------------
// Synthetic publishing and RTMP playing in threads
// ---------------------------------------------------------------------------------------

/// Publishes Synth frames from a thread until stopped, `fps` video frames a
/// second (30: real time; more: a flood, timestamps still 33 ms apart).
struct Publisher {
    stop: Arc<AtomicBool>,
    /// Index of the last video frame sent.
    last_video: Arc<AtomicU32>,
    sent: Arc<AtomicU32>,
    thread: Option<JoinHandle<TestClient>>,
    pub local: SocketAddr,
    pub stream_id: u32,
}

impl Publisher {
    fn start(rtmp: SocketAddr, name: &str, gop: u32, video_bytes: usize) -> Publisher {
        Self::start_at(rtmp, name, gop, video_bytes, 30)
    }

    fn start_at(rtmp: SocketAddr, name: &str, gop: u32, video_bytes: usize, fps: u64) -> Publisher {
        let mut client = TestClient::connect(rtmp, "live");
        let (id, code) = client.publish(name);
        assert_eq!(code, "NetStream.Publish.Start");
        let local = client.sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let last_video = Arc::new(AtomicU32::new(u32::MAX));
        let sent = Arc::new(AtomicU32::new(0));
        let (s, l, n) = (stop.clone(), last_video.clone(), sent.clone());
        let thread = thread::spawn(move || {
            let mut synth = Synth::new(gop, video_bytes);
            for f in synth.headers() {
                client.send(id, &f);
            }
            let start = Instant::now();
            let mut i = 0u32;
            // A hard bound on its own, in case a test forgets to stop it.
            while !s.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(50) {
                for f in synth.next() {
                    client.send(id, &f);
                }
                l.store(i, Ordering::SeqCst);
                n.fetch_add(1, Ordering::SeqCst);
                i += 1;
                // Drain what the server says (acks, pings) now and then.
                if i % 30 == 0 {
                    client.read_once(Duration::from_millis(1));
                    client.events.clear();
                }
                let due = start + Duration::from_micros(u64::from(i) * 1_000_000 / fps);
                sleep(due.saturating_duration_since(Instant::now()));
            }
            client
        });
        let p = Publisher {
            stop,
            last_video,
            sent,
            thread: Some(thread),
            local,
            stream_id: id,
        };
        p.wait_frames(1);
        p
    }

    fn wait_frames(&self, n: u32) {
        let deadline = Instant::now() + WAIT;
        while self.sent.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "publisher stuck");
            sleep(Duration::from_millis(10));
        }
    }

    /// Stops sending; returns the client (still publishing) and the last
    /// video index sent.
    fn stop(mut self) -> (TestClient, u32) {
        self.stop.store(true, Ordering::SeqCst);
        let client = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("publisher thread");
        (client, self.last_video.load(Ordering::SeqCst))
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An RTMP player in a thread: reads until stopped, the socket closes, or
/// UnpublishNotify; returns the status codes seen and media counts.
struct RtmpPlayerResult {
    statuses: Vec<(String, Instant)>,
    media: u64,
    local: SocketAddr,
}

fn spawn_rtmp_player(
    rtmp: SocketAddr,
    name: &str,
    until: ReadUntil,
) -> (JoinHandle<RtmpPlayerResult>, SocketAddr) {
    let mut c = TestClient::connect(rtmp, "live");
    c.play(name);
    let local = c.sock.local_addr().unwrap();
    let h = thread::spawn(move || {
        let mut r = RtmpPlayerResult {
            statuses: Vec::new(),
            media: 0,
            local,
        };
        while until.done(&[]).is_none() && !c.closed {
            match c.next_event(Duration::from_millis(50)) {
                Some(ClientEvent::Status { code, .. }) => {
                    let unpublished = code == "NetStream.Play.UnpublishNotify";
                    r.statuses.push((code, Instant::now()));
                    if unpublished {
                        break;
                    }
                }
                Some(ClientEvent::Media { .. }) => r.media += 1,
                _ => {}
            }
        }
        r
    });
    (h, local)
}

fn stream_players(server: &RunningServer, key: &str) -> Value {
    get_json(server.addrs().http.unwrap(), &format!("/api/streams/{key}"))["players"].clone()
}

/// Polls `/api/streams/KEY` until `pred` holds (≤ WAIT).
fn wait_stream(addr: SocketAddr, key: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = get(addr, &format!("/api/streams/{key}"));
        if r.status == 200 {
            let v = r.json();
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {v:#}"
            );
        } else {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {} {}",
                r.status,
                r.text()
            );
        }
        sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// 1. ffmpeg plays HTTP-FLV
// ---------------------------------------------------------------------------------------

/// ffmpeg publishes the clip over RTMP, ffmpeg joins HTTP-FLV 1.5 s in: its
/// packets match the clip from its first keyframe on, and it exits by
/// itself (well inside its 3 s read timeout) when the publisher leaves,
/// because Sluice ends the response. The API reports the real SPS size.
#[test]
fn ffmpeg_plays_http_flv_and_ends_with_the_publisher() {
    use common::*;
    let t0 = Instant::now();
    let server = Server::start(2, &[]);
    let mut publisher = publish_ffmpeg(&server.url("live", "hflv"), clip());
    // The player joins 1.5 s into the stream (`-re`: media time is real time).
    server.wait_live("live/hflv");
    sleep(Duration::from_millis(1500));
    let out = server.dir().join("http.flv");
    let mut player = play_ffmpeg(&server.http_url("live", "hflv"), &out);

    // While both run: the API sees the real codec configuration and the player.
    let api = server.http_addr();
    let v = wait_stream(api, "live/hflv", "the HTTP-FLV player", |v| {
        v["players"]["http-flv"] == 1
    });
    assert_eq!(v["video"]["codec"], "H.264", "{v:#}");
    assert_eq!(
        (v["video"]["width"].as_u64(), v["video"]["height"].as_u64()),
        (Some(640), Some(360))
    );
    assert_eq!(v["audio"]["codec"], "AAC");
    assert_eq!(v["audio"]["sample_rate"], 44100);
    assert_eq!(v["audio"]["channels"], 2);
    assert_eq!(v["players"]["total"], 1);

    let status = publisher
        .wait(Duration::from_secs(CLIP_SECS + 15))
        .expect("publisher still running");
    assert!(status.success(), "publisher: {}", publisher.stderr());
    let published_end = Instant::now();
    let end = player.wait_or_stop(PLAYER_END_GRACE);
    let after = end.ended_at.saturating_duration_since(published_end);
    assert!(
        end.by_itself && end.status.success(),
        "the HTTP-FLV player did not exit cleanly by itself: {end:?}; stderr:\n{}",
        player.stderr()
    );
    assert!(
        after < Duration::from_millis(2500),
        "the HTTP-FLV player ended {after:?} after the publisher: the response was not \
         ended with the stream (ffmpeg's own 3 s read timeout ended it)"
    );
    let received = received_packets(&player, &end, published_end);
    let first = received
        .iter()
        .find(|p| p.media == Media::Video)
        .expect("no video");
    assert!(
        first.keyframe,
        "first video packet is not a keyframe: {first}"
    );
    assert_h264_640x360(&out);
    let join = assert_same_from_first_keyframe(clip_packets(), &received);
    // The cached GOP starts at the keyframe as it arrived: an AAC frame
    // stamped a few ms after the keyframe but muxed just before it belongs to
    // the previous GOP. So audio may start up to one AAC frame (1024 samples
    // at 44.1 kHz: 23.2 ms) after the keyframe, never later.
    assert!(join.audio_from_rel_ms <= 24, "{join:?}");
    eprintln!("[http] ffmpeg HTTP-FLV player: {join:?}, ended {after:?} after the publisher");
    // The server closed it because the stream ended (its only such close),
    // and it no longer plays anything.
    assert_eq!(
        common::api::closes(api, "stream_ended"),
        1.0,
        "the HTTP-FLV player was not closed for stream_ended"
    );
    let playing = common::api::clients(api)
        .into_iter()
        .filter(|c| c["state"] == "playing")
        .collect::<Vec<_>>();
    assert!(playing.is_empty(), "still playing: {playing:#?}");
    eprintln!("[http] took {:.1}s", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// 2. ws-flv and HTTP-FLV carry the same tags
// ---------------------------------------------------------------------------------------

/// Sends `n` video frames (and their audio); returns the payload bytes sent.
fn publish_synth(c: &mut TestClient, id: u32, synth: &mut Synth, n: u32) -> u64 {
    let mut bytes = 0;
    for _ in 0..n {
        for f in synth.next() {
            bytes += f.payload.len() as u64;
            c.send(id, &f);
        }
    }
    bytes
}

/// A raw HTTP-FLV reader and a tungstenite ws-flv client join the same live
/// stream: both get the FLV header, then byte-identical tags, which decode
/// to metadata, video and audio sequence headers, and every synthetic frame
/// from the cached keyframe through the last one. When the publisher leaves
/// both responses end (the WebSocket with a Close frame).
#[test]
fn ws_flv_and_http_flv_get_the_same_tags() {
    const LAST: u32 = 149;
    let server = start_server(2, |_| {});
    let a = server.addrs();
    let http = a.http.unwrap();
    let mut publisher = TestClient::connect(a.rtmp, "live");
    let (id, code) = publisher.publish("same");
    assert_eq!(code, "NetStream.Publish.Start");
    let mut synth = Synth::new(30, 3000);
    let mut sent = 0;
    for f in synth.headers() {
        if f.kind != sluice::protocol::session::MediaKind::Data {
            sent += f.payload.len() as u64;
        }
        publisher.send(id, &f);
    }
    sent += publish_synth(&mut publisher, id, &mut synth, 45);
    // Once the server took every frame, frames 30..=44 are the cached GOP
    // both players start from. (Metadata counts too, but is shorter than
    // any frame: reaching `sent` means the last frame is in.)
    wait_stream(http, "live/same", "every frame in", |v| {
        v["bytes_in"].as_u64() >= Some(sent)
    });

    let (tx, rx) = mpsc::channel();
    let until = ReadUntil::new(None, Duration::from_secs(30));
    let h = spawn_http_flv(
        http,
        "/live/same.flv".into(),
        until.clone(),
        Some(tx.clone()),
        None,
    );
    let w = spawn_ws_flv(http, "/live/same.flv".into(), until.clone(), Some(tx));
    for _ in 0..2 {
        rx.recv_timeout(WAIT)
            .expect("a player did not get the cached GOP");
    }
    // Both joined: the rest reaches both, paced a little.
    for _ in 45..=LAST {
        publish_synth(&mut publisher, id, &mut synth, 1);
        sleep(Duration::from_millis(2));
    }
    wait_stream(http, "live/same", "both players", |v| {
        v["players"]["total"] == 2
    });
    // A round trip on the publisher's connection: the server has taken (and
    // queued to both players) every frame before the publisher leaves.
    publisher.create_stream();
    let left = Instant::now();
    publisher.delete_stream(id);

    let h = h.join().expect("HTTP-FLV reader");
    let w = w.join().expect("ws-flv reader");
    assert_eq!(h.head.status, 200);
    assert_eq!(h.head.header("content-type"), Some("video/x-flv"));
    assert_eq!(h.head.header("content-length"), None);
    assert_eq!(w.head.status, 101);
    assert_eq!(h.flv_header, FLV_HEADER_AV);
    assert_eq!(w.flv_header, FLV_HEADER_AV);

    assert_eq!(
        h.end,
        End::Eof { ws_close: false },
        "HTTP-FLV response ends with the stream"
    );
    assert_eq!(
        w.end,
        End::Eof { ws_close: true },
        "ws-flv ends with a Close frame, then EOF, when the stream ends"
    );
    for r in [&h, &w] {
        assert!(
            r.ended_at.duration_since(left) < Duration::from_secs(2),
            "ended {:?} after the publisher left",
            r.ended_at.duration_since(left)
        );
    }

    let summary = |r: &Reading| {
        let v: Vec<u32> = r.tags.iter().filter_map(video_index).collect();
        format!(
            "{} tags, video {:?}..{:?} ({} frames), ended {:?}",
            r.tags.len(),
            v.first(),
            v.last(),
            v.len(),
            r.end
        )
    };
    assert_eq!(
        h.tags.len(),
        w.tags.len(),
        "same number of tags: http {}, ws {}",
        summary(&h),
        summary(&w)
    );
    for (i, (a, b)) in h.tags.iter().zip(&w.tags).enumerate() {
        assert!(
            a == b,
            "tag #{i} differs: http {:02x?} ws {:02x?}",
            &a.bytes[..15],
            &b.bytes[..15]
        );
    }
    let got: Vec<Received> = h.tags.iter().filter_map(Tag::decode).collect();
    assert_eq!(got.len(), h.tags.len(), "every tag is a synthetic frame");
    assert_complete_from_keyframe(&got, LAST);
    let first_video = got.iter().find_map(|r| match r {
        Received::Video {
            index,
            key,
            timestamp,
        } => Some((*index, *key, *timestamp)),
        _ => None,
    });
    assert_eq!(
        first_video,
        Some((30, true, 1000)),
        "joined on the cached keyframe (frame 30 at 1000 ms)"
    );
    // Timestamps in the tags are the published ones.
    for r in &got {
        if let Received::Video {
            index, timestamp, ..
        } = r
        {
            assert_eq!(*timestamp, index * 1000 / 30);
        }
    }
    server.stop();
}

/// `?wait=1`: a player asking before the publisher gets the response at
/// once and the stream from its first keyframe when it starts; without it,
/// 404.
#[test]
fn http_flv_wait_gets_the_stream_once_it_starts() {
    let server = start_server(1, |_| {});
    let a = server.addrs();
    let http = a.http.unwrap();
    assert_eq!(get(http, "/live/later.flv").status, 404);
    let (tx, rx) = mpsc::channel();
    let until = ReadUntil::new(Some(40), Duration::from_secs(20));
    let h = spawn_http_flv(http, "/live/later.flv?wait=1".into(), until, None, Some(tx));
    rx.recv_timeout(WAIT).unwrap();
    let v = wait_stream(http, "live/later", "the waiting player", |v| {
        v["players"]["http-flv"] == 1
    });
    assert_eq!(v["live"], false);
    let publisher = Publisher::start(a.rtmp, "later", 30, 1000);
    let r = h.join().unwrap();
    assert_eq!(r.head.status, 200);
    let mut got: Vec<Received> = r.tags.iter().filter_map(Tag::decode).collect();
    let at_40 = got
        .iter()
        .position(|g| matches!(g, Received::Video { index: 40, .. }))
        .expect("video 40");
    got.truncate(at_40 + 1);
    assert_eq!(r.end, End::Stopped);
    assert_eq!(r.flv_header, FLV_HEADER_AV);
    assert_complete_from_keyframe(&got, 40);
    assert!(
        matches!(
            got[3],
            Received::Video {
                index: 0,
                key: true,
                ..
            }
        ),
        "{:?}",
        &got[..4]
    );
    drop(publisher);
    server.stop();
}

/// A ws-flv client's ping is answered with a pong carrying the same
/// payload, and its close with a close frame and then the end of the
/// connection, even while frames keep coming (no data frame may follow the
/// server's Close: tungstenite fails with ReceivedAfterClosing).
#[test]
fn ws_flv_ping_gets_pong_and_close_gets_close() {
    let server = start_server(2, |_| {});
    let http = server.addrs().http.unwrap();
    // A flood of small frames: frames are always arriving when a close does.
    let publisher = Publisher::start_at(server.addrs().rtmp, "wsctl", 30, 300, 2000);
    publisher.wait_frames(10);
    for round in 0..20 {
        let sock = connect(http);
        let (mut ws, resp) =
            tungstenite::client(format!("ws://{http}/live/wsctl.flv"), sock).expect("handshake");
        assert_eq!(resp.status().as_u16(), 101);
        ws.get_mut()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let payload: &[u8] = b"are you there?";
        ws.send(Message::Ping(payload.to_vec().into())).unwrap();
        let deadline = Instant::now() + WAIT;
        let mut binaries = 0;
        loop {
            assert!(Instant::now() < deadline, "no pong");
            match ws.read() {
                Ok(Message::Pong(p)) => {
                    assert_eq!(&p[..], payload);
                    break;
                }
                Ok(Message::Binary(_)) => binaries += 1,
                Ok(m) => panic!("unexpected {m:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("round {round}: before the pong: {e}"),
            }
        }
        assert!(binaries > 0, "the FLV stream came before the pong");
        // Keep reading a moment so frames are flowing while we close.
        sleep(Duration::from_millis(20 * (round % 4)));
        ws.close(None).unwrap();
        let deadline = Instant::now() + WAIT;
        let mut got_close = false;
        loop {
            assert!(Instant::now() < deadline, "no close reply / EOF");
            match ws.read() {
                Ok(Message::Close(f)) => {
                    got_close = true;
                    if let Some(f) = f {
                        assert_eq!(u16::from(f.code), 1000);
                    }
                }
                Ok(Message::Binary(_)) => assert!(!got_close, "data after the Close frame"),
                Ok(m) => panic!("unexpected {m:?}"),
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => {
                    panic!("round {round}: after our close: {e} (close received: {got_close})")
                }
            }
        }
        assert!(
            got_close,
            "the server answered our Close with a Close frame"
        );
    }
    drop(publisher);
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 3. The API, field by field
// ---------------------------------------------------------------------------------------

fn find_client(clients: &[Value], addr: SocketAddr) -> &Value {
    clients
        .iter()
        .find(|c| c["address"] == addr.to_string())
        .unwrap_or_else(|| panic!("{addr} not in /api/clients: {clients:#?}"))
}

/// During a live publish with 1 RTMP, 2 HTTP-FLV and 1 ws-flv players:
/// /api/server, /api/streams, /api/streams/live/NAME and /api/clients field
/// by field; DELETE /api/clients/ID closes a player; DELETE
/// /api/streams/live/NAME drops the publisher and every player hears of it.
#[test]
fn api_reports_a_live_stream_field_by_field_and_closes_clients() {
    let server = start_server(2, |_| {});
    let a = server.addrs();
    let http = a.http.unwrap();
    let t_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let publisher = Publisher::start(a.rtmp, "api", 30, 3000);
    publisher.wait_frames(5);

    let until = ReadUntil::new(None, Duration::from_secs(40));
    let (rtmp_player, rtmp_local) = spawn_rtmp_player(a.rtmp, "api", until.clone());
    let (ltx, lrx) = mpsc::channel();
    let flv1 = spawn_http_flv(
        http,
        "/live/api.flv".into(),
        until.clone(),
        None,
        Some(ltx.clone()),
    );
    let flv1_local = lrx.recv_timeout(WAIT).unwrap();
    let flv2 = spawn_http_flv(http, "/live/api.flv".into(), until.clone(), None, Some(ltx));
    let flv2_local = lrx.recv_timeout(WAIT).unwrap();
    let ws = spawn_ws_flv(http, "/live/api.flv".into(), until.clone(), None);

    // The rate window is 3 s: wait for a bitrate.
    let s = wait_stream(http, "live/api", "four players and a bitrate", |v| {
        v["players"]["total"] == 4 && !v["bitrate_in"].is_null()
    });
    eprintln!("[http] /api/streams/live/api: {s:#}");
    assert_eq!(s["name"], "live/api");
    assert_eq!(s["app"], "live");
    assert_eq!(s["stream"], "api");
    assert_eq!(s["live"], true);
    let p = &s["publisher"];
    assert_eq!(p["address"], publisher.local.to_string());
    assert_eq!(p["protocol"], "rtmp");
    assert!(p["id"].as_u64().is_some());
    assert!(p["worker"].as_u64() < Some(2));
    let since = p["since"].as_u64().unwrap();
    assert!(since >= t_start && since <= t_start + 60, "since {since}");
    assert_eq!(s["video"]["codec"], "H.264");
    assert_eq!(s["video"]["width"], 1280);
    assert_eq!(s["video"]["height"], 720);
    let fps = s["video"]["frame_rate"]
        .as_f64()
        .expect("measured frame rate");
    assert!((25.0..35.0).contains(&fps), "frame rate {fps}");
    assert_eq!(s["audio"]["codec"], "AAC");
    assert_eq!(s["audio"]["sample_rate"], 44100);
    assert_eq!(s["audio"]["channels"], 2);
    assert_eq!(s["players"]["rtmp"], 1);
    assert_eq!(s["players"]["http-flv"], 2);
    assert_eq!(s["players"]["ws-flv"], 1);
    assert_eq!(s["players"]["total"], 4);
    assert!(s["gop_cache"]["frames"].as_u64() > Some(0));
    assert!(s["gop_cache"]["bytes"].as_u64() > Some(3000));
    // 3000-byte video at 30 fps + 380-byte audio every 23 ms ≈ 850 kbit/s.
    let bps = s["bitrate_in"].as_u64().unwrap();
    assert!((600_000..1_200_000).contains(&bps), "bitrate_in {bps}");
    assert!(s["bytes_in"].as_u64() > Some(100_000));
    assert!(s["bytes_out"].as_u64() > Some(100_000));
    assert_eq!(s["frames_dropped"], 0);

    let list = get_json(http, "/api/streams");
    let streams = list["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0]["name"], "live/api");
    assert_eq!(streams[0]["players"], s["players"]);

    // A request connection closed just before (its worker writes the
    // response, then closes) may still be counted for an instant.
    let deadline = Instant::now() + Duration::from_secs(2);
    let srv = loop {
        let srv = get_json(http, "/api/server");
        if srv["connections"]["http"] == 4 || Instant::now() > deadline {
            break srv;
        }
        sleep(Duration::from_millis(20));
    };
    assert_eq!(srv["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(srv["workers"], 2);
    assert_eq!(srv["connections"]["rtmp"], 2, "{srv:#}");
    // 3 players and this request.
    assert_eq!(srv["connections"]["http"], 4, "{srv:#}");
    assert_eq!(srv["streams"], 1);
    assert!(srv["bytes_in"].as_u64() > Some(100_000));
    assert!(srv["bytes_out"].as_u64() > Some(100_000));
    assert!(srv["uptime_secs"].as_u64().is_some());
    assert_eq!(srv["frames_dropped"], 0);

    let mut sock = connect(http);
    let me = sock.local_addr().unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    let c = loop {
        sock.write_all(format!("GET /api/clients HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes())
            .unwrap();
        let c = read_response(&mut sock, &mut buf, false).json();
        let lingering = c["clients"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["state"] == "http" && c["address"] != me.to_string());
        if !lingering || Instant::now() > deadline {
            break c;
        }
        sleep(Duration::from_millis(20));
    };
    let clients = c["clients"].as_array().unwrap();
    assert_eq!(
        clients.len(),
        6,
        "2 RTMP + 3 players + this request: {clients:#?}"
    );
    let ids: Vec<u64> = clients.iter().map(|c| c["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted by id: {ids:?}");
    for c in clients {
        assert!(c["worker"].as_u64() < Some(2));
        assert!(c["since"].as_u64() >= Some(t_start));
        assert!(c["bytes_in"].as_u64().is_some() && c["bytes_out"].as_u64().is_some());
    }
    let pubc = find_client(clients, publisher.local);
    assert_eq!(
        (&pubc["protocol"], &pubc["state"], &pubc["stream"]),
        (&"rtmp".into(), &"publishing".into(), &"live/api".into())
    );
    assert_eq!(pubc["id"], p["id"]);
    assert!(pubc["bytes_in"].as_u64() > Some(100_000));
    let rp = find_client(clients, rtmp_local);
    assert_eq!(
        (&rp["protocol"], &rp["state"], &rp["stream"]),
        (&"rtmp".into(), &"playing".into(), &"live/api".into())
    );
    assert!(rp["bytes_out"].as_u64() > Some(10_000));
    for l in [flv1_local, flv2_local] {
        let c = find_client(clients, l);
        assert_eq!(
            (&c["protocol"], &c["state"], &c["stream"]),
            (&"http".into(), &"playing".into(), &"live/api".into())
        );
        assert!(c["bytes_out"].as_u64() > Some(10_000));
    }
    let mine = find_client(clients, me);
    assert_eq!(
        (&mine["protocol"], &mine["state"]),
        (&"http".into(), &"http".into())
    );
    assert!(mine["stream"].is_null());
    let ws_c: Vec<&Value> = clients
        .iter()
        .filter(|c| {
            c["protocol"] == "http"
                && c["state"] == "playing"
                && c["address"] != flv1_local.to_string()
                && c["address"] != flv2_local.to_string()
        })
        .collect();
    assert_eq!(ws_c.len(), 1, "the ws-flv player");

    // Unknown ids and methods.
    assert_eq!(
        request(http, "DELETE", "/api/clients/987654", &[]).status,
        404
    );
    assert_eq!(request(http, "DELETE", "/api/clients/abc", &[]).status, 400);
    assert_eq!(
        request(http, "GET", &format!("/api/clients/{}", ids[0]), &[]).status,
        405
    );
    assert_eq!(
        request(http, "PUT", "/api/streams/live/api", &[]).status,
        405
    );
    assert_eq!(get(http, "/api/streams/live/nope").status, 404);
    assert_eq!(get(http, "/api/nope").status, 404);

    // DELETE a HTTP-FLV player: its response ends, the others go on.
    let flv2_id = find_client(clients, flv2_local)["id"].as_u64().unwrap();
    let closed_at = Instant::now();
    let r = request(http, "DELETE", &format!("/api/clients/{flv2_id}"), &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["closed"], flv2_id);
    let flv2 = flv2.join().unwrap();
    assert_eq!(flv2.end, End::Eof { ws_close: false });
    assert!(flv2.ended_at.duration_since(closed_at) < Duration::from_secs(2));
    let players = wait_stream(http, "live/api", "3 players", |v| {
        v["players"]["total"] == 3
    })["players"]
        .clone();
    assert_eq!(players["http-flv"], 1);
    assert_eq!(players, stream_players(&server, "live/api"));

    // DELETE the stream: the publisher is dropped, players hear of it.
    let (mut pubc, _) = publisher.stop();
    let dropped_at = Instant::now();
    let r = request(http, "DELETE", "/api/streams/live/api", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["closed"], p["id"]);
    let rtmp = rtmp_player.join().unwrap();
    let unpublished = rtmp
        .statuses
        .iter()
        .find(|(c, _)| c == "NetStream.Play.UnpublishNotify")
        .unwrap_or_else(|| panic!("no UnpublishNotify: {:?}", rtmp.statuses));
    assert!(unpublished.1.duration_since(dropped_at) < Duration::from_secs(2));
    assert!(rtmp.media > 30, "the RTMP player got media");
    assert_eq!(rtmp.local, rtmp_local);
    let flv1 = flv1.join().unwrap();
    assert_eq!(flv1.end, End::Eof { ws_close: false });
    let ws = ws.join().unwrap();
    assert_eq!(ws.end, End::Eof { ws_close: true });
    for r in [&flv1, &ws] {
        assert!(r.ended_at.duration_since(dropped_at) < Duration::from_secs(2));
        assert!(r.tags.len() > 30);
    }
    // The publisher's socket was closed by the server.
    let deadline = Instant::now() + WAIT;
    while !pubc.closed {
        assert!(Instant::now() < deadline, "publisher not disconnected");
        pubc.read_once(Duration::from_millis(100));
    }
    // No publisher and no player left: the stream is gone.
    let deadline = Instant::now() + WAIT;
    while get(http, "/api/streams/live/api").status != 404 {
        assert!(Instant::now() < deadline, "the stream outlived its peers");
        sleep(Duration::from_millis(20));
    }
    assert_eq!(
        get_json(http, "/api/streams")["streams"],
        serde_json::json!([])
    );
    server.stop();
}

/// `--api ADDR` moves the API and /metrics off the HTTP port; HTTP-FLV stays.
#[test]
fn api_on_its_own_address() {
    let server = start_server(1, |c| c.api_addr = Some("127.0.0.1:0".parse().unwrap()));
    let a = server.addrs();
    let (http, api) = (a.http.unwrap(), a.api.unwrap());
    assert_ne!(http, api);
    for path in ["/api/server", "/api/streams", "/api/clients", "/metrics"] {
        let r = get(http, path);
        assert_eq!(r.status, 404, "{path} on the HTTP port");
        let r = get(api, path);
        assert_eq!(r.status, 200, "{path} on the API port");
    }
    assert_eq!(request(http, "DELETE", "/api/clients/1", &[]).status, 404);
    // HTTP-FLV is not on the API port.
    let publisher = Publisher::start(a.rtmp, "own", 30, 1000);
    assert_eq!(get(api, "/live/own.flv").status, 404);
    let r = request(http, "HEAD", "/live/own.flv", &[]);
    assert_eq!(r.status, 200);
    drop(publisher);
    server.stop();
}

/// `--api-token`: 401 (with WWW-Authenticate) without or with a wrong
/// token, 200 with `Authorization: Bearer TOKEN`; preflights need none.
#[test]
fn api_token_is_required() {
    let server = start_server(1, |c| c.api_token = Some("s3cret-t0ken".into()));
    let http = server.addrs().http.unwrap();
    for path in ["/api/server", "/api/streams", "/api/clients", "/metrics"] {
        let r = get(http, path);
        assert_eq!(r.status, 401, "{path} without a token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        for wrong in [
            "Bearer nope",
            "Bearer s3cret-t0ke",
            "Bearer s3cret-t0ken2",
            "s3cret-t0ken",
            "Basic czNjcmV0LXQwa2Vu",
        ] {
            let r = request(http, "GET", path, &[("Authorization", wrong)]);
            assert_eq!(r.status, 401, "{path} with {wrong:?}");
        }
        // The scheme is case-insensitive (RFC 9110 11.1).
        for right in [
            "Bearer s3cret-t0ken",
            "bearer s3cret-t0ken",
            "BEARER s3cret-t0ken",
        ] {
            let r = request(http, "GET", path, &[("Authorization", right)]);
            assert_eq!(r.status, 200, "{path} with {right:?}");
        }
    }
    let r = request(http, "DELETE", "/api/clients/1", &[]);
    assert_eq!(r.status, 401);
    let r = request(
        http,
        "OPTIONS",
        "/api/server",
        &[("Origin", "https://a.test")],
    );
    assert_eq!(r.status, 204);
    // Players need no token.
    assert_eq!(get(http, "/live/none.flv").status, 404);
    server.stop();
}

/// CORS: `*` by default on every kind of answer, the configured origin
/// otherwise; OPTIONS preflights are answered 204 with the allowed methods:
/// for the API, reads only with `*` (a page on any origin must never be
/// told it may change anything, docs/hardening.md case 39), POST and
/// DELETE too for a named origin.
#[test]
fn cors_headers_default_and_configured() {
    let server = start_server(1, |_| {});
    let http = server.addrs().http.unwrap();
    let publisher = Publisher::start(server.addrs().rtmp, "cors", 30, 1000);
    let check = |http: SocketAddr, origin: &str| {
        let mutations = origin != "*";
        for (method, path) in [
            ("GET", "/api/server"),
            ("GET", "/api/nope"),
            ("GET", "/nope"),
            ("GET", "/live/none.flv"),
            ("HEAD", "/live/cors.flv"),
            ("OPTIONS", "/api/clients/1"),
            ("OPTIONS", "/live/cors.flv"),
        ] {
            let r = request(http, method, path, &[("Origin", "https://player.test")]);
            assert_eq!(
                r.header("access-control-allow-origin"),
                Some(origin),
                "{method} {path}: {:?}",
                r.headers
            );
        }
        let r = request(
            http,
            "OPTIONS",
            "/api/clients/7",
            &[
                ("Origin", "https://player.test"),
                ("Access-Control-Request-Method", "DELETE"),
                ("Access-Control-Request-Headers", "authorization"),
            ],
        );
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        let methods = r.header("access-control-allow-methods").unwrap();
        for m in ["GET", "HEAD", "OPTIONS"] {
            assert!(methods.contains(m), "{methods}");
        }
        for m in ["POST", "DELETE"] {
            assert_eq!(methods.contains(m), mutations, "{origin}: {methods}");
        }
        let allowed = r
            .header("access-control-allow-headers")
            .unwrap()
            .to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{allowed}");
        assert_eq!(
            r.header("content-length"),
            None,
            "RFC 9110 8.6: no Content-Length in a 204"
        );
    };
    check(http, "*");
    drop(publisher);
    server.stop();

    let server = start_server(1, |c| c.cors_origin = "https://player.test".into());
    let publisher = Publisher::start(server.addrs().rtmp, "cors", 30, 1000);
    check(server.addrs().http.unwrap(), "https://player.test");
    drop(publisher);
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 4. /metrics
// ---------------------------------------------------------------------------------------

fn scrape(addr: SocketAddr) -> prometheus_parse::Scrape {
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = r.text();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{text}"))
}

/// The value of `metric` with exactly these labels (panics if absent).
fn sample(s: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value as V;
    let found = s.samples.iter().find(|x| {
        x.metric == metric
            && x.labels.len() == labels.len()
            && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
    });
    match found.map(|x| &x.value) {
        Some(V::Counter(v)) => {
            assert!(metric.ends_with("_total"), "{metric} is a counter");
            *v
        }
        Some(V::Gauge(v)) => {
            assert!(!metric.ends_with("_total"), "{metric} is a gauge");
            *v
        }
        other => panic!("{metric}{labels:?}: {other:?}"),
    }
}

/// /metrics parses as Prometheus text; byte counters move while a player
/// reads; the players gauge matches; an API close counts as reason="api".
#[test]
fn metrics_parse_and_move() {
    let server = start_server(2, |_| {});
    let a = server.addrs();
    let http = a.http.unwrap();
    let publisher = Publisher::start(a.rtmp, "m", 30, 3000);
    let (ltx, lrx) = mpsc::channel();
    let until = ReadUntil::new(None, Duration::from_secs(30));
    let player = spawn_http_flv(http, "/live/m.flv".into(), until.clone(), None, Some(ltx));
    let player_local = lrx.recv_timeout(WAIT).unwrap();
    wait_stream(http, "live/m", "the player", |v| v["players"]["total"] == 1);
    // The API request just made may still be counted for an instant (its
    // worker writes the answer, then closes): scrape once only the player
    // and the scrape itself are open.
    let deadline = Instant::now() + WAIT;
    let s1 = loop {
        let s = scrape(http);
        if sample(&s, "sluice_connections", &[("protocol", "http")]) == 2.0
            || Instant::now() > deadline
        {
            break s;
        }
        sleep(Duration::from_millis(20));
    };
    for family in [
        "sluice_connections",
        "sluice_streams",
        "sluice_bytes_in_total",
        "sluice_bytes_out_total",
        "sluice_frames_dropped_total",
        "sluice_handshake_failures_total",
        "sluice_tls_handshakes_deferred_total",
        "sluice_closes_total",
        "sluice_worker_loop_iterations_total",
        "sluice_stream_players",
        "sluice_stream_bytes_in_total",
        "sluice_stream_bytes_out_total",
        "sluice_stream_frames_dropped_total",
    ] {
        assert!(s1.docs.contains_key(family), "no HELP for {family}");
    }
    let st = [("stream", "live/m")];
    let players = |s: &prometheus_parse::Scrape, proto: &str| {
        sample(
            s,
            "sluice_stream_players",
            &[("stream", "live/m"), ("protocol", proto)],
        )
    };
    assert_eq!(players(&s1, "http-flv"), 1.0);
    assert_eq!(players(&s1, "rtmp"), 0.0);
    assert_eq!(players(&s1, "ws-flv"), 0.0);
    assert_eq!(
        sample(&s1, "sluice_connections", &[("protocol", "rtmp")]),
        1.0
    );
    // The player and this scrape.
    assert_eq!(
        sample(&s1, "sluice_connections", &[("protocol", "http")]),
        2.0
    );
    assert_eq!(sample(&s1, "sluice_streams", &[]), 1.0);
    // Both workers are listed (one may not have woken yet: it ticks every 500 ms).
    let loops: f64 = ["0", "1"]
        .iter()
        .map(|w| sample(&s1, "sluice_worker_loop_iterations_total", &[("worker", w)]))
        .sum();
    assert!(loops > 0.0);
    let api_closes = sample(&s1, "sluice_closes_total", &[("reason", "api")]);
    assert_eq!(api_closes, 0.0);

    // ~100 KB/s flows in and out: every byte counter moves by 50 KB (no rate
    // is asserted, only that each counter moves).
    let counters = [
        ("sluice_bytes_in_total", &[][..]),
        ("sluice_bytes_out_total", &[][..]),
        ("sluice_stream_bytes_in_total", &st[..]),
        ("sluice_stream_bytes_out_total", &st[..]),
    ];
    let deadline = Instant::now() + WAIT;
    let s2 = loop {
        let s = scrape(http);
        let still: Vec<String> = counters
            .iter()
            .filter(|(m, l)| sample(&s, m, l) - sample(&s1, m, l) <= 50_000.0)
            .map(|(m, l)| format!("{m}{l:?}: {} -> {}", sample(&s1, m, l), sample(&s, m, l)))
            .collect();
        if still.is_empty() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "counters did not move: {still:?}"
        );
        sleep(Duration::from_millis(100));
    };
    // Every byte out of the stream was counted in the total too.
    assert!(
        sample(&s2, "sluice_bytes_out_total", &[])
            >= sample(&s2, "sluice_stream_bytes_out_total", &st)
    );
    assert_eq!(sample(&s2, "sluice_frames_dropped_total", &[]), 0.0);

    // An API close.
    let clients = get_json(http, "/api/clients");
    let id = find_client(clients["clients"].as_array().unwrap(), player_local)["id"]
        .as_u64()
        .unwrap();
    let closes_peer = sample(&s2, "sluice_closes_total", &[("reason", "peer")]);
    assert_eq!(
        request(http, "DELETE", &format!("/api/clients/{id}"), &[]).status,
        200
    );
    let r = player.join().unwrap();
    assert_eq!(r.end, End::Eof { ws_close: false });
    let deadline = Instant::now() + WAIT;
    let s3 = loop {
        let s = scrape(http);
        if players(&s, "http-flv") == 0.0 || Instant::now() > deadline {
            break s;
        }
        sleep(Duration::from_millis(50));
    };
    assert_eq!(
        sample(&s3, "sluice_closes_total", &[("reason", "api")]),
        1.0
    );
    assert_eq!(players(&s3, "http-flv"), 0.0);
    // The scrapes and API calls were closed by us after `Connection: close`
    // responses; the player was not counted as a peer close.
    assert!(sample(&s3, "sluice_closes_total", &[("reason", "peer")]) >= closes_peer);
    assert_eq!(
        sample(&s3, "sluice_connections", &[("protocol", "http")]),
        1.0
    );
    drop(publisher);
    server.stop();
}

// ---------------------------------------------------------------------------------------
// 5. Malformed and hostile HTTP, beside a healthy stream
// ---------------------------------------------------------------------------------------

/// Sends `raw`, expects a response with `status`, then the server's close.
fn expect_refused(addr: SocketAddr, raw: &[u8], status: u16, what: &str) {
    let mut sock = connect(addr);
    sock.write_all(raw)
        .unwrap_or_else(|e| panic!("{what}: write: {e}"));
    let mut buf = Vec::new();
    let r = read_response(&mut sock, &mut buf, false);
    assert_eq!(r.status, status, "{what}: {}", r.text());
    assert_eq!(r.header("connection"), Some("close"), "{what}");
    assert!(
        time_to_eof(&mut sock, Duration::from_secs(2)).is_some(),
        "{what}: connection not closed after the error"
    );
}

#[test]
fn malformed_http_is_refused_while_a_stream_plays_on() {
    let server = start_server(2, |c| c.http_request_timeout = Duration::from_secs(2));
    let a = server.addrs();
    let http = a.http.unwrap();
    let publisher = Publisher::start(a.rtmp, "calm", 30, 4000);
    let until = ReadUntil::new(None, Duration::from_secs(40));
    let (tx, rx) = mpsc::channel();
    let player = spawn_http_flv(http, "/live/calm.flv".into(), until.clone(), Some(tx), None);
    rx.recv_timeout(WAIT).expect("the healthy player started");

    // Dribbling starts first (it takes the longest) and runs beside the rest.
    let dribbler = thread::spawn(move || {
        let mut sock = connect(http);
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let start = Instant::now();
        let head = b"GET /api/server HTTP/1.1\r\nHost: x\r\nX-Slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'));
        let mut one = [0u8; 1];
        for &b in head {
            if start.elapsed() > Duration::from_secs(8) {
                return None;
            }
            if sock.write_all(&[b]).is_err() {
                return Some(start.elapsed());
            }
            match sock.read(&mut one) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => panic!("the dribbler got an answer"),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return Some(start.elapsed()),
            }
        }
        None
    });
    // Silent connection: closed at the deadline too.
    let silent = thread::spawn(move || {
        let mut sock = connect(http);
        time_to_eof(&mut sock, Duration::from_secs(8))
    });

    // Bad request lines.
    expect_refused(http, b"GARBAGE\r\n\r\n", 400, "no method/path/version");
    expect_refused(
        http,
        b"GET /api/server HTTP/9.9\r\n\r\n",
        400,
        "bad version",
    );
    expect_refused(http, b"GET /api/server\r\n\r\n", 400, "no version");
    expect_refused(
        http,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        400,
        "a TLS ClientHello",
    );
    // A 64 KiB header.
    let mut big = b"GET /api/server HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.resize(big.len() + 64 * 1024, b'a');
    big.extend_from_slice(b"\r\n\r\n");
    expect_refused(http, &big, 431, "64 KiB header");
    // 1,000 headers.
    let mut many = b"GET /api/server HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..1000 {
        many.extend_from_slice(format!("X-H{i}: {i}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    expect_refused(http, &many, 431, "1,000 headers");
    // Bodies the server will not take.
    expect_refused(
        http,
        b"POST /api/server HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        413,
        "huge Content-Length",
    );
    expect_refused(
        http,
        b"POST /api/server HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        501,
        "chunked body",
    );

    // Not found.
    let r = get(http, "/nope");
    assert_eq!(r.status, 404);
    let r = get(http, "/live/absent.flv");
    assert_eq!((r.status, r.text().as_str()), (404, "stream not live\n"));
    assert_eq!(get(http, "/live/../x.flv").status, 400);
    assert_eq!(get(http, "/live.flv").status, 400);
    assert_eq!(request(http, "POST", "/live/calm.flv", &[]).status, 405);

    // HEAD on a live stream: the streaming headers, no body, closed.
    let mut sock = connect(http);
    sock.write_all(b"HEAD /live/calm.flv HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let r = read_response(&mut sock, &mut buf, true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("video/x-flv"));
    let mut rest = buf;
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.read_to_end(&mut rest)
        .expect("HEAD: closed after the head");
    assert!(rest.is_empty(), "HEAD got {} body bytes", rest.len());
    let r = request(http, "HEAD", "/api/server", &[]);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap()
            > 10
    );

    // Keep-alive: two requests on one connection, then two pipelined.
    let mut sock = connect(http);
    let mut buf = Vec::new();
    for path in ["/api/server", "/api/streams"] {
        sock.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut sock, &mut buf, false);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("connection"), Some("keep-alive"));
        r.json();
    }
    sock.write_all(b"GET /api/clients HTTP/1.1\r\nHost: x\r\n\r\nGET /api/server HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(read_response(&mut sock, &mut buf, false).json()["clients"].is_array());
    let last = read_response(&mut sock, &mut buf, false);
    assert_eq!(last.header("connection"), Some("close"));
    assert!(last.json()["version"].is_string());
    assert!(time_to_eof(&mut sock, Duration::from_secs(2)).is_some());
    // HTTP/1.0 closes by default.
    let mut sock = connect(http);
    sock.write_all(b"GET /api/server HTTP/1.0\r\n\r\n").unwrap();
    let r = read_response(&mut sock, &mut Vec::new(), false);
    assert_eq!(r.status, 200);
    assert!(time_to_eof(&mut sock, Duration::from_secs(2)).is_some());

    let dribbled = dribbler
        .join()
        .unwrap()
        .expect("the dribbler was never closed");
    assert!(
        dribbled >= Duration::from_millis(1800) && dribbled < Duration::from_millis(3200),
        "dribbled headers closed after {dribbled:?}, expected the 2 s request deadline"
    );
    let silent = silent
        .join()
        .unwrap()
        .expect("the silent client was never closed");
    assert!(
        silent >= Duration::from_millis(1800) && silent < Duration::from_millis(3200),
        "a silent connection closed after {silent:?}"
    );

    // The healthy player got every frame through the attacks.
    let sid = publisher.stream_id;
    let (mut pubc, last) = publisher.stop();
    // A round trip: the server has taken every frame before the stream ends.
    pubc.create_stream();
    pubc.delete_stream(sid);
    let r = player.join().unwrap();
    assert_eq!(r.end, End::Eof { ws_close: false }, "ended with the stream");
    let got: Vec<Received> = r.tags.iter().filter_map(Tag::decode).collect();
    assert_complete_from_keyframe(&got, last);
    eprintln!(
        "[http] healthy player got {} tags through frame {last}",
        got.len()
    );
    server.stop();
}
