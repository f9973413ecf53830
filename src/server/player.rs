//! The player policy: what one player (RTMP, HTTP-FLV, ws-flv, or a push
//! relay) of one stream is sent, and when it skips. Sockets play no part:
//! a [`Player`] decides, an [`OutQueue`] receives, and the tests below drive
//! both with frames from a real [`Registry`].
//!
//! ```text
//!              start point (keyframe of the default track, or audio
//!              of a stream without video): send the headers in force
//!   Skipping ───────────────────────────────────────────────────────► Playing
//!   ▲  │ ▲                                                              │ │
//!   │  │ └─── queue over its bound and this frame is no start point ───┘ │
//!   │  └── pause ──► Paused ── unpause ──► Skipping                         │
//!   └── a new publisher, or the stream ends (headers sent are forgotten) ──┘
//! ```
//!
//! * Skipping drops frames until a start point, but holds the header frames
//!   (metadata, sequence headers) it sees, so the start point is preceded by
//!   exactly the headers in force at it.
//! * The queue is bounded in bytes: on overflow every unstarted frame is
//!   dropped; the frame that overflowed either resumes play at once (a start
//!   point that fits, with the headers again) or starts a skip.
//! * Codec and track filters: an Enhanced RTMP player gets only the codecs
//!   it announced in `connect`, and without multitrack support only track 0;
//!   a video track starts on its own keyframe.

use super::base::ConnId;
use super::batch_file::BatchFiles;
use super::queue::{Batch, Item, OutQueue, MEDIA_ITEM_OVERHEAD};
use super::stats::Stats;
use super::stream::{Format, Frame, Stream, MAX_STREAM_HEADERS, SHARED_MESSAGE_STREAM_ID};
use crate::media::{self, FourCcSet, FrameClass};
use crate::protocol::amf::{self, Amf0Value};
use crate::protocol::chunk::{self, Message};
use crate::protocol::session::{caps_ex, is_metadata, ClientCaps, MediaKind};
use bytes::BytesMut;
use std::cell::{OnceCell, RefCell};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Header frames remembered per player (see [`SentHeaders`]): metadata plus
/// config and metadata for each track of a multitrack stream.
const MAX_SENT_HEADERS: usize = 64;

/// Limits a worker applies to every player.
#[derive(Debug, Clone, Copy)]
pub(super) struct PlayerLimits {
    /// Queued media bytes before a skip to the next keyframe.
    pub queue_bytes: usize,
    /// Queued control bytes before the peer is closed.
    pub control_bytes: usize,
    /// How long a socket may take nothing while bytes wait.
    pub stall: Duration,
}

/// How a player's frames are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Form {
    /// The frame's shared form for this format: RTMP on
    /// [`SHARED_MESSAGE_STREAM_ID`], an FLV tag, or an FLV tag in a
    /// WebSocket message.
    Shared(Format),
    /// RTMP on another message stream id: chunk headers built for this
    /// player around the same payload slices.
    Rtmp { chunk_size: u32, msid: u32 },
    /// A push relay: like [`Form::Rtmp`] (the shared form when the target
    /// gave stream id 1), and metadata as `@setDataFrame` (what encoders
    /// send, and what ingest servers keep for their players).
    Push { chunk_size: u32, msid: u32 },
}

impl Form {
    /// The form for an RTMP player on message stream `msid`.
    pub(super) fn rtmp(chunk_size: u32, msid: u32) -> Self {
        if msid == SHARED_MESSAGE_STREAM_ID {
            Form::Shared(Format::Rtmp)
        } else {
            Form::Rtmp { chunk_size, msid }
        }
    }

    /// The player format this form counts as (registry, logs, API).
    pub(super) fn format(self) -> Format {
        match self {
            Form::Shared(f) => f,
            Form::Rtmp { .. } | Form::Push { .. } => Format::Rtmp,
        }
    }

    /// The queue item for frame `f`; None for a frame this form cannot
    /// carry (pushed metadata grows by 16 bytes: onMetaData of 0xFFFFFF
    /// bytes does not fit the length field any more, docs/hardening.md
    /// case 43), which the caller skips.
    pub(super) fn item(self, f: &Arc<Frame>) -> Option<Item> {
        match self {
            Form::Shared(format) => Some(Item::Frame(f.clone(), format)),
            Form::Rtmp { chunk_size, msid } => {
                f.rtmp_for(chunk_size, msid).ok().map(Item::OwnFrame)
            }
            Form::Push { chunk_size, msid } => {
                if f.kind == MediaKind::Data && is_metadata(&f.payload) {
                    let mut p = BytesMut::with_capacity(16 + f.payload.len());
                    amf::encode(&Amf0Value::string("@setDataFrame"), &mut p);
                    p.extend_from_slice(&f.payload);
                    let form = chunk::wire_form(
                        chunk_size,
                        &Message {
                            csid: f.kind.csid(),
                            timestamp: f.timestamp,
                            type_id: f.kind.type_id(),
                            stream_id: msid,
                            payload: p.freeze(),
                        },
                    );
                    match form {
                        Ok(form) => Some(Item::OwnFrame(form)),
                        Err(e) => {
                            log::debug!("stream metadata not pushed: {e}");
                            None
                        }
                    }
                } else {
                    // The push announced the server's chunk size, the one
                    // every shared wire form is chunked at.
                    Form::rtmp(chunk_size, msid).item(f)
                }
            }
        }
    }
}

