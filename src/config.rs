//! The server's settings, each declared once.
//!
//! A setting is one entry of the `settings!` table below: its [`Config`]
//! field and type, its file key (the flag is the key with `-` for `_`:
//! `max_connections` is `--max-connections`), the flag's value name, its
//! default (a named constant saying why that value), its check, and its
//! help text. From that one entry come the `Config` field and its default,
//! the config file's key ([`FileConfig`]), the command-line option and its
//! `--help` line ([`options`]), the flag's parsing ([`Config::from_args`])
//! and the check ([`Config::validate`]). How a value is written (an
//! address, a count, seconds, a policy) is its type's [`SettingValue`], the
//! same for the flag and the file: `--ping-timeout 1.5` and
//! `ping_timeout = 1.5` go through one parser ([`crate::seconds`]).
//!
//! Settings that are not one value stay hand-written beside the table, each
//! in one place: `--http ADDR` / `--no-http` / `http = "off"`, the TLS
//! certificate pairs and directory, the access rules (`[app.NAME.*]`) and
//! the relay rules (`--push`, `--pull`, `--pull-static`, `[[push]]`,
//! `[[pull]]`).
//!
//! The protocol's limits (chunk and message sizes, handshake and ping
//! timeouts) are the protocol's own: their defaults and why are constants
//! in [`crate::protocol::chunk`] and [`crate::protocol::session`], and
//! [`Config::session_config`] hands the values set here to each session.

use crate::auth::{AccessConfig, AppRules, Cidr};
use crate::certs::TlsFiles;
use crate::cmaf::PackagerConfig;
use crate::hls_settings::{HlsDefaults, HlsGroup};
use crate::protocol::chunk::{self, ChunkLimits};
use crate::protocol::name::AppName;
use crate::protocol::session::{self, SessionConfig};
use crate::record_settings::{RecordDefaults, RecordFormat, RecordMode, RecordPolicy};
use crate::relay::{RelayKind, RuleSpec, Unavailable};
use crate::seconds::{self, Secs};
use getopts::{Matches, Options};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default RTMP listen address (the registered RTMP port).
pub const DEFAULT_RTMP_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 1935));

/// Default HTTP listen address (HTTP-FLV, ws-flv, the API and /metrics).
pub const DEFAULT_HTTP_ADDR: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));

/// TLS handshakes in progress per worker: a full handshake takes a few ms of
/// CPU and ~40 KB; 256 pending per core is far above any legitimate burst.
pub const DEFAULT_MAX_TLS_HANDSHAKES_PER_WORKER: usize = 256;

/// Time an HTTP client has to send a complete request head (and body), and
/// an idle keep-alive connection to send its next one: slowloris bound.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes queued for one player before it skips to the next keyframe. Twice
/// the GOP cache: a joiner's burst (the whole cached GOP) plus as much again
/// of lag (about 10 s at 3 Mbit/s). Queues hold references to shared frames,
/// so this bounds how far behind a player may fall, not a copy per player.
pub const DEFAULT_PLAYER_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// A player whose socket accepts no byte for this long while data waits is
/// disconnected.
pub const DEFAULT_PLAYER_STALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Most bytes of control replies (pongs, acks, command results) queued for a
/// peer that does not read them; beyond it the peer is closed
/// (docs/hardening.md, case 29).
pub const DEFAULT_CONTROL_QUEUE_BYTES: usize = 256 * 1024;

/// GOP cache bounds. A 2 s GOP at 3 Mbit/s is ~750 KB and ~60+90 frames; the
/// byte cap covers 10 s GOPs at 3 Mbit/s, and both caps hold when a stream
/// never sends a keyframe (docs/hardening.md, case 30): the cache is then
/// emptied until the next keyframe.
pub const DEFAULT_GOP_CACHE_BYTES: usize = 4 * 1024 * 1024;
/// See [`DEFAULT_GOP_CACHE_BYTES`].
pub const DEFAULT_GOP_CACHE_FRAMES: usize = 2048;

/// Most connections one worker holds (the process has 20,000 descriptors on
/// the reference machine; leave room for the listener and logs).
pub const DEFAULT_MAX_CONNECTIONS_PER_WORKER: usize = 16_000;

/// The chunk size Sluice announces to its peers and writes with. Every
/// client honours Set Chunk Size (ffmpeg, librtmp, GStreamer, OBS, Flash);
/// 60,000 is what SRS ships as its default. A message up to that size is
/// one chunk: a frame's wire form is a header piece and a payload piece,
/// where at 4096 an 11 KB video frame is six pieces and a 56 KB keyframe
/// 28, each an iovec the kernel walks for every player.
pub const DEFAULT_CHUNK_SIZE: u32 = 60_000;

/// The write budget (`--max-write-delay`): how long a player's queued media
/// may wait for more to leave with it. A stream is released a write pass
/// early (about 10 ms at 1,000 players on one core, so that the last
/// player's write still begins within the budget), so an audio frame waits
/// for the next video frame of a 30 fps stream (33 ms) only if the budget
/// is longer than both: then video frames go out as they come and audio
/// rides with the next one, about 30 writes a second per 3 Mbit/s player
/// instead of 77. At 30 ms, two audio frames in three left alone (45 writes
/// a second at 1,000 players). And the bound, plus delivery, stays within
/// a 50 ms p99 latency at any frame rate, where 50 ms would not.
pub const DEFAULT_MAX_WRITE_DELAY: Millis = Millis(Duration::from_millis(45));

/// The largest write budget accepted: past a second, players' buffers (and
/// their users) notice.
pub const MAX_WRITE_DELAY: Duration = Duration::from_secs(1);

/// A duration in whole milliseconds, 0 included (`--max-write-delay 30`,
/// `max_write_delay = 30` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Millis(pub Duration);

impl SettingValue for Millis {
    type File = u64;
    fn from_file(v: u64) -> Millis {
        Millis(Duration::from_millis(v))
    }
    fn parse_flag(text: &str) -> Result<Millis, String> {
        let ms: u64 = text
            .trim()
            .parse()
            .map_err(|_| format!("expected whole milliseconds, got {text:?}"))?;
        Ok(Millis(Duration::from_millis(ms)))
    }
    fn show(&self) -> Option<String> {
        Some(self.0.as_millis().to_string())
    }
}

/// How long shutdown waits for queued bytes to drain before exiting.
pub const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// How long shutdown waits, once the workers stopped, for the disk threads
/// to finish the recordings' files (their last fragments, the FLV index).
pub const SHUTDOWN_DISK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful shutdown (SIGTERM, `POST /api/drain`) keeps serving
/// publishers it asked to reconnect (Enhanced RTMP capsEx Reconnect). OBS
/// and ffmpeg reconnect at their next keyframe, at most a GOP or two away.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Disk helper threads when not set: enough that one slow `fsync` does not
/// hold every file, few enough not to compete with the workers for cores.
pub const DEFAULT_DISK_THREADS: usize = 4;

/// The most an LL-HLS PART-TARGET may be: each stream's is fitted to its
/// frames within it (whole frames plus the audio's overshoot). 240 ms gives
/// 224 ms at 20, 25, 30, 50 and 60 fps with AAC (233 at 24 fps), parts of
/// about 200 ms of video, and PART-HOLD-BACK (three part targets) about
/// 0.67 s, so hls.js in low-latency mode plays well within 1.5 s of the
/// publisher (docs/hls.md, perf/README.md).
pub const DEFAULT_HLS_PART_TARGET: Duration = Duration::from_millis(240);

