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
//! with an `Arc`, and a segment no queued batch holds is closed, its pages
//! freed once the sockets have let go of them. So the memory is what the
//! players' queues hold, rounded up to whole segments, plus what the
//! sockets still have in flight: the same bound as the queues' (their
//! batches are charged their bytes), counted apart in
//! `sluice_batch_file_bytes` because it is shared memory, not in the
//! process's RSS.
//!
//! Writing a memory file does not wait on a disk (the loop never blocks),
//! but under memory pressure with swap its pages could be swapped out
//! like any anonymous memory; they live for seconds and are read within
//! milliseconds of being written.
//!
//! TLS connections encrypt per player and write their batches from memory
//! as before; a worker whose `memfd_create` fails (an old kernel, the
//! descriptor limit) logs it once and writes from memory too, as does
//! `--sendfile false`.

use bytes::Bytes;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A new segment begins when the current one would pass this size. A
/// segment lives while any queued batch in it does: a larger one pins more
/// memory for a slow player, a smaller one costs more descriptors and
/// `memfd_create` calls (a 3 Mbit/s stream fills one in about 2.7 s).
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// One segment: an in-memory file, appended to and never rewritten.
#[derive(Debug)]
pub struct BatchFile {
    file: File,
    /// Bytes written to it (the worker that appends is the only writer).
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

/// Where a batch's bytes are: `len` bytes from `offset` in `file`.
#[derive(Debug, Clone)]
pub struct FileSpan {
    pub file: Arc<BatchFile>,
    pub offset: u64,
}

/// A worker's writer of batch segments.
#[derive(Debug)]
pub struct BatchFiles {
    /// The segment being appended to, and its length.
    current: Option<(Arc<BatchFile>, u64)>,
    gauge: Arc<AtomicU64>,
    /// `memfd_create` or a write failed: this worker writes from memory.
    failed: bool,
}

impl BatchFiles {
    pub fn new(gauge: Arc<AtomicU64>) -> Self {
        Self {
            current: None,
            gauge,
            failed: false,
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
                log::warn!("batch files: {e}; this worker writes its players from memory");
                self.failed = true;
                self.current = None;
                None
            }
        }
    }

    /// Closes the segment being appended to if no batch holds it (the
    /// worker's players left, or are between writes): called on the
    /// worker's tick, so that an idle worker holds no file and no memory.
    pub fn close_idle(&mut self) {
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
        // The segment's `File` is shared (`&File` writes at the file's
        // position, the end here): one writev, the rest piece by piece if
        // the kernel took less.
        let mut file = segment.file();
        let slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
        let mut done = file.write_vectored(&slices)? as u64;
        if done < len {
            let mut skip = done;
            for p in pieces {
                let plen = p.len() as u64;
                if skip >= plen {
                    skip -= plen;
                    continue;
                }
                file.write_all(&p[skip as usize..])?;
                done += plen - skip;
                skip = 0;
            }
        }
        debug_assert_eq!(done, len);
        *used += len;
        // The segment's drop takes back from the gauge what it added.
        segment.len.fetch_add(len, Ordering::Relaxed);
        self.gauge.fetch_add(len, Ordering::Relaxed);
        Ok(FileSpan {
            file: segment.clone(),
            offset,
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
        let big = Bytes::from(vec![7u8; SEGMENT_BYTES as usize]);
        let c = files.append(std::slice::from_ref(&big), big.len()).unwrap();
        assert!(!Arc::ptr_eq(&c.file, &a.file));
        assert_eq!(c.offset, 0);
        assert_eq!(gauge.load(Ordering::Relaxed), 7 + SEGMENT_BYTES);

        // The first segment goes when its spans do.
        drop((a, b));
        assert_eq!(gauge.load(Ordering::Relaxed), SEGMENT_BYTES);
        // The current one stays while a span holds it, then an idle tick
        // closes it.
        files.close_idle();
        assert_eq!(gauge.load(Ordering::Relaxed), SEGMENT_BYTES);
        drop(c);
        files.close_idle();
        assert_eq!(gauge.load(Ordering::Relaxed), 0);
        // And the next append opens a new one.
        let d = files.append(&[Bytes::from_static(b"h")], 1).unwrap();
        assert_eq!(d.offset, 0);
    }
}
