//! The muxed rendition: a stream's video track with its audio track in one
//! fMP4, for a stream of one video and one audio track (docs/hls.md, "The
//! muxed rendition").
//!
//! A player of separate audio and video renditions loads two playlists and
//! two parts per part interval, and a player that starts the audio only
//! after its next blocking audio reload (hls.js in low-latency mode) starts
//! a part or more further behind the live edge than its target and never
//! makes it up at 1x. With one muxed rendition it loads one playlist and
//! one part per interval.
//!
//! Nothing is packaged twice: a muxed part is the video part's pieces and
//! the audio part's pieces (a `moof` + `mdat` each, in the order their
//! `mfhd` sequence numbers run), a muxed segment its muxed parts' pieces,
//! all `Bytes` the track parts already hold. The muxed part of sequence
//! number N is built once both track parts N exist, or once the audio
//! cannot bring its part N any more (it moved past N, stopped, or the
//! stream ended) or is two whole parts late (then the muxed part has the
//! video alone: a player gets a short hole in the audio, never a stall).
//! It is rebuilt from the track windows after every input
//! ([`Packager::sync_muxed`]), so it follows their eviction,
//! discontinuities and init changes without hooks of its own.

use super::{Packager, Part, Segment, Trak, WindowSeg};
use crate::cmaf::{mp4, RenditionId, TrackKind};
use crate::wire::WireForm;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;

/// Parts the video may run ahead of a missing audio part before the muxed
/// part is built without it.
const AUDIO_LATE_PARTS: u64 = 2;

#[derive(Debug, Default)]
pub(super) struct Muxed {
    /// The (video, audio) tracks muxed; a change starts afresh.
    pair: Option<(RenditionId, RenditionId)>,
    /// The part sequence number to build next.
    next_seq: Option<u64>,
    segs: VecDeque<MuxSeg>,
    inits: VecDeque<MuxInit>,
    next_init_version: u32,
}

#[derive(Debug)]
struct MuxSeg {
    msn: u64,
    init_version: u32,
    parts: Vec<Arc<Part>>,
    complete: Option<Arc<Segment>>,
}

/// A muxed init segment: the video's init `video` and the audio's `audio`
/// as two tracks of one `moov`.
#[derive(Debug)]
struct MuxInit {
    version: u32,
    video: u32,
    audio: u32,
    bytes: Bytes,
}

impl Muxed {
    fn seg(&self, msn: u64) -> Option<&MuxSeg> {
        let i = self.segs.partition_point(|s| s.msn < msn);
        self.segs.get(i).filter(|s| s.msn == msn)
    }
}

impl Packager {
    /// The muxed rendition's (video, audio) tracks: the stream's only
    /// video track and only audio track, both with an init segment.
    fn mux_pair(&self) -> Option<(RenditionId, RenditionId)> {
        if !self.config.mux_audio {
            return None;
        }
        let mut video = None;
        let mut audio = None;
        for id in self.track_ids() {
            let slot = match id.kind {
                TrackKind::Video => &mut video,
                TrackKind::Audio => &mut audio,
                TrackKind::Muxed => continue,
            };
            if slot.replace(id).is_some() {
                return None;
            }
        }
        Some((video?, audio?))
    }

    /// Whether the stream is one video and one audio track: its
    /// multivariant playlist offers the muxed rendition (once it has
    /// media, [`Packager::muxed_rendition`]).
    pub(crate) fn muxes(&self) -> bool {
        self.mux_pair().is_some()
    }

    /// The muxed rendition this stream offers, if any.
    pub fn muxed_rendition(&self) -> Option<RenditionId> {
        let (video, _) = self.muxed.pair?;
        self.muxed.segs.back()?;
        Some(RenditionId::muxed(video.track))
    }

    /// Whether `r` is the muxed rendition (with media).
    pub(super) fn is_muxed(&self, r: RenditionId) -> bool {
        r.kind == TrackKind::Muxed && self.muxed_rendition() == Some(r)
    }

