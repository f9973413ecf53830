//! The media header and decoder-configuration parsers: legacy and Enhanced
//! RTMP (v2, multitrack, ModEx) audio and video tag headers, and the AVC
//! decoder configuration / SPS reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_core::media::{
    audio_tracks, avc_dimensions, classify_audio, classify_video, video_tracks,
};

fuzz_target!(|data: &[u8]| {
    let _ = classify_video(data);
    let _ = classify_audio(data);
    let mut n = 0;
    for t in video_tracks(data) {
        assert!(t.data.len() <= data.len());
        n += 1;
        assert!(n <= data.len().max(1), "more video tracks than bytes");
    }
    let mut n = 0;
    for t in audio_tracks(data) {
        assert!(t.data.len() <= data.len());
        n += 1;
        assert!(n <= data.len().max(1), "more audio tracks than bytes");
    }
    if let Some((w, h)) = avc_dimensions(data) {
        assert!(w > 0 && h > 0);
    }
});
