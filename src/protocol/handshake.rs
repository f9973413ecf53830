//! The RTMP handshake (spec 5.2; the FP9 digest variant per PROTOCOL_NOTES.md).
//! PLACEHOLDER: interface only; the implementation replaces this file.

use bytes::BytesMut;
use std::fmt;

/// Size of C1/C2/S1/S2.
pub const HANDSHAKE_SIZE: usize = 1536;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    UnsupportedVersion(u8),
}
impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for HandshakeError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeProgress {
    /// Feed more bytes.
    NeedMore,
    /// Complete; bytes after the handshake are left in the source buffer.
    Done,
}

/// Server side: reads C0 C1 … C2, writes S0 S1 S2.
pub struct ServerHandshake {}

impl ServerHandshake {
    /// `seed` fills S1's random bytes (a cheap PRNG; nothing secret rides on it).
    pub fn new(seed: u64) -> Self {
        let _ = seed;
        todo!()
    }
    /// Consumes handshake bytes from `src` (never more than the handshake),
    /// appends S0+S1+S2 to `dst` once C0+C1 are in.
    pub fn handle_input(
        &mut self,
        src: &mut BytesMut,
        dst: &mut BytesMut,
    ) -> Result<HandshakeProgress, HandshakeError> {
        let _ = (src, dst);
        todo!()
    }
    /// True when C1 carried an FP9 digest and S1/S2 were answered with digests.
    pub fn used_digest(&self) -> bool {
        todo!()
    }
}

/// Client side (for tests, the load generator and relays).
pub struct ClientHandshake {}

impl ClientHandshake {
    pub fn new(seed: u64) -> Self {
        let _ = seed;
        todo!()
    }
    /// Appends C0+C1 to `dst`. Call once, first.
    pub fn start(&mut self, dst: &mut BytesMut) {
        let _ = dst;
        todo!()
    }
    /// Consumes S0 S1 S2 from `src`, appends C2 to `dst`.
    pub fn handle_input(
        &mut self,
        src: &mut BytesMut,
        dst: &mut BytesMut,
    ) -> Result<HandshakeProgress, HandshakeError> {
        let _ = (src, dst);
        todo!()
    }
}
