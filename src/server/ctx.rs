//! A worker's context: the per-worker state that connection handlers borrow
//! beside their own connection (quinn's endpoint/connection split). A
//! handler gets `(&mut Proto, &mut ConnIo, &mut WorkerCtx)`; it never looks
//! another connection up. What it wants done to others goes through the
//! context as messages: media for the players of a stream
//! ([`WorkerCtx::fan_out`]), commands for one connection
//! ([`WorkerCtx::post`]), relay connections to open (`Tasks`). The worker
//! loop carries them out once the handler returns.
//!
//! Invariants kept here, each by one method:
//! * a connection is in the write list once while its dirty flag is set
//!   ([`WorkerCtx::schedule_write`]); a release in the write pass writes
//!   its players at once and clears their flags, and the list skips an
//!   entry whose flag is clear;
//! * the fan-out index holds a connection for a stream exactly while it has
//!   a [`Player`] of that stream ([`WorkerCtx::start_player`] /
//!   [`WorkerCtx::end_player`]);
//! * a connection's timer fires at or before its earliest deadline
//!   ([`WorkerCtx::arm`]);
//! * a stream's frames for this worker's players go to them in this
//!   iteration or are held until a deadline no later than the write budget
//!   allows ([`WorkerCtx::hold_frame`], the policy in `pacing.rs`); frames
//!   released to a connection are written in the iteration that released
//!   them ([`WorkerCtx::media_released`]).

use super::access::Access;
use super::base::ConnKey;
use super::base::{ConnId, StreamId};
use super::pacing::{Decision, HeldQueues, StreamHold, WritePolicy};
use super::player::{Form, Player, PlayerLimits, Role};
use super::shared::{ClientState, Command, MediaEvent, Message, RelayCommand, Shared};
use super::stream::{workers_in, Frame, Notice, PublisherInfo, Stream};
use super::tasks::Tasks;
use super::transport::{ConnIo, READ_CHUNK};
use crate::protocol::session::{ClientCaps, MediaKind, SessionConfig};
use bytes::Bytes;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long reading TLS handshakes may take in one loop iteration before
/// the rest wait for the next. The server's side of a handshake's first
/// flight (a signature and a key exchange) costs 80 µs with an ECDSA
/// certificate and 0.35 ms with RSA 2048 (docs/tls.md): a burst of
/// joiners read all at once (3,000 RTMPS players in a second, with an RSA
/// certificate) held the worker's playing connections' writes back and
/// took their latency p99 from 37 to 197 ms. With the bound, each
/// iteration's writes go out after at most this much handshake work (and
/// one handshake past it): the joiners wait for the CPU, not the players.
pub(super) const HANDSHAKE_TIME_PER_ITERATION: Duration = Duration::from_millis(2);

/// A stream a connection publishes (an encoder's message stream, or a
/// pull's local publication).
pub(super) struct Publication {
    pub msid: u32,
    pub stream: Arc<Stream>,
}

