//! A connection's output queue: references to shared frames and the
//! connection's own control bytes, written with one `write_vectored` over as
//! many queued items as the socket takes, or, for batches kept in a batch
//! file, one `send_file` from there (plain sockets: `write_to_sink`).
//!
//! Media is bounded by what it holds in memory: the caller asks
//! [`OutQueue::media_cost`] (unsent bytes plus a per-item overhead, so that
//! a queue of 1-byte frames is charged what each really costs,
//! docs/hardening.md case 40) before pushing and, on overflow, calls
//! [`OutQueue::drop_unstarted_media`] and skips to the next keyframe. A
//! frame already partly written is never dropped (the peer's chunk stream
//! would break). Control messages are bounded separately, the same way
//! ([`OutQueue::control_bytes`]): a peer that never reads its replies is
//! closed.

use super::batch_file::FileSpan;
use super::stream::{Format, Frame, FRAME_OVERHEAD};
use crate::wire::WireForm;
use bytes::Bytes;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;

/// Most iovecs handed to one `writev` (Linux's IOV_MAX is 1024). 256 covers
/// ~512 KiB of 4 KiB chunks: more than a socket buffer takes at once.
pub const MAX_IOVECS: usize = 256;
/// The iovec array used when the queue holds few pieces (the common case for
/// a player keeping up: one frame, a few chunks).
const SMALL_IOVECS: usize = 16;
/// Enough for a 100 KB keyframe at 4 KiB chunks (50 pieces).
const MEDIUM_IOVECS: usize = 64;

/// What a queued media frame costs beyond its unsent bytes: its place in
/// the queue and the frame it keeps alive ([`FRAME_OVERHEAD`]; counted in
/// every queue holding the frame, which over-counts a frame shared by
/// several players: the bound errs on the safe side). A batch of frames
/// ([`Item::Batch`]) is charged this per frame it carries, so that a
/// player's bound, and when it skips, do not depend on how its frames were
/// queued.
pub const MEDIA_ITEM_OVERHEAD: usize = std::mem::size_of::<Item>() + FRAME_OVERHEAD;
/// A queue that drains after holding more items than this gives the room
/// back, down to [`KEPT_ITEMS`]. A joining player's queue takes the cached
/// GOP at once (about 150 items, 60 video and 90 audio frames, for a 2 s
/// GOP at 30 fps), and a player keeping up then holds a few items at a
/// time: without this every player would keep the capacity of its largest
/// burst, 256 items of 40 bytes, for as long as it plays.
const SHRINK_ABOVE: usize = 64;
/// What a drained queue keeps: a few frames and control messages, what a
/// player keeping up holds between writes.
const KEPT_ITEMS: usize = 16;
/// What a queued control item costs beyond its bytes: its place in the
/// queue and its own allocation.
pub const CONTROL_ITEM_OVERHEAD: usize = std::mem::size_of::<Item>() + 64;

/// One queued message.
#[derive(Debug)]
pub enum Item {
    /// A shared frame's form for one format (RTMP on the shared message
    /// stream id, FLV tag, or FLV tag in a WebSocket message).
    Frame(Arc<Frame>, Format),
    /// A frame's form built for this connection alone (another stream id).
    OwnFrame(WireForm),
    /// Several frames released together, in one format, built once per
    /// release and shared by every player that takes all of them
    /// (`player::Release`): one queue slot and one reference count per
    /// player, where the frames one by one would take one each. The queue
    /// counts and drops its frames as it would the frames one by one.
    Batch(Arc<Batch>),
    /// This connection's own bytes: handshake, control messages, replies.
    Control(Bytes),
    /// A connection's own bytes in several pieces (an HTTP response, a
    /// WebSocket-wrapped FLV header).
    OwnControl(WireForm),
    /// An HTTP response whose body is shared media (an HLS part, segment
    /// or playlist): bounded apart from control replies, and never dropped.
    Response(WireForm),
}

