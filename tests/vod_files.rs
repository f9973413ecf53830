//! The VOD reader (`sluice::vod`, sans-IO) against files ffmpeg wrote, in
//! process: each file is read through the reader's own byte-range
//! requests, its frames are written out as an FLV file, and ffmpeg's
//! packet hashes (`-f framemd5`) of that FLV must equal those of the
//! original, packet for packet, per media type. Seeks must land on the
//! keyframe at or before the target. Truncated and corrupt files must give
//! an error that says what is wrong, never a panic.
//!
//! H.264 + AAC (moov at the end, `+faststart`, fragmented, FLV with and
//! without the keyframe index) and H.264 + MP3 use Debian's ffmpeg. HEVC +
//! Opus and AV1 + Opus need ffmpeg >= 8 (Enhanced RTMP), which Debian does
//! not package: those tests are `#[ignore]`d, so a plain `cargo test`
//! reports them as ignored, and `./test` installs ffmpeg 9 and runs them
//! (`cargo test --test vod_files -- --ignored` fails with the install
//! command when it is missing).

mod common;

use bytes::Bytes;
use common::ffmpeg9::{make_test_card, strings};
use common::{require_tool, run_tool};
use sluice::protocol::session::MediaKind;
use sluice::vod::{Container, Limits, Reader, Step, VodError, VodFrame};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// The directory the test files are made in, once per test binary.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("sluice-vod-files-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Six seconds of 320x180 test picture at 30 fps (a keyframe a second)
/// and a sine, encoded by `ff` with `codecs` into `name`.
fn make(ff: &str, name: &str, codecs: &[&str]) -> PathBuf {
    let out = dir().join(name);
    if out.exists() {
        return out;
    }
    let tmp = dir().join(format!("tmp-{name}"));
    make_test_card(ff, &tmp, &strings(codecs));
    std::fs::rename(&tmp, &out).unwrap();
    out
}

const H264_AAC: &[&str] = &[
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

fn h264_aac(name: &str, extra: &[&str]) -> PathBuf {
    let mut codecs = H264_AAC.to_vec();
    codecs.extend_from_slice(extra);
    make(&require_tool("ffmpeg"), name, &codecs)
}

/// Reads `file` whole through the reader, seeking to `seek_ms` first if
/// given: the frames, and the position the seek reported.
fn read(file: &Path, seek_ms: Option<u64>) -> Result<(Vec<VodFrame>, Option<u32>), VodError> {
    let data = std::fs::read(file).unwrap();
    read_bytes(
        &data,
        Container::from_name(&file.display().to_string()).unwrap(),
        seek_ms,
    )
}

fn read_bytes(
    data: &[u8],
    container: Container,
    seek_ms: Option<u64>,
) -> Result<(Vec<VodFrame>, Option<u32>), VodError> {
    let mut r = Reader::new(container, data.len() as u64, Limits::default());
    if let Some(t) = seek_ms {
        r.seek(t);
    }
    let mut frames = Vec::new();
    let mut seeked = None;
    let mut reads = 0;
    loop {
        match r.poll()? {
            Step::Read(req) => {
                reads += 1;
                assert!(reads < 100_000, "too many reads");
                assert!(req.len <= 32 * 1024 * 1024, "read of {} bytes", req.len);
                let end = (req.offset as usize + req.len).min(data.len());
                let bytes = Bytes::copy_from_slice(&data[req.offset as usize..end]);
                r.handle_read(req, bytes)?;
            }
            Step::Wait => panic!("Wait with no read in flight"),
            Step::Frame(f) => frames.push(f),
            Step::Seeked { position_ms } => seeked = Some(position_ms),
            Step::End => return Ok((frames, seeked)),
        }
    }
}

/// The frames as an FLV file.
fn write_flv(frames: &[VodFrame], out: &Path) {
    common::write_flv_tags(
        out,
        frames.iter().map(|f| {
            let t = match f.kind {
                MediaKind::Audio => 8u8,
                MediaKind::Video => 9,
                MediaKind::Data => 18,
            };
            (t, f.timestamp, &f.payload[..])
        }),
    );
}

/// (size, md5) of every packet of one media type, in order, with
/// `ffmpeg -i FILE -map 0:v|0:a -c copy -f framemd5 -`.
fn hashes(ff: &str, file: &Path, video: bool) -> Vec<(u32, String)> {
    let map = if video { "0:v" } else { "0:a" };
    let args = strings(&[
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        &file.display().to_string(),
        "-map",
        map,
        "-c",
        "copy",
        "-f",
        "framemd5",
        "-",
    ]);
    let (status, out, err) = run_tool(ff, &args, Duration::from_secs(60));
    assert!(status.success(), "framemd5 of {}: {err}", file.display());
    out.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f[4].parse().unwrap(), f[5].to_string())
        })
        .collect()
}

