//! One worker: a thread with its own mio `Poll`, its own SO_REUSEPORT
//! listeners (RTMP, HTTP, optionally the API) and a slab of connections.
//! The worker only loops; connections own their handlers (`Conn`), and
//! the per-worker state they share is the `WorkerCtx` they borrow.
//!
//! The loop (mio's `tcp_server.rs`, rustls's `tlsserver-mio.rs`): wait;
//! accept; read each readable socket until `WouldBlock` (bounded per wakeup,
//! for fairness), the connection feeding its protocol; carry out what the
//! handlers asked of the worker (media for local players, commands, relay
//! connections to open); take what other workers posted to the inbox; fire
//! due timers; then write every connection that got new bytes with vectored
//! writes until `WouldBlock`, and post this iteration's media to the other
//! workers. Sockets are registered readable and writable once:
//! edge-triggered writable events only arrive when a full socket drains,
//! which is exactly when to write again.
//!
//! Deadlines are timers: each connection's earliest deadline (handshake,
//! ping, idle publisher, HTTP request, relay start, stalled socket) is
//! armed in one heap per worker, and the poll waits until the earliest.
//! Media the write policy holds (`pacing.rs`) has one more deadline per
//! worker, the earliest held stream's (less the time a write pass takes):
//! when it passes, every stream due by then goes to its players, whose
//! connections join the write list.
//!
//! Every call into a connection runs under a panic backstop: a panic closes
//! that connection alone (logged with its state and counted), never the
//! worker with every connection on this core.

use super::base::ConnKey;
use super::base::{ConnCounters, ConnId, StreamId};
use super::batch_file::BatchFiles;
use super::conn::{Conn, Proto};
use super::ctx::WorkerCtx;
use super::http_conn::HttpConn;
use super::player::Release;
use super::relay_conn::RelayConn;
use super::rtmp_conn::RtmpConn;
use super::shared::{
    ClientInfo, ClientState, Command, ListenerKind, MediaEvent, Message, RelayCommand, Shared,
};
use super::stats::CloseReason;
use super::stream::Stream;
use super::tasks::Outbound;
use super::transport::{Close, ConnIo, ProxyStage};
use crate::config::SHUTDOWN_FLUSH_TIMEOUT;
use crate::protocol::session::ServerSession;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub(super) const WAKER: Token = Token(usize::MAX - 1);
/// Listener tokens count down from here, one per listener.
const LISTENER_BASE: usize = usize::MAX - 2;

/// How often the worker's own upkeep runs: relay retries and idle pulls,
/// the start of a shutdown. Connection deadlines are timers of their own.
const TICK: Duration = Duration::from_millis(500);

/// Players whose state [`Worker::each_player`] touches ahead of working on
/// them ([`Conn::warm`]). A player's state was last touched a write earlier,
/// and the other players' sends since have pushed it out of the core's
/// caches: its connection, its boxed protocol state, its player, its queue's
/// next slot and its counters are each a miss, some dependent on another.
/// Touched for a few players in a row, with no syscall between them, those
/// misses overlap; met one player at a time, between sends, they did not.
/// At 1,000 players, Sluice's own code fell from 15 to 16 % of the server's
/// CPU to 8 to 11 % (`sluice-load`'s utime share; perf/README.md). Eight
/// players' lines stay in the core's cache through their eight sends;
/// sixteen did no better.
pub(super) const WARM_AHEAD: usize = 8;

/// Refused accepts (the connection cap) are logged at most this often,
/// with a count: a connection flood must not flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

#[cfg(feature = "fault-injection")]
pub use super::fault::{FAULT_PANIC_ON_DELIVERY, FAULT_PANIC_ON_PUBLISH};

/// A listening socket of one worker.
pub struct Listener {
    pub kind: ListenerKind,
    /// TLS (RTMPS, HTTPS) on this listener.
    pub tls: bool,
    /// The handover listener: the successor pulls this process's streams
    /// from it (plays only, no access rules, no PROXY header).
    pub handover: bool,
    pub socket: TcpListener,
}

/// See the module documentation.
pub struct Worker {
    poll: Poll,
    listeners: Vec<Listener>,
    conns: Slab<Conn>,
    /// Connection id → slab key, for messages that name a connection.
    ids: HashMap<ConnId, ConnKey>,
    ctx: WorkerCtx,
    /// The inbox's messages, taken in one swap per wakeup.
    inbox: Vec<Message>,
    /// Until when shutdown waits for publishers asked to reconnect.
    drain_deadline: Option<Instant>,
    /// Accepts refused at the connection cap since the last log line.
    refused: (u64, Option<Instant>),
    /// Since a handover to a successor began: until when what is here is
    /// served at most.
    handover_deadline: Option<Instant>,
    /// Where released batches are kept for `sendfile` (`--sendfile`);
    /// lent to each [`Release`] while its players take it.
    batch_files: Option<BatchFiles>,
}

