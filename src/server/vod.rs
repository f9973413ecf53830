//! Video on demand in the server: files of a VOD application
//! (`[app.NAME.vod] dir`) played over RTMP, and served over HTTP (ranges,
//! FLV pseudo-streaming, HLS VOD of MP4). docs/vod.md has the design.
//!
//! Files are read on the disk helper threads (`server/disk.rs`), never on
//! a worker: a connection submits one read at a time and waits for its
//! answer in a named state, so a thousand viewers of a thousand cold files
//! cannot stall a worker. What is read is parsed by the sans-IO reader of
//! the core (`vod::Reader`: MP4 and FLV as frames; `vod::hls`: playlists
//! and fragments).
//!
//! ```text
//!  RTMP play vod/file.mp4 ─(rules, on_play?)─► Opening ──(open, header read)──► Playing ─(last frame)─► Complete
//!                                                │ no file, not parsable           │   ▲  seek            │
//!                                                └──► Play.StreamNotFound / Failed  │   └── pause/unpause  └─ seek ─► Playing
//!                                                                                   └─ read fails / file shrank ─► Play.Failed
//! ```
//!
//! An RTMP player is paced: a frame is queued when the wall clock reaches
//! its timestamp less the player's buffer length (its SetBufferLength,
//! [`DEFAULT_LEAD`] until it sends one), measured from the first frame
//! after a start, seek or unpause; and no more is queued while
//! [`QUEUE_HIGH`] bytes wait for the socket. It never skips frames.

use super::base::ConnId;
use super::ctx::WorkerCtx;
use super::disk::{DiskError, DiskFile, DiskReply, Done, Meta, Op, MAX_READ};
use super::http;
use super::queue::Item;
use super::stats::CloseReason;
use super::transport::{Close, ConnIo};
use crate::protocol::chunk::{self, Message as ChunkMessage};
use crate::protocol::name::valid_name;
use crate::protocol::session::{MediaKind, PlayRejection, ServerSession};
use crate::vod::hls::{self, Layout, Plan};
use crate::vod::mp4::Movie;
use crate::vod::{Container, Limits, ReadRequest, Reader, Step, VodFrame};
use crate::vod_settings::VodApp;
use crate::wire::WireForm;
use bytes::{Bytes, BytesMut};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Media queued for an RTMP VOD player beyond which the next frame waits
/// for the socket to drain (the queue is then read again at once): about
/// a second of a 4 Mbit/s file.
pub(super) const QUEUE_HIGH: usize = 512 * 1024;

/// How far ahead of real time a player is sent until it announces its
/// buffer (SetBufferLength).
pub(super) const DEFAULT_LEAD: Duration = Duration::from_secs(1);

/// The lead is the player's buffer length, within these bounds: rtmpdump
/// announces ten hours (it wants the file as fast as it comes), and a
/// player announcing 0 would be fed frame by frame at the edge of
/// underflow.
const MIN_LEAD: Duration = Duration::from_millis(100);
const MAX_LEAD: Duration = Duration::from_secs(30);

/// Bytes read per HTTP body read, and queued for one HTTP response before
/// the next read waits for the socket: a few hundred KiB per viewer,
/// however large the file.
const HTTP_CHUNK: usize = 128 * 1024;
const HTTP_HIGH: usize = 256 * 1024;

/// Sequence headers and frames start this long after Play.Start;
/// onMetaData goes with it. GStreamer's rtmp2src sets up its media
/// handler only once it has processed Play.Start, and drops what arrived
/// with it in the same read (a live stream's GOP cache loses its start the
/// same way); rtmpdump, the other way round, takes the duration from an
/// onMetaData that comes with Play.Start when it plays part of a file
/// (`-A`/`-B`), and calls the download incomplete otherwise.
const START_GRACE: Duration = Duration::from_millis(100);

/// How long a disk answer may take before an HTTP request is answered 504
/// (or an RTMP play fails): a disk that slow is broken.
const DISK_TIMEOUT: Duration = Duration::from_secs(30);

/// Parsed MP4 indexes kept for reuse (by path, length and modification
/// time), bounded by their samples (about 32 bytes each): 128 MiB.
const CACHE_MAX_SAMPLES: usize = 4_000_000;

/// Process-wide VOD counters, for /metrics.
#[derive(Debug, Default)]
pub struct VodTotals {
    /// RTMP plays started (a file opened and parsed).
    pub plays: AtomicU64,
    /// RTMP VOD players now.
    pub players: AtomicU64,
    /// HTTP requests answered from files (whole, ranges, FLV start, HLS).
    pub http_requests: AtomicU64,
    /// Bytes sent from files (RTMP payloads and HTTP bodies).
    pub bytes_out: AtomicU64,
    /// Reads submitted to the disk threads.
    pub reads: AtomicU64,
    /// Plays and requests that failed on a file: not parsable, truncated,
    /// a read error.
    pub errors: AtomicU64,
    /// Requests refused: a path outside the directory, not found.
    pub not_found: AtomicU64,
    /// MP4 indexes reused from the cache.
    pub cache_hits: AtomicU64,
}

/// See [`VodTotals`].
pub static TOTALS: VodTotals = VodTotals {
    plays: AtomicU64::new(0),
    players: AtomicU64::new(0),
    http_requests: AtomicU64::new(0),
    bytes_out: AtomicU64::new(0),
    reads: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    not_found: AtomicU64::new(0),
    cache_hits: AtomicU64::new(0),
};

fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The file a VOD name means: `name` (a stream name, checked already, or
/// a decoded URL path, checked here) under the application's directory.
/// Flash Media Server's conventions hold, as librtmp (rtmpdump) follows
/// them: `mp4:name` without an extension is `name.mp4`, a name without a
/// prefix or an extension (or with `flv:`) is `name.flv`. `None`: not a
/// name that can be a file here (an unknown extension, a hidden segment).
pub(super) fn file_path(vod: &VodApp, name: &str) -> Option<(PathBuf, Container)> {
    let (name, default_ext) = match name.strip_prefix("mp4:") {
        Some(rest) => (rest, ".mp4"),
        None => (name.strip_prefix("flv:").unwrap_or(name), ".flv"),
    };
    if !valid_name(name) || name.split('/').any(|seg| seg.starts_with('.')) {
        return None;
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    let name = if last.contains('.') {
        name.to_owned()
    } else {
        format!("{name}{default_ext}")
    };
    let container = Container::from_name(&name)?;
    Some((vod.dir.join(name), container))
}

/// Decodes `%XX` escapes of a URL path; `None` for a bad escape or a
/// result that is not UTF-8.
pub(super) fn percent_decode(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------
// The MP4 index cache
// ---------------------------------------------------------------------------

struct CacheEntry {
    path: PathBuf,
    meta: Meta,
    movie: Arc<Movie>,
    plan: Option<Arc<Plan>>,
    used: u64,
}

#[derive(Default)]
struct MovieCache {
    entries: Vec<CacheEntry>,
    tick: u64,
}

static CACHE: Mutex<MovieCache> = Mutex::new(MovieCache {
    entries: Vec::new(),
    tick: 0,
});

/// The cached index (and HLS plan) of `path` as it is now (`meta`).
fn cache_get(path: &Path, meta: &Meta) -> Option<(Arc<Movie>, Option<Arc<Plan>>)> {
    let mut c = super::base::locked(&CACHE);
    c.tick += 1;
    let tick = c.tick;
    let e = c
        .entries
        .iter_mut()
        .find(|e| e.path == path && e.meta == *meta)?;
    e.used = tick;
    count(&TOTALS.cache_hits, 1);
    Some((e.movie.clone(), e.plan.clone()))
}

/// Keeps `movie` (a complete index) for `path`, dropping the least
/// recently used entries past the bound.
fn cache_put(path: &Path, meta: &Meta, movie: Arc<Movie>, plan: Option<Arc<Plan>>) {
    if movie.samples.len() > CACHE_MAX_SAMPLES / 2 {
        return;
    }
    let mut c = super::base::locked(&CACHE);
    c.tick += 1;
    let tick = c.tick;
    c.entries.retain(|e| e.path != path);
    c.entries.push(CacheEntry {
        path: path.to_owned(),
        meta: *meta,
        movie,
        plan,
        used: tick,
    });
    while c
        .entries
        .iter()
        .map(|e| e.movie.samples.len())
        .sum::<usize>()
        > CACHE_MAX_SAMPLES
    {
        let Some(oldest) = c
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| e.used)
            .map(|(i, _)| i)
        else {
            break;
        };
        c.entries.swap_remove(oldest);
    }
}

// ---------------------------------------------------------------------------
// Reading a file on the disk threads
// ---------------------------------------------------------------------------

/// What a disk answer meant for a [`FileSource`].
#[derive(Debug)]
pub(super) enum SourceEvent {
    Opened(Meta),
    /// A whole read, reassembled if it was split.
    Data(ReadRequest, Bytes),
    Failed(DiskError),
    /// An answer to something no longer waited for.
    Stale,
    /// Part of a split read: more to come.
    Partial,
}

/// A read in flight, in pieces of at most [`MAX_READ`].
struct Inflight {
    req: ReadRequest,
    first_seq: u32,
    parts: Vec<Option<Bytes>>,
}

/// One open file of one player or request: its disk handle and the read
/// in flight. Jobs carry a tag: the player's number in the high half, a
/// sequence number in the low half.
pub(super) struct FileSource {
    file: DiskFile,
    conn: ConnId,
    player: u32,
    next_seq: u32,
    open_seq: Option<u32>,
    inflight: Option<Inflight>,
    /// When the job waited for was submitted.
    since: Option<Instant>,
}

impl FileSource {
    /// Opens `path` (under `vod.dir`) for player `player` of connection
    /// `conn`.
    pub(super) fn open(
        ctx: &WorkerCtx,
        conn: ConnId,
        player: u32,
        path: PathBuf,
        vod: &VodApp,
    ) -> Result<FileSource, String> {
        let mut s = FileSource {
            file: ctx.shared.disk.file(path),
            conn,
            player,
            next_seq: 1,
            open_seq: None,
            inflight: None,
            since: None,
        };
        let seq = s.take_seq();
        let op = Op::OpenUnder {
            root: vod.dir.clone(),
            follow_symlinks: vod.follow_symlinks,
        };
        s.submit(ctx, seq, op)?;
        s.open_seq = Some(seq);
        Ok(s)
    }

    fn take_seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1).max(1);
        s
    }

    fn tag(&self, seq: u32) -> u64 {
        (u64::from(self.player) << 32) | u64::from(seq)
    }

    /// The player a tag names.
    pub(super) fn player_of(tag: u64) -> u32 {
        (tag >> 32) as u32
    }

    fn submit(&mut self, ctx: &WorkerCtx, seq: u32, op: Op) -> Result<(), String> {
        let reply = ctx.shared.disk_reply(ctx.index, self.conn, self.tag(seq));
        ctx.shared
            .disk
            .submit(&self.file, op, reply)
            .map_err(|full| full.to_string())?;
        self.since.get_or_insert(Instant::now());
        Ok(())
    }

    /// Reads `req`, in pieces of at most [`MAX_READ`] when larger.
    pub(super) fn read(&mut self, ctx: &WorkerCtx, req: ReadRequest) -> Result<(), String> {
        let pieces = req.len.div_ceil(MAX_READ).max(1);
        let first_seq = self.next_seq;
        for i in 0..pieces {
            let seq = self.take_seq();
            let offset = req.offset + (i * MAX_READ) as u64;
            let len = (req.len - i * MAX_READ).min(MAX_READ);
            self.submit(ctx, seq, Op::Read { offset, len })?;
        }
        count(&TOTALS.reads, pieces as u64);
        self.inflight = Some(Inflight {
            req,
            first_seq,
            parts: vec![None; pieces],
        });
        Ok(())
    }

    /// True while an open or a read is in flight.
    pub(super) fn busy(&self) -> bool {
        self.open_seq.is_some() || self.inflight.is_some()
    }

    /// When the job waited for is overdue.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.busy()
            .then(|| self.since.map(|s| s + DISK_TIMEOUT))
            .flatten()
    }

    /// Makes sense of a disk answer.
    pub(super) fn on_reply(&mut self, reply: DiskReply) -> SourceEvent {
        let seq = reply.tag as u32;
        if self.open_seq == Some(seq) {
            self.open_seq = None;
            self.since = None;
            return match reply.result {
                Ok(Done::Opened(meta)) => SourceEvent::Opened(meta),
                Ok(other) => SourceEvent::Failed(DiskError {
                    kind: ErrorKind::Other,
                    message: format!("open answered {other:?}"),
                }),
                Err(e) => SourceEvent::Failed(e),
            };
        }
        let Some(inflight) = &mut self.inflight else {
            return SourceEvent::Stale;
        };
        let index = seq.wrapping_sub(inflight.first_seq) as usize;
        if index >= inflight.parts.len() {
            return SourceEvent::Stale;
        }
        match reply.result {
            Ok(Done::Read(b)) => inflight.parts[index] = Some(b),
            Ok(other) => {
                self.inflight = None;
                return SourceEvent::Failed(DiskError {
                    kind: ErrorKind::Other,
                    message: format!("read answered {other:?}"),
                });
            }
            Err(e) => {
                self.inflight = None;
                self.since = None;
                return SourceEvent::Failed(e);
            }
        }
        if inflight.parts.iter().any(Option::is_none) {
            return SourceEvent::Partial;
        }
        let Some(done) = self.inflight.take() else {
            return SourceEvent::Stale;
        };
        self.since = None;
        let data = if done.parts.len() == 1 {
            done.parts.into_iter().flatten().next().unwrap_or_default()
        } else {
            let mut b = BytesMut::with_capacity(done.req.len);
            for p in done.parts.into_iter().flatten() {
                b.extend_from_slice(&p);
            }
            b.freeze()
        };
        SourceEvent::Data(done.req, data)
    }
}

