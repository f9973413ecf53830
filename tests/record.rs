//! Recording end to end: the `sluice` binary records what ffmpeg publishes,
//! and independent readers check the files (docs/recording.md).
//!
//! * Identity: every packet of the recording (fragmented MP4, from the
//!   stream's HLS packager and from the recording's own; FLV) is the
//!   published one, from the first keyframe on: same bytes (MD5), size,
//!   keyframe flag and timestamps relative to that keyframe (ffprobe).
//! * A server killed with SIGKILL leaves an MP4 that ffmpeg decodes without
//!   an error, up to within two seconds of the kill.
//! * FLV: ffprobe reads the keyframe index (each entry lands on a video
//!   keyframe tag at its time) and a seek lands on a keyframe.
//! * The API starts and stops a recording; rotation by duration makes
//!   several files that each play and together hold the stream;
//!   `on_record_done` is told each file's path.
//! * Faults: a full disk (a small tmpfs mounted by the test) and a
//!   read-only directory stop the recording with a clear error in the log
//!   and the API, while an RTMP player alongside gets every frame; a disk
//!   slower than the stream (the test-only delay `SLUICE_TEST_DISK_DELAY_MS`)
//!   makes the recording drop to keyframes, with the bytes waiting for the
//!   disk bounded, and the player is unaffected.
//! * Enhanced RTMP: HEVC published by ffmpeg 9 is recorded to both formats
//!   and read back by ffmpeg 9, packet for packet.
//!
//! The tools are required (`require_tool` fails the test with the command
//! that installs them); mounting the tmpfs needs root, and its failure fails
//! the test with the reason.

mod common;

use common::api::{self, metric, request, wait_for, wait_until};
use common::callbacks::Callbacks;
use common::ffmpeg9::strings;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a finished recording may take to be listed after its stream
/// ended (the disk threads close it).
const LISTED: Duration = Duration::from_secs(20);

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// Every audio/video packet of `file` (ffprobe), timestamps in ms whatever
/// the container's time base, so MP4 and FLV compare with the FLV clip.
fn packets_ms(file: &Path) -> Vec<Packet> {
    let args = strings(&[
        "-v",
        "error",
        "-show_entries",
        "packet=codec_type,pts_time,dts_time,flags,size,data_hash",
        "-show_data_hash",
        "MD5",
        "-of",
        "csv=nokey=0",
        &p(file),
    ]);
    let (status, out, err) = run_tool(&require_tool("ffprobe"), &args, Duration::from_secs(60));
    assert!(status.success(), "ffprobe {}: {err}", file.display());
    let mut packets = Vec::new();
    for line in out.lines().filter(|l| l.starts_with("packet,")) {
        let kv: BTreeMap<&str, &str> = line.split(',').filter_map(|f| f.split_once('=')).collect();
        let media = match kv.get("codec_type") {
            Some(&"video") => Media::Video,
            Some(&"audio") => Media::Audio,
            _ => continue,
        };
        let ms = |k: &str| {
            kv.get(k)
                .and_then(|v| v.parse::<f64>().ok())
                .map(|t| (t * 1000.0).round() as i64)
        };
        let dts = ms("dts_time").or(ms("pts_time")).expect("a timestamp");
        packets.push(Packet {
            media,
            dts,
            pts: ms("pts_time").unwrap_or(dts),
            keyframe: kv.get("flags").is_some_and(|f| f.starts_with('K')),
            size: kv["size"].parse().unwrap(),
            hash: kv["data_hash"].to_string(),
        });
    }
    packets
}