/// Reads `file` through the reader and checks with `ff` that every audio
/// and video packet came out unchanged and in order.
fn assert_same_packets(ff: &str, file: &Path) -> Vec<VodFrame> {
    let (frames, _) = read(file, None).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let out = dir().join(format!(
        "{}.out.flv",
        file.file_name().unwrap().to_string_lossy()
    ));
    write_flv(&frames, &out);
    for video in [true, false] {
        let want = hashes(ff, file, video);
        let got = hashes(ff, &out, video);
        assert!(!want.is_empty(), "{}: no packets", file.display());
        assert_eq!(
            got.len(),
            want.len(),
            "{}: {} of {} {} packets",
            file.display(),
            got.len(),
            want.len(),
            if video { "video" } else { "audio" }
        );
        assert_eq!(got, want, "{}: packets differ", file.display());
    }
    // Headers first, timestamps in decode order per media type.
    assert!(frames[0].header, "metadata first");
    for kind in [MediaKind::Video, MediaKind::Audio] {
        let ts: Vec<u32> = frames
            .iter()
            .filter(|f| f.kind == kind && !f.header)
            .map(|f| f.timestamp)
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{kind:?} decode order");
        assert!(
            *ts.last().unwrap() > 5500,
            "{kind:?} reaches the end: {ts:?}"
        );
    }
    frames
}

#[test]
fn mp4_with_moov_at_the_end_reads_packet_for_packet() {
    let file = h264_aac("end.mp4", &[]);
    assert_same_packets(&require_tool("ffmpeg"), &file);
}

#[test]
fn mp4_with_faststart_reads_packet_for_packet() {
    let file = h264_aac("faststart.mp4", &["-movflags", "+faststart"]);
    assert_same_packets(&require_tool("ffmpeg"), &file);
}

#[test]
fn fragmented_mp4_reads_packet_for_packet() {
    let file = h264_aac(
        "frag.mp4",
        &["-movflags", "+frag_keyframe+empty_moov+default_base_moof"],
    );
    assert_same_packets(&require_tool("ffmpeg"), &file);
    // Without default-base-is-moof: explicit base data offsets.
    let file = h264_aac("frag-base.mp4", &["-movflags", "+frag_keyframe+empty_moov"]);
    assert_same_packets(&require_tool("ffmpeg"), &file);
    // The first fragment's samples in the moov, the rest in fragments.
    let file = h264_aac("frag-moov.mp4", &["-movflags", "+frag_keyframe"]);
    assert_same_packets(&require_tool("ffmpeg"), &file);
}

#[test]
fn flv_with_and_without_index_reads_packet_for_packet() {
    let file = h264_aac("idx.flv", &["-flvflags", "add_keyframe_index"]);
    assert_same_packets(&require_tool("ffmpeg"), &file);
    let file = h264_aac("noidx.flv", &[]);
    assert_same_packets(&require_tool("ffmpeg"), &file);
}

#[test]
fn mp4_h264_mp3_reads_packet_for_packet() {
    let ff = require_tool("ffmpeg");
    let file = make(
        &ff,
        "mp3.mp4",
        &[
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "64k",
        ],
    );
    assert_same_packets(&ff, &file);
}

#[test]
#[ignore = "needs ffmpeg >= 8 (Enhanced RTMP); ./test installs it"]
fn mp4_hevc_opus_reads_packet_for_packet() {
    let ff = require_tool("ffmpeg9");
    let file = make(
        &ff,
        "hevc.mp4",
        &[
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
        ],
    );
    assert_same_packets(&ff, &file);
}

#[test]
#[ignore = "needs ffmpeg >= 8 (Enhanced RTMP); ./test installs it"]
fn mp4_av1_opus_reads_packet_for_packet() {
    let ff = require_tool("ffmpeg9");
    let file = make(
        &ff,
        "av1.mp4",
        &[
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
        ],
    );
    assert_same_packets(&ff, &file);
}

/// The seek lands on the keyframe at or before the target: the first
/// video frame after the headers is a keyframe at the reported position,
/// no later than the target and within one GOP (1 s) of it.
fn assert_seek_lands_on_keyframe(file: &Path) {
    for target in [0u64, 2500, 3000, 4999, 60_000] {
        let (frames, seeked) = read(file, Some(target)).unwrap();
        let pos = u64::from(seeked.expect("Seeked reported"));
        let first = frames
            .iter()
            .find(|f| f.kind == MediaKind::Video && !f.header)
            .expect("a video frame");
        assert!(
            first.keyframe,
            "{}: seek {target}: first frame is a keyframe",
            file.display()
        );
        assert_eq!(
            u64::from(first.timestamp),
            pos,
            "{}: position",
            file.display()
        );
        if target <= 5000 {
            assert!(
                pos <= target && target - pos < 1100,
                "{}: seek {target} -> {pos}",
                file.display()
            );
        }
        // Headers come again before the first frame.
        assert!(frames.iter().take_while(|f| f.header).count() >= 2);
    }
}

