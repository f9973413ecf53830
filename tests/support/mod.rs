//! A blocking RTMP test client over a real loopback socket, driving the
//! crate's sans-IO [`ClientSession`], and a synthetic stream whose frames
//! carry their own index so a player can check it got every one, in order.
#![allow(dead_code)]

// The same file as `common::api`: the binaries that use both harnesses
// compile it twice, as two modules.
#[allow(clippy::duplicate_mod)]
#[path = "../common/api.rs"]
pub mod api;

use bytes::{BufMut, Bytes, BytesMut};
use sluice::config::Config;
use sluice::protocol::amf::{self, Amf0Value};
use sluice::protocol::client::{ClientConfig, ClientEvent, ClientSession};
use sluice::protocol::session::MediaKind;
use sluice::server::{RunningServer, Server};
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Starts an in-process server on a free loopback port.
pub fn start_server(workers: usize, tweak: impl FnOnce(&mut Config)) -> RunningServer {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut config = Config {
        rtmp_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        workers,
        ..Config::default()
    };
    tweak(&mut config);
    Server::bind(config).expect("bind").spawn().expect("spawn")
}

/// The HTTP address of a server from [`start_server`] (its API and `/metrics`).
pub fn http_addr(server: &RunningServer) -> SocketAddr {
    server
        .addrs()
        .http
        .expect("start_server listens on HTTP (the API)")
}

pub struct TestClient {
    /// The socket (for RTMPS a clone of the one under `tls`: timeouts and
    /// shutdown apply to both).
    pub sock: TcpStream,
    /// RTMPS: the TLS session over the same socket.
    pub tls: Option<Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>>,
    session: ClientSession,
    buf: BytesMut,
    pub events: VecDeque<ClientEvent>,
    pub closed: bool,
}

impl TestClient {
    /// Connects, handshakes and sends `connect` for `app`; waits for success.
    pub fn connect(addr: SocketAddr, app: &str) -> Self {
        Self::over(TcpStream::connect(addr).expect("connect"), addr, app, 42)
    }