/// EXT-X-TARGETDURATION: segments start on keyframes, so GOPs of 1, 2 or 4 s
/// (what encoders are told to use for live) each make whole segments; a
/// longer GOP is cut at a part boundary.
pub const DEFAULT_HLS_TARGET_DURATION: Duration = Duration::from_secs(4);

/// A keyframe starts a new segment only after this much: very short GOPs
/// share a segment instead of making playlists long.
pub const DEFAULT_HLS_MIN_SEGMENT: Duration = Duration::from_secs(1);

/// Complete segments kept per stream: 7 (what MediaMTX keeps) is 14 s of
/// 2 s GOPs, enough for a classic player to start three segments back and
/// for LL-HLS players, at about 5 MB per stream at 3 Mbit/s. Delta updates
/// skip segments only past the skip boundary (six target durations): raise
/// this for long playlists (a DVR-like window) and delta updates that pay.
pub const DEFAULT_HLS_WINDOW_SEGMENTS: usize = 7;

/// Bytes of segments one stream's window may hold (every rendition). 32 MiB
/// is 40 s of a 6 Mbit/s ladder; the window drops its oldest segments first.
pub const DEFAULT_HLS_WINDOW_BYTES: usize = 32 * 1024 * 1024;

/// Bytes every stream's HLS window may hold together. A stream is packaged
/// only while the windows already admitted plus its own stay within this,
/// so the memory HLS can take is known in advance: 1 GiB is 32 streams at
/// the default window.
pub const DEFAULT_HLS_MAX_BYTES: usize = 1024 * 1024 * 1024;
/// How long a process handing over to its successor (SIGUSR2) keeps serving
/// what it has: publishers that cannot be asked to reconnect (ffmpeg, most
/// encoders) publish on until they stop, and their players watch on. An hour
/// covers a typical live event; at the deadline the rest is closed.
pub const DEFAULT_HANDOVER_TIMEOUT: Duration = Duration::from_secs(3600);

/// Where recordings go unless `--record-dir` says otherwise (the usual
/// place for a service's state on Linux).
pub const DEFAULT_RECORD_DIR: &str = "/var/lib/sluice/recordings";

/// A recording's path under the record directory: one directory per
/// application and stream, one file per publish (and per rotation).
pub const DEFAULT_RECORD_PATH: &str = "{app}/{name}/{start}.{ext}";

/// Bytes one recording may have waiting for the disk. About 20 s of a
/// 3 Mbit/s stream: a disk that stalls longer than that costs the
/// recording frames (it drops to the next keyframe), never memory. The
/// bytes are the frames' own (shared with players), so this bounds how
/// long they stay alive, not a copy.
pub const DEFAULT_RECORD_QUEUE_BYTES: usize = 8 * 1024 * 1024;

/// How often a recording's file is synced (fdatasync). A killed process
/// loses nothing it wrote (the kernel has it); a power cut loses at most
/// this much. docs/recording.md has the measured cost.
pub const DEFAULT_RECORD_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Worker threads when not set: one per core the process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// How a setting's value is written, the same way on the command line and
/// in the config file.
pub trait SettingValue: Sized {
    /// The value as the config file holds it (read by serde; TOML's own
    /// type, so `workers = 3` is an integer and `rtmp = "..."` a string).
    type File;
    /// The file's value as the setting's.
    fn from_file(v: Self::File) -> Self;
    /// A flag's text as the setting's value; the error says what was expected.
    fn parse_flag(text: &str) -> Result<Self, String>;
    /// The value as `--help` shows a default (None: not shown).
    fn show(&self) -> Option<String>;
}

