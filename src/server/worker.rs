//! One worker: a thread with its own mio `Poll`, its own SO_REUSEPORT
//! listener and a slab of connections, each a [`ServerSession`] plus a socket
//! and an [`OutQueue`].
//!
//! The loop (mio's `tcp_server.rs`, rustls's `tlsserver-mio.rs`): wait;
//! accept; read each readable socket until `WouldBlock` (bounded per wakeup,
//! for fairness), feeding the session and acting on its events; deliver what
//! other workers posted in this worker's inbox; then write every connection
//! that got new bytes with vectored writes until `WouldBlock`. Sockets are
//! registered readable and writable once: edge-triggered writable events only
//! arrive when a full socket drains, which is exactly when to write again.
//!
//! Fan-out: the publisher's worker builds each frame once
//! ([`Stream::push`]), queues it to its own players directly, and posts one
//! `Arc` per frame to each other worker with players, waking each once per
//! loop iteration. Those workers queue the same `Arc` to their players.

use super::queue::{Item, OutQueue};
use super::stream::{
    Frame, Notice, PublishError, PublisherInfo, Registry, Stream, SHARED_MESSAGE_STREAM_ID,
};
use crate::config::{Config, SHUTDOWN_FLUSH_TIMEOUT};
use crate::protocol::session::{
    Event, MediaKind, PlayRequest, PublishRejection, PublishRequest, ServerSession, SessionConfig,
};
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
use std::time::{Duration, Instant};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

/// Bytes asked of the kernel per `read`.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection per wakeup before the others get a turn.
const READ_BUDGET: usize = 1024 * 1024;
/// A read buffer holding more unconsumed bytes than this means the decoder
/// is not making progress; the peer is closed. The chunk decoder consumes
/// partial chunk bodies as they arrive, so in practice the buffer holds less
/// than one chunk header.
const MAX_READ_BUFFER: usize = 1024 * 1024;
/// How often deadlines (handshake, ping, idle publisher, stalled player) are checked.
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

/// What one worker posts to another.
#[derive(Debug)]
pub enum Delivery {
    Frame(Arc<Frame>, u64),
    Published { stream: u64, seq: u64 },
    Unpublished { stream: u64, seq: u64 },
}

impl Delivery {
    fn stream(&self) -> u64 {
        match self {
            Delivery::Frame(_, s) => *s,
            Delivery::Published { stream, .. } | Delivery::Unpublished { stream, .. } => *stream,
        }
    }
}

/// The part of a worker other threads may touch.
pub struct WorkerHandle {
    pub waker: Waker,
    pub inbox: Mutex<Vec<Delivery>>,
    /// Connections this worker holds now.
    pub connections: AtomicUsize,
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
struct Subscription {
    msid: u32,
    stream: Arc<Stream>,
    /// Deliveries with a lower sequence number were in the join snapshot.
    next_seq: u64,
    /// Waiting for a start point (join without GOP, after an overflow, a
    /// pause, or a new publisher).
    skipping: bool,
    paused: bool,
    audio: bool,
    video: bool,
    /// Sequence numbers of the header frames this player has been sent.
    sent_headers: Vec<u64>,
    dropped: u64,
}

struct Publication {
    msid: u32,
    stream: Arc<Stream>,
}

struct Conn {
    id: u64,
    socket: TcpStream,
    peer: SocketAddr,
    session: ServerSession,
    read_buf: BytesMut,
    out: OutQueue,
    publications: Vec<Publication>,
    subscriptions: Vec<Subscription>,
    dirty: bool,
    /// Since when the socket has refused bytes (`WouldBlock`) with no
    /// progress since. Cleared by a write that makes progress or by a
    /// writable edge (the kernel drained the socket). Dropping queued frames
    /// does not clear it: a player skipping frames is still stalled.
    blocked_since: Option<Instant>,
    bytes_out: u64,
}

impl Conn {
    fn push(&mut self, item: Item) {
        self.out.push(item);
    }

