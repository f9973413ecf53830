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
    cpu_times(pid).map(|(user, system)| user + system)
}

/// (utime, stime) of a process, in ticks: its time in its own code and in
/// the kernel. A change to a server's own code moves the first; on
/// loopback the second is most of a server's time and the noisier.
pub fn cpu_times(pid: Option<u32>) -> Option<(u64, u64)> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    parse_stat_times(&fs::read_to_string(path).ok()?)
}

/// Fields 14 and 15 (utime, stime) of a stat line; the command name (field 2)
/// may hold spaces and parentheses, so count from the last ')'.
pub fn parse_stat_times(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    // rest starts at field 3 (state); utime is field 14.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime, stime))
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
        assert_eq!(parse_stat_times(line), Some((250, 37)));
    }

    #[test]
    fn reads_its_own_cpu_and_memory() {
        assert!(cpu_ticks(None).is_some());
        let (rss, hwm) = rss_bytes(std::process::id()).unwrap();
        assert!(write_calls(std::process::id()).is_some());
        assert!(rss > 0 && hwm >= rss);
    }
}

/// What `sluice-load --metrics` reads from a Sluice server's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerMetrics {
    /// `sluice_write_calls_total`, all workers.
    pub write_calls: u64,
    /// `sluice_bytes_out_total`.
    pub bytes_out: u64,
    /// `sluice_write_wait_seconds_bucket`: (upper bound in seconds, cumulative
    /// count), `+Inf` as infinity, in order.
    pub wait_buckets: Vec<(f64, u64)>,
    /// `sluice_write_wait_max_seconds`: the longest wait since the server started.
    pub wait_max_s: f64,
    /// `sluice_worker_loop_iterations_total`, all workers: the loops' wake-ups.
    pub iterations: u64,
    /// `sluice_batch_file_bytes`, all workers: released media in the
    /// workers' in-memory batch files, memory the server's RSS does not
    /// count.
    pub batch_file_bytes: u64,
}

impl ServerMetrics {
    /// Parses the Prometheus text exposition (the lines this needs).
    pub fn parse(text: &str) -> Option<Self> {
        let mut m = ServerMetrics::default();
        let mut found = false;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let metric = name.split('{').next().unwrap_or(name);
            match metric {
                "sluice_write_calls_total" => {
                    m.write_calls += value.parse::<u64>().ok()?;
                    found = true;
                }
                "sluice_bytes_out_total" => m.bytes_out = value.parse().ok()?,
                "sluice_worker_loop_iterations_total" => {
                    m.iterations += value.parse::<u64>().ok()?
                }
                "sluice_write_wait_max_seconds" => m.wait_max_s = value.parse().ok()?,
                "sluice_batch_file_bytes" => m.batch_file_bytes += value.parse::<u64>().ok()?,
                "sluice_write_wait_seconds_bucket" => {
                    let le = name.split("le=\"").nth(1)?.split('"').next()?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse().ok()?
                    };
                    m.wait_buckets.push((le, value.parse().ok()?));
                }
                _ => {}
            }
        }
        found.then_some(m)
    }

    /// `GET /metrics` from `addr`, with a short timeout (called twice a run,
    /// at the edges of the window).
    pub fn fetch(addr: std::net::SocketAddr) -> Option<Self> {
        use std::io::{Read, Write};
        let timeout = std::time::Duration::from_secs(2);
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        let (_, body) = body.split_once("\r\n\r\n")?;
        Self::parse(body)
    }
}

/// The write waits between two readings: counts per bucket in the window,
/// and from them the bucket bounds that hold the median, the 99th
/// percentile and the longest wait (upper bounds, in ms).
pub fn wait_window(a: &ServerMetrics, b: &ServerMetrics) -> Option<(u64, f64, f64, f64)> {
    if a.wait_buckets.len() != b.wait_buckets.len() || b.wait_buckets.is_empty() {
        return None;
    }
    let cum: Vec<(f64, u64)> = b
        .wait_buckets
        .iter()
        .zip(&a.wait_buckets)
        .map(|(&(le, nb), &(_, na))| (le, nb.saturating_sub(na)))
        .collect();
    let total = cum.last()?.1;
    if total == 0 {
        return Some((0, 0.0, 0.0, 0.0));
    }
    let at = |q: f64| {
        let rank = ((q * total as f64).ceil() as u64).max(1);
        cum.iter()
            .find(|&&(_, c)| c >= rank)
            .map_or(f64::INFINITY, |&(le, _)| le * 1000.0)
    };
    Some((total, at(0.5), at(0.99), at(1.0)))
}

#[cfg(test)]
mod metrics_tests {
    use super::*;

    const TEXT: &str = "# HELP sluice_bytes_out_total x\n# TYPE sluice_bytes_out_total counter\n\
        sluice_bytes_out_total 5000\n\
        sluice_write_calls_total{worker=\"0\"} 7\n\
        sluice_write_calls_total{worker=\"1\"} 3\n\
        sluice_write_wait_seconds_bucket{le=\"0.001\"} 4\n\
        sluice_write_wait_seconds_bucket{le=\"0.03\"} 9\n\
        sluice_write_wait_seconds_bucket{le=\"+Inf\"} 10\n\
        sluice_write_wait_max_seconds 0.25\n\
        sluice_worker_loop_iterations_total{worker=\"0\"} 40\n\
        sluice_batch_file_bytes{worker=\"0\"} 4096\n\
        sluice_batch_file_bytes{worker=\"1\"} 100\n";

    #[test]
    fn reads_write_calls_and_waits() {
        let m = ServerMetrics::parse(TEXT).unwrap();
        assert_eq!(m.write_calls, 10);
        assert_eq!(m.bytes_out, 5000);
        assert_eq!(m.wait_buckets.len(), 3);
        assert_eq!(m.wait_buckets[2].0, f64::INFINITY);
        assert_eq!(m.wait_max_s, 0.25);
        assert_eq!(m.iterations, 40);
        assert_eq!(m.batch_file_bytes, 4196);
        let before = ServerMetrics {
            wait_buckets: vec![(0.001, 2), (0.03, 2), (f64::INFINITY, 2)],
            ..m.clone()
        };
        // 8 waits in the window: 2 under 1 ms, 5 under 30 ms, 1 above.
        let (n, p50, p99, max) = wait_window(&before, &m).unwrap();
        assert_eq!(n, 8);
        assert_eq!(p50, 30.0);
        assert_eq!(p99, f64::INFINITY);
        assert_eq!(max, f64::INFINITY);
    }

    #[test]
    fn a_server_without_the_counters_gives_none() {
        assert_eq!(ServerMetrics::parse("up 1\n"), None);
    }
}
