//! Recording: a live stream written to files, fragmented MP4 or FLV, by the
//! disk helper threads ([`super::disk`]); the worker that feeds a recording
//! never waits for a disk. docs/recording.md describes the feature; this is
//! the mechanism.
//!
//! ```text
//!  publisher's worker: publish_frame ─► record::publish(stream, frame)
//!     │ the stream's recorder slot (a lock taken only while a recording runs)
//!     ├─ mp4, stream packaged for HLS: StreamHls::push(.., sink) ─► Recorder::on_output
//!     ├─ mp4, not packaged: the recorder's own Packager ──────────► Recorder::on_output
//!     │      a part (moof+mdat: the packager's own Bytes) ─► Append job
//!     └─ flv: the tag as received (11-byte header + the payload Bytes) ─► batched Append jobs
//!                                   │  bounded: bytes waiting for the disk per recording
//!                                   ▼  (past the bound: drop to the next keyframe, counted)
//!  disk thread: create ─► append ... ─► sync (every --record-sync-interval) ─► close
//!     answers update the recording's counters; a failure stops the recording
//!     (logged, shown in the API) while the live stream goes on
//! ```
//!
//! * **MP4** is `Packager::combined_init()` (every track) followed by each
//!   part of each track as the packager emits them. The file is playable
//!   at every fragment boundary: a killed server loses only what the
//!   kernel had not been handed. A file starts, and rotates, at a segment
//!   start (a keyframe), and also when the init changes (a new sequence
//!   header, a track that appears).
//! * **FLV** is the FLV header, an `onMetaData` tag sized for a keyframe
//!   index of [`FLV_INDEX_ENTRIES`] entries (the publisher's own metadata
//!   merged in), the stream's headers, then every tag as received with its
//!   timestamp made relative to the file's first keyframe. On close, a disk
//!   thread writes the final `onMetaData` over the placeholder: `duration`,
//!   `filesize` and `keyframes { times, filepositions }`. A crash leaves a
//!   file that plays but has no index.

use super::base::locked;
use super::disk::{DiskFile, DiskPool, Done, Full, Op, Reply};
use super::stream::{Frame, HeaderSlot, Recording, Stream};
use crate::auth::Auth;
use crate::cmaf::{Output, Packager, PackagerConfig, Part, RenditionId};
use crate::config::Config;
use crate::hooks::{Call, Hooks, Job};
use crate::protocol::amf::{self, Amf0Value};
use crate::protocol::session::{is_metadata, MediaKind};
use crate::record_settings::{RecordFormat, RecordMode, RecordPolicy};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Keyframes an FLV recording's index has room for. The placeholder
/// `onMetaData` reserves 18 bytes per entry (two AMF numbers): 3,600
/// entries are an hour of 1 s GOPs in 64 KB. A longer file keeps every
/// second (third, ...) keyframe in its index: players seek to the nearest
/// indexed keyframe before the target.
pub const FLV_INDEX_ENTRIES: usize = 3600;
/// FLV tags are handed to the disk in batches of about this many bytes, or
/// of [`FLV_BATCH_MS`] of media, whichever comes first.
const FLV_BATCH_BYTES: usize = 256 * 1024;
const FLV_BATCH_MS: u32 = 500;
/// Finished recordings the API lists (the oldest are forgotten first; the
/// files stay).
const MAX_LISTED: usize = 10_000;
/// How often the retention job looks for old recordings.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Bytes of the FLV header and PreviousTagSize0: the metadata tag starts
/// here, its body 11 bytes later.
const FLV_META_TAG_AT: u64 = 13;

/// The packager a recording runs when its stream is not packaged for HLS:
/// parts of a second (a crash loses at most about that), a target
/// duration long enough that GOPs up to 10 s start every segment on a
/// keyframe, and a window of two segments (the recorder keeps nothing of
/// it; the window only holds what was written a moment ago).
fn own_packager_config() -> PackagerConfig {
    PackagerConfig {
        part_target_ms: 1000,
        target_duration_s: 10,
        min_segment_ms: 1000,
        window_segments: 2,
        window_bytes: 32 << 20,
        // Nothing plays from it.
        mux_audio: false,
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------
// The recording's state, shared with the disk threads and the API
// ---------------------------------------------------------------------------------------

/// One recording's counters and state: updated by the worker that feeds it
/// and by the disk threads' answers, read by the API.
#[derive(Debug)]
pub struct Status {
    pub id: u64,
    pub key: String,
    pub format: RecordFormat,
    /// Started through the API.
    pub manual: bool,
    pub started: SystemTime,
    /// The file written now (its final name once created).
    path: Mutex<Option<PathBuf>>,
    /// Bytes the disk wrote, every file of this recording.
    pub bytes: AtomicU64,
    /// Bytes handed to the disk threads and not written yet.
    pub queued: AtomicU64,
    /// Fragments (mp4) or tags (flv) dropped because the disk fell behind.
    pub dropped: AtomicU64,
    /// Files finished (rotation makes several).
    pub files: AtomicU64,
    /// Media in the files finished (ms).
    pub duration_ms: AtomicU64,
    /// Media in the file written now (ms).
    current_ms: AtomicU64,
    /// Why the recording stopped, when a disk error stopped it.
    error: OnceLock<String>,
}

impl Status {
    /// The file written now.
    pub fn path(&self) -> Option<PathBuf> {
        locked(&self.path).clone()
    }

    /// The error that stopped the recording.
    pub fn error(&self) -> Option<&str> {
        self.error.get().map(String::as_str)
    }

    /// Stops the recording for `why` (the first reason wins; logged once).
    fn fail(&self, totals: &Totals, why: impl Display) {
        let why = why.to_string();
        let path = self.path().map(|p| p.display().to_string());
        if self.error.set(why.clone()).is_ok() {
            totals.failures.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "record stream={} path={}: {why}; this recording stops, the live stream goes on",
                self.key,
                path.as_deref().unwrap_or("-")
            );
        }
    }

    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "stream": self.key,
            "state": if self.error.get().is_some() { "failed" } else { "recording" },
            "format": self.format.ext(),
            "manual": self.manual,
            "path": self.path().map(|p| p.display().to_string()),
            "started": unix_secs(self.started),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "queued_bytes": self.queued.load(Ordering::Relaxed),
            "duration": (self.duration_ms.load(Ordering::Relaxed)
                + self.current_ms.load(Ordering::Relaxed)) as f64
                / 1000.0,
            "dropped": self.dropped.load(Ordering::Relaxed),
            "files": self.files.load(Ordering::Relaxed),
            "error": self.error.get(),
        })
    }
}

/// Process-wide counters (for /metrics).
#[derive(Debug, Default)]
pub struct Totals {
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
    pub failures: AtomicU64,
    pub files: AtomicU64,
    pub deleted: AtomicU64,
}