/// A reader for a file just opened: the cached index of a progressive MP4
/// when there is one.
fn reader_for(path: &Path, container: Container, meta: &Meta) -> Reader {
    if container == Container::Mp4 {
        if let Some((movie, _)) = cache_get(path, meta) {
            if !movie.fragmented {
                return Reader::with_movie(movie, meta.len, Limits::default());
            }
        }
    }
    Reader::new(container, meta.len, Limits::default())
}

// ---------------------------------------------------------------------------
// RTMP players
// ---------------------------------------------------------------------------

/// Where an RTMP VOD player is (see the module diagram).
enum VodState {
    /// The file is being opened and its header read; the play is not
    /// answered yet.
    Opening {
        reader: Option<Reader>,
    },
    Playing(Reader),
    /// Every frame was sent (or play's duration passed); a seek plays on.
    Complete(Reader),
}

/// Why an RTMP VOD player ends.
pub(super) struct VodEnd {
    pub msid: u32,
    pub why: String,
}

/// One RTMP player of one file.
pub(super) struct VodPlayer {
    pub msid: u32,
    /// `app/name`, for logs and callbacks.
    pub key: String,
    path: PathBuf,
    container: Container,
    source: FileSource,
    state: VodState,
    /// play's start (ms, when positive), duration (ms, when positive) and
    /// reset.
    start: Option<u64>,
    duration: Option<u64>,
    reset: bool,
    lead: Duration,
    /// The next frame, waiting for its time or for the queue to drain.
    pending: Option<VodFrame>,
    /// Wall clock and timestamp of the first frame sent since the last
    /// start, seek or unpause.
    clock: Option<(Instant, u32)>,
    paused: bool,
    /// A seek command waits for its position (then Seek.Notify).
    seeking: bool,
    /// When the pending frame is due.
    due: Option<Instant>,
    /// No media before this instant (see [`START_GRACE`]).
    hold: Option<Instant>,
    /// Payload bytes sent.
    pub bytes: u64,
    meta: Option<Meta>,
}

