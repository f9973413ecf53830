//! One worker: a thread with its own mio `Poll`, its own SO_REUSEPORT
//! listeners (RTMP, HTTP, optionally the API) and a slab of connections.
//! Each connection is a socket, a read buffer, an [`OutQueue`], the streams
//! it plays, and its protocol state: an RTMP [`ServerSession`]
//! (`rtmp_conn.rs`) or an HTTP request / HTTP-FLV / ws-flv state
//! (`http_conn.rs`).
//!
//! The loop (mio's `tcp_server.rs`, rustls's `tlsserver-mio.rs`): wait;
//! accept; read each readable socket until `WouldBlock` (bounded per wakeup,
//! for fairness), feeding the protocol and acting on what it says; deliver
//! what other workers posted in this worker's inbox; then write every
//! connection that got new bytes with vectored writes until `WouldBlock`.
//! Sockets are registered readable and writable once: edge-triggered
//! writable events only arrive when a full socket drains, which is exactly
//! when to write again.
//!
//! Fan-out: the publisher's worker builds each frame once
//! ([`Stream::push`]), queues it to its own players directly, and posts one
//! `Arc` per frame to each other worker with players, waking each once per
//! loop iteration. Those workers queue the same `Arc` to their players, in
//! the player's format (RTMP, FLV tag, FLV tag in a WebSocket message), each
//! form built once per frame.

use super::http_conn::HttpState;
use super::queue::{Item, OutQueue};
use super::relay::{RelayCommand, RelayConn};
use super::rtmp_conn::RtmpConn;
use super::stats::{CloseReason, Protocol, Stats};
use super::stream::{Format, Frame, Notice, Registry, Stream, SHARED_MESSAGE_STREAM_ID};
use crate::config::{Config, SHUTDOWN_FLUSH_TIMEOUT};
use crate::media::{self, FourCcSet, FrameClass};
use crate::protocol::session::{caps_ex, ClientCaps, MediaKind, ServerSession, SessionConfig};
use bytes::BytesMut;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub(super) const WAKER: Token = Token(usize::MAX - 1);
/// Listener tokens count down from here, one per listener kind.
const LISTENER_BASE: usize = usize::MAX - 2;

/// Bytes asked of the kernel by a connection's first `read`. Players and idle
/// connections only ever read acks and pings: a small buffer keeps them at a
/// few KiB each (a 64 KiB buffer cost 60 KiB per player in RSS).
const MIN_READ_CHUNK: usize = 4 * 1024;
/// The largest `read`: a connection whose reads fill its chunk (a publisher)
/// doubles it up to this.
const MAX_READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection per wakeup before the others get a turn.
const READ_BUDGET: usize = 1024 * 1024;
/// A read buffer holding more unconsumed bytes than this means the decoder
/// is not making progress; the peer is closed. The chunk decoder consumes
/// partial chunk bodies as they arrive, so in practice the buffer holds less
/// than one chunk header; an HTTP head is bounded far below this.
pub(super) const MAX_READ_BUFFER: usize = 1024 * 1024;
/// How often deadlines (handshake, ping, idle publisher, stalled player,
/// HTTP request) are checked.
const TICK: Duration = Duration::from_millis(500);

/// Test builds only (`--features fault-injection`): publishing this stream
/// name panics in the publisher's read path, so tests can check that the
/// panic backstop closes that connection alone.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC_ON_PUBLISH: &str = "sluice-fault-panic-on-publish";
/// Test builds only: queueing a frame of a stream whose name ends with this
/// panics in the delivery to each player.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC_ON_DELIVERY: &str = "sluice-fault-panic-on-delivery";

/// Header frames remembered per player (see `Subscription::mark_sent`):
/// metadata plus config and metadata for each track of a multitrack stream.
const MAX_SENT_HEADERS: usize = 64;

/// What a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Rtmp,
    /// HTTP-FLV, ws-flv, and the API unless it has its own listener.
    Http,
    /// The API and /metrics only.
    Api,
    /// Not a listener: an outbound relay connection.
    Relay,
}

/// What one worker posts to another (or the API to a worker).
#[derive(Debug)]
pub enum Delivery {
    Frame(Arc<Frame>, u64),
    Published {
        stream: u64,
        seq: u64,
    },
    Unpublished {
        stream: u64,
        seq: u64,
    },
    /// Close connection `id` (HTTP API).
    Close(u64),
    /// Close publisher `id`: another publisher took its stream over.
    Replaced(u64),
    /// An HTTP callback answered for connection `conn_id`.
    Hook {
        conn_id: u64,
        answer: crate::hooks::Answer,
    },
    /// Start, stop or advance a relay.
    Relay(RelayCommand),
}

/// A connection's byte counters, readable by the API from any thread.
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// What the API lists about a connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: u64,
    pub peer: SocketAddr,
    pub protocol: Protocol,
    /// `handshake`, `connected`, `publishing`, `playing`, `http`, ...
    pub state: &'static str,
    pub stream: Option<String>,
    pub since: SystemTime,
    pub counters: Arc<ConnCounters>,
}

/// The part of a worker other threads may touch.
pub struct WorkerHandle {
    pub waker: Waker,
    pub inbox: Mutex<Vec<Delivery>>,
    /// Connections this worker holds now.
    pub connections: AtomicUsize,
    /// Event loop iterations.
    pub iterations: AtomicU64,
    /// The API's view of this worker's connections, updated when one opens,
    /// changes state or closes (never per byte).
    pub clients: Mutex<HashMap<u64, ClientInfo>>,
}

/// TLS settings shared by every worker.
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    pub resolver: Arc<super::tls::CertResolver>,
}

/// State shared by every worker.
pub struct Shared {
    pub config: Config,
    pub registry: Registry,
    pub workers: Vec<WorkerHandle>,
    pub shutdown: AtomicBool,
    pub next_conn_id: AtomicU64,
    /// Panics caught while handling one connection (each closed that
    /// connection only); should stay 0.
    pub panics: AtomicU64,
    pub stats: Stats,
    pub tls: Option<Tls>,
    /// Access control (publish / play rules, failed-attempt delays).
    pub auth: crate::auth::Auth,
    /// Helper threads for HTTP callbacks (when any is configured).
    pub hooks: Option<crate::hooks::Pool>,
    /// Push and pull rules and tasks.
    pub relays: super::relay::Relays,
}

impl Shared {
    /// Asks every worker to shut down gracefully.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for w in &self.workers {
            if let Err(e) = w.waker.wake() {
                log::warn!("waking a worker for shutdown: {e}");
            }
        }
    }
}

