//! Enhanced RTMP v2 end to end (issue 7).
//!
//! * Real peers: ffmpeg 9 (the static build the PyPI package `imageio-ffmpeg`
//!   ships; `.ci/run` installs it) publishes HEVC + AAC, AV1 + Opus, VP9 +
//!   Opus and a two-video-track multitrack stream (HEVC track 0 + VP9 track
//!   1, Opus) to the `sluice` binary; ffmpeg 9 plays each back over RTMP and
//!   HTTP-FLV, joining late (mid-GOP). Packets are listed with ffmpeg 9
//!   itself (`-dump` for keyframe flags, `-f framemd5` for hashes): the
//!   imageio-ffmpeg package ships no ffprobe, and Debian's ffprobe 5.1 does
//!   not read Enhanced FLV (it calls HEVC "vp6f"). Every track must match
//!   what was published from its first keyframe on, and the codecs must be
//!   the published ones.
//! * Byte level, in process: every video packet type and FourCC (unknown
//!   ones and truncated headers too), every audio FourCC and packet type,
//!   multitrack and ModEx, passed through unchanged to RTMP and HTTP-FLV
//!   players; multitrack late joiners get every track's sequence header and
//!   start every track on a keyframe; connect negotiation and the
//!   player-side FourCC filter; the reconnect request on drain.
//!
//! The real-peer tests need ffmpeg >= 8, which Debian does not package: they
//! are `#[ignore]`d, so a plain `cargo test` reports them as ignored (never
//! as passed), and `./test` installs ffmpeg 9 and runs them (`cargo test
//! --test enhanced -- --ignored` does too, and fails with the install command
//! when ffmpeg 9 is missing).

mod common;
mod support;

use bytes::BytesMut;
use common::ffmpeg9::{make_clip9, probe9, strings};
use common::{
    compare_from_first_keyframe, require_tool, wait_all_or_stop, Peer, Server, PLAYER_END_GRACE,
};
use sluice::protocol::amf::{self, Amf0Value};
use sluice::protocol::client::{ClientConfig, ClientEvent};
use sluice::protocol::session::MediaKind;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};
use support::{start_server, TestClient, WAIT};

// ---------------------------------------------------------------------------------------
// ffmpeg 9
// ---------------------------------------------------------------------------------------

/// Clip length and GOP: a keyframe every second, players join at 1.5 s.
const CLIP_SECS: u64 = 6;
const GOP: &str = "30";
const FFMPEG_STOP: &[(&str, u64)] = &[("TERM", 400), ("TERM", 3000)];

const X265: &[&str] = &[
    "libx265",
    "-preset",
    "ultrafast",
    "-x265-params",
    "keyint=30:min-keyint=30:scenecut=0:log-level=error",
];
const VP9: &[&str] = &[
    "libvpx-vp9",
    "-deadline",
    "realtime",
    "-cpu-used",
    "8",
    "-g",
    GOP,
    "-keyint_min",
    GOP,
    "-b:v",
    "400k",
];
const SVTAV1: &[&str] = &["libsvtav1", "-preset", "12", "-g", GOP];

fn spawn_ffmpeg(ff: &str, name: &str, args: Vec<String>, out: Option<&Path>) -> Peer {
    Peer::spawn(name, ff, &args, Duration::from_secs(45), FFMPEG_STOP, out)
}

/// Publishes `clip` (`-re`, stream copy) with `extra` output options.
fn publish9(ff: &str, clip: &Path, url: &str, extra: &[&str]) -> Peer {
    let mut a = strings(&["-hide_banner", "-nostdin", "-loglevel", "warning", "-re"]);
    a.extend(strings(&["-i", &clip.display().to_string(), "-map", "0"]));
    a.extend(strings(&["-c", "copy"]));
    a.extend(strings(extra));
    a.extend(strings(&["-f", "flv", url]));
    spawn_ffmpeg(ff, "ffmpeg 9 publisher", a, None)
}

/// Plays `url` (RTMP or HTTP-FLV) into an FLV file, every stream copied.
fn play9(ff: &str, url: &str, out: &Path) -> Peer {
    let a = strings(&[
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "warning",
        "-y",
        "-rw_timeout",
        "3000000",
        "-i",
        url,
        "-map",
        "0",
        "-c",
        "copy",
        "-f",
        "flv",
        &out.display().to_string(),
    ]);
    spawn_ffmpeg(ff, &format!("ffmpeg 9 player {url}"), a, Some(out))
}

