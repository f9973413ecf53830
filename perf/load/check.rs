//! Per-player integrity and timing: what a player must have received, and
//! how late. Fed one media message at a time; knows nothing of sockets.
//!
//! Rules: video counts from the first keyframe received (a server without a
//! GOP cache starts a player at the next keyframe, one with a cache at the
//! cached one); audio counts from the first audio frame after that. From
//! there every stamped frame must be the next in its track's sequence, with
//! its payload intact. Latency is sampled for frames sent after the player
//! asked to play (not the cached GOP a joiner is sent at once).

use crate::stats::Histogram;
use crate::stream::{self, Track};
use sluice::protocol::session::MediaKind;

/// One track's sequence check.
#[derive(Debug, Default, Clone)]
pub struct TrackCheck {
    /// Last sequence number accepted.
    pub last: Option<u32>,
    /// Frames counted (from the start point on).
    pub frames: u64,
    /// Sequence numbers skipped.
    pub missing: u64,
    /// Frames that went backwards or repeated.
    pub out_of_order: u64,
}

impl TrackCheck {
    fn accept(&mut self, seq: u32) {
        match self.last {
            None => self.last = Some(seq),
            Some(last) if seq > last => {
                self.missing += u64::from(seq - last - 1);
                self.last = Some(seq);
            }
            Some(_) => self.out_of_order += 1,
        }
        self.frames += 1;
    }
}

/// Everything one player has seen.
#[derive(Debug, Default, Clone)]
pub struct Checker {
    /// Wall clock (ns) when the connection was started.
    pub started_ns: u64,
    /// Wall clock (ns) when playing was requested / confirmed.
    pub ready_ns: Option<u64>,
    /// Wall clock (ns) when the first keyframe arrived.
    pub first_key_ns: Option<u64>,
    pub video: TrackCheck,
    pub audio: TrackCheck,
    pub got_metadata: bool,
    pub got_video_config: bool,
    pub got_audio_config: bool,
    /// Video frames dropped before the first keyframe (by rule).
    pub before_key: u64,
    /// Payloads whose stamp, length or fill was wrong.
    pub corrupt: u64,
    /// Payload bytes of media messages.
    pub payload_bytes: u64,
    /// Largest latency seen, microseconds.
    pub max_latency_us: u64,
}

impl Checker {
    pub fn new(started_ns: u64) -> Self {
        Self {
            started_ns,
            ..Self::default()
        }
    }

    /// Join time: connection start to first keyframe, microseconds.
    pub fn join_us(&self) -> Option<u64> {
        self.first_key_ns
            .map(|k| k.saturating_sub(self.started_ns) / 1000)
    }

    /// Checks one message received at `now_ns`; live latency goes to `lat`.
    pub fn on_media(&mut self, kind: MediaKind, payload: &[u8], now_ns: u64, lat: &mut Histogram) {
        self.payload_bytes += payload.len() as u64;
        let track = match kind {
            MediaKind::Data => {
                // onMetaData (not |RtmpSampleAccess and the like).
                if payload.windows(10).any(|w| w == b"onMetaData") {
                    self.got_metadata = true;
                }
                return;
            }
            MediaKind::Video => Track::Video,
            MediaKind::Audio => Track::Audio,
        };
        let (stamp, key) = match stream::check(track, payload) {
            Ok(Some(s)) => s,
            Ok(None) => {
                match track {
                    Track::Video => self.got_video_config = true,
                    Track::Audio => self.got_audio_config = true,
                }
                return;
            }
            Err(_) => {
                self.corrupt += 1;
                return;
            }
        };
        if self.first_key_ns.is_none() {
            if track == Track::Video && key {
                self.first_key_ns = Some(now_ns);
            } else {
                if track == Track::Video {
                    self.before_key += 1;
                }
                return;
            }
        }
        match track {
            Track::Video => self.video.accept(stamp.seq),
            Track::Audio => self.audio.accept(stamp.seq),
        }
        if self.ready_ns.is_some_and(|r| stamp.sent_ns >= r) {
            let us = now_ns.saturating_sub(stamp.sent_ns) / 1000;
            lat.record(us);
            self.max_latency_us = self.max_latency_us.max(us);
        }
    }

