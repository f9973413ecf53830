//! FLV audio/video tag payloads as carried in RTMP messages 8 (audio) and 9
//! (video): legacy FLV headers and Enhanced RTMP v2 extended headers.
//!
//! References (the Enhanced RTMP v2 specification, veovera; the sections
//! used are listed in docs/protocol.md, "8. The spec sections the code cites"):
//! * "Pre 2023 AudioTagHeader Format" / "Pre 2023 VideoTagHeader Format":
//!   the legacy one-byte headers (plus AACPacketType / AVCPacketType).
//! * "Enhanced Audio" (ExAudioTagHeader, ExAudioTagBody) and "Enhanced Video"
//!   (ExVideoTagHeader, ExVideoTagBody): FourCC mode, packet types, the ModEx
//!   loop, VideoCommand, and the multitrack header.
//! * "Multitrack Streaming via Enhanced RTMP": track ids are per message and
//!   a message may carry several tracks.
//!
//! Everything here is sans-IO and allocation-free: pure functions over
//! `&[u8]`, run once per published frame. The classifiers read only the tag
//! header (never the codec bitstream; [`avc_dimensions`], for logs, reads
//! the SPS per ITU-T H.264 7.3.2.1.1), never panic, and never fail: empty, truncated
//! or unknown input is classified [`FrameClass::Other`] (or `Frame` for coded
//! data of an unknown legacy codec) and passed through (docs/protocol.md,
//! "6. Media payloads").
//!
//! Decisions worth knowing when reading the server:
//! * Frame type 4 ("generated key frame", reserved for server-side seeking)
//!   is classified `Frame`, never `Keyframe`: a live stream must not start a
//!   GOP on it. Reserved frame types 0, 6, 7 on coded data are `Frame` too.
//! * Frame type 5 (info/command frame) is `Other`. With an ex header it is
//!   followed by a single VideoCommand byte and *no FourCC*, so the codec is
//!   [`Codec::Unknown`]; the exception is packet type Metadata, for which the
//!   spec says the frame type is ignored.
//! * Enhanced audio `MultichannelConfig` is classified `Metadata`: like the
//!   video Metadata packet, late joiners need the latest one (an Opus
//!   sequence start may be empty and rely on it for channel mapping).
//! * A zero-length audio message is the spec's "silence" message: `Other`
//!   with `Codec::Unknown`; forward it, don't drop it.
//! * Multitrack: [`classify_video`]/[`classify_audio`] describe the *first*
//!   track (its id in [`MediaInfo::track`]); the packet type and (video)
//!   frame type are shared by every track in the message. [`video_tracks`] /
//!   [`audio_tracks`] walk every track with its data slice.

use std::borrow::Cow;
use std::fmt;

/// What a frame is, for the GOP cache and slow-player skipping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// Decoder configuration (AVC/HEVC/AV1/VP9 sequence header or Enhanced
    /// SequenceStart/MPEG2TSSequenceStart, AAC AudioSpecificConfig, Opus/FLAC
    /// sequence start): players need the latest one before any coded frame.
    SequenceHeader,
    /// A video frame a decoder can start from.
    Keyframe,
    /// Any other coded frame (inter video frame; every audio frame).
    Frame,
    /// End of sequence.
    SequenceEnd,
    /// Enhanced video Metadata packet (e.g. HDR colour info), or enhanced
    /// audio MultichannelConfig: late joiners need the latest.
    Metadata,
    /// Video info/command frames, ModEx-only, unknown or empty payloads: passed through.
    Other,
}

/// A codec as the tag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Avc,
    Hevc,
    Av1,
    Vp8,
    Vp9,
    Vvc,
    Aac,
    Mp3,
    Opus,
    Flac,
    Ac3,
    Eac3,
    /// A legacy FLV codec id / sound format not listed above.
    Legacy(u8),
    /// An Enhanced RTMP FourCC not listed above.
    FourCc([u8; 4]),
    /// Empty or truncated header.
    Unknown,
}

impl Codec {
    /// The codec an Enhanced RTMP FourCC names (audio and video FourCCs do
    /// not collide, so one table serves both).
    pub fn from_fourcc(fourcc: [u8; 4]) -> Codec {
        match &fourcc {
            b"avc1" => Codec::Avc,
            b"hvc1" => Codec::Hevc,
            b"av01" => Codec::Av1,
            b"vp08" => Codec::Vp8,
            b"vp09" => Codec::Vp9,
            b"vvc1" => Codec::Vvc,
            b"mp4a" => Codec::Aac,
            b".mp3" => Codec::Mp3,
            b"Opus" => Codec::Opus,
            b"fLaC" => Codec::Flac,
            b"ac-3" => Codec::Ac3,
            b"ec-3" => Codec::Eac3,
            _ => Codec::FourCc(fourcc),
        }
    }

    /// A human-readable name for logs ("H.264", "HEVC", "AAC", "Opus", ...;
    /// an unlisted FourCC prints as its four characters). Allocates only for
    /// `Legacy` and `FourCc`; use the `Display` impl to avoid even that.
    pub fn name(&self) -> Cow<'static, str> {
        match self.static_name() {
            Some(name) => Cow::Borrowed(name),
            None => Cow::Owned(self.to_string()),
        }
    }

    fn static_name(&self) -> Option<&'static str> {
        Some(match self {
            Codec::Avc => "H.264",
            Codec::Hevc => "HEVC",
            Codec::Av1 => "AV1",
            Codec::Vp8 => "VP8",
            Codec::Vp9 => "VP9",
            Codec::Vvc => "VVC",
            Codec::Aac => "AAC",
            Codec::Mp3 => "MP3",
            Codec::Opus => "Opus",
            Codec::Flac => "FLAC",
            Codec::Ac3 => "AC-3",
            Codec::Eac3 => "E-AC-3",
            Codec::Unknown => "unknown",
            Codec::Legacy(_) | Codec::FourCc(_) => return None,
        })
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::Legacy(id) => write!(f, "FLV codec {id}"),
            Codec::FourCc(fourcc) => {
                for b in fourcc {
                    write!(f, "{}", b.escape_ascii())?;
                }
                Ok(())
            }
            other => f.write_str(other.static_name().unwrap_or("unknown")),
        }
    }
}

impl Codec {
    /// The Enhanced RTMP FourCC that names this codec (`None` for legacy
    /// FLV codec ids without one, and for `Unknown`).
    pub fn fourcc(&self) -> Option<[u8; 4]> {
        Some(match self {
            Codec::Avc => *b"avc1",
            Codec::Hevc => *b"hvc1",
            Codec::Av1 => *b"av01",
            Codec::Vp8 => *b"vp08",
            Codec::Vp9 => *b"vp09",
            Codec::Vvc => *b"vvc1",
            Codec::Aac => *b"mp4a",
            Codec::Mp3 => *b".mp3",
            Codec::Opus => *b"Opus",
            Codec::Flac => *b"fLaC",
            Codec::Ac3 => *b"ac-3",
            Codec::Eac3 => *b"ec-3",
            Codec::FourCc(f) => *f,
            Codec::Legacy(_) | Codec::Unknown => return None,
        })
    }