/// Publishes a clip, has an RTMP and an HTTP-FLV player join mid-GOP, and
/// checks each received every track, packet for packet, from its first
/// keyframe on, with the published codecs.
fn publish_and_play(name: &str, video: &[&str], second: Option<&[&str]>, audio: &[&str]) {
    let ff = &require_tool("ffmpeg9");
    let t0 = Instant::now();
    let server = Server::start(2, &[]);
    let clip = server.dir().join(&format!("{name}.flv"));
    make_clip9(ff, &clip, video, second, audio);
    let published = probe9(ff, &clip);
    let rtmp_url = server.url("live", name);
    let http_url = server.http_url("live", name);
    let mut publisher = publish9(
        ff,
        &clip,
        &rtmp_url,
        // What ffmpeg's RTMP client announces in connect (fourCcList).
        &["-rtmp_enhanced_codecs", "hvc1,av01,vp09,avc1,Opus,mp4a"],
    );
    // Keyframes at 0, 1, 2... s of media, which `-re` sends in real time: join
    // in the middle of the second GOP (checked below: `video_from > 0`).
    server.wait_live(&format!("live/{name}"));
    sleep(Duration::from_millis(1500));
    let outs = [server.dir().join("rtmp.flv"), server.dir().join("http.flv")];
    let mut players = vec![
        play9(ff, &rtmp_url, &outs[0]),
        play9(ff, &http_url, &outs[1]),
    ];
    let status = publisher.wait(Duration::from_secs(CLIP_SECS + 20));
    assert!(
        status.is_some_and(|s| s.success()),
        "publisher: {status:?}\n{}",
        publisher.stderr()
    );
    wait_all_or_stop(&mut players, PLAYER_END_GRACE);
    for (player, out) in players.iter().zip(&outs) {
        assert!(
            out.exists(),
            "{} wrote nothing; stderr:\n{}",
            player.name(),
            player.stderr()
        );
        let received = probe9(ff, out);
        assert_eq!(
            received.codecs(),
            published.codecs(),
            "{}: codecs; ffmpeg says {:?}",
            player.name(),
            received.lines
        );
        let (pv, rv) = (published.video_streams(), received.video_streams());
        for (p, r) in pv.iter().zip(&rv) {
            let join = compare_from_first_keyframe(&published.track(*p), &received.track(*r), 0)
                .unwrap_or_else(|e| {
                    panic!(
                        "{} video stream {r} ({}): {e}\nffmpeg stderr:\n{}",
                        player.name(),
                        received.streams[*r].1,
                        player.stderr()
                    )
                });
            assert!(
                join.video_from > 0,
                "{}: expected a mid-stream join, got {join:?}",
                player.name()
            );
            eprintln!("[enhanced] {name} {} track {r}: {join:?}", player.name());
        }
        for line in &received.lines {
            eprintln!("[enhanced] {name} via {}: {line}", player.name());
        }
    }
    let log = server.log();
    assert!(
        log.contains("fourCCs=Some("),
        "the publisher's fourCcList was not read; log:\n{log}"
    );
    eprintln!("[enhanced] {name} took {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
#[ignore = "needs ffmpeg >= 8 (python3 -m pip install imageio-ffmpeg); run by ./test"]
fn ffmpeg9_hevc_aac_over_rtmp_and_http_flv() {
    publish_and_play("hevc", X265, None, &["aac", "-b:a", "96k"]);
}

#[test]
#[ignore = "needs ffmpeg >= 8 (python3 -m pip install imageio-ffmpeg); run by ./test"]
fn ffmpeg9_av1_opus_over_rtmp_and_http_flv() {
    publish_and_play("av1", SVTAV1, None, &["libopus"]);
}

#[test]
#[ignore = "needs ffmpeg >= 8 (python3 -m pip install imageio-ffmpeg); run by ./test"]
fn ffmpeg9_vp9_opus_over_rtmp_and_http_flv() {
    publish_and_play("vp9", VP9, None, &["libopus"]);
}

#[test]
#[ignore = "needs ffmpeg >= 8 (python3 -m pip install imageio-ffmpeg); run by ./test"]
fn ffmpeg9_multitrack_hevc_and_vp9_over_rtmp_and_http_flv() {
    publish_and_play("multitrack", X265, Some(VP9), &["libopus"]);
}

/// H.264 with B-frames (composition times) and a keyframe every second.
const X264: &[&str] = &[
    "libx264",
    "-preset",
    "superfast",
    "-bf",
    "2",
    "-g",
    GOP,
    "-keyint_min",
    GOP,
    "-sc_threshold",
    "0",
];

/// ABR without transcoding (docs/codecs.md, "Renditions"): ffmpeg 9
/// publishes two H.264 tracks (320x240 as track 0, 160x120 as track 1 in
/// multitrack form) and AAC; legacy players that know nothing of Enhanced
/// RTMP (Debian's ffmpeg over RTMP and HTTP-FLV, rtmpdump) ask for
/// `NAME~1` mid-stream and get track 1 in the legacy AVC form, packet for
/// packet what was published from their first keyframe on, at 160x120,
/// with the audio; the rendition exists only once a player asked for it;
/// the parent still plays both tracks.
#[test]
#[ignore = "needs ffmpeg >= 8 (python3 -m pip install imageio-ffmpeg); run by ./test"]
fn legacy_players_play_one_rendition_of_a_multitrack_stream_by_name() {
    let ff = &require_tool("ffmpeg9");
    let t0 = Instant::now();
    let server = Server::start(2, &[]);
    let clip = server.dir().join("abr.flv");
    make_clip9(ff, &clip, X264, Some(X264), &["aac", "-b:a", "96k"]);
    let published = probe9(ff, &clip);
    assert_eq!(published.codecs(), ["h264", "h264", "aac"], "the clip");
    let pv = published.video_streams();
    let mut publisher = publish9(
        ff,
        &clip,
        &server.url("live", "abr"),
        &["-rtmp_enhanced_codecs", "avc1,mp4a"],
    );
    server.wait_live("live/abr");
    sleep(Duration::from_millis(1500));
    assert!(
        server.stream("live/abr~1").is_none(),
        "a rendition starts only when a player asks for it"
    );
    let dir = server.dir();
    let outs = [
        dir.join("ffmpeg-rtmp.flv"),
        dir.join("ffmpeg-http.flv"),
        dir.join("rtmpdump.flv"),
        dir.join("parent.flv"),
    ];
    // The HTTP-FLV player asks first: its request starts the rendition.
    let http_player = common::play_ffmpeg(&server.http_url("live", "abr~1"), &outs[1]);
    let rendition = server.wait_live("live/abr~1");
    let mut players = vec![
        common::play_ffmpeg(&server.url("live", "abr~1"), &outs[0]),
        http_player,
        common::play_rtmpdump(&server.url("live", "abr~1"), &outs[2]),
        play9(ff, &server.url("live", "abr"), &outs[3]),
    ];
    eprintln!("[enhanced] /api/streams for live/abr~1: {rendition}");
    let parent = server
        .stream("live/abr")
        .expect("the parent in /api/streams");
    assert_eq!(
        parent["renditions"],
        serde_json::json!([{ "track": 1, "stream": "live/abr~1" }]),
        "the parent lists its rendition"
    );
    let status = publisher.wait(Duration::from_secs(CLIP_SECS + 20));
    assert!(
        status.is_some_and(|s| s.success()),
        "publisher: {status:?}\n{}",
        publisher.stderr()
    );
    wait_all_or_stop(&mut players, PLAYER_END_GRACE);
    for (player, out) in players.iter().zip(&outs) {
        assert!(
            out.exists(),
            "{} wrote nothing; stderr:\n{}",
            player.name(),
            player.stderr()
        );
        let received = probe9(ff, out);
        let rv = received.video_streams();
        // The parent: both tracks; a rendition: track 1 alone.
        let tracks: Vec<(usize, usize)> = if out == &outs[3] {
            assert_eq!(received.codecs(), published.codecs(), "{}", player.name());
            pv.iter().copied().zip(rv.iter().copied()).collect()
        } else {
            let mut codecs = received.codecs();
            codecs.sort_unstable();
            assert_eq!(
                codecs,
                ["aac", "h264"],
                "{}: {:?}",
                player.name(),
                received.lines
            );
            let video = received
                .lines
                .iter()
                .find(|l| l.contains("Video: h264"))
                .unwrap_or_else(|| panic!("{}: {:?}", player.name(), received.lines));
            assert!(
                video.contains("160x120"),
                "{}: track 1 is 160x120; ffmpeg says {video}",
                player.name()
            );
            vec![(pv[1], rv[0])]
        };
        for (p, r) in tracks {
            let join = compare_from_first_keyframe(&published.track(p), &received.track(r), 0)
                .unwrap_or_else(|e| {
                    panic!(
                        "{} video stream {r} (published {p}): {e}\nplayer stderr:\n{}",
                        player.name(),
                        player.stderr()
                    )
                });
            assert!(
                join.video_from > 0,
                "{}: expected a mid-stream join, got {join:?}",
                player.name()
            );
            eprintln!("[enhanced] abr {} track {p}: {join:?}", player.name());
        }
        for line in &received.lines {
            eprintln!("[enhanced] abr via {}: {line}", player.name());
        }
    }
    let log = server.log();
    assert_eq!(
        log.matches("rendition start stream=live/abr~1 ").count(),
        1,
        "one rendition for three players; log:\n{log}"
    );
    eprintln!("[enhanced] abr took {:.1}s", t0.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------
// Byte level, in process
// ---------------------------------------------------------------------------------------

fn ex_video(frame_type: u8, packet_type: u8, fourcc: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80 | frame_type << 4 | packet_type];
    v.extend_from_slice(fourcc);
    v.extend_from_slice(body);
    v
}

/// Video Multitrack, OneTrack.
fn mt_video(frame_type: u8, packet_type: u8, fourcc: &[u8; 4], track: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x80 | frame_type << 4 | 6, packet_type];
    v.extend_from_slice(fourcc);
    v.push(track);
    v.extend_from_slice(body);
    v
}

fn ex_audio(packet_type: u8, fourcc: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0x90 | packet_type];
    v.extend_from_slice(fourcc);
    v.extend_from_slice(body);
    v
}

fn metadata() -> Vec<u8> {
    let mut b = BytesMut::new();
    amf::encode(&Amf0Value::string("onMetaData"), &mut b);
    amf::encode(
        &Amf0Value::EcmaArray(vec![
            // FourCC codec ids (enhanced-rtmp-v2 "Enhancing onMetaData").
            (
                "videocodecid".into(),
                Amf0Value::Number(f64::from(u32::from_be_bytes(*b"hvc1"))),
            ),
            (
                "audiocodecid".into(),
                Amf0Value::Number(f64::from(u32::from_be_bytes(*b"Opus"))),
            ),
            ("width".into(), Amf0Value::Number(1920.0)),
            ("height".into(), Amf0Value::Number(1080.0)),
        ]),
        &mut b,
    );
    b.to_vec()
}

/// Every video packet type for every FourCC, multitrack, ModEx, command
/// frames, legacy HEVC (codec id 12), truncated and reserved headers; every
/// audio FourCC and packet type; onMetaData with FourCC codec ids. Starts
/// with an hvc1 SequenceStart and keyframe (where players start).
fn every_packet() -> Vec<(MediaKind, Vec<u8>)> {
    use MediaKind::{Audio, Data, Video};
    let mut v = vec![
        (Data, metadata()),
        (Video, ex_video(1, 0, b"hvc1", &[0x01, 0x02])),
        (Video, ex_video(1, 3, b"hvc1", &[0, 0, 0, 1, 0x26])),
    ];
    let fourccs: [&[u8; 4]; 7] = [
        b"avc1", b"hvc1", b"av01", b"vp09", b"vp08", b"vvc1", b"x?9\xff",
    ];
    for f in fourccs {
        v.push((Video, ex_video(1, 0, f, &[0xc0, 0x01]))); // SequenceStart
        v.push((Video, ex_video(1, 1, f, &[0, 0, 0, 0xaa]))); // CodedFrames, key
        v.push((Video, ex_video(2, 1, f, &[0, 0, 0x21, 0xbb]))); // CodedFrames, inter
        v.push((Video, ex_video(2, 3, f, &[0xcc]))); // CodedFramesX, inter
        v.push((Video, ex_video(5, 4, f, &[0x02, 0, 9]))); // Metadata (frame type ignored)
        v.push((Video, ex_video(1, 5, f, &[0x47]))); // MPEG2TSSequenceStart
        v.push((Video, ex_video(1, 2, f, &[]))); // SequenceEnd
        v.push((Video, ex_video(1, 8, f, &[0xdd]))); // reserved packet type
    }
    v.extend([
        // Back to hvc1 for what follows.
        (Video, ex_video(1, 0, b"hvc1", &[0x01, 0x03])),
        (Video, ex_video(1, 3, b"hvc1", &[0xee])),
        // Multitrack: OneTrack key then inter on track 1.
        (Video, mt_video(1, 1, b"av01", 1, &[0x12, 0x00])),
        (Video, mt_video(2, 1, b"av01", 1, &[0x32])),
        // ManyTracks (shared FourCC), key: track 0 and track 2.
        (
            Video,
            vec![
                0x96, 0x13, b'h', b'v', b'c', b'1', 0, 0, 0, 2, 0xaa, 0xbb, 2, 0, 0, 1, 0xcc,
            ],
        ),
        // ManyTracksManyCodecs, inter: avc1 track 0, av01 track 1.
        (
            Video,
            vec![
                0xa6, 0x21, b'a', b'v', b'c', b'1', 0, 0, 0, 4, 0, 0, 0, 0x01, b'a', b'v', b'0',
                b'1', 1, 0, 0, 1, 0x10,
            ],
        ),
        // ModEx (TimestampOffsetNano) then CodedFrames.
        (
            Video,
            vec![
                0x97, 0x02, 0x00, 0x01, 0xf4, 0x01, b'h', b'v', b'c', b'1', 0, 0, 0, 0x55,
            ],
        ),
        // ModEx with a 16-bit size, then SequenceStart.
        (Video, {
            let mut p = vec![0x97, 0xff, 0x01, 0x00];
            p.extend_from_slice(&[0xab; 257]);
            p.extend_from_slice(&[0x00, b'v', b'p', b'0', b'9', 0x01]);
            p
        }),
        // Command frames, enhanced and legacy.
        (Video, vec![0xd1, 0x00]),
        (Video, vec![0x57, 0x01]),
        // Legacy HEVC, codec id 12: sequence header, key, inter.
        (Video, vec![0x1c, 0x00, 0, 0, 0, 0x01]),
        (Video, vec![0x1c, 0x01, 0, 0, 0, 0x02]),
        (Video, vec![0x2c, 0x01, 0, 0, 0x21, 0x03]),
        // Truncated and reserved.
        (Video, vec![0x91, b'h', b'v']),
        (Video, vec![0x91]),
        (Video, vec![0x97, 0x05, 0x00]),
        (Video, vec![0x96]),
        (Video, vec![0x96, 0x31, b'h', b'v', b'c', b'1']),
        (
            Video,
            vec![0x96, 0x10, b'v', b'p', b'0', b'9', 0, 0, 0, 5, 0x01],
        ),
        // Legacy audio.
        (Audio, vec![0xaf, 0x00, 0x12, 0x10]),
        (Audio, vec![0xaf, 0x01, 0x21]),
        (Audio, vec![0x2f, 0xff, 0xfb]),
    ]);
    let audio: [&[u8; 4]; 7] = [
        b"Opus", b"fLaC", b"ac-3", b"ec-3", b".mp3", b"mp4a", b"zz\x00z",
    ];
    for f in audio {
        v.push((Audio, ex_audio(0, f, &[0x4f, 0x70]))); // SequenceStart
        v.push((Audio, ex_audio(1, f, &[0xfc, 0x01]))); // CodedFrames
        v.push((Audio, ex_audio(4, f, &[0x01, 0x06, 0, 0, 0, 0x3f]))); // MultichannelConfig
        v.push((Audio, ex_audio(2, f, &[]))); // SequenceEnd
        v.push((Audio, ex_audio(3, f, &[0x99]))); // reserved
    }
    v.extend([
        // Audio multitrack: ManyTracks AAC tracks 1 and 2, OneTrack Opus track 1.
        (
            Audio,
            vec![
                0x95, 0x10, b'm', b'p', b'4', b'a', 1, 0, 0, 2, 0x12, 0x10, 2, 0, 0, 2, 0x11, 0x90,
            ],
        ),
        (Audio, vec![0x95, 0x01, b'O', b'p', b'u', b's', 1, 0xfc]),
        // Audio ModEx then CodedFrames.
        (
            Audio,
            vec![0x97, 0x02, 0, 0, 0x10, 0x01, b'O', b'p', b'u', b's', 0xfc],
        ),
        // Truncated audio ex header.
        (Audio, vec![0x91, b'O', b'p']),
        (Video, ex_video(2, 1, b"hvc1", &[0, 0, 0, 0x77])),
    ]);
    v
}

/// Reads an HTTP-FLV response to its end: every tag as (type, payload).
fn read_http_flv(mut sock: TcpStream, until: Instant) -> Vec<(u8, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let head_end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response head")
        + 4;
    assert!(data.starts_with(b"HTTP/1.1 200"), "HTTP-FLV response");
    let mut rest = &data[head_end..];
    assert_eq!(&rest[..3], b"FLV");
    rest = &rest[13..];
    let mut tags = Vec::new();
    while rest.len() >= 11 {
        let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 11 + len + 4 {
            break;
        }
        tags.push((rest[0], rest[11..11 + len].to_vec()));
        rest = &rest[11 + len + 4..];
    }
    tags
}

fn http_get(addr: SocketAddr, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: sluice\r\n\r\n").unwrap();
    s
}

/// Media payloads a player received (without `|RtmpSampleAccess`).
fn rtmp_media(c: &mut TestClient, n: usize) -> Vec<(MediaKind, Vec<u8>)> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_event(left) {
            Some(ClientEvent::Media { kind, payload, .. }) => {
                if !(kind == MediaKind::Data
                    && payload.windows(17).any(|w| w == b"|RtmpSampleAccess"))
                {
                    got.push((kind, payload.to_vec()));
                }
            }
            Some(_) => {}
            None => break,
        }
    }
    got
}

