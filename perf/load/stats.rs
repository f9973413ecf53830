//! Measurement helpers: a log-linear latency histogram (bounded memory for
//! millions of samples), and CPU time and resident memory from /proc.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

/// Wall clock, nanoseconds since the UNIX epoch: the clock frames are stamped
/// with (publisher and players share the machine, so the same clock).
pub fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Sub-buckets per power of two: values are kept within 1/64 (1.6%).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;

/// Counts of values (microseconds, say) in log-linear buckets.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; (64 - SUB_BITS as usize + 1) * SUB as usize],
            total: 0,
            max: 0,
            sum: 0,
        }
    }

    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros() - SUB_BITS; // >= 0
        let sub = (v >> exp) - SUB; // 0..SUB
        ((exp as u64 + 1) * SUB + sub) as usize
    }

    /// The largest value that falls in bucket `i` (reported percentiles are
    /// upper bounds, never optimistic).
    fn upper(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i;
        }
        let exp = i / SUB - 1;
        let sub = i % SUB + SUB;
        ((sub + 1) << exp) - 1
    }

    pub fn record(&mut self, v: u64) {
        self.counts[Self::index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.sum += u128::from(v);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1), as the upper bound of its bucket,
    /// capped at the maximum seen.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::upper(i).min(self.max);
            }
        }
        self.max
    }
}

/// Clock ticks per second for /proc CPU times (USER_HZ; 100 on Linux x86).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process (all its threads, live and exited), in ticks,
/// from `/proc/PID/stat` (or `/proc/self/stat`).
pub fn cpu_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat_ticks(&fs::read_to_string(path).ok()?)
}

/// Fields 14 and 15 (utime, stime) of a stat line; the command name (field 2)
/// may hold spaces and parentheses, so count from the last ')'.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Time on CPU of a process's live threads, nanoseconds: the sum of the
/// first field of `/proc/PID/task/*/schedstat`. `cpu_ticks` counts in
/// 10 ms ticks (one per read of utime and of stime), too coarse for a
/// server using a few percent of a core over a window of seconds; this is
/// exact, but misses threads that exit in between (Sluice's do not).
pub fn sched_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let s = fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// (write syscalls, bytes written) of a process from `/proc/PID/io`
/// (`syscw`, `wchar`: write, writev, send* on any descriptor).
pub fn write_calls(pid: u32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("syscw:")?, field("wchar:")?))
}

/// (VmRSS, VmHWM) of a process in bytes.
pub fn rss_bytes(pid: u32) -> Option<(u64, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = s.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_two_percent_and_never_below() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000u64), (0.99, 99_000), (1.0, 100_000)] {
            let got = h.quantile(q);
            assert!(got >= want, "q{q}: {got} < {want}");
            assert!(got as f64 <= want as f64 * 1.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 100_000);
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in [0u64, 3, 3, 63] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.25), 0);
        assert_eq!(h.quantile(0.75), 3);
        assert_eq!(h.quantile(1.0), 63);
    }

    #[test]
    fn every_value_lies_within_its_bucket() {
        for v in [64u64, 65, 127, 128, 1000, 123_456, u64::MAX / 3] {
            let i = Histogram::index(v);
            assert!(Histogram::upper(i) >= v);
            assert!(i == 0 || Histogram::upper(i - 1) < v, "{v}");
        }
    }

    #[test]
    fn parses_a_stat_line_with_a_space_in_the_name() {
        let line = "1234 (a b) S 1 1 1 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(line), Some(287));
    }

    #[test]
    fn reads_its_own_cpu_and_memory() {
        assert!(cpu_ticks(None).is_some());
        let (rss, hwm) = rss_bytes(std::process::id()).unwrap();
        assert!(write_calls(std::process::id()).is_some());
        assert!(rss > 0 && hwm >= rss);
    }
}
