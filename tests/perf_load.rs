//! The load generator against the real `sluice` binary: 20 RTMP players for a
//! few seconds, then checks of its JSON record. No timing or performance
//! assertion: figures belong in perf/results/, not in `cargo test`.
//!
//! `sluice-load` belongs to the workspace member `sluice-perf` (perf/), so
//! this test builds it through cargo first ([`perf_tool::sluice_load`]); it
//! stays here, in the server package, so that `cargo test` and
//! `cargo test --test perf_load` at the top run it whatever the workspace's
//! default members are.

mod perf_tool;

use serde_json::Value;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_sluice() -> (Server, u16) {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "--rtmp",
            &format!("127.0.0.1:{port}"),
            "--no-http",
            "--workers",
            "1",
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sluice did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, port)
}

#[test]
fn twenty_players_get_every_frame_with_latency_and_cpu_recorded() {
    let (mut server, port) = start_sluice();
    let dir = std::env::temp_dir().join(format!("sluice-perf-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("run.json");
    let out = spawn_load(
        port,
        server.0.id(),
        20,
        &json,
        &["--label", "sluice", "--per-player"],
    )
    .wait_with_output()
    .expect("run sluice-load");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sluice-load failed:\n{summary}");
    let text = std::fs::read_to_string(&json).expect("JSON written");
    let _ = std::fs::remove_dir_all(&dir);
    let r: Value = serde_json::from_str(&text).expect("valid JSON");

    let mut server_log = String::new();
    let _ = server.0.kill();
    if let Some(mut e) = server.0.stderr.take() {
        let _ = e.read_to_string(&mut server_log);
    }
    let ctx = format!("summary:\n{summary}\nserver log:\n{server_log}");

    assert_eq!(r["errors"], Value::Array(vec![]), "{ctx}");
    assert_eq!(r["counts"]["started"], 20, "{ctx}");
    assert_eq!(r["counts"]["complete"], 20, "{ctx}");
    assert_eq!(r["frames"]["missing"], 0, "{ctx}");
    assert_eq!(r["frames"]["out_of_order"], 0, "{ctx}");
    assert_eq!(r["frames"]["corrupt"], 0, "{ctx}");
    let last_video = r["publisher"]["video_frames"].as_u64().unwrap() - 1;
    let last_audio = r["publisher"]["audio_frames"].as_u64().unwrap() - 1;
    let players = r["per_player"].as_array().expect("per-player records");
    assert_eq!(players.len(), 20);
    for p in players {
        assert_eq!(p["ok"], true, "player {p}\n{ctx}");
        assert_eq!(
            p["headers"], true,
            "metadata and both sequence headers: {p}"
        );
        assert_eq!(p["missing"], 0, "{p}");
        // Every frame from the first keyframe through the publisher's last.
        assert_eq!(p["last_video_seq"].as_u64(), Some(last_video), "{p}");
        assert_eq!(p["last_audio_seq"].as_u64(), Some(last_audio), "{p}");
        assert!(p["join_ms"].is_number(), "{p}");
    }
    // Latency was measured (a count, and percentiles that are numbers).
    assert!(r["latency_ms"]["count"].as_u64().unwrap() > 0, "{ctx}");
    assert!(r["latency_ms"]["p99"].is_number());
    // CPU was recorded for the server and for the generator itself.
    assert!(r["server"]["cpu_seconds"].as_f64().is_some(), "{ctx}");
    let (user, cpu) = (
        r["server"]["user_seconds"].as_f64(),
        r["server"]["cpu_seconds"].as_f64(),
    );
    assert!(
        matches!((user, cpu), (Some(u), Some(c)) if u <= c),
        "the server's own-code time is part of its CPU time: {ctx}"
    );
    assert!(r["generator"]["cpu_seconds"].as_f64().is_some(), "{ctx}");
    assert!(r["server"]["rss_peak_bytes"].as_u64().is_some(), "{ctx}");
    assert!(r["window"]["bytes_delivered"].as_u64().unwrap() > 0);
}

/// `sluice-limit`'s record for `args` (20 sockets, 2 s measured).
fn limit(args: &[&str]) -> Value {
    let out = Command::new(perf_tool::sluice_limit())
        .args([
            "--players",
            "20",
            "--warmup",
            "0.5",
            "--duration",
            "2",
            "--json",
            "-",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run sluice-limit");
    assert!(
        out.status.success(),
        "sluice-limit {args:?}: {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("sluice-limit's JSON")
}

#[test]
fn limit_holds_audio_for_the_next_video_frame_and_batches_frames() {
    // The generated stream: 30 video frames and about 43 AAC frames a
    // second. One write per frame; with --merge-audio, one per video frame
    // (audio rides with it); with --batch 15, one per 15 frames. Counts of
    // calls, not timings: the figures are perf/'s.
    let per_socket_second = |r: &Value| {
        let calls = r["syscalls"].as_f64().unwrap();
        calls / 20.0 / r["seconds"].as_f64().unwrap()
    };
    let each = limit(&["--mode", "sendmsg"]);
    let merged = limit(&["--mode", "sendmsg", "--merge-audio"]);
    let batched = limit(&["--mode", "sendmsg", "--batch", "15"]);
    for r in [&each, &merged, &batched] {
        assert_eq!(r["dead_sockets"], 0, "{r}");
        assert!(r["bytes"].as_u64() > Some(0), "{r}");
    }
    let (e, m, b) = (
        per_socket_second(&each),
        per_socket_second(&merged),
        per_socket_second(&batched),
    );
    assert!((65.0..85.0).contains(&e), "one write per frame: {e:.1}/s");
    assert!(
        (27.0..33.0).contains(&m),
        "one write per video frame: {m:.1}/s"
    );
    assert!((3.5..6.5).contains(&b), "one write per 15 frames: {b:.1}/s");
    assert_eq!(merged["merge_audio"], true);
    // Per-socket state touched around the same writes: the same calls.
    let touched = limit(&["--mode", "sendmsg", "--merge-audio", "--touch-lines", "16"]);
    assert_eq!(touched["touch_lines"], 16, "{touched}");
    assert_eq!(touched["dead_sockets"], 0, "{touched}");
    let t = per_socket_second(&touched);
    assert!((27.0..33.0).contains(&t), "touched: {t:.1}/s");
    // Readers that answer the first bytes, as RTMP players do: the same
    // calls.
    let replying = limit(&["--mode", "sendmsg", "--merge-audio", "--player-replies"]);
    assert_eq!(replying["player_replies"], true, "{replying}");
    assert_eq!(replying["replies_received"], 20, "{replying}");
    assert_eq!(merged["replies_received"], 0, "{merged}");
    assert_eq!(replying["dead_sockets"], 0, "{replying}");
    let r = per_socket_second(&replying);
    assert!((27.0..33.0).contains(&r), "replying: {r:.1}/s");
    // Its time in its own code is a share of its time (none when 2 s of
    // 20 sockets took less than a clock tick).
    for r in [&each, &touched] {
        let share = r["user_share"].as_f64();
        if r["cpu_seconds"].as_f64() > Some(0.0) {
            assert!(share.is_some_and(|s| (0.0..=1.0).contains(&s)), "{r}");
        } else {
            assert!(share.is_none(), "{r}");
        }
    }
    // frame mode writes one buffer per call: batching it is refused.
    let refused = Command::new(perf_tool::sluice_limit())
        .args(["--mode", "frame", "--merge-audio"])
        .stderr(Stdio::null())
        .status()
        .expect("run sluice-limit");
    assert_eq!(refused.code(), Some(2));
}

/// Starts `sluice-load` with `players` players against `port` for a 2 s
/// window, writing its record to `json`.
fn spawn_load(
    port: u16,
    server: u32,
    players: usize,
    json: &std::path::Path,
    extra: &[&str],
) -> Child {
    Command::new(perf_tool::sluice_load())
        .args([
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--players",
            &players.to_string(),
            "--lead",
            "0.5",
            "--ramp",
            "0.5",
            "--settle",
            "0.5",
            "--duration",
            "2",
            "--drain",
            "1",
            "--server-pid",
            &server.to_string(),
            "--json",
        ])
        .arg(json)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run sluice-load")
}

#[test]
fn a_generator_without_a_publisher_checks_the_shape_rate_of_another_ones_stream() {
    // perf/multicore splits one load over several processes: the first
    // publishes, the others only play (--no-publish) and must still tell a
    // held run (every frame, at the publish rate) from one that is not.
    let (server, port) = start_sluice();
    let dir = std::env::temp_dir().join(format!("sluice-perf-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (pub_json, play_json) = (dir.join("pub.json"), dir.join("play.json"));
    let publisher = spawn_load(port, server.0.id(), 10, &pub_json, &["-q"]);
    let player = spawn_load(port, server.0.id(), 10, &play_json, &["-q", "--no-publish"]);
    for (what, child) in [("publishing", publisher), ("playing", player)] {
        let out = child.wait_with_output().expect("sluice-load");
        assert!(
            out.status.success(),
            "{what} sluice-load failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let read = |p: &std::path::Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).expect("JSON written")).unwrap()
    };
    let (p, q) = (read(&pub_json), read(&play_json));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(p["held"], true, "{p}");
    assert_eq!(
        q["publisher"]["video_frames"], 0,
        "it published nothing: {q}"
    );
    assert_eq!(q["counts"]["complete"], 10, "{q}");
    assert_eq!(q["frames"]["missing"], 0, "{q}");
    // Its rate is checked against the shape's 30 frames a second.
    let ratio = q["window"]["min_rate_ratio"]
        .as_f64()
        .unwrap_or_else(|| panic!("no rate: {q}"));
    assert!((0.95..1.05).contains(&ratio), "{ratio}: {q}");
    assert_eq!(q["held"], true, "{q}");
}