/// Types written as themselves: parsed with `FromStr`, shown with `Display`.
macro_rules! plain_setting_value {
    ($($ty:ty),* $(,)?) => {$(
        impl SettingValue for $ty {
            type File = $ty;
            fn from_file(v: $ty) -> $ty {
                v
            }
            fn parse_flag(text: &str) -> Result<$ty, String> {
                text.parse().map_err(|e| format!("{e}"))
            }
            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}

plain_setting_value!(
    SocketAddr,
    usize,
    u32,
    u64,
    RecordMode,
    RecordFormat,
    bool,
    String,
    PublisherPolicy,
    Unavailable,
    LogFormat
);

impl SettingValue for TrustedProxies {
    type File = AddrList;
    fn from_file(v: AddrList) -> TrustedProxies {
        TrustedProxies(v.0)
    }
    fn parse_flag(text: &str) -> Result<TrustedProxies, String> {
        AddrList::parse(text).map(|l| TrustedProxies(l.0))
    }
    fn show(&self) -> Option<String> {
        (!self.0.is_empty()).then(|| self.to_string())
    }
}

impl SettingValue for Duration {
    type File = Secs;
    fn from_file(v: Secs) -> Duration {
        v.0
    }
    fn parse_flag(text: &str) -> Result<Duration, String> {
        seconds::parse(text)
    }
    fn show(&self) -> Option<String> {
        Some(seconds::show(*self))
    }
}

impl SettingValue for PathBuf {
    type File = PathBuf;
    fn from_file(v: PathBuf) -> PathBuf {
        v
    }
    fn parse_flag(text: &str) -> Result<PathBuf, String> {
        Ok(PathBuf::from(text))
    }
    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

/// An optional setting: given, it is `Some`; its default is usually `None`.
impl<T: SettingValue> SettingValue for Option<T> {
    type File = T::File;
    fn from_file(v: T::File) -> Option<T> {
        Some(T::from_file(v))
    }
    fn parse_flag(text: &str) -> Result<Option<T>, String> {
        T::parse_flag(text).map(Some)
    }
    fn show(&self) -> Option<String> {
        self.as_ref().and_then(T::show)
    }
}

/// One setting of the table, as the command line and the config file name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The [`Config`] field.
    pub field: &'static str,
    /// The config file's key.
    pub key: &'static str,
    /// What the flag's value is (`ADDR`, `N`, `SECS`...), for `--help`.
    pub hint: &'static str,
    /// The help text, without the default.
    pub help: &'static str,
}

impl Setting {
    /// The command-line flag, without `--`: the key with `-` for `_`.
    pub fn flag(&self) -> String {
        flag_of(self.key)
    }
}

fn flag_of(key: &str) -> String {
    key.replace('_', "-")
}

/// A setting's `--help` line: its text and, when there is one to show, its
/// default in brackets (`shown` replaces a default that depends on the
/// machine or means "the client's own").
fn help_line<T: SettingValue>(help: &str, default: &T, shown: Option<&str>) -> String {
    match shown.map(str::to_owned).or_else(|| default.show()) {
        Some(d) => format!("{help} [{d}]"),
        None => help.to_owned(),
    }
}

/// Declares the settings: [`Config`] with its [`Default`], [`FileConfig`],
/// [`SETTINGS`], and the functions that add, parse and check each setting's
/// flag. See the module documentation.
macro_rules! settings {
    (
        $(#[$config_meta:meta])*
        pub struct Config {
            $(
                $(#[$extra_meta:meta])*
                $extra:ident: $extra_ty:ty = $extra_default:expr,
            )*
        }

        $(#[$file_meta:meta])*
        pub struct FileConfig {
            $(
                $(#[$file_extra_meta:meta])*
                $file_extra:ident: $file_extra_ty:ty,
            )*
        }

        settings {
            $(
                $(#[$meta:meta])*
                $field:ident: $ty:ty {
                    key: $key:ident,
                    hint: $hint:literal,
                    default: $default:expr,
                    help: $help:literal
                    $(, shown: $shown:literal)?
                    $(, check: $check:expr)?
                    $(,)?
                }
            )*
        }
    ) => {
        $(#[$config_meta])*
        #[derive(Debug, Clone)]
        pub struct Config {
            $($(#[$meta])* pub $field: $ty,)*
            $($(#[$extra_meta])* pub $extra: $extra_ty,)*
        }

        impl Default for Config {
            fn default() -> Self {
                Self {
                    $($field: $default,)*
                    $($extra: $extra_default,)*
                }
            }
        }

        $(#[$file_meta])*
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct FileConfig {
            $(#[doc = $help] pub $key: Option<<$ty as SettingValue>::File>,)*
            $($(#[$file_extra_meta])* pub $file_extra: $file_extra_ty,)*
        }

        /// Every setting of the table, in its order.
        pub const SETTINGS: &[Setting] = &[$(Setting {
            field: stringify!($field),
            key: stringify!($key),
            hint: $hint,
            help: $help,
        },)*];

        /// Adds each setting's option, its default shown in its help line,
        /// and after each what `after` adds (hand-written options that read
        /// best beside it in `--help`).
        fn add_setting_options(o: &mut Options, mut after: impl FnMut(&mut Options, &str)) {
            let d = Config::default();
            $(
                o.optopt(
                    "",
                    &flag_of(stringify!($key)),
                    &help_line($help, &d.$field, None$(.or(Some($shown)))?),
                    $hint,
                );
                after(o, stringify!($key));
            )*
        }

        /// Sets what the flags give.
        fn apply_setting_flags(c: &mut Config, m: &Matches) -> Result<(), String> {
            $(
                let flag = flag_of(stringify!($key));
                if let Some(v) = m.opt_str(&flag) {
                    c.$field = <$ty as SettingValue>::parse_flag(&v)
                        .map_err(|e| format!("--{flag} {v:?}: {e}"))?;
                }
            )*
            Ok(())
        }

        /// Each setting's own check.
        fn check_settings(c: &Config) -> Result<(), String> {
            $($(
                let check: fn(&$ty) -> Result<(), String> = $check;
                check(&c.$field)?;
            )?)*
            Ok(())
        }

        impl FileConfig {
            /// Sets what the file gives.
            fn apply_settings(&self, c: &mut Config) {
                $(if let Some(v) = &self.$key {
                    c.$field = <$ty as SettingValue>::from_file(v.clone());
                })*
            }
        }

        /// A setting's value by file key, for the tests.
        #[cfg(test)]
        fn setting_debug(c: &Config, key: &str) -> Option<String> {
            match key {
                $(stringify!($key) => Some(format!("{:?}", c.$field)),)*
                _ => None,
            }
        }
    };
}

settings! {
    /// Everything the server needs to run: the settings below, from their
    /// defaults, the config file and the flags.
    pub struct Config {
        /// HTTP-FLV, ws-flv, and the API unless `api_addr` is set. None: off.
        http_addr: Option<SocketAddr> = Some(DEFAULT_HTTP_ADDR),
        /// Certificates for RTMPS and HTTPS.
        tls: TlsFiles = TlsFiles::default(),
        /// Who may publish and play, per application (the config file's
        /// `[app.NAME.publish]` and `[app.NAME.play]` tables).
        access: AccessConfig = AccessConfig::default(),
        /// Push and pull rules (`[[push]]`, `[[pull]]`, `--push`, `--pull`).
        relays: Vec<(RelayKind, RuleSpec)> = Vec::new(),
        /// HLS stream groups (`[[hls_group]]`, `--hls-group`).
        hls_groups: Vec<HlsGroup> = Vec::new(),
        /// The API and /metrics answer peers on any address without a token
        /// (`--api-public`, `api_public = true`). Off: without `api_token`
        /// they answer loopback peers only (docs/http.md, "Who may use the
        /// API").
        api_public: bool = false,
        /// `--takeover`: share the listening ports with the Sluice this one
        /// replaces (no exclusive check) and pull from its `handover_addr`
        /// the streams still published there (docs/deploying.md).
        takeover: bool = false,
    }

    /// The config file (`-c FILE`, TOML): every setting under its key
    /// (durations in seconds), `http` (an address or `"off"`), TLS
    /// certificates, `[app.NAME.publish]` / `[app.NAME.play]` /
    /// `[app.NAME.hooks]` tables and `[[push]]` / `[[pull]]` rules. Flags
    /// given on the command line override it. Unknown keys are errors (a
    /// typo must not silently open a stream).
    pub struct FileConfig {
        /// An address, or `"off"`.
        http: Option<String>,
        /// Certificate chains (PEM), paired with `tls_key` by position.
        #[serde(default)]
        tls_cert: Vec<PathBuf>,
        /// Private keys (PEM), paired with `tls_cert` by position.
        #[serde(default)]
        tls_key: Vec<PathBuf>,
        /// A directory of `NAME.crt` (or `NAME.pem`) + `NAME.key` pairs.
        tls_dir: Option<PathBuf>,
        /// The API answers every address without a token (`--api-public`).
        api_public: Option<bool>,
        /// Access rules by application name (`*`: every other application).
        #[serde(default)]
        app: BTreeMap<String, AppRules>,
        /// `[[push]]` rules: `app` or `stream`, `url`, `insecure`.
        #[serde(default)]
        push: Vec<RuleSpec>,
        /// `[[pull]]` rules: `app` or `stream`, `url`, `insecure`, `static`,
        /// `on_unavailable`, `idle_timeout`.
        #[serde(default)]
        pull: Vec<RuleSpec>,
        /// `[[hls_group]]`: `stream`, `variants`.
        #[serde(default)]
        hls_group: Vec<HlsGroup>,
    }

    settings {
        /// RTMP listen address.
        rtmp_addr: SocketAddr {
            key: rtmp,
            hint: "ADDR",
            default: DEFAULT_RTMP_ADDR,
            help: "RTMP listen address",
        }
        /// RTMPS (RTMP in TLS) listen address, if any.
        rtmps_addr: Option<SocketAddr> {
            key: rtmps,
            hint: "ADDR",
            default: None,
            help: "RTMPS (RTMP in TLS) listen address, e.g. 0.0.0.0:443",
        }
        /// HTTPS (HTTPS-FLV, wss-flv, the API) listen address, if any.
        https_addr: Option<SocketAddr> {
            key: https,
            hint: "ADDR",
            default: None,
            help: "HTTPS-FLV / wss-flv / API listen address",
        }
        /// TLS handshakes in progress one worker accepts before refusing new
        /// TLS connections (ClientHellos that never finish cost memory).
        max_tls_handshakes_per_worker: usize {
            key: max_tls_handshakes,
            hint: "N",
            default: DEFAULT_MAX_TLS_HANDSHAKES_PER_WORKER,
            help: "TLS handshakes in progress per worker",
        }
        /// The API and /metrics on their own address (then not on `http_addr`).
        api_addr: Option<SocketAddr> {
            key: api,
            hint: "ADDR",
            default: None,
            help: "serve the API and /metrics on this address only (not on --http)",
        }
        /// Bearer token the API and /metrics require, if set.
        api_token: Option<String> {
            key: api_token,
            hint: "TOKEN",
            default: None,
            help: "bearer token the API and /metrics require",
        }
        /// `Access-Control-Allow-Origin` on HTTP responses.
        cors_origin: String {
            key: cors_origin,
            hint: "ORIGIN",
            default: "*".into(),
            help: "Access-Control-Allow-Origin for HTTP responses",
        }
        /// Time to send a complete HTTP request, and to send the next one
        /// on an idle keep-alive connection.
        http_request_timeout: Duration {
            key: http_request_timeout,
            hint: "SECS",
            default: DEFAULT_HTTP_REQUEST_TIMEOUT,
            help: "time to send an HTTP request head",
        }
        /// Worker threads, each with its own poll loop and listeners.
        workers: usize {
            key: workers,
            hint: "N",
            default: cores(),
            help: "worker threads, one poll loop each",
            shown: "one per core",
            check: |&n| match n {
                0 => Err("workers must be at least 1".into()),
                _ => Ok(()),
            },
        }
        /// How long a stream's frames may wait to go to its players with
        /// more (the write policy: docs/ARCHITECTURE.md, "The write path").
        max_write_delay: Millis {
            key: max_write_delay,
            hint: "MS",
            default: DEFAULT_MAX_WRITE_DELAY,
            help: "longest a frame waits for more to be written with it, ms (0: write at once)",
            check: |d: &Millis| match d.0 <= MAX_WRITE_DELAY {
                true => Ok(()),
                false => Err(format!(
                    "max write delay {} ms is over {} ms",
                    d.0.as_millis(),
                    MAX_WRITE_DELAY.as_millis()
                )),
            },
        }
        /// Plain TCP players are sent released media from in-memory files
        /// with `sendfile` (no copy per player; src/server/batch_file.rs).
        sendfile: bool {
            key: sendfile,
            hint: "BOOL",
            default: true,
            help: "send released media to plain TCP players from in-memory files with sendfile(2), without a copy per player (true or false)",
        }
        /// Chunk size the server announces and writes with.
        chunk_size: u32 {
            key: chunk_size,
            hint: "BYTES",
            default: DEFAULT_CHUNK_SIZE,
            help: "outbound RTMP chunk size",
            check: |&size| {
                let valid = chunk::MIN_OUTBOUND_CHUNK_SIZE..=chunk::MAX_CHUNK_SIZE;
                match valid.contains(&size) {
                    true => Ok(()),
                    false => Err(format!(
                        "chunk size {size} must be within {}..={}",
                        valid.start(),
                        valid.end()
                    )),
                }
            },
        }
        /// Largest message accepted from a peer.
        max_message_len: u32 {
            key: max_message_len,
            hint: "BYTES",
            default: chunk::DEFAULT_MAX_MESSAGE_LEN,
            help: "largest message accepted",
        }
        /// Chunk streams one connection may use at once.
        max_chunk_streams: usize {
            key: max_chunk_streams,
            hint: "N",
            default: chunk::DEFAULT_MAX_CHUNK_STREAMS,
            help: "chunk streams per connection",
            check: |&n| match n {
                0 => Err("message and chunk stream limits must be at least 1".into()),
                _ => Ok(()),
            },
        }
        /// Bytes one connection may hold in partially received messages.
        max_partial_bytes: usize {
            key: max_partial_bytes,
            hint: "BYTES",
            default: chunk::DEFAULT_MAX_PARTIAL_BYTES,
            help: "bytes held in partial messages per connection",
        }
        /// Message streams (createStream) one connection may hold.
        max_message_streams: u32 {
            key: max_message_streams,
            hint: "N",
            default: session::DEFAULT_MAX_MESSAGE_STREAMS,
            help: "createStream per connection",
            check: |&n| match n {
                0 => Err("message and chunk stream limits must be at least 1".into()),
                _ => Ok(()),
            },
        }
        /// Media messages per second a publisher may send (bursts of a few
        /// seconds' worth pass); beyond it the publisher is closed.
        max_media_rate: u32 {
            key: max_media_rate,
            hint: "N",
            default: session::DEFAULT_MAX_MEDIA_RATE,
            help: "media messages per second a publisher may send",
            check: |&n| match n {
                0 => Err("max_media_rate must be at least 1".into()),
                _ => Ok(()),
            },
        }
        /// Deadline from accept to a completed handshake and `connect`.
        handshake_timeout: Duration {
            key: handshake_timeout,
            hint: "SECS",
            default: session::DEFAULT_HANDSHAKE_TIMEOUT,
            help: "handshake + connect deadline",
        }
        /// Silence after which a peer is pinged.
        ping_interval: Duration {
            key: ping_interval,
            hint: "SECS",
            default: session::DEFAULT_PING_INTERVAL,
            help: "ping a silent peer after",
        }
        /// Silence after which a peer is closed.
        ping_timeout: Duration {
            key: ping_timeout,
            hint: "SECS",
            default: session::DEFAULT_PING_TIMEOUT,
            help: "close a silent peer after",
        }
        /// Time without media after which a publisher is dropped.
        publisher_idle_timeout: Duration {
            key: publisher_idle_timeout,
            hint: "SECS",
            default: session::DEFAULT_PUBLISHER_IDLE_TIMEOUT,
            help: "drop a publisher sending no media after",
        }
        /// Bytes queued for one player before it skips to the next keyframe.
        player_queue_bytes: usize {
            key: player_queue_bytes,
            hint: "BYTES",
            default: DEFAULT_PLAYER_QUEUE_BYTES,
            help: "queued bytes before a player skips to the next keyframe",
        }
        /// Time a player's socket may take nothing while data waits.
        player_stall_timeout: Duration {
            key: player_stall_timeout,
            hint: "SECS",
            default: DEFAULT_PLAYER_STALL_TIMEOUT,
            help: "disconnect a player whose socket takes nothing for",
        }
        /// Bytes of control replies queued for a peer that does not read
        /// them, beyond which it is closed.
        control_queue_bytes: usize {
            key: control_queue_bytes,
            hint: "BYTES",
            default: DEFAULT_CONTROL_QUEUE_BYTES,
            help: "queued control replies (pongs, acks, results) before a peer that reads none is closed",
        }
        /// GOP cache bound per stream, in bytes.
        gop_cache_bytes: usize {
            key: gop_cache_bytes,
            hint: "BYTES",
            default: DEFAULT_GOP_CACHE_BYTES,
            help: "GOP cache bound per stream",
        }
        /// GOP cache bound per stream, in frames.
        gop_cache_frames: usize {
            key: gop_cache_frames,
            hint: "N",
            default: DEFAULT_GOP_CACHE_FRAMES,
            help: "GOP cache bound per stream",
        }
        /// Connections one worker holds at most.
        max_connections_per_worker: usize {
            key: max_connections,
            hint: "N",
            default: DEFAULT_MAX_CONNECTIONS_PER_WORKER,
            help: "connections per worker",
        }
        /// `tcUrl` sent with Enhanced RTMP reconnect requests (None: the client
        /// reconnects to the tcUrl it used).
        reconnect_url: Option<String> {
            key: reconnect_url,
            hint: "URL",
            default: None,
            help: "tcUrl Enhanced RTMP publishers are asked to reconnect to on shutdown",
            shown: "their own",
        }
        /// How long shutdown waits for publishers asked to reconnect to leave.
        drain_timeout: Duration {
            key: drain_timeout,
            hint: "SECS",
            default: DEFAULT_DRAIN_TIMEOUT,
            help: "on shutdown, how long publishers asked to reconnect may stay",
        }
        /// What a second publisher on a live name gets.
        second_publisher: PublisherPolicy {
            key: second_publisher,
            hint: "POLICY",
            default: PublisherPolicy::Reject,
            help: "a second publisher on a live name: reject or replace",
        }
        /// How long a pulled stream with no player stays pulled (per rule
        /// `idle_timeout` overrides it).
        pull_idle_timeout: Duration {
            key: pull_idle_timeout,
            hint: "SECS",
            default: crate::relay::DEFAULT_PULL_IDLE_TIMEOUT,
            help: "how long a pulled stream with no player stays pulled",
        }
        /// What players get when an origin cannot be reached (per rule
        /// `on_unavailable` overrides it).
        pull_unavailable: Unavailable {
            key: pull_unavailable,
            hint: "POLICY",
            default: Unavailable::NotFound,
            help: "players of an unreachable origin get not_found, or wait",
        }
        /// Extra trusted roots (PEM) for `rtmps://` relay peers.
        relay_ca: Option<PathBuf> {
            key: relay_ca,
            hint: "FILE",
            default: None,
            help: "extra trusted root certificates (PEM) for rtmps:// relay peers",
        }
        /// Helper threads that open, write, sync and read files (recordings,
        /// video on demand): a worker never waits for a disk.
        disk_threads: usize {
            key: disk_threads,
            hint: "N",
            default: DEFAULT_DISK_THREADS,
            help: "helper threads for file work (recording, video on demand)",
            check: |n| if (1..=64).contains(n) { Ok(()) } else { Err(format!("--disk-threads {n}: 1 to 64")) },
        }
        /// What is recorded (per application: `[app.NAME.record] mode`).
        record: RecordMode {
            key: record,
            hint: "MODE",
            default: RecordMode::Off,
            help: "record streams: off, all (every stream, from its publish) or manual (POST /api/streams/APP/NAME/record)",
        }
        /// The container recordings are written in.
        record_format: RecordFormat {
            key: record_format,
            hint: "FORMAT",
            default: RecordFormat::Mp4,
            help: "recording format: mp4 (fragmented: a crash loses at most a fragment) or flv (with a keyframe index)",
        }
        /// Every recording is written under this directory.
        record_dir: PathBuf {
            key: record_dir,
            hint: "DIR",
            default: PathBuf::from(DEFAULT_RECORD_DIR),
            help: "directory recordings are written under",
        }
        /// A recording's path under the record directory.
        record_path: String {
            key: record_path,
            hint: "TEMPLATE",
            default: DEFAULT_RECORD_PATH.to_owned(),
            help: "recording path under --record-dir, with {app} {name} {start} {date} {time} {unix} {ext}",
        }
        /// Rotation by duration.
        record_rotate_secs: Option<Duration> {
            key: record_rotate_secs,
            hint: "SECS",
            default: None,
            help: "start a new recording file at the first keyframe after this long",
        }
        /// Rotation by size.
        record_rotate_bytes: Option<u64> {
            key: record_rotate_bytes,
            hint: "BYTES",
            default: None,
            help: "start a new recording file at the first keyframe after this many bytes",
        }
        /// Retention.
        record_retention_secs: Option<Duration> {
            key: record_retention_secs,
            hint: "SECS",
            default: None,
            help: "delete recordings older than this (checked every minute)",
        }
        /// Bytes one recording may have waiting for the disk.
        record_queue_bytes: usize {
            key: record_queue_bytes,
            hint: "BYTES",
            default: DEFAULT_RECORD_QUEUE_BYTES,
            help: "bytes a recording may have waiting for the disk; past it, it drops to the next keyframe",
            check: |n| if *n >= 64 * 1024 { Ok(()) } else { Err(format!("--record-queue-bytes {n}: at least 65536")) },
        }
        /// How often a recording's file is synced.
        record_sync_interval: Duration {
            key: record_sync_interval,
            hint: "SECS",
            default: DEFAULT_RECORD_SYNC_INTERVAL,
            help: "how often a recording file is synced to the disk (fdatasync)",
        }
        /// Package live streams as HLS and Low-Latency HLS (per application:
        /// `[app.NAME.hls] enabled`).
        hls: bool {
            key: hls,
            hint: "BOOL",
            default: true,
            help: "serve HLS / LL-HLS at http://HOST/APP/NAME/index.m3u8 (true or false)",
        }
        /// LL-HLS PART-TARGET.
        hls_part_target: Duration {
            key: hls_part_target,
            hint: "SECS",
            default: DEFAULT_HLS_PART_TARGET,
            help: "LL-HLS part target (PART-TARGET) at most: each stream's is fitted to whole frames within it",
            check: |d| crate::hls_settings::check_part_target(*d),
        }
        /// EXT-X-TARGETDURATION (whole seconds).
        hls_target_duration: Duration {
            key: hls_target_duration,
            hint: "SECS",
            default: DEFAULT_HLS_TARGET_DURATION,
            help: "HLS target duration, whole seconds; segments are cut at keyframes within it",
            check: |d| crate::hls_settings::check_target_duration(*d),
        }
        /// Shortest segment a keyframe may start a new one after.
        hls_min_segment: Duration {
            key: hls_min_segment,
            hint: "SECS",
            default: DEFAULT_HLS_MIN_SEGMENT,
            help: "HLS segments last at least this (short GOPs share one)",
        }
        /// Complete segments kept per stream.
        hls_window_segments: usize {
            key: hls_window_segments,
            hint: "N",
            default: DEFAULT_HLS_WINDOW_SEGMENTS,
            help: "HLS segments kept per stream",
        }
        /// Bytes of segments kept per stream.
        hls_window_bytes: usize {
            key: hls_window_bytes,
            hint: "BYTES",
            default: DEFAULT_HLS_WINDOW_BYTES,
            help: "HLS window bound per stream, in bytes",
        }
        /// One video and one audio track as one muxed variant.
        hls_mux_audio: bool {
            key: hls_mux_audio,
            hint: "BOOL",
            default: true,
            help: "offer a stream of one video and one audio track as one muxed variant (both tracks in each part) instead of video with an audio group (true or false)",
        }
        /// Bytes every HLS window may hold together.
        hls_max_bytes: usize {
            key: hls_max_bytes,
            hint: "BYTES",
            default: DEFAULT_HLS_MAX_BYTES,
            help: "HLS windows of all streams together, in bytes; streams beyond it are not packaged",
        }
        /// Peers whose connections start with a PROXY protocol header
        /// (docs/deploying.md): load balancers in front of this node.
        proxy_protocol: TrustedProxies {
            key: proxy_protocol,
            hint: "ADDRS",
            default: TrustedProxies::default(),
            help: "load balancers (addresses or networks, comma-separated) that open every RTMP, RTMPS, HTTP and HTTPS connection with a PROXY protocol v1 or v2 header naming the client; a header from anyone else closes the connection",
            shown: "none",
        }
        /// Where a process handing over to its successor serves it the
        /// streams still published here (docs/deploying.md).
        handover_addr: Option<SocketAddr> {
            key: handover,
            hint: "ADDR",
            default: None,
            help: "loopback address where a process handing over to its successor (SIGUSR2) serves it the streams still published here; the successor pulls them from it",
        }
        /// How long a process handing over keeps serving the publishers and
        /// players it has.
        handover_timeout: Duration {
            key: handover_timeout,
            hint: "SECS",
            default: DEFAULT_HANDOVER_TIMEOUT,
            help: "on handover, how long publishers and players already here are served",
        }
        /// Log line format.
        log_format: LogFormat {
            key: log_format,
            hint: "FORMAT",
            default: LogFormat::Text,
            help: "log lines as text, or json (one object per line)",
        }
    }
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// env_logger's own lines: `[TIME LEVEL TARGET] message`.
    #[default]
    Text,
    /// One JSON object per line (docs/deploying.md has its shape).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err("expected text or json".into()),
        }
    }
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// Addresses and networks, written `"10.0.0.0/8, 192.0.2.7"` on the command
/// line and either so or as an array in the config file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrList(pub Vec<Cidr>);

impl AddrList {
    fn parse(text: &str) -> Result<AddrList, String> {
        text.split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Cidr>, String>>()
            .map(AddrList)
    }
}

impl<'de> Deserialize<'de> for AddrList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            One(String),
            Many(Vec<String>),
        }
        let text = match Written::deserialize(d)? {
            Written::One(s) => s,
            Written::Many(v) => v.join(","),
        };
        AddrList::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The load balancers trusted to send a PROXY protocol header
/// (`--proxy-protocol`); empty: nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    /// True when connections from `ip` must start with a PROXY header.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

impl std::fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, c) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}")?;
        }
        Ok(())
    }
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

impl std::fmt::Display for PublisherPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Reject => "reject",
            Self::Replace => "replace",
        })
    }
}

/// The command line: every setting's flag (from the table), the
/// hand-written ones beside them, and `-c`, `--check-config`, `-h`, `-V`.
pub fn options() -> Options {
    let mut o = Options::new();
    add_setting_options(&mut o, |o, key| match key {
        "rtmp" => {
            o.optopt(
                "",
                "http",
                &format!("HTTP-FLV / ws-flv / API listen address [{DEFAULT_HTTP_ADDR}]"),
                "ADDR",
            );
            o.optflag("", "no-http", "do not listen for HTTP");
        }
        "https" => {
            o.optmulti(
                "",
                "tls-cert",
                "PEM certificate chain (repeat with --tls-key; the first is the default)",
                "FILE",
            );
            o.optmulti(
                "",
                "tls-key",
                "PEM private key (RSA, ECDSA or Ed25519) for the --tls-cert at the same position",
                "FILE",
            );
            o.optopt(
                "",
                "tls-dir",
                "directory of NAME.crt (or NAME.pem) + NAME.key pairs",
                "DIR",
            );
        }
        "api_token" => {
            o.optflag(
                "",
                "api-public",
                "let the API and /metrics answer any address without a token \
                 (default: loopback peers only, unless --api-token is set)",
            );
        }
        "second_publisher" => {
            o.optmulti(
                "",
                "push",
                "push every stream of APP (or the stream APP/NAME) to URL \
                 (rtmp:// or rtmps://; without a stream name in URL the local name is used); repeatable",
                "APP[/NAME]=URL",
            );
            o.optmulti(
                "",
                "pull",
                "make APP (or APP/NAME) an edge of the origin URL: a stream is pulled \
                 when its first player arrives; repeatable",
                "APP[/NAME]=URL",
            );
            o.optmulti(
                "",
                "pull-static",
                "keep APP/NAME pulled from URL, players or not; repeatable",
                "APP/NAME=URL",
            );
        }
        "hls_max_bytes" => {
            o.optmulti(
                "",
                "hls-group",
                "offer the streams APP/A, APP/B, ... as the variants of one HLS \
                 multivariant playlist at /APP/NAME/index.m3u8; repeatable",
                "APP/NAME=APP/A,APP/B",
            );
        }
        _ => {}
    });
    o.optopt(
        "c",
        "config",
        "TOML config file (flags given here override it)",
        "FILE",
    );
    o.optopt(
        "",
        "check-config",
        "check a config file, explain any error, and exit",
        "FILE",
    );
    o.optflag(
        "",
        "takeover",
        "start beside the running Sluice this one replaces: share its ports and pull from \
         its --handover address the streams it still has (SIGUSR2 to the old process does this)",
    );
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

impl Config {
    /// The config file named by `-c` (or the defaults), then what the flags
    /// set. Not yet [validated](Config::validate).
    pub fn from_args(m: &Matches) -> Result<Config, String> {
        let mut c = match m.opt_str("config") {
            Some(path) => FileConfig::load(path.as_ref())?.to_config()?,
            None => Config::default(),
        };
        c.apply_flags(m)?;
        Ok(c)
    }

    /// Sets what the flags give, table settings first.
    fn apply_flags(&mut self, m: &Matches) -> Result<(), String> {
        apply_setting_flags(self, m)?;
        if let Some(a) = m.opt_str("http") {
            self.http_addr = Some(a.parse().map_err(|e| format!("--http {a:?}: {e}"))?);
        }
        if m.opt_present("no-http") {
            self.http_addr = None;
        }
        if m.opt_present("api-public") {
            self.api_public = true;
        }
        if m.opt_present("takeover") {
            self.takeover = true;
        }
        let (certs, keys) = (m.opt_strs("tls-cert"), m.opt_strs("tls-key"));
        if certs.len() != keys.len() {
            return Err(format!(
                "{} --tls-cert but {} --tls-key: give them in pairs",
                certs.len(),
                keys.len()
            ));
        }
        if !certs.is_empty() {
            self.tls.pairs = certs
                .into_iter()
                .map(Into::into)
                .zip(keys.into_iter().map(Into::into))
                .collect();
        }
        if let Some(d) = m.opt_str("tls-dir") {
            self.tls.dir = Some(d.into());
        }
        for (flag, kind, always) in [
            ("push", RelayKind::Push, false),
            ("pull", RelayKind::Pull, false),
            ("pull-static", RelayKind::Pull, true),
        ] {
            for arg in m.opt_strs(flag) {
                let spec =
                    RuleSpec::from_flag(kind, &arg, always).map_err(|e| format!("--{flag} {e}"))?;
                self.relays.push((kind, spec));
            }
        }
        for arg in m.opt_strs("hls-group") {
            let group = HlsGroup::from_flag(&arg).map_err(|e| format!("--hls-group {e}"))?;
            self.hls_groups.push(group);
        }
        Ok(())
    }

    /// The server-wide HLS settings.
    pub fn hls_defaults(&self) -> HlsDefaults {
        HlsDefaults {
            enabled: self.hls,
            part_target: self.hls_part_target,
            target_duration: self.hls_target_duration,
            min_segment: self.hls_min_segment,
            window_segments: self.hls_window_segments,
            window_bytes: self.hls_window_bytes,
            mux_audio: self.hls_mux_audio,
        }
    }

    /// The packager configuration for application `app` (None: HLS is off
    /// for it).
    pub fn hls_packager(&self, app: &str) -> Result<Option<PackagerConfig>, String> {
        let rules = self
            .access
            .apps
            .get(app)
            .or_else(|| self.access.apps.get("*"));
        crate::hls_settings::packager_config(&self.hls_defaults(), rules.map(|r| &r.hls))
    }

    /// The video on demand settings of application `app`, if it is a VOD
    /// application (`[app.NAME.vod]`; `*` does not make every application
    /// one).
    pub fn vod_app(&self, app: &str) -> Option<&crate::vod_settings::VodApp> {
        self.access.apps.get(app).and_then(|r| r.vod.as_ref())
    }

    /// The server-wide recording settings.
    pub fn record_defaults(&self) -> RecordDefaults {
        RecordDefaults {
            mode: self.record,
            format: self.record_format,
            dir: self.record_dir.clone(),
            path: self.record_path.clone(),
            rotate: self.record_rotate_secs,
            rotate_bytes: self.record_rotate_bytes,
            retention: self.record_retention_secs,
        }
    }

    /// The recording policy of application `app` (`[app.NAME.record]`, else
    /// `[app."*".record]`, over the server-wide settings).
    pub fn record_policy(&self, app: &str) -> Result<RecordPolicy, String> {
        let rules = self
            .access
            .apps
            .get(app)
            .or_else(|| self.access.apps.get("*"));
        crate::record_settings::policy(&self.record_defaults(), rules.map(|r| &r.record))
    }

    /// The protocol's part of these settings, for each RTMP session.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            chunk_size: self.chunk_size,
            chunk_limits: ChunkLimits {
                max_message_len: self.max_message_len,
                max_chunk_streams: self.max_chunk_streams,
                max_partial_bytes: self.max_partial_bytes,
            },
            max_message_streams: self.max_message_streams,
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            ping_timeout: self.ping_timeout,
            publisher_idle_timeout: self.publisher_idle_timeout,
            max_media_rate: self.max_media_rate,
            ..SessionConfig::default()
        }
    }

    /// Checks each setting, then what depends on several.
    pub fn validate(&self) -> Result<(), String> {
        check_settings(self)?;
        if self.player_queue_bytes < self.gop_cache_bytes {
            return Err(format!(
                "player queue ({} bytes) must hold the GOP cache ({} bytes) a joiner receives at once",
                self.player_queue_bytes, self.gop_cache_bytes
            ));
        }
        if (self.rtmps_addr.is_some() || self.https_addr.is_some()) && self.tls.is_empty() {
            return Err("--rtmps and --https need --tls-cert and --tls-key (or --tls-dir)".into());
        }
        for (kind, spec) in &self.relays {
            self.relay_rule(*kind, spec, "config")
                .map_err(|e| format!("{} {}: {e}", kind.name(), spec.url))?;
        }
        crate::hls_settings::packager_config(&self.hls_defaults(), None)?;
        for (name, rules) in &self.access.apps {
            crate::hls_settings::packager_config(&self.hls_defaults(), Some(&rules.hls))
                .map_err(|e| format!("[app.{name:?}.hls]: {e}"))?;
        }
        crate::record_settings::policy(&self.record_defaults(), None)?;
        for (name, rules) in &self.access.apps {
            crate::record_settings::policy(&self.record_defaults(), Some(&rules.record))
                .map_err(|e| format!("[app.{name:?}.record]: {e}"))?;
            if let Some(vod) = &rules.vod {
                if name == "*" {
                    return Err("[app.\"*\".vod]: name the application that plays files".into());
                }
                vod.check()
                    .map_err(|e| format!("[app.{name:?}.vod]: {e}"))?;
            }
        }
        for (i, g) in self.hls_groups.iter().enumerate() {
            g.check()?;
            if self.hls_groups[..i].iter().any(|o| o.stream == g.stream) {
                return Err(format!("hls_group {:?} is defined twice", g.stream));
            }
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

impl FileConfig {
    /// Parses a config file's text. Errors name the line and column.
    pub fn parse(text: &str) -> Result<Self, String> {
        let f: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        for name in f.app.keys() {
            if name != "*" {
                AppName::new(name.as_str())
                    .map_err(|e| format!("[app.{name:?}]: not a valid application name: {e}"))?;
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
                ("on_record_done", &h.on_record_done),
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
        self.apply_settings(&mut c);
        match self.http.as_deref() {
            None => {}
            Some("off") => c.http_addr = None,
            Some(a) => c.http_addr = Some(a.parse().map_err(|e| format!("http = {a:?}: {e}"))?),
        }
        c.tls.pairs = self
            .tls_cert
            .iter()
            .cloned()
            .zip(self.tls_key.iter().cloned())
            .collect();
        c.tls.dir = self.tls_dir.clone();
        c.api_public = self.api_public.unwrap_or(false);
        c.access = self.access();
        c.hls_groups = self.hls_group.clone();
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

    /// Two values for each setting, as a flag writes them: the first is not
    /// the default, the second differs from the first.
    const EXAMPLES: &[(&str, &str, &str)] = &[
        ("rtmp", "127.0.0.1:1936", "127.0.0.1:1937"),
        ("rtmps", "127.0.0.1:4431", "[::1]:4432"),
        ("https", "127.0.0.1:8443", "127.0.0.1:8444"),
        ("max_tls_handshakes", "17", "18"),
        ("api", "127.0.0.1:9000", "127.0.0.1:9001"),
        ("api_token", "t0ken-a", "t0ken-b"),
        ("cors_origin", "https://a.example", "https://b.example"),
        ("http_request_timeout", "2.5", "7"),
        ("workers", "37", "41"),
        ("max_write_delay", "0", "200"),
        ("sendfile", "false", "true"),
        ("chunk_size", "8192", "65536"),
        ("max_message_len", "1048576", "2097152"),
        ("max_chunk_streams", "9", "10"),
        ("max_partial_bytes", "1000000", "2000000"),
        ("max_message_streams", "2", "3"),
        ("max_media_rate", "300", "400"),
        ("handshake_timeout", "1.5", "4"),
        ("ping_interval", "0.5", "5"),
        ("ping_timeout", "2", "3.25"),
        ("publisher_idle_timeout", "11", "12"),
        ("player_queue_bytes", "9000000", "10000000"),
        ("player_stall_timeout", "21", "22"),
        ("control_queue_bytes", "65536", "131072"),
        ("gop_cache_bytes", "1000", "2000"),
        ("gop_cache_frames", "100", "200"),
        ("max_connections", "100", "200"),
        (
            "reconnect_url",
            "rtmp://a.example/live",
            "rtmp://b.example/live",
        ),
        ("drain_timeout", "16", "17"),
        ("second_publisher", "replace", "reject"),
        ("pull_idle_timeout", "30", "31"),
        ("pull_unavailable", "wait", "not_found"),
        ("relay_ca", "/etc/sluice/a.pem", "/etc/sluice/b.pem"),
        ("disk_threads", "3", "5"),
        ("record", "all", "manual"),
        ("record_format", "flv", "mp4"),
        ("record_dir", "/srv/rec/a", "/srv/rec/b"),
        (
            "record_path",
            "{name}-{start}.mp4",
            "{app}-{name}-{unix}.flv",
        ),
        ("record_rotate_secs", "600", "900"),
        ("record_rotate_bytes", "1000000", "2000000"),
        ("record_retention_secs", "86400", "3600"),
        ("record_queue_bytes", "1000000", "2000000"),
        ("record_sync_interval", "2", "0.5"),
        ("hls", "false", "true"),
        ("hls_part_target", "0.25", "0.5"),
        ("hls_target_duration", "2", "6"),
        ("hls_min_segment", "0.5", "1.5"),
        ("hls_window_segments", "10", "12"),
        ("hls_window_bytes", "2000000", "3000000"),
        ("hls_mux_audio", "false", "true"),
        ("hls_max_bytes", "100000000", "200000000"),
        ("proxy_protocol", "127.0.0.2,10.0.0.0/8", "::1"),
        ("handover", "127.0.0.1:1936", "127.0.0.1:1937"),
        ("handover_timeout", "60", "61"),
        ("log_format", "json", "text"),
    ];

    /// A flag's text as a TOML value: numbers as they are, the rest quoted.
    fn toml_value(text: &str) -> String {
        if text.parse::<bool>().is_ok() {
            return text.to_owned();
        }
        match text.parse::<f64>() {
            Ok(_) => text.to_owned(),
            Err(_) => format!("{text:?}"),
        }
    }

    fn matches(args: &[String]) -> Matches {
        options().parse(args).expect("valid flags")
    }

    fn with_flags(mut c: Config, args: &[String]) -> Config {
        c.apply_flags(&matches(args)).expect("flags apply");
        c
    }

    #[test]
    fn every_setting_has_examples() {
        let keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        let examples: Vec<&str> = EXAMPLES.iter().map(|e| e.0).collect();
        assert_eq!(
            keys, examples,
            "EXAMPLES lists every setting, in table order"
        );
    }

    #[test]
    fn every_setting_is_set_by_its_flag_and_its_file_key() {
        let default = Config::default();
        for (s, &(key, a, b)) in SETTINGS.iter().zip(EXAMPLES) {
            let flag = format!("--{}", s.flag());
            let shown = |c: &Config| setting_debug(c, key).expect("a setting");
            let by_flag = with_flags(Config::default(), &[flag.clone(), a.into()]);
            assert_ne!(
                shown(&by_flag),
                shown(&default),
                "{flag} {a} changes nothing"
            );
            let text = format!("{key} = {}\n", toml_value(a));
            let by_file = FileConfig::parse(&text)
                .and_then(|f| f.to_config())
                .unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(shown(&by_file), shown(&by_flag), "{text:?} and {flag} {a}");
            // The flag wins over the file.
            let both = with_flags(by_file.clone(), &[flag.clone(), b.into()]);
            let by_flag_b = with_flags(Config::default(), &[flag.clone(), b.into()]);
            assert_eq!(shown(&both), shown(&by_flag_b), "{flag} {b} over {text:?}");
            assert_ne!(
                shown(&both),
                shown(&by_flag),
                "{flag}: {a} and {b} look the same"
            );
            // Everything else keeps its default.
            for other in SETTINGS.iter().filter(|o| o.key != key) {
                assert_eq!(
                    setting_debug(&by_file, other.key),
                    setting_debug(&default, other.key),
                    "{text:?} changed {}",
                    other.key
                );
            }
        }
    }

    #[test]
    fn bad_values_name_the_flag_or_the_line() {
        // Every value type but free text (a token, an origin, a URL, a path)
        // refuses a word, and says what it expected.
        let free_text = [
            "api_token",
            "cors_origin",
            "reconnect_url",
            "relay_ca",
            "record_dir",
            "record_path",
        ];
        for s in SETTINGS.iter().filter(|s| !free_text.contains(&s.key)) {
            let flag = format!("--{}", s.flag());
            let mut c = Config::default();
            let e = c
                .apply_flags(&matches(&[flag.clone(), "nonsense".into()]))
                .unwrap_err();
            assert!(e.starts_with(&format!("{flag} \"nonsense\": ")), "{e}");
            let text = format!("\n{} = \"nonsense\"\n", s.key);
            let e = FileConfig::parse(&text).unwrap_err();
            assert!(e.contains("line 2"), "{text:?}: {e}");
        }
        let mut c = Config::default();
        let e = c
            .apply_flags(&matches(&["--ping-timeout".into(), "-1".into()]))
            .unwrap_err();
        assert_eq!(
            e,
            "--ping-timeout \"-1\": expected a positive number of seconds"
        );
    }

    #[test]
    fn checks_run_on_flags_and_file_alike() {
        for (args, text, error) in [
            (
                ["--chunk-size", "64"],
                "chunk_size = 64",
                "chunk size 64 must be within 128..=",
            ),
            (
                ["--workers", "0"],
                "workers = 0",
                "workers must be at least 1",
            ),
            (
                ["--max-message-streams", "0"],
                "max_message_streams = 0",
                "stream limits must be at least 1",
            ),
            (
                ["--max-chunk-streams", "0"],
                "max_chunk_streams = 0",
                "stream limits must be at least 1",
            ),
            (
                ["--player-queue-bytes", "1000"],
                "player_queue_bytes = 1000",
                "must hold the GOP cache",
            ),
        ] {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let e = with_flags(Config::default(), &args).validate().unwrap_err();
            assert!(e.contains(error), "{args:?}: {e}");
            let e = FileConfig::parse(text)
                .and_then(|f| f.to_config())
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(e.contains(error), "{text:?}: {e}");
        }
        Config::default().validate().unwrap();
    }

    #[test]
    fn help_lists_every_flag_with_its_default() {
        // Long lines wrap: read the help with its whitespace collapsed.
        let help = options().usage("");
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        for s in SETTINGS {
            let line = format!("--{} {} {}", s.flag(), s.hint, s.help);
            assert!(help.contains(&line), "no {line:?} in\n{help}");
        }
        for flag in [
            "--http ADDR",
            "--no-http",
            "--tls-cert FILE",
            "--tls-key FILE",
            "--tls-dir DIR",
            "--api-public",
            "--push APP[/NAME]=URL",
            "--pull APP[/NAME]=URL",
            "--pull-static APP/NAME=URL",
            "--config FILE",
            "--check-config FILE",
            "--help",
            "--version",
        ] {
            assert!(help.contains(flag), "no {flag} in\n{help}");
        }
        for shown in [
            "RTMP listen address [0.0.0.0:1935]",
            "[0.0.0.0:8080]",
            "handshake + connect deadline [10]",
            "outbound RTMP chunk size [60000]",
            "written with it, ms (0: write at once) [45]",
            "for HTTP responses [*]",
            "reject or replace [reject]",
            "not_found, or wait [not_found]",
            "one poll loop each [one per core]",
            "on shutdown [their own]",
        ] {
            assert!(help.contains(shown), "no {shown:?} in\n{help}");
        }
        let token = "--api-token TOKEN bearer token the API and /metrics require --";
        assert!(
            help.contains(token),
            "no default shown for a setting without one"
        );
    }

    #[test]
    fn hand_written_flags() {
        let c = with_flags(
            FileConfig::parse("http = \"off\"\n")
                .unwrap()
                .to_config()
                .unwrap(),
            &["--http".into(), "127.0.0.1:8081".into()],
        );
        assert_eq!(c.http_addr, Some("127.0.0.1:8081".parse().unwrap()));
        let c = with_flags(Config::default(), &["--no-http".into()]);
        assert_eq!(c.http_addr, None);
        assert!(
            !Config::default().api_public,
            "the API is loopback-only by default"
        );
        let c = with_flags(Config::default(), &["--api-public".into()]);
        assert!(c.api_public);
        let c = FileConfig::parse("api_public = true\n")
            .unwrap()
            .to_config()
            .unwrap();
        assert!(c.api_public);
        let c = with_flags(
            Config::default(),
            &[
                "--tls-cert".into(),
                "a.crt".into(),
                "--tls-key".into(),
                "a.key".into(),
                "--tls-dir".into(),
                "certs".into(),
                "--push".into(),
                "live=rtmp://h/app".into(),
                "--pull-static".into(),
                "live/cam=rtmp://o/live".into(),
            ],
        );
        assert_eq!(c.tls.pairs, vec![("a.crt".into(), "a.key".into())]);
        assert_eq!(c.tls.dir, Some("certs".into()));
        assert_eq!(c.relays.len(), 2);
        assert!(c.relays[1].1.always);
        let mut c = Config::default();
        let e = c
            .apply_flags(&matches(&["--tls-cert".into(), "a.crt".into()]))
            .unwrap_err();
        assert!(e.contains("give them in pairs"), "{e}");
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        for text in [
            "max_connections_per_worker = 3\n",
            "no_http = true\n",
            "chunksize = 4096\n",
        ] {
            let e = FileConfig::parse(text).unwrap_err();
            assert!(e.contains("unknown field"), "{text:?}: {e}");
        }
    }

    #[test]
    fn session_config_carries_the_protocol_settings() {
        let c = with_flags(
            Config::default(),
            &[
                "--chunk-size".into(),
                "8192".into(),
                "--max-message-len".into(),
                "1000".into(),
                "--ping-interval".into(),
                "2".into(),
            ],
        );
        let s = c.session_config();
        assert_eq!(s.chunk_size, 8192);
        assert_eq!(s.chunk_limits.max_message_len, 1000);
        assert_eq!(s.ping_interval, Duration::from_secs(2));
        let d = Config::default().session_config();
        let p = SessionConfig::default();
        assert_eq!(
            (d.chunk_limits, d.handshake_timeout, d.window_ack_size),
            (p.chunk_limits, p.handshake_timeout, p.window_ack_size),
            "the server's defaults are the protocol's"
        );
        // Except the chunk size it writes with: larger than the protocol's
        // (and a client's) default, for fewer pieces per frame.
        assert_eq!(d.chunk_size, DEFAULT_CHUNK_SIZE);
        assert!(d.chunk_size > p.chunk_size);
    }
}
