//! `--kind vod`: RTMP players of files a server plays on demand. The
//! payloads are the file's own, so there is nothing to verify frame by
//! frame; what counts is whether the server delivers in real time. A player
//! records what it received (bytes, media frames, the highest media
//! timestamp) and, at each second of the steady window, its lag: wall time
//! since its play started less media time received since then.
//!
//! ```text
//!  lag = (now - Play.Start) - (highest timestamp - first timestamp)
//!        negative: ahead (the server sends up to the player's buffer length early)
//!  keeping up: playing (Play.Start received, connection open) and lag <= KEEP_UP_SLACK_MS
//! ```

use serde_json::{json, Value};
use sluice::protocol::session::MediaKind;

/// How far behind real time a player may be and still count as keeping up.
pub const KEEP_UP_SLACK_MS: i64 = 2000;

/// The buffer length a player announces (SetBufferLength, after `play`):
/// ffmpeg's default (`-rtmp_buffer 3000`).
pub const DEFAULT_BUFFER_MS: u32 = 3000;

/// The file player `index` plays: `{i}` in `pattern` becomes the index
/// modulo `files`, so players spread over that many names (`clip-{i}.mp4`
/// with 50 files: `clip-0.mp4` ... `clip-49.mp4`, then `clip-0.mp4` again).
pub fn expand_name(pattern: &str, index: usize, files: usize) -> String {
    if !pattern.contains("{i}") {
        return pattern.to_owned();
    }
    pattern.replace("{i}", &(index % files.max(1)).to_string())
}

/// Lag in milliseconds: wall time since the play started less media time
/// received since then (negative: ahead of real time).
pub fn lag_ms(wall_ms: i64, media_ms: i64) -> i64 {
    wall_ms - media_ms
}

/// Whether a player with this lag keeps up with real time.
pub fn keeping_up(lag_ms: i64) -> bool {
    lag_ms <= KEEP_UP_SLACK_MS
}

/// (p50, p99, max) of `values` by nearest rank; `None` when empty.
pub fn quantiles(values: &[i64]) -> Option<(i64, i64, i64)> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let n = v.len();
    if n == 0 {
        return None;
    }
    let at = |q: f64| v[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
    Some((at(0.5), at(0.99), v[n - 1]))
}

/// What one VOD player has received.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    /// Wall clock (ns) of its first NetStream.Play.Start.
    pub start_ns: Option<u64>,
    /// Timestamp of the first audio or video message.
    pub first_ts: Option<u32>,
    /// Highest audio or video timestamp.
    pub max_ts: Option<u32>,
    pub video_frames: u64,
    pub audio_frames: u64,
    /// Payload bytes of audio, video and data messages.
    pub payload_bytes: u64,
    /// Seconds of the window sampled, and those it was behind in.
    pub samples: u32,
    pub behind: u32,
    /// Largest lag sampled in the window.
    pub worst_lag_ms: Option<i64>,
    /// Lag at the window's end.
    pub end_lag_ms: Option<i64>,
    /// Keeping up at the window's end.
    pub end_ok: Option<bool>,
}

impl Progress {
    /// NetStream.Play.Start (a later one, after a seek, does not restart
    /// the clock: these players do not seek).
    pub fn on_start(&mut self, now_ns: u64) {
        self.start_ns.get_or_insert(now_ns);
    }

    pub fn on_media(&mut self, kind: MediaKind, timestamp: u32, len: usize) {
        self.payload_bytes += len as u64;
        match kind {
            MediaKind::Video => self.video_frames += 1,
            MediaKind::Audio => self.audio_frames += 1,
            _ => return,
        }
        self.first_ts.get_or_insert(timestamp);
        self.max_ts = Some(self.max_ts.map_or(timestamp, |m| m.max(timestamp)));
    }

    /// Media time received since the play started, ms.
    pub fn media_ms(&self) -> i64 {
        match (self.first_ts, self.max_ts) {
            (Some(a), Some(b)) => i64::from(b.saturating_sub(a)),
            _ => 0,
        }
    }

    /// Lag at `now_ns`. A player whose play has not started is behind by
    /// all the time since it connected (`connected_ns`).
    pub fn lag_at(&self, now_ns: u64, connected_ns: u64) -> i64 {
        let since = self.start_ns.unwrap_or(connected_ns);
        let wall_ms = (now_ns.saturating_sub(since) / 1_000_000) as i64;
        lag_ms(wall_ms, self.media_ms())
    }

