//! `sluice-load --kind ll-hls` against the real `sluice` binary: ten LL-HLS
//! viewers (blocking playlist reloads and parts, one connection per
//! rendition) for a few seconds, then checks of its JSON record: every
//! viewer got the video's and the audio's parts in sequence (the muxed
//! rendition's, or with `--hls-mux-audio false` the video and audio
//! renditions'), every part whole and every sample's stamp and fill
//! intact. No timing or performance
//! assertion: figures belong in perf/results/ (perf/hls), not in
//! `cargo test`.

mod perf_tool;

use serde_json::Value;
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

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "sluice did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ten_ll_hls_viewers_get_every_part_of_the_muxed_rendition_intact() {
    ten_viewers(true);
}

#[test]
fn ten_ll_hls_viewers_get_every_part_of_both_renditions_intact() {
    ten_viewers(false);
}

fn ten_viewers(muxed: bool) {
    let (rtmp, http) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "--rtmp",
            &format!("127.0.0.1:{rtmp}"),
            "--http",
            &format!("127.0.0.1:{http}"),
            "--workers",
            "1",
            "--hls-mux-audio",
            if muxed { "true" } else { "false" },
        ])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sluice");
    let server = Server(child);
    wait_listening(rtmp);
    wait_listening(http);
    let dir = std::env::temp_dir().join(format!(
        "sluice-perf-hls-{}-{}",
        std::process::id(),
        if muxed { "muxed" } else { "tracks" }
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("run.json");
    let out = Command::new(perf_tool::sluice_load())
        .args([
            "--addr",
            &format!("127.0.0.1:{rtmp}"),
            "--http",
            &format!("127.0.0.1:{http}"),
            "--kind",
            "ll-hls",
            "--hls-metrics",
            "--players",
            "10",
            "--lead",
            "1",
            "--ramp",
            "0.5",
            "--settle",
            "1.5",
            "--duration",
            "3",
            "--drain",
            "0.5",
            "--server-pid",
            &server.0.id().to_string(),
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run sluice-load");
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sluice-load failed:\n{summary}");
    let text = std::fs::read_to_string(&json).expect("JSON written");
    let _ = std::fs::remove_dir_all(&dir);
    let r: Value = serde_json::from_str(&text).expect("valid JSON");
    let ctx = format!("summary:\n{summary}");

    assert_eq!(r["kind"], "ll-hls", "{ctx}");
    assert_eq!(r["errors"], Value::Array(vec![]), "{ctx}");
    let h = &r["hls"];
    assert_eq!(h["viewers"], 10, "{ctx}");
    // Video and audio in one muxed rendition, or each on a connection of
    // its own.
    let renditions = if muxed { 1 } else { 2 };
    assert_eq!(h["renditions_per_viewer"], renditions, "{ctx}");
    assert_eq!(h["connections"], 10 * renditions, "{ctx}");
    let c = &h["counts"];
    assert_eq!(c["complete"], 10, "{ctx}");
    for zero in [
        "connect_errors",
        "disconnected",
        "below_rate",
        "missed_parts",
        "corrupt_parts",
        "frames_missing",
        "frames_repeated",
        "independent_wrong",
        "blocking_timeouts",
    ] {
        assert_eq!(c[zero], 0, "{zero}: {ctx}");
    }
    // At about three parts a second per rendition, 10 or 20 connections
    // over the run fetched well over 50 or 100 parts.
    assert!(c["parts"].as_u64().unwrap() > 50 * renditions, "{ctx}");
    assert!(r["frames"]["video"].as_u64().unwrap() > 0, "{ctx}");
    assert!(r["frames"]["audio"].as_u64().unwrap() > 0, "{ctx}");
    assert_eq!(r["held"], true, "{ctx}");
    // Blocking reloads were made and answered, and measured.
    let w = &h["window"];
    assert!(w["blocking_reloads_per_s"].as_f64().unwrap() > 0.0, "{ctx}");
    assert!(w["parts_per_s"].as_f64().unwrap() > 0.0, "{ctx}");
    for track in ["video", "audio"] {
        for what in ["ready", "received", "oldest"] {
            let l = &h["latency_ms"][track][what];
            assert!(l["count"].as_u64().unwrap() > 0, "{track} {what}: {ctx}");
            assert!(l["p99"].is_number(), "{track} {what}: {ctx}");
        }
    }
    // The server's parked requests were read from /metrics.
    assert!(h["parked"]["samples"].as_u64().unwrap() > 0, "{ctx}");
    assert!(r["server"]["cpu_seconds"].as_f64().is_some(), "{ctx}");
    assert!(
        r["window"]["bytes_delivered"].as_u64().unwrap() > 0,
        "{ctx}"
    );
}
