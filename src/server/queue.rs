//! A connection's output queue: references to shared frames and the
//! connection's own control bytes, written with one `write_vectored` over as
//! many queued items as the socket takes.
//!
//! Media is bounded in bytes: the caller asks [`OutQueue::media_bytes`]
//! before pushing and, on overflow, calls [`OutQueue::drop_unstarted_media`]
//! and skips to the next keyframe. A frame already partly written is never
//! dropped (the peer's chunk stream would break). Control bytes are bounded
//! separately: a peer that never reads its replies is closed.

use super::stream::{Format, Frame};
use crate::wire::WireForm;
use bytes::Bytes;
use std::collections::VecDeque;
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

/// One queued message.
#[derive(Debug)]
pub enum Item {
    /// A shared frame's form for one format (RTMP on the shared message
    /// stream id, FLV tag, or FLV tag in a WebSocket message).
    Frame(Arc<Frame>, Format),
    /// A frame's form built for this connection alone (another stream id).
    OwnFrame(WireForm),
    /// This connection's own bytes: handshake, control messages, replies.
    Control(Bytes),
    /// A connection's own bytes in several pieces (an HTTP response, a
    /// WebSocket-wrapped FLV header).
    OwnControl(WireForm),
}

impl Item {
    fn pieces(&self) -> &[Bytes] {
        match self {
            Item::Frame(f, format) => f.form(*format).pieces(),
            Item::OwnFrame(w) => w.pieces(),
            Item::Control(b) => std::slice::from_ref(b),
            Item::OwnControl(w) => w.pieces(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Item::Frame(f, format) => f.form(*format).len(),
            Item::OwnFrame(w) => w.len(),
            Item::Control(b) => b.len(),
            Item::OwnControl(w) => w.len(),
        }
    }

    fn is_media(&self) -> bool {
        matches!(self, Item::Frame(..) | Item::OwnFrame(_))
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct OutQueue {
    items: VecDeque<Item>,
    /// Progress into the front item: piece index and offset in that piece.
    piece: usize,
    offset: usize,
    media_bytes: usize,
    control_bytes: usize,
}

impl OutQueue {
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Unsent bytes of queued media.
    pub fn media_bytes(&self) -> usize {
        self.media_bytes
    }

    /// Unsent bytes of queued control messages.
    pub fn control_bytes(&self) -> usize {
        self.control_bytes
    }

    pub fn push(&mut self, item: Item) {
        let len = item.len();
        if len == 0 {
            return;
        }
        if item.is_media() {
            self.media_bytes += len;
        } else {
            self.control_bytes += len;
        }
        self.items.push_back(item);
    }

    /// Drops every queued media item not yet started; returns how many.
    pub fn drop_unstarted_media(&mut self) -> usize {
        let started = self.piece > 0 || self.offset > 0;
        let keep_front = usize::from(started);
        let before = self.items.len();
        let mut index = 0;
        let mut freed = 0;
        self.items.retain(|item| {
            let keep = index < keep_front || !item.is_media();
            if !keep {
                freed += item.len();
            }
            index += 1;
            keep
        });
        self.media_bytes -= freed;
        before - self.items.len()
    }

    /// Writes as much as `w` takes in one vectored call. Returns the bytes
    /// written (0 only when the queue is empty).
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        // A player between frames has a piece or two queued: don't pay for
        // initialising a large iovec array on every write.
        let mut needed = 0;
        for item in &self.items {
            needed += item.pieces().len();
            if needed > MEDIUM_IOVECS {
                return self.write_with::<MAX_IOVECS, W>(w);
            }
        }
        if needed > SMALL_IOVECS {
            self.write_with::<MEDIUM_IOVECS, W>(w)
        } else {
            self.write_with::<SMALL_IOVECS, W>(w)
        }
    }

    fn write_with<const N: usize, W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        let mut iov = [IoSlice::new(&[]); N];
        let mut n = 0;
        'fill: for (i, item) in self.items.iter().enumerate() {
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
            let media = front.is_media();
            let pieces = front.pieces();
            let left_in_piece = pieces[self.piece].len() - self.offset;
            let step = n.min(left_in_piece);
            n -= step;
            self.offset += step;
            if media {
                self.media_bytes -= step;
            } else {
                self.control_bytes -= step;
            }
            if self.offset == pieces[self.piece].len() {
                self.offset = 0;
                self.piece += 1;
                if self.piece == pieces.len() {
                    self.piece = 0;
                    self.items.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `cap` bytes per call.
    struct Trickle {
        cap: usize,
        got: Vec<u8>,
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

    #[test]
    fn counts_media_and_control_bytes_apart() {
        let mut q = OutQueue::default();
        q.push(own(&[b"12345"]));
        q.push(Item::Control(Bytes::from_static(b"abc")));
        assert_eq!((q.media_bytes(), q.control_bytes()), (5, 3));
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
}
