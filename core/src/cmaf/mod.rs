//! The CMAF packager and the HLS / Low-Latency HLS playlist model, sans-IO:
//! no sockets, no clock reads, no threads. The caller (the publisher's
//! worker) feeds it the stream's frames with their output-timeline
//! timestamps and the wall clock it read; it hands back outputs (a part is
//! ready, a segment is complete, an init changed) and keeps a bounded window
//! of init segments, parts and segments that the server serves from memory
//! and renders playlists from. docs/hls.md describes the design; this is the
//! map:
//!
//! * [`codec`]: decoder configurations (the FLV sequence headers) to
//!   sample entries, timescales and `CODECS` strings.
//! * `mp4.rs`: the ISO-BMFF boxes: init segments, fragment headers.
//! * [`Packager`] (`packager.rs`): one per stream. Frames in, fragments out:
//!   each part of each rendition is one small allocation (`moof` + `mdat`
//!   header) followed by slices of the frames' own `Bytes`, as a
//!   [`WireForm`](crate::wire::WireForm); a segment is its parts' pieces.
//!   Nothing copies media.
//! * [`playlist`]: media playlists (LL-HLS tags, delta updates) and the
//!   multivariant playlist, for one stream or a group of streams.
//! * [`request`]: the URL layout under `/APP/NAME/`, the `_HLS_*` delivery
//!   directives, and the blocking-request decisions of RFC 8216bis 6.2.5.2
//!   as pure functions of the packager's state.
//!
//! Imports: `bytes`, `log`, [`crate::media`], [`crate::wire`],
//! [`crate::protocol::session::MediaKind`] and [`crate::protocol::amf`]
//! (onMetaData hints) only, so the module can move into the core crate.

mod bits;
pub mod codec;
pub(crate) mod mp4;
mod packager;
pub mod playlist;
pub mod request;
mod time;

pub use codec::{SkipReason, TrackFormat};
pub use packager::{Output, Packager, Part, RenditionInfo, Segment, SkippedTrack};
pub use playlist::multivariant_group;
pub use request::{Body, Decision, DirectiveError, Directives, Resource, Skip};

use std::fmt;

/// What a rendition carries: one video track, one audio track, or a video
/// track with the stream's audio track muxed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrackKind {
    Video,
    Audio,
    /// Video track `track` and the stream's audio track in one fMP4: each
    /// part is the two tracks' parts back to back (`Packager` builds it
    /// for a stream of one video and one audio track; docs/hls.md,
    /// "The muxed rendition").
    Muxed,
}

/// A rendition: one track of the stream (CMAF style, one track per
/// rendition), named by its kind and its FLV track id (0 without Enhanced
/// RTMP multitrack), or a muxed rendition named by its video track.
/// Written `v0`, `a0`, `v1`, `m0`, ... in URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RenditionId {
    pub kind: TrackKind,
    pub track: u8,
}

impl RenditionId {
    pub const fn video(track: u8) -> Self {
        RenditionId {
            kind: TrackKind::Video,
            track,
        }
    }

    pub const fn audio(track: u8) -> Self {
        RenditionId {
            kind: TrackKind::Audio,
            track,
        }
    }

    /// Video track `track` with the stream's audio muxed in.
    pub const fn muxed(track: u8) -> Self {
        RenditionId {
            kind: TrackKind::Muxed,
            track,
        }
    }

    /// The MP4 track_ID: video tracks 1..=256 and audio tracks 257..=512
    /// by FLV track id, so ids are unique within a stream and stable when
    /// tracks come and go (a combined init for recording lists them all).
    /// A muxed rendition's is its video track's.
    pub fn mp4_track_id(self) -> u32 {
        match self.kind {
            TrackKind::Video | TrackKind::Muxed => 1 + u32::from(self.track),
            TrackKind::Audio => 257 + u32::from(self.track),
        }
    }
}

