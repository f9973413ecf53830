//! Playlists (RFC 8216bis 4), rendered from a packager's window.
//!
//! A media playlist per rendition, with the Low-Latency HLS tags:
//! EXT-X-SERVER-CONTROL (CAN-BLOCK-RELOAD, CAN-SKIP-UNTIL six target
//! durations, HOLD-BACK three target durations, PART-HOLD-BACK three part
//! targets), EXT-X-PART-INF, EXT-X-PART for the parts of the last three
//! target durations (6.2.2), EXT-X-PRELOAD-HINT for the next part,
//! EXT-X-RENDITION-REPORT for the stream's other renditions, and playlist
//! delta updates (EXT-X-SKIP) for `_HLS_skip=YES` / `v2` (6.2.5.1). The
//! same playlist serves classic clients: they read the segments and ignore
//! the rest.
//!
//! The multivariant playlist lists one variant per video track (BANDWIDTH,
//! AVERAGE-BANDWIDTH, CODECS, RESOLUTION, FRAME-RATE) sharing one audio
//! group (EXT-X-MEDIA TYPE=AUDIO), or an audio-only variant; a stream group
//! (several separately published streams offered together) gets one with
//! every member's variants, each with its own stream's audio.
//!
//! URIs are relative: the playlists live at `/APP/NAME/` (see
//! [`super::request::Resource`]).

use super::packager::{Packager, RenditionInfo, WindowSeg};
use super::request::Skip;
use super::time::iso8601;
use super::{RenditionId, TrackKind};
use std::fmt::Write;

