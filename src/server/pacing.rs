//! The write policy: when a stream's frames go to its players. Writing a
//! loopback or NIC socket costs about the same per call whatever its size
//! up to ~13 KB, so a player written every time a frame arrives (about 77
//! times a second at 3 Mbit/s: 30 video frames and 47 AAC frames) pays for
//! 77 small writes where 30 would carry the same bytes. The policy holds
//! frames that are not worth a write on their own until something that is
//! comes, or until the oldest has waited the budget (`--max-write-delay`).
//!
//! It decides once per stream and worker, not per player: a worker holds a
//! stream's frames for all its players there ([`StreamHold`]), and what is
//! held goes to each player in one call when it is due, to be written in
//! that loop iteration. Every player of a stream sees the same frames at the
//! same times, so one decision serves them all, and a player is touched once
//! per write instead of once per frame (at a 200 ms budget, 5 times a second
//! instead of 77: the cost of reaching a player's state, not of the frame,
//! is what a fan-out of thousands pays for).
//!
//! ```text
//!                 a frame comes: what is held worth a write?     yes (see below)
//!   nothing held ─────────────────────────────────────────────────────────► to the players,
//!     ▲    │ no                                                              in the write list
//!     │    ▼                                                                 (this iteration)
//!     │  held (since = the loop's now; deadline = since + budget) ── worth ──────►│
//!     │    │                                                     a write          │
//!     │    └──── the worker's one deadline (earliest held) passes ───────────────►│
//!     └─────────────────────────────── released ◄─────────────────────────────────┘
//! ```
//!
//! Worth a write at once: a budget of 0; [`WORTH_A_WRITE`] bytes held (less
//! where players' queues are small: [`WritePolicy::new`]); a video frame
//! whose successor is not due before the stream would be released (its
//! deadline less the [lead](HeldQueues::lead)): so at the default 45 ms,
//! every video frame of a 30 fps stream goes at once and audio travels with
//! the next one, and with 200 ms about six frames leave together; a start
//! point while a player there waits for one (it joined before the
//! publisher or without a cached GOP, the publisher changed, or it skips
//! after its queue overflowed: a join's first frames are never held); and
//! a frame that comes in the loop iteration that released the
//! stream (its players are in this iteration's write list already). A
//! publish or unpublish notice releases what is held first, then goes at
//! once. What is not media is never held: control bytes (replies, pings,
//! acknowledgements), HTTP responses, a joiner's cached GOP and TLS records
//! are written in the iteration that queued them. A connection whose socket
//! is full is not scheduled: the writable edge brings it back.
//!
//! Held streams wait in one FIFO per worker ([`HeldQueues`]): every entry's
//! deadline is the loop's `now` when the stream was held plus the same
//! budget, so the list is sorted by deadline as it is built, the earliest
//! is at the front, and the worker's poll waits at most until then: one
//! timer per worker, however many players and streams. An entry whose
//! stream was released early stays in the list and is skipped when it comes
//! due (its deadline no longer matches the hold's).
//!
//! The budget bounds the wait until a write *begins*, and the worker's
//! write pass takes time: at 1,000 players due together, about 10 ms from
//! the first write to the last. So held streams are released that much
//! early ([`HeldQueues::lead`]: the longest write pass of the last second or
//! two, plus the poll's millisecond, at most half the budget), and the last
//! write of a pass still begins within the budget while passes stay as long
//! as they were. What the budget cannot bound is a core taken away from the
//! worker (another process, or a pass suddenly longer than the last ones):
//! `sluice_write_wait_seconds` measures the actual waits, from when a frame
//! was held to the write that sends it.

use super::stream::Frame;
use crate::protocol::session::MediaKind;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Held media bytes that are worth a write whatever the budget: past
/// about this size a write's fixed cost is a small part of its cost (at
/// 51 KB per write the kernel's per-byte work dominates), and a larger hold
/// only adds latency and memory.
pub(super) const WORTH_A_WRITE: usize = 64 * 1024;

/// The longest video frame interval the policy believes (a stream that
/// paused, or a timestamp jump): beyond it, the next frame is not expected.
const MAX_VIDEO_GAP_MS: u32 = 1000;