impl fmt::Display for RenditionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = match self.kind {
            TrackKind::Video => 'v',
            TrackKind::Audio => 'a',
            TrackKind::Muxed => 'm',
        };
        write!(f, "{k}{}", self.track)
    }
}

/// How the packager cuts and keeps a stream. Every duration is in
/// milliseconds unless its name says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackagerConfig {
    /// The most PART-TARGET may be. Each stream's is fitted to its frames
    /// once they have spanned this: the most whole frames of their spacing
    /// within it, plus a millisecond clock's jitter and the other tracks'
    /// overshoot, so full parts hold exactly that many frames and stay
    /// above the 85 % of PART-TARGET that RFC 8216bis 4.4.4.9 asks of every
    /// part but a segment's last (see docs/hls.md). Default 240 ms: 224 ms
    /// at 20, 25, 30, 50 and 60 fps with AAC, 233 ms at 24 fps;
    /// PART-HOLD-BACK is three times that, about 0.67 s.
    pub part_target_ms: u32,
    /// EXT-X-TARGETDURATION, in whole seconds: no segment, once rounded,
    /// lasts longer. A segment starts on a keyframe (one per GOP, or one
    /// per several short GOPs); a GOP longer than this is cut at a part
    /// boundary into segments that do not start on a keyframe. Default 4:
    /// GOPs of 1, 2 or 4 s (what encoders are told to use for live) each
    /// make whole segments.
    pub target_duration_s: u32,
    /// A keyframe starts a new segment only once the current one lasted
    /// this long, so very short GOPs share a segment. Default 1000.
    pub min_segment_ms: u32,
    /// Most complete segments kept per stream (every rendition keeps the
    /// same ones). Default 20: with 2 s GOPs, 40 s, more than the 24 s
    /// skip boundary (CAN-SKIP-UNTIL, six target durations), so delta
    /// updates skip something.
    pub window_segments: usize,
    /// Most bytes of media and fragment headers kept per stream in complete
    /// segments (all renditions together); the oldest segments go first.
    /// A segment in progress that reaches a quarter of this ends at the
    /// next frame, keyframe or not, and a track holds at most a quarter of
    /// it in samples waiting for their part. Default 64 MiB: 40 s of a
    /// 12 Mbit/s ladder; at least 1 MiB.
    pub window_bytes: usize,
    /// Offer a stream of one video and one audio track as one muxed
    /// rendition (`m0`: both tracks in each part) in its multivariant
    /// playlist, instead of a video rendition with an audio group. The
    /// track renditions are served either way. Default true: a player
    /// then loads one playlist and one part per part interval, and
    /// hls.js starts closer to the live edge (docs/hls.md, "The muxed
    /// rendition").
    pub mux_audio: bool,
}

impl Default for PackagerConfig {
    fn default() -> Self {
        PackagerConfig {
            part_target_ms: 240,
            target_duration_s: 4,
            min_segment_ms: 1000,
            window_segments: 20,
            window_bytes: 64 << 20,
            mux_audio: true,
        }
    }
}

