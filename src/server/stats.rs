//! Counters the HTTP API and `/metrics` read: process-wide atomics, updated
//! by workers where the event happens (no locks on the data path).

use super::base::{add_owned, max_owned};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Why a connection closed, for logs and `sluice_closes_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed or reset the connection.
    Peer,
    /// A deadline passed (handshake, ping, idle publisher, HTTP request).
    Timeout,
    /// The peer broke the protocol (RTMP, HTTP or WebSocket).
    Protocol,
    /// A player's socket took nothing for the stall timeout.
    Stalled,
    /// A peer let unread control replies pile up.
    Overflow,
    /// The stream ended (HTTP-FLV players close with their publisher).
    StreamEnded,
    /// Closed through the HTTP API.
    Api,
    /// The server is shutting down.
    Shutdown,
    /// A panic while handling this connection (a bug in Sluice).
    Panic,
    /// Finished normally: an HTTP response sent with `Connection: close`.
    Done,
    /// A publisher whose stream another publisher took over
    /// (`second_publisher = "replace"`).
    Replaced,
}

impl CloseReason {
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Peer,
        CloseReason::Timeout,
        CloseReason::Protocol,
        CloseReason::Stalled,
        CloseReason::Overflow,
        CloseReason::StreamEnded,
        CloseReason::Api,
        CloseReason::Shutdown,
        CloseReason::Panic,
        CloseReason::Done,
        CloseReason::Replaced,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Timeout => "timeout",
            CloseReason::Protocol => "protocol",
            CloseReason::Stalled => "stalled",
            CloseReason::Overflow => "overflow",
            CloseReason::StreamEnded => "stream_ended",
            CloseReason::Api => "api",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Panic => "panic",
            CloseReason::Done => "done",
            CloseReason::Replaced => "replaced",
        }
    }
}

/// A connection's transport protocol, for gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Rtmp,
    Rtmps,
    Http,
    Https,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Rtmp,
        Protocol::Rtmps,
        Protocol::Http,
        Protocol::Https,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Rtmp => "rtmp",
            Protocol::Rtmps => "rtmps",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

/// Process-wide counters.
#[derive(Debug)]
pub struct Stats {
    pub started: Instant,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_dropped: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Reads of TLS handshakes put off to a later loop iteration, the
    /// iteration's handshake time spent (a burst of joiners).
    pub handshakes_deferred: AtomicU64,
    closes: [AtomicU64; CloseReason::ALL.len()],
    connections: [AtomicUsize; Protocol::ALL.len()],
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            handshake_failures: AtomicU64::new(0),
            handshakes_deferred: AtomicU64::new(0),
            closes: Default::default(),
            connections: Default::default(),
        }
    }
}

impl Stats {
    pub fn closed(&self, reason: CloseReason) {
        self.closes[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn closes(&self, reason: CloseReason) -> u64 {
        self.closes[reason as usize].load(Ordering::Relaxed)
    }

    pub fn opened(&self, p: Protocol) {
        self.connections[p as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, p: Protocol) {
        self.connections[p as usize].fetch_sub(1, Ordering::Relaxed);
    }

    pub fn connections(&self, p: Protocol) -> usize {
        self.connections[p as usize].load(Ordering::Relaxed)
    }
}

/// Upper bounds, in microseconds, of the buckets of [`WaitHistogram`]
/// (`sluice_write_wait_seconds`): fine around the write budgets in use
/// (45 ms by default, 100 to 350 ms for operators who batch harder).
pub const WRITE_WAIT_BUCKETS_US: [u64; 19] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 25_000, 30_000, 35_000, 40_000, 45_000, 50_000,
    75_000, 100_000, 150_000, 200_000, 250_000, 350_000, 1_000_000,
];

/// How long media waited in the server before its write began: from the
/// loop iteration that held its oldest frame (or queued it, when it was not
/// held) to the write call, for
/// every write of a connection whose socket had room (a full socket's wait
/// is the player's, not the server's). One per worker, written by it alone
/// (so [`WaitHistogram::record`] adds with plain loads and stores: it runs
/// once per write call).
#[derive(Debug, Default)]
pub struct WaitHistogram {
    /// Non-cumulative counts per bucket of [`WRITE_WAIT_BUCKETS_US`], then
    /// the count above the last.
    buckets: [AtomicU64; WRITE_WAIT_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

/// A [`WaitHistogram`] read at one moment (or several workers' added up).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WaitSnapshot {
    /// Counts per bucket, not cumulative; the last is above every bound.
    pub buckets: [u64; WRITE_WAIT_BUCKETS_US.len() + 1],
    pub sum_us: u64,
    pub max_us: u64,
}

impl WaitHistogram {
    pub fn record(&self, wait: Duration) {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        let i = WRITE_WAIT_BUCKETS_US.partition_point(|&b| b < us);
        // Its worker alone writes it: no locked read-modify-writes.
        add_owned(&self.buckets[i], 1);
        add_owned(&self.sum_us, us);
        max_owned(&self.max_us, us);
    }

    /// Adds this histogram's counts to `into`.
    pub fn add_to(&self, into: &mut WaitSnapshot) {
        for (i, b) in self.buckets.iter().enumerate() {
            into.buckets[i] += b.load(Ordering::Relaxed);
        }
        into.sum_us += self.sum_us.load(Ordering::Relaxed);
        into.max_us = into.max_us.max(self.max_us.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_lands_in_the_first_bucket_that_holds_it() {
        let h = WaitHistogram::default();
        h.record(Duration::from_micros(500)); // on the first bound
        h.record(Duration::from_micros(501));
        h.record(Duration::from_millis(30));
        h.record(Duration::from_secs(5)); // above every bound
        let mut s = WaitSnapshot::default();
        h.add_to(&mut s);
        assert_eq!(s.buckets[0], 1);
        assert_eq!(s.buckets[1], 1);
        assert_eq!(
            s.buckets[WRITE_WAIT_BUCKETS_US.partition_point(|&b| b < 30_000)],
            1
        );
        assert_eq!(s.buckets[WRITE_WAIT_BUCKETS_US.len()], 1);
        assert_eq!(s.max_us, 5_000_000);
        assert_eq!(s.sum_us, 500 + 501 + 30_000 + 5_000_000);
    }
}