fn type_id(kind: MediaKind) -> u8 {
    kind.type_id()
}

#[test]
fn every_packet_type_and_fourcc_passes_through_unchanged() {
    let server = start_server(2, |_| {});
    let addr = server.local_addr();
    let http = server.addrs().http.unwrap();
    // Both players wait for the stream, on whichever workers they land.
    let mut player = TestClient::connect(addr, "live");
    player.play("every");
    let flv = http_get(http, "/live/every.flv?wait=1");
    support::api::wait_until(WAIT, "both players registered", || {
        support::api::stream(http, "live/every").is_some_and(|s| s["players"]["total"] == 2)
    });
    let mut publisher = TestClient::connect(addr, "live");
    let (id, code) = publisher.publish("every");
    assert_eq!(code, "NetStream.Publish.Start");
    let sent = every_packet();
    for (i, (kind, payload)) in sent.iter().enumerate() {
        publisher.send_raw(id, *kind, 10 * i as u32, payload);
    }
    let got = rtmp_media(&mut player, sent.len());
    publisher.delete_stream(id);
    let tags = read_http_flv(flv, Instant::now() + WAIT);
    for (name, got) in [
        ("rtmp", got),
        (
            "http-flv",
            tags.into_iter()
                .map(|(t, p)| {
                    let kind = match t {
                        8 => MediaKind::Audio,
                        9 => MediaKind::Video,
                        _ => MediaKind::Data,
                    };
                    (kind, p)
                })
                .collect(),
        ),
    ] {
        for (i, (s, g)) in sent.iter().zip(&got).enumerate() {
            assert_eq!(
                (type_id(s.0), &s.1),
                (type_id(g.0), &g.1),
                "{name}: message #{i} differs"
            );
        }
        assert_eq!(got.len(), sent.len(), "{name}: messages received");
    }
    server.stop();
}

