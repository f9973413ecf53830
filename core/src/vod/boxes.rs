//! Reading ISO base media file format boxes (ISO/IEC 14496-12 4.2) from a
//! byte slice, bounded and panic-free: every size is a claim checked
//! against the bytes present, and every read past the end is `None`.

use super::VodError;

/// A big-endian cursor over a box body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Cursor<'a> {
    data: &'a [u8],
    /// What is being read, for error messages.
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Cursor { data, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.data
    }

    fn short(&self) -> VodError {
        VodError::Malformed {
            what: self.what,
            detail: "shorter than its fields".into(),
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], VodError> {
        if n > self.data.len() {
            return Err(self.short());
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    pub(crate) fn skip(&mut self, n: usize) -> Result<(), VodError> {
        self.take(n).map(|_| ())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, VodError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, VodError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, VodError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, VodError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A full box's version and flags (4.2).
    pub(crate) fn version_flags(&mut self) -> Result<(u8, u32), VodError> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0x00ff_ffff))
    }

    /// A `u32` count of entries, each at least `entry_len` bytes, checked
    /// against what is left before anything is allocated from it.
    pub(crate) fn count(&mut self, entry_len: usize) -> Result<usize, VodError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(entry_len) > self.data.len() {
            return Err(VodError::Malformed {
                what: self.what,
                detail: format!(
                    "claims {n} entries of {entry_len} bytes, {} bytes present",
                    self.data.len()
                ),
            });
        }
        Ok(n)
    }
}

/// A box header: its type, where its body starts (relative to where the
/// header started) and its whole size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BoxHeader {
    pub fourcc: [u8; 4],
    /// Header length: 8, or 16 with a 64-bit size.
    pub header_len: u64,
    /// The whole box, header included; `None` for a box that runs to the
    /// end of the file (size 0, allowed for the last top-level box).
    pub size: Option<u64>,
}

impl BoxHeader {
    /// Reads a box header from the start of `data`: `Ok(None)` when fewer
    /// than the header's bytes are present.
    pub(crate) fn parse(data: &[u8]) -> Result<Option<BoxHeader>, VodError> {
        if data.len() < 8 {
            return Ok(None);
        }
        let size32 = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let fourcc = [data[4], data[5], data[6], data[7]];
        let (header_len, size) = match size32 {
            0 => (8, None),
            1 => {
                if data.len() < 16 {
                    return Ok(None);
                }
                let mut a = [0u8; 8];
                a.copy_from_slice(&data[8..16]);
                (16, Some(u64::from_be_bytes(a)))
            }
            n => (8, Some(u64::from(n))),
        };
        if size.is_some_and(|s| s < header_len) {
            return Err(VodError::Malformed {
                what: "box header",
                detail: format!(
                    "box {} claims {} bytes, less than its header",
                    fourcc_str(&fourcc),
                    size.unwrap_or(0)
                ),
            });
        }
        Ok(Some(BoxHeader {
            fourcc,
            header_len,
            size,
        }))
    }
}

/// The boxes inside a parent's body, one after another: `(type, body)`.
/// A box whose size runs past the parent is an error; trailing bytes too
/// few for a header are ignored (some writers pad).
pub(crate) struct Children<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Children<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Children { data, what }
    }
}

impl<'a> Iterator for Children<'a> {
    type Item = Result<([u8; 4], &'a [u8]), VodError>;

    fn next(&mut self) -> Option<Self::Item> {
        let header = match BoxHeader::parse(self.data) {
            Ok(Some(h)) => h,
            Ok(None) => return None,
            Err(e) => {
                self.data = &[];
                return Some(Err(e));
            }
        };
        let size = match header.size {
            Some(s) => s,
            None => self.data.len() as u64,
        };
        if size > self.data.len() as u64 {
            let e = VodError::Malformed {
                what: self.what,
                detail: format!(
                    "child box {} claims {size} bytes, {} present",
                    fourcc_str(&header.fourcc),
                    self.data.len()
                ),
            };
            self.data = &[];
            return Some(Err(e));
        }
        let size = size as usize;
        let body = &self.data[header.header_len as usize..size];
        self.data = &self.data[size..];
        Some(Ok((header.fourcc, body)))
    }
}

/// The first child of type `fourcc`, if any.
pub(crate) fn find<'a>(
    parent: &'a [u8],
    fourcc: &[u8; 4],
    what: &'static str,
) -> Result<Option<&'a [u8]>, VodError> {
    for child in Children::new(parent, what) {
        let (kind, body) = child?;
        if &kind == fourcc {
            return Ok(Some(body));
        }
    }
    Ok(None)
}

/// The child of type `fourcc`, or an error naming it.
pub(crate) fn require<'a>(
    parent: &'a [u8],
    fourcc: &'static [u8; 4],
    what: &'static str,
) -> Result<&'a [u8], VodError> {
    find(parent, fourcc, what)?.ok_or_else(|| VodError::Malformed {
        what,
        detail: format!("no {} box", fourcc_str(fourcc)),
    })
}

/// A FourCC as text for messages (non-printable bytes escaped).
pub(crate) fn fourcc_str(f: &[u8; 4]) -> String {
    f.iter().map(|b| b.escape_ascii().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_with_64_bit_size() {
        let data = [
            0, 0, 0, 1, // size 1: largesize follows
            b'm', b'd', b'a', b't', //
            0, 0, 0, 1, 0, 0, 0, 0, // largesize 2^32
        ];
        let h = BoxHeader::parse(&data).unwrap().unwrap();
        assert_eq!(h.fourcc, *b"mdat");
        assert_eq!((h.header_len, h.size), (16, Some(1 << 32)));
        assert_eq!(BoxHeader::parse(&data[..12]).unwrap(), None, "need more");
    }

    #[test]
    fn size_smaller_than_header_is_an_error() {
        let data = [0, 0, 0, 4, b'f', b'r', b'e', b'e'];
        assert!(BoxHeader::parse(&data).is_err());
    }

    #[test]
    fn children_stop_at_a_box_running_past_its_parent() {
        let data = [
            0, 0, 0, 9, b'a', b'b', b'c', b'd', 7, // one box
            0, 0, 0, 99, b'e', b'f', b'g', b'h', // claims 99 bytes
        ];
        let mut it = Children::new(&data, "test");
        assert_eq!(it.next().unwrap().unwrap(), (*b"abcd", &[7u8][..]));
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
    }

    #[test]
    fn count_is_checked_against_the_bytes_present() {
        let data = [0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
        let mut c = Cursor::new(&data, "stsz");
        assert!(c.count(4).is_err());
        let data = [0, 0, 0, 1, 1, 2, 3, 4];
        let mut c = Cursor::new(&data, "stsz");
        assert_eq!(c.count(4).unwrap(), 1);
    }
}