impl Packager {
    /// The media playlist of a rendition, or `None` while it has no part
    /// yet (or is not a rendition of this stream). `skip` asks for a delta
    /// update (ignored once the stream ended, as 6.2.5.1 says).
    pub fn media_playlist(&self, rendition: RenditionId, skip: Skip) -> Option<String> {
        if !self.has_rendition(rendition) {
            return None;
        }
        let window = self.window(rendition);
        let first = window.first()?;
        if window.iter().all(|s| s.parts.is_empty()) {
            return None;
        }
        let td = self.target_duration_s();
        let part_target = self.part_target_ms();
        let ended = self.is_ended();
        let skip_until = 6.0 * f64::from(td);
        let total: f64 = window.iter().map(WindowSeg::seconds).sum();
        // Segments skipped by a delta update: those further from the end
        // of the playlist than the skip boundary (6.2.5.1).
        let skipped = if ended || skip == Skip::No {
            0
        } else {
            let mut end_of = 0.0;
            window
                .iter()
                .take_while(|s| {
                    end_of += s.seconds();
                    s.complete.is_some() && total - end_of > skip_until
                })
                .count()
        };
        let version = match (skipped, skip) {
            (0, _) => 6,
            (_, Skip::V2) => 10,
            _ => 9,
        };
        let mut o = String::with_capacity(256 + 96 * window.len());
        o.push_str("#EXTM3U\n");
        let _ = writeln!(o, "#EXT-X-VERSION:{version}");
        let _ = writeln!(o, "#EXT-X-TARGETDURATION:{td}");
        let _ = writeln!(
            o,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={skip_until:.1},\
             CAN-SKIP-DATERANGES=YES,HOLD-BACK={:.1},PART-HOLD-BACK={}",
            3.0 * f64::from(td),
            millis(3 * part_target),
        );
        let _ = writeln!(o, "#EXT-X-PART-INF:PART-TARGET={}", millis(part_target));
        let _ = writeln!(o, "#EXT-X-MEDIA-SEQUENCE:{}", first.msn);
        let _ = writeln!(
            o,
            "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
            self.discontinuity_sequence(first.msn)
        );
        if skipped > 0 {
            let _ = write!(o, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
            if skip == Skip::V2 {
                // No EXT-X-DATERANGE is ever written, so none was removed.
                o.push_str(",RECENTLY-REMOVED-DATERANGES=\"\"");
            }
            o.push('\n');
        }
        // Parts are listed while they end within three target durations of
        // the end of the playlist (6.2.2).
        let parts_from = total - 3.0 * f64::from(td);
        let mut elapsed = 0.0;
        let mut map = None;
        let name = rendition.to_string();
        for (i, seg) in window.iter().enumerate() {
            if i < skipped {
                elapsed += seg.seconds();
                continue;
            }
            if seg.discontinuity {
                o.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if map != Some(seg.init_version) {
                let _ = writeln!(o, "#EXT-X-MAP:URI=\"{name}/init-{}.mp4\"", seg.init_version);
                map = Some(seg.init_version);
            }
            if let Some(pdt) = seg.program_date_time {
                o.push_str("#EXT-X-PROGRAM-DATE-TIME:");
                iso8601(pdt, &mut o);
                o.push('\n');
            }
            for p in seg.parts {
                elapsed += p.seconds();
                if elapsed > parts_from {
                    let _ = write!(
                        o,
                        "#EXT-X-PART:DURATION={},URI=\"{name}/p{}.m4s\"",
                        seconds(p.duration, p.timescale),
                        p.seq
                    );
                    if p.independent {
                        o.push_str(",INDEPENDENT=YES");
                    }
                    if p.gap {
                        o.push_str(",GAP=YES");
                    }
                    o.push('\n');
                }
            }
            if let Some(s) = seg.complete {
                if s.gap {
                    o.push_str("#EXT-X-GAP\n");
                }
                let _ = writeln!(
                    o,
                    "#EXTINF:{},\n{name}/s{}.m4s",
                    seconds(s.duration, s.timescale),
                    s.msn
                );
            }
        }
        if ended {
            o.push_str("#EXT-X-ENDLIST\n");
            return Some(o);
        }
        if let Some(seq) = self.next_part_seq(rendition) {
            let _ = writeln!(o, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{name}/p{seq}.m4s\"");
        }
        // A muxed rendition is the only one its multivariant playlist
        // lists: it has nothing to report.
        let others = self
            .track_ids()
            .filter(|&r| r != rendition && rendition.kind != TrackKind::Muxed);
        for other in others {
            if let Some((msn, part)) = self.last_part(other) {
                let _ = writeln!(
                    o,
                    "#EXT-X-RENDITION-REPORT:URI=\"{other}.m3u8\",LAST-MSN={msn},LAST-PART={part}"
                );
            }
        }
        Some(o)
    }

    /// The (media sequence number, part index) of a rendition's last part.
    pub fn last_part(&self, rendition: RenditionId) -> Option<(u64, u32)> {
        let window = self.window(rendition);
        let seg = window.iter().rev().find(|s| !s.parts.is_empty())?;
        let p = seg.parts.last()?;
        Some((p.msn, p.index))
    }

    /// The multivariant playlist of this stream, or `None` until every
    /// rendition has media to measure.
    pub fn multivariant(&self) -> Option<String> {
        multivariant_group(&[("", self)])
    }
}

/// A multivariant playlist for a group of streams published separately
/// (`cam_1080`, `cam_720`, ...): `members` are (URI prefix from the group's
/// playlist to the member's directory, such as `"../cam_720/"`, and its
/// packager). Each member's video tracks become variants; each member's
/// audio is its own group (`audio0`, `audio1`, ...), used by its own
/// variants, since separately published streams share no timeline. `None`
/// until every member has measurable media.
pub fn multivariant_group(members: &[(&str, &Packager)]) -> Option<String> {
    let mut o = String::from("#EXTM3U\n#EXT-X-VERSION:6\n");
    if members.iter().all(|(_, p)| p.independent_segments()) {
        o.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
    }
    let mut variants = String::new();
    let mut any = false;
    for (g, (prefix, packager)) in members.iter().enumerate() {
        let renditions = packager.renditions();
        let (video, audio): (Vec<_>, Vec<_>) = renditions
            .iter()
            .partition(|r| r.id.kind == TrackKind::Video);
        if let ([v], [a]) = (video.as_slice(), audio.as_slice()) {
            if packager.muxes() {
                // One video and one audio track: one muxed variant (see
                // the packager's muxed.rs for why), once it has media.
                let m = packager.muxed_rendition()?;
                let _ = write!(
                    variants,
                    "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{},{}\"",
                    v.peak_bandwidth? + a.peak_bandwidth?,
                    v.average_bandwidth? + a.average_bandwidth?,
                    v.format.codecs,
                    a.format.codecs
                );
                stream_inf_picture(&mut variants, v);
                let _ = writeln!(variants, "\n{prefix}{m}.m3u8");
                any = true;
                continue;
            }
        }
        let group = format!("audio{g}");
        let mut audio_peak = 0;
        let mut audio_average = 0;
        let mut audio_codecs: Vec<&str> = Vec::new();
        for (i, a) in audio.iter().enumerate() {
            audio_peak = audio_peak.max(a.peak_bandwidth?);
            audio_average = audio_average.max(a.average_bandwidth?);
            if !audio_codecs.contains(&a.format.codecs.as_str()) {
                audio_codecs.push(&a.format.codecs);
            }
            if video.is_empty() {
                continue;
            }
            let _ = writeln!(
                o,
                "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"{group}\",NAME=\"{}\",DEFAULT={},AUTOSELECT=YES,CHANNELS=\"{}\",URI=\"{prefix}{}.m3u8\"",
                a.id,
                if i == 0 { "YES" } else { "NO" },
                a.format.channels,
                a.id
            );
        }
        for v in &video {
            let peak = v.peak_bandwidth? + audio_peak;
            let average = v.average_bandwidth? + audio_average;
            let mut codecs = v.format.codecs.clone();
            for c in &audio_codecs {
                codecs.push(',');
                codecs.push_str(c);
            }
            let _ = write!(
                variants,
                "#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={average},CODECS=\"{codecs}\""
            );
            stream_inf_picture(&mut variants, v);
            if !audio.is_empty() {
                let _ = write!(variants, ",AUDIO=\"{group}\"");
            }
            let _ = writeln!(variants, "\n{prefix}{}.m3u8", v.id);
            any = true;
        }
        if video.is_empty() {
            // Audio only: the (first) audio rendition is the variant.
            if let Some(a) = audio.first() {
                let _ = writeln!(
                    variants,
                    "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{}\"\n{prefix}{}.m3u8",
                    a.peak_bandwidth?,
                    a.average_bandwidth?,
                    a.format.codecs,
                    a.id
                );
                any = true;
            }
        }
    }
    if !any {
        return None;
    }
    o.push_str(&variants);
    Some(o)
}

/// RESOLUTION and FRAME-RATE of a video variant, where known.
fn stream_inf_picture(o: &mut String, v: &RenditionInfo) {
    if v.format.width > 0 && v.format.height > 0 {
        let _ = write!(o, ",RESOLUTION={}x{}", v.format.width, v.format.height);
    }
    if let Some(fps) = v.frame_rate {
        let _ = write!(o, ",FRAME-RATE={fps:.3}");
    }
}

/// Milliseconds as decimal seconds ("0.333").
fn millis(ms: u32) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// A duration in timescale units as decimal seconds with five decimals,
/// rounded down, so a listed duration never exceeds the real one.
fn seconds(units: u64, timescale: u32) -> String {
    let ts = u128::from(timescale.max(1));
    let hundred_thousandths = u128::from(units) * 100_000 / ts;
    format!(
        "{}.{:05}",
        hundred_thousandths / 100_000,
        hundred_thousandths % 100_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmaf::testing::*;
    use crate::cmaf::{PackagerConfig, Resource};

    const V0: RenditionId = RenditionId::video(0);
    const A0: RenditionId = RenditionId::audio(0);

    #[test]
    fn decimal_seconds() {
        assert_eq!(millis(333), "0.333");
        assert_eq!(millis(999), "0.999");
        assert_eq!(millis(2000), "2.000");
        assert_eq!(seconds(27_000, 90_000), "0.30000");
        assert_eq!(seconds(1024, 48_000), "0.02133");
        assert_eq!(seconds(180_000, 90_000), "2.00000");
    }

    /// The value of `attr` in the first line starting with `tag`.
    fn attr<'a>(playlist: &'a str, tag: &str, attr: &str) -> Option<&'a str> {
        let line = playlist.lines().find(|l| l.starts_with(tag))?;
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(attr)?.strip_prefix('='))
    }