/// A two-track stream: track 0 hvc1 (no multitrack header, as OBS and
/// ffmpeg send the default track), track 1 av01 (multitrack OneTrack), and
/// Opus audio. Returns what was sent, with timestamps.
fn two_track_gops(publisher: &mut TestClient, id: u32, from_ms: u32, gops: u32) {
    for g in 0..gops {
        let base = from_ms + g * 1000;
        for f in 0..10u32 {
            let ts = base + f * 100;
            let key = f == 0;
            let ft = if key { 1 } else { 2 };
            // At the GOP start track 1's keyframe comes first (same time);
            // in odd GOPs track 1 has its keyframe half a GOP late.
            let t1_key = if g % 2 == 0 { key } else { f == 5 };
            let t1 = mt_video(
                if t1_key { 1 } else { 2 },
                1,
                b"av01",
                1,
                &[g as u8, f as u8],
            );
            let t0 = ex_video(ft, 1, b"hvc1", &[0, 0, 0, g as u8, f as u8]);
            if g % 2 == 0 {
                publisher.send_raw(id, MediaKind::Video, ts, &t1);
                publisher.send_raw(id, MediaKind::Video, ts, &t0);
            } else {
                publisher.send_raw(id, MediaKind::Video, ts, &t0);
                publisher.send_raw(id, MediaKind::Video, ts, &t1);
            }
            publisher.send_raw(id, MediaKind::Audio, ts, &ex_audio(1, b"Opus", &[0xfc]));
        }
    }
}

