//! The CMAF packager's cost per published frame (docs/hls.md): a 30 fps
//! H.264 stream with a keyframe every 2 s and 48 kHz AAC, interleaved as an
//! encoder sends them, pushed one message per iteration with the outputs
//! drained (every part and segment built on the way, window eviction
//! included). Frame sizes of 1 KB and 100 KB cost the same if nothing is
//! done per byte. Also: rendering a full media playlist and the
//! multivariant playlist, which the server does per (unblocked) request.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::cmaf::{Packager, PackagerConfig, RenditionId, Skip};
use sluice::protocol::session::MediaKind;
use std::hint::black_box;

/// x264 High 3.1, 1280x720.
const SPS: [u8; 26] = [
    0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
    0x10, 0x00, 0x00, 0x03, 0x03, 0x20, 0xf1, 0x83, 0x19, 0x60,
];

fn avc_header() -> Bytes {
    let mut p = vec![
        0x17, 0x00, 0, 0, 0, 0x01, SPS[1], SPS[2], SPS[3], 0xff, 0xe1,
    ];
    p.extend_from_slice(&(SPS.len() as u16).to_be_bytes());
    p.extend_from_slice(&SPS);
    p.extend_from_slice(&[0x01, 0x00, 0x04, 0x68, 0xeb, 0xe3, 0xcb]);
    Bytes::from(p)
}

fn avc_frame(key: bool, size: usize) -> Bytes {
    let mut p = vec![if key { 0x17 } else { 0x27 }, 0x01, 0, 0, 0];
    p.extend_from_slice(&(size as u32 - 4).to_be_bytes());
    p.resize(5 + size, 0x41);
    Bytes::from(p)
}

/// Two seconds of messages: (kind, timestamp offset, payload), in order.
fn gop(video_size: usize) -> Vec<(MediaKind, u32, Bytes)> {
    let mut v: Vec<(u32, u8, MediaKind, Bytes)> = Vec::new();
    let key = avc_frame(true, video_size * 5);
    let inter = avc_frame(false, video_size);
    for i in 0..60u32 {
        let frame = if i == 0 { key.clone() } else { inter.clone() };
        v.push((i * 1000 / 30, 0, MediaKind::Video, frame));
    }
    let mut aac = vec![0xaf, 0x01];
    aac.resize(2 + 300, 0x21);
    let aac = Bytes::from(aac);
    for i in 0..94u32 {
        v.push((i * 1024 * 1000 / 48_000, 1, MediaKind::Audio, aac.clone()));
    }
    v.sort_by_key(|(ts, order, _, _)| (*ts, *order));
    v.into_iter().map(|(ts, _, k, p)| (k, ts, p)).collect()
}

fn started_packager() -> Packager {
    let mut p = Packager::new(PackagerConfig::default()).unwrap();
    p.handle_frame(MediaKind::Video, 0, &avc_header(), 0);
    p.handle_frame(
        MediaKind::Audio,
        0,
        &Bytes::from_static(&[0xaf, 0x00, 0x11, 0x90]),
        0,
    );
    p
}

fn packaging(c: &mut Criterion) {
    let mut g = c.benchmark_group("cmaf");
    g.throughput(Throughput::Elements(1));
    for size in [1_000usize, 100_000] {
        let msgs = gop(size);
        g.bench_function(format!("push_frame_{size}B"), |b| {
            let mut p = started_packager();
            let mut i = 0usize;
            b.iter(|| {
                let (kind, offset, payload) = &msgs[i % msgs.len()];
                let ts = (i / msgs.len()) as u32 * 2000 + offset;
                p.handle_frame(*kind, ts, payload, 1_700_000_000_000 + u64::from(ts));
                while let Some(o) = p.poll_output() {
                    black_box(o);
                }
                i += 1;
            })
        });
    }
    // Playlists over a full window (20 segments of 2 s).
    let mut p = started_packager();
    let msgs = gop(10_000);
    for cycle in 0..25u32 {
        for (kind, offset, payload) in &msgs {
            p.handle_frame(*kind, cycle * 2000 + offset, payload, 0);
        }
    }
    while p.poll_output().is_some() {}
    g.bench_function("media_playlist", |b| {
        b.iter(|| black_box(p.media_playlist(RenditionId::video(0), Skip::No)))
    });
    g.bench_function("media_playlist_delta", |b| {
        b.iter(|| black_box(p.media_playlist(RenditionId::video(0), Skip::Yes)))
    });
    g.bench_function("multivariant", |b| b.iter(|| black_box(p.multivariant())));
    g.finish();
}

criterion_group!(benches, packaging);
criterion_main!(benches);
