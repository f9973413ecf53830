//! Video on demand end to end: a server whose application `vod` plays the
//! files of a directory (`[app.vod.vod] dir`), and real clients.
//!
//! * RTMP: ffmpeg plays every kind of file (MP4 with moov at the end and
//!   at the start, fragmented MP4, FLV with and without a keyframe index,
//!   H.264 with AAC or MP3) and what it writes matches the file packet for
//!   packet (`-f framemd5` hashes per media type); rtmpdump downloads a
//!   file whole and with `-A`/`-B` (start, stop); GStreamer's rtmp2src
//!   plays one. The project's client drives seek and pause; ffmpeg
//!   decodes what it received. Pacing: frames arrive no faster than real
//!   time plus the buffer length the client announced (a loose bound, on
//!   the client's clock).
//! * HTTP: curl's range requests (206, Content-Range, If-Range, ETag,
//!   304, 416), ffmpeg reading an MP4 over HTTP with `-ss`, FLV
//!   pseudo-streaming (`?start=`), HLS VOD read by ffmpeg (built from the
//!   index, and byte ranges of a fragmented file) and played by hls.js in
//!   Chromium, and `<video src=file.mp4>` seeking in Chromium.
//! * Paths and faults: `..`, absolute paths and a symbolic link out of
//!   the directory are not found (and logged); a corrupt file is refused
//!   with a reason; a file truncated while it plays ends that play with
//!   Play.Failed while another player and a live stream go on; a file
//!   replaced (renamed over) while it plays keeps playing what was opened.
//! * The same access rules as live streams (keys).
//!
//! HEVC + Opus and AV1 + Opus need ffmpeg >= 8: `#[ignore]`d, run by
//! `./test` (`cargo test --test vod -- --ignored`).

mod common;
mod support;

use bytes::Bytes;
use common::browser::{hls_page, Browser, StaticServer};
use common::ffmpeg9::{make_test_card, strings};
use common::{require_tool, run_tool, Peer, TestDir};
use sluice::auth::AppRules;
use sluice::protocol::amf;
use sluice::protocol::client::ClientEvent;
use sluice::protocol::session::MediaKind;
use sluice::server::RunningServer;
use sluice::vod_settings::VodApp;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};
use support::{http_addr, start_server, TestClient, WAIT};

// ---------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------

/// The files every test reads (never changed), made once per test binary.
fn media() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("sluice-vod-media-{}", std::process::id()));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let ff = require_tool("ffmpeg");
        let h264_aac = [
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-bf",
            "2",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
        ];
        let with = |extra: &[&'static str]| {
            let mut v = h264_aac.to_vec();
            v.extend_from_slice(extra);
            v
        };
        let jobs: Vec<(&str, Vec<&str>)> = vec![
            ("end.mp4", with(&[])),
            ("faststart.mp4", with(&["-movflags", "+faststart"])),
            (
                "frag.mp4",
                with(&["-movflags", "+frag_keyframe+empty_moov+default_base_moof"]),
            ),
            ("idx.flv", with(&["-flvflags", "add_keyframe_index"])),
            ("noidx.flv", with(&[])),
            ("sub/in dir.mp4", with(&["-movflags", "+faststart"])),
            (
                "mp3.mp4",
                vec![
                    "-c:v",
                    "libx264",
                    "-preset",
                    "ultrafast",
                    "-c:a",
                    "libmp3lame",
                    "-b:a",
                    "64k",
                ],
            ),
        ];
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(name, codecs)| {
                let (ff, out) = (ff.clone(), d.join(name));
                let codecs: Vec<String> = strings(&codecs);
                thread::spawn(move || make_test_card(&ff, &out, &codecs))
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        d
    })
}

/// (size, md5) of every packet of one media type, in order
/// (`ffmpeg -i FILE -map 0:v|0:a -c copy -f framemd5 -`).
fn hashes(ff: &str, input: &str, video: bool) -> Vec<(u32, String)> {
    let args = strings(&[
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        input,
        "-map",
        if video { "0:v" } else { "0:a" },
        "-c",
        "copy",
        "-f",
        "framemd5",
        "-",
    ]);
    let (status, out, err) = run_tool(ff, &args, Duration::from_secs(60));
    assert!(status.success(), "framemd5 of {input}: {err}");
    out.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f[4].parse().unwrap(), f[5].to_string())
        })
        .collect()
}

/// Every audio and video packet of `original` is in `received`, in order,
/// unchanged.
fn assert_same_packets(ff: &str, original: &Path, received: &Path) {
    assert_same_packets_but_last(ff, original, received, 0);
}

/// As [`assert_same_packets`], the last `slack` packets of each type
/// allowed missing (rtmp2src drops the one message it holds when the
/// stream ends, as it does for live streams: tests/common/mod.rs).
fn assert_same_packets_but_last(ff: &str, original: &Path, received: &Path, slack: usize) {
    for video in [true, false] {
        let mut want = hashes(ff, &original.display().to_string(), video);
        let got = hashes(ff, &received.display().to_string(), video);
        assert!(!want.is_empty());
        if got.len() < want.len() && want.len() - got.len() <= slack {
            want.truncate(got.len());
        }
        assert_eq!(
            got.len(),
            want.len(),
            "{}: {} of {} {} packets",
            original.display(),
            got.len(),
            want.len(),
            if video { "video" } else { "audio" }
        );
        assert!(got == want, "{}: packets differ", original.display());
    }
}

// ---------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------

/// An in-process server whose application `vod` plays the files of
/// `dir`; `tweak` may change the rules further.
fn vod_server(dir: &Path, tweak: impl FnOnce(&mut AppRules)) -> RunningServer {
    let mut rules = AppRules {
        vod: Some(VodApp {
            dir: dir.to_owned(),
            follow_symlinks: false,
        }),
        ..AppRules::default()
    };
    tweak(&mut rules);
    start_server(2, |c| {
        c.access.apps.insert("vod".into(), rules);
    })
}

