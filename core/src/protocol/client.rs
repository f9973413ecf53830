//! The client side of an RTMP connection, sans-IO: handshake, connect,
//! createStream, publish or play, media in either direction. Used by the
//! tests, the load generator and (later) relays; the same chunk reader and
//! writer as the server.
//!
//! ```text
//!   Handshaking ──S2──► AwaitingConnectResult ──_result──► Connected
//! ```
//! `connect` is sent as soon as the handshake completes. Stream commands
//! (`create_stream`, `publish`, `play`) may be called once `Connected` has
//! been reported.

use super::amf::{self, Amf0Value, AmfLimits};
use super::chunk::{
    ChunkDecoder, ChunkEncoder, ChunkLimits, EncodeError, Message, DEFAULT_OUTBOUND_CHUNK_SIZE,
};
use super::handshake::{ClientHandshake, HandshakeProgress};
use super::message::{self, csid, type_id, UserControl};
use super::session::{MediaKind, ProtocolError, SessionError, DEFAULT_WINDOW_ACK_SIZE};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;

/// What the client tells its driver.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The server accepted `connect`.
    Connected,
    /// `createStream` answered with this message stream id.
    StreamCreated { stream_id: u32 },
    /// An onStatus (`NetStream.Play.Start`, `NetStream.Publish.BadName`...).
    Status {
        stream_id: u32,
        level: String,
        code: String,
    },
    /// Audio, video or data from the server.
    Media {
        stream_id: u32,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    },
    /// A user control event (StreamBegin, StreamEOF...).
    UserControl(UserControl),
    /// The server acknowledged this many bytes (wrapping at 2^32).
    Acknowledgement(u32),
    /// Any other command (`onFCPublish`, `_error`...), with its arguments.
    Command { name: String, args: Vec<Amf0Value> },
}

/// Settings for one client connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub app: String,
    pub tc_url: String,
    /// Chunk size the client announces and writes with.
    pub chunk_size: u32,
    /// Window Acknowledgement Size the client announces (0: none).
    pub window_ack_size: u32,
    /// Enhanced RTMP `fourCcList` to announce in `connect` (empty: none).
    pub fourcc_list: Vec<String>,
    /// Enhanced RTMP `capsEx` to announce in `connect`.
    pub caps_ex: Option<u8>,
}

impl ClientConfig {
    /// `app` on `tc_url`, with the chunk size and window the server side
    /// uses ([`DEFAULT_OUTBOUND_CHUNK_SIZE`], [`DEFAULT_WINDOW_ACK_SIZE`]).
    pub fn new(app: impl Into<String>, tc_url: impl Into<String>) -> Self {
        Self {
            app: app.into(),
            tc_url: tc_url.into(),
            chunk_size: DEFAULT_OUTBOUND_CHUNK_SIZE,
            window_ack_size: DEFAULT_WINDOW_ACK_SIZE,
            fourcc_list: Vec::new(),
            caps_ex: None,
        }
    }
}

enum State {
    Handshaking(Box<ClientHandshake>),
    AwaitingConnectResult,
    Connected,
}

/// See the module documentation.
pub struct ClientSession {
    config: ClientConfig,
    state: State,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    out: BytesMut,
    events: VecDeque<ClientEvent>,
    next_txid: f64,
    /// createStream transactions awaiting their `_result`.
    pending_create: Vec<f64>,
    bytes_received: u64,
    bytes_at_last_ack: u64,
    peer_window: u32,
    /// The properties object of the server's `connect` `_result`.
    connect_properties: Option<Amf0Value>,
    /// The info object of the last `onStatus`.
    last_status: Option<Amf0Value>,
    /// A message could not be encoded: the session ends with this error.
    failed: Option<EncodeError>,
}

