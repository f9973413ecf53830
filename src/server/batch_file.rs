//! Released batches kept in memory files, so that each player's write of
//! one is a `sendfile(2)` that references the file's pages instead of
//! copying the bytes into the socket.
//!
//! A write with `sendmsg` copies every byte it sends into the socket's
//! buffers: at 1,000 players that is a thousand copies of each frame, and
//! at a 200 ms write budget the copy was the largest single item in the
//! server's profile (docs/ARCHITECTURE.md, "The write path"). A worker
//! instead appends each release's batch ([`super::queue::Batch`]), once
//! per format, to an in-memory file (`memfd_create(2)`: pages of the
//! kernel's shared memory, no disk behind them and no mount to fill), and
//! a plain TCP player's queue sends its range of that file with
//! `sendfile(2)`: the kernel hands the same pages to every player's socket
//! by reference. Measured with `sluice-limit --mode sendfile` against
//! `--mode sendmsg` (perf/README.md): a third less CPU per byte at 200 ms
//! writes, a sixth less at one write per video frame.
//!
//! Bytes in a file are never written twice: the kernel's socket buffers
//! hold references to the file's pages until the peer has acknowledged
//! them, so a rewrite would change bytes already "sent". Files are
//! append-only segments of [`SEGMENT_BYTES`]; a batch holds its segment
//! with an `Arc`, and when no queue holds the batch any more its whole
//! pages are punched out of the file (`fallocate`), so that one slow
//! player's old batch keeps its own pages, not the segment's. A segment
//! no batch holds is closed. Pages the sockets still send stay alive, with
//! their bytes, until the sockets let go of them. So the memory is what
//! the players' queues hold, plus a page at each end of a batch, plus what
//! the sockets have in flight: the same bound as the queues' (their
//! batches are charged their bytes). `sluice_batch_file_bytes` counts the
//! bytes in live segments less the pages punched out, apart from RSS
//! because it is shared memory.
//!
//! Writing a memory file does not wait on a disk (the loop never blocks),
//! but under memory pressure with swap its pages could be swapped out
//! like any anonymous memory; they live for seconds and are read within
//! milliseconds of being written.
//!
//! TLS connections encrypt per player and write their batches from memory
//! as before, and a release is appended only when a player that sends from
//! the files takes it (`Release::batch`): a worker whose players are all
//! TLS appends nothing; a worker whose `memfd_create` fails (an old kernel, the
//! descriptor limit) logs it once and writes from memory too, as does
//! `--sendfile false`.

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A new segment begins when the current one would pass this size. A
/// segment lives while any queued batch in it does (its memory does not:
/// released batches' pages are punched out); a larger one keeps a
/// descriptor open longer for a slow player, a smaller one costs more
/// `memfd_create` calls (a 3 Mbit/s stream fills one in about 2.7 s).
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// One segment: an in-memory file, appended to and never rewritten.
#[derive(Debug)]
pub struct BatchFile {
    file: File,
    /// Bytes it holds: appended, less whole pages punched out (what its
    /// drop takes back from the gauge).
    len: AtomicU64,
    /// The server-wide gauge of bytes in live segments.
    gauge: Arc<AtomicU64>,
}