    /// One of the window's per-second checks; `end` marks the last. A
    /// player whose connection has closed (`open` false) or whose play has
    /// not started is not keeping up, whatever its lag.
    pub fn sample(&mut self, now_ns: u64, connected_ns: u64, open: bool, end: bool) {
        let lag = self.lag_at(now_ns, connected_ns);
        let ok = open && self.start_ns.is_some() && keeping_up(lag);
        self.samples += 1;
        if !ok {
            self.behind += 1;
        }
        self.worst_lag_ms = Some(self.worst_lag_ms.map_or(lag, |w| w.max(lag)));
        if end {
            self.end_lag_ms = Some(lag);
            self.end_ok = Some(ok);
        }
    }

    /// Keeping up at the window's end.
    pub fn kept_up(&self) -> bool {
        self.end_ok == Some(true)
    }

    /// This player's part of `--per-player`.
    pub fn json(&self) -> Value {
        json!({
            "video_frames": self.video_frames,
            "audio_frames": self.audio_frames,
            "payload_bytes": self.payload_bytes,
            "max_timestamp_ms": self.max_ts,
            "media_ms": self.media_ms(),
            "lag_end_ms": self.end_lag_ms,
            "lag_worst_ms": self.worst_lag_ms,
            "seconds_behind": self.behind,
            "kept_up": self.kept_up(),
        })
    }
}

/// The report's `vod` object from every player's progress, the bytes
/// delivered to all of them in the window, and the window's length.
pub fn report<'a>(
    players: impl Iterator<Item = &'a Progress>,
    bytes_window: u64,
    window_s: f64,
) -> Value {
    let (mut n, mut kept, mut ever_behind, mut behind_s) = (0usize, 0usize, 0usize, 0u64);
    let (mut video, mut audio, mut payload) = (0u64, 0u64, 0u64);
    let mut end_lags = Vec::new();
    let mut worst: Option<i64> = None;
    let mut max_ts: Option<u32> = None;
    for p in players {
        n += 1;
        if p.kept_up() {
            kept += 1;
        }
        if p.behind > 0 {
            ever_behind += 1;
        }
        behind_s += u64::from(p.behind);
        video += p.video_frames;
        audio += p.audio_frames;
        payload += p.payload_bytes;
        if let Some(l) = p.end_lag_ms {
            end_lags.push(l);
        }
        if let Some(w) = p.worst_lag_ms {
            worst = Some(worst.map_or(w, |m| m.max(w)));
        }
        if let Some(t) = p.max_ts {
            max_ts = Some(max_ts.map_or(t, |m| m.max(t)));
        }
    }
    let q = quantiles(&end_lags);
    json!({
        "players": n,
        "keeping_up_at_end": kept,
        "behind_at_some_second": ever_behind,
        "player_seconds_behind": behind_s,
        "slack_ms": KEEP_UP_SLACK_MS,
        "mbit_per_s": if window_s > 0.0 { bytes_window as f64 * 8.0 / window_s / 1e6 } else { 0.0 },
        "video_frames": video,
        "audio_frames": audio,
        "payload_bytes": payload,
        "max_timestamp_ms": max_ts,
        "lag_ms": {
            "p50": q.map(|q| q.0),
            "p99": q.map(|q| q.1),
            "max": q.map(|q| q.2),
            "worst_in_window": worst,
        },
    })
}

