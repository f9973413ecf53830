//! Test builds only (`--features fault-injection`): stream names that make a
//! worker panic, so the tests can check the per-connection panic backstop.
//! Never in a release build.

/// Test builds only (`--features fault-injection`): publishing this stream
/// name panics in the publisher's read path, so tests can check that the
/// panic backstop closes that connection alone.
pub const FAULT_PANIC_ON_PUBLISH: &str = "sluice-fault-panic-on-publish";
/// Test builds only: queueing a frame of a stream whose name ends with this
/// panics in the delivery to each player.
pub const FAULT_PANIC_ON_DELIVERY: &str = "sluice-fault-panic-on-delivery";