impl BatchFile {
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Drop for BatchFile {
    fn drop(&mut self) {
        self.gauge
            .fetch_sub(self.len.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Where a batch's bytes are: `len` bytes from `offset` in `file`. Its
/// batch's only reference to them: dropped with the batch, when no queue
/// holds it any more, it frees the pages only it covered (below).
#[derive(Debug)]
pub struct FileSpan {
    pub file: Arc<BatchFile>,
    pub offset: u64,
    pub len: u64,
}

impl Drop for FileSpan {
    /// Punches the whole pages of this span out of the file (a segment
    /// lives while any batch in it does; without this a slow player's one
    /// old batch would keep the whole segment's memory). Pages the span
    /// shares with its neighbours stay until the segment closes. Sockets
    /// still sending these pages hold their own references: the pages
    /// leave the file, their bytes stay as they were until the sockets
    /// let go (only a partial page would be zeroed, and none is punched).
    fn drop(&mut self) {
        let page = rustix::param::page_size() as u64;
        let start = self.offset.div_ceil(page) * page;
        let end = (self.offset + self.len) / page * page;
        if end > start {
            let mode =
                rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE;
            // A failure only keeps the pages until the segment closes.
            if rustix::fs::fallocate(self.file.file(), mode, start, end - start).is_ok() {
                self.file.len.fetch_sub(end - start, Ordering::Relaxed);
                self.file.gauge.fetch_sub(end - start, Ordering::Relaxed);
            }
        }
    }
}

/// A worker's writer of batch segments.
#[derive(Debug)]
pub struct BatchFiles {
    /// The segment being appended to, and its length.
    current: Option<(Arc<BatchFile>, u64)>,
    gauge: Arc<AtomicU64>,
    /// `memfd_create` or a write failed (the descriptor limit, memory):
    /// this worker writes from memory until its next tick tries again.
    failed: bool,
    /// A failure was logged (once per worker).
    logged: bool,
}

impl BatchFiles {
    pub fn new(gauge: Arc<AtomicU64>) -> Self {
        Self {
            current: None,
            gauge,
            failed: false,
            logged: false,
        }
    }

    /// Appends `pieces` (`len` bytes together) and returns where they are;
    /// None when this worker's files failed (the batch is then written
    /// from memory).
    pub fn append(&mut self, pieces: &[Bytes], len: usize) -> Option<FileSpan> {
        if self.failed || len == 0 {
            return None;
        }
        match self.try_append(pieces, len as u64) {
            Ok(span) => Some(span),
            Err(e) => {
                if !self.logged {
                    self.logged = true;
                    log::warn!(
                        "batch files: {e}; this worker writes its players from memory until it can open one again"
                    );
                }
                self.failed = true;
                self.current = None;
                None
            }
        }
    }

    /// Closes the segment being appended to if no batch holds it (the
    /// worker's players left, or are between writes), and lets a worker
    /// whose files failed try again: called on the worker's tick, so that
    /// an idle worker holds no file and no memory.
    pub fn close_idle(&mut self) {
        self.failed = false;
        if self
            .current
            .as_ref()
            .is_some_and(|(segment, _)| Arc::strong_count(segment) == 1)
        {
            self.current = None;
        }
    }

    fn try_append(&mut self, pieces: &[Bytes], len: u64) -> io::Result<FileSpan> {
        let full = self
            .current
            .as_ref()
            .is_some_and(|(_, used)| *used > 0 && used + len > SEGMENT_BYTES);
        if self.current.is_none() || full {
            self.current = Some((Arc::new(self.segment()?), 0));
        }
        let (segment, used) = self.current.as_mut().expect("a segment");
        let offset = *used;
        // At the file's position, its end: the worker is its only writer.
        let done = super::disk::append(segment.file(), pieces)?;
        debug_assert_eq!(done, len);
        *used += len;
        // The segment's drop takes back from the gauge what it added.
        segment.len.fetch_add(len, Ordering::Relaxed);
        self.gauge.fetch_add(len, Ordering::Relaxed);
        Ok(FileSpan {
            file: segment.clone(),
            offset,
            len,
        })
    }

    fn segment(&self) -> io::Result<BatchFile> {
        let fd = rustix::fs::memfd_create("sluice-batches", rustix::fs::MemfdFlags::CLOEXEC)?;
        Ok(BatchFile {
            file: File::from(fd),
            len: AtomicU64::new(0),
            gauge: self.gauge.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Appends land one after another and read back as written; a full
    /// segment is followed by a new one; a segment lives while a span
    /// holds it, and an idle worker closes the last one.
    #[test]
    fn segments_hold_what_was_appended_and_close_when_unheld() {
        let gauge = Arc::new(AtomicU64::new(0));
        let mut files = BatchFiles::new(gauge.clone());
        let a = files.append(&[Bytes::from_static(b"ab"), Bytes::from_static(b"cde")], 5);
        let a = a.expect("memfd_create works here");
        let b = files.append(&[Bytes::from_static(b"fg")], 2).unwrap();
        assert!(Arc::ptr_eq(&a.file, &b.file));
        assert_eq!((a.offset, b.offset), (0, 5));
        let mut got = [0u8; 7];
        a.file.file().read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got, b"abcdefg");
        assert_eq!(gauge.load(Ordering::Relaxed), 7);

        // Past SEGMENT_BYTES: a new segment, from offset 0.
        let big = Bytes::from(vec![7u8; SEGMENT_BYTES as usize - 4]);
        let c = files.append(std::slice::from_ref(&big), big.len()).unwrap();
        assert!(!Arc::ptr_eq(&c.file, &a.file));
        assert_eq!(c.offset, 0);
        let small = Bytes::from_static(b"tail");
        let d = files.append(std::slice::from_ref(&small), 4).unwrap();
        assert!(Arc::ptr_eq(&c.file, &d.file));
        assert_eq!(gauge.load(Ordering::Relaxed), 7 + SEGMENT_BYTES);

        // The first segment goes when its spans do.
        drop((a, b));
        assert_eq!(gauge.load(Ordering::Relaxed), SEGMENT_BYTES);
        // A released span's whole pages leave the file (its last, shared
        // with `d`, stays), and what is left reads as it was.
        let page = rustix::param::page_size() as u64;
        let kept = page - 4; // c's last page, shared with d
        let on_disk = |f: &BatchFile| {
            use std::os::unix::fs::MetadataExt;
            f.file().metadata().unwrap().blocks() * 512
        };
        let file = c.file.clone();
        drop(c);
        assert_eq!(gauge.load(Ordering::Relaxed), kept + 4);
        assert!(
            on_disk(&file) <= page,
            "{} bytes still held",
            on_disk(&file)
        );
        let mut tail = [0u8; 4];
        file.file().read_exact_at(&mut tail, d.offset).unwrap();
        assert_eq!(&tail, b"tail");
        drop(file);
        // The current segment stays while a span holds it, then an idle
        // tick closes it.
        files.close_idle();
        assert_eq!(gauge.load(Ordering::Relaxed), kept + 4);
        drop(d);
        files.close_idle();
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
        // And the next append opens a new one.
        let e = files.append(&[Bytes::from_static(b"h")], 1).unwrap();
        assert_eq!(e.offset, 0);
    }
}