/// A player's view of one stream.
pub(super) struct Subscription {
    /// RTMP message stream id (0 for HTTP players).
    pub msid: u32,
    pub format: Format,
    pub stream: Arc<Stream>,
    /// Deliveries with a lower sequence number were in the join snapshot.
    pub next_seq: u64,
    /// Waiting for a start point (join without GOP, after an overflow, a
    /// pause, or a new publisher).
    pub skipping: bool,
    pub paused: bool,
    pub audio: bool,
    pub video: bool,
    /// Sequence numbers of the header frames this player has been sent.
    pub sent_headers: Vec<u64>,
    pub dropped: u64,
    /// Enhanced RTMP codecs the player announced in `connect` (None: it
    /// announced none and is sent everything).
    pub accepts: Option<FourCcSet>,
    /// The player announced `capsEx` without Multitrack: only track 0.
    pub default_track_only: bool,
    /// Video tracks (ids below 64) that have had a keyframe since play
    /// (re)started: other tracks' inter frames before it are not sent.
    pub started_tracks: u64,
    /// A refused codec has been logged for this player.
    pub refusal_logged: bool,
    /// Header frames delivered while skipping, latest per slot: what the
    /// start point needs even if the stream's own latest headers have moved
    /// on by the time this worker gets there.
    pub held_headers: Vec<Arc<Frame>>,
    /// A relay pushing the stream, not a viewer (counted apart).
    pub relay: bool,
}

impl Subscription {
    pub fn new(msid: u32, format: Format, stream: Arc<Stream>, next_seq: u64) -> Self {
        Self {
            msid,
            format,
            stream,
            next_seq,
            skipping: true,
            paused: false,
            audio: true,
            video: true,
            sent_headers: Vec::new(),
            dropped: 0,
            accepts: None,
            default_track_only: false,
            started_tracks: 0,
            refusal_logged: false,
            held_headers: Vec::new(),
            relay: false,
        }
    }

    /// The headers in force at frame `seq`: per slot, the latest published
    /// before it, from the stream and from those held while skipping; in
    /// publish order.
    /// Remembers that header frame `seq` was queued to this player. Only the
    /// latest header of each slot matters on resume, so the list keeps the
    /// newest [`MAX_SENT_HEADERS`]: a publisher that resends its sequence
    /// header at every keyframe cannot grow it for as long as a player
    /// watches (past that many slots, a resume may repeat a header).
    fn mark_sent(&mut self, seq: u64) {
        if self.sent_headers.len() >= MAX_SENT_HEADERS {
            self.sent_headers.remove(0);
        }
        self.sent_headers.push(seq);
    }

    fn headers_before(&mut self, seq: u64) -> Vec<Arc<Frame>> {
        let mut all = self.stream.headers();
        all.append(&mut self.held_headers);
        all.retain(|h| h.seq < seq);
        all.sort_by_key(|h| std::cmp::Reverse(h.seq));
        let mut latest: Vec<Arc<Frame>> = Vec::with_capacity(all.len());
        for h in all {
            if !latest.iter().any(|l| l.header == h.header) {
                latest.push(h);
            }
        }
        latest.reverse();
        latest
    }

    /// Applies what an RTMP player announced in `connect`.
    pub fn with_caps(mut self, caps: &ClientCaps) -> Self {
        self.accepts = caps.fourccs.clone().filter(|s| !s.is_wildcard());
        self.default_track_only = caps.caps_ex.is_some() && !caps.has(caps_ex::MULTITRACK);
        self
    }

    /// True when this player must not get `f`: its codec is one the player
    /// did not announce (legacy headers always pass), or it is a non-default
    /// track for a player without multitrack support. No allocation.
    fn refuses(&self, f: &Frame) -> bool {
        if f.kind == MediaKind::Data {
            return false;
        }
        if self.default_track_only && f.info.track != 0 {
            return true;
        }
        self.accepts.as_ref().is_some_and(|set| {
            media::is_enhanced(f.kind == MediaKind::Video, &f.payload)
                && !set.contains(f.info.codec)
        })
    }

    /// Tracks which video tracks have started on a keyframe; false for an
    /// inter frame of a track that has not.
    fn track_ready(&mut self, f: &Frame) -> bool {
        if f.kind != MediaKind::Video || f.info.track >= 64 {
            return true;
        }
        let bit = 1u64 << f.info.track;
        match f.info.class {
            FrameClass::Keyframe => {
                self.started_tracks |= bit;
                true
            }
            FrameClass::Frame => self.started_tracks & bit != 0,
            _ => true,
        }
    }
}

/// A connection's protocol state.
pub(super) enum Proto {
    Rtmp(Box<RtmpConn>),
    Http(HttpState),
    /// An outbound connection: a push to a target or a pull from an origin.
    Relay(Box<RelayConn>),
}

pub(super) struct Conn {
    pub id: u64,
    pub socket: TcpStream,
    pub peer: SocketAddr,
    pub listener: ListenerKind,
    pub proto: Proto,
    pub read_buf: BytesMut,
    pub out: OutQueue,
    pub subscriptions: Vec<Subscription>,
    pub dirty: bool,
    /// Since when the socket has refused bytes (`WouldBlock`) with no
    /// progress since. Cleared by a write that makes progress or by a
    /// writable edge (the kernel drained the socket). Dropping queued frames
    /// does not clear it: a player skipping frames is still stalled.
    pub blocked_since: Option<Instant>,
    /// Close once the queue is written (HTTP responses, ended streams).
    pub close_after_flush: Option<(CloseReason, String)>,
    pub counters: Arc<ConnCounters>,
    /// Bytes asked of the kernel per read (grows while reads come back full).
    read_chunk: usize,
    /// TLS state for RTMPS and HTTPS connections (client side for relays
    /// to `rtmps://` peers).
    pub tls: Option<Box<rustls::Connection>>,
    /// Counted in the worker's pending-handshake total.
    tls_handshaking: bool,
}

impl Conn {
    pub fn new(
        id: u64,
        socket: TcpStream,
        peer: SocketAddr,
        listener: ListenerKind,
        proto: Proto,
        tls: Option<Box<rustls::Connection>>,
        counters: Arc<ConnCounters>,
    ) -> Self {
        Conn {
            id,
            socket,
            peer,
            listener,
            proto,
            read_buf: BytesMut::new(),
            out: OutQueue::default(),
            subscriptions: Vec::new(),
            dirty: false,
            blocked_since: None,
            close_after_flush: None,
            counters,
            read_chunk: MIN_READ_CHUNK,
            // Accepted TLS connections count against the handshake cap.
            tls_handshaking: tls.is_some() && listener != ListenerKind::Relay,
            tls,
        }
    }

    pub fn push(&mut self, item: Item) {
        self.out.push(item);
    }

    /// Moves an RTMP session's pending bytes to the output queue.
    pub fn pull_transmit(&mut self) {
        match &mut self.proto {
            Proto::Rtmp(r) => {
                while let Some(bytes) = r.session.poll_transmit() {
                    self.out.push(Item::Control(bytes));
                }
            }
            Proto::Relay(r) => {
                if let Some(s) = r.session.as_mut() {
                    while let Some(bytes) = s.poll_transmit() {
                        self.out.push(Item::Control(bytes));
                    }
                }
            }
            Proto::Http(_) => {}
        }
    }

