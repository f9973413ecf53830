//! The attacker's tools: a raw RTMP connection that writes exactly the bytes
//! a test asks for (hand-made chunk headers, malformed AMF, partial messages)
//! and reads the server's replies with the crate's own chunk decoder; a
//! healthy publisher/player pair that runs beside every attack; and the
//! checks every case shares (closed promptly, resident memory, no panic).
#![allow(dead_code)]

use crate::support::*;
use bytes::{BufMut, Bytes, BytesMut};
use sluice::protocol::amf::{self, Amf0Value};
use sluice::protocol::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits, Message};
use sluice::protocol::message::{self, type_id, UserControl};
use sluice::server::RunningServer;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the server may take to close an offending connection once the
/// offence has arrived (no timer involved: it is closed while reading).
pub const PROMPT: Duration = Duration::from_secs(2);

/// Handshake deadline the attack servers use, so deadline cases run quickly.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts a 2-worker server with short deadlines and `tweak` applied.
pub fn server(tweak: impl FnOnce(&mut sluice::config::Config)) -> RunningServer {
    start_server(2, |c| {
        c.handshake_timeout = HANDSHAKE_TIMEOUT;
        c.player_stall_timeout = Duration::from_secs(3);
        tweak(c);
    })
}

/// Tests that measure resident memory run one at a time, so the others'
/// allocations do not blur the number.
pub fn memory_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's resident set in bytes (the server runs in-process).
pub fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

pub const MIB: usize = 1024 * 1024;

/// A raw RTMP connection.
pub struct Raw {
    pub sock: TcpStream,
    decoder: ChunkDecoder,
    pub encoder: ChunkEncoder,
    inbuf: BytesMut,
    /// Bytes written after the handshake (what the server's ack counts).
    pub sent_after_handshake: u64,
    /// Every byte written, handshake included (what the server's
    /// `bytes_in` for this connection reaches once it has read them all).
    pub sent: u64,
    handshaken: bool,
    pub closed: bool,
    next_txid: f64,
}

impl Raw {
    /// A TCP connection and nothing else.
    pub fn tcp(addr: SocketAddr) -> Self {
        let sock = TcpStream::connect(addr).expect("tcp connect");
        sock.set_nodelay(true).unwrap();
        Self {
            sock,
            decoder: ChunkDecoder::new(ChunkLimits {
                max_message_len: 16 * 1024 * 1024,
                max_chunk_streams: 64,
                max_partial_bytes: 64 * 1024 * 1024,
            }),
            encoder: ChunkEncoder::new(),
            inbuf: BytesMut::new(),
            sent_after_handshake: 0,
            sent: 0,
            handshaken: false,
            closed: false,
            next_txid: 2.0,
        }
    }

    /// Simple handshake: C0+C1, S0+S1+S2, then C2 echoing S1.
    pub fn handshake(addr: SocketAddr) -> Self {
        let mut r = Self::tcp(addr);
        let mut c0c1 = vec![3u8];
        c0c1.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        c0c1.extend((0..1528u32).map(|i| (i * 7 + 1) as u8));
        r.write(&c0c1);
        let mut s = vec![0u8; 1 + 1536 + 1536];
        r.sock.set_read_timeout(Some(WAIT)).unwrap();
        r.sock.read_exact(&mut s).expect("S0+S1+S2");
        assert_eq!(s[0], 3, "S0");
        let s1 = s[1..1537].to_vec();
        r.write(&s1);
        r.handshaken = true;
        r
    }

    /// Handshake, `connect` to `app` (chunk size 4096 both ways), wait for
    /// NetConnection.Connect.Success.
    pub fn connect(addr: SocketAddr, app: &str) -> Self {
        let mut r = Self::handshake(addr);
        r.send(&message::set_chunk_size(4096));
        r.encoder.set_chunk_size(4096);
        let obj = Amf0Value::object([
            ("app", Amf0Value::string(app)),
            ("tcUrl", Amf0Value::string(format!("rtmp://{addr}/{app}"))),
            (
                "flashVer",
                Amf0Value::string("FMLE/3.0 (compatible; attack)"),
            ),
        ]);
        r.command_with(0, "connect", 1.0, &[obj]);
        r.wait_result(1.0);
        r
    }

