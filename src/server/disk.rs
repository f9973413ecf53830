//! Files, off the loop: a bounded pool of helper threads that open, write,
//! sync, rename, delete, read and stat files for the workers (recording
//! writes, video on demand reads), so that no worker ever waits for a disk.
//!
//! ```text
//!  worker (never blocks)                       disk thread (lane = file id % threads)
//!  ─────────────────────                       ──────────────────────────────────────
//!  let f = pool.file(path)          a handle, nothing opened yet
//!  pool.submit(&f, Op::Create, r) ─► bounded queue of f's lane ─► create ─► r(Ok(Done::Created))
//!  pool.submit(&f, Op::Append(..)) ─►          (full: Err(Full) at once)   write_vectored
//!  pool.submit(&f, Op::Sync, ..)  ─►                                        fdatasync
//!                                               the reply: a closure run here (counters, a
//!                                               Message::Disk posted to a worker's inbox)
//! ```
//!
//! * **Order.** Every job of one [`DiskFile`] runs on the same thread (its
//!   lane), in the order submitted: a `Create` then `Append`s then a `Sync`
//!   may be submitted back to back, without waiting for each answer.
//!   Different files run in parallel, one per thread at most.
//! * **Bounds.** Each lane's queue holds at most `queue` jobs; a job that
//!   does not fit is handed back at once ([`Full`]): the caller decides
//!   (a recording drops to the next keyframe, a read answers 503). Jobs
//!   hold `Bytes` (shared, never copied here), so the memory a caller
//!   queues is its own to bound; [`MAX_READ`] bounds a read.
//! * **Failures.** An error is a [`DiskError`] with the path and the OS's
//!   reason. After a write to a file fails (a full disk, say), every later
//!   write to it fails at once with the same reason, so a file never gets
//!   a hole in the middle.
//! * **Answers.** A job's [`Reply`] runs on the disk thread: it must not
//!   block (update counters, submit another job, post to a worker).
//!   `Shared::disk_reply` (in `shared.rs`, which builds on this module)
//!   makes the reply that posts the result to a worker's inbox as
//!   `Message::Disk`, for the connection that asked (the worker hands it
//!   to that connection's `on_disk`).
//!
//! Test hooks: the environment variables `SLUICE_TEST_DISK_DELAY_MS` and
//! `SLUICE_TEST_DISK_READ_DELAY_MS`, read when the pool starts, make every
//! write and sync, or every read, open and stat, sleep that long first:
//! the tests simulate a disk slower than the stream (recording) or a cold
//! disk (video on demand) with them. They are for tests only; nothing else
//! reads them.

use super::base::ConnId;
use bytes::Bytes;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

/// Jobs waiting per thread. A recording queues a few jobs a second (one
/// per fragment or batch of tags, a sync a second), so this is minutes of
/// a stalled disk for dozens of recordings; the bytes behind the jobs are
/// bounded by each caller.
pub const DISK_QUEUE: usize = 1024;
/// Most bytes one [`Op::Read`] returns: a read buffer is allocated whole.
pub const MAX_READ: usize = 8 << 20;
/// Most entries one [`Op::List`] returns, and how deep it walks.
pub const MAX_LIST: usize = 100_000;
const MAX_LIST_DEPTH: usize = 8;
/// Names tried when a created file's name is taken (`a.mp4`, `a-1.mp4`, ...).
const MAX_NAME_TRIES: u32 = 1000;
/// The test-only delays (see the module documentation).
pub const TEST_DELAY_ENV: &str = "SLUICE_TEST_DISK_DELAY_MS";
pub const TEST_READ_DELAY_ENV: &str = "SLUICE_TEST_DISK_READ_DELAY_MS";

/// A test-only delay from the environment variable `name`, logged once.
fn test_delay(name: &str, what: &str) -> Option<Duration> {
    let d = std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)?;
    log::warn!("{name} is set: every disk {what} waits {d:?} first (tests only)");
    Some(d)
}

