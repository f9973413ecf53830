//! Relays on the workers: outbound RTMP connections in the same slab as
//! accepted ones, driven by the sans-IO [`ClientSession`] (see
//! [`crate::relay`] for the rules).
//!
//! A *task* is one relay of one stream: a push of `live/cam` to one target,
//! or the pull of `live/cam` from its origin. It lives on one worker and
//! outlives its connections: when one fails, the task waits (backoff
//! doubling from 1 s to 30 s) and connects again, for as long as it is
//! wanted (the stream is live for a push; players remain, or the rule is
//! static, for a pull).
//!
//! ```text
//!  task ──(resolve: helper thread for names)──► Connecting ──writable──► Handshaking
//!       ──connect _result──► Creating ──createStream _result──► Starting
//!       ──Publish.Start / Play.Start──► Active ──close──► task backs off, retries
//! ```
//!
//! A push runs on the publisher's worker and is a subscriber of the stream
//! like a player: frames reach it from the shared wire form (chunk size and
//! message stream id permitting), through the same bounded queue and
//! skip-to-keyframe policy, so a slow target never slows the source. A pull
//! is a publisher like an encoder: what it receives goes through
//! [`Stream::push_from`] and fans out to every worker's players.

use super::queue::Item;
use super::rtmp_conn::Publication;
use super::stats::CloseReason;
use super::stream::{Format, Frame, PublishError, PublisherInfo, Stream, SHARED_MESSAGE_STREAM_ID};
use super::worker::{
    ClientInfo, Conn, ConnCounters, Delivery, ListenerKind, Proto, Shared, Worker,
};
use crate::config::Config;
use crate::protocol::amf::{self, Amf0Value};
use crate::protocol::chunk::{self, Message};
use crate::protocol::client::{ClientConfig, ClientEvent, ClientSession};
use crate::protocol::message::UserControl;
use crate::protocol::session::{is_metadata, MediaKind};
use crate::relay::{
    ClientTls, RelayKind, Rule, Scope, Unavailable, RELAY_MAX_BACKOFF, RELAY_MIN_BACKOFF,
    RELAY_START_TIMEOUT,
};
use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;
use mio::Interest;
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Failed attempts after which a pull that once had its stream gives its
/// waiting players NetStream.Play.StreamNotFound (policy `not_found`):
/// about 1 + 2 + 4 s of retries, enough for an origin process to restart.
const PULL_RETRIES_BEFORE_NOT_FOUND: u32 = 3;

/// A relay that ran this long is healthy: its next failure retries after
/// the shortest backoff again.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// What the API shows of a task.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub id: u64,
    pub rule: u64,
    pub kind: RelayKind,
    /// The local stream (`app/name`).
    pub stream: String,
    /// The peer's URL, stream key redacted.
    pub url: String,
    pub worker: usize,
    /// `resolving`, `connecting`, `handshake`, `publishing`, `playing`,
    /// `waiting` (to retry), `stopping`.
    pub state: &'static str,
    /// Connections made after the first.
    pub reconnects: u64,
    /// Bytes over every connection of this task.
    pub counters: Arc<ConnCounters>,
    pub since: SystemTime,
    pub last_error: Option<String>,
}

/// The relay state every worker and the API share: the rules, which
/// streams are being pulled (one pull per stream per node), and the tasks.
pub struct Relays {
    rules: Mutex<Vec<Arc<Rule>>>,
    next_rule: AtomicU64,
    next_task: AtomicU64,
    /// Stream key → the task pulling it.
    pulls: Mutex<HashMap<String, u64>>,
    tasks: Mutex<BTreeMap<u64, TaskInfo>>,
    pub tls: ClientTls,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Relays {
    pub fn new(config: &Config) -> Result<Self, String> {
        let relays = Self {
            rules: Mutex::new(Vec::new()),
            next_rule: AtomicU64::new(1),
            next_task: AtomicU64::new(1),
            pulls: Mutex::new(HashMap::new()),
            tasks: Mutex::new(BTreeMap::new()),
            tls: ClientTls::new(config.relay_ca.as_deref())?,
        };
        for (kind, spec) in &config.relays {
            relays.add(config.relay_rule(*kind, spec, "config")?);
        }
        Ok(relays)
    }

    /// Adds a rule, giving it its id.
    pub fn add(&self, mut rule: Rule) -> Arc<Rule> {
        rule.id = self.next_rule.fetch_add(1, Ordering::Relaxed);
        let rule = Arc::new(rule);
        locked(&self.rules).push(rule.clone());
        rule
    }

    pub fn remove(&self, id: u64) -> Option<Arc<Rule>> {
        let mut rules = locked(&self.rules);
        let i = rules.iter().position(|r| r.id == id)?;
        Some(rules.remove(i))
    }

    pub fn rules(&self) -> Vec<Arc<Rule>> {
        locked(&self.rules).clone()
    }

    fn rule(&self, id: u64) -> Option<Arc<Rule>> {
        locked(&self.rules).iter().find(|r| r.id == id).cloned()
    }

    fn pushes_for(&self, key: &str) -> Vec<Arc<Rule>> {
        locked(&self.rules)
            .iter()
            .filter(|r| r.kind == RelayKind::Push && r.scope.matches(key))
            .cloned()
            .collect()
    }

    /// The pull rule for `key`: one naming the stream wins over one for its
    /// application.
    pub fn pull_for(&self, key: &str) -> Option<Arc<Rule>> {
        let rules = locked(&self.rules);
        let pulls = rules
            .iter()
            .filter(|r| r.kind == RelayKind::Pull && r.scope.matches(key));
        pulls
            .clone()
            .find(|r| matches!(r.scope, Scope::Stream(_)))
            .or_else(|| pulls.clone().next())
            .cloned()
    }

    /// Every task, for the API.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        locked(&self.tasks).values().cloned().collect()
    }