/// A finished recording file, as `/api/recordings` lists it.
#[derive(Debug, Clone)]
pub struct Finished {
    pub path: PathBuf,
    /// `app/name`; None for a file found by the scan at start.
    pub stream: Option<String>,
    pub format: Option<RecordFormat>,
    pub start: SystemTime,
    /// Seconds of media; None for a scanned file.
    pub duration: Option<f64>,
    pub bytes: u64,
    pub error: Option<String>,
}

impl Finished {
    fn json(&self) -> Value {
        json!({
            "path": self.path.display().to_string(),
            "stream": self.stream,
            "format": self.format.map(RecordFormat::ext),
            "start": unix_secs(self.start),
            "duration": self.duration,
            "bytes": self.bytes,
            "error": self.error,
            "source": if self.stream.is_some() { "recorded" } else { "scan" },
        })
    }
}

// ---------------------------------------------------------------------------------------
// The service: policies, the finished index, retention, callbacks
// ---------------------------------------------------------------------------------------

/// Recording for the whole server: see the module documentation.
pub struct Recordings {
    dir: PathBuf,
    policies: HashMap<String, RecordPolicy>,
    default: RecordPolicy,
    queue_bytes: u64,
    sync_interval: Duration,
    disk: Arc<DiskPool>,
    hooks: Option<Arc<crate::hooks::Pool>>,
    app_hooks: HashMap<String, Arc<Hooks>>,
    active: Mutex<Vec<Arc<Status>>>,
    finished: Mutex<VecDeque<Finished>>,
    next_id: AtomicU64,
    pub totals: Totals,
    /// (directory, retention) per application root, longest first.
    retention: Vec<(PathBuf, Option<Duration>)>,
    next_retention: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Recordings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recordings")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Recordings {
    /// The policies of every configured application; starts the scan of
    /// the record directory (on a disk thread) when anything records.
    pub fn new(
        config: &Config,
        auth: &Auth,
        disk: Arc<DiskPool>,
        hooks: Option<Arc<crate::hooks::Pool>>,
    ) -> Result<Arc<Recordings>, String> {
        let default = config.record_policy("*")?;
        let mut policies = HashMap::new();
        let mut app_hooks = HashMap::new();
        for app in config.access.apps.keys() {
            policies.insert(app.clone(), config.record_policy(app)?);
            if let Some(h) = auth.hooks(app) {
                app_hooks.insert(app.clone(), h.clone());
            }
        }
        let mut retention: Vec<(PathBuf, Option<Duration>)> = policies
            .iter()
            .filter(|(app, _)| *app != "*")
            .map(|(app, p)| (p.template.app_root(app), p.retention))
            .collect();
        retention.push((config.record_dir.clone(), default.retention));
        retention.sort_by_key(|(root, _)| std::cmp::Reverse(root.components().count()));
        let r = Arc::new(Recordings {
            dir: config.record_dir.clone(),
            policies,
            default,
            queue_bytes: config.record_queue_bytes as u64,
            sync_interval: config.record_sync_interval,
            disk,
            hooks,
            app_hooks,
            active: Mutex::new(Vec::new()),
            finished: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(1),
            totals: Totals::default(),
            retention,
            next_retention: Mutex::new(None),
        });
        if r.records_anything() {
            r.scan();
        }
        Ok(r)
    }

    fn policy(&self, app: &str) -> &RecordPolicy {
        self.policies
            .get(app)
            .or_else(|| self.policies.get("*"))
            .unwrap_or(&self.default)
    }

    /// True when some application records or has a retention.
    fn records_anything(&self) -> bool {
        std::iter::once(&self.default)
            .chain(self.policies.values())
            .any(|p| p.mode != RecordMode::Off || p.retention.is_some())
    }

    /// Lists what the record directory holds (a disk thread walks it).
    fn scan(self: &Arc<Self>) {
        let me = self.clone();
        let dir = self.disk.file(&self.dir);
        let reply = Reply::call(move |r| match r {
            Ok(Done::Listed(files)) => {
                let mut found: Vec<Finished> = files
                    .into_iter()
                    .filter_map(|(path, meta)| {
                        let format = format_of(&path)?;
                        Some(Finished {
                            start: meta.modified.unwrap_or(UNIX_EPOCH),
                            path,
                            stream: None,
                            format: Some(format),
                            duration: None,
                            bytes: meta.len,
                            error: None,
                        })
                    })
                    .collect();
                found.sort_by_key(|f| f.start);
                let n = found.len();
                let mut list = locked(&me.finished);
                for f in found.into_iter().rev().take(MAX_LISTED) {
                    list.push_front(f);
                }
                while list.len() > MAX_LISTED {
                    list.pop_front();
                }
                drop(list);
                log::info!("record: {n} recordings found under {}", me.dir.display());
            }
            Ok(_) => {}
            Err(e) => log::warn!("record: scanning the record directory: {e}"),
        });
        if self
            .disk
            .submit(&dir, Op::List { max: MAX_LISTED }, reply)
            .is_err()
        {
            log::warn!("record: the record directory was not scanned: the disk queue is full");
        }
    }

    /// A publisher claimed `stream`: with `mode = "all"`, its recording
    /// starts (a replacing publisher continues the running one).
    pub(super) fn on_publish(self: &Arc<Self>, stream: &Arc<Stream>) {
        let (app, _) = split_key(&stream.key);
        let policy = self.policy(app);
        if policy.mode != RecordMode::All {
            return;
        }
        if let Err((_, why)) = self.start(stream, None, false) {
            if !why.contains("already") {
                log::warn!("record stream={}: not recorded: {why}", stream.key);
            }
        }
    }

    /// Starts recording `stream` (live) in `format` (the application's by
    /// default). An error is an HTTP status and why.
    pub fn start(
        self: &Arc<Self>,
        stream: &Arc<Stream>,
        format: Option<RecordFormat>,
        manual: bool,
    ) -> Result<Value, (u16, String)> {
        let (app, name) = split_key(&stream.key);
        let policy = self.policy(app).clone();
        if policy.mode == RecordMode::Off {
            return Err((403, format!("recording is off for application {app:?}")));
        }
        if !stream.with_state(|st| st.publisher().is_some()) {
            return Err((404, "the stream is not live".into()));
        }
        let headers = stream.headers();
        let mut slot = stream.recorder.lock_any();
        if let Some(r) = slot.as_ref() {
            if !r.stopped() {
                return Err((409, "the stream is already being recorded".into()));
            }
        }
        if let Some(old) = slot.take() {
            old.release();
        }
        let format = format.unwrap_or(policy.format);
        let status = Arc::new(Status {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            key: stream.key.clone(),
            format,
            manual,
            started: SystemTime::now(),
            path: Mutex::new(None),
            bytes: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            files: AtomicU64::new(0),
            duration_ms: AtomicU64::new(0),
            current_ms: AtomicU64::new(0),
            error: OnceLock::new(),
        });
        let own = (format == RecordFormat::Mp4 && stream.hls().is_none())
            .then(|| Packager::new(own_packager_config()).ok())
            .flatten();
        let mut headers = headers;
        headers.sort_by_key(|f| header_rank(f));
        let rec = Recorder {
            core: Core {
                status: status.clone(),
                rec: self.clone(),
                app: app.to_owned(),
                name: name.to_owned(),
                policy: RecordPolicy { format, ..policy },
                headers,
                last_sync: Instant::now(),
                drop_logged: false,
            },
            feed_headers: own.is_some(),
            own,
            writer: match format {
                RecordFormat::Mp4 => Writer::Mp4(Mp4Writer::default()),
                RecordFormat::Flv => Writer::Flv(FlvWriter::default()),
            },
            stopped: false,
        };
        stream.recorder.install(slot, Box::new(rec));
        locked(&self.active).push(status.clone());
        log::info!(
            "record start stream={} format={} manual={manual}",
            stream.key,
            format.ext()
        );
        Ok(status.json())
    }

