//! Codec descriptions: from the decoder configuration an FLV sequence
//! header carries (or, for codecs that have none in FLV, the first frame)
//! to what fragmented MP4 and HLS need: the sample entry of the `stsd`
//! box, the timescale, the RFC 6381 `CODECS` string, and the picture size
//! or sample rate and channels.
//!
//! The configuration records of AVC, HEVC and AV1 *are* the bodies of the
//! `avcC`, `hvcC` and `av1C` boxes (ISO/IEC 14496-15 5.3.3.1 and 8.3.3.1;
//! AV1-ISOBMFF 2.3), and AAC's AudioSpecificConfig is the
//! DecoderSpecificInfo of `esds` (ISO/IEC 14496-14 and 14496-1): they are
//! copied into the box unchanged. Opus's ID header (RFC 7845 5.1,
//! little-endian) is rewritten as a `dOps` box (Opus in ISOBMFF 4.3.2,
//! big-endian). FLAC's STREAMINFO goes into `dfLa`, AC-3's first syncframe
//! header into `dac3` (ETSI TS 102 366 F.4), MP3 into `mp4a` with object
//! type 0x6B (or 0x69 for MPEG-2 rates).
//!
//! Only headers are read, through bounded readers that return `None` past
//! the data: a malformed or truncated record is a [`SkipReason`], never a
//! panic.

use super::bits::{leb128, Bits, Bytes as Cursor};
use super::mp4::{
    put_audio_sample_entry, put_box, put_full_box, put_u16, put_u32, put_visual_sample_entry,
};
use crate::media::Codec;
use std::fmt;

/// Why a track is not packaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// fMP4 as HLS players read it has no place for this codec (VP8, VVC,
    /// Speex, G.711, Nellymoser, VP6, ...).
    UnsupportedCodec(Codec),
    /// The decoder configuration is missing or malformed: `what` says
    /// which field.
    BadConfig { codec: Codec, what: &'static str },
    /// The stream already has the most tracks a packager takes
    /// ([`MAX_TRACKS`]).
    TooManyTracks,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::UnsupportedCodec(c) => write!(f, "{c} cannot be carried in HLS (fMP4)"),
            SkipReason::BadConfig { codec, what } => {
                write!(f, "{codec} decoder configuration unusable: {what}")
            }
            SkipReason::TooManyTracks => {
                write!(
                    f,
                    "more than {MAX_TRACKS} audio and video tracks in one stream"
                )
            }
        }
    }
}

/// Which sample entry a track uses, with what it needs beyond the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Avc1,
    Hvc1,
    Av01,
    Vp09,
    /// `mp4a` with this MPEG-4 objectTypeIndication and, for AAC, the
    /// AudioSpecificConfig as DecoderSpecificInfo.
    Mp4a {
        oti: u8,
    },
    Opus,
    Flac {
        bits: u16,
    },
    Ac3,
}

/// A track's codec as fragmented MP4 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackFormat {
    pub codec: Codec,
    /// The RFC 6381 codecs parameter (`avc1.64001f`, `mp4a.40.2`, ...).
    pub codecs: String,
    /// Media timescale: 90 kHz for video, the sample rate for audio.
    pub timescale: u32,
    /// Picture size in pixels (video; 0 while unknown).
    pub width: u32,
    pub height: u32,
    /// Audio sample rate (Hz) and channel count (0 for video).
    pub sample_rate: u32,
    pub channels: u16,
    entry: Entry,
    /// The configuration box body (avcC, hvcC, av1C, vpcC, dOps, dfLa,
    /// dac3) or, for `mp4a`, the DecoderSpecificInfo.
    record: Vec<u8>,
}

/// The video timescale: 90 kHz, so millisecond timestamps convert exactly
/// and common frame rates are whole ticks.
pub const VIDEO_TIMESCALE: u32 = 90_000;

/// Most audio and video tracks one stream may have packaged: an ABR
/// ladder of a few video tracks and a few audio languages fits; a
/// publisher announcing hundreds of multitrack ids does not make the
/// packager keep hundreds of windows.
pub const MAX_TRACKS: usize = 16;

/// True for the codecs the packager can describe (from a sequence header
/// or, for MP3 and AC-3, from the first frame).
pub fn is_supported(codec: Codec) -> bool {
    matches!(
        codec,
        Codec::Avc
            | Codec::Hevc
            | Codec::Av1
            | Codec::Vp9
            | Codec::Aac
            | Codec::Opus
            | Codec::Flac
            | Codec::Mp3
            | Codec::Ac3
    )
}

/// Longest configuration record kept (bytes). Real ones are under 1 KiB
/// (an HEVC record with VPS, SPS and PPS, a few hundred bytes); this bounds
/// what a hostile header can make the packager copy per track.
pub const MAX_RECORD: usize = 64 * 1024;

impl TrackFormat {
    /// True for video tracks.
    pub fn is_video(&self) -> bool {
        matches!(
            self.entry,
            Entry::Avc1 | Entry::Hvc1 | Entry::Av01 | Entry::Vp09
        )
    }

    /// An audio frame's usual duration in ms, rounded up, where the codec
    /// fixes it (AAC 1024 samples, MP3 1152, AC-3 1536, FLAC its block
    /// size, Opus 20 ms as encoders send by default); `None` for video.
    pub fn frame_ms(&self) -> Option<u32> {
        let samples = match self.entry {
            Entry::Mp4a { oti: 0x40 } => 1024,
            Entry::Mp4a { .. } => 1152,
            Entry::Ac3 => 1536,
            Entry::Flac { .. } => u32::from(u16::from_be_bytes([self.record[6], self.record[7]])),
            Entry::Opus => return Some(20),
            _ => return None,
        };
        let rate = self.sample_rate.max(1);
        Some((samples * 1000).div_ceil(rate))
    }

    /// Describes a track from its sequence header body (the bytes after
    /// the FLV tag header: for legacy AVC/HEVC, after the composition time).
    pub fn from_sequence_header(codec: Codec, record: &[u8]) -> Result<TrackFormat, SkipReason> {
        if record.len() > MAX_RECORD {
            return Err(bad(codec, "record longer than 64 KiB"));
        }
        match codec {
            Codec::Avc => avc(record),
            Codec::Hevc => hevc(record),
            Codec::Av1 => av1(record),
            Codec::Vp9 => vp9(record),
            Codec::Aac => aac(record),
            Codec::Opus => opus(record),
            Codec::Flac => flac(record),
            // MP3 and AC-3 have no sequence header in FLV: described from
            // their first frame.
            Codec::Mp3 | Codec::Ac3 => Err(bad(codec, "no sequence header expected")),
            other => Err(SkipReason::UnsupportedCodec(other)),
        }
    }

    /// True when the codec is described from its first frame instead of a
    /// sequence header.
    pub fn needs_no_header(codec: Codec) -> bool {
        matches!(codec, Codec::Mp3 | Codec::Ac3)
    }

