//! One track of an Enhanced RTMP multitrack stream, re-wrapped as a
//! single-track message that a player without multitrack support decodes.
//!
//! An encoder that sends several renditions in one connection (OBS and
//! Twitch Enhanced Broadcasting; ffmpeg 8+ with several video streams) puts
//! every track but the default one (track 0) behind a multitrack header. A
//! legacy player (Debian's ffmpeg, rtmpdump, flv.js) reads none of that; the
//! server offers each video track N as a stream of its own (docs/codecs.md,
//! "Renditions") and builds its messages with [`video`] and [`audio`]:
//!
//! * H.264 (`avc1`) becomes the legacy AVC form every player decodes:
//!   `0x17`/`0x27` (frame type, codec id 7), AVCPacketType, SI24
//!   composition time, then the track's bytes. CodedFramesX, which has no
//!   composition time, gets a zero one.
//! * AAC (`mp4a`) becomes legacy sound format 10 (`0xAF`, AACPacketType).
//! * Any other codec becomes the Enhanced RTMP single-track form (the same
//!   packet type and FourCC, no multitrack header): what an Enhanced player
//!   without the Multitrack capability reads.
//! * A message without a multitrack header is track 0: it is forwarded
//!   unchanged to track 0's rendition (an Enhanced `avc1` one becomes
//!   legacy AVC) and is no part of another track's.
//!
//! What a rendition cannot carry is dropped, never guessed: video Metadata
//! and MPEG2TSSequenceStart in the legacy AVC form, reserved packet types,
//! truncated track headers, ModEx data ahead of a multitrack header, and
//! a track 0 `avc1` message with ModEx data
//! (the Enhanced RTMP v2 specification, "Enhanced Video" / "Enhanced Audio",
//! "Multitrack Streaming via Enhanced RTMP"). Pure functions over `&[u8]`:
//! no allocation, no panic on any input.

use crate::media::{self, Codec, FrameClass};

/// What a message of the source becomes in one rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrap<'a> {
    /// The message as it is.
    Same,
    /// A new message: [`Head`] then `body`, a slice of the source message
    /// (the track's bytes).
    New { head: Head, body: &'a [u8] },
    /// Nothing of this message belongs to the rendition.
    Drop,
}

/// The tag header of a re-wrapped message: at most 5 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    bytes: [u8; 5],
    len: u8,
}

impl Head {
    fn new(head: &[u8]) -> Head {
        let mut bytes = [0; 5];
        bytes[..head.len()].copy_from_slice(head);
        Head {
            bytes,
            len: head.len() as u8,
        }
    }

    /// The header bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Legacy video codec id of AVC.
const CODEC_AVC: u8 = 7;
/// Legacy sound format of AAC, 44 kHz, 16-bit, stereo: `0xAF`, what every
/// encoder sends (the AudioSpecificConfig carries the real values).
const LEGACY_AAC: u8 = 0xAF;
/// Enhanced audio: sound format 9 (ExHeader) in the high nibble.
const AUDIO_EX_HEADER: u8 = 0x90;
/// Enhanced video: the IsExHeader bit.
const VIDEO_EX_HEADER: u8 = 0x80;

// Enhanced RTMP packet types.
const SEQUENCE_START: u8 = 0;
const CODED_FRAMES: u8 = 1;
const SEQUENCE_END: u8 = 2;
const CODED_FRAMES_X: u8 = 3;
#[cfg(test)]
const METADATA: u8 = 4;

/// Video track `track` of a video message (RTMP type 9) payload, alone.
pub fn video(payload: &[u8], track: u8) -> Rewrap<'_> {
    let mut tracks = media::video_tracks(payload);
    let Some(packet_type) = tracks.packet_type() else {
        // No multitrack header: the default track.
        if track != 0 {
            return Rewrap::Drop;
        }
        return match tracks.next() {
            Some(t) if t.info.codec == Codec::Avc && media::is_enhanced(true, payload) => {
                // An Enhanced single-track `avc1` message of track 0: the
                // packet type is the low nibble of the first byte. One with
                // ModEx blocks (rare: a nanosecond timestamp offset) is
                // dropped rather than re-wrapped without them.
                let packet_type = match payload.first() {
                    Some(b) if b & 0x0f != 7 => b & 0x0f,
                    _ => return Rewrap::Drop,
                };
                legacy_avc(frame_type(payload), packet_type, t.data)
            }
            _ => Rewrap::Same,
        };
    };
    let Some(t) = tracks.find(|t| t.info.track == track) else {
        return Rewrap::Drop;
    };
    if t.info.class == FrameClass::Other {
        // A truncated track header or a reserved packet type.
        return Rewrap::Drop;
    }
    let frame_type = frame_type(payload);
    match t.info.codec {
        Codec::Avc => legacy_avc(frame_type, packet_type, t.data),
        codec => match codec.fourcc() {
            Some(fourcc) => enhanced(
                VIDEO_EX_HEADER | (frame_type << 4) | packet_type,
                fourcc,
                t.data,
            ),
            None => Rewrap::Drop,
        },
    }
}

