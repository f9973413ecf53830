//! The RTMP handshake: spec 5.2 (C0/C1/C2 and S0/S1/S2), plus the Flash
//! Player 9 digest variant that Flash-era players need before they will play
//! H.264 (see docs/protocol.md, "1. Handshake").
//!
//! Sans-IO: both sides take bytes in a [`BytesMut`] and append their answer to
//! another; there is no socket, no clock (every time field is 0) and no
//! allocation before a valid C0.
//!
//! # Simple handshake (spec 5.2.2–5.2.4)
//! C0/S0 are one byte, the version: 3. C1/S1 are `time(4) zero(4) random(1528)`;
//! C2/S2 echo the peer's C1/S1. RTMPE (versions 6 and 8) and every other
//! version are refused as soon as the first byte is seen.
//!
//! # FP9 digest handshake
//! A C1 whose bytes 4..8 (the "zero" field) are not zero carries a version and
//! an HMAC-SHA256 digest of itself, hidden at one of two places:
//!
//! * scheme 0: offset = `(c1[8] + c1[9] + c1[10] + c1[11]) % 728 + 12`
//! * scheme 1: offset = `(c1[772] + c1[773] + c1[774] + c1[775]) % 728 + 776`
//!
//! The digest is HMAC-SHA256 keyed with the first 30 bytes of the Flash
//! Player key ("Genuine Adobe Flash Player 001") over the 1504 bytes of C1
//! that remain once the 32 digest bytes are cut out. When the server finds it,
//! it answers with an S1 digested the same way at the same scheme (keyed with
//! the first 36 bytes of the media server key, "Genuine Adobe Flash Media
//! Server 001", and a nonzero version), and an S2 of 1504 random bytes
//! followed by `HMAC(HMAC(full 68-byte server key, C1 digest), S2[..1504])`.
//! A C1 with a version but no valid digest gets the simple answer.
//!
//! C2 is read and ignored: several clients get it wrong.

#![forbid(unsafe_code)]

use bytes::{Buf, BufMut, BytesMut};
use ring::hmac;
use std::fmt;

/// Size of C1/C2/S1/S2.
pub const HANDSHAKE_SIZE: usize = 1536;

/// The only RTMP version accepted in C0 and S0 (spec 5.2.2).
pub const RTMP_VERSION: u8 = 3;

/// Length of an HMAC-SHA256 digest.
const DIGEST_LEN: usize = 32;

/// The part of a digest-handshake S2 (or C2) covered by its signature.
const SIGNED_LEN: usize = HANDSHAKE_SIZE - DIGEST_LEN;

/// The 32 bytes both well-known handshake keys end with.
const KEY_TAIL: [u8; 32] = [
    0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
    0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];

/// The ASCII head of the Flash Player key: keys C1's digest.
const FP_KEY_HEAD: &[u8; 30] = b"Genuine Adobe Flash Player 001";

/// The ASCII head of the media server key: keys S1's digest.
const FMS_KEY_HEAD: &[u8; 36] = b"Genuine Adobe Flash Media Server 001";

/// The full 68-byte media server key (head + tail): keys the S2 signature key.
const FMS_KEY: [u8; 68] = concat_key(FMS_KEY_HEAD);

/// The full 62-byte Flash Player key (head + tail). Only a client that signs
/// its C2 needs it; kept so the constants can be checked side by side.
#[cfg(test)]
const FP_KEY: [u8; 62] = concat_key(FP_KEY_HEAD);

const fn concat_key<const H: usize, const N: usize>(head: &[u8; H]) -> [u8; N] {
    let mut key = [0u8; N];
    let mut i = 0;
    while i < H {
        key[i] = head[i];
        i += 1;
    }
    while i < N {
        key[i] = KEY_TAIL[i - H];
        i += 1;
    }
    key
}

/// Version bytes (C1/S1 bytes 4..8) this server puts in a digest S1. Players
/// such as ffmpeg validate S1's digest only when the first byte is >= 3.
const SERVER_VERSION: [u8; 4] = [0x0d, 0x0e, 0x0a, 0x0d];

/// Version bytes a digest client puts in C1 (Flash Player 9.0.124.2).
const CLIENT_VERSION: [u8; 4] = [0x09, 0x00, 0x7c, 0x02];

/// Why a handshake was refused. Every variant names the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The client's C0 asked for a version other than 3 (6 and 8 are RTMPE).
    UnsupportedVersion(u8),
    /// The server's S0 answered with a version other than 3.
    UnsupportedServerVersion(u8),
    /// [`ClientHandshake::handle_input`] was called before
    /// [`ClientHandshake::start`].
    ClientNotStarted,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::UnsupportedVersion(v @ (6 | 8)) => write!(
                f,
                "unsupported RTMP version {v} in C0 (6/8 are RTMPE, encrypted RTMP, refused)"
            ),
            Self::UnsupportedVersion(v) => write!(
                f,
                "unsupported RTMP version {v} in C0 (only {RTMP_VERSION} is accepted)"
            ),
            Self::UnsupportedServerVersion(v) => write!(
                f,
                "server answered RTMP version {v} in S0 (expected {RTMP_VERSION})"
            ),
            Self::ClientNotStarted => {
                f.write_str("client handshake fed input before start() sent C0+C1")
            }
        }
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