    /// Describes an MP3 or AC-3 track from the body of its first frame.
    pub fn from_first_frame(codec: Codec, frame: &[u8]) -> Result<TrackFormat, SkipReason> {
        match codec {
            Codec::Mp3 => mp3(frame),
            Codec::Ac3 => ac3(frame),
            other => Err(bad(other, "needs a sequence header")),
        }
    }

    /// Fills a picture size still unknown (AV1 without a sequence header
    /// in its av1C) from a keyframe's OBUs, or from onMetaData.
    pub(crate) fn learn_size(&mut self, sample: &[u8], hint: Option<(u32, u32)>) {
        if self.width != 0 || !self.is_video() {
            return;
        }
        let found = match self.entry {
            Entry::Av01 => av1_sequence_size(sample),
            Entry::Vp09 => vp9_keyframe_size(sample),
            _ => None,
        };
        if let Some((w, h)) = found.or(hint) {
            self.width = w;
            self.height = h;
        }
    }

    /// The whole sample entry box for `stsd`.
    pub(crate) fn sample_entry(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.record.len() + 128);
        let record = &self.record[..];
        match self.entry {
            Entry::Avc1 => put_visual_sample_entry(&mut b, b"avc1", self.width, self.height, |b| {
                put_box(b, b"avcC", |b| b.extend_from_slice(record))
            }),
            Entry::Hvc1 => put_visual_sample_entry(&mut b, b"hvc1", self.width, self.height, |b| {
                put_box(b, b"hvcC", |b| b.extend_from_slice(record))
            }),
            Entry::Av01 => put_visual_sample_entry(&mut b, b"av01", self.width, self.height, |b| {
                put_box(b, b"av1C", |b| b.extend_from_slice(record))
            }),
            // vpcC is a full box, version 1 (VP codec ISO binding 2.2).
            Entry::Vp09 => put_visual_sample_entry(&mut b, b"vp09", self.width, self.height, |b| {
                put_full_box(b, b"vpcC", 1, 0, |b| b.extend_from_slice(record))
            }),
            Entry::Mp4a { oti } => {
                put_audio_sample_entry(&mut b, b"mp4a", self.channels, self.sample_rate, |b| {
                    put_esds(b, oti, record)
                })
            }
            // Opus in ISOBMFF 4.3.1: samplerate 48000 whatever the input rate.
            Entry::Opus => put_audio_sample_entry(&mut b, b"Opus", self.channels, 48_000, |b| {
                put_box(b, b"dOps", |b| b.extend_from_slice(record))
            }),
            Entry::Flac { bits } => put_box(&mut b, b"fLaC", |b| {
                b.extend_from_slice(&[0; 6]); // reserved
                put_u16(b, 1); // data_reference_index
                b.extend_from_slice(&[0; 8]); // reserved
                put_u16(b, self.channels);
                put_u16(b, bits);
                put_u32(b, 0); // pre_defined, reserved
                let rate = if self.sample_rate > 0xffff {
                    0
                } else {
                    self.sample_rate
                };
                put_u32(b, rate << 16);
                put_full_box(b, b"dfLa", 0, 0, |b| b.extend_from_slice(record));
            }),
            Entry::Ac3 => {
                put_audio_sample_entry(&mut b, b"ac-3", self.channels, self.sample_rate, |b| {
                    put_box(b, b"dac3", |b| b.extend_from_slice(record))
                })
            }
        }
        b
    }
}

fn bad(codec: Codec, what: &'static str) -> SkipReason {
    SkipReason::BadConfig { codec, what }
}

fn video(
    codec: Codec,
    codecs: String,
    entry: Entry,
    size: Option<(u32, u32)>,
    record: &[u8],
) -> TrackFormat {
    let (width, height) = size.unwrap_or((0, 0));
    TrackFormat {
        codec,
        codecs,
        timescale: VIDEO_TIMESCALE,
        width,
        height,
        sample_rate: 0,
        channels: 0,
        entry,
        record: record.to_vec(),
    }
}

fn audio(
    codec: Codec,
    codecs: String,
    entry: Entry,
    rate: u32,
    channels: u16,
    record: Vec<u8>,
) -> TrackFormat {
    TrackFormat {
        codec,
        codecs,
        timescale: rate,
        width: 0,
        height: 0,
        sample_rate: rate,
        channels,
        entry,
        record,
    }
}

// ---- H.264 ----

/// AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1): version 1,
/// profile, compatibility, level, then the SPS list.
fn avc(record: &[u8]) -> Result<TrackFormat, SkipReason> {
    let mut c = Cursor(record);
    let head = c
        .take(6)
        .ok_or(bad(Codec::Avc, "record shorter than 6 bytes"))?;
    if head[0] != 1 {
        return Err(bad(Codec::Avc, "configurationVersion is not 1"));
    }
    if head[5] & 0x1f == 0 {
        return Err(bad(Codec::Avc, "no SPS"));
    }
    let sps = c
        .u16()
        .and_then(|n| c.take(usize::from(n)))
        .ok_or(bad(Codec::Avc, "SPS truncated"))?;
    let codecs = format!("avc1.{:02x}{:02x}{:02x}", head[1], head[2], head[3]);
    Ok(video(
        Codec::Avc,
        codecs,
        Entry::Avc1,
        avc_sps_size(sps),
        record,
    ))
}

/// Picture size from an H.264 SPS NAL unit (7.3.2.1.1, cropping applied).
pub(crate) fn avc_sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    let (&header, rbsp) = nal.split_first()?;
    if header & 0x1f != 7 {
        return None;
    }
    let mut r = Bits::rbsp(rbsp);
    let profile_idc = r.bits(8)?;
    r.skip(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag()?;
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.skip(1)?; // qpprime_y_zero_transform_bypass_flag
        if r.flag()? {
            // seq_scaling_matrix_present_flag
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag()? {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i64, 8i64);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256).rem_euclid(256);
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
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
            r.skip(1)?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            for _ in 0..r.ue()? {
                r.se()?; // offset_for_ref_frame[i]: ends with the data
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.skip(1)?; // gaps_in_frame_num_value_allowed_flag
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.skip(1)?; // mb_adaptive_frame_field_flag
    }
    r.skip(1)?; // direct_8x8_inference_flag
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.flag()? {
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
    let height = ((2 - frame_mbs_only) * height_units * 16).checked_sub(crop_y * (top + bottom))?;
    size(width, height)
}

fn size(width: u64, height: u64) -> Option<(u32, u32)> {
    if width == 0 || height == 0 {
        return None;
    }
    Some((u32::try_from(width).ok()?, u32::try_from(height).ok()?))
}

// ---- HEVC ----

/// HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 8.3.3.1): 22 bytes of
/// profile/tier/level and stream fields, then arrays of VPS/SPS/PPS NAL
/// units. CODECS per ISO/IEC 14496-15 E.3:
/// `hvc1.[A|B|C]<profile_idc>.<compatibility flags, bit-reversed, hex>.<L|H><level_idc>[.<constraint byte>]*`
/// with trailing zero constraint bytes left out.
fn hevc(record: &[u8]) -> Result<TrackFormat, SkipReason> {
    let mut c = Cursor(record);
    let head = c
        .take(23)
        .ok_or(bad(Codec::Hevc, "record shorter than 23 bytes"))?;
    if head[0] != 1 {
        return Err(bad(Codec::Hevc, "configurationVersion is not 1"));
    }
    let space = ["", "A", "B", "C"][usize::from(head[1] >> 6)];
    let tier = if head[1] & 0x20 != 0 { 'H' } else { 'L' };
    let profile = head[1] & 0x1f;
    let compat = u32::from_be_bytes([head[2], head[3], head[4], head[5]]).reverse_bits();
    let level = head[12];
    let mut codecs = format!("hvc1.{space}{profile}.{compat:X}.{tier}{level}");
    let constraints = &head[6..12];
    let used = constraints
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1);
    for b in &constraints[..used] {
        codecs.push_str(&format!(".{b:X}"));
    }
    // Arrays: find the first SPS (NAL unit type 33).
    let mut sps_size = None;
    let mut found_sps = false;
    for _ in 0..head[22] {
        let kind = c.u8().ok_or(bad(Codec::Hevc, "NAL arrays truncated"))? & 0x3f;
        let count = c.u16().ok_or(bad(Codec::Hevc, "NAL arrays truncated"))?;
        for _ in 0..count {
            let nal = c
                .u16()
                .and_then(|n| c.take(usize::from(n)))
                .ok_or(bad(Codec::Hevc, "NAL unit truncated"))?;
            if kind == 33 && !found_sps {
                found_sps = true;
                sps_size = hevc_sps_size(nal);
            }
        }
    }
    if !found_sps {
        return Err(bad(Codec::Hevc, "no SPS"));
    }
    Ok(video(Codec::Hevc, codecs, Entry::Hvc1, sps_size, record))
}