    /// Stops `stream`'s recording (the API): its file is finished. None
    /// when none runs.
    pub fn stop(&self, stream: &Stream, why: &str) -> Option<Value> {
        let rec = stream.recorder.take()?;
        let mut v = rec.json();
        if !rec.failed() {
            v["state"] = "stopped".into();
        }
        rec.finish(why);
        Some(v)
    }

    /// The recording of `stream`, for `/api/streams`.
    pub fn describe(&self, stream: &Stream) -> Option<Value> {
        let slot = stream.recorder.lock_any();
        slot.as_ref().map(|r| r.json())
    }

    /// `/api/recordings`: the recordings running now and the files
    /// finished (this process's, and what the scan at start found).
    pub fn list(&self) -> Value {
        let active: Vec<Value> = locked(&self.active).iter().map(|s| s.json()).collect();
        let finished: Vec<Value> = locked(&self.finished).iter().map(Finished::json).collect();
        json!({ "active": active, "recordings": finished })
    }

    /// Recordings running now.
    pub fn active_count(&self) -> usize {
        locked(&self.active).len()
    }

    /// Bytes every recording has waiting for the disk.
    pub fn queued_bytes(&self) -> u64 {
        locked(&self.active)
            .iter()
            .map(|s| s.queued.load(Ordering::Relaxed))
            .sum()
    }

    /// A file is finished: listed, counted, logged, and the application's
    /// `on_record_done` callback told.
    fn file_done(&self, f: Finished, status: &Status) {
        self.totals.files.fetch_add(1, Ordering::Relaxed);
        status.files.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "record done stream={} path={} bytes={} duration={:.3}{}",
            f.stream.as_deref().unwrap_or("-"),
            f.path.display(),
            f.bytes,
            f.duration.unwrap_or(0.0),
            f.error
                .as_deref()
                .map_or(String::new(), |e| format!(" error={e}"))
        );
        let key = f.stream.clone().unwrap_or_default();
        let path = f.path.display().to_string();
        {
            let mut list = locked(&self.finished);
            list.push_back(f);
            if list.len() > MAX_LISTED {
                list.pop_front();
            }
        }
        let (app, name) = split_key(&key);
        let (Some(pool), Some(hooks)) = (
            &self.hooks,
            self.app_hooks.get(app).or_else(|| self.app_hooks.get("*")),
        ) else {
            return;
        };
        let Some(url) = hooks.on_record_done.clone() else {
            return;
        };
        pool.submit(Job {
            url,
            call: Call {
                call: "record_done",
                app: app.to_owned(),
                name: name.to_owned(),
                path,
                ..Default::default()
            },
            hooks: hooks.clone(),
            reply: None,
            queued: Instant::now(),
        });
    }

    fn ended(&self, status: &Arc<Status>) {
        locked(&self.active).retain(|s| !Arc::ptr_eq(s, status));
    }

    /// The periodic upkeep (one worker calls it on its tick): every
    /// minute, recordings older than their application's retention are
    /// deleted by a disk thread.
    pub(super) fn tick(self: &Arc<Self>, now: Instant) {
        if self.retention.iter().all(|(_, r)| r.is_none()) {
            return;
        }
        {
            let mut next = locked(&self.next_retention);
            if next.is_some_and(|at| now < at) {
                return;
            }
            *next = Some(now + RETENTION_EVERY);
        }
        let me = self.clone();
        let reply = Reply::call(move |r| match r {
            Ok(Done::Listed(files)) => me.expire(files),
            Ok(_) => {}
            Err(e) => log::warn!("record retention: listing the record directory: {e}"),
        });
        let dir = self.disk.file(&self.dir);
        if self
            .disk
            .submit(
                &dir,
                Op::List {
                    max: super::disk::MAX_LIST,
                },
                reply,
            )
            .is_err()
        {
            log::warn!("record retention: skipped this round: the disk queue is full");
        }
    }

    /// Deletes the listed recordings older than their root's retention
    /// (never one being written).
    fn expire(self: &Arc<Self>, files: Vec<(PathBuf, super::disk::Meta)>) {
        let now = SystemTime::now();
        let writing: Vec<PathBuf> = locked(&self.active)
            .iter()
            .filter_map(|s| s.path())
            .collect();
        for (path, meta) in files {
            if format_of(&path).is_none() || writing.contains(&path) {
                continue;
            }
            let Some(keep) = self
                .retention
                .iter()
                .find(|(root, _)| path.starts_with(root))
                .and_then(|(_, r)| *r)
            else {
                continue;
            };
            let age = meta
                .modified
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if age <= keep {
                continue;
            }
            let me = self.clone();
            let gone = path.clone();
            let reply = Reply::call(move |r| match r {
                Ok(_) => {
                    me.totals.deleted.fetch_add(1, Ordering::Relaxed);
                    locked(&me.finished).retain(|f| f.path != gone);
                    log::info!(
                        "record retention: deleted {} ({}s old)",
                        gone.display(),
                        age.as_secs()
                    );
                }
                Err(e) => log::warn!("record retention: {e}"),
            });
            let _ = self.disk.submit(&self.disk.file(&path), Op::Delete, reply);
        }
    }
}

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((key, ""))
}

fn format_of(path: &Path) -> Option<RecordFormat> {
    match path.extension()?.to_str()? {
        "mp4" => Some(RecordFormat::Mp4),
        "flv" => Some(RecordFormat::Flv),
        _ => None,
    }
}

/// Headers in the order a file starts with them: video configuration,
/// audio configuration, per-track metadata (the publisher's onMetaData is
/// merged into the file's own).
fn header_rank(f: &Frame) -> (u8, u8) {
    match f.header {
        Some(HeaderSlot::Metadata) => (0, 0),
        Some(HeaderSlot::Config {
            kind: MediaKind::Video,
            track,
        }) => (1, track),
        Some(HeaderSlot::Config { track, .. }) => (2, track),
        Some(HeaderSlot::TrackMetadata { track, .. }) => (3, track),
        None => (4, 0),
    }
}

// ---------------------------------------------------------------------------------------
// The stream's slot, and what the publisher's worker calls
// ---------------------------------------------------------------------------------------