impl Item {
    fn pieces(&self) -> &[Bytes] {
        match self {
            Item::Frame(f, format) => f.form(*format).pieces(),
            Item::OwnFrame(w) => w.pieces(),
            Item::Batch(b) => b.form.pieces(),
            Item::Control(b) => std::slice::from_ref(b),
            Item::OwnControl(w) | Item::Response(w) => w.pieces(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Item::Frame(f, format) => f.form(*format).len(),
            Item::OwnFrame(w) => w.len(),
            Item::Batch(b) => b.form.len(),
            Item::Control(b) => b.len(),
            Item::OwnControl(w) | Item::Response(w) => w.len(),
        }
    }

    /// A batch whose bytes are also in a batch file.
    fn has_file(&self) -> bool {
        matches!(self, Item::Batch(b) if b.file.is_some())
    }

    /// Media frames the item carries (0 for anything else).
    fn frames(&self) -> usize {
        match self {
            Item::Frame(..) | Item::OwnFrame(_) => 1,
            Item::Batch(b) => b.ends.len(),
            Item::Control(_) | Item::OwnControl(_) | Item::Response(_) => 0,
        }
    }

    /// The piece index where the item's frame `k` ends (one past its last
    /// piece); None past its last frame.
    fn frame_end(&self, k: usize) -> Option<usize> {
        match self {
            Item::Batch(b) => b.ends.get(k).copied(),
            _ => (k < self.frames()).then(|| self.pieces().len()),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Item::Frame(..) | Item::OwnFrame(_) | Item::Batch(..) => Kind::Media,
            Item::Response(_) => Kind::Response,
            Item::Control(_) | Item::OwnControl(_) => Kind::Control,
        }
    }
}

/// The wire forms of several frames in one format, one after another
/// ([`Item::Batch`]).
#[derive(Debug)]
pub struct Batch {
    form: WireForm,
    /// Where each frame's pieces end in `form`'s pieces (one past the last).
    ends: Vec<usize>,
    /// The same bytes in a worker's batch file, where a plain socket sends
    /// them from (`batch_file.rs`); None: written from `form` only.
    file: Option<FileSpan>,
}

impl Batch {
    /// The frames' `forms`, in order.
    pub fn new<'a>(forms: impl IntoIterator<Item = &'a WireForm>) -> Self {
        let mut pieces = Vec::new();
        let mut ends = Vec::new();
        for form in forms {
            // A form's pieces are never empty, so none is dropped below
            // and the ends stay true.
            pieces.extend(form.pieces().iter().cloned());
            ends.push(pieces.len());
        }
        Self {
            form: WireForm::new(pieces),
            ends,
            file: None,
        }
    }

    /// The same batch, its bytes also at `span` (they must be exactly
    /// `form`'s bytes).
    pub fn with_file(mut self, span: Option<FileSpan>) -> Self {
        self.file = span;
        self
    }

    /// Its pieces, for writing them elsewhere (a batch file).
    pub fn pieces(&self) -> &[Bytes] {
        self.form.pieces()
    }

    /// Bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.form.len()
    }

    /// Frames it carries.
    pub fn frames(&self) -> usize {
        self.ends.len()
    }
}

/// A writer that can also send a range of a file without copying it (a
/// plain socket: `sendfile(2)`). A queue written to one sends each batch
/// that has a file ([`Batch::with_file`]) from there.
pub trait SendFile: Write {
    /// Sends up to `len` bytes of `file` from `offset`; returns how many
    /// the writer took.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize>;
}

/// What an item counts as, for the queue's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Media,
    /// An HTTP response with a shared body: bounded by the connection
    /// reading no further request while many are queued.
    Response,
    Control,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct OutQueue {
    items: VecDeque<Item>,
    /// Progress into the front item: piece index and offset in that piece,
    /// and the frame that piece belongs to (a batch holds several).
    piece: usize,
    offset: usize,
    frame: usize,
    media_bytes: usize,
    control_bytes: usize,
    response_bytes: usize,
    /// Queued media frames and control items (their overhead counts in
    /// the bounds).
    media_frames: usize,
    control_items: usize,
    /// Media items pushed so far (the write policy looks at what a delivery
    /// queued).
    media_pushed: u64,
}

