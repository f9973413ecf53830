//! HLS and Low-Latency HLS on the server: one [`StreamHls`] per stream,
//! holding the sans-IO CMAF packager ([`crate::cmaf`]) that the publisher's
//! worker feeds frame by frame, and the request side: which resource a path
//! names, whether it can be answered now, and the response (playlists
//! rendered once per packager state and shared; init segments, parts and
//! segments as the packager's own `Bytes`, written vectored).
//!
//! ```text
//!  publisher's worker: Stream::push_from ─► StreamHls::push ─► Packager::handle_frame
//!                                                   │ a part, segment or init came out
//!                                                   ▼
//!        waiters.swap(0): Message::Hls(stream) to each worker with parked requests
//!                                                   ▼
//!  any worker: HttpConn parked on `decide() == Wait` asks again, answers, or 503
//!              after three target durations
//! ```
//!
//! A blocking request (`_HLS_msn`/`_HLS_part`, or the part a preload hint
//! names) parks its connection in the worker's loop: no thread per request.
//! To park, a worker sets its bit in the stream's `waiters` and then asks
//! again, so a part that came out between the first answer and the bit is
//! never missed.

use super::http;
use crate::cmaf::{
    self, Body, Decision, Directives, Output, Packager, PackagerConfig, Resource, Skip,
};
use crate::hls_settings::{HlsApp, HlsDefaults, HlsGroup};
use crate::wire::WireForm;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a stream whose publisher left stays in the registry for its
/// HLS viewers (they read the end of the playlist) and for a publisher
/// that comes back (its viewers continue, after a discontinuity). Longer
/// than the longest blocking request (three target durations of 60 s at
/// most is three minutes; 30 s covers the usual 4 s target many times).
pub(crate) const HLS_LINGER: Duration = Duration::from_secs(30);

/// How long an `on_play` callback's "allow" for an HLS viewer (its address
/// and the query it plays with) holds: its playlist reloads, parts and
/// segments in that time need no callback of their own.
const VIEWER_VERDICT_TTL: Duration = Duration::from_secs(60);

/// Viewers' verdicts kept; past this the expired ones go, and if none has
/// expired, all (viewers are then asked again).
const MAX_VIEWER_VERDICTS: usize = 16 * 1024;

/// The server-wide HLS policy: settings per application, stream groups,
/// and the memory budget every stream's window is admitted against.
pub struct HlsPolicy {
    defaults: HlsDefaults,
    apps: BTreeMap<String, HlsApp>,
    groups: Vec<HlsGroup>,
    max_bytes: usize,
    /// Window bytes the packaged streams have reserved.
    reserved: Arc<AtomicUsize>,
    /// Streams not packaged because the budget was spent (for /metrics).
    refused: AtomicU64,
    /// HLS viewers an `on_play` callback allowed: (address,
    /// `app/name?query`) -> (until when, the stream to serve them, which
    /// the callback may have renamed). Shared by the workers: a viewer's
    /// requests come on several connections, each on any worker.
    viewers: Mutex<HashMap<(IpAddr, String), (Instant, String)>>,
}

impl HlsPolicy {
    pub fn new(config: &crate::config::Config) -> Self {
        Self {
            defaults: config.hls_defaults(),
            apps: config
                .access
                .apps
                .iter()
                .map(|(name, rules)| (name.clone(), rules.hls.clone()))
                .collect(),
            groups: config.hls_groups.clone(),
            max_bytes: config.hls_max_bytes,
            reserved: Arc::new(AtomicUsize::new(0)),
            refused: AtomicU64::new(0),
            viewers: Mutex::new(HashMap::new()),
        }
    }

    /// The stream to serve an HLS viewer (`ip`, asking for `key` with
    /// `query`) whom an `on_play` callback allowed recently; None when the
    /// callback must be asked.
    pub(crate) fn allowed_viewer(
        &self,
        ip: IpAddr,
        key: &str,
        query: &str,
        now: Instant,
    ) -> Option<String> {
        let viewers = super::base::locked(&self.viewers);
        viewers
            .get(&(ip, format!("{key}?{query}")))
            .filter(|(until, _)| now < *until)
            .map(|(_, serve)| serve.clone())
    }

