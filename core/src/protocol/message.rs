//! RTMP message types and the small messages the session reads and writes
//! itself: protocol control (spec 5.4), user control (spec 6.2, 7.1.7) and
//! aggregate messages (spec 7.1.6).

use super::chunk::{ChunkDecoder, ChunkError, Message};
use bytes::{BufMut, Bytes, BytesMut};
use std::fmt;

/// Message type ids (spec 5.4, 7.1).
pub mod type_id {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const SHARED_OBJECT_AMF3: u8 = 16;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const SHARED_OBJECT_AMF0: u8 = 19;
    pub const COMMAND_AMF0: u8 = 20;
    pub const AGGREGATE: u8 = 22;
}

/// Chunk stream ids Sluice writes on. Every message Sluice writes starts with
/// a type-0 header (see `chunk::wire_form`), so shared media forms and
/// per-connection replies may use the same csid without tracking state.
pub mod csid {
    /// Protocol control and user control messages (spec 5.4: csid 2).
    pub const PROTOCOL_CONTROL: u32 = 2;
    /// Connection-level command replies (`_result`, `onFCPublish`).
    pub const COMMAND: u32 = 3;
    /// Stream-level commands and data: onStatus, `|RtmpSampleAccess`, onMetaData.
    pub const STREAM_DATA: u32 = 5;
    pub const AUDIO: u32 = 6;
    pub const VIDEO: u32 = 7;
}

/// User control event types (spec 7.1.7).
pub mod user_control {
    pub const STREAM_BEGIN: u16 = 0;
    pub const STREAM_EOF: u16 = 1;
    pub const STREAM_DRY: u16 = 2;
    pub const SET_BUFFER_LENGTH: u16 = 3;
    pub const STREAM_IS_RECORDED: u16 = 4;
    pub const PING_REQUEST: u16 = 6;
    pub const PING_RESPONSE: u16 = 7;
}

/// A malformed control or aggregate message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageError {
    /// The payload is shorter than the message type requires.
    Truncated {
        type_id: u8,
        len: usize,
        needed: usize,
    },
    /// An aggregate sub-message header declares more bytes than remain.
    AggregateOverrun {
        offset: usize,
        declared: usize,
        remaining: usize,
    },
}

impl fmt::Display for MessageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { type_id, len, needed } => write!(
                f,
                "message type {type_id} has {len} payload bytes, needs {needed}"
            ),
            Self::AggregateOverrun {
                offset,
                declared,
                remaining,
            } => write!(
                f,
                "aggregate sub-message at offset {offset} declares {declared} bytes, {remaining} remain"
            ),
        }
    }
}

impl std::error::Error for MessageError {}

/// Why a Set Chunk Size or Abort message could not be applied: its payload
/// is short, or the chunk size it asks for is invalid. The session reports
/// each as it reports any other message or chunk stream error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The payload is malformed.
    Message(MessageError),
    /// The decoder refused the value (a chunk size of 0 or with the top bit set).
    Chunk(ChunkError),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Message(e) => e.fmt(f),
            Self::Chunk(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ControlError {}

impl From<MessageError> for ControlError {
    fn from(e: MessageError) -> Self {
        Self::Message(e)
    }
}

impl From<ChunkError> for ControlError {
    fn from(e: ChunkError) -> Self {
        Self::Chunk(e)
    }
}

/// Reads the big-endian u32 at the start of a control message payload.
pub fn read_u32(type_id: u8, payload: &[u8]) -> Result<u32, MessageError> {
    match payload.get(..4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(MessageError::Truncated {
            type_id,
            len: payload.len(),
            needed: 4,
        }),
    }
}

/// A user control event (spec 7.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserControl {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength {
        stream_id: u32,
        millis: u32,
    },
    StreamIsRecorded(u32),
    PingRequest(u32),
    PingResponse(u32),
    /// An event type this server does not act on (e.g. Flash's SWF verification).
    Other(u16),
}

