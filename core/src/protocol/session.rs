//! The server side of one RTMP connection (spec 7: NetConnection and
//! NetStream commands), sans-IO.
//!
//! ```text
//!   Handshaking ──C2──► AwaitingConnect ──connect──► Connected
//!        │                    │                         │ createStream → message stream slots:
//!        └── deadline ────────┴──► error (closed)       │   Idle ─publish─► AwaitingPublishDecision ─accept─► Publishing
//!                                                       │        └─play──► AwaitingPlayDecision ────accept─► Playing
//!                                                       │   (reject → Idle; deleteStream/closeStream → removed/Idle)
//! ```
//!
//! Call order, quinn style: feed bytes with [`ServerSession::handle_input`]
//! (and the clock with [`ServerSession::handle_timeout`]), then drain
//! [`ServerSession::poll_transmit`] (bytes to send, in order) and
//! [`ServerSession::poll_event`]. Decisions that belong to the server (may
//! this client publish under this name?) come out as events and go back in as
//! calls ([`ServerSession::accept_publish`] / [`ServerSession::reject_publish`]),
//! so they may be answered later without the session knowing why.
//!
//! Media from a publisher leaves as [`Event::Media`] with its payload still a
//! slice of the read buffer. Media to a player does not pass through here: the
//! server queues each frame's shared wire form directly (see `crate::wire`),
//! and the session only writes the per-connection messages around it.

use super::amf::{self, Amf0Value, AmfError, AmfLimits};
use super::chunk::{
    ChunkDecoder, ChunkEncoder, ChunkError, ChunkLimits, EncodeError, Message,
    DEFAULT_OUTBOUND_CHUNK_SIZE,
};
use super::handshake::{HandshakeError, HandshakeProgress, ServerHandshake};
use super::message::{self, csid, type_id, ControlError, MessageError, UserControl};
use super::name::{AppName, StreamKey, StreamName};
use crate::media::FourCcSet;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Most events buffered before the server drains them. Events come one per
/// message at most, and the server drains after every input call.
const EVENT_QUEUE_HINT: usize = 8;

/// Most message streams (createStream) one connection may hold. A publisher
/// or player needs one; a few more cover clients that publish and play.
pub const DEFAULT_MAX_MESSAGE_STREAMS: u32 = 8;

/// Time from accept to a completed handshake and `connect`, as one absolute
/// deadline (a dribbling client cannot extend it byte by byte).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the server pings a silent peer (User Control PingRequest).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a pinged peer has to answer (or send anything) before it is closed.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(60);

/// A publisher that sends no media for this long is dropped, freeing the name.
pub const DEFAULT_PUBLISHER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Window Acknowledgement Size the server announces, and Set Peer Bandwidth.
/// 2.5 MB as Adobe's servers and nginx-rtmp use.
pub const DEFAULT_WINDOW_ACK_SIZE: u32 = 2_500_000;

/// Media messages per second a publisher may send. Encoders send a few
/// hundred at most: 60 fps video plus 48 kHz AAC (47 frames/s) is ~110; a
/// multitrack stream with four video and eight audio tracks ~620. A flood
/// of tiny frames costs the server far more per byte than real media (each
/// frame is an allocation, a lock and a fan-out), so it is refused
/// (docs/hardening.md case 40).
pub const DEFAULT_MAX_MEDIA_RATE: u32 = 1000;

/// Seconds' worth of [`SessionConfig::max_media_rate`] a publisher may send
/// at once: an encoder catching up after its uplink stalled for a few
/// seconds sends its buffered frames in one burst.
pub const MEDIA_BURST_SECS: u32 = 5;

/// Messages decoded per [`ServerSession::handle_input`] call. 256 frames of
/// fan-out is well under a millisecond of a worker's time; a connection
/// with more waits for the others' turn.
pub const DEFAULT_MESSAGES_PER_INPUT: usize = 256;

/// Longest command message (AMF0 or AMF3) accepted. Commands are small:
/// an Enhanced RTMP `connect` with every FourCC map is about a kilobyte
/// (and a publish of a 64 KiB name, refused as a bad name, fits: case 23).
/// A longer one is only work for the server (decoding megabytes of AMF
/// holds the worker) and material for replies, so it is refused
/// (docs/hardening.md case 43).
pub const MAX_COMMAND_LEN: usize = 128 * 1024;

/// Longest string a reply echoes back to the client (`FCPublish`'s stream
/// name): the longest valid name. A reply must never grow with what a
/// peer sends (docs/hardening.md case 43).
pub const MAX_ECHOED_LEN: usize = super::name::MAX_NAME_LEN;

/// What the session needs to know about limits and timing. The server's
/// settings fill it; [`SessionConfig::default`] is the protocol's own
/// defaults (the constants above), cheap to build.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Chunk size the server announces and writes with.
    pub chunk_size: u32,
    /// What the chunk decoder holds at most.
    pub chunk_limits: ChunkLimits,
    /// What one command's AMF may hold at most.
    pub amf_limits: AmfLimits,
    /// Most message streams (createStream) one connection may hold.
    pub max_message_streams: u32,
    /// Absolute deadline from accept to a completed `connect`.
    pub handshake_timeout: Duration,
    /// Silence after which the peer is pinged.
    pub ping_interval: Duration,
    /// Silence after which the peer is closed.
    pub ping_timeout: Duration,
    /// Time without media after which a publisher is closed.
    pub publisher_idle_timeout: Duration,
    /// Window Acknowledgement Size and Set Peer Bandwidth announced at connect.
    pub window_ack_size: u32,
    /// Ask the server about each `connect` ([`Event::ConnectRequested`],
    /// then [`ServerSession::accept_connect`] / `reject_connect`) instead
    /// of accepting it at once.
    pub connect_decision: bool,
    /// Media messages per second a publisher may send on average (audio,
    /// video and data, sub-messages of aggregates included); bursts of up
    /// to [`MEDIA_BURST_SECS`] seconds' worth pass. Beyond it the
    /// connection is closed ([`ProtocolError::MediaFlood`]).
    pub max_media_rate: u32,
    /// Messages one [`ServerSession::handle_input`] call decodes at most;
    /// the rest stays in the buffer for the next call
    /// ([`ServerSession::has_input_left`]), so one connection's input
    /// cannot hold its worker (docs/hardening.md case 42).
    pub messages_per_input: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_OUTBOUND_CHUNK_SIZE,
            chunk_limits: ChunkLimits::default(),
            amf_limits: AmfLimits::default(),
            max_message_streams: DEFAULT_MAX_MESSAGE_STREAMS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            publisher_idle_timeout: DEFAULT_PUBLISHER_IDLE_TIMEOUT,
            window_ack_size: DEFAULT_WINDOW_ACK_SIZE,
            connect_decision: false,
            max_media_rate: DEFAULT_MAX_MEDIA_RATE,
            messages_per_input: DEFAULT_MESSAGES_PER_INPUT,
        }
    }
}

/// Audio, video or script data, as RTMP message types 8, 9 and 18/15.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
    Data,
}

impl MediaKind {
    /// The RTMP message type id (data is always written as AMF0, type 18).
    pub fn type_id(self) -> u8 {
        match self {
            Self::Audio => type_id::AUDIO,
            Self::Video => type_id::VIDEO,
            Self::Data => type_id::DATA_AMF0,
        }
    }

    /// The chunk stream Sluice writes this kind on.
    pub fn csid(self) -> u32 {
        match self {
            Self::Audio => csid::AUDIO,
            Self::Video => csid::VIDEO,
            Self::Data => csid::STREAM_DATA,
        }
    }
}

