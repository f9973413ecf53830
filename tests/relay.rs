//! Relays end to end, with real processes on loopback: Sluice origins,
//! edges and push targets, nginx with the rtmp module as a third-party
//! target, ffmpeg publishing and playing, and the load generator for the
//! slow-target case. What players receive is compared with the published
//! clip packet by packet (see `common::compare_from_first_keyframe`).

mod common;
mod perf_tool;

use common::api::{metrics as metrics_text, request as http, wait_until};
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// `GET /api/streams/KEY`, when the stream exists.
fn stream(server: &Server, key: &str) -> Option<Value> {
    server.stream(key)
}

fn total_players(s: &Value) -> u64 {
    s["players"]["total"].as_u64().unwrap_or(0)
}

fn compare(player: &Peer, end: &PeerEnd, published_end: Instant) -> Join {
    let received = received_packets(player, end, published_end);
    let first = received
        .iter()
        .find(|p| p.media == Media::Video)
        .expect("no video received");
    assert!(
        first.keyframe,
        "{}: first video packet is not a keyframe",
        player.name()
    );
    compare_from_first_keyframe(clip_packets(), &received, 0)
        .unwrap_or_else(|e| panic!("{} ({}): {e}", player.name(), player.command_line()))
}

/// `ffmpeg -re -stream_loop -1 -i CLIP -c copy -f flv URL`: a publisher that
/// keeps going until stopped.
fn publish_looping(url: &str) -> Peer {
    let args = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-re",
        "-stream_loop",
        "-1",
        "-i",
        &clip().display().to_string(),
        "-c",
        "copy",
        "-f",
        "flv",
        url,
    ]
    .map(String::from);
    Peer::spawn(
        "ffmpeg looping publisher",
        "ffmpeg",
        &args,
        Duration::from_secs(120),
        &[("INT", 2000), ("KILL", 1000)],
        None,
    )
}

/// `ffmpeg -t SECS -i URL -c copy OUT`: a player that leaves after `secs`.
fn play_for(url: &str, secs: u32, out: &Path) -> Peer {
    let args = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-y",
        // Long enough to wait out a pull's retries (backoff 1 s, 2 s, 4 s).
        "-rw_timeout",
        "10000000",
        "-i",
        url,
        "-t",
        &secs.to_string(),
        "-c",
        "copy",
        "-f",
        "flv",
        &out.display().to_string(),
    ]
    .map(String::from);
    Peer::spawn(
        "ffmpeg short player",
        "ffmpeg",
        &args,
        Duration::from_secs(30),
        &[("INT", 2000), ("KILL", 1000)],
        Some(out),
    )
}

#[test]
fn origin_edge_edge_serves_the_published_packets() {
    let _ = (clip(), clip_packets());
    let origin = Server::start(2, &[]);
    let edge1_pull = format!("live=rtmp://127.0.0.1:{}/live", origin.port());
    let edge1 = Server::start(2, &["--pull", &edge1_pull, "--pull-idle-timeout", "1"]);
    // Second level, by host name: the resolver thread and the tcUrl's host.
    let edge2_pull = format!("live=rtmp://localhost:{}/live", edge1.port());
    let edge2 = Server::start(2, &["--pull", &edge2_pull, "--pull-idle-timeout", "1"]);

    let mut publisher = publish_ffmpeg(&origin.url("live", "chain"), clip());
    sleep(Duration::from_millis(1500));
    assert!(
        stream(&edge1, "live/chain").is_none(),
        "nothing is pulled before a player asks"
    );
    let mut players = vec![
        play_ffmpeg(&edge2.url("live", "chain"), &edge2.dir().join("edge2.flv")),
        play_ffmpeg(&edge1.url("live", "chain"), &edge1.dir().join("edge1.flv")),
        play_ffmpeg(
            &origin.url("live", "chain"),
            &origin.dir().join("origin.flv"),
        ),
    ];
    // While it plays: edge1 pulls once from the origin for its own player
    // and edge2's pull; edge2 pulls once from edge1.
    wait_until(Duration::from_secs(5), "edge1 pulling", || {
        stream(&edge1, "live/chain").is_some_and(|s| {
            s["publisher"]["protocol"] == "pull" && s["relays"]["pull"]["state"] == "playing"
        })
    });
    wait_until(Duration::from_secs(5), "players counted", || {
        let o = stream(&origin, "live/chain").map_or(0, |s| total_players(&s));
        let e1 = stream(&edge1, "live/chain").map_or(0, |s| total_players(&s));
        o == 2 && e1 == 2
    });
    let e2 = stream(&edge2, "live/chain").expect("edge2 has the stream");
    assert_eq!(e2["publisher"]["protocol"], "pull");
    assert!(
        e2["relays"]["pull"]["url"]
            .as_str()
            .unwrap()
            .starts_with("rtmp://localhost:"),
        "{e2}"
    );

    let published_end = wait_publisher(&mut publisher);
    let ends = wait_all_or_stop(&mut players, PLAYER_END_GRACE);
    for (player, end) in players.iter().zip(&ends) {
        let join = compare(player, end, published_end);
        eprintln!("[relay] {}: {join:?}", player.output().unwrap().display());
    }
    // The end propagated down the chain and the pulls stopped.
    wait_until(Duration::from_secs(10), "pulls stopped", || {
        stream(&edge2, "live/chain").is_none() && stream(&edge1, "live/chain").is_none()
    });
}