/// One published frame of `stream`: packaged for HLS (when it is) and
/// recorded (when it is). Returns the workers to wake for HLS.
pub(super) fn publish(stream: &Stream, frame: &Arc<Frame>) -> u64 {
    let mut guard = stream.recorder.lock_active();
    let rec = guard.as_mut().and_then(|g| g.as_deref_mut());
    match (stream.hls(), rec) {
        (Some(hls), Some(r)) if r.takes_hls() => {
            let wake = hls.push(
                &stream.key,
                frame.kind,
                frame.timestamp,
                &frame.payload,
                Some(&mut |o: &Output, p: &Packager| r.on_output(o, p)),
            );
            r.on_frame(frame);
            wake
        }
        (hls, rec) => {
            let wake = hls.map_or(0, |h| {
                h.push(
                    &stream.key,
                    frame.kind,
                    frame.timestamp,
                    &frame.payload,
                    None,
                )
            });
            if let Some(r) = rec {
                r.on_frame(frame);
            }
            wake
        }
    }
}

/// The publisher of `stream` left: HLS ends its playlists, and the
/// recording (its last fragments included) is finished. Returns the
/// workers to wake for HLS.
pub(super) fn unpublish(stream: &Stream) -> u64 {
    let mut rec = stream.recorder.take();
    let wake = match (stream.hls(), rec.as_deref_mut()) {
        (Some(hls), Some(r)) if r.takes_hls() => hls.finish(
            &stream.key,
            Some(&mut |o: &Output, p: &Packager| r.on_output(o, p)),
        ),
        (Some(hls), _) => hls.finish(&stream.key, None),
        (None, _) => 0,
    };
    if let Some(r) = rec {
        r.finish("the stream ended");
    }
    wake
}

// ---------------------------------------------------------------------------------------
// The recorder
// ---------------------------------------------------------------------------------------

/// A file being written.
struct Out {
    file: DiskFile,
    started: SystemTime,
    /// Bytes handed to the disk.
    appended: u64,
    /// Bytes the disk wrote.
    written: Arc<AtomicU64>,
    /// Media times (ms) of the first and last sample.
    first_ms: Option<i64>,
    end_ms: i64,
}

impl Out {
    fn duration_ms(&self) -> u64 {
        self.first_ms
            .map_or(0, |f| u64::try_from(self.end_ms - f).unwrap_or(0))
    }

    fn media(&mut self, from_ms: i64, to_ms: i64) {
        if self.first_ms.map_or(true, |f| from_ms < f) {
            self.first_ms = Some(from_ms);
        }
        self.end_ms = self.end_ms.max(to_ms);
    }
}

/// What every format needs: the status, the policy, the disk.
struct Core {
    status: Arc<Status>,
    rec: Arc<Recordings>,
    app: String,
    name: String,
    policy: RecordPolicy,
    /// The latest header frames (sequence headers, metadata), for a file's
    /// start.
    headers: Vec<Arc<Frame>>,
    last_sync: Instant,
    drop_logged: bool,
}

impl Core {
    fn disk(&self) -> &DiskPool {
        &self.rec.disk
    }

    fn failed(&self) -> bool {
        self.status.error.get().is_some()
    }

    /// Opens a new file (its Create is queued); None when the path cannot
    /// be made or the disk queue is full.
    fn open(&mut self) -> Option<Out> {
        let started = SystemTime::now();
        let path =
            match self
                .policy
                .template
                .expand(&self.app, &self.name, started, self.policy.format)
            {
                Ok(p) => p,
                Err(e) => {
                    self.status.fail(&self.rec.totals, e);
                    return None;
                }
            };
        let file = self.disk().file(&path);
        let status = self.status.clone();
        let rec = self.rec.clone();
        let reply = Reply::call(move |r| match r {
            Ok(Done::Created(p)) => {
                log::info!("record file stream={} path={}", status.key, p.display());
                *locked(&status.path) = Some(p);
            }
            Ok(_) => {}
            Err(e) => status.fail(&rec.totals, e),
        });
        *locked(&self.status.path) = Some(path);
        match self.disk().submit(&file, Op::Create, reply) {
            Ok(()) => Some(Out {
                file,
                started,
                appended: 0,
                written: Arc::new(AtomicU64::new(0)),
                first_ms: None,
                end_ms: 0,
            }),
            Err(full) => {
                self.dropped(1, &full);
                None
            }
        }
    }

