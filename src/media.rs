//! FLV audio/video tag payloads as carried in RTMP messages 8 and 9 (legacy
//! FLV headers and Enhanced RTMP v2 extended headers).
//! PLACEHOLDER: interface only; the implementation replaces this file.

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
    /// Enhanced video Metadata packet (e.g. HDR colour info): late joiners need the latest.
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

/// What the first bytes of an audio or video payload say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaInfo {
    pub class: FrameClass,
    pub codec: Codec,
    /// Track id for Enhanced RTMP multitrack; 0 otherwise.
    pub track: u8,
}

/// Classifies a video message payload (RTMP type 9).
pub fn classify_video(payload: &[u8]) -> MediaInfo {
    let _ = payload;
    todo!()
}

/// Classifies an audio message payload (RTMP type 8).
pub fn classify_audio(payload: &[u8]) -> MediaInfo {
    let _ = payload;
    todo!()
}
