//! FLV files (Adobe Flash Video File Format Specification 10.1, annex E):
//! the file header, tags, and the `onMetaData` keyframe index
//! (`keyframes: { times, filepositions }`) that players seek with. Tag
//! payloads are what RTMP carries unchanged (legacy or Enhanced RTMP
//! headers alike), so a tag's payload is a slice of the bytes read.

use super::VodError;
use crate::protocol::amf::{self, Amf0Value, AmfLimits};
use crate::protocol::session::MediaKind;
use bytes::Bytes;

/// The file header (9 bytes) and PreviousTagSize0 (4 bytes).
pub const FILE_HEADER_LEN: u64 = 13;
/// A tag header: type, data size, timestamp, timestamp extension, stream id.
pub const TAG_HEADER_LEN: usize = 11;
/// The PreviousTagSize that follows each tag.
pub const TAG_TRAILER_LEN: usize = 4;

/// Most keyframe index entries kept from `onMetaData` (one per keyframe: a
/// day of video at one keyframe a second).
pub const MAX_INDEX_ENTRIES: usize = 100_000;

/// What the file header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub audio: bool,
    pub video: bool,
    /// Where the first tag starts (after PreviousTagSize0).
    pub first_tag: u64,
}

/// Parses the file header from the first bytes of the file: `Ok(None)`
/// when fewer than 13 bytes are given.
pub fn file_header(data: &[u8]) -> Result<Option<FileHeader>, VodError> {
    if data.len() >= 3 && &data[..3] != b"FLV" {
        return Err(VodError::NotThisFormat("no FLV signature"));
    }
    if data.len() < FILE_HEADER_LEN as usize {
        return Ok(None);
    }
    let flags = data[4];
    let offset = u32::from_be_bytes([data[5], data[6], data[7], data[8]]);
    if offset < 9 {
        return Err(VodError::Malformed {
            what: "FLV header",
            detail: format!("data offset {offset} inside the 9-byte header"),
        });
    }
    Ok(Some(FileHeader {
        audio: flags & 0x04 != 0,
        video: flags & 0x01 != 0,
        first_tag: u64::from(offset) + 4,
    }))
}

/// One tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub kind: MediaKind,
    /// Milliseconds (the 24-bit field and its extension byte).
    pub timestamp: u32,
    pub payload: Bytes,
    /// Header, payload and PreviousTagSize.
    pub total_len: u64,
}

/// What is at a tag position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagAt {
    /// A tag; `None` for a type that is neither audio, video nor script
    /// data (skipped).
    Tag(Option<Tag>),
    /// More bytes are needed: at least this many from the tag's start.
    Need(u64),
}

/// Reads the tag at the start of `data` (bytes of the file from the tag's
/// position). `max_tag` bounds a tag's claimed size.
pub fn tag(data: &Bytes, max_tag: u32) -> Result<TagAt, VodError> {
    if data.len() < TAG_HEADER_LEN {
        return Ok(TagAt::Need((TAG_HEADER_LEN + TAG_TRAILER_LEN) as u64));
    }
    let kind_byte = data[0];
    if kind_byte & 0x20 != 0 {
        return Err(VodError::Unsupported(
            "encrypted FLV tags (the filter bit is set)".into(),
        ));
    }
    let size = u32::from_be_bytes([0, data[1], data[2], data[3]]);
    if size > max_tag {
        return Err(VodError::TooLarge {
            what: "FLV tag",
            size: u64::from(size),
            limit: u64::from(max_tag),
        });
    }
    let timestamp = u32::from_be_bytes([data[7], data[4], data[5], data[6]]);
    let total = TAG_HEADER_LEN + size as usize + TAG_TRAILER_LEN;
    if data.len() < total {
        return Ok(TagAt::Need(total as u64));
    }
    let kind = match kind_byte & 0x1f {
        8 => MediaKind::Audio,
        9 => MediaKind::Video,
        18 => MediaKind::Data,
        _ => {
            return Ok(TagAt::Tag(None));
        }
    };
    Ok(TagAt::Tag(Some(Tag {
        kind,
        timestamp,
        payload: data.slice(TAG_HEADER_LEN..TAG_HEADER_LEN + size as usize),
        total_len: total as u64,
    })))
}

/// The tag's total length at the start of `data`, from its header alone
/// (for skipping a tag whose payload is not needed).
pub fn tag_len(data: &[u8]) -> Option<u64> {
    if data.len() < TAG_HEADER_LEN {
        return None;
    }
    let size = u32::from_be_bytes([0, data[1], data[2], data[3]]);
    Some((TAG_HEADER_LEN + TAG_TRAILER_LEN) as u64 + u64::from(size))
}

/// What `onMetaData` says that playback needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    /// `duration`, in milliseconds.
    pub duration_ms: Option<u64>,
    /// `keyframes`: (time in ms, file position), increasing in time. Empty
    /// when absent or unusable.
    pub keyframes: Vec<(u32, u64)>,
}

