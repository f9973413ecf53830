//! Publish and play through a running server (2 workers, real loopback
//! sockets) with the crate's own client: every frame reaches every player on
//! every worker, late joiners start on the cached keyframe, publishers come
//! and go, and a stalled player costs nobody else anything.

mod support;

use sluice::protocol::client::ClientEvent;
use sluice::protocol::message::UserControl;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::*;

/// Connects clients until one lands on `worker` (the kernel spreads
/// SO_REUSEPORT connections by hash); the misses are kept open in `spares`
/// so the per-worker counts stay readable.
fn connect_on_worker(
    server: &sluice::server::RunningServer,
    worker: usize,
    app: &str,
    spares: &mut Vec<TestClient>,
) -> TestClient {
    for _ in 0..64 {
        let before = server.connections_per_worker();
        let c = TestClient::connect(server.local_addr(), app);
        let after = server.connections_per_worker();
        if after[worker] > before[worker] {
            return c;
        }
        spares.push(c);
    }
    panic!("no connection landed on worker {worker} in 64 tries");
}

fn publish_frames(publisher: &mut TestClient, id: u32, synth: &mut Synth, n: u32) {
    for _ in 0..n {
        for f in synth.next() {
            publisher.send(id, &f);
        }
    }
}

#[test]
fn players_on_both_workers_get_every_frame() {
    let server = start_server(2, |_| {});
    let mut spares = Vec::new();
    let mut players = Vec::new();
    for w in [0, 1, 0, 1, 0, 1] {
        let mut p = connect_on_worker(&server, w, "live", &mut spares);
        p.play("cam");
        players.push(p);
    }
    let mut publisher = TestClient::connect(server.local_addr(), "live");
    let (id, code) = publisher.publish("cam");
    assert_eq!(code, "NetStream.Publish.Start");
    let mut synth = Synth::new(30, 12_000);
    for f in synth.headers() {
        publisher.send(id, &f);
    }
    publish_frames(&mut publisher, id, &mut synth, 90);
    for (i, p) in players.iter_mut().enumerate() {
        p.wait_status("NetStream.Play.PublishNotify");
        let got = p.collect_media(WAIT, |g| has_video(g, 89));
        assert_complete_from_keyframe(&got, 89);
        assert!(
            matches!(got[3], Received::Video { index: 0, .. }),
            "player {i} saw the stream from its start: {:?}",
            &got[3]
        );
    }
    server.stop();
}

#[test]
fn late_joiner_starts_on_the_cached_keyframe_after_headers() {
    let server = start_server(2, |_| {});
    let addr = server.local_addr();
    let mut probe = TestClient::connect(addr, "live");
    probe.play("cam");
    let mut publisher = TestClient::connect(addr, "live");
    let (id, _) = publisher.publish("cam");
    let mut synth = Synth::new(30, 8_000);
    for f in synth.headers() {
        publisher.send(id, &f);
    }
    publish_frames(&mut publisher, id, &mut synth, 45);
    // Once the probe has frame 44 the server has cached it.
    probe.collect_media(WAIT, |g| has_video(g, 44));

    let mut late = TestClient::connect(addr, "live");
    late.play("cam");
    publish_frames(&mut publisher, id, &mut synth, 15);
    let got = late.collect_media(WAIT, |g| has_video(g, 59));
    assert_complete_from_keyframe(&got, 59);
    assert!(
        matches!(
            got[3],
            Received::Video {
                index: 30,
                key: true,
                ..
            }
        ),
        "starts at the GOP's keyframe (frame 30), got {:?}",
        got[3]
    );
    server.stop();
}

#[test]
fn players_resume_when_a_publisher_comes_back() {
    let server = start_server(2, |_| {});
    let addr: SocketAddr = server.local_addr();
    let mut player = TestClient::connect(addr, "live");
    player.play("cam");

    let mut first = TestClient::connect(addr, "live");
    let (id, _) = first.publish("cam");
    let mut synth = Synth::new(30, 4_000);
    for f in synth.headers() {
        first.send(id, &f);
    }
    publish_frames(&mut first, id, &mut synth, 30);
    let got = player.collect_media(WAIT, |g| has_video(g, 29));
    assert_complete_from_keyframe(&got, 29);
    let last_ts = got
        .iter()
        .filter_map(|r| match r {
            Received::Video { timestamp, .. } | Received::Audio { timestamp, .. } => {
                Some(*timestamp)
            }
            _ => None,
        })
        .max()
        .unwrap();
    drop(first); // the publisher's connection resets

    player.wait_status("NetStream.Play.UnpublishNotify");
    player.wait_for("StreamEOF", |e| {
        matches!(e, ClientEvent::UserControl(UserControl::StreamEof(_)))
    });

    let mut second = TestClient::connect(addr, "live");
    let (id2, code) = second.publish("cam");
    assert_eq!(
        code, "NetStream.Publish.Start",
        "the name is free again at once"
    );
    player.wait_status("NetStream.Play.PublishNotify");
    let mut synth2 = Synth::new(30, 4_000);
    for f in synth2.headers() {
        second.send(id2, &f);
    }
    publish_frames(&mut second, id2, &mut synth2, 31);
    let got = player.collect_media(WAIT, |g| has_video(g, 30));
    assert_complete_from_keyframe(&got, 30);
    let first_ts = got
        .iter()
        .find_map(|r| match r {
            Received::Video { timestamp, .. } => Some(*timestamp),
            _ => None,
        })
        .unwrap();
    assert!(
        first_ts > last_ts,
        "timestamps continue across publishers ({first_ts} after {last_ts})"
    );
    server.stop();
}