impl VodPlayer {
    /// Starts a player of `path` on message stream `msid`: the file is
    /// opened; the play is answered once its header is read
    /// ([`VodPlayer::on_disk`]).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        ctx: &WorkerCtx,
        conn: ConnId,
        msid: u32,
        key: String,
        path: PathBuf,
        container: Container,
        vod: &VodApp,
        start: f64,
        duration: f64,
        reset: bool,
        lead: Option<Duration>,
    ) -> Result<VodPlayer, String> {
        let source = FileSource::open(ctx, conn, msid, path.clone(), vod)?;
        let ms = |v: f64| (v.is_finite() && v > 0.0).then_some(v as u64);
        Ok(VodPlayer {
            msid,
            key,
            path,
            container,
            source,
            state: VodState::Opening { reader: None },
            start: ms(start),
            duration: ms(duration),
            reset,
            lead: lead.unwrap_or(DEFAULT_LEAD),
            pending: None,
            clock: None,
            paused: false,
            seeking: false,
            due: None,
            hold: None,
            bytes: 0,
            meta: None,
        })
    }

    /// The file, for logs.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// True while the play waits for the file (not answered yet).
    pub(super) fn is_opening(&self) -> bool {
        matches!(self.state, VodState::Opening { .. })
    }

    /// The player's buffer length (SetBufferLength).
    pub(super) fn set_buffer(&mut self, millis: u32) {
        self.lead = Duration::from_millis(u64::from(millis)).clamp(MIN_LEAD, MAX_LEAD);
    }

    /// The next instant this player has work (a frame due, a disk answer
    /// overdue).
    pub(super) fn deadline(&self) -> Option<Instant> {
        let due = if self.paused { None } else { self.due };
        match (due, self.source.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn reader(&mut self) -> Option<&mut Reader> {
        match &mut self.state {
            VodState::Opening { reader } => reader.as_mut(),
            VodState::Playing(r) | VodState::Complete(r) => Some(r),
        }
    }

    /// seek(ms): plays from the keyframe at or before it; queued media not
    /// yet started is dropped.
    pub(super) fn seek(
        &mut self,
        now: Instant,
        ms: f64,
        io: &mut ConnIo,
        session: &mut ServerSession,
        ctx: &mut WorkerCtx,
    ) -> Result<(), VodEnd> {
        let target = if ms.is_finite() && ms > 0.0 {
            ms as u64
        } else {
            0
        };
        if self.is_opening() {
            // Not started yet: play from there.
            self.start = Some(target);
            return Ok(());
        }
        if let VodState::Complete(_) = self.state {
            let VodState::Complete(r) =
                std::mem::replace(&mut self.state, VodState::Opening { reader: None })
            else {
                unreachable!()
            };
            self.state = VodState::Playing(r);
        }
        if let Some(r) = self.reader() {
            r.seek(target);
        }
        io.out.drop_unstarted_media();
        self.pending = None;
        self.clock = None;
        self.due = None;
        self.seeking = true;
        self.pump(now, io, session, ctx)
    }

    /// pause / unpause: sending stops; on unpause the clock starts again
    /// from the next frame.
    pub(super) fn set_paused(
        &mut self,
        now: Instant,
        paused: bool,
        io: &mut ConnIo,
        session: &mut ServerSession,
        ctx: &mut WorkerCtx,
    ) -> Result<(), VodEnd> {
        self.paused = paused;
        self.clock = None;
        if paused {
            return Ok(());
        }
        self.pump(now, io, session, ctx)
    }

    /// A disk answer for this player.
    pub(super) fn on_disk(
        &mut self,
        now: Instant,
        reply: DiskReply,
        io: &mut ConnIo,
        session: &mut ServerSession,
        ctx: &mut WorkerCtx,
    ) -> Result<(), VodEnd> {
        match self.source.on_reply(reply) {
            SourceEvent::Stale | SourceEvent::Partial => Ok(()),
            SourceEvent::Opened(meta) => {
                let reader = reader_for(&self.path, self.container, &meta);
                self.meta = Some(meta);
                self.state = VodState::Opening {
                    reader: Some(reader),
                };
                if let Some(start) = self.start {
                    if let Some(r) = self.reader() {
                        r.seek(start);
                    }
                }
                let from = self.start.unwrap_or(0);
                if let (Some(d), Some(r)) = (self.duration, self.reader()) {
                    r.set_stop(Some(from + d));
                }
                self.pump(now, io, session, ctx)
            }
            SourceEvent::Data(req, data) => {
                let result = match self.reader() {
                    Some(r) => r.handle_read(req, data),
                    None => Ok(()),
                };
                if let Err(e) = result {
                    return Err(self.fail(session, &e.to_string()));
                }
                self.pump(now, io, session, ctx)
            }
            SourceEvent::Failed(e) => {
                if self.is_opening() && self.meta.is_none() {
                    // Not found, not a regular file, outside the directory:
                    // all "not found" to the player; the log says which.
                    count(&TOTALS.not_found, 1);
                    session.reject_play_because(
                        self.msid,
                        PlayRejection::StreamNotFound,
                        "No such file.",
                    );
                    return Err(VodEnd {
                        msid: self.msid,
                        why: format!("not played: {e}"),
                    });
                }
                Err(self.fail(session, &format!("reading the file failed: {e}")))
            }
        }
    }

    /// The timer fired: frames due, or a disk answer overdue.
    pub(super) fn on_timeout(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        session: &mut ServerSession,
        ctx: &mut WorkerCtx,
    ) -> Result<(), VodEnd> {
        if self.source.deadline().is_some_and(|d| now >= d) {
            return Err(self.fail(
                session,
                &format!("the disk did not answer within {DISK_TIMEOUT:?}"),
            ));
        }
        if self.due.is_some_and(|d| now >= d) {
            return self.pump(now, io, session, ctx);
        }
        Ok(())
    }

    /// The output queue drained: queue more.
    pub(super) fn on_drained(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        session: &mut ServerSession,
        ctx: &mut WorkerCtx,
    ) -> Result<(), VodEnd> {
        self.pump(now, io, session, ctx)
    }

    /// Ends the play with Play.Failed (or, not answered yet, a refusal)
    /// saying `why`.
    fn fail(&mut self, session: &mut ServerSession, why: &str) -> VodEnd {
        count(&TOTALS.errors, 1);
        let description = format!("{}: {why}", self.key);
        if self.is_opening() {
            session.reject_play_because(self.msid, PlayRejection::Failed, &description);
        } else {
            session.notify_failed(self.msid, &description);
        }
        VodEnd {
            msid: self.msid,
            why: format!("{}: {why}", self.path.display()),
        }
    }

    /// Moves the file forward: reads, answers the play once the header is
    /// read, and queues every frame that is due while the queue has room.
    pub(super) fn pump(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        session: &mut ServerSession,
        ctx: &mut WorkerCtx,
    ) -> Result<(), VodEnd> {
        let chunk_size = session.chunk_size();
        loop {
            if self.source.busy() {
                return Ok(());
            }
            let opening = self.is_opening();
            if !opening {
                if self.paused {
                    self.due = None;
                    return Ok(());
                }
                if io.out.media_bytes() > QUEUE_HIGH {
                    // Read again when the queue has drained.
                    self.due = None;
                    return Ok(());
                }
            }
            let frame = match self.pending.take() {
                Some(f) => f,
                None => {
                    let Some(reader) = self.reader() else {
                        return Ok(());
                    };
                    match reader.poll() {
                        Ok(Step::Frame(f)) => f,
                        Ok(Step::Read(req)) => {
                            if let Err(why) = self.source.read(ctx, req) {
                                return Err(self.fail(session, &why));
                            }
                            return Ok(());
                        }
                        Ok(Step::Wait) => return Ok(()),
                        Ok(Step::Seeked { position_ms }) => {
                            if std::mem::take(&mut self.seeking) {
                                session.notify_seek(self.msid, position_ms);
                                transmit(session, io);
                            }
                            self.clock = None;
                            if opening {
                                self.accept(now, session, io);
                            }
                            continue;
                        }
                        Ok(Step::End) => {
                            if opening {
                                self.accept(now, session, io);
                            }
                            // The notices follow the last frame in the
                            // same queue: the player reads them after it.
                            self.due = None;
                            self.complete(session);
                            transmit(session, io);
                            return Ok(());
                        }
                        Err(e) => return Err(self.fail(session, &e.to_string())),
                    }
                }
            };
            if opening {
                self.accept(now, session, io);
            }
            // onMetaData goes with Play.Start, the rest after the grace.
            if let Some(hold) = self.hold.filter(|_| frame.kind != MediaKind::Data) {
                if now < hold {
                    self.pending = Some(frame);
                    self.due = Some(hold);
                    return Ok(());
                }
                self.hold = None;
            }
            if !frame.header {
                let (t0, m0) = *self.clock.get_or_insert((now, frame.timestamp));
                let ahead = Duration::from_millis(u64::from(frame.timestamp.saturating_sub(m0)));
                let due = (t0 + ahead).checked_sub(self.lead).unwrap_or(t0);
                if due > now {
                    self.pending = Some(frame);
                    self.due = Some(due);
                    return Ok(());
                }
            }
            self.due = None;
            self.bytes += frame.payload.len() as u64;
            count(&TOTALS.bytes_out, frame.payload.len() as u64);
            let form = chunk::wire_form(
                chunk_size,
                &ChunkMessage {
                    csid: frame.kind.csid(),
                    timestamp: frame.timestamp,
                    type_id: frame.kind.type_id(),
                    stream_id: self.msid,
                    payload: frame.payload,
                },
            );
            // A sample over RTMP's 24-bit message length cannot be sent.
            let form = match form {
                Ok(form) => form,
                Err(e) => {
                    return Err(
                        self.fail(session, &format!("a frame at {} ms: {e}", frame.timestamp))
                    )
                }
            };
            io.push(Item::OwnFrame(form));
            ctx.schedule_write(io);
        }
    }

    /// The file's header is read: the play is answered (StreamIsRecorded,
    /// StreamBegin, Play.Start) and frames follow.
    fn accept(&mut self, now: Instant, session: &mut ServerSession, io: &mut ConnIo) {
        self.hold = Some(now + START_GRACE);
        let VodState::Opening { reader } =
            std::mem::replace(&mut self.state, VodState::Opening { reader: None })
        else {
            return;
        };
        let Some(reader) = reader else {
            return;
        };
        if let (Some(movie), Some(meta)) = (reader.movie(), &self.meta) {
            if !movie.fragmented {
                cache_put(&self.path, meta, movie.clone(), None);
            }
        }
        session.accept_play_recorded(self.msid, self.reset);
        transmit(session, io);
        count(&TOTALS.plays, 1);
        self.state = VodState::Playing(reader);
    }

    /// Every frame sent: onPlayStatus Play.Complete, Play.Stop.
    fn complete(&mut self, session: &mut ServerSession) {
        let VodState::Playing(reader) =
            std::mem::replace(&mut self.state, VodState::Opening { reader: None })
        else {
            return;
        };
        let duration = reader.duration_ms().unwrap_or(0);
        session.notify_complete(self.msid, duration, self.bytes);
        log::info!(
            "vod complete stream={} file={} bytes={}",
            self.key,
            self.path.display(),
            self.bytes
        );
        self.state = VodState::Complete(reader);
    }
}

/// Queues what the session has to say now, before the frames that follow
/// it (Play.Start before media, Seek.Notify before the new position's).
fn transmit(session: &mut ServerSession, io: &mut ConnIo) {
    while let Some(b) = session.poll_transmit() {
        io.push(Item::Control(b));
    }
}

// ---------------------------------------------------------------------------
// HTTP: files, ranges, FLV start, HLS VOD
// ---------------------------------------------------------------------------

/// What an HTTP VOD request asks for.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Want {
    /// The file (whole or a range); for FLV with `?start=`, from the
    /// keyframe at or before that second.
    File {
        flv_start: Option<f64>,
    },
    Playlist,
    Init,
    Segment(usize),
}