/// The human summary's VOD lines (empty for other kinds).
pub fn summary(r: &Value) -> String {
    let v = &r["vod"];
    if v.is_null() {
        return String::new();
    }
    let f = |x: &Value| x.as_f64().map_or("-".to_owned(), |x| format!("{x:.0}"));
    format!(
        "  vod: {} of {} players keeping up at the window's end ({} behind at some second), {} Mbit/s delivered; lag ms p50 {} p99 {} max {} (worst in window {}); highest timestamp {} ms\n",
        v["keeping_up_at_end"],
        v["players"],
        v["behind_at_some_second"],
        v["mbit_per_s"].as_f64().map_or("-".to_owned(), |x| format!("{x:.1}")),
        f(&v["lag_ms"]["p50"]),
        f(&v["lag_ms"]["p99"]),
        f(&v["lag_ms"]["max"]),
        f(&v["lag_ms"]["worst_in_window"]),
        f(&v["max_timestamp_ms"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_spread_over_the_files() {
        assert_eq!(expand_name("clip-{i}.mp4", 0, 50), "clip-0.mp4");
        assert_eq!(expand_name("clip-{i}.mp4", 49, 50), "clip-49.mp4");
        assert_eq!(expand_name("clip-{i}.mp4", 50, 50), "clip-0.mp4");
        assert_eq!(expand_name("clip-{i}.mp4", 123, 50), "clip-23.mp4");
        assert_eq!(expand_name("a/{i}/b{i}.flv", 7, 5), "a/2/b2.flv");
        assert_eq!(expand_name("clip-{i}.mp4", 9, 0), "clip-0.mp4");
        assert_eq!(expand_name("clip.mp4", 9, 50), "clip.mp4");
    }

    #[test]
    fn lag_is_wall_time_less_media_time_from_play_start() {
        let mut p = Progress::default();
        let s = 1_000_000_000_000u64;
        // Not started: behind by the time since connecting.
        assert_eq!(p.lag_at(s + 500_000_000, s), 500);
        p.on_start(s + 100_000_000);
        p.on_media(MediaKind::Data, 0, 300);
        p.on_media(MediaKind::Video, 0, 40);
        p.on_media(MediaKind::Audio, 23, 10);
        p.on_media(MediaKind::Video, 4033, 5000);
        p.on_media(MediaKind::Audio, 4015, 10);
        assert_eq!(p.media_ms(), 4033);
        assert_eq!(
            (p.video_frames, p.audio_frames, p.payload_bytes),
            (2, 2, 5360)
        );
        // One second after Play.Start with 4 s received: 3 s ahead.
        assert_eq!(p.lag_at(s + 1_100_000_000, s), -3033);
        // A second Play.Start (a seek) does not restart the clock.
        p.on_start(s + 5_000_000_000);
        // Eight seconds in with 4 s received: 4 s behind.
        let late = s + 8_100_000_000;
        assert_eq!(p.lag_at(late, s), 3967);
        assert!(!keeping_up(3967));
        assert!(keeping_up(KEEP_UP_SLACK_MS));
        assert!(keeping_up(-3000));
    }

    #[test]
    fn samples_count_seconds_behind_and_the_end() {
        let mut p = Progress::default();
        p.on_start(0);
        p.on_media(MediaKind::Video, 0, 1);
        p.on_media(MediaKind::Video, 5000, 1);
        p.sample(1_000_000_000, 0, true, false); // -4000
        p.sample(8_000_000_000, 0, true, false); // 3000: behind
        p.on_media(MediaKind::Video, 12_000, 1);
        p.sample(10_000_000_000, 0, true, true); // -2000
        assert_eq!((p.samples, p.behind), (3, 1));
        assert_eq!(p.worst_lag_ms, Some(3000));
        assert_eq!(p.end_lag_ms, Some(-2000));
        assert!(p.kept_up());
        let r = report([&p, &Progress::default()].into_iter(), 2_500_000, 2.0);
        assert_eq!(r["players"], 2);
        assert_eq!(r["keeping_up_at_end"], 1);
        assert_eq!(r["behind_at_some_second"], 1);
        assert_eq!(r["mbit_per_s"], 10.0);
        assert_eq!(r["lag_ms"]["max"], -2000);

        // Closed, or never started: not keeping up, however small the lag.
        let mut closed = p.clone();
        closed.sample(10_000_000_000, 0, false, true);
        assert!(!closed.kept_up());
        let mut refused = Progress::default();
        refused.sample(500_000_000, 0, true, true);
        assert_eq!(refused.end_lag_ms, Some(500));
        assert!(!refused.kept_up());
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        assert_eq!(quantiles(&[]), None);
        assert_eq!(quantiles(&[-5]), Some((-5, -5, -5)));
        let v: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(quantiles(&v), Some((50, 99, 100)));
        assert_eq!(quantiles(&[-3000, 2500, -2900]), Some((-2900, 2500, 2500)));
    }
}