impl Worker {
    pub fn new(
        index: usize,
        poll: Poll,
        mut listeners: Vec<Listener>,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry().register(
                &mut l.socket,
                Token(LISTENER_BASE - i),
                Interest::READABLE,
            )?;
        }
        let batch_files = shared
            .config
            .sendfile
            .then(|| BatchFiles::new(shared.workers[index].batch_file_bytes.clone()));
        Ok(Self {
            poll,
            listeners,
            conns: Slab::new(),
            ids: HashMap::new(),
            ctx: WorkerCtx::new(index, shared),
            inbox: Vec::new(),
            drain_deadline: None,
            refused: (0, None),
            handover_deadline: None,
            batch_files,
        })
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.ctx.shared
    }

    fn handle(&self) -> &super::shared::WorkerHandle {
        &self.ctx.shared.workers[self.ctx.index]
    }

    /// Runs until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + TICK;
        self.handle().listening.store(true, Ordering::Relaxed);
        loop {
            let timeout = if self.ctx.has_read_again() || self.ctx.has_waiting_handshakes() {
                Duration::ZERO
            } else {
                let wake = [
                    Some(next_tick),
                    self.ctx.next_timer(),
                    self.ctx.access.next_due(),
                    self.ctx.next_held_wake(),
                ]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(next_tick);
                wake.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("worker={}: poll failed: {e}; stopping", self.ctx.index);
                break;
            }
            self.shared().workers[self.ctx.index]
                .iterations
                .fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            self.ctx.now = now;
            self.ctx.new_iteration();
            // Handshakes put off by earlier iterations go first, oldest
            // first, while this iteration has handshake time left: newer
            // ones do not put them off again.
            while self.ctx.handshake_time_left() {
                let Some(k) = self.ctx.next_waiting_handshake() else {
                    break;
                };
                self.with_conn(k, "reading", |c, ctx| c.on_readable(now, ctx));
                self.settle(now);
            }
            let mut woken = false;
            for ev in events.iter() {
                match ev.token() {
                    WAKER => woken = true,
                    Token(t) if t > LISTENER_BASE - self.listeners.len() => {
                        self.accept(now, LISTENER_BASE - t)
                    }
                    Token(k) => {
                        let k = ConnKey(k);
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.with_conn(k, "reading", |c, ctx| c.on_readable(now, ctx));
                        }
                        if ev.is_writable() {
                            self.with_conn(k, "connecting", |c, ctx| c.on_writable(ctx));
                        }
                        self.settle(now);
                    }
                }
            }
            for k in self.ctx.take_read_again() {
                self.with_conn(k, "reading", |c, ctx| c.on_readable(now, ctx));
                self.settle(now);
            }
            if woken {
                self.drain_inbox(now);
            }
            self.run_due(now);
            let ticked = now >= next_tick;
            if ticked {
                self.tick(now);
                next_tick = now + TICK;
            }
            if self.ctx.shutting_down().is_none() {
                if self.handover_deadline.is_none() && self.shared().handing_over() {
                    self.begin_handover(now);
                }
                if self.shared().shutting_down() || (ticked && self.handover_done(now)) {
                    self.begin_shutdown(now);
                }
            }
            // The clock is read again: held media whose deadline passed
            // while this iteration worked leaves in this flush, not the next;
            // and the pass is timed (held media is released that much early).
            let pass = Instant::now();
            let mut flushed = FlushPass::default();
            self.release_held(pass, now, &mut flushed);
            self.flush_dirty(now, flushed);
            self.ctx.write_pass_took(pass, pass.elapsed());
            self.settle(now);
            self.ctx.send_outgoing();
            if let Some(deadline) = self.ctx.shutting_down() {
                if self.shutdown_done(now, deadline) {
                    break;
                }
            }
        }
        self.handle().listening.store(false, Ordering::Relaxed);
        let n = self.conns.len();
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, _)| ConnKey(k)).collect();
        for k in keys {
            self.close(k, Close::new(CloseReason::Shutdown, "server shutting down"));
        }
        log::debug!("worker={}: stopped, closed {n} connections", self.ctx.index);
    }

    /// Runs `f`, this worker's handling of connection `k`, under the panic
    /// backstop; closes the connection when `f` says so; re-arms its timer.
    fn with_conn(
        &mut self,
        k: ConnKey,
        doing: &'static str,
        f: impl FnOnce(&mut Conn, &mut WorkerCtx) -> Result<(), Close>,
    ) {
        let Some(conn) = self.conns.get_mut(k.0) else {
            return;
        };
        let ctx = &mut self.ctx;
        match catch(|| f(conn, ctx)) {
            Ok(Ok(())) => {
                let at = conn.deadline(ctx);
                ctx.arm(&mut conn.io, at);
            }
            Ok(Err(close)) => self.close(k, close),
            Err(msg) => self.on_panic(k, doing, &msg),
        }
    }

    /// Carries out what handlers asked of the worker: this worker's own
    /// messages (media for local players, commands) and relay connections
    /// to open, until none is left.
    fn settle(&mut self, now: Instant) {
        loop {
            let local = self.ctx.take_local();
            let connect = self.ctx.relays.take_to_connect();
            if local.is_empty() && connect.is_empty() {
                return;
            }
            for msg in local {
                self.handle_message(now, msg);
            }
            for id in connect {
                let (shared, index) = (self.ctx.shared.clone(), self.ctx.index);
                let conns = self.conns.len();
                if let Some(out) = self.ctx.relays.dial(&shared, index, now, id, conns) {
                    self.insert_outbound(now, out);
                }
            }
        }
    }

    fn handle_message(&mut self, now: Instant, msg: Message) {
        match msg {
            Message::Media(stream, ev) => self.deliver(stream, &ev),
            Message::Command(Command::Close(id)) => {
                if let Some(&k) = self.ids.get(&id) {
                    self.close(k, Close::new(CloseReason::Api, "closed through the API"));
                }
            }
            Message::Command(Command::Replaced(id)) => {
                let Some(&k) = self.ids.get(&id) else {
                    return;
                };
                let mut relay = false;
                self.with_conn(k, "stopping a replaced relay", |c, ctx| {
                    relay = c.relay_replaced(ctx);
                    Ok(())
                });
                if !relay {
                    let close = Close::new(CloseReason::Replaced, "replaced by a new publisher");
                    self.close(k, close);
                }
            }
            Message::Command(Command::Hook { conn, answer }) => {
                let Some(waiting) = self.ctx.access.take_awaiting(conn) else {
                    return;
                };
                if let Some(&k) = self.ids.get(&conn) {
                    self.with_conn(k, "acting on a callback's answer", |c, ctx| {
                        c.on_hook_answer(now, ctx, waiting, answer)
                    });
                }
            }
            Message::Hls(stream) => {
                for k in self.ctx.hls_waiting(stream) {
                    self.with_conn(k, "answering an HLS request", |c, ctx| {
                        c.on_hls(now, ctx, stream)
                    });
                }
            }
            Message::Disk(reply) => {
                if let Some(&k) = self.ids.get(&reply.conn) {
                    self.with_conn(k, "acting on a disk answer", |c, ctx| {
                        c.on_disk(now, ctx, reply)
                    });
                }
            }
            Message::Command(Command::Relay(cmd)) => {
                // Not one connection's work: a panic is counted and logged.
                if let Err(msg) = catch(|| self.relay_command(now, cmd)) {
                    self.shared().panics.fetch_add(1, Ordering::Relaxed);
                    log::error!("worker={}: panic in a relay command: {msg}", self.ctx.index);
                }
            }
        }
    }

    /// Media of `stream` for this worker's players of it. A frame is held
    /// for all of them, as the write policy says (`pacing.rs`), and what is
    /// held goes to each player in one call when it is due; a notice goes
    /// at once, after any frame held before it.
    fn deliver(&mut self, stream: StreamId, ev: &MediaEvent) {
        match ev {
            MediaEvent::Frame(f) => {
                if self.ctx.hold_frame(stream, f) {
                    // Released in this iteration's write pass, with any
                    // frame of the stream that comes before it.
                    self.ctx.release_in_pass(stream);
                }
            }
            &MediaEvent::Published { seq } | &MediaEvent::Unpublished { seq } => {
                let published = matches!(ev, MediaEvent::Published { .. });
                // What is held goes before the notice: queued now, written
                // with the write list.
                self.release(stream, None);
                self.each_player(stream, "notifying players", |_, c, ctx| {
                    c.notify(ctx, stream, seq, published)
                });
                // Players now wait for the new publisher's start point.
                self.ctx.player_awaits_start(stream);
            }
        }
    }

    /// The frames held for `stream` go to its players here. In the write
    /// pass (`flush`), each player is written as soon as its frames are
    /// queued: its connection is still in the cache from the delivery,
    /// where the write list's turn would find it evicted by the other
    /// players' sends. Otherwise the players join the write list.
    fn release(&mut self, stream: StreamId, mut flush: Option<(Instant, &mut FlushPass)>) {
        let Some((frames, since)) = self.ctx.take_held(stream) else {
            return;
        };
        let release = Release::new(frames).with_files(self.batch_files.take());
        let mut awaits_start = false;
        let shared = self.ctx.shared.clone();
        self.each_player(stream, "delivering media", |k, c, ctx| {
            awaits_start |= c.deliver_frames(ctx, stream, &release, since);
            if let (true, Some((now, pass))) = (c.io.is_dirty(), flush.as_mut()) {
                flush_conn(k, c, ctx, &shared, *now, pass);
            }
        });
        self.batch_files = release.into_files();
        if awaits_start {
            self.ctx.player_awaits_start(stream);
        }
    }

    /// Runs `f` for each of this worker's players of `stream`, under the
    /// panic backstop. Delivery moves no deadline, so unlike
    /// [`Worker::with_conn`] no timer is re-armed here (a write that
    /// leaves the socket full arms its stall timer itself, `flush_conn`).
    fn each_player(
        &mut self,
        stream: StreamId,
        doing: &'static str,
        mut f: impl FnMut(ConnKey, &mut Conn, &mut WorkerCtx),
    ) {
        let keys = self.ctx.take_players(stream);
        let mut panicked = Vec::new();
        for group in keys.chunks(WARM_AHEAD) {
            let mut warmed = 0;
            for k in group {
                if let Some(conn) = self.conns.get_mut(k.0) {
                    warmed ^= conn.warm(stream);
                }
            }
            std::hint::black_box(warmed);
            for &k in group {
                let Some(conn) = self.conns.get_mut(k.0) else {
                    continue;
                };
                let ctx = &mut self.ctx;
                if let Err(msg) = catch(|| f(k, conn, ctx)) {
                    panicked.push((k, msg));
                }
            }
        }
        self.ctx.restore_players(stream, keys);
        for (k, msg) in panicked {
            self.on_panic(k, doing, &msg);
        }
    }

    fn relay_command(&mut self, now: Instant, cmd: RelayCommand) {
        let (shared, index) = (self.ctx.shared.clone(), self.ctx.index);
        match cmd {
            RelayCommand::StartPush { rule, key } => {
                self.ctx.relays.start_push_rule(&shared, index, rule, &key)
            }
            RelayCommand::StartPull { rule } => {
                self.ctx.relays.start_static_pull(&shared, index, rule)
            }
            RelayCommand::Stop { rule } => {
                for conn in self.ctx.relays.stop_rule(&shared, rule) {
                    self.goodbye(conn, "its rule was deleted");
                }
            }
            RelayCommand::Resolved { task, addr } => {
                let conns = self.conns.len();
                if let Some(out) = self
                    .ctx
                    .relays
                    .resolved(&shared, index, now, task, &addr, conns)
                {
                    self.insert_outbound(now, out);
                }
            }
            RelayCommand::PullFailed { stream } => {
                for k in self.ctx.players_of(stream).to_vec() {
                    self.with_conn(k, "notifying players", |c, ctx| {
                        c.on_pull_failed(ctx, stream);
                        Ok(())
                    });
                }
            }
            RelayCommand::Goodbye { conn, why } => self.goodbye(conn, &why),
        }
    }

    /// Tells relay connection `conn` its task stopped.
    fn goodbye(&mut self, conn: ConnId, why: &str) {
        if let Some(&k) = self.ids.get(&conn) {
            self.with_conn(k, "stopping a relay", |c, ctx| {
                c.relay_goodbye(ctx, why);
                Ok(())
            });
        }
    }

    fn drain_inbox(&mut self, now: Instant) {
        let mut batch = std::mem::take(&mut self.inbox);
        self.shared().workers[self.ctx.index].take_inbox(&mut batch);
        for msg in batch.drain(..) {
            self.handle_message(now, msg);
            self.settle(now);
        }
        self.inbox = batch;
    }

    /// Delayed denials that are due, then connection timers that are.
    fn run_due(&mut self, now: Instant) {
        for d in self.ctx.access.take_due(now) {
            if let Some(&k) = self.ids.get(&d.conn) {
                self.with_conn(k, "replying to a denied request", |c, ctx| {
                    c.apply_reply(now, ctx, d.reply)
                });
                self.settle(now);
            }
        }
        while let Some((at, k, id)) = self.ctx.pop_due_timer(now) {
            let Some(conn) = self.conns.get_mut(k.0) else {
                continue;
            };
            if conn.io.id != id || conn.io.armed != Some(at) {
                continue; // an older deadline, superseded
            }
            conn.io.armed = None;
            self.with_conn(k, "checking deadlines", |c, ctx| c.on_timeout(now, ctx));
            self.settle(now);
        }
    }

    /// The worker's own upkeep: relay tasks, an idle batch file.
    fn tick(&mut self, now: Instant) {
        if let Some(files) = self.batch_files.as_mut() {
            files.close_idle();
        }
        let result = catch(|| {
            let (shared, index) = (self.ctx.shared.clone(), self.ctx.index);
            if self.ctx.shutting_down().is_some() {
                // No new connections; those open say goodbye (begin_shutdown).
                self.ctx.relays.clear();
                return;
            }
            for conn in self.ctx.relays.tick(&shared, index, now) {
                self.goodbye(conn, "no player");
            }
            self.ctx.forget_idle_holds();
            if index == 0 {
                // Streams whose HLS viewers had time to read their end.
                shared.registry.sweep(now);
                expire_handover_rule(&shared);
                // Recordings past their retention (a disk thread deletes).
                shared.recordings.tick(now);
            }
            self.settle(now);
        });
        if let Err(msg) = result {
            self.shared().panics.fetch_add(1, Ordering::Relaxed);
            log::error!("worker={}: panic in relay upkeep: {msg}", self.ctx.index);
        }
    }

    fn accept(&mut self, now: Instant, listener: usize) {
        loop {
            let Some(l) = self.listeners.get(listener) else {
                return;
            };
            let (kind, tls, handover) = (l.kind, l.tls, l.handover);
            match l.socket.accept() {
                Ok((socket, peer)) => {
                    if self.conns.len() >= self.shared().config.max_connections_per_worker {
                        self.refuse(now, peer);
                        continue;
                    }
                    let tls = match (tls, &self.ctx.shared.tls) {
                        (false, _) => None,
                        (true, _) if !self.ctx.tls_handshake_allowed() => {
                            log::debug!(
                                "worker={}: refusing {peer}: {} TLS handshakes in progress is the limit",
                                self.ctx.index,
                                self.ctx.tls_pending()
                            );
                            self.shared()
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
                    if let Err(e) = socket.set_nodelay(true) {
                        log::debug!("{peer}: TCP_NODELAY: {e}");
                    }
                    let counted = tls.is_some();
                    let http = kind != ListenerKind::Rtmp;
                    let proto = match kind {
                        ListenerKind::Rtmp => {
                            let mut rtmp = RtmpConn::new(ServerSession::new(
                                self.ctx.session_config.clone(),
                                now,
                                self.ctx.next_seed(),
                            ));
                            if handover {
                                rtmp.serve_successor();
                            }
                            Proto::Rtmp(Box::new(rtmp))
                        }
                        ListenerKind::Http | ListenerKind::Api => Proto::Http(Box::new(
                            HttpConn::new(kind, now, self.shared().config.http_request_timeout),
                        )),
                    };
                    let state = if http {
                        ClientState::Http
                    } else {
                        ClientState::Handshake
                    };
                    // The API's own listener is for operators, not behind
                    // the balancer: no PROXY header there.
                    let proxy = match kind {
                        _ if handover => None,
                        ListenerKind::Api => None,
                        _ if self.shared().config.proxy_protocol.trusts(peer.ip()) => {
                            Some(ProxyStage::Expect)
                        }
                        _ => Some(ProxyStage::Refuse),
                    };
                    let counters = Arc::new(ConnCounters::default());
                    let Some(id) = self.insert(
                        socket, peer, http, tls, counted, counters, proto, state, None, proxy,
                    ) else {
                        continue;
                    };
                    if counted {
                        self.ctx.tls_handshake_started();
                    }
                    log::debug!(
                        "conn={id} peer={peer} worker={} listener={kind:?}: accepted",
                        self.ctx.index
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the pending connection stays queued
                    // and is retried on the next accept event.
                    log::warn!("worker={}: accept: {e}", self.ctx.index);
                    return;
                }
            }
        }
    }

    /// An accept refused at the connection cap: counted, and logged once per
    /// interval.
    fn refuse(&mut self, now: Instant, peer: SocketAddr) {
        self.refused.0 += 1;
        let due = self.refused.1.map_or(true, |at| {
            now.saturating_duration_since(at) >= REFUSAL_LOG_INTERVAL
        });
        if due {
            log::warn!(
                "worker={}: refusing {peer}: {} connections is the limit ({} refused since the last such line)",
                self.ctx.index,
                self.conns.len(),
                self.refused.0
            );
            self.refused = (0, Some(now));
        }
    }

    /// Puts a new connection in the slab: registers its socket, lists it for
    /// the API, arms its first deadline. None when the socket cannot be
    /// registered (it is dropped).
    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        mut socket: TcpStream,
        peer: SocketAddr,
        http: bool,
        tls: Option<Box<rustls::Connection>>,
        counted: bool,
        counters: Arc<ConnCounters>,
        proto: Proto,
        state: ClientState,
        stream: Option<String>,
        proxy: Option<ProxyStage>,
    ) -> Option<ConnId> {
        let entry = self.conns.vacant_entry();
        let key = ConnKey(entry.key());
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            Token(key.0),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("{peer}: register: {e}");
            return None;
        }
        let id = self.ctx.shared.next_conn_id();
        let io = ConnIo::new(id, key, socket, peer, http, tls, counted, counters, proxy);
        let shared = &self.ctx.shared;
        let handle = &shared.workers[self.ctx.index];
        handle.connections.fetch_add(1, Ordering::Relaxed);
        shared.stats.opened(io.protocol);
        handle.clients().insert(
            id,
            ClientInfo {
                id,
                peer,
                protocol: io.protocol,
                state,
                stream,
                since: SystemTime::now(),
                counters: io.counters.clone(),
            },
        );
        self.ids.insert(id, key);
        let conn = entry.insert(Conn { io, proto });
        let at = conn.deadline(&self.ctx);
        self.ctx.arm(&mut conn.io, at);
        Some(id)
    }

    /// Puts a relay's outbound connection in the slab.
    fn insert_outbound(&mut self, now: Instant, out: Outbound) {
        let Outbound {
            socket,
            addr,
            tls,
            counters,
            task,
            state,
            push,
            key,
            remote,
            config,
            deadline,
            handover,
        } = out;
        let mut relay = RelayConn::new(task, push, key.clone(), remote, config, deadline, now);
        if handover {
            relay.pull_from_predecessor();
        }
        let proto = Proto::Relay(Box::new(relay));
        let Some(id) = self.insert(
            socket,
            addr,
            false,
            tls,
            false,
            counters,
            proto,
            state,
            Some(key),
            None,
        ) else {
            return;
        };
        let (shared, index) = (self.ctx.shared.clone(), self.ctx.index);
        self.ctx.relays.opened(&shared, index, task, id, addr);
    }

    /// The write pass's releases: streams whose frames go now, then held
    /// streams due at `at` (within the write pass's lead); during a
    /// shutdown every held frame goes. Players are written as they are
    /// released, at the iteration's clock `now`.
    fn release_held(&mut self, at: Instant, now: Instant, pass: &mut FlushPass) {
        for stream in self.ctx.take_release_in_pass() {
            self.release(stream, Some((now, pass)));
        }
        while let Some(stream) = self.ctx.pop_due_held(at) {
            self.release(stream, Some((now, pass)));
        }
        if self.ctx.shutting_down().is_some() {
            for stream in self.ctx.held_streams() {
                self.release(stream, Some((now, pass)));
            }
        }
    }

    /// Writes every connection in this iteration's write list that a
    /// release has not written already, then settles the pass: counts its
    /// write calls, closes the connections that failed, and lets those
    /// drained that want it read on.
    fn flush_dirty(&mut self, now: Instant, mut pass: FlushPass) {
        let shared = self.ctx.shared.clone();
        for k in self.ctx.take_dirty() {
            let Some(conn) = self.conns.get_mut(k.0) else {
                continue;
            };
            // Written by its release in this pass already.
            if !conn.io.is_dirty() {
                continue;
            }
            flush_conn(k, conn, &mut self.ctx, &shared, now, &mut pass);
        }
        pass.publish(&shared, self.ctx.index);
        // A connection released for two streams is written twice in a pass:
        // what it left to do is done once (stable sorts: its first close
        // reason is the one kept).
        pass.drained.sort_unstable();
        pass.drained.dedup();
        pass.failed.sort_by_key(|(k, _)| *k);
        pass.failed.dedup_by_key(|(k, _)| *k);
        pass.panicked.sort_by_key(|(k, _)| *k);
        pass.panicked.dedup_by_key(|(k, _)| *k);
        for k in pass.drained {
            self.with_conn(k, "reading after a flush", |c, ctx| c.on_drained(now, ctx));
        }
        for (k, close) in pass.failed {
            self.close(k, close);
        }
        for (k, msg) in pass.panicked {
            self.on_panic(k, "writing", &msg);
        }
    }

    /// The panic backstop: logs the panic with the connection's state, counts
    /// it ([`Shared::panics`]) and closes that connection only.
    fn on_panic(&mut self, k: ConnKey, doing: &str, msg: &str) {
        let total = self.shared().panics.fetch_add(1, Ordering::Relaxed) + 1;
        let state = self
            .conns
            .get(k.0)
            .map_or_else(|| "connection already gone".to_owned(), Conn::describe);
        log::error!(
            "worker={}: panic while {doing}: {msg}; closing this connection only ({state}); panics so far: {total}",
            self.ctx.index
        );
        let close = Close::new(CloseReason::Panic, format!("panic while {doing}: {msg}"));
        if let Err(again) = catch(|| self.close(k, close)) {
            // `close` takes the connection out of the slab first, so it is
            // gone (its socket dropped during unwinding) even so.
            self.shared().panics.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "worker={}: panic while closing after a panic: {again}",
                self.ctx.index
            );
        }
    }

    /// Closes every listener: the kernel sends new connections to the other
    /// processes sharing the ports (SO_REUSEPORT), if any. Connections the
    /// kernel already queued on them are accepted first; one that completes
    /// its TCP handshake between that and the close is reset, unless the
    /// kernel migrates it to another listener of the port
    /// (`net.ipv4.tcp_migrate_req`, docs/deploying.md).
    fn close_listeners(&mut self, now: Instant) {
        if self.listeners.is_empty() {
            return;
        }
        for i in 0..self.listeners.len() {
            self.accept(now, i);
        }
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        self.handle().listening.store(false, Ordering::Relaxed);
    }

    /// A successor now shares the ports: stop accepting, open the handover
    /// listener (worker 0) it pulls still-published streams from, ask
    /// Enhanced RTMP publishers to reconnect (to it), and close idle HTTP
    /// connections; publishers and players already here are served on,
    /// until [`Worker::handover_done`].
    fn begin_handover(&mut self, now: Instant) {
        self.close_listeners(now);
        let config = &self.ctx.shared.config;
        self.handover_deadline = Some(now + config.handover_timeout);
        if let (0, Some(addr)) = (self.ctx.index, config.handover_addr) {
            match std::net::TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => {
                    let mut socket = TcpListener::from_std(l);
                    match self.poll.registry().register(
                        &mut socket,
                        Token(LISTENER_BASE - self.listeners.len()),
                        Interest::READABLE,
                    ) {
                        Ok(()) => {
                            self.listeners.push(Listener {
                                kind: ListenerKind::Rtmp,
                                tls: false,
                                handover: true,
                                socket,
                            });
                            log::info!("handover: serving this process's streams to its successor on {addr}");
                        }
                        Err(e) => log::warn!("handover: listener on {addr}: {e}"),
                    }
                }
                Err(e) => log::warn!(
                    "handover: cannot listen on {addr} ({e}): players of streams still published here who reach the successor wait for their publishers to move"
                ),
            }
        }
        let mut asked = 0;
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, _)| ConnKey(k)).collect();
        for k in keys {
            self.with_conn(k, "handing over", |c, ctx| {
                asked += usize::from(c.begin_handover(ctx));
                Ok(())
            });
        }
        log::info!(
            "worker={}: handing over to a successor: {} connections served on for up to {:?}, {asked} publishers asked to reconnect",
            self.ctx.index,
            self.conns.len(),
            self.ctx.shared.config.handover_timeout
        );
    }

    /// During a handover, checked at each tick: true once nothing in this
    /// process is worth serving (no stream has a publisher, so no player
    /// or relay here has anything more to get; the handover listener, on
    /// worker 0, stays while another worker's streams are live), or at the
    /// handover deadline. Then the worker shuts down as on SIGTERM.
    fn handover_done(&self, now: Instant) -> bool {
        let Some(deadline) = self.handover_deadline else {
            return false;
        };
        if now >= deadline {
            log::info!(
                "worker={}: handover deadline: closing {} connections",
                self.ctx.index,
                self.conns.len()
            );
            return true;
        }
        let live = |s: &Arc<super::stream::Stream>| s.with_state(|st| st.publisher().is_some());
        // A stream that just ended may still have its last frames queued
        // for a player (held by the write policy's budget, or waiting for
        // the socket): shutdown would drop them, so wait while a socket
        // takes what it is given (one that took nothing for the flush
        // timeout is not waited for).
        let flushing = |c: &Conn| {
            c.io.has_pending_output()
                && c.io.blocked_since().map_or(true, |t| {
                    now.saturating_duration_since(t) < SHUTDOWN_FLUSH_TIMEOUT
                })
        };
        !self.ctx.shared.registry.streams().iter().any(live)
            && !self
                .conns
                .iter()
                .any(|(_, c)| c.serves_live_stream() || flushing(c))
    }

    fn begin_shutdown(&mut self, now: Instant) {
        log::info!(
            "worker={}: shutting down, {} connections",
            self.ctx.index,
            self.conns.len()
        );
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l.socket);
        }
        self.handle().listening.store(false, Ordering::Relaxed);
        self.ctx.begin_shutdown(now + SHUTDOWN_FLUSH_TIMEOUT);
        let mut asked = 0;
        let keys: Vec<ConnKey> = self.conns.iter().map(|(k, _)| ConnKey(k)).collect();
        for k in keys {
            self.with_conn(k, "shutting down", |c, ctx| {
                asked += usize::from(c.begin_shutdown(ctx));
                Ok(())
            });
        }
        let config = &self.ctx.shared.config;
        if asked > 0 {
            log::info!(
                "worker={}: asked {asked} publishers to reconnect{}; waiting up to {:?} for them to leave",
                self.ctx.index,
                config
                    .reconnect_url
                    .as_deref()
                    .map_or(String::new(), |u| format!(" to {u}")),
                config.drain_timeout
            );
            self.drain_deadline = Some(now + config.drain_timeout);
        }
    }

    /// During shutdown: true once every queue is written and every publisher
    /// asked to reconnect has left, or at the deadlines. At the flush
    /// deadline the other connections are closed (as without drain); at the
    /// drain deadline, everything.
    fn shutdown_done(&mut self, now: Instant, flush_deadline: Instant) -> bool {
        let draining = self.conns.iter().any(|(_, c)| c.is_draining());
        let flushed = self
            .conns
            .iter()
            .all(|(_, c)| !c.io.has_pending_output() || c.is_draining());
        if !draining {
            return flushed || now >= flush_deadline;
        }
        if now >= self.drain_deadline.unwrap_or(flush_deadline) {
            return true;
        }
        if now >= flush_deadline && !flushed {
            let late: Vec<ConnKey> = self
                .conns
                .iter()
                .filter(|(_, c)| !c.is_draining())
                .map(|(k, _)| ConnKey(k))
                .collect();
            for k in late {
                self.close(k, Close::new(CloseReason::Shutdown, "server shutting down"));
            }
        }
        false
    }

    /// Closes connection `k`: out of the slab and the API's list, then what
    /// it published, played and relayed ends.
    fn close(&mut self, k: ConnKey, close: Close) {
        let Some(mut conn) = self.conns.try_remove(k.0) else {
            return;
        };
        let shared = self.ctx.shared.clone();
        let handle = &shared.workers[self.ctx.index];
        handle.connections.fetch_sub(1, Ordering::Relaxed);
        handle.clients().remove(&conn.io.id);
        self.ids.remove(&conn.io.id);
        shared.stats.dropped(conn.io.protocol);
        shared.stats.closed(close.reason);
        if close.last_gasp {
            conn.io.last_gasp();
        }
        let _ = self.poll.registry().deregister(conn.io.socket());
        if conn.io.tls_handshake_counted() {
            self.ctx.tls_handshake_ended();
        }
        let role = conn.role();
        conn.on_close(Instant::now(), &mut self.ctx, &close.why);
        let io = &conn.io;
        if role == "client" {
            log::debug!(
                "conn={} peer={} worker={}: closed ({}): {}",
                io.id,
                io.peer,
                self.ctx.index,
                close.reason.name(),
                close.why
            );
        } else {
            log::info!(
                "close {role} conn={} peer={} worker={} bytes_in={} bytes_out={} ({}): {}",
                io.id,
                io.peer,
                self.ctx.index,
                io.counters.bytes_in.load(Ordering::Relaxed),
                io.counters.bytes_out.load(Ordering::Relaxed),
                close.reason.name(),
                close.why
            );
        }
    }
}

