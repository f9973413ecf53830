//! The write policy over real sockets (its bound is proved on a virtual
//! clock in `src/server/pacing.rs`): media held for company still leaves
//! when nothing follows it, a joiner's first frames are not held, and the
//! server counts its writes and how long media waited for them.

mod support;

use sluice::config::Millis;
use sluice::protocol::session::MediaKind;
use std::time::Duration;
use support::*;

/// An audio-only stream: its config, then `n` AAC frames carrying their
/// index (the payload layout `Received` reads).
fn audio_frames(n: u32) -> Vec<SynthFrame> {
    let mut frames = vec![SynthFrame {
        kind: MediaKind::Audio,
        timestamp: 0,
        payload: bytes::Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10]),
    }];
    for i in 0..n {
        let mut p = vec![0xAF, 0x01, 0, 0, 0];
        p.extend_from_slice(&i.to_be_bytes());
        p.resize(380, 0x5A);
        frames.push(SynthFrame {
            kind: MediaKind::Audio,
            timestamp: i * 23,
            payload: p.into(),
        });
    }
    frames
}

fn audio_indices(got: &[Received]) -> Vec<u32> {
    got.iter()
        .filter_map(|r| match r {
            Received::Audio { index, .. } => Some(*index),
            _ => None,
        })
        .collect()
}

#[test]
fn held_audio_leaves_at_its_deadline_when_nothing_follows_it() {
    // A budget long enough that the frames after the first are held; the
    // publisher then sends nothing more, so only the worker's deadline can
    // write them.
    let server = start_server(1, |c| {
        c.max_write_delay = Millis(Duration::from_millis(300))
    });
    let addr = server.local_addr();
    let mut player = TestClient::connect(addr, "live");
    player.play("radio");
    let mut publisher = TestClient::connect(addr, "live");
    let (id, code) = publisher.publish("radio");
    assert_eq!(code, "NetStream.Publish.Start");
    player.wait_status("NetStream.Play.PublishNotify");
    let frames = audio_frames(5);
    // The config and the first frame start play (written at once)...
    for f in &frames[..2] {
        publisher.send(id, f);
    }
    let mut got = player.collect_media(WAIT, |g| audio_indices(g).len() == 1);
    assert_eq!(got.first(), Some(&Received::AudioConfig));
    // ...the next four are small and alone: held, then written at the
    // deadline, since nothing comes after them. Without it they would wait
    // for the connection's next timer (its handshake deadline, 10 s).
    for f in &frames[2..] {
        publisher.send(id, f);
    }
    let limit = Duration::from_secs(5);
    got.extend(player.collect_media(limit, |g| audio_indices(g).len() == 4));
    assert_eq!(audio_indices(&got), [0, 1, 2, 3, 4], "got {got:?}");
    server.stop();
}

#[test]
fn a_late_joiner_gets_the_cached_gop_and_live_frames_under_a_long_budget() {
    let server = start_server(1, |c| {
        c.max_write_delay = Millis(Duration::from_millis(1000))
    });
    let addr = server.local_addr();
    let mut publisher = TestClient::connect(addr, "live");
    let (id, _) = publisher.publish("cam");
    let mut synth = Synth::new(30, 12_000);
    for f in synth.headers() {
        publisher.send(id, &f);
    }
    for _ in 0..10 {
        for f in synth.next() {
            publisher.send(id, &f);
        }
    }
    wait_cached(&server, "live/cam", 10);
    let mut player = TestClient::connect(addr, "live");
    player.play("cam");
    for _ in 0..20 {
        for f in synth.next() {
            publisher.send(id, &f);
        }
    }
    let got = player.collect_media(WAIT, |g| has_video(g, 29));
    assert_complete_from_keyframe(&got, 29);
    server.stop();
}

/// Waits until the stream's GOP cache holds `frames` frames.
fn wait_cached(server: &sluice::server::RunningServer, key: &str, frames: u64) {
    let http = http_addr(server);
    api::wait_until(WAIT, "the GOP cache filled", || {
        api::stream(http, key).is_some_and(|s| s["gop_cache"]["frames"].as_u64() >= Some(frames))
    });
}

#[test]
fn metrics_count_write_calls_and_write_waits() {
    let server = start_server(1, |_| {});
    let addr = server.local_addr();
    let mut player = TestClient::connect(addr, "live");
    player.play("cam");
    let mut publisher = TestClient::connect(addr, "live");
    let (id, _) = publisher.publish("cam");
    player.wait_status("NetStream.Play.PublishNotify");
    let mut synth = Synth::new(30, 12_000);
    for f in synth.headers() {
        publisher.send(id, &f);
    }
    for _ in 0..30 {
        for f in synth.next() {
            publisher.send(id, &f);
        }
    }
    let got = player.collect_media(WAIT, |g| has_video(g, 29));
    assert_complete_from_keyframe(&got, 29);
    let text = api::metrics(http_addr(&server));
    let calls = api::metric(&text, "sluice_write_calls_total", &[("worker", "0")]);
    assert!(calls.is_some_and(|n| n >= 1.0), "write calls: {calls:?}");
    let count = api::metric(&text, "sluice_write_wait_seconds_count", &[]).unwrap();
    assert!(count >= 1.0, "write waits recorded: {count}");
    let inf = api::metric(&text, "sluice_write_wait_seconds_bucket", &[("le", "+Inf")]);
    assert_eq!(inf, Some(count), "the +Inf bucket counts every wait");
    let max = api::metric(&text, "sluice_write_wait_max_seconds", &[]).unwrap();
    assert!((0.0..10.0).contains(&max), "longest wait: {max} s");
    server.stop();
}
