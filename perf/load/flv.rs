//! FLV (Adobe Flash Video File Format Specification v10.1, annex E): the
//! 9-byte file header, then tags, each followed by its PreviousTagSize.
//!
//! ```text
//!  header: 'F' 'L' 'V' | version u8 | flags u8 | data offset u32 (9)
//!  then:   PreviousTagSize0 u32 (0)
//!  tag:    type u8 (8 audio, 9 video, 18 script) | data size u24 |
//!          timestamp u24 | timestamp extended u8 (bits 31..24) |
//!          stream id u24 (0) | data | PreviousTagSize u32 (11 + data size)
//! ```
//! Used by the HTTP-FLV player and by the publisher in FLV-file mode. A
//! decoder in the tokio-util style: `Ok(None)` means "need more bytes".

use bytes::{Buf, Bytes, BytesMut};
use std::fmt;

/// Largest tag accepted: a 4K keyframe is a few MiB; the format allows 16 MiB.
pub const MAX_TAG_LEN: usize = 8 * 1024 * 1024;

/// One FLV tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub tag_type: u8,
    pub timestamp: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlvError {
    BadSignature([u8; 3]),
    BadDataOffset(u32),
    TagTooLong { len: usize, max: usize },
    PrevTagSize { expected: u32, got: u32 },
}

impl fmt::Display for FlvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlvError::BadSignature(s) => write!(f, "FLV signature {s:02x?} is not \"FLV\""),
            FlvError::BadDataOffset(o) => write!(f, "FLV data offset {o} is below 9"),
            FlvError::TagTooLong { len, max } => {
                write!(f, "FLV tag of {len} bytes exceeds limit {max}")
            }
            FlvError::PrevTagSize { expected, got } => {
                write!(f, "PreviousTagSize {got} where {expected} was expected")
            }
        }
    }
}

impl std::error::Error for FlvError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    FileHeader,
    /// PreviousTagSize, with the size it must hold (None: first, any value).
    PrevSize(Option<u32>),
    Tag,
}

/// Reads an FLV byte stream into tags.
#[derive(Debug)]
pub struct FlvDecoder {
    expect: Expect,
    /// Whether PreviousTagSize values are checked (some servers write 0s).
    strict: bool,
}

impl Default for FlvDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FlvDecoder {
    pub fn new() -> Self {
        Self {
            expect: Expect::FileHeader,
            strict: true,
        }
    }

    /// Accepts any PreviousTagSize.
    pub fn lenient(mut self) -> Self {
        self.strict = false;
        self
    }

    /// The next tag, `Ok(None)` when `src` holds no complete one.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Tag>, FlvError> {
        loop {
            match self.expect {
                Expect::FileHeader => {
                    if src.len() < 9 {
                        return Ok(None);
                    }
                    if &src[..3] != b"FLV" {
                        return Err(FlvError::BadSignature([src[0], src[1], src[2]]));
                    }
                    let off = u32::from_be_bytes([src[5], src[6], src[7], src[8]]);
                    if off < 9 {
                        return Err(FlvError::BadDataOffset(off));
                    }
                    if src.len() < off as usize {
                        return Ok(None);
                    }
                    src.advance(off as usize);
                    self.expect = Expect::PrevSize(None);
                }
                Expect::PrevSize(want) => {
                    if src.len() < 4 {
                        return Ok(None);
                    }
                    let got = src.get_u32();
                    if let (Some(expected), true) = (want, self.strict) {
                        if got != expected {
                            return Err(FlvError::PrevTagSize { expected, got });
                        }
                    }
                    self.expect = Expect::Tag;
                }
                Expect::Tag => {
                    if src.len() < 11 {
                        return Ok(None);
                    }
                    let len = (usize::from(src[1]) << 16)
                        | (usize::from(src[2]) << 8)
                        | usize::from(src[3]);
                    if len > MAX_TAG_LEN {
                        return Err(FlvError::TagTooLong {
                            len,
                            max: MAX_TAG_LEN,
                        });
                    }
                    if src.len() < 11 + len {
                        src.reserve(11 + len - src.len());
                        return Ok(None);
                    }
                    let tag_type = src[0] & 0x1F;
                    let timestamp = (u32::from(src[7]) << 24)
                        | (u32::from(src[4]) << 16)
                        | (u32::from(src[5]) << 8)
                        | u32::from(src[6]);
                    src.advance(11);
                    let data = src.split_to(len).freeze();
                    self.expect = Expect::PrevSize(Some(11 + len as u32));
                    return Ok(Some(Tag {
                        tag_type,
                        timestamp,
                        data,
                    }));
                }
            }
        }
    }
}