/// Audio track `track` of an audio message (RTMP type 8) payload, alone.
pub fn audio(payload: &[u8], track: u8) -> Rewrap<'_> {
    let mut tracks = media::audio_tracks(payload);
    let Some(packet_type) = tracks.packet_type() else {
        return if track == 0 {
            Rewrap::Same
        } else {
            Rewrap::Drop
        };
    };
    let Some(t) = tracks.find(|t| t.info.track == track) else {
        return Rewrap::Drop;
    };
    if t.info.class == FrameClass::Other {
        return Rewrap::Drop;
    }
    match t.info.codec {
        Codec::Aac => match packet_type {
            SEQUENCE_START | CODED_FRAMES => Rewrap::New {
                head: Head::new(&[LEGACY_AAC, packet_type]),
                body: t.data,
            },
            _ => Rewrap::Drop,
        },
        codec => match codec.fourcc() {
            Some(fourcc) => enhanced(AUDIO_EX_HEADER | packet_type, fourcc, t.data),
            None => Rewrap::Drop,
        },
    }
}

/// The video frame type (UB[3] after the IsExHeader bit).
fn frame_type(payload: &[u8]) -> u8 {
    payload.first().map_or(0, |b| (b >> 4) & 0x07)
}

/// The legacy AVC form: frame type and codec id 7, AVCPacketType, SI24
/// composition time (carried by CodedFrames' body, zero otherwise).
fn legacy_avc(frame_type: u8, packet_type: u8, data: &[u8]) -> Rewrap<'_> {
    if !(1..=4).contains(&frame_type) {
        return Rewrap::Drop;
    }
    let b0 = (frame_type << 4) | CODEC_AVC;
    let head = match packet_type {
        SEQUENCE_START => [b0, 0, 0, 0, 0],
        // The body starts with the composition time.
        CODED_FRAMES if data.len() >= 3 => {
            return Rewrap::New {
                head: Head::new(&[b0, 1]),
                body: data,
            }
        }
        CODED_FRAMES_X => [b0, 1, 0, 0, 0],
        SEQUENCE_END => {
            return Rewrap::New {
                head: Head::new(&[b0, 2, 0, 0, 0]),
                body: &[],
            }
        }
        // Metadata, MPEG2TSSequenceStart, a CodedFrames without its
        // composition time, reserved types: nothing a legacy player reads.
        _ => return Rewrap::Drop,
    };
    Rewrap::New {
        head: Head::new(&head),
        body: data,
    }
}

/// The Enhanced RTMP single-track form: first byte, FourCC, the track's bytes.
fn enhanced(b0: u8, fourcc: [u8; 4], data: &[u8]) -> Rewrap<'_> {
    let [a, b, c, d] = fourcc;
    Rewrap::New {
        head: Head::new(&[b0, a, b, c, d]),
        body: data,
    }
}