    /// Like [`TestClient::connect`], from the local address `from` (a
    /// loopback address such as 127.0.0.5: a client a test can tell apart).
    pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr, app: &str) -> Self {
        Self::over(tcp_from(addr, from), addr, app, 45)
    }

    /// Like [`TestClient::connect`], with a caller-built [`ClientConfig`]
    /// (Enhanced RTMP `fourCcList` / `capsEx`, say).
    pub fn connect_with(addr: SocketAddr, config: ClientConfig) -> Self {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).unwrap();
        let mut c = Self {
            sock,
            tls: None,
            session: ClientSession::new(config, 44),
            buf: BytesMut::new(),
            events: VecDeque::new(),
            closed: false,
        };
        c.wait_for("connect", |e| matches!(e, ClientEvent::Connected));
        c
    }

    /// Like [`TestClient::connect`], over TLS (RTMPS) with `tls` as the
    /// client configuration and `name` as the server name (SNI for a DNS
    /// name, none for an IP address).
    pub fn connect_tls(
        addr: SocketAddr,
        app: &str,
        tls: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Self {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).unwrap();
        let conn = rustls::ClientConnection::new(tls, name).expect("TLS client");
        let stream = rustls::StreamOwned::new(conn, sock.try_clone().expect("clone socket"));
        let session =
            ClientSession::new(ClientConfig::new(app, format!("rtmps://{addr}/{app}")), 44);
        let mut c = Self {
            sock,
            tls: Some(Box::new(stream)),
            session,
            buf: BytesMut::new(),
            events: VecDeque::new(),
            closed: false,
        };
        c.wait_for("connect", |e| matches!(e, ClientEvent::Connected));
        c
    }

    /// The client session (what the server answered `connect` with, the
    /// last onStatus info object).
    pub fn session(&self) -> &ClientSession {
        &self.session
    }

    /// The client session, to send commands the helpers do not wrap
    /// (call [`TestClient::flush`] after).
    pub fn session_mut(&mut self) -> &mut ClientSession {
        &mut self.session
    }

    /// Sends a raw media message (any payload) on `stream_id`.
    pub fn send_raw(&mut self, stream_id: u32, kind: MediaKind, timestamp: u32, payload: &[u8]) {
        self.session
            .send_media(stream_id, kind, timestamp, Bytes::copy_from_slice(payload));
        self.flush();
    }

    /// Like [`TestClient::connect`], with 4 KiB socket buffers, so a client
    /// that stops reading stalls the server's writes quickly.
    pub fn connect_with_small_buffers(addr: SocketAddr, app: &str) -> Self {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&addr.into()).expect("connect");
        Self::over(s.into(), addr, app, 43)
    }

    /// Connects to `app`; Err with what the server answered (`_error`'s
    /// arguments, or that it closed) when it refuses the `connect`.
    pub fn try_connect(addr: SocketAddr, app: &str) -> Result<Self, String> {
        let sock = TcpStream::connect(addr).expect("connect");
        sock.set_nodelay(true).unwrap();
        let session =
            ClientSession::new(ClientConfig::new(app, format!("rtmp://{addr}/{app}")), 43);
        let mut c = Self {
            sock,
            tls: None,
            session,
            buf: BytesMut::new(),
            events: VecDeque::new(),
            closed: false,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.next_event(left) {
                Some(ClientEvent::Connected) => return Ok(c),
                Some(ClientEvent::Command { name, args }) if name == "_error" => {
                    return Err(format!("{args:?}"))
                }
                Some(_) => {}
                None => return Err(format!("no answer (closed: {})", c.closed)),
            }
        }
    }

    fn over(sock: TcpStream, addr: SocketAddr, app: &str, seed: u64) -> Self {
        sock.set_nodelay(true).unwrap();
        let session =
            ClientSession::new(ClientConfig::new(app, format!("rtmp://{addr}/{app}")), seed);
        let mut c = Self {
            sock,
            tls: None,
            session,
            buf: BytesMut::new(),
            events: VecDeque::new(),
            closed: false,
        };
        c.wait_for("connect", |e| matches!(e, ClientEvent::Connected));
        c
    }

    pub fn flush(&mut self) {
        while let Some(b) = self.session.poll_transmit() {
            match self.tls.as_mut() {
                Some(t) => t.write_all(&b).expect("write"),
                None => self.sock.write_all(&b).expect("write"),
            }
        }
        if let Some(t) = self.tls.as_mut() {
            t.flush().expect("flush");
        }
    }

    /// Reads once (up to `timeout`) and queues the resulting events.
    /// Returns false on timeout or close.
    pub fn read_once(&mut self, timeout: Duration) -> bool {
        self.flush();
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut chunk = [0u8; 65536];
        let r = match self.tls.as_mut() {
            Some(t) => t.read(&mut chunk),
            None => self.sock.read(&mut chunk),
        };
        match r {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                self.session
                    .handle_input(&mut self.buf)
                    .expect("client decode");
                while let Some(e) = self.session.poll_event() {
                    self.events.push_back(e);
                }
                self.flush();
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

    /// The next event, reading as needed, within `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<ClientEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed {
                return None;
            }
            self.read_once(left);
        }
    }

    /// Skips events until one matches; panics after [`WAIT`].
    pub fn wait_for(&mut self, what: &str, pred: impl Fn(&ClientEvent) -> bool) -> ClientEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(e) if pred(&e) => return e,
                Some(_) => {}
                None => panic!("timed out waiting for {what} (closed: {})", self.closed),
            }
        }
    }

    pub fn wait_status(&mut self, code: &str) {
        self.wait_for(
            code,
            |e| matches!(e, ClientEvent::Status { code: c, .. } if c == code),
        );
    }

    pub fn create_stream(&mut self) -> u32 {
        self.session.create_stream();
        match self.wait_for("createStream", |e| {
            matches!(e, ClientEvent::StreamCreated { .. })
        }) {
            ClientEvent::StreamCreated { stream_id } => stream_id,
            _ => unreachable!(),
        }
    }

    /// createStream + publish; returns the stream id and the status code.
    pub fn publish(&mut self, name: &str) -> (u32, String) {
        let id = self.create_stream();
        self.session.publish(id, name);
        let code = match self.wait_for("publish status", |e| {
            matches!(e, ClientEvent::Status { code, .. } if code.starts_with("NetStream.Publish"))
        }) {
            ClientEvent::Status { code, .. } => code,
            _ => unreachable!(),
        };
        (id, code)
    }

    /// createStream + play; waits for Play.Start.
    pub fn play(&mut self, name: &str) -> u32 {
        let id = self.create_stream();
        self.session.play(id, name);
        self.wait_status("NetStream.Play.Start");
        id
    }

    pub fn send(&mut self, stream_id: u32, f: &SynthFrame) {
        self.session
            .send_media(stream_id, f.kind, f.timestamp, f.payload.clone());
        self.flush();
    }

    pub fn delete_stream(&mut self, id: u32) {
        self.session.delete_stream(id);
        self.flush();
    }

    /// Media events received until `pred` holds for the collected list or
    /// `timeout` passes.
    pub fn collect_media(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        // Re-check `done` at least every 100 ms: it may depend on state
        // another thread sets after the last frame arrived.
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.closed {
                break;
            }
            if let Some(ClientEvent::Media {
                kind,
                timestamp,
                payload,
                ..
            }) = self.next_event(left.min(Duration::from_millis(100)))
            {
                if let Some(r) = Received::parse(kind, timestamp, &payload) {
                    got.push(r);
                }
            }
        }
        got
    }
}