/// The test-only delays a disk thread applies.
#[derive(Debug, Clone, Copy)]
struct Delays {
    write: Option<Duration>,
    read: Option<Duration>,
}

/// What a disk thread does with a file.
#[derive(Debug)]
pub enum Op {
    /// Creates a new file for writing, with any missing directories. An
    /// existing file is never replaced: when the name is taken, `-1`,
    /// `-2`, ... go before the extension (`a.mp4` → `a-1.mp4`). Answers
    /// [`Done::Created`] with the path used.
    Create,
    /// Opens an existing file for reading: [`Done::Opened`].
    Open,
    /// Opens an existing regular file for reading only if it lies under
    /// the directory `root`: the path of the file actually opened (read
    /// back from the open descriptor, so a symbolic link swapped in
    /// between cannot escape) must be inside `root` once both are
    /// resolved, unless `follow_symlinks`. A directory, a device or a file
    /// outside `root` is refused (`PermissionDenied`, `InvalidInput`).
    /// [`Done::Opened`]. Video on demand opens its files with this.
    OpenUnder {
        root: PathBuf,
        follow_symlinks: bool,
    },
    /// Appends the pieces, in order, with vectored writes:
    /// [`Done::Written`] (bytes).
    Append(Vec<Bytes>),
    /// Writes at an offset (a header rewritten once the file is complete):
    /// [`Done::Written`].
    WriteAt { offset: u64, data: Bytes },
    /// `fdatasync`: what was written is on the disk. [`Done::Synced`].
    Sync,
    /// Reads up to `len` bytes (at most [`MAX_READ`]) at `offset`; fewer
    /// at the end of the file. [`Done::Read`].
    Read { offset: u64, len: usize },
    /// The file's size and times (of the open file, else of the path):
    /// [`Done::Stat`].
    Stat,
    /// Renames the file (the created path, else the handle's path) to
    /// `to`, never replacing an existing file. [`Done::Renamed`].
    Rename(PathBuf),
    /// Deletes the file at the handle's path. [`Done::Deleted`].
    Delete,
    /// Closes the open file now (it closes anyway when the last handle
    /// goes). [`Done::Closed`].
    Close,
    /// The regular files under the handle's path (a directory), walked up
    /// to eight levels deep, at most `max` (and [`MAX_LIST`]) of them:
    /// [`Done::Listed`]. A missing directory lists nothing.
    List { max: usize },
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Open | Op::OpenUnder { .. } => "open",
            Op::Append(_) => "append",
            Op::WriteAt { .. } => "write",
            Op::Sync => "sync",
            Op::Read { .. } => "read",
            Op::Stat => "stat",
            Op::Rename(_) => "rename",
            Op::Delete => "delete",
            Op::Close => "close",
            Op::List { .. } => "list",
        }
    }

    fn writes(&self) -> bool {
        matches!(self, Op::Append(_) | Op::WriteAt { .. } | Op::Sync)
    }

    fn reads(&self) -> bool {
        matches!(
            self,
            Op::Read { .. } | Op::Open | Op::OpenUnder { .. } | Op::Stat
        )
    }
}

/// A file's size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub len: u64,
    pub modified: Option<SystemTime>,
}

impl Meta {
    fn of(m: &std::fs::Metadata) -> Meta {
        Meta {
            len: m.len(),
            modified: m.modified().ok(),
        }
    }
}

/// What a job did.
#[derive(Debug)]
pub enum Done {
    Created(PathBuf),
    Opened(Meta),
    Written(u64),
    Synced,
    Read(Bytes),
    Stat(Meta),
    Renamed(PathBuf),
    Deleted,
    Closed,
    Listed(Vec<(PathBuf, Meta)>),
}

/// Why a job failed: what was done, to which path, and the OS's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskError {
    pub kind: io::ErrorKind,
    pub message: String,
}

impl DiskError {
    fn new(op: &str, path: &Path, e: &io::Error) -> DiskError {
        DiskError {
            kind: e.kind(),
            message: format!("{op} {}: {e}", path.display()),
        }
    }
}

impl fmt::Display for DiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DiskError {}