    fn update(&self, task: u64, f: impl FnOnce(&mut TaskInfo)) {
        if let Some(t) = locked(&self.tasks).get_mut(&task) {
            f(t);
        }
    }
}

/// The worker-side half of a task.
pub(super) struct Task {
    rule: Arc<Rule>,
    /// The local stream key.
    key: String,
    role: Role,
    /// The connection's slab key while one exists.
    conn: Option<usize>,
    retry_at: Option<Instant>,
    failures: u32,
    counters: Arc<ConnCounters>,
    /// A connection has been made before (the next is a reconnect).
    connected_once: bool,
    /// Name resolution is under way on a helper thread.
    resolving: bool,
    /// Has published or played at its peer at least once.
    ever_active: bool,
}

enum Role {
    /// Pushes `stream` while `publisher` (a connection id) publishes it.
    Push { stream: Arc<Stream>, publisher: u64 },
    /// Pulls `key`; `idle_since`: no player since.
    Pull { idle_since: Option<Instant> },
}

/// Where an outbound connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// TCP connect in progress.
    Connecting,
    /// TLS and RTMP handshakes, then `connect`.
    Handshaking,
    /// `createStream` sent.
    Creating,
    /// `publish` / `play` sent on this message stream.
    Starting(u32),
    /// Publishing / playing on this message stream.
    Active(u32),
}

/// An outbound connection's protocol state.
pub(super) struct RelayConn {
    pub task: u64,
    pub push: bool,
    /// Created once the TCP connection is up.
    pub session: Option<ClientSession>,
    pub phase: Phase,
    /// Until when it may take to become active.
    deadline: Instant,
    last_input: Instant,
    /// Publishing / playing since.
    active_since: Option<Instant>,
    /// A pull's local publication (after its first media message).
    pub publication: Option<Publication>,
    /// The name published or played at the peer.
    remote: String,
    /// The local stream key.
    key: String,
    config: ClientConfig,
}

impl RelayConn {
    /// Deadlines: becoming active, and (once active) hearing from the peer.
    pub fn check(&self, now: Instant, silence: Duration) -> Result<(), String> {
        match self.phase {
            Phase::Active(_) => {
                // A pull that hears nothing has lost its origin; a push's
                // target only acknowledges, and a stalled socket is caught by
                // the stall timeout instead.
                if self.publication.is_some()
                    && now.saturating_duration_since(self.last_input) >= silence
                {
                    return Err(format!("nothing from the origin for {silence:?}"));
                }
                Ok(())
            }
            _ if now >= self.deadline => Err(format!(
                "not {} within {RELAY_START_TIMEOUT:?} ({})",
                if self.push { "publishing" } else { "playing" },
                self.phase_name()
            )),
            _ => Ok(()),
        }
    }