    /// Writes bytes as they are. A write error marks the connection closed.
    pub fn write(&mut self, b: &[u8]) -> bool {
        self.sock.set_write_timeout(Some(WAIT)).unwrap();
        match self.sock.write_all(b) {
            Ok(()) => {
                self.sent += b.len() as u64;
                if self.handshaken {
                    self.sent_after_handshake += b.len() as u64;
                }
                true
            }
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// Encodes `msg` with this connection's encoder and writes it.
    pub fn send(&mut self, msg: &Message) -> bool {
        let mut b = BytesMut::new();
        self.encoder.encode(msg, &mut b).expect("encodable");
        self.write(&b)
    }

    /// A protocol control message with a raw payload.
    pub fn control(&mut self, type_id: u8, payload: &[u8]) -> bool {
        self.send(&message::control(type_id, Bytes::copy_from_slice(payload)))
    }

    /// An AMF0 command with an explicit transaction id.
    pub fn command_with(&mut self, stream_id: u32, name: &str, txid: f64, args: &[Amf0Value]) {
        let mut p = BytesMut::new();
        amf::encode(&Amf0Value::string(name), &mut p);
        amf::encode(&Amf0Value::Number(txid), &mut p);
        for a in args {
            amf::encode(a, &mut p);
        }
        self.command_payload(stream_id, p.freeze());
    }

    /// An AMF0 command message (type 20) with the payload as given.
    pub fn command_payload(&mut self, stream_id: u32, payload: Bytes) -> bool {
        self.send(&Message {
            csid: if stream_id == 0 { 3 } else { 5 },
            timestamp: 0,
            type_id: type_id::COMMAND_AMF0,
            stream_id,
            payload,
        })
    }

    /// A command with a fresh transaction id; returns it.
    pub fn command(&mut self, stream_id: u32, name: &str, args: &[Amf0Value]) -> f64 {
        let t = self.next_txid;
        self.next_txid += 1.0;
        self.command_with(stream_id, name, t, args);
        t
    }

    /// The next message from the server within `timeout`.
    pub fn next_msg(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(m)) => {
                    if m.type_id == type_id::SET_CHUNK_SIZE {
                        let size = message::read_u32(m.type_id, &m.payload).unwrap();
                        self.decoder.set_chunk_size(size).unwrap();
                    }
                    return Some(m);
                }
                Ok(None) => {}
                Err(e) => panic!("the server sent a bad chunk stream: {e}"),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed {
                return None;
            }
            if !self.read_some(left) {
                if self.closed {
                    return None;
                }
                if Instant::now() >= deadline {
                    return None;
                }
            }
        }
    }

    /// Reads once into the input buffer; false on timeout or close.
    fn read_some(&mut self, timeout: Duration) -> bool {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut b = [0u8; 65536];
        match self.sock.read(&mut b) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                // Skip S0+S1+S2 if the handshake was done by hand elsewhere.
                self.inbuf.extend_from_slice(&b[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                false
            }
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// Commands from the server until one named `name` (with `txid`, if
    /// given); panics after [`WAIT`].
    pub fn wait_command(
        &mut self,
        what: &str,
        pred: impl Fn(&str, &[Amf0Value]) -> bool,
    ) -> Vec<Amf0Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(m) = self.next_msg(left) else {
                panic!("timed out waiting for {what} (closed: {})", self.closed);
            };
            if m.type_id != type_id::COMMAND_AMF0 {
                continue;
            }
            let v = amf::decode_all(&m.payload, &Default::default()).expect("server AMF");
            let name = v.first().and_then(|v| v.as_str()).unwrap_or_default();
            if pred(name, &v) {
                return v;
            }
        }
    }