fn rtmp_url(server: &RunningServer, name: &str) -> String {
    format!("rtmp://{}/vod/{name}", server.addrs().rtmp)
}

fn http_url(server: &RunningServer, path: &str) -> String {
    format!("http://{}/vod/{path}", http_addr(server))
}

const FFMPEG_STOP: &[(&str, u64)] = &[("TERM", 400), ("TERM", 3000)];

/// `ffmpeg -i URL -c copy -f flv OUT`, waited for (it must end by itself:
/// Play.Stop at the end of the file).
fn ffmpeg_copy(ff: &str, input: &str, pre: &[&str], out: &Path) -> Peer {
    let mut args = strings(&["-hide_banner", "-nostdin", "-loglevel", "warning", "-y"]);
    args.extend(strings(pre));
    args.extend(strings(&[
        "-i", input, "-map", "0:v", "-map", "0:a", "-c", "copy", "-f", "flv",
    ]));
    args.push(out.display().to_string());
    Peer::spawn(
        "ffmpeg",
        ff,
        &args,
        Duration::from_secs(60),
        FFMPEG_STOP,
        Some(out),
    )
}

fn wait_ok(mut peer: Peer, limit: Duration) {
    let end = peer.wait_or_stop(limit);
    assert!(
        end.by_itself,
        "{} did not end by itself:\n{}",
        peer.name(),
        peer.stderr()
    );
    peer.assert_success(&end);
}

// ---------------------------------------------------------------------------------------
// RTMP with real players
// ---------------------------------------------------------------------------------------

#[test]
fn ffmpeg_plays_every_kind_of_file_packet_for_packet() {
    let ff = require_tool("ffmpeg");
    let server = vod_server(media(), |_| {});
    let out = TestDir::new();
    let names = [
        "end.mp4",
        "faststart.mp4",
        "frag.mp4",
        "idx.flv",
        "noidx.flv",
        "mp3.mp4",
    ];
    let started = Instant::now();
    let peers: Vec<(String, Peer)> = names
        .iter()
        .map(|n| {
            let o = out.join(&format!("{n}.flv"));
            (
                n.to_string(),
                ffmpeg_copy(&ff, &rtmp_url(&server, n), &[], &o),
            )
        })
        .collect();
    for (_, p) in peers {
        wait_ok(p, Duration::from_secs(45));
    }
    // Paced: six seconds of media, ffmpeg's three-second buffer ahead.
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    for n in names {
        assert_same_packets(&ff, &media().join(n), &out.join(&format!("{n}.flv")));
    }
}

#[test]
#[ignore = "needs ffmpeg >= 8 (Enhanced RTMP); ./test installs it"]
fn ffmpeg9_plays_hevc_opus_and_av1_opus_packet_for_packet() {
    let ff = require_tool("ffmpeg9");
    let dir = TestDir::new();
    let hevc = dir.join("hevc.mp4");
    let av1 = dir.join("av1.mp4");
    make_test_card(
        &ff,
        &hevc,
        &strings(&[
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "log-level=error",
            "-tag:v",
            "hvc1",
            "-c:a",
            "libopus",
            "-b:a",
            "64k",
        ]),
    );
    make_test_card(
        &ff,
        &av1,
        &strings(&[
            "-c:v",
            "libsvtav1",
            "-preset",
            "12",
            "-svtav1-params",
            "lp=1",
            "-c:a",
            "libopus",
            "-b:a",
            "64k",
        ]),
    );
    let server = vod_server(dir.path(), |_| {});
    for name in ["hevc.mp4", "av1.mp4"] {
        let out = dir.join(&format!("{name}.flv"));
        wait_ok(
            ffmpeg_copy(&ff, &rtmp_url(&server, name), &[], &out),
            Duration::from_secs(45),
        );
        assert_same_packets(&ff, &dir.join(name), &out);
    }
}

/// The tags of an FLV file: (type, timestamp, payload).
fn flv_tags(data: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    assert_eq!(&data[..3], b"FLV", "an FLV file");
    let mut i = 13;
    let mut tags = Vec::new();
    while i + 11 <= data.len() {
        let size = u32::from_be_bytes([0, data[i + 1], data[i + 2], data[i + 3]]) as usize;
        let ts = u32::from_be_bytes([data[i + 7], data[i + 4], data[i + 5], data[i + 6]]);
        if i + 11 + size > data.len() {
            break;
        }
        tags.push((data[i], ts, data[i + 11..i + 11 + size].to_vec()));
        i += 11 + size + 4;
    }
    tags
}

/// md5 hex of the coded data of legacy AVC / AAC tags (what framemd5
/// hashes), in order.
fn tag_hashes(tags: &[(u8, u32, Vec<u8>)], video: bool) -> Vec<String> {
    use md5::{Digest, Md5};
    tags.iter()
        .filter(|(t, _, p)| {
            if video {
                *t == 9 && p.len() > 5 && p[1] == 1
            } else {
                *t == 8 && p.len() > 2 && p[1] == 1
            }
        })
        .map(|(_, _, p)| {
            let data = if video { &p[5..] } else { &p[2..] };
            Md5::digest(data)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        })
        .collect()
}