/// Enhanced RTMP `capsEx` bits (enhanced-rtmp-v2 "Enhancing NetConnection
/// connect Command", enum CapsExMask).
pub mod caps_ex {
    /// The client handles `NetConnection.Connect.ReconnectRequest`.
    pub const RECONNECT: u8 = 0x01;
    /// Multitrack audio/video messages.
    pub const MULTITRACK: u8 = 0x02;
    /// Can parse the ModEx signal.
    pub const MOD_EX: u8 = 0x04;
    /// Applies TimestampOffsetNano.
    pub const TIMESTAMP_NANO_OFFSET: u8 = 0x08;
    /// What Sluice answers: it asks publishers to reconnect on drain, keeps
    /// and forwards multitrack and ModEx messages unchanged. Nano offsets
    /// are forwarded inside ModEx but not applied, so that bit is not claimed.
    pub const SERVER: u8 = RECONNECT | MULTITRACK | MOD_EX;
}

/// FourCcInfoMask flags of `videoFourCcInfoMap` / `audioFourCcInfoMap`.
pub mod fourcc_info {
    pub const CAN_DECODE: u8 = 0x01;
    pub const CAN_ENCODE: u8 = 0x02;
    pub const CAN_FORWARD: u8 = 0x04;
}

/// What an Enhanced RTMP client announced in `connect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCaps {
    /// Codecs the client can take (decode or forward): the union of
    /// `fourCcList` and the info-map keys with CanDecode or CanForward.
    /// `None` when the client announced no FourCC at all (a legacy client:
    /// it is sent everything).
    pub fourccs: Option<FourCcSet>,
    /// `capsEx`, when announced.
    pub caps_ex: Option<u8>,
}

impl ClientCaps {
    /// Reads `fourCcList`, `videoFourCcInfoMap`, `audioFourCcInfoMap` and
    /// `capsEx` from a connect command object. Wrong types are ignored (the
    /// property counts as absent), never an error.
    pub fn from_connect(obj: &Amf0Value) -> Self {
        let mut set = FourCcSet::default();
        let mut announced = false;
        if let Some(Amf0Value::StrictArray(list)) = obj.get("fourCcList") {
            announced = true;
            for s in list.iter().filter_map(|v| v.as_str()) {
                set.insert(s);
            }
        }
        for map in ["videoFourCcInfoMap", "audioFourCcInfoMap"] {
            let Some(props) = obj.get(map).and_then(|m| m.properties()) else {
                continue;
            };
            announced = true;
            for (fourcc, flags) in props {
                let flags = flags.as_number().unwrap_or(0.0);
                let flags = if flags.is_finite() && flags >= 0.0 {
                    flags as u32 as u8
                } else {
                    0
                };
                if flags & (fourcc_info::CAN_DECODE | fourcc_info::CAN_FORWARD) != 0 {
                    set.insert(fourcc);
                }
            }
        }
        let caps_ex = obj
            .get("capsEx")
            .and_then(|v| v.as_number())
            .filter(|n| n.is_finite() && *n >= 0.0)
            .map(|n| n as u32 as u8);
        Self {
            fourccs: announced.then_some(set),
            caps_ex,
        }
    }

    /// True when the client announced any Enhanced RTMP property.
    pub fn is_enhanced(&self) -> bool {
        self.fourccs.is_some() || self.caps_ex.is_some()
    }

    /// True when `capsEx` has `bit` (see [`caps_ex`]).
    pub fn has(&self, bit: u8) -> bool {
        self.caps_ex.is_some_and(|c| c & bit != 0)
    }
}

/// A client asks to publish; answer with `accept_publish` or `reject_publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    /// The message stream (createStream) it publishes on.
    pub stream_id: u32,
    /// The application named in `connect`.
    pub app: AppName,
    /// The stream name with any `?query` removed.
    pub name: StreamName,
    /// What followed `?` in the name (or in the app), for access control.
    pub query: String,
    /// `live`, `record` or `append` (Sluice treats all as live).
    pub publish_type: String,
}

/// A client asks to play; answer with `accept_play` or `reject_play`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlayRequest {
    /// The message stream (createStream) it plays on.
    pub stream_id: u32,
    /// The application named in `connect`.
    pub app: AppName,
    /// The stream name with any `?query` removed.
    pub name: StreamName,
    /// What followed `?` in the name (or in the app), for access control.
    pub query: String,
    pub start: f64,
    pub duration: f64,
    pub reset: bool,
}

impl PublishRequest {
    /// The stream as the server knows it: `app/name`.
    pub fn key(&self) -> StreamKey {
        StreamKey::of(&self.app, &self.name)
    }
}

impl PlayRequest {
    /// The stream as the server knows it: `app/name`.
    pub fn key(&self) -> StreamKey {
        StreamKey::of(&self.app, &self.name)
    }
}

/// What the session tells the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// With [`SessionConfig::connect_decision`]: a client asks to connect;
    /// answer with `accept_connect` or `reject_connect`.
    ConnectRequested {
        /// The application, without a trailing `/` or `?query`.
        app: AppName,
        /// The `tcUrl` the client sent (may be empty).
        tc_url: String,
        /// What followed `?` in the app.
        query: String,
    },
    /// `connect` succeeded.
    Connected {
        /// The application, without a trailing `/` or `?query`.
        app: AppName,
        /// The `tcUrl` the client sent (may be empty).
        tc_url: String,
    },
    PublishRequested(PublishRequest),
    PlayRequested(PlayRequest),
    /// Audio, video or data from a publishing stream. For data, an
    /// `@setDataFrame` prefix has already been stripped.
    Media {
        stream_id: u32,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    },
    /// A publishing stream stopped (FCUnpublish, closeStream or deleteStream).
    PublishStopped {
        stream_id: u32,
    },
    /// A playing stream stopped (closeStream or deleteStream).
    PlayStopped {
        stream_id: u32,
    },
    /// pause(true/false) from a player (NetStream.Pause.Notify or
    /// Unpause.Notify is already on its way).
    Pause {
        stream_id: u32,
        paused: bool,
        /// Where the player paused, in milliseconds (pause's second
        /// argument; 0 when absent).
        position_ms: f64,
    },
    /// seek(ms) from a player. Answer with [`ServerSession::notify_seek`]
    /// (a recorded stream) or [`ServerSession::seek_failed`] (live).
    Seek {
        stream_id: u32,
        /// The target, in milliseconds (never negative, never NaN).
        position_ms: f64,
    },
    /// SetBufferLength (User Control 3): how much the player buffers on
    /// this message stream, in milliseconds.
    BufferLength {
        stream_id: u32,
        millis: u32,
    },
    /// receiveAudio / receiveVideo from a player.
    Receive {
        stream_id: u32,
        kind: MediaKind,
        enabled: bool,
    },
}

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRejection {
    /// The name is invalid or already being published.
    BadName,
    /// Access control said no.
    Unauthorized,
}

/// Why a play was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayRejection {
    StreamNotFound,
    Unauthorized,
    /// The stream exists but cannot be played (a file that does not
    /// parse): NetStream.Play.Failed.
    Failed,
}

/// A violation of the protocol's rules, as opposed to malformed bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolError {
    ConnectTwice,
    CommandBeforeConnect(String),
    MessageBeforeConnect {
        type_id: u8,
    },
    /// A command whose arguments are missing or of the wrong type.
    BadCommand {
        name: String,
        reason: &'static str,
    },
    /// A stream command on a message stream the client never created.
    UnknownStream {
        command: String,
        stream_id: u32,
    },
    HandshakeTimeout(Duration),
    PingTimeout(Duration),
    PublisherIdle(Duration),
    /// More media messages than the rate limit allows.
    MediaFlood {
        rate: u32,
    },
    /// A command message longer than [`MAX_COMMAND_LEN`].
    CommandTooLong {
        len: usize,
    },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ConnectTwice => write!(f, "connect sent twice"),
            Self::CommandBeforeConnect(c) => write!(f, "command {c:?} before connect"),
            Self::MessageBeforeConnect { type_id } => {
                write!(f, "message type {type_id} before connect")
            }
            Self::BadCommand { name, reason } => write!(f, "bad {name:?} command: {reason}"),
            Self::UnknownStream { command, stream_id } => {
                write!(
                    f,
                    "{command:?} on message stream {stream_id}, never created"
                )
            }
            Self::HandshakeTimeout(d) => {
                write!(f, "handshake and connect not done within {d:?}")
            }
            Self::PingTimeout(d) => write!(f, "no answer to ping within {d:?}"),
            Self::PublisherIdle(d) => write!(f, "publisher sent no media for {d:?}"),
            Self::CommandTooLong { len } => {
                write!(f, "command of {len} bytes (limit {MAX_COMMAND_LEN})")
            }
            Self::MediaFlood { rate } => write!(
                f,
                "more than {rate} media messages per second (over {MEDIA_BURST_SECS} s)"
            ),
        }
    }
}