    /// Waits for `_result` or `_error` to `txid`; returns the name.
    pub fn wait_reply(&mut self, txid: f64) -> String {
        let v = self.wait_command("a reply", |n, v| {
            (n == "_result" || n == "_error") && v.get(1).and_then(|t| t.as_number()) == Some(txid)
        });
        v[0].as_str().unwrap().to_owned()
    }

    pub fn wait_result(&mut self, txid: f64) -> Vec<Amf0Value> {
        let v = self.wait_command("_result", |n, v| {
            n == "_result" && v.get(1).and_then(|t| t.as_number()) == Some(txid)
        });
        v
    }

    /// The `code` of the next onStatus.
    pub fn wait_status(&mut self) -> String {
        let v = self.wait_command("onStatus", |n, _| n == "onStatus");
        v.get(3)
            .and_then(|i| i.get("code"))
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_owned()
    }

    pub fn create_stream(&mut self) -> u32 {
        let t = self.command(0, "createStream", &[Amf0Value::Null]);
        let v = self.wait_result(t);
        v[3].as_number().expect("stream id") as u32
    }

    /// createStream + publish `name`; returns the stream id once
    /// NetStream.Publish.Start arrives.
    pub fn publish(&mut self, name: &str) -> u32 {
        let id = self.create_stream();
        self.command(
            id,
            "publish",
            &[
                Amf0Value::Null,
                Amf0Value::string(name),
                Amf0Value::string("live"),
            ],
        );
        let code = self.wait_status();
        assert_eq!(code, "NetStream.Publish.Start");
        id
    }

    /// Sends a media message through the encoder.
    pub fn media(&mut self, stream_id: u32, type_id: u8, timestamp: u32, payload: Bytes) -> bool {
        self.send(&Message {
            csid: if type_id == 8 { 6 } else { 7 },
            timestamp,
            type_id,
            stream_id,
            payload,
        })
    }

    /// Reads and discards until the server closes the connection; returns
    /// how long that took and the bytes read, or None if it stayed open for
    /// `within`.
    pub fn closed_within(&mut self, within: Duration) -> Option<(Duration, usize)> {
        let start = Instant::now();
        let deadline = start + within;
        let mut total = self.inbuf.len();
        self.inbuf.clear();
        if self.closed {
            return Some((start.elapsed(), total));
        }
        let mut b = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.read(&mut b) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return None
                }
                Err(_) => break, // reset
            }
        }
        self.closed = true;
        Some((start.elapsed(), total))
    }

    /// Asserts the server closes this connection within `within`.
    #[track_caller]
    pub fn assert_closed(&mut self, what: &str, within: Duration) -> Duration {
        match self.closed_within(within) {
            Some((t, _)) => t,
            None => panic!("{what}: connection still open after {within:?}"),
        }
    }

    /// True if the server still answers: an unknown call with a transaction
    /// id gets `_result` (docs/protocol.md), within a second.
    pub fn responsive(&mut self) -> bool {
        if self.closed {
            return false;
        }
        let t = self.command(0, "_checkbw", &[Amf0Value::Null]);
        if self.closed {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(m) = self.next_msg(left) else {
                return false;
            };
            if m.type_id == type_id::COMMAND_AMF0 {
                if let Ok(v) = amf::decode_all(&m.payload, &Default::default()) {
                    if v.first().and_then(|v| v.as_str()) == Some("_result")
                        && v.get(1).and_then(|x| x.as_number()) == Some(t)
                    {
                        return true;
                    }
                }
            }
        }
    }
}

/// A chunk basic header for `fmt` and `csid`, in the shortest form (spec
/// 5.3.1.1).
pub fn basic_header(fmt: u8, csid: u32) -> Vec<u8> {
    let f = fmt << 6;
    match csid {
        2..=63 => vec![f | csid as u8],
        64..=319 => vec![f, (csid - 64) as u8],
        _ => {
            let v = csid - 64;
            vec![f | 1, (v & 0xFF) as u8, (v >> 8) as u8]
        }
    }
}