    fn phase_name(&self) -> &'static str {
        match self.phase {
            Phase::Connecting => "connecting",
            Phase::Handshaking | Phase::Creating | Phase::Starting(_) => "handshake",
            Phase::Active(_) if self.push => "publishing",
            Phase::Active(_) => "playing",
        }
    }

    /// The queue item for frame `f` on message stream `msid`: the shared wire
    /// form when it fits this connection, else one built for it. Metadata
    /// goes out as `@setDataFrame` (what encoders send, and what ingest
    /// servers keep for their players).
    pub fn frame_item(&self, f: &Arc<Frame>, msid: u32) -> Item {
        let chunk_size = self.config.chunk_size;
        if f.kind == MediaKind::Data && is_metadata(&f.payload) {
            let mut p = BytesMut::with_capacity(16 + f.payload.len());
            amf::encode(&Amf0Value::string("@setDataFrame"), &mut p);
            p.extend_from_slice(&f.payload);
            return Item::OwnFrame(chunk::wire_form(
                chunk_size,
                &Message {
                    csid: f.kind.csid(),
                    timestamp: f.timestamp,
                    type_id: f.kind.type_id(),
                    stream_id: msid,
                    payload: p.freeze(),
                },
            ));
        }
        // The session announced the server's chunk size (`relay_open`), the
        // one every shared wire form is chunked at.
        if msid == SHARED_MESSAGE_STREAM_ID {
            Item::Frame(f.clone(), Format::Rtmp)
        } else {
            Item::OwnFrame(f.rtmp_for(chunk_size, msid))
        }
    }

    /// Ends the relay politely (shutdown, stopped task): unpublish / stop,
    /// then the caller closes after the flush.
    pub fn say_goodbye(&mut self) {
        let (Some(s), Phase::Active(id) | Phase::Starting(id)) = (&mut self.session, self.phase)
        else {
            return;
        };
        if self.push {
            s.send_command(
                0,
                "FCUnpublish",
                &[Amf0Value::Null, Amf0Value::string(self.remote.clone())],
            );
        }
        s.delete_stream(id);
    }
}

/// The name to give the relay's peer in logs.
fn describe(rule: &Rule, key: &str) -> String {
    match rule.kind {
        RelayKind::Push => format!("push {key} -> {}", rule.url.redacted()),
        RelayKind::Pull => format!("pull {key} <- {}", rule.url.redacted()),
    }
}

/// The name at the peer for local stream `key`.
fn remote_name(rule: &Rule, key: &str) -> String {
    let local = key.split_once('/').map_or(key, |(_, n)| n);
    rule.url.stream_name(local).to_owned()
}

/// What one worker posts to another about relays.
#[derive(Debug)]
pub enum RelayCommand {
    /// Start push rule `rule` for the live stream `key` (this worker runs
    /// its publisher).
    StartPush { rule: u64, key: String },
    /// Start static pull rule `rule`.
    StartPull { rule: u64 },
    /// Rule `rule` was deleted: stop its tasks.
    Stop { rule: u64 },
    /// A helper thread resolved task `task`'s host.
    Resolved {
        task: u64,
        addr: Result<SocketAddr, String>,
    },
    /// The pull of `stream` (a stream id) failed and its players waiting
    /// here get NetStream.Play.StreamNotFound.
    PullFailed { stream: u64 },
}

/// Posts `cmd` to worker `w` and wakes it.
pub(super) fn post(shared: &Shared, w: usize, cmd: RelayCommand) {
    let Some(handle) = shared.workers.get(w) else {
        return;
    };
    locked(&handle.inbox).push(Delivery::Relay(cmd));
    if let Err(e) = handle.waker.wake() {
        log::warn!("relay: waking worker {w}: {e}");
    }
}

/// The worker that runs a static pull (spread by rule id).
pub(super) fn static_worker(shared: &Shared, rule: u64) -> usize {
    (rule as usize) % shared.workers.len().max(1)
}

impl Worker {
    /// A stream went live on this worker (its publisher is connection
    /// `publisher`): start its pushes.
    pub(super) fn start_pushes(&mut self, now: Instant, stream: &Arc<Stream>, publisher: u64) {
        for rule in self.shared.relays.pushes_for(&stream.key) {
            self.start_push(now, rule, stream.clone(), publisher);
        }
    }

    fn start_push(&mut self, now: Instant, rule: Arc<Rule>, stream: Arc<Stream>, publisher: u64) {
        let exists = self.relays.values().any(|t| {
            t.rule.id == rule.id
                && matches!(&t.role, Role::Push { stream: s, .. } if s.id == stream.id)
        });
        if exists {
            return;
        }
        let key = stream.key.clone();
        let id = self.new_task(rule, key, Role::Push { stream, publisher });
        self.relay_connect(now, id);
    }

    /// A player on this worker asked for `key`, which is not live: start
    /// its pull if a rule says so and no worker pulls it yet. True when the
    /// stream is (now) being pulled.
    pub(super) fn ensure_pull(&mut self, now: Instant, key: &str) -> bool {
        let Some(rule) = self.shared.relays.pull_for(key) else {
            return false;
        };
        let id = {
            let mut pulls = locked(&self.shared.relays.pulls);
            if pulls.contains_key(key) {
                return true;
            }
            let id = self.shared.relays.next_task.fetch_add(1, Ordering::Relaxed);
            pulls.insert(key.to_owned(), id);
            id
        };
        self.insert_task(id, rule, key.to_owned(), Role::Pull { idle_since: None });
        self.relay_connect(now, id);
        true
    }

    fn new_task(&mut self, rule: Arc<Rule>, key: String, role: Role) -> u64 {
        let id = self.shared.relays.next_task.fetch_add(1, Ordering::Relaxed);
        self.insert_task(id, rule, key, role);
        id
    }