/// Where an FP9 digest sits in a 1536-byte C1 or S1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestScheme {
    /// Offset bytes at 8..12: digest at `sum % 728 + 12` (ffmpeg's C1).
    Scheme0,
    /// Offset bytes at 772..776: digest at `sum % 728 + 776` (Flash Player's C1).
    Scheme1,
}

impl DigestScheme {
    /// Where the four bytes that place the digest start.
    const fn base(self) -> usize {
        match self {
            Self::Scheme0 => 8,
            Self::Scheme1 => 772,
        }
    }

    /// Offset of the 32 digest bytes in `block` under this scheme. Always
    /// leaves room for the digest: at most 1503, ending at 1535.
    pub fn digest_offset(self, block: &[u8; HANDSHAKE_SIZE]) -> usize {
        let base = self.base();
        let sum: usize = block[base..base + 4].iter().map(|&b| usize::from(b)).sum();
        sum % 728 + base + 4
    }
}

/// HMAC-SHA256 of `block` with the 32 bytes at `offset` left out.
fn block_digest(block: &[u8; HANDSHAKE_SIZE], offset: usize, key: &[u8]) -> [u8; DIGEST_LEN] {
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    ctx.update(&block[..offset]);
    ctx.update(&block[offset + DIGEST_LEN..]);
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; DIGEST_LEN] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg);
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Looks for a valid digest keyed by `key`, scheme 0 first; returns the scheme
/// and the digest's offset.
fn find_digest(block: &[u8; HANDSHAKE_SIZE], key: &[u8]) -> Option<(DigestScheme, usize)> {
    [DigestScheme::Scheme0, DigestScheme::Scheme1]
        .into_iter()
        .find_map(|scheme| {
            let offset = scheme.digest_offset(block);
            let found = block[offset..offset + DIGEST_LEN] == block_digest(block, offset, key);
            found.then_some((scheme, offset))
        })
}

/// Writes the digest of `block` keyed by `key` at `scheme`'s offset; returns
/// the offset.
fn imprint_digest(block: &mut [u8; HANDSHAKE_SIZE], scheme: DigestScheme, key: &[u8]) -> usize {
    let offset = scheme.digest_offset(block);
    let digest = block_digest(block, offset, key);
    block[offset..offset + DIGEST_LEN].copy_from_slice(&digest);
    offset
}

/// The signature ending a digest S2:
/// `HMAC(key = HMAC(full server key, C1 digest), msg = S2[..1504])`.
fn s2_signature(c1_digest: &[u8], s2_signed: &[u8]) -> [u8; DIGEST_LEN] {
    hmac_sha256(&hmac_sha256(&FMS_KEY, c1_digest), s2_signed)
}

/// splitmix64: a cheap PRNG for the "random" fields. Spec 5.2.3: "there is no
/// need for cryptographically-secure randomness, or even dynamic values".
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Copies up to what `buf[*filled..]` still needs from `src`; true once full.
fn fill_from(buf: &mut [u8; HANDSHAKE_SIZE], filled: &mut usize, src: &mut BytesMut) -> bool {
    let n = (HANDSHAKE_SIZE - *filled).min(src.len());
    buf[*filled..*filled + n].copy_from_slice(&src[..n]);
    src.advance(n);
    *filled += n;
    *filled == HANDSHAKE_SIZE
}

/// Drops up to `*remaining` bytes of a block whose content is ignored; true
/// once all of it is in.
fn skip_from(remaining: &mut usize, src: &mut BytesMut) -> bool {
    let n = (*remaining).min(src.len());
    src.advance(n);
    *remaining -= n;
    *remaining == 0
}

/// How the server answered C1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// S1 random, S2 echoes C1.
    Simple,
    /// S1 digested and S2 signed, at the scheme C1 used.
    Digest(DigestScheme),
}

/// The server's state, named for what it waits for.
///
/// ```text
///            C0 == 3                  1536 bytes of C1          1536 bytes of C2
///                                     (write S0 S1 S2)          (content ignored)
/// AwaitingC0 ───────► AwaitingC1 { c1, filled } ───────► AwaitingC2 { answer, remaining } ───────► Done { answer }
///     │
///     └── C0 != 3 (6/8 = RTMPE, 0, 255, …): Err(UnsupportedVersion), nothing consumed,
///         nothing allocated
/// ```
///
/// Only `AwaitingC1` holds a buffer, allocated once C0 is known to be 3.
enum ServerState {
    AwaitingC0,
    AwaitingC1 {
        c1: Box<[u8; HANDSHAKE_SIZE]>,
        filled: usize,
    },
    AwaitingC2 {
        answer: Answer,
        remaining: usize,
    },
    Done {
        answer: Answer,
    },
}