impl UserControl {
    /// Decodes a user control message payload.
    pub fn decode(payload: &[u8]) -> Result<Self, MessageError> {
        let truncated = |needed| MessageError::Truncated {
            type_id: type_id::USER_CONTROL,
            len: payload.len(),
            needed,
        };
        let event = match payload.get(..2) {
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => return Err(truncated(2)),
        };
        let word = |at: usize| -> Result<u32, MessageError> {
            payload
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(truncated(at + 4))
        };
        use user_control::*;
        Ok(match event {
            STREAM_BEGIN => Self::StreamBegin(word(2)?),
            STREAM_EOF => Self::StreamEof(word(2)?),
            STREAM_DRY => Self::StreamDry(word(2)?),
            SET_BUFFER_LENGTH => Self::SetBufferLength {
                stream_id: word(2)?,
                millis: word(6)?,
            },
            STREAM_IS_RECORDED => Self::StreamIsRecorded(word(2)?),
            PING_REQUEST => Self::PingRequest(word(2)?),
            PING_RESPONSE => Self::PingResponse(word(2)?),
            other => Self::Other(other),
        })
    }

    /// Encodes the event as a user control message payload.
    pub fn encode(&self) -> Bytes {
        use user_control::*;
        let mut b = BytesMut::with_capacity(10);
        let (event, a, extra) = match *self {
            Self::StreamBegin(s) => (STREAM_BEGIN, s, None),
            Self::StreamEof(s) => (STREAM_EOF, s, None),
            Self::StreamDry(s) => (STREAM_DRY, s, None),
            Self::SetBufferLength { stream_id, millis } => {
                (SET_BUFFER_LENGTH, stream_id, Some(millis))
            }
            Self::StreamIsRecorded(s) => (STREAM_IS_RECORDED, s, None),
            Self::PingRequest(t) => (PING_REQUEST, t, None),
            Self::PingResponse(t) => (PING_RESPONSE, t, None),
            Self::Other(e) => (e, 0, None),
        };
        b.put_u16(event);
        b.put_u32(a);
        if let Some(x) = extra {
            b.put_u32(x);
        }
        b.freeze()
    }
}

/// Applies a Set Chunk Size (1) or Abort (2) message to the decoder that
/// read it: both change how the following chunks are read, so the caller
/// applies them before decoding the next message.
pub fn apply_chunk_control(decoder: &mut ChunkDecoder, msg: &Message) -> Result<(), ControlError> {
    let value = read_u32(msg.type_id, &msg.payload)?;
    match msg.type_id {
        type_id::SET_CHUNK_SIZE => decoder.set_chunk_size(value)?,
        type_id::ABORT => decoder.abort(value),
        _ => {}
    }
    Ok(())
}

/// A protocol control message on csid 2, message stream 0 (spec 5.4).
pub fn control(type_id: u8, payload: Bytes) -> Message {
    Message {
        csid: csid::PROTOCOL_CONTROL,
        timestamp: 0,
        type_id,
        stream_id: 0,
        payload,
    }
}

fn u32_payload(v: u32) -> Bytes {
    Bytes::copy_from_slice(&v.to_be_bytes())
}

/// Set Chunk Size (spec 5.4.1).
pub fn set_chunk_size(size: u32) -> Message {
    control(type_id::SET_CHUNK_SIZE, u32_payload(size & 0x7FFF_FFFF))
}

/// Acknowledgement with the (wrapping) count of bytes received (spec 5.4.3).
pub fn acknowledgement(sequence: u32) -> Message {
    control(type_id::ACKNOWLEDGEMENT, u32_payload(sequence))
}

/// Window Acknowledgement Size (spec 5.4.4).
pub fn window_ack_size(size: u32) -> Message {
    control(type_id::WINDOW_ACK_SIZE, u32_payload(size))
}

/// Set Peer Bandwidth (spec 5.4.5); limit 0 hard, 1 soft, 2 dynamic.
pub fn set_peer_bandwidth(size: u32, limit: u8) -> Message {
    let mut b = BytesMut::with_capacity(5);
    b.put_u32(size);
    b.put_u8(limit);
    control(type_id::SET_PEER_BANDWIDTH, b.freeze())
}

/// A user control message (spec 6.2).
pub fn user_control(event: UserControl) -> Message {
    control(type_id::USER_CONTROL, event.encode())
}