    /// Brings the muxed rendition up to date with the track windows: called
    /// after every input.
    pub(super) fn sync_muxed(&mut self) {
        let pair = self.mux_pair();
        if pair != self.muxed.pair {
            // A track came or went: what was muxed no longer describes the
            // stream. Players of the old playlist get 404s and reload the
            // multivariant playlist.
            let next_init_version = self.muxed.next_init_version;
            self.muxed = Muxed {
                pair,
                next_init_version,
                ..Muxed::default()
            };
            self.changed();
        }
        let Some((v, a)) = pair else {
            return;
        };
        let (Some(vt), Some(at)) = (self.track(v), self.track(a)) else {
            return;
        };
        let first_msn = vt.segs.front().map_or(u64::MAX, |s| s.msn);
        let last_video = vt
            .segs
            .iter()
            .rev()
            .find_map(|s| s.parts.last())
            .map(|p| p.seq);
        // Start on a segment start, so every muxed segment is whole.
        let first_start = vt
            .segs
            .iter()
            .find(|s| s.parts.first().is_some_and(|p| p.index == 0))
            .map(|s| s.first_seq);
        let last_audio = at
            .segs
            .iter()
            .rev()
            .find_map(|s| s.parts.last())
            .map(|p| p.seq);
        let audio_cursor = at.cursor.and_then(|c| self.boundary(c)).map(|b| b.seq);
        let audio_gone = self.ended || at.stopped;
        let video_gone = self.ended || vt.stopped;
        let timescale = vt
            .current_init()
            .map_or(super::VIDEO_TIMESCALE, |i| i.format.timescale);
        // Evicted from the video's window: evicted here too.
        while self.muxed.segs.front().is_some_and(|s| s.msn < first_msn) {
            self.muxed.segs.pop_front();
        }
        let oldest_used = self.muxed.segs.front().map(|s| s.init_version);
        while self.muxed.inits.len() > 1
            && oldest_used.is_some_and(|u| self.muxed.inits[0].version < u)
        {
            self.muxed.inits.pop_front();
        }
        let Some(last_video) = last_video else {
            return;
        };
        if self.muxed.next_seq.is_none() {
            self.muxed.next_seq = first_start;
        }
        // Once the video is gone, audio that runs on past it (the tail of
        // a stream) is muxed alone.
        let last = match last_audio {
            Some(a) if video_gone => last_video.max(a),
            _ => last_video,
        };
        let mut changed = false;
        while let Some(seq) = self.muxed.next_seq {
            if seq > last {
                break;
            }
            let video = self.part(v, seq);
            let audio = self.part(a, seq);
            if video.is_none() && (seq <= last_video || audio.is_none()) {
                // Not in the video's window (evicted, or a stream that
                // resumed past it): nothing to mux.
                self.muxed.next_seq = Some(seq + 1);
                continue;
            }
            let audio_done = audio_gone || audio_cursor.is_some_and(|c| c > seq);
            if audio.is_none() && !audio_done && seq + AUDIO_LATE_PARTS > last_video {
                break;
            }
            self.push_muxed(v, a, video.as_deref(), audio.as_deref(), timescale);
            self.muxed.next_seq = Some(seq + 1);
            changed = true;
        }
        // Segments whose video segment is complete and whose parts are all
        // muxed.
        for i in 0..self.muxed.segs.len() {
            let seg = &self.muxed.segs[i];
            if seg.complete.is_some() {
                continue;
            }
            let Some(vseg) = self.segment(v, seg.msn) else {
                continue;
            };
            let last = vseg.parts.last().map_or(0, |p| p.seq);
            if self.muxed.next_seq.is_some_and(|n| n <= last) {
                continue;
            }
            let segment = muxed_segment(RenditionId::muxed(v.track), seg, &vseg);
            self.muxed.segs[i].complete = Some(Arc::new(segment));
            changed = true;
        }
        if changed {
            self.changed();
        }
    }