    fn number(playlist: &str, tag: &str, name: &str) -> f64 {
        attr(playlist, tag, name).unwrap().parse().unwrap()
    }

    fn stream(secs: u32) -> Packager {
        let mut p = Packager::new(PackagerConfig::default()).unwrap();
        feed(&mut p, &av_stream(secs, 60, 0, 0));
        p
    }

    #[test]
    fn media_playlist_header_tags_and_their_relations() {
        let p = stream(10);
        let pl = p.media_playlist(V0, Skip::No).unwrap();
        let lines: Vec<&str> = pl.lines().collect();
        assert_eq!(
            &lines[..7],
            [
                "#EXTM3U",
                "#EXT-X-VERSION:6",
                "#EXT-X-TARGETDURATION:4",
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=24.0,CAN-SKIP-DATERANGES=YES,HOLD-BACK=12.0,PART-HOLD-BACK=0.672",
                "#EXT-X-PART-INF:PART-TARGET=0.224",
                "#EXT-X-MEDIA-SEQUENCE:0",
                "#EXT-X-DISCONTINUITY-SEQUENCE:0",
            ]
        );
        let part_target = number(&pl, "#EXT-X-PART-INF", "PART-TARGET");
        let td: f64 = pl
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
            .unwrap()
            .parse()
            .unwrap();
        // 4.4.3.8: HOLD-BACK "MUST be at least three times the Target
        // Duration"; PART-HOLD-BACK "SHOULD be at least three times the
        // Part Target Duration"; the Skip Boundary "MUST be at least six
        // times the Target Duration".
        assert!(number(&pl, "#EXT-X-SERVER-CONTROL", "HOLD-BACK") >= 3.0 * td);
        assert!(number(&pl, "#EXT-X-SERVER-CONTROL", "PART-HOLD-BACK") >= 3.0 * part_target - 1e-9);
        assert!(number(&pl, "#EXT-X-SERVER-CONTROL", "CAN-SKIP-UNTIL") >= 6.0 * td);
        for l in pl.lines() {
            if let Some(d) = l.strip_prefix("#EXTINF:") {
                let d: f64 = d.trim_end_matches(',').parse().unwrap();
                assert!(d.round() <= td, "{l}");
            }
            if l.starts_with("#EXT-X-PART:") {
                let d: f64 = attr(l, "#EXT-X-PART", "DURATION").unwrap().parse().unwrap();
                assert!(d <= part_target, "{l}");
            }
        }
        // 4.4.4.9: MAP and PROGRAM-DATE-TIME "MUST appear before the first
        // EXT-X-PART tag" of their segment.
        let map = pl.find("#EXT-X-MAP:URI=\"v0/init-1.mp4\"").unwrap();
        let pdt = pl
            .find("#EXT-X-PROGRAM-DATE-TIME:2023-11-14T22:13:20.000Z")
            .unwrap();
        let first_part = pl.find("#EXT-X-PART:").unwrap();
        assert!(map < pdt && pdt < first_part);
        assert_eq!(
            pl.matches("#EXT-X-PROGRAM-DATE-TIME:").count(),
            5,
            "one per segment"
        );
        assert!(pl.contains("#EXTINF:2.00000,\nv0/s0.m4s\n"));
        assert!(pl.contains("#EXT-X-PART:DURATION=0.20000,URI=\"v0/p0.m4s\",INDEPENDENT=YES\n"));
        // The next part is hinted, and the other rendition reported.
        let (msn, part) = p.last_part(A0).unwrap();
        assert!(pl.ends_with(&format!(
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"v0/p{}.m4s\"\n#EXT-X-RENDITION-REPORT:URI=\"a0.m3u8\",LAST-MSN={msn},LAST-PART={part}\n",
            p.next_part_seq(V0).unwrap()
        )));
        // The hinted URI names a resource the router knows.
        let hint = attr(&pl, "#EXT-X-PRELOAD-HINT", "URI")
            .unwrap()
            .trim_matches('"');
        assert!(matches!(
            Resource::parse(hint),
            Some(Resource::Part { rendition: V0, .. })
        ));
    }