/// The finished recordings of `stream` `/api/recordings` lists.
fn finished(server: &Server, stream: &str) -> Vec<Value> {
    api::get_json(server.http_addr(), "/api/recordings")["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["stream"] == stream)
        .cloned()
        .collect()
}

/// Waits until `stream` has no recording running and at least `n` files
/// listed; returns them, oldest first.
fn wait_finished(server: &Server, stream: &str, n: usize) -> Vec<Value> {
    wait_for(
        LISTED,
        &format!("{n} recordings of {stream} listed"),
        || {
            let active = api::get_json(server.http_addr(), "/api/recordings")["active"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["stream"] == stream);
            let list = finished(server, stream);
            (!active && list.len() >= n).then_some(list)
        },
    )
}

fn path_of(rec: &Value) -> PathBuf {
    PathBuf::from(rec["path"].as_str().expect("a path"))
}

/// `/api/streams/KEY`'s `recording` once it satisfies `f`.
fn wait_recording(server: &Server, key: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(Duration::from_secs(15), what, || {
        server
            .stream(key)
            .map(|s| s["recording"].clone())
            .filter(|r| !r.is_null() && f(r))
    })
}

/// Publishes the clip to `key` on `server` and waits for the publisher.
fn publish_clip(server: &Server, app: &str, name: &str) -> Peer {
    let _ = (clip(), clip_packets());
    publish_ffmpeg(&server.url(app, name), clip())
}

/// Publishes the whole clip with `args` and returns its one finished
/// recording, checked: listed with the right format, its bytes the file's,
/// decoded without an error, and every packet the published one from the
/// first keyframe on.
fn record_whole_clip(args: &[&str], format: &str) -> (Server, PathBuf) {
    let server = Server::start(2, args);
    let mut publisher = publish_clip(&server, "live", "cam");
    server.wait_live("live/cam");
    let rec = wait_recording(&server, "live/cam", "a recording in progress", |r| {
        r["state"] == "recording" && r["bytes"].as_u64() > Some(0)
    });
    assert_eq!(rec["format"], format, "{rec}");
    wait_publisher(&mut publisher);
    let list = wait_finished(&server, "live/cam", 1);
    assert_eq!(list.len(), 1, "one file: {list:?}");
    let r = &list[0];
    let path = path_of(r);
    assert_eq!(r["format"], format);
    assert!(r["error"].is_null(), "{r}");
    assert_eq!(
        r["bytes"].as_u64(),
        Some(fs::metadata(&path).unwrap().len()),
        "{r}"
    );
    let duration = r["duration"].as_f64().unwrap();
    assert!(
        (CLIP_SECS as f64 - 0.5..=CLIP_SECS as f64 + 0.1).contains(&duration),
        "duration {duration}"
    );
    assert!(
        p(&path).ends_with(&format!(".{format}")),
        "{}",
        path.display()
    );
    assert_decodes_cleanly(&path);
    let got = packets_ms(&path);
    let join = assert_same_from_first_keyframe(clip_packets(), &got);
    assert_eq!(join.video_from, 0, "from the stream's first keyframe");
    assert_eq!(join.missing_at_end, 0);
    eprintln!("[record] {}: {join:?}", path.display());
    (server, path)
}

#[test]
fn mp4_from_the_hls_packager_holds_every_published_packet() {
    let dir = TestDir::new();
    let (server, _) =
        record_whole_clip(&["--record", "all", "--record-dir", &p(dir.path())], "mp4");
    let m = server.metrics();
    assert_eq!(metric(&m, "sluice_record_files_total", &[]), Some(1.0));
    assert!(metric(&m, "sluice_record_bytes_total", &[]) > Some(1e6));
    assert_eq!(metric(&m, "sluice_record_dropped_total", &[]), Some(0.0));
}

#[test]
fn mp4_without_hls_holds_every_published_packet() {
    let dir = TestDir::new();
    record_whole_clip(
        &[
            "--hls",
            "false",
            "--record",
            "all",
            "--record-dir",
            &p(dir.path()),
        ],
        "mp4",
    );
}

/// The keyframe index ffprobe reads: (file position, time in ms).
fn flv_index(file: &Path) -> Vec<(u64, u64)> {
    let args = strings(&["-v", "trace", "-i", &p(file)]);
    let (_, _, err) = run_tool(&require_tool("ffprobe"), &args, Duration::from_secs(30));
    err.lines()
        .filter_map(|l| {
            let rest = l.split("keyframe filepositions = ").nth(1)?;
            let (pos, time) = rest.split_once(" times = ")?;
            Some((pos.trim().parse().ok()?, time.trim().parse().ok()?))
        })
        .collect()
}

#[test]
fn flv_holds_every_published_packet_and_seeks_with_its_keyframe_index() {
    let dir = TestDir::new();
    let (_server, path) = record_whole_clip(
        &[
            "--record",
            "all",
            "--record-format",
            "flv",
            "--record-dir",
            &p(dir.path()),
        ],
        "flv",
    );
    // The index: one entry per keyframe (a 2 s GOP), each at a video
    // keyframe tag whose timestamp is the entry's time.
    let index = flv_index(&path);
    assert_eq!(
        index.len() as u64,
        CLIP_SECS * CLIP_FPS / CLIP_GOP,
        "ffprobe read no (or a wrong) keyframe index: {index:?}"
    );
    let data = fs::read(&path).unwrap();
    for &(pos, ms) in &index {
        let at = pos as usize;
        let tag = &data[at..at + 12];
        let ts = u64::from(u32::from_be_bytes([tag[7], tag[4], tag[5], tag[6]]));
        assert_eq!(tag[0] & 0x1f, 9, "entry {pos}: not a video tag");
        assert_eq!(tag[11] >> 4, 1, "entry {pos}: not a keyframe");
        assert_eq!(ts, ms, "entry {pos}: the tag's time");
    }
    // Its duration, from the final onMetaData.
    let args = strings(&["-v", "error", "-show_format", &p(&path)]);
    let (_, out, _) = run_tool(&require_tool("ffprobe"), &args, Duration::from_secs(30));
    let duration: f64 = out
        .lines()
        .find_map(|l| l.strip_prefix("duration="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duration: {out}"));
    assert!((7.5..=8.1).contains(&duration), "duration {duration}");
    assert!(out.contains("TAG:hasKeyframes=true"), "{out}");
    // A seek into the middle lands on an indexed keyframe.
    let args = strings(&[
        "-v",
        "error",
        "-read_intervals",
        "5%+#1",
        "-select_streams",
        "v:0",
        "-show_entries",
        "packet=pts_time,flags",
        "-of",
        "csv=p=0",
        &p(&path),
    ]);
    let (status, out, err) = run_tool(&require_tool("ffprobe"), &args, Duration::from_secs(30));
    assert!(status.success(), "{err}");
    let (time, flags) = out
        .trim()
        .split_once(',')
        .expect("one packet after the seek");
    assert!(flags.starts_with('K'), "the seek landed on {out:?}");
    let ms = (time.parse::<f64>().unwrap() * 1000.0).round() as u64;
    assert!(
        index.iter().any(|&(_, t)| t == ms) && ms > 0,
        "landed at {ms} ms, not an indexed keyframe after the start: {index:?}"
    );
}

#[test]
fn sigkill_mid_stream_leaves_an_mp4_that_plays_to_within_two_seconds() {
    let dir = TestDir::new();
    // Without HLS the recording's own packager cuts one-second fragments:
    // the most a kill can lose.
    let mut server = Server::start(
        1,
        &[
            "--hls",
            "false",
            "--record",
            "all",
            "--record-dir",
            &p(dir.path()),
        ],
    );
    let _publisher = publish_clip(&server, "live", "cam");
    server.wait_live("live/cam");
    let live = Instant::now();
    sleep(Duration::from_millis(5500));
    let pid = server.pid().expect("running");
    assert!(send_signal(pid, "KILL"), "kill -9 {pid}");
    // Media published by then: the time since the stream went live, and
    // the moment it took the API to say so (at most half a second).
    let published_ms = live.elapsed().as_millis() as i64 + 500;
    let (_, took) = server.terminate(Duration::from_secs(5));
    eprintln!("[record] killed; reaped in {took:?}");
    let files: Vec<PathBuf> = walk(dir.path())
        .into_iter()
        .filter(|f| p(f).ends_with(".mp4"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_decodes_cleanly(&files[0]);
    let got = packets_ms(&files[0]);
    let join =
        assert_same_from_first_keyframe_with_tail_slack(clip_packets(), &got, clip_packets().len());
    let video: Vec<&Packet> = got.iter().filter(|p| p.media == Media::Video).collect();
    let recorded_ms = video.last().unwrap().dts - video[0].dts;
    eprintln!(
        "[record] {published_ms} ms published at the kill, {recorded_ms} ms recorded: {join:?}"
    );
    assert!(
        recorded_ms >= published_ms - 2000,
        "only {recorded_ms} ms recorded of {published_ms} ms published at the kill"
    );
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_api_starts_and_stops_a_recording() {
    let dir = TestDir::new();
    let config = dir.join("sluice.toml");
    fs::write(
        &config,
        format!(
            "record = \"manual\"\nrecord_dir = {:?}\n[app.quiet.record]\nmode = \"off\"\n",
            p(dir.path())
        ),
    )
    .unwrap();
    let server = Server::start(2, &["-c", &p(&config)]);
    let api = server.http_addr();
    let mut publisher = publish_clip(&server, "live", "cam");
    let mut quiet = publish_clip(&server, "quiet", "cam");
    server.wait_live("live/cam");
    server.wait_live("quiet/cam");
    assert!(
        server.stream("live/cam").unwrap()["recording"].is_null(),
        "manual: nothing records until asked"
    );
    let (status, v) = request(api, "POST", "/api/streams/quiet/cam/record", "");
    assert_eq!(status, 403, "{v}");
    let (status, v) = request(api, "POST", "/api/streams/live/none/record", "");
    assert_eq!(status, 404, "{v}");
    let (status, v) = request(
        api,
        "POST",
        "/api/streams/live/cam/record",
        "{\"format\":\"avi\"}",
    );
    assert_eq!(status, 400, "{v}");
    sleep(Duration::from_millis(1500));
    let (status, v) = request(
        api,
        "POST",
        "/api/streams/live/cam/record",
        "{\"format\":\"flv\"}",
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["format"], "flv");
    assert_eq!(v["manual"], true);
    let (status, v) = request(api, "POST", "/api/streams/live/cam/record", "");
    assert_eq!(status, 409, "{v}");
    let rec = wait_recording(&server, "live/cam", "bytes written", |r| {
        r["bytes"].as_u64() > Some(100_000) && r["duration"].as_f64() > Some(1.0)
    });
    assert!(rec["path"].as_str().unwrap().ends_with(".flv"), "{rec}");
    sleep(Duration::from_millis(1500));
    let (status, v) = request(api, "DELETE", "/api/streams/live/cam/record", "");
    assert_eq!(status, 200, "{v}");
    let (status, v) = request(api, "DELETE", "/api/streams/live/cam/record", "");
    assert_eq!(status, 404, "{v}");
    let list = wait_finished(&server, "live/cam", 1);
    let r = &list[0];
    let duration = r["duration"].as_f64().unwrap();
    assert!((2.0..6.5).contains(&duration), "{r}");
    // The stream goes on unrecorded; the file plays and is the stream
    // from a keyframe on, for as long as it recorded.
    assert!(server.stream("live/cam").unwrap()["recording"].is_null());
    let path = path_of(r);
    assert_decodes_cleanly(&path);
    let got = packets_ms(&path);
    let join =
        assert_same_from_first_keyframe_with_tail_slack(clip_packets(), &got, clip_packets().len());
    assert!(join.video_from > 0, "started mid-stream: {join:?}");
    assert!(!flv_index(&path).is_empty(), "the index is written on stop");
    wait_publisher(&mut publisher);
    wait_publisher(&mut quiet);
    assert!(finished(&server, "quiet/cam").is_empty());
}

/// `%XX` and `+` decoded.
fn form_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= b.len() => {
                out.push(u8::from_str_radix(&v[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The packets of `files` one after the other, of one kind.
fn concatenated(files: &[PathBuf], media: Media) -> Vec<Packet> {
    files
        .iter()
        .flat_map(|f| packets_ms(f))
        .filter(|p| p.media == media)
        .collect()
}

/// Rotation by size: a file ends at the first keyframe after it reached
/// `rotate_bytes` (MP4 and FLV alike), so every file but the last holds at
/// least that many bytes, each starts on a keyframe and plays, and
/// together they hold every video packet published from the first
/// keyframe.
#[test]
fn rotation_by_size_ends_files_at_the_keyframe_after_the_size() {
    const ROTATE: u64 = 600_000; // the clip is about 430 KB a GOP
    let dir = TestDir::new();
    let config = dir.join("sluice.toml");
    fs::write(
        &config,
        format!(
            "record_dir = {:?}\n\
             [app.a.record]\nmode = \"all\"\nformat = \"mp4\"\nrotate_bytes = {ROTATE}\n\
             [app.b.record]\nmode = \"all\"\nformat = \"flv\"\nrotate_bytes = {ROTATE}\n",
            p(dir.path())
        ),
    )
    .unwrap();
    let server = Server::start(2, &["-c", &p(&config)]);
    let mut a = publish_clip(&server, "a", "cam");
    let mut b = publish_clip(&server, "b", "cam");
    wait_publisher(&mut a);
    wait_publisher(&mut b);
    let clip = clip_packets();
    let key_at = clip
        .iter()
        .find(|p| p.media == Media::Video && p.keyframe)
        .unwrap()
        .dts;
    let want_video: Vec<String> = clip
        .iter()
        .filter(|p| p.media == Media::Video && p.dts >= key_at)
        .map(|p| p.hash.clone())
        .collect();
    for (key, ext) in [("a/cam", "mp4"), ("b/cam", "flv")] {
        let list = wait_finished(&server, key, 2);
        let files: Vec<PathBuf> = list.iter().map(path_of).collect();
        assert!(files.len() >= 2, "{key}: {list:?}");
        for (n, f) in files.iter().enumerate() {
            assert!(p(f).ends_with(ext), "{}", f.display());
            let len = fs::metadata(f).unwrap().len();
            if n + 1 < files.len() {
                assert!(len >= ROTATE, "{}: {len} bytes", f.display());
            }
            assert_decodes_cleanly(f);
            let first = packets_ms(f)
                .into_iter()
                .find(|p| p.media == Media::Video)
                .unwrap();
            assert!(first.keyframe, "{}: starts with {first}", f.display());
        }
        let got: Vec<String> = concatenated(&files, Media::Video)
            .iter()
            .map(|p| p.hash.clone())
            .collect();
        assert_eq!(got, want_video, "{key}: video across the files");
    }
}

#[test]
fn rotation_by_duration_makes_files_that_each_play_and_on_record_done_gets_each_path() {
    let dir = TestDir::new();
    let hooks = Callbacks::start();
    let config = dir.join("sluice.toml");
    let url = format!("http://{}/done", hooks.addr);
    fs::write(
        &config,
        format!(
            "record_dir = {:?}\n\
             [app.a.record]\nmode = \"all\"\nformat = \"mp4\"\nrotate_secs = 2\n\
             [app.a.hooks]\non_record_done = {url:?}\n\
             [app.b.record]\nmode = \"all\"\nformat = \"flv\"\nrotate_secs = 2\n\
             [app.b.hooks]\non_record_done = {url:?}\n",
            p(dir.path())
        ),
    )
    .unwrap();
    let server = Server::start(2, &["-c", &p(&config)]);
    let mut a = publish_clip(&server, "a", "cam");
    let mut b = publish_clip(&server, "b", "cam");
    wait_publisher(&mut a);
    wait_publisher(&mut b);
    // Keyframes every 2 s: a file per GOP.
    let gops = (CLIP_SECS * CLIP_FPS / CLIP_GOP) as usize;
    for (key, ext) in [("a/cam", "mp4"), ("b/cam", "flv")] {
        let list = wait_finished(&server, key, gops);
        assert_eq!(list.len(), gops, "{key}: {list:?}");
        let files: Vec<PathBuf> = list.iter().map(path_of).collect();
        for (f, r) in files.iter().zip(&list) {
            assert!(p(f).ends_with(ext), "{}", f.display());
            let d = r["duration"].as_f64().unwrap();
            assert!((1.5..=2.1).contains(&d), "{}: {d} s", f.display());
            assert_decodes_cleanly(f);
            let first = packets_ms(f)
                .into_iter()
                .find(|p| p.media == Media::Video)
                .unwrap();
            assert!(first.keyframe, "{}: starts with {first}", f.display());
        }
        // Together: every video packet from the first keyframe, and a
        // contiguous run of the audio from within 200 ms of it to the end.
        let clip = clip_packets();
        let key_at = clip
            .iter()
            .find(|p| p.media == Media::Video && p.keyframe)
            .unwrap()
            .dts;
        let hashes = |v: &[Packet]| v.iter().map(|p| p.hash.clone()).collect::<Vec<_>>();
        let want_video: Vec<Packet> = clip
            .iter()
            .filter(|p| p.media == Media::Video && p.dts >= key_at)
            .cloned()
            .collect();
        assert_eq!(
            hashes(&concatenated(&files, Media::Video)),
            hashes(&want_video),
            "{key}: video across the files"
        );
        let audio = hashes(&concatenated(&files, Media::Audio));
        let clip_audio: Vec<&Packet> = clip.iter().filter(|p| p.media == Media::Audio).collect();
        let from = clip_audio
            .iter()
            .position(|p| p.hash == audio[0])
            .expect("the first recorded audio packet is the clip's");
        assert!(clip_audio[from].dts <= key_at + AUDIO_JOIN_GRACE_MS);
        let want_audio: Vec<String> = clip_audio[from..].iter().map(|p| p.hash.clone()).collect();
        assert_eq!(audio, want_audio, "{key}: audio across the files");
        // on_record_done: one call per file, with its path.
        for f in &files {
            let want = p(f);
            wait_until(
                Duration::from_secs(10),
                &format!("record_done {want}"),
                || {
                    hooks.bodies.lock().unwrap().iter().any(|body| {
                        body.starts_with("call=record_done&")
                            && body.split('&').any(|kv| {
                                kv.strip_prefix("path=").map(form_decode) == Some(want.clone())
                            })
                    })
                },
            );
        }
    }
}

/// A tmpfs mounted by the test (root), unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Mount {
        fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs", &p(at)])
            .output()
            .unwrap_or_else(|e| panic!("running mount(8): {e}"));
        assert!(
            out.status.success(),
            "this test mounts a tmpfs (it needs root and mount(8)): mount -t tmpfs -o {options} \
             tmpfs {} failed: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Publishes the clip into a server whose recording fails with `error`
/// (`args` set it up); an RTMP player alongside must get every packet, and
/// the log, the API and /metrics must say what happened.
fn failed_recording_leaves_the_stream_alone(args: &[&str], error: &str) {
    // The clip first: the player's idle timeout must not run while it is
    // encoded.
    let _ = (clip(), clip_packets());
    let mut server = Server::start(2, args);
    let url = server.url("live", "cam");
    let mut player = play_ffmpeg(&url, &server.dir().join("player.flv"));
    server.wait_players("live/cam", 1);
    let mut publisher = publish_clip(&server, "live", "cam");
    server.wait_live("live/cam");
    let rec = wait_recording(&server, "live/cam", "the recording failed", |r| {
        r["state"] == "failed"
    });
    assert!(
        rec["error"].as_str().unwrap().contains(error),
        "the API says why: {rec}"
    );
    let published_end = wait_publisher(&mut publisher);
    let ends = wait_all_or_stop(std::slice::from_mut(&mut player), PLAYER_END_GRACE);
    let got = received_packets(&player, &ends[0], published_end);
    let join = assert_same_from_first_keyframe(clip_packets(), &got);
    assert_eq!(join.video_from, 0, "the player got the whole stream");
    let m = server.metrics();
    assert!(metric(&m, "sluice_record_failures_total", &[]) >= Some(1.0));
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("record stream=live/cam")
            && l.contains(error)
            && l.contains("the live stream goes on")),
        "the log says why:\n{}",
        tail(&log, 30)
    );
    server.assert_sigterm_exits_zero(Duration::from_secs(10));
}

#[test]
fn a_full_disk_stops_the_recording_not_the_stream() {
    let dir = TestDir::new();
    let at = dir.join("small");
    let _mount = Mount::tmpfs(&at, "size=256k");
    failed_recording_leaves_the_stream_alone(
        &["--record", "all", "--record-dir", &p(&at)],
        "No space left on device",
    );
}

#[test]
fn a_read_only_directory_stops_the_recording_not_the_stream() {
    let dir = TestDir::new();
    let at = dir.join("ro");
    let _mount = Mount::tmpfs(&at, "ro,size=64k");
    failed_recording_leaves_the_stream_alone(
        &["--record", "all", "--record-dir", &p(&at)],
        "Read-only file system",
    );
}

#[test]
fn a_slow_disk_drops_to_keyframes_with_bounded_memory_and_players_unaffected() {
    const QUEUE: u64 = 64 * 1024;
    let _ = (clip(), clip_packets());
    let dir = TestDir::new();
    let queue = QUEUE.to_string();
    let server = Server::start_with_env(
        2,
        &[
            "--record",
            "all",
            "--record-dir",
            &p(dir.path()),
            "--record-queue-bytes",
            &queue,
        ],
        // Every write and sync waits 700 ms: a third of what the stream
        // needs.
        &[("SLUICE_TEST_DISK_DELAY_MS", "700")],
    );
    let url = server.url("live", "cam");
    let mut player = play_ffmpeg(&url, &server.dir().join("player.flv"));
    server.wait_players("live/cam", 1);
    let mut publisher = publish_clip(&server, "live", "cam");
    server.wait_live("live/cam");
    // While it runs, the bytes waiting for the disk stay within the bound
    // plus one fragment (the largest here is under 400 KB: a keyframe's
    // part).
    let mut most = 0;
    let mut dropped = 0;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(CLIP_SECS - 1) {
        if let Some(r) = server.stream("live/cam").map(|s| s["recording"].clone()) {
            most = most.max(r["queued_bytes"].as_u64().unwrap_or(0));
            dropped = dropped.max(r["dropped"].as_u64().unwrap_or(0));
        }
        sleep(Duration::from_millis(100));
    }
    eprintln!("[record] slow disk: at most {most} bytes waiting, {dropped} fragments dropped");
    assert!(dropped > 0, "a disk a third as fast as the stream drops");
    assert!(
        most <= QUEUE + 400_000,
        "{most} bytes waited for the disk (bound {QUEUE} + one fragment)"
    );
    let published_end = wait_publisher(&mut publisher);
    let ends = wait_all_or_stop(std::slice::from_mut(&mut player), PLAYER_END_GRACE);
    let got = received_packets(&player, &ends[0], published_end);
    assert_same_from_first_keyframe(clip_packets(), &got);
    // The file has what was written: whole GOPs, so it decodes cleanly.
    let list = wait_finished(&server, "live/cam", 1);
    let path = path_of(&list[0]);
    assert_decodes_cleanly(&path);
    let video: Vec<Packet> = packets_ms(&path)
        .into_iter()
        .filter(|p| p.media == Media::Video)
        .collect();
    assert!(video[0].keyframe);
    assert!(
        video.len()
            < clip_packets()
                .iter()
                .filter(|p| p.media == Media::Video)
                .count(),
        "some GOPs were dropped"
    );
    let log = server.log();
    assert_eq!(
        log.matches("the disk is slower than the stream").count(),
        1,
        "logged once"
    );
    let m = server.metrics();
    assert!(metric(&m, "sluice_record_dropped_total", &[]) >= Some(dropped as f64));
}

// ---------------------------------------------------------------------------------------
// HEVC (Enhanced RTMP) with ffmpeg 9
// ---------------------------------------------------------------------------------------

/// `ffmpeg -dump -i FILE -map 0 -c copy -copyts -f framemd5 -` (ffmpeg 9):
/// every audio/video packet with its hash and size, its timestamps in ms
/// (from each stream's `#tb`), its keyframe flag (from the dump), and the
/// codec of each stream.
fn probe9(file: &Path) -> (Vec<String>, Vec<Packet>) {
    let args = strings(&[
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "info",
        "-dump",
        "-i",
        &p(file),
        "-map",
        "0",
        "-c",
        "copy",
        "-copyinkf",
        "-copyts",
        "-f",
        "framemd5",
        "-",
    ]);
    let (status, out, err) = run_tool(&require_tool("ffmpeg9"), &args, Duration::from_secs(60));
    assert!(
        status.success(),
        "ffmpeg 9 reading {}: {err}",
        file.display()
    );
    let mut kinds: BTreeMap<usize, String> = BTreeMap::new();
    let mut codecs: BTreeMap<usize, String> = BTreeMap::new();
    let mut tbs: BTreeMap<usize, (i64, i64)> = BTreeMap::new();
    let mut rows = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("#media_type ") {
            let (i, t) = rest.split_once(": ").unwrap();
            kinds.insert(i.parse().unwrap(), t.to_string());
        } else if let Some(rest) = line.strip_prefix("#codec_id ") {
            let (i, c) = rest.split_once(": ").unwrap();
            codecs.insert(i.parse().unwrap(), c.to_string());
        } else if let Some(rest) = line.strip_prefix("#tb ") {
            let (i, tb) = rest.split_once(": ").unwrap();
            let (n, d) = tb.split_once('/').unwrap();
            tbs.insert(i.parse().unwrap(), (n.parse().unwrap(), d.parse().unwrap()));
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            rows.push((
                f[0].parse::<usize>().unwrap(),
                f[1].parse::<i64>().unwrap(),
                f[2].parse::<i64>().unwrap(),
                f[4].parse::<u32>().unwrap(),
                format!("MD5:{}", f[5]),
            ));
        }
    }
    // -dump: "stream #N:" then "  keyframe=1", ..., "  size=123".
    let mut keys: BTreeMap<usize, Vec<bool>> = BTreeMap::new();
    let mut current: Option<(usize, bool)> = None;
    for line in err.lines() {
        if let Some(rest) = line.strip_prefix("stream #") {
            current = rest.trim_end_matches(':').parse().ok().map(|s| (s, false));
        } else if let Some(k) = line.trim().strip_prefix("keyframe=") {
            if let Some(c) = current.as_mut() {
                c.1 = k == "1";
            }
        } else if line.trim().starts_with("size=") {
            if let Some((s, key)) = current.take() {
                keys.entry(s).or_default().push(key);
            }
        }
    }
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut packets = Vec::new();
    for (s, dts, pts, size, hash) in rows {
        let media = match kinds.get(&s).map(String::as_str) {
            Some("video") => Media::Video,
            Some("audio") => Media::Audio,
            _ => continue,
        };
        let (n, d) = tbs[&s];
        let ms = |t: i64| (t * n * 1000 + d / 2).div_euclid(d);
        let i = seen.entry(s).or_default();
        let keyframe = keys
            .get(&s)
            .and_then(|k| k.get(*i))
            .copied()
            .unwrap_or(false);
        *i += 1;
        packets.push(Packet {
            media,
            dts: ms(dts),
            pts: ms(pts),
            keyframe,
            size,
            hash,
        });
    }
    (codecs.into_values().collect(), packets)
}

#[test]
fn hevc_from_ffmpeg9_is_recorded_to_mp4_and_flv() {
    let ff = require_tool("ffmpeg9");
    let dir = TestDir::new();
    let clip = dir.join("hevc.flv");
    let args = strings(&[
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "6",
        "-pix_fmt",
        "yuv420p",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "keyint=30:min-keyint=30:scenecut=0:log-level=error",
        "-c:a",
        "aac",
        "-b:a",
        "96k",
        "-f",
        "flv",
        &p(&clip),
    ]);
    let (status, _, err) = run_tool(&ff, &args, Duration::from_secs(120));
    assert!(status.success(), "encoding HEVC: {err}");
    let (codecs, source) = probe9(&clip);
    assert_eq!(codecs, ["hevc", "aac"], "the clip");
    let config = dir.join("sluice.toml");
    fs::write(
        &config,
        format!(
            "record_dir = {:?}\n[app.m.record]\nmode = \"all\"\nformat = \"mp4\"\n\
             [app.f.record]\nmode = \"all\"\nformat = \"flv\"\n",
            p(&dir.join("rec"))
        ),
    )
    .unwrap();
    let server = Server::start(2, &["-c", &p(&config)]);
    let publish = |app: &str| {
        let a = strings(&[
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "warning",
            "-re",
            "-i",
            &p(&clip),
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "flv",
            &server.url(app, "hevc"),
        ]);
        Peer::spawn(
            "ffmpeg 9 publisher",
            &ff,
            &a,
            Duration::from_secs(40),
            &[("TERM", 400), ("TERM", 3000)],
            None,
        )
    };
    let mut publishers = [publish("m"), publish("f")];
    for p in &mut publishers {
        wait_publisher(p);
    }
    for (key, ext) in [("m/hevc", "mp4"), ("f/hevc", "flv")] {
        let list = wait_finished(&server, key, 1);
        let path = path_of(&list[0]);
        assert!(p(&path).ends_with(ext));
        let (codecs, got) = probe9(&path);
        assert_eq!(codecs, ["hevc", "aac"], "{}", path.display());
        let join = compare_from_first_keyframe(&source, &got, 0)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(join.video_from, 0, "{}: {join:?}", path.display());
        eprintln!("[record] {key}: {join:?}");
    }
}

#[test]
fn sigterm_finishes_the_flv_with_its_index() {
    let dir = TestDir::new();
    let mut server = Server::start(
        1,
        &[
            "--record",
            "all",
            "--record-format",
            "flv",
            "--record-dir",
            &p(dir.path()),
        ],
    );
    let _publisher = publish_clip(&server, "live", "cam");
    server.wait_live("live/cam");
    sleep(Duration::from_millis(4500));
    server.assert_sigterm_exits_zero(Duration::from_secs(15));
    let files = walk(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_decodes_cleanly(&files[0]);
    // Stopped 4.5 s in (and whatever the shutdown took): the keyframes at
    // 0 and 2 s at least, all within the recorded duration.
    let index = flv_index(&files[0]);
    let last = packets_ms(&files[0]).iter().map(|p| p.dts).max().unwrap();
    assert!(index.len() >= 2, "{index:?}");
    assert!(
        index.iter().all(|&(_, t)| t as i64 <= last),
        "{index:?} past {last} ms"
    );
    let log = server.log();
    assert!(
        log.contains("record done stream=live/cam"),
        "{}",
        tail(&log, 20)
    );
}

#[test]
fn retention_deletes_old_recordings_only_and_the_scan_lists_the_rest() {
    let dir = TestDir::new();
    let rec = dir.join("rec");
    let old_mp4 = rec.join("live/cam/20200101-000000.mp4");
    let old_flv = rec.join("other/x/20200101-000000.flv");
    let old_text = rec.join("live/cam/notes.txt");
    let fresh = rec.join("live/cam/20261203-120000.mp4");
    for f in [&old_mp4, &old_flv, &old_text, &fresh] {
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, b"not really a recording").unwrap();
    }
    for f in [&old_mp4, &old_flv, &old_text] {
        let status = Command::new("touch")
            .args(["-d", "2 hours ago", &p(f)])
            .status()
            .unwrap();
        assert!(status.success());
    }
    let server = Server::start(
        1,
        &[
            "--record",
            "manual",
            "--record-dir",
            &p(&rec),
            "--record-retention-secs",
            "3600",
        ],
    );
    wait_until(
        Duration::from_secs(10),
        "two old recordings deleted",
        || metric(&server.metrics(), "sluice_record_deleted_total", &[]) == Some(2.0),
    );
    assert!(!old_mp4.exists() && !old_flv.exists());
    assert!(old_text.exists(), "only recordings are deleted");
    assert!(fresh.exists(), "younger than the retention");
    let listed = api::get_json(server.http_addr(), "/api/recordings")["recordings"].clone();
    let paths: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [p(&fresh)],
        "the scan at start, less what was deleted"
    );
    assert_eq!(listed[0]["source"], "scan");
    assert!(server.log().contains("record retention: deleted"));
}