    /// Frames missing, counting those after the last one received up to the
    /// publisher's last (`last_video`, `last_audio`), for a finished run.
    pub fn missing_through(&self, last_video: Option<u32>, last_audio: Option<u32>) -> u64 {
        let tail = |t: &TrackCheck, last: Option<u32>| match (t.last, last) {
            (Some(got), Some(sent)) if sent > got => u64::from(sent - got),
            _ => 0,
        };
        self.video.missing
            + self.audio.missing
            + tail(&self.video, last_video)
            + tail(&self.audio, last_audio)
    }

    /// True when headers came and the stream was followed from a keyframe.
    pub fn joined(&self) -> bool {
        self.first_key_ns.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{Generator, Shape};

    /// The generated stream, as (kind, payload) from the headers on.
    fn frames(n: usize) -> Vec<(MediaKind, bytes::Bytes)> {
        let mut g = Generator::new(Shape::default());
        let mut v: Vec<_> = g
            .headers()
            .into_iter()
            .map(|f| (f.kind, f.payload))
            .collect();
        for _ in 0..n {
            let f = g.next(1_000);
            v.push((f.kind, f.payload));
        }
        v
    }

    #[test]
    fn a_complete_stream_has_nothing_missing() {
        let mut c = Checker::new(0);
        c.ready_ns = Some(0);
        let mut lat = Histogram::new();
        for (k, p) in frames(300) {
            c.on_media(k, &p, 2_000, &mut lat);
        }
        assert!(c.got_metadata && c.got_video_config && c.got_audio_config);
        assert_eq!(c.join_us(), Some(2));
        assert_eq!((c.video.missing, c.audio.missing, c.corrupt), (0, 0, 0));
        assert_eq!(
            c.video.last,
            c.video.last.map(|_| c.video.frames as u32 - 1)
        );
        assert_eq!(lat.count(), c.video.frames + c.audio.frames);
        assert_eq!(lat.max(), 1);
    }

    #[test]
    fn video_counts_from_the_first_keyframe_and_gaps_are_missing() {
        let all = frames(300);
        let mut c = Checker::new(0);
        let mut lat = Histogram::new();
        // Join mid-GOP (skip the first 40 messages), drop one later frame.
        let mut video_seen = 0;
        for (k, p) in all.iter().skip(40) {
            if *k == MediaKind::Video {
                video_seen += 1;
                if video_seen == 100 {
                    continue;
                }
            }
            c.on_media(*k, p, 0, &mut lat);
        }
        assert!(c.before_key > 0);
        assert_eq!(c.video.missing, 1);
        assert_eq!(c.audio.missing, 0);
        assert_eq!(lat.count(), 0, "no latency before ready");
    }

    #[test]
    fn repeats_are_out_of_order_and_the_tail_counts_as_missing() {
        let all = frames(100);
        let mut c = Checker::new(0);
        let mut lat = Histogram::new();
        for (k, p) in all.iter().chain(all.iter().skip(60)) {
            c.on_media(*k, p, 0, &mut lat);
        }
        assert!(c.video.out_of_order > 0);
        let lv = c.video.last.unwrap();
        let la = c.audio.last.unwrap();
        assert_eq!(c.missing_through(Some(lv + 3), Some(la)), 3);
    }

    #[test]
    fn a_mangled_payload_is_corrupt() {
        let mut c = Checker::new(0);
        let (k, p) = frames(1).pop().unwrap();
        let mut bad = p.to_vec();
        bad[40] ^= 0xFF;
        c.on_media(k, &bad, 0, &mut Histogram::new());
        assert_eq!(c.corrupt, 1);
    }
}