fn send_two_track_headers(publisher: &mut TestClient, id: u32) {
    publisher.send_raw(id, MediaKind::Data, 0, &metadata());
    publisher.send_raw(id, MediaKind::Video, 0, &ex_video(1, 0, b"hvc1", &[0x01]));
    publisher.send_raw(
        id,
        MediaKind::Video,
        0,
        &mt_video(1, 0, b"av01", 1, &[0x81]),
    );
    publisher.send_raw(id, MediaKind::Video, 0, &ex_video(1, 4, b"hvc1", &[0x02]));
    publisher.send_raw(
        id,
        MediaKind::Video,
        0,
        &mt_video(1, 4, b"av01", 1, &[0x02]),
    );
    publisher.send_raw(id, MediaKind::Audio, 0, &ex_audio(0, b"Opus", b"OpusHead"));
}

/// (track, class) of each received video message, in order.
fn video_classes(got: &[(MediaKind, Vec<u8>)]) -> Vec<sluice::media::MediaInfo> {
    got.iter()
        .filter(|(k, _)| *k == MediaKind::Video)
        .map(|(_, p)| sluice::media::classify_video(p))
        .collect()
}

/// The Enhanced single-track form: of ffmpeg 9's HEVC + VP9 multitrack
/// stream, `NAME~1` is the VP9 track (160x120) alone, with the Opus
/// audio, packet for packet, for ffmpeg 9 over RTMP and HTTP-FLV.
#[test]
#[ignore = "needs ffmpeg >= 8 (python3 -m pip install imageio-ffmpeg); run by ./test"]
fn ffmpeg9_plays_the_vp9_rendition_of_an_hevc_and_vp9_stream() {
    let ff = &require_tool("ffmpeg9");
    let server = Server::start(2, &[]);
    let clip = server.dir().join("mt.flv");
    make_clip9(ff, &clip, X265, Some(VP9), &["libopus"]);
    let published = probe9(ff, &clip);
    assert_eq!(published.codecs(), ["hevc", "vp9", "opus"], "the clip");
    let mut publisher = publish9(
        ff,
        &clip,
        &server.url("live", "mt"),
        &["-rtmp_enhanced_codecs", "hvc1,vp09,Opus"],
    );
    server.wait_live("live/mt");
    sleep(Duration::from_millis(1500));
    let outs = [server.dir().join("rtmp.flv"), server.dir().join("http.flv")];
    let mut players = vec![
        play9(ff, &server.url("live", "mt~1"), &outs[0]),
        play9(ff, &server.http_url("live", "mt~1"), &outs[1]),
    ];
    let status = publisher.wait(Duration::from_secs(CLIP_SECS + 20));
    assert!(status.is_some_and(|s| s.success()), "publisher: {status:?}");
    wait_all_or_stop(&mut players, PLAYER_END_GRACE);
    for (player, out) in players.iter().zip(&outs) {
        assert!(
            out.exists(),
            "{} wrote nothing: {}",
            player.name(),
            player.stderr()
        );
        let received = probe9(ff, out);
        let mut codecs = received.codecs();
        codecs.sort_unstable();
        assert_eq!(
            codecs,
            ["opus", "vp9"],
            "{}: {:?}",
            player.name(),
            received.lines
        );
        assert!(
            received
                .lines
                .iter()
                .any(|l| l.contains("Video: vp9") && l.contains("160x120")),
            "{}: {:?}",
            player.name(),
            received.lines
        );
        let (p, r) = (published.video_streams()[1], received.video_streams()[0]);
        let join = compare_from_first_keyframe(&published.track(p), &received.track(r), 0)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", player.name(), player.stderr()));
        assert!(join.video_from > 0, "{}: {join:?}", player.name());
        eprintln!("[enhanced] mt~1 {}: {join:?}", player.name());
    }
}