    /// Appends the muxed part of `video` and `audio` (the same sequence
    /// number, at least one of them) to its segment; its times are in
    /// `timescale`, the video's.
    fn push_muxed(
        &mut self,
        v: RenditionId,
        a: RenditionId,
        video: Option<&Part>,
        audio: Option<&Part>,
        timescale: u32,
    ) {
        let Some(lead) = video.or(audio) else {
            return;
        };
        let open = self
            .muxed
            .segs
            .back()
            .is_some_and(|s| s.msn == lead.msn && s.complete.is_none());
        if !open {
            let audio_version = audio
                .map(|p| p.init_version)
                .or_else(|| self.init_version(a))
                .unwrap_or(0);
            let video_version = video
                .map(|p| p.init_version)
                .or_else(|| self.init_version(v))
                .unwrap_or(0);
            let init_version = self.muxed_init_for(v, a, video_version, audio_version);
            self.muxed.segs.push_back(MuxSeg {
                msn: lead.msn,
                init_version,
                parts: Vec::new(),
                complete: None,
            });
        }
        let seg = self.muxed.segs.back().expect("pushed above");
        let init = self
            .muxed
            .inits
            .iter()
            .find(|i| i.version == seg.init_version);
        // A half the segment's init does not describe (its track's
        // configuration changed within the segment) is left out.
        let audio = audio.filter(|p| !p.gap && init.is_some_and(|i| i.audio == p.init_version));
        let video_media =
            video.filter(|p| !p.gap && init.is_some_and(|i| i.video == p.init_version));
        let mut halves: Vec<&Part> = video_media.into_iter().chain(audio).collect();
        let base = halves.iter().map(|p| p.fragment_seq).min_by_key(|&f| {
            // The earlier of the two in serial arithmetic (a wrap of the
            // 32-bit counter keeps the order).
            halves
                .iter()
                .filter(|o| (o.fragment_seq.wrapping_sub(f) as i32) < 0)
                .count()
        });
        halves.sort_by_key(|p| p.fragment_seq.wrapping_sub(base.unwrap_or(0)));
        let pieces: Vec<Bytes> = halves
            .iter()
            .flat_map(|p| p.wire.pieces().iter().cloned())
            .collect();
        let rescale = |units: u64| {
            (u128::from(units) * u128::from(timescale) / u128::from(lead.timescale.max(1))) as u64
        };
        let part = Part {
            rendition: RenditionId::muxed(v.track),
            seq: lead.seq,
            msn: lead.msn,
            index: lead.index,
            decode_time: rescale(lead.decode_time),
            duration: rescale(lead.duration),
            timescale,
            independent: lead.independent,
            starts_with_sync: lead.starts_with_sync,
            gap: halves.is_empty(),
            init_version: seg.init_version,
            samples: halves.iter().map(|p| p.samples).sum(),
            fragment_seq: lead.fragment_seq,
            wire: WireForm::new(pieces),
        };
        let seg = self.muxed.segs.back_mut().expect("pushed above");
        seg.parts.push(Arc::new(part));
    }

    /// The muxed init version for the video's init `video` and the audio's
    /// `audio`, made if new.
    fn muxed_init_for(&mut self, v: RenditionId, a: RenditionId, video: u32, audio: u32) -> u32 {
        if let Some(i) = self
            .muxed
            .inits
            .iter()
            .find(|i| i.video == video && i.audio == audio)
        {
            return i.version;
        }
        let find = |id: RenditionId, version: u32| {
            let t = self.track(id)?;
            t.inits
                .iter()
                .find(|i| i.version == version)
                .or_else(|| t.current_init())
                .cloned()
        };
        let (Some(vi), Some(ai)) = (find(v, video), find(a, audio)) else {
            return 0;
        };
        let entries = [vi.format.sample_entry(), ai.format.sample_entry()];
        let traks: Vec<Trak<'_>> = [(v, &vi), (a, &ai)]
            .iter()
            .zip(&entries)
            .map(|((id, init), entry)| super::trak(*id, &init.format, 0, entry))
            .collect();
        let bytes = Bytes::from(mp4::init_segment(&traks));
        self.muxed.next_init_version += 1;
        let version = self.muxed.next_init_version;
        self.muxed.inits.push_back(MuxInit {
            version,
            video,
            audio,
            bytes,
        });
        version
    }

    pub(super) fn muxed_init(&self, version: u32) -> Option<Bytes> {
        self.muxed
            .inits
            .iter()
            .find(|i| i.version == version)
            .map(|i| i.bytes.clone())
    }

    pub(super) fn muxed_init_version(&self) -> Option<u32> {
        Some(self.muxed.inits.back()?.version)
    }

    pub(super) fn muxed_segment(&self, msn: u64) -> Option<Arc<Segment>> {
        self.muxed.seg(msn)?.complete.clone()
    }

    pub(super) fn muxed_part(&self, seq: u64) -> Option<Arc<Part>> {
        let i = self
            .muxed
            .segs
            .partition_point(|s| s.parts.first().is_some_and(|p| p.seq <= seq))
            .checked_sub(1)?;
        let s = &self.muxed.segs[i];
        let first = s.parts.first()?.seq;
        s.parts.get(usize::try_from(seq - first).ok()?).cloned()
    }

    pub(super) fn muxed_next_part_seq(&self) -> Option<u64> {
        if self.ended {
            return None;
        }
        self.muxed.next_seq
    }