/// A routed HTTP VOD request.
#[derive(Debug, Clone)]
pub(super) struct VodRoute {
    /// `app/name` (name: the file's path under the directory), for access
    /// control and logs.
    pub key: String,
    pub app: String,
    pub name: String,
    pub want: Want,
}

/// Routes `/APP/path/file.ext` (and `.../file.mp4/index.m3u8`,
/// `init.mp4`, `seg-N.m4s`) of a VOD application. `None`: not a VOD
/// application; `Some(Err(status))`: a VOD path that is no file.
pub(super) fn route(
    config: &crate::config::Config,
    path: &str,
    query: &str,
) -> Option<Result<(VodRoute, VodApp), u16>> {
    let rest = path.strip_prefix('/')?;
    let (app, rest) = rest.split_once('/')?;
    let vod = config.vod_app(app)?.clone();
    let Some(rest) = percent_decode(rest) else {
        return Some(Err(400));
    };
    let (name, want) = if let Some(file) = rest.strip_suffix("/index.m3u8") {
        (file.to_owned(), Want::Playlist)
    } else if let Some(file) = rest.strip_suffix("/init.mp4") {
        (file.to_owned(), Want::Init)
    } else if let Some((file, seg)) = rest
        .rsplit_once("/seg-")
        .and_then(|(f, s)| Some((f, s.strip_suffix(".m4s")?.parse::<usize>().ok()?)))
    {
        (file.to_owned(), Want::Segment(seg))
    } else {
        let flv_start = query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == "start").then(|| v.parse::<f64>().ok()).flatten()
        });
        (rest.clone(), Want::File { flv_start })
    };
    let container = Container::from_name(&name);
    let hls = !matches!(want, Want::File { .. });
    if container.is_none() || (hls && container != Some(Container::Mp4)) {
        return Some(Err(404));
    }
    let want = match want {
        Want::File { flv_start } if container == Some(Container::Flv) => Want::File {
            flv_start: flv_start.filter(|s| s.is_finite() && *s > 0.0),
        },
        Want::File { .. } => Want::File { flv_start: None },
        other => other,
    };
    Some(Ok((
        VodRoute {
            key: format!("{app}/{name}"),
            app: app.to_owned(),
            name,
            want,
        },
        vod,
    )))
}

/// The request's conditions, from its headers.
#[derive(Debug, Clone, Default)]
pub(super) struct Conditions {
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub if_none_match: Option<String>,
}

/// Where an HTTP VOD response is.
enum Stage {
    /// The file is being opened.
    Opening,
    /// A reader reads what the answer needs: the FLV seek point, or the
    /// whole MP4 index (HLS).
    Reading(Box<Reader>),
    /// A segment's samples are being read.
    Segment {
        movie: Arc<Movie>,
        plan: Arc<Plan>,
        index: usize,
        reads: Vec<ReadRequest>,
        got: Vec<(u64, Bytes)>,
    },
    /// The body: bytes `next..end` of the file are still to be sent.
    Body { next: u64, end: u64 },
}

/// What the HTTP connection does next.
pub(super) enum HttpOutcome {
    /// Waiting for the disk or the socket.
    Working,
    /// The response is queued whole: read the next request (or close).
    Done,
}

/// One HTTP VOD request being answered.
pub(super) struct VodHttp {
    route: VodRoute,
    path: PathBuf,
    source: FileSource,
    stage: Stage,
    meta: Option<Meta>,
    cond: Conditions,
    pub keep_alive: bool,
    head_only: bool,
    cors: String,
    query: String,
    /// The response head is queued.
    head_sent: bool,
}

