//! The few small types and helpers every server module uses: the ids that
//! name connections, streams and relay tasks across threads, a connection's
//! byte counters, and the lock helper.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A connection's id: unique for the process's lifetime (slab keys are
/// reused, ids are not), so a message naming it can never reach its
/// successor in the same slab slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection's slab key (its mio token). Reused after a close: anything
/// that outlives one loop iteration names a connection by [`ConnId`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ConnKey(pub usize);

/// Locks a mutex, carrying on after a panic elsewhere poisoned it: every
/// structure behind these locks stays consistent between statements.
pub(crate) fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stream's id: unique for the process's lifetime (names are reused, ids
/// are not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A relay task's id: unique for the process's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A connection's byte counters, readable by the API from any thread.
/// Only the worker that owns the connection writes them (a relay task's
/// connections all live on its worker), so an addition is a plain load and
/// store ([`ConnCounters::add_out`]), not a locked read-modify-write: on x86 a
/// `lock add` waits for every store before it, and the write path makes one
/// per write call.
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl ConnCounters {
    /// Counts `n` bytes read, from the owning worker (see [`ConnCounters`]).
    pub fn add_in(&self, n: u64) {
        add_owned(&self.bytes_in, n);
    }

    /// Counts `n` bytes written, from the owning worker.
    pub fn add_out(&self, n: u64) {
        add_owned(&self.bytes_out, n);
    }
}

/// `counter += n` where one thread alone writes `counter` and others only
/// read it: no lock prefix, and readers still never see a torn value.
pub fn add_owned(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// `counter = max(counter, n)`, for a counter one thread alone writes (see
/// [`add_owned`]): no compare-and-swap loop.
pub fn max_owned(counter: &AtomicU64, n: u64) {
    if n > counter.load(Ordering::Relaxed) {
        counter.store(n, Ordering::Relaxed);
    }
}
