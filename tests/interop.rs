//! End-to-end interop: the real `sluice` binary on loopback, fed by an ffmpeg publisher and
//! watched by ffmpeg, rtmpdump and GStreamer players. Every received file is compared with
//! the published clip packet by packet (see `common::compare_from_first_keyframe`).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// After the server exits, players must end within this (their idle timeouts are ≥ 4 s).
const SHUTDOWN_PLAYER_END: Duration = Duration::from_secs(3);
/// rtmp2src drops the one message it still holds when the stream ends.
const GST_TAIL_SLACK: usize = 1;

fn first_video(packets: &[Packet]) -> &Packet {
    packets
        .iter()
        .find(|p| p.media == Media::Video)
        .expect("no video packet received")
}

#[test]
fn ffmpeg_rtmpdump_gstreamer_play_what_ffmpeg_publishes() {
    // The clip and its packet list are made once per binary: do it before
    // any peer starts, so no player's idle timeout runs while ffmpeg encodes.
    let _ = (clip(), clip_packets());
    let t0 = Instant::now();
    let server = Server::start(2, &[]);
    let url = server.url("live", "interop");
    let mut publisher = publish_ffmpeg(&url, clip());
    // The players join 1.5 s into the stream (`-re`: media time is real time).
    server.wait_live("live/interop");
    sleep(Duration::from_millis(1500));

    let mut players = vec![
        play_ffmpeg(&url, &server.dir().join("ffmpeg.flv")),
        play_rtmpdump(&url, &server.dir().join("rtmpdump.flv")),
        play_gst(&url, &server.dir().join("gst.flv")),
    ];
    let tail_slack = [0, 0, GST_TAIL_SLACK];
    // Plain TCP players are sent released media from the workers' batch
    // files (sendfile, on by default): the files hold bytes and sendfile
    // calls are made while the players play, and the comparison below
    // checks every packet they got.
    let http = server.http_addr();
    api::wait_until(Duration::from_secs(10), "sendfile from batch files", || {
        let text = api::metrics(http);
        let sum = |name: &str| -> f64 {
            ["0", "1"]
                .iter()
                .filter_map(|w| api::metric(&text, name, &[("worker", w)]))
                .sum()
        };
        sum("sluice_batch_file_bytes") > 0.0 && sum("sluice_sendfile_calls_total") > 0.0
    });
    let published_end = wait_publisher(&mut publisher);
    let ends = wait_all_or_stop(&mut players, PLAYER_END_GRACE);

    for ((player, end), tail_slack) in players.iter().zip(&ends).zip(tail_slack) {
        let received = received_packets(player, end, published_end);
        let out = player.output().unwrap().to_path_buf();
        let first = first_video(&received);
        assert!(
            first.keyframe,
            "{}: first received video packet is not a keyframe: {first}",
            player.name()
        );
        assert_h264_640x360(&out);
        let join = compare_from_first_keyframe(clip_packets(), &received, tail_slack)
            .unwrap_or_else(|e| panic!("{} ({}): {e}", player.name(), player.command_line()));
        eprintln!("[interop] {}: {join:?}", player.name());
    }
    eprintln!("[interop] took {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn players_on_both_workers_all_get_every_frame() {
    const PLAYERS: usize = 12;
    // The clip and its packet list are made once per binary: do it before
    // any peer starts, so no player's idle timeout runs while ffmpeg encodes.
    let _ = (clip(), clip_packets());
    let t0 = Instant::now();
    let server = Server::start(2, &[]);
    let url = server.url("live", "fanout");
    let mut players: Vec<Peer> = (0..PLAYERS)
        .map(|i| play_ffmpeg(&url, &server.dir().join(&format!("player{i}.flv"))))
        .collect();
    // They all connect and wait for the stream, on both workers.
    let waiting = server.wait_players("live/fanout", PLAYERS);
    let workers: BTreeSet<u64> = waiting
        .iter()
        .map(|c| c["worker"].as_u64().expect("worker"))
        .collect();
    assert_eq!(
        workers,
        BTreeSet::from([0, 1]),
        "expected players on worker 0 and worker 1: {waiting:#?}"
    );
    for p in &mut players {
        assert!(
            p.is_running(),
            "{} exited before anything was published; stderr:\n{}",
            p.name(),
            p.stderr()
        );
    }
    let mut publisher = publish_ffmpeg(&url, clip());
    let published_end = wait_publisher(&mut publisher);
    let ends = wait_all_or_stop(&mut players, PLAYER_END_GRACE);

    for (i, (player, end)) in players.iter().zip(&ends).enumerate() {
        let received = received_packets(player, end, published_end);
        let join = compare_from_first_keyframe(clip_packets(), &received, 0)
            .unwrap_or_else(|e| panic!("player {i}: {e}"));
        assert!(
            join.received_video_from == 0 && join.video_from == 0 && join.audio_from_rel_ms <= 0,
            "player {i} connected before the publisher but did not get the stream from its \
             first frame (and all audio from that frame's time on): {join:?}"
        );
    }
    eprintln!("[interop] took {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn late_joiner_starts_on_keyframe_with_sequence_headers() {
    // The clip and its packet list are made once per binary: do it before
    // any peer starts, so no player's idle timeout runs while ffmpeg encodes.
    let _ = (clip(), clip_packets());
    let t0 = Instant::now();
    let server = Server::start(2, &[]);
    let url = server.url("live", "late");
    let mut publisher = publish_ffmpeg(&url, clip());
    // Keyframes are at 0, 2, 4, 6 s of media, which `-re` sends in real time:
    // join in the middle of the second GOP.
    server.wait_live("live/late");
    sleep(Duration::from_millis(3000));
    let out = server.dir().join("late.flv");
    let mut player = play_ffmpeg(&url, &out);
    let published_end = wait_publisher(&mut publisher);

    let end = player.wait_or_stop(PLAYER_END_GRACE);
    let received = received_packets(&player, &end, published_end);
    let first = first_video(&received);
    assert!(
        first.keyframe,
        "late joiner's first video packet is not a keyframe: {first}"
    );
    assert_h264_640x360(&out);
    assert_decodes_cleanly(&out);
    let join = assert_same_from_first_keyframe(clip_packets(), &received);
    // With a GOP cache the player starts on the cached keyframe it joined after (2 s,
    // published video #60; #0 only if the publisher was very slow to start), not on the next
    // one at 4 s (#120) as a server without a GOP cache (e.g. nginx-rtmp) does.
    assert!(
        join.video_from <= CLIP_GOP as usize,
        "late joiner (joined ~3 s into the stream) did not start on the cached keyframe at 2 s: \
         {join:?}"
    );
    eprintln!(
        "[interop] {join:?}; took {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn second_publisher_is_refused_and_first_keeps_going() {
    // The clip and its packet list are made once per binary: do it before
    // any peer starts, so no player's idle timeout runs while ffmpeg encodes.
    let _ = (clip(), clip_packets());
    let t0 = Instant::now();
    let server = Server::start(2, &[]);
    let url = server.url("live", "twice");
    let mut player = play_ffmpeg(&url, &server.dir().join("player.flv"));
    server.wait_players("live/twice", 1);
    let mut first = publish_ffmpeg(&url, clip());
    let live = server.wait_live("live/twice");
    let first_id = live["publisher"]["id"].clone();
    let mut second = publish_ffmpeg(&url, clip());
    let status = second.wait(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "second publisher on the same name was not refused (still running after 10 s); \
             stderr:\n{}",
            second.stderr()
        )
    });
    let stderr = second.stderr();
    assert!(
        !status.success() || stderr.to_ascii_lowercase().contains("error"),
        "second publisher was not refused: exit {status}, stderr:\n{stderr}"
    );
    eprintln!(
        "[interop] second publisher: exit {status}, stderr: {}",
        stderr.trim()
    );
    let now = server.stream("live/twice").expect("live/twice");
    assert_eq!(
        (&now["live"], &now["publisher"]["id"]),
        (&serde_json::Value::Bool(true), &first_id),
        "the first publisher lost the stream to the refused one: {now:#}"
    );

    let published_end = wait_publisher(&mut first);
    let end = player.wait_or_stop(PLAYER_END_GRACE);
    let received = received_packets(&player, &end, published_end);
    let join = assert_same_from_first_keyframe(clip_packets(), &received);
    assert!(
        join.received_video_from == 0 && join.video_from == 0 && join.audio_from_rel_ms <= 0,
        "player connected before the publisher did not get the whole stream: {join:?}"
    );
    eprintln!("[interop] took {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn sigterm_ends_stream_and_exits_zero() {
    // The clip and its packet list are made once per binary: do it before
    // any peer starts, so no player's idle timeout runs while ffmpeg encodes.
    let _ = (clip(), clip_packets());
    let t0 = Instant::now();
    let mut server = Server::start(2, &[]);
    let url = server.url("live", "term");
    let mut publisher = publish_ffmpeg(&url, clip());
    server.wait_live("live/term");
    let mut players = vec![
        play_ffmpeg(&url, &server.dir().join("ffmpeg.flv")),
        play_rtmpdump(&url, &server.dir().join("rtmpdump.flv")),
        play_gst(&url, &server.dir().join("gst.flv")),
    ];
    // All three are streaming (the server has sent each of them media) when
    // the server is told to stop.
    api::wait_until(Duration::from_secs(10), "three players streaming", || {
        let p = server.players_of("live/term");
        p.len() == 3 && p.iter().all(|c| c["bytes_out"].as_u64() > Some(100_000))
    });
    for p in &mut players {
        assert!(
            p.is_running(),
            "{} ended early; stderr:\n{}",
            p.name(),
            p.stderr()
        );
    }

    let took = server.assert_sigterm_exits_zero(Duration::from_secs(5));
    eprintln!(
        "[interop] sluice exited 0 {:.2}s after SIGTERM",
        took.as_secs_f64()
    );

    // Well below the players' idle timeouts: ending this fast means the server's shutdown
    // (status message / closed connection) ended them.
    let server_end = Instant::now();
    let ends = wait_all_or_stop(&mut players, SHUTDOWN_PLAYER_END);
    for (p, end) in players.iter().zip(&ends) {
        assert!(
            end.by_itself,
            "{} still running {SHUTDOWN_PLAYER_END:?} after the server exited; stderr:\n{}",
            p.name(),
            p.stderr()
        );
        let received = received_packets(p, end, server_end);
        assert!(
            received.iter().any(|x| x.media == Media::Video),
            "{} received no video before the shutdown",
            p.name()
        );
    }
    let _ = publisher.wait(Duration::from_secs(3));
    eprintln!("[interop] took {:.1}s", t0.elapsed().as_secs_f64());
}