impl fmt::Debug for ServerState {
    // By hand, so the C1 buffer is never dumped into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AwaitingC0 => f.write_str("AwaitingC0"),
            Self::AwaitingC1 { filled, .. } => f
                .debug_struct("AwaitingC1")
                .field("filled", filled)
                .finish_non_exhaustive(),
            Self::AwaitingC2 { answer, remaining } => f
                .debug_struct("AwaitingC2")
                .field("answer", answer)
                .field("remaining", remaining)
                .finish(),
            Self::Done { answer } => f.debug_struct("Done").field("answer", answer).finish(),
        }
    }
}

/// Server side: reads C0 C1 … C2, writes S0 S1 S2.
///
/// Call [`handle_input`](Self::handle_input) with the connection's read buffer
/// each time bytes arrive, until it returns [`HandshakeProgress::Done`]; what
/// is left in the buffer then belongs to the chunk stream.
#[derive(Debug)]
pub struct ServerHandshake {
    seed: u64,
    state: ServerState,
}

impl ServerHandshake {
    /// `seed` fills S1's random bytes (a cheap PRNG; nothing secret rides on it).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            state: ServerState::AwaitingC0,
        }
    }

    /// Consumes handshake bytes from `src` (never more than the handshake),
    /// appends S0+S1+S2 to `dst` once C0+C1 are in.
    ///
    /// A bad C0 is reported as soon as its byte is in `src`, and left there.
    /// Once `Done`, further calls consume nothing and return `Done`.
    pub fn handle_input(
        &mut self,
        src: &mut BytesMut,
        dst: &mut BytesMut,
    ) -> Result<HandshakeProgress, HandshakeError> {
        loop {
            match &mut self.state {
                ServerState::AwaitingC0 => {
                    let Some(&version) = src.first() else {
                        return Ok(HandshakeProgress::NeedMore);
                    };
                    if version != RTMP_VERSION {
                        return Err(HandshakeError::UnsupportedVersion(version));
                    }
                    src.advance(1);
                    self.state = ServerState::AwaitingC1 {
                        c1: Box::new([0; HANDSHAKE_SIZE]),
                        filled: 0,
                    };
                }
                ServerState::AwaitingC1 { c1, filled } => {
                    if !fill_from(c1, filled, src) {
                        return Ok(HandshakeProgress::NeedMore);
                    }
                    let answer = answer_c1(c1, &mut SplitMix64(self.seed), dst);
                    self.state = ServerState::AwaitingC2 {
                        answer,
                        remaining: HANDSHAKE_SIZE,
                    };
                }
                ServerState::AwaitingC2 { answer, remaining } => {
                    if !skip_from(remaining, src) {
                        return Ok(HandshakeProgress::NeedMore);
                    }
                    self.state = ServerState::Done { answer: *answer };
                }
                ServerState::Done { .. } => return Ok(HandshakeProgress::Done),
            }
        }
    }

    /// True when C1 carried an FP9 digest and S1/S2 were answered with digests.
    pub fn used_digest(&self) -> bool {
        self.digest_scheme().is_some()
    }

    /// The scheme at which C1's digest was found (and S1's was written), once
    /// S1 has been written; `None` for a simple handshake or before C1.
    pub fn digest_scheme(&self) -> Option<DigestScheme> {
        match self.state {
            ServerState::AwaitingC2 {
                answer: Answer::Digest(scheme),
                ..
            }
            | ServerState::Done {
                answer: Answer::Digest(scheme),
            } => Some(scheme),
            _ => None,
        }
    }
}

/// Appends S0 S1 S2 answering `c1` to `dst`.
fn answer_c1(c1: &[u8; HANDSHAKE_SIZE], rng: &mut SplitMix64, dst: &mut BytesMut) -> Answer {
    dst.reserve(1 + 2 * HANDSHAKE_SIZE);
    dst.put_u8(RTMP_VERSION);

    let mut s1 = [0u8; HANDSHAKE_SIZE];
    rng.fill(&mut s1[8..]);

    let wants_digest = c1[4..8] != [0; 4];
    let found = if wants_digest {
        find_digest(c1, FP_KEY_HEAD)
    } else {
        None
    };
    match found {
        Some((scheme, c1_offset)) => {
            s1[4..8].copy_from_slice(&SERVER_VERSION);
            imprint_digest(&mut s1, scheme, FMS_KEY_HEAD);
            dst.extend_from_slice(&s1);

            let mut s2 = [0u8; HANDSHAKE_SIZE];
            rng.fill(&mut s2[..SIGNED_LEN]);
            let signature = s2_signature(&c1[c1_offset..c1_offset + DIGEST_LEN], &s2[..SIGNED_LEN]);
            s2[SIGNED_LEN..].copy_from_slice(&signature);
            dst.extend_from_slice(&s2);
            Answer::Digest(scheme)
        }
        None => {
            if wants_digest {
                log::debug!(
                    "C1 version {:?} but no FP9 digest at either scheme: answering simple",
                    &c1[4..8]
                );
            }
            // S1: time 0, zero 0 (a nonzero version would make players look
            // for a digest), random. S2: C1 echoed byte for byte.
            dst.extend_from_slice(&s1);
            dst.extend_from_slice(c1);
            Answer::Simple
        }
    }
}