/// One frame of the synthetic stream.
#[derive(Debug, Clone)]
pub struct SynthFrame {
    pub kind: MediaKind,
    pub timestamp: u32,
    pub payload: Bytes,
}

/// What a player received, decoded from a synthetic payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Metadata,
    VideoConfig,
    AudioConfig,
    Video {
        index: u32,
        key: bool,
        timestamp: u32,
    },
    Audio {
        index: u32,
        timestamp: u32,
    },
}

impl Received {
    pub fn parse(kind: MediaKind, timestamp: u32, p: &[u8]) -> Option<Self> {
        let index = || u32::from_be_bytes([p[5], p[6], p[7], p[8]]);
        match kind {
            MediaKind::Data => {
                let v = amf::decode_all(p, &Default::default()).ok()?;
                (v.first()?.as_str()? == "onMetaData").then_some(Received::Metadata)
            }
            MediaKind::Video if p.len() >= 2 && p[1] == 0 => Some(Received::VideoConfig),
            MediaKind::Video if p.len() >= 9 => Some(Received::Video {
                index: index(),
                key: p[0] >> 4 == 1,
                timestamp,
            }),
            MediaKind::Audio if p.len() >= 2 && p[1] == 0 => Some(Received::AudioConfig),
            MediaKind::Audio if p.len() >= 9 => Some(Received::Audio {
                index: index(),
                timestamp,
            }),
            _ => None,
        }
    }
}

/// A synthetic H.264 + AAC stream: metadata, sequence headers, then video at
/// 30 fps with a keyframe every `gop` frames and audio every 23 ms. Each
/// payload carries its index; sizes are realistic (`video_bytes`).
pub struct Synth {
    pub gop: u32,
    pub video_bytes: usize,
    video_index: u32,
    audio_index: u32,
    pub start_ms: u32,
}

impl Synth {
    pub fn new(gop: u32, video_bytes: usize) -> Self {
        Self {
            gop,
            video_bytes,
            video_index: 0,
            audio_index: 0,
            start_ms: 0,
        }
    }

