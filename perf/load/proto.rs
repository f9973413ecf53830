//! The protocols a load-generator connection speaks, sans-IO: bytes in,
//! bytes out, and [`Up`] events for the driver. One enum, [`Proto`], so a
//! player kind is a variant: RTMP now (publisher, player, idle), HTTP-FLV
//! players, and RTMPS players (RTMP over a TLS session, `tls.rs`).

use crate::flv::{FlvDecoder, FlvError};
use bytes::{Buf, Bytes, BytesMut};
use sluice::protocol::client::{ClientConfig, ClientEvent, ClientSession};
use sluice::protocol::session::MediaKind;
use std::fmt;

/// Which kind of player to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayerKind {
    /// RTMP play, chunk stream parsed by the crate's client session.
    Rtmp,
    /// HTTP GET of `/{app}/{name}.flv`, FLV tags parsed (chunked or not).
    HttpFlv,
    /// RTMP play inside TLS (the server's RTMPS listener).
    Rtmps,
    /// LL-HLS viewers (`hls.rs`): blocking playlist reloads and parts.
    LlHls,
    /// RTMP play of files a server plays on demand (`vod.rs`): no
    /// publisher, real-time delivery measured instead of stamps checked.
    Vod,
}

impl PlayerKind {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rtmp" => Some(Self::Rtmp),
            "http-flv" | "httpflv" | "flv" => Some(Self::HttpFlv),
            "rtmps" => Some(Self::Rtmps),
            "ll-hls" | "llhls" => Some(Self::LlHls),
            "vod" => Some(Self::Vod),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Rtmp => "rtmp",
            Self::HttpFlv => "http-flv",
            Self::Rtmps => "rtmps",
            Self::LlHls => "ll-hls",
            Self::Vod => "vod",
        }
    }
}

/// What an RTMP connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publisher,
    Player,
    /// Handshake and `connect`, then nothing: memory per idle connection.
    Idle,
    /// A player of a file: `play`, then SetBufferLength with this many
    /// milliseconds, as ffmpeg sends them.
    VodPlayer {
        buffer_ms: u32,
    },
}

/// What a connection reports to the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Up {
    /// Publishing or playing has started (`NetStream.*.Start`, HTTP 200),
    /// or, for an idle connection, `connect` succeeded.
    Ready,
    Media {
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    },
}

#[derive(Debug)]
pub enum ProtoError {
    Rtmp(String),
    Refused(String),
    Http(String),
    Flv(FlvError),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Rtmp(e) => write!(f, "rtmp: {e}"),
            ProtoError::Refused(code) => write!(f, "refused: {code}"),
            ProtoError::Http(e) => write!(f, "http: {e}"),
            ProtoError::Flv(e) => write!(f, "flv: {e}"),
        }
    }
}

/// One connection's protocol state.
pub enum Proto {
    Rtmp(Box<Rtmp>),
    HttpFlv(Box<HttpFlv>),
}

impl Proto {
    pub fn rtmp(role: Role, host: &str, app: &str, name: &str, seed: u64) -> Self {
        Proto::Rtmp(Box::new(Rtmp::new(role, host, app, name, seed)))
    }

    pub fn http_flv(host: &str, app: &str, name: &str) -> Self {
        Proto::HttpFlv(Box::new(HttpFlv::new(host, app, name)))
    }

    /// Consumes what it can of `buf`, pushing events to `up`.
    pub fn handle_input(&mut self, buf: &mut BytesMut, up: &mut Vec<Up>) -> Result<(), ProtoError> {
        match self {
            Proto::Rtmp(r) => r.handle_input(buf, up),
            Proto::HttpFlv(h) => h.handle_input(buf, up),
        }
    }

    /// Bytes to send, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        match self {
            Proto::Rtmp(r) => r.session.poll_transmit(),
            Proto::HttpFlv(h) => h.request.take(),
        }
    }

    /// Publishes one frame (publisher only; ignored before it is ready).
    pub fn send_media(&mut self, kind: MediaKind, timestamp: u32, payload: Bytes) {
        if let Proto::Rtmp(r) = self {
            if let Some(id) = r.stream_id {
                r.session.send_media(id, kind, timestamp, payload);
            }
        }
    }
}

/// An RTMP client on the crate's sans-IO [`ClientSession`]: connect,
/// createStream, then publish or play.
pub struct Rtmp {
    session: ClientSession,
    role: Role,
    name: String,
    stream_id: Option<u32>,
    events: Vec<ClientEvent>,
}