    pub(super) fn muxed_window(&self) -> Vec<WindowSeg<'_>> {
        let video = self.muxed.pair.map(|(v, _)| v);
        self.muxed
            .segs
            .iter()
            .map(|s| {
                let first_dts = video
                    .and_then(|v| self.track(v))
                    .and_then(|t| t.segs.iter().find(|x| x.msn == s.msn))
                    .and_then(|x| x.first_dts);
                WindowSeg {
                    msn: s.msn,
                    discontinuity: self.stream_seg(s.msn).is_some_and(|x| x.discontinuity),
                    init_version: s.init_version,
                    program_date_time: self.pdt(first_dts),
                    complete: s.complete.as_deref(),
                    parts: &s.parts,
                }
            })
            .collect()
    }
}

fn muxed_segment(id: RenditionId, seg: &MuxSeg, video: &Segment) -> Segment {
    let pieces: Vec<Bytes> = seg
        .parts
        .iter()
        .flat_map(|p| p.wire.pieces().iter().cloned())
        .collect();
    Segment {
        rendition: id,
        msn: seg.msn,
        decode_time: seg
            .parts
            .first()
            .map_or(video.decode_time, |p| p.decode_time),
        duration: seg.parts.iter().map(|p| p.duration).sum(),
        timescale: seg.parts.first().map_or(video.timescale, |p| p.timescale),
        independent: video.independent,
        gap: seg.parts.iter().all(|p| p.gap),
        discontinuity: video.discontinuity,
        init_version: seg.init_version,
        program_date_time: video.program_date_time,
        parts: seg.parts.clone(),
        wire: WireForm::new(pieces),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmaf::request::{Decision, Directives, Resource, Skip};
    use crate::cmaf::testing::*;
    use crate::cmaf::PackagerConfig;
    use crate::protocol::session::MediaKind;

    const V0: RenditionId = RenditionId::video(0);
    const A0: RenditionId = RenditionId::audio(0);
    const M0: RenditionId = RenditionId::muxed(0);

    fn packager() -> Packager {
        Packager::new(PackagerConfig::default()).unwrap()
    }

    /// Every muxed part in the window against the track parts of its
    /// sequence number: the same bytes, in fragment order, on the video's
    /// times. Returns how many had both halves.
    fn check_window(p: &Packager) -> usize {
        let mut both = 0;
        for seg in p.window(M0) {
            for part in seg.parts {
                let v = p.part(V0, part.seq).filter(|x| !x.gap);
                let a = p.part(A0, part.seq).filter(|x| !x.gap);
                let mut halves: Vec<&Arc<Part>> = v.iter().chain(a.iter()).collect();
                halves.sort_by_key(|h| h.fragment_seq);
                let got = part.wire.to_vec();
                let expected: Vec<u8> = halves.iter().flat_map(|h| h.wire.to_vec()).collect();
                // Or the video alone, when the audio came too late.
                let alone = v.as_ref().map(|v| v.wire.to_vec());
                if got != expected {
                    assert!(Some(&got) == alone.as_ref(), "part {}", part.seq);
                    halves.truncate(1);
                }
                if let Some(v) = &v {
                    assert_eq!((part.msn, part.index), (v.msn, v.index));
                    assert_eq!(
                        (part.decode_time, part.duration),
                        (v.decode_time, v.duration)
                    );
                    assert_eq!(part.independent, v.independent);
                }
                both += usize::from(halves.len() == 2);
            }
        }
        both
    }

    #[test]
    fn a_stream_of_one_video_and_one_audio_track_gets_a_muxed_rendition() {
        let mut p = packager();
        feed(&mut p, &av_stream(12, 60, 0, 0));
        assert_eq!(p.muxed_rendition(), Some(M0));
        let both = check_window(&p);
        assert!(both > 20, "{both} parts with video and audio");
        // Its segments are its parts, and there are as many as the video's.
        let window = p.window(M0);
        assert_eq!(window.len(), p.window(V0).len());
        for seg in window.iter().filter(|s| s.complete.is_some()) {
            let s = p.segment(M0, seg.msn).unwrap();
            let joined: Vec<u8> = s.parts.iter().flat_map(|x| x.wire.to_vec()).collect();
            assert_eq!(s.wire.to_vec(), joined);
            assert_eq!(s.duration, p.segment(V0, seg.msn).unwrap().duration);
        }
        // One init with both tracks, video first.
        let init = p.init(M0, p.init_version(M0).unwrap()).unwrap();
        let v = p.init(V0, 1).unwrap();
        let a = p.init(A0, 1).unwrap();
        assert!(init.len() > v.len().max(a.len()) && init.len() < v.len() + a.len());
        // Its playlist: its own URIs, a preload hint, no rendition report.
        let pl = p.media_playlist(M0, Skip::No).unwrap();
        assert!(pl.contains("#EXT-X-MAP:URI=\"m0/init-1.mp4\"\n"), "{pl}");
        assert!(pl.contains(",URI=\"m0/p"), "{pl}");
        assert!(pl.contains("#EXTINF:2.00000,\nm0/s"), "{pl}");
        assert!(!pl.contains("RENDITION-REPORT"), "{pl}");
        let hint = p.next_part_seq(M0).unwrap();
        assert!(pl.ends_with(&format!(
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"m0/p{hint}.m4s\"\n"
        )));
        // Blocking requests for it: the hinted part waits, the last one is
        // there, the next msn waits.
        let d = Directives::default();
        assert_eq!(
            p.decide(
                &Resource::Part {
                    rendition: M0,
                    seq: hint
                },
                &d
            ),
            Decision::Wait
        );
        assert_eq!(
            p.decide(
                &Resource::Part {
                    rendition: M0,
                    seq: hint - 1
                },
                &d
            ),
            Decision::Ready
        );
        let (msn, part) = p.last_part(M0).unwrap();
        let ahead = Directives {
            msn: Some(msn),
            part: Some(u64::from(part) + 1),
            ..Directives::default()
        };
        assert_eq!(p.decide(&Resource::Media(M0), &ahead), Decision::Wait);
        // The track renditions stay, and do not report the muxed one.
        assert!(!p.media_playlist(V0, Skip::No).unwrap().contains("m0"));
    }

    #[test]
    fn late_audio_is_waited_for_then_muxed_in() {
        // Audio arrives 150 ms after the video of the same time: the muxed
        // part waits for it instead of going out without it.
        let mut p = packager();
        let msgs = av_stream(8, 60, 0, 150);
        let mut lag = 0;
        for m in &msgs {
            feed(&mut p, std::slice::from_ref(m));
            let video = p.last_part(V0);
            if video > p.last_part(M0) {
                lag += 1;
            }
        }
        assert!(lag > 0, "the muxed rendition waited for the audio");
        let both = check_window(&p);
        let total: usize = p.window(M0).iter().map(|s| s.parts.len()).sum();
        assert_eq!(both, total, "every part has its audio");
    }

    #[test]
    fn audio_that_stops_does_not_hold_the_video_back() {
        let mut p = packager();
        let msgs: Vec<Msg> = av_stream(8, 60, 0, 0)
            .into_iter()
            .filter(|m| m.kind != MediaKind::Audio || m.ts < 3000)
            .collect();
        feed(&mut p, &msgs);
        let (vmsn, vpart) = p.last_part(V0).unwrap();
        let (mmsn, mpart) = p.last_part(M0).unwrap();
        // At most the late-audio allowance behind the video.
        let behind = |msn: u64, part: u32| msn * 100 + u64::from(part);
        assert!(behind(vmsn, vpart) - behind(mmsn, mpart) <= AUDIO_LATE_PARTS);
        check_window(&p);
        // A finished stream muxes everything.
        p.finish();
        assert_eq!(p.last_part(M0), p.last_part(V0));
        assert!(p
            .media_playlist(M0, Skip::No)
            .unwrap()
            .ends_with("#EXT-X-ENDLIST\n"));
    }

    #[test]
    fn no_muxed_rendition_without_exactly_one_video_and_one_audio_track() {
        let mut video_only = packager();
        let msgs: Vec<Msg> = av_stream(6, 60, 0, 0)
            .into_iter()
            .filter(|m| m.kind == MediaKind::Video)
            .collect();
        feed(&mut video_only, &msgs);
        assert_eq!(video_only.muxed_rendition(), None);
        assert!(video_only.multivariant().unwrap().contains("\nv0.m3u8\n"));
        assert_eq!(
            video_only.decide(&Resource::Media(M0), &Directives::default()),
            Decision::NotFound
        );
        assert_eq!(video_only.part(M0, 0).map(|p| p.seq), None);
    }

    #[test]
    fn the_muxed_window_follows_the_tracks_window() {
        let config = PackagerConfig {
            window_segments: 3,
            ..PackagerConfig::default()
        };
        let mut p = Packager::new(config).unwrap();
        feed(&mut p, &av_stream(30, 60, 0, 0));
        let msns = |r| p.window(r).iter().map(|s| s.msn).collect::<Vec<_>>();
        assert_eq!(msns(M0), msns(V0));
        assert!(p.muxed.segs.len() <= 4);
        assert_eq!(p.muxed.inits.len(), 1);
        check_window(&p);
    }
}