/// The frames a worker releases at once to its players of a stream (what
/// the write policy held, `pacing.rs`), with what a player needs to know
/// to take them all in one queue item ([`Item::Batch`]), worked out once
/// for every player instead of per player and frame.
///
/// A player takes the batch when taking the frames one by one would queue
/// every one of them unchanged: it is playing both tracks in a shared
/// form, no frame is a header, none is one it already had, none is
/// refused by its codec or track filter, every video track with an inter
/// frame before its keyframe has started, and the whole batch fits its
/// queue. Anything else (a joiner, a skip, a pause, a header, an overflow)
/// takes the frames one by one, the one path that decides such cases.
#[derive(Debug)]
pub(super) struct Release {
    frames: Vec<Arc<Frame>>,
    /// One of the frames is a header.
    has_header: bool,
    /// Every frame is one any player takes: track 0, no Enhanced RTMP
    /// codec (the codec and track filters pass them all).
    plain: bool,
    /// Video tracks (below 64) whose first frame here is an inter frame:
    /// the player must have started them already.
    needs_started: u64,
    /// Video tracks (below 64) with a keyframe here.
    keyframes: u64,
    /// The batch in each format (by [`Format::index`]) written from
    /// memory, built by the first player that takes it and cannot send from
    /// a file (TLS), unless a batch with a file was built first.
    batches: [OnceCell<Arc<Batch>>; Format::ALL.len()],
    /// The batch in each format appended to the worker's batch files, built
    /// by the first player that takes it and can send from a file (a plain
    /// socket). A worker whose players are all TLS appends nothing.
    file_batches: [OnceCell<Arc<Batch>>; Format::ALL.len()],
    /// The worker's batch files, lent for this release.
    files: RefCell<Option<BatchFiles>>,
    /// `files` was lent: a release of one frame is worth a batch for a
    /// player that sends from them.
    has_files: bool,
}

impl Release {
    pub(super) fn new(frames: Vec<Arc<Frame>>) -> Self {
        let (mut needs_started, mut keyframes) = (0u64, 0u64);
        let mut plain = true;
        for f in &frames {
            if f.kind == MediaKind::Data {
                continue;
            }
            plain &=
                f.info.track == 0 && !media::is_enhanced(f.kind == MediaKind::Video, &f.payload);
            if f.kind != MediaKind::Video || f.info.track >= 64 {
                continue;
            }
            let bit = 1u64 << f.info.track;
            match f.info.class {
                FrameClass::Keyframe => keyframes |= bit,
                FrameClass::Frame if keyframes & bit == 0 => needs_started |= bit,
                _ => {}
            }
        }
        Self {
            has_header: frames.iter().any(|f| f.header.is_some()),
            plain,
            needs_started,
            keyframes,
            frames,
            batches: Default::default(),
            file_batches: Default::default(),
            files: RefCell::new(None),
            has_files: false,
        }
    }

    /// The release with the worker's batch files (None: its batches are
    /// written from memory).
    pub(super) fn with_files(mut self, files: Option<BatchFiles>) -> Self {
        self.has_files = files.is_some();
        self.files = RefCell::new(files);
        self
    }

    /// The worker's batch files back.
    pub(super) fn into_files(self) -> Option<BatchFiles> {
        self.files.into_inner()
    }

    /// The frames' shared forms in `format`, one after another: for a
    /// player that sends from files (`files`), also in the worker's batch
    /// files when it has them. Any batch serves any player (every batch
    /// keeps its bytes), so a player without files takes the file batch
    /// when one was built, and the bytes are appended only for a player
    /// that will send them from there.
    fn batch(&self, format: Format, files: bool) -> &Arc<Batch> {
        let i = format.index();
        let build = || Batch::new(self.frames.iter().map(|f| f.form(format)));
        if files && self.has_files {
            return self.file_batches[i].get_or_init(|| {
                let batch = build();
                let span = match self.files.borrow_mut().as_mut() {
                    Some(files) => files.append(batch.pieces(), batch.wire_len()),
                    None => None,
                };
                Arc::new(batch.with_file(span))
            });
        }
        match self.file_batches[i].get() {
            Some(batch) => batch,
            None => self.batches[i].get_or_init(|| Arc::new(build())),
        }
    }
}

/// Who receives: a viewer, or a relay pushing the stream elsewhere (not
/// counted as a viewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Viewer,
    Relay,
}

/// Where a player is (see the module's diagram).
#[derive(Debug)]
enum PlayState {
    Playing,
    /// Waiting for a start point, holding the latest header of each slot
    /// delivered meanwhile: what the start point needs even if the
    /// stream's own latest headers have moved on by the time this worker
    /// gets there.
    Skipping {
        held: Vec<Arc<Frame>>,
    },
    /// Paused by the player (RTMP `pause`); resumes by skipping.
    Paused {
        held: Vec<Arc<Frame>>,
    },
}

/// Which codecs and tracks a player takes.
#[derive(Debug, Clone, Default)]
struct CodecFilter {
    /// Enhanced RTMP codecs the player announced in `connect` (None: it
    /// announced none, or the wildcard, and is sent everything).
    accepts: Option<FourCcSet>,
    /// The player announced `capsEx` without Multitrack: only track 0.
    default_track_only: bool,
}

impl CodecFilter {
    /// True when no frame is refused.
    fn passes_all(&self) -> bool {
        self.accepts.is_none() && !self.default_track_only
    }
}

/// The sequence numbers of the header frames queued to a player, newest
/// last. Only the latest header of each slot matters on resume, so the list
/// keeps the newest [`MAX_SENT_HEADERS`]: a publisher that resends its
/// sequence header at every keyframe cannot grow it for as long as a player
/// watches (past that many slots, a resume may repeat a header).
#[derive(Debug, Default)]
struct SentHeaders(Vec<u64>);

impl SentHeaders {
    fn mark(&mut self, seq: u64) {
        if self.0.len() >= MAX_SENT_HEADERS {
            self.0.remove(0);
        }
        self.0.push(seq);
    }