#[test]
fn rtmpdump_downloads_whole_files_and_honours_start_and_stop() {
    let ff = require_tool("ffmpeg");
    let rtmpdump = require_tool("rtmpdump");
    let server = vod_server(media(), |_| {});
    let out = TestDir::new();
    for name in ["end.mp4", "idx.flv"] {
        let o = out.join(&format!("whole-{name}.flv"));
        let args = strings(&[
            "-q",
            "-r",
            &rtmp_url(&server, name),
            "-o",
            &o.display().to_string(),
        ]);
        let peer = Peer::spawn(
            "rtmpdump",
            &rtmpdump,
            &args,
            Duration::from_secs(40),
            &[("TERM", 3000)],
            Some(&o),
        );
        // Exit 0: complete, by the duration in onMetaData (exit 2 when short).
        wait_ok(peer, Duration::from_secs(30));
        assert_same_packets(&ff, &media().join(name), &o);
    }
    // -A 2 -B 4: play's start 2000 and duration 2000.
    for name in ["faststart.mp4", "idx.flv", "noidx.flv"] {
        let o = out.join(&format!("part-{name}.flv"));
        let args = strings(&[
            "-q",
            "-r",
            &rtmp_url(&server, name),
            "-A",
            "2",
            "-B",
            "4",
            "-o",
            &o.display().to_string(),
        ]);
        let mut peer = Peer::spawn(
            "rtmpdump",
            &rtmpdump,
            &args,
            Duration::from_secs(40),
            &[("TERM", 3000)],
            Some(&o),
        );
        // It ends by itself on Play.Complete / Play.Stop. Its exit status
        // is its own guess: it compares the last timestamp with the
        // file's duration from onMetaData, unless onMetaData came before
        // Play.Start (it reads none after that before it starts), and
        // calls a play of part of a file incomplete (2) when the part
        // ends short of the file's end. FMS and nginx-rtmp send
        // onMetaData after Play.Start too.
        let end = peer.wait_or_stop(Duration::from_secs(30));
        assert!(
            end.by_itself,
            "rtmpdump did not end by itself:\n{}",
            peer.stderr()
        );
        let code = end.status.code();
        assert!(
            matches!(code, Some(0 | 2)),
            "rtmpdump exit {code:?}:\n{}",
            peer.stderr()
        );
        // rtmpdump writes what follows the seek with its own timestamps and
        // without the sequence headers (it does the same with nginx-rtmp),
        // so the check is on the packets: a contiguous run of the file's
        // own, about two seconds of video (one GOP more at most) from the
        // keyframe at two seconds.
        let tags = flv_tags(&std::fs::read(&o).unwrap());
        let original = hashes(&ff, &media().join(name).display().to_string(), true);
        let got = tag_hashes(&tags, true);
        assert!(
            got.len() >= 30 && got.len() <= 90,
            "{name}: {} video packets",
            got.len()
        );
        let first = original
            .iter()
            .position(|(_, h)| *h == got[0])
            .unwrap_or_else(|| panic!("{name}: the first packet is not the file's"));
        assert!(
            (30..=75).contains(&first),
            "{name}: starts at packet {first}"
        );
        let run: Vec<&String> = original[first..first + got.len()]
            .iter()
            .map(|(_, h)| h)
            .collect();
        assert_eq!(
            run,
            got.iter().collect::<Vec<_>>(),
            "{name}: a contiguous run"
        );
    }
}

#[test]
fn gstreamer_rtmp2src_plays_a_file() {
    let ff = require_tool("ffmpeg");
    let server = vod_server(media(), |_| {});
    let out = TestDir::new();
    let o = out.join("gst.flv");
    let peer = common::play_gst(&rtmp_url(&server, "faststart.mp4"), &o);
    wait_ok(peer, Duration::from_secs(40));
    assert_same_packets_but_last(&ff, &media().join("faststart.mp4"), &o, 1);
}

// ---------------------------------------------------------------------------------------
// The project's client: seek, pause, pacing, the notices
// ---------------------------------------------------------------------------------------

/// A media message as the client got it, with the wall clock.
struct Got {
    at: Instant,
    kind: MediaKind,
    ts: u32,
    payload: Bytes,
}

/// Reads events until `until` says stop or `limit` passes; media are kept
/// (with their arrival time), statuses returned in order.
fn read_events(
    c: &mut TestClient,
    limit: Duration,
    media: &mut Vec<Got>,
    statuses: &mut Vec<String>,
    until: impl Fn(&[Got], &[String]) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !until(media, statuses) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match c.next_event(left.min(Duration::from_millis(50))) {
            Some(ClientEvent::Media {
                kind,
                timestamp,
                payload,
                ..
            }) => media.push(Got {
                at: Instant::now(),
                kind,
                ts: timestamp,
                payload,
            }),
            Some(ClientEvent::Status { code, .. }) => statuses.push(code),
            _ => {}
        }
    }
}

fn is_keyframe(g: &Got) -> bool {
    g.kind == MediaKind::Video && g.payload.first() == Some(&0x17) && g.payload.get(1) == Some(&1)
}

/// The FLV tag type of a media kind.
fn flv_type(kind: MediaKind) -> u8 {
    match kind {
        MediaKind::Audio => 8,
        MediaKind::Video => 9,
        MediaKind::Data => 18,
    }
}

fn is_coded_video(g: &Got) -> bool {
    g.kind == MediaKind::Video && g.payload.get(1) == Some(&1)
}

/// `ffmpeg -v error -i FILE -f null -`: decodes with no error.
fn assert_decodes(ff: &str, file: &Path) {
    let args = strings(&[
        "-hide_banner",
        "-nostdin",
        "-v",
        "error",
        "-i",
        &file.display().to_string(),
        "-f",
        "null",
        "-",
    ]);
    let (status, _, err) = run_tool(ff, &args, Duration::from_secs(60));
    assert!(
        status.success() && err.trim().is_empty(),
        "decoding {}: {err}",
        file.display()
    );
}