    /// Moves the session's pending bytes to the output queue.
    fn pull_transmit(&mut self) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.push(Item::Control(bytes));
        }
    }

    /// The connection's state, for the panic backstop's log line.
    fn describe(&self) -> String {
        let names = |v: Vec<&str>| v.join(",");
        format!(
            "conn={} peer={} role={} connected={} app={:?} publishing=[{}] playing=[{}] bytes_in={} bytes_out={} read_buf={} queued_media={} queued_control={}",
            self.id,
            self.peer,
            self.role(),
            self.session.is_connected(),
            self.session.app().unwrap_or(""),
            names(self.publications.iter().map(|p| p.stream.key.as_str()).collect()),
            names(self.subscriptions.iter().map(|s| s.stream.key.as_str()).collect()),
            self.session.bytes_received(),
            self.bytes_out,
            self.read_buf.len(),
            self.out.media_bytes(),
            self.out.control_bytes(),
        )
    }

    fn role(&self) -> &'static str {
        match (self.publications.is_empty(), self.subscriptions.is_empty()) {
            (false, _) => "publisher",
            (true, false) => "player",
            (true, true) => "client",
        }
    }
}

/// Limits a worker applies to every player.
#[derive(Clone, Copy)]
struct PlayerLimits {
    queue_bytes: usize,
    control_bytes: usize,
    stall: Duration,
}

pub struct Worker {
    index: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    shared: Arc<Shared>,
    /// Stream id → tokens of local players.
    locals: HashMap<u64, Vec<usize>>,
    dirty: Vec<usize>,
    outgoing: Vec<Vec<Delivery>>,
    inbox_scratch: Vec<Delivery>,
    events_scratch: Vec<Event>,
    read_again: Vec<usize>,
    session_config: SessionConfig,
    limits: PlayerLimits,
    seed: u64,
    shutting_down: Option<Instant>,
}

impl Worker {
    pub fn new(
        index: usize,
        poll: Poll,
        listener: TcpListener,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        let mut listener = listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let c = &shared.config;
        let limits = PlayerLimits {
            queue_bytes: c.player_queue_bytes,
            control_bytes: c.control_queue_bytes,
            stall: c.player_stall_timeout,
        };
        let session_config = SessionConfig::from(c);
        let workers = shared.workers.len();
        Ok(Self {
            index,
            poll,
            listener: Some(listener),
            conns: Slab::new(),
            locals: HashMap::new(),
            dirty: Vec::new(),
            outgoing: (0..workers).map(|_| Vec::new()).collect(),
            inbox_scratch: Vec::new(),
            events_scratch: Vec::new(),
            read_again: Vec::new(),
            session_config,
            limits,
            seed: 0x9E37_79B9_7F4A_7C15 ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            shutting_down: None,
            shared,
        })
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        loop {
            let timeout = if self.read_again.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("worker={}: poll failed: {e}; stopping", self.index);
                break;
            }
            let now = Instant::now();
            let mut woken = false;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(now),
                    WAKER => woken = true,
                    Token(k) => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.guarded(k, "reading", |w| w.on_readable(now, k));
                        }
                        if ev.is_writable() {
                            if let Some(c) = self.conns.get_mut(k) {
                                c.blocked_since = None;
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
                self.drain_inbox();
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
                let drained = self.conns.iter().all(|(_, c)| c.out.is_empty());
                if drained || now >= deadline {
                    break;
                }
            }
        }
        let n = self.conns.len();
        for k in self.conns.iter().map(|(k, _)| k).collect::<Vec<_>>() {
            self.close(k, "server shutting down");
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

    fn accept(&mut self, now: Instant) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((mut socket, peer)) => {
                    if self.conns.len() >= self.shared.config.max_connections_per_worker {
                        log::warn!(
                            "worker={}: refusing {peer}: {} connections is the limit",
                            self.index,
                            self.conns.len()
                        );
                        continue;
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
                    let seed = self.next_seed();
                    log::debug!("conn={id} peer={peer} worker={}: accepted", self.index);
                    self.shared.workers[self.index]
                        .connections
                        .fetch_add(1, Ordering::Relaxed);
                    self.conns.insert(Conn {
                        id,
                        socket,
                        peer,
                        session: ServerSession::new(self.session_config.clone(), now, seed),
                        read_buf: BytesMut::new(),
                        out: OutQueue::default(),
                        publications: Vec::new(),
                        subscriptions: Vec::new(),
                        dirty: false,
                        blocked_since: None,
                        bytes_out: 0,
                    });
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

    fn mark_dirty(&mut self, k: usize) {
        if let Some(c) = self.conns.get_mut(k) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(k);
            }
        }
    }

    fn on_readable(&mut self, now: Instant, k: usize) {
        if self.shutting_down.is_some() {
            return;
        }
        let mut budget = READ_BUDGET;
        loop {
            let Some(conn) = self.conns.get_mut(k) else {
                return;
            };
            let len = conn.read_buf.len();
            conn.read_buf.resize(len + READ_CHUNK, 0);
            let r = conn.socket.read(&mut conn.read_buf[len..]);
            let n = match r {
                Ok(n) => n,
                Err(e) => {
                    conn.read_buf.truncate(len);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return,
                        io::ErrorKind::Interrupted => continue,
                        _ => return self.close(k, &format!("read error: {e}")),
                    }
                }
            };
            conn.read_buf.truncate(len + n);
            if n == 0 {
                return self.close(k, "closed by peer");
            }
            let result = conn.session.handle_input(now, &mut conn.read_buf);
            conn.pull_transmit();
            let mut events = std::mem::take(&mut self.events_scratch);
            while let Some(ev) = conn.session.poll_event() {
                events.push(ev);
            }
            let leftover = conn.read_buf.len();
            // Events before an error are valid (media already received).
            for ev in events.drain(..) {
                self.handle_event(k, ev);
            }
            self.events_scratch = events;
            self.mark_dirty(k);
            if let Err(e) = result {
                // Best effort, without blocking: the reply that explains the
                // close (`_error`, NetConnection.Connect.Rejected) goes first.
                if let Some(c) = self.conns.get_mut(k) {
                    let _ = c.out.write_to(&mut c.socket);
                }
                return self.close(k, &e.to_string());
            }
            if leftover > MAX_READ_BUFFER {
                return self.close(
                    k,
                    &format!("{leftover} unconsumed bytes in the read buffer"),
                );
            }
            budget = budget.saturating_sub(n);
            if budget == 0 {
                self.read_again.push(k);
                return;
            }
        }
    }

