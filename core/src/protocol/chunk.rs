//! The chunk stream (RTMP spec 5.3): [`ChunkDecoder`] turns received bytes
//! into [`Message`]s, [`ChunkEncoder`] and [`wire_form`] turn messages into
//! chunks. Sans-IO: bytes in, messages out; no sockets, no clock.
//!
//! # Reading
//!
//! [`ChunkDecoder::decode`] is a tokio-style decoder: `Ok(Some(msg))` when a
//! message is complete, `Ok(None)` when more bytes are needed, `Err` on a
//! protocol violation (close the connection). It returns at most one message
//! per call and never interprets payloads: the session sees Set Chunk Size
//! (type 1) and Abort (type 2) and calls [`ChunkDecoder::set_chunk_size`] /
//! [`ChunkDecoder::abort`] before the next `decode`, so a change applies from
//! the very next chunk even when it is already in the buffer.
//!
//! Choices where the spec is loose or real peers differ (see
//! docs/protocol.md, "2. The chunk stream"):
//!
//! * **fmt 1/2/3 on a csid never opened with fmt 0** is rejected
//!   ([`ChunkError::NoPreviousHeader`]). A librtmp quirk opens a csid with
//!   fmt 1 (assuming message stream 0); we do not tolerate it: guessing a
//!   header is how a decoder desynchronises silently.
//! * **A fmt 0, 1 or 2 header on a csid whose message is half received** is
//!   rejected ([`ChunkError::HeaderChangedMidMessage`]), whether or not it
//!   changes the length. A new header starts a new message, so accepting it
//!   would either truncate the old one or, if the length is believed, write
//!   past it (CVE-2016-10191). Only fmt 3 continues a message.
//! * **Type 3 chunk that starts a new message** repeats the previous header
//!   and adds the previous timestamp *delta*. After a fmt 0 header the delta
//!   is that header's timestamp (spec 5.3.1.2.4: "the timestamp delta for
//!   this Type 3 chunk is the same as the timestamp of the Type 0 chunk");
//!   ffmpeg (`rtmp_packet_read_one_chunk`) and librtmp do the same.
//! * **Extended timestamp on type 3 chunks**: ffmpeg, OBS and FMLE repeat the
//!   4 bytes on every type 3 chunk after a header that had one; rtmpdump does
//!   not. When the latest fmt 0/1/2 header on the csid had an extended field,
//!   we peek the next 4 bytes and consume them only if they equal that
//!   field's value (the timestamp for fmt 0, the delta for fmt 1/2; for a
//!   continuation and for a type 3 that repeats the header alike). A
//!   rtmpdump-style chunk whose data happens to begin with those 4 bytes is
//!   misread; no reader can tell the two apart, and every server makes the
//!   same bet. When fewer than 4 bytes are buffered and they match so far,
//!   `decode` waits for more, except when those bytes already hold the
//!   whole body of a chunk without the field and the peer has not been
//!   seen repeating it (a decisive chunk, 4 matching bytes or a mismatch,
//!   teaches the decoder the peer's habit): then the chunk is taken
//!   rtmpdump style, so a 1-byte chunk equal to the field's first byte
//!   does not wait for bytes that may never come.
//! * **Live chunk streams** are the csids that have been opened with fmt 0 on
//!   this connection; their header state is kept for the connection's life
//!   (nothing in the protocol closes a csid), so
//!   [`ChunkLimits::max_chunk_streams`] bounds that state.
//!
//! Memory: a message that fits in one chunk and is wholly buffered leaves the
//! read buffer by `split_to(len).freeze()`, with no copy. Other messages are
//! reassembled per csid in a buffer that grows with the bytes that have
//! actually arrived (never by the declared length, never by the chunk size);
//! partial chunk bodies are consumed as they arrive, so the caller's read
//! buffer never has to hold a whole chunk, except that a single-chunk message
//! of up to [`ZERO_COPY_WAIT_MAX`] bytes is left in the buffer until it is
//! complete, to keep it zero-copy. The capacity of all reassembly buffers is
//! charged against [`ChunkLimits::max_partial_bytes`].
//!
//! # Writing
//!
//! Every message starts with a fmt 0 header and continues with fmt 3 headers.
//! Media wire forms are built once ([`wire_form`]) and shared by every player,
//! while control messages are written by each connection's own
//! [`ChunkEncoder`] on the same csids. Starting each message with a full
//! header means no message depends on the per-csid header state a peer holds
//! from an earlier message, so shared and per-connection messages can
//! interleave freely on the wire. The cost is 7 to 10 bytes per message.
//! Timestamps at or above 0xFFFFFF use the extended field, repeated on every
//! fmt 3 chunk of the message (ffmpeg style, which every reader accepts).

use crate::wire::WireForm;
use bytes::{Buf, Bytes, BytesMut};
use std::collections::HashMap;
use std::fmt;

/// Chunk size both sides start with (spec 5.4.1).
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest effective chunk size: larger Set Chunk Size values act as this (spec 5.4.1).
pub const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;

/// Chunk size Sluice announces and writes with. 4096 is what ffmpeg and OBS
/// use; larger chunks mean fewer headers and fewer iovecs per frame, and
/// every client handles it.
pub const DEFAULT_OUTBOUND_CHUNK_SIZE: u32 = 4096;

/// Smallest outbound chunk size a setting may ask for: the spec's initial
/// size ([`DEFAULT_CHUNK_SIZE`]). Smaller chunks only multiply headers.
pub const MIN_OUTBOUND_CHUNK_SIZE: u32 = DEFAULT_CHUNK_SIZE;

/// Largest message accepted from a peer. A 4K keyframe at a high bitrate is a
/// few MiB; 16 MiB leaves room and still bounds what one header can ask for.
/// Checked when the header arrives, before any byte is buffered.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 16 * 1024 * 1024;

/// Most chunk streams (csids) a peer may use at once. Encoders use fewer than
/// ten; each live csid holds header state.
pub const DEFAULT_MAX_CHUNK_STREAMS: usize = 64;

/// Most bytes one connection may hold in partially received messages across
/// all csids. Twice the largest message: one in flight plus interleaved audio.
pub const DEFAULT_MAX_PARTIAL_BYTES: usize = 32 * 1024 * 1024;

/// A single-chunk message up to this many bytes stays in the read buffer until
/// it has wholly arrived, so it can leave by `split_to` without a copy. Larger
/// ones (possible only with a chunk size above this) are consumed as they
/// arrive like any other. A caller's read buffer must therefore be able to
/// hold this plus one chunk header ([`MAX_CHUNK_HEADER_LEN`]). 64 KiB covers
/// every audio frame and most video frames at the chunk sizes servers use
/// (4096 to 65536), and bounds what the read buffer must hold.
pub const ZERO_COPY_WAIT_MAX: usize = 64 * 1024;

/// Longest chunk header: 3-byte basic header, 11-byte fmt 0 message header,
/// 4-byte extended timestamp.
pub const MAX_CHUNK_HEADER_LEN: usize = 3 + 11 + 4;

/// Smallest and largest chunk stream ids the basic header can carry (spec 5.3.1.1).
pub const MIN_CSID: u32 = 2;
/// See [`MIN_CSID`].
pub const MAX_CSID: u32 = 65_599;

/// The 24-bit timestamp field value that announces an extended timestamp.
const EXTENDED: u32 = 0xFF_FFFF;

/// Longest message the 24-bit length field can declare.
pub const MAX_LENGTH_FIELD: usize = 0xFF_FFFF;

/// One reassembled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub csid: u32,
    /// Absolute timestamp, ms (deltas already applied, wrapping at 2^32).
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

/// Bounds on what one connection's decoder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Longest message accepted; checked when the header declaring it is
    /// parsed, before any of its body is buffered.
    pub max_message_len: u32,
    /// Most chunk streams (csids) opened on the connection.
    pub max_chunk_streams: usize,
    /// Most bytes of reassembly buffer capacity held across all csids.
    pub max_partial_bytes: usize,
}

impl Default for ChunkLimits {
    /// [`DEFAULT_MAX_MESSAGE_LEN`], [`DEFAULT_MAX_CHUNK_STREAMS`] and
    /// [`DEFAULT_MAX_PARTIAL_BYTES`].
    fn default() -> Self {
        Self {
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            max_chunk_streams: DEFAULT_MAX_CHUNK_STREAMS,
            max_partial_bytes: DEFAULT_MAX_PARTIAL_BYTES,
        }
    }
}

/// A protocol violation in the chunk stream; the connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    /// A fmt 0 or 1 header declared a message longer than the limit.
    MessageTooLong { len: u32, max: u32 },
    /// A fmt 0 header opened one chunk stream more than the limit allows.
    TooManyChunkStreams { csid: u32, max: usize },
    /// Reassembly buffers would hold more than the limit.
    PartialBytesExceeded { held: usize, max: usize },
    /// A fmt 1, 2 or 3 chunk on a csid never opened with fmt 0.
    NoPreviousHeader { csid: u32, fmt: u8 },
    /// A fmt 0, 1 or 2 header on a csid whose message is half received.
    HeaderChangedMidMessage { csid: u32, fmt: u8 },
    /// A Set Chunk Size value of 0 or with bit 31 set.
    InvalidChunkSize { raw: u32 },
}

impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MessageTooLong { len, max } => {
                write!(f, "message length {len} exceeds limit {max}")
            }
            Self::TooManyChunkStreams { csid, max } => {
                write!(
                    f,
                    "chunk stream {csid} exceeds the limit of {max} chunk streams"
                )
            }
            Self::PartialBytesExceeded { held, max } => {
                write!(f, "partial message bytes {held} exceed limit {max}")
            }
            Self::NoPreviousHeader { csid, fmt } => {
                write!(
                    f,
                    "fmt {fmt} chunk on chunk stream {csid}, which no fmt 0 header opened"
                )
            }
            Self::HeaderChangedMidMessage { csid, fmt } => write!(
                f,
                "fmt {fmt} header on chunk stream {csid} while a message is half received"
            ),
            Self::InvalidChunkSize { raw } => {
                write!(f, "chunk size {raw:#x} is not in 1..=0x7fffffff")
            }
        }
    }
}

impl std::error::Error for ChunkError {}

/// Header state of one chunk stream: the fields of its latest message.
struct ChunkStream {
    csid: u32,
    /// Absolute timestamp of the latest message.
    timestamp: u32,
    /// Latest timestamp delta: the field of the latest fmt 1/2 header, or the
    /// timestamp of a fmt 0 header (spec 5.3.1.2.4). When `extended`, this is
    /// also the value type 3 chunks may repeat.
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The latest fmt 0/1/2 header carried an extended timestamp.
    extended: bool,
    /// The message being reassembled, if one is half received.
    partial: Option<Partial>,
}