/// Why the session must be closed.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionError {
    Handshake(HandshakeError),
    Chunk(ChunkError),
    Amf(AmfError),
    Message(MessageError),
    Protocol(ProtocolError),
    /// A reply that the chunk stream cannot carry.
    Encode(EncodeError),
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Encode(e) => write!(f, "reply: {e}"),
            Self::Handshake(e) => write!(f, "handshake: {e}"),
            Self::Chunk(e) => write!(f, "chunk stream: {e}"),
            Self::Amf(e) => write!(f, "AMF: {e}"),
            Self::Message(e) => write!(f, "message: {e}"),
            Self::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

impl std::error::Error for SessionError {}

impl From<HandshakeError> for SessionError {
    fn from(e: HandshakeError) -> Self {
        Self::Handshake(e)
    }
}
impl From<ChunkError> for SessionError {
    fn from(e: ChunkError) -> Self {
        Self::Chunk(e)
    }
}
impl From<AmfError> for SessionError {
    fn from(e: AmfError) -> Self {
        Self::Amf(e)
    }
}
impl From<MessageError> for SessionError {
    fn from(e: MessageError) -> Self {
        Self::Message(e)
    }
}
impl From<ControlError> for SessionError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Message(e) => Self::Message(e),
            ControlError::Chunk(e) => Self::Chunk(e),
        }
    }
}
impl From<ProtocolError> for SessionError {
    fn from(e: ProtocolError) -> Self {
        Self::Protocol(e)
    }
}

/// The connection's state, named for what it waits for.
enum State {
    Handshaking(Box<ServerHandshake>),
    AwaitingConnect,
    /// `connect` received; the server decides (`connect_decision`).
    ConnectPending(Box<PendingConnect>),
    Connected {
        app: AppName,
        app_query: String,
    },
}

/// A `connect` waiting for the server's decision.
struct PendingConnect {
    txid: f64,
    obj: Amf0Value,
    app: AppName,
    app_query: String,
    tc_url: String,
}

/// What one message stream (createStream) is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamRole {
    Idle,
    AwaitingPublishDecision,
    Publishing,
    AwaitingPlayDecision,
    Playing,
}

#[derive(Debug)]
struct StreamSlot {
    id: u32,
    role: StreamRole,
}

/// The server side of one RTMP connection.
pub struct ServerSession {
    config: SessionConfig,
    state: State,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    out: BytesMut,
    events: VecDeque<Event>,
    streams: Vec<StreamSlot>,
    object_encoding: f64,
    started: Instant,
    handshake_deadline: Instant,
    last_input: Instant,
    last_media: Instant,
    ping_sent: Option<Instant>,
    /// Bytes consumed since the handshake, wrapping (the ack sequence number).
    bytes_received: u64,
    bytes_at_last_ack: u64,
    /// The peer's Window Acknowledgement Size; 0 until it sends one.
    peer_window: u32,
    /// The window we last announced.
    our_window: u32,
    /// What the client announced in `connect` (Enhanced RTMP).
    caps: ClientCaps,
    /// Media messages the publisher may still send now (a token bucket
    /// refilled at `max_media_rate` per second), and when it was refilled.
    media_allowance: (f64, Instant),
    /// A reply could not be encoded: the session ends with this error.
    failed: Option<EncodeError>,
    /// The last `handle_input` stopped at its message budget.
    input_left: bool,
}

impl ServerSession {
    /// A session for a connection accepted at `now`. `seed` feeds S1's
    /// random bytes.
    pub fn new(config: SessionConfig, now: Instant, seed: u64) -> Self {
        let decoder = ChunkDecoder::new(config.chunk_limits);
        let burst = config_burst(&config);
        Self {
            handshake_deadline: now + config.handshake_timeout,
            config,
            state: State::Handshaking(Box::new(ServerHandshake::new(seed))),
            decoder,
            encoder: ChunkEncoder::new(),
            out: BytesMut::new(),
            events: VecDeque::with_capacity(EVENT_QUEUE_HINT),
            streams: Vec::new(),
            object_encoding: 0.0,
            started: now,
            last_input: now,
            last_media: now,
            ping_sent: None,
            bytes_received: 0,
            bytes_at_last_ack: 0,
            peer_window: 0,
            our_window: 0,
            caps: ClientCaps::default(),
            media_allowance: (burst, now),
            failed: None,
            input_left: false,
        }
    }

    /// What the client announced in `connect`: the FourCCs it takes and its
    /// `capsEx` (default until connected).
    pub fn client_caps(&self) -> &ClientCaps {
        &self.caps
    }

    /// True once `connect` has succeeded.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// The app named in `connect`, once connected.
    pub fn app(&self) -> Option<&AppName> {
        match &self.state {
            State::Connected { app, .. } => Some(app),
            _ => None,
        }
    }

    /// The chunk size this session writes with.
    pub fn chunk_size(&self) -> u32 {
        self.encoder.chunk_size()
    }