/// Size of an FLV tag header inside an aggregate message.
const AGGREGATE_TAG_HEADER: usize = 11;
/// Size of the back pointer after each sub-message.
const AGGREGATE_BACK_POINTER: usize = 4;

/// Splits an aggregate message (spec 7.1.6) into its sub-messages, without
/// copying: each payload is a slice of the aggregate's payload. Sub-message
/// timestamps are rebased so the first one has the aggregate's timestamp.
/// Sub-messages carry the aggregate's csid and message stream id.
pub fn split_aggregate(msg: &Message) -> Result<Vec<Message>, MessageError> {
    aggregate_parts(msg).collect()
}

/// A sub-message this much smaller than its aggregate is copied out of it,
/// so that a small frame kept for long (a GOP cache, a player's queue)
/// does not keep the whole aggregate's buffer alive (docs/hardening.md
/// case 41).
const COPY_WHEN_SMALLER_BY: usize = 4;

/// The sub-messages of an aggregate, one at a time (see
/// [`split_aggregate`]): nothing is allocated for sub-messages not yet
/// taken, so a caller that stops at an error or a limit has spent nothing
/// on the rest. After an error the iterator ends.
pub fn aggregate_parts(msg: &Message) -> AggregateParts<'_> {
    AggregateParts {
        msg,
        at: 0,
        first_ts: None,
        failed: false,
    }
}

/// See [`aggregate_parts`].
#[derive(Debug)]
pub struct AggregateParts<'a> {
    msg: &'a Message,
    at: usize,
    first_ts: Option<u32>,
    failed: bool,
}

