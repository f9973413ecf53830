//! The chunk stream (spec 5.3). PLACEHOLDER: interface only; the
//! implementation replaces this file.

use crate::wire::WireForm;
use bytes::{Bytes, BytesMut};
use std::fmt;

/// Chunk size both sides start with (spec 5.4.1).
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// Largest effective chunk size: larger Set Chunk Size values act as this (spec 5.4.1).
pub const MAX_CHUNK_SIZE: u32 = 0xFF_FFFF;

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
    pub max_message_len: u32,
    pub max_chunk_streams: usize,
    pub max_partial_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkError {
    MessageTooLong { len: u32, max: u32 },
}
impl fmt::Display for ChunkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for ChunkError {}

pub struct ChunkDecoder {}

impl ChunkDecoder {
    pub fn new(limits: ChunkLimits) -> Self {
        let _ = limits;
        todo!()
    }
    /// Decodes chunks from `src` until one message is complete (`Ok(Some)`),
    /// or `src` runs out (`Ok(None)`: need more bytes).
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ChunkError> {
        let _ = src;
        todo!()
    }
    pub fn chunk_size(&self) -> u32 {
        todo!()
    }
    /// Applies a Set Chunk Size value as received (31-bit; 0 or bit 31 set is an error).
    pub fn set_chunk_size(&mut self, raw: u32) -> Result<(), ChunkError> {
        let _ = raw;
        todo!()
    }
    /// Abort Message (spec 5.4.2): drops the partial message on `csid`.
    pub fn abort(&mut self, csid: u32) {
        let _ = csid;
        todo!()
    }
}

/// Writes messages as chunks.
pub struct ChunkEncoder {}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        todo!()
    }
    pub fn chunk_size(&self) -> u32 {
        todo!()
    }
    pub fn set_chunk_size(&mut self, size: u32) {
        let _ = size;
        todo!()
    }
    /// Appends the chunks of `msg` to `dst` (copies the payload: for control
    /// messages and commands).
    pub fn encode(&self, msg: &Message, dst: &mut BytesMut) {
        let _ = (msg, dst);
        todo!()
    }
}

/// The chunked form of `msg` at `chunk_size` without copying its payload.
pub fn wire_form(chunk_size: u32, msg: &Message) -> WireForm {
    let _ = (chunk_size, msg);
    todo!()
}