    fn insert_task(&mut self, id: u64, rule: Arc<Rule>, key: String, role: Role) {
        let counters = Arc::new(ConnCounters::default());
        locked(&self.shared.relays.tasks).insert(
            id,
            TaskInfo {
                id,
                rule: rule.id,
                kind: rule.kind,
                stream: key.clone(),
                url: rule.url.redacted(),
                worker: self.index,
                state: "connecting",
                reconnects: 0,
                counters: counters.clone(),
                since: SystemTime::now(),
                last_error: None,
            },
        );
        log::info!(
            "relay start id={id} {} worker={}",
            describe(&rule, &key),
            self.index
        );
        self.relays.insert(
            id,
            Task {
                rule,
                key,
                role,
                conn: None,
                retry_at: None,
                failures: 0,
                counters,
                connected_once: false,
                resolving: false,
                ever_active: false,
            },
        );
    }

    /// Opens task `id`'s connection (resolving its host first if needed).
    fn relay_connect(&mut self, now: Instant, id: u64) {
        let Some(task) = self.relays.get_mut(&id) else {
            return;
        };
        task.retry_at = None;
        if task.conn.is_some() || task.resolving {
            return;
        }
        let url = task.rule.url.clone();
        match url.ip() {
            Some(ip) => self.relay_open(now, id, SocketAddr::new(ip, url.port)),
            None => {
                // getaddrinfo blocks: a helper thread resolves, the answer
                // comes back through the inbox.
                task.resolving = true;
                let (host, port) = (url.host.clone(), url.port);
                let shared = self.shared.clone();
                let worker = self.index;
                self.shared.relays.update(id, |t| t.state = "resolving");
                let spawned = std::thread::Builder::new()
                    .name("sluice-resolve".into())
                    .spawn(move || {
                        let addr = (host.as_str(), port)
                            .to_socket_addrs()
                            .map_err(|e| format!("resolving {host}: {e}"))
                            .and_then(|mut a| {
                                a.next().ok_or_else(|| format!("{host}: no address"))
                            });
                        post(&shared, worker, RelayCommand::Resolved { task: id, addr });
                    });
                if let Err(e) = spawned {
                    self.relay_failed(now, id, &format!("resolver thread: {e}"));
                }
            }
        }
    }