#[test]
fn second_publisher_on_another_worker_is_refused_and_the_first_keeps_going() {
    let server = start_server(2, |_| {});
    let mut spares = Vec::new();
    let mut first = connect_on_worker(&server, 0, "live", &mut spares);
    let (id, code) = first.publish("cam");
    assert_eq!(code, "NetStream.Publish.Start");
    let mut second = connect_on_worker(&server, 1, "live", &mut spares);
    let (_, code) = second.publish("cam");
    assert_eq!(code, "NetStream.Publish.BadName");

    let mut player = connect_on_worker(&server, 1, "live", &mut spares);
    player.play("cam");
    let mut synth = Synth::new(30, 4_000);
    for f in synth.headers() {
        first.send(id, &f);
    }
    publish_frames(&mut first, id, &mut synth, 40);
    let got = player.collect_media(WAIT, |g| has_video(g, 39));
    assert_complete_from_keyframe(&got, 39);
    server.stop();
}

#[test]
fn stalled_player_is_skipped_then_dropped_while_others_get_every_frame() {
    let server = start_server(1, |c| {
        c.player_queue_bytes = 256 * 1024;
        c.gop_cache_bytes = 128 * 1024;
        c.player_stall_timeout = Duration::from_secs(2);
    });
    let addr = server.local_addr();
    let mut healthy = TestClient::connect(addr, "live");
    healthy.play("cam");
    let mut stalled = TestClient::connect_with_small_buffers(addr, "live");
    stalled.play("cam");
    let mut publisher = TestClient::connect(addr, "live");
    let (id, _) = publisher.publish("cam");
    let mut synth = Synth::new(30, 12_000);
    for f in synth.headers() {
        publisher.send(id, &f);
    }
    // The healthy player reads on its own thread, as a real one would,
    // until it has the last frame (known once publishing stops).
    let last = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(u32::MAX));
    let target = last.clone();
    let reader = std::thread::spawn(move || {
        healthy.collect_media(Duration::from_secs(60), |g| {
            let t = target.load(std::sync::atomic::Ordering::SeqCst);
            t != u32::MAX && has_video(g, t)
        })
    });
    // Publish until the stalled player is dropped: its 256 KiB queue fills
    // only once the kernel's send buffer for it (autotuned, up to 4 MiB
    // here) is full, and then it makes no progress for the stall timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while server.connections_per_worker()[0] > 2 {
        assert!(
            Instant::now() < deadline,
            "stalled player was never dropped: connections {:?}",
            server.connections_per_worker()
        );
        publish_frames(&mut publisher, id, &mut synth, 10);
        sent += 10;
        // 200 frames/s, ~2.4 MB/s: fast, but within what a debug-build
        // test client reads while checking every frame.
        std::thread::sleep(Duration::from_millis(50));
    }
    // The publisher still publishes and the healthy player still plays.
    for _ in 0..3 {
        publish_frames(&mut publisher, id, &mut synth, 10);
        sent += 10;
        std::thread::sleep(Duration::from_millis(50));
    }
    last.store(sent - 1, std::sync::atomic::Ordering::SeqCst);
    let got = reader.join().unwrap();
    assert!(
        sent > 300,
        "the stall took at least the first bursts ({sent} frames)"
    );
    assert_complete_from_keyframe(&got, sent - 1);
    // Skipped: the server dropped frames, and only the stalled player's (the
    // healthy one got every frame) ...
    let http = http_addr(&server);
    let stream = api::stream(http, "live/cam").expect("live/cam is still live");
    assert!(
        stream["frames_dropped"].as_u64() > Some(0),
        "the stalled player was never skipped ahead: {stream:#}"
    );
    // ... then dropped, for the stall (not for another reason).
    assert_eq!(
        api::closes(http, "stalled"),
        1.0,
        "the stalled player closed as stalled"
    );
    drop(stalled);
    server.stop();
}