    fn contains(&self, seq: u64) -> bool {
        self.0.contains(&seq)
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// One player of one stream.
#[derive(Debug)]
pub(super) struct Player {
    /// RTMP message stream id (0 for HTTP players).
    pub msid: u32,
    pub stream: Arc<Stream>,
    pub form: Form,
    pub role: Role,
    /// The connection, for log lines.
    conn: ConnId,
    /// Deliveries with a lower sequence number were in the join snapshot
    /// (or already delivered).
    next_seq: u64,
    state: PlayState,
    audio: bool,
    video: bool,
    codecs: CodecFilter,
    sent_headers: SentHeaders,
    /// Video tracks (ids below 64) that have had a keyframe since play
    /// (re)started: other tracks' inter frames before it are not sent.
    started_tracks: u64,
    /// Frames this player was not sent (skips, overflow).
    pub dropped: u64,
    /// A refused codec has been logged for this player.
    refusal_logged: bool,
}

impl Player {
    /// Reads the fields a delivery reads first ([`Conn::warm`](super::conn::Conn::warm)).
    pub(super) fn warm(&self) -> u64 {
        let paused = matches!(self.state, PlayState::Paused { .. });
        self.next_seq
            ^ self.started_tracks
            ^ self.dropped
            ^ u64::from(self.msid)
            ^ u64::from(paused)
    }

    /// A player that starts by skipping to a start point; `next_seq` is the
    /// first sequence number it takes from live delivery.
    pub(super) fn new(
        conn: ConnId,
        msid: u32,
        stream: Arc<Stream>,
        form: Form,
        role: Role,
        next_seq: u64,
    ) -> Self {
        Self {
            msid,
            stream,
            form,
            role,
            conn,
            next_seq,
            state: PlayState::Skipping { held: Vec::new() },
            audio: true,
            video: true,
            codecs: CodecFilter::default(),
            sent_headers: SentHeaders::default(),
            started_tracks: 0,
            dropped: 0,
            refusal_logged: false,
        }
    }

    /// Applies what an RTMP player announced in `connect`.
    pub(super) fn with_caps(mut self, caps: &ClientCaps) -> Self {
        self.codecs = CodecFilter {
            accepts: caps.fourccs.clone().filter(|s| !s.is_wildcard()),
            default_track_only: caps.caps_ex.is_some() && !caps.has(caps_ex::MULTITRACK),
        };
        self
    }

    /// The player's format (registry, logs, API).
    pub(super) fn format(&self) -> Format {
        self.form.format()
    }

    /// Joining a live stream with something cached: queue its headers and
    /// GOP (from its keyframe) at once and play on from there.
    pub(super) fn start_with(
        &mut self,
        out: &mut OutQueue,
        headers: &[Arc<Frame>],
        gop: &[Arc<Frame>],
        limits: &PlayerLimits,
        stats: &Stats,
    ) {
        self.state = PlayState::Playing;
        for f in headers.iter().chain(gop) {
            self.enqueue(out, f, limits, stats);
        }
    }

    /// Live delivery of frame `f` (ignored when it was in the join
    /// snapshot or came before).
    pub(super) fn deliver(
        &mut self,
        out: &mut OutQueue,
        f: &Arc<Frame>,
        limits: &PlayerLimits,
        stats: &Stats,
    ) {
        if f.seq < self.next_seq {
            return;
        }
        self.next_seq = f.seq + 1;
        self.enqueue(out, f, limits, stats);
    }

    /// Live delivery of the frames of `release`: in one queue item when
    /// this player takes them all unchanged (see [`Release`]), otherwise
    /// one by one. `files`: the player's socket sends batches from the
    /// worker's batch files (plain TCP; not TLS).
    pub(super) fn deliver_release(
        &mut self,
        out: &mut OutQueue,
        release: &Release,
        files: bool,
        limits: &PlayerLimits,
        stats: &Stats,
    ) {
        if let Some(format) = self.takes_whole(release, files) {
            let batch = release.batch(format, files);
            let frames = batch.frames();
            if out.media_cost() + batch.wire_len() + frames * MEDIA_ITEM_OVERHEAD
                <= limits.queue_bytes
            {
                #[cfg(feature = "fault-injection")]
                self.injected_fault(&release.frames[0]);
                out.push(Item::Batch(batch.clone()));
                self.next_seq = release.frames[frames - 1].seq + 1;
                self.started_tracks |= release.keyframes;
                return;
            }
        }
        for f in &release.frames {
            self.deliver(out, f, limits, stats);
        }
    }

    /// The format this player takes all of `release` in, unchanged and in
    /// one item; None when some frame needs the one-by-one path (a
    /// release of one frame too, unless the worker has batch files and the
    /// player sends from them: a batch would only add an allocation, where
    /// with a file it saves the copy of its bytes into each player's
    /// socket).
    fn takes_whole(&self, release: &Release, files: bool) -> Option<Format> {
        let Form::Shared(format) = self.form else {
            return None;
        };
        let first = release.frames.first()?;
        let whole = (release.frames.len() >= 2 || (release.has_files && files))
            && matches!(self.state, PlayState::Playing)
            && self.audio
            && self.video
            && !release.has_header
            && first.seq >= self.next_seq
            && (release.plain || self.codecs.passes_all())
            && release.needs_started & !self.started_tracks == 0;
        whole.then_some(format)
    }

    /// A publish or unpublish notice with sequence number `seq`: true when
    /// it is new to this player, which then forgets the headers it was sent
    /// and waits for the new publisher's start point.
    pub(super) fn publisher_changed(&mut self, seq: u64) -> bool {
        if seq < self.next_seq {
            return false;
        }
        self.next_seq = seq + 1;
        self.state = PlayState::Skipping { held: Vec::new() };
        self.sent_headers.clear();
        true
    }

    /// RTMP `pause` / unpause: unpausing resumes on a start point.
    pub(super) fn set_paused(&mut self, paused: bool) {
        let held = match &mut self.state {
            PlayState::Playing => Vec::new(),
            PlayState::Skipping { held } | PlayState::Paused { held } => std::mem::take(held),
        };
        self.state = if paused {
            PlayState::Paused { held }
        } else {
            PlayState::Skipping { held }
        };
    }

    /// RTMP `receiveAudio` / `receiveVideo`. Video turned back on resumes
    /// on a keyframe.
    pub(super) fn set_receive(&mut self, kind: MediaKind, enabled: bool) {
        match kind {
            MediaKind::Audio => self.audio = enabled,
            _ => {
                if enabled && !self.video && matches!(self.state, PlayState::Playing) {
                    self.state = PlayState::Skipping { held: Vec::new() };
                }
                self.video = enabled;
            }
        }
    }

    /// True until a first start point was sent.
    #[cfg(test)]
    pub(super) fn is_waiting(&self) -> bool {
        !matches!(self.state, PlayState::Playing)
    }

    /// True while the player waits for a start point to begin or resume
    /// play (not while paused).
    pub(super) fn awaits_start(&self) -> bool {
        matches!(self.state, PlayState::Skipping { .. })
    }

    /// True when this player must not get `f`: its codec is one the player
    /// did not announce (legacy headers always pass), or it is a non-default
    /// track for a player without multitrack support. No allocation.
    fn refuses(&self, f: &Frame) -> bool {
        if f.kind == MediaKind::Data {
            return false;
        }
        if self.codecs.default_track_only && f.info.track != 0 {
            return true;
        }
        self.codecs.accepts.as_ref().is_some_and(|set| {
            media::is_enhanced(f.kind == MediaKind::Video, &f.payload)
                && !set.contains(f.info.codec)
        })
    }

    /// Tracks which video tracks have started on a keyframe; false for an
    /// inter frame of a track that has not.
    fn track_ready(&mut self, f: &Frame) -> bool {
        if f.kind != MediaKind::Video || f.info.track >= 64 {
            return true;
        }
        let bit = 1u64 << f.info.track;
        match f.info.class {
            FrameClass::Keyframe => {
                self.started_tracks |= bit;
                true
            }
            FrameClass::Frame => self.started_tracks & bit != 0,
            _ => true,
        }
    }

    /// The headers in force at frame `seq`: per slot, the latest published
    /// before it, from the stream and from those held while skipping; in
    /// publish order. Takes the held headers.
    fn headers_before(&mut self, seq: u64) -> Vec<Arc<Frame>> {
        let mut all = self.stream.headers();
        if let PlayState::Skipping { held } = &mut self.state {
            all.append(held);
        }
        all.retain(|h| h.seq < seq);
        all.sort_by_key(|h| std::cmp::Reverse(h.seq));
        let mut latest: Vec<Arc<Frame>> = Vec::with_capacity(all.len());
        for h in all {
            if !latest.iter().any(|l| l.header == h.header) {
                latest.push(h);
            }
        }
        latest.reverse();
        latest
    }

    fn count_dropped(&mut self, stats: &Stats, n: u64) {
        if n == 0 {
            return;
        }
        self.dropped += n;
        self.stream.frames_dropped.fetch_add(n, Ordering::Relaxed);
        stats.frames_dropped.fetch_add(n, Ordering::Relaxed);
    }

    fn send(&mut self, out: &mut OutQueue, f: &Arc<Frame>) {
        if let Some(item) = self.form.item(f) {
            out.push(item);
        }
    }

    /// Queues the headers in force at `seq` that this player takes.
    fn send_headers_before(&mut self, out: &mut OutQueue, seq: u64, only_unsent: bool) {
        for h in self.headers_before(seq) {
            if (only_unsent && self.sent_headers.contains(h.seq)) || self.refuses(&h) {
                continue;
            }
            self.send(out, &h);
            self.sent_headers.mark(h.seq);
        }
    }

    /// The fault the tests inject: a panic delivering to a stream whose
    /// key says so.
    #[cfg(feature = "fault-injection")]
    fn injected_fault(&self, f: &Frame) {
        if self
            .stream
            .key
            .ends_with(super::fault::FAULT_PANIC_ON_DELIVERY)
        {
            panic!("injected fault: frame {} to conn={}", f.seq, self.conn);
        }
    }

    /// Queues one frame, applying the filters, the skip-to-keyframe policy
    /// and the queue bound.
    fn enqueue(
        &mut self,
        out: &mut OutQueue,
        f: &Arc<Frame>,
        limits: &PlayerLimits,
        stats: &Stats,
    ) {
        #[cfg(feature = "fault-injection")]
        self.injected_fault(f);
        if matches!(self.state, PlayState::Paused { .. })
            || (f.kind == MediaKind::Audio && !self.audio)
            || (f.kind == MediaKind::Video && !self.video)
        {
            return;
        }
        let refused = self.refuses(f);
        if refused && !self.refusal_logged {
            self.refusal_logged = true;
            log::info!(
                "conn={} stream={}: not sending {} {} track {} (the player's connect did not announce it{})",
                self.conn,
                self.stream.key,
                f.info.codec,
                if f.kind == MediaKind::Video { "video" } else { "audio" },
                f.info.track,
                if self.codecs.default_track_only { ", or announced no multitrack" } else { "" }
            );
        }
        if f.header.is_some() {
            // While skipping, headers are sent with the frame that resumes
            // play. Headers count against the queue bound like any frame
            // (a publisher resending large headers must not grow a stalled
            // player's queue, docs/hardening.md case 38).
            let cost = f.form(self.format()).len() + MEDIA_ITEM_OVERHEAD;
            if !refused
                && matches!(self.state, PlayState::Playing)
                && out.media_cost() + cost > limits.queue_bytes
            {
                let dropped = out.drop_unstarted_media() as u64;
                self.sent_headers.clear();
                self.state = PlayState::Skipping { held: Vec::new() };
                self.count_dropped(stats, dropped);
            }
            match &mut self.state {
                PlayState::Skipping { held } => {
                    held.retain(|h| h.header != f.header);
                    if held.len() >= MAX_STREAM_HEADERS {
                        held.remove(0);
                    }
                    held.push(f.clone());
                }
                _ if !refused => {
                    self.send(out, f);
                    self.sent_headers.mark(f.seq);
                }
                _ => {}
            }
            return;
        }
        if let PlayState::Skipping { .. } = self.state {
            if !f.start_point {
                self.count_dropped(stats, 1);
                return;
            }
            // A start point resumes play even when this player is not sent
            // its codec: it then gets the tracks it can take (audio only
            // when no video is), from this point on. Only headers published
            // before this frame: later ones (read from the stream now, while
            // this worker catches up) arrive in order.
            self.send_headers_before(out, f.seq, true);
            self.state = PlayState::Playing;
            self.started_tracks = 0;
        }
        if refused {
            return;
        }
        if !self.track_ready(f) {
            self.count_dropped(stats, 1);
            return;
        }
        // What the frame will hold in the queue: its bytes in this format
        // and the item's overhead (the bound is on memory, not wire bytes).
        let len = f.form(self.format()).len() + MEDIA_ITEM_OVERHEAD;
        if out.media_cost() + len > limits.queue_bytes {
            let dropped = out.drop_unstarted_media() as u64;
            // Dropped frames may include headers: resend them all on resume.
            self.sent_headers.clear();
            if !(f.start_point && out.media_cost() + len <= limits.queue_bytes) {
                self.state = PlayState::Skipping { held: Vec::new() };
                self.count_dropped(stats, dropped + 1);
                log::debug!(
                    "conn={} stream={}: player queue over {} bytes; skipping to the next keyframe ({} frames dropped so far)",
                    self.conn,
                    self.stream.key,
                    limits.queue_bytes,
                    self.dropped
                );
                return;
            }
            self.count_dropped(stats, dropped);
            self.send_headers_before(out, f.seq, false);
            self.started_tracks = 0;
            self.track_ready(f);
        }
        self.send(out, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::FourCcSet;
    use crate::server::stream::{GopLimits, PublisherInfo, PublisherKind, Registry};
    use bytes::Bytes;

    const LIMITS: PlayerLimits = PlayerLimits {
        queue_bytes: 64 * 1024,
        control_bytes: 64 * 1024,
        stall: Duration::from_secs(20),
    };

    fn registry() -> Registry {
        Registry::new(
            4096,
            GopLimits {
                max_bytes: 1 << 20,
                max_frames: 64,
            },
        )
    }

    fn publisher() -> PublisherInfo {
        PublisherInfo {
            conn_id: ConnId(1),
            worker: 0,
            peer: "127.0.0.1:1".parse().unwrap(),
            kind: PublisherKind::Rtmp,
            since: std::time::SystemTime::now(),
        }
    }

    /// An AVC video payload: keyframe or inter frame, `len` bytes in all.
    fn avc(key: bool, len: usize) -> Bytes {
        let mut v = vec![0u8; len.max(5)];
        v[0] = if key { 0x17 } else { 0x27 };
        v[1] = 0x01;
        Bytes::from(v)
    }

    fn avc_config() -> Bytes {
        Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff])
    }

    fn aac(len: usize) -> Bytes {
        let mut v = vec![0u8; len.max(3)];
        v[0] = 0xAF;
        v[1] = 0x01;
        Bytes::from(v)
    }

    /// Sequence numbers (and kinds) of what a queue holds, in order.
    fn drain(out: &mut OutQueue) -> usize {
        let mut sink = Vec::new();
        while out.write_to(&mut sink).unwrap() > 0 {}
        sink.len()
    }

    struct Setup {
        reg: Registry,
        stream: Arc<Stream>,
        stats: Stats,
    }

    fn setup() -> Setup {
        let reg = registry();
        let (stream, _) = reg.publish("live/x", publisher()).unwrap();
        Setup {
            reg,
            stream,
            stats: Stats::default(),
        }
    }

    fn push(s: &Setup, kind: MediaKind, ts: u32, payload: Bytes) -> Arc<Frame> {
        s.stream.push_from(ConnId(1), kind, ts, payload).unwrap().0
    }

    fn player(s: &Setup) -> Player {
        let (stream, snap) = s.reg.join("live/x", 0, Format::Rtmp);
        Player::new(
            ConnId(7),
            1,
            stream,
            Form::Shared(Format::Rtmp),
            Role::Viewer,
            snap.next_seq,
        )
    }

    #[test]
    fn sent_headers_stay_bounded_when_a_publisher_resends_them_forever() {
        let mut sent = SentHeaders::default();
        for seq in 0..10_000 {
            sent.mark(seq);
        }
        assert_eq!(sent.0.len(), MAX_SENT_HEADERS);
        assert!(sent.contains(9_999), "the newest is kept");
        assert!(!sent.contains(0), "the oldest went");
    }

    #[test]
    fn a_joiner_without_cache_skips_to_the_first_keyframe_with_its_headers() {
        let s = setup();
        let mut p = player(&s);
        let mut out = OutQueue::default();
        let config = push(&s, MediaKind::Video, 0, avc_config());
        p.deliver(&mut out, &config, &LIMITS, &s.stats);
        assert!(out.is_empty(), "a header is held while skipping");
        let inter = push(&s, MediaKind::Video, 33, avc(false, 100));
        p.deliver(&mut out, &inter, &LIMITS, &s.stats);
        assert!(
            out.is_empty(),
            "an inter frame before a keyframe is dropped"
        );
        assert_eq!(p.dropped, 1);
        let key = push(&s, MediaKind::Video, 66, avc(true, 200));
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        assert!(!p.is_waiting());
        assert_eq!(
            drain(&mut out),
            config.rtmp.len() + key.rtmp.len(),
            "the sequence header, then the keyframe"
        );
        let next = push(&s, MediaKind::Video, 99, avc(false, 100));
        p.deliver(&mut out, &next, &LIMITS, &s.stats);
        assert_eq!(drain(&mut out), next.rtmp.len());
    }

    #[test]
    fn a_frame_delivered_twice_is_queued_once() {
        let s = setup();
        let mut p = player(&s);
        let mut out = OutQueue::default();
        let key = push(&s, MediaKind::Video, 0, avc(true, 200));
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        assert_eq!(drain(&mut out), key.rtmp.len());
    }

    #[test]
    fn a_full_queue_drops_unstarted_frames_and_skips_to_the_next_keyframe() {
        let s = setup();
        let mut p = player(&s);
        let mut out = OutQueue::default();
        let key = push(&s, MediaKind::Video, 0, avc(true, 1000));
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        // The player reads nothing: inter frames pile up past the bound.
        let mut ts = 0;
        while !p.is_waiting() {
            ts += 33;
            let f = push(&s, MediaKind::Video, ts, avc(false, 8 * 1024));
            p.deliver(&mut out, &f, &LIMITS, &s.stats);
            assert!(out.media_cost() <= LIMITS.queue_bytes);
        }
        assert!(
            p.dropped > 1,
            "everything queued was dropped: {}",
            p.dropped
        );
        assert_eq!(out.media_bytes(), 0);
        let before = p.dropped;
        let inter = push(&s, MediaKind::Video, ts + 33, avc(false, 100));
        p.deliver(&mut out, &inter, &LIMITS, &s.stats);
        assert_eq!(
            p.dropped,
            before + 1,
            "inter frames are dropped while skipping"
        );
        let key2 = push(&s, MediaKind::Video, ts + 66, avc(true, 1000));
        p.deliver(&mut out, &key2, &LIMITS, &s.stats);
        assert!(!p.is_waiting(), "the next keyframe resumes play");
        assert_eq!(drain(&mut out), key2.rtmp.len());
        assert_eq!(
            s.stream.frames_dropped.load(Ordering::Relaxed),
            p.dropped,
            "drops are counted on the stream"
        );
    }

    #[test]
    fn a_keyframe_that_fits_after_the_drop_resumes_at_once_with_its_headers() {
        let s = setup();
        let mut p = player(&s);
        let mut out = OutQueue::default();
        let config = push(&s, MediaKind::Video, 0, avc_config());
        p.deliver(&mut out, &config, &LIMITS, &s.stats);
        let key = push(&s, MediaKind::Video, 0, avc(true, 1000));
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        for i in 1..6 {
            let f = push(&s, MediaKind::Video, i * 33, avc(false, 10 * 1024));
            p.deliver(&mut out, &f, &LIMITS, &s.stats);
        }
        assert!(!p.is_waiting(), "everything so far fits");
        let queued = out.media_cost();
        let big_key = push(&s, MediaKind::Video, 300, avc(true, 20 * 1024));
        assert!(queued + big_key.rtmp.len() + MEDIA_ITEM_OVERHEAD > LIMITS.queue_bytes);
        p.deliver(&mut out, &big_key, &LIMITS, &s.stats);
        assert!(!p.is_waiting(), "a keyframe that fits resumes play");
        assert_eq!(
            drain(&mut out),
            config.rtmp.len() + big_key.rtmp.len(),
            "the queue holds the sequence header again, then the keyframe"
        );
    }

    #[test]
    fn paused_players_get_nothing_and_resume_on_a_keyframe() {
        let s = setup();
        let mut p = player(&s);
        let mut out = OutQueue::default();
        let key = push(&s, MediaKind::Video, 0, avc(true, 100));
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        drain(&mut out);
        p.set_paused(true);
        let f = push(&s, MediaKind::Video, 33, avc(false, 100));
        p.deliver(&mut out, &f, &LIMITS, &s.stats);
        assert!(out.is_empty());
        p.set_paused(false);
        let f = push(&s, MediaKind::Video, 66, avc(false, 100));
        p.deliver(&mut out, &f, &LIMITS, &s.stats);
        assert!(out.is_empty(), "unpaused, it waits for a keyframe");
        let key = push(&s, MediaKind::Video, 99, avc(true, 100));
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        assert_eq!(drain(&mut out), key.rtmp.len());
    }

    #[test]
    fn receive_audio_false_filters_audio_only() {
        let s = setup();
        let mut p = player(&s);
        let mut out = OutQueue::default();
        let key = push(&s, MediaKind::Video, 0, avc(true, 100));
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        drain(&mut out);
        p.set_receive(MediaKind::Audio, false);
        let a = push(&s, MediaKind::Audio, 10, aac(50));
        p.deliver(&mut out, &a, &LIMITS, &s.stats);
        assert!(out.is_empty());
        let v = push(&s, MediaKind::Video, 33, avc(false, 100));
        p.deliver(&mut out, &v, &LIMITS, &s.stats);
        assert_eq!(drain(&mut out), v.rtmp.len());
    }

    #[test]
    fn a_new_publisher_makes_players_wait_for_its_keyframe() {
        let s = setup();
        let mut p = player(&s);
        let mut out = OutQueue::default();
        let key = push(&s, MediaKind::Video, 0, avc(true, 100));
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        drain(&mut out);
        let notice = s.reg.unpublish(&s.stream, ConnId(1)).unwrap();
        assert!(p.publisher_changed(notice.seq));
        assert!(!p.publisher_changed(notice.seq), "a notice counts once");
        assert!(p.is_waiting());
    }

    /// docs/hardening.md case 43: pushed metadata grows by 16 bytes; one
    /// that no longer fits the length field is skipped, not an assertion.
    #[test]
    fn pushed_metadata_too_long_for_the_length_field_is_skipped() {
        let s = setup();
        let mut meta = BytesMut::new();
        amf::encode(&Amf0Value::string("onMetaData"), &mut meta);
        meta.resize(chunk::MAX_LENGTH_FIELD, b'x');
        let f = push(&s, MediaKind::Data, 0, meta.freeze());
        let push_form = Form::Push {
            chunk_size: 4096,
            msid: 1,
        };
        assert!(push_form.item(&f).is_none());
        let small = push(&s, MediaKind::Data, 0, {
            let mut m = BytesMut::new();
            amf::encode(&Amf0Value::string("onMetaData"), &mut m);
            m.freeze()
        });
        assert!(push_form.item(&small).is_some());
    }

    #[test]
    fn a_player_on_another_stream_id_gets_its_own_headers_around_the_same_payload() {
        let s = setup();
        let (stream, snap) = s.reg.join("live/x", 0, Format::Rtmp);
        let form = Form::rtmp(4096, 3);
        assert_eq!(
            form,
            Form::Rtmp {
                chunk_size: 4096,
                msid: 3
            }
        );
        let mut p = Player::new(ConnId(7), 3, stream, form, Role::Viewer, snap.next_seq);
        let mut out = OutQueue::default();
        let key = push(&s, MediaKind::Video, 0, avc(true, 100));
        p.deliver(&mut out, &key, &LIMITS, &s.stats);
        let mut sink = Vec::new();
        while out.write_to(&mut sink).unwrap() > 0 {}
        // Chunk basic header (fmt 0, csid 6), then timestamp, length, type,
        // and the message stream id little-endian: 3.
        assert_eq!(&sink[8..12], &3u32.to_le_bytes());
        assert!(sink.ends_with(&key.payload[key.payload.len() - 10..]));
    }

    /// A writer that takes at most `cap` bytes in all, then would block.
    struct Capped {
        cap: usize,
        got: Vec<u8>,
    }

    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.cap);
            self.got.extend_from_slice(&buf[..n]);
            self.cap -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl crate::server::queue::SendFile for Capped {
        fn send_file(
            &mut self,
            file: &std::fs::File,
            offset: u64,
            len: usize,
        ) -> std::io::Result<usize> {
            use std::os::unix::fs::FileExt;
            let mut buf = vec![0; len.min(self.cap)];
            file.read_exact_at(&mut buf, offset)?;
            self.got.extend_from_slice(&buf);
            self.cap -= buf.len();
            Ok(buf.len())
        }
    }

    /// Writes up to `cap` bytes of `out` (all of it for `usize::MAX`);
    /// `files`: batches with a file are sent from it, as to a plain socket.
    fn write_some(out: &mut OutQueue, cap: usize, sink: &mut Vec<u8>, files: bool) {
        let mut w = Capped {
            cap,
            got: Vec::new(),
        };
        while w.cap > 0
            && if files {
                out.write_to_sink(&mut w).unwrap()
            } else {
                out.write_to(&mut w).unwrap()
            } > 0
        {}
        sink.extend_from_slice(&w.got);
    }

    /// An Enhanced RTMP multitrack (one track) AVC frame of `track`.
    fn multitrack(track: u8, key: bool, len: usize) -> Bytes {
        let mut v = vec![0u8; len.max(8)];
        v[..7].copy_from_slice(&[
            if key { 0x96 } else { 0xA6 },
            0x01,
            b'a',
            b'v',
            b'c',
            b'1',
            track,
        ]);
        Bytes::from(v)
    }

    /// An Enhanced RTMP HEVC frame (track 0).
    fn hevc(key: bool, len: usize) -> Bytes {
        let mut v = vec![0u8; len.max(6)];
        v[..5].copy_from_slice(&[if key { 0x93 } else { 0xA3 }, b'h', b'v', b'c', b'1']);
        Bytes::from(v)
    }

    /// A small deterministic generator (the tests use no random crate).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// A release taken whole ([`Player::deliver_release`]) queues, writes,
    /// drops and skips exactly as its frames delivered one by one do,
    /// whatever the player's state, filters and queue: two players of one
    /// stream, one fed each way, through random releases (headers, tracks
    /// not started, codecs a filter refuses, overflows), partial writes,
    /// pauses and tracks turned off and on. In every other trial the
    /// releases have batch files and the whole player's queue is written
    /// as to a plain socket, its batches sent from their file. A third
    /// player takes each release whole as a TLS player does (no files),
    /// before or after the first, so sometimes the first's file batch.
    #[test]
    fn a_release_taken_whole_matches_its_frames_one_by_one() {
        let limits = PlayerLimits {
            queue_bytes: 24 * 1024,
            ..LIMITS
        };
        let mut rng = Lcg(7);
        let (mut whole, mut dropping_trials, mut from_files) = (0, 0, 0);
        for trial in 0..60 {
            let files = trial % 2 == 1;
            let gauge = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut batch_files = files.then(|| BatchFiles::new(gauge.clone()));
            let s = setup();
            let (mut a, mut b, mut c) = (player(&s), player(&s), player(&s));
            let filter = match trial % 4 {
                0 => CodecFilter::default(),
                1 => CodecFilter {
                    accepts: Some({
                        let mut set = FourCcSet::default();
                        set.insert("avc1");
                        set
                    }),
                    default_track_only: false,
                },
                2 => CodecFilter {
                    accepts: None,
                    default_track_only: true,
                },
                _ => CodecFilter::default(),
            };
            a.codecs = filter.clone();
            c.codecs = filter.clone();
            b.codecs = filter;
            let (mut qa, mut qb, mut qc) = (
                OutQueue::default(),
                OutQueue::default(),
                OutQueue::default(),
            );
            let (mut wa, mut wb, mut wc) = (Vec::new(), Vec::new(), Vec::new());
            let mut ts = 0;
            for step in 0..120 {
                match rng.below(12) {
                    0..=6 => {
                        let mut frames = Vec::new();
                        for _ in 0..=rng.below(6) {
                            ts += 10;
                            let len = 50 + rng.below(4000) as usize;
                            let (kind, payload) = match rng.below(30) {
                                0 => (MediaKind::Video, avc_config()),
                                1 => (
                                    MediaKind::Audio,
                                    Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10]),
                                ),
                                2..=3 => (MediaKind::Video, avc(true, len)),
                                4..=9 => (MediaKind::Video, avc(false, len)),
                                10 if trial % 4 != 3 => (
                                    MediaKind::Video,
                                    multitrack(1 + rng.below(2) as u8, true, len),
                                ),
                                11 if trial % 4 != 3 => (
                                    MediaKind::Video,
                                    multitrack(1 + rng.below(2) as u8, false, len),
                                ),
                                12 if trial % 4 != 3 => {
                                    (MediaKind::Video, hevc(rng.below(3) == 0, len))
                                }
                                _ => (MediaKind::Audio, aac(len / 20)),
                            };
                            frames.push(push(&s, kind, ts, payload));
                        }
                        let (pa, pb) = (qa.media_pushed(), qb.media_pushed());
                        let release = Release::new(frames.clone()).with_files(batch_files.take());
                        if step % 2 == 0 {
                            c.deliver_release(&mut qc, &release, false, &limits, &s.stats);
                        }
                        a.deliver_release(&mut qa, &release, files, &limits, &s.stats);
                        if step % 2 == 1 {
                            c.deliver_release(&mut qc, &release, false, &limits, &s.stats);
                        }
                        batch_files = release.into_files();
                        for f in &frames {
                            b.deliver(&mut qb, f, &limits, &s.stats);
                        }
                        if qa.media_pushed() - pa == 1 && qb.media_pushed() - pb > 1 {
                            whole += 1;
                            from_files += usize::from(files);
                        }
                    }
                    7..=8 => {
                        let cap = 1 + rng.below(20_000) as usize;
                        write_some(&mut qa, cap, &mut wa, files);
                        write_some(&mut qb, cap, &mut wb, false);
                        write_some(&mut qc, cap, &mut wc, false);
                    }
                    9 => {
                        write_some(&mut qa, usize::MAX, &mut wa, files);
                        write_some(&mut qb, usize::MAX, &mut wb, false);
                        write_some(&mut qc, usize::MAX, &mut wc, false);
                    }
                    10 => {
                        let paused = rng.below(2) == 0;
                        a.set_paused(paused);
                        b.set_paused(paused);
                        c.set_paused(paused);
                    }
                    _ => {
                        let kind = [MediaKind::Audio, MediaKind::Video][rng.below(2) as usize];
                        let on = rng.below(3) != 0;
                        a.set_receive(kind, on);
                        b.set_receive(kind, on);
                        c.set_receive(kind, on);
                    }
                }
                let at = format!("trial {trial} step {step}");
                assert_eq!(wa, wb, "{at}: the bytes written");
                assert_eq!(wc, wb, "{at}: the bytes written without files");
                assert_eq!(c.dropped, b.dropped, "{at}");
                assert_eq!(c.next_seq, b.next_seq, "{at}");
                assert_eq!(qc.media_cost(), qb.media_cost(), "{at}");
                assert_eq!(a.dropped, b.dropped, "{at}");
                assert_eq!(a.next_seq, b.next_seq, "{at}");
                assert_eq!(a.started_tracks, b.started_tracks, "{at}");
                assert_eq!(a.is_waiting(), b.is_waiting(), "{at}");
                assert_eq!(a.awaits_start(), b.awaits_start(), "{at}");
                assert_eq!(
                    qa.media_cost(),
                    qb.media_cost(),
                    "{at}: what the queues hold"
                );
                assert_eq!(qa.media_bytes(), qb.media_bytes(), "{at}");
            }
            write_some(&mut qa, usize::MAX, &mut wa, files);
            write_some(&mut qb, usize::MAX, &mut wb, false);
            write_some(&mut qc, usize::MAX, &mut wc, false);
            assert_eq!(wa, wb, "trial {trial}: the rest");
            assert_eq!(wc, wb, "trial {trial}: the rest without files");
            dropping_trials += usize::from(b.dropped > 0);
            drop((qa, qc, batch_files));
            let left = gauge.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(left, 0, "trial {trial}: batch file bytes left");
        }
        // Both ways were taken often: whole releases, and frames dropped.
        assert!(whole > 150, "{whole} releases taken whole");
        assert!(from_files > 75, "{from_files} of them with batch files");
        assert!(
            dropping_trials > 30,
            "{dropping_trials} trials dropped frames"
        );
    }

    /// A release's bytes go to the batch files only when a player that
    /// sends from them takes it: a worker of TLS players appends nothing,
    /// and a TLS player after a plain one takes the batch already built.
    #[test]
    fn only_players_that_send_from_files_append_to_them() {
        use std::sync::atomic::Ordering;
        let s = setup();
        let gauge = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut files = Some(BatchFiles::new(gauge.clone()));
        let (mut tls, mut plain) = (player(&s), player(&s));
        let (mut qt, mut qp) = (OutQueue::default(), OutQueue::default());
        let mut ts = 0;
        // Delivers `frames` in one release to the players in `order` (true:
        // the plain one); the batch file bytes after it.
        macro_rules! release {
            ($frames:expr, $order:expr) => {{
                let r = Release::new($frames).with_files(files.take());
                for file_player in $order {
                    let (p, q) = if file_player {
                        (&mut plain, &mut qp)
                    } else {
                        (&mut tls, &mut qt)
                    };
                    p.deliver_release(q, &r, file_player, &LIMITS, &s.stats);
                }
                files = r.into_files();
                gauge.load(Ordering::Relaxed)
            }};
        }
        let mut frames = |n: usize, key: bool| -> Vec<Arc<Frame>> {
            (0..n)
                .map(|i| {
                    ts += 10;
                    push(&s, MediaKind::Video, ts, avc(key && i == 0, 1000))
                })
                .collect()
        };
        let start = frames(2, true);
        let (two_a, two_b, two_c) = (frames(2, false), frames(2, false), frames(2, false));
        // Both start on the keyframe (one by one: they were not playing).
        assert_eq!(release!(start, [false, true]), 0);
        // The TLS player alone: nothing appended, however often.
        assert_eq!(release!(two_a, [false]), 0);
        write_some(&mut qt, usize::MAX, &mut Vec::new(), false);
        write_some(&mut qp, usize::MAX, &mut Vec::new(), true);
        let pushed = qt.media_pushed();
        // The plain player appends once; the TLS player after it adds nothing
        // and still takes the release whole, in one item.
        let after_plain = release!(two_b, [true, false]);
        assert!(after_plain >= 2 * 1000, "{after_plain} bytes appended");
        assert_eq!(qt.media_pushed(), pushed + 1, "one item for two frames");
        // TLS first, then plain: appended for the plain player all the same.
        assert!(release!(two_c, [false, true]) >= after_plain + 2 * 1000);
        assert!(files.is_some(), "each release gives the files back");
        let (mut wt, mut wp) = (Vec::new(), Vec::new());
        write_some(&mut qt, usize::MAX, &mut wt, false);
        write_some(&mut qp, usize::MAX, &mut wp, true);
        assert_eq!(wt, wp, "the same bytes, from memory and from the file");
        assert!(!wt.is_empty());
    }
}