/// Parses a rendition's stream name: `NAME~N` is video track N (0 to 255)
/// of stream `NAME`. Returns (`NAME`, N); None for any other name.
pub fn parse_name(key: &str) -> Option<(&str, u8)> {
    let (parent, n) = key.rsplit_once('~')?;
    if parent.is_empty() || parent.ends_with('/') || n.is_empty() || n.len() > 3 {
        return None;
    }
    if !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    Some((parent, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A multitrack video message: ManyTracks (1) of `fourcc`.
    fn many_tracks(
        frame_type: u8,
        packet_type: u8,
        fourcc: &[u8; 4],
        tracks: &[(u8, &[u8])],
    ) -> Vec<u8> {
        let mut v = vec![0x80 | (frame_type << 4) | 6, (1 << 4) | packet_type];
        v.extend_from_slice(fourcc);
        for (id, body) in tracks {
            v.push(*id);
            let n = body.len() as u32;
            v.extend_from_slice(&n.to_be_bytes()[1..]);
            v.extend_from_slice(body);
        }
        v
    }

    fn bytes(r: Rewrap<'_>) -> Option<Vec<u8>> {
        match r {
            Rewrap::New { head, body } => Some([head.as_slice(), body].concat()),
            _ => None,
        }
    }

    #[test]
    fn avc_track_becomes_legacy_avc() {
        let cts_nalu: &[u8] = &[0, 0, 0x21, 0, 0, 0, 1, 0x65];
        let m = many_tracks(
            1,
            CODED_FRAMES,
            b"avc1",
            &[(0, &b"zero"[..]), (1, cts_nalu)],
        );
        let mut want = vec![0x17, 1];
        want.extend_from_slice(cts_nalu);
        assert_eq!(bytes(video(&m, 1)), Some(want));
        let m = many_tracks(2, CODED_FRAMES_X, b"avc1", &[(1, &b"nalu"[..])]);
        assert_eq!(
            bytes(video(&m, 1)),
            Some(b"\x27\x01\x00\x00\x00nalu".to_vec())
        );
        let m = many_tracks(1, SEQUENCE_START, b"avc1", &[(1, &b"avcC"[..])]);
        assert_eq!(
            bytes(video(&m, 1)),
            Some(b"\x17\x00\x00\x00\x00avcC".to_vec())
        );
        let m = many_tracks(1, SEQUENCE_END, b"avc1", &[(1, &b""[..])]);
        assert_eq!(bytes(video(&m, 1)), Some(b"\x17\x02\x00\x00\x00".to_vec()));
        assert_eq!(video(&m, 2), Rewrap::Drop, "no track 2");
        let m = many_tracks(1, METADATA, b"avc1", &[(1, &b"meta"[..])]);
        assert_eq!(video(&m, 1), Rewrap::Drop);
        let m = many_tracks(1, CODED_FRAMES, b"avc1", &[(1, &b"\0\0"[..])]);
        assert_eq!(video(&m, 1), Rewrap::Drop, "CodedFrames without its CTS");
    }

    #[test]
    fn other_codecs_become_enhanced_single_track() {
        let m = many_tracks(
            2,
            CODED_FRAMES,
            b"hvc1",
            &[(0, &b"a"[..]), (3, &b"\0\0\0b"[..])],
        );
        assert_eq!(bytes(video(&m, 3)), Some(b"\xa1hvc1\0\0\0b".to_vec()));
        let info = media::classify_video(&bytes(video(&m, 3)).unwrap());
        assert_eq!(
            (info.class, info.codec, info.track),
            (FrameClass::Frame, Codec::Hevc, 0)
        );
        // OneTrack VP9 keyframe.
        let m = [&[0x80 | (1 << 4) | 6, 0x01][..], b"vp09", &[1], b"frame"].concat();
        assert_eq!(bytes(video(&m, 1)), Some(b"\x91vp09frame".to_vec()));
    }

    #[test]
    fn many_codecs_reads_each_tracks_fourcc() {
        let mut m = vec![0x80 | (1 << 4) | 6, (2 << 4) | SEQUENCE_START];
        m.extend_from_slice(b"hvc1\x00\x00\x00\x02hv");
        m.extend_from_slice(b"avc1\x01\x00\x00\x02av");
        assert_eq!(bytes(video(&m, 0)), Some(b"\x90hvc1hv".to_vec()));
        assert_eq!(
            bytes(video(&m, 1)),
            Some(b"\x17\x00\x00\x00\x00av".to_vec())
        );
    }

    #[test]
    fn a_message_without_multitrack_header_is_track_0() {
        let legacy = b"\x17\x01\x00\x00\x00nalu";
        assert_eq!(video(legacy, 0), Rewrap::Same);
        assert_eq!(video(legacy, 1), Rewrap::Drop);
        let hevc = b"\x91hvc1frame";
        assert_eq!(video(hevc, 0), Rewrap::Same);
        // Enhanced single-track avc1 becomes legacy too.
        let avc = b"\x93avc1nalu";
        assert_eq!(
            bytes(video(avc, 0)),
            Some(b"\x17\x01\x00\x00\x00nalu".to_vec())
        );
        assert_eq!(audio(b"\xaf\x01aac", 0), Rewrap::Same);
        assert_eq!(audio(b"\xaf\x01aac", 1), Rewrap::Drop);
        assert_eq!(
            video(b"", 0),
            Rewrap::Same,
            "empty: forwarded like the parent does"
        );
    }

    #[test]
    fn audio_tracks_become_legacy_aac_or_enhanced() {
        // ManyTracks AAC, tracks 0 and 1.
        let mut m = vec![0x90 | 5, (1 << 4) | CODED_FRAMES];
        m.extend_from_slice(b"mp4a\x00\x00\x00\x01a\x01\x00\x00\x01b");
        assert_eq!(bytes(audio(&m, 1)), Some(b"\xaf\x01b".to_vec()));
        let mut m = vec![0x90 | 5, CODED_FRAMES];
        m.extend_from_slice(b"Opus\x02opus");
        assert_eq!(bytes(audio(&m, 2)), Some(b"\x91Opusopus".to_vec()));
    }

    #[test]
    fn names() {
        assert_eq!(parse_name("live/cam~1"), Some(("live/cam", 1)));
        assert_eq!(parse_name("live/a~b~255"), Some(("live/a~b", 255)));
        for bad in [
            "live/cam",
            "live/cam~",
            "live/cam~256",
            "live/cam~01",
            "~1",
            "live/~1",
            "live/cam~x1",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    proptest! {
        /// Any bytes after a multitrack header (and any bytes at all)
        /// re-wrap without panicking, and a re-wrapped message is the
        /// track's own bytes behind a new header.
        #[test]
        fn malformed_multitrack_never_panics(
            frame_type in 0u8..8,
            packet_type in 0u8..16,
            kind in 0u8..4,
            video_msg in any::<bool>(),
            rest in proptest::collection::vec(any::<u8>(), 0..48),
            track in 0u8..4,
        ) {
            let first = if video_msg { 0x80 | (frame_type << 4) | 6 } else { 0x90 | 5 };
            let mut m = vec![first, (kind << 4) | packet_type];
            m.extend_from_slice(&rest);
            for msg in [&m[..], &rest[..]] {
                let r = if video_msg { video(msg, track) } else { audio(msg, track) };
                if let Rewrap::New { head, body } = r {
                    prop_assert!(head.as_slice().len() <= 5);
                    // The body is a slice of the message: no copy, no invention.
                    let start = body.as_ptr() as usize;
                    let within = body.is_empty()
                        || (start >= msg.as_ptr() as usize
                            && start + body.len() <= msg.as_ptr() as usize + msg.len());
                    prop_assert!(within);
                }
            }
        }
    }
}