/// A successor (`--takeover`) pulls from its predecessor while the
/// predecessor runs: until it exits (a successor started by SIGUSR2 is its
/// child, and is handed to another parent then), and at most for its
/// `handover_timeout` (a little more for the handover to start). Then the
/// handover's rule and its pulls stop.
fn expire_handover_rule(shared: &Shared) {
    const MARGIN: Duration = Duration::from_secs(30);
    let config = &shared.config;
    if !config.takeover {
        return;
    }
    let orphaned = std::os::unix::process::parent_id() != shared.parent_at_start;
    let late = shared.stats.started.elapsed() >= config.handover_timeout + MARGIN;
    if !orphaned && !late {
        return;
    }
    for rule in shared.relays.rules().iter().filter(|r| r.is_handover()) {
        if shared.relays.remove(rule.id).is_some() {
            log::info!(
                "takeover: the predecessor {}: no more pulls from it",
                if orphaned {
                    "exited"
                } else {
                    "had its handover_timeout"
                }
            );
            for w in 0..shared.workers.len() {
                shared.post_relay(w, RelayCommand::Stop { rule: rule.id });
            }
        }
    }
}

/// What one write pass leaves to do once its writes are done
/// ([`Worker::flush_dirty`]).
#[derive(Default)]
struct FlushPass {
    /// Write calls made (`sendmsg`, `sendfile`, or TLS records' writes).
    calls: u64,
    /// Of them, `sendfile` calls.
    file_calls: u64,
    /// Bytes written, all connections together.
    written: u64,
    /// Bytes written for each stream, by run of consecutive writes for the
    /// same stream (a release writes its players one after another).
    /// Counted here and added to the server's and the streams' shared
    /// counters once at the end of the pass ([`FlushPass::publish`]): those
    /// counters are shared by every worker, and an atomic addition per write
    /// call on each of them would have the workers take turns at their
    /// cache lines thousands of times a second.
    stream_written: Vec<(Arc<Stream>, u64)>,
    /// The clock for write waits ([`FlushPass::clock`]): when it was read,
    /// and the writes that asked for it since.
    clock: Option<(Instant, u32)>,
    /// Connections to close, and why.
    failed: Vec<(ConnKey, Close)>,
    /// Connections whose write panicked.
    panicked: Vec<(ConnKey, String)>,
    /// Connections drained that want [`Conn::on_drained`].
    drained: Vec<ConnKey>,
}

