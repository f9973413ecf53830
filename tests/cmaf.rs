//! The CMAF packager on real encoder output, checked by independent readers.
//!
//! Each test encodes a short clip to FLV (Debian's ffmpeg for H.264 + AAC;
//! ffmpeg 9, PyPI `imageio-ffmpeg`, for Enhanced RTMP: HEVC + AAC, AV1 +
//! Opus, and a two-track H.264 ABR stream), or takes the recorded ffmpeg
//! publish session, feeds every tag through a [`Packager`] the way the
//! publisher's worker will, and writes what it produced under the URL
//! layout (`index.m3u8`, `v0.m3u8`, `v0/init-1.mp4`, `v0/s0.m4s`,
//! `v0/p0.m4s`, ...) plus each rendition's init and segments back to back
//! (`v0.mp4`). Then:
//!
//! * mp4-atom (an independent ISO-BMFF reader, strict mode) parses every
//!   init segment, part and segment: the sample entry is the published
//!   codec, each fragment's `trun` covers exactly its `mdat`, and `tfdt`
//!   is continuous from part to part and segment to segment;
//! * ffmpeg 9 lists every packet of the source and of each rendition
//!   (`-f framemd5`: decode and presentation times, sizes, MD5 of the
//!   bytes): every rendition matches its source track packet for packet;
//! * Debian's ffprobe reads each media playlist (packets counted) and
//!   Debian's ffmpeg decodes the multivariant playlist without an error;
//! * the playlists are checked tag by tag (target durations, part targets,
//!   URIs that resolve to written files), also mid-stream, live.
//!
//! The tools are required: a missing one fails the test.

use bytes::Bytes;
use mp4_atom::{Any, Decode, Moof, Moov};
use sluice::cmaf::{
    Body, Output, Packager, PackagerConfig, RenditionId, Resource, Segment, Skip, TrackKind,
};
use sluice::protocol::session::MediaKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

// ---------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------

/// Runs a tool under `timeout -s KILL`; panics if it cannot start.
fn tool(program: &str, args: &[&str], secs: u32) -> (bool, String, String) {
    let out = Command::new("timeout")
        .args(["-s", "KILL", &format!("{secs}s"), program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// ffmpeg 9 (Enhanced FLV, multitrack): `SLUICE_FFMPEG9`, else the
/// imageio-ffmpeg package's binary. Required.
fn ffmpeg9() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let path = std::env::var("SLUICE_FFMPEG9").unwrap_or_else(|_| {
            let (ok, out, err) = tool(
                "python3",
                &[
                    "-c",
                    "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())",
                ],
                60,
            );
            assert!(
                ok,
                "ffmpeg 9 is required: pip install imageio-ffmpeg ({err})"
            );
            out.trim().to_string()
        });
        let (ok, out, _) = tool(&path, &["-hide_banner", "-version"], 20);
        assert!(
            ok && !out.starts_with("ffmpeg version 5"),
            "{path} is not ffmpeg >= 8"
        );
        path
    })
}

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cmaf-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn encode(ffmpeg: &str, args: &[&str], out: &Path) {
    let mut a = vec!["-hide_banner", "-nostdin", "-loglevel", "error", "-y"];
    a.extend_from_slice(args);
    let out_s = out.display().to_string();
    a.extend_from_slice(&["-f", "flv", &out_s]);
    let (ok, _, err) = tool(ffmpeg, &a, 180);
    assert!(ok, "encoding {out_s}: {err}");
}

const LAVFI_VIDEO: &str = "testsrc2=size=320x240:rate=30";
const LAVFI_AUDIO: &str = "sine=frequency=440:sample_rate=48000";

// ---------------------------------------------------------------------------------------
// FLV
// ---------------------------------------------------------------------------------------

/// One FLV tag as a publisher's message.
struct Tag {
    kind: MediaKind,
    ts: u32,
    payload: Bytes,
}