#[test]
fn seeks_land_on_the_keyframe_at_or_before_the_target() {
    for (name, extra) in [
        ("seek-end.mp4", &[][..]),
        (
            "seek-frag.mp4",
            &["-movflags", "+frag_keyframe+empty_moov"][..],
        ),
        ("seek-idx.flv", &["-flvflags", "add_keyframe_index"][..]),
        ("seek-noidx.flv", &[][..]),
    ] {
        assert_seek_lands_on_keyframe(&h264_aac(name, extra));
    }
}

#[test]
fn stop_time_ends_playback() {
    let file = h264_aac("stop.mp4", &[]);
    let data = std::fs::read(&file).unwrap();
    let mut r = Reader::new(Container::Mp4, data.len() as u64, Limits::default());
    r.seek(2000);
    r.set_stop(Some(3000));
    let mut last = 0;
    loop {
        match r.poll().unwrap() {
            Step::Read(req) => {
                let end = req.offset as usize + req.len;
                r.handle_read(req, Bytes::copy_from_slice(&data[req.offset as usize..end]))
                    .unwrap();
            }
            Step::Frame(f) if !f.header => last = f.timestamp,
            Step::End => break,
            _ => {}
        }
    }
    assert!((2900..3000).contains(&last), "last frame at {last}");
}

#[test]
fn truncated_files_give_errors_that_say_so() {
    for (name, extra) in [
        ("trunc.mp4", &["-movflags", "+faststart"][..]),
        (
            "trunc-frag.mp4",
            &["-movflags", "+frag_keyframe+empty_moov"][..],
        ),
        ("trunc.flv", &[][..]),
    ] {
        let file = h264_aac(name, extra);
        let data = std::fs::read(&file).unwrap();
        let cut = &data[..data.len() * 2 / 3];
        let container = Container::from_name(name).unwrap();
        match read_bytes(cut, container, None) {
            Err(VodError::Truncated(why)) => assert!(!why.is_empty()),
            Err(e) => panic!("{name}: {e}"),
            Ok((frames, _)) => panic!("{name}: {} frames and no error", frames.len()),
        }
    }
    // moov at the end, cut off: no moov.
    let file = h264_aac("trunc-end.mp4", &[]);
    let data = std::fs::read(&file).unwrap();
    let e = read_bytes(&data[..data.len() - 100], Container::Mp4, None).unwrap_err();
    assert!(
        matches!(e, VodError::NoMoov | VodError::Truncated(_)),
        "{e}"
    );
}

#[test]
fn garbage_and_mislabelled_files_are_errors() {
    let e = read_bytes(
        b"this is not a video at all, just text",
        Container::Mp4,
        None,
    )
    .unwrap_err();
    assert!(matches!(e, VodError::NotThisFormat(_)), "{e}");
    let e = read_bytes(b"this is not a video", Container::Flv, None).unwrap_err();
    assert!(matches!(e, VodError::NotThisFormat(_)), "{e}");
    let flv = std::fs::read(h264_aac("label.flv", &[])).unwrap();
    assert!(read_bytes(&flv, Container::Mp4, None).is_err());
    let mp4 = std::fs::read(h264_aac("label.mp4", &[])).unwrap();
    assert!(read_bytes(&mp4, Container::Flv, None).is_err());
    assert!(read_bytes(b"", Container::Mp4, None).is_err());
    assert!(read_bytes(b"", Container::Flv, None).is_err());
    assert!(read_bytes(b"FLV\x01\x05", Container::Flv, None).is_err());
    // A top-level box whose 64-bit size runs past the end of everything
    // (the vod_reader fuzz target's first find: the walk overflowed).
    let mut huge = b"\x00\x00\x00\x10ftypisom\x00\x00\x02\x00".to_vec();
    huge.extend_from_slice(b"\x00\x00\x00\x01free");
    huge.extend_from_slice(&(u64::MAX - 4).to_be_bytes());
    huge.extend_from_slice(&[0; 64]);
    assert!(read_bytes(&huge, Container::Mp4, None).is_err());
}