/// A worker's write policy: the budget a frame may wait for company.
#[derive(Debug, Clone, Copy)]
pub(super) struct WritePolicy {
    /// Longest a held frame waits for its write to be due (0: every frame
    /// goes to its players in the iteration it came).
    pub max_delay: Duration,
    /// Held media bytes released at once: [`WORTH_A_WRITE`], or less where
    /// players' queues are small (see [`WritePolicy::new`]).
    pub worth_a_write: usize,
}

/// What the policy decides for a connection that got media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Put it in this iteration's write list.
    WriteNow,
    /// Hold it: its write is due at `deadline`. `first`: it was not held
    /// before (the caller lists it in [`HeldQueues`]).
    Hold { deadline: Instant, first: bool },
}

/// What is held, as the policy sees it when a frame came.
#[derive(Debug, Clone, Copy)]
pub(super) struct Queued {
    /// Media bytes held.
    pub media_bytes: usize,
    /// The frame that came is video, with this timestamp (ms).
    pub video_ts: Option<u32>,
}

impl Queued {
    /// What is held once frame `f` is: see [`Queued`].
    pub(super) fn frame(f: &Frame, media_bytes: usize) -> Self {
        Self {
            media_bytes,
            video_ts: (f.kind == MediaKind::Video).then_some(f.timestamp),
        }
    }
}

/// A stream hold's state in the policy (one per [`StreamHold`]).
#[derive(Debug, Default)]
pub(super) struct Pacing {
    /// When the oldest frame held since the last release came (the loop's
    /// `now` then).
    since: Option<Instant>,
    /// While held: the deadline its [`HeldQueues`] entry carries.
    held_until: Option<Instant>,
    /// Timestamp of the last video frame held (ms, the stream's timeline).
    last_video_ts: Option<u32>,
    /// The last non-zero interval between video frames (ms).
    video_gap_ms: Option<u32>,
}

impl Pacing {
    /// When the oldest frame held came.
    pub(super) fn since(&self) -> Option<Instant> {
        self.since
    }

    /// True when the stream is held until `deadline`: a held-list entry
    /// with another deadline is stale (released early, or held again since).
    pub(super) fn is_held_until(&self, deadline: Instant) -> bool {
        self.held_until == Some(deadline)
    }

    /// A frame that came at `at` is held: the oldest held is the older of
    /// it and what was held already.
    pub(super) fn queued_since(&mut self, at: Instant) {
        self.since = Some(self.since.map_or(at, |s| s.min(at)));
    }

    /// What was held was released: a later hold starts afresh.
    pub(super) fn written(&mut self) {
        self.since = None;
        self.held_until = None;
    }

    /// Notes a video frame's timestamp: the interval to the previous one is
    /// the policy's guess of when the next comes.
    fn saw_video(&mut self, ts: u32) {
        if let Some(prev) = self.last_video_ts {
            let gap = ts.wrapping_sub(prev);
            if gap > 0 && gap <= MAX_VIDEO_GAP_MS {
                self.video_gap_ms = Some(gap);
            } else if gap > MAX_VIDEO_GAP_MS {
                self.video_gap_ms = None;
            }
        }
        self.last_video_ts = Some(ts);
    }
}

/// A stream's frames that a worker holds for its players there, and the
/// policy's state for them (one per stream with players on the worker).
#[derive(Debug, Default)]
pub(super) struct StreamHold {
    frames: Vec<Arc<Frame>>,
    bytes: usize,
    pub pacing: Pacing,
    /// The loop iteration (its `now`) that last released the stream: its
    /// players' queues are in that iteration's write list, so a frame that
    /// comes in the same iteration goes with them at no extra write.
    released_in: Option<Instant>,
    /// A player here waits for a start point (it joined before the
    /// publisher, or skips after a queue overflow): the next one goes at
    /// once, as a join's first frames do.
    pub awaits_start: bool,
}

impl StreamHold {
    /// Holds `f` and asks `policy` whether what is held goes now (at `now`,
    /// the loop iteration's clock; a held stream is released `lead` before
    /// its deadline: [`HeldQueues::lead`]).
    pub(super) fn push(
        &mut self,
        policy: &WritePolicy,
        f: &Arc<Frame>,
        now: Instant,
        lead: Duration,
    ) -> Decision {
        self.bytes += f.payload.len();
        self.frames.push(f.clone());
        let queued = Queued::frame(f, self.bytes);
        let starts = f.start_point && std::mem::take(&mut self.awaits_start);
        if starts || self.released_in == Some(now) {
            if let Some(ts) = queued.video_ts {
                self.pacing.saw_video(ts);
            }
            self.pacing.queued_since(now);
            return Decision::WriteNow;
        }
        policy.decide(&mut self.pacing, queued, now, lead)
    }

