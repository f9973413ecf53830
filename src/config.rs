//! Every limit the server enforces, as a named constant saying why that value,
//! and the [`Config`] the command line fills (each limit has a flag).

use crate::auth::{AccessConfig, AppRules};
use crate::relay::{RelayKind, RuleSpec, Unavailable};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// What a second publisher on a live name gets.
    pub second_publisher: PublisherPolicy,
    /// Who may publish and play, per application (the config file's
    /// `[app.NAME.publish]` and `[app.NAME.play]` tables).
    pub access: AccessConfig,
    /// Push and pull rules (`[[push]]`, `[[pull]]`, `--push`, `--pull`).
    pub relays: Vec<(RelayKind, RuleSpec)>,
    /// Extra trusted roots (PEM) for `rtmps://` relay peers.
    pub relay_ca: Option<PathBuf>,
    /// How long a pulled stream with no player stays pulled (per rule
    /// `idle_timeout` overrides it).
    pub pull_idle_timeout: Duration,
    /// What players get when an origin cannot be reached (per rule
    /// `on_unavailable` overrides it).
    pub pull_unavailable: Unavailable,
}

/// What happens when a publisher asks for a name someone already publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublisherPolicy {
    /// The first publisher keeps the name; the second gets
    /// NetStream.Publish.BadName.
    #[default]
    Reject,
    /// The second publisher takes the name over; the first is disconnected
    /// (an encoder that reconnects before the server noticed it left).
    Replace,
}

impl std::str::FromStr for PublisherPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "reject" => Ok(Self::Reject),
            "replace" => Ok(Self::Replace),
            _ => Err("expected reject or replace".into()),
        }
    }
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
            second_publisher: PublisherPolicy::Reject,
            access: AccessConfig::default(),
            relays: Vec::new(),
            relay_ca: None,
            pull_idle_timeout: crate::relay::DEFAULT_PULL_IDLE_TIMEOUT,
            pull_unavailable: Unavailable::NotFound,
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
        for (kind, spec) in &self.relays {
            self.relay_rule(*kind, spec, "config")
                .map_err(|e| format!("{} {}: {e}", kind.name(), spec.url))?;
        }
        Ok(())
    }

    /// A relay rule from its spec, with this config's defaults.
    pub fn relay_rule(
        &self,
        kind: RelayKind,
        spec: &RuleSpec,
        source: &'static str,
    ) -> Result<crate::relay::Rule, String> {
        spec.to_rule(kind, self.pull_idle_timeout, self.pull_unavailable, source)
    }
}

/// A positive number of seconds in the config file.
#[derive(Debug, Clone, Copy)]
pub struct Secs(pub Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !(v.is_finite() && v > 0.0) {
            return Err(serde::de::Error::custom(
                "expected a positive number of seconds",
            ));
        }
        Ok(Secs(Duration::from_secs_f64(v)))
    }
}

/// The config file (`-c FILE`, TOML): every flag under its name with `_`
/// for `-` (durations in seconds), plus `[app.NAME.publish]` and
/// `[app.NAME.play]` access rules. Flags given on the command line
/// override it. Unknown keys are errors (a typo must not silently open a
/// stream).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub rtmp: Option<SocketAddr>,
    /// An address, or `"off"`.
    pub http: Option<String>,
    pub rtmps: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    #[serde(default)]
    pub tls_cert: Vec<PathBuf>,
    #[serde(default)]
    pub tls_key: Vec<PathBuf>,
    pub tls_dir: Option<PathBuf>,
    pub max_tls_handshakes: Option<usize>,
    pub api: Option<SocketAddr>,
    pub api_token: Option<String>,
    pub cors_origin: Option<String>,
    pub http_request_timeout: Option<Secs>,
    pub workers: Option<usize>,
    pub chunk_size: Option<u32>,
    pub max_message_len: Option<u32>,
    pub max_chunk_streams: Option<usize>,
    pub max_partial_bytes: Option<usize>,
    pub max_message_streams: Option<u32>,
    pub handshake_timeout: Option<Secs>,
    pub ping_interval: Option<Secs>,
    pub ping_timeout: Option<Secs>,
    pub publisher_idle_timeout: Option<Secs>,
    pub player_queue_bytes: Option<usize>,
    pub player_stall_timeout: Option<Secs>,
    pub gop_cache_bytes: Option<usize>,
    pub gop_cache_frames: Option<usize>,
    pub max_connections: Option<usize>,
    pub reconnect_url: Option<String>,
    pub drain_timeout: Option<Secs>,
    pub second_publisher: Option<PublisherPolicy>,
    /// Access rules by application name (`*`: every other application).
    #[serde(default)]
    pub app: BTreeMap<String, AppRules>,
    /// `[[push]]` rules: `app` or `stream`, `url`, `insecure`.
    #[serde(default)]
    pub push: Vec<RuleSpec>,
    /// `[[pull]]` rules: `app` or `stream`, `url`, `insecure`, `static`,
    /// `on_unavailable`, `idle_timeout`.
    #[serde(default)]
    pub pull: Vec<RuleSpec>,
    pub relay_ca: Option<PathBuf>,
    pub pull_idle_timeout: Option<Secs>,
    pub pull_unavailable: Option<Unavailable>,
}