/// Publishes two H.264 tracks (track 0 legacy, track 1 multitrack
/// OneTrack `avc1`, as ffmpeg 8+ sends them) and AAC, and returns what a
/// player of rendition `~1` must receive for them, in order: track 1 in
/// the legacy AVC form, the audio and metadata unchanged, track 0 not.
fn abr_publish(
    publisher: &mut TestClient,
    id: u32,
    headers: bool,
    gop: u8,
) -> Vec<(MediaKind, Vec<u8>)> {
    let mut want = Vec::new();
    if headers {
        let meta = metadata();
        publisher.send_raw(id, MediaKind::Data, 0, &meta);
        want.push((MediaKind::Data, meta));
        publisher.send_raw(id, MediaKind::Video, 0, b"\x17\x00\x00\x00\x00avcC-0");
        publisher.send_raw(
            id,
            MediaKind::Video,
            0,
            &mt_video(1, 0, b"avc1", 1, b"avcC-1"),
        );
        want.push((MediaKind::Video, b"\x17\x00\x00\x00\x00avcC-1".to_vec()));
        let asc = b"\xaf\x00\x11\x90";
        publisher.send_raw(id, MediaKind::Audio, 0, asc);
        want.push((MediaKind::Audio, asc.to_vec()));
    }
    for f in 0..5u8 {
        let ts = u32::from(gop) * 1000 + u32::from(f) * 100;
        let ft = if f == 0 { 1 } else { 2 };
        let t0 = [ft << 4 | 7, 1, 0, 0, 0, gop, f];
        publisher.send_raw(id, MediaKind::Video, ts, &t0);
        // CodedFrames: SI24 composition time (0x21 ms), then the NAL units.
        let body = [0, 0, 0x21, gop, f, 1];
        publisher.send_raw(
            id,
            MediaKind::Video,
            ts,
            &mt_video(ft, 1, b"avc1", 1, &body),
        );
        want.push((MediaKind::Video, [&[ft << 4 | 7, 1][..], &body].concat()));
        let aac = [0xaf, 1, gop, f];
        publisher.send_raw(id, MediaKind::Audio, ts, &aac);
        want.push((MediaKind::Audio, aac.to_vec()));
    }
    want
}

/// In process, byte for byte: `NAME~1` of a two-track H.264 stream for a
/// legacy RTMP player that asked before the stream was live (the rendition
/// starts with track 1's sequence header), and for RTMP and HTTP-FLV
/// players joining later (headers and GOP from the rendition's own cache).
#[test]
fn rendition_rewraps_track_1_as_legacy_avc_byte_for_byte() {
    let server = start_server(2, |_| {});
    let addr = server.local_addr();
    let http = server.addrs().http.unwrap();
    let mut early = TestClient::connect(addr, "live");
    early.play("abr~1");
    support::api::wait_until(WAIT, "the early player registered", || {
        support::api::stream(http, "live/abr~1").is_some_and(|s| s["players"]["total"] == 1)
    });
    let mut publisher = TestClient::connect(addr, "live");
    let (id, code) = publisher.publish("abr");
    assert_eq!(code, "NetStream.Publish.Start");
    let mut want = abr_publish(&mut publisher, id, true, 0);
    // A round trip: the server has taken every frame sent before it.
    publisher.create_stream();
    let mut late = TestClient::connect(addr, "live");
    late.play("abr~1");
    let flv = http_get(http, "/live/abr~1.flv");
    support::api::wait_until(WAIT, "three rendition players", || {
        support::api::stream(http, "live/abr~1").is_some_and(|s| s["players"]["total"] == 3)
    });
    want.extend(abr_publish(&mut publisher, id, false, 1));
    let parent = support::api::stream(http, "live/abr").unwrap();
    assert_eq!(
        parent["renditions"],
        serde_json::json!([{ "track": 1, "stream": "live/abr~1" }])
    );
    let got_early = rtmp_media(&mut early, want.len());
    let got_late = rtmp_media(&mut late, want.len());
    // No rendition of a rendition: the name waits like any unpublished one.
    let mut nested = TestClient::connect(addr, "live");
    nested.play("abr~1~0");
    let nested_stream =
        support::api::stream(http, "live/abr~1~0").expect("a waiting player's stream");
    assert_eq!(nested_stream["live"], false, "{nested_stream}");
    publisher.delete_stream(id);
    let tags: Vec<(MediaKind, Vec<u8>)> = read_http_flv(flv, Instant::now() + WAIT)
        .into_iter()
        .map(|(t, p)| {
            let kind = match t {
                8 => MediaKind::Audio,
                9 => MediaKind::Video,
                _ => MediaKind::Data,
            };
            (kind, p)
        })
        .collect();
    for (name, got) in [
        ("early rtmp", got_early),
        ("late rtmp", got_late),
        ("http-flv", tags),
    ] {
        let got: Vec<_> = got.into_iter().map(|(k, p)| (type_id(k), p)).collect();
        let want: Vec<_> = want.iter().map(|(k, p)| (type_id(*k), p.clone())).collect();
        assert_eq!(got, want, "{name}");
    }
    support::api::wait_until(
        WAIT,
        "the rendition ended with its parent's publisher",
        || support::api::stream(http, "live/abr~1").is_none_or(|s| s["live"] == false),
    );
    // The publisher comes back: the rendition starts again, with track 1's
    // sequence header, for the players still there.
    let (id, code) = publisher.publish("abr");
    assert_eq!(code, "NetStream.Publish.Start");
    let want = abr_publish(&mut publisher, id, true, 2);
    let got = rtmp_media(&mut early, want.len());
    assert_eq!(
        got.into_iter()
            .map(|(k, p)| (type_id(k), p))
            .collect::<Vec<_>>(),
        want.into_iter()
            .map(|(k, p)| (type_id(k), p))
            .collect::<Vec<_>>(),
        "early rtmp, after the publisher came back"
    );
    server.stop();
}

