//! nginx with the rtmp module as a third-party RTMP peer (`common::NginxRtmp`, reused by the
//! relay tests). No sluice here: this proves the harness itself. ffmpeg publishes the clip
//! to nginx, ffmpeg plays it back from nginx, and the file it writes must match the clip
//! packet by packet.

mod common;

use common::*;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// For nginx to log a client's play/publish command.
const LOG_LIMIT: Duration = Duration::from_secs(10);

/// Waits until nginx's log has a line containing `needle`.
fn wait_for_log(nginx: &NginxRtmp, needle: &str) {
    let deadline = Instant::now() + LOG_LIMIT;
    while !nginx.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "nginx logged no {needle:?} within {LOG_LIMIT:?}; log:\n{}",
            nginx.log()
        );
        sleep(Duration::from_millis(25));
    }
}

#[test]
fn nginx_rtmp_peer_round_trips_ffmpeg() {
    // The clip and its packet list are made once per binary: do it before
    // any peer starts, so no player's idle timeout runs while ffmpeg encodes.
    let _ = (clip(), clip_packets());
    let t0 = Instant::now();
    let mut nginx = NginxRtmp::start();
    let url = nginx.url("live", "peer");
    let out = nginx.dir().join("ffmpeg.flv");

    // The player first (nginx keeps it waiting for the stream), so it must get everything.
    let mut player = play_ffmpeg(&url, &out);
    wait_for_log(&nginx, "play: name='peer'");
    let mut publisher = publish_ffmpeg(&url, clip());
    wait_for_log(&nginx, "publish: name='peer'");

    let published_end = wait_publisher(&mut publisher);

    // nginx does not tell players the publisher left: the player ends on its idle timeout.
    let end = player.wait_or_stop(PLAYER_END_GRACE);
    let received = received_packets(&player, &end, published_end);
    assert_h264_640x360(&out);
    let join = assert_same_from_first_keyframe(clip_packets(), &received);
    assert!(
        join.received_video_from == 0 && join.video_from == 0 && join.audio_from_rel_ms <= 0,
        "the player was waiting before the publisher started but did not get the stream from \
         its first frame (and all audio from that frame's time on): {join:?}"
    );

    let pid = nginx.pid();
    let status = nginx.stop();
    assert!(
        status.success(),
        "nginx (pid {pid}) exited with {status} on SIGTERM; log:\n{}",
        tail(&nginx.log(), 40)
    );
    eprintln!(
        "[nginx_peer] {join:?}; took {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}