    pub fn protocol(&self) -> Protocol {
        match (&self.proto, self.tls.is_some()) {
            (Proto::Rtmp(_) | Proto::Relay(_), false) => Protocol::Rtmp,
            (Proto::Rtmp(_) | Proto::Relay(_), true) => Protocol::Rtmps,
            (Proto::Http(_), false) => Protocol::Http,
            (Proto::Http(_), true) => Protocol::Https,
        }
    }

    /// Bytes still to go out: queued, or encrypted and waiting for the socket.
    fn has_pending_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// The connection's state, for the panic backstop's log line.
    fn describe(&self) -> String {
        let subs: Vec<&str> = self
            .subscriptions
            .iter()
            .map(|s| s.stream.key.as_str())
            .collect();
        let (connected, publishing) = match &self.proto {
            Proto::Rtmp(r) => (
                r.session.is_connected(),
                r.publications
                    .iter()
                    .map(|p| p.stream.key.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Proto::Http(_) => (true, String::new()),
            Proto::Relay(r) => (
                r.session.as_ref().is_some_and(|s| s.is_connected()),
                r.publication
                    .as_ref()
                    .map_or(String::new(), |p| p.stream.key.clone()),
            ),
        };
        format!(
            "conn={} peer={} protocol={} role={} connected={connected} publishing=[{publishing}] playing=[{}] bytes_in={} bytes_out={} read_buf={} queued_media={} queued_control={}",
            self.id,
            self.peer,
            self.protocol().name(),
            self.role(),
            subs.join(","),
            self.counters.bytes_in.load(Ordering::Relaxed),
            self.counters.bytes_out.load(Ordering::Relaxed),
            self.read_buf.len(),
            self.out.media_bytes(),
            self.out.control_bytes(),
        )
    }

    fn role(&self) -> &'static str {
        if matches!(self.proto, Proto::Relay(_)) {
            return "relay";
        }
        let publishing = matches!(&self.proto, Proto::Rtmp(r) if !r.publications.is_empty());
        match (publishing, self.subscriptions.is_empty()) {
            (true, _) => "publisher",
            (false, false) => "player",
            (false, true) => "client",
        }
    }
}

/// Limits a worker applies to every player.
#[derive(Clone, Copy)]
pub(super) struct PlayerLimits {
    pub queue_bytes: usize,
    pub control_bytes: usize,
    pub stall: Duration,
}

pub struct Worker {
    pub(super) index: usize,
    pub(super) poll: Poll,
    listeners: Vec<(ListenerKind, bool, TcpListener)>,
    /// TLS connections still handshaking on this worker.
    tls_pending: usize,
    pub(super) conns: Slab<Conn>,
    pub(super) shared: Arc<Shared>,
    /// Stream id → tokens of local players.
    pub(super) locals: HashMap<u64, Vec<usize>>,
    dirty: Vec<usize>,
    pub(super) outgoing: Vec<Vec<Delivery>>,
    inbox_scratch: Vec<Delivery>,
    read_again: Vec<usize>,
    pub(super) session_config: SessionConfig,
    pub(super) limits: PlayerLimits,
    seed: u64,
    pub(super) shutting_down: Option<Instant>,
    /// Until when shutdown waits for publishers asked to reconnect.
    drain_deadline: Option<Instant>,
    /// Denials whose reply waits (failed attempts are slowed), by time.
    pub(super) deferred: Vec<super::access::Deferred>,
    /// Requests waiting for an HTTP callback's answer, by connection id.
    pub(super) awaiting_hook: HashMap<u64, super::access::AwaitingHook>,
    /// Connection id → slab key, for deferred replies and close requests.
    pub(super) ids: HashMap<u64, usize>,
    /// Relay tasks this worker runs, by task id.
    pub(super) relays: HashMap<u64, super::relay::Task>,
    /// The static pulls this worker runs have been started.
    pub(super) relays_started: bool,
}

impl Worker {
    pub fn new(
        index: usize,
        poll: Poll,
        listeners: Vec<(ListenerKind, bool, TcpListener)>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        let mut listeners = listeners;
        for (i, (_, _, l)) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Token(LISTENER_BASE - i), Interest::READABLE)?;
        }
        let c = &shared.config;
        let limits = PlayerLimits {
            queue_bytes: c.player_queue_bytes,
            control_bytes: c.control_queue_bytes,
            stall: c.player_stall_timeout,
        };
        let mut session_config = SessionConfig::from(c);
        session_config.connect_decision = shared.auth.has_connect_hooks();
        let workers = shared.workers.len();
        Ok(Self {
            index,
            poll,
            listeners,
            tls_pending: 0,
            conns: Slab::new(),
            ids: HashMap::new(),
            locals: HashMap::new(),
            dirty: Vec::new(),
            outgoing: (0..workers).map(|_| Vec::new()).collect(),
            inbox_scratch: Vec::new(),
            read_again: Vec::new(),
            session_config,
            limits,
            seed: 0x9E37_79B9_7F4A_7C15 ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            shutting_down: None,
            drain_deadline: None,
            deferred: Vec::new(),
            awaiting_hook: HashMap::new(),
            relays: HashMap::new(),
            relays_started: false,
            shared,
        })
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let mut timeout = if self.read_again.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Some(at) = self.deferred.iter().map(|d| d.at).min() {
                timeout = timeout.min(at.saturating_duration_since(Instant::now()));
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("worker={}: poll failed: {e}; stopping", self.index);
                break;
            }
            self.shared.workers[self.index]
                .iterations
                .fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let mut woken = false;
            for ev in events.iter() {
                match ev.token() {
                    WAKER => woken = true,
                    Token(t) if t > LISTENER_BASE - self.listeners.len() => {
                        self.accept(now, LISTENER_BASE - t)
                    }
                    Token(k) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.guarded(k, "reading", |w| w.on_readable(now, k));
                        }
                        if ev.is_writable() {
                            let mut connecting = false;
                            if let Some(c) = self.conns.get_mut(k) {
                                c.blocked_since = None;
                                connecting =
                                    matches!(&c.proto, Proto::Relay(r) if r.session.is_none());
                            }
                            if connecting {
                                self.guarded(k, "connecting", |w| w.relay_connected(k));
                            }
                            self.mark_dirty(k);
                        }
                    }
                }
            }
            for k in std::mem::take(&mut self.read_again) {
                self.guarded(k, "reading", |w| w.on_readable(now, k));
            }
            if woken {
                self.drain_inbox(now);
            }
            if !self.deferred.is_empty() {
                self.run_deferred(now);
            }
            if now >= next_tick {
                self.tick(now);
                next_tick = now + TICK;
            }
            if self.shutting_down.is_none() && self.shared.shutdown.load(Ordering::SeqCst) {
                self.begin_shutdown(now);
            }
            self.flush_dirty(now);
            self.send_outgoing();
            if let Some(deadline) = self.shutting_down {
                if self.shutdown_done(now, deadline) {
                    break;
                }
            }
        }
        let n = self.conns.len();
        for k in self.conns.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            self.close(k, CloseReason::Shutdown, "server shutting down");
        }
        log::debug!("worker={}: stopped, closed {n} connections", self.index);
    }

    fn next_seed(&mut self) -> u64 {
        // splitmix64: distinct S1 bytes per connection; nothing secret.
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn accept(&mut self, now: Instant, listener: usize) {
        loop {
            let Some((kind, tls, l)) = self.listeners.get(listener) else {
                return;
            };
            let (kind, tls) = (*kind, *tls);
            match l.accept() {
                Ok((mut socket, peer)) => {
                    if self.conns.len() >= self.shared.config.max_connections_per_worker {
                        log::warn!(
                            "worker={}: refusing {peer}: {} connections is the limit",
                            self.index,
                            self.conns.len()
                        );
                        continue;
                    }
                    let tls = match (tls, &self.shared.tls) {
                        (false, _) => None,
                        (true, _)
                            if self.tls_pending
                                >= self.shared.config.max_tls_handshakes_per_worker =>
                        {
                            log::debug!(
                                "worker={}: refusing {peer}: {} TLS handshakes in progress is the limit",
                                self.index,
                                self.tls_pending
                            );
                            self.shared
                                .stats
                                .handshake_failures
                                .fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        (true, Some(t)) => match rustls::ServerConnection::new(t.config.clone()) {
                            Ok(mut c) => {
                                c.set_buffer_limit(Some(super::tls::TLS_BUFFER_LIMIT));
                                Some(Box::new(rustls::Connection::Server(c)))
                            }
                            Err(e) => {
                                log::warn!("{peer}: TLS: {e}");
                                continue;
                            }
                        },
                        (true, None) => continue,
                    };
                    if tls.is_some() {
                        self.tls_pending += 1;
                    }
                    if let Err(e) = socket.set_nodelay(true) {
                        log::debug!("{peer}: TCP_NODELAY: {e}");
                    }
                    let entry = self.conns.vacant_entry();
                    let k = entry.key();
                    if let Err(e) = self.poll.registry().register(
                        &mut socket,
                        Token(k),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!("{peer}: register: {e}");
                        continue;
                    }
                    let id = self.shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
                    let proto = match kind {
                        ListenerKind::Rtmp => Proto::Rtmp(Box::new(RtmpConn::new(
                            ServerSession::new(self.session_config.clone(), now, self.next_seed()),
                        ))),
                        ListenerKind::Http | ListenerKind::Api | ListenerKind::Relay => {
                            Proto::Http(HttpState::awaiting_request(
                                now,
                                self.shared.config.http_request_timeout,
                            ))
                        }
                    };
                    let counters = Arc::new(ConnCounters::default());
                    let conn = Conn::new(id, socket, peer, kind, proto, tls, counters);
                    log::debug!(
                        "conn={id} peer={peer} worker={} listener={kind:?}: accepted",
                        self.index
                    );
                    let handle = &self.shared.workers[self.index];
                    handle.connections.fetch_add(1, Ordering::Relaxed);
                    self.shared.stats.opened(conn.protocol());
                    handle
                        .clients
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(
                            id,
                            ClientInfo {
                                id,
                                peer,
                                protocol: conn.protocol(),
                                state: match kind {
                                    ListenerKind::Rtmp => "handshake",
                                    _ => "http",
                                },
                                stream: None,
                                since: SystemTime::now(),
                                counters: conn.counters.clone(),
                            },
                        );
                    self.ids.insert(id, k);
                    self.conns.insert(conn);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the pending connection stays queued
                    // and is retried on the next accept event.
                    log::warn!("worker={}: accept: {e}", self.index);
                    return;
                }
            }
        }
    }

    /// Updates the API's view of connection `k`.
    pub(super) fn set_client_state(&self, k: usize, state: &'static str, stream: Option<&str>) {
        let Some(c) = self.conns.get(k) else { return };
        let mut map = self.shared.workers[self.index]
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(info) = map.get_mut(&c.id) {
            info.state = state;
            if let Some(s) = stream {
                info.stream = Some(s.to_owned());
            }
        }
    }

    pub(super) fn mark_dirty(&mut self, k: usize) {
        if let Some(c) = self.conns.get_mut(k) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(k);
            }
        }
    }

    fn on_readable(&mut self, now: Instant, k: usize) {
        if self.shutting_down.is_some() && !self.conns.get(k).is_some_and(reconnecting) {
            return;
        }
        if self.conns.get(k).is_some_and(|c| c.tls.is_some()) {
            return self.on_readable_tls(now, k);
        }
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(k) else {
                return;
            };
            let len = conn.read_buf.len();
            let chunk = conn.read_chunk;
            conn.read_buf.resize(len + chunk, 0);
            let r = conn.socket.read(&mut conn.read_buf[len..]);
            if matches!(r, Ok(n) if n == chunk) {
                conn.read_chunk = (chunk * 2).min(MAX_READ_CHUNK);
            }
            let n = match r {
                Ok(n) => n,
                Err(e) => {
                    conn.read_buf.truncate(len);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return,
                        io::ErrorKind::Interrupted => continue,
                        _ => return self.close(k, CloseReason::Peer, &format!("read error: {e}")),
                    }
                }
            };
            conn.read_buf.truncate(len + n);
            if n == 0 {
                return self.close(k, CloseReason::Peer, "closed by peer");
            }
            conn.counters
                .bytes_in
                .fetch_add(n as u64, Ordering::Relaxed);
            self.shared
                .stats
                .bytes_in
                .fetch_add(n as u64, Ordering::Relaxed);
            if !self.feed_protocol(now, k) {
                return;
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.read_again.push(k);
                return;
            }
        }
    }

    /// Hands the read buffer to the connection's protocol. False when the
    /// connection was closed.
    fn feed_protocol(&mut self, now: Instant, k: usize) -> bool {
        let Some(conn) = self.conns.get(k) else {
            return false;
        };
        match conn.proto {
            Proto::Rtmp(_) => self.rtmp_input(now, k),
            Proto::Http(_) => self.http_input(now, k),
            Proto::Relay(_) => self.relay_input(now, k),
        }
        let Some(conn) = self.conns.get(k) else {
            return false;
        };
        if conn.read_buf.len() > MAX_READ_BUFFER {
            let n = conn.read_buf.len();
            self.close(
                k,
                CloseReason::Protocol,
                &format!("{n} unconsumed bytes in the read buffer"),
            );
            return false;
        }
        true
    }

    /// Reads TLS records until the socket is empty (bounded per wakeup),
    /// decrypting into the read buffer and feeding the protocol as
    /// plaintext arrives.
    fn on_readable_tls(&mut self, now: Instant, k: usize) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(k) else {
                return;
            };
            let Some(tls) = conn.tls.as_mut() else {
                return;
            };
            let n = match tls.read_tls(&mut conn.socket) {
                Ok(0) => return self.close(k, CloseReason::Peer, "closed by peer"),
                Ok(n) => n,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted => continue,
                    _ => return self.close(k, CloseReason::Peer, &format!("read error: {e}")),
                },
            };
            conn.counters
                .bytes_in
                .fetch_add(n as u64, Ordering::Relaxed);
            self.shared
                .stats
                .bytes_in
                .fetch_add(n as u64, Ordering::Relaxed);
            let state = match tls.process_new_packets() {
                Ok(state) => state,
                Err(e) => {
                    // Send the alert rustls queued, then close.
                    let _ = tls.write_tls(&mut conn.socket);
                    let handshaking = conn.tls_handshaking;
                    let hint = if handshaking {
                        " (plain RTMP or HTTP on the TLS port?)"
                    } else {
                        ""
                    };
                    if handshaking {
                        self.shared
                            .stats
                            .handshake_failures
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return self.close(k, CloseReason::Protocol, &format!("TLS: {e}{hint}"));
                }
            };
            let plaintext = state.plaintext_bytes_to_read();
            let peer_closed = state.peer_has_closed();
            if plaintext > 0 {
                let len = conn.read_buf.len();
                conn.read_buf.resize(len + plaintext, 0);
                if let Err(e) = io::Read::read_exact(&mut tls.reader(), &mut conn.read_buf[len..]) {
                    return self.close(k, CloseReason::Protocol, &format!("TLS read: {e}"));
                }
            }
            if conn.tls_handshaking && !tls.is_handshaking() {
                conn.tls_handshaking = false;
                self.tls_pending = self.tls_pending.saturating_sub(1);
            }
            if tls.wants_write() {
                self.mark_dirty(k);
            }
            if plaintext > 0 && !self.feed_protocol(now, k) {
                return;
            }
            if peer_closed {
                return self.close(k, CloseReason::Peer, "TLS close_notify from peer");
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.read_again.push(k);
                return;
            }
        }
    }

    pub(super) fn subscription(&mut self, k: usize, msid: u32) -> Option<&mut Subscription> {
        self.conns
            .get_mut(k)?
            .subscriptions
            .iter_mut()
            .find(|s| s.msid == msid)
    }

    /// Starts a player on connection `k`: registers it, queues the latest
    /// headers and the cached GOP when the stream is live, and adds it to the
    /// local fan-out list. Returns (live, cached frames).
    pub(super) fn start_player(
        &mut self,
        k: usize,
        key: &str,
        msid: u32,
        format: Format,
    ) -> (bool, usize) {
        // A push relay joins like a player but is not counted as a viewer.
        let relay = self
            .conns
            .get(k)
            .is_some_and(|c| matches!(c.proto, Proto::Relay(_)));
        let registry = &self.shared.registry;
        let (stream, snap) = if relay {
            registry.join_relay(key, self.index)
        } else {
            registry.join(key, self.index, format)
        };
        let limits = self.limits;
        let stats = self.shared.clone();
        let Some(conn) = self.conns.get_mut(k) else {
            if relay {
                self.shared.registry.leave_relay(&stream, self.index);
            } else {
                self.shared.registry.leave(&stream, self.index, format);
            }
            return (false, 0);
        };
        let mut sub = Subscription::new(msid, format, stream.clone(), snap.next_seq);
        sub.relay = relay;
        if let Proto::Rtmp(r) = &conn.proto {
            sub = sub.with_caps(r.session.client_caps());
        }
        if snap.live && (!snap.gop.is_empty() || snap.audio_only) {
            // Instant start: headers, then the cached GOP from its keyframe.
            sub.skipping = false;
            for f in snap.headers.iter().chain(snap.gop.iter()) {
                enqueue_frame(conn, &mut sub, f, &limits, &stats.stats);
            }
        }
        conn.subscriptions.push(sub);
        self.locals.entry(stream.id).or_default().push(k);
        self.mark_dirty(k);
        (snap.live, snap.gop.len())
    }

    pub(super) fn end_subscription(
        &mut self,
        k: usize,
        conn: (u64, SocketAddr, Protocol),
        s: Subscription,
        why: &str,
    ) {
        if s.relay {
            if let Some(list) = self.locals.get_mut(&s.stream.id) {
                list.retain(|&t| t != k);
                if list.is_empty() {
                    self.locals.remove(&s.stream.id);
                }
            }
            self.shared.registry.leave_relay(&s.stream, self.index);
            return;
        }
        log::info!(
            "play stop stream={} conn={} peer={} worker={} protocol={} format={} dropped_frames={}: {why}",
            s.stream.key,
            conn.0,
            conn.1,
            self.index,
            conn.2.name(),
            s.format.name(),
            s.dropped
        );
        if let Some(list) = self.locals.get_mut(&s.stream.id) {
            list.retain(|&t| t != k);
            if list.is_empty() {
                self.locals.remove(&s.stream.id);
            }
        }
        self.shared.registry.leave(&s.stream, self.index, s.format);
        self.notify_hook("play_done", &s.stream.key, conn.0, conn.1, "");
    }

    /// Tells the workers with players that `stream` got or lost its publisher.
    pub(super) fn notify(&mut self, stream: &Stream, notice: Notice, published: bool) {
        let d = |stream, seq| {
            if published {
                Delivery::Published { stream, seq }
            } else {
                Delivery::Unpublished { stream, seq }
            }
        };
        for w in workers_in(notice.interest) {
            if w == self.index {
                self.deliver_local(&d(stream.id, notice.seq));
            } else if let Some(q) = self.outgoing.get_mut(w) {
                q.push(d(stream.id, notice.seq));
            }
        }
    }

    pub(super) fn fan_out(&mut self, interest: u64, frame: Arc<Frame>, stream: u64) {
        let mut local = false;
        for w in workers_in(interest) {
            if w == self.index {
                local = true;
            } else if let Some(q) = self.outgoing.get_mut(w) {
                q.push(Delivery::Frame(frame.clone(), stream));
            }
        }
        if local {
            self.deliver_local(&Delivery::Frame(frame, stream));
        }
    }

    /// Queues a delivery to this worker's players of its stream.
    fn deliver_local(&mut self, d: &Delivery) {
        let stream_id = match d {
            Delivery::Frame(_, s) => *s,
            Delivery::Published { stream, .. } | Delivery::Unpublished { stream, .. } => *stream,
            Delivery::Close(id) => {
                if let Some(&k) = self.ids.get(id) {
                    self.close(k, CloseReason::Api, "closed through the API");
                }
                return;
            }
            Delivery::Replaced(id) => {
                if let Some(&k) = self.ids.get(id) {
                    self.close(k, CloseReason::Replaced, "replaced by a new publisher");
                }
                return;
            }
            Delivery::Hook { conn_id, answer } => {
                return self.hook_answered(*conn_id, answer.clone());
            }
            Delivery::Relay(_) => return,
        };
        let Some(tokens) = self.locals.get(&stream_id) else {
            return;
        };
        let limits = self.limits;
        let mut panicked = Vec::new();
        for &k in tokens {
            let Some(conn) = self.conns.get_mut(k) else {
                continue;
            };
            if conn.close_after_flush.is_some() {
                // Closing: nothing may follow what is queued (a WebSocket
                // Close frame, the end of a response).
                continue;
            }
            let Some(i) = conn
                .subscriptions
                .iter()
                .position(|s| s.stream.id == stream_id)
            else {
                continue;
            };
            // Take the subscription out so the connection can be borrowed whole.
            let mut sub = conn.subscriptions.swap_remove(i);
            let delivered = catch(|| match d {
                Delivery::Frame(f, _) => {
                    if f.seq >= sub.next_seq {
                        sub.next_seq = f.seq + 1;
                        enqueue_frame(conn, &mut sub, f, &limits, &self.shared.stats);
                    }
                }
                Delivery::Published { seq, .. } | Delivery::Unpublished { seq, .. } => {
                    if *seq >= sub.next_seq {
                        sub.next_seq = seq + 1;
                        sub.skipping = true;
                        sub.sent_headers.clear();
                        sub.held_headers.clear();
                        let published = matches!(d, Delivery::Published { .. });
                        match &mut conn.proto {
                            Proto::Rtmp(r) if published => r.session.notify_published(sub.msid),
                            Proto::Rtmp(r) => r.session.notify_unpublished(sub.msid),
                            // HTTP-FLV has no in-band notice: the response
                            // ends with the stream (players reconnect).
                            Proto::Http(h) if !published => {
                                h.end_stream(&mut conn.out);
                                conn.close_after_flush =
                                    Some((CloseReason::StreamEnded, "the publisher left".into()));
                            }
                            Proto::Http(_) => {}
                            // A push ends with its publication (`stop_pushes`).
                            Proto::Relay(_) => {}
                        }
                        conn.pull_transmit();
                    }
                }
                Delivery::Close(_)
                | Delivery::Replaced(_)
                | Delivery::Hook { .. }
                | Delivery::Relay(_) => {}
            });
            conn.subscriptions.push(sub);
            if let Err(msg) = delivered {
                panicked.push((k, msg));
                continue;
            }
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(k);
            }
        }
        for (k, msg) in panicked {
            self.on_panic(k, "delivering media", &msg);
        }
    }

    fn drain_inbox(&mut self, now: Instant) {
        let mut batch = std::mem::take(&mut self.inbox_scratch);
        {
            let mut inbox = self.shared.workers[self.index]
                .inbox
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *inbox, &mut batch);
        }
        for d in batch.drain(..) {
            match &d {
                Delivery::Relay(cmd) => {
                    // Not one connection's work: a panic is counted and logged.
                    if let Err(msg) = catch(|| self.relay_command(now, cmd)) {
                        self.shared.panics.fetch_add(1, Ordering::Relaxed);
                        log::error!("worker={}: panic in a relay command: {msg}", self.index);
                    }
                }
                _ => self.deliver_local(&d),
            }
        }
        self.inbox_scratch = batch;
    }

    /// Posts this iteration's deliveries to the other workers, one lock and
    /// one wake per worker.
    fn send_outgoing(&mut self) {
        for (w, out) in self.outgoing.iter_mut().enumerate() {
            if out.is_empty() {
                continue;
            }
            let handle = &self.shared.workers[w];
            {
                let mut inbox = handle.inbox.lock().unwrap_or_else(|p| p.into_inner());
                if inbox.is_empty() {
                    std::mem::swap(&mut *inbox, out);
                } else {
                    inbox.append(out);
                }
            }
            if let Err(e) = handle.waker.wake() {
                log::warn!("worker={}: waking worker {w}: {e}", self.index);
            }
        }
    }

    fn flush_dirty(&mut self, now: Instant) {
        let mut failed = Vec::new();
        let mut panicked = Vec::new();
        for k in std::mem::take(&mut self.dirty) {
            let Some(conn) = self.conns.get_mut(k) else {
                continue;
            };
            conn.dirty = false;
            let result = catch(|| match conn.tls.as_mut() {
                None => write_plain(&mut conn.out, &mut conn.socket),
                Some(tls) => write_tls(&mut conn.out, tls, &mut conn.socket),
            });
            let result = match result {
                Ok(r) => r,
                Err(msg) => {
                    panicked.push((k, msg));
                    continue;
                }
            };
            let written = match result {
                Ok((written, blocked)) => {
                    if written > 0 {
                        conn.blocked_since = None;
                    }
                    if blocked {
                        conn.blocked_since.get_or_insert(now);
                    }
                    written
                }
                Err(e) => {
                    failed.push((k, CloseReason::Peer, format!("write error: {e}")));
                    continue;
                }
            };
            if written > 0 {
                conn.counters
                    .bytes_out
                    .fetch_add(written, Ordering::Relaxed);
                self.shared
                    .stats
                    .bytes_out
                    .fetch_add(written, Ordering::Relaxed);
                if let [sub] = conn.subscriptions.as_slice() {
                    sub.stream.bytes_out.fetch_add(written, Ordering::Relaxed);
                }
            }
            if conn.out.control_bytes() > self.limits.control_bytes {
                failed.push((
                    k,
                    CloseReason::Overflow,
                    format!(
                        "{} bytes of unread control replies (limit {})",
                        conn.out.control_bytes(),
                        self.limits.control_bytes
                    ),
                ));
            } else if !conn.has_pending_output() {
                if let Some((reason, why)) = conn.close_after_flush.take() {
                    failed.push((k, reason, why));
                }
            }
        }
        for (k, reason, why) in failed {
            self.close(k, reason, &why);
        }
        for (k, msg) in panicked {
            self.on_panic(k, "writing", &msg);
        }
    }

    fn tick(&mut self, now: Instant) {
        let mut failed = Vec::new();
        let mut panicked = Vec::new();
        for (k, conn) in self.conns.iter_mut() {
            let deadline = catch(|| match &mut conn.proto {
                Proto::Rtmp(r) => r.session.handle_timeout(now).map_err(|e| {
                    let handshake = !r.session.is_connected();
                    (e.to_string(), handshake)
                }),
                Proto::Http(h) => h.check_deadline(now).map_err(|e| (e, false)),
                Proto::Relay(r) => r
                    .check(now, self.shared.config.publisher_idle_timeout)
                    .map_err(|e| (e, false)),
            });
            let deadline = match deadline {
                Ok(d) => d,
                Err(msg) => {
                    panicked.push((k, msg));
                    continue;
                }
            };
            if let Err((why, handshake)) = deadline {
                if handshake {
                    self.shared
                        .stats
                        .handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                failed.push((k, CloseReason::Timeout, why));
                continue;
            }
            conn.pull_transmit();
            if let Some(since) = conn.blocked_since {
                let stalled = now.saturating_duration_since(since);
                if stalled >= self.limits.stall {
                    failed.push((
                        k,
                        CloseReason::Stalled,
                        format!("socket accepted nothing for {stalled:?}"),
                    ));
                    continue;
                }
            }
            if conn.has_pending_output() && !conn.dirty {
                conn.dirty = true;
                self.dirty.push(k);
            }
        }
        for (k, reason, why) in failed {
            self.close(k, reason, &why);
        }
        for (k, msg) in panicked {
            self.on_panic(k, "checking deadlines", &msg);
        }
        if let Err(msg) = catch(|| self.relay_tick(now)) {
            self.shared.panics.fetch_add(1, Ordering::Relaxed);
            log::error!("worker={}: panic in relay upkeep: {msg}", self.index);
        }
    }

    /// Runs `f`, this worker's handling of connection `k`, so that a panic in
    /// it closes connection `k` alone rather than unwinding the worker and
    /// dropping every connection on this core.
    pub(super) fn guarded(&mut self, k: usize, doing: &'static str, f: impl FnOnce(&mut Self)) {
        if let Err(msg) = catch(|| f(self)) {
            self.on_panic(k, doing, &msg);
        }
    }

    /// The panic backstop: logs the panic with the connection's state, counts
    /// it ([`Shared::panics`]) and closes that connection only.
    fn on_panic(&mut self, k: usize, doing: &str, msg: &str) {
        let total = self.shared.panics.fetch_add(1, Ordering::Relaxed) + 1;
        let state = self
            .conns
            .get(k)
            .map_or_else(|| "connection already gone".to_owned(), Conn::describe);
        log::error!(
            "worker={}: panic while {doing}: {msg}; closing this connection only ({state}); panics so far: {total}",
            self.index
        );
        let why = format!("panic while {doing}: {msg}");
        if let Err(again) = catch(|| self.close(k, CloseReason::Panic, &why)) {
            // `close` takes the connection out of the slab first, so it is
            // gone (its socket dropped during unwinding) even so.
            self.shared.panics.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "worker={}: panic while closing after a panic: {again}",
                self.index
            );
        }
    }

    fn begin_shutdown(&mut self, now: Instant) {
        log::info!(
            "worker={}: shutting down, {} connections",
            self.index,
            self.conns.len()
        );
        for (_, _, mut l) in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let mut asked = 0;
        for (k, conn) in self.conns.iter_mut() {
            if let Proto::Rtmp(r) = &mut conn.proto {
                if r.session.is_publishing() && r.session.client_caps().has(caps_ex::RECONNECT) {
                    // Enhanced RTMP: ask the publisher to reconnect, and keep
                    // reading its media until it leaves (it switches at its
                    // next keyframe) or the drain deadline passes.
                    r.session
                        .send_reconnect_request(self.shared.config.reconnect_url.as_deref());
                    r.reconnect_requested = true;
                    asked += 1;
                    conn.pull_transmit();
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(k);
                    }
                    continue;
                }
            }
            conn.out.drop_unstarted_media();
            match &mut conn.proto {
                Proto::Rtmp(r) => r.session.notify_shutdown(),
                Proto::Http(h) => h.shutdown(&mut conn.out),
                Proto::Relay(r) => r.say_goodbye(),
            }
            conn.pull_transmit();
            conn.close_after_flush = Some((CloseReason::Shutdown, "server shutting down".into()));
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(k);
            }
        }
        self.shutting_down = Some(now + SHUTDOWN_FLUSH_TIMEOUT);
        if asked > 0 {
            log::info!(
                "worker={}: asked {asked} publishers to reconnect{}; waiting up to {:?} for them to leave",
                self.index,
                self.shared
                    .config
                    .reconnect_url
                    .as_deref()
                    .map_or(String::new(), |u| format!(" to {u}")),
                self.shared.config.drain_timeout
            );
            self.drain_deadline = Some(now + self.shared.config.drain_timeout);
        }
    }

    /// During shutdown: true once every queue is written and every publisher
    /// asked to reconnect has left, or at the deadlines. At the flush
    /// deadline the other connections are closed (as without drain); at the
    /// drain deadline, everything.
    fn shutdown_done(&mut self, now: Instant, flush_deadline: Instant) -> bool {
        let draining = self.conns.iter().any(|(_, c)| reconnecting(c));
        let flushed = self
            .conns
            .iter()
            .all(|(_, c)| !c.has_pending_output() || reconnecting(c));
        if !draining {
            return flushed || now >= flush_deadline;
        }
        if now >= self.drain_deadline.unwrap_or(flush_deadline) {
            return true;
        }
        if now >= flush_deadline && !flushed {
            let late: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| !reconnecting(c))
                .map(|(k, _)| k)
                .collect();
            for k in late {
                self.close(k, CloseReason::Shutdown, "server shutting down");
            }
        }
        false
    }

    pub(super) fn close(&mut self, k: usize, reason: CloseReason, why: &str) {
        let Some(mut conn) = self.conns.try_remove(k) else {
            return;
        };
        let handle = &self.shared.workers[self.index];
        handle.connections.fetch_sub(1, Ordering::Relaxed);
        handle
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&conn.id);
        self.ids.remove(&conn.id);
        self.shared.stats.dropped(conn.protocol());
        self.shared.stats.closed(reason);
        let _ = self.poll.registry().deregister(&mut conn.socket);
        if conn.tls_handshaking {
            self.tls_pending = self.tls_pending.saturating_sub(1);
        }
        let role = conn.role();
        if let Proto::Rtmp(r) = &mut conn.proto {
            for p in std::mem::take(&mut r.publications) {
                self.end_publication(conn.id, conn.peer, p, why);
            }
            if let Some(app) = r.session.app() {
                let app = format!("{app}/");
                self.notify_hook("done", &app, conn.id, conn.peer, &r.tc_url);
            }
        }
        for s in std::mem::take(&mut conn.subscriptions) {
            self.end_subscription(k, (conn.id, conn.peer, conn.protocol()), s, why);
        }
        if matches!(conn.proto, Proto::Relay(_)) {
            if self.shutting_down.is_some() {
                self.relays.clear();
            }
            self.relay_closed(Instant::now(), &mut conn, why);
        }
        if role == "client" {
            log::debug!(
                "conn={} peer={} worker={}: closed ({}): {why}",
                conn.id,
                conn.peer,
                self.index,
                reason.name()
            );
        } else {
            log::info!(
                "close {role} conn={} peer={} worker={} bytes_in={} bytes_out={} ({}): {why}",
                conn.id,
                conn.peer,
                self.index,
                conn.counters.bytes_in.load(Ordering::Relaxed),
                conn.counters.bytes_out.load(Ordering::Relaxed),
                reason.name()
            );
        }
    }
}

