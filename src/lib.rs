//! Sluice: a live-streaming server. Encoders publish over RTMP; players
//! receive over RTMP, fanned out from per-core event loops without copying a
//! payload per player.
//!
//! # The shape
//!
//! ```text
//!            ┌──────────────────────── protocol (sans-IO: no sockets, no clock) ─────────────────────────┐
//!  socket ─► │ read buffer ─► handshake ─► ChunkDecoder ─► Message ─► ServerSession ─► Event::Media      │
//!  bytes     │  (BytesMut)               (per-csid reassembly;  (payload is a Bytes slice of the       │
//!            │                            single-chunk payloads   read buffer: no copy)                │
//!            │                            are split_to().freeze())                                     │
//!            └────────────────────────────────────────────────────────────────────────────────────────┘
//!                                                │ media::classify_* (keyframe? sequence header? codec)
//!                                                ▼
//!   server::stream::Frame  (Arc: timestamp, payload Bytes, class, and its RTMP wire form built ONCE:
//!                           chunk headers in one small allocation + payload.slice(..) pieces)
//!                                                │
//!            publisher's worker: GOP cache append + the set of workers with players (one lock, per frame)
//!                     │                                   │
//!          same worker: straight to                 other workers: one Arc per worker per frame into
//!          its local players                        that worker's inbox, one mio::Waker wake per wakeup
//!                     ▼                                   ▼
//!   each player's OutQueue: Arc'd frames (in the player's format) + offset, bounded in bytes
//!                     │
//!                     ▼
//!   sendmsg over as many queued frames as the socket takes (a piece per iovec, up to MAX_IOVECS = 256),
//!   when the write policy (pacing.rs: --max-write-delay) says the queue is worth a write
//! ```
//!
//! * [`protocol`], [`media`] and [`wire`] are the sans-IO core, a crate of
//!   its own (`sluice-core`, in `core/`) re-exported here. [`protocol`] is
//!   RTMP: handshake, chunk stream, AMF, commands, the per-connection
//!   [`protocol::session::ServerSession`] and the names it hands out
//!   ([`protocol::name`]). It takes bytes and the current time and hands
//!   back bytes to send and events; it owns its limits and their defaults.
//!   [`media`] classifies FLV audio/video payloads (legacy AVC/AAC/HEVC and
//!   Enhanced RTMP FourCC headers) so the GOP cache is right for every
//!   codec; [`wire`] is the shared, immutable wire form of a message. The
//!   core cannot import anything below: the compiler keeps it so.
//! * [`server`] owns sockets: one thread per worker, each with its own mio
//!   `Poll`, SO_REUSEPORT listeners (RTMP, RTMPS, HTTP, HTTPS, API) and slab
//!   of connections; a connection is RTMP or HTTP (HTTP-FLV, ws-flv, the API,
//!   `/metrics`), optionally inside rustls, around the same output queue and
//!   subscriptions. A stream registry shared by all workers is touched only
//!   when streams and players start or stop (and once per published frame by
//!   the publisher's worker). Each frame's FLV and WebSocket forms are built
//!   at most once, by the first player that needs them.
//! * [`relay`] holds push and pull rules (restreaming, origin/edge); the
//!   outbound connections are `server::relay_conn` connections of `server::tasks` in the same slabs: a push
//!   is one more subscriber of its stream (same queue, same shared wire
//!   form), a pull publishes into the registry like an encoder.
//! * [`auth`] (who may publish and play) and [`hooks`] (HTTP callbacks, made
//!   on helper threads) decide for the server.
//! * [`config`] holds the server's limits as named constants with a doc
//!   comment saying why, and the [`config::Config`] the command line fills;
//!   the protocol's part of it becomes a
//!   [`protocol::session::SessionConfig`].
//! * [`sdnotify`] tells systemd when the server is ready or stopping.
//! * [`logjson`] writes log lines as JSON objects (`--log-format json`).
//! * [`seconds`] and [`certs`] are small value types the modules above
//!   share: durations as written in flags and files, certificate files.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

pub use sluice_core::{cmaf, media, protocol, rendition, vod, wire};

pub mod auth;
pub mod certs;
pub mod config;
pub mod hls_settings;
pub mod hooks;
pub mod logjson;
pub mod record_settings;
pub mod relay;
pub mod sdnotify;
pub mod seconds;
pub mod server;
pub mod vod_settings;
