//! Counters the HTTP API and `/metrics` read: process-wide atomics, updated
//! by workers where the event happens (no locks on the data path).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

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