/// See the module documentation.
pub(super) struct WorkerCtx {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub limits: PlayerLimits,
    pub session_config: SessionConfig,
    /// The loop's clock: when this iteration's poll returned.
    pub now: Instant,
    /// When queued media is written (`--max-write-delay`).
    pub policy: WritePolicy,
    /// Connections to write at the end of this iteration.
    dirty: Vec<ConnKey>,
    /// Streams whose frames go in this iteration's write pass.
    release_in_pass: Vec<StreamId>,
    /// Streams whose frames this worker holds, earliest deadline first.
    held: HeldQueues<StreamId>,
    /// Stream → the frames held for this worker's players of it.
    holds: HashMap<StreamId, StreamHold>,
    /// The buffer every read of this worker goes into first (see
    /// `ConnIo::read_some`).
    pub read_scratch: Box<[u8]>,
    /// Stream → this worker's connections playing it (the fan-out index).
    locals: HashMap<StreamId, Vec<ConnKey>>,
    /// Stream → this worker's connections with an HLS request parked on it.
    hls_waiting: HashMap<StreamId, Vec<ConnKey>>,
    /// Messages for each worker, this one included, sent at the end of the
    /// iteration (this worker's own are handled as soon as the handler
    /// that posted them returns).
    outgoing: Vec<Vec<Message>>,
    /// Connections whose read budget ran out: read again next iteration.
    read_again: Vec<ConnKey>,
    /// Connection deadlines: (when, connection); an entry is current only
    /// while it matches the connection's `armed` instant.
    timers: BinaryHeap<Reverse<(Instant, ConnKey, ConnId)>>,
    /// Accepted TLS connections still handshaking.
    tls_pending: usize,
    /// Time spent this loop iteration reading TLS handshakes.
    handshake_spent: Duration,
    /// Handshaking connections put off for lack of handshake time, oldest
    /// first (a connection may be here twice, or closed since: reading it
    /// again then finds nothing).
    waiting_handshakes: VecDeque<ConnKey>,
    /// Denials waiting to be answered and requests waiting for callbacks.
    pub access: Access,
    /// Relay tasks running on this worker.
    pub relays: Tasks,
    /// Set when shutdown began: the flush deadline.
    shutting_down: Option<Instant>,
    seed: u64,
}

impl WorkerCtx {
    pub(super) fn new(index: usize, shared: Arc<Shared>) -> Self {
        let c = &shared.config;
        let limits = PlayerLimits {
            queue_bytes: c.player_queue_bytes,
            control_bytes: c.control_queue_bytes,
            stall: c.player_stall_timeout,
        };
        let mut session_config = c.session_config();
        session_config.connect_decision = shared.auth.has_connect_hooks();
        let workers = shared.workers.len();
        Self {
            index,
            limits,
            session_config,
            now: Instant::now(),
            policy: WritePolicy::new(c.max_write_delay.0, limits.queue_bytes),
            dirty: Vec::new(),
            release_in_pass: Vec::new(),
            held: HeldQueues::new(c.max_write_delay.0),
            holds: HashMap::new(),
            read_scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            locals: HashMap::new(),
            hls_waiting: HashMap::new(),
            outgoing: (0..workers).map(|_| Vec::new()).collect(),
            read_again: Vec::new(),
            timers: BinaryHeap::new(),
            tls_pending: 0,
            handshake_spent: Duration::ZERO,
            waiting_handshakes: VecDeque::new(),
            access: Access::default(),
            relays: Tasks::default(),
            shutting_down: None,
            seed: 0x9E37_79B9_7F4A_7C15 ^ (index as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9),
            shared,
        }
    }

    /// Distinct bytes for each connection's handshake (splitmix64; nothing
    /// secret).
    pub(super) fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Puts the connection in this iteration's write list (once).
    pub(super) fn schedule_write(&mut self, io: &mut ConnIo) {
        if io.set_dirty() {
            self.dirty.push(io.key);
        }
    }