    fn handle_event(&mut self, k: usize, ev: Event) {
        match ev {
            Event::Connected { app, tc_url } => {
                if let Some(c) = self.conns.get(k) {
                    log::debug!(
                        "conn={} peer={}: connect app={app:?} tcUrl={tc_url:?}",
                        c.id,
                        c.peer
                    );
                }
            }
            Event::PublishRequested(req) => self.on_publish(k, req),
            Event::Media {
                stream_id,
                kind,
                timestamp,
                payload,
            } => {
                let Some(conn) = self.conns.get(k) else {
                    return;
                };
                let Some(p) = conn.publications.iter().find(|p| p.msid == stream_id) else {
                    return;
                };
                let stream = p.stream.clone();
                let (frame, interest) = stream.push(kind, timestamp, payload);
                self.fan_out(interest, Delivery::Frame(frame, stream.id));
            }
            Event::PublishStopped { stream_id } => {
                self.stop_publication(k, stream_id, "unpublished")
            }
            Event::PlayRequested(req) => self.on_play(k, req),
            Event::PlayStopped { stream_id } => {
                self.stop_subscription(k, stream_id, "stopped by player")
            }
            Event::Pause { stream_id, paused } => {
                if let Some(s) = self.subscription(k, stream_id) {
                    s.paused = paused;
                    s.skipping |= !paused; // resume on a keyframe
                }
            }
            Event::Receive {
                stream_id,
                kind,
                enabled,
            } => {
                if let Some(s) = self.subscription(k, stream_id) {
                    match kind {
                        MediaKind::Audio => s.audio = enabled,
                        _ => {
                            s.skipping |= enabled && !s.video;
                            s.video = enabled;
                        }
                    }
                }
            }
        }
        if let Some(c) = self.conns.get_mut(k) {
            c.pull_transmit();
        }
    }

    fn subscription(&mut self, k: usize, msid: u32) -> Option<&mut Subscription> {
        self.conns
            .get_mut(k)?
            .subscriptions
            .iter_mut()
            .find(|s| s.msid == msid)
    }

