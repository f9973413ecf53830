//! Time helpers: the 64-bit extension of RTMP's 32-bit millisecond
//! timestamps, and EXT-X-PROGRAM-DATE-TIME's ISO 8601 text.

use std::fmt::Write;

/// Extends 32-bit millisecond timestamps that wrap at 2^32 onto a 64-bit
/// timeline, comparing each with the previous one in serial arithmetic
/// (RFC 1982): a step of less than 2^31 ms either way is taken as the
/// nearer direction, so a wrap is a small step forward.
#[derive(Debug, Clone, Default)]
pub(crate) struct Timeline {
    last: Option<(u32, i64)>,
}

impl Timeline {
    pub(crate) fn extend(&mut self, ts: u32) -> i64 {
        let ext = match self.last {
            None => i64::from(ts),
            Some((raw, ext)) => ext + i64::from(ts.wrapping_sub(raw) as i32),
        };
        self.last = Some((ts, ext));
        ext
    }
}

/// `YYYY-MM-DDThh:mm:ss.sssZ` for a time in milliseconds since the Unix
/// epoch (RFC 8216bis 4.4.4.6 asks for ISO 8601 with a time zone and
/// millisecond accuracy is enough), by the days-to-civil algorithm of the
/// proleptic Gregorian calendar.
pub(crate) fn iso8601(ms: u64, out: &mut String) {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(ms: u64) -> String {
        let mut s = String::new();
        iso8601(ms, &mut s);
        s
    }

    #[test]
    fn program_date_time_text() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn timeline_extends_across_the_32_bit_wrap() {
        let mut t = Timeline::default();
        assert_eq!(t.extend(u32::MAX - 10), i64::from(u32::MAX) - 10);
        assert_eq!(t.extend(5), i64::from(u32::MAX) + 6);
        // A small step back stays a step back (audio behind video).
        assert_eq!(t.extend(u32::MAX - 4), i64::from(u32::MAX) - 4);
        assert_eq!(t.extend(40), i64::from(u32::MAX) + 41);
    }
}
