//! The RTMP protocol core, sans-IO (see `../shared/STYLE.md` §1): no sockets,
//! no mio, no threads, no clock reads. Every function takes bytes (and, in the
//! session, the current `Instant` as an argument) and returns bytes to send and
//! events for the server.
//!
//! * [`handshake`]: C0/C1/C2 and S0/S1/S2, simple and FP9 digest (spec 5.2).
//! * [`chunk`]: the chunk stream reader and writer (spec 5.3).
//! * [`message`]: message type ids, protocol control and user control
//!   messages (spec 5.4, 6.2).
//! * [`amf`]: AMF0 and AMF3 values (commands are AMF0, spec 7).
//! * [`client`]: the client side (tests, load generator, relays).
//! * [`session`]: one server-side connection: handshake → connect →
//!   createStream → publish / play, with limits and deadlines.

pub mod amf;
pub mod chunk;
pub mod client;
pub mod handshake;
pub mod message;
pub mod session;