/// The tags of an FLV file (E.4: 9-byte header, then PreviousTagSize and
/// tags of 11-byte headers), payloads sliced from one buffer.
fn flv_tags(path: &Path) -> Vec<Tag> {
    let data = Bytes::from(std::fs::read(path).unwrap());
    assert_eq!(&data[..3], b"FLV");
    let mut at = u32::from_be_bytes(data[5..9].try_into().unwrap()) as usize + 4;
    let mut tags = Vec::new();
    while at + 11 <= data.len() {
        let kind = match data[at] & 0x1f {
            8 => Some(MediaKind::Audio),
            9 => Some(MediaKind::Video),
            18 => Some(MediaKind::Data),
            _ => None,
        };
        let size = u32::from_be_bytes([0, data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let ts = u32::from_be_bytes([data[at + 7], data[at + 4], data[at + 5], data[at + 6]]);
        let body = at + 11;
        assert!(body + size <= data.len(), "truncated FLV");
        if let Some(kind) = kind {
            tags.push(Tag {
                kind,
                ts,
                payload: data.slice(body..body + size),
            });
        }
        at = body + size + 4;
    }
    tags
}

// ---------------------------------------------------------------------------------------
// Packaging and writing
// ---------------------------------------------------------------------------------------

const WALL_START: u64 = 1_750_000_000_000;

/// What one run of the packager produced, as the server would see it.
struct Run {
    packager: Packager,
    outputs: Vec<Output>,
    /// Playlists rendered mid-stream (live), per rendition.
    live: BTreeMap<RenditionId, String>,
    /// The muxed rendition's segments, each taken as it completed (the
    /// window keeps only the last few).
    muxed: Vec<Arc<Segment>>,
}

/// Feeds the tags (wall clock advancing with the timestamps), takes a
/// snapshot of the live playlists half way, then finishes the stream.
fn package(tags: &[Tag]) -> Run {
    let mut packager = Packager::new(PackagerConfig::default()).unwrap();
    let mut outputs = Vec::new();
    let mut live = BTreeMap::new();
    let mut muxed: Vec<Arc<Segment>> = Vec::new();
    let take_muxed = |packager: &Packager, muxed: &mut Vec<Arc<Segment>>| {
        let Some(m) = packager.muxed_rendition() else {
            return;
        };
        // From the first segment of its playlist, then on.
        let first = || {
            let pl = packager.media_playlist(m, Skip::No)?;
            let line = pl
                .lines()
                .find(|l| l.starts_with("#EXT-X-MEDIA-SEQUENCE:"))?;
            line.split(':').nth(1)?.parse::<u64>().ok()
        };
        let Some(mut next) = muxed.last().map(|s| s.msn + 1).or_else(first) else {
            return;
        };
        while let Some(s) = packager.segment(m, next) {
            muxed.push(s);
            next += 1;
        }
    };
    for (i, t) in tags.iter().enumerate() {
        packager.handle_frame(t.kind, t.ts, &t.payload, WALL_START + u64::from(t.ts));
        while let Some(o) = packager.poll_output() {
            outputs.push(o);
        }
        take_muxed(&packager, &mut muxed);
        if i == tags.len() / 2 {
            for r in packager.renditions() {
                live.insert(r.id, packager.media_playlist(r.id, Skip::No).unwrap());
            }
        }
    }
    packager.finish();
    while let Some(o) = packager.poll_output() {
        outputs.push(o);
    }
    take_muxed(&packager, &mut muxed);
    for o in &outputs {
        assert!(!matches!(o, Output::TrackSkipped(_)), "{o:?}");
    }
    Run {
        packager,
        outputs,
        live,
        muxed,
    }
}

fn write(dir: &Path, path: &str, bytes: &[u8]) {
    let p = dir.join(path);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// Writes every resource the window holds under its URL, and each
/// rendition's init + segments as `<rendition>.mp4`.
fn write_out(dir: &Path, run: &Run) {
    let p = &run.packager;
    write(dir, "index.m3u8", p.multivariant().unwrap().as_bytes());
    for r in p.renditions() {
        let id = r.id;
        write(
            dir,
            &Resource::Media(id).to_string(),
            p.media_playlist(id, Skip::No).unwrap().as_bytes(),
        );
        let version = p.init_version(id).unwrap();
        let init = p.init(id, version).unwrap();
        write(
            dir,
            &Resource::Init {
                rendition: id,
                version,
            }
            .to_string(),
            &init,
        );
        let mut whole = init.to_vec();
        for o in &run.outputs {
            match o {
                Output::PartReady(part) if part.rendition == id && !part.gap => {
                    let path = Resource::Part {
                        rendition: id,
                        seq: part.seq,
                    }
                    .to_string();
                    write(dir, &path, &part.wire.to_vec());
                }
                Output::SegmentComplete(s) if s.rendition == id => {
                    assert_eq!(s.init_version, version, "one configuration per clip");
                    let bytes = s.wire.to_vec();
                    let path = Resource::Segment {
                        rendition: id,
                        msn: s.msn,
                    }
                    .to_string();
                    write(dir, &path, &bytes);
                    whole.extend_from_slice(&bytes);
                }
                _ => {}
            }
        }
        write(dir, &format!("{id}.mp4"), &whole);
    }
    // The muxed rendition the multivariant playlist names, if any: its
    // playlist and what it lists; its init and every segment it made as
    // `m0.mp4`.
    if let Some(m) = p.muxed_rendition() {
        let pl = p.media_playlist(m, Skip::No).unwrap();
        write(dir, &Resource::Media(m).to_string(), pl.as_bytes());
        for line in pl.lines() {
            let uri = match line.strip_prefix('#') {
                Some(tag) => match attr(tag, "URI") {
                    Some(u) => u.trim_matches('"'),
                    None => continue,
                },
                None => line,
            };
            let resource = Resource::parse(uri).unwrap_or_else(|| panic!("{uri}"));
            let bytes = match p.respond(&resource, &Default::default()).unwrap() {
                Body::Init(b) => b.to_vec(),
                Body::Media(w) => w.to_vec(),
                Body::Playlist(_) => panic!("{uri}: a playlist"),
            };
            write(dir, uri, &bytes);
        }
        let mut whole = p.init(m, p.init_version(m).unwrap()).unwrap().to_vec();
        for s in &run.muxed {
            whole.extend_from_slice(&s.wire.to_vec());
        }
        write(dir, &format!("{m}.mp4"), &whole);
    }
}

// ---------------------------------------------------------------------------------------
// mp4-atom: an independent reader
// ---------------------------------------------------------------------------------------

/// Parses an init segment: ftyp then moov with one trak per rendition and
/// a trex for each. Returns (track id, sample entry kind, timescale) per trak.
fn check_init(bytes: &[u8]) -> Vec<(u32, String, u32)> {
    let mut buf = bytes;
    let Any::Ftyp(ftyp) = Any::decode(&mut buf).expect("ftyp") else {
        panic!("init does not start with ftyp");
    };
    assert_eq!(ftyp.major_brand, b"iso6".into());
    let moov = Moov::decode(&mut buf).expect("moov");
    assert!(buf.is_empty(), "bytes after moov");
    let mvex = moov.mvex.expect("mvex");
    let mut traks = Vec::new();
    for trak in &moov.trak {
        let id = trak.tkhd.track_id;
        assert!(
            mvex.trex.iter().any(|t| t.track_id == id),
            "trex for track {id}"
        );
        let stbl = &trak.mdia.minf.stbl;
        assert_eq!(stbl.stsd.codecs.len(), 1);
        assert!(stbl.stts.entries.is_empty(), "empty sample table");
        assert!(
            matches!(
                &stbl.stsz.samples,
                mp4_atom::StszSamples::Identical { count: 0, .. }
            ) || matches!(&stbl.stsz.samples, mp4_atom::StszSamples::Different { sizes } if sizes.is_empty())
        );
        let entry = format!("{:?}", stbl.stsd.codecs[0]);
        let entry = entry.split('(').next().unwrap().to_string();
        traks.push((id, entry, trak.mdia.mdhd.timescale));
    }
    traks
}

/// Parses one or more fragments (moof + mdat): returns, per fragment,
/// (tfdt, sum of durations, sample count). Checks each is of `track_id`,
/// the trun covers exactly the mdat and its data offset points at the
/// mdat's first byte.
fn check_fragments(bytes: &[u8], track_id: u32) -> Vec<(u64, u64, usize)> {
    fragments(bytes)
        .into_iter()
        .map(|(id, tfdt, duration, samples)| {
            assert_eq!(id, track_id);
            (tfdt, duration, samples)
        })
        .collect()
}

/// [`check_fragments`] for fragments of any track: (track id, tfdt,
/// duration, sample count) per fragment.
fn fragments(bytes: &[u8]) -> Vec<(u32, u64, u64, usize)> {
    let mut buf = bytes;
    let mut out = Vec::new();
    while !buf.is_empty() {
        let before = buf.len();
        let moof = Moof::decode(&mut buf).expect("moof");
        let moof_len = before - buf.len();
        let Any::Mdat(mdat) = Any::decode(&mut buf).expect("mdat") else {
            panic!("moof not followed by mdat");
        };
        assert_eq!(moof.traf.len(), 1, "one track per fragment");
        let traf = &moof.traf[0];
        assert!(traf.tfhd.default_base_is_moof);
        assert_eq!(traf.trun.len(), 1);
        let trun = &traf.trun[0];
        assert_eq!(trun.data_offset, Some(moof_len as i32 + 8));
        let entries: Vec<_> = trun.samples.iter().collect();
        let size: u64 = entries
            .iter()
            .map(|e| u64::from(e.size.expect("size")))
            .sum();
        assert_eq!(size, mdat.data.len() as u64, "trun sizes = mdat");
        let duration: u64 = entries
            .iter()
            .map(|e| u64::from(e.duration.expect("duration")))
            .sum();
        let tfdt = traf.tfdt.as_ref().expect("tfdt").base_media_decode_time;
        out.push((traf.tfhd.track_id, tfdt, duration, entries.len()));
    }
    out
}

/// Every part and segment of every rendition through mp4-atom; tfdt
/// continuous across parts and across segments.
fn check_boxes(run: &Run) {
    let p = &run.packager;
    for r in p.renditions() {
        let id = r.id;
        let init = p.init(id, p.init_version(id).unwrap()).unwrap();
        let traks = check_init(&init);
        assert_eq!(traks.len(), 1);
        assert_eq!(traks[0].0, id.mp4_track_id());
        assert_eq!(traks[0].2, r.format.timescale);
        let mut next_part = None;
        let mut parts = 0;
        for o in &run.outputs {
            if let Output::PartReady(part) = o {
                if part.rendition != id || part.gap {
                    continue;
                }
                let frags = check_fragments(&part.wire.to_vec(), id.mp4_track_id());
                assert_eq!(frags.len(), 1);
                let (tfdt, duration, samples) = frags[0];
                if let Some(expected) = next_part {
                    assert_eq!(tfdt, expected, "{id} part {}: tfdt continuous", part.seq);
                }
                assert_eq!(samples as u32, part.samples);
                next_part = Some(tfdt + duration);
                parts += 1;
            }
        }
        assert!(parts > 10, "{id}: {parts} parts");
        let mut next_segment = None;
        for o in &run.outputs {
            if let Output::SegmentComplete(s) = o {
                if s.rendition != id {
                    continue;
                }
                let frags = check_fragments(&s.wire.to_vec(), id.mp4_track_id());
                let media_parts = s.parts.iter().filter(|p| !p.gap).count();
                assert_eq!(frags.len(), media_parts, "a segment is its parts");
                for w in frags.windows(2) {
                    assert_eq!(w[0].0 + w[0].1, w[1].0);
                }
                if let Some(expected) = next_segment {
                    assert_eq!(
                        frags[0].0, expected,
                        "{id} segment {}: tfdt continuous",
                        s.msn
                    );
                }
                let last = frags.last().unwrap();
                next_segment = Some(last.0 + last.1);
            }
        }
    }
    // The combined init lists every rendition's track, with distinct ids.
    let combined = check_init(&p.combined_init().unwrap());
    let ids: Vec<u32> = combined.iter().map(|t| t.0).collect();
    let expected: Vec<u32> = p.renditions().iter().map(|r| r.id.mp4_track_id()).collect();
    assert_eq!(ids, expected);
}

/// The muxed rendition (one video and one audio track): its init lists
/// both tracks; each part is the two track parts of its sequence number
/// back to back, fragments in `mfhd` order, with `tfdt` continuous per
/// track from part to part; each segment is its parts; and ffmpeg 9 reads
/// the source's video and audio packets, every one, out of `m0.mp4`.
fn check_muxed(dir: &Path, run: &Run, source: &[(String, Vec<Packet>)]) {
    let p = &run.packager;
    let m = p.muxed_rendition().expect("a muxed rendition");
    let (v, a) = (RenditionId::video(m.track), RenditionId::audio(0));
    let traks = check_init(&p.init(m, p.init_version(m).unwrap()).unwrap());
    let ids: Vec<u32> = traks.iter().map(|t| t.0).collect();
    assert_eq!(ids, [v.mp4_track_id(), a.mp4_track_id()]);
    assert!(run.muxed.len() >= 3, "{} muxed segments", run.muxed.len());
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    let mut parts = 0;
    for (k, s) in run.muxed.iter().enumerate() {
        assert_eq!(s.msn, run.muxed[0].msn + k as u64, "consecutive segments");
        assert_eq!(s.init_version, run.muxed[0].init_version);
        let joined: Vec<u8> = s.parts.iter().flat_map(|p| p.wire.to_vec()).collect();
        assert_eq!(s.wire.to_vec(), joined, "a segment is its parts");
        for part in &s.parts {
            let halves: Vec<Arc<sluice::cmaf::Part>> = [p.part(v, part.seq), p.part(a, part.seq)]
                .into_iter()
                .flatten()
                .filter(|h| !h.gap)
                .collect();
            if !halves.is_empty() {
                // Still in the track windows: the same bytes, in order.
                let mut halves = halves;
                halves.sort_by_key(|h| h.fragment_seq);
                let expected: Vec<u8> = halves.iter().flat_map(|h| h.wire.to_vec()).collect();
                assert_eq!(part.wire.to_vec(), expected, "{m} part {}", part.seq);
            }
            let frags = fragments(&part.wire.to_vec());
            // Video and audio; at the very end, audio that ran on past
            // the video alone.
            let tail =
                k + 1 == run.muxed.len() && frags.len() == 1 && frags[0].0 == a.mp4_track_id();
            assert!(
                (frags.len() == 2 && frags[0].0 != frags[1].0) || tail,
                "{m} part {}: video and audio",
                part.seq
            );
            for (id, tfdt, duration, _) in frags {
                if let Some(&expected) = next.get(&id) {
                    assert_eq!(tfdt, expected, "{m} part {} track {id}", part.seq);
                }
                next.insert(id, tfdt + duration);
            }
            parts += 1;
        }
    }
    assert!(parts > 10, "{parts} muxed parts");
    let got = framemd5(&dir.join(format!("{m}.mp4")), &[]);
    assert_eq!(got.len(), 2, "{m}: video and audio");
    let start = run.muxed[0].parts[0].decode_time as i64 * 1000
        / i64::from(run.muxed[0].parts[0].timescale);
    for (kind, packets) in &got {
        let want: Vec<&Packet> = source
            .iter()
            .find(|s| &s.0 == kind)
            .unwrap()
            .1
            .iter()
            .filter(|p| p.dts_ms >= start)
            .collect();
        assert_eq!(packets.len(), want.len(), "{m}: {kind} packet count");
        for (i, (g, w)) in packets.iter().zip(&want).enumerate() {
            assert_eq!(g, *w, "{m}: {kind} packet {i}");
        }
        eprintln!(
            "[cmaf] {m}: {} {kind} packets match the source",
            packets.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// ffmpeg / ffprobe: packets
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Packet {
    dts_ms: i64,
    pts_ms: i64,
    size: u64,
    md5: String,
}

/// A stream as framemd5 lists it: media type, time base, packets.
type Stream = (String, (i64, i64), Vec<Packet>);

/// `ffmpeg -i INPUT -map 0 -c copy -f framemd5 -`: per stream, its media
/// type and packets, times converted to milliseconds from its time base.
fn framemd5(input: &Path, extra: &[&str]) -> Vec<(String, Vec<Packet>)> {
    let input = input.display().to_string();
    let mut args = vec![
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        &input,
        "-map",
        "0",
        "-c",
        "copy",
        "-copyts",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-f", "framemd5", "-"]);
    let (ok, out, err) = tool(ffmpeg9(), &args, 120);
    assert!(ok, "framemd5 {input}: {err}");
    let mut streams: BTreeMap<usize, Stream> = BTreeMap::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("#tb ") {
            let (i, tb) = rest.split_once(": ").unwrap();
            let (n, d) = tb.split_once('/').unwrap();
            streams.entry(i.parse().unwrap()).or_default().1 =
                (n.parse().unwrap(), d.parse().unwrap());
        } else if let Some(rest) = line.strip_prefix("#media_type ") {
            let (i, t) = rest.split_once(": ").unwrap();
            streams.entry(i.parse().unwrap()).or_default().0 = t.to_string();
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let s = streams.get_mut(&f[0].parse().unwrap()).unwrap();
            let (n, d) = s.1;
            let ms = |v: &str| {
                let v: i64 = v.parse().unwrap();
                ((v * n * 1000) as f64 / d as f64).round() as i64
            };
            s.2.push(Packet {
                dts_ms: ms(f[1]),
                pts_ms: ms(f[2]),
                size: f[4].parse().unwrap(),
                md5: f[5].to_string(),
            });
        }
    }
    streams.into_values().map(|(t, _, p)| (t, p)).collect()
}

/// Each rendition's packets (read back from `<rendition>.mp4`) match its
/// source track's, from the first video keyframe on. `source` is the
/// source's streams as framemd5 lists them; video streams in track order.
fn check_packets(dir: &Path, run: &Run, source: &[(String, Vec<Packet>)]) {
    let videos: Vec<&Vec<Packet>> = source
        .iter()
        .filter(|s| s.0 == "video")
        .map(|s| &s.1)
        .collect();
    let audios: Vec<&Vec<Packet>> = source
        .iter()
        .filter(|s| s.0 == "audio")
        .map(|s| &s.1)
        .collect();
    let start = videos.first().map_or(i64::MIN, |v| v[0].dts_ms);
    for r in run.packager.renditions() {
        let got = framemd5(&dir.join(format!("{}.mp4", r.id)), &[]);
        assert_eq!(got.len(), 1, "{}: one stream", r.id);
        let got = &got[0].1;
        let (kind, list) = match r.id.kind {
            TrackKind::Video => ("video", &videos),
            TrackKind::Audio => ("audio", &audios),
            TrackKind::Muxed => unreachable!("not a track"),
        };
        assert!(got[0].dts_ms >= start);
        let want: Vec<&Packet> = list[usize::from(r.id.track)]
            .iter()
            .filter(|p| p.dts_ms >= start)
            .collect();
        assert_eq!(got.len(), want.len(), "{}: {kind} packet count", r.id);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g, *w, "{}: {kind} packet {i}", r.id);
        }
        eprintln!(
            "[cmaf] {}: {} packets match the source ({})",
            r.id,
            got.len(),
            r.format.codecs
        );
    }
}

/// Debian's ffprobe reads each media playlist (fMP4 HLS) and counts the
/// packets; Debian's ffmpeg decodes the multivariant playlist without an
/// error.
fn check_with_debian_ffmpeg(dir: &Path, run: &Run, decode: bool) {
    for r in run.packager.renditions() {
        let playlist = dir.join(format!("{}.m3u8", r.id)).display().to_string();
        let (ok, out, err) = run_probe(&playlist);
        assert!(ok, "ffprobe {playlist}: {err}");
        let packets = out.lines().filter(|l| !l.trim().is_empty()).count();
        let expected: u32 = run
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::SegmentComplete(s) if s.rendition == r.id => {
                    Some(s.parts.iter().map(|p| p.samples).sum::<u32>())
                }
                _ => None,
            })
            .sum();
        assert_eq!(
            packets as u32, expected,
            "{playlist}: packets read through the playlist"
        );
    }
    if decode {
        let index = dir.join("index.m3u8").display().to_string();
        let (ok, _, err) = tool(
            "ffmpeg",
            &[
                "-hide_banner",
                "-nostdin",
                "-v",
                "error",
                "-i",
                &index,
                "-map",
                "0",
                "-f",
                "null",
                "-",
            ],
            120,
        );
        assert!(ok && err.trim().is_empty(), "decoding {index}: {err}");
    }
}

fn run_probe(playlist: &str) -> (bool, String, String) {
    tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "packet=pts,dts,size",
            "-of",
            "csv=p=0",
            playlist,
        ],
        60,
    )
}

