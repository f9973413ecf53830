//! Timestamps across the two RTMP boundaries, end to end with real peers:
//! the interop clip (real H.264 + AAC) is published with its timestamps
//! moved to start 4 s below 0xFFFFFF ms (4 h 39 m, where the extended
//! timestamp field takes over) or 4 s below 2^32 ms (49.7 days, where they
//! wrap), through the `sluice` binary, to an ffmpeg player (which must
//! receive every packet from its join keyframe with unchanged relative
//! timing: `common::compare_from_first_keyframe`) and to the project's own
//! player, which sees the raw RTMP timestamps and checks that they cross
//! the boundary exactly as published (serial arithmetic).
//! docs/hardening.md case 31 covers the same crossings with hand-made
//! chunk forms.

mod common;
mod support;

use bytes::Bytes;
use common::*;
use sluice::protocol::client::ClientEvent;
use sluice::protocol::session::MediaKind;
use std::net::SocketAddr;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The tags of an FLV file: (type, timestamp ms, payload).
fn flv_tags(path: &Path) -> Vec<(u8, u32, Bytes)> {
    let d = std::fs::read(path).expect("read clip");
    let mut at = usize::from(d[8]) + 4; // header, then PreviousTagSize0
    let mut tags = Vec::new();
    while at + 11 <= d.len() {
        let kind = d[at] & 0x1F;
        let size = u32::from_be_bytes([0, d[at + 1], d[at + 2], d[at + 3]]) as usize;
        let ts = u32::from_be_bytes([d[at + 7], d[at + 4], d[at + 5], d[at + 6]]);
        let body = at + 11;
        if body + size > d.len() {
            break;
        }
        tags.push((kind, ts, Bytes::copy_from_slice(&d[body..body + size])));
        at = body + size + 4;
    }
    tags
}

/// Publishes the clip's tags in real time with the project's client, every
/// timestamp (sequence headers and metadata included) moved to
/// `start_ms + ts`, mod 2^32. (ffmpeg cannot be the publisher here: its FLV
/// muxer writes 31-bit timestamps, and with `-output_ts_offset` it still
/// sends the sequence headers at 0, which the server, rightly, treats as a
/// jump and resynchronises.)
fn publish_clip_at(addr: SocketAddr, start_ms: u32) -> std::thread::JoinHandle<()> {
    let tags = flv_tags(clip());
    std::thread::spawn(move || {
        let mut p = support::TestClient::connect(addr, "live");
        let (id, code) = p.publish("ts");
        assert_eq!(code, "NetStream.Publish.Start");
        let t0 = Instant::now();
        for (kind, ts, payload) in tags {
            let kind = match kind {
                8 => MediaKind::Audio,
                9 => MediaKind::Video,
                18 => MediaKind::Data,
                _ => continue,
            };
            let due = t0 + Duration::from_millis(u64::from(ts));
            sleep(due.saturating_duration_since(Instant::now()));
            p.send(
                id,
                &support::SynthFrame {
                    kind,
                    timestamp: start_ms.wrapping_add(ts),
                    payload,
                },
            );
            while p.next_event(Duration::ZERO).is_some() {}
        }
        p.delete_stream(id);
        sleep(Duration::from_millis(200));
    })
}

/// Publishes the clip starting `lead_ms` below `boundary` (mod 2^32), and
/// checks both players.
fn crossing(boundary: u64, lead_ms: u64) {
    let start_ms = boundary - lead_ms;
    let server = Server::start(1, &[]);
    let url = server.url("live", "ts");
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();

    // The raw player joins first and sees everything from the first frame.
    let mut raw = support::TestClient::connect(addr, "live");
    raw.play("ts");
    let publisher = publish_clip_at(addr, start_ms as u32);
    sleep(Duration::from_millis(1500));
    let mut player = play_ffmpeg(&url, &server.dir().join("ffmpeg.flv"));

    // Read the raw player while the clip plays (it lasts CLIP_SECS).
    let mut stamps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(CLIP_SECS + 15);
    while Instant::now() < deadline {
        match raw.next_event(Duration::from_millis(500)) {
            Some(ClientEvent::Media {
                kind: MediaKind::Video,
                timestamp,
                ..
            }) => stamps.push(timestamp),
            Some(ClientEvent::Status { code, .. }) if code == "NetStream.Play.UnpublishNotify" => {
                break
            }
            _ => {}
        }
        if raw.closed {
            break;
        }
    }
    publisher.join().expect("publisher");
    let published_end = Instant::now();
    let end = player.wait_or_stop(PLAYER_END_GRACE);

    // Raw timestamps: the clip's, moved by start_ms, mod 2^32. (The FLV
    // tag times of the clip are ffprobe's dts plus a constant B-frame delay,
    // and the AVC end-of-sequence tag repeats the last time: compare the
    // steps between frames, and the start.)
    let published = clip_packets();
    let expect: Vec<i64> = published
        .iter()
        .filter(|p| p.media == Media::Video)
        .map(|p| p.dts)
        .collect();
    stamps.dedup();
    assert!(
        stamps.len() >= expect.len(),
        "raw player got {} of {} video frames",
        stamps.len(),
        expect.len()
    );
    let got = &stamps[stamps.len() - expect.len()..];
    let steps = |v: &[i64]| v.windows(2).map(|w| w[1] - w[0]).collect::<Vec<_>>();
    let got_steps: Vec<i64> = got
        .windows(2)
        .map(|w| i64::from(w[1].wrapping_sub(w[0]) as i32))
        .collect();
    assert_eq!(got_steps, steps(&expect), "frame-to-frame timing unchanged");
    let lead = stamps[0].wrapping_sub(start_ms as u32);
    assert!(
        lead < 200,
        "the stream starts at the published time: {} vs {start_ms}",
        stamps[0]
    );
    let boundary32 = (boundary % (1 << 32)) as u32;
    assert!(
        got.iter().any(|&t| (t.wrapping_sub(boundary32) as i32) < 0)
            && got
                .iter()
                .any(|&t| (t.wrapping_sub(boundary32) as i32) >= 0),
        "the stream crossed {boundary:#x}: {}..{}",
        got[0],
        got[got.len() - 1]
    );
    for w in got.windows(2) {
        let step = w[1].wrapping_sub(w[0]) as i32;
        assert!((0..=100).contains(&step), "step {} -> {}", w[0], w[1]);
    }

    // ffmpeg as the player: every packet from its join keyframe, with the
    // published relative timing, through the crossing.
    let received = received_packets(&player, &end, published_end);
    let join = compare_from_first_keyframe(published, &received, 0)
        .unwrap_or_else(|e| panic!("ffmpeg player across {boundary:#x}: {e}"));
    assert_eq!(
        join.missing_at_end, 0,
        "ffmpeg player missed the end: {join:?}"
    );
    let join_ms = published
        .iter()
        .filter(|p| p.media == Media::Video)
        .nth(join.video_from)
        .map_or(0, |p| p.dts) as u64;
    assert!(
        join_ms < lead_ms,
        "the ffmpeg player joined ({join_ms} ms) before the crossing ({lead_ms} ms)"
    );
}

#[test]
fn crossing_0xffffff_ms_with_ffmpeg_players() {
    crossing(0xFF_FFFF, 4_000);
}

#[test]
fn wrapping_at_2_pow_32_ms_with_ffmpeg_players() {
    crossing(1 << 32, 4_000);
}