/// A 404 (or another status) for a VOD request, with a short reason.
pub(super) fn error_response(status: u16, why: &str, cors: &str, keep: bool, head: bool) -> Bytes {
    http::response(
        status,
        "text/plain",
        &[("Access-Control-Allow-Origin", cors)],
        format!("{why}\n").as_bytes(),
        keep,
        head,
    )
}

/// The Content-Type of a file by its extension.
fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map_or("", |(_, e)| e)
        .to_ascii_lowercase();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "mov" => "video/quicktime",
        "f4v" => "video/mp4",
        "flv" => "video/x-flv",
        _ => "application/octet-stream",
    }
}

/// `"len-mtime"` in hex: changes when the file does.
fn etag(meta: &Meta) -> String {
    let nanos = meta
        .modified
        .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("\"{:x}-{:x}\"", meta.len, nanos)
}

/// An HTTP-date (RFC 9110 5.6.7), IMF-fixdate form.
pub(super) fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil from days (Howard Hinnant's algorithm), 1970-01-01 a Thursday.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {day:02} {} {year} {h:02}:{m:02}:{s:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize]
    )
}

/// A single byte range of a `len`-byte file from a Range header: `Ok(None)`
/// to send the whole file (no header, one this server does not honour: a
/// multi-range or a malformed one, RFC 9110 14.2 lets it be ignored),
/// `Err(())` for a range that is not satisfiable (416).
pub(super) fn parse_range(header: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // The last b bytes.
        let Ok(n) = b.parse::<u64>() else {
            return Ok(None);
        };
        if n == 0 || len == 0 {
            return Err(());
        }
        return Ok(Some((len - n.min(len), len - 1)));
    }
    let Ok(start) = a.parse::<u64>() else {
        return Ok(None);
    };
    let end = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e.min(len.saturating_sub(1)),
            _ => return Ok(None),
        }
    };
    if start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