    #[test]
    fn parts_are_listed_for_the_last_three_target_durations_only() {
        let p = stream(30);
        let pl = p.media_playlist(V0, Skip::No).unwrap();
        let window = p.window(V0);
        let total: f64 = window.iter().map(WindowSeg::seconds).sum();
        let mut end = 0.0;
        let mut listed = Vec::new();
        for seg in &window {
            for part in seg.parts {
                end += part.seconds();
                listed.push((
                    part.seq,
                    total - end,
                    pl.contains(&format!("/p{}.m4s\"", part.seq)),
                ));
            }
        }
        // 6.2.2: "EXT-X-PART tags SHOULD be removed from the Playlist after
        // they are greater than three Target Durations from the end of the
        // Playlist."
        for (seq, from_end, shown) in &listed {
            assert_eq!(
                *shown,
                *from_end < 12.0,
                "part {seq}, {from_end} s from the end"
            );
        }
        // "Clients MUST be able to download the Partial Segment for at least
        // three Target Durations after the EXT-X-PART tag is removed."
        let removed = listed.iter().rev().find(|(_, _, shown)| !shown).unwrap();
        assert!(p.part(V0, removed.0).is_some());
    }

    #[test]
    fn delta_updates_skip_segments_beyond_the_skip_boundary() {
        let p = stream(40);
        let full = p.media_playlist(V0, Skip::No).unwrap();
        let delta = p.media_playlist(V0, Skip::Yes).unwrap();
        let first = p.window(V0)[0].msn;
        // 19 complete 2 s segments (38 s) and the one in progress; those
        // ending more than 24 s before the end are skipped.
        let skipped: u64 = attr(&delta, "#EXT-X-SKIP", "SKIPPED-SEGMENTS")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(skipped, 7);
        assert!(
            delta.contains("#EXT-X-VERSION:9\n"),
            "4.4.5.2 needs version 9"
        );
        assert!(!delta.contains(&format!("v0/s{}.m4s", first + skipped - 1)));
        assert!(delta.contains(&format!("v0/s{}.m4s", first + skipped)));
        // Header tags come before EXT-X-SKIP; MEDIA-SEQUENCE and
        // DISCONTINUITY-SEQUENCE are the full playlist's ("Replacing
        // segments with the EXT-X-SKIP tag does not change the value of the
        // EXT-X-DISCONTINUITY-SEQUENCE tag").
        let header = |pl: &str| -> Vec<String> {
            pl.lines()
                .take_while(|l| !l.starts_with("#EXT-X-SKIP") && !l.starts_with("#EXT-X-MAP"))
                .filter(|l| !l.starts_with("#EXT-X-VERSION"))
                .map(String::from)
                .collect()
        };
        assert_eq!(header(&delta), header(&full));
        // "All tags that were not skipped MUST remain": the tail is the same.
        let tail = &full[full.find(&format!("v0/s{}.m4s", first + skipped)).unwrap()..];
        assert!(delta.ends_with(tail));
        // v2 also skips date ranges (there are none): version 10.
        let v2 = p.media_playlist(V0, Skip::V2).unwrap();
        assert!(v2.contains("#EXT-X-VERSION:10\n"));
        assert!(v2.contains(&format!(
            "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped},RECENTLY-REMOVED-DATERANGES=\"\"\n"
        )));
        // A short playlist has nothing beyond the boundary: no EXT-X-SKIP.
        let short = stream(10);
        assert!(!short
            .media_playlist(V0, Skip::Yes)
            .unwrap()
            .contains("EXT-X-SKIP"));
    }