// ---------------------------------------------------------------------------------------
// Playlists
// ---------------------------------------------------------------------------------------

fn attr<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split([':', ','])
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// A media playlist: tags and relations, durations within the targets,
/// every URI resolving to a written file (when `dir` is given).
fn check_media_playlist(pl: &str, dir: Option<&Path>, ended: bool) {
    let lines: Vec<&str> = pl.lines().collect();
    assert_eq!(lines[0], "#EXTM3U");
    let td: f64 = lines
        .iter()
        .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
        .unwrap()
        .parse()
        .unwrap();
    let part_target: f64 = lines
        .iter()
        .find_map(|l| attr(l, "PART-TARGET"))
        .unwrap()
        .parse()
        .unwrap();
    let control = lines
        .iter()
        .find(|l| l.starts_with("#EXT-X-SERVER-CONTROL:"))
        .unwrap();
    assert_eq!(attr(control, "CAN-BLOCK-RELOAD"), Some("YES"));
    assert!(
        attr(control, "PART-HOLD-BACK")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 3.0 * part_target - 1e-9
    );
    assert!(attr(control, "HOLD-BACK").unwrap().parse::<f64>().unwrap() >= 3.0 * td);
    assert!(
        attr(control, "CAN-SKIP-UNTIL")
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 6.0 * td
    );
    for tag in [
        "#EXT-X-MEDIA-SEQUENCE:",
        "#EXT-X-DISCONTINUITY-SEQUENCE:",
        "#EXT-X-MAP:",
        "#EXT-X-PROGRAM-DATE-TIME:",
        "#EXT-X-PART:",
    ] {
        assert!(pl.contains(tag), "{tag} missing");
    }
    if ended {
        assert!(pl.contains("#EXTINF:"));
    }
    assert_eq!(pl.contains("#EXT-X-ENDLIST"), ended);
    assert_eq!(pl.contains("#EXT-X-PRELOAD-HINT:TYPE=PART"), !ended);
    let mut uris = Vec::new();
    for l in &lines {
        if let Some(d) = l.strip_prefix("#EXTINF:") {
            let d: f64 = d.trim_end_matches(',').parse().unwrap();
            assert!(d.round() <= td, "{l}");
        }
        if l.starts_with("#EXT-X-PART:") {
            let d: f64 = attr(l, "DURATION").unwrap().parse().unwrap();
            assert!(d <= part_target, "{l} longer than PART-TARGET");
            uris.push(attr(l, "URI").unwrap().trim_matches('"').to_string());
        }
        if l.starts_with("#EXT-X-MAP:") {
            uris.push(attr(l, "URI").unwrap().trim_matches('"').to_string());
        }
        if !l.starts_with('#') {
            uris.push(l.to_string());
        }
    }
    for u in &uris {
        assert!(Resource::parse(u).is_some(), "{u} is not a resource");
        if let Some(dir) = dir {
            assert!(dir.join(u).is_file(), "{u} not written");
        }
    }
}