/// Reads an `onMetaData` script tag payload. `file_len` bounds the index's
/// positions; an index that is not increasing, or points outside the
/// file, is dropped (playback then scans).
pub fn metadata(payload: &[u8], file_len: u64) -> Option<Metadata> {
    let limits = AmfLimits {
        max_depth: 8,
        max_values: 4 * MAX_INDEX_ENTRIES,
    };
    let values = amf::decode_all(payload, &limits).ok()?;
    let mut it = values.iter();
    if it.next()?.as_str()? != "onMetaData" {
        return None;
    }
    let meta = it.next()?;
    let mut out = Metadata {
        duration_ms: meta
            .get("duration")
            .and_then(Amf0Value::as_number)
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map(|d| (d * 1000.0) as u64),
        keyframes: Vec::new(),
    };
    let Some(kf) = meta.get("keyframes") else {
        return Some(out);
    };
    let (Some(Amf0Value::StrictArray(times)), Some(Amf0Value::StrictArray(positions))) =
        (kf.get("times"), kf.get("filepositions"))
    else {
        return Some(out);
    };
    if times.len() != positions.len() || times.len() > MAX_INDEX_ENTRIES {
        return Some(out);
    }
    let mut index = Vec::with_capacity(times.len());
    for (t, p) in times.iter().zip(positions) {
        let (Some(t), Some(p)) = (t.as_number(), p.as_number()) else {
            return Some(out);
        };
        if !(t.is_finite() && p.is_finite() && t >= 0.0 && p >= 0.0) {
            return Some(out);
        }
        let (t, p) = ((t * 1000.0).round() as u64, p as u64);
        if t > u64::from(u32::MAX) || p >= file_len {
            return Some(out);
        }
        if index
            .last()
            .is_some_and(|&(lt, lp): &(u32, u64)| u64::from(lt) > t || lp >= p)
        {
            return Some(out);
        }
        index.push((t as u32, p));
    }
    out.keyframes = index;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn meta(props: Vec<(&str, Amf0Value)>) -> Bytes {
        let mut b = BytesMut::new();
        amf::encode(&Amf0Value::string("onMetaData"), &mut b);
        amf::encode(
            &Amf0Value::EcmaArray(props.into_iter().map(|(k, v)| (k.into(), v)).collect()),
            &mut b,
        );
        b.freeze()
    }

    fn numbers(v: &[f64]) -> Amf0Value {
        Amf0Value::StrictArray(v.iter().map(|n| Amf0Value::Number(*n)).collect())
    }

    #[test]
    fn reads_duration_and_keyframe_index() {
        let p = meta(vec![
            ("duration", Amf0Value::Number(6.02)),
            (
                "keyframes",
                Amf0Value::object([
                    ("times", numbers(&[0.0, 2.0, 4.0])),
                    ("filepositions", numbers(&[500.0, 9000.0, 20000.0])),
                ]),
            ),
        ]);
        let m = metadata(&p, 30_000).unwrap();
        assert_eq!(m.duration_ms, Some(6020));
        assert_eq!(m.keyframes, [(0, 500), (2000, 9000), (4000, 20000)]);
    }

    #[test]
    fn an_index_pointing_past_the_file_or_backwards_is_dropped() {
        for (times, positions) in [
            (vec![0.0, 2.0], vec![500.0, 90_000.0]),
            (vec![0.0, 2.0], vec![9000.0, 500.0]),
            (vec![2.0, 0.0], vec![500.0, 9000.0]),
            (vec![0.0], vec![500.0, 9000.0]),
            (vec![f64::NAN, 2.0], vec![500.0, 9000.0]),
        ] {
            let p = meta(vec![(
                "keyframes",
                Amf0Value::object([
                    ("times", numbers(&times)),
                    ("filepositions", numbers(&positions)),
                ]),
            )]);
            assert_eq!(metadata(&p, 30_000).unwrap().keyframes, []);
        }
    }

    #[test]
    fn tag_needs_its_whole_length_and_refuses_huge_claims() {
        #[rustfmt::skip]
        let bytes = Bytes::from_static(&[
            9, // video
            0, 0, 2, // data size
            0, 0, 0x10, 0x01, // timestamp 16, extension 1: 0x01000010
            0, 0, 0, // stream id
            0x17, 0x01, // payload
            0, 0, 0, 13, // PreviousTagSize
        ]);
        assert_eq!(tag(&bytes.slice(..12), 1 << 20).unwrap(), TagAt::Need(17));
        let TagAt::Tag(Some(t)) = tag(&bytes, 1 << 20).unwrap() else {
            panic!("no tag")
        };
        assert_eq!(t.kind, MediaKind::Video);
        assert_eq!(t.timestamp, 0x0100_0010);
        assert_eq!(&t.payload[..], [0x17, 0x01]);
        assert_eq!(t.total_len, 17);
        assert!(tag(&bytes, 1).is_err());
    }

    #[test]
    fn header_checks_signature_and_offset() {
        assert!(file_header(b"GIF89a").is_err());
        assert_eq!(file_header(b"FLV\x01").unwrap(), None);
        let h = file_header(b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00").unwrap();
        assert_eq!(
            h,
            Some(FileHeader {
                audio: true,
                video: true,
                first_tag: 13
            })
        );
        assert!(file_header(b"FLV\x01\x05\x00\x00\x00\x02\x00\x00\x00\x00").is_err());
    }
}