/// A fmt 0 chunk header (basic header, 11-byte message header and, for
/// timestamps at or above 0xFFFFFF, the extended timestamp).
pub fn fmt0(csid: u32, timestamp: u32, len: u32, type_id: u8, stream_id: u32) -> Vec<u8> {
    let mut h = basic_header(0, csid);
    let field = timestamp.min(0xFF_FFFF);
    h.extend_from_slice(&field.to_be_bytes()[1..]);
    h.extend_from_slice(&len.to_be_bytes()[1..]);
    h.push(type_id);
    h.extend_from_slice(&stream_id.to_le_bytes());
    if field == 0xFF_FFFF {
        h.extend_from_slice(&timestamp.to_be_bytes());
    }
    h
}

/// A fmt 1 chunk header (delta, length, type).
pub fn fmt1(csid: u32, delta: u32, len: u32, type_id: u8) -> Vec<u8> {
    let mut h = basic_header(1, csid);
    let field = delta.min(0xFF_FFFF);
    h.extend_from_slice(&field.to_be_bytes()[1..]);
    h.extend_from_slice(&len.to_be_bytes()[1..]);
    h.push(type_id);
    if field == 0xFF_FFFF {
        h.extend_from_slice(&delta.to_be_bytes());
    }
    h
}

/// A fmt 2 chunk header (delta only).
pub fn fmt2(csid: u32, delta: u32) -> Vec<u8> {
    let mut h = basic_header(2, csid);
    let field = delta.min(0xFF_FFFF);
    h.extend_from_slice(&field.to_be_bytes()[1..]);
    if field == 0xFF_FFFF {
        h.extend_from_slice(&delta.to_be_bytes());
    }
    h
}

/// A whole message as chunks of `chunk_size`: a fmt 0 header then fmt 3
/// continuations, which repeat the extended timestamp when `ext_on_type3`
/// (ffmpeg, OBS) and do not otherwise (rtmpdump).
pub fn chunked(
    csid: u32,
    timestamp: u32,
    type_id: u8,
    stream_id: u32,
    payload: &[u8],
    chunk_size: usize,
    ext_on_type3: bool,
) -> Vec<u8> {
    let mut out = fmt0(csid, timestamp, payload.len() as u32, type_id, stream_id);
    let mut first = true;
    for piece in payload.chunks(chunk_size.max(1)) {
        if !first {
            out.extend(basic_header(3, csid));
            if ext_on_type3 && timestamp >= 0xFF_FFFF {
                out.extend_from_slice(&timestamp.to_be_bytes());
            }
        }
        first = false;
        out.extend_from_slice(piece);
    }
    out
}

/// A video payload that the server classifies as an AVC keyframe (or inter
/// frame) carrying `index`, padded to `len` bytes with a pattern.
pub fn video_payload(index: u32, key: bool, len: usize) -> Bytes {
    let mut v = BytesMut::with_capacity(len.max(9));
    v.put_u8(if key { 0x17 } else { 0x27 });
    v.put_slice(&[0x01, 0, 0, 0]);
    v.put_u32(index);
    let mut i = 0u32;
    while v.len() < len {
        v.put_u8((i.wrapping_mul(31) ^ index) as u8);
        i += 1;
    }
    v.freeze()
}