    /// An `on_play` callback allowed this HLS viewer, to be served `serve`.
    pub(crate) fn remember_viewer(
        &self,
        ip: IpAddr,
        key: &str,
        query: &str,
        serve: String,
        now: Instant,
    ) {
        let mut viewers = super::base::locked(&self.viewers);
        if viewers.len() >= MAX_VIEWER_VERDICTS {
            viewers.retain(|_, (until, _)| now < *until);
            if viewers.len() >= MAX_VIEWER_VERDICTS {
                viewers.clear();
            }
        }
        viewers.insert(
            (ip, format!("{key}?{query}")),
            (now + VIEWER_VERDICT_TTL, serve),
        );
    }

    /// The packager configuration of stream `key`'s application (None: it
    /// packages no HLS).
    fn config_for(&self, key: &str) -> Result<Option<PackagerConfig>, String> {
        let app = key.split_once('/').map_or(key, |(a, _)| a);
        let over = self.apps.get(app).or_else(|| self.apps.get("*"));
        crate::hls_settings::packager_config(&self.defaults, over)
    }

    /// How long a request may wait for stream `key` (a blocking reload, a
    /// hinted part, an edge's pull): three target durations of its
    /// application (zero when it packages no HLS).
    pub(crate) fn blocking_timeout(&self, key: &str) -> Duration {
        match self.config_for(key) {
            Ok(Some(c)) => Duration::from_secs(3 * u64::from(c.target_duration_s)),
            _ => Duration::ZERO,
        }
    }

    /// A packager for stream `key` when its application packages HLS and
    /// the budget admits its window. Logs once why not.
    pub(crate) fn packager_for(&self, key: &str) -> Option<StreamHls> {
        let config = match self.config_for(key) {
            Ok(Some(c)) => c,
            Ok(None) => return None,
            Err(e) => {
                log::warn!("hls stream={key}: not packaged: {e}");
                return None;
            }
        };
        let want = config.window_bytes;
        let admitted = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + want <= self.max_bytes).then_some(used + want)
            })
            .is_ok();
        if !admitted {
            self.refused.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "hls stream={key}: not packaged: the HLS windows of the streams already packaged hold the --hls-max-bytes budget ({} bytes)",
                self.max_bytes
            );
            return None;
        }
        match Packager::new(config.clone()) {
            Ok(p) => Some(StreamHls::new(
                p,
                config,
                Reservation(self.reserved.clone(), want),
            )),
            Err(e) => {
                log::warn!("hls stream={key}: not packaged: {e}");
                None
            }
        }
    }

    /// The group named `key`, if one is configured.
    pub(crate) fn group(&self, key: &str) -> Option<&HlsGroup> {
        self.groups.iter().find(|g| g.stream == key)
    }

    /// Window bytes reserved now, and the budget.
    pub fn budget(&self) -> (usize, usize) {
        (self.reserved.load(Ordering::Relaxed), self.max_bytes)
    }

    /// Streams refused for the budget since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Window bytes reserved in the budget, given back when the stream's HLS
/// state goes.
struct Reservation(Arc<AtomicUsize>, usize);

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

/// Request counters by kind of resource.
#[derive(Debug, Default)]
pub struct HlsCounters {
    pub playlists: AtomicU64,
    pub parts: AtomicU64,
    pub segments: AtomicU64,
    pub inits: AtomicU64,
    /// Requests that waited (blocking reloads, hinted parts).
    pub blocked: AtomicU64,
    /// Blocking requests answered 503 after their timeout.
    pub timeouts: AtomicU64,
    /// Response bytes (heads and bodies).
    pub bytes_out: AtomicU64,
}