impl FileConfig {
    /// Parses a config file's text. Errors name the line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        let f: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        for name in f.app.keys() {
            if name != "*" && !crate::protocol::session::valid_name(name) {
                return Err(format!("[app.{name:?}]: not a valid application name"));
            }
        }
        for (name, rules) in &f.app {
            let h = &rules.hooks;
            for (what, url) in [
                ("on_connect", &h.on_connect),
                ("on_publish", &h.on_publish),
                ("on_play", &h.on_play),
                ("on_publish_done", &h.on_publish_done),
                ("on_play_done", &h.on_play_done),
                ("on_done", &h.on_done),
            ] {
                if let Some(url) = url {
                    crate::hooks::check_url(url)
                        .map_err(|e| format!("[app.{name:?}.hooks] {what} = {url:?}: {e}"))?;
                }
            }
        }
        if f.tls_cert.len() != f.tls_key.len() {
            return Err(format!(
                "{} tls_cert but {} tls_key: give them in pairs",
                f.tls_cert.len(),
                f.tls_key.len()
            ));
        }
        Ok(f)
    }

    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The access rules.
    pub fn access(&self) -> AccessConfig {
        AccessConfig {
            apps: self.app.clone(),
        }
    }

    /// `Config::default()` with what the file sets.
    pub fn to_config(&self) -> Result<Config, String> {
        let mut c = Config::default();
        macro_rules! set {
            ($($field:ident => $into:ident),* $(,)?) => {
                $(if let Some(v) = self.$field.clone() { c.$into = v; })*
            };
        }
        macro_rules! secs {
            ($($field:ident),* $(,)?) => {
                $(if let Some(Secs(v)) = self.$field { c.$field = v; })*
            };
        }
        set!(
            rtmp => rtmp_addr,
            max_tls_handshakes => max_tls_handshakes_per_worker,
            cors_origin => cors_origin,
            workers => workers,
            chunk_size => chunk_size,
            max_message_len => max_message_len,
            max_chunk_streams => max_chunk_streams,
            max_partial_bytes => max_partial_bytes,
            max_message_streams => max_message_streams,
            player_queue_bytes => player_queue_bytes,
            gop_cache_bytes => gop_cache_bytes,
            gop_cache_frames => gop_cache_frames,
            max_connections => max_connections_per_worker,
            second_publisher => second_publisher,
        );
        secs!(
            http_request_timeout,
            handshake_timeout,
            ping_interval,
            ping_timeout,
            publisher_idle_timeout,
            player_stall_timeout,
            drain_timeout,
            pull_idle_timeout,
        );
        match self.http.as_deref() {
            None => {}
            Some("off") => c.http_addr = None,
            Some(a) => c.http_addr = Some(a.parse().map_err(|e| format!("http = {a:?}: {e}"))?),
        }
        c.rtmps_addr = self.rtmps.or(c.rtmps_addr);
        c.https_addr = self.https.or(c.https_addr);
        c.api_addr = self.api.or(c.api_addr);
        c.api_token = self.api_token.clone().or(c.api_token);
        c.reconnect_url = self.reconnect_url.clone().or(c.reconnect_url);
        c.tls.pairs = self
            .tls_cert
            .iter()
            .cloned()
            .zip(self.tls_key.iter().cloned())
            .collect();
        c.tls.dir = self.tls_dir.clone();
        c.access = self.access();
        c.relay_ca = self.relay_ca.clone();
        c.pull_unavailable = self.pull_unavailable.unwrap_or(c.pull_unavailable);
        c.relays = self
            .push
            .iter()
            .map(|s| (RelayKind::Push, s.clone()))
            .chain(self.pull.iter().map(|s| (RelayKind::Pull, s.clone())))
            .collect();
        for (kind, spec) in &c.relays {
            if spec.kind.is_some_and(|k| k != *kind) {
                return Err(format!(
                    "[[{}]] {}: type says otherwise",
                    kind.name(),
                    spec.url
                ));
            }
            c.relay_rule(*kind, spec, "config")
                .map_err(|e| format!("[[{}]] url = {:?}: {e}", kind.name(), spec.url))?;
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sets_fields() {
        let f = FileConfig::parse(
            "rtmp = \"127.0.0.1:1936\"\nhttp = \"off\"\nworkers = 3\nping_interval = 1.5\nsecond_publisher = \"replace\"\n[app.live.publish]\nkeys = [\"k\"]\n",
        )
        .unwrap();
        let c = f.to_config().unwrap();
        assert_eq!(c.rtmp_addr, "127.0.0.1:1936".parse().unwrap());
        assert_eq!(c.http_addr, None);
        assert_eq!(c.workers, 3);
        assert_eq!(c.ping_interval, Duration::from_millis(1500));
        assert_eq!(c.second_publisher, PublisherPolicy::Replace);
        assert_eq!(c.access.apps["live"].publish.keys, vec!["k".to_owned()]);
    }

    #[test]
    fn errors_name_the_line() {
        for (text, line) in [
            ("workers = 2\nrtmp = \"nonsense\"\n", 2),
            ("workers = 2\n\nwrkers = 3\n", 3),
            // A bad element is reported at the start of its array.
            (
                "[app.live.publish]\nallow = [\"10.0.0.0/8\",\n  \"10.0.0.0/40\"]\n",
                2,
            ),
            (
                "[app.live.play]\nsign = { secret = \"s\", scheme = \"sha1\" }\n",
                2,
            ),
            ("ping_timeout = -1\n", 1),
            ("[app.live]\npublsh = {}\n", 2),
            ("workers = \n", 1),
        ] {
            let e = FileConfig::parse(text).unwrap_err();
            assert!(e.contains(&format!("line {line}")), "{text:?}: {e}");
        }
    }
}
