//! The sans-IO core of Sluice: everything that turns bytes into protocol
//! events and back, and nothing that touches a socket, a thread or the
//! clock. The server (the `sluice` crate) drives it; this crate cannot
//! import the server, so the boundary is kept by the compiler.
//!
//! * [`protocol`]: RTMP: handshake, chunk stream, AMF, messages, the
//!   server-side [`protocol::session::ServerSession`], the client side, and
//!   the names (`app`, `stream`, `app/stream`) a session hands out. Each
//!   limit the protocol enforces is a named constant beside the code it
//!   bounds, and [`protocol::session::SessionConfig::default`] is built from
//!   those constants alone.
//! * [`media`]: FLV audio / video payloads, legacy and Enhanced RTMP:
//!   codecs, sequence headers, keyframes, multitrack.
//! * [`rendition`]: one track of a multitrack message alone, in the form
//!   a player without multitrack support reads.
//! * [`wire`]: the immutable wire form of a message, shared by every
//!   subscriber.
//! * [`vod`]: MP4 and FLV files as frames (video on demand), read through
//!   byte ranges the server fetches; HLS VOD playlists and fragments.
//!
//! Time comes in as an argument (`Instant`), bytes come in as buffers, and
//! what to send comes back out; tests drive every part without a socket.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub mod cmaf;
pub mod media;
pub mod protocol;
pub mod rendition;
pub mod vod;
pub mod wire;
