//! The RTMP protocol core, sans-IO (docs/design.md, "1. The protocol core
//! does no I/O"): no sockets, no mio, no threads, no clock reads. Every
//! function takes bytes (and, in the session, the current `Instant` as an
//! argument) and returns bytes to send and events for the server. Each limit
//! it enforces is a named constant beside the code it bounds, saying why
//! that value; the server's settings may change the values, not the rules.
//!
//! * [`handshake`]: C0/C1/C2 and S0/S1/S2, simple and FP9 digest (spec 5.2).
//! * [`chunk`]: the chunk stream reader and writer (spec 5.3).
//! * [`message`]: message type ids, protocol control and user control
//!   messages (spec 5.4, 6.2).
//! * [`amf`]: AMF0 and AMF3 values (commands are AMF0, spec 7).
//! * [`client`]: the client side (tests, load generator, relays).
//! * [`session`]: one server-side connection: handshake → connect →
//!   createStream → publish / play, with limits and deadlines.
//! * [`name`]: application and stream names, checked once where they enter.

pub mod amf;
pub mod chunk;
pub mod client;
pub mod handshake;
pub mod message;
pub mod name;
pub mod session;