/// True for a publisher that shutdown asked to reconnect and that is still
/// being served.
fn reconnecting(c: &Conn) -> bool {
    matches!(&c.proto, Proto::Rtmp(r) if r.reconnect_requested)
}

/// Queues one frame for one player, applying its filters, the skip-to-
/// keyframe policy and the queue bound.
pub(super) fn enqueue_frame(
    conn: &mut Conn,
    sub: &mut Subscription,
    f: &Arc<Frame>,
    limits: &PlayerLimits,
    stats: &Stats,
) {
    #[cfg(feature = "fault-injection")]
    if sub.stream.key.ends_with(FAULT_PANIC_ON_DELIVERY) {
        panic!("injected fault: frame {} to conn={}", f.seq, conn.id);
    }
    if sub.paused
        || (f.kind == MediaKind::Audio && !sub.audio)
        || (f.kind == MediaKind::Video && !sub.video)
    {
        return;
    }
    let refused = sub.refuses(f);
    if refused && !sub.refusal_logged {
        sub.refusal_logged = true;
        log::info!(
            "conn={} stream={}: not sending {} {} track {} (the player's connect did not announce it{})",
            conn.id,
            sub.stream.key,
            f.info.codec,
            if f.kind == MediaKind::Video { "video" } else { "audio" },
            f.info.track,
            if sub.default_track_only { ", or announced no multitrack" } else { "" }
        );
    }
    if f.header.is_some() {
        // While skipping, headers are sent with the frame that resumes play.
        if !sub.skipping && !refused {
            push_frame(conn, sub, f);
            sub.mark_sent(f.seq);
        } else if sub.skipping {
            sub.held_headers.retain(|h| h.header != f.header);
            sub.held_headers.push(f.clone());
        }
        return;
    }
    let mut dropped = 0u64;
    if sub.skipping {
        if !f.start_point {
            count_dropped(sub, stats, 1);
            return;
        }
        // A start point resumes play even when this player is not sent its
        // codec: it then gets the tracks it can take (audio only when no
        // video is), from this point on.
        // Only headers published before this frame: later ones (read from
        // the stream now, while this worker catches up) arrive in order.
        for h in sub.headers_before(f.seq) {
            if !sub.sent_headers.contains(&h.seq) && !sub.refuses(&h) {
                push_frame(conn, sub, &h);
                sub.mark_sent(h.seq);
            }
        }
        sub.skipping = false;
        sub.started_tracks = 0;
    }
    if refused {
        return;
    }
    if !sub.track_ready(f) {
        count_dropped(sub, stats, 1);
        return;
    }
    let len = f.form(sub.format).len();
    if conn.out.media_bytes() + len > limits.queue_bytes {
        dropped += conn.out.drop_unstarted_media() as u64;
        // Dropped frames may include headers: resend them all on resume.
        sub.sent_headers.clear();
        if !(f.start_point && conn.out.media_bytes() + len <= limits.queue_bytes) {
            sub.skipping = true;
            count_dropped(sub, stats, dropped + 1);
            log::debug!(
                "conn={} stream={}: player queue over {} bytes; skipping to the next keyframe ({} frames dropped so far)",
                conn.id,
                sub.stream.key,
                limits.queue_bytes,
                sub.dropped
            );
            return;
        }
        count_dropped(sub, stats, dropped);
        for h in sub.headers_before(f.seq) {
            if !sub.refuses(&h) {
                push_frame(conn, sub, &h);
                sub.mark_sent(h.seq);
            }
        }
        sub.started_tracks = 0;
        sub.track_ready(f);
    }
    push_frame(conn, sub, f);
}