/// A job's result.
pub type DiskResult = Result<Done, DiskError>;

/// A result for a connection, posted to its worker's inbox
/// (`Shared::disk_reply` in `shared.rs`).
#[derive(Debug)]
pub struct DiskReply {
    pub conn: ConnId,
    /// The caller's own number for the job (which read this answers).
    pub tag: u64,
    pub result: DiskResult,
}

/// Where a job's result goes.
pub enum Reply {
    /// Nowhere (a failure is logged at debug level).
    None,
    /// Run on the disk thread with the result. It must not block.
    Call(Box<dyn FnOnce(DiskResult) + Send>),
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reply::None => "Reply::None",
            Reply::Call(_) => "Reply::Call",
        })
    }
}

impl Reply {
    /// Runs `f` on the disk thread with the result.
    pub fn call(f: impl FnOnce(DiskResult) + Send + 'static) -> Reply {
        Reply::Call(Box::new(f))
    }
}

/// A job that did not fit in its lane's queue, handed back.
#[derive(Debug)]
pub struct Full(pub Op, pub Reply);

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} not queued: the disk queue is full", self.0.name())
    }
}

struct FileState {
    id: u64,
    /// The path asked for.
    path: PathBuf,
    /// The OS file and the path it was created or opened at.
    open: Mutex<Option<(File, PathBuf)>>,
    /// Where the file is: the path asked for, then the one it was created
    /// or opened at, then the one it was renamed to (kept after a close).
    at: Mutex<PathBuf>,
    /// Set by the first failed write: later writes fail with it.
    failed: OnceLock<DiskError>,
}

/// A file handle: the path, and the open file once a disk thread opened
/// it. Cheap to clone; the file closes when the last clone goes (or at
/// [`Op::Close`]).
#[derive(Clone)]
pub struct DiskFile(Arc<FileState>);

impl fmt::Debug for DiskFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskFile")
            .field("id", &self.0.id)
            .field("path", &self.0.path)
            .finish_non_exhaustive()
    }
}

impl DiskFile {
    /// The path asked for (a created file may have another, see
    /// [`Op::Create`]).
    pub fn requested_path(&self) -> &Path {
        &self.0.path
    }

    /// Where the file is now: the path it was created at (see
    /// [`Op::Create`]) or renamed to, else the path asked for.
    pub fn path(&self) -> PathBuf {
        super::base::locked(&self.0.at).clone()
    }

    /// The first write error, once a write failed.
    pub fn failed(&self) -> Option<&DiskError> {
        self.0.failed.get()
    }
}

struct Job {
    file: DiskFile,
    op: Op,
    reply: Reply,
}

/// The disk helper threads: see the module documentation.
pub struct DiskPool {
    lanes: Vec<SyncSender<Job>>,
    next_file: AtomicU64,
    /// Jobs queued, running or being answered, every lane.
    pending: Arc<AtomicUsize>,
}

impl fmt::Debug for DiskPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskPool")
            .field("threads", &self.lanes.len())
            .field("pending", &self.pending())
            .finish()
    }
}

impl DiskPool {
    /// Starts `threads` helper threads (at least one), each with a queue
    /// of `queue` jobs.
    pub fn new(threads: usize, queue: usize) -> io::Result<DiskPool> {
        let delays = Delays {
            write: test_delay(TEST_DELAY_ENV, "write"),
            read: test_delay(TEST_READ_DELAY_ENV, "read"),
        };
        let pending = Arc::new(AtomicUsize::new(0));
        let mut lanes = Vec::new();
        for i in 0..threads.max(1) {
            let (tx, rx) = sync_channel::<Job>(queue.max(1));
            let pending = pending.clone();
            std::thread::Builder::new()
                .name(format!("sluice-disk-{i}"))
                .spawn(move || run(&rx, delays, &pending))?;
            lanes.push(tx);
        }
        Ok(DiskPool {
            lanes,
            next_file: AtomicU64::new(0),
            pending,
        })
    }