/// Picture size from an H.265 SPS NAL unit (7.3.2.2.1, conformance window
/// applied).
pub(crate) fn hevc_sps_size(nal: &[u8]) -> Option<(u32, u32)> {
    if nal.len() < 3 || (nal[0] >> 1) & 0x3f != 33 {
        return None;
    }
    let mut r = Bits::rbsp(&nal[2..]);
    r.skip(4)?; // sps_video_parameter_set_id
    let sub_layers = r.bits(3)?; // sps_max_sub_layers_minus1
    r.skip(1)?; // sps_temporal_id_nesting_flag
                // profile_tier_level(1, sps_max_sub_layers_minus1), 7.3.3.
    r.skip(96)?; // general profile (88 bits) and general_level_idc
    let mut present = [(false, false); 8];
    for p in present.iter_mut().take(sub_layers as usize) {
        *p = (r.flag()?, r.flag()?);
    }
    if sub_layers > 0 {
        r.skip(2 * (8 - sub_layers))?; // reserved_zero_2bits
    }
    for &(profile, level) in present.iter().take(sub_layers as usize) {
        if profile {
            r.skip(88)?;
        }
        if level {
            r.skip(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    let chroma_format_idc = r.ue()?;
    let mut separate = false;
    if chroma_format_idc == 3 {
        separate = r.flag()?;
    }
    let width = u64::from(r.ue()?);
    let height = u64::from(r.ue()?);
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.flag()? {
        left = u64::from(r.ue()?);
        right = u64::from(r.ue()?);
        top = u64::from(r.ue()?);
        bottom = u64::from(r.ue()?);
    }
    // Table 6-1: SubWidthC, SubHeightC.
    let (sub_w, sub_h) = match (separate, chroma_format_idc) {
        (false, 1) => (2, 2),
        (false, 2) => (2, 1),
        _ => (1, 1),
    };
    size(
        width.checked_sub(sub_w * (left + right))?,
        height.checked_sub(sub_h * (top + bottom))?,
    )
}

// ---- AV1 ----

/// AV1CodecConfigurationRecord (AV1-ISOBMFF 2.3.3): marker and version
/// (0x81), profile and level, tier and colour fields, then configOBUs.
/// CODECS per AV1-ISOBMFF Annex A: `av01.<profile>.<level, 2 digits><M|H>.<bit depth, 2 digits>`.
fn av1(record: &[u8]) -> Result<TrackFormat, SkipReason> {
    let head = record
        .get(..4)
        .ok_or(bad(Codec::Av1, "record shorter than 4 bytes"))?;
    if head[0] != 0x81 {
        return Err(bad(Codec::Av1, "marker/version is not 0x81"));
    }
    let profile = head[1] >> 5;
    let level = head[1] & 0x1f;
    let tier = if head[2] & 0x80 != 0 { 'H' } else { 'M' };
    let depth = match (head[2] & 0x40 != 0, head[2] & 0x20 != 0) {
        (true, true) => 12,
        (true, false) => 10,
        _ => 8,
    };
    let codecs = format!("av01.{profile}.{level:02}{tier}.{depth:02}");
    let size = av1_sequence_size(&record[4..]);
    Ok(video(Codec::Av1, codecs, Entry::Av01, size, record))
}

/// OBU type of a temporal delimiter (AV1 6.2.2).
const OBU_TEMPORAL_DELIMITER: u8 = 2;
const OBU_SEQUENCE_HEADER: u8 = 1;

/// Walks low-overhead-format OBUs (AV1 5.3), calling `f(type, payload)`;
/// stops at the first malformed header or when `f` returns `Some`.
fn walk_obus<T>(mut data: &[u8], mut f: impl FnMut(u8, &[u8]) -> Option<T>) -> Option<T> {
    while !data.is_empty() {
        let mut c = Cursor(data);
        let header = c.u8()?;
        let kind = (header >> 3) & 0x0f;
        if header & 0x04 != 0 {
            c.u8()?; // obu_extension_header
        }
        let payload = if header & 0x02 != 0 {
            let n = leb128(&mut c)?;
            c.take(n)?
        } else {
            c.take(c.rest().len())?
        };
        if let Some(t) = f(kind, payload) {
            return Some(t);
        }
        data = c.rest();
    }
    None
}

/// How many bytes of leading temporal delimiter OBUs `data` starts with:
/// AV1-ISOBMFF 2.4 asks for samples without them, and slicing past a
/// leading one keeps the sample a slice of the frame.
pub(crate) fn av1_leading_delimiters(data: &[u8]) -> usize {
    let mut at = 0;
    while let [header, size, ..] = data[at..] {
        // A temporal delimiter has no payload: header, then size 0.
        if (header >> 3) & 0x0f == OBU_TEMPORAL_DELIMITER && header & 0x06 == 0x02 && size == 0 {
            at += 2;
        } else {
            break;
        }
    }
    at
}

/// Picture size from the first sequence header OBU in `obus` (AV1 5.5.1:
/// max_frame_width_minus_1 / max_frame_height_minus_1).
pub(crate) fn av1_sequence_size(obus: &[u8]) -> Option<(u32, u32)> {
    walk_obus(obus, |kind, payload| {
        (kind == OBU_SEQUENCE_HEADER).then(|| av1_sequence_header_size(payload))?
    })
}

fn av1_sequence_header_size(p: &[u8]) -> Option<(u32, u32)> {
    let mut r = Bits::new(p);
    r.skip(3)?; // seq_profile
    r.skip(1)?; // still_picture
    if r.flag()? {
        // reduced_still_picture_header
        r.skip(5)?; // seq_level_idx[0]
    } else {
        let mut decoder_model_info = false;
        let mut buffer_delay_bits = 0;
        if r.flag()? {
            // timing_info_present_flag: timing_info()
            r.skip(64)?; // num_units_in_display_tick, time_scale
            if r.flag()? {
                r.uvlc()?; // num_ticks_per_picture_minus_1
            }
            decoder_model_info = r.flag()?;
            if decoder_model_info {
                buffer_delay_bits = r.bits(5)? + 1;
                r.skip(32)?; // num_units_in_decoding_tick
                r.skip(10)?; // buffer_removal_time_length, frame_presentation_time_length
            }
        }
        let initial_display_delay = r.flag()?;
        let points = r.bits(5)? + 1;
        for _ in 0..points {
            r.skip(12)?; // operating_point_idc
            if r.bits(5)? > 7 {
                r.skip(1)?; // seq_tier
            }
            if decoder_model_info && r.flag()? {
                r.skip(2 * buffer_delay_bits + 1)?; // operating_parameters_info
            }
            if initial_display_delay && r.flag()? {
                r.skip(4)?; // initial_display_delay_minus_1
            }
        }
    }
    let width_bits = r.bits(4)? + 1;
    let height_bits = r.bits(4)? + 1;
    let width = u64::from(r.bits(width_bits)?) + 1;
    let height = u64::from(r.bits(height_bits)?) + 1;
    size(width, height)
}

// ---- VP9 ----

/// VPCodecConfigurationRecord (VP codec ISO binding 2.2): the body of
/// `vpcC` after its version and flags. Some muxers put the full-box
/// version and flags in the FLV header too: recognised by the record's
/// declared length and dropped.
fn vp9(record: &[u8]) -> Result<TrackFormat, SkipReason> {
    let fits =
        |r: &[u8]| r.len() >= 8 && r.len() == 8 + usize::from(u16::from_be_bytes([r[6], r[7]]));
    let body = if fits(record) {
        record
    } else if record.len() >= 4 && record[0] == 1 && record[1..4] == [0, 0, 0] && fits(&record[4..])
    {
        &record[4..]
    } else {
        return Err(bad(
            Codec::Vp9,
            "record is not a VPCodecConfigurationRecord",
        ));
    };
    let (profile, level, depth) = (body[0], body[1], body[2] >> 4);
    let codecs = format!("vp09.{profile:02}.{level:02}.{depth:02}");
    Ok(video(Codec::Vp9, codecs, Entry::Vp09, None, body))
}

/// Picture size from a VP9 key frame's uncompressed header (VP9 6.2).
pub(crate) fn vp9_keyframe_size(frame: &[u8]) -> Option<(u32, u32)> {
    let mut r = Bits::new(frame);
    if r.bits(2)? != 2 {
        return None; // frame_marker
    }
    let profile = r.bit()? | r.bit()? << 1;
    if profile == 3 {
        r.skip(1)?; // reserved_zero
    }
    if r.flag()? || r.flag()? {
        return None; // show_existing_frame, or frame_type NON_KEY_FRAME
    }
    r.skip(2)?; // show_frame, error_resilient_mode
    if r.bits(24)? != 0x49_83_42 {
        return None; // frame_sync_code
    }
    if profile >= 2 {
        r.skip(1)?; // ten_or_twelve_bit
    }
    let colour_space = r.bits(3)?;
    if colour_space != 7 {
        r.skip(1)?; // color_range
        if profile == 1 || profile == 3 {
            r.skip(3)?; // subsampling_x, subsampling_y, reserved_zero
        }
    } else if profile == 1 || profile == 3 {
        r.skip(1)?; // reserved_zero
    }
    let width = u64::from(r.bits(16)?) + 1;
    let height = u64::from(r.bits(16)?) + 1;
    size(width, height)
}

// ---- AAC ----

/// AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1): audioObjectType,
/// samplingFrequencyIndex (or a 24-bit rate), channelConfiguration; for
/// explicit SBR/PS (object types 5 and 29), the extension rate is the
/// output rate. CODECS: `mp4a.40.<audioObjectType>`.
fn aac(asc: &[u8]) -> Result<TrackFormat, SkipReason> {
    let mut r = Bits::new(asc);
    let object_type = |r: &mut Bits<'_>| -> Option<u32> {
        match r.bits(5)? {
            31 => Some(32 + r.bits(6)?),
            t => Some(t),
        }
    };
    let rate = |r: &mut Bits<'_>| -> Option<u32> {
        const RATES: [u32; 13] = [
            96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
        ];
        match r.bits(4)? {
            15 => Some(r.bits(24)?),
            i => RATES.get(i as usize).copied(),
        }
    };
    let what = "AudioSpecificConfig truncated or invalid";
    let aot = object_type(&mut r).ok_or(bad(Codec::Aac, what))?;
    let mut sample_rate = rate(&mut r).ok_or(bad(Codec::Aac, what))?;
    let channel_config = r.bits(4).ok_or(bad(Codec::Aac, what))?;
    if aot == 5 || aot == 29 {
        sample_rate = rate(&mut r).ok_or(bad(Codec::Aac, what))?;
    }
    if aot == 0 || sample_rate == 0 {
        return Err(bad(Codec::Aac, "audio object type or sample rate 0"));
    }
    // 1.6.3.4, Table 1.19 (and 14496-3 Amd 4 for 11 to 14).
    let channels = match channel_config {
        0 => 2, // described by a program_config_element: assume stereo
        1..=6 => channel_config as u16,
        7 => 8,
        11 => 7,
        12 | 14 => 8,
        13 => 24,
        _ => return Err(bad(Codec::Aac, "reserved channelConfiguration")),
    };
    Ok(audio(
        Codec::Aac,
        format!("mp4a.40.{aot}"),
        Entry::Mp4a { oti: 0x40 },
        sample_rate,
        channels,
        asc.to_vec(),
    ))
}

/// `esds` (ISO/IEC 14496-14 3.1.2): an ES_Descriptor with a
/// DecoderConfigDescriptor (audio stream, `oti`, with `dsi` as
/// DecoderSpecificInfo when not empty) and an SLConfigDescriptor
/// (predefined 2), per ISO/IEC 14496-1 7.2.6.
fn put_esds(b: &mut Vec<u8>, oti: u8, dsi: &[u8]) {
    fn descriptor(b: &mut Vec<u8>, tag: u8, body: &[u8]) {
        b.push(tag);
        // sizeOfInstance in the 4-byte expandable form: any length fits.
        let n = body.len() as u32;
        b.extend_from_slice(&[
            0x80 | ((n >> 21) & 0x7f) as u8,
            0x80 | ((n >> 14) & 0x7f) as u8,
            0x80 | ((n >> 7) & 0x7f) as u8,
            (n & 0x7f) as u8,
        ]);
        b.extend_from_slice(body);
    }
    let mut config = vec![
        oti,  // objectTypeIndication
        0x15, // streamType 5 (audio) << 2 | upStream 0 | reserved 1
        0, 0, 0, // bufferSizeDB
        0, 0, 0, 0, // maxBitrate
        0, 0, 0, 0, // avgBitrate
    ];
    if !dsi.is_empty() {
        descriptor(&mut config, 0x05, dsi);
    }
    let mut es = vec![
        0, 0, // ES_ID
        0, // streamDependenceFlag, URL_Flag, OCRstreamFlag, streamPriority
    ];
    descriptor(&mut es, 0x04, &config);
    descriptor(&mut es, 0x06, &[0x02]);
    put_full_box(b, b"esds", 0, 0, |b| descriptor(b, 0x03, &es));
}

// ---- MP3 ----

/// An MPEG audio Layer III frame header (ISO/IEC 11172-3 2.4.1.3,
/// 13818-3): version, sample rate, channel mode. MPEG-1 rates take object
/// type 0x6B, MPEG-2/2.5 rates 0x69 (ISO/IEC 14496-1 Table 5).
fn mp3(frame: &[u8]) -> Result<TrackFormat, SkipReason> {
    let h = frame
        .get(..4)
        .ok_or(bad(Codec::Mp3, "frame shorter than a header"))?;
    if h[0] != 0xff || h[1] & 0xe0 != 0xe0 {
        return Err(bad(Codec::Mp3, "no frame sync"));
    }
    let version = (h[1] >> 3) & 3; // 0: MPEG-2.5, 2: MPEG-2, 3: MPEG-1
    let rates: [u32; 3] = match version {
        3 => [44100, 48000, 32000],
        2 => [22050, 24000, 16000],
        0 => [11025, 12000, 8000],
        _ => return Err(bad(Codec::Mp3, "reserved MPEG version")),
    };
    if (h[1] >> 1) & 3 != 1 {
        return Err(bad(Codec::Mp3, "not Layer III"));
    }
    let rate = *rates
        .get(usize::from((h[2] >> 2) & 3))
        .ok_or(bad(Codec::Mp3, "reserved sampling frequency"))?;
    let channels = if h[3] >> 6 == 3 { 1 } else { 2 };
    let oti = if version == 3 { 0x6b } else { 0x69 };
    Ok(audio(
        Codec::Mp3,
        format!("mp4a.{oti:X}"),
        Entry::Mp4a { oti },
        rate,
        channels,
        Vec::new(),
    ))
}

// ---- Opus ----

/// The Opus ID header (RFC 7845 5.1: "OpusHead", version, channel count,
/// pre-skip, input sample rate, output gain, mapping family, [stream
/// count, coupled count, mapping], little-endian) as the body of `dOps`
/// (Opus in ISOBMFF 4.3.2: the same fields big-endian, version 0, no
/// magic). An empty sequence start means stereo with no pre-skip, as the
/// Enhanced RTMP spec says for a missing header.
fn opus(head: &[u8]) -> Result<TrackFormat, SkipReason> {
    let mut ops = Vec::with_capacity(11 + 2 + 255);
    let channels;
    if head.is_empty() {
        channels = 2;
        ops.extend_from_slice(&[
            0, // Version
            2, // OutputChannelCount
            0, 0, // PreSkip
            0, 0, 0xbb, 0x80, // InputSampleRate 48000
            0, 0, // OutputGain
            0, // ChannelMappingFamily
        ]);
    } else {
        let mut c = Cursor(head);
        if c.take(8) != Some(b"OpusHead") {
            return Err(bad(Codec::Opus, "no OpusHead magic"));
        }
        let what = "ID header truncated";
        let version = c.u8().ok_or(bad(Codec::Opus, what))?;
        if version >> 4 != 0 {
            return Err(bad(Codec::Opus, "unsupported ID header version"));
        }
        let count = c.u8().ok_or(bad(Codec::Opus, what))?;
        let fields = c.take(8).ok_or(bad(Codec::Opus, what))?;
        let family = c.u8().ok_or(bad(Codec::Opus, what))?;
        if count == 0 {
            return Err(bad(Codec::Opus, "channel count 0"));
        }
        channels = u16::from(count);
        ops.push(0); // Version
        ops.push(count); // OutputChannelCount
        ops.extend_from_slice(&[fields[1], fields[0]]); // PreSkip
        ops.extend_from_slice(&[fields[5], fields[4], fields[3], fields[2]]); // InputSampleRate
        ops.extend_from_slice(&[fields[7], fields[6]]); // OutputGain
        ops.push(family); // ChannelMappingFamily
        if family != 0 {
            // StreamCount, CoupledCount, ChannelMapping[OutputChannelCount].
            let table = c
                .take(2 + usize::from(count))
                .ok_or(bad(Codec::Opus, "channel mapping table truncated"))?;
            ops.extend_from_slice(table);
        } else if count > 2 {
            return Err(bad(Codec::Opus, "family 0 with more than 2 channels"));
        }
    }
    Ok(audio(
        Codec::Opus,
        "opus".into(),
        Entry::Opus,
        48_000,
        channels,
        ops,
    ))
}

// ---- FLAC ----

/// The FLAC sequence header: the Enhanced RTMP spec says "fLaC" and
/// metadata blocks of which the first is STREAMINFO (FLAC format 8.1,
/// 8.2); ffmpeg sends the bare 34-byte STREAMINFO. `dfLa` (FLAC in ISOBMFF
/// 3.3.2) takes the STREAMINFO block with its last-metadata-block flag set.
fn flac(header: &[u8]) -> Result<TrackFormat, SkipReason> {
    let info = if let Some(rest) = header.strip_prefix(b"fLaC") {
        let block = rest
            .get(..4 + 34)
            .ok_or(bad(Codec::Flac, "STREAMINFO truncated"))?;
        if block[0] & 0x7f != 0 || block[1..4] != [0, 0, 34] {
            return Err(bad(Codec::Flac, "first metadata block is not STREAMINFO"));
        }
        &block[4..]
    } else if header.len() == 34 {
        header
    } else {
        return Err(bad(Codec::Flac, "neither fLaC nor a STREAMINFO block"));
    };
    let mut r = Bits::new(&info[10..]);
    let rate = r.bits(20).unwrap_or(0);
    let channels = r.bits(3).unwrap_or(0) + 1;
    let bits = r.bits(5).unwrap_or(0) + 1;
    if rate == 0 {
        return Err(bad(Codec::Flac, "sample rate 0"));
    }
    let mut record = Vec::with_capacity(4 + 34);
    // Metadata block header: last-metadata-block | type 0 (STREAMINFO), length 34.
    record.extend_from_slice(&[0x80, 0, 0, 34]);
    record.extend_from_slice(info);
    // Minimum and maximum frame sizes, total samples and MD5 describe a
    // whole file, not how to decode it (0 is "unknown" for each): an
    // encoder sends them filled in again at the end of the stream, which
    // must not look like a new configuration.
    let info = &mut record[4..];
    info[4..10].fill(0);
    info[13] &= 0xf0;
    info[14..34].fill(0);
    Ok(audio(
        Codec::Flac,
        "fLaC".into(),
        Entry::Flac { bits: bits as u16 },
        rate,
        channels as u16,
        record,
    ))
}

// ---- AC-3 ----

/// The first AC-3 syncframe (ATSC A/52 5.3.1 syncinfo and the start of
/// bsi) as `dac3` (ETSI TS 102 366 F.4): fscod, bsid, bsmod, acmod, lfeon,
/// bit_rate_code.
fn ac3(frame: &[u8]) -> Result<TrackFormat, SkipReason> {
    let mut r = Bits::new(frame);
    let what = "syncframe header truncated";
    if r.bits(16) != Some(0x0b77) {
        return Err(bad(Codec::Ac3, "no syncword"));
    }
    r.skip(16).ok_or(bad(Codec::Ac3, what))?; // crc1
    let fscod = r.bits(2).ok_or(bad(Codec::Ac3, what))?;
    let frmsizecod = r.bits(6).ok_or(bad(Codec::Ac3, what))?;
    let bsid = r.bits(5).ok_or(bad(Codec::Ac3, what))?;
    let bsmod = r.bits(3).ok_or(bad(Codec::Ac3, what))?;
    let acmod = r.bits(3).ok_or(bad(Codec::Ac3, what))?;
    if acmod & 1 != 0 && acmod != 1 {
        r.skip(2).ok_or(bad(Codec::Ac3, what))?; // cmixlev
    }
    if acmod & 4 != 0 {
        r.skip(2).ok_or(bad(Codec::Ac3, what))?; // surmixlev
    }
    if acmod == 2 {
        r.skip(2).ok_or(bad(Codec::Ac3, what))?; // dsurmod
    }
    let lfeon = r.bits(1).ok_or(bad(Codec::Ac3, what))?;
    let rate = match fscod {
        0 => 48000,
        1 => 44100,
        2 => 32000,
        _ => return Err(bad(Codec::Ac3, "reserved fscod")),
    };
    if bsid > 10 || frmsizecod > 37 {
        return Err(bad(Codec::Ac3, "bsid or frmsizecod out of range"));
    }
    let channels = [2u16, 1, 2, 3, 3, 4, 4, 5][acmod as usize] + lfeon as u16;
    let v =
        fscod << 22 | bsid << 17 | bsmod << 14 | acmod << 11 | lfeon << 10 | (frmsizecod >> 1) << 5;
    let record = vec![(v >> 16) as u8, (v >> 8) as u8, v as u8];
    Ok(audio(
        Codec::Ac3,
        "ac-3".into(),
        Entry::Ac3,
        rate,
        channels,
        record,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// An AVCDecoderConfigurationRecord around one SPS and one PPS.
    fn avcc(sps: &[u8]) -> Vec<u8> {
        let mut r = vec![
            0x01,   // configurationVersion
            sps[1], // AVCProfileIndication
            sps[2], // profile_compatibility
            sps[3], // AVCLevelIndication
            0xff,   // reserved | lengthSizeMinusOne 3
            0xe1,   // reserved | numOfSequenceParameterSets 1
        ];
        r.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        r.extend_from_slice(sps);
        r.extend_from_slice(&[
            0x01, // numOfPictureParameterSets
            0x00, 0x04, // PPS length
            0x68, 0xeb, 0xe3, 0xcb, // PPS
        ]);
        r
    }

    #[test]
    fn avc_codecs_string_and_size_from_x264_record() {
        // x264, High profile level 3.1, 1280x720.
        let sps = hex("6764001facd9405005bb011000000300100000030320f1831960");
        let f = TrackFormat::from_sequence_header(Codec::Avc, &avcc(&sps)).unwrap();
        assert_eq!(f.codecs, "avc1.64001f");
        assert_eq!((f.width, f.height), (1280, 720));
        assert_eq!(f.timescale, 90_000);
        let entry = f.sample_entry();
        assert_eq!(&entry[4..8], b"avc1");
        // width, height at offset 8 + 24 in the visual sample entry.
        assert_eq!(&entry[32..36], &[0x05, 0x00, 0x02, 0xd0]);
        assert_eq!(&entry[90..94], b"avcC");
        assert_eq!(&entry[94..], &avcc(&sps)[..]);
    }

    #[test]
    fn avc_cropped_and_interlaced_sizes() {
        for (sps, dims) in [
            (
                "67640028acd940780227e5c044000003000400000300c83c60c658",
                (1920, 1080),
            ),
            (
                "6764001eacd940a07b6022000003000200000300643e28532c",
                (640, 480),
            ),
            (
                "6742c01ed900a42fe224c044000003000400000300c83c58b920",
                (642, 362),
            ),
        ] {
            assert_eq!(avc_sps_size(&hex(sps)), Some(dims), "{sps}");
        }
    }

    #[test]
    fn avc_records_that_cannot_be_used_are_refused() {
        assert!(matches!(
            TrackFormat::from_sequence_header(Codec::Avc, &[]),
            Err(SkipReason::BadConfig { .. })
        ));
        let mut v2 = avcc(&hex("6764001facd9405005bb011000000300100000030320f1831960"));
        v2[0] = 2;
        assert!(TrackFormat::from_sequence_header(Codec::Avc, &v2).is_err());
        let no_sps = [0x01, 0x64, 0x00, 0x1f, 0xff, 0xe0, 0x00];
        assert_eq!(
            TrackFormat::from_sequence_header(Codec::Avc, &no_sps),
            Err(bad(Codec::Avc, "no SPS"))
        );
    }

    /// x265 (Main, level 2, 320x240): the VPS, SPS and PPS arrays of the
    /// record ffmpeg 9 sends in an Enhanced RTMP SequenceStart (its SEI
    /// array left out).
    pub(crate) fn x265_hvcc() -> Vec<u8> {
        let mut r = hex("0101600000009000000000003cf000fcfdf8f800000f03");
        for (kind, nal) in [
            (0xa0, "40010c01ffff01600000030090000003000003003c959409"),
            (0xa1, "42010101600000030090000003000003003ca00a080f16595952930bc05a020000030002000003003c10"),
            (0xa2, "4401c073c189"),
        ] {
            let nal = hex(nal);
            r.push(kind); // array_completeness | NAL_unit_type
            r.extend_from_slice(&[0, 1]); // numNalus
            r.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            r.extend_from_slice(&nal);
        }
        r
    }

    #[test]
    fn hevc_codecs_string_and_size_from_x265_record() {
        let f = TrackFormat::from_sequence_header(Codec::Hevc, &x265_hvcc()).unwrap();
        // Main (1), compatibility 0x60000000 reversed = 6, Main tier level 60,
        // constraint byte 0x90 (progressive, frame-only), trailing zeros left out.
        assert_eq!(f.codecs, "hvc1.1.6.L60.90");
        assert_eq!((f.width, f.height), (320, 240));
        let entry = f.sample_entry();
        assert_eq!(&entry[4..8], b"hvc1");
        assert_eq!(&entry[90..94], b"hvcC");
    }

    #[test]
    fn hevc_tier_space_and_truncation() {
        let mut r = x265_hvcc();
        r[1] = 0x62; // profile space 1, high tier, profile 2
        r[12] = 153;
        let f = TrackFormat::from_sequence_header(Codec::Hevc, &r).unwrap();
        assert_eq!(f.codecs, "hvc1.A2.6.H153.90");
        for cut in 0..r.len() - 6 {
            // Truncated inside the header or an array: refused, no panic.
            assert!(
                TrackFormat::from_sequence_header(Codec::Hevc, &r[..cut]).is_err(),
                "{cut}"
            );
        }
    }

    /// SVT-AV1 (main profile, level 2.0, 320x240): ffmpeg 9's av1C with the
    /// sequence header OBU in configOBUs.
    pub(crate) const SVT_AV1C: &str = "81000c000a0b0200000521e7fde017c002";

    #[test]
    fn av1_codecs_string_and_size_from_av1c() {
        let f = TrackFormat::from_sequence_header(Codec::Av1, &hex(SVT_AV1C)).unwrap();
        assert_eq!(f.codecs, "av01.0.00M.08");
        assert_eq!((f.width, f.height), (320, 240));
        // 10-bit, high tier, level 13 (5.1).
        let mut r = hex(SVT_AV1C);
        r[1] = 0x0d;
        r[2] |= 0xc0;
        let f = TrackFormat::from_sequence_header(Codec::Av1, &r).unwrap();
        assert_eq!(f.codecs, "av01.0.13H.10");
    }

    #[test]
    fn av1_without_config_obus_learns_its_size_from_a_keyframe() {
        let mut f = TrackFormat::from_sequence_header(Codec::Av1, &hex("81000c00")).unwrap();
        assert_eq!((f.width, f.height), (0, 0));
        // A temporal unit: temporal delimiter, then the sequence header.
        let mut tu = vec![0x12, 0x00];
        tu.extend_from_slice(&hex(&SVT_AV1C[8..]));
        assert_eq!(av1_leading_delimiters(&tu), 2);
        assert_eq!(av1_leading_delimiters(&tu[2..]), 0);
        f.learn_size(&tu, None);
        assert_eq!((f.width, f.height), (320, 240));
    }

    #[test]
    fn vp9_record_with_and_without_full_box_header() {
        // ffmpeg 9: version 1, flags 0, then profile 0, level 20, 8-bit 4:2:0.
        let ffmpeg = hex("010000000014820202020000");
        let f = TrackFormat::from_sequence_header(Codec::Vp9, &ffmpeg).unwrap();
        assert_eq!(f.codecs, "vp09.00.20.08");
        let bare = TrackFormat::from_sequence_header(Codec::Vp9, &ffmpeg[4..]).unwrap();
        assert_eq!(bare, f);
        assert!(TrackFormat::from_sequence_header(Codec::Vp9, &ffmpeg[..10]).is_err());
    }

    #[test]
    fn vp9_keyframe_header_size() {
        // frame_marker 2, profile 0, show_existing 0, key, show 1, error_res 0,
        // sync code, colour space 1 (BT.601), range 0, width-1 319, height-1 239.
        let mut w = 0u128;
        let mut n = 0;
        for (v, bits) in [
            (2, 2),
            (0, 2),
            (0, 1),
            (0, 1),
            (1, 1),
            (0, 1),
            (0x498342, 24),
            (1, 3),
            (0, 1),
            (319, 16),
            (239, 16),
        ] {
            w = w << bits | v;
            n += bits;
        }
        let bytes = (w << (128 - n)).to_be_bytes();
        assert_eq!(vp9_keyframe_size(&bytes), Some((320, 240)));
        assert_eq!(vp9_keyframe_size(&bytes[..6]), None);
    }

    #[test]
    fn aac_from_audio_specific_config() {
        // ffmpeg's AAC-LC 48 kHz mono, with its sync extension.
        let f = TrackFormat::from_sequence_header(Codec::Aac, &hex("118856e500")).unwrap();
        assert_eq!(
            (f.codecs.as_str(), f.sample_rate, f.channels),
            ("mp4a.40.2", 48000, 1)
        );
        assert_eq!(f.timescale, 48000);
        // HE-AAC, explicit: object type 5, core 24 kHz, output 48 kHz, stereo.
        let he = TrackFormat::from_sequence_header(Codec::Aac, &hex("2b118800")).unwrap();
        assert_eq!(
            (he.codecs.as_str(), he.sample_rate, he.channels),
            ("mp4a.40.5", 48000, 2)
        );
        // Escaped object type 31 + 6 bits (32 + 10 = 42, USAC).
        let usac = TrackFormat::from_sequence_header(Codec::Aac, &hex("f94440")).unwrap();
        assert_eq!(usac.codecs, "mp4a.40.42");
        assert!(TrackFormat::from_sequence_header(Codec::Aac, &hex("11")).is_err());
        assert!(
            TrackFormat::from_sequence_header(Codec::Aac, &hex("0788")).is_err(),
            "aot 0"
        );
    }

    #[test]
    fn esds_byte_exact_for_aac_lc() {
        let f = TrackFormat::from_sequence_header(Codec::Aac, &hex("1190")).unwrap();
        let entry = f.sample_entry();
        // mp4a sample entry: 36 bytes of audio fields, then esds.
        let esds = &entry[36..];
        #[rustfmt::skip]
        let expected = [
            0, 0, 0, 0x33, b'e', b's', b'd', b's', 0, 0, 0, 0,
            0x03, 0x80, 0x80, 0x80, 0x22, // ES_Descriptor, 34 bytes
              0, 0, 0, // ES_ID, flags
              0x04, 0x80, 0x80, 0x80, 0x14, // DecoderConfigDescriptor, 20 bytes
                0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // AAC, audio stream
                0x05, 0x80, 0x80, 0x80, 0x02, 0x11, 0x90, // DecoderSpecificInfo: the ASC
              0x06, 0x80, 0x80, 0x80, 0x01, 0x02, // SLConfigDescriptor: predefined 2
        ];
        assert_eq!(esds, expected);
        assert_eq!(&entry[24..28], &[0, 2, 0, 16], "stereo, 16 bit");
        assert_eq!(&entry[32..36], &[0xbb, 0x80, 0, 0], "48000 << 16");
    }

    #[test]
    fn opus_head_becomes_big_endian_dops() {
        // ffmpeg 9: OpusHead v1, mono, pre-skip 312, 48 kHz, gain 0, family 0.
        let head = hex("4f707573486561640101380180bb0000000000");
        let f = TrackFormat::from_sequence_header(Codec::Opus, &head).unwrap();
        assert_eq!(
            (f.codecs.as_str(), f.timescale, f.channels),
            ("opus", 48000, 1)
        );
        let entry = f.sample_entry();
        assert_eq!(&entry[4..8], b"Opus");
        #[rustfmt::skip]
        let dops = [
            0, 0, 0, 19, b'd', b'O', b'p', b's',
            0,          // Version
            1,          // OutputChannelCount
            0x01, 0x38, // PreSkip 312
            0, 0, 0xbb, 0x80, // InputSampleRate 48000
            0, 0,       // OutputGain
            0,          // ChannelMappingFamily
        ];
        assert_eq!(&entry[36..], dops);
        // Family 1, 6 channels: the mapping table follows.
        // OpusHead, v1, 6 channels, pre-skip 312, 48 kHz, gain 0, family 1,
        // 4 streams, 2 coupled, mapping 0..5.
        let surround = hex("4f707573486561640106380180bb00000000010402000102030405");
        let f = TrackFormat::from_sequence_header(Codec::Opus, &surround).unwrap();
        assert_eq!(f.channels, 6);
        assert_eq!(&f.sample_entry()[36 + 19..], &[4, 2, 0, 1, 2, 3, 4, 5]);
        assert!(TrackFormat::from_sequence_header(Codec::Opus, &surround[..20]).is_err());
        assert!(TrackFormat::from_sequence_header(Codec::Opus, b"OpusTags").is_err());
        // Empty: stereo.
        let f = TrackFormat::from_sequence_header(Codec::Opus, &[]).unwrap();
        assert_eq!(f.channels, 2);
    }

    #[test]
    fn flac_streaminfo_bare_or_with_signature() {
        // ffmpeg 9: the bare STREAMINFO (44.1 kHz, mono, 16 bit).
        let info = hex("040004000000000008150ac440f00000000000000000000000000000000000000000");
        let f = TrackFormat::from_sequence_header(Codec::Flac, &info).unwrap();
        assert_eq!(
            (f.sample_rate, f.channels, f.codecs.as_str()),
            (44100, 1, "fLaC")
        );
        let mut signed = b"fLaC\x00\x00\x00\x22".to_vec();
        signed.extend_from_slice(&info);
        assert_eq!(
            TrackFormat::from_sequence_header(Codec::Flac, &signed).unwrap(),
            f
        );
        let entry = f.sample_entry();
        assert_eq!(&entry[36..48], b"\0\0\0\x32dfLa\0\0\0\0");
        assert_eq!(entry[48], 0x80, "last metadata block, STREAMINFO");
        assert!(TrackFormat::from_sequence_header(Codec::Flac, &info[..20]).is_err());
        // ffmpeg 9 sends STREAMINFO again at the end with the frame sizes,
        // total samples and MD5 filled in: the same configuration.
        let end = hex("0400040000014800018c0bb800f00005dc00df85c670ae6926e13ea6d1a1ed2c4324");
        let start = hex("040004000000000008150bb800f00000000000000000000000000000000000000000");
        let a = TrackFormat::from_sequence_header(Codec::Flac, &start).unwrap();
        let b = TrackFormat::from_sequence_header(Codec::Flac, &end).unwrap();
        assert_eq!(a, b);
        assert_eq!((a.sample_rate, a.channels), (48000, 1));
    }

    #[test]
    fn ac3_dac3_from_first_syncframe() {
        // ffmpeg 9: 48 kHz, 192 kbit/s (frmsizecod 12), bsid 8, mono (acmod 1).
        let frame = hex("0b77480d0c402f842bc1");
        let f = TrackFormat::from_first_frame(Codec::Ac3, &frame).unwrap();
        assert_eq!(
            (f.sample_rate, f.channels, f.codecs.as_str()),
            (48000, 1, "ac-3")
        );
        let entry = f.sample_entry();
        // fscod 0, bsid 8, bsmod 0, acmod 1, lfeon 0, bit_rate_code 6.
        assert_eq!(
            &entry[36..],
            &[0, 0, 0, 11, b'd', b'a', b'c', b'3', 0x10, 0x08, 0xc0]
        );
        assert!(TrackFormat::from_first_frame(Codec::Ac3, &frame[..5]).is_err());
    }

    #[test]
    fn mp3_from_first_frame_header() {
        // LAME (ffmpeg 9), MPEG-1 Layer III, 44.1 kHz, mono.
        let f = TrackFormat::from_first_frame(Codec::Mp3, &hex("fffb50c4")).unwrap();
        assert_eq!(
            (f.sample_rate, f.channels, f.codecs.as_str()),
            (44100, 1, "mp4a.6B")
        );
        // Joint stereo.
        let f = TrackFormat::from_first_frame(Codec::Mp3, &hex("fffb5044")).unwrap();
        assert_eq!(f.channels, 2);
        // MPEG-2, 24 kHz, mono: object type 0x69.
        let f = TrackFormat::from_first_frame(Codec::Mp3, &hex("fff384c0")).unwrap();
        assert_eq!(
            (f.sample_rate, f.channels, f.codecs.as_str()),
            (24000, 1, "mp4a.69")
        );
        assert!(
            TrackFormat::from_first_frame(Codec::Mp3, &hex("fffd50c4")).is_err(),
            "Layer II"
        );
    }

    #[test]
    fn codecs_hls_cannot_carry_are_reported() {
        for c in [
            Codec::Vp8,
            Codec::Vvc,
            Codec::Legacy(11),
            Codec::FourCc(*b"zzzz"),
        ] {
            assert_eq!(
                TrackFormat::from_sequence_header(c, &[1, 2, 3]),
                Err(SkipReason::UnsupportedCodec(c))
            );
        }
        assert_eq!(
            SkipReason::UnsupportedCodec(Codec::Vp8).to_string(),
            "VP8 cannot be carried in HLS (fMP4)"
        );
    }

    proptest! {
        #[test]
        fn random_records_never_panic(
            codec in prop::sample::select(vec![
                Codec::Avc, Codec::Hevc, Codec::Av1, Codec::Vp9, Codec::Aac,
                Codec::Opus, Codec::Flac, Codec::Mp3, Codec::Ac3,
            ]),
            data in proptest::collection::vec(any::<u8>(), 0..96),
        ) {
            if let Ok(mut f) = TrackFormat::from_sequence_header(codec, &data) {
                f.learn_size(&data, None);
                let _ = f.sample_entry();
            }
            if let Ok(f) = TrackFormat::from_first_frame(codec, &data) {
                let _ = f.sample_entry();
            }
            let _ = avc_sps_size(&data);
            let _ = hevc_sps_size(&data);
            let _ = av1_sequence_size(&data);
            let _ = vp9_keyframe_size(&data);
            prop_assert!(av1_leading_delimiters(&data) <= data.len());
        }

        #[test]
        fn records_cut_anywhere_never_panic(cut in 0usize..200) {
            let hvcc = x265_hvcc();
            let _ = TrackFormat::from_sequence_header(Codec::Hevc, &hvcc[..cut.min(hvcc.len())]);
            let av1c = hex(SVT_AV1C);
            let _ = TrackFormat::from_sequence_header(Codec::Av1, &av1c[..cut.min(av1c.len())]);
        }
    }
}