    pub fn headers(&self) -> Vec<SynthFrame> {
        let mut meta = BytesMut::new();
        amf::encode(&Amf0Value::string("@setDataFrame"), &mut meta);
        amf::encode(&Amf0Value::string("onMetaData"), &mut meta);
        amf::encode(
            &Amf0Value::EcmaArray(vec![
                ("width".into(), Amf0Value::Number(1280.0)),
                ("height".into(), Amf0Value::Number(720.0)),
                ("videocodecid".into(), Amf0Value::Number(7.0)),
                ("audiocodecid".into(), Amf0Value::Number(10.0)),
            ]),
            &mut meta,
        );
        let ts = self.start_ms;
        vec![
            SynthFrame {
                kind: MediaKind::Data,
                timestamp: ts,
                payload: meta.freeze(),
            },
            SynthFrame {
                kind: MediaKind::Video,
                timestamp: ts,
                // AVC sequence header with a short AVCDecoderConfigurationRecord.
                payload: Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x1F, 0xFF]),
            },
            SynthFrame {
                kind: MediaKind::Audio,
                timestamp: ts,
                payload: Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10]),
            },
        ]
    }

    /// The next video frame and the audio frames up to its time.
    pub fn next(&mut self) -> Vec<SynthFrame> {
        let i = self.video_index;
        self.video_index += 1;
        let vts = self.start_ms.wrapping_add(i * 1000 / 30);
        let key = i % self.gop == 0;
        let mut v = BytesMut::with_capacity(self.video_bytes.max(9));
        v.put_u8(if key { 0x17 } else { 0x27 });
        v.put_slice(&[0x01, 0, 0, 0]);
        v.put_u32(i);
        v.resize(self.video_bytes.max(9), (i % 251) as u8);
        let mut out = vec![SynthFrame {
            kind: MediaKind::Video,
            timestamp: vts,
            payload: v.freeze(),
        }];
        while self.audio_index * 23 <= i * 1000 / 30 {
            let a = self.audio_index;
            self.audio_index += 1;
            let mut p = BytesMut::with_capacity(380);
            p.put_slice(&[0xAF, 0x01, 0, 0, 0]);
            p.put_u32(a);
            p.resize(380, 0x5A);
            out.push(SynthFrame {
                kind: MediaKind::Audio,
                timestamp: self.start_ms.wrapping_add(a * 23),
                payload: p.freeze(),
            });
        }
        out
    }
}

/// Checks a player's media: headers first (metadata, video config, audio
/// config), then video from a keyframe with consecutive indices through
/// `last_video`, and audio consecutive too.
pub fn assert_complete_from_keyframe(got: &[Received], last_video: u32) {
    assert!(got.len() >= 4, "too little received: {got:?}");
    assert_eq!(
        &got[..3],
        &[
            Received::Metadata,
            Received::VideoConfig,
            Received::AudioConfig
        ],
        "headers first"
    );
    let videos: Vec<(u32, bool)> = got
        .iter()
        .filter_map(|r| match r {
            Received::Video { index, key, .. } => Some((*index, *key)),
            _ => None,
        })
        .collect();
    assert!(
        videos[0].1,
        "first video frame is a keyframe: {:?}",
        &videos[..1]
    );
    for w in videos.windows(2) {
        assert_eq!(w[1].0, w[0].0 + 1, "video frames consecutive");
    }
    assert_eq!(
        videos.last().unwrap().0,
        last_video,
        "every video frame through the last"
    );
    let audios: Vec<u32> = got
        .iter()
        .filter_map(|r| match r {
            Received::Audio { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    for w in audios.windows(2) {
        assert_eq!(w[1], w[0] + 1, "audio frames consecutive");
    }
}

/// True once the list holds video frame `index`.
pub fn has_video(got: &[Received], index: u32) -> bool {
    got.iter()
        .any(|r| matches!(r, Received::Video { index: i, .. } if *i == index))
}

/// A TCP connection to `addr` from the local address `from` (port chosen
/// by the kernel).
pub fn tcp_from(addr: SocketAddr, from: std::net::IpAddr) -> TcpStream {
    use socket2::{Domain, Protocol, Socket, Type};
    let s =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).expect("socket");
    s.bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    s.connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect {addr} from {from}: {e}"));
    s.into()
}