impl VodHttp {
    /// Starts answering `route` (access already granted): the file is
    /// opened on a disk thread.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn open(
        ctx: &WorkerCtx,
        conn: ConnId,
        route: VodRoute,
        vod: &VodApp,
        cond: Conditions,
        keep_alive: bool,
        head_only: bool,
        cors: &str,
        query: &str,
    ) -> Result<VodHttp, String> {
        let Some((path, _)) = file_path(vod, &route.name) else {
            return Err("no such file".into());
        };
        let source = FileSource::open(ctx, conn, 0, path.clone(), vod)?;
        Ok(VodHttp {
            route,
            path,
            source,
            stage: Stage::Opening,
            meta: None,
            cond,
            keep_alive,
            head_only,
            cors: cors.to_owned(),
            query: crate::server::hls::carried_query(query),
            head_sent: false,
        })
    }

    /// When a disk answer is overdue.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.source.deadline()
    }

    /// The stream key, for logs.
    pub(super) fn key(&self) -> &str {
        &self.route.key
    }

    /// A disk answer is overdue: 504, or (mid-body) the connection closes.
    pub(super) fn on_timeout(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
    ) -> Result<HttpOutcome, Close> {
        if self.source.deadline().is_some_and(|d| now >= d) {
            return self.error(
                io,
                504,
                &format!("the disk did not answer within {DISK_TIMEOUT:?}"),
            );
        }
        Ok(HttpOutcome::Working)
    }

    /// An error answer (or, once the head went out, a close: the body
    /// cannot be finished).
    fn error(&mut self, io: &mut ConnIo, status: u16, why: &str) -> Result<HttpOutcome, Close> {
        if status != 404 {
            count(&TOTALS.errors, 1);
        }
        log::info!(
            "vod http {status} stream={} file={} conn={}: {why}",
            self.route.key,
            self.path.display(),
            io.id
        );
        if self.head_sent {
            return Err(Close::new(
                CloseReason::StreamEnded,
                format!("{}: {why}", self.path.display()),
            ));
        }
        let shown = if status == 404 { "no such file" } else { why };
        io.push(Item::Control(error_response(
            status,
            shown,
            &self.cors,
            self.keep_alive,
            self.head_only,
        )));
        self.head_sent = true;
        Ok(HttpOutcome::Done)
    }

    /// A disk answer for this request.
    pub(super) fn on_disk(
        &mut self,
        reply: DiskReply,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<HttpOutcome, Close> {
        match self.source.on_reply(reply) {
            SourceEvent::Stale | SourceEvent::Partial => Ok(HttpOutcome::Working),
            SourceEvent::Failed(e) if self.meta.is_none() => {
                count(&TOTALS.not_found, 1);
                log::info!(
                    "vod http 404 stream={} conn={} peer={}: {e}",
                    self.route.key,
                    io.id,
                    io.peer
                );
                self.error(io, 404, "no such file")
            }
            SourceEvent::Failed(e) => self.error(io, 500, &e.to_string()),
            SourceEvent::Opened(meta) => {
                self.meta = Some(meta);
                self.opened(io, ctx, meta)
            }
            SourceEvent::Data(req, data) => self.data(io, ctx, req, data),
        }
    }

    /// The output queue drained: send more of the body.
    pub(super) fn on_drained(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<HttpOutcome, Close> {
        self.advance(io, ctx)
    }

    fn opened(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        meta: Meta,
    ) -> Result<HttpOutcome, Close> {
        count(&TOTALS.http_requests, 1);
        match self.route.want.clone() {
            Want::File { flv_start: None } => self.file_head(io, ctx, &meta),
            Want::File { flv_start: Some(s) } => {
                let mut r = Reader::new(Container::Flv, meta.len, Limits::default());
                r.seek((s * 1000.0) as u64);
                self.stage = Stage::Reading(Box::new(r));
                self.advance(io, ctx)
            }
            Want::Playlist | Want::Init | Want::Segment(_) => {
                if let Some((movie, Some(plan))) = cache_get(&self.path, &meta) {
                    return self.hls_answer(io, ctx, movie, plan);
                }
                let mut r = Reader::new(Container::Mp4, meta.len, Limits::default());
                // Seeking past the end reads every fragment: the index is
                // whole when the seek resolves.
                r.seek(u64::MAX);
                self.stage = Stage::Reading(Box::new(r));
                self.advance(io, ctx)
            }
        }
    }

    /// The head of a whole-file or range answer, then the body.
    fn file_head(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        meta: &Meta,
    ) -> Result<HttpOutcome, Close> {
        let tag = etag(meta);
        let modified = meta.modified.map(http_date);
        let ctype = content_type(&self.route.name);
        let mut headers: Vec<(&str, String)> = vec![
            ("Content-Type", ctype.to_owned()),
            ("Accept-Ranges", "bytes".to_owned()),
            ("ETag", tag.clone()),
            ("Access-Control-Allow-Origin", self.cors.clone()),
            (
                "Access-Control-Expose-Headers",
                "Content-Length, Content-Range, Accept-Ranges, ETag".to_owned(),
            ),
        ];
        if let Some(m) = &modified {
            headers.push(("Last-Modified", m.clone()));
        }
        if self
            .cond
            .if_none_match
            .as_deref()
            .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"))
        {
            return self.head(io, 304, &headers, Some(meta.len), 0, 0);
        }
        // If-Range: the range holds only for the same file (RFC 9110 13.1.5);
        // otherwise the whole file, 200.
        let range_holds = match self.cond.if_range.as_deref() {
            None => true,
            Some(v) => v == tag || modified.as_deref() == Some(v),
        };
        let range = match (&self.cond.range, range_holds) {
            (Some(r), true) => parse_range(r, meta.len),
            _ => Ok(None),
        };
        match range {
            Err(()) => {
                headers.push(("Content-Range", format!("bytes */{}", meta.len)));
                self.head(io, 416, &headers, Some(0), 0, 0)
            }
            Ok(None) => {
                let len = meta.len;
                self.head(io, 200, &headers, Some(len), 0, len)?;
                self.advance(io, ctx)
            }
            Ok(Some((a, b))) => {
                headers.push(("Content-Range", format!("bytes {a}-{b}/{}", meta.len)));
                self.head(io, 206, &headers, Some(b + 1 - a), a, b + 1)?;
                self.advance(io, ctx)
            }
        }
    }

    /// Queues a response head; the body (`from..to` of the file) follows
    /// unless this is HEAD.
    fn head(
        &mut self,
        io: &mut ConnIo,
        status: u16,
        headers: &[(&str, String)],
        content_length: Option<u64>,
        from: u64,
        to: u64,
    ) -> Result<HttpOutcome, Close> {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let length = content_length.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let head = http::response_head(status, &h, length, self.keep_alive);
        io.push(Item::Control(head.freeze()));
        self.head_sent = true;
        if self.head_only || status == 304 || status == 416 {
            self.stage = Stage::Body { next: 0, end: 0 };
            return Ok(HttpOutcome::Done);
        }
        self.stage = Stage::Body {
            next: from,
            end: to,
        };
        Ok(HttpOutcome::Working)
    }

    fn data(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: ReadRequest,
        data: Bytes,
    ) -> Result<HttpOutcome, Close> {
        match &mut self.stage {
            Stage::Body { next, end } => {
                if data.len() < req.len {
                    let why = format!(
                        "the file ends at {} bytes, {} were announced: it shrank while being sent",
                        req.offset + data.len() as u64,
                        end
                    );
                    return self.error(io, 500, &why);
                }
                *next += data.len() as u64;
                count(&TOTALS.bytes_out, data.len() as u64);
                io.push(Item::Response(WireForm::from_bytes(data)));
                ctx.schedule_write(io);
                self.advance(io, ctx)
            }
            Stage::Reading(r) => {
                if let Err(e) = r.handle_read(req, data) {
                    return self.error(io, 500, &e.to_string());
                }
                self.advance(io, ctx)
            }
            Stage::Segment { got, .. } => {
                if data.len() < req.len {
                    return self.error(io, 500, "the file shrank while being read");
                }
                got.push((req.offset, data));
                self.advance(io, ctx)
            }
            Stage::Opening => Ok(HttpOutcome::Working),
        }
    }

    /// Moves the answer forward: the next read, or the answer once its
    /// parts are read.
    fn advance(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx) -> Result<HttpOutcome, Close> {
        if self.source.busy() {
            return Ok(HttpOutcome::Working);
        }
        match &mut self.stage {
            Stage::Opening => Ok(HttpOutcome::Working),
            Stage::Body { next, end } => {
                if *next >= *end {
                    return Ok(HttpOutcome::Done);
                }
                if io.out.response_bytes() > HTTP_HIGH {
                    return Ok(HttpOutcome::Working); // on_drained comes back
                }
                let len = (*end - *next).min(HTTP_CHUNK as u64) as usize;
                let req = ReadRequest { offset: *next, len };
                match self.source.read(ctx, req) {
                    Ok(()) => Ok(HttpOutcome::Working),
                    Err(why) => self.error(io, 503, &why),
                }
            }
            Stage::Reading(r) => loop {
                match r.poll() {
                    Ok(Step::Read(req)) => {
                        return match self.source.read(ctx, req) {
                            Ok(()) => Ok(HttpOutcome::Working),
                            Err(why) => self.error(io, 503, &why),
                        }
                    }
                    Ok(Step::Wait) => return Ok(HttpOutcome::Working),
                    Ok(Step::Frame(_)) => {}
                    Ok(Step::Seeked { .. }) | Ok(Step::End) => return self.read_done(io, ctx),
                    Err(e) => {
                        let why = e.to_string();
                        return self.error(io, 500, &why);
                    }
                }
            },
            Stage::Segment {
                movie,
                plan,
                index,
                reads,
                got,
            } => {
                if let Some(req) = reads.pop() {
                    return match self.source.read(ctx, req) {
                        Ok(()) => Ok(HttpOutcome::Working),
                        Err(why) => self.error(io, 503, &why),
                    };
                }
                let built = hls::segment(movie, plan, *index, got);
                match built {
                    Ok(body) => {
                        let n = body.len() as u64;
                        count(&TOTALS.bytes_out, n);
                        self.respond(io, "video/iso.segment", body)
                    }
                    Err(e) => {
                        let why = e.to_string();
                        self.error(io, 500, &why)
                    }
                }
            }
        }
    }

    /// The reader resolved what the request needed.
    fn read_done(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx) -> Result<HttpOutcome, Close> {
        let Stage::Reading(reader) = std::mem::replace(&mut self.stage, Stage::Opening) else {
            return Ok(HttpOutcome::Working);
        };
        let Some(meta) = self.meta else {
            return Ok(HttpOutcome::Working);
        };
        if let Some((pos, headers)) = reader.flv_position() {
            return self.flv_from(io, ctx, &meta, pos, headers);
        }
        let Some(movie) = reader.movie().cloned() else {
            return self.error(io, 500, "no index");
        };
        let plan = match Plan::new(&movie, hls::TARGET_SEGMENT_MS) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                let why = e.to_string();
                return self.error(io, 500, &why);
            }
        };
        cache_put(&self.path, &meta, movie.clone(), Some(plan.clone()));
        self.hls_answer(io, ctx, movie, plan)
    }

    /// `file.flv?start=S`: the FLV header, the metadata and sequence
    /// headers, then the file from the keyframe tag on.
    fn flv_from(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        meta: &Meta,
        pos: u64,
        headers: Vec<VodFrame>,
    ) -> Result<HttpOutcome, Close> {
        let mut pieces = vec![super::flv::file_header(true, true)];
        for f in &headers {
            let t = match f.kind {
                crate::protocol::session::MediaKind::Audio => 8,
                crate::protocol::session::MediaKind::Video => 9,
                crate::protocol::session::MediaKind::Data => 18,
            };
            pieces.extend(
                super::flv::tag_form(t, f.timestamp, &f.payload, false)
                    .pieces()
                    .iter()
                    .cloned(),
            );
        }
        let prefix = WireForm::new(pieces);
        let rest = meta.len.saturating_sub(pos);
        let total = prefix.len() as u64 + rest;
        let headers = vec![
            ("Content-Type", "video/x-flv".to_owned()),
            ("Access-Control-Allow-Origin", self.cors.clone()),
            ("Cache-Control", "no-cache".to_owned()),
        ];
        self.head(io, 200, &headers, Some(total), pos, meta.len)?;
        if self.head_only {
            return Ok(HttpOutcome::Done);
        }
        io.push(Item::Response(prefix));
        ctx.schedule_write(io);
        self.advance(io, ctx)
    }

    /// Answers an HLS request from the file's plan.
    fn hls_answer(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        movie: Arc<Movie>,
        plan: Arc<Plan>,
    ) -> Result<HttpOutcome, Close> {
        match self.route.want {
            Want::Playlist => {
                let file = self.route.name.rsplit('/').next().unwrap_or_default();
                let body = plan.playlist(&format!("../{file}"), &self.query);
                self.respond(
                    io,
                    "application/vnd.apple.mpegurl",
                    WireForm::from_bytes(Bytes::from(body)),
                )
            }
            Want::Init if plan.layout == Layout::Built => {
                self.respond(io, "video/mp4", WireForm::from_bytes(hls::init(&movie)))
            }
            Want::Segment(i) if plan.layout == Layout::Built && i < plan.segments.len() => {
                let mut reads = hls::segment_reads(&movie, &plan, i);
                reads.reverse(); // popped from the end: file order
                self.stage = Stage::Segment {
                    movie,
                    plan,
                    index: i,
                    reads,
                    got: Vec::new(),
                };
                self.advance(io, ctx)
            }
            _ => self.error(io, 404, "no such segment"),
        }
    }

    /// A complete response with a body built here.
    fn respond(
        &mut self,
        io: &mut ConnIo,
        ctype: &str,
        body: WireForm,
    ) -> Result<HttpOutcome, Close> {
        let len = body.len();
        let head = http::response_head(
            200,
            &[
                ("Content-Type", ctype),
                ("Access-Control-Allow-Origin", &self.cors),
                ("Cache-Control", "max-age=60"),
            ],
            Some(len),
            self.keep_alive,
        );
        let mut pieces = vec![head.freeze()];
        if !self.head_only {
            pieces.extend(body.pieces().iter().cloned());
        }
        io.push(Item::Response(WireForm::new(pieces)));
        self.head_sent = true;
        self.stage = Stage::Body { next: 0, end: 0 };
        Ok(HttpOutcome::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_single_suffix_open_and_unsatisfiable() {
        assert_eq!(parse_range("bytes=0-99", 1000), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=900-", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=-100", 1000), Ok(Some((900, 999))));
        assert_eq!(parse_range("bytes=-5000", 1000), Ok(Some((0, 999))));
        assert_eq!(parse_range("bytes=990-2000", 1000), Ok(Some((990, 999))));
        assert_eq!(parse_range("bytes=1000-", 1000), Err(()));
        assert_eq!(parse_range("bytes=-0", 1000), Err(()));
        // Ignored: the whole file.
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(parse_range("bytes=9-2", 1000), Ok(None));
        assert_eq!(parse_range("items=0-1", 1000), Ok(None));
        assert_eq!(parse_range("bytes=a-b", 1000), Ok(None));
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(http_date(leap), "Tue, 29 Feb 2000 00:00:00 GMT");
    }

    #[test]
    fn names_outside_or_hidden_or_unknown_are_no_file() {
        let vod = VodApp {
            dir: PathBuf::from("/srv/v"),
            follow_symlinks: false,
        };
        assert_eq!(
            file_path(&vod, "a/b.mp4"),
            Some((PathBuf::from("/srv/v/a/b.mp4"), Container::Mp4))
        );
        assert_eq!(
            file_path(&vod, "mp4:b.MP4"),
            Some((PathBuf::from("/srv/v/b.MP4"), Container::Mp4))
        );
        // rtmpdump's forms: mp4:name, and a bare name for FLV.
        assert_eq!(
            file_path(&vod, "mp4:dir/b"),
            Some((PathBuf::from("/srv/v/dir/b.mp4"), Container::Mp4))
        );
        assert_eq!(
            file_path(&vod, "b"),
            Some((PathBuf::from("/srv/v/b.flv"), Container::Flv))
        );
        for bad in [
            "../x.mp4",
            "a/../../x.mp4",
            "/etc/x.mp4",
            ".hidden.mp4",
            "a/.git/x.flv",
            "x.mkv",
            "a\\b.mp4",
            "",
        ] {
            assert_eq!(file_path(&vod, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b.mp4").as_deref(), Some("a b.mp4"));
        assert_eq!(percent_decode("%2e%2e/x").as_deref(), Some("../x"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }
}