fn check_playlists(dir: &Path, run: &Run) {
    for r in run.packager.renditions() {
        let pl = std::fs::read_to_string(dir.join(format!("{}.m3u8", r.id))).unwrap();
        check_media_playlist(&pl, Some(dir), true);
        let live = &run.live[&r.id];
        check_media_playlist(live, None, false);
        // Live: the other renditions are reported.
        for other in run.packager.renditions().iter().filter(|o| o.id != r.id) {
            assert!(live.contains(&format!(
                "#EXT-X-RENDITION-REPORT:URI=\"{}.m3u8\",LAST-MSN=",
                other.id
            )));
        }
    }
}

/// Every part of every rendition within PART-TARGET (RFC 8216bis
/// 4.4.4.9: "MUST be less than or equal to"), and video parts other than
/// a segment's last or an independent one at least 85 % of it.
fn check_part_durations(run: &Run) {
    let target = f64::from(run.packager.part_target_ms()) / 1000.0;
    for r in run.packager.renditions() {
        let parts: Vec<_> = run
            .outputs
            .iter()
            .filter_map(|o| match o {
                Output::PartReady(p) if p.rendition == r.id => Some(p.clone()),
                _ => None,
            })
            .collect();
        for (k, p) in parts.iter().enumerate() {
            assert!(
                p.seconds() <= target,
                "{} part {} lasts {} s",
                r.id,
                p.seq,
                p.seconds()
            );
            let last_of_segment = parts.get(k + 1).map_or(true, |n| n.msn != p.msn);
            if r.id.kind == TrackKind::Video && !last_of_segment && !p.independent {
                assert!(
                    p.seconds() >= 0.85 * target,
                    "{} part {} lasts {} s",
                    r.id,
                    p.seq,
                    p.seconds()
                );
            }
        }
    }
}