/// A half-received message.
struct Partial {
    buf: BytesMut,
    /// Capacity allocated for `buf`, as charged to the decoder's `held`.
    charged: usize,
}

/// What the next bytes of input are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A chunk header.
    Header,
    /// `left` more bytes of the current chunk's body, for the stream at `slot`.
    Body { slot: usize, left: usize },
}

/// A chunk header as read, before it is applied to any state.
struct Header {
    fmt: u8,
    csid: u32,
    /// Index of the csid's state, if it has any.
    slot: Option<usize>,
    /// Bytes of header, extended timestamp included.
    len: usize,
    /// Timestamp (fmt 0) or delta (fmt 1/2), extended value applied.
    field: u32,
    extended: bool,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// What a type 3 chunk after an extended header showed of the peer's
    /// habit, when it was decisive.
    style: Option<ExtStyle>,
    /// Taken without the field on partial evidence (see `guesses`).
    guess: bool,
}

/// Whether a peer repeats the extended timestamp on type 3 chunks
/// (ffmpeg, OBS) or not (rtmpdump), as learnt from its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExtStyle {
    Unknown,
    Repeats,
    Omits,
}

/// Reads chunks into messages (see the module docs for the rules it applies).
pub struct ChunkDecoder {
    limits: ChunkLimits,
    chunk_size: u32,
    expect: Expect,
    streams: Vec<ChunkStream>,
    /// Index + 1 into `streams` for csids below 64 (0: none): the one-byte
    /// basic header csids every encoder uses are found without hashing.
    low: [u32; 64],
    /// Index into `streams` for csids 64 and above.
    high: HashMap<u32, usize>,
    /// Capacity of all reassembly buffers.
    held: usize,
    /// The peer's extended-timestamp habit on type 3 chunks.
    ext_style: ExtStyle,
    /// Type 3 chunks taken without the extended field on partial evidence
    /// (fewer than 4 bytes after the basic header, all matching the field).
    guesses: u64,
}

impl fmt::Debug for ChunkDecoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkDecoder")
            .field("limits", &self.limits)
            .field("chunk_size", &self.chunk_size)
            .field("expect", &self.expect)
            .field("chunk_streams", &self.streams.len())
            .field("held", &self.held)
            .finish()
    }
}

impl ChunkDecoder {
    pub fn new(limits: ChunkLimits) -> Self {
        Self {
            limits,
            chunk_size: DEFAULT_CHUNK_SIZE,
            expect: Expect::Header,
            streams: Vec::new(),
            low: [0; 64],
            high: HashMap::new(),
            held: 0,
            ext_style: ExtStyle::Unknown,
            guesses: 0,
        }
    }