/// A configuration the packager refuses, with the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    PartTarget(u32),
    TargetDuration(u32),
    MinSegment {
        min_segment_ms: u32,
        target_duration_s: u32,
    },
    WindowSegments(usize),
    WindowBytes(usize),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::PartTarget(v) => {
                write!(f, "part target {v} ms outside 100..=2000 ms")
            }
            ConfigError::TargetDuration(v) => write!(
                f,
                "target duration {v} s outside 1..=60 s, or under three part targets"
            ),
            ConfigError::MinSegment {
                min_segment_ms,
                target_duration_s,
            } => write!(
                f,
                "minimum segment {min_segment_ms} ms longer than the target duration {target_duration_s} s"
            ),
            ConfigError::WindowSegments(v) => {
                write!(f, "window of {v} segments: at least 2 are needed")
            }
            ConfigError::WindowBytes(v) => {
                write!(f, "window of {v} bytes: at least 1 MiB is needed")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

impl PackagerConfig {
    /// Checks the values against each other: parts of 100 ms to 2 s, at
    /// least three parts per target duration, a minimum segment within the
    /// target duration, a window of at least two segments and 1 MiB.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(100..=2000).contains(&self.part_target_ms) {
            return Err(ConfigError::PartTarget(self.part_target_ms));
        }
        let td_ms = u64::from(self.target_duration_s) * 1000;
        if !(1..=60).contains(&self.target_duration_s) || td_ms < 3 * u64::from(self.part_target_ms)
        {
            return Err(ConfigError::TargetDuration(self.target_duration_s));
        }
        if u64::from(self.min_segment_ms) > td_ms {
            return Err(ConfigError::MinSegment {
                min_segment_ms: self.min_segment_ms,
                target_duration_s: self.target_duration_s,
            });
        }
        if self.window_segments < 2 {
            return Err(ConfigError::WindowSegments(self.window_segments));
        }
        if self.window_bytes < 1 << 20 {
            return Err(ConfigError::WindowBytes(self.window_bytes));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_can_be_shared_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Packager>();
        send_sync::<Part>();
        send_sync::<Segment>();
        send_sync::<Output>();
    }

    #[test]
    fn rendition_names_and_track_ids() {
        assert_eq!(RenditionId::video(0).to_string(), "v0");
        assert_eq!(RenditionId::audio(2).to_string(), "a2");
        assert_eq!(RenditionId::video(0).mp4_track_id(), 1);
        assert_eq!(RenditionId::video(255).mp4_track_id(), 256);
        assert_eq!(RenditionId::audio(0).mp4_track_id(), 257);
        assert!(RenditionId::video(9) < RenditionId::audio(0), "video first");
    }

    #[test]
    fn config_validation_names_the_value() {
        assert_eq!(PackagerConfig::default().validate(), Ok(()));
        let c = PackagerConfig {
            part_target_ms: 50,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::PartTarget(50)));
        let c = PackagerConfig {
            part_target_ms: 1500,
            target_duration_s: 4,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::TargetDuration(4)));
        let c = PackagerConfig {
            min_segment_ms: 5000,
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("5000 ms"));
        let c = PackagerConfig {
            window_segments: 1,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::WindowSegments(1)));
        let c = PackagerConfig {
            window_bytes: 1000,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::WindowBytes(1000)));
    }
}

