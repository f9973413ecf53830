//! ffmpeg 9 clips and packet lists for the Enhanced RTMP tests (Debian's
//! ffprobe 5.1 reads no Enhanced FLV): the clip encoder and the framemd5 +
//! packet-dump reader that tests/enhanced.rs and tests/hls.rs compare with.

use super::{run_tool, Media, Packet};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// Owned copies of command-line arguments.
pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// Six seconds of a 320x180 test card at 30 fps (a keyframe a second) and
/// a 48 kHz sine, encoded by `ff` (any ffmpeg) with `codecs` into `out`:
/// the files the video on demand tests play.
pub fn make_test_card(ff: &str, out: &Path, codecs: &[String]) {
    let mut args = strings(&[
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        "6",
        "-g",
        "30",
        "-pix_fmt",
        "yuv420p",
    ]);
    args.extend_from_slice(codecs);
    args.push(out.display().to_string());
    let (status, _, err) = run_tool(ff, &args, Duration::from_secs(120));
    assert!(status.success(), "making {}: {err}", out.display());
}

/// Encodes a 6 s clip with ffmpeg 9: testsrc2 320x240 30 fps (and testsrc
/// 160x120 as a second video track when `second` is given), a keyframe
/// every second, and a sine.
pub fn make_clip9(ff: &str, out: &Path, video: &[&str], second: Option<&[&str]>, audio: &[&str]) {
    let mut a = strings(&[
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
    ]);
    if second.is_some() {
        a.extend(strings(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120:rate=30,format=yuv420p",
        ]));
    }
    a.extend(strings(&["-t", "6", "-map", "0:v"]));
    if second.is_some() {
        a.extend(strings(&["-map", "2:v"]));
    }
    a.extend(strings(&["-map", "1:a", "-pix_fmt", "yuv420p", "-c:v:0"]));
    a.extend(strings(video));
    if let Some(second) = second {
        a.push("-c:v:1".into());
        a.extend(strings(second));
    }
    a.push("-c:a".into());
    a.extend(strings(audio));
    a.extend(strings(&["-f", "flv"]));
    a.push(out.display().to_string());
    let (status, _, err) = run_tool(ff, &a, Duration::from_secs(120));
    assert!(status.success(), "encoding {}: {err}", out.display());
}

/// One file's streams and packets as ffmpeg 9 demuxes them.
#[derive(Debug)]
pub struct Probe {
    /// (media type, codec) per stream index.
    pub streams: Vec<(String, String)>,
    /// ffmpeg's `Stream #0:N: ...` lines.
    pub lines: Vec<String>,
    /// (stream index, packet), in demux order per stream.
    pub packets: Vec<(usize, Packet)>,
}

impl Probe {
    /// Video stream `video`'s packets and every audio stream's, for the
    /// common comparison.
    pub fn track(&self, video: usize) -> Vec<Packet> {
        self.packets
            .iter()
            .filter(|(s, p)| *s == video || p.media == Media::Audio)
            .map(|(_, p)| p.clone())
            .collect()
    }

    pub fn video_streams(&self) -> Vec<usize> {
        (0..self.streams.len())
            .filter(|&i| self.streams[i].0 == "video")
            .collect()
    }

    pub fn codecs(&self) -> Vec<&str> {
        self.streams.iter().map(|(_, c)| c.as_str()).collect()
    }
}

/// `ffmpeg -dump -i FILE -map 0 -c copy -copyinkf -copyts -f framemd5 -`:
/// hashes, sizes and millisecond times from framemd5 (FLV's time base),
/// keyframe flags from the packet dump, matched per stream in order.
pub fn probe9(ff: &str, file: &Path) -> Probe {
    let args = strings(&[
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "info",
        "-dump",
        "-i",
        &file.display().to_string(),
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
    let (status, out, err) = run_tool(ff, &args, Duration::from_secs(60));
    assert!(status.success(), "probing {}: {err}", file.display());
    let mut streams: BTreeMap<usize, (String, String)> = BTreeMap::new();
    let mut hashed: BTreeMap<usize, Vec<(i64, i64, u32, String)>> = BTreeMap::new();
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("#tb ") {
            let (_, tb) = rest.split_once(": ").unwrap();
            assert_eq!(tb, "1/1000", "{}: FLV time base", file.display());
        } else if let Some(rest) = line.strip_prefix("#media_type ") {
            let (i, t) = rest.split_once(": ").unwrap();
            streams.entry(i.parse().unwrap()).or_default().0 = t.to_string();
        } else if let Some(rest) = line.strip_prefix("#codec_id ") {
            let (i, c) = rest.split_once(": ").unwrap();
            streams.entry(i.parse().unwrap()).or_default().1 = c.to_string();
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [s, dts, pts, _, size, hash] = f[..] else {
                panic!("framemd5 line {line:?}");
            };
            hashed.entry(s.parse().unwrap()).or_default().push((
                dts.parse().unwrap(),
                pts.parse().unwrap(),
                size.parse().unwrap(),
                format!("MD5:{hash}"),
            ));
        }
    }
    // -dump: "stream #N:" then "  keyframe=1", ..., "  size=123".
    let mut keys: BTreeMap<usize, Vec<(bool, u32)>> = BTreeMap::new();
    let mut lines = Vec::new();
    let mut current: Option<(usize, bool)> = None;
    let mut in_input = false;
    for line in err.lines() {
        if line.starts_with("Input #0") {
            in_input = true;
        } else if line.starts_with("Stream mapping") || line.starts_with("Output #0") {
            in_input = false;
        }
        if in_input && line.trim_start().starts_with("Stream #0:") {
            lines.push(line.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("stream #") {
            current = rest.trim_end_matches(':').parse().ok().map(|s| (s, false));
        } else if let Some(k) = line.trim().strip_prefix("keyframe=") {
            if let Some(c) = current.as_mut() {
                c.1 = k == "1";
            }
        } else if let Some(size) = line.trim().strip_prefix("size=") {
            if let Some((s, key)) = current.take() {
                keys.entry(s)
                    .or_default()
                    .push((key, size.parse().unwrap()));
            }
        }
    }
    let mut packets = Vec::new();
    for (s, list) in &hashed {
        let media = match streams.get(s).map(|(t, _)| t.as_str()) {
            Some("video") => Media::Video,
            Some("audio") => Media::Audio,
            _ => continue,
        };
        let flags = keys.get(s).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            flags.len(),
            list.len(),
            "{}: stream {s}: {} dumped packets, {} hashed",
            file.display(),
            flags.len(),
            list.len()
        );
        for ((dts, pts, size, hash), (key, dumped)) in list.iter().zip(flags) {
            assert_eq!(size, dumped, "{}: stream {s}: packet order", file.display());
            if *size == 0 {
                // ffmpeg's FLV muxer writes an Opus track's sequence header
                // at time 0 when the first packet comes later; its FLV
                // demuxer reads that back as an empty packet. No media.
                continue;
            }
            packets.push((
                *s,
                Packet {
                    media,
                    dts: *dts,
                    pts: *pts,
                    keyframe: *key,
                    size: *size,
                    hash: hash.clone(),
                },
            ));
        }
    }
    Probe {
        streams: streams.into_values().collect(),
        lines,
        packets,
    }
}