    /// Decodes chunks from `src` until one message is complete (`Ok(Some)`),
    /// or `src` runs out (`Ok(None)`: need more bytes).
    ///
    /// Consumed bytes are removed from the front of `src`; an incomplete chunk
    /// header is left in place. After an `Err` the decoder's state is
    /// unspecified: close the connection.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ChunkError> {
        loop {
            match self.expect {
                Expect::Body { slot, left } => {
                    if src.is_empty() {
                        return Ok(None);
                    }
                    let n = left.min(src.len());
                    self.take_body(slot, src, n)?;
                    if n < left {
                        self.expect = Expect::Body {
                            slot,
                            left: left - n,
                        };
                        return Ok(None);
                    }
                    self.expect = Expect::Header;
                    if let Some(msg) = self.finish(slot) {
                        return Ok(Some(msg));
                    }
                }
                Expect::Header => {
                    let Some(h) = self.parse_header(src)? else {
                        return Ok(None);
                    };
                    if let Some(msg) = self.apply_header(h, src)? {
                        return Ok(Some(msg));
                    }
                    // Either a body is expected now, or the header was left
                    // in `src` waiting for the rest of a zero-copy message.
                    if self.expect == Expect::Header {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// The chunk size the peer writes with.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Applies a Set Chunk Size value as received (31-bit; 0 or bit 31 set is
    /// an error). Values above [`MAX_CHUNK_SIZE`] act as it. No buffer is ever
    /// sized by it.
    pub fn set_chunk_size(&mut self, raw: u32) -> Result<(), ChunkError> {
        if raw == 0 || raw & 0x8000_0000 != 0 {
            return Err(ChunkError::InvalidChunkSize { raw });
        }
        self.chunk_size = raw.min(MAX_CHUNK_SIZE);
        Ok(())
    }

    /// Abort Message (spec 5.4.2): drops the partial message on `csid`. Any
    /// rest of a chunk already started is skipped. Unknown csids are ignored.
    pub fn abort(&mut self, csid: u32) {
        if let Some(slot) = self.slot(csid) {
            if let Some(p) = self.streams[slot].partial.take() {
                self.held -= p.charged;
            }
        }
    }

    /// Bytes of reassembly buffer currently held across all csids.
    pub fn partial_bytes(&self) -> usize {
        self.held
    }

    /// How many type 3 chunks after an extended timestamp were taken as
    /// rtmpdump-style (no repeated field) before 4 bytes had arrived to tell
    /// (case 44). Where the bytes are consistent with both styles the answer
    /// depends on where the input was cut, so two runs over differently split
    /// input decode alike only when neither had to guess.
    pub fn guesses(&self) -> u64 {
        self.guesses
    }

    fn slot(&self, csid: u32) -> Option<usize> {
        match self.low.get(csid as usize) {
            Some(&i) => (i as usize).checked_sub(1),
            None => self.high.get(&csid).copied(),
        }
    }

    /// Reads a chunk header at the front of `src` without consuming it.
    /// `Ok(None)`: it is not all there yet.
    fn parse_header(&self, src: &[u8]) -> Result<Option<Header>, ChunkError> {
        let Some(&b0) = src.first() else {
            return Ok(None);
        };
        let fmt = b0 >> 6;
        let (csid, mut pos) = match b0 & 0x3f {
            0 => match src.get(1) {
                Some(&b1) => (64 + u32::from(b1), 2),
                None => return Ok(None),
            },
            1 => match src.get(1..3) {
                Some(b) => (64 + u32::from(b[0]) + 256 * u32::from(b[1]), 3),
                None => return Ok(None),
            },
            c => (u32::from(c), 1),
        };
        let slot = self.slot(csid);
        let mut h = Header {
            fmt,
            csid,
            slot,
            len: 0,
            field: 0,
            extended: false,
            length: 0,
            type_id: 0,
            stream_id: 0,
            style: None,
            guess: false,
        };
        let prev = match slot {
            Some(i) => &self.streams[i],
            None if fmt == 0 => return Self::parse_message_header(h, src, pos),
            None => return Err(ChunkError::NoPreviousHeader { csid, fmt }),
        };
        if fmt < 3 {
            return Self::parse_message_header(h, src, pos);
        }
        if prev.extended {
            let expected = prev.delta.to_be_bytes();
            let rest = &src[pos..];
            let n = rest.len().min(4);
            if rest[..n] != expected[..n] {
                h.style = Some(ExtStyle::Omits);
            } else if n == 4 {
                pos += 4;
                h.style = Some(ExtStyle::Repeats);
            } else {
                // Fewer than 4 bytes, all matching so far. A rtmpdump-style
                // chunk (no repeated field) whose body is all here is taken
                // as such, unless this peer has repeated the field before:
                // otherwise a 1-byte chunk equal to the field's first byte
                // would wait for 3 bytes that may never come, and the reply
                // to it with them (docs/hardening.md case 44).
                let body = match &prev.partial {
                    Some(p) => prev.length as usize - p.buf.len(),
                    None => prev.length as usize,
                }
                .min(self.chunk_size as usize);
                let complete_without = n > 0 && n >= body;
                // Audio and video never wait for a reply (more media always
                // follows), so only other messages (commands, control, data)
                // are guessed: a ffmpeg-style peer whose repeat TCP happened
                // to cut is misread only on a message of 3 bytes or fewer left.
                let media = matches!(prev.type_id, 8 | 9);
                if self.ext_style == ExtStyle::Repeats || !complete_without || media {
                    return Ok(None);
                }
                h.guess = true;
            }
        }
        h.len = pos;
        Ok(Some(h))
    }

    /// Reads the fmt 0/1/2 message header and extended timestamp after a basic
    /// header of `pos` bytes.
    fn parse_message_header(
        mut h: Header,
        src: &[u8],
        mut pos: usize,
    ) -> Result<Option<Header>, ChunkError> {
        let mlen = [11, 7, 3][usize::from(h.fmt)];
        let Some(m) = src.get(pos..pos + mlen) else {
            return Ok(None);
        };
        h.field = be24(&m[0..3]);
        if h.fmt <= 1 {
            h.length = be24(&m[3..6]);
            h.type_id = m[6];
        }
        if h.fmt == 0 {
            h.stream_id = u32::from_le_bytes([m[7], m[8], m[9], m[10]]);
        }
        pos += mlen;
        if h.field == EXTENDED {
            let Some(e) = src.get(pos..pos + 4) else {
                return Ok(None);
            };
            h.field = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            h.extended = true;
            pos += 4;
        }
        h.len = pos;
        Ok(Some(h))
    }

    /// Applies a parsed header: checks it, updates the csid's state, consumes
    /// it, and either returns a whole zero-copy message, sets up the body to
    /// read, or (leaving `src` and all state untouched) waits for the rest of
    /// a small single-chunk message.
    fn apply_header(
        &mut self,
        h: Header,
        src: &mut BytesMut,
    ) -> Result<Option<Message>, ChunkError> {
        let chunk_size = self.chunk_size as usize;
        if let Some(style) = h.style {
            self.ext_style = style;
        }
        if h.guess {
            self.guesses += 1;
        }
        if let Some(slot) = h.slot {
            let s = &self.streams[slot];
            if let Some(p) = &s.partial {
                // Only fmt 3 continues a half-received message.
                if h.fmt != 3 {
                    return Err(ChunkError::HeaderChangedMidMessage {
                        csid: h.csid,
                        fmt: h.fmt,
                    });
                }
                let left = (s.length as usize - p.buf.len()).min(chunk_size);
                src.advance(h.len);
                self.expect = Expect::Body { slot, left };
                return Ok(None);
            }
        }

        // A new message: work out its header from this chunk and the state.
        let (timestamp, delta, length, type_id, stream_id, extended) = match h.slot {
            None => (
                h.field,
                h.field,
                h.length,
                h.type_id,
                h.stream_id,
                h.extended,
            ),
            Some(slot) => {
                let s = &self.streams[slot];
                match h.fmt {
                    0 => (
                        h.field,
                        h.field,
                        h.length,
                        h.type_id,
                        h.stream_id,
                        h.extended,
                    ),
                    1 => (
                        s.timestamp.wrapping_add(h.field),
                        h.field,
                        h.length,
                        h.type_id,
                        s.stream_id,
                        h.extended,
                    ),
                    2 => (
                        s.timestamp.wrapping_add(h.field),
                        h.field,
                        s.length,
                        s.type_id,
                        s.stream_id,
                        h.extended,
                    ),
                    _ => (
                        s.timestamp.wrapping_add(s.delta),
                        s.delta,
                        s.length,
                        s.type_id,
                        s.stream_id,
                        s.extended,
                    ),
                }
            }
        };
        if length > self.limits.max_message_len {
            return Err(ChunkError::MessageTooLong {
                len: length,
                max: self.limits.max_message_len,
            });
        }
        if h.slot.is_none() && self.streams.len() >= self.limits.max_chunk_streams {
            return Err(ChunkError::TooManyChunkStreams {
                csid: h.csid,
                max: self.limits.max_chunk_streams,
            });
        }
        let len = length as usize;
        let single = len <= chunk_size;
        let whole = src.len() - h.len >= len;
        if single && !whole && len <= ZERO_COPY_WAIT_MAX {
            return Ok(None);
        }

        let slot = match h.slot {
            Some(slot) => slot,
            None => self.open(h.csid),
        };
        let s = &mut self.streams[slot];
        s.timestamp = timestamp;
        s.delta = delta;
        s.length = length;
        s.type_id = type_id;
        s.stream_id = stream_id;
        s.extended = extended;
        src.advance(h.len);

        if single && whole {
            let payload = if len == 0 {
                Bytes::new()
            } else {
                src.split_to(len).freeze()
            };
            return Ok(Some(Message {
                csid: h.csid,
                timestamp,
                type_id,
                stream_id,
                payload,
            }));
        }
        s.partial = Some(Partial {
            buf: BytesMut::new(),
            charged: 0,
        });
        self.expect = Expect::Body {
            slot,
            left: len.min(chunk_size),
        };
        Ok(None)
    }

    /// Creates the state of a csid opened by a fmt 0 header.
    fn open(&mut self, csid: u32) -> usize {
        let slot = self.streams.len();
        self.streams.push(ChunkStream {
            csid,
            timestamp: 0,
            delta: 0,
            length: 0,
            type_id: 0,
            stream_id: 0,
            extended: false,
            partial: None,
        });
        match self.low.get_mut(csid as usize) {
            Some(i) => *i = slot as u32 + 1,
            None => {
                self.high.insert(csid, slot);
            }
        }
        slot
    }

    /// Moves `n` body bytes from `src` into the reassembly buffer at `slot`
    /// (or drops them if the message was aborted).
    fn take_body(&mut self, slot: usize, src: &mut BytesMut, n: usize) -> Result<(), ChunkError> {
        let s = &mut self.streams[slot];
        let Some(p) = s.partial.as_mut() else {
            src.advance(n);
            return Ok(());
        };
        let have = p.buf.len();
        if p.charged - have < n {
            // Grow by what has arrived (all of `src` is here, or double what
            // is held), never past the message, never by the declared length
            // alone; fall back to exactly `n` near the cap.
            let msg_left = s.length as usize - have;
            let want = msg_left.min(src.len().max(have)).max(n);
            let max = self.limits.max_partial_bytes;
            let mut cap = have + want;
            if self.held + cap - p.charged > max {
                cap = have + n;
                let held = self.held + cap - p.charged;
                if held > max {
                    return Err(ChunkError::PartialBytesExceeded { held, max });
                }
            }
            let mut buf = BytesMut::with_capacity(cap);
            buf.extend_from_slice(&p.buf);
            p.buf = buf;
            self.held = self.held + cap - p.charged;
            p.charged = cap;
        }
        p.buf.extend_from_slice(&src[..n]);
        src.advance(n);
        Ok(())
    }

    /// The message at `slot`, if its last byte has arrived.
    fn finish(&mut self, slot: usize) -> Option<Message> {
        let s = &mut self.streams[slot];
        if s.partial.as_ref()?.buf.len() < s.length as usize {
            return None;
        }
        let p = s.partial.take()?;
        self.held -= p.charged;
        Some(Message {
            csid: s.csid,
            timestamp: s.timestamp,
            type_id: s.type_id,
            stream_id: s.stream_id,
            payload: p.buf.freeze(),
        })
    }
}

fn be24(b: &[u8]) -> u32 {
    u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2])
}

/// Writes messages as chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkEncoder {
    chunk_size: u32,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    /// An encoder at [`DEFAULT_CHUNK_SIZE`].
    pub fn new() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
        }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Sets the chunk size to write with (send the peer a Set Chunk Size of
    /// the same value first). Clamped to `1..=MAX_CHUNK_SIZE`.
    pub fn set_chunk_size(&mut self, size: u32) {
        self.chunk_size = clamp_chunk_size(size);
    }

    /// Appends the chunks of `msg` to `dst` (copies the payload: for control
    /// messages and commands). A message that cannot be written (a payload
    /// over 0xFFFFFF bytes, a csid outside `2..=65599`) is refused and
    /// nothing is appended: replies echo what peers send, so an oversize
    /// reply must be an error, never a panic (docs/hardening.md case 43).
    pub fn encode(&self, msg: &Message, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let cs = self.chunk_size as usize;
        let (first, cont) = headers(msg)?;
        let len = msg.payload.len();
        let chunks = len.div_ceil(cs).max(1);
        dst.reserve(first.len() + (chunks - 1) * cont.len() + len);
        dst.extend_from_slice(first.as_slice());
        let mut rest: &[u8] = &msg.payload;
        let n = rest.len().min(cs);
        dst.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        while !rest.is_empty() {
            dst.extend_from_slice(cont.as_slice());
            let n = rest.len().min(cs);
            dst.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(())
    }
}

/// A message the chunk stream cannot carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The payload is longer than the 24-bit length field can declare.
    MessageTooLong { len: usize },
    /// The csid is outside `2..=65599`.
    InvalidCsid { csid: u32 },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::MessageTooLong { len } => write!(
                f,
                "message of {len} bytes cannot be sent (the length field holds at most {MAX_LENGTH_FIELD})"
            ),
            Self::InvalidCsid { csid } => write!(f, "chunk stream id {csid} cannot be encoded"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// The chunked form of `msg` at `chunk_size` (clamped to
/// `1..=MAX_CHUNK_SIZE`) without copying its payload: all chunk headers in one
/// small allocation, interleaved with `payload.slice(..)` pieces. Built once
/// per media frame and shared by every player. Refused as
/// [`ChunkEncoder::encode`] refuses.
pub fn wire_form(chunk_size: u32, msg: &Message) -> Result<WireForm, EncodeError> {
    let cs = clamp_chunk_size(chunk_size) as usize;
    let (first, cont) = headers(msg)?;
    let len = msg.payload.len();
    let chunks = len.div_ceil(cs).max(1);
    let mut hdrs = BytesMut::with_capacity(first.len() + (chunks - 1) * cont.len());
    hdrs.extend_from_slice(first.as_slice());
    for _ in 1..chunks {
        hdrs.extend_from_slice(cont.as_slice());
    }
    let mut hdrs = hdrs.freeze();
    let mut pieces = Vec::with_capacity(2 * chunks);
    pieces.push(hdrs.split_to(first.len()));
    pieces.push(msg.payload.slice(0..len.min(cs)));
    let mut off = cs;
    while off < len {
        pieces.push(hdrs.split_to(cont.len()));
        pieces.push(msg.payload.slice(off..len.min(off + cs)));
        off += cs;
    }
    Ok(WireForm::new(pieces))
}

fn clamp_chunk_size(size: u32) -> u32 {
    size.clamp(1, MAX_CHUNK_SIZE)
}

/// A chunk header of up to [`MAX_CHUNK_HEADER_LEN`] bytes.
struct HeaderBytes {
    bytes: [u8; MAX_CHUNK_HEADER_LEN],
    len: usize,
}

impl HeaderBytes {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    fn len(&self) -> usize {
        self.len
    }
    fn put(&mut self, b: &[u8]) {
        self.bytes[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
    }
}

/// The fmt 0 header that starts `msg` and the fmt 3 header of its other chunks.
fn headers(msg: &Message) -> Result<(HeaderBytes, HeaderBytes), EncodeError> {
    if !(MIN_CSID..=MAX_CSID).contains(&msg.csid) {
        return Err(EncodeError::InvalidCsid { csid: msg.csid });
    }
    let len = msg.payload.len();
    if len > MAX_LENGTH_FIELD {
        return Err(EncodeError::MessageTooLong { len });
    }
    let mut first = HeaderBytes {
        bytes: [0; MAX_CHUNK_HEADER_LEN],
        len: 0,
    };
    let mut cont = HeaderBytes {
        bytes: [0; MAX_CHUNK_HEADER_LEN],
        len: 0,
    };
    put_basic_header(&mut first, 0, msg.csid);
    put_basic_header(&mut cont, 3, msg.csid);
    let extended = msg.timestamp >= EXTENDED;
    let field = if extended { EXTENDED } else { msg.timestamp };
    first.put(&field.to_be_bytes()[1..]);
    first.put(&(len as u32).to_be_bytes()[1..]);
    first.put(&[msg.type_id]);
    first.put(&msg.stream_id.to_le_bytes());
    if extended {
        let ts = msg.timestamp.to_be_bytes();
        first.put(&ts);
        cont.put(&ts);
    }
    Ok((first, cont))
}

/// The smallest basic header for `csid` (spec 5.3.1.1).
fn put_basic_header(h: &mut HeaderBytes, fmt: u8, csid: u32) {
    let fmt = fmt << 6;
    match csid {
        2..=63 => h.put(&[fmt | csid as u8]),
        64..=319 => h.put(&[fmt, (csid - 64) as u8]),
        _ => {
            let id = csid - 64;
            h.put(&[fmt | 1, id as u8, (id >> 8) as u8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn limits() -> ChunkLimits {
        ChunkLimits {
            max_message_len: 0xFF_FFFF,
            max_chunk_streams: 65_600,
            max_partial_bytes: 1 << 30,
        }
    }

    fn decoder(chunk_size: u32) -> ChunkDecoder {
        let mut d = ChunkDecoder::new(limits());
        d.set_chunk_size(chunk_size).unwrap();
        d
    }

    fn msg(csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> Message {
        Message {
            csid,
            timestamp,
            type_id,
            stream_id,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    /// Decodes everything in `input` as a session would: Set Chunk Size and
    /// Abort messages are applied before the next `decode` (and returned too).
    fn drive(dec: &mut ChunkDecoder, src: &mut BytesMut) -> Result<Vec<Message>, ChunkError> {
        let mut out = Vec::new();
        while let Some(m) = dec.decode(src)? {
            if m.csid == 2 && m.payload.len() == 4 {
                let v = u32::from_be_bytes(m.payload[..4].try_into().unwrap());
                match m.type_id {
                    1 => dec.set_chunk_size(v)?,
                    2 => dec.abort(v),
                    _ => {}
                }
            }
            out.push(m);
        }
        Ok(out)
    }

    fn decode_all(chunk_size: u32, input: &[u8]) -> Result<Vec<Message>, ChunkError> {
        let mut dec = decoder(chunk_size);
        let mut src = BytesMut::from(input);
        let out = drive(&mut dec, &mut src)?;
        assert!(src.is_empty(), "{} bytes left undecoded", src.len());
        Ok(out)
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn encode(chunk_size: u32, m: &Message) -> Vec<u8> {
        let mut e = ChunkEncoder::new();
        e.set_chunk_size(chunk_size);
        let mut dst = BytesMut::new();
        e.encode(m, &mut dst).unwrap();
        dst.to_vec()
    }

    // ---- header forms -------------------------------------------------

    #[test]
    fn fmt0_header_carries_every_field() {
        let input = [
            0x03, //                   fmt 0, csid 3
            0x00, 0x03, 0xe8, //       timestamp 1000
            0x00, 0x00, 0x04, //       message length 4
            0x14, //                   type 20 (AMF0 command)
            0x01, 0x00, 0x00, 0x00, // message stream id 1 (little-endian)
            b'a', b'b', b'c', b'd', // payload
        ];
        assert_eq!(
            decode_all(128, &input).unwrap(),
            [msg(3, 1000, 20, 1, b"abcd")]
        );
    }

    #[test]
    fn fmt1_applies_delta_and_keeps_stream_id() {
        let input = [
            0x06, //                   fmt 0, csid 6
            0x00, 0x00, 0x64, //       timestamp 100
            0x00, 0x00, 0x01, //       message length 1
            0x09, //                   type 9 (video)
            0x05, 0x00, 0x00, 0x00, // message stream id 5
            0xaa, //                   payload
            0x46, //                   fmt 1, csid 6
            0x00, 0x00, 0x21, //       timestamp delta 33
            0x00, 0x00, 0x02, //       message length 2
            0x08, //                   type 8 (audio)
            0xbb, 0xcc, //             payload
        ];
        assert_eq!(
            decode_all(128, &input).unwrap(),
            [msg(6, 100, 9, 5, &[0xaa]), msg(6, 133, 8, 5, &[0xbb, 0xcc])]
        );
    }

    #[test]
    fn fmt2_keeps_length_type_and_stream_id() {
        let input = [
            0x04, //                   fmt 0, csid 4
            0x00, 0x00, 0x0a, //       timestamp 10
            0x00, 0x00, 0x02, //       message length 2
            0x08, //                   type 8
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x01, 0x02, //             payload
            0x84, //                   fmt 2, csid 4
            0x00, 0x00, 0x17, //       timestamp delta 23
            0x03, 0x04, //             payload
        ];
        assert_eq!(
            decode_all(128, &input).unwrap(),
            [msg(4, 10, 8, 1, &[1, 2]), msg(4, 33, 8, 1, &[3, 4])]
        );
    }

    /// Spec 5.3.2.1, Example 1: audio messages compressed to fmt 2, then fmt 3.
    #[test]
    fn type3_new_message_repeats_previous_header_and_delta() {
        let payload = [0x5a; 32];
        let input = cat(&[
            &[
                0x03, //                   fmt 0, csid 3
                0x00, 0x03, 0xe8, //       timestamp 1000
                0x00, 0x00, 0x20, //       message length 32
                0x08, //                   type 8
                0x39, 0x30, 0x00, 0x00, // message stream id 12345
            ],
            &payload,
            &[
                0x83, //                   fmt 2, csid 3
                0x00, 0x00, 0x14, //       timestamp delta 20
            ],
            &payload,
            &[0xc3], //                    fmt 3, csid 3
            &payload,
            &[0xc3], //                    fmt 3, csid 3
            &payload,
        ]);
        let got = decode_all(128, &input).unwrap();
        let want: Vec<_> = [1000, 1020, 1040, 1060]
            .into_iter()
            .map(|ts| msg(3, ts, 8, 12345, &payload))
            .collect();
        assert_eq!(got, want);
    }

    /// Spec 5.3.1.2.4: "If a Type 3 chunk follows a Type 0 chunk, then the
    /// timestamp delta for this Type 3 chunk is the same as the timestamp of
    /// the Type 0 chunk" (ffmpeg and librtmp agree).
    #[test]
    fn type3_after_fmt0_uses_its_timestamp_as_delta() {
        let input = [
            0x05, //                   fmt 0, csid 5
            0x00, 0x00, 0x28, //       timestamp 40
            0x00, 0x00, 0x01, //       message length 1
            0x08, //                   type 8
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x11, //                   payload
            0xc5, //                   fmt 3, csid 5: new message
            0x22, //                   payload
        ];
        assert_eq!(
            decode_all(128, &input).unwrap(),
            [msg(5, 40, 8, 1, &[0x11]), msg(5, 80, 8, 1, &[0x22])]
        );
    }

    /// Spec 5.3.2.2, Example 2: a 307-byte message in 128-byte chunks.
    #[test]
    fn splits_a_message_like_spec_example_2() {
        let payload: Vec<u8> = (0..307).map(|i| i as u8).collect();
        let m = msg(4, 1000, 9, 12346, &payload);
        let want = cat(&[
            &[
                0x04, //                   fmt 0, csid 4
                0x00, 0x03, 0xe8, //       timestamp 1000
                0x00, 0x01, 0x33, //       message length 307
                0x09, //                   type 9
                0x3a, 0x30, 0x00, 0x00, // message stream id 12346
            ],
            &payload[..128],
            &[0xc4], //                    fmt 3, csid 4
            &payload[128..256],
            &[0xc4], //                    fmt 3, csid 4
            &payload[256..],
        ]);
        assert_eq!(encode(128, &m), want);
        assert_eq!(wire_form(128, &m).unwrap().to_vec(), want);
        assert_eq!(decode_all(128, &want).unwrap(), [m]);
    }

    #[test]
    fn decodes_two_and_three_byte_basic_headers() {
        let body = [
            0x00, 0x00, 0x00, //       timestamp 0
            0x00, 0x00, 0x01, //       message length 1
            0x01, //                   type 1
            0x00, 0x00, 0x00, 0x00, // message stream id 0
            0x77, //                   payload
        ];
        let cases: [(&[u8], u32); 6] = [
            (&[0x3f], 63),                 // fmt 0, csid 63 (one byte)
            (&[0x00, 0x00], 64),           // fmt 0, two-byte form, csid 64 + 0
            (&[0x00, 0xff], 319),          // fmt 0, two-byte form, csid 64 + 255
            (&[0x01, 0x00, 0x01], 320),    // fmt 0, three-byte form, 64 + 0 + 256 * 1
            (&[0x01, 0xff, 0xff], 65_599), // fmt 0, three-byte form, 64 + 255 + 256 * 255
            (&[0x01, 0x00, 0x00], 64),     // fmt 0, three-byte form of csid 64 (legal, not minimal)
        ];
        for (basic, csid) in cases {
            let input = cat(&[basic, &body]);
            assert_eq!(
                decode_all(128, &input).unwrap(),
                [msg(csid, 0, 1, 0, &[0x77])],
                "csid {csid}"
            );
        }
    }

    #[test]
    fn encodes_the_smallest_basic_header() {
        let cases: [(u32, &[u8]); 7] = [
            (2, &[0x02]),               // one byte
            (63, &[0x3f]),              // one byte
            (64, &[0x00, 0x00]),        // two bytes: csid - 64
            (319, &[0x00, 0xff]),       // two bytes
            (320, &[0x01, 0x00, 0x01]), // three bytes: (csid - 64) little-endian
            (65_599, &[0x01, 0xff, 0xff]),
            (1000, &[0x01, 0xa8, 0x03]), // 936 = 0x03a8
        ];
        for (csid, basic) in cases {
            let m = msg(csid, 0, 1, 0, &[0x77, 0x78]);
            let out = encode(1, &m);
            assert_eq!(&out[..basic.len()], basic, "csid {csid}");
            // The fmt 3 header of the second chunk uses the same form.
            let cont = &out[basic.len() + 11 + 1..][..basic.len()];
            assert_eq!(cont[0], basic[0] | 0xc0, "csid {csid}");
            assert_eq!(&cont[1..], &basic[1..], "csid {csid}");
            assert_eq!(decode_all(1, &out).unwrap(), [m]);
        }
    }

    // ---- extended timestamps ------------------------------------------

    #[test]
    fn extended_timestamp_on_fmt0() {
        let input = [
            0x03, //                   fmt 0, csid 3
            0xff, 0xff, 0xff, //       timestamp: extended follows
            0x00, 0x00, 0x01, //       message length 1
            0x09, //                   type 9
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x12, 0x34, 0x56, 0x78, // extended timestamp 0x12345678
            0x99, //                   payload
        ];
        assert_eq!(
            decode_all(128, &input).unwrap(),
            [msg(3, 0x1234_5678, 9, 1, &[0x99])]
        );
    }

    const EXT_FMT0_LEN3: [u8; 16] = [
        0x03, //                   fmt 0, csid 3
        0xff, 0xff, 0xff, //       timestamp: extended follows
        0x00, 0x00, 0x03, //       message length 3
        0x09, //                   type 9
        0x01, 0x00, 0x00, 0x00, // message stream id 1
        0x01, 0x00, 0x00, 0x00, // extended timestamp 0x01000000
    ];

    #[test]
    fn type3_continuation_repeats_extended_timestamp_ffmpeg_style() {
        let input = cat(&[
            &EXT_FMT0_LEN3,
            &[0xa1, 0xa2], //              payload, first chunk (chunk size 2)
            &[0xc3],       //                    fmt 3, csid 3
            &[0x01, 0x00, 0x00, 0x00], //  extended timestamp repeated
            &[0xa3],       //                    payload, last chunk
        ]);
        assert_eq!(
            decode_all(2, &input).unwrap(),
            [msg(3, 0x0100_0000, 9, 1, &[0xa1, 0xa2, 0xa3])]
        );
        // And that is what the encoder writes.
        let m = msg(3, 0x0100_0000, 9, 1, &[0xa1, 0xa2, 0xa3]);
        assert_eq!(encode(2, &m), input);
    }

    #[test]
    fn type3_continuation_without_extended_timestamp_rtmpdump_style() {
        let input = cat(&[
            &EXT_FMT0_LEN3,
            &[0xa1, 0xa2], //              payload, first chunk (chunk size 2)
            &[0xc3],       //                    fmt 3, csid 3, no extended timestamp
            &[0xa3],       //                    payload, last chunk
        ]);
        assert_eq!(
            decode_all(2, &input).unwrap(),
            [msg(3, 0x0100_0000, 9, 1, &[0xa1, 0xa2, 0xa3])]
        );
    }

    /// The bytes after a fmt 0 header with an extended timestamp (0x01000000)
    /// on csid 3, message length 6, then the first chunk's 4 bytes (chunk
    /// size 4) and a fmt 3 header: the next chunk has a 2-byte body.
    fn ext_fmt0_len6_first_chunk() -> Vec<u8> {
        let mut v = EXT_FMT0_LEN3.to_vec();
        v[6] = 0x06; //                   message length 6
        v.extend_from_slice(&[0xa1, 0xa2, 0xa3, 0xa4, 0xc3]);
        v
    }

    #[test]
    fn type3_rtmpdump_style_waits_only_while_the_next_bytes_could_be_the_repeat() {
        let mut dec = decoder(4);
        let mut src = BytesMut::from(&ext_fmt0_len6_first_chunk()[..]);
        assert_eq!(dec.decode(&mut src), Ok(None));
        src.extend_from_slice(&[0x01]); // could be the first byte of the repeat
        assert_eq!(dec.decode(&mut src), Ok(None));
        assert_eq!(
            &src[..],
            &[0xc3, 0x01],
            "the fmt 3 header waits until decided: its 2-byte body is not all here"
        );
        src.extend_from_slice(&[0x02]); // it is not the repeat: 0x01 0x02 is data
        assert_eq!(
            dec.decode(&mut src),
            Ok(Some(msg(
                3,
                0x0100_0000,
                9,
                1,
                &[0xa1, 0xa2, 0xa3, 0xa4, 0x01, 0x02]
            )))
        );
        assert!(src.is_empty());

        // A first byte that cannot start the repeat is decided at once.
        let mut dec = decoder(2);
        let input = cat(&[&EXT_FMT0_LEN3, &[0xa1, 0xa2, 0xc3, 0x7f]]);
        let mut src = BytesMut::from(&input[..]);
        assert_eq!(
            dec.decode(&mut src),
            Ok(Some(msg(3, 0x0100_0000, 9, 1, &[0xa1, 0xa2, 0x7f])))
        );
    }

    /// docs/hardening.md case 44: a rtmpdump-style chunk whose whole body is
    /// one byte equal to the field's first byte is not held waiting for three
    /// more bytes (the reply to it would wait for the client's next message).
    /// Audio and video wait (more media always follows, and waiting never
    /// misreads a ffmpeg-style repeat that TCP cut).
    #[test]
    fn type3_one_byte_chunk_equal_to_the_field_is_decoded_at_once() {
        let mut command = EXT_FMT0_LEN3;
        command[7] = 20;
        let mut dec = decoder(2);
        let input = cat(&[&command, &[0xa1, 0xa2, 0xc3, 0x01]]);
        let mut src = BytesMut::from(&input[..]);
        assert_eq!(
            dec.decode(&mut src),
            Ok(Some(msg(3, 0x0100_0000, 20, 1, &[0xa1, 0xa2, 0x01])))
        );
        assert!(src.is_empty());
        assert_eq!(dec.guesses(), 1);
        // The same as video waits for the rest of a possible repeat.
        let mut dec = decoder(2);
        let input = cat(&[&EXT_FMT0_LEN3, &[0xa1, 0xa2, 0xc3, 0x01]]);
        let mut src = BytesMut::from(&input[..]);
        assert_eq!(dec.decode(&mut src), Ok(None));
        assert_eq!(dec.guesses(), 0);
        // A new message repeating the header: a 1-byte body, 0x01.
        let mut dec = decoder(128);
        let one = [
            0x04, //                   fmt 0, csid 4
            0xff, 0xff, 0xff, //       timestamp: extended follows
            0x00, 0x00, 0x01, //       message length 1
            0x14, //                   type 20 (AMF0 command)
            0x00, 0x00, 0x00, 0x00, // message stream id 0
            0x01, 0x00, 0x00, 0x00, // extended timestamp 0x01000000
            0x05, //                   payload
            0xc4, //                   fmt 3, csid 4: a new message, no field
            0x01, //                   payload, equal to the field's first byte
        ];
        let mut src = BytesMut::from(&one[..]);
        assert_eq!(dec.decode(&mut src).unwrap().unwrap().payload, [0x05][..]);
        let second = dec.decode(&mut src).unwrap().expect("decided at once");
        assert_eq!(
            (second.timestamp, &second.payload[..]),
            (0x0200_0000, &[0x01][..])
        );
        assert_eq!(dec.guesses(), 1, "taken on 1 byte of evidence: a guess");
    }

    /// Once a peer has repeated the field (ffmpeg style), a chunk cut inside
    /// a later repeat waits for the rest instead of being misread.
    #[test]
    fn type3_after_a_repeat_a_cut_repeat_waits() {
        let mut dec = decoder(2);
        let mut src = BytesMut::from(
            &cat(&[
                &EXT_FMT0_LEN3,
                &[0xa1, 0xa2, 0xc3, 0x01, 0x00, 0x00, 0x00, 0xa3],
            ])[..],
        );
        assert_eq!(
            dec.decode(&mut src),
            Ok(Some(msg(3, 0x0100_0000, 9, 1, &[0xa1, 0xa2, 0xa3])))
        );
        // The next message repeats the header: ffmpeg sends c3 + the field.
        src.extend_from_slice(&[0xc3, 0x01]);
        assert_eq!(dec.decode(&mut src), Ok(None), "learnt: the field comes");
        src.extend_from_slice(&[
            0x00, 0x00, 0x00, 0xb1, 0xb2, 0xc3, 0x01, 0x00, 0x00, 0x00, 0xb3,
        ]);
        let m = dec.decode(&mut src).unwrap().unwrap();
        assert_eq!(
            (m.timestamp, &m.payload[..]),
            (0x0200_0000, &[0xb1, 0xb2, 0xb3][..])
        );
    }

    #[test]
    fn type3_new_message_after_extended_delta_in_both_styles() {
        let start = [
            0x07, //                   fmt 0, csid 7
            0x00, 0x00, 0x10, //       timestamp 16
            0x00, 0x00, 0x01, //       message length 1
            0x12, //                   type 18 (data)
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x01, //                   payload
            0x87, //                   fmt 2, csid 7
            0xff, 0xff, 0xff, //       timestamp delta: extended follows
            0x01, 0x00, 0x00, 0x00, // extended delta 0x01000000
            0x02, //                   payload
        ];
        let want = [
            msg(7, 16, 18, 1, &[1]),
            msg(7, 0x0100_0010, 18, 1, &[2]),
            msg(7, 0x0200_0010, 18, 1, &[3]),
        ];
        let ffmpeg = cat(&[
            &start,
            &[0xc7], //                    fmt 3, csid 7: new message, same delta
            &[0x01, 0x00, 0x00, 0x00], //  extended delta repeated
            &[0x03], //                    payload
        ]);
        let rtmpdump = cat(&[&start, &[0xc7, 0x03]]);
        assert_eq!(decode_all(128, &ffmpeg).unwrap(), want);
        assert_eq!(decode_all(128, &rtmpdump).unwrap(), want);
    }

    #[test]
    fn timestamp_crosses_0xffffff_with_small_deltas() {
        let input = [
            0x04, //                   fmt 0, csid 4
            0xff, 0xff, 0xf0, //       timestamp 0xfffff0
            0x00, 0x00, 0x01, //       message length 1
            0x08, //                   type 8
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x01, //                   payload
            0x84, //                   fmt 2, csid 4
            0x00, 0x00, 0x20, //       timestamp delta 32
            0x02, //                   payload
            0xc4, //                   fmt 3, csid 4 (delta 32 again)
            0x03, //                   payload
        ];
        let ts: Vec<u32> = decode_all(128, &input)
            .unwrap()
            .iter()
            .map(|m| m.timestamp)
            .collect();
        assert_eq!(ts, [0xff_fff0, 0x100_0010, 0x100_0030]);
    }

    #[test]
    fn timestamp_wraps_at_2_pow_32() {
        let input = [
            0x04, //                   fmt 0, csid 4
            0xff, 0xff, 0xff, //       timestamp: extended follows
            0x00, 0x00, 0x01, //       message length 1
            0x08, //                   type 8
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0xff, 0xff, 0xff, 0xf0, // extended timestamp 0xfffffff0
            0x01, //                   payload
            0x44, //                   fmt 1, csid 4
            0x00, 0x00, 0x20, //       timestamp delta 32
            0x00, 0x00, 0x01, //       message length 1
            0x08, //                   type 8
            0x02, //                   payload
        ];
        let ts: Vec<u32> = decode_all(128, &input)
            .unwrap()
            .iter()
            .map(|m| m.timestamp)
            .collect();
        assert_eq!(ts, [0xffff_fff0, 0x10]);
    }

    // ---- encoder ------------------------------------------------------

    #[test]
    fn encoder_starts_every_message_with_fmt0() {
        let a = msg(4, 10, 8, 1, &[1]);
        let b = msg(4, 30, 8, 1, &[2]);
        let mut e = ChunkEncoder::new();
        e.set_chunk_size(4096);
        let mut dst = BytesMut::new();
        e.encode(&a, &mut dst).unwrap();
        e.encode(&b, &mut dst).unwrap();
        let want = [
            0x04, //                   fmt 0, csid 4
            0x00, 0x00, 0x0a, //       timestamp 10
            0x00, 0x00, 0x01, //       message length 1
            0x08, //                   type 8
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x01, //                   payload
            0x04, //                   fmt 0 again, csid 4
            0x00, 0x00, 0x1e, //       timestamp 30 (absolute)
            0x00, 0x00, 0x01, //       message length 1
            0x08, //                   type 8
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x02, //                   payload
        ];
        assert_eq!(&dst[..], &want);
    }

    #[test]
    fn encoder_writes_extended_timestamp_at_exactly_0xffffff() {
        let m = msg(3, 0xff_ffff, 9, 1, &[]);
        let want = [
            0x03, //                   fmt 0, csid 3
            0xff, 0xff, 0xff, //       timestamp: extended follows
            0x00, 0x00, 0x00, //       message length 0
            0x09, //                   type 9
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x00, 0xff, 0xff, 0xff, // extended timestamp 0xffffff
        ];
        assert_eq!(encode(128, &m), want);
        assert_eq!(wire_form(128, &m).unwrap().to_vec(), want);
    }

    #[test]
    fn wire_form_shares_the_payload_and_one_header_allocation() {
        let payload = Bytes::from(vec![7u8; 10_000]);
        let m = Message {
            csid: 6,
            timestamp: 0x0200_0000,
            type_id: 9,
            stream_id: 1,
            payload: payload.clone(),
        };
        let form = wire_form(4096, &m).unwrap();
        let pieces = form.pieces();
        assert_eq!(pieces.len(), 6);
        let payload_range = payload.as_ptr() as usize..payload.as_ptr() as usize + payload.len();
        for (i, p) in pieces.iter().enumerate() {
            let inside = payload_range.contains(&(p.as_ptr() as usize));
            assert_eq!(inside, i % 2 == 1, "piece {i}");
        }
        // Headers are adjacent slices of one buffer.
        let h0 = &pieces[0];
        assert_eq!(h0.len(), 1 + 11 + 4);
        assert_eq!(pieces[2].as_ptr() as usize, h0.as_ptr() as usize + h0.len());
        assert_eq!(&pieces[2][..], &[0xc6, 0x02, 0x00, 0x00, 0x00]);
        assert_eq!(form.to_vec(), encode(4096, &m));
    }

    // ---- decoder behaviour ----------------------------------------------

    #[test]
    fn zero_length_message_has_empty_payload() {
        let input = [
            0x03, //                   fmt 0, csid 3
            0x00, 0x00, 0x00, //       timestamp 0
            0x00, 0x00, 0x00, //       message length 0
            0x12, //                   type 18
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0xc3, //                   fmt 3, csid 3: another empty message
        ];
        assert_eq!(
            decode_all(128, &input).unwrap(),
            [msg(3, 0, 18, 1, &[]), msg(3, 0, 18, 1, &[])]
        );
    }

    #[test]
    fn incomplete_header_leaves_src_untouched() {
        let input = cat(&[&EXT_FMT0_LEN3, &[0xa1, 0xa2, 0xa3]]);
        for cut in 0..EXT_FMT0_LEN3.len() + 3 {
            let mut dec = decoder(128);
            let mut src = BytesMut::from(&input[..cut]);
            assert_eq!(dec.decode(&mut src), Ok(None), "cut at {cut}");
            assert_eq!(&src[..], &input[..cut], "cut at {cut}");
            src.extend_from_slice(&input[cut..]);
            assert_eq!(
                dec.decode(&mut src),
                Ok(Some(msg(3, 0x0100_0000, 9, 1, &[0xa1, 0xa2, 0xa3])))
            );
        }
    }

    #[test]
    fn single_chunk_payload_is_not_copied() {
        let input = [
            0x04, //                   fmt 0, csid 4
            0x00, 0x00, 0x00, //       timestamp 0
            0x00, 0x00, 0x04, //       message length 4
            0x08, //                   type 8
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0xde, 0xad, 0xbe, 0xef, // payload
        ];
        let mut src = BytesMut::from(&input[..]);
        let range = src.as_ptr() as usize..src.as_ptr() as usize + src.len();
        let m = decoder(128).decode(&mut src).unwrap().unwrap();
        let p = m.payload.as_ptr() as usize;
        assert!(range.contains(&p) && range.contains(&(p + m.payload.len() - 1)));
        assert_eq!(p, range.start + 12);
    }

    #[test]
    fn single_chunk_message_split_across_reads_is_still_not_copied() {
        let input = [
            0x04, //                   fmt 0, csid 4
            0x00, 0x00, 0x00, //       timestamp 0
            0x00, 0x00, 0x04, //       message length 4
            0x08, //                   type 8
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0xde, 0xad, 0xbe, 0xef, // payload
        ];
        let mut dec = decoder(128);
        let mut src = BytesMut::with_capacity(64);
        src.extend_from_slice(&input[..14]);
        assert_eq!(dec.decode(&mut src), Ok(None));
        assert_eq!(src.len(), 14, "header and partial body wait in src");
        src.extend_from_slice(&input[14..]);
        let start = src.as_ptr() as usize;
        let m = dec.decode(&mut src).unwrap().unwrap();
        assert_eq!(m.payload.as_ptr() as usize, start + 12);
        assert_eq!(dec.partial_bytes(), 0);
    }

    #[test]
    fn large_single_chunk_is_consumed_as_it_arrives() {
        // Chunk size 0x7fffffff (acts as 0xffffff) and a 1 MB message in one
        // chunk: neither the read buffer nor the reassembly buffer is sized by
        // the chunk size or the declared length.
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        let m = msg(6, 0, 9, 1, &payload);
        let input = encode(MAX_CHUNK_SIZE, &m);
        let mut dec = decoder(0x7fff_ffff);
        let mut src = BytesMut::new();
        let mut got = None;
        for piece in input.chunks(10_000) {
            src.extend_from_slice(piece);
            if let Some(m) = dec.decode(&mut src).unwrap() {
                got = Some(m);
            } else {
                assert!(src.is_empty(), "every arrived byte is consumed");
                assert!(dec.partial_bytes() <= 2 * 1_000_000);
            }
        }
        assert_eq!(got, Some(m));
        assert_eq!(dec.partial_bytes(), 0);
    }

    #[test]
    fn interleaved_messages_on_csid_3_and_4_both_reassemble() {
        let a: Vec<u8> = (0..6).collect();
        let b: Vec<u8> = (100..105).collect();
        let input = cat(&[
            &[
                0x03, //                   fmt 0, csid 3
                0x00, 0x00, 0x01, //       timestamp 1
                0x00, 0x00, 0x06, //       message length 6
                0x14, //                   type 20
                0x00, 0x00, 0x00, 0x00, // message stream id 0
            ],
            &a[0..2],
            &[
                0x04, //                   fmt 0, csid 4
                0x00, 0x00, 0x02, //       timestamp 2
                0x00, 0x00, 0x05, //       message length 5
                0x09, //                   type 9
                0x01, 0x00, 0x00, 0x00, // message stream id 1
            ],
            &b[0..2],
            &[0xc3], //                    fmt 3, csid 3
            &a[2..4],
            &[0xc4], //                    fmt 3, csid 4
            &b[2..4],
            &[0xc4], //                    fmt 3, csid 4
            &b[4..5],
            &[0xc3], //                    fmt 3, csid 3
            &a[4..6],
        ]);
        assert_eq!(
            decode_all(2, &input).unwrap(),
            [msg(4, 2, 9, 1, &b), msg(3, 1, 20, 0, &a)]
        );
    }

    #[test]
    fn chunk_size_change_applies_while_other_csids_are_mid_message() {
        let video: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let audio: Vec<u8> = (0..200u32).map(|i| (i * 3) as u8).collect();
        let input = cat(&[
            &[
                0x06, //                   fmt 0, csid 6
                0x00, 0x00, 0x00, //       timestamp 0
                0x00, 0x01, 0x2c, //       message length 300
                0x09, //                   type 9
                0x01, 0x00, 0x00, 0x00, // message stream id 1
            ],
            &video[..128],
            &[
                0x04, //                   fmt 0, csid 4
                0x00, 0x00, 0x00, //       timestamp 0
                0x00, 0x00, 0xc8, //       message length 200
                0x08, //                   type 8
                0x01, 0x00, 0x00, 0x00, // message stream id 1
            ],
            &audio[..128],
            &[
                0x02, //                   fmt 0, csid 2
                0x00, 0x00, 0x00, //       timestamp 0
                0x00, 0x00, 0x04, //       message length 4
                0x01, //                   type 1 (Set Chunk Size)
                0x00, 0x00, 0x00, 0x00, // message stream id 0
                0x00, 0x00, 0x01, 0x00, // chunk size 256
            ],
            &[0xc6], //                    fmt 3, csid 6: the other 172 bytes at once
            &video[128..],
            &[0xc4], //                    fmt 3, csid 4: the other 72 bytes
            &audio[128..],
        ]);
        let want = [
            msg(2, 0, 1, 0, &[0, 0, 1, 0]),
            msg(6, 0, 9, 1, &video),
            msg(4, 0, 8, 1, &audio),
        ];
        assert_eq!(decode_all(128, &input).unwrap(), want);
        // Byte by byte too.
        let mut dec = decoder(128);
        let mut src = BytesMut::new();
        let mut got = Vec::new();
        for &b in &input {
            src.extend_from_slice(&[b]);
            got.extend(drive(&mut dec, &mut src).unwrap());
        }
        assert_eq!(got, want);
    }

    #[test]
    fn abort_drops_the_partial_message_and_its_bytes() {
        let input = [
            0x05, //                   fmt 0, csid 5
            0x00, 0x00, 0x00, //       timestamp 0
            0x00, 0x00, 0x08, //       message length 8
            0x09, //                   type 9
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x01, 0x02, 0x03, 0x04, // payload, first chunk (chunk size 4)
            0x02, //                   fmt 0, csid 2
            0x00, 0x00, 0x00, //       timestamp 0
            0x00, 0x00, 0x04, //       message length 4
            0x02, //                   type 2 (Abort)
            0x00, 0x00, 0x00, 0x00, // message stream id 0
            0x00, 0x00, 0x00, 0x05, // csid 5
            0xc5, //                   fmt 3, csid 5: a new message, old header
            0x0a, 0x0b, 0x0c, 0x0d, // payload, first chunk
            0xc5, //                   fmt 3, csid 5: continuation
            0x0e, 0x0f, 0x10, 0x11, // payload, last chunk
        ];
        let mut dec = decoder(4);
        let mut src = BytesMut::from(&input[..16]);
        assert_eq!(dec.decode(&mut src), Ok(None));
        assert!(dec.partial_bytes() >= 4);
        src.extend_from_slice(&input[16..32]);
        let abort = dec.decode(&mut src).unwrap().unwrap();
        assert_eq!(abort, msg(2, 0, 2, 0, &[0, 0, 0, 5]));
        dec.abort(5);
        assert_eq!(dec.partial_bytes(), 0);
        src.extend_from_slice(&input[32..]);
        assert_eq!(
            dec.decode(&mut src),
            Ok(Some(msg(5, 0, 9, 1, &[10, 11, 12, 13, 14, 15, 16, 17])))
        );
    }

    #[test]
    fn abort_in_the_middle_of_a_chunk_skips_its_rest() {
        let input = [
            0x05, //                   fmt 0, csid 5
            0x00, 0x00, 0x00, //       timestamp 0
            0x00, 0x00, 0x08, //       message length 8
            0x09, //                   type 9
            0x01, 0x00, 0x00, 0x00, // message stream id 1
            0x01, 0x02, 0x03, 0x04, // payload, first chunk (chunk size 4)
            0xc5, //                   fmt 3, csid 5
            0x05, 0x06, //             half of the second chunk ...
        ];
        let mut dec = decoder(4);
        let mut src = BytesMut::from(&input[..]);
        assert_eq!(dec.decode(&mut src), Ok(None));
        dec.abort(5);
        assert_eq!(dec.partial_bytes(), 0);
        src.extend_from_slice(&[
            0x07, 0x08, //             ... and its rest, skipped
            0x45, //                   fmt 1, csid 5
            0x00, 0x00, 0x01, //       timestamp delta 1
            0x00, 0x00, 0x01, //       message length 1
            0x08, //                   type 8
            0x09, //                   payload
        ]);
        assert_eq!(dec.decode(&mut src), Ok(Some(msg(5, 1, 8, 1, &[9]))));
    }

    // ---- errors ---------------------------------------------------------

    #[test]
    fn rejects_fmt1_2_3_on_a_csid_never_opened_with_fmt0() {
        let cases: [&[u8]; 4] = [
            &[0x43, 0, 0, 0, 0, 0, 1, 8, 0xaa], // fmt 1, csid 3 (the librtmp quirk: rejected)
            &[0x83, 0, 0, 0, 0xaa],             // fmt 2, csid 3
            &[0xc3, 0xaa],                      // fmt 3, csid 3
            &[0xc0, 0x00, 0xaa],                // fmt 3, csid 64 (two-byte form)
        ];
        for (input, (fmt, csid)) in cases.iter().zip([(1, 3), (2, 3), (3, 3), (3, 64)]) {
            assert_eq!(
                decode_all(128, input),
                Err(ChunkError::NoPreviousHeader { csid, fmt })
            );
        }
    }

    const HALF_MESSAGE_ON_CSID_3: [u8; 14] = [
        0x03, //                   fmt 0, csid 3
        0x00, 0x00, 0x00, //       timestamp 0
        0x00, 0x00, 0x04, //       message length 4
        0x09, //                   type 9
        0x01, 0x00, 0x00, 0x00, // message stream id 1
        0x01, 0x02, //             payload, first chunk (chunk size 2)
    ];

    #[test]
    fn rejects_length_change_mid_message() {
        let input = cat(&[
            &HALF_MESSAGE_ON_CSID_3,
            &[
                0x43, //             fmt 1, csid 3
                0x00, 0x00, 0x00, // timestamp delta 0
                0x00, 0xff, 0xff, // message length 65535 (was 4)
                0x09, //             type 9
            ],
        ]);
        assert_eq!(
            decode_all(2, &input),
            Err(ChunkError::HeaderChangedMidMessage { csid: 3, fmt: 1 })
        );
    }

    #[test]
    fn rejects_any_new_header_mid_message() {
        let headers: [(u8, &[u8]); 3] = [
            (0, &[0x03, 0, 0, 0, 0, 0, 4, 9, 1, 0, 0, 0]), // fmt 0, same fields
            (1, &[0x43, 0, 0, 0, 0, 0, 4, 9]),             // fmt 1, same length
            (2, &[0x83, 0, 0, 0]),                         // fmt 2
        ];
        for (fmt, h) in headers {
            let input = cat(&[&HALF_MESSAGE_ON_CSID_3, h, &[3, 4]]);
            assert_eq!(
                decode_all(2, &input),
                Err(ChunkError::HeaderChangedMidMessage { csid: 3, fmt })
            );
        }
    }

    #[test]
    fn rejects_message_too_long_at_its_header() {
        let header_only = [
            0x03, //                   fmt 0, csid 3
            0x00, 0x00, 0x00, //       timestamp 0
            0x10, 0x00, 0x01, //       message length 1048577
            0x09, //                   type 9
            0x01, 0x00, 0x00, 0x00, // message stream id 1
        ];
        let mut dec = ChunkDecoder::new(ChunkLimits {
            max_message_len: 1 << 20,
            ..limits()
        });
        let mut src = BytesMut::from(&header_only[..]);
        let err = dec.decode(&mut src).unwrap_err();
        assert_eq!(
            err,
            ChunkError::MessageTooLong {
                len: 1_048_577,
                max: 1_048_576
            }
        );
        assert_eq!(
            err.to_string(),
            "message length 1048577 exceeds limit 1048576"
        );
        assert_eq!(dec.partial_bytes(), 0);
    }

    #[test]
    fn rejects_too_many_chunk_streams() {
        let mut dec = ChunkDecoder::new(ChunkLimits {
            max_chunk_streams: 3,
            ..limits()
        });
        let mut src = BytesMut::new();
        for csid in [3u32, 4, 300] {
            src.extend_from_slice(&encode(128, &msg(csid, 0, 8, 1, &[1])));
        }
        // Reusing an open csid is fine.
        src.extend_from_slice(&encode(128, &msg(4, 0, 8, 1, &[1])));
        src.extend_from_slice(&encode(128, &msg(5, 0, 8, 1, &[1])));
        for _ in 0..4 {
            assert!(dec.decode(&mut src).unwrap().is_some());
        }
        let err = dec.decode(&mut src).unwrap_err();
        assert_eq!(err, ChunkError::TooManyChunkStreams { csid: 5, max: 3 });
        assert_eq!(
            err.to_string(),
            "chunk stream 5 exceeds the limit of 3 chunk streams"
        );
    }

    #[test]
    fn caps_partial_bytes_across_chunk_streams() {
        // Each csid declares a 0xffffff-byte message and sends one 4096-byte
        // chunk of it; the cap is hit on the third, whatever the buffering.
        let mut dec = ChunkDecoder::new(ChunkLimits {
            max_partial_bytes: 10_000,
            ..limits()
        });
        dec.set_chunk_size(4096).unwrap();
        let mut src = BytesMut::new();
        for csid in 3..=6u8 {
            src.extend_from_slice(&[
                csid, //             fmt 0, csid
                0x00, 0x00, 0x00, // timestamp 0
                0xff, 0xff, 0xff, // message length 0xffffff
                0x09, //             type 9
                0x01, 0x00, 0x00, 0x00,
            ]);
            src.extend_from_slice(&[0u8; 4096]);
        }
        let err = dec.decode(&mut src).unwrap_err();
        match err {
            ChunkError::PartialBytesExceeded { held, max } => {
                assert_eq!(max, 10_000);
                assert!(held > 10_000 && held <= 3 * 4096, "held {held}");
            }
            e => panic!("unexpected {e}"),
        }
        assert!(err.to_string().ends_with("exceed limit 10000"));
    }

    #[test]
    fn rejects_chunk_size_zero() {
        let mut dec = decoder(128);
        assert_eq!(
            dec.set_chunk_size(0),
            Err(ChunkError::InvalidChunkSize { raw: 0 })
        );
        assert_eq!(dec.chunk_size(), 128);
    }

    #[test]
    fn rejects_chunk_size_with_bit_31_set() {
        let mut dec = decoder(128);
        for raw in [0x8000_0000, 0xffff_ffff, 0x8000_1000] {
            assert_eq!(
                dec.set_chunk_size(raw),
                Err(ChunkError::InvalidChunkSize { raw })
            );
        }
        assert_eq!(dec.chunk_size(), 128);
    }

    #[test]
    fn chunk_size_above_0xffffff_acts_as_0xffffff() {
        let mut dec = decoder(128);
        dec.set_chunk_size(0x7fff_ffff).unwrap();
        assert_eq!(dec.chunk_size(), MAX_CHUNK_SIZE);
        dec.set_chunk_size(1).unwrap();
        assert_eq!(dec.chunk_size(), 1);
        let mut enc = ChunkEncoder::new();
        enc.set_chunk_size(0x7fff_ffff);
        assert_eq!(enc.chunk_size(), MAX_CHUNK_SIZE);
        enc.set_chunk_size(0);
        assert_eq!(enc.chunk_size(), 1);
    }

    // ---- properties -----------------------------------------------------

    /// A writer that compresses headers like real encoders (fmt 1/2/3 for new
    /// messages when the state allows), in ffmpeg style (extended timestamp
    /// repeated on type 3 chunks) or rtmpdump style (not repeated).
    #[derive(Default)]
    struct RefWriter {
        prev: HashMap<u32, Prev>,
    }

    #[derive(Clone, Copy)]
    struct Prev {
        timestamp: u32,
        delta: u32,
        length: usize,
        type_id: u8,
        stream_id: u32,
        extended: bool,
    }

    impl RefWriter {
        /// The chunks of `m`, each a byte vector; `pick` chooses among the
        /// header forms the state allows.
        fn chunks(&mut self, m: &Message, cs: usize, pick: u8, repeat_ext: bool) -> Vec<Vec<u8>> {
            let len = m.payload.len();
            let prev = self.prev.get(&m.csid).copied();
            let mut forms = vec![0u8];
            if let Some(p) = prev {
                if p.stream_id == m.stream_id {
                    forms.push(1);
                    if p.length == len && p.type_id == m.type_id {
                        forms.push(2);
                        if m.timestamp.wrapping_sub(p.timestamp) == p.delta {
                            forms.push(3);
                        }
                    }
                }
            }
            // Half the time the most compact form, as real encoders do.
            let fmt = if pick & 1 == 0 {
                forms[forms.len() - 1]
            } else {
                forms[usize::from(pick >> 1) % forms.len()]
            };
            let (field, extended) = match (fmt, prev) {
                (0, _) => (m.timestamp, m.timestamp >= EXTENDED),
                (3, Some(p)) => (p.delta, p.extended),
                (_, Some(p)) => {
                    let d = m.timestamp.wrapping_sub(p.timestamp);
                    (d, d >= EXTENDED)
                }
                _ => unreachable!(),
            };
            let mut basic = HeaderBytes {
                bytes: [0; MAX_CHUNK_HEADER_LEN],
                len: 0,
            };
            put_basic_header(&mut basic, fmt, m.csid);
            let mut first = basic.as_slice().to_vec();
            if fmt < 3 {
                let f = if extended { EXTENDED } else { field };
                first.extend_from_slice(&f.to_be_bytes()[1..]);
                if fmt < 2 {
                    first.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
                    first.push(m.type_id);
                }
                if fmt == 0 {
                    first.extend_from_slice(&m.stream_id.to_le_bytes());
                }
            }
            if extended && (fmt < 3 || repeat_ext) {
                first.extend_from_slice(&field.to_be_bytes());
            }
            let mut cont = vec![basic.bytes[0] | 0xc0];
            cont.extend_from_slice(&basic.as_slice()[1..]);
            if extended && repeat_ext {
                cont.extend_from_slice(&field.to_be_bytes());
            }
            self.prev.insert(
                m.csid,
                Prev {
                    timestamp: m.timestamp,
                    delta: field,
                    length: len,
                    type_id: m.type_id,
                    stream_id: m.stream_id,
                    extended,
                },
            );
            let mut out = Vec::new();
            let mut off = 0;
            loop {
                let n = (len - off).min(cs);
                let mut c = if off == 0 {
                    first.clone()
                } else {
                    cont.clone()
                };
                c.extend_from_slice(&m.payload[off..off + n]);
                out.push(c);
                off += n;
                if off >= len {
                    return out;
                }
            }
        }
    }

    /// Chunk stream ids the properties use; the first three are picked most
    /// often so that headers get compressed against earlier ones.
    const CSIDS: [u32; 11] = [3, 320, 4, 2, 5, 63, 64, 65, 319, 1000, 65_599];

    #[derive(Debug, Clone)]
    struct Spec {
        csid: usize,
        /// 0: all fields fresh; 1: same stream id; 2: same length, type and
        /// stream id; 3: as 2, with the previous spacing in time.
        mode: u8,
        timestamp: u32,
        type_id: u8,
        stream_id: u32,
        len: usize,
        seed: u64,
        pick: u8,
    }

    fn timestamp() -> impl Strategy<Value = u32> {
        prop_oneof![
            0..100_000u32,
            0xff_ff00..=0x100_0100u32,
            0xffff_ff00..=u32::MAX,
            any::<u32>(),
        ]
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (
            prop_oneof![3 => 0..3usize, 1 => 0..CSIDS.len()],
            prop_oneof![1 => 0..2u8, 3 => 2..4u8],
            timestamp(),
            any::<u8>(),
            prop_oneof![Just(0u32), Just(1), any::<u32>()],
            prop_oneof![0..300usize, 0..20_000usize],
            any::<u64>(),
            any::<u8>(),
        )
            .prop_map(
                |(csid, mode, timestamp, type_id, stream_id, len, seed, pick)| Spec {
                    csid,
                    mode,
                    timestamp,
                    type_id,
                    stream_id,
                    len,
                    seed,
                    pick,
                },
            )
    }

    fn payload(len: usize, seed: u64) -> Bytes {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect::<Vec<u8>>()
            .into()
    }

    /// Messages from specs, with fields repeated as each spec's mode asks.
    fn messages(specs: &[Spec]) -> Vec<Message> {
        let mut last: HashMap<u32, (Message, u32)> = HashMap::new();
        let mut out = Vec::new();
        for s in specs {
            let csid = CSIDS[s.csid];
            let mut m = Message {
                csid,
                timestamp: s.timestamp,
                type_id: s.type_id,
                stream_id: s.stream_id,
                payload: payload(s.len, s.seed),
            };
            if let Some((p, spacing)) = last.get(&csid) {
                if s.mode >= 1 {
                    m.stream_id = p.stream_id;
                }
                if s.mode >= 2 {
                    m.type_id = p.type_id;
                    m.payload = payload(p.payload.len(), s.seed);
                }
                if s.mode >= 3 {
                    m.timestamp = p.timestamp.wrapping_add(*spacing);
                }
            }
            let spacing = match last.get(&csid) {
                Some((p, _)) => m.timestamp.wrapping_sub(p.timestamp),
                None => m.timestamp,
            };
            last.insert(csid, (m.clone(), spacing));
            out.push(m);
        }
        out
    }

    /// The wire bytes of `msgs`, chunks of different csids interleaved as
    /// `order` says, ending with a small sentinel message on csid 2.
    fn interleave(
        msgs: &[Message],
        cs: usize,
        repeat_ext: bool,
        picks: &[Spec],
        order: &[u8],
    ) -> Vec<u8> {
        let mut w = RefWriter::default();
        let mut queues: Vec<(u32, VecDeque<Vec<u8>>)> = Vec::new();
        for (m, s) in msgs.iter().zip(picks) {
            let chunks = w.chunks(m, cs, s.pick, repeat_ext);
            match queues.iter_mut().find(|(c, _)| *c == m.csid) {
                Some((_, q)) => q.extend(chunks),
                None => queues.push((m.csid, chunks.into())),
            }
        }
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let live: Vec<usize> = (0..queues.len())
                .filter(|&q| !queues[q].1.is_empty())
                .collect();
            if live.is_empty() {
                break;
            }
            let o = order.get(i % order.len().max(1)).copied().unwrap_or(0);
            let q = live[usize::from(o) % live.len()];
            out.extend(queues[q].1.pop_front().unwrap());
            i += 1;
        }
        out.extend(encode(128, &sentinel()));
        out
    }

    fn sentinel() -> Message {
        msg(2, 0, 4, 0, &[0x5a])
    }

    fn by_csid(msgs: &[Message]) -> Vec<Vec<Message>> {
        CSIDS
            .iter()
            .map(|&c| msgs.iter().filter(|m| m.csid == c).cloned().collect())
            .collect()
    }

    fn decode_in_pieces(cs: u32, input: &[u8], sizes: &[usize]) -> Vec<Message> {
        let (out, guesses) = try_in_pieces(cs, input, sizes);
        assert_eq!(guesses, 0, "the decoder had to guess");
        out.unwrap()
    }

    /// Decodes `input` cut into `sizes` (cycled), and says how many times the
    /// decoder had to guess a peer's extended-timestamp habit (case 44).
    fn try_in_pieces(
        cs: u32,
        input: &[u8],
        sizes: &[usize],
    ) -> (Result<Vec<Message>, ChunkError>, u64) {
        let mut dec = decoder(cs);
        let mut src = BytesMut::new();
        let mut out = Vec::new();
        let mut off = 0;
        let mut i = 0;
        while off < input.len() {
            let n = sizes[i % sizes.len()].clamp(1, input.len() - off);
            i += 1;
            src.extend_from_slice(&input[off..off + n]);
            off += n;
            loop {
                match dec.decode(&mut src) {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => return (Err(e), dec.guesses()),
                }
            }
        }
        assert!(src.is_empty());
        assert_eq!(dec.partial_bytes(), 0);
        (Ok(out), dec.guesses())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn round_trips_whole_byte_by_byte_and_in_random_splits(
            specs in prop::collection::vec(spec(), 1..12),
            chunk_size in prop_oneof![1..300u32, 128..=128u32, 4096..=4096u32, 1..70_000u32],
            repeat_ext in any::<bool>(),
            order in prop::collection::vec(any::<u8>(), 1..32),
            splits in prop::collection::vec(1..5000usize, 1..16),
        ) {
            let msgs = messages(&specs);
            let input = interleave(&msgs, chunk_size as usize, repeat_ext, &specs, &order);
            let whole = decode_in_pieces(chunk_size, &input, &[input.len()]);
            let mut want = msgs.clone();
            want.push(sentinel());
            prop_assert_eq!(by_csid(&whole), by_csid(&want));
            prop_assert_eq!(whole.len(), want.len());
            // Cut input decodes alike wherever the decoder did not have to
            // guess: bytes consistent with both extended-timestamp habits
            // decode by where they were cut (case 44).
            for sizes in [&[1][..], &splits] {
                if let (got, 0) = try_in_pieces(chunk_size, &input, sizes) {
                    prop_assert_eq!(&got.unwrap(), &whole);
                }
            }
        }

        #[test]
        fn encoder_output_decodes_and_equals_the_wire_form(
            specs in prop::collection::vec(spec(), 1..8),
            chunk_size in prop_oneof![1..300u32, 4096..=4096u32, 1..70_000u32],
            splits in prop::collection::vec(1..5000usize, 1..16),
        ) {
            let msgs = messages(&specs);
            let mut enc = ChunkEncoder::new();
            enc.set_chunk_size(chunk_size);
            let mut wire = BytesMut::new();
            for m in &msgs {
                let before = wire.len();
                enc.encode(m, &mut wire).unwrap();
                prop_assert_eq!(wire_form(chunk_size, m).unwrap().to_vec(), &wire[before..]);
            }
            prop_assert_eq!(decode_in_pieces(chunk_size, &wire, &[wire.len()]), msgs.clone());
            prop_assert_eq!(decode_in_pieces(chunk_size, &wire, &splits), msgs);
        }

        #[test]
        fn hostile_bytes_never_panic_and_stay_bounded(
            input in prop::collection::vec(any::<u8>(), 0..4000),
            chunk_size in 1..300u32,
            splits in prop::collection::vec(1..300usize, 1..8),
        ) {
            let mut dec = ChunkDecoder::new(ChunkLimits {
                max_message_len: 3000,
                max_chunk_streams: 4,
                max_partial_bytes: 5000,
            });
            dec.set_chunk_size(chunk_size).unwrap();
            let mut src = BytesMut::new();
            let mut off = 0;
            let mut i = 0;
            'feed: while off < input.len() {
                let n = splits[i % splits.len()].min(input.len() - off);
                i += 1;
                src.extend_from_slice(&input[off..off + n]);
                off += n;
                loop {
                    match dec.decode(&mut src) {
                        Ok(Some(m)) => prop_assert!(m.payload.len() <= 3000),
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                    prop_assert!(dec.partial_bytes() <= 5000);
                }
            }
        }
    }
    // ---- the 24-bit limits (docs/hardening.md case 43) ------------------
    //
    // libFuzzer's inputs stay far below 16 MiB, so these sizes are reached
    // here: messages around 0xFFFFFF bytes, in few cases (each is 16 MiB).

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]

        #[test]
        fn messages_at_the_24_bit_limit_round_trip_or_are_refused(
            len in (MAX_LENGTH_FIELD - 8)..=(MAX_LENGTH_FIELD + 8),
            chunk_size in prop::sample::select(vec![128u32, 4096, 65_536, MAX_CHUNK_SIZE]),
            timestamp in prop::sample::select(vec![0u32, 0xFF_FFFE, 0xFF_FFFF, u32::MAX]),
        ) {
            let m = Message {
                csid: 6,
                timestamp,
                type_id: 9,
                stream_id: 1,
                payload: Bytes::from(vec![0x5a; len]),
            };
            let mut enc = ChunkEncoder::new();
            enc.set_chunk_size(chunk_size);
            let mut wire = BytesMut::new();
            let encoded = enc.encode(&m, &mut wire);
            let form = wire_form(chunk_size, &m);
            if len > MAX_LENGTH_FIELD {
                prop_assert_eq!(encoded, Err(EncodeError::MessageTooLong { len }));
                prop_assert!(form.is_err());
                prop_assert!(wire.is_empty(), "nothing written for a refused message");
            } else {
                prop_assert!(encoded.is_ok());
                prop_assert_eq!(form.unwrap().to_vec(), wire.to_vec());
                let mut dec = decoder(chunk_size);
                let got = dec.decode(&mut wire).unwrap().expect("one whole message");
                prop_assert_eq!(got, m);
                prop_assert!(wire.is_empty());
            }
        }
    }
}