    fn relay_open(&mut self, now: Instant, id: u64, addr: SocketAddr) {
        let Some(task) = self.relays.get(&id) else {
            return;
        };
        let rule = task.rule.clone();
        let key = task.key.clone();
        let counters = task.counters.clone();
        let reconnect = task.connected_once;
        if self.conns.len() >= self.shared.config.max_connections_per_worker {
            return self.relay_failed(now, id, "this worker holds its maximum of connections");
        }
        let tls = if rule.url.tls {
            let name = match rustls::pki_types::ServerName::try_from(rule.url.host.clone()) {
                Ok(n) => n,
                Err(e) => return self.relay_failed(now, id, &format!("TLS server name: {e}")),
            };
            match rustls::ClientConnection::new(self.shared.relays.tls.config(rule.insecure), name)
            {
                Ok(mut c) => {
                    c.set_buffer_limit(Some(super::tls::TLS_BUFFER_LIMIT));
                    Some(Box::new(rustls::Connection::Client(c)))
                }
                Err(e) => return self.relay_failed(now, id, &format!("TLS: {e}")),
            }
        } else {
            None
        };
        let mut socket = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => return self.relay_failed(now, id, &format!("connect {addr}: {e}")),
        };
        let entry = self.conns.vacant_entry();
        let k = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut socket,
            mio::Token(k),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.relay_failed(now, id, &format!("register: {e}"));
        }
        let push = rule.kind == RelayKind::Push;
        let remote = remote_name(&rule, &key);
        let mut config = ClientConfig::new(rule.url.app.clone(), rule.url.tc_url());
        // The shared wire forms are chunked at the server's chunk size:
        // announcing the same lets a push send them as they are.
        config.chunk_size = self.shared.config.chunk_size;
        // Enhanced RTMP: a forwarder takes every codec ("*") and every
        // track, as it passes them on unchanged.
        config.fourcc_list = vec!["*".to_owned()];
        config.caps_ex = Some(crate::protocol::session::caps_ex::MULTITRACK);
        let conn_id = self.shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let relay = RelayConn {
            task: id,
            push,
            session: None,
            phase: Phase::Connecting,
            deadline: now + RELAY_START_TIMEOUT,
            last_input: now,
            active_since: None,
            publication: None,
            remote,
            key: key.clone(),
            config,
        };
        let conn = Conn::new(
            conn_id,
            socket,
            addr,
            ListenerKind::Relay,
            Proto::Relay(Box::new(relay)),
            tls,
            counters,
        );
        let handle = &self.shared.workers[self.index];
        handle.connections.fetch_add(1, Ordering::Relaxed);
        self.shared.stats.opened(conn.protocol());
        locked(&handle.clients).insert(
            conn_id,
            ClientInfo {
                id: conn_id,
                peer: addr,
                protocol: conn.protocol(),
                state: if push { "relay-push" } else { "relay-pull" },
                stream: Some(key),
                since: SystemTime::now(),
                counters: conn.counters.clone(),
            },
        );
        self.ids.insert(conn_id, k);
        entry.insert(conn);
        if let Some(task) = self.relays.get_mut(&id) {
            task.conn = Some(k);
            task.connected_once = true;
        }
        self.shared.relays.update(id, |t| {
            t.state = "connecting";
            if reconnect {
                t.reconnects += 1;
            }
        });
        log::debug!(
            "relay id={id} conn={conn_id}: connecting to {addr} worker={}",
            self.index
        );
    }

    /// A connecting socket became writable: connected, or failed.
    pub(super) fn relay_connected(&mut self, k: usize) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let Proto::Relay(r) = &mut conn.proto else {
            return;
        };
        if r.phase != Phase::Connecting {
            return;
        }
        // mio: a writable connecting socket has connected when it has a peer
        // address and no pending error.
        match conn.socket.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                return self.close(k, CloseReason::Peer, &format!("connect: {e}"));
            }
        }
        if let Err(e) = conn.socket.peer_addr() {
            if e.kind() == std::io::ErrorKind::NotConnected {
                return; // not yet
            }
            return self.close(k, CloseReason::Peer, &format!("connect: {e}"));
        }
        if let Err(e) = conn.socket.set_nodelay(true) {
            log::debug!("relay conn={}: TCP_NODELAY: {e}", conn.id);
        }
        let seed = conn.id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        r.session = Some(ClientSession::new(r.config.clone(), seed));
        r.phase = Phase::Handshaking;
        let task = r.task;
        conn.pull_transmit();
        self.shared.relays.update(task, |t| t.state = "handshake");
        self.mark_dirty(k);
    }

    /// Feeds what an outbound connection read to its client session.
    pub(super) fn relay_input(&mut self, now: Instant, k: usize) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let Proto::Relay(r) = &mut conn.proto else {
            return;
        };
        r.last_input = now;
        let Some(session) = r.session.as_mut() else {
            conn.read_buf.clear();
            return;
        };
        let result = session.handle_input(&mut conn.read_buf);
        let mut events = Vec::new();
        while let Some(ev) = session.poll_event() {
            events.push(ev);
        }
        conn.pull_transmit();
        for ev in events {
            if let Err(why) = self.relay_event(now, k, ev) {
                return self.close(k, CloseReason::Protocol, &why);
            }
            if !self.conns.contains(k) {
                return;
            }
        }
        if let Some(c) = self.conns.get_mut(k) {
            c.pull_transmit();
        }
        self.mark_dirty(k);
        if let Err(e) = result {
            self.close(k, CloseReason::Protocol, &e.to_string());
        }
    }

    fn relay_event(&mut self, now: Instant, k: usize, ev: ClientEvent) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(k) else {
            return Ok(());
        };
        let conn_id = conn.id;
        let Proto::Relay(r) = &mut conn.proto else {
            return Ok(());
        };
        let Some(s) = r.session.as_mut() else {
            return Ok(());
        };
        match ev {
            ClientEvent::Connected => {
                if r.push {
                    // What encoders send: some ingest servers expect it.
                    let name = Amf0Value::string(r.remote.clone());
                    s.send_command(0, "releaseStream", &[Amf0Value::Null, name.clone()]);
                    s.send_command(0, "FCPublish", &[Amf0Value::Null, name]);
                }
                s.create_stream();
                r.phase = Phase::Creating;
            }
            ClientEvent::StreamCreated { stream_id } if r.phase == Phase::Creating => {
                if r.push {
                    s.publish(stream_id, &r.remote);
                } else {
                    s.play(stream_id, &r.remote);
                }
                r.phase = Phase::Starting(stream_id);
            }
            ClientEvent::Status { code, level, .. } => {
                return self.relay_status(now, k, &level, &code)
            }
            // An `_error` to `connect` (a refused app or key): this attempt
            // failed. Later ones may answer releaseStream / FCPublish, which
            // some servers do not implement (as ffmpeg, carry on); a refused
            // createStream runs into the start deadline, a refused publish
            // or play is an error onStatus.
            ClientEvent::Command { name, args }
                if name == "_error" && r.phase == Phase::Handshaking =>
            {
                let why = args
                    .get(1)
                    .and_then(|i| i.get("code").or_else(|| i.get("description")))
                    .and_then(|c| c.as_str())
                    .unwrap_or("no reason given")
                    .to_owned();
                return Err(format!("the peer refused: {why}"));
            }
            ClientEvent::Media {
                kind,
                timestamp,
                payload,
                ..
            } if !r.push => {
                if kind == MediaKind::Data && is_sample_access(&payload) {
                    // The origin's own notice to its players; ours send theirs.
                    return Ok(());
                }
                self.pulled_media(now, k, conn_id, kind, timestamp, payload);
            }
            ClientEvent::UserControl(UserControl::StreamEof(_)) if !r.push => {
                self.end_pulled_publication(k, "the origin's stream ended");
            }
            _ => {}
        }
        Ok(())
    }

    fn relay_status(
        &mut self,
        now: Instant,
        k: usize,
        level: &str,
        code: &str,
    ) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(k) else {
            return Ok(());
        };
        let Proto::Relay(r) = &mut conn.proto else {
            return Ok(());
        };
        let task = r.task;
        match (code, r.phase) {
            ("NetStream.Publish.Start", Phase::Starting(msid)) if r.push => {
                r.phase = Phase::Active(msid);
                r.active_since = Some(now);
                self.relay_active(k, task, "publishing");
                self.start_push_subscription(k, task, msid);
            }
            ("NetStream.Play.Start" | "NetStream.Play.Reset", Phase::Starting(msid)) if !r.push => {
                r.phase = Phase::Active(msid);
                r.active_since = Some(now);
                self.relay_active(k, task, "playing");
            }
            ("NetStream.Play.UnpublishNotify", _) if !r.push => {
                self.end_pulled_publication(k, "the origin's stream was unpublished");
            }
            (_, _) if level == "error" => return Err(format!("the peer answered {code}")),
            _ => {}
        }
        Ok(())
    }

    fn relay_active(&mut self, k: usize, task: u64, state: &'static str) {
        if let Some(t) = self.relays.get_mut(&task) {
            t.ever_active = true;
        }
        self.shared.relays.update(task, |t| {
            t.state = state;
            t.last_error = None;
        });
        self.set_client_state(
            k,
            if state == "publishing" {
                "relay-push"
            } else {
                "relay-pull"
            },
            None,
        );
        if let Some(c) = self.conns.get(k) {
            log::info!(
                "relay {state} id={task} conn={} peer={} worker={}",
                c.id,
                c.peer,
                self.index
            );
        }
    }

    /// A push is publishing at its target: it joins the stream like a
    /// player, from the latest headers and the cached GOP (a keyframe).
    fn start_push_subscription(&mut self, k: usize, task: u64, msid: u32) {
        let Some(Role::Push { stream, .. }) = self.relays.get(&task).map(|t| &t.role) else {
            return;
        };
        let key = stream.key.clone();
        self.start_player(k, &key, msid, Format::Rtmp);
    }

    /// A media message from the origin: published locally (claiming the
    /// name at the first one), then fanned out like an encoder's.
    fn pulled_media(
        &mut self,
        now: Instant,
        k: usize,
        conn_id: u64,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    ) {
        let index = self.index;
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let peer = conn.peer;
        let Proto::Relay(r) = &mut conn.proto else {
            return;
        };
        let stream = match &r.publication {
            Some(p) => p.stream.clone(),
            None => {
                let info = PublisherInfo {
                    conn_id,
                    worker: index,
                    peer,
                    protocol: "pull",
                    since: SystemTime::now(),
                };
                match self.shared.registry.publish(&r.key, info) {
                    Ok((stream, notice)) => {
                        r.publication = Some(Publication {
                            msid: 0,
                            stream: stream.clone(),
                        });
                        log::info!(
                            "publish start stream={} conn={conn_id} peer={peer} worker={index} protocol=pull",
                            r.key
                        );
                        self.notify(&stream, notice, true);
                        self.start_pushes(now, &stream, conn_id);
                        stream
                    }
                    Err(PublishError::AlreadyPublishing { peer: by }) => {
                        let task = r.task;
                        let why = format!("{} is published here by {by}; not pulling it", r.key);
                        self.stop_task(task, &why);
                        return;
                    }
                }
            }
        };
        if let Some((frame, interest)) = stream.push_from(conn_id, kind, timestamp, payload) {
            self.fan_out(interest, frame, stream.id);
        }
    }

    /// The origin's stream ended (the pull stays connected for its return).
    fn end_pulled_publication(&mut self, k: usize, why: &str) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let (id, peer) = (conn.id, conn.peer);
        let Proto::Relay(r) = &mut conn.proto else {
            return;
        };
        if let Some(p) = r.publication.take() {
            self.end_publication(id, peer, p, why);
        }
    }

    /// An outbound connection closed (`conn` is already out of the slab).
    pub(super) fn relay_closed(&mut self, now: Instant, conn: &mut Conn, why: &str) {
        let Proto::Relay(r) = &mut conn.proto else {
            return;
        };
        if let Some(p) = r.publication.take() {
            self.end_publication(conn.id, conn.peer, p, why);
        }
        let id = r.task;
        let was_active = matches!(r.phase, Phase::Active(_));
        let healthy = r
            .active_since
            .is_some_and(|at| now.saturating_duration_since(at) >= HEALTHY_AFTER);
        let Some(task) = self.relays.get_mut(&id) else {
            return; // stopped on purpose
        };
        task.conn = None;
        if healthy {
            // It ran for a while: retry after the shortest backoff again.
            task.failures = 0;
        }
        if was_active {
            log::warn!(
                "relay lost id={id} {}: {why}",
                describe(&task.rule, &task.key)
            );
        }
        self.relay_failed(now, id, why);
    }

    /// Task `id`'s attempt failed: retry after a backoff, or (a pull whose
    /// players should not wait) tell its players and stop.
    fn relay_failed(&mut self, now: Instant, id: u64, why: &str) {
        let Some(task) = self.relays.get_mut(&id) else {
            return;
        };
        task.conn = None;
        task.resolving = false;
        // A pull that never got its stream fails its players at once; one
        // that had it (an origin restarting, a network blip) retries a few
        // times first, its players waiting after UnpublishNotify.
        let stop_pull = matches!(task.role, Role::Pull { .. })
            && task.rule.on_unavailable == Unavailable::NotFound
            && !task.rule.always
            && (!task.ever_active || task.failures >= PULL_RETRIES_BEFORE_NOT_FOUND);
        if stop_pull {
            let key = task.key.clone();
            log::warn!(
                "relay failed id={id} {}: {why}; its players get StreamNotFound",
                describe(&task.rule, &key)
            );
            if let Some(stream) = self.shared.registry.get(&key) {
                let interest = stream.with_state(|st| st.interest());
                for w in 0..self.shared.workers.len() {
                    if interest & (1 << w) != 0 {
                        if w == self.index {
                            self.pull_failed_here(stream.id);
                        } else {
                            post(
                                &self.shared,
                                w,
                                RelayCommand::PullFailed { stream: stream.id },
                            );
                        }
                    }
                }
            }
            self.stop_task(id, why);
            return;
        }
        task.failures += 1;
        let shift = task.failures.saturating_sub(1).min(8);
        let delay = (RELAY_MIN_BACKOFF * (1 << shift)).min(RELAY_MAX_BACKOFF);
        task.retry_at = Some(now + delay);
        log::warn!(
            "relay failed id={id} {}: {why}; retrying in {delay:?}",
            describe(&task.rule, &task.key)
        );
        let why = why.to_owned();
        self.shared.relays.update(id, |t| {
            t.state = "waiting";
            t.last_error = Some(why);
        });
    }

    /// Stops task `id` for good: its connection says goodbye and closes.
    pub(super) fn stop_task(&mut self, id: u64, why: &str) {
        let Some(task) = self.relays.remove(&id) else {
            return;
        };
        locked(&self.shared.relays.tasks).remove(&id);
        if matches!(task.role, Role::Pull { .. }) {
            let mut pulls = locked(&self.shared.relays.pulls);
            if pulls.get(&task.key) == Some(&id) {
                pulls.remove(&task.key);
            }
        }
        log::info!(
            "relay stop id={id} {}: {why}",
            describe(&task.rule, &task.key)
        );
        let Some(k) = task.conn else { return };
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        if let Proto::Relay(r) = &mut conn.proto {
            r.say_goodbye();
        }
        conn.pull_transmit();
        conn.close_after_flush = Some((CloseReason::Done, why.to_owned()));
        // A pull's local publication ends now, not when the goodbye is out.
        self.end_pulled_publication(k, why);
        self.mark_dirty(k);
    }

    /// The publication by connection `publisher` of `stream` ended: its
    /// pushes stop.
    pub(super) fn stop_pushes(&mut self, stream: &Stream, publisher: u64) {
        let ids: Vec<u64> = self
            .relays
            .iter()
            .filter(|(_, t)| {
                matches!(&t.role, Role::Push { stream: s, publisher: p } if s.id == stream.id && *p == publisher)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.stop_task(id, "the stream ended");
        }
    }

    /// Players here waiting for `stream` learn its origin is unreachable.
    pub(super) fn pull_failed_here(&mut self, stream: u64) {
        let Some(tokens) = self.locals.get(&stream).cloned() else {
            return;
        };
        for k in tokens {
            let Some(conn) = self.conns.get_mut(k) else {
                continue;
            };
            let Some(sub) = conn.subscriptions.iter().find(|s| s.stream.id == stream) else {
                continue;
            };
            if sub.relay || sub.stream.with_state(|st| st.publisher().is_some()) {
                continue;
            }
            let msid = sub.msid;
            match &mut conn.proto {
                Proto::Rtmp(r) => {
                    r.session.notify_not_found(msid);
                    conn.pull_transmit();
                    self.stop_subscription(k, msid, "the origin is unreachable");
                }
                Proto::Http(h) => {
                    h.end_stream(&mut conn.out);
                    conn.close_after_flush =
                        Some((CloseReason::StreamEnded, "the origin is unreachable".into()));
                }
                Proto::Relay(_) => {}
            }
            self.mark_dirty(k);
        }
    }

    /// Relay commands from other workers and the API.
    pub(super) fn relay_command(&mut self, now: Instant, cmd: &RelayCommand) {
        match cmd {
            RelayCommand::StartPush { rule, key } => {
                let (Some(rule), Some(stream)) = (
                    self.shared.relays.rule(*rule),
                    self.shared.registry.get(key),
                ) else {
                    return;
                };
                let publisher = stream.with_state(|st| {
                    st.publisher()
                        .filter(|p| p.worker == self.index)
                        .map(|p| p.conn_id)
                });
                if let Some(p) = publisher {
                    self.start_push(now, rule, stream, p);
                }
            }
            RelayCommand::StartPull { rule } => {
                if let Some(key) = self
                    .shared
                    .relays
                    .rule(*rule)
                    .and_then(|r| r.static_key().map(str::to_owned))
                {
                    self.ensure_pull(now, &key);
                }
            }
            RelayCommand::Stop { rule } => {
                let ids: Vec<u64> = self
                    .relays
                    .iter()
                    .filter(|(_, t)| t.rule.id == *rule)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.stop_task(id, "its rule was deleted");
                }
            }
            RelayCommand::Resolved { task, addr } => {
                let Some(t) = self.relays.get_mut(task) else {
                    return;
                };
                t.resolving = false;
                match addr {
                    Ok(a) => self.relay_open(now, *task, *a),
                    Err(e) => self.relay_failed(now, *task, e),
                }
            }
            RelayCommand::PullFailed { stream } => self.pull_failed_here(*stream),
        }
    }

    /// Once per tick: retries that are due, pulls nobody watches, and (at
    /// the first tick) this worker's share of the static pulls.
    pub(super) fn relay_tick(&mut self, now: Instant) {
        if self.shutting_down.is_some() {
            // No new connections; those open say goodbye (begin_shutdown).
            self.relays.clear();
            return;
        }
        if !self.relays_started {
            self.relays_started = true;
            for rule in self.shared.relays.rules() {
                if rule.static_key().is_some() && static_worker(&self.shared, rule.id) == self.index
                {
                    self.relay_command(now, &RelayCommand::StartPull { rule: rule.id });
                }
            }
        }
        let mut due = Vec::new();
        let mut idle = Vec::new();
        for (id, t) in self.relays.iter_mut() {
            if t.retry_at.is_some_and(|at| now >= at) {
                due.push(*id);
            }
            if let Role::Pull { idle_since } = &mut t.role {
                if t.rule.always {
                    continue;
                }
                let viewers = self
                    .shared
                    .registry
                    .get(&t.key)
                    .map_or(0, |s| s.with_state(|st| st.viewers()));
                if viewers > 0 {
                    *idle_since = None;
                } else if now.saturating_duration_since(*idle_since.get_or_insert(now))
                    >= t.rule.idle_timeout
                {
                    idle.push(*id);
                }
            }
        }
        for id in idle {
            // Re-checked under the pulls lock: a player that joined since
            // (and so found this pull claimed) keeps it running.
            // The claim goes in the same critical section, so a player who
            // finds it claimed after this check is sure to be served.
            let key = self
                .relays
                .get(&id)
                .map(|t| t.key.clone())
                .unwrap_or_default();
            let mut pulls = locked(&self.shared.relays.pulls);
            let viewers = self
                .shared
                .registry
                .get(&key)
                .map_or(0, |s| s.with_state(|st| st.viewers()));
            if viewers == 0 && pulls.get(&key) == Some(&id) {
                pulls.remove(&key);
            }
            drop(pulls);
            if viewers == 0 {
                let timeout = self.relays.get(&id).map(|t| t.rule.idle_timeout);
                self.stop_task(
                    id,
                    &format!("no player for {:?}", timeout.unwrap_or_default()),
                );
            }
        }
        for id in due {
            self.relay_connect(now, id);
        }
    }
}

/// `|RtmpSampleAccess`: a server's notice to Flash players.
fn is_sample_access(payload: &[u8]) -> bool {
    const NAME: &[u8] = b"|RtmpSampleAccess";
    payload.len() >= 3 + NAME.len() && payload[0] == 0x02 && &payload[3..3 + NAME.len()] == NAME
}
