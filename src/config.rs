//! Every limit the server enforces, as a named constant saying why that value,
//! and the [`Config`] the command line fills (each limit has a flag).

use std::net::SocketAddr;
use std::time::Duration;

/// Default RTMP listen address (the registered RTMP port).
pub const DEFAULT_RTMP_ADDR: &str = "0.0.0.0:1935";

/// Default HTTP listen address (HTTP-FLV, ws-flv, the API and /metrics).
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";

/// TLS handshakes in progress per worker: a full handshake takes a few ms of
/// CPU and ~40 KB; 256 pending per core is far above any legitimate burst.
pub const DEFAULT_MAX_TLS_HANDSHAKES_PER_WORKER: usize = 256;

/// Time an HTTP client has to send a complete request head (and body), and
/// an idle keep-alive connection to send its next one: slowloris bound.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Outbound chunk size. 4096 is what ffmpeg and OBS use; larger chunks mean
/// fewer headers and fewer iovecs per frame, and every client handles it.
pub const DEFAULT_CHUNK_SIZE: u32 = 4096;

/// Largest message accepted from a peer. A 4K keyframe at a high bitrate is a
/// few MiB; 16 MiB leaves room and still bounds what one header can ask for.
/// Checked when the header arrives, before any byte is buffered.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 16 * 1024 * 1024;

/// Most chunk streams (csids) a peer may use at once. Encoders use fewer than
/// ten; each live csid holds header state.
pub const DEFAULT_MAX_CHUNK_STREAMS: usize = 64;

/// Most bytes one connection may hold in partially received messages across
/// all csids. Twice the largest message: one in flight plus interleaved audio.
pub const DEFAULT_MAX_PARTIAL_BYTES: usize = 32 * 1024 * 1024;

/// Most message streams (createStream) one connection may hold. A publisher
/// or player needs one; a few more cover clients that publish and play.
pub const DEFAULT_MAX_MESSAGE_STREAMS: u32 = 8;

/// Time from accept to a completed handshake and `connect`, as one absolute
/// deadline (a dribbling client cannot extend it byte by byte).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the server pings a silent peer (User Control PingRequest).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

/// How long a pinged peer has to answer (or send anything) before it is closed.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(60);

/// A publisher that sends no media for this long is dropped, freeing the name.
pub const DEFAULT_PUBLISHER_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes queued for one player before it skips to the next keyframe. Twice
/// the GOP cache: a joiner's burst (the whole cached GOP) plus as much again
/// of lag (about 10 s at 3 Mbit/s). Queues hold references to shared frames,
/// so this bounds how far behind a player may fall, not a copy per player.
pub const DEFAULT_PLAYER_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// A player whose socket accepts no byte for this long while data waits is
/// disconnected.
pub const DEFAULT_PLAYER_STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Most bytes of control replies (pongs, acks, command results) queued for a
/// peer that does not read them; beyond it the peer is closed (ADVERSARIAL 29).
pub const DEFAULT_CONTROL_QUEUE_BYTES: usize = 256 * 1024;

/// GOP cache bounds. A 2 s GOP at 3 Mbit/s is ~750 KB and ~60+90 frames; the
/// byte cap covers 10 s GOPs at 3 Mbit/s, and both caps hold when a stream
/// never sends a keyframe (ADVERSARIAL 30): the cache is then emptied until
/// the next keyframe.
pub const DEFAULT_GOP_CACHE_BYTES: usize = 4 * 1024 * 1024;
/// See [`DEFAULT_GOP_CACHE_BYTES`].
pub const DEFAULT_GOP_CACHE_FRAMES: usize = 2048;

/// Most connections one worker holds (the process has 20,000 descriptors on
/// the reference machine; leave room for the listener and logs).
pub const DEFAULT_MAX_CONNECTIONS_PER_WORKER: usize = 16_000;

/// Window Acknowledgement Size the server announces, and Set Peer Bandwidth.
/// 2.5 MB as Adobe's servers and nginx-rtmp use.
pub const SERVER_WINDOW_ACK_SIZE: u32 = 2_500_000;