/// The client's state, named for what it waits for.
///
/// ```text
///                start()                         S0 == 3                        1536 bytes of S1            1536 bytes of S2
///               (write C0 C1)                                                   (write C2 = S1)             (content ignored)
/// AwaitingStart ───────────► AwaitingS0 ─────────► AwaitingS1 { s1, filled } ─────────────► AwaitingS2 { remaining } ─────────► Done
///                                │
///                                └── S0 != 3: Err(UnsupportedServerVersion), nothing consumed
/// ```
enum ClientState {
    AwaitingStart,
    AwaitingS0,
    AwaitingS1 {
        s1: Box<[u8; HANDSHAKE_SIZE]>,
        filled: usize,
    },
    AwaitingS2 {
        remaining: usize,
    },
    Done,
}

impl fmt::Debug for ClientState {
    // By hand, so the S1 buffer is never dumped into a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AwaitingStart => f.write_str("AwaitingStart"),
            Self::AwaitingS0 => f.write_str("AwaitingS0"),
            Self::AwaitingS1 { filled, .. } => f
                .debug_struct("AwaitingS1")
                .field("filled", filled)
                .finish_non_exhaustive(),
            Self::AwaitingS2 { remaining } => f
                .debug_struct("AwaitingS2")
                .field("remaining", remaining)
                .finish(),
            Self::Done => f.write_str("Done"),
        }
    }
}

/// Client side (for tests, the load generator and relays).
///
/// [`start`](Self::start) once, then [`handle_input`](Self::handle_input) with
/// the read buffer until `Done`. S2 is not checked, and C2 echoes S1 even in
/// digest mode (servers do not check C2 strictly either).
#[derive(Debug)]
pub struct ClientHandshake {
    seed: u64,
    digest: Option<DigestScheme>,
    state: ClientState,
}