    /// Takes what is held, and since when its oldest frame waited, in the
    /// loop iteration of `now`; the hold starts afresh (the video interval
    /// it learnt stays).
    pub(super) fn take(&mut self, now: Instant) -> (Vec<Arc<Frame>>, Option<Instant>) {
        let since = self.pacing.since();
        self.pacing.written();
        self.bytes = 0;
        self.released_in = Some(now);
        (std::mem::take(&mut self.frames), since)
    }

    /// True when nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

impl WritePolicy {
    /// The policy for a budget of `max_delay` and players' queues of
    /// `queue_bytes` (the bound past which a player skips): what is held
    /// never takes more than a sixteenth of that bound, so a player that
    /// reads slowly has nearly all of its queue as slack.
    pub(super) fn new(max_delay: Duration, queue_bytes: usize) -> Self {
        Self {
            max_delay,
            worth_a_write: WORTH_A_WRITE.min(queue_bytes / 16).max(1),
        }
    }

    /// Media was queued at `now` for players that are not in this
    /// iteration's write list: write now, or hold until when? What is held
    /// is released `lead` before its deadline ([`HeldQueues::lead`]).
    pub(super) fn decide(
        &self,
        pacing: &mut Pacing,
        queued: Queued,
        now: Instant,
        lead: Duration,
    ) -> Decision {
        if let Some(ts) = queued.video_ts {
            pacing.saw_video(ts);
        }
        let since = *pacing.since.get_or_insert(now);
        if self.max_delay.is_zero() || queued.media_bytes >= self.worth_a_write {
            return Decision::WriteNow;
        }
        let deadline = since + self.max_delay;
        if deadline <= now {
            return Decision::WriteNow;
        }
        if queued.video_ts.is_some() {
            // Hold a video frame only if the next one is due before the
            // stream is released (its deadline less the lead): otherwise it
            // would leave with nothing but the audio that follows it, and
            // wait for that.
            let release = deadline.checked_sub(lead).unwrap_or(now);
            let next = pacing
                .video_gap_ms
                .map(|g| now + Duration::from_millis(u64::from(g)));
            if next.map_or(true, |next| next > release) {
                return Decision::WriteNow;
            }
        }
        let first = pacing.held_until.is_none();
        pacing.held_until = Some(deadline);
        Decision::Hold { deadline, first }
    }
}

/// The poll's timeout is whole milliseconds (rounded up): a wake-up may come
/// this much after the deadline asked for.
const POLL_GRANULARITY: Duration = Duration::from_millis(1);

/// How long the longest write pass is remembered: a pass is measured in
/// one window of this length and believed through the next.
const PASS_WINDOW: Duration = Duration::from_secs(1);

/// A worker's held streams, earliest deadline first (see the module
/// documentation): (deadline, what is held), and how early they are
/// released.
#[derive(Debug)]
pub(super) struct HeldQueues<K> {
    entries: VecDeque<(Instant, K)>,
    /// The most the lead may be: half the budget.
    max_lead: Duration,
    /// The longest write pass of this window, and of the one before.
    pass_now: Duration,
    pass_before: Duration,
    window_start: Option<Instant>,
}

impl<K: Copy> HeldQueues<K> {
    /// An empty list for a worker whose budget is `budget`.
    pub(super) fn new(budget: Duration) -> Self {
        Self {
            entries: VecDeque::new(),
            max_lead: budget / 2,
            pass_now: Duration::ZERO,
            pass_before: Duration::ZERO,
            window_start: None,
        }
    }

    /// The worker's write pass that began at `at` took `took`.
    pub(super) fn pass_took(&mut self, at: Instant, took: Duration) {
        let start = *self.window_start.get_or_insert(at);
        if at.saturating_duration_since(start) >= PASS_WINDOW {
            self.pass_before = self.pass_now;
            self.pass_now = Duration::ZERO;
            self.window_start = Some(at);
        }
        self.pass_now = self.pass_now.max(took);
    }

