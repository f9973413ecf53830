//! The CMAF packager behind HLS and MP4 recording: any sequence of frames
//! (audio, video, script data; FLV tag bodies, legacy or Enhanced RTMP) to
//! `cmaf::Packager`, then the playlists it renders and the answers it
//! gives to requests parsed from the input (paths and `_HLS_*` queries).
//!
//! Input: records of `[kind][timestamp delta: u16 LE][length: u16 LE][payload]`
//! (kind & 3: 0 audio, 1 video, 2 data, 3 "finish": the publisher left; a
//! set bit 2 makes the delta go backwards), then, after a record of kind 3
//! or when the bytes run out, the rest of the input as request lines
//! `PATH?QUERY` separated by newlines.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_core::cmaf::{Directives, Packager, PackagerConfig, Resource, Skip};
use sluice_core::protocol::session::MediaKind;

fuzz_target!(|input: &[u8]| {
    // Short parts and segments and a window of three, so the fuzzer's
    // small inputs reach segment cuts and the window's eviction (the byte
    // bound, 1 MiB at least, is the packager's unit tests' to reach).
    let config = PackagerConfig {
        part_target_ms: 200,
        target_duration_s: 1,
        min_segment_ms: 300,
        window_segments: 3,
        window_bytes: 1 << 20, // the least the packager accepts
        mux_audio: true,
    };
    let mut p = Packager::new(config).expect("a valid configuration");
    let data = Bytes::copy_from_slice(input);
    let mut at = 0usize;
    let mut ts: u32 = 0;
    let mut wall: u64 = 1_700_000_000_000;
    let mut outputs = 0usize;
    let (mut frames, mut fed) = (0usize, 0usize);
    while at + 5 <= data.len() {
        let kind = data[at];
        let delta = u16::from_le_bytes([data[at + 1], data[at + 2]]);
        let len = usize::from(u16::from_le_bytes([data[at + 3], data[at + 4]]));
        at += 5;
        if kind & 3 == 3 {
            p.finish();
            break;
        }
        let end = (at + len).min(data.len());
        let payload = data.slice(at..end);
        at = end;
        ts = if kind & 4 != 0 {
            ts.wrapping_sub(u32::from(delta))
        } else {
            ts.wrapping_add(u32::from(delta))
        };
        wall += u64::from(delta);
        let media = match kind & 3 {
            0 => MediaKind::Audio,
            1 => MediaKind::Video,
            _ => MediaKind::Data,
        };
        p.handle_frame(media, ts, &payload, wall);
        while p.poll_output().is_some() {
            outputs += 1;
            // Outputs are bounded by the frames (a few per frame at most).
            assert!(outputs <= 16 * (at + 1), "outputs without bound");
        }
        // What the window holds is made of the frames' own bytes (slices)
        // and a box header or a sample entry per sample: never more than the
        // frames fed, twice over, plus a fixed cost per frame.
        frames += 1;
        fed += payload.len();
        let (_, held) = p.window_held();
        assert!(
            held <= 2 * fed + 512 * frames + 65_536,
            "{held} bytes held for {fed} bytes in {frames} frames"
        );
    }
    // Everything a viewer can see of it.
    let renditions = p.renditions();
    for r in &renditions {
        let _ = p.media_playlist(r.id, Skip::No);
        let _ = p.media_playlist(r.id, Skip::Yes);
        let _ = p.init(r.id, 0);
    }
    // The muxed rendition, when the stream is one video and one audio
    // track: its playlists, init, and every part it lists.
    if let Some(m) = p.muxed_rendition() {
        let _ = p.media_playlist(m, Skip::Yes);
        if let Some(pl) = p.media_playlist(m, Skip::No) {
            for uri in pl.split('"').filter(|u| u.starts_with("m")) {
                if let Some(resource) = Resource::parse(uri) {
                    let _ = p.respond(&resource, &Directives::default());
                }
            }
        }
        if let Some(v) = p.init_version(m) {
            assert!(p.init(m, v).is_some(), "the current muxed init is served");
        }
    }
    let _ = p.multivariant();
    let _ = p.combined_init();
    if at < data.len() {
        let text = String::from_utf8_lossy(&data[at..]);
        for line in text.lines().take(64) {
            let (path, query) = line.split_once('?').unwrap_or((line, ""));
            let Some(resource) = Resource::parse(path) else {
                continue;
            };
            let Ok(directives) = Directives::parse(query) else {
                continue;
            };
            let _ = p.decide(&resource, &directives);
            let _ = p.respond(&resource, &directives);
        }
    }
});