    /// A handle for `path`; nothing is opened until a job asks. Its jobs
    /// run in order, on one thread.
    pub fn file(&self, path: impl Into<PathBuf>) -> DiskFile {
        let path = path.into();
        DiskFile(Arc::new(FileState {
            id: self.next_file.fetch_add(1, Ordering::Relaxed),
            at: Mutex::new(path.clone()),
            path,
            open: Mutex::new(None),
            failed: OnceLock::new(),
        }))
    }

    /// Queues `op` on `file`'s thread; never blocks. A full queue hands
    /// the job back.
    pub fn submit(&self, file: &DiskFile, op: Op, reply: Reply) -> Result<(), Full> {
        let lane = &self.lanes[(file.0.id % self.lanes.len() as u64) as usize];
        self.pending.fetch_add(1, Ordering::Relaxed);
        let job = Job {
            file: file.clone(),
            op,
            reply,
        };
        match lane.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => {
                self.pending.fetch_sub(1, Ordering::Relaxed);
                Err(Full(j.op, j.reply))
            }
        }
    }

    /// Jobs queued or running now (for /metrics).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Waits until every job queued so far ran and was answered, or
    /// `limit` passed (shutdown: recordings finish their files). True when
    /// the pool is idle.
    pub fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while self.pending() > 0 {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Helper threads.
    pub fn threads(&self) -> usize {
        self.lanes.len()
    }
}

fn run(rx: &Receiver<Job>, delays: Delays, pending: &AtomicUsize) {
    while let Ok(job) = rx.recv() {
        if let (Some(d), true) = (delays.write, job.op.writes()) {
            std::thread::sleep(d);
        }
        if let (Some(d), true) = (delays.read, job.op.reads()) {
            std::thread::sleep(d);
        }
        let name = job.op.name();
        let result = execute(&job.file, job.op);
        match job.reply {
            Reply::Call(f) => f(result),
            Reply::None => {
                if let Err(e) = result {
                    log::debug!("disk {name}: {e}");
                }
            }
        }
        // After the answer: a pool with nothing pending has answered all.
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `a/b.mp4` → `a/b-n.mp4` (the extension kept; `b.tar.gz` → `b-n.tar.gz`
/// is not attempted: the last extension only).
fn numbered(path: &Path, n: u32) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    let ext = path.extension().map(|s| s.to_string_lossy().into_owned());
    let name = match (stem, ext) {
        (Some(s), Some(e)) => format!("{s}-{n}.{e}"),
        (Some(s), None) => format!("{s}-{n}"),
        _ => format!("{n}"),
    };
    path.with_file_name(name)
}

fn create(path: &Path) -> io::Result<(File, PathBuf)> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    for n in 0..MAX_NAME_TRIES {
        let p = if n == 0 {
            path.to_owned()
        } else {
            numbered(path, n)
        };
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(f) => return Ok((f, p)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!("{MAX_NAME_TRIES} names taken"),
    ))
}

/// Writes every piece, looping over partial writes.
pub(super) fn append(mut f: &File, pieces: &[Bytes]) -> io::Result<u64> {
    let total: usize = pieces.iter().map(Bytes::len).sum();
    let (mut i, mut off) = (0usize, 0usize);
    let mut written = 0usize;
    while written < total {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity((pieces.len() - i).min(1024));
        for (k, p) in pieces[i..].iter().enumerate().take(1024) {
            let from = if k == 0 { off } else { 0 };
            if from < p.len() {
                slices.push(IoSlice::new(&p[from..]));
            }
        }
        let n = match f.write_vectored(&slices) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "wrote nothing")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        written += n;
        let mut left = n;
        while left > 0 {
            let here = pieces[i].len() - off;
            if left >= here {
                left -= here;
                i += 1;
                off = 0;
            } else {
                off += left;
                left = 0;
            }
        }
        while i < pieces.len() && pieces[i].len() == off {
            i += 1;
            off = 0;
        }
    }
    Ok(total as u64)
}

fn read_at(f: &File, offset: u64, len: usize) -> io::Result<Bytes> {
    let len = len.min(MAX_READ);
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(Bytes::from(buf))
}