impl Rtmp {
    fn new(role: Role, host: &str, app: &str, name: &str, seed: u64) -> Self {
        let config = ClientConfig::new(app, format!("rtmp://{host}/{app}"));
        Self {
            session: ClientSession::new(config, seed),
            role,
            name: name.to_owned(),
            stream_id: None,
            events: Vec::new(),
        }
    }

    fn handle_input(&mut self, buf: &mut BytesMut, up: &mut Vec<Up>) -> Result<(), ProtoError> {
        self.session
            .handle_input(buf)
            .map_err(|e| ProtoError::Rtmp(e.to_string()))?;
        while let Some(e) = self.session.poll_event() {
            self.events.push(e);
        }
        for e in self.events.drain(..) {
            match e {
                ClientEvent::Media {
                    kind,
                    timestamp,
                    payload,
                    ..
                } => up.push(Up::Media {
                    kind,
                    timestamp,
                    payload,
                }),
                ClientEvent::Connected => match self.role {
                    Role::Idle => up.push(Up::Ready),
                    _ => self.session.create_stream(),
                },
                ClientEvent::StreamCreated { stream_id } => {
                    self.stream_id = Some(stream_id);
                    match self.role {
                        Role::Publisher => self.session.publish(stream_id, &self.name),
                        Role::VodPlayer { buffer_ms } => {
                            self.session.play(stream_id, &self.name);
                            self.session.set_buffer_length(stream_id, buffer_ms);
                        }
                        _ => self.session.play(stream_id, &self.name),
                    }
                }
                ClientEvent::Status { code, level, .. } => match code.as_str() {
                    "NetStream.Publish.Start" | "NetStream.Play.Start" => up.push(Up::Ready),
                    _ if level == "error" || code.ends_with("BadName") => {
                        return Err(ProtoError::Refused(code));
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(())
    }
}

/// An HTTP-FLV player: one GET, then an FLV byte stream, possibly in HTTP/1.1
/// chunked transfer coding.
pub struct HttpFlv {
    request: Option<Bytes>,
    state: HttpState,
    /// De-chunked body bytes waiting for the FLV decoder.
    body: BytesMut,
    flv: FlvDecoder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpState {
    /// Status line and headers, up to the blank line.
    Head,
    /// Body as it comes (no transfer coding).
    Identity,
    /// Chunked: a size line.
    ChunkSize,
    /// Chunked: this many data bytes left, then CRLF.
    ChunkData(usize),
    ChunkCrlf,
}

/// Longest response head accepted.
const MAX_HTTP_HEAD: usize = 16 * 1024;

impl HttpFlv {
    fn new(host: &str, app: &str, name: &str) -> Self {
        let req = format!(
            "GET /{app}/{name}.flv HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-load\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        Self {
            request: Some(Bytes::from(req)),
            state: HttpState::Head,
            body: BytesMut::new(),
            flv: FlvDecoder::new().lenient(),
        }
    }

    fn handle_input(&mut self, buf: &mut BytesMut, up: &mut Vec<Up>) -> Result<(), ProtoError> {
        loop {
            match self.state {
                HttpState::Head => {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        if buf.len() > MAX_HTTP_HEAD {
                            return Err(ProtoError::Http(format!(
                                "response head over {MAX_HTTP_HEAD} bytes"
                            )));
                        }
                        return Ok(());
                    };
                    let head = buf.split_to(end + 4);
                    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                    let status = head.lines().next().unwrap_or_default().to_owned();
                    if status.split_whitespace().nth(1) != Some("200") {
                        return Err(ProtoError::Refused(status));
                    }
                    let chunked = head
                        .lines()
                        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
                    self.state = if chunked {
                        HttpState::ChunkSize
                    } else {
                        HttpState::Identity
                    };
                    up.push(Up::Ready);
                }
                HttpState::Identity => {
                    if buf.is_empty() {
                        break;
                    }
                    if self.body.is_empty() {
                        // Hand the read buffer over without a copy.
                        self.body = buf.split();
                    } else {
                        self.body.extend_from_slice(buf);
                        buf.clear();
                    }
                    break;
                }
                HttpState::ChunkSize => {
                    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() > 1024 {
                            return Err(ProtoError::Http("chunk size line too long".into()));
                        }
                        break;
                    };
                    let line = buf.split_to(eol + 2);
                    let hex = std::str::from_utf8(&line[..eol])
                        .ok()
                        .map(|s| s.split(';').next().unwrap_or_default().trim());
                    let size = hex
                        .and_then(|h| usize::from_str_radix(h, 16).ok())
                        .ok_or_else(|| ProtoError::Http(format!("bad chunk size {line:?}")))?;
                    if size == 0 {
                        return Err(ProtoError::Http("body ended".into()));
                    }
                    self.state = HttpState::ChunkData(size);
                }
                HttpState::ChunkData(left) => {
                    if buf.is_empty() {
                        break;
                    }
                    let n = left.min(buf.len());
                    self.body.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                    self.state = if n == left {
                        HttpState::ChunkCrlf
                    } else {
                        HttpState::ChunkData(left - n)
                    };
                }
                HttpState::ChunkCrlf => {
                    if buf.len() < 2 {
                        break;
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ProtoError::Http("chunk not followed by CRLF".into()));
                    }
                    buf.advance(2);
                    self.state = HttpState::ChunkSize;
                }
            }
        }
        while let Some(tag) = self.flv.decode(&mut self.body).map_err(ProtoError::Flv)? {
            let kind = match tag.tag_type {
                8 => MediaKind::Audio,
                9 => MediaKind::Video,
                18 => MediaKind::Data,
                _ => continue,
            };
            up.push(Up::Media {
                kind,
                timestamp: tag.timestamp,
                payload: tag.data,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flv;

    fn flv_bytes() -> Vec<u8> {
        let mut v = Vec::new();
        flv::encode_header(&mut v);
        flv::encode_tag(9, 0, &[0x17, 0, 0, 0, 0], &mut v);
        flv::encode_tag(8, 23, &[0xAF, 1, 9, 9], &mut v);
        v
    }

    fn media(up: &[Up]) -> Vec<(MediaKind, u32)> {
        up.iter()
            .filter_map(|u| match u {
                Up::Media {
                    kind, timestamp, ..
                } => Some((*kind, *timestamp)),
                _ => None,
            })
            .collect()
    }

    /// An RTMP player against the crate's server session: connect,
    /// createStream, play, then media written as the server's fan-out writes
    /// it (one shared wire form per frame), fed in splits of every size.
    #[test]
    fn rtmp_player_plays_and_parses_the_chunk_stream_split_anywhere() {
        use crate::stream::{Generator, Shape};
        use sluice::protocol::chunk::{wire_form, Message};
        use sluice::protocol::session::{Event, ServerSession, SessionConfig};
        use std::time::Instant;

        let now = Instant::now();
        let mut server = ServerSession::new(SessionConfig::default(), now, 7);
        let mut player = Proto::rtmp(Role::Player, "127.0.0.1", "live", "bench", 9);
        let (mut to_server, mut to_player) = (BytesMut::new(), BytesMut::new());
        let mut up = Vec::new();
        let mut play_stream = None;
        for _ in 0..20 {
            while let Some(b) = player.poll_transmit() {
                to_server.extend_from_slice(&b);
            }
            server.handle_input(now, &mut to_server).unwrap();
            while let Some(e) = server.poll_event() {
                if let Event::PlayRequested(req) = e {
                    play_stream = Some(req.stream_id);
                    server.accept_play(req.stream_id, true);
                }
            }
            while let Some(b) = server.poll_transmit() {
                to_player.extend_from_slice(&b);
            }
            player.handle_input(&mut to_player, &mut up).unwrap();
        }
        assert_eq!(
            up[0],
            Up::Ready,
            "Play.Start after connect, createStream, play"
        );
        assert!(up[1..].iter().all(|u| matches!(
            u,
            Up::Media {
                kind: MediaKind::Data,
                ..
            }
        )));
        let stream_id = play_stream.expect("play requested");

        let mut gen = Generator::new(Shape::default());
        let mut frames = gen.headers();
        frames.extend((0..150).map(|_| gen.next(0)));
        let mut wire = Vec::new();
        for f in &frames {
            let msg = Message {
                csid: f.kind.csid(),
                timestamp: f.timestamp,
                type_id: f.kind.type_id(),
                stream_id,
                payload: f.payload.clone(),
            };
            wire.extend_from_slice(
                &wire_form(server.chunk_size(), &msg)
                    .expect("a frame fits")
                    .to_vec(),
            );
        }
        for split in [1, 7, 4096, 100_000] {
            let mut p = Proto::rtmp(Role::Player, "127.0.0.1", "live", "bench", 9);
            // Replay the same control exchange, then the media.
            let mut server = ServerSession::new(SessionConfig::default(), now, 7);
            let mut setup = BytesMut::new();
            let mut got = Vec::new();
            for _ in 0..20 {
                while let Some(b) = p.poll_transmit() {
                    setup.extend_from_slice(&b);
                }
                server.handle_input(now, &mut setup).unwrap();
                while let Some(e) = server.poll_event() {
                    if let Event::PlayRequested(req) = e {
                        server.accept_play(req.stream_id, true);
                    }
                }
                let mut back = BytesMut::new();
                while let Some(b) = server.poll_transmit() {
                    back.extend_from_slice(&b);
                }
                p.handle_input(&mut back, &mut got).unwrap();
            }
            got.clear();
            let mut buf = BytesMut::new();
            for piece in wire.chunks(split) {
                buf.extend_from_slice(piece);
                p.handle_input(&mut buf, &mut got).unwrap();
            }
            let payloads: Vec<Bytes> = got
                .iter()
                .filter_map(|u| match u {
                    Up::Media { payload, .. } => Some(payload.clone()),
                    _ => None,
                })
                .collect();
            let sent: Vec<Bytes> = frames.iter().map(|f| f.payload.clone()).collect();
            assert_eq!(payloads.len(), sent.len(), "split {split}");
            assert!(
                payloads == sent,
                "payloads intact and in order, split {split}"
            );
        }
    }

    /// A VOD player plays, then announces its buffer length on the same
    /// stream, as ffmpeg does.
    #[test]
    fn vod_player_plays_then_sets_its_buffer_length() {
        use sluice::protocol::session::{Event, ServerSession, SessionConfig};
        use std::time::Instant;

        let now = Instant::now();
        let mut server = ServerSession::new(SessionConfig::default(), now, 7);
        let role = Role::VodPlayer { buffer_ms: 3000 };
        let mut player = Proto::rtmp(role, "127.0.0.1", "vod", "clip.mp4", 9);
        let (mut to_server, mut to_player) = (BytesMut::new(), BytesMut::new());
        let (mut up, mut seen) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            while let Some(b) = player.poll_transmit() {
                to_server.extend_from_slice(&b);
            }
            server.handle_input(now, &mut to_server).unwrap();
            while let Some(e) = server.poll_event() {
                match e {
                    Event::PlayRequested(req) => {
                        seen.push(format!("play {} on {}", req.name, req.stream_id));
                        server.accept_play(req.stream_id, true);
                    }
                    Event::BufferLength { stream_id, millis } => {
                        seen.push(format!("buffer {millis} on {stream_id}"));
                    }
                    _ => {}
                }
            }
            while let Some(b) = server.poll_transmit() {
                to_player.extend_from_slice(&b);
            }
            player.handle_input(&mut to_player, &mut up).unwrap();
        }
        assert_eq!(seen, ["play clip.mp4 on 1", "buffer 3000 on 1"]);
        assert_eq!(up[0], Up::Ready);
    }

    #[test]
    fn http_flv_reads_a_chunked_body_split_anywhere() {
        let body = flv_bytes();
        let mut wire =
            b"HTTP/1.1 200 OK\r\nContent-Type: video/x-flv\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for part in body.chunks(7) {
            wire.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            wire.extend_from_slice(part);
            wire.extend_from_slice(b"\r\n");
        }
        for split in [1, 3, 10, wire.len()] {
            let mut p = HttpFlv::new("h", "live", "s");
            assert!(p
                .request
                .as_ref()
                .unwrap()
                .starts_with(b"GET /live/s.flv HTTP/1.1\r\n"));
            let mut up = Vec::new();
            let mut buf = BytesMut::new();
            for piece in wire.chunks(split) {
                buf.extend_from_slice(piece);
                p.handle_input(&mut buf, &mut up).unwrap();
            }
            assert_eq!(up[0], Up::Ready);
            assert_eq!(
                media(&up),
                vec![(MediaKind::Video, 0), (MediaKind::Audio, 23)],
                "split {split}"
            );
        }
    }

    #[test]
    fn http_flv_reads_an_identity_body() {
        let mut wire = b"HTTP/1.0 200 OK\r\nContent-Type: video/x-flv\r\n\r\n".to_vec();
        wire.extend_from_slice(&flv_bytes());
        let mut p = HttpFlv::new("h", "live", "s");
        let mut up = Vec::new();
        p.handle_input(&mut BytesMut::from(&wire[..]), &mut up)
            .unwrap();
        assert_eq!(media(&up).len(), 2);
    }

    #[test]
    fn http_flv_reports_a_refusal() {
        let mut p = HttpFlv::new("h", "live", "s");
        let mut buf = BytesMut::from(&b"HTTP/1.1 404 Not Found\r\n\r\n"[..]);
        assert!(matches!(
            p.handle_input(&mut buf, &mut Vec::new()),
            Err(ProtoError::Refused(_))
        ));
    }
}