/// Everything, for one clip.
fn check_clip(
    name: &str,
    tags: &[Tag],
    source: &[(String, Vec<Packet>)],
    expected_codecs: &[&str],
    decode: bool,
) -> Run {
    let dir = scratch(&format!("{name}-out"));
    let run = package(tags);
    let codecs: Vec<String> = run
        .packager
        .renditions()
        .iter()
        .map(|r| r.format.codecs.clone())
        .collect();
    assert_eq!(codecs.len(), expected_codecs.len(), "{codecs:?}");
    for (c, prefix) in codecs.iter().zip(expected_codecs) {
        assert!(c.starts_with(prefix), "{c} is not {prefix}*");
    }
    write_out(&dir, &run);
    check_part_durations(&run);
    check_boxes(&run);
    check_packets(&dir, &run, source);
    check_playlists(&dir, &run);
    check_with_debian_ffmpeg(&dir, &run, decode);
    if run.packager.muxed_rendition().is_some() {
        check_muxed(&dir, &run, source);
    }
    let mv = std::fs::read_to_string(dir.join("index.m3u8")).unwrap();
    eprintln!("[cmaf] {name}: multivariant\n{mv}");
    // Every clip has GOPs of 2 s and one configuration per track: every
    // segment starts on a keyframe, and nothing is discontinuous.
    assert!(mv.contains("#EXT-X-INDEPENDENT-SEGMENTS\n"), "{mv}");
    for r in run.packager.renditions() {
        let pl = std::fs::read_to_string(dir.join(format!("{}.m3u8", r.id))).unwrap();
        assert!(!pl.contains("#EXT-X-DISCONTINUITY\n"), "{}: {pl}", r.id);
    }
    run
}