#[test]
fn pull_starts_with_the_first_player_and_stops_after_the_last_leaves() {
    let _ = clip();
    let origin = Server::start(1, &[]);
    let pull = format!("live=rtmp://127.0.0.1:{}/live", origin.port());
    let edge = Server::start(2, &["--pull", &pull, "--pull-idle-timeout", "1"]);
    let mut publisher = publish_looping(&origin.url("live", "idle"));
    wait_until(Duration::from_secs(5), "origin live", || {
        stream(&origin, "live/idle").is_some_and(|s| s["live"] == true)
    });
    sleep(Duration::from_millis(500));
    assert_eq!(
        stream(&origin, "live/idle").map(|s| total_players(&s)),
        Some(0),
        "no pull before a player"
    );
    let (_, relays) = http(edge.http_addr(), "GET", "/api/relays", "");
    assert_eq!(
        relays["relays"][0]["tasks"],
        Value::Array(vec![]),
        "{relays}"
    );

    let mut players = vec![
        play_for(&edge.url("live", "idle"), 2, &edge.dir().join("a.flv")),
        play_for(&edge.http_url("live", "idle"), 2, &edge.dir().join("b.flv")),
    ];
    wait_until(Duration::from_secs(5), "one pull for two players", || {
        stream(&origin, "live/idle").is_some_and(|s| total_players(&s) == 1)
            && stream(&edge, "live/idle").is_some_and(|s| total_players(&s) == 2)
    });
    let (_, relays) = http(edge.http_addr(), "GET", "/api/relays", "");
    let tasks = relays["relays"][0]["tasks"].as_array().unwrap().clone();
    assert_eq!(tasks.len(), 1, "{relays}");
    assert_eq!(tasks[0]["state"], "playing", "{relays}");
    assert!(tasks[0]["bytes_in"].as_u64().unwrap() > 0, "{relays}");

    for end in wait_all_or_stop(&mut players, Duration::from_secs(15)) {
        assert!(end.status.success(), "{end:?}");
    }
    // Both players left: after the idle timeout the pull stops, while the
    // origin is still live.
    wait_until(Duration::from_secs(6), "pull stopped", || {
        stream(&origin, "live/idle").is_some_and(|s| total_players(&s) == 0 && s["live"] == true)
            && stream(&edge, "live/idle").is_none()
    });
    // Stopped for good (not failed and waiting to retry): the rule has no task.
    let (_, relays) = http(edge.http_addr(), "GET", "/api/relays", "");
    assert_eq!(
        relays["relays"][0]["tasks"],
        Value::Array(vec![]),
        "{relays}"
    );
    // A new player starts a new pull.
    let mut again = play_for(&edge.url("live", "idle"), 1, &edge.dir().join("c.flv"));
    let end = again.wait_or_stop(Duration::from_secs(15));
    assert!(end.status.success(), "{end:?}: {}", again.stderr());
    assert!(std::fs::metadata(edge.dir().join("c.flv")).unwrap().len() > 10_000);
    publisher.stop();
}