    /// How long before its deadline a held stream is released: the
    /// longest recent write pass plus the poll's granularity, at most half
    /// the budget (none with no entries to release).
    pub(super) fn lead(&self) -> Duration {
        (self.pass_now.max(self.pass_before) + POLL_GRANULARITY).min(self.max_lead)
    }

    /// Lists `key`, held until `deadline`. Deadlines come in
    /// non-decreasing order (the loop's `now` plus one budget), so this is
    /// a push at the back; one that did not would be put in its place.
    pub(super) fn push(&mut self, deadline: Instant, key: K) {
        let at = self.entries.partition_point(|&(d, _)| d <= deadline);
        self.entries.insert(at, (deadline, key));
    }

    /// When the worker must wake for the earliest entry: its deadline less
    /// the [lead](HeldQueues::lead), stale entries included (a wake-up for a
    /// connection written early finds nothing to do and costs one loop turn).
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let lead = self.lead();
        self.entries
            .front()
            .map(|&(at, _)| at.checked_sub(lead).unwrap_or(at))
    }

    /// The next entry to release at `now` (its deadline is within the lead
    /// of `now`), if any.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, K)> {
        let horizon = now + self.lead();
        match self.entries.front() {
            Some(&(at, _)) if at <= horizon => self.entries.pop_front(),
            _ => None,
        }
    }

    /// Entries listed, stale ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One connection under the policy on a virtual clock (microseconds
    /// since `t0`), with the worker's part played by hand: the held list,
    /// a wake-up at its front's deadline, the write of a due connection
    /// (skipping stale entries, as `Worker::release_held` does).
    struct Sim {
        policy: WritePolicy,
        pacing: Pacing,
        held: HeldQueues<u32>,
        t0: Instant,
        /// Arrival times of the frames queued and not yet written.
        waiting: Vec<u64>,
        bytes: usize,
        /// Each write: (when, frames in it, the longest any of them waited
        /// until the last write of its pass began).
        writes: Vec<(u64, usize, u64)>,
        /// How long the worker's write pass takes (µs): the connection
        /// stands for many players of the stream, the last of them written
        /// this long after the first (about 10 ms at 1,000 players).
        pass_us: u64,
    }

    impl Sim {
        fn new(budget_ms: u64) -> Self {
            Self {
                policy: WritePolicy::new(Duration::from_millis(budget_ms), 1 << 30),
                pacing: Pacing::default(),
                held: HeldQueues::new(Duration::from_millis(budget_ms)),
                t0: Instant::now(),
                waiting: Vec::new(),
                bytes: 0,
                writes: Vec::new(),
                pass_us: 0,
            }
        }

        /// The same with write passes of `pass_ms`.
        fn with_pass(budget_ms: u64, pass_ms: u64) -> Self {
            Self {
                pass_us: pass_ms * 1000,
                ..Self::new(budget_ms)
            }
        }

        fn at(&self, us: u64) -> Instant {
            self.t0 + Duration::from_micros(us)
        }

        fn us(&self, t: Instant) -> u64 {
            t.duration_since(self.t0).as_micros() as u64
        }

        /// The loop wakes whenever the held list asks, up to `us`, and
        /// writes the connection if the entry is current.
        fn run_until(&mut self, us: u64) {
            while let Some(wake) = self.held.next_wake().filter(|&w| w <= self.at(us)) {
                while let Some((at, _)) = self.held.pop_due(wake) {
                    if self.pacing.is_held_until(at) {
                        let t = self.us(wake);
                        self.write(t);
                    }
                }
            }
        }

        /// A frame of `bytes` arrives at `us` (video with timestamp
        /// `video_ts`, or audio); what the policy says is done at once.
        fn arrive(&mut self, us: u64, video_ts: Option<u32>, bytes: usize) -> Decision {
            self.run_until(us);
            self.waiting.push(us);
            self.bytes += bytes;
            let q = Queued {
                media_bytes: self.bytes,
                video_ts,
            };
            let now = self.at(us);
            let lead = self.held.lead();
            let d = self.policy.decide(&mut self.pacing, q, now, lead);
            match d {
                Decision::WriteNow => self.write(us),
                Decision::Hold { deadline, first } => {
                    if first {
                        self.held.push(deadline, 0);
                    }
                }
            }
            d
        }

        fn write(&mut self, us: u64) {
            let first = self.waiting.first().copied().unwrap_or(us);
            let longest = us + self.pass_us - first;
            let pass = Duration::from_micros(self.pass_us);
            self.held.pass_took(self.at(us), pass);
            self.writes.push((us, self.waiting.len(), longest));
            self.waiting.clear();
            self.bytes = 0;
            self.pacing.written();
        }

        fn longest_wait_us(&self) -> u64 {
            self.writes.iter().map(|w| w.2).max().unwrap_or(0)
        }
    }

    /// A 720p30-shaped stream: 30 video frames a second (a keyframe every
    /// 60) and 47 AAC frames a second, for `secs` seconds, in arrival
    /// order: (µs, video timestamp or None for audio, bytes).
    fn av_stream(secs: u64, fps: u64) -> Vec<(u64, Option<u32>, usize)> {
        let mut frames = Vec::new();
        for i in 0..secs * fps {
            let us = i * 1_000_000 / fps;
            let bytes = if i % 60 == 0 { 56_000 } else { 11_000 };
            frames.push((us, Some((us / 1000) as u32), bytes));
        }
        for i in 0..secs * 47 {
            frames.push((i * 1_000_000 / 47 + 7, None, 372));
        }
        frames.sort_by_key(|f| f.0);
        frames
    }

    fn play(sim: &mut Sim, frames: &[(u64, Option<u32>, usize)]) {
        for &(us, ts, bytes) in frames {
            sim.arrive(us, ts, bytes);
        }
        let end = frames.last().map_or(0, |f| f.0) + 2_000_000;
        sim.run_until(end);
    }

    #[test]
    fn a_zero_budget_writes_every_frame_as_it_comes() {
        let mut sim = Sim::new(0);
        let frames = av_stream(2, 30);
        play(&mut sim, &frames);
        assert_eq!(sim.writes.len(), frames.len());
        assert_eq!(sim.longest_wait_us(), 0);
    }

    #[test]
    fn at_the_default_budget_video_goes_at_once_and_audio_rides_with_it() {
        let budget = default_budget_ms();
        // Alone, and with a write pass of 1,000 players (the stream is
        // released that much early, so audio waits that much less).
        for pass_ms in [0, 10] {
            let mut sim = Sim::with_pass(budget, pass_ms);
            let frames = av_stream(10, 30);
            play(&mut sim, &frames);
            let video = frames.iter().filter(|f| f.1.is_some()).count();
            // Every video frame leaves the moment it comes...
            let mut writes = sim.writes.iter().map(|w| w.0);
            for f in frames.iter().filter(|f| f.1.is_some()).skip(1) {
                assert!(writes.any(|t| t == f.0), "video at {} µs was held", f.0);
            }
            // ...taking the audio queued since with it; audio that came
            // too soon after a video frame to reach the next one leaves at
            // its deadline: 300 video frames and 470 audio frames in fewer
            // than 360 writes instead of 770. (Simulated with the 10 ms
            // pass: 301 writes at 45 ms, 371 at 40 and 510 at 30, the
            // default before, where most audio left alone.)
            assert!(sim.writes.len() >= video, "{} writes", sim.writes.len());
            assert!(
                sim.writes.len() < video * 12 / 10,
                "{} writes with a {pass_ms} ms pass",
                sim.writes.len()
            );
            assert!(sim.longest_wait_us() <= budget * 1000);
        }
    }

    #[test]
    fn a_video_frame_is_held_only_if_its_successor_comes_before_the_release() {
        let policy = WritePolicy::new(Duration::from_millis(40), 1 << 30);
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let video = |ts| Queued {
            media_bytes: 11_000,
            video_ts: Some(ts),
        };
        for (lead_ms, held) in [(1, true), (10, false)] {
            let lead = Duration::from_millis(lead_ms);
            let mut p = Pacing::default();
            // The first frame teaches nothing of the interval: it goes.
            assert_eq!(
                policy.decide(&mut p, video(0), t0, lead),
                Decision::WriteNow
            );
            p.written();
            // The next comes at 33 ms, its successor due at 66. Held, it
            // would be released 40 ms after it came less the lead: at 72
            // ms with a 1 ms lead, after its successor, so it waits for
            // it; at 63 ms with a 10 ms lead, before it, so holding it
            // would only delay it.
            let d = policy.decide(&mut p, video(33), ms(33), lead);
            assert_eq!(
                matches!(d, Decision::Hold { .. }),
                held,
                "lead {lead_ms} ms: {d:?}"
            );
        }
    }

    #[test]
    fn a_larger_budget_merges_video_frames_too() {
        let mut sim = Sim::new(200);
        let frames = av_stream(10, 30);
        play(&mut sim, &frames);
        // About 6 video frames per write, fewer when the 64 KiB mark is
        // reached first (a keyframe).
        assert!(
            sim.writes.len() <= 10 * 1000 / 150,
            "{} writes",
            sim.writes.len()
        );
        assert!(sim.longest_wait_us() <= 200_000);
    }

    /// The default budget, ms.
    fn default_budget_ms() -> u64 {
        crate::config::DEFAULT_MAX_WRITE_DELAY.0.as_millis() as u64
    }

    #[test]
    fn an_audio_only_stream_leaves_a_few_frames_at_a_time() {
        let mut sim = Sim::new(default_budget_ms());
        let frames: Vec<_> = (0..470).map(|i| (i * 1_000_000 / 47, None, 372)).collect();
        play(&mut sim, &frames);
        assert!(
            sim.writes.len() < frames.len() * 3 / 4,
            "{} writes",
            sim.writes.len()
        );
        assert!(sim.writes.iter().all(|w| w.1 >= 1));
        assert!(sim.longest_wait_us() <= default_budget_ms() * 1000);
    }

    #[test]
    fn at_60_fps_the_default_budget_merges_video_frames() {
        let mut sim = Sim::new(default_budget_ms());
        let frames: Vec<_> = (0..600u64)
            .map(|i| {
                let us = i * 1_000_000 / 60;
                (us, Some((us / 1000) as u32), 5_000)
            })
            .collect();
        play(&mut sim, &frames);
        assert!(
            sim.writes.len() <= frames.len() / 2 + 1,
            "{} writes",
            sim.writes.len()
        );
        assert!(sim.longest_wait_us() <= default_budget_ms() * 1000);
    }

    #[test]
    fn a_full_hold_goes_at_once() {
        let policy = WritePolicy::new(Duration::from_millis(200), 1 << 30);
        let now = Instant::now();
        let mut p = Pacing::default();
        let full = Queued {
            media_bytes: WORTH_A_WRITE,
            video_ts: None,
        };
        assert_eq!(
            policy.decide(&mut p, full, now, Duration::ZERO),
            Decision::WriteNow
        );
        // With a small player queue, a sixteenth of it is worth a write.
        let small_queues = WritePolicy::new(Duration::from_millis(200), 256 * 1024);
        assert_eq!(small_queues.worth_a_write, 16 * 1024);
        let mut p = Pacing::default();
        let some = Queued {
            media_bytes: 16 * 1024,
            video_ts: None,
        };
        assert_eq!(
            small_queues.decide(&mut p, some, now, Duration::ZERO),
            Decision::WriteNow
        );
        let mut p = Pacing::default();
        let small = Queued {
            media_bytes: 100,
            video_ts: None,
        };
        let deadline = now + Duration::from_millis(200);
        assert_eq!(
            policy.decide(&mut p, small, now, Duration::ZERO),
            Decision::Hold {
                deadline,
                first: true
            }
        );
        // Held already: the deadline is the oldest byte's, not moved on.
        let later = now + Duration::from_millis(50);
        assert_eq!(
            policy.decide(&mut p, small, later, Duration::ZERO),
            Decision::Hold {
                deadline,
                first: false
            }
        );
        assert!(p.is_held_until(deadline));
        p.written();
        assert!(!p.is_held_until(deadline), "a write ends the hold");
    }

    #[test]
    fn held_deadlines_come_out_earliest_first_and_only_when_due() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // A budget of 0: no lead.
        let mut h = HeldQueues::new(Duration::ZERO);
        h.push(ms(30), 1);
        h.push(ms(30), 2);
        h.push(ms(45), 3);
        h.push(ms(40), 4); // out of order: put in its place
        assert_eq!(h.next_wake(), Some(ms(30)));
        assert_eq!(h.pop_due(ms(29)), None);
        let due: Vec<_> = std::iter::from_fn(|| h.pop_due(ms(40)))
            .map(|e| e.1)
            .collect();
        assert_eq!(due, [1, 2, 4]);
        assert_eq!(h.len(), 1);
        assert_eq!(h.next_wake(), Some(ms(45)));
    }

    #[test]
    fn held_streams_are_released_a_write_pass_early() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut h = HeldQueues::new(Duration::from_millis(30));
        // No pass measured yet: the poll's millisecond alone.
        assert_eq!(h.lead(), Duration::from_millis(1));
        h.push(ms(100), 1);
        assert_eq!(h.next_wake(), Some(ms(99)));
        // A pass of 10 ms: released 11 ms early, so a write that begins at
        // the end of such a pass begins by the deadline.
        h.pass_took(ms(0), Duration::from_millis(10));
        assert_eq!(h.next_wake(), Some(ms(89)));
        assert_eq!(h.pop_due(ms(88)), None);
        let wake = h.next_wake().unwrap();
        assert_eq!(h.pop_due(wake).map(|e| e.0), Some(ms(100)));
        assert!(wake + Duration::from_millis(10) <= ms(100));
        // Never more than half the budget early.
        h.pass_took(ms(10), Duration::from_millis(40));
        assert_eq!(h.lead(), Duration::from_millis(15));
        // The longest pass is believed for one window after its own, then
        // forgotten.
        h.pass_took(ms(1_200), Duration::from_millis(2));
        assert_eq!(h.lead(), Duration::from_millis(15));
        h.pass_took(ms(2_300), Duration::from_millis(2));
        assert_eq!(h.lead(), Duration::from_millis(3));
    }

    /// Frames of one published stream: an AAC frame (`key` false) or an
    /// AVC keyframe (`key` true), `len` bytes.
    struct Published {
        stream: Arc<crate::server::stream::Stream>,
        ts: u32,
    }

    impl Published {
        fn new() -> (crate::server::stream::Registry, Self) {
            use crate::server::base::ConnId;
            use crate::server::stream::{GopLimits, PublisherInfo, PublisherKind, Registry};
            let reg = Registry::new(
                4096,
                GopLimits {
                    max_bytes: 1 << 20,
                    max_frames: 64,
                },
            );
            let info = PublisherInfo {
                conn_id: ConnId(1),
                worker: 0,
                peer: "127.0.0.1:1".parse().unwrap(),
                kind: PublisherKind::Rtmp,
                since: std::time::SystemTime::now(),
            };
            let (stream, _) = reg.publish("live/x", info).unwrap();
            (reg, Self { stream, ts: 0 })
        }

        fn frame(&mut self, key: bool, len: usize) -> Arc<Frame> {
            let (kind, first) = if key {
                (MediaKind::Video, [0x17, 0x01])
            } else {
                (MediaKind::Audio, [0xAF, 0x01])
            };
            let mut v = vec![0u8; len];
            v[..2].copy_from_slice(&first);
            self.ts += 10;
            let id = crate::server::base::ConnId(1);
            let pushed = self.stream.push_from(id, kind, self.ts, v.into());
            pushed.unwrap().0
        }
    }

    #[test]
    fn a_stream_hold_releases_its_frames_together_with_the_oldest_wait() {
        let policy = WritePolicy::new(Duration::from_millis(200), 1 << 30);
        let (_reg, mut p) = Published::new();
        let mut hold = StreamHold::default();
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let deadline = ms(200);
        let first = Decision::Hold {
            deadline,
            first: true,
        };
        assert_eq!(
            hold.push(&policy, &p.frame(false, 300), t0, Duration::ZERO),
            first
        );
        let again = Decision::Hold {
            deadline,
            first: false,
        };
        assert_eq!(
            hold.push(&policy, &p.frame(false, 300), ms(20), Duration::ZERO),
            again
        );
        assert!(hold.pacing.is_held_until(deadline));
        let (frames, since) = hold.take(ms(190));
        assert_eq!(frames.len(), 2);
        assert_eq!(since, Some(t0), "the oldest frame's wait");
        assert!(hold.is_empty());
        assert!(!hold.pacing.is_held_until(deadline), "released");
        // The held bytes count toward a write's worth.
        let small = WritePolicy::new(Duration::from_millis(200), 16 * 1024);
        assert_eq!(
            hold.push(&small, &p.frame(false, 600), ms(300), Duration::ZERO),
            {
                Decision::Hold {
                    deadline: ms(500),
                    first: true,
                }
            }
        );
        assert_eq!(
            hold.push(&small, &p.frame(false, 600), ms(310), Duration::ZERO),
            Decision::WriteNow,
            "1,200 bytes held: over a sixteenth of a 16 KiB queue"
        );
    }

    #[test]
    fn a_frame_in_the_iteration_of_a_release_goes_with_it() {
        let policy = WritePolicy::new(Duration::from_millis(200), 1 << 30);
        let (_reg, mut p) = Published::new();
        let mut hold = StreamHold::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_millis(5);
        assert!(matches!(
            hold.push(&policy, &p.frame(false, 300), t0, Duration::ZERO),
            Decision::Hold { .. }
        ));
        let _ = hold.take(t0);
        // The players are in this iteration's write list: no reason to wait.
        assert_eq!(
            hold.push(&policy, &p.frame(false, 300), t0, Duration::ZERO),
            Decision::WriteNow
        );
        let (frames, since) = hold.take(t0);
        assert_eq!((frames.len(), since), (1, Some(t0)), "its wait is counted");
        // The next iteration holds again.
        assert!(matches!(
            hold.push(&policy, &p.frame(false, 300), later, Duration::ZERO),
            Decision::Hold { first: true, .. }
        ));
    }

    #[test]
    fn a_start_point_goes_at_once_while_a_player_waits_for_one() {
        let policy = WritePolicy::new(Duration::from_millis(200), 1 << 30);
        let (_reg, mut p) = Published::new();
        let mut hold = StreamHold {
            awaits_start: true,
            ..StreamHold::default()
        };
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        // Audio of a stream with video is no start point: held.
        let _ = p.frame(true, 1000);
        assert!(matches!(
            hold.push(&policy, &p.frame(false, 300), t0, Duration::ZERO),
            Decision::Hold { .. }
        ));
        assert_eq!(
            hold.push(&policy, &p.frame(true, 1000), ms(10), Duration::ZERO),
            Decision::WriteNow
        );
        assert!(!hold.awaits_start, "once");
        let (frames, since) = hold.take(ms(10));
        assert_eq!((frames.len(), since), (2, Some(t0)));
        // With nobody waiting, a keyframe is held like any frame (a 200 ms
        // budget holds several video frames).
        let _ = hold.push(&policy, &p.frame(false, 300), ms(20), Duration::ZERO);
        assert!(matches!(
            hold.push(&policy, &p.frame(true, 1000), ms(30), Duration::ZERO),
            Decision::Hold { .. }
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The bound: whatever the budget, frame rate, jitter and frame
        /// sizes, no frame waits longer than the budget, and no more writes
        /// are made than frames came.
        #[test]
        fn no_frame_waits_longer_than_the_budget(
            budget_ms in prop::sample::select(vec![0u64, 5, 20, 30, 50, 100, 200, 350]),
            fps in prop::sample::select(vec![1u64, 15, 24, 25, 30, 50, 60]),
            audio in any::<bool>(),
            jitter in prop::collection::vec(0u64..20_000, 400),
            sizes in prop::collection::vec(100usize..70_000, 400),
        ) {
            let mut frames = Vec::new();
            for i in 0..200u64 {
                let us = i * 1_000_000 / fps + jitter[i as usize];
                frames.push((us, Some((i * 1000 / fps) as u32), sizes[i as usize]));
                if audio {
                    let us = i * 1_000_000 / 47 + jitter[200 + i as usize];
                    frames.push((us, None, sizes[200 + i as usize] / 100));
                }
            }
            frames.sort_by_key(|f| f.0);
            let mut sim = Sim::new(budget_ms);
            play(&mut sim, &frames);
            prop_assert!(sim.longest_wait_us() <= budget_ms * 1000);
            prop_assert!(sim.writes.len() <= frames.len());
            prop_assert_eq!(sim.writes.iter().map(|w| w.1).sum::<usize>(), frames.len());
            prop_assert!(sim.waiting.is_empty());
        }
    }
}