// ---------------------------------------------------------------------------------------
// The clips
// ---------------------------------------------------------------------------------------

#[test]
fn h264_aac_from_debian_ffmpeg() {
    let dir = scratch("h264");
    let flv = dir.join("src.flv");
    encode(
        "ffmpeg",
        &[
            "-f",
            "lavfi",
            "-i",
            LAVFI_VIDEO,
            "-f",
            "lavfi",
            "-i",
            LAVFI_AUDIO,
            "-t",
            "8",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "60",
            "-bf",
            "2",
            "-c:a",
            "aac",
            "-b:a",
            "96k",
        ],
        &flv,
    );
    let source = framemd5(&flv, &[]);
    let run = check_clip(
        "h264",
        &flv_tags(&flv),
        &source,
        &["avc1.64", "mp4a.40.2"],
        true,
    );
    // B-frames: composition offsets carried.
    let mv = run.packager.multivariant().unwrap();
    assert!(mv.contains("RESOLUTION=320x240,FRAME-RATE=30.000"), "{mv}");
}

#[test]
fn hevc_aac_from_ffmpeg9_enhanced_flv() {
    let dir = scratch("hevc");
    let flv = dir.join("src.flv");
    encode(
        ffmpeg9(),
        &[
            "-f",
            "lavfi",
            "-i",
            LAVFI_VIDEO,
            "-f",
            "lavfi",
            "-i",
            LAVFI_AUDIO,
            "-t",
            "8",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx265",
            "-preset",
            "ultrafast",
            "-x265-params",
            "keyint=60:min-keyint=60:scenecut=0:log-level=error",
            "-c:a",
            "aac",
        ],
        &flv,
    );
    let source = framemd5(&flv, &[]);
    check_clip(
        "hevc",
        &flv_tags(&flv),
        &source,
        &["hvc1.1.6.L", "mp4a.40.2"],
        true,
    );
}