#[test]
fn unreachable_origin_gives_stream_not_found_or_waits() {
    // A port nothing listens on.
    let dead = free_port();
    let edge = Server::start(
        1,
        &["--pull", &format!("live=rtmp://127.0.0.1:{dead}/live")],
    );
    // ffmpeg reports the onStatus error and exits non-zero, promptly.
    let out = edge.dir().join("nf.flv");
    let mut player = play_ffmpeg(&edge.url("live", "gone"), &out);
    let end = player.wait_or_stop(Duration::from_secs(10));
    assert!(end.by_itself && !end.status.success(), "{end:?}");
    // ffmpeg prints the onStatus description of NetStream.Play.StreamNotFound
    // (a timeout or a bare close would read differently).
    assert!(
        player.stderr().contains("No such stream"),
        "{}\n{}",
        player.stderr(),
        edge.log()
    );
    // The failed pull was given up (its players told), not left retrying.
    let (_, relays) = http(edge.http_addr(), "GET", "/api/relays", "");
    assert_eq!(
        relays["relays"][0]["tasks"],
        Value::Array(vec![]),
        "{relays}"
    );
    // HTTP-FLV players of a pulled app wait for the pull; it fails: the
    // response ends.
    let (status, _) = {
        let mut s = TcpStream::connect(edge.http_addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
        write!(s, "GET /live/gone.flv HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut all = Vec::new();
        let r = s.read_to_end(&mut all);
        assert!(r.is_ok(), "the response ended: {r:?}");
        (
            String::from_utf8_lossy(&all[..12.min(all.len())]).to_string(),
            (),
        )
    };
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");

    // on_unavailable = wait: the player waits while the pull retries, and
    // gets the stream once the origin is up.
    let dir = TestDir::new();
    let origin_port = free_port();
    let conf = dir.join("edge.toml");
    std::fs::write(
        &conf,
        format!(
            "[[pull]]\napp = \"live\"\nurl = \"rtmp://127.0.0.1:{origin_port}/live\"\non_unavailable = \"wait\"\n"
        ),
    )
    .unwrap();
    let edge = Server::start(1, &["-c", conf.to_str().unwrap()]);
    let mut player = play_for(&edge.url("live", "later"), 2, &edge.dir().join("w.flv"));
    // The player is registered on the stream while its pull fails and
    // waits to retry.
    wait_until(
        Duration::from_secs(10),
        "the player waits for a retrying pull",
        || {
            stream(&edge, "live/later").is_some_and(|s| {
                s["live"] == false
                    && total_players(&s) == 1
                    && s["relays"]["pull"]["state"] == "waiting"
                    && s["relays"]["pull"]["last_error"].is_string()
            })
        },
    );
    assert!(player.is_running(), "the player waits: {}", player.stderr());
    let origin = Server::start_on(origin_port, 1, &[]);
    let mut publisher = publish_looping(&origin.url("live", "later"));
    let end = player.wait_or_stop(Duration::from_secs(25));
    assert!(end.status.success(), "{end:?}: {}", player.stderr());
    assert!(std::fs::metadata(edge.dir().join("w.flv")).unwrap().len() > 10_000);
    publisher.stop();
}

/// A CA and a certificate for `localhost` it signed, as PEM files.
fn make_ca_and_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sluice test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let (ca_path, cert_path, key_path) = (dir.join("ca.pem"), dir.join("t.crt"), dir.join("t.key"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}

#[test]
fn push_to_nginx_rtmp_and_to_sluice_over_rtmps() {
    let _ = (clip(), clip_packets());
    let dir = TestDir::new();
    let (ca, cert, key) = make_ca_and_cert(dir.path());
    // publish_notify: nginx tells its players when the push ends.
    let nginx = NginxRtmp::start_with("publish_notify on;");
    let rtmps_port = free_port();
    let target = Server::start(
        2,
        &[
            "--rtmps",
            &format!("127.0.0.1:{rtmps_port}"),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let origin = Server::start(
        2,
        &[
            "--relay-ca",
            ca.to_str().unwrap(),
            "--push",
            &format!("live=rtmp://127.0.0.1:{}/live", nginx.port()),
            // Verified against the test CA, by name (SNI: localhost), with a
            // stream key of the target's own.
            "--push",
            &format!("live/cam=rtmps://localhost:{rtmps_port}/ingest/KEY-0123456789"),
        ],
    );
    let mut publisher = publish_ffmpeg(&origin.url("live", "cam"), clip());
    wait_until(Duration::from_secs(8), "both pushes publishing", || {
        stream(&origin, "live/cam").is_some_and(|s| {
            let pushes = s["relays"]["push"].as_array().cloned().unwrap_or_default();
            pushes.len() == 2 && pushes.iter().all(|p| p["state"] == "publishing")
        })
    });
    // The Sluice target has the stream under its own key, over RTMPS.
    let pushed = stream(&target, "ingest/KEY-0123456789").expect("pushed stream");
    assert_eq!(pushed["live"], true, "{pushed}");
    assert_eq!(pushed["publisher"]["protocol"], "rtmps", "{pushed}");
    let s = stream(&origin, "live/cam").unwrap();
    let urls: Vec<&str> = s["relays"]["push"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["url"].as_str().unwrap())
        .collect();
    assert!(
        urls.iter().any(|u| u.ends_with("/ingest/KEY-…")),
        "the stream key is not shown: {urls:?}"
    );
    assert_eq!(total_players(&s), 0, "pushes are not players: {s}");
    let mut players = vec![
        play_ffmpeg(&nginx.url("live", "cam"), &dir.join("nginx.flv")),
        play_ffmpeg(
            &target.url("ingest", "KEY-0123456789"),
            &dir.join("sluice-rtmps.flv"),
        ),
        play_ffmpeg(&origin.url("live", "cam"), &dir.join("origin.flv")),
    ];
    let published_end = wait_publisher(&mut publisher);
    let ends = wait_all_or_stop(&mut players, PLAYER_END_GRACE);
    for (player, end) in players.iter().zip(&ends) {
        let join = compare(player, end, published_end);
        eprintln!("[relay] {}: {join:?}", player.output().unwrap().display());
    }
}

#[test]
fn a_target_that_restarts_is_pushed_again_from_a_keyframe() {
    let _ = (clip(), clip_packets());
    let mut a = Server::start(1, &[]);
    let b = Server::start(1, &[]);
    let origin = Server::start(
        2,
        &[
            "--push",
            &format!("live=rtmp://127.0.0.1:{}/live", a.port()),
            "--push",
            &format!("live=rtmp://127.0.0.1:{}/live", b.port()),
        ],
    );
    let mut publisher = publish_ffmpeg(&origin.url("live", "r"), clip());
    wait_until(Duration::from_secs(5), "pushing to a", || {
        stream(&a, "live/r").is_some_and(|s| s["live"] == true)
    });
    let a_port = format!(":{}/", a.port());
    let push_to_a = |origin: &Value| -> Value {
        origin["relays"]["push"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["url"].as_str().unwrap().contains(&a_port))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let before = push_to_a(&stream(&origin, "live/r").unwrap());
    assert_eq!(
        (&before["state"], before["reconnects"].as_u64()),
        (&Value::from("publishing"), Some(0)),
        "{before}"
    );
    let mut players = vec![
        play_ffmpeg(&b.url("live", "r"), &b.dir().join("b.flv")),
        play_ffmpeg(&origin.url("live", "r"), &origin.dir().join("o.flv")),
    ];
    sleep(Duration::from_millis(1500));
    // Target a dies mid-stream and comes back on the same port.
    a.restart_killed();
    let late = play_ffmpeg(&a.url("live", "r"), &a.dir().join("a.flv"));
    // The push that was publishing lost its target and published again.
    wait_until(Duration::from_secs(5), "push to a resumed", || {
        stream(&origin, "live/r").is_some_and(|s| {
            let p = push_to_a(&s);
            p["state"] == "publishing" && p["reconnects"].as_u64() >= Some(1)
        })
    });
    let published_end = wait_publisher(&mut publisher);
    players.push(late);
    let ends = wait_all_or_stop(&mut players, PLAYER_END_GRACE);
    // b and the origin's own player missed nothing; a's player starts on a
    // keyframe (with its sequence headers) and runs to the end.
    for (player, end) in players.iter().zip(&ends) {
        let join = compare(player, end, published_end);
        eprintln!("[relay] {}: {join:?}", player.output().unwrap().display());
    }
    let first = received_packets(&players[2], &ends[2], published_end);
    let all_video = clip_packets()
        .iter()
        .filter(|p| p.media == Media::Video)
        .count();
    let got_video = first.iter().filter(|p| p.media == Media::Video).count();
    assert!(
        got_video < all_video,
        "a's player joined after the restart, so it cannot have the whole clip"
    );
}

/// Accepts connections and never reads or answers: a blackholed target.
fn blackhole() -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    let t = std::thread::spawn(move || {
        let mut held = Vec::new();
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end && held.len() < 64 {
            if let Ok((s, _)) = l.accept() {
                held.push(s);
            }
            sleep(Duration::from_millis(50));
        }
    });
    (port, t)
}

#[test]
fn blackholed_and_stalled_targets_do_not_slow_local_players_or_grow_memory() {
    let (hole, _t) = blackhole();
    let stalled = Server::start(1, &[]);
    let origin = Server::start(
        1,
        &[
            "--push",
            &format!("live=rtmp://127.0.0.1:{hole}/live"),
            "--push",
            &format!("live=rtmp://127.0.0.1:{}/live", stalled.port()),
            // Small bounds, so the run shows them hold: each queue at most
            // 2 MB, the GOP cache 1 MB.
            "--player-queue-bytes",
            "2000000",
            "--gop-cache-bytes",
            "1000000",
            "--player-stall-timeout",
            "3",
            // The memory bound below is the relays' and the players'; HLS
            // keeps a window of its own (bounded and tested in tests/hls.rs).
            "--hls",
            "false",
        ],
    );
    let dir = TestDir::new();
    let json = dir.join("load.json");
    let origin_pid = origin.pid().unwrap();
    // Stop the second target once the push to it is publishing: its socket
    // fills, then the push's queue, which must skip, not grow.
    let stalled_pid = stalled.pid().unwrap();
    let stopper = std::thread::spawn({
        let api = stalled.http_addr();
        move || {
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                let (_, streams) = http(api, "GET", "/api/streams", "");
                if streams["streams"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|s| s["live"] == true))
                {
                    send_signal(stalled_pid, "STOP");
                    return true;
                }
                sleep(Duration::from_millis(50));
            }
            false
        }
    });
    // The push to the blackhole, as the origin's API shows it while the
    // stream runs: (its last error, the most reconnects seen, seen waiting).
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = std::thread::spawn({
        let (api, running) = (origin.http_addr(), running.clone());
        move || {
            let (mut error, mut reconnects, mut waited) = (None, 0, false);
            while running.load(std::sync::atomic::Ordering::SeqCst) {
                let (_, relays) = http(api, "GET", "/api/relays", "");
                let to_hole = relays["relays"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| {
                        r["url"]
                            .as_str()
                            .is_some_and(|u| u.contains(&format!(":{hole}/")))
                    });
                for task in to_hole.flat_map(|r| r["tasks"].as_array().cloned().unwrap_or_default())
                {
                    if let Some(e) = task["last_error"].as_str() {
                        error = Some(e.to_owned());
                    }
                    reconnects = reconnects.max(task["reconnects"].as_u64().unwrap_or(0));
                    waited |= task["state"] == "waiting";
                }
                sleep(Duration::from_millis(100));
            }
            (error, reconnects, waited)
        }
    });
    let out = Command::new(perf_tool::sluice_load())
        .args([
            "--addr",
            &format!("127.0.0.1:{}", origin.port()),
            "--players",
            "5",
            "--bitrate",
            // 20 Mbit/s: the 2 MB player queue is then 0.8 s of slack for
            // the local players (the generator shares two cores with the
            // servers and the other tests), while the stalled push's queue
            // still fills in under a second.
            "20000000",
            "--lead",
            "1",
            "--ramp",
            "0.5",
            "--settle",
            "0.5",
            "--duration",
            "12",
            "--drain",
            "1",
            "--server-pid",
            &origin_pid.to_string(),
            "--per-player",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run sluice-load");
    let stopped = stopper.join().unwrap();
    running.store(false, std::sync::atomic::Ordering::SeqCst);
    let (hole_error, hole_reconnects, hole_waited) = watcher.join().unwrap();
    send_signal(stalled_pid, "CONT");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sluice-load failed:\n{summary}");
    assert!(stopped, "the push to the second target never started");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let ctx = format!(
        "summary:\n{summary}\norigin log tail:\n{}",
        tail(&origin.log(), 40)
    );
    // Local players got every frame, on time.
    assert_eq!(r["counts"]["complete"], 5, "{ctx}");
    assert_eq!(r["frames"]["missing"], 0, "{ctx}");
    assert_eq!(r["frames"]["corrupt"], 0, "{ctx}");
    let p99 = r["latency_ms"]["p99"].as_f64().unwrap();
    assert!(
        p99 < 1000.0,
        "local players were held back: p99 {p99} ms\n{ctx}"
    );
    // 30 MB went through at 20 Mbit/s; the origin's memory stayed within
    // its bounds (two push queues of 2 MB, a 1 MB GOP cache, buffers).
    let rss = r["server"]["rss_peak_bytes"].as_u64().unwrap();
    eprintln!("[relay] origin peak RSS {} MB", rss / 1_000_000);
    assert!(rss < 60_000_000, "origin peak RSS {rss}\n{ctx}");
    // The stalled push skipped: frames were dropped, and not for the local
    // players, who missed none.
    let dropped = api::metric(
        &metrics_text(origin.http_addr()),
        "sluice_frames_dropped_total",
        &[],
    );
    assert!(
        dropped > Some(0.0),
        "the stalled push skipped no frame ({dropped:?})\n{ctx}"
    );
    assert!(
        hole_error.is_some() && (hole_waited || hole_reconnects >= 1),
        "the blackholed push timed out and retried: last error {hole_error:?}, \
         {hole_reconnects} reconnects, waited: {hole_waited}\n{ctx}"
    );
}

#[test]
fn relays_are_added_and_removed_through_the_api() {
    let _ = clip();
    let target = Server::start(1, &[]);
    let origin = Server::start(1, &[]);
    let mut publisher = publish_looping(&origin.url("live", "api"));
    wait_until(Duration::from_secs(5), "origin live", || {
        stream(&origin, "live/api").is_some()
    });
    let api = origin.http_addr();
    for bad in [
        r#"{"type":"push","url":"rtmp://h/app"}"#,
        r#"{"type":"push","app":"live","url":"http://h/app"}"#,
        r#"{"type":"shove","app":"live","url":"rtmp://h/app"}"#,
        r#"{"app":"live","url":"rtmp://h/app"}"#,
        r#"{"type":"pull","app":"live","url":"rtmp://h/app","static":true}"#,
        "not json",
    ] {
        let (status, body) = http(api, "POST", "/api/relays", bad);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    let body = format!(
        r#"{{"type":"push","stream":"live/api","url":"rtmp://127.0.0.1:{}/copy/api"}}"#,
        target.port()
    );
    let (status, created) = http(api, "POST", "/api/relays", &body);
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_u64().unwrap();
    // The stream is live: the push starts at once.
    wait_until(Duration::from_secs(5), "target receiving", || {
        stream(&target, "copy/api").is_some_and(|s| s["live"] == true)
    });
    let (_, relays) = http(api, "GET", "/api/relays", "");
    assert_eq!(relays["relays"][0]["id"], id, "{relays}");
    assert_eq!(relays["relays"][0]["source"], "api", "{relays}");
    assert_eq!(
        relays["relays"][0]["tasks"][0]["state"], "publishing",
        "{relays}"
    );
    let metrics = metrics_text(api);
    let up = metrics
        .lines()
        .find(|l| l.starts_with("sluice_relay_up{") && l.contains("stream=\"live/api\""))
        .unwrap_or_else(|| panic!("no relay in /metrics:\n{metrics}"));
    assert!(up.contains("type=\"push\"") && up.ends_with(" 1"), "{up}");
    let (status, _) = http(api, "DELETE", &format!("/api/relays/{id}"), "");
    assert_eq!(status, 200);
    wait_until(Duration::from_secs(5), "target no longer live", || {
        stream(&target, "copy/api").map_or(true, |s| s["live"] == false)
    });
    let (status, _) = http(api, "DELETE", &format!("/api/relays/{id}"), "");
    assert_eq!(status, 404);
    let (_, relays) = http(api, "GET", "/api/relays", "");
    assert_eq!(relays["relays"], Value::Array(vec![]), "{relays}");
    publisher.stop();
}

#[test]
fn static_pull_runs_without_players_and_insecure_accepts_a_self_signed_origin() {
    let _ = clip();
    let dir = TestDir::new();
    // A self-signed certificate: verification fails unless the rule says
    // insecure.
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("self.crt"), dir.join("self.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let rtmps_port = free_port();
    let origin = Server::start(
        1,
        &[
            "--rtmps",
            &format!("127.0.0.1:{rtmps_port}"),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let mut publisher = publish_looping(&origin.url("live", "s"));
    let rule = |insecure: bool| {
        let conf = dir.join(&format!("edge-{insecure}.toml"));
        std::fs::write(
            &conf,
            format!(
                "[[pull]]\nstream = \"live/s\"\nurl = \"rtmps://localhost:{rtmps_port}/live/s\"\nstatic = true\ninsecure = {insecure}\n"
            ),
        )
        .unwrap();
        conf
    };
    let conf = rule(true);
    let edge = Server::start(
        2,
        &["-c", conf.to_str().unwrap(), "--pull-idle-timeout", "1"],
    );
    let conf = rule(false);
    let strict = Server::start(1, &["-c", conf.to_str().unwrap()]);
    // No player anywhere: the static pull brings the stream in anyway.
    wait_until(Duration::from_secs(10), "statically pulled", || {
        stream(&edge, "live/s").is_some_and(|s| {
            s["live"] == true
                && s["publisher"]["protocol"] == "pull"
                && total_players(&s) == 0
                && s["relays"]["pull"]["state"] == "playing"
        })
    });
    assert_eq!(
        stream(&origin, "live/s").map(|s| total_players(&s)),
        Some(1)
    );
    // Verified against the roots, the self-signed origin is refused, and
    // retried with backoff.
    wait_until(
        Duration::from_secs(10),
        "strict edge refused the certificate",
        || {
            let (_, relays) = http(strict.http_addr(), "GET", "/api/relays", "");
            relays["relays"][0]["tasks"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("invalid peer certificate"))
        },
    );
    assert!(stream(&strict, "live/s").map_or(true, |s| s["live"] == false));
    // The pull stays with no player for longer than the idle timeout (1 s):
    // the same task, still playing, 2 s later.
    let task = |what: &str| {
        let (_, relays) = http(edge.http_addr(), "GET", "/api/relays", "");
        assert_eq!(relays["relays"][0]["static"], true, "{what}: {relays}");
        assert_eq!(
            relays["relays"][0]["tasks"][0]["state"], "playing",
            "{what}: {relays}"
        );
        relays["relays"][0]["tasks"][0]["id"].clone()
    };
    let first = task("pulled");
    sleep(Duration::from_secs(2));
    assert_eq!(
        task("2 s without a player"),
        first,
        "the static pull restarted"
    );
    // A player gets it at once from the edge's cache.
    let mut player = play_for(&edge.url("live", "s"), 1, &edge.dir().join("s.flv"));
    let end = player.wait_or_stop(Duration::from_secs(15));
    assert!(end.status.success(), "{end:?}: {}", player.stderr());
    publisher.stop();
}