/// Synthetic streams for the unit tests: FLV payloads as a publisher sends
/// them, and a driver.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::protocol::session::MediaKind;
    use bytes::Bytes;

    /// x264 High 3.1, 1280x720: an SPS NAL unit.
    pub(crate) const SPS_720P: &str = "6764001facd9405005bb011000000300100000030320f1831960";

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// A legacy AVC sequence header (0x17 0x00, composition time 0, avcC).
    pub(crate) fn avc_header(sps_hex: &str) -> Bytes {
        let sps = hex(sps_hex);
        let mut p = vec![
            0x17, // key | AVC
            0x00, // AVCPacketType 0: sequence header
            0, 0, 0, // composition time
            0x01, sps[1], sps[2], sps[3], // version, profile, compatibility, level
            0xff,   // lengthSizeMinusOne 3
            0xe1,   // one SPS
        ];
        p.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        p.extend_from_slice(&sps);
        p.extend_from_slice(&[0x01, 0x00, 0x04, 0x68, 0xeb, 0xe3, 0xcb]); // one PPS
        Bytes::from(p)
    }

    /// A legacy AVC frame: one length-prefixed NAL unit of `size` bytes
    /// (`fill` repeated), with composition time `cts`.
    pub(crate) fn avc_frame(key: bool, cts: i32, size: usize, fill: u8) -> Bytes {
        let mut p = vec![if key { 0x17 } else { 0x27 }, 0x01];
        p.extend_from_slice(&cts.to_be_bytes()[1..]);
        p.extend_from_slice(&(size as u32).to_be_bytes());
        p.push(if key { 0x65 } else { 0x41 });
        p.resize(p.len() + size - 1, fill);
        Bytes::from(p)
    }

    /// A legacy AAC sequence header: AAC-LC, 48 kHz, stereo.
    pub(crate) fn aac_header() -> Bytes {
        Bytes::from_static(&[0xaf, 0x00, 0x11, 0x90])
    }

    pub(crate) fn aac_frame(size: usize, fill: u8) -> Bytes {
        let mut p = vec![0xaf, 0x01];
        p.resize(2 + size, fill);
        Bytes::from(p)
    }

    /// One message of a stream.
    #[derive(Debug, Clone)]
    pub(crate) struct Msg {
        pub kind: MediaKind,
        pub ts: u32,
        pub payload: Bytes,
    }

    /// `secs` of 30 fps H.264 (a keyframe every `gop` frames, 1 KB frames,
    /// keyframes 8 KB) and 48 kHz AAC (1024-sample frames, 200 bytes),
    /// interleaved by timestamp as encoders send them, headers first;
    /// timestamps start at `start` and wrap at 2^32. `audio_shift` moves
    /// the audio's position in the message order by that many ms (positive:
    /// audio arrives later), not its timestamps.
    pub(crate) fn av_stream(secs: u32, gop: u32, start: u32, audio_shift: i64) -> Vec<Msg> {
        av_stream_sized(secs, gop, start, audio_shift, 1)
    }

    /// [`av_stream`] with every frame `scale` times larger.
    pub(crate) fn av_stream_sized(
        secs: u32,
        gop: u32,
        start: u32,
        audio_shift: i64,
        scale: usize,
    ) -> Vec<Msg> {
        let mut v: Vec<(i64, Msg)> = Vec::new();
        v.push((
            i64::MIN,
            Msg {
                kind: MediaKind::Video,
                ts: start,
                payload: avc_header(SPS_720P),
            },
        ));
        v.push((
            i64::MIN + 1,
            Msg {
                kind: MediaKind::Audio,
                ts: start,
                payload: aac_header(),
            },
        ));
        let frames = secs * 30;
        for i in 0..frames {
            let ms = (u64::from(i) * 1000 / 30) as i64;
            let key = i % gop == 0;
            v.push((
                ms * 10,
                Msg {
                    kind: MediaKind::Video,
                    ts: start.wrapping_add(ms as u32),
                    payload: avc_frame(key, 0, scale * if key { 8000 } else { 1000 }, i as u8),
                },
            ));
        }
        let audio = secs as u64 * 48000 / 1024;
        for i in 0..audio {
            let ms = (i * 1024 * 1000 / 48000) as i64;
            v.push((
                (ms + audio_shift) * 10 + 1,
                Msg {
                    kind: MediaKind::Audio,
                    ts: start.wrapping_add(ms as u32),
                    payload: aac_frame(200 * scale, i as u8),
                },
            ));
        }
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, m)| m).collect()
    }

    /// Feeds messages (wall clock: 1.7e12 ms plus the timestamp) and
    /// returns every output.
    pub(crate) fn feed(p: &mut Packager, msgs: &[Msg]) -> Vec<Output> {
        let mut out = Vec::new();
        for m in msgs {
            p.handle_frame(
                m.kind,
                m.ts,
                &m.payload,
                1_700_000_000_000 + u64::from(m.ts),
            );
            while let Some(o) = p.poll_output() {
                out.push(o);
            }
        }
        out
    }

    pub(crate) fn parts(out: &[Output], r: RenditionId) -> Vec<std::sync::Arc<Part>> {
        out.iter()
            .filter_map(|o| match o {
                Output::PartReady(p) if p.rendition == r => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn segments(out: &[Output], r: RenditionId) -> Vec<std::sync::Arc<Segment>> {
        out.iter()
            .filter_map(|o| match o {
                Output::SegmentComplete(s) if s.rendition == r => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
}