    fn on_publish(&mut self, k: usize, req: PublishRequest) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let key = format!("{}/{}", req.app, req.name);
        #[cfg(feature = "fault-injection")]
        if req.name == FAULT_PANIC_ON_PUBLISH {
            panic!("injected fault: publish {key}");
        }
        let info = PublisherInfo {
            conn_id: conn.id,
            worker: self.index,
            peer: conn.peer,
        };
        match self.shared.registry.publish(&key, info) {
            Ok((stream, notice)) => {
                conn.session.accept_publish(req.stream_id);
                conn.publications.push(Publication {
                    msid: req.stream_id,
                    stream: stream.clone(),
                });
                log::info!(
                    "publish start stream={key} conn={} peer={} worker={} type={}",
                    conn.id,
                    conn.peer,
                    self.index,
                    req.publish_type
                );
                self.notify(&stream, notice, true);
            }
            Err(PublishError::AlreadyPublishing { peer }) => {
                conn.session
                    .reject_publish(req.stream_id, PublishRejection::BadName);
                log::info!(
                    "publish refused stream={key} conn={} peer={} worker={}: already published by {peer}",
                    conn.id,
                    conn.peer,
                    self.index
                );
            }
        }
    }

    fn on_play(&mut self, k: usize, req: PlayRequest) {
        let key = format!("{}/{}", req.app, req.name);
        let (stream, snap) = self.shared.registry.join(&key, self.index);
        let limits = self.limits;
        let Some(conn) = self.conns.get_mut(k) else {
            self.shared.registry.leave(&stream, self.index);
            return;
        };
        conn.session.accept_play(req.stream_id, req.reset);
        conn.pull_transmit();
        let mut sub = Subscription {
            msid: req.stream_id,
            stream: stream.clone(),
            next_seq: snap.next_seq,
            skipping: true,
            paused: false,
            audio: true,
            video: true,
            sent_headers: Vec::new(),
            dropped: 0,
        };
        if snap.live && (!snap.gop.is_empty() || snap.audio_only) {
            // Instant start: headers, then the cached GOP from its keyframe.
            sub.skipping = false;
            for f in snap.headers.iter().chain(snap.gop.iter()) {
                enqueue_frame(conn, &mut sub, f, &limits);
            }
        }
        log::info!(
            "play start stream={key} conn={} peer={} worker={} live={} cached_frames={}",
            conn.id,
            conn.peer,
            self.index,
            snap.live,
            snap.gop.len()
        );
        conn.subscriptions.push(sub);
        self.locals.entry(stream.id).or_default().push(k);
    }

    fn stop_publication(&mut self, k: usize, msid: u32, why: &str) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let Some(pos) = conn.publications.iter().position(|p| p.msid == msid) else {
            return;
        };
        let p = conn.publications.remove(pos);
        let (id, peer) = (conn.id, conn.peer);
        self.end_publication(id, peer, p, why);
    }

    fn end_publication(&mut self, conn_id: u64, peer: SocketAddr, p: Publication, why: &str) {
        let (frames, bytes) = p.stream.with_state(|s| (s.frames_in, s.bytes_in));
        log::info!(
            "publish stop stream={} conn={conn_id} peer={peer} worker={} frames={frames} bytes={bytes}: {why}",
            p.stream.key,
            self.index
        );
        if let Some(notice) = self.shared.registry.unpublish(&p.stream, conn_id) {
            self.notify(&p.stream, notice, false);
        }
    }

    fn stop_subscription(&mut self, k: usize, msid: u32, why: &str) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let Some(pos) = conn.subscriptions.iter().position(|s| s.msid == msid) else {
            return;
        };
        let s = conn.subscriptions.remove(pos);
        let (id, peer) = (conn.id, conn.peer);
        self.end_subscription(k, id, peer, s, why);
    }

    fn end_subscription(
        &mut self,
        k: usize,
        conn_id: u64,
        peer: SocketAddr,
        s: Subscription,
        why: &str,
    ) {
        log::info!(
            "play stop stream={} conn={conn_id} peer={peer} worker={} dropped_frames={}: {why}",
            s.stream.key,
            self.index,
            s.dropped
        );
        if let Some(list) = self.locals.get_mut(&s.stream.id) {
            list.retain(|&t| t != k);
            if list.is_empty() {
                self.locals.remove(&s.stream.id);
            }
        }
        self.shared.registry.leave(&s.stream, self.index);
    }

    /// Tells the workers with players that `stream` got or lost its publisher.
    fn notify(&mut self, stream: &Stream, notice: Notice, published: bool) {
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

    fn fan_out(&mut self, interest: u64, delivery: Delivery) {
        let mut local = false;
        for w in workers_in(interest) {
            if w == self.index {
                local = true;
            } else if let (Some(q), Delivery::Frame(f, s)) = (self.outgoing.get_mut(w), &delivery) {
                q.push(Delivery::Frame(f.clone(), *s));
            }
        }
        if local {
            self.deliver_local(&delivery);
        }
    }

    /// Queues a delivery to this worker's players of its stream.
    fn deliver_local(&mut self, d: &Delivery) {
        let Some(tokens) = self.locals.get(&d.stream()) else {
            return;
        };
        let limits = self.limits;
        let mut panicked = Vec::new();
        for &k in tokens {
            let Some(conn) = self.conns.get_mut(k) else {
                continue;
            };
            let Some(i) = conn
                .subscriptions
                .iter()
                .position(|s| s.stream.id == d.stream())
            else {
                continue;
            };
            // Take the subscription out so the connection can be borrowed whole.
            let mut sub = conn.subscriptions.swap_remove(i);
            let delivered = catch(|| match d {
                Delivery::Frame(f, _) => {
                    if f.seq >= sub.next_seq {
                        sub.next_seq = f.seq + 1;
                        enqueue_frame(conn, &mut sub, f, &limits);
                    }
                }
                Delivery::Published { seq, .. } | Delivery::Unpublished { seq, .. } => {
                    if *seq >= sub.next_seq {
                        sub.next_seq = seq + 1;
                        sub.skipping = true;
                        sub.sent_headers.clear();
                        if matches!(d, Delivery::Published { .. }) {
                            conn.session.notify_published(sub.msid);
                        } else {
                            conn.session.notify_unpublished(sub.msid);
                        }
                        conn.pull_transmit();
                    }
                }
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

    fn drain_inbox(&mut self) {
        let mut batch = std::mem::take(&mut self.inbox_scratch);
        {
            let mut inbox = self.shared.workers[self.index]
                .inbox
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            std::mem::swap(&mut *inbox, &mut batch);
        }
        for d in batch.drain(..) {
            self.deliver_local(&d);
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
            let written = catch(|| {
                while !conn.out.is_empty() {
                    match conn.out.write_to(&mut conn.socket) {
                        Ok(n) => {
                            conn.blocked_since = None;
                            conn.bytes_out += n as u64;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            conn.blocked_since.get_or_insert(now);
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            failed.push((k, format!("write error: {e}")));
                            break;
                        }
                    }
                }
            });
            if let Err(msg) = written {
                panicked.push((k, msg));
                continue;
            }
            if conn.out.control_bytes() > self.limits.control_bytes {
                failed.push((
                    k,
                    format!(
                        "{} bytes of unread control replies (limit {})",
                        conn.out.control_bytes(),
                        self.limits.control_bytes
                    ),
                ));
            }
        }
        for (k, why) in failed {
            self.close(k, &why);
        }
        for (k, msg) in panicked {
            self.on_panic(k, "writing", &msg);
        }
    }

    fn tick(&mut self, now: Instant) {
        let mut failed = Vec::new();
        let mut panicked = Vec::new();
        for (k, conn) in self.conns.iter_mut() {
            let timeout = catch(|| {
                let r = conn.session.handle_timeout(now);
                conn.pull_transmit();
                r
            });
            match timeout {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failed.push((k, e.to_string()));
                    continue;
                }
                Err(msg) => {
                    panicked.push((k, msg));
                    continue;
                }
            }
            if let Some(since) = conn.blocked_since {
                let stalled = now.saturating_duration_since(since);
                if stalled >= self.limits.stall {
                    failed.push((k, format!("socket accepted nothing for {stalled:?}")));
                    continue;
                }
            }
            if !conn.out.is_empty() && !conn.dirty {
                conn.dirty = true;
                self.dirty.push(k);
            }
        }
        for (k, why) in failed {
            self.close(k, &why);
        }
        for (k, msg) in panicked {
            self.on_panic(k, "checking deadlines", &msg);
        }
    }

    /// Runs `f`, this worker's handling of connection `k`, so that a panic in
    /// it closes connection `k` alone rather than unwinding the worker and
    /// dropping every connection on this core.
    fn guarded(&mut self, k: usize, doing: &'static str, f: impl FnOnce(&mut Self)) {
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
        if let Err(again) = catch(|| self.close(k, &why)) {
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
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        for (k, conn) in self.conns.iter_mut() {
            conn.out.drop_unstarted_media();
            conn.session.notify_shutdown();
            conn.pull_transmit();
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(k);
            }
        }
        self.shutting_down = Some(now + SHUTDOWN_FLUSH_TIMEOUT);
    }

    fn close(&mut self, k: usize, why: &str) {
        let Some(mut conn) = self.conns.try_remove(k) else {
            return;
        };
        self.shared.workers[self.index]
            .connections
            .fetch_sub(1, Ordering::Relaxed);
        let _ = self.poll.registry().deregister(&mut conn.socket);
        let role = conn.role();
        for p in std::mem::take(&mut conn.publications) {
            self.end_publication(conn.id, conn.peer, p, why);
        }
        for s in std::mem::take(&mut conn.subscriptions) {
            self.end_subscription(k, conn.id, conn.peer, s, why);
        }
        if role == "client" {
            log::debug!(
                "conn={} peer={} worker={}: closed: {why}",
                conn.id,
                conn.peer,
                self.index
            );
        } else {
            log::info!(
                "close {role} conn={} peer={} worker={} bytes_in={} bytes_out={}: {why}",
                conn.id,
                conn.peer,
                self.index,
                conn.session.bytes_received(),
                conn.bytes_out
            );
        }
    }
}

/// Queues one frame for one player, applying its filters, the skip-to-
/// keyframe policy and the queue bound.
fn enqueue_frame(conn: &mut Conn, sub: &mut Subscription, f: &Arc<Frame>, limits: &PlayerLimits) {
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
    if f.header.is_some() {
        // While skipping, headers are sent with the frame that resumes play.
        if !sub.skipping {
            push_frame(conn, sub, f);
            sub.sent_headers.push(f.seq);
        }
        return;
    }
    if sub.skipping {
        if !f.start_point {
            sub.dropped += 1;
            return;
        }
        let mut headers = sub.stream.headers();
        headers.sort_by_key(|h| h.seq);
        for h in headers {
            if !sub.sent_headers.contains(&h.seq) {
                push_frame(conn, sub, &h);
                sub.sent_headers.push(h.seq);
            }
        }
        sub.skipping = false;
    }
    if conn.out.media_bytes() + f.rtmp.len() > limits.queue_bytes {
        let dropped = conn.out.drop_unstarted_media();
        sub.dropped += dropped as u64;
        // Dropped frames may include headers: resend them all on resume.
        sub.sent_headers.clear();
        if !(f.start_point && conn.out.media_bytes() + f.rtmp.len() <= limits.queue_bytes) {
            sub.skipping = true;
            sub.dropped += 1;
            log::debug!(
                "conn={} stream={}: player queue over {} bytes; skipping to the next keyframe ({} frames dropped so far)",
                conn.id,
                sub.stream.key,
                limits.queue_bytes,
                sub.dropped
            );
            return;
        }
        let mut headers = sub.stream.headers();
        headers.sort_by_key(|h| h.seq);
        for h in headers {
            push_frame(conn, sub, &h);
            sub.sent_headers.push(h.seq);
        }
    }
    push_frame(conn, sub, f);
}

fn push_frame(conn: &mut Conn, sub: &Subscription, f: &Arc<Frame>) {
    let item = if sub.msid == SHARED_MESSAGE_STREAM_ID {
        Item::Frame(f.clone())
    } else {
        // Frames are written at the chunk size announced at connect.
        Item::OwnFrame(f.rtmp_for(conn.session.chunk_size(), sub.msid))
    };
    conn.push(item);
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