impl HlsCounters {
    fn count(&self, resource: &Resource) {
        let c = match resource {
            Resource::Multivariant | Resource::Media(_) => &self.playlists,
            Resource::Part { .. } => &self.parts,
            Resource::Segment { .. } => &self.segments,
            Resource::Init { .. } => &self.inits,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Process-wide HLS counters (for /metrics), beside each stream's own.
pub static TOTALS: HlsTotals = HlsTotals::new();

/// See [`TOTALS`].
pub struct HlsTotals {
    pub playlists: AtomicU64,
    pub parts: AtomicU64,
    pub segments: AtomicU64,
    pub inits: AtomicU64,
    pub blocked: AtomicU64,
    pub timeouts: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Requests parked now, on every worker.
    pub waiting: AtomicU64,
}

impl HlsTotals {
    const fn new() -> Self {
        Self {
            playlists: AtomicU64::new(0),
            parts: AtomicU64::new(0),
            segments: AtomicU64::new(0),
            inits: AtomicU64::new(0),
            blocked: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
        }
    }
}

/// What a playlist cache entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rendered {
    Multivariant,
    Media(cmaf::RenditionId, Skip),
}

/// The packager and what is built from it, behind the stream's HLS lock.
struct HlsState {
    packager: Packager,
    /// Playlists rendered at `version`: every viewer asking for the same
    /// playlist at the same state gets the same `Bytes`.
    version: u64,
    cache: Vec<(Rendered, Bytes)>,
    /// When a request was last answered (an edge keeps pulling a stream
    /// HLS viewers watch).
    last_request: Option<Instant>,
    /// Client addresses answered lately, and when: the API's viewer count
    /// (HTTP has no session; see [`StreamHls::describe`]). At most
    /// [`MAX_HLS_CLIENTS`] entries.
    clients: HashMap<IpAddr, Instant>,
    /// When `clients` was last pruned: at most once a second, so that
    /// requests from ever new addresses cannot make every request scan it.
    clients_pruned: Option<Instant>,
}

impl HlsState {
    /// `client` was answered at `now`: one lookup when it is known; a new
    /// address is added while the table has room, the table pruned of
    /// addresses older than `window` at most once a second when it is full.
    fn note_client(&mut self, client: IpAddr, now: Instant, window: Duration) {
        if let Some(seen) = self.clients.get_mut(&client) {
            *seen = now;
            return;
        }
        if self.clients.len() >= MAX_HLS_CLIENTS
            && self.clients_pruned.map_or(true, |at| {
                now.saturating_duration_since(at) >= Duration::from_secs(1)
            })
        {
            self.clients
                .retain(|_, seen| now.saturating_duration_since(*seen) < window);
            self.clients_pruned = Some(now);
        }
        if self.clients.len() < MAX_HLS_CLIENTS {
            self.clients.insert(client, now);
        }
    }
}

/// Client addresses remembered per stream for the viewer count: past it,
/// the ones not seen within the viewer window go first, and new ones are
/// not counted while every entry is recent (the count then reads as at
/// least this).
const MAX_HLS_CLIENTS: usize = 65_536;

/// Who else sees a packager's outputs as they come out (a recording).
pub(crate) type Sink<'a> = Option<&'a mut dyn FnMut(&Output, &Packager)>;

/// One stream's HLS: see the module documentation.
pub(crate) struct StreamHls {
    state: Mutex<HlsState>,
    /// Bit w: worker w has requests parked for this stream's next output.
    waiters: AtomicU64,
    /// How long a blocking request may wait before 503.
    blocking_timeout: Duration,
    pub counters: HlsCounters,
    config: PackagerConfig,
    _reservation: Reservation,
}

/// The answer to an HLS request.
pub(crate) enum Answer {
    /// 200 with this content type and body.
    Ok {
        content_type: &'static str,
        playlist: bool,
        body: WireForm,
    },
    /// Park, and ask again at the stream's next output (or 503 after the
    /// timeout).
    Wait(Duration),
    /// An error status with its reason.
    Status(u16, &'static str),
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl std::fmt::Debug for StreamHls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHls")
            .field("config", &self.config)
            .field("waiters", &self.waiters)
            .finish_non_exhaustive()
    }
}

impl StreamHls {
    fn new(packager: Packager, config: PackagerConfig, reservation: Reservation) -> Self {
        let blocking_timeout = Duration::from_millis(packager.blocking_timeout_ms());
        Self {
            state: Mutex::new(HlsState {
                packager,
                version: u64::MAX,
                cache: Vec::new(),
                last_request: None,
                clients: HashMap::new(),
                clients_pruned: None,
            }),
            waiters: AtomicU64::new(0),
            blocking_timeout,
            counters: HlsCounters::default(),
            config,
            _reservation: reservation,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HlsState> {
        super::base::locked(&self.state)
    }

    /// Packages one frame of the stream (output timeline). Returns the
    /// workers to wake: those with requests parked, when something came
    /// out that they may be waiting for.
    /// `sink`, when given, sees every output with the packager (a recording
    /// that writes this stream's fragments).
    pub(crate) fn push(
        &self,
        key: &str,
        kind: crate::protocol::session::MediaKind,
        timestamp: u32,
        payload: &Bytes,
        sink: Sink<'_>,
    ) -> u64 {
        let mut st = self.lock();
        st.packager
            .handle_frame(kind, timestamp, payload, wall_ms());
        self.drain(key, &mut st, sink)
    }

    /// The publisher left: the playlists end (EXT-X-ENDLIST), and every
    /// parked request can be answered. Returns the workers to wake.
    pub(crate) fn finish(&self, key: &str, sink: Sink<'_>) -> u64 {
        let mut st = self.lock();
        st.packager.finish();
        self.drain(key, &mut st, sink);
        self.waiters.swap(0, Ordering::AcqRel)
    }

    fn drain(&self, key: &str, st: &mut HlsState, mut sink: Sink<'_>) -> u64 {
        let mut wake = false;
        while let Some(out) = st.packager.poll_output() {
            if let Some(sink) = sink.as_mut() {
                sink(&out, &st.packager);
            }
            match out {
                Output::TrackSkipped(s) => log::warn!(
                    "hls stream={key}: track {} not packaged: {}",
                    s.rendition,
                    s.reason
                ),
                Output::InitChanged { .. } | Output::PartReady(_) | Output::SegmentComplete(_) => {
                    wake = true
                }
            }
        }
        if wake {
            self.waiters.swap(0, Ordering::AcqRel)
        } else {
            0
        }
    }

    /// Worker `w` has requests parked: wake it at the next output. The
    /// caller asks again afterwards (see the module documentation).
    pub(crate) fn park(&self, w: usize) {
        self.waiters.fetch_or(1 << w, Ordering::AcqRel);
    }

    /// How long a blocking request may wait.
    pub(crate) fn blocking_timeout(&self) -> Duration {
        self.blocking_timeout
    }

    /// Answers `client`'s request for `resource`; `query` is appended to
    /// the URIs of a playlist (a key or a signature the request carried).
    pub(crate) fn answer(
        &self,
        resource: &Resource,
        directives: &Directives,
        query: &str,
        client: IpAddr,
    ) -> Answer {
        let mut st = self.lock();
        match st.packager.decide(resource, directives) {
            Decision::Ready => {}
            Decision::Wait => return Answer::Wait(self.blocking_timeout),
            Decision::NotFound => return Answer::Status(404, "not in the HLS window"),
            Decision::BadRequest(why) => return Answer::Status(400, why),
        }
        self.counters.count(resource);
        let now = Instant::now();
        st.last_request = Some(now);
        st.note_client(client, now, self.blocking_timeout);
        let content_type = resource.content_type();
        let rendered = match resource {
            Resource::Multivariant => Some(Rendered::Multivariant),
            Resource::Media(r) => Some(Rendered::Media(*r, directives.skip)),
            _ => None,
        };
        if let Some(which) = rendered {
            let version = st.packager.state_version();
            if st.version != version {
                st.version = version;
                st.cache.clear();
            }
            let text = match st.cache.iter().find(|(r, _)| *r == which) {
                Some((_, b)) => b.clone(),
                None => {
                    let Some(Body::Playlist(text)) = st.packager.respond(resource, directives)
                    else {
                        return Answer::Status(404, "no such playlist");
                    };
                    let b = Bytes::from(text);
                    st.cache.push((which, b.clone()));
                    b
                }
            };
            drop(st);
            let body = if query.is_empty() {
                text
            } else {
                Bytes::from(with_query(&String::from_utf8_lossy(&text), query))
            };
            return Answer::Ok {
                content_type,
                playlist: true,
                body: WireForm::from_bytes(body),
            };
        }
        match st.packager.respond(resource, directives) {
            Some(Body::Init(b)) => Answer::Ok {
                content_type,
                playlist: false,
                body: WireForm::from_bytes(b),
            },
            Some(Body::Media(w)) => Answer::Ok {
                content_type,
                playlist: false,
                body: w,
            },
            Some(Body::Playlist(_)) | None => Answer::Status(404, "not in the HLS window"),
        }
    }

    /// What the API shows.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let st = self.lock();
        let p = &st.packager;
        let renditions: Vec<serde_json::Value> = p
            .renditions()
            .iter()
            .map(|r| {
                let last = p.last_part(r.id);
                serde_json::json!({
                    "id": r.id.to_string(),
                    "codecs": r.format.codecs,
                    "width": r.format.width,
                    "height": r.format.height,
                    "bandwidth": r.peak_bandwidth,
                    "average_bandwidth": r.average_bandwidth,
                    "frame_rate": r.frame_rate,
                    "last_segment": last.map(|(msn, _)| msn),
                    "last_part": last.map(|(_, part)| part),
                })
            })
            .collect();
        let skipped: Vec<serde_json::Value> = p
            .skipped_tracks()
            .iter()
            .map(|s| serde_json::json!({ "track": s.rendition.to_string(), "reason": s.reason.to_string() }))
            .collect();
        let c = &self.counters;
        let (segments, bytes) = p.window_held();
        // Viewers: client addresses answered within three target durations
        // (a classic client asks once a target duration). Viewers behind one
        // address (NAT, a proxy without PROXY protocol) count as one.
        let now = Instant::now();
        let viewers = st
            .clients
            .values()
            .filter(|seen| now.saturating_duration_since(**seen) < self.blocking_timeout)
            .count();
        serde_json::json!({
            "ended": p.is_ended(),
            "viewers": viewers,
            "part_target_ms": p.part_target_ms(),
            "target_duration_s": self.config.target_duration_s,
            "window": {
                "segments": segments,
                "bytes": bytes,
                "max_segments": self.config.window_segments,
                "max_bytes": self.config.window_bytes,
            },
            "renditions": renditions,
            "skipped_tracks": skipped,
            "requests": {
                "playlists": c.playlists.load(Ordering::Relaxed),
                "parts": c.parts.load(Ordering::Relaxed),
                "segments": c.segments.load(Ordering::Relaxed),
                "inits": c.inits.load(Ordering::Relaxed),
                "blocked": c.blocked.load(Ordering::Relaxed),
                "timeouts": c.timeouts.load(Ordering::Relaxed),
            },
            "bytes_out": c.bytes_out.load(Ordering::Relaxed),
        })
    }

    /// True while HLS viewers watch: a request was answered within
    /// `idle` plus three target durations of `now` (a classic client asks
    /// once a target duration, after its segment).
    pub(crate) fn watched(&self, now: Instant, idle: Duration) -> bool {
        self.lock()
            .last_request
            .is_some_and(|at| now.saturating_duration_since(at) < idle + self.blocking_timeout)
    }

    /// True once any HLS request was answered for this stream.
    pub(crate) fn has_viewers(&self) -> bool {
        let c = &self.counters;
        c.playlists.load(Ordering::Relaxed) + c.parts.load(Ordering::Relaxed) > 0
    }
}

/// The multivariant playlist of a stream group: each member stream a
/// variant (its renditions under its own `/APP/NAME/`). None until every
/// member has a playlist.
/// `members` are each member's URL prefix (`/APP/NAME/`) and HLS state.
pub(crate) fn group_playlist(members: &[(String, &StreamHls)], query: &str) -> Option<Bytes> {
    let states: Vec<(&str, MutexGuard<'_, HlsState>)> = members
        .iter()
        .map(|(prefix, h)| (prefix.as_str(), h.lock()))
        .collect();
    if states.is_empty() {
        return None;
    }
    let refs: Vec<(&str, &Packager)> = states
        .iter()
        .map(|(prefix, st)| (*prefix, &st.packager))
        .collect();
    let text = cmaf::multivariant_group(&refs)?;
    Some(Bytes::from(if query.is_empty() {
        text
    } else {
        with_query(&text, query)
    }))
}

/// Splits a request path into the stream key and the HLS resource under it
/// (`/APP/NAME/v0/p12.m4s`). None for anything that is not one.
pub(crate) fn route(path: &str) -> Option<(String, Resource)> {
    let rest = path.strip_prefix('/')?;
    let (app, rest) = rest.split_once('/')?;
    let (name, rest) = rest.split_once('/')?;
    let resource = Resource::parse(rest)?;
    if !(crate::protocol::name::valid_name(app) && crate::protocol::name::valid_name(name)) {
        return None;
    }
    Some((format!("{app}/{name}"), resource))
}

/// A request's query without the `_HLS_*` delivery directives: what is
/// carried into the playlist's URIs (a key, a signed URL's parameters).
pub(crate) fn carried_query(query: &str) -> String {
    query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("_HLS_"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Appends `query` to every URI of a playlist: the URI lines and the
/// `URI="..."` attributes.
pub(crate) fn with_query(playlist: &str, query: &str) -> String {
    let append = |uri: &str, out: &mut String| {
        out.push_str(uri);
        out.push(if uri.contains('?') { '&' } else { '?' });
        out.push_str(query);
    };
    let mut out = String::with_capacity(playlist.len() + 64 * query.len());
    for line in playlist.lines() {
        if line.is_empty() {
            out.push('\n');
            continue;
        }
        if !line.starts_with('#') {
            append(line, &mut out);
            out.push('\n');
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("URI=\"") {
            let start = i + "URI=\"".len();
            let Some(len) = rest[start..].find('"') else {
                break;
            };
            out.push_str(&rest[..start]);
            append(&rest[start..start + len], &mut out);
            rest = &rest[start + len..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

/// The response head for an HLS answer. Playlists are not cached (a
/// blocking reload's answer is only good once); media is immutable under
/// its URI.
pub(crate) fn response_head(
    status: u16,
    content_type: &str,
    len: usize,
    playlist: bool,
    cors: &str,
    keep_alive: bool,
) -> Bytes {
    let cache = if playlist { "no-cache" } else { "max-age=3600" };
    http::response_head(
        status,
        &[
            ("Content-Type", content_type),
            ("Cache-Control", cache),
            ("Access-Control-Allow-Origin", cors),
        ],
        Some(len),
        keep_alive,
    )
    .freeze()
}

/// A short plain-text error body.
pub(crate) fn error_body(why: &str) -> String {
    let mut s = String::with_capacity(why.len() + 1);
    let _ = writeln!(s, "{why}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The viewer table stays within its bound: a full table of recent
    /// addresses takes no new one; once they are older than the window the
    /// next new address prunes them (not sooner than a second after the
    /// last prune) and is counted.
    #[test]
    fn the_client_table_is_bounded_and_pruned_when_full() {
        let mut st = HlsState {
            packager: Packager::new(PackagerConfig::default()).unwrap(),
            version: 0,
            cache: Vec::new(),
            last_request: None,
            clients: HashMap::new(),
            clients_pruned: None,
        };
        let window = Duration::from_secs(6);
        let t0 = Instant::now();
        let addr = |i: u32| IpAddr::from(std::net::Ipv6Addr::from(u128::from(i) + 1));
        for i in 0..MAX_HLS_CLIENTS as u32 {
            st.note_client(addr(i), t0, window);
        }
        assert_eq!(st.clients.len(), MAX_HLS_CLIENTS);
        let extra = addr(u32::MAX);
        st.note_client(extra, t0 + Duration::from_secs(1), window);
        assert!(!st.clients.contains_key(&extra), "every entry is recent");
        // A known address is refreshed whatever the size.
        st.note_client(addr(7), t0 + window, window);
        assert_eq!(st.clients[&addr(7)], t0 + window);
        // The others are past the window: pruned, and the new one counted.
        st.note_client(extra, t0 + window + Duration::from_secs(1), window);
        assert_eq!(st.clients.len(), 2);
        assert!(st.clients.contains_key(&extra));
    }

    #[test]
    fn routes_resources_under_a_stream() {
        assert_eq!(
            route("/live/cam/index.m3u8"),
            Some(("live/cam".into(), Resource::Multivariant))
        );
        assert!(route("/live/cam/v0/p12.m4s").is_some());
        assert_eq!(route("/live/cam.flv"), None);
        assert_eq!(route("/live/../v0.m3u8"), None);
        assert_eq!(route("/api/streams/x"), None);
    }

    #[test]
    fn carries_credentials_into_every_uri() {
        let playlist = "#EXTM3U\n#EXT-X-MAP:URI=\"v0/init-1.mp4\"\n#EXT-X-PART:DURATION=0.33,URI=\"v0/p1.m4s\",INDEPENDENT=YES\n#EXTINF:2.0,\nv0/s0.m4s\n#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"v0/p2.m4s\"\n";
        let out = with_query(playlist, "key=k1");
        assert!(out.contains("URI=\"v0/init-1.mp4?key=k1\""), "{out}");
        assert!(
            out.contains("URI=\"v0/p1.m4s?key=k1\",INDEPENDENT=YES"),
            "{out}"
        );
        assert!(out.contains("\nv0/s0.m4s?key=k1\n"), "{out}");
        assert!(out.contains("URI=\"v0/p2.m4s?key=k1\""), "{out}");
        assert_eq!(carried_query("_HLS_msn=3&key=k1&_HLS_part=1"), "key=k1");
    }
}