impl ClientSession {
    /// Starts a connection: C0+C1 are ready to send at once.
    pub fn new(config: ClientConfig, seed: u64) -> Self {
        let mut hs = ClientHandshake::new(seed);
        let mut out = BytesMut::new();
        hs.start(&mut out);
        Self {
            config,
            state: State::Handshaking(Box::new(hs)),
            decoder: ChunkDecoder::new(ChunkLimits::default()),
            encoder: ChunkEncoder::new(),
            out,
            events: VecDeque::new(),
            next_txid: 2.0,
            pending_create: Vec::new(),
            bytes_received: 0,
            bytes_at_last_ack: 0,
            peer_window: 0,
            connect_properties: None,
            last_status: None,
            failed: None,
        }
    }

    /// The properties object the server answered `connect` with (its
    /// `fmsVer`, and for Enhanced RTMP its `fourCcList`, `capsEx`...).
    pub fn connect_properties(&self) -> Option<&Amf0Value> {
        self.connect_properties.as_ref()
    }

    /// The info object of the last `onStatus` received (its `tcUrl` for a
    /// reconnect request).
    pub fn last_status(&self) -> Option<&Amf0Value> {
        self.last_status.as_ref()
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected)
    }

    /// Bytes received after the handshake.
    pub fn bytes_received(&self) -> u64 {
        self.bytes_received
    }

    /// Consumes what it can of `buf`.
    pub fn handle_input(&mut self, buf: &mut BytesMut) -> Result<(), SessionError> {
        if let Some(e) = self.failed.take() {
            return Err(SessionError::Encode(e));
        }
        if let State::Handshaking(hs) = &mut self.state {
            match hs.handle_input(buf, &mut self.out)? {
                HandshakeProgress::NeedMore => return Ok(()),
                HandshakeProgress::Done => {
                    self.state = State::AwaitingConnectResult;
                    self.send_connect();
                }
            }
        }
        let before = buf.len();
        let result = self.decode_messages(buf);
        self.bytes_received += (before - buf.len()) as u64;
        if self.peer_window > 0
            && self.bytes_received - self.bytes_at_last_ack >= u64::from(self.peer_window)
        {
            self.bytes_at_last_ack = self.bytes_received;
            self.send(&message::acknowledgement(self.bytes_received as u32));
        }
        result
    }

    fn decode_messages(&mut self, buf: &mut BytesMut) -> Result<(), SessionError> {
        while let Some(msg) = self.decoder.decode(buf)? {
            self.handle_message(msg)?;
        }
        Ok(())
    }

    /// Bytes to send, in order.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Queues `msg`; one that cannot be encoded (over 0xFFFFFF bytes) is
    /// not sent, and the session ends with the error at the next
    /// `handle_input` (or [`ClientSession::take_error`]).
    fn send(&mut self, msg: &Message) {
        if let Err(e) = self.encoder.encode(msg, &mut self.out) {
            self.failed.get_or_insert(e);
        }
    }

    /// The error a message that could not be encoded left, if any.
    pub fn take_error(&mut self) -> Option<SessionError> {
        self.failed.take().map(SessionError::Encode)
    }

    /// Sends a command on `stream_id` with a fresh transaction id.
    pub fn send_command(&mut self, stream_id: u32, name: &str, args: &[Amf0Value]) -> f64 {
        let txid = self.next_txid;
        self.next_txid += 1.0;
        self.send_command_with(stream_id, name, txid, args);
        txid
    }

    fn send_command_with(&mut self, stream_id: u32, name: &str, txid: f64, args: &[Amf0Value]) {
        let mut p = BytesMut::new();
        amf::encode(&Amf0Value::string(name), &mut p);
        amf::encode(&Amf0Value::Number(txid), &mut p);
        for a in args {
            amf::encode(a, &mut p);
        }
        let csid = if stream_id == 0 {
            csid::COMMAND
        } else {
            csid::STREAM_DATA
        };
        self.send(&Message {
            csid,
            timestamp: 0,
            type_id: type_id::COMMAND_AMF0,
            stream_id,
            payload: p.freeze(),
        });
    }

    fn send_connect(&mut self) {
        self.send(&message::set_chunk_size(self.config.chunk_size));
        self.encoder.set_chunk_size(self.config.chunk_size);
        if self.config.window_ack_size > 0 {
            self.send(&message::window_ack_size(self.config.window_ack_size));
        }
        let mut props = vec![
            ("app", Amf0Value::string(self.config.app.clone())),
            (
                "flashVer",
                Amf0Value::string("FMLE/3.0 (compatible; sluice)"),
            ),
            ("tcUrl", Amf0Value::string(self.config.tc_url.clone())),
            ("fpad", Amf0Value::Boolean(false)),
            ("capabilities", Amf0Value::Number(15.0)),
            ("audioCodecs", Amf0Value::Number(3191.0)),
            ("videoCodecs", Amf0Value::Number(252.0)),
            ("videoFunction", Amf0Value::Number(1.0)),
            ("objectEncoding", Amf0Value::Number(0.0)),
        ];
        if !self.config.fourcc_list.is_empty() {
            let list = self
                .config
                .fourcc_list
                .iter()
                .map(|f| Amf0Value::string(f.clone()))
                .collect();
            props.push(("fourCcList", Amf0Value::StrictArray(list)));
        }
        if let Some(caps) = self.config.caps_ex {
            props.push(("capsEx", Amf0Value::Number(f64::from(caps))));
        }
        let obj = Amf0Value::object(props);
        self.send_command_with(0, "connect", 1.0, &[obj]);
    }

    /// Asks for a message stream; answered by [`ClientEvent::StreamCreated`].
    pub fn create_stream(&mut self) {
        let txid = self.send_command(0, "createStream", &[Amf0Value::Null]);
        self.pending_create.push(txid);
    }

    /// Publishes `name` (live) on `stream_id`.
    pub fn publish(&mut self, stream_id: u32, name: &str) {
        self.send_command(
            stream_id,
            "publish",
            &[
                Amf0Value::Null,
                Amf0Value::string(name),
                Amf0Value::string("live"),
            ],
        );
    }

    /// Plays `name` (live) on `stream_id`.
    pub fn play(&mut self, stream_id: u32, name: &str) {
        self.send_command(
            stream_id,
            "play",
            &[
                Amf0Value::Null,
                Amf0Value::string(name),
                Amf0Value::Number(-1.0),
            ],
        );
    }

    /// Plays `name` on `stream_id` with play's optional arguments: `start`
    /// (milliseconds into a recorded stream; -2 live or recorded, -1 live
    /// only), `duration` (milliseconds; -1 to the end) and `reset`.
    pub fn play_with(
        &mut self,
        stream_id: u32,
        name: &str,
        start: f64,
        duration: f64,
        reset: bool,
    ) {
        self.send_command(
            stream_id,
            "play",
            &[
                Amf0Value::Null,
                Amf0Value::string(name),
                Amf0Value::Number(start),
                Amf0Value::Number(duration),
                Amf0Value::Boolean(reset),
            ],
        );
    }

    /// Seeks the recorded stream on `stream_id` to `millis`.
    pub fn seek(&mut self, stream_id: u32, millis: f64) {
        self.send_command(
            stream_id,
            "seek",
            &[Amf0Value::Null, Amf0Value::Number(millis)],
        );
    }

    /// Pauses (`paused`) or resumes the stream on `stream_id`; `millis` is
    /// where the player is.
    pub fn pause(&mut self, stream_id: u32, paused: bool, millis: f64) {
        self.send_command(
            stream_id,
            "pause",
            &[
                Amf0Value::Null,
                Amf0Value::Boolean(paused),
                Amf0Value::Number(millis),
            ],
        );
    }

    /// Tells the server how many milliseconds the player buffers on
    /// `stream_id` (User Control SetBufferLength).
    pub fn set_buffer_length(&mut self, stream_id: u32, millis: u32) {
        self.send(&message::user_control(UserControl::SetBufferLength {
            stream_id,
            millis,
        }));
    }

    /// Deletes a message stream (stops publishing or playing on it).
    pub fn delete_stream(&mut self, stream_id: u32) {
        self.send_command(
            0,
            "deleteStream",
            &[Amf0Value::Null, Amf0Value::Number(f64::from(stream_id))],
        );
    }

    /// Sends one audio, video or data message on `stream_id`.
    pub fn send_media(&mut self, stream_id: u32, kind: MediaKind, timestamp: u32, payload: Bytes) {
        self.send(&Message {
            csid: kind.csid(),
            timestamp,
            type_id: kind.type_id(),
            stream_id,
            payload,
        });
    }

    fn handle_message(&mut self, msg: Message) -> Result<(), SessionError> {
        match msg.type_id {
            type_id::SET_CHUNK_SIZE | type_id::ABORT => {
                message::apply_chunk_control(&mut self.decoder, &msg)?
            }
            type_id::ACKNOWLEDGEMENT => {
                let seq = message::read_u32(msg.type_id, &msg.payload)?;
                self.events.push_back(ClientEvent::Acknowledgement(seq));
            }
            type_id::WINDOW_ACK_SIZE => {
                self.peer_window = message::read_u32(msg.type_id, &msg.payload)?;
            }
            type_id::SET_PEER_BANDWIDTH => {
                // Answer a new window with Window Acknowledgement Size
                // (RTMP 1.0 5.4.5); the limit type does not matter to a
                // client that never waits for acknowledgements.
                let window = message::read_u32(msg.type_id, &msg.payload)?;
                if window > 0 && window != self.config.window_ack_size {
                    self.config.window_ack_size = window;
                    self.send(&message::window_ack_size(window));
                }
            }
            type_id::USER_CONTROL => {
                let ev = UserControl::decode(&msg.payload)?;
                if let UserControl::PingRequest(t) = ev {
                    self.send(&message::user_control(UserControl::PingResponse(t)));
                }
                self.events.push_back(ClientEvent::UserControl(ev));
            }
            type_id::AUDIO | type_id::VIDEO | type_id::DATA_AMF0 => {
                let kind = match msg.type_id {
                    type_id::AUDIO => MediaKind::Audio,
                    type_id::VIDEO => MediaKind::Video,
                    _ => MediaKind::Data,
                };
                // Command-like data (|RtmpSampleAccess) is reported as data too.
                self.events.push_back(ClientEvent::Media {
                    stream_id: msg.stream_id,
                    kind,
                    timestamp: msg.timestamp,
                    payload: msg.payload,
                });
            }
            type_id::COMMAND_AMF0 => self.handle_command(&msg.payload, msg.stream_id)?,
            _ => {}
        }
        Ok(())
    }

    fn handle_command(&mut self, payload: &[u8], stream_id: u32) -> Result<(), SessionError> {
        let values = amf::decode_all(payload, &AmfLimits::default())?;
        let mut it = values.into_iter();
        let name = it
            .next()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let txid = it.next().and_then(|v| v.as_number()).unwrap_or(0.0);
        let args: Vec<Amf0Value> = it.collect();
        match name.as_str() {
            "_result" if txid == 1.0 && matches!(self.state, State::AwaitingConnectResult) => {
                self.state = State::Connected;
                self.connect_properties = args.first().cloned();
                self.events.push_back(ClientEvent::Connected);
            }
            "_result" if self.pending_create.contains(&txid) => {
                self.pending_create.retain(|t| *t != txid);
                let id =
                    args.get(1)
                        .and_then(|v| v.as_number())
                        .ok_or(ProtocolError::BadCommand {
                            name: "createStream _result".into(),
                            reason: "no stream id",
                        })?;
                self.events.push_back(ClientEvent::StreamCreated {
                    stream_id: id as u32,
                });
            }
            "onStatus" => {
                let info = args.get(1);
                let field = |k| {
                    info.and_then(|i| i.get(k))
                        .and_then(|v| v.as_str())
                        .unwrap_or_default()
                        .to_owned()
                };
                self.events.push_back(ClientEvent::Status {
                    stream_id,
                    level: field("level"),
                    code: field("code"),
                });
                self.last_status = info.cloned();
            }
            _ => self.events.push_back(ClientEvent::Command { name, args }),
        }
        Ok(())
    }
}