#[test]
fn seek_and_pause_from_the_projects_client_then_ffmpeg_decodes_it() {
    let ff = require_tool("ffmpeg");
    let server = vod_server(media(), |_| {});
    for name in ["end.mp4", "frag.mp4", "noidx.flv"] {
        let mut c = TestClient::connect(server.addrs().rtmp, "vod");
        let id = c.create_stream();
        c.session_mut().set_buffer_length(id, 500);
        c.session_mut().play_with(id, name, -2000.0, -1.0, true);
        let (mut media, mut statuses) = (Vec::new(), Vec::new());
        read_events(&mut c, WAIT, &mut media, &mut statuses, |m, _| {
            m.iter().filter(|g| is_coded_video(g)).count() >= 10
        });
        assert!(
            statuses.contains(&"NetStream.Play.Start".to_owned()),
            "{name}: {statuses:?}"
        );
        assert!(
            matches!(media[0].kind, MediaKind::Data),
            "{name}: metadata first"
        );

        // Seek forward to 3.5 s: Seek.Notify, then the headers and the
        // keyframe at 3 s (one a second).
        c.session_mut().seek(id, 3500.0);
        c.flush();
        let mark = media.len();
        statuses.clear();
        read_events(&mut c, WAIT, &mut media, &mut statuses, |m, s| {
            s.iter().any(|c| c == "NetStream.Seek.Notify")
                && m.iter().any(|g| g.ts >= 3000 && is_keyframe(g))
        });
        assert_eq!(
            statuses.iter().take(2).cloned().collect::<Vec<_>>(),
            ["NetStream.Seek.Notify", "NetStream.Play.Start"],
            "{name}"
        );
        let after: Vec<&Got> = media[mark..]
            .iter()
            .filter(|g| g.ts >= 2900 && is_coded_video(g))
            .collect();
        let first = after.first().expect("video after the seek");
        assert!(
            is_keyframe(first) && first.ts >= 2900 && first.ts <= 3500,
            "{name}: seek landed at {}",
            first.ts
        );

        // Pause: Pause.Notify, then nothing new for a second (what was in
        // flight may still arrive); unpause: frames again.
        c.session_mut().pause(id, true, 4000.0);
        c.flush();
        statuses.clear();
        read_events(&mut c, WAIT, &mut media, &mut statuses, |_, s| {
            s.iter().any(|c| c == "NetStream.Pause.Notify")
        });
        read_events(
            &mut c,
            Duration::from_millis(400),
            &mut media,
            &mut statuses,
            |_, _| false,
        );
        let paused_at = media.len();
        read_events(
            &mut c,
            Duration::from_millis(1500),
            &mut media,
            &mut statuses,
            |_, _| false,
        );
        assert_eq!(media.len(), paused_at, "{name}: frames while paused");
        c.session_mut().pause(id, false, 4000.0);
        c.flush();
        read_events(
            &mut c,
            Duration::from_secs(20),
            &mut media,
            &mut statuses,
            |_, s| s.iter().any(|c| c == "NetStream.Play.Stop"),
        );
        assert!(
            statuses.contains(&"NetStream.Unpause.Notify".to_owned()),
            "{statuses:?}"
        );
        assert!(media.len() > paused_at, "{name}: frames after unpause");
        // The end: onPlayStatus NetStream.Play.Complete, then Play.Stop.
        let complete = media
            .iter()
            .rev()
            .find(|g| g.kind == MediaKind::Data)
            .and_then(|g| amf::decode_all(&g.payload, &Default::default()).ok());
        let complete = complete.expect("onPlayStatus");
        assert_eq!(complete[0].as_str(), Some("onPlayStatus"), "{name}");
        assert_eq!(
            complete[1].get("code").and_then(|c| c.as_str()),
            Some("NetStream.Play.Complete")
        );
        assert!(statuses.contains(&"NetStream.Play.Stop".to_owned()));
        let last_video = media
            .iter()
            .filter(|g| is_coded_video(g))
            .map(|g| g.ts)
            .max()
            .unwrap();
        assert!(
            last_video > 5800,
            "{name}: played to the end ({last_video})"
        );

        // ffmpeg decodes everything the client got (minus the trailing
        // onPlayStatus): before and after the seek, headers included.
        let dir = TestDir::new();
        let file = dir.join("got.flv");
        let keep: Vec<Got> = media
            .into_iter()
            .filter(|g| {
                !(g.kind == MediaKind::Data && g.payload.get(3..15) == Some(&b"onPlayStatus"[..]))
            })
            .collect();
        common::write_flv_tags(
            &file,
            keep.iter()
                .map(|g| (flv_type(g.kind), g.ts, &g.payload[..])),
        );
        assert_decodes(&ff, &file);
    }
}

#[test]
fn frames_are_paced_by_their_timestamps_with_the_buffer_lead() {
    let server = vod_server(media(), |_| {});
    let lead = 1000u32;
    let mut c = TestClient::connect(server.addrs().rtmp, "vod");
    let id = c.create_stream();
    c.session_mut().set_buffer_length(id, lead);
    c.session_mut()
        .play_with(id, "end.mp4", -2000.0, -1.0, true);
    let started = Instant::now();
    let (mut media, mut statuses) = (Vec::new(), Vec::new());
    read_events(
        &mut c,
        Duration::from_secs(20),
        &mut media,
        &mut statuses,
        |_, s| s.iter().any(|c| c == "NetStream.Play.Stop"),
    );
    let frames: Vec<&Got> = media
        .iter()
        .filter(|g| g.kind != MediaKind::Data && g.ts > 0)
        .collect();
    let (t0, m0) = (frames[0].at, frames[0].ts);
    // Never ahead of real time by more than the lead (slack for the
    // client's own scheduling on a loaded machine).
    let slack = 500;
    let mut worst = i64::MIN;
    for g in &frames {
        let media_ms = i64::from(g.ts - m0);
        let wall_ms = g.at.duration_since(t0).as_millis() as i64;
        worst = worst.max(media_ms - wall_ms);
    }
    assert!(
        worst <= i64::from(lead + slack),
        "a frame {worst} ms ahead of real time"
    );
    assert!(
        worst >= i64::from(lead) - 400,
        "the lead was used: {worst} ms"
    );
    // Six seconds of media take about five (six less the lead).
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(4300), "all of it in {took:?}");
}