impl OutQueue {
    /// Touches what a push and a write touch first (a worker does so for a
    /// few players ahead of working on them: `Conn::warm`): the queue's
    /// fields, and the slot the next push writes, by writing an empty item
    /// there and taking it back. A store to a line not in the cache holds
    /// up the next atomic operation (a frame's `Arc` clone) until the line
    /// comes; done ahead, it comes while the worker works on another player.
    pub fn warm(&mut self) -> u64 {
        if self.items.len() < self.items.capacity() {
            self.items.push_back(Item::Control(Bytes::new()));
            self.items.pop_back();
        }
        (self.items.len() ^ self.piece ^ self.media_bytes ^ self.media_frames) as u64
            ^ self.media_pushed
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Unsent bytes of queued media.
    pub fn media_bytes(&self) -> usize {
        self.media_bytes
    }

    /// What queued media holds: its unsent bytes plus
    /// [`MEDIA_ITEM_OVERHEAD`] per frame. The player queue's bound.
    pub fn media_cost(&self) -> usize {
        self.media_bytes + self.media_frames * MEDIA_ITEM_OVERHEAD
    }

    /// What queued control messages hold: their unsent bytes plus
    /// [`CONTROL_ITEM_OVERHEAD`] per item (a flood of tiny replies costs
    /// what it allocates). The control queue's bound.
    pub fn control_bytes(&self) -> usize {
        self.control_bytes + self.control_items * CONTROL_ITEM_OVERHEAD
    }

    /// Unsent bytes of queued HTTP responses with shared bodies.
    pub fn response_bytes(&self) -> usize {
        self.response_bytes
    }

    pub fn push(&mut self, item: Item) {
        let len = item.len();
        if len == 0 {
            return;
        }
        match item.kind() {
            Kind::Media => {
                self.media_bytes += len;
                self.media_frames += item.frames();
                self.media_pushed += 1;
            }
            Kind::Response => self.response_bytes += len,
            Kind::Control => {
                self.control_bytes += len;
                self.control_items += 1;
            }
        }
        self.items.push_back(item);
    }

    /// Media items (frames or batches) pushed since the queue was made.
    pub fn media_pushed(&self) -> u64 {
        self.media_pushed
    }

    /// Drops every queued media frame not yet started; returns how many.
    /// Of a batch partly written, the frame being written stays and the
    /// frames after it go, as if they had been queued one by one.
    pub fn drop_unstarted_media(&mut self) -> usize {
        let (mut freed, mut dropped) = (0, 0);
        self.truncate_front_batch(&mut freed, &mut dropped);
        let started = self.piece > 0 || self.offset > 0;
        let keep_front = usize::from(started);
        let mut index = 0;
        self.items.retain(|item| {
            let keep = index < keep_front || item.kind() != Kind::Media;
            if !keep {
                freed += item.len();
                dropped += item.frames();
            }
            index += 1;
            keep
        });
        self.media_bytes -= freed;
        self.media_frames -= dropped;
        dropped
    }

    /// A batch at the front that is partly written keeps only the rest of
    /// the frame being written (none when the write stopped between two
    /// frames); adds what leaves to `freed` bytes and `dropped` frames.
    fn truncate_front_batch(&mut self, freed: &mut usize, dropped: &mut usize) {
        let Some(Item::Batch(b)) = self.items.front() else {
            return;
        };
        if self.piece == 0 && self.offset == 0 {
            return; // not started: it goes whole with the others
        }
        let pieces = b.form.pieces();
        let begin = self.frame.checked_sub(1).map_or(0, |k| b.ends[k]);
        let in_frame = self.offset > 0 || self.piece > begin;
        let (end, kept) = if in_frame {
            (b.ends[self.frame], self.frame + 1)
        } else {
            (begin, self.frame)
        };
        if end == pieces.len() {
            return;
        }
        *freed += pieces[end..].iter().map(Bytes::len).sum::<usize>();
        *dropped += b.ends.len() - kept;
        if in_frame {
            self.items[0] = Item::OwnFrame(WireForm::new(pieces[self.piece..end].to_vec()));
        } else {
            self.items.pop_front();
        }
        (self.piece, self.frame) = (0, 0);
    }

    /// Writes as much as `w` takes in one vectored call. Returns the bytes
    /// written (0 only when the queue is empty).
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        self.write_vectored(w, false)
    }