/// Writes a file header (audio + video) and PreviousTagSize0.
#[cfg(test)]
pub fn encode_header(dst: &mut Vec<u8>) {
    dst.extend_from_slice(&[b'F', b'L', b'V', 1, 0x05, 0, 0, 0, 9, 0, 0, 0, 0]);
}

/// Writes one tag and its PreviousTagSize.
#[cfg(test)]
pub fn encode_tag(tag_type: u8, timestamp: u32, data: &[u8], dst: &mut Vec<u8>) {
    let len = data.len() as u32;
    dst.push(tag_type);
    dst.extend_from_slice(&len.to_be_bytes()[1..]);
    dst.extend_from_slice(&timestamp.to_be_bytes()[1..]);
    dst.push((timestamp >> 24) as u8);
    dst.extend_from_slice(&[0, 0, 0]);
    dst.extend_from_slice(data);
    dst.extend_from_slice(&(11 + len).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        encode_header(&mut v);
        encode_tag(18, 0, b"meta", &mut v);
        encode_tag(9, 0x0123_4567, &[0x17, 1, 2, 3], &mut v);
        encode_tag(8, 40, &[0xAF, 1], &mut v);
        v
    }

    fn all(dec: &mut FlvDecoder, buf: &mut BytesMut) -> Vec<Tag> {
        let mut out = Vec::new();
        while let Some(t) = dec.decode(buf).unwrap() {
            out.push(t);
        }
        out
    }

    #[test]
    fn reads_tags_with_extended_timestamps() {
        let mut buf = BytesMut::from(&sample()[..]);
        let tags = all(&mut FlvDecoder::new(), &mut buf);
        assert_eq!(tags.len(), 3);
        assert_eq!(tags[0].tag_type, 18);
        assert_eq!(&tags[0].data[..], b"meta");
        assert_eq!(tags[1].timestamp, 0x0123_4567);
        assert_eq!(&tags[2].data[..], &[0xAF, 1]);
        assert!(buf.is_empty());
    }

    #[test]
    fn byte_by_byte_gives_the_same_tags() {
        let whole = sample();
        let mut dec = FlvDecoder::new();
        let mut buf = BytesMut::new();
        let mut tags = Vec::new();
        for b in whole {
            buf.extend_from_slice(&[b]);
            tags.extend(all(&mut dec, &mut buf));
        }
        let mut again = BytesMut::from(&sample()[..]);
        assert_eq!(tags, all(&mut FlvDecoder::new(), &mut again));
    }

    #[test]
    fn rejects_a_bad_signature_and_a_wrong_previous_tag_size() {
        let mut buf = BytesMut::from(&b"FLX\x01\x05\x00\x00\x00\x09"[..]);
        assert!(matches!(
            FlvDecoder::new().decode(&mut buf),
            Err(FlvError::BadSignature(_))
        ));
        let mut v = sample();
        let at = 13 + 11 + 4; // first PreviousTagSize after a tag
        v[at + 3] ^= 1;
        let mut buf = BytesMut::from(&v[..]);
        let mut dec = FlvDecoder::new();
        assert!(dec.decode(&mut buf).unwrap().is_some());
        assert!(matches!(
            dec.decode(&mut buf),
            Err(FlvError::PrevTagSize { .. })
        ));
        let mut buf = BytesMut::from(&v[..]);
        assert_eq!(all(&mut FlvDecoder::new().lenient(), &mut buf).len(), 3);
    }

    #[test]
    fn rejects_a_declared_size_over_the_limit_before_buffering() {
        let mut v = Vec::new();
        encode_header(&mut v);
        v.extend_from_slice(&[9, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0]);
        let mut buf = BytesMut::from(&v[..]);
        assert!(matches!(
            FlvDecoder::new().decode(&mut buf),
            Err(FlvError::TagTooLong { .. })
        ));
    }
}