#[test]
fn av1_opus_from_ffmpeg9_enhanced_flv() {
    let dir = scratch("av1");
    let flv = dir.join("src.flv");
    encode(
        ffmpeg9(),
        &[
            "-f",
            "lavfi",
            "-i",
            LAVFI_VIDEO,
            "-f",
            "lavfi",
            "-i",
            LAVFI_AUDIO,
            "-t",
            "8",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libsvtav1",
            "-preset",
            "12",
            "-g",
            "60",
            "-c:a",
            "libopus",
        ],
        &flv,
    );
    // AV1 samples in MP4 carry no temporal delimiter OBU (AV1-ISOBMFF
    // 2.4): the source packets are listed without theirs.
    let source = framemd5(&flv, &["-bsf:v", "filter_units=remove_types=2"]);
    check_clip("av1", &flv_tags(&flv), &source, &["av01.0.", "opus"], true);
}

#[test]
fn vp9_flac_from_ffmpeg9_enhanced_flv() {
    let dir = scratch("vp9");
    let flv = dir.join("src.flv");
    encode(
        ffmpeg9(),
        &[
            "-f",
            "lavfi",
            "-i",
            LAVFI_VIDEO,
            "-f",
            "lavfi",
            "-i",
            LAVFI_AUDIO,
            "-t",
            "8",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-g",
            "60",
            "-keyint_min",
            "60",
            "-b:v",
            "400k",
            "-c:a",
            "flac",
        ],
        &flv,
    );
    let source = framemd5(&flv, &[]);
    check_clip("vp9", &flv_tags(&flv), &source, &["vp09.00.", "fLaC"], true);
}

#[test]
fn h264_mp3_legacy_and_h264_ac3_enhanced() {
    // MP3 in a legacy FLV audio tag (sound format 2), from Debian's ffmpeg.
    let dir = scratch("mp3");
    let flv = dir.join("src.flv");
    encode(
        "ffmpeg",
        &[
            "-f",
            "lavfi",
            "-i",
            LAVFI_VIDEO,
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=440:sample_rate=44100",
            "-t",
            "8",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "60",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "128k",
        ],
        &flv,
    );
    let source = framemd5(&flv, &[]);
    check_clip("mp3", &flv_tags(&flv), &source, &["avc1.", "mp4a.6B"], true);
    // AC-3 as an Enhanced RTMP FourCC (no sequence header), from ffmpeg 9.
    let dir = scratch("ac3");
    let flv = dir.join("src.flv");
    encode(
        ffmpeg9(),
        &[
            "-f",
            "lavfi",
            "-i",
            LAVFI_VIDEO,
            "-f",
            "lavfi",
            "-i",
            LAVFI_AUDIO,
            "-t",
            "8",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "60",
            "-c:a",
            "ac3",
        ],
        &flv,
    );
    let source = framemd5(&flv, &[]);
    check_clip("ac3", &flv_tags(&flv), &source, &["avc1.", "ac-3"], true);
}