impl ClientHandshake {
    /// A client sending a simple C1 (time 0, zero version, random).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            digest: None,
            state: ClientState::AwaitingStart,
        }
    }

    /// A client sending an FP9 digest C1 at scheme 1, as Flash Player did.
    pub fn with_digest(seed: u64) -> Self {
        Self::with_digest_scheme(seed, DigestScheme::Scheme1)
    }

    /// A client sending an FP9 digest C1 at the given scheme.
    pub fn with_digest_scheme(seed: u64, scheme: DigestScheme) -> Self {
        Self {
            seed,
            digest: Some(scheme),
            state: ClientState::AwaitingStart,
        }
    }

    /// Appends C0+C1 to `dst`. Call once, first; later calls write nothing.
    pub fn start(&mut self, dst: &mut BytesMut) {
        if !matches!(self.state, ClientState::AwaitingStart) {
            return;
        }
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        SplitMix64(self.seed).fill(&mut c1[8..]);
        if let Some(scheme) = self.digest {
            c1[4..8].copy_from_slice(&CLIENT_VERSION);
            imprint_digest(&mut c1, scheme, FP_KEY_HEAD);
        }
        dst.reserve(1 + HANDSHAKE_SIZE);
        dst.put_u8(RTMP_VERSION);
        dst.extend_from_slice(&c1);
        self.state = ClientState::AwaitingS0;
    }

    /// Consumes S0 S1 S2 from `src`, appends C2 to `dst`.
    ///
    /// C2 (an echo of S1) is written as soon as S1 is in; `Done` once S2 is.
    /// Bytes after S2 stay in `src`.
    pub fn handle_input(
        &mut self,
        src: &mut BytesMut,
        dst: &mut BytesMut,
    ) -> Result<HandshakeProgress, HandshakeError> {
        loop {
            match &mut self.state {
                ClientState::AwaitingStart => return Err(HandshakeError::ClientNotStarted),
                ClientState::AwaitingS0 => {
                    let Some(&version) = src.first() else {
                        return Ok(HandshakeProgress::NeedMore);
                    };
                    if version != RTMP_VERSION {
                        return Err(HandshakeError::UnsupportedServerVersion(version));
                    }
                    src.advance(1);
                    self.state = ClientState::AwaitingS1 {
                        s1: Box::new([0; HANDSHAKE_SIZE]),
                        filled: 0,
                    };
                }
                ClientState::AwaitingS1 { s1, filled } => {
                    if !fill_from(s1, filled, src) {
                        return Ok(HandshakeProgress::NeedMore);
                    }
                    dst.extend_from_slice(&s1[..]);
                    self.state = ClientState::AwaitingS2 {
                        remaining: HANDSHAKE_SIZE,
                    };
                }
                ClientState::AwaitingS2 { remaining } => {
                    if !skip_from(remaining, src) {
                        return Ok(HandshakeProgress::NeedMore);
                    }
                    self.state = ClientState::Done;
                }
                ClientState::Done => return Ok(HandshakeProgress::Done),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 1 (C0/S0) + 1536 (C1/S1).
    const HELLO: usize = 1 + HANDSHAKE_SIZE;

    fn block(bytes: &[u8]) -> &[u8; HANDSHAKE_SIZE] {
        bytes.try_into().expect("a 1536-byte block")
    }

    /// A C1 with a recognisable pattern, FP9 version and a digest at `scheme`,
    /// built by hand (not by `ClientHandshake`). The same construction as the
    /// known-answer values below, computed independently with Python's hmac.
    fn patterned_digest_c1(scheme: DigestScheme) -> ([u8; HANDSHAKE_SIZE], usize) {
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        for (i, b) in c1.iter_mut().enumerate() {
            *b = ((i * 7 + 3) % 256) as u8;
        }
        c1[0..4].copy_from_slice(&[0, 0, 0, 0]); // time
        c1[4..8].copy_from_slice(&[9, 0, 124, 2]); // version 9.0.124.2
        let offset = imprint_digest(&mut c1, scheme, FP_KEY_HEAD);
        (c1, offset)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Runs a client against a server, moving all bytes each way at once.
    /// Returns the server, every byte the client sent and every byte the server sent.
    fn run_pair(mut client: ClientHandshake) -> (ServerHandshake, BytesMut, BytesMut) {
        let mut server = ServerHandshake::new(42);
        let mut c2s = BytesMut::new();
        let mut s2c = BytesMut::new();
        client.start(&mut c2s);
        let mut client_wire = c2s.clone();
        assert_eq!(
            server.handle_input(&mut c2s, &mut s2c).unwrap(),
            HandshakeProgress::NeedMore
        );
        let server_wire = s2c.clone();
        assert_eq!(
            client.handle_input(&mut s2c, &mut c2s).unwrap(),
            HandshakeProgress::Done
        );
        client_wire.extend_from_slice(&c2s);
        assert_eq!(
            server.handle_input(&mut c2s, &mut s2c).unwrap(),
            HandshakeProgress::Done
        );
        assert!(c2s.is_empty() && s2c.is_empty());
        (server, client_wire, server_wire)
    }

    fn assert_refused_at_once(version: u8) {
        let mut server = ServerHandshake::new(1);
        let mut src = BytesMut::from(&[version][..]);
        let mut dst = BytesMut::new();
        assert_eq!(
            server.handle_input(&mut src, &mut dst),
            Err(HandshakeError::UnsupportedVersion(version))
        );
        assert_eq!(src.len(), 1, "the bad C0 is left where it was");
        assert!(dst.is_empty(), "nothing is answered");
        assert!(
            matches!(server.state, ServerState::AwaitingC0),
            "no C1 buffer allocated"
        );
    }

    #[test]
    fn refuses_rtmpe_version_6() {
        assert_refused_at_once(6);
    }

    #[test]
    fn refuses_rtmpe_version_8() {
        assert_refused_at_once(8);
    }

    #[test]
    fn refuses_version_0() {
        assert_refused_at_once(0);
    }

    #[test]
    fn refuses_version_255() {
        assert_refused_at_once(255);
    }

    #[test]
    fn pre_c0_state_is_tiny() {
        // A u64 seed and a state enum; the C1 buffer lives behind a Box that
        // only exists after a valid C0.
        assert!(std::mem::size_of::<ServerHandshake>() <= 32);
    }

    #[test]
    fn error_messages_name_the_value() {
        let rtmpe = HandshakeError::UnsupportedVersion(6).to_string();
        assert!(
            rtmpe.contains("version 6") && rtmpe.contains("RTMPE"),
            "{rtmpe}"
        );
        let other = HandshakeError::UnsupportedVersion(255).to_string();
        assert!(other.contains("version 255"), "{other}");
        let server = HandshakeError::UnsupportedServerVersion(9).to_string();
        assert!(
            server.contains("version 9") && server.contains("S0"),
            "{server}"
        );
    }

    #[test]
    fn completes_simple_handshake_with_client() {
        let (server, client_wire, server_wire) = run_pair(ClientHandshake::new(7));
        assert!(!server.used_digest());
        assert_eq!(server.digest_scheme(), None);
        assert_eq!(client_wire.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(server_wire.len(), 1 + 2 * HANDSHAKE_SIZE);
        assert_eq!(server_wire[0], 3, "S0");
        assert_eq!(&server_wire[1..5], &[0; 4], "S1 time");
        assert_eq!(&server_wire[5..9], &[0; 4], "S1 zero");
        assert_eq!(
            &server_wire[HELLO..],
            &client_wire[1..HELLO],
            "S2 echoes C1"
        );
        assert_eq!(
            &client_wire[HELLO..],
            &server_wire[1..HELLO],
            "C2 echoes S1"
        );
    }

    #[test]
    fn completes_digest_handshake_with_digest_client_at_both_schemes() {
        for scheme in [DigestScheme::Scheme0, DigestScheme::Scheme1] {
            let (server, client_wire, server_wire) =
                run_pair(ClientHandshake::with_digest_scheme(9, scheme));
            assert!(server.used_digest());
            assert_eq!(server.digest_scheme(), Some(scheme));
            let c1 = block(&client_wire[1..HELLO]);
            let s1 = block(&server_wire[1..HELLO]);
            let s2 = &server_wire[HELLO..];
            let (_, c1_offset) = find_digest(c1, FP_KEY_HEAD).unwrap();
            assert_eq!(find_digest(s1, FMS_KEY_HEAD).map(|f| f.0), Some(scheme));
            let signature = s2_signature(&c1[c1_offset..c1_offset + 32], &s2[..SIGNED_LEN]);
            assert_eq!(&s2[SIGNED_LEN..], &signature[..]);
            assert_eq!(
                &client_wire[HELLO..],
                &server_wire[1..HELLO],
                "C2 echoes S1"
            );
        }
    }

    #[test]
    fn with_digest_uses_scheme_1() {
        let (server, _, _) = run_pair(ClientHandshake::with_digest(3));
        assert_eq!(server.digest_scheme(), Some(DigestScheme::Scheme1));
    }

    #[test]
    fn answers_digest_c1_with_digest_s1() {
        for scheme in [DigestScheme::Scheme0, DigestScheme::Scheme1] {
            let (c1, c1_offset) = patterned_digest_c1(scheme);
            let mut src = BytesMut::new();
            src.put_u8(3);
            src.extend_from_slice(&c1);
            let mut dst = BytesMut::new();
            let mut server = ServerHandshake::new(5);
            assert_eq!(
                server.handle_input(&mut src, &mut dst).unwrap(),
                HandshakeProgress::NeedMore
            );
            assert_eq!(server.digest_scheme(), Some(scheme));
            assert_eq!(dst.len(), 1 + 2 * HANDSHAKE_SIZE);
            assert_eq!(dst[0], 3, "S0");
            let s1 = block(&dst[1..HELLO]);
            assert_eq!(&s1[0..4], &[0; 4], "S1 time: no clock");
            assert_ne!(&s1[4..8], &[0; 4], "S1 version must be nonzero");
            assert!(s1[4] >= 3, "ffmpeg validates S1 only when byte 4 >= 3");

            // S1's digest validates with the server key at the same scheme.
            let s1_offset = scheme.digest_offset(s1);
            let expected = hmac_sha256(
                FMS_KEY_HEAD,
                &[&s1[..s1_offset], &s1[s1_offset + 32..]].concat(),
            );
            assert_eq!(&s1[s1_offset..s1_offset + 32], &expected[..]);
            // And with the client key it does not.
            assert_eq!(find_digest(s1, FP_KEY_HEAD), None);

            // S2 = 1504 bytes + HMAC(HMAC(full FMS key, C1 digest), S2[..1504]).
            let s2 = &dst[HELLO..];
            let key = hmac_sha256(&FMS_KEY, &c1[c1_offset..c1_offset + 32]);
            assert_eq!(&s2[SIGNED_LEN..], &hmac_sha256(&key, &s2[..SIGNED_LEN])[..]);
        }
    }

    #[test]
    fn finds_scheme_0_digest_at_known_offset() {
        // c1[8..12] = 59, 66, 73, 80: (278 % 728) + 12 = 290. Digest computed
        // independently (Python hmac/hashlib) over the same pattern.
        let (c1, offset) = patterned_digest_c1(DigestScheme::Scheme0);
        assert_eq!(offset, 290);
        assert_eq!(
            hex(&c1[290..322]),
            "612af37c38c4a1b74e5737fc4021ded17ed92a9431c19bc665cf421131bad8a6"
        );
        assert_eq!(
            find_digest(&c1, FP_KEY_HEAD),
            Some((DigestScheme::Scheme0, 290))
        );
    }

    #[test]
    fn finds_scheme_1_digest_at_known_offset() {
        let (c1, offset) = patterned_digest_c1(DigestScheme::Scheme1);
        assert_eq!(offset, 942);
        assert_eq!(
            hex(&c1[942..974]),
            "e6a7fbdda4aab503b4e693e92d6f18d9d4b89f3ef0e95fffe767a4830aa37109"
        );
        assert_eq!(
            find_digest(&c1, FP_KEY_HEAD),
            Some((DigestScheme::Scheme1, 942))
        );
    }

    #[test]
    fn s2_signature_matches_known_answer() {
        let s2: Vec<u8> = (0..SIGNED_LEN).map(|j| (j % 251) as u8).collect();
        let (c1, offset) = patterned_digest_c1(DigestScheme::Scheme0);
        assert_eq!(
            hex(&s2_signature(&c1[offset..offset + 32], &s2)),
            "e9c947668201ff3002a94e50e36771cbfcf32f4d4d2a4d351cc640bb19f12515"
        );
        let (c1, offset) = patterned_digest_c1(DigestScheme::Scheme1);
        assert_eq!(
            hex(&s2_signature(&c1[offset..offset + 32], &s2)),
            "a6ae7a83668f4b9fc47a3263342ba56c2c02ef017147e68ee8f81230981246ca"
        );
    }

    #[test]
    fn keys_are_the_published_constants() {
        assert_eq!(FMS_KEY.len(), 68);
        assert_eq!(FP_KEY.len(), 62);
        assert_eq!(&FMS_KEY[..36], b"Genuine Adobe Flash Media Server 001");
        assert_eq!(&FP_KEY[..30], b"Genuine Adobe Flash Player 001");
        assert_eq!(FMS_KEY[36..], FP_KEY[30..]);
        assert_eq!(
            hex(&FMS_KEY[36..]),
            "f0eec24a8068bee82e00d0d1029e7e576eec5d2d29806fab93b8e636cfeb31ae"
        );
    }

    #[test]
    fn falls_back_to_simple_when_c1_has_version_but_no_digest() {
        let (mut c1, offset) = patterned_digest_c1(DigestScheme::Scheme0);
        c1[offset] ^= 0xff; // break the digest
        let mut src = BytesMut::new();
        src.put_u8(3);
        src.extend_from_slice(&c1);
        let mut dst = BytesMut::new();
        let mut server = ServerHandshake::new(5);
        server.handle_input(&mut src, &mut dst).unwrap();
        assert!(!server.used_digest());
        assert_eq!(&dst[5..9], &[0; 4], "simple S1 has a zero version");
        assert_eq!(&dst[HELLO..], &c1[..], "S2 echoes C1");
    }

    #[test]
    fn accepts_handshake_fed_one_byte_at_a_time() {
        for mut client in [ClientHandshake::new(1), ClientHandshake::with_digest(2)] {
            let mut server = ServerHandshake::new(3);
            let mut c2s = BytesMut::new();
            let mut s2c = BytesMut::new();
            client.start(&mut c2s);

            // Server: C0 C1 one byte at a time, each in a fresh buffer.
            let mut src = BytesMut::new();
            for (i, &b) in c2s.iter().enumerate() {
                src.put_u8(b);
                let progress = server.handle_input(&mut src, &mut s2c).unwrap();
                assert_eq!(progress, HandshakeProgress::NeedMore);
                assert!(src.is_empty(), "every handshake byte is taken");
                let answered = i + 1 == HELLO;
                assert_eq!(s2c.is_empty(), !answered, "S0S1S2 only after all of C1");
            }
            c2s.clear();

            // Client: S0 S1 S2 one byte at a time.
            let s2c_all = s2c.split();
            for (i, &b) in s2c_all.iter().enumerate() {
                src.put_u8(b);
                let progress = client.handle_input(&mut src, &mut c2s).unwrap();
                let last = i + 1 == s2c_all.len();
                assert_eq!(progress == HandshakeProgress::Done, last);
                assert_eq!(c2s.is_empty(), i + 1 < HELLO, "C2 once S1 is in");
            }

            // Server: C2 one byte at a time.
            let c2 = c2s.split();
            for (i, &b) in c2.iter().enumerate() {
                src.put_u8(b);
                let progress = server.handle_input(&mut src, &mut s2c).unwrap();
                assert_eq!(progress == HandshakeProgress::Done, i + 1 == c2.len());
            }
            assert!(s2c.is_empty(), "nothing more is written after S2");
        }
    }

    #[test]
    fn leaves_first_chunk_after_c2_in_buffer() {
        let mut client = ClientHandshake::new(11);
        let mut server = ServerHandshake::new(12);
        let mut c2s = BytesMut::new();
        let mut s2c = BytesMut::new();
        client.start(&mut c2s);
        server.handle_input(&mut c2s, &mut s2c).unwrap();
        client.handle_input(&mut s2c, &mut c2s).unwrap();
        // C2 and the first chunk of `connect` in one read.
        let first_chunk = [0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x9a, 0x14];
        c2s.extend_from_slice(&first_chunk);
        assert_eq!(
            server.handle_input(&mut c2s, &mut s2c).unwrap(),
            HandshakeProgress::Done
        );
        assert_eq!(&c2s[..], &first_chunk[..]);
        // Further calls take nothing.
        assert_eq!(
            server.handle_input(&mut c2s, &mut s2c).unwrap(),
            HandshakeProgress::Done
        );
        assert_eq!(&c2s[..], &first_chunk[..]);
    }

    #[test]
    fn client_leaves_bytes_after_s2_in_buffer() {
        let mut client = ClientHandshake::new(1);
        let mut c2s = BytesMut::new();
        client.start(&mut c2s);
        let mut src = BytesMut::new();
        src.put_u8(3);
        src.extend_from_slice(&[0x11; 2 * HANDSHAKE_SIZE]);
        src.extend_from_slice(b"next");
        let mut dst = BytesMut::new();
        assert_eq!(
            client.handle_input(&mut src, &mut dst).unwrap(),
            HandshakeProgress::Done
        );
        assert_eq!(&src[..], b"next");
        assert_eq!(&dst[..], &[0x11; HANDSHAKE_SIZE][..], "C2 echoes S1");
    }

    #[test]
    fn tolerates_c2_that_does_not_echo_s1() {
        let mut server = ServerHandshake::new(1);
        let mut src = BytesMut::new();
        src.put_u8(3);
        src.extend_from_slice(&[0; HANDSHAKE_SIZE]); // C1
        src.extend_from_slice(&[0xAB; HANDSHAKE_SIZE]); // C2: garbage
        let mut dst = BytesMut::new();
        assert_eq!(
            server.handle_input(&mut src, &mut dst).unwrap(),
            HandshakeProgress::Done
        );
    }

    #[test]
    fn client_refuses_server_version_other_than_3() {
        for version in [0u8, 6, 8, 255] {
            let mut client = ClientHandshake::new(1);
            let mut out = BytesMut::new();
            client.start(&mut out);
            let mut src = BytesMut::from(&[version][..]);
            let mut dst = BytesMut::new();
            assert_eq!(
                client.handle_input(&mut src, &mut dst),
                Err(HandshakeError::UnsupportedServerVersion(version))
            );
            assert!(dst.is_empty());
        }
    }

    #[test]
    fn client_start_writes_c0_c1_once() {
        let mut client = ClientHandshake::new(1);
        let mut dst = BytesMut::new();
        client.start(&mut dst);
        assert_eq!(dst.len(), HELLO);
        assert_eq!(dst[0], 3);
        assert_eq!(&dst[1..9], &[0; 8], "simple C1: time 0, zero version");
        client.start(&mut dst);
        assert_eq!(dst.len(), HELLO);
    }

    #[test]
    fn client_input_before_start_is_an_error() {
        let mut client = ClientHandshake::new(1);
        let mut src = BytesMut::from(&[3u8][..]);
        let mut dst = BytesMut::new();
        assert_eq!(
            client.handle_input(&mut src, &mut dst),
            Err(HandshakeError::ClientNotStarted)
        );
        assert_eq!(src.len(), 1);
    }

    #[test]
    fn same_seed_gives_same_s1() {
        let hello = |seed| {
            let mut src = BytesMut::new();
            src.put_u8(3);
            src.extend_from_slice(&[0; HANDSHAKE_SIZE]);
            let mut dst = BytesMut::new();
            ServerHandshake::new(seed)
                .handle_input(&mut src, &mut dst)
                .unwrap();
            dst
        };
        assert_eq!(hello(1), hello(1));
        assert_ne!(hello(1)[9..HELLO], hello(2)[9..HELLO]);
    }

    /// Splits `bytes` at the given cut points (taken modulo the length).
    fn pieces(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.push(0);
        cuts.push(bytes.len());
        cuts.sort_unstable();
        cuts.windows(2)
            .map(|w| bytes[w[0]..w[1]].to_vec())
            .collect()
    }

    proptest! {
        #[test]
        fn random_garbage_never_panics_server(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            seed in any::<u64>(),
            force_c0 in any::<bool>(),
        ) {
            let mut data = data;
            if force_c0 && !data.is_empty() {
                data[0] = 3; // get past C0 so C1/C2 parsing sees the garbage
            }
            let mut server = ServerHandshake::new(seed);
            let mut src = BytesMut::new();
            let mut dst = BytesMut::new();
            let mut fed = 0;
            for piece in pieces(&data, &cuts) {
                fed += piece.len();
                src.extend_from_slice(&piece);
                let before = src.len();
                match server.handle_input(&mut src, &mut dst) {
                    Ok(HandshakeProgress::Done) => {
                        prop_assert_eq!(fed - src.len(), 1 + 2 * HANDSHAKE_SIZE);
                    }
                    Ok(HandshakeProgress::NeedMore) => prop_assert!(src.is_empty()),
                    Err(HandshakeError::UnsupportedVersion(v)) => {
                        prop_assert_eq!(v, data[0]);
                        prop_assert_eq!(src.len(), before);
                        break;
                    }
                    Err(e) => prop_assert!(false, "unexpected error {}", e),
                }
            }
        }

        #[test]
        fn random_garbage_never_panics_client(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
            digest in any::<bool>(),
        ) {
            let mut client = if digest { ClientHandshake::with_digest(1) } else { ClientHandshake::new(1) };
            let mut dst = BytesMut::new();
            client.start(&mut dst);
            let mut src = BytesMut::new();
            for piece in pieces(&data, &cuts) {
                src.extend_from_slice(&piece);
                if client.handle_input(&mut src, &mut dst).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn completes_in_any_split_and_keeps_trailing_bytes(
            cuts in proptest::collection::vec(any::<usize>(), 0..40),
            trailing in proptest::collection::vec(any::<u8>(), 0..64),
            digest in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let mut client = if digest { ClientHandshake::with_digest(seed) } else { ClientHandshake::new(seed) };
            let mut c1 = BytesMut::new();
            client.start(&mut c1);
            let mut server = ServerHandshake::new(seed ^ 1);
            let mut s = BytesMut::new();
            server.handle_input(&mut c1.clone(), &mut s).unwrap();
            let mut c2 = BytesMut::new();
            client.handle_input(&mut s, &mut c2).unwrap();

            // Replay the client's whole output plus trailing bytes into a
            // fresh server in random splits.
            let mut wire = c1.to_vec();
            wire.extend_from_slice(&c2);
            wire.extend_from_slice(&trailing);
            let mut server = ServerHandshake::new(seed ^ 1);
            let mut src = BytesMut::new();
            let mut dst = BytesMut::new();
            let mut done = false;
            for piece in pieces(&wire, &cuts) {
                src.extend_from_slice(&piece);
                done = server.handle_input(&mut src, &mut dst).unwrap() == HandshakeProgress::Done;
            }
            prop_assert!(done);
            prop_assert_eq!(server.used_digest(), digest);
            prop_assert_eq!(&src[..], &trailing[..]);
        }
    }
}