/// See [`Op::OpenUnder`].
fn open_under(
    path: &Path,
    root: &Path,
    follow_symlinks: bool,
) -> io::Result<(std::fs::Metadata, File)> {
    use std::os::fd::AsRawFd;
    let root = std::fs::canonicalize(root)?;
    let f = File::open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if !follow_symlinks {
        // What was opened, not what the path says now.
        let real = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
            .or_else(|_| std::fs::canonicalize(path))?;
        if !real.starts_with(&root) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "resolves to {}, outside {} (a symbolic link?)",
                    real.display(),
                    root.display()
                ),
            ));
        }
    }
    Ok((m, f))
}

fn list(dir: &Path, max: usize) -> io::Result<Vec<(PathBuf, Meta)>> {
    let max = max.min(MAX_LIST);
    let mut out = Vec::new();
    let mut todo = vec![(dir.to_owned(), 0usize)];
    while let Some((d, depth)) = todo.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let ty = entry.file_type()?;
            if ty.is_dir() && depth < MAX_LIST_DEPTH {
                todo.push((entry.path(), depth + 1));
            } else if ty.is_file() {
                if out.len() >= max {
                    return Ok(out);
                }
                if let Ok(m) = entry.metadata() {
                    out.push((entry.path(), Meta::of(&m)));
                }
            }
        }
    }
    Ok(out)
}