#[test]
fn multitrack_late_joiner_gets_every_track_header_and_starts_each_on_a_keyframe() {
    use sluice::media::{Codec, FrameClass};
    let server = start_server(2, |_| {});
    let addr = server.local_addr();
    let mut publisher = TestClient::connect(addr, "live");
    let (id, _) = publisher.publish("mt");
    send_two_track_headers(&mut publisher, id);
    // GOP 0 (aligned, track 1 key first), GOP 1 (track 1 key at +500 ms),
    // then half of GOP 2 (aligned).
    two_track_gops(&mut publisher, id, 0, 2);
    // GOP 2 (aligned, track 1's keyframe sent just before track 0's, at
    // the same time): a joiner starts there on both tracks.
    two_track_gops(&mut publisher, id, 2000, 1);
    // A round trip on the publisher's connection: the server has taken every
    // frame sent before it, so the GOP cache starts at GOP 2.
    publisher.create_stream();
    let mut late = TestClient::connect(addr, "live");
    late.play("mt");
    let got = rtmp_media(&mut late, 6 + 30);
    let infos = video_classes(&got);
    // Headers first: both tracks' sequence starts and metadata.
    let configs: Vec<_> = infos
        .iter()
        .take_while(|i| i.class != FrameClass::Keyframe && i.class != FrameClass::Frame)
        .map(|i| (i.class, i.codec, i.track))
        .collect();
    assert!(
        configs.contains(&(FrameClass::SequenceHeader, Codec::Hevc, 0))
            && configs.contains(&(FrameClass::SequenceHeader, Codec::Av1, 1))
            && configs.contains(&(FrameClass::Metadata, Codec::Hevc, 0))
            && configs.contains(&(FrameClass::Metadata, Codec::Av1, 1)),
        "headers before the first frame: {configs:?}"
    );
    assert_eq!(
        got.first().map(|(k, _)| *k),
        Some(MediaKind::Data),
        "onMetaData first"
    );
    for track in [0u8, 1] {
        let first = infos
            .iter()
            .find(|i| {
                i.track == track && matches!(i.class, FrameClass::Keyframe | FrameClass::Frame)
            })
            .unwrap_or_else(|| panic!("no frame of track {track}: {infos:?}"));
        assert_eq!(
            first.class,
            FrameClass::Keyframe,
            "track {track} starts with {first:?}"
        );
    }
    assert!(got
        .iter()
        .any(|(k, p)| *k == MediaKind::Audio && p[0] == 0x90));
    // /api/streams lists the tracks.
    let api = server.addrs().http.unwrap();
    let mut s = TcpStream::connect(api).unwrap();
    write!(
        s,
        "GET /api/streams/live/mt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    let json = &body[body.find("\r\n\r\n").unwrap() + 4..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    let tracks: Vec<(String, u64, String)> = v["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["type"].as_str().unwrap().to_string(),
                t["id"].as_u64().unwrap(),
                t["fourcc"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        tracks,
        vec![
            ("video".into(), 0, "hvc1".into()),
            ("video".into(), 1, "av01".into()),
            ("audio".into(), 0, "Opus".into()),
        ]
    );
    server.stop();
}

#[test]
fn multitrack_joiner_skips_a_track_until_its_own_keyframe() {
    use sluice::media::FrameClass;
    let server = start_server(1, |_| {});
    let addr = server.local_addr();
    let mut publisher = TestClient::connect(addr, "live");
    let (id, _) = publisher.publish("mt2");
    send_two_track_headers(&mut publisher, id);
    // GOP 1: track 1's keyframe comes half a GOP after track 0's.
    two_track_gops(&mut publisher, id, 0, 2);
    let mut late = TestClient::connect(addr, "live");
    late.play("mt2");
    let got = rtmp_media(&mut late, 6 + 10 + 5 + 10);
    let infos = video_classes(&got);
    let t1: Vec<_> = infos
        .iter()
        .filter(|i| i.track == 1 && matches!(i.class, FrameClass::Keyframe | FrameClass::Frame))
        .collect();
    assert_eq!(
        t1.first().map(|i| i.class),
        Some(FrameClass::Keyframe),
        "track 1 must start on its keyframe: {infos:?}"
    );
    assert_eq!(t1.len(), 5, "track 1 frames from its keyframe at +500 ms");
    server.stop();
}

// ---------------------------------------------------------------------------------------
// connect negotiation and player-side filtering
// ---------------------------------------------------------------------------------------

fn enhanced_client(addr: SocketAddr, fourccs: &[&str], caps_ex: Option<u8>) -> TestClient {
    let mut config = ClientConfig::new("live", format!("rtmp://{addr}/live"));
    config.fourcc_list = fourccs.iter().map(|s| s.to_string()).collect();
    config.caps_ex = caps_ex;
    TestClient::connect_with(addr, config)
}

#[test]
fn connect_answers_enhanced_clients_with_what_sluice_forwards() {
    let server = start_server(1, |_| {});
    let addr = server.local_addr();
    let c = enhanced_client(addr, &["hvc1", "av01", "Opus"], Some(0x03));
    let props = c.session().connect_properties().expect("connect _result");
    assert_eq!(props.get("capsEx").and_then(|v| v.as_number()), Some(7.0));
    assert_eq!(
        props.get("fourCcList"),
        Some(&Amf0Value::StrictArray(vec![Amf0Value::string("*")]))
    );
    for map in ["videoFourCcInfoMap", "audioFourCcInfoMap"] {
        assert_eq!(
            props
                .get(map)
                .and_then(|m| m.get("*"))
                .and_then(|v| v.as_number()),
            Some(4.0),
            "{map}: CanForward for every codec"
        );
    }
    // A legacy client gets the legacy answer.
    let legacy = TestClient::connect(addr, "live");
    let props = legacy.session().connect_properties().unwrap();
    assert!(props.get("capsEx").is_none() && props.get("fourCcList").is_none());
    assert_eq!(
        props.get("fmsVer").and_then(|v| v.as_str()),
        Some("FMS/3,0,1,123")
    );
    server.stop();
}

#[test]
fn players_get_only_the_codecs_they_announced() {
    let server = start_server(2, |_| {});
    let addr = server.local_addr();
    // (fourCcList, capsEx, expects hvc1 video, expects track 1)
    let cases: [(&[&str], Option<u8>, bool, bool); 5] = [
        (&[], None, true, true),          // legacy: everything
        (&["*"], Some(0x02), true, true), // wildcard + multitrack
        (&["hvc1", "av01"], Some(0x02), true, true),
        (&["avc1", "mp4a"], None, false, false), // no HEVC/AV1: audio only
        (&["hvc1", "av01"], Some(0x00), true, false), // no Multitrack: track 0 only
    ];
    let mut players: Vec<TestClient> = cases
        .iter()
        .map(|(list, caps, ..)| {
            let mut c = enhanced_client(addr, list, *caps);
            c.play("filtered");
            c
        })
        .collect();
    let mut publisher = TestClient::connect(addr, "live");
    let (id, _) = publisher.publish("filtered");
    // hvc1 video (track 0), av01 track 1, legacy AAC audio.
    publisher.send_raw(id, MediaKind::Video, 0, &ex_video(1, 0, b"hvc1", &[0x01]));
    publisher.send_raw(
        id,
        MediaKind::Video,
        0,
        &mt_video(1, 0, b"av01", 1, &[0x81]),
    );
    publisher.send_raw(id, MediaKind::Audio, 0, &[0xaf, 0x00, 0x12, 0x10]);
    for i in 0..20u32 {
        let ft = if i % 10 == 0 { 1 } else { 2 };
        publisher.send_raw(
            id,
            MediaKind::Video,
            i * 40,
            &ex_video(ft, 1, b"hvc1", &[0, 0, 0, i as u8]),
        );
        publisher.send_raw(
            id,
            MediaKind::Video,
            i * 40,
            &mt_video(ft, 1, b"av01", 1, &[i as u8]),
        );
        publisher.send_raw(id, MediaKind::Audio, i * 40, &[0xaf, 0x01, i as u8]);
    }
    for (c, (list, caps, hevc, track1)) in players.iter_mut().zip(cases) {
        let mut got = Vec::new();
        // Read until the last audio frame arrives.
        let deadline = Instant::now() + WAIT;
        while !got
            .iter()
            .any(|(k, p): &(MediaKind, Vec<u8>)| *k == MediaKind::Audio && p == &[0xaf, 0x01, 19])
        {
            let more = rtmp_media(c, 1);
            assert!(
                !more.is_empty() && Instant::now() < deadline,
                "{list:?}/{caps:?}: stream did not arrive (got {} messages)",
                got.len()
            );
            got.extend(more);
        }
        let infos = video_classes(&got);
        let hevc_frames = infos.iter().filter(|i| i.track == 0).count();
        let t1_frames = infos.iter().filter(|i| i.track == 1).count();
        let audio = got.iter().filter(|(k, _)| *k == MediaKind::Audio).count();
        assert_eq!(
            audio, 21,
            "{list:?}/{caps:?}: every AAC message (legacy audio always passes)"
        );
        assert_eq!(
            hevc_frames,
            if hevc { 21 } else { 0 },
            "{list:?}/{caps:?}: hvc1 track 0"
        );
        assert_eq!(
            t1_frames,
            if track1 { 21 } else { 0 },
            "{list:?}/{caps:?}: av01 track 1"
        );
    }
    server.stop();
}

// ---------------------------------------------------------------------------------------
// Reconnect request
// ---------------------------------------------------------------------------------------

#[test]
fn drain_asks_reconnect_capable_publishers_to_reconnect_and_keeps_serving_them() {
    let server = start_server(1, |c| {
        c.reconnect_url = Some("rtmp://127.0.0.1:1935/live".into());
        c.drain_timeout = Duration::from_secs(20);
    });
    let addr = server.local_addr();
    let http = server.addrs().http.unwrap();
    let mut enhanced = enhanced_client(addr, &["hvc1"], Some(0x01 | 0x02));
    let (id, _) = enhanced.publish("reconnecting");
    enhanced.send_raw(id, MediaKind::Video, 0, &ex_video(1, 0, b"hvc1", &[0x01]));
    let mut legacy = TestClient::connect(addr, "live");
    let (legacy_id, _) = legacy.publish("legacy");
    legacy.send_raw(legacy_id, MediaKind::Video, 0, &[0x17, 0x00, 0, 0, 0, 1]);
    // Round trips: the server has taken both publishers' headers.
    enhanced.create_stream();
    legacy.create_stream();

    // POST /api/drain (the same graceful shutdown SIGTERM starts).
    let mut s = TcpStream::connect(http).unwrap();
    write!(
        s,
        "POST /api/drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 202"), "drain answer: {resp}");
    let drained_at = Instant::now();

    enhanced.wait_for("reconnect request", |e| {
        matches!(e, ClientEvent::Status { stream_id: 0, code, level }
            if code == "NetConnection.Connect.ReconnectRequest" && level == "status")
    });
    assert_eq!(
        enhanced
            .session()
            .last_status()
            .and_then(|i| i.get("tcUrl"))
            .and_then(|v| v.as_str()),
        Some("rtmp://127.0.0.1:1935/live")
    );
    // The legacy publisher is told the stream ended and is closed.
    legacy.wait_status("NetStream.Unpublish.Success");
    let t = Instant::now();
    while !legacy.closed && t.elapsed() < Duration::from_secs(8) {
        legacy.read_once(Duration::from_millis(200));
    }
    assert!(legacy.closed, "the legacy publisher is closed on drain");

    // Past the 3 s flush deadline the enhanced publisher is still served:
    // media and commands go on being read and answered.
    while drained_at.elapsed() < Duration::from_millis(3500) {
        enhanced.send_raw(
            id,
            MediaKind::Video,
            40,
            &ex_video(2, 1, b"hvc1", &[0, 0, 0, 1]),
        );
        sleep(Duration::from_millis(100));
    }
    let second = enhanced.create_stream();
    assert!(second > id, "createStream answered during drain");
    assert!(!enhanced.closed);

    // It leaves (reconnected elsewhere): the server stops at once, not at
    // the 20 s drain deadline.
    drop(enhanced);
    let t = Instant::now();
    server.stop();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "server took {:?} to stop after the last publisher left",
        t.elapsed()
    );
}

#[test]
fn drain_deadline_closes_publishers_that_never_leave() {
    let server = start_server(1, |c| c.drain_timeout = Duration::from_secs(2));
    let addr = server.local_addr();
    let mut enhanced = enhanced_client(addr, &["*"], Some(0x01));
    let (_id, _) = enhanced.publish("stays");
    let t = Instant::now();
    server.shutdown_handle().shutdown();
    enhanced.wait_for("reconnect request", |e| {
        matches!(e, ClientEvent::Status { code, .. } if code == "NetConnection.Connect.ReconnectRequest")
    });
    assert!(enhanced
        .session()
        .last_status()
        .unwrap()
        .get("tcUrl")
        .is_none());
    while !enhanced.closed && t.elapsed() < Duration::from_secs(10) {
        enhanced.read_once(Duration::from_millis(200));
    }
    assert!(enhanced.closed, "closed at the drain deadline");
    assert!(
        t.elapsed() >= Duration::from_millis(1900),
        "not before it: {:?}",
        t.elapsed()
    );
    server.stop();
}