    /// Total bytes received after the handshake.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Consumes what it can of `buf` (bytes read from the peer); anything
    /// left is an incomplete chunk to be completed by the next read.
    ///
    /// At most [`SessionConfig::messages_per_input`] messages are decoded per
    /// call; when more remain, [`ServerSession::has_input_left`] is true and
    /// the caller calls again later with the same buffer.
    pub fn handle_input(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), SessionError> {
        self.input_left = false;
        if let Some(e) = self.failed.take() {
            return Err(SessionError::Encode(e));
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.last_input = now;
        self.ping_sent = None;
        if let State::Handshaking(hs) = &mut self.state {
            match hs.handle_input(buf, &mut self.out)? {
                HandshakeProgress::NeedMore => return Ok(()),
                HandshakeProgress::Done => self.state = State::AwaitingConnect,
            }
        }
        let before = buf.len();
        let result = self.decode_messages(now, buf);
        self.bytes_received += (before - buf.len()) as u64;
        self.maybe_acknowledge();
        result?;
        match self.failed.take() {
            Some(e) => Err(SessionError::Encode(e)),
            None => Ok(()),
        }
    }

    /// True when the last [`ServerSession::handle_input`] stopped at its
    /// message budget with input left in the buffer.
    pub fn has_input_left(&self) -> bool {
        self.input_left
    }

    /// An error a reply's encoding left (the connection must close), for
    /// callers that queued replies outside `handle_input` (`accept_*`).
    pub fn take_error(&mut self) -> Option<SessionError> {
        self.failed.take().map(SessionError::Encode)
    }

    fn decode_messages(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), SessionError> {
        // Stop at a pending decision: what follows a publish (its media) must
        // be read once the server has answered, not dropped before it.
        let mut budget = self.config.messages_per_input.max(1);
        while !self.is_awaiting_decision() {
            if budget == 0 {
                self.input_left = !buf.is_empty();
                break;
            }
            match self.decoder.decode(buf)? {
                Some(msg) => {
                    budget -= 1;
                    self.handle_message(now, msg)?
                }
                None => break,
            }
        }
        Ok(())
    }

    /// True while a publish or play request waits for `accept_*` /
    /// `reject_*`. Input is not consumed meanwhile: call
    /// [`ServerSession::handle_input`] again with the same buffer once the
    /// decision is made.
    pub fn is_awaiting_decision(&self) -> bool {
        matches!(self.state, State::ConnectPending(_))
            || self.streams.iter().any(|s| {
                matches!(
                    s.role,
                    StreamRole::AwaitingPublishDecision | StreamRole::AwaitingPlayDecision
                )
            })
    }

    /// Sends an Acknowledgement when the bytes since the last one reach the
    /// peer's window (spec 5.4.3). At most one per input call, however small
    /// the window, so a window of 1 cannot multiply our output.
    fn maybe_acknowledge(&mut self) {
        if self.peer_window == 0 {
            return;
        }
        if self.bytes_received - self.bytes_at_last_ack >= u64::from(self.peer_window) {
            self.bytes_at_last_ack = self.bytes_received;
            // The sequence number is the byte count modulo 2^32.
            self.send(&message::acknowledgement(self.bytes_received as u32));
        }
    }

    /// Checks deadlines; call at least once a second, or at
    /// [`ServerSession::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if !self.is_connected() {
            if now >= self.handshake_deadline {
                return Err(ProtocolError::HandshakeTimeout(self.config.handshake_timeout).into());
            }
            return Ok(());
        }
        let silent = now.saturating_duration_since(self.last_input);
        if silent >= self.config.ping_timeout {
            return Err(ProtocolError::PingTimeout(self.config.ping_timeout).into());
        }
        if silent >= self.config.ping_interval && self.ping_sent.is_none() {
            self.ping_sent = Some(now);
            let stamp = now.saturating_duration_since(self.started).as_millis() as u32;
            self.send(&message::user_control(UserControl::PingRequest(stamp)));
        }
        let publishing = self
            .streams
            .iter()
            .any(|s| s.role == StreamRole::Publishing);
        if publishing
            && now.saturating_duration_since(self.last_media) >= self.config.publisher_idle_timeout
        {
            return Err(ProtocolError::PublisherIdle(self.config.publisher_idle_timeout).into());
        }
        Ok(())
    }

    /// The next instant at which [`ServerSession::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Instant {
        if !self.is_connected() {
            return self.handshake_deadline;
        }
        let mut t = match self.ping_sent {
            None => self.last_input + self.config.ping_interval,
            Some(_) => self.last_input + self.config.ping_timeout,
        };
        if self
            .streams
            .iter()
            .any(|s| s.role == StreamRole::Publishing)
        {
            t = t.min(self.last_media + self.config.publisher_idle_timeout);
        }
        t
    }

    /// Bytes to send to the peer, in order (handshake, control, replies).
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// The next event for the server.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The publish in `stream_id` may go ahead: NetStream.Publish.Start.
    pub fn accept_publish(&mut self, stream_id: u32) {
        if self.set_role(
            stream_id,
            StreamRole::AwaitingPublishDecision,
            StreamRole::Publishing,
        ) {
            self.send(&message::user_control(UserControl::StreamBegin(stream_id)));
            self.send_status(
                stream_id,
                "status",
                "NetStream.Publish.Start",
                "Publishing.",
            );
        }
    }

    /// The publish in `stream_id` is refused; the connection stays open.
    pub fn reject_publish(&mut self, stream_id: u32, why: PublishRejection) {
        if self.set_role(
            stream_id,
            StreamRole::AwaitingPublishDecision,
            StreamRole::Idle,
        ) {
            let (code, text) = match why {
                PublishRejection::BadName => (
                    "NetStream.Publish.BadName",
                    "Stream name is invalid or already publishing.",
                ),
                PublishRejection::Unauthorized => (
                    "NetStream.Publish.Unauthorized",
                    "Not authorized to publish.",
                ),
            };
            self.send_status(stream_id, "error", code, text);
        }
    }

    /// The play in `stream_id` may go ahead: StreamBegin, Play.Reset,
    /// Play.Start and `|RtmpSampleAccess`. The server then queues metadata,
    /// sequence headers and frames.
    pub fn accept_play(&mut self, stream_id: u32, reset: bool) {
        if self.set_role(
            stream_id,
            StreamRole::AwaitingPlayDecision,
            StreamRole::Playing,
        ) {
            self.send(&message::user_control(UserControl::StreamBegin(stream_id)));
            if reset {
                self.send_status(
                    stream_id,
                    "status",
                    "NetStream.Play.Reset",
                    "Playing and resetting.",
                );
            }
            self.send_status(
                stream_id,
                "status",
                "NetStream.Play.Start",
                "Started playing.",
            );
            let access = [
                Amf0Value::string("|RtmpSampleAccess"),
                Amf0Value::Boolean(true),
                Amf0Value::Boolean(true),
            ];
            self.send_amf(csid::STREAM_DATA, stream_id, type_id::DATA_AMF0, &access);
        }
    }

    /// The play in `stream_id` is refused; the connection stays open.
    pub fn reject_play(&mut self, stream_id: u32, why: PlayRejection) {
        if self.set_role(
            stream_id,
            StreamRole::AwaitingPlayDecision,
            StreamRole::Idle,
        ) {
            let (code, text) = match why {
                PlayRejection::StreamNotFound => {
                    ("NetStream.Play.StreamNotFound", "No such stream.")
                }
                PlayRejection::Unauthorized => ("NetStream.Play.Failed", "Not authorized to play."),
                PlayRejection::Failed => ("NetStream.Play.Failed", "Cannot be played."),
            };
            self.send_status(stream_id, "error", code, text);
        }
    }

    /// As [`ServerSession::reject_play`], with `description` saying why
    /// (a file that does not parse, say what is wrong with it).
    pub fn reject_play_because(&mut self, stream_id: u32, why: PlayRejection, description: &str) {
        if self.set_role(
            stream_id,
            StreamRole::AwaitingPlayDecision,
            StreamRole::Idle,
        ) {
            let code = match why {
                PlayRejection::StreamNotFound => "NetStream.Play.StreamNotFound",
                PlayRejection::Unauthorized | PlayRejection::Failed => "NetStream.Play.Failed",
            };
            self.send_status(stream_id, "error", code, description);
        }
    }

    /// The play in `stream_id` may go ahead on a recorded stream (video on
    /// demand): StreamIsRecorded, then as [`ServerSession::accept_play`].
    pub fn accept_play_recorded(&mut self, stream_id: u32, reset: bool) {
        if self
            .streams
            .iter()
            .any(|s| s.id == stream_id && s.role == StreamRole::AwaitingPlayDecision)
        {
            self.send(&message::user_control(UserControl::StreamIsRecorded(
                stream_id,
            )));
        }
        self.accept_play(stream_id, reset);
    }

    /// A seek on a recorded stream resolved to `position_ms` (the keyframe
    /// at or before the target): StreamIsRecorded, StreamBegin,
    /// NetStream.Seek.Notify and NetStream.Play.Start, as Flash Media
    /// Server sends them. The media from the new position follows.
    pub fn notify_seek(&mut self, stream_id: u32, position_ms: u32) {
        if self.stream_role(stream_id) != Some(StreamRole::Playing) {
            return;
        }
        self.send(&message::user_control(UserControl::StreamIsRecorded(
            stream_id,
        )));
        self.send(&message::user_control(UserControl::StreamBegin(stream_id)));
        let info = Amf0Value::object([
            ("level", Amf0Value::string("status")),
            ("code", Amf0Value::string("NetStream.Seek.Notify")),
            (
                "description",
                Amf0Value::string(format!("Seeking {position_ms} (stream ID: {stream_id}).")),
            ),
            ("clientid", Amf0Value::string("sluice")),
        ]);
        self.send_command(
            stream_id,
            &[
                Amf0Value::string("onStatus"),
                Amf0Value::Number(0.0),
                Amf0Value::Null,
                info,
            ],
        );
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.Start",
            "Started playing.",
        );
    }

    /// A seek the stream cannot do (a live stream): NetStream.Seek.Failed;
    /// playing goes on.
    pub fn seek_failed(&mut self, stream_id: u32) {
        self.send_status(
            stream_id,
            "error",
            "NetStream.Seek.Failed",
            "Live streams cannot seek.",
        );
    }

    /// A recorded stream played to its end (or to play's duration):
    /// StreamEOF, `onPlayStatus` NetStream.Play.Complete (with the
    /// duration in seconds and the bytes sent) and NetStream.Play.Stop.
    /// The player stays on the stream: it may seek back.
    pub fn notify_complete(&mut self, stream_id: u32, duration_ms: u64, bytes: u64) {
        if self.stream_role(stream_id) != Some(StreamRole::Playing) {
            return;
        }
        self.send(&message::user_control(UserControl::StreamEof(stream_id)));
        let status = [
            Amf0Value::string("onPlayStatus"),
            Amf0Value::object([
                ("level", Amf0Value::string("status")),
                ("code", Amf0Value::string("NetStream.Play.Complete")),
                ("duration", Amf0Value::Number(duration_ms as f64 / 1000.0)),
                ("bytes", Amf0Value::Number(bytes as f64)),
            ]),
        ];
        self.send_amf(csid::STREAM_DATA, stream_id, type_id::DATA_AMF0, &status);
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.Stop",
            "Stopped playing.",
        );
    }

    /// A recorded stream failed while playing (the file shrank, a read
    /// failed): NetStream.Play.Failed with `description`, and StreamEOF.
    /// The play ends; the connection stays.
    pub fn notify_failed(&mut self, stream_id: u32, description: &str) {
        if self.set_role(stream_id, StreamRole::Playing, StreamRole::Idle) {
            self.send_status(stream_id, "error", "NetStream.Play.Failed", description);
            self.send(&message::user_control(UserControl::StreamEof(stream_id)));
        }
    }

    /// The stream a player in `stream_id` watches lost its publisher:
    /// NetStream.Play.UnpublishNotify and StreamEOF. The player stays.
    pub fn notify_unpublished(&mut self, stream_id: u32) {
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.UnpublishNotify",
            "Stream is now unpublished.",
        );
        self.send(&message::user_control(UserControl::StreamEof(stream_id)));
    }

    /// The stream a player in `stream_id` waits for cannot be had (an edge's
    /// origin is unreachable): NetStream.Play.StreamNotFound and StreamEOF.
    /// The play ends; the connection stays.
    pub fn notify_not_found(&mut self, stream_id: u32) {
        if self.set_role(stream_id, StreamRole::Playing, StreamRole::Idle) {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Play.StreamNotFound",
                "No such stream.",
            );
            self.send(&message::user_control(UserControl::StreamEof(stream_id)));
        }
    }

    /// The stream a player in `stream_id` watches has a publisher again:
    /// StreamBegin and NetStream.Play.PublishNotify.
    pub fn notify_published(&mut self, stream_id: u32) {
        self.send(&message::user_control(UserControl::StreamBegin(stream_id)));
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.PublishNotify",
            "Stream is now published.",
        );
    }

    /// The server is shutting down: publishers are told their stream is
    /// unpublished, players that it ended.
    pub fn notify_shutdown(&mut self) {
        let ids: Vec<(u32, StreamRole)> = self
            .streams
            .iter()
            .map(|s| (s.id, s.role.clone()))
            .collect();
        for (id, role) in ids {
            match role {
                StreamRole::Publishing => self.send_status(
                    id,
                    "status",
                    "NetStream.Unpublish.Success",
                    "Server shutting down.",
                ),
                StreamRole::Playing => {
                    self.send_status(id, "status", "NetStream.Play.Stop", "Server shutting down.");
                    self.notify_unpublished(id);
                }
                _ => {}
            }
        }
    }

    /// Enhanced RTMP reconnect request (enhanced-rtmp-v2 "Reconnect
    /// Request"): `onStatus` on the NetConnection with
    /// `NetConnection.Connect.ReconnectRequest`, and `tcUrl` when the client
    /// should go elsewhere (absent: reconnect to the current tcUrl). The
    /// session keeps working: the client goes on publishing until it has
    /// reconnected and leaves by itself.
    pub fn send_reconnect_request(&mut self, tc_url: Option<&str>) {
        let mut info = vec![
            ("level", Amf0Value::string("status")),
            (
                "code",
                Amf0Value::string("NetConnection.Connect.ReconnectRequest"),
            ),
            (
                "description",
                Amf0Value::string("The server is shutting down; please reconnect."),
            ),
        ];
        if let Some(url) = tc_url {
            info.push(("tcUrl", Amf0Value::string(url)));
        }
        self.send_command(
            0,
            &[
                Amf0Value::string("onStatus"),
                Amf0Value::Number(0.0),
                Amf0Value::Null,
                Amf0Value::object(info),
            ],
        );
    }

    /// True while some message stream of this connection publishes.
    pub fn is_publishing(&self) -> bool {
        self.streams
            .iter()
            .any(|s| s.role == StreamRole::Publishing)
    }

    fn set_role(&mut self, stream_id: u32, from: StreamRole, to: StreamRole) -> bool {
        match self
            .streams
            .iter_mut()
            .find(|s| s.id == stream_id && s.role == from)
        {
            Some(s) => {
                s.role = to;
                true
            }
            None => false,
        }
    }

    /// Queues `msg`; one that cannot be encoded is not sent, and the
    /// session ends with the error (`handle_input`, `take_error`).
    fn send(&mut self, msg: &Message) {
        if let Err(e) = self.encoder.encode(msg, &mut self.out) {
            self.failed.get_or_insert(e);
        }
    }

    fn send_amf(&mut self, csid: u32, stream_id: u32, type_id: u8, values: &[Amf0Value]) {
        let mut payload = BytesMut::new();
        for v in values {
            amf::encode(v, &mut payload);
        }
        self.send(&Message {
            csid,
            timestamp: 0,
            type_id,
            stream_id,
            payload: payload.freeze(),
        });
    }

    fn send_command(&mut self, stream_id: u32, values: &[Amf0Value]) {
        let csid = if stream_id == 0 {
            csid::COMMAND
        } else {
            csid::STREAM_DATA
        };
        self.send_amf(csid, stream_id, type_id::COMMAND_AMF0, values);
    }

    fn send_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        let info = Amf0Value::object([
            ("level", Amf0Value::string(level)),
            ("code", Amf0Value::string(code)),
            ("description", Amf0Value::string(description)),
        ]);
        self.send_command(
            stream_id,
            &[
                Amf0Value::string("onStatus"),
                Amf0Value::Number(0.0),
                Amf0Value::Null,
                info,
            ],
        );
    }

    fn send_result(&mut self, txid: f64, values: Vec<Amf0Value>) {
        let mut all = vec![Amf0Value::string("_result"), Amf0Value::Number(txid)];
        all.extend(values);
        self.send_command(0, &all);
    }

    fn handle_message(&mut self, now: Instant, msg: Message) -> Result<(), SessionError> {
        match msg.type_id {
            type_id::SET_CHUNK_SIZE | type_id::ABORT => {
                message::apply_chunk_control(&mut self.decoder, &msg)?
            }
            type_id::ACKNOWLEDGEMENT => {}
            type_id::WINDOW_ACK_SIZE => {
                self.peer_window = message::read_u32(msg.type_id, &msg.payload)?;
            }
            type_id::SET_PEER_BANDWIDTH => {
                let size = message::read_u32(msg.type_id, &msg.payload)?;
                if size != self.our_window && self.is_connected() {
                    self.our_window = size;
                    self.send(&message::window_ack_size(size));
                }
            }
            type_id::USER_CONTROL => match UserControl::decode(&msg.payload)? {
                UserControl::PingRequest(t) => {
                    self.send(&message::user_control(UserControl::PingResponse(t)))
                }
                UserControl::SetBufferLength { stream_id, millis }
                    if matches!(
                        self.stream_role(stream_id),
                        Some(StreamRole::Playing | StreamRole::AwaitingPlayDecision)
                    ) =>
                {
                    self.events
                        .push_back(Event::BufferLength { stream_id, millis });
                }
                UserControl::PingResponse(_) => {}
                _ => {}
            },
            type_id::COMMAND_AMF0 => self.handle_command(&msg.payload, msg.stream_id)?,
            type_id::COMMAND_AMF3 => {
                // AMF3 command messages start with a format byte (0), then AMF0.
                let body = msg.payload.get(1..).unwrap_or_default();
                self.handle_command(body, msg.stream_id)?
            }
            type_id::AUDIO | type_id::VIDEO | type_id::DATA_AMF0 | type_id::DATA_AMF3 => {
                self.handle_media(now, msg)?
            }
            type_id::AGGREGATE => {
                // Unpacked one sub-message at a time, each counted like a
                // message of its own (the media rate): a 16 MiB aggregate
                // of a million tiny frames is refused after the limit, not
                // turned into a million frames first (case 41).
                for sub in message::aggregate_parts(&msg) {
                    let sub = sub?;
                    if matches!(
                        sub.type_id,
                        type_id::AUDIO | type_id::VIDEO | type_id::DATA_AMF0
                    ) {
                        self.handle_media(now, sub)?;
                    }
                }
            }
            // Shared objects and unknown types: nothing a live server needs.
            _ => {}
        }
        Ok(())
    }

    fn handle_media(&mut self, now: Instant, msg: Message) -> Result<(), SessionError> {
        if !self.is_connected() {
            return Err(ProtocolError::MessageBeforeConnect {
                type_id: msg.type_id,
            }
            .into());
        }
        let publishing = self
            .streams
            .iter()
            .any(|s| s.id == msg.stream_id && s.role == StreamRole::Publishing);
        if !publishing {
            // Media on a stream that is not publishing (e.g. sent before
            // Publish.Start arrived, or after a rejection) is dropped.
            return Ok(());
        }
        self.take_media_allowance(now)?;
        let (kind, payload) = match msg.type_id {
            type_id::AUDIO => (MediaKind::Audio, msg.payload),
            type_id::VIDEO => (MediaKind::Video, msg.payload),
            type_id::DATA_AMF3 => (
                MediaKind::Data,
                strip_set_data_frame(msg.payload.slice(msg.payload.len().min(1)..)),
            ),
            _ => (MediaKind::Data, strip_set_data_frame(msg.payload)),
        };
        self.last_media = now;
        self.events.push_back(Event::Media {
            stream_id: msg.stream_id,
            kind,
            timestamp: msg.timestamp,
            payload,
        });
        Ok(())
    }

    /// Counts one media message against the publisher's rate (a token
    /// bucket: `max_media_rate` per second, [`MEDIA_BURST_SECS`] seconds'
    /// worth at once).
    fn take_media_allowance(&mut self, now: Instant) -> Result<(), SessionError> {
        let rate = self.config.max_media_rate;
        let (left, since) = self.media_allowance;
        let refill = now.saturating_duration_since(since).as_secs_f64() * f64::from(rate);
        let left = (left + refill).min(config_burst(&self.config));
        if left < 1.0 {
            return Err(ProtocolError::MediaFlood { rate }.into());
        }
        self.media_allowance = (left - 1.0, now);
        Ok(())
    }

    fn handle_command(&mut self, payload: &[u8], msg_stream: u32) -> Result<(), SessionError> {
        if payload.len() > MAX_COMMAND_LEN {
            return Err(ProtocolError::CommandTooLong { len: payload.len() }.into());
        }
        let values = amf::decode_all(payload, &self.config.amf_limits)?;
        let mut args = values.into_iter();
        let name = match args.next() {
            Some(v) => match v.as_str() {
                Some(s) => s.to_owned(),
                None => {
                    return Err(ProtocolError::BadCommand {
                        name: String::new(),
                        reason: "command name is not a string",
                    }
                    .into())
                }
            },
            None => return Ok(()), // an empty command message carries nothing
        };
        let txid = args.next().and_then(|v| v.as_number()).unwrap_or(0.0);
        if !txid.is_finite() {
            return Err(bad(&name, "transaction id is not a finite number"));
        }
        let _command_object = args.next();
        let rest: Vec<Amf0Value> = args.collect();

        if name == "connect" {
            return self.handle_connect(txid, _command_object);
        }
        let (app, app_query) = match &self.state {
            State::Connected { app, app_query } => (app.clone(), app_query.clone()),
            _ => return Err(ProtocolError::CommandBeforeConnect(name).into()),
        };
        match name.as_str() {
            "createStream" => self.handle_create_stream(txid),
            "releaseStream" => self.send_result(txid, vec![Amf0Value::Null]),
            "FCPublish" | "FCUnpublish" => {
                // Encoders wait for this notice before publishing (OBS, FMLE).
                let (reply, code) = if name == "FCPublish" {
                    ("onFCPublish", "NetStream.Publish.Start")
                } else {
                    ("onFCUnpublish", "NetStream.Unpublish.Success")
                };
                // The name is echoed back: bounded, so that the reply
                // never grows with what the client sent (case 43).
                let stream = rest
                    .first()
                    .and_then(|v| v.as_str())
                    .map(|s| truncated(s, MAX_ECHOED_LEN))
                    .unwrap_or_default()
                    .to_owned();
                self.send_command(
                    0,
                    &[
                        Amf0Value::string(reply),
                        Amf0Value::Number(0.0),
                        Amf0Value::Null,
                        Amf0Value::object([
                            ("code", Amf0Value::string(code)),
                            ("description", Amf0Value::string(stream)),
                        ]),
                    ],
                );
            }
            "publish" => {
                let raw = match rest.first().and_then(|v| v.as_str()) {
                    Some(s) => s.to_owned(),
                    None => return Err(bad(&name, "stream name is not a string")),
                };
                let publish_type = rest
                    .get(1)
                    .and_then(|v| v.as_str())
                    .unwrap_or("live")
                    .to_owned();
                let slot = self.slot_for(&name, msg_stream)?;
                if slot.role != StreamRole::Idle {
                    return Err(bad(
                        &name,
                        "message stream is already publishing or playing",
                    ));
                }
                slot.role = StreamRole::AwaitingPublishDecision;
                match split_name(&raw, &app_query) {
                    Some((stream, query)) => {
                        self.events
                            .push_back(Event::PublishRequested(PublishRequest {
                                stream_id: msg_stream,
                                app,
                                name: stream,
                                query,
                                publish_type,
                            }))
                    }
                    None => self.reject_publish(msg_stream, PublishRejection::BadName),
                }
            }
            "play" => {
                let raw = match rest.first().and_then(|v| v.as_str()) {
                    Some(s) => s.to_owned(),
                    None => return Err(bad(&name, "stream name is not a string")),
                };
                let start = rest.get(1).and_then(|v| v.as_number()).unwrap_or(-2.0);
                let duration = rest.get(2).and_then(|v| v.as_number()).unwrap_or(-1.0);
                let reset = rest.get(3).and_then(|v| v.as_bool()).unwrap_or(true);
                self.request_play(
                    &name, msg_stream, app, &app_query, &raw, start, duration, reset,
                )?;
            }
            "play2" => {
                let params = rest.first();
                let raw = match params
                    .and_then(|p| p.get("streamName"))
                    .and_then(|v| v.as_str())
                {
                    Some(s) => s.to_owned(),
                    None => return Err(bad(&name, "parameters carry no streamName")),
                };
                let start = params
                    .and_then(|p| p.get("start"))
                    .and_then(|v| v.as_number())
                    .unwrap_or(-2.0);
                let duration = params
                    .and_then(|p| p.get("len"))
                    .and_then(|v| v.as_number())
                    .unwrap_or(-1.0);
                self.request_play(
                    &name, msg_stream, app, &app_query, &raw, start, duration, true,
                )?;
            }
            "deleteStream" => {
                let id = rest
                    .first()
                    .and_then(|v| v.as_number())
                    .unwrap_or(f64::from(msg_stream));
                // Out-of-range ids name no stream; `as` saturates, never panics.
                self.close_stream(id as u32, true);
            }
            "closeStream" => self.close_stream(msg_stream, false),
            "pause" => {
                let paused = rest.first().and_then(|v| v.as_bool()).unwrap_or(true);
                let position_ms = rest
                    .get(1)
                    .and_then(|v| v.as_number())
                    .filter(|n| n.is_finite() && *n >= 0.0)
                    .unwrap_or(0.0);
                if self.stream_role(msg_stream) == Some(StreamRole::Playing) {
                    let (code, text) = if paused {
                        ("NetStream.Pause.Notify", "Paused.")
                    } else {
                        ("NetStream.Unpause.Notify", "Unpaused.")
                    };
                    self.send_status(msg_stream, "status", code, text);
                    self.events.push_back(Event::Pause {
                        stream_id: msg_stream,
                        paused,
                        position_ms,
                    });
                }
            }
            "receiveAudio" | "receiveVideo" => {
                let enabled = rest.first().and_then(|v| v.as_bool()).unwrap_or(true);
                let kind = if name == "receiveAudio" {
                    MediaKind::Audio
                } else {
                    MediaKind::Video
                };
                if self.stream_role(msg_stream) == Some(StreamRole::Playing) {
                    self.events.push_back(Event::Receive {
                        stream_id: msg_stream,
                        kind,
                        enabled,
                    });
                }
            }
            "seek" => {
                let position_ms = rest
                    .first()
                    .and_then(|v| v.as_number())
                    .filter(|n| n.is_finite())
                    .unwrap_or(0.0)
                    .max(0.0);
                match self.stream_role(msg_stream) {
                    // The server knows whether the stream is recorded.
                    Some(StreamRole::Playing) => self.events.push_back(Event::Seek {
                        stream_id: msg_stream,
                        position_ms,
                    }),
                    Some(_) => self.seek_failed(msg_stream),
                    None => {}
                }
            }
            "getStreamLength" => {
                self.send_result(txid, vec![Amf0Value::Null, Amf0Value::Number(0.0)])
            }
            // Replies to calls we never make, and notifications without a transaction.
            "_result" | "_error" | "onStatus" | "onBWDone" => {}
            _ => {
                // An unknown call with a transaction id (`_checkbw`, say) gets
                // `_result` null, never silence: some clients wait for it.
                if txid != 0.0 {
                    self.send_result(txid, vec![Amf0Value::Null]);
                }
            }
        }
        Ok(())
    }

    fn handle_connect(
        &mut self,
        txid: f64,
        command_object: Option<Amf0Value>,
    ) -> Result<(), SessionError> {
        if self.is_connected() {
            return Err(ProtocolError::ConnectTwice.into());
        }
        let obj = command_object.unwrap_or(Amf0Value::Null);
        let raw_app = match obj.get("app").and_then(|v| v.as_str()) {
            Some(a) => a.to_owned(),
            None => return Err(bad("connect", "command object has no app string")),
        };
        let tc_url = obj
            .get("tcUrl")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        self.object_encoding = obj
            .get("objectEncoding")
            .and_then(|v| v.as_number())
            .unwrap_or(0.0);
        let (app, app_query) = match raw_app.split_once('?') {
            Some((a, q)) => (a, q),
            None => (raw_app.as_str(), ""),
        };
        let Ok(app) = AppName::new(app.trim_end_matches('/')) else {
            self.send_command(
                0,
                &[
                    Amf0Value::string("_error"),
                    Amf0Value::Number(txid),
                    Amf0Value::Null,
                    Amf0Value::object([
                        ("level", Amf0Value::string("error")),
                        ("code", Amf0Value::string("NetConnection.Connect.Rejected")),
                        (
                            "description",
                            Amf0Value::string("Invalid application name."),
                        ),
                    ]),
                ],
            );
            return Err(bad("connect", "invalid application name"));
        };
        let app_query = app_query.to_owned();
        if self.config.connect_decision {
            self.events.push_back(Event::ConnectRequested {
                app: app.clone(),
                tc_url: tc_url.clone(),
                query: app_query.clone(),
            });
            self.state = State::ConnectPending(Box::new(PendingConnect {
                txid,
                obj,
                app,
                app_query,
                tc_url,
            }));
            return Ok(());
        }
        self.finish_connect(PendingConnect {
            txid,
            obj,
            app,
            app_query,
            tc_url,
        });
        Ok(())
    }

    /// The `connect` waiting for a decision may go ahead:
    /// NetConnection.Connect.Success.
    pub fn accept_connect(&mut self) {
        if let State::ConnectPending(_) = self.state {
            let State::ConnectPending(p) =
                std::mem::replace(&mut self.state, State::AwaitingConnect)
            else {
                unreachable!()
            };
            self.finish_connect(*p);
        }
    }

    /// The `connect` waiting for a decision is refused:
    /// NetConnection.Connect.Rejected. The server should close the
    /// connection once that is sent.
    pub fn reject_connect(&mut self) {
        if let State::ConnectPending(p) = &self.state {
            let txid = p.txid;
            self.state = State::AwaitingConnect;
            self.send_command(
                0,
                &[
                    Amf0Value::string("_error"),
                    Amf0Value::Number(txid),
                    Amf0Value::Null,
                    Amf0Value::object([
                        ("level", Amf0Value::string("error")),
                        ("code", Amf0Value::string("NetConnection.Connect.Rejected")),
                        ("description", Amf0Value::string("Not authorized.")),
                    ]),
                ],
            );
        }
    }

    fn finish_connect(&mut self, p: PendingConnect) {
        let PendingConnect {
            txid,
            obj,
            app,
            app_query,
            tc_url,
        } = p;
        self.our_window = self.config.window_ack_size;
        self.send(&message::window_ack_size(self.config.window_ack_size));
        self.send(&message::set_peer_bandwidth(self.config.window_ack_size, 2));
        self.send(&message::set_chunk_size(self.config.chunk_size));
        self.encoder.set_chunk_size(self.config.chunk_size);
        self.caps = ClientCaps::from_connect(&obj);
        let mut properties = vec![
            ("fmsVer", Amf0Value::string("FMS/3,0,1,123")),
            ("capabilities", Amf0Value::Number(31.0)),
        ];
        if self.caps.is_enhanced() {
            // Answer an Enhanced RTMP client with what Sluice forwards:
            // every codec (it never decodes), and the capsEx bits it honours.
            let forward_any = || {
                Amf0Value::object([("*", Amf0Value::Number(f64::from(fourcc_info::CAN_FORWARD)))])
            };
            properties.extend([
                (
                    "fourCcList",
                    Amf0Value::StrictArray(vec![Amf0Value::string("*")]),
                ),
                ("videoFourCcInfoMap", forward_any()),
                ("audioFourCcInfoMap", forward_any()),
                ("capsEx", Amf0Value::Number(f64::from(caps_ex::SERVER))),
            ]);
        }
        let properties = Amf0Value::object(properties);
        let information = Amf0Value::object([
            ("level", Amf0Value::string("status")),
            ("code", Amf0Value::string("NetConnection.Connect.Success")),
            ("description", Amf0Value::string("Connection succeeded.")),
            ("objectEncoding", Amf0Value::Number(self.object_encoding)),
        ]);
        self.send_result(txid, vec![properties, information]);
        self.events.push_back(Event::Connected {
            app: app.clone(),
            tc_url,
        });
        self.state = State::Connected { app, app_query };
    }

    fn handle_create_stream(&mut self, txid: f64) {
        if self.streams.len() as u32 >= self.config.max_message_streams {
            self.send_command(
                0,
                &[
                    Amf0Value::string("_error"),
                    Amf0Value::Number(txid),
                    Amf0Value::Null,
                    Amf0Value::object([
                        ("level", Amf0Value::string("error")),
                        ("code", Amf0Value::string("NetConnection.Call.Failed")),
                        (
                            "description",
                            Amf0Value::string("Too many streams on this connection."),
                        ),
                    ]),
                ],
            );
            return;
        }
        // Lowest free id from 1: players usually get 1, the id every shared
        // media wire form is built for.
        let id = (1..)
            .find(|id| !self.streams.iter().any(|s| s.id == *id))
            .unwrap_or(1);
        self.streams.push(StreamSlot {
            id,
            role: StreamRole::Idle,
        });
        self.send_result(
            txid,
            vec![Amf0Value::Null, Amf0Value::Number(f64::from(id))],
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn request_play(
        &mut self,
        command: &str,
        msg_stream: u32,
        app: AppName,
        app_query: &str,
        raw: &str,
        start: f64,
        duration: f64,
        reset: bool,
    ) -> Result<(), SessionError> {
        let slot = self.slot_for(command, msg_stream)?;
        if slot.role != StreamRole::Idle {
            return Err(bad(
                command,
                "message stream is already publishing or playing",
            ));
        }
        slot.role = StreamRole::AwaitingPlayDecision;
        match split_name(raw, app_query) {
            Some((name, query)) => self.events.push_back(Event::PlayRequested(PlayRequest {
                stream_id: msg_stream,
                app,
                name,
                query,
                start,
                duration,
                reset,
            })),
            None => self.reject_play(msg_stream, PlayRejection::StreamNotFound),
        }
        Ok(())
    }

    fn slot_for(&mut self, command: &str, stream_id: u32) -> Result<&mut StreamSlot, SessionError> {
        self.streams
            .iter_mut()
            .find(|s| s.id == stream_id)
            .ok_or_else(|| {
                ProtocolError::UnknownStream {
                    command: command.to_owned(),
                    stream_id,
                }
                .into()
            })
    }

    fn stream_role(&self, stream_id: u32) -> Option<StreamRole> {
        self.streams
            .iter()
            .find(|s| s.id == stream_id)
            .map(|s| s.role.clone())
    }

    fn close_stream(&mut self, stream_id: u32, delete: bool) {
        let Some(pos) = self.streams.iter().position(|s| s.id == stream_id) else {
            return;
        };
        match self.streams[pos].role {
            StreamRole::Publishing | StreamRole::AwaitingPublishDecision => {
                self.events.push_back(Event::PublishStopped { stream_id })
            }
            StreamRole::Playing | StreamRole::AwaitingPlayDecision => {
                self.events.push_back(Event::PlayStopped { stream_id })
            }
            StreamRole::Idle => {}
        }
        if delete {
            self.streams.remove(pos);
        } else {
            self.streams[pos].role = StreamRole::Idle;
        }
    }
}

fn bad(name: &str, reason: &'static str) -> SessionError {
    ProtocolError::BadCommand {
        name: name.to_owned(),
        reason,
    }
    .into()
}

/// Splits `name?query` and validates the name; the app's query (from
/// connect) is joined to the stream's so access control sees both.
fn split_name(raw: &str, app_query: &str) -> Option<(StreamName, String)> {
    let (name, query) = raw.split_once('?').unwrap_or((raw, ""));
    let name = StreamName::new(name).ok()?;
    let query = match (app_query.is_empty(), query.is_empty()) {
        (true, _) => query.to_owned(),
        (false, true) => app_query.to_owned(),
        (false, false) => format!("{app_query}&{query}"),
    };
    Some((name, query))
}

/// `@setDataFrame` is the publisher asking the server to keep a data frame:
/// drop that first string and forward the rest (`onMetaData`, {...}) as is.
/// The slice keeps the payload zero-copy.
fn strip_set_data_frame(payload: Bytes) -> Bytes {
    const NAME: &[u8] = b"@setDataFrame";
    // AMF0 string marker, u16 length, then the bytes.
    let prefix_len = 3 + NAME.len();
    if payload.len() >= prefix_len
        && payload[0] == 0x02
        && payload[1..3] == (NAME.len() as u16).to_be_bytes()
        && &payload[3..prefix_len] == NAME
    {
        payload.slice(prefix_len..)
    } else {
        payload
    }
}

/// The burst a publisher may send at once: [`MEDIA_BURST_SECS`] seconds of
/// its rate (at least one message).
fn config_burst(config: &SessionConfig) -> f64 {
    f64::from(config.max_media_rate.max(1)) * f64::from(MEDIA_BURST_SECS)
}

/// `s` cut to at most `max` bytes, at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// True when a data payload is `onMetaData` (what a late joiner must get).
pub fn is_metadata(payload: &[u8]) -> bool {
    const NAME: &[u8] = b"onMetaData";
    payload.len() >= 3 + NAME.len()
        && payload[0] == 0x02
        && payload[1..3] == (NAME.len() as u16).to_be_bytes()
        && &payload[3..3 + NAME.len()] == NAME
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::Codec;

    fn connect_object(extra: Vec<(&str, Amf0Value)>) -> Amf0Value {
        let mut props = vec![("app", Amf0Value::string("live"))];
        props.extend(extra);
        Amf0Value::object(props)
    }

    #[test]
    fn legacy_connect_announces_nothing() {
        let caps = ClientCaps::from_connect(&connect_object(vec![(
            "videoCodecs",
            Amf0Value::Number(252.0),
        )]));
        assert_eq!(caps, ClientCaps::default());
        assert!(!caps.is_enhanced());
    }

    #[test]
    fn reads_fourcc_list_info_maps_and_caps_ex() {
        let caps = ClientCaps::from_connect(&connect_object(vec![
            (
                "fourCcList",
                Amf0Value::StrictArray(vec![
                    Amf0Value::string("hvc1"),
                    Amf0Value::string("Opus"),
                    Amf0Value::string("toolong"), // not a FourCC: ignored
                    Amf0Value::Number(1.0),       // not a string: ignored
                ]),
            ),
            (
                "videoFourCcInfoMap",
                Amf0Value::object([
                    ("av01", Amf0Value::Number(1.0)), // CanDecode
                    ("vp09", Amf0Value::Number(2.0)), // CanEncode only: not taken
                    ("vvc1", Amf0Value::Number(4.0)), // CanForward
                ]),
            ),
            (
                "audioFourCcInfoMap",
                Amf0Value::EcmaArray(vec![("fLaC".into(), Amf0Value::Number(5.0))]),
            ),
            ("capsEx", Amf0Value::Number(3.0)),
        ]));
        let set = caps.fourccs.clone().expect("announced");
        for c in [
            Codec::Hevc,
            Codec::Opus,
            Codec::Av1,
            Codec::Vvc,
            Codec::Flac,
        ] {
            assert!(set.contains(c), "{c}");
        }
        for c in [Codec::Vp9, Codec::Avc, Codec::Aac, Codec::FourCc(*b"xxxx")] {
            assert!(!set.contains(c), "{c}");
        }
        assert_eq!(caps.caps_ex, Some(3));
        assert!(caps.has(caps_ex::RECONNECT) && caps.has(caps_ex::MULTITRACK));
        assert!(!caps.has(caps_ex::MOD_EX));
    }

    #[test]
    fn wildcard_in_an_info_map_admits_everything() {
        let caps = ClientCaps::from_connect(&connect_object(vec![(
            "videoFourCcInfoMap",
            Amf0Value::object([("*", Amf0Value::Number(4.0))]),
        )]));
        let set = caps.fourccs.unwrap();
        assert!(set.is_wildcard() && set.contains(Codec::FourCc(*b"abcd")));
        assert_eq!(caps.caps_ex, None);
    }

    #[test]
    fn wrong_types_and_values_are_ignored() {
        let caps = ClientCaps::from_connect(&connect_object(vec![
            ("fourCcList", Amf0Value::string("hvc1")),
            ("videoFourCcInfoMap", Amf0Value::Number(1.0)),
            ("capsEx", Amf0Value::Number(f64::NAN)),
        ]));
        assert_eq!(caps, ClientCaps::default());
        let caps =
            ClientCaps::from_connect(&connect_object(vec![("capsEx", Amf0Value::Number(-1.0))]));
        assert_eq!(caps.caps_ex, None);
    }
}