impl Iterator for AggregateParts<'_> {
    type Item = Result<Message, MessageError>;

    fn next(&mut self) -> Option<Self::Item> {
        let msg = self.msg;
        let p = &msg.payload;
        let at = self.at;
        if self.failed || at >= p.len() {
            return None;
        }
        let remaining = p.len() - at;
        if remaining < AGGREGATE_TAG_HEADER {
            self.failed = true;
            return Some(Err(MessageError::Truncated {
                type_id: type_id::AGGREGATE,
                len: p.len(),
                needed: at + AGGREGATE_TAG_HEADER,
            }));
        }
        let h = &p[at..at + AGGREGATE_TAG_HEADER];
        let sub_type = h[0];
        let size = u32::from_be_bytes([0, h[1], h[2], h[3]]) as usize;
        let ts = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
        let body_start = at + AGGREGATE_TAG_HEADER;
        let after = remaining - AGGREGATE_TAG_HEADER;
        if size > after {
            self.failed = true;
            return Some(Err(MessageError::AggregateOverrun {
                offset: at,
                declared: size,
                remaining: after,
            }));
        }
        let base = *self.first_ts.get_or_insert(ts);
        let body = body_start..body_start + size;
        let payload = if size.saturating_mul(COPY_WHEN_SMALLER_BY) < p.len() {
            Bytes::copy_from_slice(&p[body])
        } else {
            p.slice(body)
        };
        // The back pointer is optional at the very end (some muxers omit it).
        self.at = (body_start + size + AGGREGATE_BACK_POINTER).min(p.len());
        Some(Ok(Message {
            csid: msg.csid,
            timestamp: msg.timestamp.wrapping_add(ts.wrapping_sub(base)),
            type_id: sub_type,
            stream_id: msg.stream_id,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_control_ping_round_trips() {
        for e in [
            UserControl::PingRequest(0xDEAD_BEEF),
            UserControl::PingResponse(7),
            UserControl::StreamBegin(1),
            UserControl::StreamEof(1),
            UserControl::SetBufferLength {
                stream_id: 1,
                millis: 3000,
            },
        ] {
            assert_eq!(UserControl::decode(&e.encode()), Ok(e));
        }
    }

    #[test]
    fn user_control_set_buffer_length_needs_ten_bytes() {
        let p = [
            0x00, 0x03, // SetBufferLength
            0x00, 0x00, 0x00, 0x01, // stream id 1
            0x00, 0x00, // millis, truncated
        ];
        assert!(matches!(
            UserControl::decode(&p),
            Err(MessageError::Truncated { needed: 10, .. })
        ));
    }

    #[test]
    fn rejects_truncated_control_word() {
        assert!(read_u32(type_id::SET_CHUNK_SIZE, &[0, 0, 1]).is_err());
        assert_eq!(read_u32(type_id::SET_CHUNK_SIZE, &[0, 0, 16, 0]), Ok(4096));
    }

    fn tag(type_id: u8, ts: u32, body: &[u8]) -> Vec<u8> {
        let mut v = vec![type_id];
        v.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        v.extend_from_slice(&ts.to_be_bytes()[1..]); // low 24 bits
        v.push((ts >> 24) as u8); // extension byte
        v.extend_from_slice(&[0, 0, 0]); // stream id
        v.extend_from_slice(body);
        v.extend_from_slice(&((body.len() + 11) as u32).to_be_bytes());
        v
    }

    /// docs/hardening.md case 41: a sub-message far smaller than its
    /// aggregate is copied out, so that it does not keep the aggregate alive.
    #[test]
    fn aggregate_copies_sub_messages_much_smaller_than_itself() {
        let mut payload = tag(9, 0, &[7u8; 1000]);
        payload.extend(tag(8, 20, b"au"));
        let msg = Message {
            csid: 7,
            timestamp: 0,
            type_id: type_id::AGGREGATE,
            stream_id: 1,
            payload: Bytes::from(payload),
        };
        let subs: Vec<Message> = aggregate_parts(&msg).map(Result::unwrap).collect();
        let base = msg.payload.as_ptr() as usize;
        let inside = |m: &Message| {
            let p = m.payload.as_ptr() as usize;
            p >= base && p < base + msg.payload.len()
        };
        assert!(inside(&subs[0]), "most of the aggregate: a slice");
        assert!(!inside(&subs[1]), "2 bytes of 1,030: a copy");
        assert_eq!(&subs[1].payload[..], b"au");
    }

    #[test]
    fn aggregate_splits_and_rebases_timestamps_without_copying() {
        let mut payload = tag(9, 1000, &[b'a'; 100]);
        payload.extend(tag(8, 1020, &[b'u'; 100]));
        payload.extend(tag(9, 1040, &[b'b'; 100]));
        let msg = Message {
            csid: 7,
            timestamp: 5000,
            type_id: type_id::AGGREGATE,
            stream_id: 1,
            payload: Bytes::from(payload),
        };
        let subs = split_aggregate(&msg).unwrap();
        assert_eq!(subs.len(), 3);
        assert_eq!(
            subs.iter().map(|m| m.timestamp).collect::<Vec<_>>(),
            [5000, 5020, 5040]
        );
        assert_eq!(subs[1].type_id, 8);
        assert_eq!(&subs[2].payload[..], &[b'b'; 100]);
        let base = msg.payload.as_ptr() as usize;
        let p = subs[0].payload.as_ptr() as usize;
        assert!(
            p >= base && p < base + msg.payload.len(),
            "payload is a slice"
        );
    }

    #[test]
    fn aggregate_with_overlong_sub_message_is_an_error() {
        let mut payload = tag(9, 0, b"abc");
        payload[3] = 200; // declared size 200 > remaining
        let msg = Message {
            csid: 7,
            timestamp: 0,
            type_id: type_id::AGGREGATE,
            stream_id: 1,
            payload: Bytes::from(payload),
        };
        assert!(matches!(
            split_aggregate(&msg),
            Err(MessageError::AggregateOverrun { declared: 200, .. })
        ));
    }

    #[test]
    fn chunk_control_errors_say_which_part_failed() {
        let mut decoder = ChunkDecoder::new(Default::default());
        let short = control(type_id::SET_CHUNK_SIZE, Bytes::from_static(&[0, 0]));
        assert!(matches!(
            apply_chunk_control(&mut decoder, &short),
            Err(ControlError::Message(MessageError::Truncated {
                needed: 4,
                ..
            }))
        ));
        let zero = set_chunk_size(0);
        assert_eq!(
            apply_chunk_control(&mut decoder, &zero),
            Err(ControlError::Chunk(ChunkError::InvalidChunkSize { raw: 0 }))
        );
        apply_chunk_control(&mut decoder, &set_chunk_size(4096)).unwrap();
    }
}
