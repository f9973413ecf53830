//! Bounded, panic-free readers for the codec bitstreams the packager looks
//! into (decoder configuration records, SPS NAL units, AV1 sequence header
//! OBUs, Opus/FLAC/AC-3/MP3 headers). Every read returns `None` past the
//! end of the data; nothing allocates.

/// A big-endian byte cursor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl<'a> Bytes<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.0
    }
}

/// An MSB-first bit reader. With `rbsp`, emulation-prevention bytes
/// (`00 00 03`, H.264 7.4.1 / H.265 7.4.2) are dropped as they are read, so
/// an SPS NAL unit can be read in place.
#[derive(Debug, Clone)]
pub(crate) struct Bits<'a> {
    data: &'a [u8],
    rbsp: bool,
    zeros: u8,
    current: u8,
    left: u8,
}

impl<'a> Bits<'a> {
    /// Reads `data` as plain bits (AV1 OBUs, audio headers).
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            rbsp: false,
            zeros: 0,
            current: 0,
            left: 0,
        }
    }

    /// Reads `data` as an H.264/H.265 RBSP, skipping emulation prevention.
    pub(crate) fn rbsp(data: &'a [u8]) -> Self {
        Bits {
            rbsp: true,
            ..Bits::new(data)
        }
    }

    fn next_byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }

    pub(crate) fn bit(&mut self) -> Option<u32> {
        if self.left == 0 {
            let mut b = self.next_byte()?;
            if self.rbsp {
                if self.zeros >= 2 && b == 3 {
                    self.zeros = 0;
                    b = self.next_byte()?;
                }
                self.zeros = if b == 0 {
                    self.zeros.saturating_add(1)
                } else {
                    0
                };
            }
            self.current = b;
            self.left = 8;
        }
        self.left -= 1;
        Some(u32::from((self.current >> self.left) & 1))
    }

    pub(crate) fn flag(&mut self) -> Option<bool> {
        Some(self.bit()? == 1)
    }

    /// `n` bits (at most 32) as an unsigned value.
    pub(crate) fn bits(&mut self, n: u32) -> Option<u32> {
        if n > 32 {
            return None;
        }
        (0..n).try_fold(0u32, |acc, _| Some(acc << 1 | self.bit()?))
    }

    /// Skips `n` bits.
    pub(crate) fn skip(&mut self, n: u32) -> Option<()> {
        for _ in 0..n {
            self.bit()?;
        }
        Some(())
    }

    /// ue(v) (H.264 9.1): at most 31 leading zeros.
    pub(crate) fn ue(&mut self) -> Option<u32> {
        let mut leading = 0;
        while self.bit()? == 0 {
            leading += 1;
            if leading > 31 {
                return None;
            }
        }
        let value = (1u64 << leading) - 1 + u64::from(self.bits(leading)?);
        u32::try_from(value).ok()
    }

    /// se(v) (H.264 9.1.1).
    pub(crate) fn se(&mut self) -> Option<i64> {
        let k = i64::from(self.ue()?);
        Some(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    /// uvlc() (AV1 4.10.3): at most 31 leading zeros.
    pub(crate) fn uvlc(&mut self) -> Option<u32> {
        self.ue()
    }
}

/// leb128() (AV1 4.10.5): at most 8 bytes, value below 2^32.
pub(crate) fn leb128(c: &mut Bytes<'_>) -> Option<usize> {
    let mut value: u64 = 0;
    for i in 0..8 {
        let b = c.u8()?;
        value |= u64::from(b & 0x7f) << (i * 7);
        if b & 0x80 == 0 {
            return usize::try_from(u32::try_from(value).ok()?).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bits_msb_first_and_stops_at_the_end() {
        let mut b = Bits::new(&[0b1010_0000, 0xff]);
        assert_eq!(b.bit(), Some(1));
        assert_eq!(b.bits(3), Some(0b010));
        assert_eq!(b.bits(12), Some(0x0ff));
        assert_eq!(b.bit(), None);
        assert_eq!(Bits::new(&[0; 8]).bits(33), None);
    }

    #[test]
    fn exp_golomb_values() {
        // 1 -> 0, 010 -> 1, 011 -> 2, 00100 -> 3
        let mut b = Bits::new(&[0b1010_0110, 0b0100_0000]);
        assert_eq!(b.ue(), Some(0));
        assert_eq!(b.ue(), Some(1));
        assert_eq!(b.ue(), Some(2));
        assert_eq!(b.ue(), Some(3));
        // se: 010 -> +1, 011 -> -1
        let mut b = Bits::new(&[0b0100_1100]);
        assert_eq!(b.se(), Some(1));
        assert_eq!(b.se(), Some(-1));
        // 32 leading zeros: refused, not a shift overflow.
        assert_eq!(Bits::new(&[0, 0, 0, 0, 0x80]).ue(), None);
    }

    #[test]
    fn rbsp_drops_emulation_prevention_bytes() {
        let mut b = Bits::rbsp(&[0x00, 0x00, 0x03, 0x01]);
        assert_eq!(b.bits(24), Some(0x000001));
        assert_eq!(b.bit(), None);
        // Not in plain mode.
        let mut b = Bits::new(&[0x00, 0x00, 0x03, 0x01]);
        assert_eq!(b.bits(24), Some(0x000003));
    }

    #[test]
    fn leb128_values_and_limits() {
        assert_eq!(leb128(&mut Bytes(&[0x05])), Some(5));
        assert_eq!(leb128(&mut Bytes(&[0x80, 0x01])), Some(128));
        assert_eq!(leb128(&mut Bytes(&[0x80])), None);
        assert_eq!(leb128(&mut Bytes(&[0xff; 9])), None);
        // 2^35: over 32 bits.
        assert_eq!(
            leb128(&mut Bytes(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01])),
            None
        );
    }
}