/// Media messages a player got: kind, timestamp, payload.
pub fn collect_payloads(
    player: &mut TestClient,
    n: usize,
    timeout: Duration,
) -> Vec<(sluice::protocol::session::MediaKind, u32, Bytes)> {
    use sluice::protocol::client::ClientEvent;
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match player.next_event(left) {
            Some(ClientEvent::Media {
                kind,
                timestamp,
                payload,
                ..
            }) => {
                if kind != sluice::protocol::session::MediaKind::Data {
                    got.push((kind, timestamp, payload));
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    got
}

/// A publisher and a player on `live/healthy` run beside the attack on a
/// thread of their own; [`Healthy::finish`] checks the player got every
/// frame, in order, from the first.
pub struct Healthy {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u32>>,
    pub name: String,
}

impl Healthy {
    /// Starts the pair and returns once the player has received media.
    pub fn start(addr: SocketAddr) -> Self {
        Self::start_named(addr, "healthy")
    }

    pub fn start_named(addr: SocketAddr, name: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let s = stop.clone();
        let n = name.to_owned();
        let handle = std::thread::Builder::new()
            .name(format!("healthy-{name}"))
            .spawn(move || healthy_pair(addr, &n, &s, tx))
            .unwrap();
        rx.recv_timeout(WAIT).expect("the healthy pair started");
        Self {
            stop,
            handle: Some(handle),
            name: name.to_owned(),
        }
    }

    /// Stops publishing and asserts the player got every frame. Returns how
    /// many video frames went through.
    pub fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        match self.handle.take().unwrap().join() {
            Ok(n) => n,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Healthy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn healthy_pair(addr: SocketAddr, name: &str, stop: &AtomicBool, ready: mpsc::Sender<()>) -> u32 {
    let mut player = TestClient::connect(addr, "live");
    player.play(name);
    let mut publisher = TestClient::connect(addr, "live");
    let (id, code) = publisher.publish(name);
    assert_eq!(code, "NetStream.Publish.Start", "healthy publisher");
    let mut synth = Synth::new(30, 3_000);
    for f in synth.headers() {
        publisher.send(id, &f);
    }
    let mut got = Vec::new();
    let mut last = 0;
    let mut sent_ready = false;
    let started = Instant::now();
    while !(stop.load(Ordering::SeqCst) && last >= 30) {
        for f in synth.next() {
            publisher.send(id, &f);
        }
        last += 1;
        got.extend(player.collect_media(Duration::from_millis(4), |_| false));
        if !sent_ready && got.len() > 3 {
            let _ = ready.send(());
            sent_ready = true;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "healthy pair ran 5 minutes: the test forgot to stop it"
        );
    }
    let last_index = last - 1;
    if !has_video(&got, last_index) {
        got.extend(player.collect_media(WAIT, |g| has_video(g, last_index)));
    }
    assert_complete_from_keyframe(&got, last_index);
    assert!(
        matches!(got[3], Received::Video { index: 0, .. }),
        "the healthy player saw the stream from its first frame: {:?}",
        got[3]
    );
    last
}

/// Waits (≤ [`WAIT`]) until the server has read every byte each of `raws`
/// sent, as its API counts them (`bytes_in` in `/api/clients`): a
/// measurement taken after this sees what those bytes cost.
#[track_caller]
pub fn wait_read_by_server(server: &RunningServer, raws: &[Raw]) {
    let http = http_addr(server);
    let want: Vec<(String, u64)> = raws
        .iter()
        .map(|r| (r.sock.local_addr().unwrap().to_string(), r.sent))
        .collect();
    let mut behind = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let clients = api::clients(http);
        behind.clear();
        for (addr, sent) in &want {
            let read = clients
                .iter()
                .find(|c| c["address"] == addr.as_str())
                .and_then(|c| c["bytes_in"].as_u64())
                .unwrap_or(0);
            if read < *sent {
                behind.push(format!("{addr}: read {read} of {sent}"));
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not read everything within {WAIT:?}: {behind:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The end of every case: the healthy pair got every frame, no panic was
/// caught, and the server still takes a new connection.
#[track_caller]
pub fn finish(server: RunningServer, healthy: Healthy) {
    let frames = healthy.finish();
    assert!(frames >= 30);
    let mut probe = TestClient::connect(server.local_addr(), "live");
    probe.play("after-the-attack");
    assert_eq!(server.panics(), 0, "panics caught by the backstop");
    server.stop();
}

/// Encodes AMF0 values into one payload.
pub fn amf0(values: &[Amf0Value]) -> Bytes {
    let mut p = BytesMut::new();
    for v in values {
        amf::encode(v, &mut p);
    }
    p.freeze()
}

/// A ping request (User Control 6).
pub fn ping(t: u32) -> Message {
    message::user_control(UserControl::PingRequest(t))
}