fn count_dropped(sub: &mut Subscription, stats: &Stats, n: u64) {
    if n == 0 {
        return;
    }
    sub.dropped += n;
    sub.stream.frames_dropped.fetch_add(n, Ordering::Relaxed);
    stats.frames_dropped.fetch_add(n, Ordering::Relaxed);
}

fn push_frame(conn: &mut Conn, sub: &Subscription, f: &Arc<Frame>) {
    let item = match (sub.format, &conn.proto) {
        (_, Proto::Relay(r)) => r.frame_item(f, sub.msid),
        (Format::Rtmp, Proto::Rtmp(r)) if sub.msid != SHARED_MESSAGE_STREAM_ID => {
            // Frames are written at the chunk size announced at connect.
            Item::OwnFrame(f.rtmp_for(r.session.chunk_size(), sub.msid))
        }
        (format, _) => Item::Frame(f.clone(), format),
    };
    conn.push(item);
}

/// Writes queued bytes to a plain socket until it blocks or the queue
/// empties: (bytes written, blocked).
fn write_plain(out: &mut OutQueue, socket: &mut TcpStream) -> io::Result<(u64, bool)> {
    let mut written = 0u64;
    while !out.is_empty() {
        match out.write_to(socket) {
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((written, true)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((written, false))
}

/// Moves queued plaintext into rustls (which encrypts it, up to its buffer
/// limit) and writes TLS records to the socket, until the socket blocks or
/// nothing is left: (TLS bytes written, blocked).
fn write_tls(
    out: &mut OutQueue,
    tls: &mut rustls::Connection,
    socket: &mut TcpStream,
) -> io::Result<(u64, bool)> {
    let mut written = 0u64;
    loop {
        let moved = if out.is_empty() {
            0
        } else {
            out.write_to(&mut tls.writer())?
        };
        // rustls may have been full when this round started (nothing moved):
        // keep going while the socket takes its records, or the rest of the
        // queue would wait for the next tick (no new writable edge comes
        // while the socket never blocked).
        let mut flushed = false;
        while tls.wants_write() {
            match tls.write_tls(socket) {
                Ok(n) => {
                    written += n as u64;
                    flushed = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((written, true)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() || (moved == 0 && !flushed) {
            return Ok((written, false));
        }
    }
}

/// The worker indices whose bit is set in `mask`.
fn workers_in(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let w = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(w)
    })
}

/// Runs one connection's share of the work, catching a panic (the message is
/// returned) so the caller can close that connection alone. The state `f`
/// touches belongs to the connection that is then closed, or is poison-safe
/// shared state, hence `AssertUnwindSafe`.
fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::stream::GopLimits;

    #[test]
    fn sent_headers_stay_bounded_when_a_publisher_resends_them_forever() {
        let registry = Registry::new(
            4096,
            GopLimits {
                max_bytes: 1 << 20,
                max_frames: 64,
            },
        );
        let (stream, _) = registry.join("live/x", 0, Format::Rtmp);
        let mut sub = Subscription::new(1, Format::Rtmp, stream, 0);
        for seq in 0..10_000 {
            sub.mark_sent(seq);
        }
        assert_eq!(sub.sent_headers.len(), MAX_SENT_HEADERS);
        assert!(sub.sent_headers.contains(&9_999), "the newest is kept");
        assert!(!sub.sent_headers.contains(&0), "the oldest went");
    }
}