fn execute(file: &DiskFile, op: Op) -> DiskResult {
    let st = &file.0;
    let name = op.name();
    if op.writes() {
        if let Some(e) = st.failed.get() {
            return Err(DiskError {
                kind: e.kind,
                message: format!("an earlier write failed: {}", e.message),
            });
        }
    }
    let mut open = super::base::locked(&st.open);
    let path = open
        .as_ref()
        .map_or_else(|| st.path.clone(), |(_, p)| p.clone());
    let fail = |e: io::Error| DiskError::new(name, &path, &e);
    let result = match op {
        Op::Create => create(&st.path).map(|(f, p)| {
            *open = Some((f, p.clone()));
            Done::Created(p)
        }),
        Op::Open => match File::open(&st.path).and_then(|f| Ok((f.metadata()?, f))) {
            Ok((m, f)) => {
                *open = Some((f, st.path.clone()));
                Ok(Done::Opened(Meta::of(&m)))
            }
            Err(e) => Err(e),
        },
        Op::OpenUnder {
            root,
            follow_symlinks,
        } => match open_under(&st.path, &root, follow_symlinks) {
            Ok((m, f)) => {
                *open = Some((f, st.path.clone()));
                Ok(Done::Opened(Meta::of(&m)))
            }
            Err(e) => Err(e),
        },
        Op::Close => {
            *open = None;
            Ok(Done::Closed)
        }
        Op::Stat => match open.as_ref() {
            Some((f, _)) => f.metadata(),
            None => std::fs::metadata(&st.path),
        }
        .map(|m| Done::Stat(Meta::of(&m))),
        Op::Rename(to) => {
            let from = path.clone();
            // Never replace a file (a recording finished a moment ago with
            // the same name): link to the new name, then drop the old one.
            std::fs::hard_link(&from, &to)
                .and_then(|()| std::fs::remove_file(&from))
                .map(|()| {
                    if let Some((_, p)) = open.as_mut() {
                        *p = to.clone();
                    }
                    Done::Renamed(to)
                })
        }
        Op::Delete => std::fs::remove_file(&path).map(|()| Done::Deleted),
        Op::List { max } => list(&path, max).map(Done::Listed),
        Op::Append(_) | Op::WriteAt { .. } | Op::Sync | Op::Read { .. } => {
            match (open.as_ref(), op) {
                (None, _) => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the file is not open",
                )),
                (Some((f, _)), Op::Append(pieces)) => append(f, &pieces).map(Done::Written),
                (Some((f, _)), Op::WriteAt { offset, data }) => f
                    .write_all_at(&data, offset)
                    .map(|()| Done::Written(data.len() as u64)),
                (Some((f, _)), Op::Sync) => f.sync_data().map(|()| Done::Synced),
                (Some((f, _)), Op::Read { offset, len }) => read_at(f, offset, len).map(Done::Read),
                (Some(_), _) => unreachable!("matched above"),
            }
        }
    };
    let result = result.map_err(fail);
    if let Ok(Done::Created(p) | Done::Renamed(p)) = &result {
        *super::base::locked(&st.at) = p.clone();
    }
    if let Err(e) = &result {
        if name != "read" && name != "stat" && name != "open" && name != "list" {
            let _ = st.failed.set(e.clone());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// Submits `op` and waits for its result (tests only: a worker never
    /// waits).
    fn run_op(pool: &DiskPool, f: &DiskFile, op: Op) -> DiskResult {
        let (tx, rx) = channel();
        pool.submit(f, op, Reply::call(move |r| tx.send(r).unwrap()))
            .unwrap();
        rx.recv().unwrap()
    }

    #[test]
    fn writes_in_order_then_reads_back_a_range() {
        let d = dir("order");
        let pool = DiskPool::new(2, 64).unwrap();
        let f = pool.file(d.join("sub/a.bin"));
        // Submitted back to back, without waiting: they run in order.
        pool.submit(&f, Op::Create, Reply::None).unwrap();
        for i in 0..50u8 {
            let pieces = vec![
                Bytes::from(vec![i; 3]),
                Bytes::new(),
                Bytes::from(vec![i; 5]),
            ];
            pool.submit(&f, Op::Append(pieces), Reply::None).unwrap();
        }
        let patch = Bytes::from_static(b"HEAD");
        assert!(matches!(
            run_op(
                &pool,
                &f,
                Op::WriteAt {
                    offset: 0,
                    data: patch
                }
            ),
            Ok(Done::Written(4))
        ));
        assert!(matches!(run_op(&pool, &f, Op::Sync), Ok(Done::Synced)));
        let Ok(Done::Stat(m)) = run_op(&pool, &f, Op::Stat) else {
            panic!("stat")
        };
        assert_eq!(m.len, 400);
        let Ok(Done::Read(b)) = run_op(&pool, &f, Op::Read { offset: 0, len: 12 }) else {
            panic!("read")
        };
        assert_eq!(&b[..], b"HEAD\0\0\0\0\x01\x01\x01\x01");
        let Ok(Done::Read(b)) = run_op(
            &pool,
            &f,
            Op::Read {
                offset: 396,
                len: 100,
            },
        ) else {
            panic!("read at the end")
        };
        assert_eq!(&b[..], &[49u8; 4], "short at the end of the file");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn create_never_replaces_and_rename_never_overwrites() {
        let d = dir("names");
        let pool = DiskPool::new(1, 16).unwrap();
        let a = pool.file(d.join("x.mp4"));
        let b = pool.file(d.join("x.mp4"));
        assert_eq!(
            run_op(&pool, &a, Op::Create).unwrap_created(),
            d.join("x.mp4")
        );
        assert_eq!(
            run_op(&pool, &b, Op::Create).unwrap_created(),
            d.join("x-1.mp4")
        );
        assert_eq!(b.path(), d.join("x-1.mp4"), "the handle knows where it is");
        assert_eq!(b.requested_path(), d.join("x.mp4"));
        let err = run_op(&pool, &b, Op::Rename(d.join("x.mp4"))).unwrap_err();
        assert_eq!(err.kind, io::ErrorKind::AlreadyExists, "{err}");
        let c = pool.file(d.join("x-1.mp4"));
        assert!(matches!(
            run_op(&pool, &c, Op::Rename(d.join("y.mp4"))),
            Ok(Done::Renamed(_))
        ));
        let Ok(Done::Listed(mut l)) = run_op(&pool, &pool.file(&d), Op::List { max: 10 }) else {
            panic!("list")
        };
        l.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<_> = l.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(names, [d.join("x.mp4"), d.join("y.mp4")]);
        assert!(matches!(
            run_op(&pool, &pool.file(d.join("y.mp4")), Op::Delete),
            Ok(Done::Deleted)
        ));
        let Ok(Done::Listed(l)) = run_op(&pool, &pool.file(d.join("none")), Op::List { max: 10 })
        else {
            panic!("list of a missing directory")
        };
        assert!(l.is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn errors_name_the_path_and_a_failed_file_takes_no_more_writes() {
        let d = dir("errors");
        let pool = DiskPool::new(1, 16).unwrap();
        let missing = pool.file(d.join("nope.flv"));
        let e = run_op(&pool, &missing, Op::Open).unwrap_err();
        assert_eq!(e.kind, io::ErrorKind::NotFound);
        assert!(e.message.contains("nope.flv"), "{e}");
        let e = run_op(&pool, &missing, Op::Append(vec![Bytes::from_static(b"x")])).unwrap_err();
        assert!(e.message.contains("not open"), "{e}");
        let e2 = run_op(&pool, &missing, Op::Sync).unwrap_err();
        assert!(e2.message.contains("an earlier write failed"), "{e2}");
        assert!(missing.failed().is_some());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_full_queue_hands_the_job_back() {
        // One thread held by a job that waits for the test: the queue of
        // one fills, and the next submit comes back.
        let pool = DiskPool::new(1, 1).unwrap();
        let f = pool.file(std::env::temp_dir());
        let (go_tx, go_rx) = channel::<()>();
        pool.submit(
            &f,
            Op::Stat,
            Reply::call(move |_| {
                let _ = go_rx.recv();
            }),
        )
        .unwrap();
        // The first job may still be queued rather than running: fill
        // until a submit is refused.
        let mut refused = None;
        for _ in 0..3 {
            if let Err(full) = pool.submit(&f, Op::Stat, Reply::None) {
                refused = Some(full);
                break;
            }
        }
        let full = refused.expect("a queue of one job refuses a third");
        assert!(full.to_string().contains("queue is full"), "{full}");
        go_tx.send(()).unwrap();
    }

    #[test]
    fn open_under_refuses_links_out_of_the_root_and_directories() {
        let d = dir("under");
        let root = d.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/in.mp4"), b"inside").unwrap();
        std::fs::write(d.join("secret.mp4"), b"outside").unwrap();
        std::os::unix::fs::symlink(d.join("secret.mp4"), root.join("link.mp4")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/in.mp4"), root.join("inner.mp4")).unwrap();
        let pool = DiskPool::new(1, 16).unwrap();
        let open = |name: &str, follow: bool| {
            let f = pool.file(root.join(name));
            let op = Op::OpenUnder {
                root: root.clone(),
                follow_symlinks: follow,
            };
            run_op(&pool, &f, op).map(|_| ())
        };
        assert!(open("sub/in.mp4", false).is_ok());
        assert!(open("inner.mp4", false).is_ok(), "a link that stays inside");
        let e = open("link.mp4", false).unwrap_err();
        assert_eq!(e.kind, io::ErrorKind::PermissionDenied, "{e}");
        assert!(e.message.contains("outside"), "{e}");
        assert!(open("link.mp4", true).is_ok(), "follow_symlinks allows it");
        let e = open("sub", false).unwrap_err();
        assert_eq!(e.kind, io::ErrorKind::InvalidInput, "{e}");
        let e = open("missing.mp4", false).unwrap_err();
        assert_eq!(e.kind, io::ErrorKind::NotFound, "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered(Path::new("/r/a.mp4"), 2), Path::new("/r/a-2.mp4"));
        assert_eq!(numbered(Path::new("/r/a"), 1), Path::new("/r/a-1"));
    }

    trait Created {
        fn unwrap_created(self) -> PathBuf;
    }

    impl Created for DiskResult {
        fn unwrap_created(self) -> PathBuf {
            match self {
                Ok(Done::Created(p)) => p,
                other => panic!("expected Created, got {other:?}"),
            }
        }
    }
}