    /// This iteration's write list.
    pub(super) fn take_dirty(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.dirty)
    }

    /// Frame `f` of `stream` came for this worker's players. True when
    /// what the worker holds of the stream must go to them now (the write
    /// policy says so); otherwise the frame is held until the stream's
    /// deadline (the stream is listed in the held list the first time).
    pub(super) fn hold_frame(&mut self, stream: StreamId, f: &Arc<Frame>) -> bool {
        let lead = self.held.lead();
        let hold = self.holds.entry(stream).or_default();
        match hold.push(&self.policy, f, self.now, lead) {
            Decision::WriteNow => true,
            Decision::Hold { deadline, first } => {
                if first {
                    self.held.push(deadline, stream);
                }
                false
            }
        }
    }

    /// The write policy said `stream`'s frames go now: they are released
    /// in this iteration's write pass (`take_release_in_pass`), so that
    /// the frames of one iteration leave in one write. A stream listed
    /// twice is released once: the second finds nothing held.
    pub(super) fn release_in_pass(&mut self, stream: StreamId) {
        self.release_in_pass.push(stream);
    }

    pub(super) fn take_release_in_pass(&mut self) -> Vec<StreamId> {
        std::mem::take(&mut self.release_in_pass)
    }

    /// Takes the frames held for `stream`'s players, and since when the
    /// oldest waited; `None` when none are held.
    pub(super) fn take_held(
        &mut self,
        stream: StreamId,
    ) -> Option<(Vec<Arc<Frame>>, Option<Instant>)> {
        let hold = self.holds.get_mut(&stream)?;
        (!hold.is_empty()).then(|| hold.take(self.now))
    }

    /// A player of `stream` here waits for a start point: the next one is
    /// not held.
    pub(super) fn player_awaits_start(&mut self, stream: StreamId) {
        self.holds.entry(stream).or_default().awaits_start = true;
    }

    /// Streams with frames held (a shutdown releases them all).
    pub(super) fn held_streams(&self) -> Vec<StreamId> {
        let held = self.holds.iter().filter(|(_, h)| !h.is_empty());
        held.map(|(&s, _)| s).collect()
    }

    /// Forgets the holds of streams with no player here and nothing held
    /// (a frame can come after the last player left).
    pub(super) fn forget_idle_holds(&mut self) {
        let locals = &self.locals;
        self.holds
            .retain(|s, h| !h.is_empty() || locals.contains_key(s));
    }

    /// Media that waited since `since` was released to the connection and
    /// queued: it joins this iteration's write list. A connection whose
    /// socket is full is left as it is (its writable edge brings it back).
    pub(super) fn media_released(&mut self, io: &mut ConnIo, since: Option<Instant>) {
        if let Some(at) = since {
            io.media_since = Some(io.media_since.map_or(at, |s| s.min(at)));
        }
        if io.blocked_since().is_none() {
            self.schedule_write(io);
        }
    }

    /// When the earliest held stream must be released (its deadline less
    /// the write pass's lead): the loop's poll waits no longer than this.
    pub(super) fn next_held_wake(&self) -> Option<Instant> {
        self.held.next_wake()
    }

    /// This iteration's write pass began at `at` and took `took` (the lead
    /// held streams are released with).
    pub(super) fn write_pass_took(&mut self, at: Instant, took: Duration) {
        self.held.pass_took(at, took);
    }

    /// The next held stream to release at `now` (due within the lead).
    /// Entries of streams released early since are skipped.
    pub(super) fn pop_due_held(&mut self, now: Instant) -> Option<StreamId> {
        while let Some((at, stream)) = self.held.pop_due(now) {
            if self
                .holds
                .get(&stream)
                .is_some_and(|h| h.pacing.is_held_until(at))
            {
                return Some(stream);
            }
        }
        None
    }

    /// Reads `key` again next iteration (its read budget ran out).
    pub(super) fn read_again(&mut self, key: ConnKey) {
        self.read_again.push(key);
    }

    pub(super) fn take_read_again(&mut self) -> Vec<ConnKey> {
        std::mem::take(&mut self.read_again)
    }

    pub(super) fn has_read_again(&self) -> bool {
        !self.read_again.is_empty()
    }

    /// Posts `msg` to worker `w`: this worker handles it once the current
    /// handler returns; others get this iteration's messages in one batch.
    pub(super) fn post(&mut self, w: usize, msg: Message) {
        if let Some(q) = self.outgoing.get_mut(w) {
            q.push(msg);
        }
    }

    /// Messages this worker posted to itself.
    pub(super) fn take_local(&mut self) -> Vec<Message> {
        self.outgoing
            .get_mut(self.index)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Sends this iteration's messages to the other workers, one lock and
    /// one wake each.
    pub(super) fn send_outgoing(&mut self) {
        for (w, out) in self.outgoing.iter_mut().enumerate() {
            if w != self.index {
                self.shared.workers[w].post_batch(out);
            }
        }
    }

    /// Hands a published frame to every worker with players of `stream`
    /// (bit w of `interest`): one `Arc` each.
    pub(super) fn fan_out(&mut self, interest: u64, frame: Arc<Frame>, stream: StreamId) {
        for w in workers_in(interest) {
            self.post(w, Message::Media(stream, MediaEvent::Frame(frame.clone())));
        }
    }

    /// Tells the workers with players that `stream` got or lost its publisher.
    pub(super) fn notify(&mut self, stream: &Stream, notice: Notice, published: bool) {
        for w in workers_in(notice.interest) {
            let ev = if published {
                MediaEvent::Published { seq: notice.seq }
            } else {
                MediaEvent::Unpublished { seq: notice.seq }
            };
            self.post(w, Message::Media(stream.id, ev));
        }
    }

    /// This worker's connections playing `stream`.
    pub(super) fn players_of(&self, stream: StreamId) -> &[ConnKey] {
        self.locals.get(&stream).map_or(&[], Vec::as_slice)
    }

    /// Takes the list of `stream`'s players out of the fan-out index while
    /// the worker delivers to each (it needs the context meanwhile); give
    /// it back with [`WorkerCtx::restore_players`]. No allocation.
    pub(super) fn take_players(&mut self, stream: StreamId) -> Vec<ConnKey> {
        self.locals
            .get_mut(&stream)
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Puts back what [`WorkerCtx::take_players`] took (keeping any player
    /// that started meanwhile).
    pub(super) fn restore_players(&mut self, stream: StreamId, mut keys: Vec<ConnKey>) {
        match self.locals.get_mut(&stream) {
            Some(list) => {
                keys.append(list);
                *list = keys;
            }
            None if !keys.is_empty() => {
                self.locals.insert(stream, keys);
            }
            None => {}
        }
        if self.locals.get(&stream).is_some_and(Vec::is_empty) {
            self.locals.remove(&stream);
        }
    }

    /// Starts a player of `key` on this connection: registers it (waiting
    /// if nobody publishes yet), queues the latest headers and the cached
    /// GOP when the stream is live, and adds it to the fan-out index.
    /// Returns the player, whether the stream is live, and the frames
    /// queued from the cache.
    pub(super) fn start_player(
        &mut self,
        io: &mut ConnIo,
        key: &str,
        msid: u32,
        form: Form,
        role: Role,
        caps: Option<&ClientCaps>,
    ) -> (Player, bool, usize) {
        self.ensure_rendition(key);
        let registry = &self.shared.registry;
        let (stream, snap) = match role {
            Role::Relay => registry.join_relay(key, self.index),
            Role::Viewer => registry.join(key, self.index, form.format()),
        };
        let mut player = Player::new(io.id, msid, stream.clone(), form, role, snap.next_seq);
        if let Some(caps) = caps {
            player = player.with_caps(caps);
        }
        if snap.live && (!snap.gop.is_empty() || snap.audio_only) {
            // Instant start: headers, then the cached GOP from its keyframe.
            player.start_with(
                &mut io.out,
                &snap.headers,
                &snap.gop,
                &self.limits,
                &self.shared.stats,
            );
        }
        self.locals.entry(stream.id).or_default().push(io.key);
        if player.awaits_start() {
            self.player_awaits_start(stream.id);
        }
        self.schedule_write(io);
        (player, snap.live, snap.gop.len())
    }

    /// Ends a player: leaves the fan-out index and the registry, logs (for
    /// viewers) and tells the application's `on_play_done` callback.
    pub(super) fn end_player(&mut self, io: &ConnIo, p: Player, why: &str) {
        if let Some(list) = self.locals.get_mut(&p.stream.id) {
            list.retain(|&k| k != io.key);
            if list.is_empty() {
                self.locals.remove(&p.stream.id);
            }
        }
        if p.role == Role::Relay {
            self.shared.registry.leave_relay(&p.stream, self.index);
            return;
        }
        log::info!(
            "play stop stream={} conn={} peer={} worker={} protocol={} format={} dropped_frames={}: {why}",
            p.stream.key,
            io.id,
            io.peer,
            self.index,
            io.protocol.name(),
            p.format().name(),
            p.dropped
        );
        self.shared
            .registry
            .leave(&p.stream, self.index, p.format());
        self.access
            .notify_hook(&self.shared, "play_done", &p.stream.key, io, "");
    }

    /// Publishes one message of `stream` from connection `publisher`: the
    /// frame is built once and handed to every worker with players, and
    /// packaged for HLS (waking the workers with requests waiting for it)
    /// and recorded when it is.
    /// Nothing happens when `publisher` no longer publishes the stream
    /// (replaced by another: its worker closes it).
    pub(super) fn publish_frame(
        &mut self,
        stream: &Arc<Stream>,
        publisher: ConnId,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    ) {
        let Some((frame, interest)) = stream.push_from(publisher, kind, timestamp, payload) else {
            return;
        };
        let wake = super::record::publish(stream, &frame);
        self.wake_hls(stream.id, wake);
        self.publish_renditions(stream, publisher, &frame);
        self.fan_out(interest, frame, stream.id);
    }

    /// Tells each worker in `mask` that `stream`'s HLS has something new.
    pub(super) fn wake_hls(&mut self, stream: StreamId, mask: u64) {
        for w in workers_in(mask) {
            self.post(w, Message::Hls(stream));
        }
    }

    /// Parks an HLS request of this connection until `stream`'s next
    /// output; the caller asks again right after (a part that came out
    /// meanwhile is not missed).
    pub(super) fn park_hls(&mut self, io: &ConnIo, stream: &Stream) {
        let list = self.hls_waiting.entry(stream.id).or_default();
        if !list.contains(&io.key) {
            list.push(io.key);
            super::hls::TOTALS
                .waiting
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(h) = stream.hls() {
            h.park(self.index);
        }
    }

    /// The request of this connection parked on `stream` is answered (or
    /// gone).
    pub(super) fn unpark_hls(&mut self, io: &ConnIo, stream: StreamId) {
        if let Some(list) = self.hls_waiting.get_mut(&stream) {
            if let Some(i) = list.iter().position(|&k| k == io.key) {
                list.swap_remove(i);
                super::hls::TOTALS
                    .waiting
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            if list.is_empty() {
                self.hls_waiting.remove(&stream);
            }
        }
    }

    /// This worker's connections with a request parked on `stream`.
    pub(super) fn hls_waiting(&self, stream: StreamId) -> Vec<ConnKey> {
        self.hls_waiting.get(&stream).cloned().unwrap_or_default()
    }

    /// A publisher (connection `publisher`) claimed `stream`: its players
    /// are told, its recording starts (`mode = "all"`; not for a
    /// rendition, whose track the parent's recording holds), and its
    /// pushes start.
    pub(super) fn publication_started(
        &mut self,
        _now: Instant,
        stream: &Arc<Stream>,
        notice: Notice,
        publisher: ConnId,
    ) {
        self.notify(stream, notice, true);
        if !self.is_rendition(stream, publisher) {
            self.shared.recordings.on_publish(stream);
        }
        let index = self.index;
        self.relays
            .start_pushes(&self.shared, index, stream, publisher);
    }

    /// Ends a publication: the name is released, players are told, the
    /// recording is finished, pushes stop, and the application's
    /// `on_publish_done` callback hears of it.
    pub(super) fn end_publication(&mut self, io: &ConnIo, p: Publication, why: &str) {
        let (frames, bytes) = p.stream.with_state(|s| (s.frames_in, s.bytes_in));
        log::info!(
            "publish stop stream={} conn={} peer={} worker={} frames={frames} bytes={bytes}: {why}",
            p.stream.key,
            io.id,
            io.peer,
            self.index
        );
        if let Some(notice) = self.shared.registry.unpublish(&p.stream, io.id) {
            self.notify(&p.stream, notice, false);
            let wake = super::record::unpublish(&p.stream);
            self.wake_hls(p.stream.id, wake);
        }
        self.end_renditions(&p.stream, io.id);
        for conn in self.relays.stop_pushes(&self.shared, &p.stream, io.id) {
            let why = "the stream ended".to_owned();
            let cmd = RelayCommand::Goodbye { conn, why };
            self.post(self.index, Message::Command(Command::Relay(cmd)));
        }
        self.access
            .notify_hook(&self.shared, "publish_done", &p.stream.key, io, "");
    }

    /// `second_publisher = "replace"`: the publisher `old` lost its stream;
    /// its own worker closes it (this one, or another through its inbox).
    pub(super) fn close_replaced(&mut self, old: &PublisherInfo) {
        self.post(old.worker, Message::Command(Command::Replaced(old.conn_id)));
    }

    /// A player on this worker asked for `key`, which is not live: start
    /// its pull if a rule says so (see [`Tasks::ensure_pull`]).
    pub(crate) fn ensure_pull(&mut self, key: &str) -> bool {
        let index = self.index;
        self.relays.ensure_pull(&self.shared, index, key)
    }

    /// Updates the API's view of connection `id`.
    pub(super) fn set_client_state(&self, id: ConnId, state: ClientState, stream: Option<&str>) {
        let mut map = self.shared.workers[self.index].clients();
        if let Some(info) = map.get_mut(&id) {
            info.state = state;
            if let Some(s) = stream {
                info.stream = Some(s.to_owned());
            }
        }
    }

    /// The API's view of connection `id`: its client is at `peer` (a PROXY
    /// protocol header said so).
    pub(super) fn set_client_peer(&self, id: ConnId, peer: std::net::SocketAddr) {
        if let Some(info) = self.shared.workers[self.index].clients().get_mut(&id) {
            info.peer = peer;
        }
    }

    /// Makes sure the connection's timer fires at `at` or before.
    pub(super) fn arm(&mut self, io: &mut ConnIo, at: Option<Instant>) {
        let Some(at) = at else { return };
        if io.armed.is_some_and(|a| a <= at) {
            return;
        }
        io.armed = Some(at);
        self.timers.push(Reverse((at, io.key, io.id)));
    }

    /// The earliest armed deadline.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// The next timer due at `now`: (when, connection key, connection id).
    pub(super) fn pop_due_timer(&mut self, now: Instant) -> Option<(Instant, ConnKey, ConnId)> {
        if self.next_timer()? > now {
            return None;
        }
        self.timers.pop().map(|Reverse(t)| t)
    }

    /// True when another TLS handshake may start here.
    pub(super) fn tls_handshake_allowed(&self) -> bool {
        self.tls_pending < self.shared.config.max_tls_handshakes_per_worker
    }

    pub(super) fn tls_handshake_started(&mut self) {
        self.tls_pending += 1;
    }

    /// A handshake completed or its connection closed.
    pub(super) fn tls_handshake_ended(&mut self) {
        self.tls_pending = self.tls_pending.saturating_sub(1);
    }

    /// A new loop iteration: its handshake time starts again.
    pub(super) fn new_iteration(&mut self) {
        self.handshake_spent = Duration::ZERO;
    }

    /// True while this iteration has time left for TLS handshakes
    /// ([`HANDSHAKE_TIME_PER_ITERATION`]).
    pub(super) fn handshake_time_left(&self) -> bool {
        self.handshake_spent < HANDSHAKE_TIME_PER_ITERATION
    }

    /// A handshaking connection's read took `d`.
    pub(super) fn handshake_took(&mut self, d: Duration) {
        self.handshake_spent += d;
    }

    /// Reads handshaking connection `key` in a later iteration.
    pub(super) fn handshake_waits(&mut self, key: ConnKey) {
        self.shared
            .stats
            .handshakes_deferred
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.waiting_handshakes.push_back(key);
    }

    pub(super) fn next_waiting_handshake(&mut self) -> Option<ConnKey> {
        self.waiting_handshakes.pop_front()
    }

    pub(super) fn has_waiting_handshakes(&self) -> bool {
        !self.waiting_handshakes.is_empty()
    }

    pub(super) fn tls_pending(&self) -> usize {
        self.tls_pending
    }

    /// Since shutdown began, its flush deadline.
    pub(super) fn shutting_down(&self) -> Option<Instant> {
        self.shutting_down
    }

    pub(super) fn begin_shutdown(&mut self, flush_deadline: Instant) {
        self.shutting_down = Some(flush_deadline);
    }
}