/// Flipping bytes anywhere in a file gives frames or an error, never a
/// panic, and the reader never asks for more than its limits allow.
#[test]
fn corrupt_files_never_panic() {
    for name in ["corrupt.mp4", "corrupt.flv"] {
        let file = h264_aac(name, &["-movflags", "+faststart"]);
        let clean = std::fs::read(&file).unwrap();
        let container = Container::from_name(name).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200u32 {
            let mut data = clean.clone();
            for _ in 0..1 + round % 8 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Mostly the first 4 KiB (headers, moov), sometimes anywhere.
                let span = if round % 3 == 0 {
                    data.len()
                } else {
                    4096.min(data.len())
                };
                let at = (seed as usize) % span;
                data[at] ^= (seed >> 32) as u8 | 1;
            }
            let _ = read_bytes(&data, container, Some(u64::from(round) * 50));
        }
    }
}

/// The whole index of `file` (every fragment walked).
fn movie(file: &Path) -> (std::sync::Arc<sluice::vod::mp4::Movie>, Vec<u8>) {
    let data = std::fs::read(file).unwrap();
    let mut r = Reader::new(Container::Mp4, data.len() as u64, Limits::default());
    r.seek(u64::MAX);
    loop {
        match r.poll().unwrap() {
            Step::Read(req) => {
                let end = req.offset as usize + req.len;
                r.handle_read(req, Bytes::copy_from_slice(&data[req.offset as usize..end]))
                    .unwrap();
            }
            Step::Seeked { .. } => break,
            Step::End => panic!("ended before the seek resolved"),
            _ => {}
        }
    }
    (r.movie().unwrap().clone(), data)
}

/// Writes `file`'s HLS VOD (playlist, init, segments as the server would
/// serve them) next to it and checks that ffmpeg reads every packet of
/// the original through it.
fn assert_hls_vod_packets(ff: &str, file: &Path, expect_byte_ranges: bool) {
    use sluice::vod::hls::{self, Layout, Plan};
    let (movie, data) = movie(file);
    let plan = Plan::new(&movie, hls::TARGET_SEGMENT_MS).unwrap();
    assert_eq!(
        matches!(plan.layout, Layout::ByteRanges { .. }),
        expect_byte_ranges,
        "{}: {:?}",
        file.display(),
        plan.layout
    );
    assert!(!plan.segments.is_empty());
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let out = dir().join(format!("{name}.hls"));
    std::fs::create_dir_all(&out).unwrap();
    let playlist = plan.playlist(&format!("../{name}"), "");
    std::fs::write(out.join("index.m3u8"), &playlist).unwrap();
    if plan.layout == Layout::Built {
        std::fs::write(out.join("init.mp4"), hls::init(&movie)).unwrap();
        for i in 0..plan.segments.len() {
            let reads: Vec<(u64, Bytes)> = hls::segment_reads(&movie, &plan, i)
                .into_iter()
                .map(|r| {
                    let a = r.offset as usize;
                    (r.offset, Bytes::copy_from_slice(&data[a..a + r.len]))
                })
                .collect();
            let seg = hls::segment(&movie, &plan, i, &reads).unwrap();
            let bytes: Vec<u8> = seg
                .pieces()
                .iter()
                .flat_map(|p| p.iter().copied())
                .collect();
            std::fs::write(out.join(format!("seg-{i}.m4s")), bytes).unwrap();
        }
    }
    let durations: u64 = plan.segments.iter().map(|s| s.duration_ms).sum();
    assert!(
        (5500..6600).contains(&durations),
        "total {durations} ms:\n{playlist}"
    );
    let m3u8 = out.join("index.m3u8");
    for video in [true, false] {
        let want = hashes(ff, file, video);
        let got = hashes(ff, &m3u8, video);
        assert_eq!(got.len(), want.len(), "{}: {playlist}", file.display());
        assert_eq!(got, want, "{}: packets differ", file.display());
    }
}

#[test]
fn hls_vod_of_progressive_mp4_is_built_from_the_index() {
    let ff = require_tool("ffmpeg");
    assert_hls_vod_packets(&ff, &h264_aac("hls-end.mp4", &[]), false);
    assert_hls_vod_packets(
        &ff,
        &h264_aac("hls-start.mp4", &["-movflags", "+faststart"]),
        false,
    );
    // Samples in the moov and in fragments: built too.
    assert_hls_vod_packets(
        &ff,
        &h264_aac("hls-frag-moov.mp4", &["-movflags", "+frag_keyframe"]),
        false,
    );
}

#[test]
fn hls_vod_of_fragmented_mp4_is_byte_ranges_of_the_file() {
    let ff = require_tool("ffmpeg");
    let file = h264_aac(
        "hls-frag.mp4",
        &["-movflags", "+frag_keyframe+empty_moov+default_base_moof"],
    );
    assert_hls_vod_packets(&ff, &file, true);
}