    /// Bit of a named codec in [`FourCcSet`]'s mask.
    fn bit(&self) -> Option<u16> {
        let i = match self {
            Codec::Avc => 0,
            Codec::Hevc => 1,
            Codec::Av1 => 2,
            Codec::Vp8 => 3,
            Codec::Vp9 => 4,
            Codec::Vvc => 5,
            Codec::Aac => 6,
            Codec::Mp3 => 7,
            Codec::Opus => 8,
            Codec::Flac => 9,
            Codec::Ac3 => 10,
            Codec::Eac3 => 11,
            Codec::Legacy(_) | Codec::FourCc(_) | Codec::Unknown => return None,
        };
        Some(1 << i)
    }
}

/// The FourCCs a client announced in `connect` (`fourCcList`, or the keys
/// of `videoFourCcInfoMap` / `audioFourCcInfoMap` with CanDecode or
/// CanForward), as the player-side filter: built once per connection, asked
/// once per frame without allocating. `*` admits every codec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FourCcSet {
    any: bool,
    known: u16,
    /// FourCCs Sluice has no name for (rare: kept in a small list).
    others: Vec<[u8; 4]>,
}

impl FourCcSet {
    /// Adds one announced entry: `*`, or a four-byte FourCC (anything else
    /// is ignored).
    pub fn insert(&mut self, fourcc: &str) {
        if fourcc == "*" {
            self.any = true;
            return;
        }
        let Ok(f) = <[u8; 4]>::try_from(fourcc.as_bytes()) else {
            return;
        };
        match Codec::from_fourcc(f).bit() {
            Some(bit) => self.known |= bit,
            None if !self.others.contains(&f) => self.others.push(f),
            None => {}
        }
    }

    /// True when `*` was announced.
    pub fn is_wildcard(&self) -> bool {
        self.any
    }

    /// True when nothing was announced.
    pub fn is_empty(&self) -> bool {
        !self.any && self.known == 0 && self.others.is_empty()
    }

    /// True when a codec named by an Enhanced RTMP FourCC is in the set.
    /// `Unknown` (command frames, truncated headers) and legacy ids are
    /// always admitted: they carry no FourCC to refuse.
    pub fn contains(&self, codec: Codec) -> bool {
        if self.any {
            return true;
        }
        match (codec.bit(), codec) {
            (Some(bit), _) => self.known & bit != 0,
            (None, Codec::FourCc(f)) => self.others.contains(&f),
            (None, _) => true,
        }
    }
}

/// True when an audio (`video == false`) or video payload uses the Enhanced
/// RTMP extended header (video IsExHeader bit; audio sound format 9). Legacy
/// headers (AVC codec id 7, AAC sound format 10, ...) are what every RTMP
/// player decodes, so the player-side FourCC filter never refuses them.
pub fn is_enhanced(video: bool, payload: &[u8]) -> bool {
    match payload.first() {
        Some(b) if video => b & 0x80 != 0,
        Some(b) => b >> 4 == SOUND_FORMAT_EX_HEADER,
        None => false,
    }
}

/// What the first bytes of an audio or video payload say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaInfo {
    pub class: FrameClass,
    pub codec: Codec,
    /// Track id for Enhanced RTMP multitrack; 0 otherwise.
    pub track: u8,
}

const UNKNOWN: MediaInfo = MediaInfo {
    class: FrameClass::Other,
    codec: Codec::Unknown,
    track: 0,
};

/// Classifies a video message payload (RTMP type 9). For a multitrack
/// message this describes the first track (see [`video_tracks`]).
pub fn classify_video(payload: &[u8]) -> MediaInfo {
    video_tracks(payload).first_info()
}

/// Classifies an audio message payload (RTMP type 8). For a multitrack
/// message this describes the first track (see [`audio_tracks`]).
pub fn classify_audio(payload: &[u8]) -> MediaInfo {
    audio_tracks(payload).first_info()
}

/// One track of a media message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Track<'a> {
    pub info: MediaInfo,
    /// The bytes after this track's header: for legacy AVC/HEVC and
    /// enhanced AVC/HEVC/VVC CodedFrames they start with the SI24
    /// composition time; for a command frame, the VideoCommand byte. May be
    /// shorter than a multitrack size field declares if the message is
    /// truncated.
    pub data: &'a [u8],
}

/// The tracks of one audio or video message, in message order, from
/// [`video_tracks`] or [`audio_tracks`]. A message without a multitrack
/// header yields exactly one track (id 0); an empty one yields none.
/// A truncated track header ends the walk with a track of class `Other`.
#[derive(Debug, Clone)]
pub struct Tracks<'a> {
    state: State<'a>,
    multitrack: bool,
    /// The packet type every track of a multitrack message shares.
    packet_type: Option<u8>,
}

#[derive(Debug, Clone)]
enum State<'a> {
    Single(Track<'a>),
    Multi {
        media: Media,
        frame_type: u8,
        packet_type: u8,
        /// AvMultitrackType: 0 OneTrack, 1 ManyTracks, 2 ManyTracksManyCodecs.
        kind: u8,
        /// The FourCC shared by all tracks (absent for ManyTracksManyCodecs).
        shared: Option<[u8; 4]>,
        rest: &'a [u8],
    },
    Done,
}

impl<'a> Tracks<'a> {
    /// True if the message carries an Enhanced RTMP multitrack header
    /// (even OneTrack): forwarding it to a player that did not announce
    /// `capsEx` Multitrack needs a rewrite.
    pub fn is_multitrack(&self) -> bool {
        self.multitrack
    }

    /// The Enhanced RTMP packet type shared by every track of a multitrack
    /// message (SequenceStart 0, CodedFrames 1, ...); None for a message
    /// without a multitrack header.
    pub fn packet_type(&self) -> Option<u8> {
        self.packet_type
    }

    fn first_info(mut self) -> MediaInfo {
        let fallback = match &self.state {
            State::Multi { shared, .. } => MediaInfo {
                codec: shared.map_or(Codec::Unknown, Codec::from_fourcc),
                ..UNKNOWN
            },
            _ => UNKNOWN,
        };
        self.next().map_or(fallback, |t| t.info)
    }
}

impl<'a> Iterator for Tracks<'a> {
    type Item = Track<'a>;

    fn next(&mut self) -> Option<Track<'a>> {
        match std::mem::replace(&mut self.state, State::Done) {
            State::Done => None,
            State::Single(track) => Some(track),
            State::Multi {
                media,
                frame_type,
                packet_type,
                kind,
                shared,
                rest,
            } => {
                if rest.is_empty() {
                    return None;
                }
                let mut c = Cursor(rest);
                let fourcc = if kind == MULTITRACK_MANY_CODECS {
                    c.fourcc()
                } else {
                    shared
                };
                let codec = fourcc.map_or(Codec::Unknown, Codec::from_fourcc);
                let truncated = |track: u8, data: &'a [u8]| Track {
                    info: MediaInfo {
                        class: FrameClass::Other,
                        codec,
                        track,
                    },
                    data,
                };
                let (Some(_), Some(track)) = (fourcc, c.u8()) else {
                    return Some(truncated(0, &[]));
                };
                let info = MediaInfo {
                    class: class_of(media, frame_type, packet_type),
                    codec,
                    track,
                };
                if kind == MULTITRACK_ONE_TRACK {
                    return Some(Track { info, data: c.0 });
                }
                let Some(size) = c.u24() else {
                    return Some(truncated(track, &[]));
                };
                let data = match c.take(size as usize) {
                    Some(data) => {
                        self.state = State::Multi {
                            media,
                            frame_type,
                            packet_type,
                            kind,
                            shared,
                            rest: c.0,
                        };
                        data
                    }
                    None => c.0,
                };
                Some(Track { info, data })
            }
        }
    }
}