/// How long shutdown waits for queued bytes to drain before exiting.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a graceful shutdown (SIGTERM, `POST /api/drain`) keeps serving
/// publishers it asked to reconnect (Enhanced RTMP capsEx Reconnect). OBS
/// and ffmpeg reconnect at their next keyframe, at most a GOP or two away.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub rtmp_addr: SocketAddr,
    /// RTMPS (RTMP in TLS) listen address, if any.
    pub rtmps_addr: Option<SocketAddr>,
    /// HTTPS (HTTPS-FLV, wss-flv, the API) listen address, if any.
    pub https_addr: Option<SocketAddr>,
    /// Certificates for RTMPS and HTTPS.
    pub tls: crate::server::tls::TlsFiles,
    /// TLS handshakes in progress one worker accepts before refusing new
    /// TLS connections (ClientHellos that never finish cost memory).
    pub max_tls_handshakes_per_worker: usize,
    /// HTTP-FLV, ws-flv, and the API unless `api_addr` is set. None: off.
    pub http_addr: Option<SocketAddr>,
    /// The API and /metrics on their own address (then not on `http_addr`).
    pub api_addr: Option<SocketAddr>,
    /// Bearer token the API and /metrics require, if set.
    pub api_token: Option<String>,
    /// `Access-Control-Allow-Origin` on HTTP responses.
    pub cors_origin: String,
    pub http_request_timeout: Duration,
    pub workers: usize,
    pub chunk_size: u32,
    pub max_message_len: u32,
    pub max_chunk_streams: usize,
    pub max_partial_bytes: usize,
    pub max_message_streams: u32,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub publisher_idle_timeout: Duration,
    pub player_queue_bytes: usize,
    pub player_stall_timeout: Duration,
    pub control_queue_bytes: usize,
    pub gop_cache_bytes: usize,
    pub gop_cache_frames: usize,
    pub max_connections_per_worker: usize,
    /// `tcUrl` sent with Enhanced RTMP reconnect requests (None: the client
    /// reconnects to the tcUrl it used).
    pub reconnect_url: Option<String>,
    /// How long shutdown waits for publishers asked to reconnect to leave.
    pub drain_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            rtmp_addr: DEFAULT_RTMP_ADDR.parse().expect("valid default address"),
            http_addr: Some(DEFAULT_HTTP_ADDR.parse().expect("valid default address")),
            rtmps_addr: None,
            https_addr: None,
            tls: Default::default(),
            max_tls_handshakes_per_worker: DEFAULT_MAX_TLS_HANDSHAKES_PER_WORKER,
            api_addr: None,
            api_token: None,
            cors_origin: "*".into(),
            http_request_timeout: DEFAULT_HTTP_REQUEST_TIMEOUT,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            max_chunk_streams: DEFAULT_MAX_CHUNK_STREAMS,
            max_partial_bytes: DEFAULT_MAX_PARTIAL_BYTES,
            max_message_streams: DEFAULT_MAX_MESSAGE_STREAMS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            publisher_idle_timeout: DEFAULT_PUBLISHER_IDLE_TIMEOUT,
            player_queue_bytes: DEFAULT_PLAYER_QUEUE_BYTES,
            player_stall_timeout: DEFAULT_PLAYER_STALL_TIMEOUT,
            control_queue_bytes: DEFAULT_CONTROL_QUEUE_BYTES,
            gop_cache_bytes: DEFAULT_GOP_CACHE_BYTES,
            gop_cache_frames: DEFAULT_GOP_CACHE_FRAMES,
            max_connections_per_worker: DEFAULT_MAX_CONNECTIONS_PER_WORKER,
            reconnect_url: None,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

impl Config {
    /// Checks values a flag could set out of range.
    pub fn validate(&self) -> Result<(), String> {
        if !(128..=crate::protocol::chunk::MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(format!(
                "chunk size {} must be within 128..={}",
                self.chunk_size,
                crate::protocol::chunk::MAX_CHUNK_SIZE
            ));
        }
        if self.workers == 0 {
            return Err("workers must be at least 1".into());
        }
        if self.player_queue_bytes < self.gop_cache_bytes {
            return Err(format!(
                "player queue ({} bytes) must hold the GOP cache ({} bytes) a joiner receives at once",
                self.player_queue_bytes, self.gop_cache_bytes
            ));
        }
        if (self.rtmps_addr.is_some() || self.https_addr.is_some()) && self.tls.is_empty() {
            return Err("--rtmps and --https need --tls-cert and --tls-key (or --tls-dir)".into());
        }
        if self.max_message_streams == 0 || self.max_chunk_streams == 0 {
            return Err("message and chunk stream limits must be at least 1".into());
        }
        Ok(())
    }
}