#[test]
fn play_start_and_duration_from_the_projects_client() {
    let server = vod_server(media(), |_| {});
    for name in ["faststart.mp4", "noidx.flv"] {
        let mut c = TestClient::connect(server.addrs().rtmp, "vod");
        let id = c.create_stream();
        c.session_mut().set_buffer_length(id, 30_000);
        c.session_mut().play_with(id, name, 2500.0, 1500.0, false);
        let (mut media, mut statuses) = (Vec::new(), Vec::new());
        read_events(&mut c, WAIT, &mut media, &mut statuses, |_, s| {
            s.iter().any(|c| c == "NetStream.Play.Stop")
        });
        assert!(
            !statuses.contains(&"NetStream.Play.Reset".to_owned()),
            "reset false: {statuses:?}"
        );
        let video: Vec<&Got> = media.iter().filter(|g| is_coded_video(g)).collect();
        assert!(
            is_keyframe(video[0]) && video[0].ts == 2000,
            "{name}: from {}",
            video[0].ts
        );
        let last = video.last().unwrap().ts;
        assert!((3800..4000).contains(&last), "{name}: to {last}");
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// `curl -s -D - -o OUT [ARGS] URL`: the status line and headers.
fn curl(args: &[&str], url: &str, out: &Path) -> (u16, String) {
    let mut a = strings(&[
        "-s",
        "--path-as-is",
        "-D",
        "-",
        "-o",
        &out.display().to_string(),
    ]);
    a.extend(strings(args));
    a.push(url.to_owned());
    let (status, head, err) = run_tool(&require_tool("curl"), &a, Duration::from_secs(30));
    assert!(status.success(), "curl {url}: {err}");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, head)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn http_ranges_with_curl() {
    let server = vod_server(media(), |_| {});
    let dir = TestDir::new();
    let out = dir.join("body");
    let file = std::fs::read(media().join("end.mp4")).unwrap();
    let url = http_url(&server, "end.mp4");

    let (code, head) = curl(&[], &url, &out);
    assert_eq!(code, 200, "{head}");
    assert_eq!(std::fs::read(&out).unwrap(), file, "the whole file");
    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
    assert_eq!(header(&head, "content-type"), Some("video/mp4"));
    let etag = header(&head, "etag").expect("an ETag").to_owned();
    let modified = header(&head, "last-modified")
        .expect("Last-Modified")
        .to_owned();

    let (code, head) = curl(&["-r", "1000-1999"], &url, &out);
    assert_eq!(code, 206, "{head}");
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes 1000-1999/{}", file.len()).as_str())
    );
    assert_eq!(std::fs::read(&out).unwrap(), &file[1000..2000]);

    let (code, _) = curl(&["-r", "-500"], &url, &out);
    assert_eq!(code, 206);
    assert_eq!(std::fs::read(&out).unwrap(), &file[file.len() - 500..]);

    // If-Range with the current ETag or date: the range; another: 200, all.
    for v in [etag.as_str(), modified.as_str()] {
        let (code, _) = curl(
            &["-r", "10-19", "-H", &format!("If-Range: {v}")],
            &url,
            &out,
        );
        assert_eq!(code, 206, "If-Range: {v}");
    }
    let (code, _) = curl(&["-r", "10-19", "-H", "If-Range: \"stale\""], &url, &out);
    assert_eq!(code, 200);
    assert_eq!(std::fs::read(&out).unwrap(), file);

    let (code, head) = curl(&["-r", &format!("{}-", file.len())], &url, &out);
    assert_eq!(code, 416, "{head}");
    assert_eq!(
        header(&head, "content-range"),
        Some(format!("bytes */{}", file.len()).as_str())
    );
    let (code, _) = curl(&["-H", &format!("If-None-Match: {etag}")], &url, &out);
    assert_eq!(code, 304);
    let (code, head) = curl(&["-I"], &url, &out);
    assert_eq!(
        (code, header(&head, "content-length")),
        (200, Some(file.len().to_string().as_str()))
    );
    // A file in a subdirectory, its name percent-encoded.
    let (code, _) = curl(&[], &http_url(&server, "sub/in%20dir.mp4"), &out);
    assert_eq!(code, 200);
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(media().join("sub/in dir.mp4")).unwrap()
    );
}

#[test]
fn ffmpeg_reads_mp4_over_http_and_seeks_with_ranges() {
    let ff = require_tool("ffmpeg");
    let server = vod_server(media(), |_| {});
    let dir = TestDir::new();
    for name in ["end.mp4", "faststart.mp4"] {
        let whole = dir.join(&format!("{name}.whole.flv"));
        wait_ok(
            ffmpeg_copy(&ff, &http_url(&server, name), &[], &whole),
            Duration::from_secs(30),
        );
        assert_same_packets(&ff, &media().join(name), &whole);
        // -ss 3 on the input: ffmpeg seeks in the file with range requests
        // (the moov at the end needs them before any sample is read).
        let part = dir.join(&format!("{name}.part.flv"));
        wait_ok(
            ffmpeg_copy(&ff, &http_url(&server, name), &["-ss", "3"], &part),
            Duration::from_secs(30),
        );
        let original = hashes(&ff, &media().join(name).display().to_string(), true);
        let got = hashes(&ff, &part.display().to_string(), true);
        assert!(
            got.len() >= 60 && got.len() <= 100,
            "{name}: {} packets from 3 s",
            got.len()
        );
        assert_eq!(
            &original[original.len() - got.len()..],
            &got[..],
            "{name}: the file's tail"
        );
    }
}

#[test]
fn flv_pseudo_streaming_starts_on_the_keyframe_at_or_before_start() {
    let ff = require_tool("ffmpeg");
    let server = vod_server(media(), |_| {});
    let dir = TestDir::new();
    for name in ["idx.flv", "noidx.flv"] {
        let out = dir.join(&format!("{name}.start.flv"));
        let (code, head) = curl(&[], &format!("{}?start=3.4", http_url(&server, name)), &out);
        assert_eq!(code, 200, "{head}");
        let tags = flv_tags(&std::fs::read(&out).unwrap());
        let first_video = tags.iter().find(|(t, _, p)| *t == 9 && p[1] == 1).unwrap();
        assert_eq!(
            (first_video.1, first_video.2[0]),
            (3000, 0x17),
            "{name}: a keyframe at 3 s"
        );
        let original = hashes(&ff, &media().join(name).display().to_string(), true);
        let got = hashes(&ff, &out.display().to_string(), true);
        assert_eq!(got.len(), 90, "{name}: three seconds of video");
        assert_eq!(&original[90..], &got[..]);
        assert_decodes(&ff, &out);
    }
}