/// Walks the tracks of a video message payload (RTMP type 9).
pub fn video_tracks(payload: &[u8]) -> Tracks<'_> {
    let mut c = Cursor(payload);
    let Some(b0) = c.u8() else {
        return NO_TRACKS;
    };
    // Legacy: UB[4] frame type, UB[4] codec id. Enhanced: UB[1] IsExHeader,
    // UB[3] frame type, UB[4] packet type.
    let frame_type = (b0 >> 4) & 0x07;
    if b0 & 0x80 == 0 {
        let codec = match b0 & 0x0f {
            7 => Codec::Avc,
            12 => Codec::Hevc,
            id => Codec::Legacy(id),
        };
        let class = if frame_type == FRAME_COMMAND {
            // Followed by a VideoCommand byte, not an AVCPacketType.
            FrameClass::Other
        } else if matches!(codec, Codec::Avc | Codec::Hevc) {
            match c.u8() {
                Some(0) => FrameClass::SequenceHeader,
                Some(1) => key_or_frame(frame_type),
                Some(2) => FrameClass::SequenceEnd,
                _ => FrameClass::Other,
            }
        } else {
            key_or_frame(frame_type)
        };
        let info = MediaInfo {
            class,
            codec,
            track: 0,
        };
        return single(info, c.0);
    }
    let Some(packet_type) = skip_mod_ex(&mut c, b0 & 0x0f) else {
        return single(UNKNOWN, &[]);
    };
    if frame_type == FRAME_COMMAND && packet_type != VIDEO_METADATA {
        // ExVideoTagHeader: a command frame carries a UI8 VideoCommand and
        // no FourCC and no body.
        return single(UNKNOWN, c.0);
    }
    ex_body(Media::Video, frame_type, packet_type, c)
}

/// Walks the tracks of an audio message payload (RTMP type 8).
pub fn audio_tracks(payload: &[u8]) -> Tracks<'_> {
    let mut c = Cursor(payload);
    let Some(b0) = c.u8() else {
        // The spec's "silence" message.
        return NO_TRACKS;
    };
    let sound_format = b0 >> 4;
    if sound_format != SOUND_FORMAT_EX_HEADER {
        let info = match sound_format {
            10 => MediaInfo {
                class: match c.u8() {
                    Some(0) => FrameClass::SequenceHeader,
                    Some(1) => FrameClass::Frame,
                    _ => FrameClass::Other,
                },
                codec: Codec::Aac,
                track: 0,
            },
            2 | 14 => MediaInfo {
                class: FrameClass::Frame,
                codec: Codec::Mp3,
                track: 0,
            },
            fmt => MediaInfo {
                class: FrameClass::Frame,
                codec: Codec::Legacy(fmt),
                track: 0,
            },
        };
        return single(info, c.0);
    }
    let Some(packet_type) = skip_mod_ex(&mut c, b0 & 0x0f) else {
        return single(UNKNOWN, &[]);
    };
    ex_body(Media::Audio, 0, packet_type, c)
}

/// Width and height in pixels from the video message payload that carries
/// an AVC sequence header: legacy (`0x17 0x00` + composition time) or
/// enhanced `avc1` SequenceStart (first track if multitrack). Reads the
/// first SPS of the AVCDecoderConfigurationRecord (ISO/IEC 14496-15
/// 5.3.3.1) per ITU-T H.264 7.3.2.1.1, applying frame cropping. For logs
/// and stream info only; `None` if the payload is anything else or
/// malformed. Allocation-free: emulation-prevention bytes are skipped while
/// reading.
pub fn avc_dimensions(payload: &[u8]) -> Option<(u32, u32)> {
    let track = video_tracks(payload).next()?;
    if track.info.codec != Codec::Avc || track.info.class != FrameClass::SequenceHeader {
        return None;
    }
    let mut c = Cursor(track.data);
    if payload.first()? & 0x80 == 0 {
        c.take(3)?; // legacy composition time
    }
    // configurationVersion, profile, compatibility, level, lengthSizeMinusOne.
    c.take(5)?;
    if c.u8()? & 0x1f == 0 {
        return None; // no SPS
    }
    let len = usize::from(c.u16()?);
    let sps = c.take(len)?;
    let (&nal_header, rbsp) = sps.split_first()?;
    if nal_header & 0x1f != 7 {
        return None;
    }
    sps_dimensions(rbsp)
}

