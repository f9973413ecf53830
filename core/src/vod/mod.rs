//! Video on demand, sans-IO: MP4 and FLV files read as RTMP frames.
//!
//! The server owns the file; this module never touches it. A [`Reader`]
//! says which byte range it needs next ([`Step::Read`]), the server reads
//! it on a helper thread and hands the bytes back
//! ([`Reader::handle_read`]), and the reader turns them into frames (FLV
//! tag payloads with millisecond timestamps, the server's frame form):
//!
//! ```text
//!   Opening ──(file header, moov / preamble tags read)──► Playing ──(last sample)──► End
//!      │                                                    │  ▲
//!      │                                      seek(ms) ─────┘  └── Seeked, then headers again
//!      └── not MP4 / not FLV, no moov, no playable track ──► error
//! ```
//!
//! * [`mp4`]: `moov` sample tables and movie fragments as one sample index
//!   ([`mp4::Movie`]); samples become FLV payloads through `tags.rs`
//!   (legacy H.264/AAC/MP3 headers, Enhanced RTMP for HEVC, AV1, VP9,
//!   Opus, FLAC, AC-3).
//! * [`flv`]: FLV tags, whose payloads are the frames as they are; the
//!   `onMetaData` keyframe index, or a scan, finds a seek point.
//! * [`hls`]: an HLS VOD playlist and fMP4 fragments of an MP4 file (byte
//!   ranges of a fragmented file; fragments built from the sample index of
//!   a progressive one).
//!
//! Read-ahead is bounded: a reader keeps at most [`WINDOWS`] windows of
//! [`Limits::read_size`] bytes (more only for a single sample or box
//! larger than that, up to its own limit), and asks for one read at a time.

mod boxes;
pub mod flv;
pub mod hls;
pub mod mp4;
mod reader;
mod tags;

pub use reader::{Reader, WINDOWS};
pub use tags::TagHeader;

use crate::protocol::amf::{self, Amf0Value};
use crate::protocol::session::MediaKind;
use bytes::{Bytes, BytesMut};
use std::fmt;

/// What a reader may hold and read. [`Limits::default`] suits files from
/// minutes to a day long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes asked for per read (the read-ahead window).
    pub read_size: usize,
    /// Largest `moov` (or `moof`) box read whole. A two-hour movie's `moov`
    /// is a few MiB.
    pub max_box: u64,
    /// Most samples indexed per file (about 32 bytes each): a day of 30 fps
    /// video and 48 kHz AAC is 2.6 million plus 4 million.
    pub max_samples: usize,
    /// Largest single sample or FLV tag (a 4K keyframe is a few MiB).
    pub max_sample: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            read_size: 256 * 1024,
            max_box: 64 * 1024 * 1024,
            max_samples: 8_000_000,
            max_sample: 16 * 1024 * 1024,
        }
    }
}

/// The container, from the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Mp4,
    Flv,
}

impl Container {
    /// `.mp4`, `.m4v`, `.m4a`, `.mov`, `.f4v`, `.ismv` are MP4; `.flv` is FLV
    /// (case-insensitive).
    pub fn from_name(name: &str) -> Option<Container> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "mp4" | "m4v" | "m4a" | "mov" | "f4v" | "ismv" => Some(Container::Mp4),
            "flv" => Some(Container::Flv),
            _ => None,
        }
    }
}

/// Why a file cannot be played (on). Every message names the value and
/// where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VodError {
    /// The bytes are not this container at all (a wrong extension).
    NotThisFormat(&'static str),
    /// A box, tag or field that breaks its format.
    Malformed { what: &'static str, detail: String },
    /// A size over its limit.
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    /// The file ends before what its structure says is there.
    Truncated(String),
    /// A feature the reader does not play.
    Unsupported(String),
    /// No track the reader can play; the reasons per track.
    NoPlayableTrack(String),
    /// An MP4 file with no `moov` box.
    NoMoov,
}

impl fmt::Display for VodError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VodError::NotThisFormat(why) => write!(f, "not a file of its type: {why}"),
            VodError::Malformed { what, detail } => write!(f, "malformed {what}: {detail}"),
            VodError::TooLarge { what, size, limit } => {
                write!(f, "{what} of {size} exceeds the limit of {limit}")
            }
            VodError::Truncated(why) => write!(f, "truncated file: {why}"),
            VodError::Unsupported(why) => write!(f, "unsupported: {why}"),
            VodError::NoPlayableTrack(why) => write!(f, "no playable track: {why}"),
            VodError::NoMoov => write!(
                f,
                "no moov box: not an MP4 file, or one whose writer never finished"
            ),
        }
    }
}

impl std::error::Error for VodError {}

/// A byte range of the file the reader needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadRequest {
    pub offset: u64,
    pub len: usize,
}

/// One frame of the file, as RTMP carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VodFrame {
    pub kind: MediaKind,
    /// Milliseconds from the start of the file.
    pub timestamp: u32,
    /// The FLV tag payload (for data, the AMF of `onMetaData`).
    pub payload: Bytes,
    /// A video frame a decoder can start from.
    pub keyframe: bool,
    /// Metadata or a sequence header: sent again after a seek.
    pub header: bool,
}

/// What the reader has for its driver next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Read this range and hand it to [`Reader::handle_read`].
    Read(ReadRequest),
    /// A read asked for is still in flight.
    Wait,
    /// The next frame.
    Frame(VodFrame),
    /// A seek (or the start position of play) resolved: playback goes on
    /// from this timestamp, the keyframe at or before the target; the
    /// headers follow.
    Seeked { position_ms: u32 },
    /// No frame left (or the stop time passed).
    End,
}

/// An `onMetaData` payload for a file: what players show and what
/// rtmpdump checks a download's completeness against (`duration`).
pub(crate) fn metadata_payload(props: Vec<(&str, Amf0Value)>) -> Bytes {
    let mut b = BytesMut::new();
    amf::encode(&Amf0Value::string("onMetaData"), &mut b);
    amf::encode(
        &Amf0Value::EcmaArray(props.into_iter().map(|(k, v)| (k.into(), v)).collect()),
        &mut b,
    );
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_from_extension() {
        assert_eq!(Container::from_name("a/b.MP4"), Some(Container::Mp4));
        assert_eq!(Container::from_name("x.flv"), Some(Container::Flv));
        assert_eq!(Container::from_name("x.mkv"), None);
        assert_eq!(Container::from_name("noext"), None);
    }
}