#[test]
fn hls_vod_of_mp4_files_read_by_ffmpeg() {
    let ff = require_tool("ffmpeg");
    let server = vod_server(media(), |_| {});
    let dir = TestDir::new();
    for (name, byte_ranges) in [
        ("end.mp4", false),
        ("faststart.mp4", false),
        ("frag.mp4", true),
    ] {
        let url = http_url(&server, &format!("{name}/index.m3u8"));
        let playlist = dir.join("p.m3u8");
        let (code, _) = curl(&[], &url, &playlist);
        assert_eq!(code, 200);
        let text = std::fs::read_to_string(&playlist).unwrap();
        assert!(
            text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && text.contains("#EXT-X-ENDLIST"),
            "{text}"
        );
        assert_eq!(
            text.contains("#EXT-X-BYTERANGE"),
            byte_ranges,
            "{name}:\n{text}"
        );
        let out = dir.join(&format!("{name}.hls.flv"));
        wait_ok(ffmpeg_copy(&ff, &url, &[], &out), Duration::from_secs(30));
        assert_same_packets(&ff, &media().join(name), &out);
    }
}

#[test]
fn hls_js_and_a_video_element_play_files_in_chromium() {
    require_tool("chromium");
    let server = vod_server(media(), |_| {});
    let dir = TestDir::new();
    let site = StaticServer::with_players(dir.path());
    let mut browser = Browser::launch();
    for name in ["faststart.mp4", "frag.mp4"] {
        let page = format!("hls-{name}.html");
        let url = http_url(&server, &format!("{name}/index.m3u8"));
        std::fs::write(dir.join(&page), hls_page(&url, "{}")).unwrap();
        browser
            .navigate(&site.url(&format!("/{page}")))
            .expect("navigate");
        let playback = browser
            .wait_playback(2.0, Duration::from_secs(45))
            .unwrap_or_else(|e| panic!("hls.js, {name}: {e}"));
        assert_eq!((playback.width, playback.height), (320, 180));
        assert_eq!(playback.state["player"]["live"], serde_json::json!(false));
        assert!(browser.errors().is_empty(), "{:?}", browser.errors());
    }
    // A plain <video src=...mp4> (moov at the end: the browser needs
    // ranges to find it), then a seek to 4 s.
    let page = "video.html";
    let src = serde_json::to_string(&http_url(&server, "end.mp4")).unwrap();
    std::fs::write(
        dir.join(page),
        common::browser::page(
            "sluice: video",
            "data:,",
            &format!(
        "sluice.video.src = {src}; sluice.video.play().catch((e) => sluice.fail('play(): ' + e));"
    ),
        ),
    )
    .unwrap();
    browser
        .navigate(&site.url(&format!("/{page}")))
        .expect("navigate");
    browser
        .wait_playback(1.0, Duration::from_secs(45))
        .unwrap_or_else(|e| panic!("<video>: {e}"));
    browser.eval("sluice.video.currentTime = 4.0").unwrap();
    let at = browser
        .wait_until(
            "sluice.video.currentTime > 4.3 && sluice.video.readyState >= 2",
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("seeking the <video>: {e}"));
    assert_eq!(at, serde_json::json!(true));
    assert!(browser.errors().is_empty(), "{:?}", browser.errors());
}

// ---------------------------------------------------------------------------------------
// Paths, access, faults
// ---------------------------------------------------------------------------------------

/// A raw HTTP GET (paths exactly as given): the status.
fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// play `name`: the first status (and its description).
fn play_status(server: &RunningServer, name: &str) -> (String, String) {
    let mut c = TestClient::connect(server.addrs().rtmp, "vod");
    let id = c.create_stream();
    c.session_mut().play(id, name);
    c.flush();
    let code = match c.wait_for("a play status", |e| {
        matches!(e, ClientEvent::Status { code, .. }
            if code.starts_with("NetStream.Play") && code != "NetStream.Play.Reset")
    }) {
        ClientEvent::Status { code, .. } => code,
        _ => unreachable!(),
    };
    let description = c
        .session()
        .last_status()
        .and_then(|s| s.get("description"))
        .and_then(|d| d.as_str())
        .unwrap_or_default()
        .to_owned();
    (code, description)
}

#[test]
fn paths_outside_the_directory_are_not_found() {
    let dir = TestDir::new();
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::copy(media().join("idx.flv"), dir.join("secret.flv")).unwrap();
    std::fs::copy(media().join("idx.flv"), root.join("ok.flv")).unwrap();
    std::os::unix::fs::symlink(dir.join("secret.flv"), root.join("escape.flv")).unwrap();
    std::os::unix::fs::symlink(root.join("ok.flv"), root.join("inside.flv")).unwrap();
    let server = vod_server(&root, |_| {});
    let addr = http_addr(&server);
    assert_eq!(http_status(addr, "/vod/ok.flv"), 200);
    assert_eq!(
        http_status(addr, "/vod/inside.flv"),
        200,
        "a link that stays inside"
    );
    for path in [
        "/vod/../secret.flv",
        "/vod/%2e%2e/secret.flv",
        "/vod/sub/../../secret.flv",
        "/vod//tmp/secret.flv",
        "/vod/escape.flv",
        "/vod/missing.flv",
        "/vod/ok.txt",
    ] {
        assert_eq!(http_status(addr, path), 404, "{path}");
    }
    assert_eq!(play_status(&server, "ok.flv").0, "NetStream.Play.Start");
    for name in ["../secret.flv", "escape.flv", "missing.flv"] {
        assert_eq!(
            play_status(&server, name).0,
            "NetStream.Play.StreamNotFound",
            "{name}"
        );
    }
    // follow_symlinks lets the link through.
    let lenient = vod_server(&root, |r| r.vod.as_mut().unwrap().follow_symlinks = true);
    assert_eq!(http_status(http_addr(&lenient), "/vod/escape.flv"), 200);
    assert_eq!(
        play_status(&lenient, "escape.flv").0,
        "NetStream.Play.Start"
    );
}