    #[test]
    fn multivariant_playlist_for_a_stream() {
        let p = stream(8);
        let mv = p.multivariant().unwrap();
        let lines: Vec<&str> = mv.lines().collect();
        assert_eq!(
            lines[..3],
            ["#EXTM3U", "#EXT-X-VERSION:6", "#EXT-X-INDEPENDENT-SEGMENTS"]
        );
        // One video and one audio track: one muxed variant, no audio group.
        assert!(lines[3].starts_with("#EXT-X-STREAM-INF:BANDWIDTH="));
        assert!(lines[3]
            .ends_with(",CODECS=\"avc1.64001f,mp4a.40.2\",RESOLUTION=1280x720,FRAME-RATE=30.000"));
        assert_eq!(lines[4], "m0.m3u8");
        assert_eq!(lines.len(), 5);
        // Bandwidth: the video's and the audio's measured peaks. The
        // synthetic stream: 8 KB keyframe + 59 x 1 KB per 2 s, 200 B audio
        // frames 46.875 per second.
        let peak = number(&mv, "#EXT-X-STREAM-INF", "BANDWIDTH");
        let average = number(&mv, "#EXT-X-STREAM-INF", "AVERAGE-BANDWIDTH");
        let media = ((8000.0 + 59.0 * 1000.0) / 2.0 + 200.0 * 46.875) * 8.0;
        assert!(
            average >= media && average < media * 1.1,
            "{average} vs {media}"
        );
        assert!(peak >= average);
    }

    #[test]
    fn multivariant_playlist_for_a_stream_group() {
        let a = stream(6);
        let mut b = Packager::new(PackagerConfig::default()).unwrap();
        let low: Vec<Msg> = av_stream(6, 60, 0, 0)
            .into_iter()
            .map(|mut m| {
                if m.kind == crate::protocol::session::MediaKind::Video && m.payload[1] == 0 {
                    // 640x480 instead of 1280x720.
                    m.payload = avc_header("6764001eacd940a07b6022000003000200000300643e28532c");
                }
                m
            })
            .collect();
        feed(&mut b, &low);
        let mv = multivariant_group(&[("../cam_720/", &a), ("../cam_480/", &b)]).unwrap();
        // Each member (one video, one audio track) is one muxed variant
        // carrying its own audio.
        assert_eq!(mv.matches("#EXT-X-STREAM-INF").count(), 2);
        assert!(!mv.contains("EXT-X-MEDIA"));
        assert!(mv.contains("RESOLUTION=640x480,FRAME-RATE=30.000\n../cam_480/m0.m3u8\n"));
        assert!(mv.contains("RESOLUTION=1280x720,FRAME-RATE=30.000\n../cam_720/m0.m3u8\n"));
        // Not before every member has media.
        let empty = Packager::new(PackagerConfig::default()).unwrap();
        assert!(multivariant_group(&[("../a/", &a), ("../b/", &empty)]).is_some());
        assert!(multivariant_group(&[("../b/", &empty)]).is_none());
    }
}