/// How many writes of a pass share one reading of the clock for their
/// waits: a write's wait is measured to when the clock was last read, at
/// most this many writes before it began (about 0.1 ms at 1,000 players,
/// where a pass is ~10 ms; reading the clock for every write was half a
/// percent of the server's time).
const WRITES_PER_CLOCK_READ: u32 = 8;

impl FlushPass {
    /// The time a write that begins now has waited until: the clock,
    /// read again every [`WRITES_PER_CLOCK_READ`] writes.
    fn clock(&mut self) -> Instant {
        match &mut self.clock {
            Some((at, n)) if *n < WRITES_PER_CLOCK_READ => {
                *n += 1;
                *at
            }
            c => c.insert((Instant::now(), 1)).0,
        }
    }

    /// `n` bytes were written to a connection of `stream` (None: of no
    /// single stream).
    fn count(&mut self, n: u64, stream: Option<&Arc<Stream>>) {
        self.written += n;
        let Some(stream) = stream else {
            return;
        };
        match self.stream_written.last_mut() {
            Some((s, sum)) if Arc::ptr_eq(s, stream) => *sum += n,
            _ => self.stream_written.push((stream.clone(), n)),
        }
    }

    /// Adds what the pass wrote to the shared counters: the worker's write
    /// calls, the server's bytes out and each stream's.
    fn publish(&mut self, shared: &Shared, worker: usize) {
        if self.calls > 0 {
            let handle = &shared.workers[worker];
            handle.write_calls.fetch_add(self.calls, Ordering::Relaxed);
            if self.file_calls > 0 {
                handle
                    .sendfile_calls
                    .fetch_add(self.file_calls, Ordering::Relaxed);
            }
        }
        if self.written > 0 {
            shared
                .stats
                .bytes_out
                .fetch_add(self.written, Ordering::Relaxed);
        }
        for (stream, n) in self.stream_written.drain(..) {
            stream.bytes_out.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Writes connection `k`'s queue (one flush: as much as the socket takes),
/// under the panic backstop, and notes in `pass` what is left to do for it.
fn flush_conn(
    k: ConnKey,
    conn: &mut Conn,
    ctx: &mut WorkerCtx,
    shared: &Shared,
    now: Instant,
    pass: &mut FlushPass,
) {
    conn.io.clear_dirty();
    let was_blocked = conn.io.blocked_since().is_some();
    // The wait ends with this write (or with a full socket, whose wait is
    // the player's).
    if let (false, Some(since)) = (was_blocked, conn.io.media_since.take()) {
        let at = pass.clock();
        shared.workers[ctx.index]
            .write_wait
            .record(at.saturating_duration_since(since));
    }
    let written = match catch(|| conn.io.flush(now)) {
        Ok(Ok(f)) => {
            pass.calls += f.calls;
            pass.file_calls += f.file_calls;
            f.written
        }
        Ok(Err(close)) => {
            pass.failed.push((k, close));
            return;
        }
        Err(msg) => {
            pass.panicked.push((k, msg));
            return;
        }
    };
    if written > 0 {
        pass.count(written, conn.sole_stream());
    }
    if let (false, Some(since)) = (was_blocked, conn.io.blocked_since()) {
        let at = since + ctx.limits.stall;
        ctx.arm(&mut conn.io, Some(at));
    }
    let control = conn.io.out.control_bytes();
    if control > ctx.limits.control_bytes {
        pass.failed.push((
            k,
            Close::new(
                CloseReason::Overflow,
                format!(
                    "{control} bytes of unread control replies (limit {})",
                    ctx.limits.control_bytes
                ),
            ),
        ));
    } else if let Some(close) = conn.io.take_finished_close() {
        pass.failed.push((k, close));
    } else if !conn.io.has_pending_output() && conn.wants_drained() {
        pass.drained.push(k);
    }
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
