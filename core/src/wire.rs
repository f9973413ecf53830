//! The wire form of a message: the exact bytes a peer receives, as a list of
//! `Bytes` pieces (chunk headers interleaved with slices of the payload).
//!
//! A media frame's wire form is built once and shared (`Arc<WireForm>`) by every
//! subscriber on every core; a subscriber's queue holds references plus an
//! offset, and a write is one `write_vectored` over the pieces of many queued
//! forms. Nothing here copies a payload.

use bytes::Bytes;

/// Immutable bytes to send, in order. Cheap to share behind an `Arc`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WireForm {
    pieces: Vec<Bytes>,
    len: usize,
}

impl WireForm {
    /// A form made of `pieces`, sent in order. Empty pieces are dropped so a
    /// writer never builds an empty `IoSlice`.
    pub fn new(mut pieces: Vec<Bytes>) -> Self {
        pieces.retain(|p| !p.is_empty());
        let len = pieces.iter().map(Bytes::len).sum();
        Self { pieces, len }
    }

    /// A form of one contiguous buffer.
    pub fn from_bytes(bytes: Bytes) -> Self {
        Self::new(vec![bytes])
    }

    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces, in send order; none is empty.
    pub fn pieces(&self) -> &[Bytes] {
        &self.pieces
    }

    /// The whole form as one contiguous buffer (copies; for tests and tools).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for p in &self.pieces {
            v.extend_from_slice(p);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_empty_pieces_and_counts_length() {
        let f = WireForm::new(vec![
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
        ]);
        assert_eq!(f.pieces().len(), 2);
        assert_eq!(f.len(), 5);
        assert_eq!(f.to_vec(), b"abcde");
    }
}