    /// Writes as much as `w` takes in one call: a `send_file` of the batch
    /// files' bytes when the front item is a batch with a file (and of the
    /// batches after it that follow it in the same file), else one
    /// vectored write of the items up to the next such batch. Returns the
    /// bytes written (0 only when the queue is empty).
    pub fn write_to_sink<S: SendFile>(&mut self, w: &mut S) -> io::Result<usize> {
        let Some(Item::Batch(front)) = self.items.front() else {
            return self.write_vectored(w, true);
        };
        let Some(span) = &front.file else {
            return self.write_vectored(w, true);
        };
        let pieces = front.form.pieces();
        let done: usize = pieces[..self.piece].iter().map(Bytes::len).sum::<usize>() + self.offset;
        let offset = span.offset + done as u64;
        let mut len = front.form.len() - done;
        // Batches appended one after another to the same file go in one call.
        let mut end = span.offset + front.form.len() as u64;
        for item in self.items.iter().skip(1) {
            match item {
                Item::Batch(b) => match &b.file {
                    Some(s) if Arc::ptr_eq(&s.file, &span.file) && s.offset == end => {
                        len += b.form.len();
                        end += b.form.len() as u64;
                    }
                    _ => break,
                },
                _ => break,
            }
        }
        let written = w.send_file(span.file.file(), offset, len)?;
        if written == 0 {
            // Only a file shorter than its spans says: never loop on it.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "batch file ended before its batch",
            ));
        }
        self.advance(written);
        Ok(written)
    }

    /// `stop_at_file`: the vectored write ends before a batch with a file
    /// (which [`OutQueue::write_to_sink`] sends from its file next).
    fn write_vectored<W: Write>(&mut self, w: &mut W, stop_at_file: bool) -> io::Result<usize> {
        // A player between frames has a piece or two queued: don't pay for
        // initialising a large iovec array on every write.
        let mut needed = 0;
        for (i, item) in self.items.iter().enumerate() {
            if stop_at_file && i > 0 && item.has_file() {
                break;
            }
            needed += item.pieces().len();
            if needed > MEDIUM_IOVECS {
                return self.write_with::<MAX_IOVECS, W>(w, stop_at_file);
            }
        }
        if needed > SMALL_IOVECS {
            self.write_with::<MEDIUM_IOVECS, W>(w, stop_at_file)
        } else {
            self.write_with::<SMALL_IOVECS, W>(w, stop_at_file)
        }
    }

    fn write_with<const N: usize, W: Write>(
        &mut self,
        w: &mut W,
        stop_at_file: bool,
    ) -> io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); N];
        let mut n = 0;
        'fill: for (i, item) in self.items.iter().enumerate() {
            if stop_at_file && i > 0 && item.has_file() {
                break;
            }
            let pieces = item.pieces();
            let (first, skip) = if i == 0 {
                (self.piece, self.offset)
            } else {
                (0, 0)
            };
            for (j, piece) in pieces.iter().enumerate().skip(first) {
                let from = if j == first { skip } else { 0 };
                iov[n] = IoSlice::new(&piece[from..]);
                n += 1;
                if n == N {
                    break 'fill;
                }
            }
        }
        if n == 0 {
            return Ok(0);
        }
        let written = w.write_vectored(&iov[..n])?;
        self.advance(written);
        Ok(written)
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.items.front() else {
                break;
            };
            let kind = front.kind();
            let pieces = front.pieces();
            let left_in_piece = pieces[self.piece].len() - self.offset;
            let step = n.min(left_in_piece);
            n -= step;
            self.offset += step;
            match kind {
                Kind::Media => self.media_bytes -= step,
                Kind::Response => self.response_bytes -= step,
                Kind::Control => self.control_bytes -= step,
            }
            if self.offset == pieces[self.piece].len() {
                self.offset = 0;
                self.piece += 1;
                // A frame's overhead leaves with its last byte, whether it
                // was queued alone or in a batch.
                if kind == Kind::Media && front.frame_end(self.frame) == Some(self.piece) {
                    self.frame += 1;
                    self.media_frames -= 1;
                }
                if self.piece == pieces.len() {
                    (self.piece, self.frame) = (0, 0);
                    self.items.pop_front();
                    if kind == Kind::Control {
                        self.control_items -= 1;
                    }
                }
            }
        }
        if self.items.is_empty() && self.items.capacity() > SHRINK_ABOVE {
            self.items.shrink_to(KEPT_ITEMS);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call.
    pub(in super::super) struct Trickle {
        pub cap: usize,
        pub got: Vec<u8>,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.cap);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut total = 0;
            for b in bufs {
                let n = (self.cap - total).min(b.len());
                self.got.extend_from_slice(&b[..n]);
                total += n;
                if total == self.cap {
                    break;
                }
            }
            Ok(total)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn own(parts: &[&'static [u8]]) -> Item {
        Item::OwnFrame(WireForm::new(
            parts.iter().map(|p| Bytes::from_static(p)).collect(),
        ))
    }

    #[test]
    fn partial_writes_resume_mid_piece_in_order() {
        let mut q = OutQueue::default();
        q.push(Item::Control(Bytes::from_static(b"ctl-")));
        q.push(own(&[b"ab", b"cdef", b"g"]));
        q.push(Item::Control(Bytes::from_static(b"-end")));
        let mut w = Trickle {
            cap: 3,
            got: Vec::new(),
        };
        while q.write_to(&mut w).unwrap() > 0 {}
        assert_eq!(w.got, b"ctl-abcdefg-end");
        assert!(q.is_empty());
        assert_eq!(
            (q.media_bytes(), q.control_bytes(), q.media_cost()),
            (0, 0, 0)
        );
    }

    #[test]
    fn warming_changes_nothing_queued_or_counted() {
        let mut q = OutQueue::default();
        q.warm(); // no capacity yet: nothing to touch
        assert!(q.is_empty());
        q.push(Item::Control(Bytes::from_static(b"ctl-")));
        q.push(own(&[b"ab", b"cd"]));
        let mut w = Trickle {
            cap: 5,
            got: Vec::new(),
        };
        q.write_to(&mut w).unwrap(); // "ctl-a" out: mid-piece
        let before = (
            q.media_bytes(),
            q.control_bytes(),
            q.media_cost(),
            q.media_pushed(),
        );
        for _ in 0..3 {
            q.warm();
        }
        assert_eq!(
            (
                q.media_bytes(),
                q.control_bytes(),
                q.media_cost(),
                q.media_pushed()
            ),
            before
        );
        q.push(Item::Control(Bytes::from_static(b"-end")));
        while q.write_to(&mut w).unwrap() > 0 {}
        assert_eq!(w.got, b"ctl-abcd-end");
        q.warm(); // empty, with capacity: the dummy item is taken back
        assert!(q.is_empty());
        assert_eq!((q.media_bytes(), q.control_bytes()), (0, 0));
    }

    #[test]
    fn dropping_media_keeps_the_started_frame_and_control() {
        let mut q = OutQueue::default();
        q.push(own(&[b"frame-one"]));
        q.push(Item::Control(Bytes::from_static(b"ping")));
        q.push(own(&[b"frame-two"]));
        q.push(own(&[b"frame-three"]));
        let mut w = Trickle {
            cap: 4,
            got: Vec::new(),
        };
        q.write_to(&mut w).unwrap(); // "fram" of frame-one is out
        assert_eq!(q.drop_unstarted_media(), 2);
        while q.write_to(&mut w).unwrap() > 0 {}
        assert_eq!(w.got, b"frame-oneping");
        assert_eq!(q.media_bytes(), 0);
    }

    fn batch(frames: &[&[&'static [u8]]]) -> Item {
        let forms: Vec<WireForm> = frames
            .iter()
            .map(|f| WireForm::new(f.iter().map(|p| Bytes::from_static(p)).collect()))
            .collect();
        Item::Batch(Arc::new(Batch::new(&forms)))
    }

    /// A batch costs what its frames queued one by one cost, each frame's
    /// overhead leaving with its last byte; a drop keeps the rest of the
    /// frame being written and nothing after it.
    #[test]
    fn a_batch_counts_and_drops_its_frames_as_if_queued_one_by_one() {
        let frames: &[&[&[u8]]] = &[&[b"ab", b"cde"], &[b"fgh"], &[b"ij", b"kl"]];
        let mut q = OutQueue::default();
        q.push(batch(frames));
        q.push(Item::Control(Bytes::from_static(b"-ping")));
        q.push(own(&[b"mn"]));
        assert_eq!(q.media_cost(), 14 + 4 * MEDIA_ITEM_OVERHEAD);
        let mut w = Trickle {
            cap: 7,
            got: Vec::new(),
        };
        q.write_to(&mut w).unwrap(); // the first frame and "fg"
        assert_eq!(q.media_cost(), 7 + 3 * MEDIA_ITEM_OVERHEAD);
        assert_eq!(q.drop_unstarted_media(), 2, "the third frame and \"mn\"");
        assert_eq!(q.media_cost(), 1 + MEDIA_ITEM_OVERHEAD);
        while q.write_to(&mut w).unwrap() > 0 {}
        assert_eq!(w.got, b"abcdefgh-ping");
        assert_eq!((q.media_cost(), q.control_bytes()), (0, 0));
    }

    /// A write that stopped between two frames of a batch leaves the next
    /// one unstarted: a drop takes it with the rest.
    #[test]
    fn a_batch_written_to_a_frame_boundary_drops_every_frame_after_it() {
        let frames: &[&[&[u8]]] = &[&[b"ab", b"cde"], &[b"fgh"], &[b"ij", b"kl"]];
        for (cap, dropped, kept) in [(5, 2, &b"abcde"[..]), (8, 1, b"abcdefgh")] {
            let mut q = OutQueue::default();
            q.push(batch(frames));
            let mut w = Trickle {
                cap,
                got: Vec::new(),
            };
            q.write_to(&mut w).unwrap();
            assert_eq!(q.drop_unstarted_media(), dropped, "after {cap} bytes");
            if dropped == 2 {
                assert!(q.is_empty(), "nothing of the batch is left to write");
            }
            assert_eq!(q.media_cost(), 0);
            while q.write_to(&mut w).unwrap() > 0 {}
            assert_eq!(w.got, kept);
        }
        // Not started at all: it goes whole.
        let mut q = OutQueue::default();
        q.push(batch(frames));
        assert_eq!(q.drop_unstarted_media(), 3);
        assert!(q.is_empty());
        assert_eq!(q.media_cost(), 0);
    }

    #[test]
    fn counts_media_and_control_bytes_apart() {
        let mut q = OutQueue::default();
        q.push(own(&[b"12345"]));
        q.push(Item::Control(Bytes::from_static(b"abc")));
        assert_eq!(q.media_bytes(), 5);
        assert_eq!(q.media_cost(), 5 + MEDIA_ITEM_OVERHEAD);
        assert_eq!(q.control_bytes(), 3 + CONTROL_ITEM_OVERHEAD);
    }

    /// docs/hardening.md case 40: a queue of tiny items is charged what the
    /// items hold, not their few bytes, and the charge leaves with them.
    #[test]
    fn tiny_items_cost_their_overhead_until_written_or_dropped() {
        let mut q = OutQueue::default();
        for _ in 0..1000 {
            q.push(own(&[b"x"]));
            q.push(Item::Control(Bytes::from_static(b"y")));
        }
        assert_eq!(q.media_cost(), 1000 * (1 + MEDIA_ITEM_OVERHEAD));
        assert_eq!(q.control_bytes(), 1000 * (1 + CONTROL_ITEM_OVERHEAD));
        let mut w = Trickle {
            cap: 1001,
            got: Vec::new(),
        };
        q.write_to(&mut w).unwrap();
        q.drop_unstarted_media();
        assert_eq!(q.media_cost(), 0, "every media item went");
        while q.write_to(&mut w).unwrap() > 0 {}
        assert_eq!((q.media_cost(), q.control_bytes()), (0, 0));
    }

    /// A player's queue that took a GOP at once (hundreds of items) keeps
    /// no more than a few items' room once it has drained; one that only
    /// ever holds a few is not reallocated.
    #[test]
    fn a_drained_queue_gives_back_the_room_of_its_largest_burst() {
        let mut q = OutQueue::default();
        for _ in 0..200 {
            q.push(own(&[b"frame"]));
        }
        assert!(q.items.capacity() >= 200);
        let mut w = Trickle {
            cap: 300,
            got: Vec::new(),
        };
        q.write_to(&mut w).unwrap();
        assert!(
            !q.is_empty() && q.items.capacity() >= 200,
            "not while it holds some"
        );
        while q.write_to(&mut w).unwrap() > 0 {}
        assert_eq!(w.got.len(), 200 * 5);
        assert!(q.is_empty());
        assert!(q.items.capacity() <= SHRINK_ABOVE, "{}", q.items.capacity());
        // Steady play: a few items at a time, no reallocation.
        for _ in 0..3 {
            q.push(own(&[b"frame"]));
        }
        let room = q.items.capacity();
        for _ in 0..100 {
            while q.write_to(&mut w).unwrap() > 0 {}
            for _ in 0..3 {
                q.push(own(&[b"frame"]));
            }
        }
        assert_eq!(q.items.capacity(), room);
    }

    #[test]
    fn writes_every_piece_whatever_the_iovec_tier() {
        for pieces in [1usize, 16, 17, 64, 65, 300] {
            let mut q = OutQueue::default();
            let mut want = Vec::new();
            for i in 0..pieces {
                let b = Bytes::from(vec![i as u8; 3]);
                want.extend_from_slice(&b);
                q.push(Item::Control(b));
            }
            let mut w = Trickle {
                cap: 1000,
                got: Vec::new(),
            };
            while q.write_to(&mut w).unwrap() > 0 {}
            assert_eq!(w.got, want, "{pieces} pieces");
        }
    }

    #[test]
    fn caps_iovecs_per_write() {
        let mut q = OutQueue::default();
        for _ in 0..(MAX_IOVECS + 10) {
            q.push(Item::Control(Bytes::from_static(b"x")));
        }
        let mut w = Trickle {
            cap: usize::MAX,
            got: Vec::new(),
        };
        assert_eq!(q.write_to(&mut w).unwrap(), MAX_IOVECS);
        assert_eq!(q.write_to(&mut w).unwrap(), 10);
    }

    /// A [`Trickle`] that sends files too, recording each `send_file`
    /// (offset, length) and each vectored call's piece count.
    struct FileTrickle {
        inner: Trickle,
        files: Vec<(u64, usize)>,
        vectored: usize,
    }

    impl Write for FileTrickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.inner.write(buf)
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.vectored += 1;
            self.inner.write_vectored(bufs)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl SendFile for FileTrickle {
        fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
            use std::os::unix::fs::FileExt;
            self.files.push((offset, len));
            let mut buf = vec![0; len.min(self.inner.cap)];
            file.read_exact_at(&mut buf, offset)?;
            self.inner.got.extend_from_slice(&buf);
            Ok(buf.len())
        }
    }

    pub(in super::super) fn file_batch(
        files: &mut super::super::batch_file::BatchFiles,
        frames: &[&[&'static [u8]]],
    ) -> Item {
        let forms: Vec<WireForm> = frames
            .iter()
            .map(|f| WireForm::new(f.iter().map(|p| Bytes::from_static(p)).collect()))
            .collect();
        let b = Batch::new(&forms);
        let span = files.append(b.pieces(), b.wire_len());
        assert!(span.is_some(), "memfd_create works here");
        Item::Batch(Arc::new(b.with_file(span)))
    }

    /// Batches with a file go with `send_file`, those appended one after
    /// another in one call, resuming mid-piece after a partial write; the
    /// rest goes vectored around them; the bytes and the counts are what
    /// the same items written from memory give, drops included.
    #[test]
    fn batches_with_a_file_are_sent_from_it_in_order() {
        use super::super::batch_file::BatchFiles;
        use std::sync::atomic::{AtomicU64, Ordering};
        let gauge = Arc::new(AtomicU64::new(0));
        let mut files = BatchFiles::new(gauge.clone());
        let a: &[&[&[u8]]] = &[&[b"ab", b"cde"], &[b"fgh"]];
        let b: &[&[&[u8]]] = &[&[b"ij"], &[b"klm", b"n"]];
        let c: &[&[&[u8]]] = &[&[b"op"], &[b"qr"]];
        let mut q = OutQueue::default();
        q.push(Item::Control(Bytes::from_static(b"<")));
        q.push(file_batch(&mut files, a));
        q.push(file_batch(&mut files, b));
        q.push(batch(c)); // no file: vectored
        q.push(Item::Control(Bytes::from_static(b">")));
        let d: &[&[&[u8]]] = &[&[b"st"], &[b"uv"]];
        q.push(file_batch(&mut files, d));
        assert_eq!(
            gauge.load(Ordering::Relaxed),
            18,
            "a, b and d are in the file"
        );
        let mut w = FileTrickle {
            inner: Trickle {
                cap: 4,
                got: Vec::new(),
            },
            files: Vec::new(),
            vectored: 0,
        };
        // "<" alone (the vectored write stops before a), then a and b from
        // the file, in calls of at most 4 bytes.
        while q.write_to_sink(&mut w).unwrap() > 0 {}
        assert_eq!(w.inner.got, b"<abcdefghijklmnopqr>stuv");
        assert_eq!(
            w.files,
            [(0, 14), (4, 10), (8, 6), (12, 2), (14, 4)],
            "a and b in one run resuming where each call stopped, d after"
        );
        assert_eq!(
            w.vectored, 3,
            "\"<\", then c and \">\" in one call of 4 and one of 1"
        );
        assert_eq!((q.media_cost(), q.control_bytes()), (0, 0));
        assert!(q.is_empty());

        // A drop mid-batch keeps the rest of the frame being written, from
        // memory, and nothing after it.
        let mut q = OutQueue::default();
        q.push(file_batch(&mut files, a));
        q.push(file_batch(&mut files, b));
        w.inner.got.clear();
        q.write_to_sink(&mut w).unwrap(); // "abcd"
        assert_eq!(q.drop_unstarted_media(), 3, "fgh, and b's two frames");
        while q.write_to_sink(&mut w).unwrap() > 0 {}
        assert_eq!(w.inner.got, b"abcde");
        assert_eq!(q.media_cost(), 0);
        drop(q);
        drop(files);
        assert_eq!(
            gauge.load(Ordering::Relaxed),
            0,
            "closed segments leave the gauge"
        );
    }
}