/// H.264 7.3.2.1.1 seq_parameter_set_data up to frame cropping.
fn sps_dimensions(rbsp: &[u8]) -> Option<(u32, u32)> {
    let mut r = RbspBits::new(rbsp);
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.bit()? == 1;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            // seq_scaling_matrix_present_flag
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            for _ in 0..r.ue()? {
                r.se()?; // offset_for_ref_frame[i]; ends with the data
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.bit()? == 1 {
        left = u64::from(r.ue()?);
        right = u64::from(r.ue()?);
        top = u64::from(r.ue()?);
        bottom = u64::from(r.ue()?);
    }
    // 7.4.2.1.1: CropUnitX/Y from ChromaArrayType.
    let (crop_x, crop_y) = match (separate_colour_plane, chroma_format_idc) {
        (true, _) | (_, 0) => (1, 2 - frame_mbs_only),
        (false, 1) => (2, 2 * (2 - frame_mbs_only)),
        (false, 2) => (2, 2 - frame_mbs_only),
        _ => (1, 2 - frame_mbs_only),
    };
    let width = (width_mbs * 16).checked_sub(crop_x * (left + right))?;
    let height =
        ((2 - frame_mbs_only) * height_map_units * 16).checked_sub(crop_y * (top + bottom))?;
    // Cropping that leaves nothing is a malformed SPS, not a 0-pixel frame.
    if width == 0 || height == 0 {
        return None;
    }
    Some((u32::try_from(width).ok()?, u32::try_from(height).ok()?))
}

/// H.264 7.3.2.1.1.1 scaling_list(), values discarded.
fn skip_scaling_list(r: &mut RbspBits<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            next = (last + r.se()? + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

/// An MSB-first bit reader over a NAL unit payload that drops
/// emulation-prevention bytes (`00 00 03`) as it goes (H.264 7.4.1).
struct RbspBits<'a> {
    data: &'a [u8],
    zeros: u8,
    current: u8,
    left: u8,
}

impl<'a> RbspBits<'a> {
    fn new(data: &'a [u8]) -> Self {
        RbspBits {
            data,
            zeros: 0,
            current: 0,
            left: 0,
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    fn bit(&mut self) -> Option<u32> {
        if self.left == 0 {
            let mut b = self.next_byte()?;
            if self.zeros >= 2 && b == 3 {
                self.zeros = 0;
                b = self.next_byte()?;
            }
            self.zeros = if b == 0 {
                self.zeros.saturating_add(1)
            } else {
                0
            };
            self.current = b;
            self.left = 8;
        }
        self.left -= 1;
        Some(u32::from((self.current >> self.left) & 1))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some(acc << 1 | self.bit()?))
    }

    /// ue(v), 9.1: up to 31 leading zeros (values below 2^32 - 1).
    fn ue(&mut self) -> Option<u32> {
        let mut leading = 0;
        while self.bit()? == 0 {
            leading += 1;
            if leading > 31 {
                return None;
            }
        }
        let value = (1u64 << leading) - 1 + u64::from(self.bits(leading)?);
        u32::try_from(value).ok()
    }

    /// se(v), 9.1.1.
    fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Media {
    Audio,
    Video,
}

const FRAME_KEY: u8 = 1;
const FRAME_COMMAND: u8 = 5;
const SOUND_FORMAT_EX_HEADER: u8 = 9;
const VIDEO_METADATA: u8 = 4;
const VIDEO_MULTITRACK: u8 = 6;
const AUDIO_MULTITRACK: u8 = 5;
/// Same value for audio and video.
const MOD_EX: u8 = 7;
const MULTITRACK_ONE_TRACK: u8 = 0;
const MULTITRACK_MANY_CODECS: u8 = 2;

const NO_TRACKS: Tracks<'static> = Tracks {
    state: State::Done,
    multitrack: false,
    packet_type: None,
};

fn single(info: MediaInfo, data: &[u8]) -> Tracks<'_> {
    Tracks {
        state: State::Single(Track { info, data }),
        multitrack: false,
        packet_type: None,
    }
}

fn key_or_frame(frame_type: u8) -> FrameClass {
    if frame_type == FRAME_KEY {
        FrameClass::Keyframe
    } else {
        FrameClass::Frame
    }
}

/// The class an enhanced packet type gives (after ModEx and multitrack).
fn class_of(media: Media, frame_type: u8, packet_type: u8) -> FrameClass {
    match (media, packet_type) {
        // SequenceStart; video MPEG2TSSequenceStart.
        (_, 0) | (Media::Video, 5) => FrameClass::SequenceHeader,
        // CodedFrames; video CodedFramesX.
        (Media::Video, 1 | 3) => key_or_frame(frame_type),
        (Media::Audio, 1) => FrameClass::Frame,
        (_, 2) => FrameClass::SequenceEnd,
        // Video Metadata; audio MultichannelConfig.
        (_, 4) => FrameClass::Metadata,
        // Reserved, or Multitrack/ModEx where the spec forbids them.
        _ => FrameClass::Other,
    }
}

/// The ModEx loop of ExAudioTagHeader / ExVideoTagHeader: skips each ModEx
/// block (UI8 size - 1, or 0xff then UI16 size - 1; data; UB[4] ModEx type,
/// UB[4] packet type) and returns the packet type that follows, or `None`
/// if the payload ends first. Each block consumes at least 3 bytes, so the
/// loop is bounded by the payload length.
fn skip_mod_ex(c: &mut Cursor<'_>, mut packet_type: u8) -> Option<u8> {
    while packet_type == MOD_EX {
        let mut size = usize::from(c.u8()?) + 1;
        if size == 256 {
            size = usize::from(c.u16()?) + 1;
        }
        c.take(size)?;
        packet_type = c.u8()? & 0x0f;
    }
    Some(packet_type)
}

/// The rest of an ex header after ModEx: a multitrack header, or a FourCC.
fn ex_body(media: Media, frame_type: u8, packet_type: u8, mut c: Cursor<'_>) -> Tracks<'_> {
    let multitrack = match media {
        Media::Video => VIDEO_MULTITRACK,
        Media::Audio => AUDIO_MULTITRACK,
    };
    if packet_type != multitrack {
        let Some(fourcc) = c.fourcc() else {
            return single(UNKNOWN, &[]);
        };
        let info = MediaInfo {
            class: class_of(media, frame_type, packet_type),
            codec: Codec::from_fourcc(fourcc),
            track: 0,
        };
        return single(info, c.0);
    }
    // UB[4] AvMultitrackType, UB[4] packet type for all tracks, then the
    // shared FourCC unless ManyTracksManyCodecs.
    let Some(b) = c.u8() else {
        return single(UNKNOWN, &[]);
    };
    let (kind, packet_type) = (b >> 4, b & 0x0f);
    if kind > MULTITRACK_MANY_CODECS {
        // Reserved multitrack type: the track layout is unknown.
        return single(UNKNOWN, c.0);
    }
    let shared = if kind == MULTITRACK_MANY_CODECS {
        None
    } else {
        let Some(fourcc) = c.fourcc() else {
            return single(UNKNOWN, &[]);
        };
        Some(fourcc)
    };
    Tracks {
        state: State::Multi {
            media,
            frame_type,
            packet_type,
            kind,
            shared,
            rest: c.0,
        },
        multitrack: true,
        packet_type: Some(packet_type),
    }
}

/// A bounds-checked big-endian reader.
#[derive(Debug, Clone, Copy)]
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Option<u32> {
        self.take(3)
            .map(|b| u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    fn fourcc(&mut self) -> Option<[u8; 4]> {
        self.take(4).map(|b| [b[0], b[1], b[2], b[3]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(class: FrameClass, codec: Codec, track: u8) -> MediaInfo {
        MediaInfo {
            class,
            codec,
            track,
        }
    }

    // ---- legacy video ----

    #[test]
    fn legacy_avc_sequence_header() {
        let p = [
            0x17, // frame type 1 (key) | codec id 7 (AVC)
            0x00, // AVCPacketType 0: sequence header
            0x00, 0x00, 0x00, // composition time 0
            0x01, // AVCDecoderConfigurationRecord version...
        ];
        assert_eq!(
            classify_video(&p),
            info(FrameClass::SequenceHeader, Codec::Avc, 0)
        );
    }

    #[test]
    fn legacy_avc_keyframe_and_inter_frame() {
        let key = [
            0x17, // frame type 1 (key) | AVC
            0x01, // AVCPacketType 1: NALUs
            0x00, 0x00, 0x00, // composition time
        ];
        let inter = [
            0x27, // frame type 2 (inter) | AVC
            0x01, // NALUs
            0x00, 0x00, 0x21, // composition time 33
        ];
        assert_eq!(
            classify_video(&key),
            info(FrameClass::Keyframe, Codec::Avc, 0)
        );
        assert_eq!(
            classify_video(&inter),
            info(FrameClass::Frame, Codec::Avc, 0)
        );
    }

    #[test]
    fn legacy_avc_end_of_sequence() {
        let p = [
            0x17, // key | AVC
            0x02, // AVCPacketType 2: end of sequence
        ];
        assert_eq!(
            classify_video(&p),
            info(FrameClass::SequenceEnd, Codec::Avc, 0)
        );
    }

    #[test]
    fn legacy_hevc_codec_id_12_is_parsed_like_avc() {
        let header = [
            0x1c, // key | codec id 12 (non-standard HEVC)
            0x00, // sequence header
        ];
        let key = [
            0x1c, // key | HEVC
            0x01, // NALUs
        ];
        assert_eq!(
            classify_video(&header),
            info(FrameClass::SequenceHeader, Codec::Hevc, 0)
        );
        assert_eq!(
            classify_video(&key),
            info(FrameClass::Keyframe, Codec::Hevc, 0)
        );
    }

    #[test]
    fn legacy_avc_without_packet_type_is_other() {
        let p = [
            0x17, // key | AVC, then nothing
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Other, Codec::Avc, 0));
    }

    #[test]
    fn legacy_avc_unknown_packet_type_is_other() {
        let p = [
            0x17, // key | AVC
            0x03, // AVCPacketType 3: undefined
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Other, Codec::Avc, 0));
    }

    #[test]
    fn legacy_command_frame_is_other_never_keyframe() {
        let p = [
            0x57, // frame type 5 (info/command) | AVC
            0x00, // VideoCommand 0: start of seek (not an AVCPacketType)
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Other, Codec::Avc, 0));
    }

    #[test]
    fn legacy_vp6_frame_types() {
        let key = [
            0x14, // key | codec id 4 (On2 VP6)
            0x00, // VP6 adjustment byte
        ];
        let disposable = [
            0x32, // frame type 3 (disposable inter) | codec id 2 (Sorenson H.263)
        ];
        let generated = [
            0x44, // frame type 4 (generated key, server seek only) | VP6
        ];
        let command = [
            0x54, // frame type 5 (command) | VP6
            0x01, // VideoCommand 1: end of seek
        ];
        assert_eq!(
            classify_video(&key),
            info(FrameClass::Keyframe, Codec::Legacy(4), 0)
        );
        assert_eq!(
            classify_video(&disposable),
            info(FrameClass::Frame, Codec::Legacy(2), 0)
        );
        assert_eq!(
            classify_video(&generated),
            info(FrameClass::Frame, Codec::Legacy(4), 0)
        );
        assert_eq!(
            classify_video(&command),
            info(FrameClass::Other, Codec::Legacy(4), 0)
        );
    }

    #[test]
    fn legacy_avc_generated_keyframe_is_frame() {
        let p = [
            0x47, // frame type 4 (generated key) | AVC
            0x01, // NALUs
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Frame, Codec::Avc, 0));
    }

    #[test]
    fn empty_payloads_are_other_unknown() {
        assert_eq!(classify_video(&[]), UNKNOWN);
        assert_eq!(classify_audio(&[]), UNKNOWN);
        assert_eq!(video_tracks(&[]).count(), 0);
        assert_eq!(audio_tracks(&[]).count(), 0);
    }

    // ---- enhanced video ----

    #[test]
    fn enhanced_hvc1_sequence_start() {
        let p = [
            0x90, // ExHeader | frame type 1 | packet type 0 (SequenceStart)
            b'h', b'v', b'c', b'1', // FourCC
            0x01, // HEVCDecoderConfigurationRecord...
        ];
        assert_eq!(
            classify_video(&p),
            info(FrameClass::SequenceHeader, Codec::Hevc, 0)
        );
    }

    #[test]
    fn enhanced_hvc1_coded_frames_x_keyframe() {
        let p = [
            0x93, // ExHeader | frame type 1 (key) | packet type 3 (CodedFramesX)
            b'h', b'v', b'c', b'1', // FourCC
            0x00, 0x00, 0x00, 0x10, // first NALU length...
        ];
        assert_eq!(
            classify_video(&p),
            info(FrameClass::Keyframe, Codec::Hevc, 0)
        );
    }

    #[test]
    fn enhanced_av1_inter_coded_frames() {
        let p = [
            0xa1, // ExHeader | frame type 2 (inter) | packet type 1 (CodedFrames)
            b'a', b'v', b'0', b'1', // FourCC
            0x12, 0x00, // OBU...
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Frame, Codec::Av1, 0));
    }

    #[test]
    fn enhanced_every_fourcc() {
        for (fourcc, codec) in [
            (*b"avc1", Codec::Avc),
            (*b"hvc1", Codec::Hevc),
            (*b"av01", Codec::Av1),
            (*b"vp08", Codec::Vp8),
            (*b"vp09", Codec::Vp9),
            (*b"vvc1", Codec::Vvc),
            (*b"xyz9", Codec::FourCc(*b"xyz9")),
        ] {
            let p = [
                0x91, // ExHeader | key | CodedFrames
                fourcc[0], fourcc[1], fourcc[2], fourcc[3], // FourCC
            ];
            assert_eq!(classify_video(&p), info(FrameClass::Keyframe, codec, 0));
        }
    }

    #[test]
    fn enhanced_sequence_end_metadata_and_mpeg2ts_start() {
        let end = [
            0x92, // ExHeader | key | packet type 2 (SequenceEnd)
            b'v', b'p', b'0', b'9', // FourCC
        ];
        let metadata = [
            0x94, // ExHeader | key (ignored) | packet type 4 (Metadata)
            b'h', b'v', b'c', b'1', // FourCC
            0x02, // AMF0 string "colorInfo"...
        ];
        let ts_start = [
            0x95, // ExHeader | key | packet type 5 (MPEG2TSSequenceStart)
            b'a', b'v', b'0', b'1', // FourCC
        ];
        assert_eq!(
            classify_video(&end),
            info(FrameClass::SequenceEnd, Codec::Vp9, 0)
        );
        assert_eq!(
            classify_video(&metadata),
            info(FrameClass::Metadata, Codec::Hevc, 0)
        );
        assert_eq!(
            classify_video(&ts_start),
            info(FrameClass::SequenceHeader, Codec::Av1, 0)
        );
    }

    #[test]
    fn enhanced_command_frame_has_no_fourcc() {
        let p = [
            0xd1, // ExHeader | frame type 5 (command) | packet type 1
            0x00, // VideoCommand 0: StartSeek (no FourCC follows)
        ];
        assert_eq!(classify_video(&p), UNKNOWN);
        let track = video_tracks(&p).next().unwrap();
        assert_eq!(track.data, &[0x00]);
    }

    #[test]
    fn enhanced_command_frame_type_is_ignored_for_metadata() {
        let p = [
            0xd4, // ExHeader | frame type 5 (ignored) | packet type 4 (Metadata)
            b'a', b'v', b'0', b'1', // FourCC
        ];
        assert_eq!(
            classify_video(&p),
            info(FrameClass::Metadata, Codec::Av1, 0)
        );
    }

    #[test]
    fn enhanced_generated_keyframe_is_frame() {
        let p = [
            0xc1, // ExHeader | frame type 4 (generated key) | CodedFrames
            b'a', b'v', b'c', b'1', // FourCC
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Frame, Codec::Avc, 0));
    }

    #[test]
    fn enhanced_reserved_packet_type_is_other() {
        let p = [
            0x98, // ExHeader | key | packet type 8 (reserved)
            b'h', b'v', b'c', b'1', // FourCC
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Other, Codec::Hevc, 0));
    }

    #[test]
    fn truncated_ex_header_is_other_not_panic() {
        let short_fourcc = [
            0x91, // ExHeader | key | CodedFrames
            b'h', b'v', b'c', // FourCC cut short
        ];
        let header_only = [
            0x91, // ExHeader | key | CodedFrames, nothing else
        ];
        let short_audio = [
            0x91, // ExHeader audio | CodedFrames
            b'O', b'p', // FourCC cut short
        ];
        assert_eq!(classify_video(&short_fourcc), UNKNOWN);
        assert_eq!(classify_video(&header_only), UNKNOWN);
        assert_eq!(classify_audio(&short_audio), UNKNOWN);
    }

    // ---- ModEx ----

    #[test]
    fn modex_then_coded_frames() {
        let p = [
            0x97, // ExHeader | key | packet type 7 (ModEx)
            0x02, // ModEx data size - 1: 3 bytes
            0x00, 0x01, 0xf4, // TimestampOffsetNano = 500 ns
            0x01, // ModEx type 0 (TimestampOffsetNano) | packet type 1 (CodedFrames)
            b'a', b'v', b'c', b'1', // FourCC
            0x00, 0x00, 0x00, // composition time
        ];
        assert_eq!(
            classify_video(&p),
            info(FrameClass::Keyframe, Codec::Avc, 0)
        );
    }

    #[test]
    fn modex_chain_with_16_bit_size() {
        let mut p = vec![
            0x97, // ExHeader | key | ModEx
            0xff, // size byte 0xff: a UI16 size follows
            0x01, 0x00, // UI16 256: size = 256 + 1 = 257 bytes
        ];
        p.extend_from_slice(&[0xaa; 257]); // ModEx data
        p.extend_from_slice(&[
            0x07, // ModEx type 0 | packet type 7 (ModEx again)
            0x00, // size - 1: 1 byte
            0x55, // ModEx data
            0x00, // ModEx type 0 | packet type 0 (SequenceStart)
            b'v', b'p', b'0', b'9', // FourCC
        ]);
        assert_eq!(
            classify_video(&p),
            info(FrameClass::SequenceHeader, Codec::Vp9, 0)
        );
    }

    #[test]
    fn modex_truncated_is_other() {
        let p = [
            0x97, // ExHeader | key | ModEx
            0x05, // size - 1: 6 bytes, but only 2 follow
            0x00, 0x00,
        ];
        assert_eq!(classify_video(&p), UNKNOWN);
    }

    #[test]
    fn modex_before_command_frame() {
        let p = [
            0xd7, // ExHeader | command | ModEx
            0x02, // size - 1: 3 bytes
            0x00, 0x00, 0x01, // TimestampOffsetNano
            0x01, // ModEx type 0 | packet type 1
            0x01, // VideoCommand 1: EndSeek
        ];
        assert_eq!(classify_video(&p), UNKNOWN);
    }

    #[test]
    fn audio_modex_then_coded_frames() {
        let p = [
            0x97, // sound format 9 (ExHeader) | packet type 7 (ModEx)
            0x02, // size - 1: 3 bytes
            0x00, 0x00, 0x10, // TimestampOffsetNano
            0x01, // ModEx type 0 | packet type 1 (CodedFrames)
            b'O', b'p', b'u', b's', // FourCC
        ];
        assert_eq!(classify_audio(&p), info(FrameClass::Frame, Codec::Opus, 0));
    }

    // ---- multitrack ----

    #[test]
    fn multitrack_one_track_av1_sequence_start() {
        let p = [
            0x96, // ExHeader | key | packet type 6 (Multitrack)
            0x00, // AvMultitrackType 0 (OneTrack) | packet type 0 (SequenceStart)
            b'a', b'v', b'0', b'1', // FourCC
            0x02, // track id 2 (no size field for OneTrack)
            0x81, // AV1CodecConfigurationRecord...
        ];
        assert_eq!(
            classify_video(&p),
            info(FrameClass::SequenceHeader, Codec::Av1, 2)
        );
        let tracks = video_tracks(&p);
        assert!(tracks.is_multitrack());
        let all: Vec<_> = tracks.collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].data, &[0x81]);
    }

    #[test]
    fn multitrack_many_tracks_walks_every_track() {
        let p = [
            0x96, // ExHeader | key | Multitrack
            0x13, // AvMultitrackType 1 (ManyTracks) | packet type 3 (CodedFramesX)
            b'h', b'v', b'c', b'1', // shared FourCC
            0x00, // track 0
            0x00, 0x00, 0x02, // size 2
            0xaa, 0xbb, // track 0 data
            0x01, // track 1
            0x00, 0x00, 0x01, // size 1
            0xcc, // track 1 data
        ];
        assert_eq!(
            classify_video(&p),
            info(FrameClass::Keyframe, Codec::Hevc, 0)
        );
        let all: Vec<_> = video_tracks(&p).collect();
        assert_eq!(
            all,
            vec![
                Track {
                    info: info(FrameClass::Keyframe, Codec::Hevc, 0),
                    data: &[0xaa, 0xbb],
                },
                Track {
                    info: info(FrameClass::Keyframe, Codec::Hevc, 1),
                    data: &[0xcc],
                },
            ]
        );
    }

    #[test]
    fn multitrack_many_codecs_reads_fourcc_per_track() {
        let p = [
            0xa6, // ExHeader | inter | Multitrack
            0x21, // AvMultitrackType 2 (ManyTracksManyCodecs) | CodedFrames
            b'a', b'v', b'c', b'1', // track FourCC
            0x03, // track 3
            0x00, 0x00, 0x01, // size 1
            0x00, // data
            b'a', b'v', b'0', b'1', // track FourCC
            0x04, // track 4
            0x00, 0x00, 0x00, // size 0
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Frame, Codec::Avc, 3));
        let codecs: Vec<_> = video_tracks(&p)
            .map(|t| (t.info.codec, t.info.track))
            .collect();
        assert_eq!(codecs, vec![(Codec::Avc, 3), (Codec::Av1, 4)]);
    }

    #[test]
    fn multitrack_truncated_track_header_ends_with_other() {
        let p = [
            0x96, // ExHeader | key | Multitrack
            0x10, // ManyTracks | SequenceStart
            b'v', b'p', b'0', b'9', // shared FourCC
            0x00, // track 0
            0x00, 0x00, 0x01, // size 1
            0x01, // data
            0x01, // track 1, then the size is missing
        ];
        let all: Vec<_> = video_tracks(&p).collect();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].info, info(FrameClass::Other, Codec::Vp9, 1));
    }

    #[test]
    fn multitrack_without_tracks_keeps_the_codec() {
        let p = [
            0x96, // ExHeader | key | Multitrack
            0x01, // OneTrack | CodedFrames
            b'h', b'v', b'c', b'1', // FourCC, then no track id
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Other, Codec::Hevc, 0));
    }

    #[test]
    fn multitrack_reserved_type_is_other() {
        let p = [
            0x96, // ExHeader | key | Multitrack
            0x31, // AvMultitrackType 3 (reserved) | CodedFrames
            b'h', b'v', b'c', b'1', // ?
        ];
        assert_eq!(classify_video(&p), UNKNOWN);
    }

    #[test]
    fn multitrack_nested_multitrack_is_other() {
        let p = [
            0x96, // ExHeader | key | Multitrack
            0x06, // OneTrack | packet type 6 (Multitrack: forbidden here)
            b'h', b'v', b'c', b'1', // FourCC
            0x00, // track 0
        ];
        assert_eq!(classify_video(&p), info(FrameClass::Other, Codec::Hevc, 0));
    }

    #[test]
    fn multitrack_audio_many_tracks() {
        let p = [
            0x95, // sound format 9 | packet type 5 (Multitrack)
            0x10, // ManyTracks | SequenceStart
            b'm', b'p', b'4', b'a', // shared FourCC
            0x01, // track 1
            0x00, 0x00, 0x02, // size 2
            0x12, 0x10, // AudioSpecificConfig
            0x02, // track 2
            0x00, 0x00, 0x02, // size 2
            0x11, 0x90, // AudioSpecificConfig
        ];
        assert_eq!(
            classify_audio(&p),
            info(FrameClass::SequenceHeader, Codec::Aac, 1)
        );
        let tracks: Vec<_> = audio_tracks(&p).map(|t| t.info.track).collect();
        assert_eq!(tracks, vec![1, 2]);
    }

    #[test]
    fn modex_then_multitrack() {
        let p = [
            0x97, // ExHeader | key | ModEx
            0x00, // size - 1: 1 byte
            0x00, // ModEx data
            0x06, // ModEx type 0 | packet type 6 (Multitrack)
            0x03, // OneTrack | CodedFramesX
            b'v', b'v', b'c', b'1', // FourCC
            0x07, // track 7
        ];
        assert_eq!(
            classify_video(&p),
            info(FrameClass::Keyframe, Codec::Vvc, 7)
        );
    }

    #[test]
    fn multitrack_command_frame_is_command() {
        let p = [
            0xd6, // ExHeader | command | Multitrack: the command check comes first
            0x00, // VideoCommand 0
        ];
        assert_eq!(classify_video(&p), UNKNOWN);
        assert!(!video_tracks(&p).is_multitrack());
    }

    // ---- legacy audio ----

    #[test]
    fn legacy_aac_sequence_header_and_raw() {
        let header = [
            0xaf, // sound format 10 (AAC) | 44 kHz, 16-bit, stereo
            0x00, // AACPacketType 0: AudioSpecificConfig
            0x12, 0x10, // AudioSpecificConfig
        ];
        let raw = [
            0xaf, // AAC
            0x01, // AACPacketType 1: raw
            0x21, // raw data
        ];
        let truncated = [
            0xaf, // AAC, packet type missing
        ];
        assert_eq!(
            classify_audio(&header),
            info(FrameClass::SequenceHeader, Codec::Aac, 0)
        );
        assert_eq!(classify_audio(&raw), info(FrameClass::Frame, Codec::Aac, 0));
        assert_eq!(
            classify_audio(&truncated),
            info(FrameClass::Other, Codec::Aac, 0)
        );
    }

    #[test]
    fn legacy_mp3_and_others() {
        let mp3 = [
            0x2f, // sound format 2 (MP3) | 44 kHz, 16-bit, stereo
            0xff, 0xfb, // MPEG frame sync
        ];
        let mp3_8k = [
            0xe2, // sound format 14 (MP3 8 kHz)
        ];
        let speex = [
            0xb2, // sound format 11 (Speex)
        ];
        let alaw = [
            0x72, // sound format 7 (G.711 A-law)
        ];
        assert_eq!(classify_audio(&mp3), info(FrameClass::Frame, Codec::Mp3, 0));
        assert_eq!(
            classify_audio(&mp3_8k),
            info(FrameClass::Frame, Codec::Mp3, 0)
        );
        assert_eq!(
            classify_audio(&speex),
            info(FrameClass::Frame, Codec::Legacy(11), 0)
        );
        assert_eq!(
            classify_audio(&alaw),
            info(FrameClass::Frame, Codec::Legacy(7), 0)
        );
    }

    // ---- enhanced audio ----

    #[test]
    fn enhanced_opus_sequence_start_and_frames() {
        let start = [
            0x90, // sound format 9 (ExHeader) | packet type 0 (SequenceStart)
            b'O', b'p', b'u', b's', // FourCC
            b'O', b'p', b'u', b's', b'H', b'e', b'a', b'd', // ID header...
        ];
        let frame = [
            0x91, // ExHeader | packet type 1 (CodedFrames)
            b'O', b'p', b'u', b's', // FourCC
            0xfc, // Opus TOC
        ];
        assert_eq!(
            classify_audio(&start),
            info(FrameClass::SequenceHeader, Codec::Opus, 0)
        );
        assert_eq!(
            classify_audio(&frame),
            info(FrameClass::Frame, Codec::Opus, 0)
        );
    }

    #[test]
    fn enhanced_audio_every_fourcc_and_packet_type() {
        for (fourcc, codec) in [
            (*b"Opus", Codec::Opus),
            (*b"fLaC", Codec::Flac),
            (*b"ac-3", Codec::Ac3),
            (*b"ec-3", Codec::Eac3),
            (*b".mp3", Codec::Mp3),
            (*b"mp4a", Codec::Aac),
            (*b"zzzz", Codec::FourCc(*b"zzzz")),
        ] {
            for (packet_type, class) in [
                (0, FrameClass::SequenceHeader),
                (1, FrameClass::Frame),
                (2, FrameClass::SequenceEnd),
                (3, FrameClass::Other),    // reserved
                (4, FrameClass::Metadata), // MultichannelConfig
                (6, FrameClass::Other),    // reserved
                (15, FrameClass::Other),   // reserved
            ] {
                let p = [
                    0x90 | packet_type, // ExHeader | packet type
                    fourcc[0],
                    fourcc[1],
                    fourcc[2],
                    fourcc[3], // FourCC
                ];
                assert_eq!(classify_audio(&p), info(class, codec, 0));
            }
        }
    }

    #[test]
    fn enhanced_audio_multichannel_config_is_metadata() {
        let p = [
            0x94, // ExHeader | packet type 4 (MultichannelConfig)
            b'O', b'p', b'u', b's', // FourCC
            0x01, // AudioChannelOrder 1: Native
            0x06, // channel count 6
            0x00, 0x00, 0x00, 0x3f, // audioChannelFlags: 5.1
        ];
        assert_eq!(
            classify_audio(&p),
            info(FrameClass::Metadata, Codec::Opus, 0)
        );
    }

    // ---- names ----

    #[test]
    fn codec_names_for_logs() {
        assert_eq!(Codec::Avc.name(), "H.264");
        assert_eq!(Codec::Hevc.name(), "HEVC");
        assert_eq!(Codec::Av1.name(), "AV1");
        assert_eq!(Codec::Aac.name(), "AAC");
        assert_eq!(Codec::Opus.name(), "Opus");
        assert_eq!(Codec::FourCc(*b"abcd").name(), "abcd");
        assert_eq!(Codec::FourCc([b'a', 0, b'c', 0xff]).name(), "a\\x00c\\xff");
        assert_eq!(Codec::Legacy(4).name(), "FLV codec 4");
        assert_eq!(Codec::Unknown.to_string(), "unknown");
        assert!(matches!(Codec::Eac3.name(), Cow::Borrowed("E-AC-3")));
    }

    // ---- FourCC sets (player-side filter) ----

    #[test]
    fn fourcc_set_named_unknown_and_wildcard() {
        let mut set = FourCcSet::default();
        assert!(set.is_empty());
        set.insert("hvc1");
        set.insert("Opus");
        set.insert("q9z!");
        set.insert("too long");
        set.insert("");
        assert!(!set.is_empty() && !set.is_wildcard());
        assert!(set.contains(Codec::Hevc) && set.contains(Codec::Opus));
        assert!(set.contains(Codec::FourCc(*b"q9z!")));
        assert!(!set.contains(Codec::Av1) && !set.contains(Codec::FourCc(*b"q9z?")));
        // Nothing to refuse without a FourCC.
        assert!(set.contains(Codec::Unknown) && set.contains(Codec::Legacy(2)));
        set.insert("*");
        assert!(set.is_wildcard() && set.contains(Codec::Av1));
    }

    #[test]
    fn every_codec_round_trips_through_its_fourcc() {
        for c in [
            Codec::Avc,
            Codec::Hevc,
            Codec::Av1,
            Codec::Vp8,
            Codec::Vp9,
            Codec::Vvc,
            Codec::Aac,
            Codec::Mp3,
            Codec::Opus,
            Codec::Flac,
            Codec::Ac3,
            Codec::Eac3,
            Codec::FourCc(*b"zzzz"),
        ] {
            assert_eq!(Codec::from_fourcc(c.fourcc().unwrap()), c);
        }
        assert_eq!(Codec::Legacy(7).fourcc(), None);
        assert_eq!(Codec::Unknown.fourcc(), None);
    }

    #[test]
    fn enhanced_header_detection() {
        assert!(is_enhanced(true, &[0x90]));
        assert!(!is_enhanced(true, &[0x17]));
        assert!(is_enhanced(false, &[0x91]));
        assert!(!is_enhanced(false, &[0xaf]));
        assert!(!is_enhanced(true, &[]) && !is_enhanced(false, &[]));
    }

    // ---- avc_dimensions ----

    /// A legacy AVC sequence header message around one SPS NAL unit (with
    /// its emulation-prevention bytes, as x264 wrote it).
    fn legacy_avc_header(sps_hex: &str) -> Vec<u8> {
        let sps: Vec<u8> = (0..sps_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&sps_hex[i..i + 2], 16).unwrap())
            .collect();
        let mut p = vec![
            0x17, // key | AVC
            0x00, // AVCPacketType 0: sequence header
            0x00, 0x00, 0x00,   // composition time
            0x01,   // configurationVersion
            sps[1], // AVCProfileIndication
            sps[2], // profile_compatibility
            sps[3], // AVCLevelIndication
            0xff,   // reserved | lengthSizeMinusOne 3
            0xe1,   // reserved | numOfSequenceParameterSets 1
        ];
        p.extend_from_slice(&(sps.len() as u16).to_be_bytes()); // SPS length
        p.extend_from_slice(&sps); // SPS NAL unit
        p.extend_from_slice(&[
            0x01, // numOfPictureParameterSets
            0x00, 0x04, // PPS length
            0x68, 0xeb, 0xe3, 0xcb, // PPS NAL unit
        ]);
        p
    }

    #[test]
    fn avc_dimensions_from_real_x264_sps() {
        // SPS NAL units from `ffmpeg -f lavfi -i testsrc=size=WxH -c:v libx264`.
        for (sps, dims) in [
            // High, 1920x1088 coded, cropped to 1080.
            (
                "67640028acd940780227e5c044000003000400000300c83c60c658",
                (1920, 1080),
            ),
            // High, 1280x720.
            (
                "6764001facd9405005bb011000000300100000030320f1831960",
                (1280, 720),
            ),
            // High, interlaced (frame_mbs_only_flag 0), 640x480.
            (
                "6764001eacd940a07b6022000003000200000300643e28532c",
                (640, 480),
            ),
            // Constrained baseline, odd size: cropping right and bottom.
            (
                "6742c01ed900a42fe224c044000003000400000300c83c58b920",
                (642, 362),
            ),
            // High 4:4:4 Predictive (profile 244, chroma_format_idc 3).
            (
                "67f4000d919b28283f6022000003000200000300641e28532c",
                (320, 240),
            ),
        ] {
            assert_eq!(avc_dimensions(&legacy_avc_header(sps)), Some(dims), "{sps}");
        }
    }

    #[test]
    fn avc_dimensions_from_enhanced_sequence_start() {
        let legacy = legacy_avc_header("6764001facd9405005bb011000000300100000030320f1831960");
        let mut p = vec![
            0x90, // ExHeader | key | SequenceStart
            b'a', b'v', b'c', b'1', // FourCC
        ];
        p.extend_from_slice(&legacy[5..]); // AVCDecoderConfigurationRecord
        assert_eq!(avc_dimensions(&p), Some((1280, 720)));
    }

    #[test]
    fn avc_dimensions_rejects_cropping_to_nothing() {
        // Found by fuzz/media: a baseline SPS, 16x16, cropped 8 left and 8 right.
        let crash = [
            0x17, 0x00, 0x00, 0x00, 0x00, 0x01, 0x42, 0xff, 0xff, 0xff, 0xe1, 0x00, 0x0f, 0x67,
            0x42, 0x25, 0xe1, 0x00, 0x91, 0x68, 0x76, 0x63, 0x31, 0x01, 0x8c, 0xcd, 0x01, 0x22,
            0xd0, 0x0b,
        ];
        assert_eq!(avc_dimensions(&crash), None);
    }

    #[test]
    fn avc_dimensions_rejects_other_payloads() {
        let full = legacy_avc_header("6764001facd9405005bb011000000300100000030320f1831960");
        let mut not_header = full.clone();
        not_header[1] = 0x01; // NALUs, not a sequence header
        assert_eq!(avc_dimensions(&not_header), None);
        for cut in 0..full.len() - 7 {
            // Truncated anywhere before the PPS: no answer, no panic.
            assert_eq!(avc_dimensions(&full[..cut]), None, "cut at {cut}");
        }
        assert_eq!(avc_dimensions(&[]), None);
    }

    // ---- robustness ----

    proptest! {
        #[test]
        fn random_bytes_never_panic(p in proptest::collection::vec(any::<u8>(), 0..64)) {
            let v = classify_video(&p);
            let a = classify_audio(&p);
            // classify_* agrees with the first track when there is one.
            if let Some(t) = video_tracks(&p).next() {
                prop_assert_eq!(t.info, v);
            }
            if let Some(t) = audio_tracks(&p).next() {
                prop_assert_eq!(t.info, a);
            }
            // The walk terminates and each track's data lies inside the payload.
            for t in video_tracks(&p).chain(audio_tracks(&p)) {
                prop_assert!(t.data.len() <= p.len());
            }
            prop_assert!(video_tracks(&p).count() <= p.len().max(1));
            let _ = avc_dimensions(&p);
        }

        #[test]
        fn avc_dimensions_never_panic_on_random_sps(
            sps in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut p = vec![0x17, 0x00, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff, 0xe1];
            p.extend_from_slice(&(sps.len() as u16 + 1).to_be_bytes());
            p.push(0x67);
            p.extend_from_slice(&sps);
            let _ = avc_dimensions(&p);
        }

        #[test]
        fn enhanced_prefixes_never_panic(
            b0 in 0x80u8..=0xff,
            b1 in any::<u8>(),
            rest in proptest::collection::vec(any::<u8>(), 0..48),
        ) {
            let mut p = vec![b0, b1];
            p.extend_from_slice(&rest);
            for cut in 0..=p.len() {
                let _ = classify_video(&p[..cut]);
                let _ = classify_audio(&p[..cut]);
                prop_assert!(video_tracks(&p[..cut]).count() <= cut.max(1));
                prop_assert!(audio_tracks(&p[..cut]).count() <= cut.max(1));
            }
        }
    }
}