#[test]
fn keys_guard_files_as_they_guard_live_streams() {
    let server = vod_server(media(), |r| r.play.keys = vec!["k1".into()]);
    assert_eq!(play_status(&server, "idx.flv").0, "NetStream.Play.Failed");
    assert_eq!(
        play_status(&server, "idx.flv?key=k1").0,
        "NetStream.Play.Start"
    );
    let addr = http_addr(&server);
    assert_eq!(http_status(addr, "/vod/idx.flv"), 401);
    assert_eq!(http_status(addr, "/vod/idx.flv?key=k1"), 200);
    assert_eq!(http_status(addr, "/vod/end.mp4/index.m3u8"), 401);
    assert_eq!(http_status(addr, "/vod/end.mp4/index.m3u8?key=k1"), 200);
}

/// Signed play URLs guard files as they guard live streams: the
/// signature names the file (`APP/path`), an expired one or one for another
/// file is refused, over RTMP and HTTP alike.
#[test]
fn signed_urls_guard_files_as_they_guard_live_streams() {
    use sluice::auth::{sign, SignRule, SignScheme};
    let server = vod_server(media(), |r| {
        r.play.sign = Some(SignRule {
            secret: "vod-secret".into(),
            scheme: SignScheme::HmacSha256,
        })
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = sign(
        SignScheme::HmacSha256,
        "vod-secret",
        "vod",
        "idx.flv",
        now + 60,
    );
    let expired = sign(
        SignScheme::HmacSha256,
        "vod-secret",
        "vod",
        "idx.flv",
        now - 1,
    );
    let other = sign(
        SignScheme::HmacSha256,
        "vod-secret",
        "vod",
        "end.mp4",
        now + 60,
    );
    assert_eq!(
        play_status(&server, &format!("idx.flv?sign={good}")).0,
        "NetStream.Play.Start"
    );
    for bad in [
        "idx.flv".to_string(),
        format!("idx.flv?sign={expired}"),
        format!("idx.flv?sign={other}"),
    ] {
        assert_eq!(
            play_status(&server, &bad).0,
            "NetStream.Play.Failed",
            "{bad}"
        );
    }
    let addr = http_addr(&server);
    assert_eq!(http_status(addr, &format!("/vod/idx.flv?sign={good}")), 200);
    assert!(matches!(http_status(addr, "/vod/idx.flv"), 401 | 403));
    assert!(matches!(
        http_status(addr, &format!("/vod/idx.flv?sign={other}")),
        401 | 403
    ));
}

#[test]
fn corrupt_files_are_refused_with_a_reason() {
    let dir = TestDir::new();
    std::fs::write(
        dir.join("text.mp4"),
        b"this is not a movie, only some text in a file",
    )
    .unwrap();
    let mut mp4 = std::fs::read(media().join("faststart.mp4")).unwrap();
    // Break the moov: its first child's size runs past the box.
    let at = mp4.windows(4).position(|w| w == b"moov").unwrap();
    mp4[at + 4..at + 8].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(dir.join("broken.mp4"), &mp4).unwrap();
    std::fs::write(dir.join("empty.flv"), b"").unwrap();
    let server = vod_server(dir.path(), |_| {});
    for name in ["text.mp4", "broken.mp4", "empty.flv"] {
        let (code, why) = play_status(&server, name);
        assert_eq!(code, "NetStream.Play.Failed", "{name}: {why}");
        assert!(
            why.contains(name) && why.len() > name.len() + 10,
            "{name}: {why:?}"
        );
    }
    // Over HTTP the bytes are served as they are; HLS needs the index.
    assert_eq!(
        http_status(http_addr(&server), "/vod/broken.mp4/index.m3u8"),
        500
    );
}

#[test]
fn a_file_truncated_while_playing_fails_that_play_only() {
    let dir = TestDir::new();
    std::fs::copy(media().join("noidx.flv"), dir.join("cut.flv")).unwrap();
    let server = vod_server(dir.path(), |_| {});
    let rtmp = server.addrs().rtmp;
    // A live stream and its player, and a player of the same file that
    // is left alone (it opened the file before the cut: it reads the same
    // inode, so it is cut too) -- and of another file.
    std::fs::copy(media().join("idx.flv"), dir.join("other.flv")).unwrap();
    let mut publisher = TestClient::connect(rtmp, "live");
    let (pid, code) = publisher.publish("cam");
    assert_eq!(code, "NetStream.Publish.Start");
    let mut synth = support::Synth::new(10, 2000);
    for f in synth.headers() {
        publisher.send(pid, &f);
    }
    let mut viewer = TestClient::connect(rtmp, "live");
    viewer.play("cam");

    let mut victim = TestClient::connect(rtmp, "vod");
    let vid = victim.create_stream();
    victim.session_mut().set_buffer_length(vid, 100);
    victim.session_mut().play(vid, "cut.flv");
    let mut other = TestClient::connect(rtmp, "vod");
    let oid = other.create_stream();
    other.session_mut().set_buffer_length(oid, 100);
    other.session_mut().play(oid, "other.flv");
    let (mut media, mut statuses) = (Vec::new(), Vec::new());
    read_events(&mut victim, WAIT, &mut media, &mut statuses, |m, _| {
        m.iter().any(|g| g.ts >= 1000)
    });
    // Cut the file in place to a third.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cut.flv"))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 3).unwrap();
    drop(f);
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut other_media, mut other_statuses) = (Vec::new(), Vec::new());
    let mut live_frames = 0;
    while Instant::now() < deadline && !statuses.iter().any(|s| s == "NetStream.Play.Failed") {
        for f in synth.next() {
            publisher.send(pid, &f);
        }
        read_events(
            &mut victim,
            Duration::from_millis(30),
            &mut media,
            &mut statuses,
            |_, _| false,
        );
        read_events(
            &mut other,
            Duration::from_millis(10),
            &mut other_media,
            &mut other_statuses,
            |_, _| false,
        );
        while let Some(e) = viewer.next_event(Duration::from_millis(1)) {
            live_frames += usize::from(matches!(e, ClientEvent::Media { .. }));
        }
    }
    assert!(
        statuses.iter().any(|s| s == "NetStream.Play.Failed"),
        "{statuses:?}"
    );
    let why = victim
        .session()
        .last_status()
        .and_then(|s| s.get("description"))
        .and_then(|d| d.as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(why.contains("truncated") || why.contains("shrank"), "{why}");
    // The others went on.
    assert!(live_frames > 10, "the live player got {live_frames} frames");
    read_events(
        &mut other,
        Duration::from_secs(15),
        &mut other_media,
        &mut other_statuses,
        |_, s| s.iter().any(|c| c == "NetStream.Play.Stop"),
    );
    assert!(
        other_statuses.iter().any(|s| s == "NetStream.Play.Stop"),
        "{other_statuses:?}"
    );
    assert!(!other_statuses.iter().any(|s| s == "NetStream.Play.Failed"));
    // The connection of the failed play is still usable.
    let id2 = victim.create_stream();
    victim.session_mut().play(id2, "other.flv");
    victim.wait_status("NetStream.Play.Start");
}

#[test]
fn a_file_replaced_while_playing_plays_on_as_opened() {
    let ff = require_tool("ffmpeg");
    let dir = TestDir::new();
    std::fs::copy(media().join("faststart.mp4"), dir.join("movie.mp4")).unwrap();
    std::fs::copy(media().join("idx.flv"), dir.join("new.tmp")).unwrap();
    let server = vod_server(dir.path(), |_| {});
    let out = dir.join("out.flv");
    let player = ffmpeg_copy(&ff, &rtmp_url(&server, "movie.mp4"), &[], &out);
    thread::sleep(Duration::from_millis(1500));
    // Replaced the way a careful writer replaces a file: a rename.
    std::fs::rename(dir.join("new.tmp"), dir.join("movie.mp4")).unwrap();
    wait_ok(player, Duration::from_secs(30));
    assert_same_packets(&ff, &media().join("faststart.mp4"), &out);
    // A new play gets the new file: it is FLV now, under an .mp4 name.
    let (code, why) = play_status(&server, "movie.mp4");
    assert_eq!(code, "NetStream.Play.Failed", "{why}");
}

/// A loop never waits for a disk: with every read, open and stat of the
/// disk threads taking 1.5 s (a cold disk; the test-only
/// `SLUICE_TEST_DISK_READ_DELAY_MS`), four viewers of a file on the one
/// worker wait for their own reads while a live player on the same worker
/// goes on getting frames at the stream's pace (never 500 ms without one);
/// the viewers are still served once their reads come back.
#[test]
fn a_cold_disk_slows_its_own_viewers_not_the_workers_other_players() {
    let dir = TestDir::new();
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!("[app.vod.vod]\ndir = {:?}\n", media().display().to_string()),
    )
    .unwrap();
    let server = common::Server::start_with_env(
        1,
        &["-c", &config.display().to_string()],
        &[("SLUICE_TEST_DISK_READ_DELAY_MS", "1500")],
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let _publisher = common::publish_ffmpeg(&server.url("live", "cam"), common::clip());
    server.wait_live("live/cam");
    let mut live = TestClient::connect(addr, "live");
    let live_id = live.create_stream();
    live.session_mut()
        .play_with(live_id, "cam", -2000.0, -1.0, true);
    // Joined: its first frames (the cached GOP) are in.
    let (mut got, mut statuses) = (Vec::new(), Vec::new());
    read_events(
        &mut live,
        Duration::from_secs(10),
        &mut got,
        &mut statuses,
        |m, _| m.len() > 30,
    );
    assert!(got.len() > 30, "the live player started: {statuses:?}");
    // Four viewers of a file, each waiting on the slow disk.
    type Viewer = (usize, Option<Duration>, Vec<String>);
    let viewers: Vec<thread::JoinHandle<Viewer>> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut c = TestClient::connect(addr, "vod");
                let id = c.create_stream();
                c.session_mut().set_buffer_length(id, 1000);
                let asked = Instant::now();
                c.session_mut()
                    .play_with(id, "faststart.mp4", -2000.0, -1.0, true);
                let (mut media, mut statuses) = (Vec::new(), Vec::new());
                read_events(
                    &mut c,
                    Duration::from_secs(20),
                    &mut media,
                    &mut statuses,
                    |m, _| m.iter().filter(|g| g.kind == MediaKind::Video).count() >= 30,
                );
                let first = media.first().map(|g| g.at.duration_since(asked));
                (media.len(), first, statuses)
            })
        })
        .collect();
    // Meanwhile the live player's frames keep coming.
    let mut longest = Duration::ZERO;
    let mut last = Instant::now();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(5) {
        let before = got.len();
        read_events(
            &mut live,
            Duration::from_millis(50),
            &mut got,
            &mut statuses,
            |_, _| false,
        );
        let now = Instant::now();
        if got.len() > before {
            longest = longest.max(got[before].at.duration_since(last));
            last = got[got.len() - 1].at;
        } else {
            longest = longest.max(now.duration_since(last));
        }
    }
    eprintln!("[vod] slow disk: the live player's longest wait for a frame: {longest:?}");
    assert!(
        longest < Duration::from_millis(500),
        "the live player waited {longest:?} for a frame while files were read"
    );
    for v in viewers {
        let (n, first, statuses) = v.join().unwrap();
        assert!(
            statuses.iter().any(|s| s == "NetStream.Play.Start"),
            "{statuses:?}"
        );
        assert!(
            n >= 30,
            "a viewer of the slow disk got {n} frames: {statuses:?}"
        );
        // The disk was slow for them: the file's open and first read took
        // the delay each before the first frame.
        let first = first.unwrap();
        assert!(
            first >= Duration::from_millis(1500),
            "first frame after {first:?}"
        );
    }
    assert!(server
        .log()
        .contains("SLUICE_TEST_DISK_READ_DELAY_MS is set"));
}