#[test]
fn multitrack_h264_abr_from_ffmpeg9() {
    let dir = scratch("multitrack");
    let flv = dir.join("src.flv");
    encode(
        ffmpeg9(),
        &[
            "-f",
            "lavfi",
            "-i",
            LAVFI_VIDEO,
            "-f",
            "lavfi",
            "-i",
            LAVFI_AUDIO,
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=30,format=yuv420p",
            "-t",
            "8",
            "-map",
            "0:v",
            "-map",
            "2:v",
            "-map",
            "1:a",
            "-pix_fmt",
            "yuv420p",
            "-c:v:0",
            "libx264",
            "-g:v:0",
            "60",
            "-c:v:1",
            "libx264",
            "-g:v:1",
            "60",
            "-c:a",
            "aac",
        ],
        &flv,
    );
    let source = framemd5(&flv, &[]);
    let run = check_clip(
        "multitrack",
        &flv_tags(&flv),
        &source,
        &["avc1.", "avc1.", "mp4a.40.2"],
        true,
    );
    let mv = run.packager.multivariant().unwrap();
    assert_eq!(mv.matches("#EXT-X-STREAM-INF:").count(), 2, "{mv}");
    assert!(mv.contains("RESOLUTION=160x120") && mv.contains("\nv1.m3u8\n"));
    // The variants share the audio group and their part boundaries.
    let parts = |r: RenditionId| -> Vec<(u64, u64, u32)> {
        run.outputs
            .iter()
            .filter_map(|o| match o {
                Output::PartReady(p) if p.rendition == r => Some((p.seq, p.msn, p.index)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(parts(RenditionId::video(0)), parts(RenditionId::video(1)));
}

#[test]
fn recorded_ffmpeg_publish_session() {
    use bytes::BytesMut;
    use sluice::protocol::session::{Event, ServerSession, SessionConfig};
    const RECORDED: &[u8] = include_bytes!("data/ffmpeg_publish.bin");
    let now = std::time::Instant::now();
    let mut session = ServerSession::new(SessionConfig::default(), now, 1);
    let mut buf = BytesMut::from(RECORDED);
    let mut tags = Vec::new();
    loop {
        session
            .handle_input(now, &mut buf)
            .expect("a real ffmpeg session is valid");
        while session.poll_transmit().is_some() {}
        let mut again = false;
        while let Some(e) = session.poll_event() {
            match e {
                Event::PublishRequested(r) => {
                    session.accept_publish(r.stream_id);
                    again = true;
                }
                Event::Media {
                    kind,
                    timestamp,
                    payload,
                    ..
                } => tags.push(Tag {
                    kind,
                    ts: timestamp,
                    payload,
                }),
                _ => {}
            }
        }
        if !again {
            break;
        }
    }
    let dir = scratch("recorded");
    // The same media as an FLV file, for ffmpeg to list the source packets.
    let mut flv = b"FLV\x01\x05\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
    for t in &tags {
        let kind = match t.kind {
            MediaKind::Audio => 8,
            MediaKind::Video => 9,
            MediaKind::Data => continue,
        };
        let n = t.payload.len() as u32;
        flv.push(kind);
        flv.extend_from_slice(&n.to_be_bytes()[1..]);
        flv.extend_from_slice(&t.ts.to_be_bytes()[1..]);
        flv.push((t.ts >> 24) as u8);
        flv.extend_from_slice(&[0, 0, 0]);
        flv.extend_from_slice(&t.payload);
        flv.extend_from_slice(&(n + 11).to_be_bytes());
    }
    std::fs::write(dir.join("src.flv"), &flv).unwrap();
    let source = framemd5(&dir.join("src.flv"), &[]);
    let run = package(&tags);
    let out = scratch("recorded-out");
    write_out(&out, &run);
    check_boxes_lenient(&run);
    check_part_durations(&run);
    check_packets(&out, &run, &source);
    check_playlists(&out, &run);
    check_with_debian_ffmpeg(&out, &run, true);
}

/// The recorded session is two seconds: too short for the part count the
/// clips are held to; the boxes are checked all the same.
fn check_boxes_lenient(run: &Run) {
    for r in run.packager.renditions() {
        let init = run.packager.init(r.id, 1).unwrap();
        assert_eq!(check_init(&init)[0].0, r.id.mp4_track_id());
        let mut next = None;
        for o in &run.outputs {
            if let Output::PartReady(p) = o {
                if p.rendition == r.id && !p.gap {
                    let f = check_fragments(&p.wire.to_vec(), r.id.mp4_track_id())[0];
                    if let Some(n) = next {
                        assert_eq!(f.0, n);
                    }
                    next = Some(f.0 + f.1);
                }
            }
        }
        assert!(next.is_some());
    }
}