    /// Hands `pieces` to the disk; false (and nothing queued) when the
    /// bytes already waiting and these would pass the recording's bound
    /// (one write is always taken when nothing waits, so the bound holds
    /// to within one fragment or batch; `force`: a file's small head), or
    /// when the disk queue is full.
    fn write(&mut self, out: &mut Out, pieces: Vec<Bytes>, force: bool) -> bool {
        let n: u64 = pieces.iter().map(|b| b.len() as u64).sum();
        let queued = self.status.queued.fetch_add(n, Ordering::AcqRel);
        if !force && queued > 0 && queued + n > self.rec.queue_bytes {
            self.status.queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        let status = self.status.clone();
        let rec = self.rec.clone();
        let written = out.written.clone();
        let reply = Reply::call(move |r| {
            status.queued.fetch_sub(n, Ordering::AcqRel);
            match r {
                Ok(Done::Written(w)) => {
                    written.fetch_add(w, Ordering::Relaxed);
                    status.bytes.fetch_add(w, Ordering::Relaxed);
                    rec.totals.bytes.fetch_add(w, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => status.fail(&rec.totals, e),
            }
        });
        if let Err(Full(..)) = self.disk().submit(&out.file, Op::Append(pieces), reply) {
            self.status.queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        out.appended += n;
        if self.last_sync.elapsed() >= self.rec.sync_interval {
            self.last_sync = Instant::now();
            self.sync(out);
        }
        true
    }

    fn sync(&self, out: &Out) {
        let status = self.status.clone();
        let rec = self.rec.clone();
        let reply = Reply::call(move |r| {
            if let Err(e) = r {
                status.fail(&rec.totals, e);
            }
        });
        // A full queue skips this sync; the next one covers it.
        let _ = self.disk().submit(&out.file, Op::Sync, reply);
    }

    /// Something was dropped because the disk fell behind: counted, and
    /// logged once per recording.
    fn dropped(&mut self, n: u64, why: &dyn Display) {
        self.status.dropped.fetch_add(n, Ordering::Relaxed);
        self.rec.totals.dropped.fetch_add(n, Ordering::Relaxed);
        if !self.drop_logged {
            self.drop_logged = true;
            log::warn!(
                "record stream={}: the disk is slower than the stream ({why}); the recording skips to the next keyframe (counted in the API's \"dropped\"; logged once)",
                self.status.key
            );
        }
    }

    fn rotation_due(&self, out: &Out) -> bool {
        self.policy
            .rotate
            .is_some_and(|d| out.duration_ms() >= d.as_millis() as u64)
            || self.policy.rotate_bytes.is_some_and(|b| out.appended >= b)
    }

    /// Finishes a file: `last` (the FLV index) is written over its
    /// placeholder, the file is synced and closed, then listed, logged and
    /// reported to `on_record_done`.
    fn close(&self, out: Out, last: Option<(u64, Bytes)>) {
        let disk = self.disk();
        if let Some((offset, data)) = last {
            let status = self.status.clone();
            let rec = self.rec.clone();
            let reply = Reply::call(move |r| {
                if let Err(e) = r {
                    status.fail(&rec.totals, e);
                }
            });
            let _ = disk.submit(&out.file, Op::WriteAt { offset, data }, reply);
        }
        self.sync(&out);
        let duration_ms = out.duration_ms();
        self.status
            .duration_ms
            .fetch_add(duration_ms, Ordering::Relaxed);
        self.status.current_ms.store(0, Ordering::Relaxed);
        let file = out.file.clone();
        let written = out.written.clone();
        let status = self.status.clone();
        let rec = self.rec.clone();
        let done = move || {
            let f = Finished {
                path: file.path(),
                stream: Some(status.key.clone()),
                format: Some(status.format),
                start: out.started,
                duration: Some(duration_ms as f64 / 1000.0),
                bytes: written.load(Ordering::Relaxed),
                error: file.failed().map(|e| e.message.clone()),
            };
            rec.file_done(f, &status);
        };
        let done = Arc::new(Mutex::new(Some(done)));
        let run = done.clone();
        let reply = Reply::call(move |_| {
            if let Some(f) = locked(&run).take() {
                f();
            }
        });
        if disk.submit(&out.file, Op::Close, reply).is_err() {
            // The queue is full: the file closes when its last job does;
            // list it now.
            if let Some(f) = locked(&done).take() {
                f();
            }
        }
    }
}

enum Writer {
    Mp4(Mp4Writer),
    Flv(FlvWriter),
}

/// One stream's recording (in its [`Slot`]).
pub(crate) struct Recorder {
    core: Core,
    /// The recording's own packager (mp4, stream not packaged for HLS).
    own: Option<Packager>,
    /// The own packager has not been given the stream's headers yet.
    feed_headers: bool,
    writer: Writer,
    /// Stopped by an error: nothing more is written.
    stopped: bool,
}

impl Recorder {
    /// MP4 from the stream's HLS packager.
    fn takes_hls(&self) -> bool {
        matches!(self.writer, Writer::Mp4(_)) && self.own.is_none() && !self.stopped
    }

    /// Stops writing after a failure: the file is closed and listed with
    /// its error; the status stays for the API.
    fn check_failed(&mut self) -> bool {
        if self.stopped {
            return true;
        }
        if !self.core.failed() {
            return false;
        }
        self.stopped = true;
        self.own = None;
        match &mut self.writer {
            Writer::Mp4(w) => {
                if let Some(f) = w.file.take() {
                    self.core.close(f.out, None);
                }
            }
            Writer::Flv(w) => {
                if let Some(f) = w.file.take() {
                    self.core.close(f.out, None);
                }
            }
        }
        true
    }

    /// A frame of the stream.
    fn on_frame(&mut self, frame: &Arc<Frame>) {
        if self.check_failed() {
            return;
        }
        if let Some(slot) = frame.header {
            self.core.headers.retain(|h| h.header != Some(slot));
            self.core.headers.push(frame.clone());
            self.core.headers.sort_by_key(|f| header_rank(f));
        }
        if let Some(p) = self.own.as_mut() {
            if std::mem::take(&mut self.feed_headers) {
                // Started mid-stream: the headers it missed, at this
                // frame's time (their own may be long past).
                for h in &self.core.headers {
                    p.handle_frame(h.kind, frame.timestamp, &h.payload, wall_ms());
                }
            }
            p.handle_frame(frame.kind, frame.timestamp, &frame.payload, wall_ms());
            let Writer::Mp4(w) = &mut self.writer else {
                return;
            };
            while let Some(o) = p.poll_output() {
                w.on_output(&mut self.core, &o, p);
            }
            return;
        }
        if let Writer::Flv(w) = &mut self.writer {
            w.on_frame(&mut self.core, frame);
        }
    }

    /// An output of the packager (the stream's HLS one, or this
    /// recording's own).
    fn on_output(&mut self, out: &Output, p: &Packager) {
        if self.check_failed() {
            return;
        }
        if let Writer::Mp4(w) = &mut self.writer {
            w.on_output(&mut self.core, out, p);
        }
    }

    /// The recording ends: the last fragments or tags are written and the
    /// file finished.
    fn finish(mut self: Box<Self>, why: &str) {
        if !self.check_failed() {
            if let (Some(mut p), Writer::Mp4(w)) = (self.own.take(), &mut self.writer) {
                p.finish();
                while let Some(o) = p.poll_output() {
                    w.on_output(&mut self.core, &o, &p);
                }
            }
            match &mut self.writer {
                Writer::Mp4(w) => {
                    if let Some(f) = w.file.take() {
                        self.core.close(f.out, None);
                    }
                }
                Writer::Flv(w) => w.close(&mut self.core),
            }
        }
        let s = &self.core.status;
        log::info!(
            "record stop stream={} bytes={} dropped={}: {why}",
            s.key,
            s.bytes.load(Ordering::Relaxed),
            s.dropped.load(Ordering::Relaxed)
        );
        self.core.rec.ended(s);
    }

    /// A stopped recording replaced by a new one.
    fn release(self: Box<Self>) {
        self.core.rec.ended(&self.core.status);
    }
}

impl Recording for Recorder {
    fn stopped(&self) -> bool {
        self.stopped
    }
    fn takes_hls(&self) -> bool {
        Recorder::takes_hls(self)
    }
    fn on_frame(&mut self, frame: &Arc<Frame>) {
        Recorder::on_frame(self, frame);
    }
    fn on_output(&mut self, out: &Output, p: &Packager) {
        Recorder::on_output(self, out, p);
    }
    fn json(&self) -> Value {
        self.core.status.json()
    }
    fn failed(&self) -> bool {
        self.core.status.error().is_some()
    }
    fn finish(self: Box<Self>, why: &str) {
        Recorder::finish(self, why);
    }
    fn release(self: Box<Self>) {
        Recorder::release(self);
    }
}

// ---------------------------------------------------------------------------------------
// Fragmented MP4
// ---------------------------------------------------------------------------------------

struct Mp4File {
    out: Out,
    /// The part sequence number the file starts at: a lagging track's
    /// parts from before it belong to the previous file.
    from_seq: u64,
    /// Parts from this sequence number on are written (after a drop: the
    /// segment it resumed at).
    resume_seq: u64,
    /// The tracks its init describes.
    tracks: Vec<RenditionId>,
}

#[derive(Default)]
struct Mp4Writer {
    file: Option<Mp4File>,
    /// After a drop: nothing is written until a segment starts.
    waiting: bool,
    /// The init changed: the next segment starts a new file.
    new_init: bool,
    /// Tracks reported as not recordable.
    skipped: Vec<RenditionId>,
}

impl Mp4Writer {
    fn on_output(&mut self, core: &mut Core, out: &Output, p: &Packager) {
        match out {
            Output::InitChanged { .. } => {
                if self.file.is_some() {
                    self.new_init = true;
                }
            }
            Output::TrackSkipped(s) => {
                if !self.skipped.contains(&s.rendition) {
                    self.skipped.push(s.rendition);
                    log::warn!(
                        "record stream={}: track {} not recorded in MP4: {}",
                        core.status.key,
                        s.rendition,
                        s.reason
                    );
                }
            }
            Output::PartReady(part) => self.on_part(core, part, p),
            Output::SegmentComplete(_) => {}
        }
    }

    fn on_part(&mut self, core: &mut Core, part: &Part, p: &Packager) {
        if part.gap {
            return;
        }
        let segment_start = part.index == 0 && part.starts_with_sync;
        if segment_start {
            let rotate = self.file.as_ref().is_some_and(|f| {
                part.seq > f.from_seq && (self.new_init || core.rotation_due(&f.out))
            });
            if self.file.is_none() || rotate {
                if let Some(f) = self.file.take() {
                    core.close(f.out, None);
                }
                self.new_init = false;
                self.waiting = false;
                self.file = Self::open(core, part, p);
            } else if self.waiting {
                self.waiting = false;
                if let Some(f) = self.file.as_mut() {
                    f.resume_seq = part.seq;
                }
            }
        }
        if self.waiting {
            return;
        }
        let Some(f) = self.file.as_mut() else {
            return;
        };
        if part.seq < f.resume_seq || !f.tracks.contains(&part.rendition) {
            return;
        }
        if core.write(&mut f.out, part.wire.pieces().to_vec(), false) {
            let scale = i64::from(part.timescale.max(1));
            let from = part.decode_time as i64 * 1000 / scale;
            let to = (part.decode_time + part.duration) as i64 * 1000 / scale;
            f.out.media(from, to);
            core.status
                .current_ms
                .store(f.out.duration_ms(), Ordering::Relaxed);
        } else {
            self.waiting = true;
            core.dropped(1, &"fragments waiting over --record-queue-bytes");
        }
    }

    /// A new file at `part`, starting with the packager's combined init.
    fn open(core: &mut Core, part: &Part, p: &Packager) -> Option<Mp4File> {
        let init = p.combined_init()?;
        let tracks = p.renditions().iter().map(|r| r.id).collect();
        let mut out = core.open()?;
        if !core.write(&mut out, vec![init], true) {
            core.dropped(1, &"the disk queue is full");
            core.close(out, None);
            return None;
        }
        Some(Mp4File {
            out,
            from_seq: part.seq,
            resume_seq: part.seq,
            tracks,
        })
    }
}

// ---------------------------------------------------------------------------------------
// FLV
// ---------------------------------------------------------------------------------------

/// Keyframes of an FLV file: (time in ms from the file's start, position
/// of the tag). Bounded: past twice [`FLV_INDEX_ENTRIES`] every other entry
/// goes (and every other one after that is skipped as it comes).
#[derive(Debug, Default)]
struct KeyIndex {
    entries: Vec<(u32, u64)>,
    /// Keep one keyframe in this many.
    stride: usize,
    seen: usize,
}

impl KeyIndex {
    fn push(&mut self, ms: u32, pos: u64) {
        let stride = self.stride.max(1);
        self.seen += 1;
        if (self.seen - 1) % stride != 0 {
            return;
        }
        self.entries.push((ms, pos));
        if self.entries.len() > 2 * FLV_INDEX_ENTRIES {
            let kept: Vec<_> = self.entries.iter().copied().step_by(2).collect();
            self.entries = kept;
            self.stride = stride * 2;
        }
    }

    /// Forgets the entries at or after `pos` (their tags were dropped).
    fn truncate(&mut self, pos: u64) {
        self.entries.retain(|&(_, p)| p < pos);
    }

    /// At most `max` entries, evenly thinned.
    fn thinned(&self, max: usize) -> Vec<(u32, u64)> {
        if self.entries.len() <= max {
            return self.entries.clone();
        }
        let step = self.entries.len().div_ceil(max.max(1));
        self.entries.iter().copied().step_by(step).collect()
    }
}

/// What the file-level `onMetaData` says.
struct Meta<'a> {
    publisher: &'a [(String, Amf0Value)],
    duration_ms: u32,
    filesize: u64,
    audio: bool,
    video: bool,
    index: &'a [(u32, u64)],
}

/// Keys of the publisher's onMetaData the file's own replace.
const OWN_KEYS: &[&str] = &[
    "duration",
    "filesize",
    "datasize",
    "hasKeyframes",
    "hasVideo",
    "hasAudio",
    "hasMetadata",
    "canSeekToEnd",
    "keyframes",
    "lasttimestamp",
    "lastkeyframetimestamp",
    "lastkeyframelocation",
    "metadatacreator",
    "_padding",
];

/// The file-level `onMetaData` properties, without padding.
fn metadata_props(m: &Meta<'_>) -> Vec<(String, Amf0Value)> {
    let num = |v: f64| Amf0Value::Number(v);
    let secs = |ms: u32| num(f64::from(ms) / 1000.0);
    let times = m.index.iter().map(|&(ms, _)| secs(ms)).collect();
    let positions = m.index.iter().map(|&(_, p)| num(p as f64)).collect();
    let last = m.index.last().copied();
    let mut props: Vec<(String, Amf0Value)> = m
        .publisher
        .iter()
        .filter(|(k, _)| !OWN_KEYS.contains(&k.as_str()))
        .cloned()
        .collect();
    props.extend([
        ("duration".into(), secs(m.duration_ms)),
        ("filesize".into(), num(m.filesize as f64)),
        ("hasVideo".into(), Amf0Value::Boolean(m.video)),
        ("hasAudio".into(), Amf0Value::Boolean(m.audio)),
        ("hasMetadata".into(), Amf0Value::Boolean(true)),
        (
            "hasKeyframes".into(),
            Amf0Value::Boolean(!m.index.is_empty()),
        ),
        ("canSeekToEnd".into(), Amf0Value::Boolean(false)),
        ("lasttimestamp".into(), secs(m.duration_ms)),
        (
            "lastkeyframetimestamp".into(),
            last.map_or(num(0.0), |(ms, _)| secs(ms)),
        ),
        (
            "lastkeyframelocation".into(),
            num(last.map_or(0.0, |(_, p)| p as f64)),
        ),
        ("metadatacreator".into(), Amf0Value::string("Sluice")),
        (
            "keyframes".into(),
            Amf0Value::Object(vec![
                ("times".into(), Amf0Value::StrictArray(times)),
                ("filepositions".into(), Amf0Value::StrictArray(positions)),
            ]),
        ),
    ]);
    props
}

fn encode_metadata(props: Vec<(String, Amf0Value)>) -> BytesMut {
    let mut b = BytesMut::new();
    amf::encode(&Amf0Value::string("onMetaData"), &mut b);
    amf::encode(&Amf0Value::EcmaArray(props), &mut b);
    b
}

/// Bytes a `_padding` property costs beyond its filler: its key (2 + 8)
/// and a strict array's header (5). The filler is AMF0 nulls, one byte
/// each, which every reader skips (a long string would not do: ffmpeg
/// refuses metadata strings of 256 bytes or more).
const PADDING_COST: usize = 15;

/// The room to reserve for a file's `onMetaData`: the body with a full
/// index ([`FLV_INDEX_ENTRIES`]) and an empty padding array. Numbers are
/// 9 bytes whatever their value, so the final body fits exactly.
fn metadata_room(publisher: &[(String, Amf0Value)], audio: bool, video: bool) -> usize {
    let full = vec![(0u32, 0u64); FLV_INDEX_ENTRIES];
    let m = Meta {
        publisher,
        duration_ms: 0,
        filesize: 0,
        audio,
        video,
        index: &full,
    };
    encode_metadata(metadata_props(&m)).len() + PADDING_COST
}

/// The `onMetaData` body (AMF0: the name, then an ECMA array), padded to
/// exactly `size` bytes with a `_padding` array of nulls; None if it does
/// not fit.
fn flv_metadata(m: &Meta<'_>, size: usize) -> Option<Bytes> {
    let mut props = metadata_props(m);
    let bare = encode_metadata(props.clone()).len();
    let pad = size.checked_sub(bare + PADDING_COST)?;
    props.push((
        "_padding".into(),
        Amf0Value::StrictArray(vec![Amf0Value::Null; pad]),
    ));
    let b = encode_metadata(props);
    (b.len() == size).then(|| b.freeze())
}

/// The publisher's onMetaData properties (from its data message).
fn publisher_metadata(frame: Option<&Arc<Frame>>) -> Vec<(String, Amf0Value)> {
    let Some(f) = frame else { return Vec::new() };
    let values = amf::decode_all(&f.payload, &Default::default()).unwrap_or_default();
    match values.get(1) {
        Some(Amf0Value::EcmaArray(p) | Amf0Value::Object(p)) => p.clone(),
        _ => Vec::new(),
    }
}

/// Tags waiting to be handed to the disk together.
#[derive(Default)]
struct Batch {
    pieces: Vec<Bytes>,
    bytes: usize,
    tags: u64,
    /// File position of the batch's first tag.
    from_pos: u64,
    /// Timestamp of its first tag.
    since: Option<u32>,
    /// Tag headers and trailers, sliced as they are written.
    heads: BytesMut,
}

struct FlvFile {
    out: Out,
    /// The stream timestamp the file's time 0 is.
    base: u32,
    /// Bytes appended so far (the next tag's position).
    pos: u64,
    last_ts: u32,
    index: KeyIndex,
    publisher: Vec<(String, Amf0Value)>,
    audio: bool,
    video: bool,
    /// Size of the onMetaData body reserved at the start.
    meta_size: usize,
    batch: Batch,
}

impl FlvFile {
    /// Appends one tag to the batch.
    fn tag(&mut self, tag_type: u8, ts: u32, payload: &Bytes) {
        let b = &mut self.batch;
        if b.pieces.is_empty() {
            b.from_pos = self.pos;
            b.since = Some(ts);
        }
        if b.heads.capacity() - b.heads.len() < 15 {
            b.heads.reserve(4096);
        }
        b.heads.put_u8(tag_type);
        b.heads.put_uint(payload.len() as u64, 3);
        b.heads.put_uint(u64::from(ts & 0xFF_FFFF), 3);
        b.heads.put_u8((ts >> 24) as u8);
        b.heads.put_uint(0, 3);
        b.pieces.push(b.heads.split().freeze());
        if !payload.is_empty() {
            b.pieces.push(payload.clone());
        }
        b.heads.put_u32((11 + payload.len()) as u32);
        b.pieces.push(b.heads.split().freeze());
        let len = 11 + payload.len() + 4;
        b.bytes += len;
        b.tags += 1;
        self.pos += len as u64;
        self.last_ts = self.last_ts.max(ts);
    }

    fn batch_due(&self) -> bool {
        let b = &self.batch;
        b.bytes >= FLV_BATCH_BYTES
            || b.since
                .is_some_and(|s| self.last_ts.wrapping_sub(s) >= FLV_BATCH_MS)
    }
}

#[derive(Default)]
struct FlvWriter {
    file: Option<FlvFile>,
    /// After a drop: nothing is written until the next keyframe.
    waiting: bool,
}

impl FlvWriter {
    fn on_frame(&mut self, core: &mut Core, frame: &Arc<Frame>) {
        if frame.kind == MediaKind::Data && is_metadata(&frame.payload) {
            // Merged into the file's own onMetaData.
            return;
        }
        if frame.start_point {
            if let Some(f) = self.file.as_mut() {
                // The previous frame lasts until this keyframe.
                let ts = frame.timestamp.wrapping_sub(f.base);
                if ts <= i32::MAX as u32 {
                    f.out.media(0, i64::from(ts));
                }
            }
            let rotate = self
                .file
                .as_ref()
                .is_some_and(|f| frame.timestamp != f.base && core.rotation_due(&f.out));
            if rotate {
                self.close(core);
            }
            if let Some(f) = self.file.as_mut().filter(|_| self.waiting) {
                self.waiting = false;
                // Whatever headers came during the drop, again.
                let ts = frame.timestamp.wrapping_sub(f.base);
                for h in core.headers.iter().filter(|h| h.kind != MediaKind::Data) {
                    f.tag(h.kind.type_id(), ts, &h.payload);
                }
            } else if self.file.is_none() {
                self.file = Self::open(core, frame);
                if self.file.is_none() {
                    return;
                }
            }
        }
        if self.waiting {
            return;
        }
        let Some(f) = self.file.as_mut() else { return };
        let ts = frame.timestamp.wrapping_sub(f.base);
        if ts > i32::MAX as u32 {
            // Before the file's first keyframe (audio a little behind).
            return;
        }
        if frame.start_point && frame.kind == MediaKind::Video {
            f.index.push(ts, f.pos);
        }
        f.tag(frame.kind.type_id(), ts, &frame.payload);
        f.out.media(0, i64::from(ts));
        core.status
            .current_ms
            .store(f.out.duration_ms(), Ordering::Relaxed);
        if f.batch_due() {
            self.flush(core);
        }
    }

    /// A new file starting at the keyframe `frame`: header, placeholder
    /// metadata, the stream's headers (at time 0).
    fn open(core: &mut Core, frame: &Frame) -> Option<FlvFile> {
        let video = frame.kind == MediaKind::Video
            || core.headers.iter().any(|h| {
                matches!(
                    h.header,
                    Some(HeaderSlot::Config {
                        kind: MediaKind::Video,
                        ..
                    })
                )
            });
        let audio = frame.kind == MediaKind::Audio
            || core.headers.iter().any(|h| {
                matches!(
                    h.header,
                    Some(HeaderSlot::Config {
                        kind: MediaKind::Audio,
                        ..
                    })
                )
            });
        let publisher = publisher_metadata(
            core.headers
                .iter()
                .find(|h| h.header == Some(HeaderSlot::Metadata)),
        );
        let meta_size = metadata_room(&publisher, audio, video);
        let placeholder = flv_metadata(
            &Meta {
                publisher: &publisher,
                duration_ms: 0,
                filesize: 0,
                audio,
                video,
                index: &[],
            },
            meta_size,
        )?;
        let mut out = core.open()?;
        out.first_ms = Some(0);
        let mut f = FlvFile {
            out,
            base: frame.timestamp,
            pos: 0,
            last_ts: 0,
            index: KeyIndex::default(),
            publisher,
            audio,
            video,
            meta_size,
            batch: Batch::default(),
        };
        let header = super::flv::file_header(audio, video);
        f.pos = header.len() as u64;
        f.batch.pieces.push(header);
        f.batch.bytes = f.pos as usize;
        f.tag(18, 0, &placeholder);
        for h in core.headers.iter().filter(|h| h.kind != MediaKind::Data) {
            f.tag(h.kind.type_id(), 0, &h.payload);
        }
        let head = std::mem::take(&mut f.batch);
        f.batch.heads = head.heads;
        if !core.write(&mut f.out, head.pieces, true) {
            core.dropped(1, &"the disk queue is full");
            core.close(f.out, None);
            return None;
        }
        Some(f)
    }

    /// Hands the batch to the disk; when it does not fit, the file skips
    /// to the next keyframe (the batch's tags are dropped, positions and
    /// index entries rolled back).
    fn flush(&mut self, core: &mut Core) {
        let Some(f) = self.file.as_mut() else { return };
        if f.batch.pieces.is_empty() {
            return;
        }
        let pieces = std::mem::take(&mut f.batch.pieces);
        let (from, tags) = (f.batch.from_pos, f.batch.tags);
        f.batch.bytes = 0;
        f.batch.tags = 0;
        f.batch.since = None;
        if !core.write(&mut f.out, pieces, false) {
            f.pos = from;
            f.index.truncate(from);
            self.waiting = true;
            core.dropped(tags, &"tags waiting over --record-queue-bytes");
        }
    }

    /// Finishes the file: the last batch, then the final metadata over the
    /// placeholder.
    fn close(&mut self, core: &mut Core) {
        self.flush(core);
        self.waiting = false;
        let Some(f) = self.file.take() else { return };
        let index = f.index.thinned(FLV_INDEX_ENTRIES);
        let meta = flv_metadata(
            &Meta {
                publisher: &f.publisher,
                duration_ms: f.last_ts,
                filesize: f.pos,
                audio: f.audio,
                video: f.video,
                index: &index,
            },
            f.meta_size,
        );
        if meta.is_none() {
            log::warn!(
                "record stream={}: the final metadata does not fit its placeholder; the file keeps it",
                core.status.key
            );
        }
        core.close(f.out, meta.map(|m| (FLV_META_TAG_AT + 11, m)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta<'a>(publisher: &'a [(String, Amf0Value)], index: &'a [(u32, u64)]) -> Meta<'a> {
        Meta {
            publisher,
            duration_ms: 61_234,
            filesize: 123_456_789,
            audio: true,
            video: true,
            index,
        }
    }

    #[test]
    fn the_final_metadata_fills_its_placeholder_exactly() {
        let publisher = vec![
            ("width".to_owned(), Amf0Value::Number(1280.0)),
            ("duration".to_owned(), Amf0Value::Number(0.0)),
            ("encoder".to_owned(), Amf0Value::string("Lavf")),
        ];
        let room = metadata_room(&publisher, true, true);
        let empty = flv_metadata(&meta(&publisher, &[]), room).unwrap();
        assert_eq!(empty.len(), room);
        let full: Vec<(u32, u64)> = (0..FLV_INDEX_ENTRIES as u32)
            .map(|i| (i * 2000, 1000 + u64::from(i) * 50_000))
            .collect();
        let b = flv_metadata(&meta(&publisher, &full), room).unwrap();
        assert_eq!(b.len(), room, "a full index fits the same room");
        let more = vec![(0, 0); FLV_INDEX_ENTRIES + 1];
        assert!(
            flv_metadata(&meta(&publisher, &more), room).is_none(),
            "one entry more does not"
        );
        // Read back: the publisher's keys kept, ours replacing its
        // duration, the index as two arrays of numbers.
        let v = amf::decode_all(&b, &Default::default()).unwrap();
        assert_eq!(v[0].as_str(), Some("onMetaData"));
        assert_eq!(
            v[1].get("width").and_then(Amf0Value::as_number),
            Some(1280.0)
        );
        assert_eq!(
            v[1].get("duration").and_then(Amf0Value::as_number),
            Some(61.234)
        );
        assert_eq!(
            v[1].get("encoder").and_then(Amf0Value::as_str),
            Some("Lavf")
        );
        let Some(Amf0Value::Object(k)) = v[1].get("keyframes") else {
            panic!("no keyframes object")
        };
        let Amf0Value::StrictArray(times) = &k[0].1 else {
            panic!("times")
        };
        let Amf0Value::StrictArray(pos) = &k[1].1 else {
            panic!("filepositions")
        };
        assert_eq!(
            (k[0].0.as_str(), k[1].0.as_str()),
            ("times", "filepositions")
        );
        assert_eq!(times.len(), FLV_INDEX_ENTRIES);
        assert_eq!(times[1], Amf0Value::Number(2.0));
        assert_eq!(pos[1], Amf0Value::Number(51_000.0));
        let durations = v[1]
            .properties()
            .unwrap()
            .iter()
            .filter(|(k, _)| k == "duration")
            .count();
        assert_eq!(durations, 1, "the publisher's duration is replaced");
    }

    #[test]
    fn the_keyframe_index_stays_bounded_and_evenly_thinned() {
        let mut ix = KeyIndex::default();
        let n = 5 * FLV_INDEX_ENTRIES as u32;
        for i in 0..n {
            ix.push(i * 1000, u64::from(i) * 10);
        }
        assert!(ix.entries.len() <= 2 * FLV_INDEX_ENTRIES);
        let t = ix.thinned(FLV_INDEX_ENTRIES);
        assert!(t.len() <= FLV_INDEX_ENTRIES && t.len() > FLV_INDEX_ENTRIES / 2);
        assert_eq!(t[0], (0, 0), "the first keyframe is always indexed");
        let step = t[1].0 - t[0].0;
        assert!(t.windows(2).all(|w| w[1].0 - w[0].0 == step), "even steps");
        ix.truncate(u64::from(n / 2) * 10);
        assert!(ix.entries.iter().all(|&(_, p)| p < u64::from(n / 2) * 10));
    }
}
