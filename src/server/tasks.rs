//! Relay tasks on a worker. A *task* is one relay of one stream: a push of
//! `live/cam` to one target, or the pull of `live/cam` from its origin. It
//! lives on one worker and outlives its connections: when one fails, the
//! task waits (backoff doubling from 1 s to 30 s) and connects again, for as
//! long as it is wanted (the stream is live for a push; players remain, or
//! the rule is static, for a pull). Its connection is a `RelayConn`
//! (`relay_conn.rs`) in the worker's slab; the worker opens it from the
//! [`Outbound`] a task hands over.

use super::base::{locked, ConnCounters, ConnId, TaskId};
use super::relays::{static_worker, TaskInfo, TaskState};
use super::shared::{ClientState, RelayCommand, Shared};
use super::stream::Stream;
use crate::protocol::client::ClientConfig;
use crate::relay::{
    RelayKind, Rule, RuleId, Unavailable, RELAY_MAX_BACKOFF, RELAY_MIN_BACKOFF, RELAY_START_TIMEOUT,
};
use mio::net::TcpStream;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Failed attempts after which a pull that once had its stream gives its
/// waiting players NetStream.Play.StreamNotFound (policy `not_found`):
/// about 1 + 2 + 4 s of retries, enough for an origin process to restart.
const PULL_RETRIES_BEFORE_NOT_FOUND: u32 = 3;

/// A relay that ran this long is healthy: its next failure retries after
/// the shortest backoff again.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

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

/// True while stream `key` has players, or HLS viewers (see
/// `StreamHls::watched`): a pull keeps going for either.
fn watched(shared: &Shared, key: &str, now: Instant, idle: Duration) -> bool {
    shared.registry.get(key).is_some_and(|s| {
        s.with_state(|st| st.viewers()) > 0 || s.hls().is_some_and(|h| h.watched(now, idle))
    })
}

/// What a task relays.
enum TaskRole {
    /// Pushes `stream` while `publisher` publishes it.
    Push {
        stream: Arc<Stream>,
        publisher: ConnId,
    },
    /// Pulls the task's key; `idle_since`: no player since.
    Pull { idle_since: Option<Instant> },
}

/// A task's connection, or why it has none.
enum Link {
    /// No connection: to open at `retry_at` (None: as soon as the worker
    /// gets to it).
    Waiting { retry_at: Option<Instant> },
    /// Name resolution is under way on a helper thread.
    Resolving,
    /// This connection serves the task.
    Open { conn: ConnId },
}

/// The worker-side half of a task.
struct Task {
    rule: Arc<Rule>,
    /// The local stream key.
    key: String,
    role: TaskRole,
    link: Link,
    failures: u32,
    counters: Arc<ConnCounters>,
    /// A connection has been made before (the next is a reconnect).
    connected_once: bool,
    /// Has published or played at its peer at least once.
    ever_active: bool,
}

/// An outbound connection ready for the worker's slab: the socket
/// connecting, and what its `RelayConn` starts with.
pub(super) struct Outbound {
    pub socket: TcpStream,
    pub addr: SocketAddr,
    pub tls: Option<Box<rustls::Connection>>,
    pub counters: Arc<ConnCounters>,
    pub task: TaskId,
    /// How the API lists the connection.
    pub state: ClientState,
    /// Pushing (else pulling).
    pub push: bool,
    /// The local stream key.
    pub key: String,
    /// The name published or played at the peer.
    pub remote: String,
    /// The client session's settings.
    pub config: ClientConfig,
    /// Until when it may take to become active.
    pub deadline: Instant,
    /// A successor's pull from its predecessor (see `Rule::handover`).
    pub handover: bool,
}

/// The relay tasks one worker runs.
#[derive(Default)]
pub(super) struct Tasks {
    tasks: HashMap<TaskId, Task>,
    /// Tasks whose connection the worker opens once the current handler
    /// returns (it owns the slab).
    to_connect: Vec<TaskId>,
    /// This worker's share of the static pulls has been started.
    static_started: bool,
}

impl Tasks {
    /// A stream went live on this worker (its publisher is connection
    /// `publisher`): start its pushes.
    pub(super) fn start_pushes(
        &mut self,
        shared: &Shared,
        worker: usize,
        stream: &Arc<Stream>,
        publisher: ConnId,
    ) {
        for rule in shared.relays.pushes_for(&stream.key) {
            self.start_push(shared, worker, rule, stream.clone(), publisher);
        }
    }

    fn start_push(
        &mut self,
        shared: &Shared,
        worker: usize,
        rule: Arc<Rule>,
        stream: Arc<Stream>,
        publisher: ConnId,
    ) {
        let exists = self.tasks.values().any(|t| {
            t.rule.id == rule.id
                && matches!(&t.role, TaskRole::Push { stream: s, .. } if s.id == stream.id)
        });
        if exists {
            return;
        }
        let id = TaskId(shared.relays.next_task.fetch_add(1, Ordering::Relaxed));
        let key = stream.key.clone();
        self.insert(
            shared,
            worker,
            id,
            rule,
            key,
            TaskRole::Push { stream, publisher },
        );
    }

    /// A player on this worker asked for `key`, which is not live: start
    /// its pull if a rule says so and no worker pulls it yet. True when the
    /// stream is (now) being pulled.
    pub(super) fn ensure_pull(&mut self, shared: &Shared, worker: usize, key: &str) -> bool {
        let Some(rule) = shared.relays.pull_for(key) else {
            return false;
        };
        let id = {
            let mut pulls = locked(&shared.relays.pulls);
            if pulls.contains_key(key) {
                return true;
            }
            let id = TaskId(shared.relays.next_task.fetch_add(1, Ordering::Relaxed));
            pulls.insert(key.to_owned(), id);
            id
        };
        self.insert(
            shared,
            worker,
            id,
            rule,
            key.to_owned(),
            TaskRole::Pull { idle_since: None },
        );
        true
    }

    fn insert(
        &mut self,
        shared: &Shared,
        worker: usize,
        id: TaskId,
        rule: Arc<Rule>,
        key: String,
        role: TaskRole,
    ) {
        let counters = Arc::new(ConnCounters::default());
        locked(&shared.relays.tasks).insert(
            id,
            TaskInfo {
                id,
                rule: rule.id,
                kind: rule.kind,
                stream: key.clone(),
                url: rule.url.redacted(),
                worker,
                state: TaskState::Connecting,
                reconnects: 0,
                counters: counters.clone(),
                since: SystemTime::now(),
                last_error: None,
            },
        );
        log::info!(
            "relay start id={id} {} worker={worker}",
            describe(&rule, &key)
        );
        self.tasks.insert(
            id,
            Task {
                rule,
                key,
                role,
                link: Link::Waiting { retry_at: None },
                failures: 0,
                counters,
                connected_once: false,
                ever_active: false,
            },
        );
        self.to_connect.push(id);
    }

    /// Tasks whose connection should be opened now.
    pub(super) fn take_to_connect(&mut self) -> Vec<TaskId> {
        std::mem::take(&mut self.to_connect)
    }

    /// Opens task `id`'s connection, or has its host resolved first (on a
    /// helper thread: getaddrinfo blocks; the answer comes back as
    /// [`RelayCommand::Resolved`]). `conns`: connections the worker holds.
    pub(super) fn dial(
        &mut self,
        shared: &Arc<Shared>,
        worker: usize,
        now: Instant,
        id: TaskId,
        conns: usize,
    ) -> Option<Outbound> {
        let task = self.tasks.get_mut(&id)?;
        if !matches!(task.link, Link::Waiting { .. }) {
            return None;
        }
        let url = task.rule.url.clone();
        if let Some(ip) = url.ip() {
            return self.open(
                shared,
                worker,
                now,
                id,
                SocketAddr::new(ip, url.port),
                conns,
            );
        }
        task.link = Link::Resolving;
        shared.relays.set_state(id, TaskState::Resolving);
        let (host, port) = (url.host.clone(), url.port);
        let for_thread = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("sluice-resolve".into())
            .spawn(move || {
                let addr = (host.as_str(), port)
                    .to_socket_addrs()
                    .map_err(|e| format!("resolving {host}: {e}"))
                    .and_then(|mut a| a.next().ok_or_else(|| format!("{host}: no address")));
                for_thread.post_relay(worker, RelayCommand::Resolved { task: id, addr });
            });
        if let Err(e) = spawned {
            self.failed(shared, worker, now, id, &format!("resolver thread: {e}"));
        }
        None
    }

    /// A helper thread resolved task `id`'s host.
    pub(super) fn resolved(
        &mut self,
        shared: &Arc<Shared>,
        worker: usize,
        now: Instant,
        id: TaskId,
        addr: &Result<SocketAddr, String>,
        conns: usize,
    ) -> Option<Outbound> {
        let task = self.tasks.get_mut(&id)?;
        if !matches!(task.link, Link::Resolving) {
            return None;
        }
        task.link = Link::Waiting { retry_at: None };
        match addr {
            Ok(a) => self.open(shared, worker, now, id, *a, conns),
            Err(e) => {
                self.failed(shared, worker, now, id, e);
                None
            }
        }
    }

    fn open(
        &mut self,
        shared: &Arc<Shared>,
        worker: usize,
        now: Instant,
        id: TaskId,
        addr: SocketAddr,
        conns: usize,
    ) -> Option<Outbound> {
        let task = self.tasks.get(&id)?;
        let rule = task.rule.clone();
        let key = task.key.clone();
        let counters = task.counters.clone();
        if conns >= shared.config.max_connections_per_worker {
            self.failed(
                shared,
                worker,
                now,
                id,
                "this worker holds its maximum of connections",
            );
            return None;
        }
        let tls = if rule.url.tls {
            let name = match rustls::pki_types::ServerName::try_from(rule.url.host.clone()) {
                Ok(n) => n,
                Err(e) => {
                    self.failed(shared, worker, now, id, &format!("TLS server name: {e}"));
                    return None;
                }
            };
            match rustls::ClientConnection::new(shared.relays.tls.config(rule.insecure), name) {
                Ok(mut c) => {
                    c.set_buffer_limit(Some(super::tls::TLS_BUFFER_LIMIT));
                    Some(Box::new(rustls::Connection::Client(c)))
                }
                Err(e) => {
                    self.failed(shared, worker, now, id, &format!("TLS: {e}"));
                    return None;
                }
            }
        } else {
            None
        };
        let socket = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                self.failed(shared, worker, now, id, &format!("connect {addr}: {e}"));
                return None;
            }
        };
        let push = rule.kind == RelayKind::Push;
        // The handover's rule covers every application: each stream is
        // played in its own.
        let url = match rule.is_handover() {
            true => rule
                .url
                .in_app(key.split_once('/').map_or("", |(app, _)| app)),
            false => rule.url.clone(),
        };
        let mut config = ClientConfig::new(url.app.clone(), url.tc_url());
        // The shared wire forms are chunked at the server's chunk size:
        // announcing the same lets a push send them as they are.
        config.chunk_size = shared.config.chunk_size;
        // Enhanced RTMP: a forwarder takes every codec ("*") and every
        // track, as it passes them on unchanged.
        config.fourcc_list = vec!["*".to_owned()];
        config.caps_ex = Some(crate::protocol::session::caps_ex::MULTITRACK);
        Some(Outbound {
            socket,
            addr,
            tls,
            counters,
            task: id,
            state: if push {
                ClientState::RelayPush
            } else {
                ClientState::RelayPull
            },
            push,
            remote: remote_name(&rule, &key),
            key,
            config,
            deadline: now + RELAY_START_TIMEOUT,
            handover: rule.is_handover(),
        })
    }

    /// The worker put task `id`'s connection in its slab.
    pub(super) fn opened(
        &mut self,
        shared: &Shared,
        worker: usize,
        id: TaskId,
        conn: ConnId,
        addr: SocketAddr,
    ) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let reconnect = task.connected_once;
        task.link = Link::Open { conn };
        task.connected_once = true;
        shared.relays.update(id, |t| {
            t.state = TaskState::Connecting;
            if reconnect {
                t.reconnects += 1;
            }
        });
        log::debug!("relay id={id} conn={conn}: connecting to {addr} worker={worker}");
    }

    /// Task `id` is publishing or playing at its peer.
    pub(super) fn active(&mut self, shared: &Shared, id: TaskId, state: TaskState) {
        if let Some(t) = self.tasks.get_mut(&id) {
            t.ever_active = true;
        }
        shared.relays.update(id, |t| {
            t.state = state;
            t.last_error = None;
        });
    }

    /// The stream a push task pushes.
    pub(super) fn pushed_stream(&self, id: TaskId) -> Option<&Arc<Stream>> {
        match &self.tasks.get(&id)?.role {
            TaskRole::Push { stream, .. } => Some(stream),
            TaskRole::Pull { .. } => None,
        }
    }

    /// Task `id`'s connection closed after `active_for` publishing or
    /// playing (None: it never got there).
    pub(super) fn conn_closed(
        &mut self,
        shared: &Shared,
        worker: usize,
        now: Instant,
        id: TaskId,
        active_for: Option<Duration>,
        why: &str,
    ) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return; // stopped on purpose
        };
        task.link = Link::Waiting { retry_at: None };
        if active_for.is_some_and(|d| d >= HEALTHY_AFTER) {
            // It ran for a while: retry after the shortest backoff again.
            task.failures = 0;
        }
        if active_for.is_some() {
            log::warn!(
                "relay lost id={id} {}: {why}",
                describe(&task.rule, &task.key)
            );
        }
        self.failed(shared, worker, now, id, why);
    }

    /// Task `id`'s attempt failed: retry after a backoff, or (a pull whose
    /// players should not wait) tell its players and stop.
    fn failed(&mut self, shared: &Shared, worker: usize, now: Instant, id: TaskId, why: &str) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        // A pull that never got its stream fails its players at once; one
        // that had it (an origin restarting, a network blip) retries a few
        // times first, its players waiting after UnpublishNotify.
        let stop_pull = matches!(task.role, TaskRole::Pull { .. })
            && task.rule.on_unavailable == Unavailable::NotFound
            && !task.rule.always
            && (!task.ever_active || task.failures >= PULL_RETRIES_BEFORE_NOT_FOUND);
        if stop_pull {
            let key = task.key.clone();
            log::warn!(
                "relay failed id={id} {}: {why}; its players get StreamNotFound",
                describe(&task.rule, &key)
            );
            if let Some(stream) = shared.registry.get(&key) {
                let interest = stream.with_state(|st| st.interest());
                for w in super::stream::workers_in(interest) {
                    shared.post_relay(w, RelayCommand::PullFailed { stream: stream.id });
                }
            }
            self.stop(shared, id, why);
            return;
        }
        task.failures += 1;
        let shift = task.failures.saturating_sub(1).min(8);
        let delay = (RELAY_MIN_BACKOFF * (1 << shift)).min(RELAY_MAX_BACKOFF);
        task.link = Link::Waiting {
            retry_at: Some(now + delay),
        };
        log::warn!(
            "relay failed id={id} {}: {why}; retrying in {delay:?} (worker={worker})",
            describe(&task.rule, &task.key)
        );
        let why = why.to_owned();
        shared.relays.update(id, |t| {
            t.state = TaskState::Waiting;
            t.last_error = Some(why);
        });
    }

    /// Stops task `id` for good. Returns its connection, which the caller
    /// tells goodbye and closes.
    pub(super) fn stop(&mut self, shared: &Shared, id: TaskId, why: &str) -> Option<ConnId> {
        let task = self.tasks.remove(&id)?;
        locked(&shared.relays.tasks).remove(&id);
        if matches!(task.role, TaskRole::Pull { .. }) {
            let mut pulls = locked(&shared.relays.pulls);
            if pulls.get(&task.key) == Some(&id) {
                pulls.remove(&task.key);
            }
        }
        log::info!(
            "relay stop id={id} {}: {why}",
            describe(&task.rule, &task.key)
        );
        match task.link {
            Link::Open { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// The publication by connection `publisher` of `stream` ended: its
    /// pushes stop. Returns their connections.
    pub(super) fn stop_pushes(
        &mut self,
        shared: &Shared,
        stream: &Stream,
        publisher: ConnId,
    ) -> Vec<ConnId> {
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| {
                matches!(&t.role, TaskRole::Push { stream: s, publisher: p } if s.id == stream.id && *p == publisher)
            })
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.stop(shared, id, "the stream ended"))
            .collect()
    }

    /// Stops every task of rule `rule`; returns their connections.
    pub(super) fn stop_rule(&mut self, shared: &Shared, rule: RuleId) -> Vec<ConnId> {
        let ids: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.rule.id == rule)
            .map(|(id, _)| *id)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.stop(shared, id, "its rule was deleted"))
            .collect()
    }

    /// Push rule `rule` was added for the live stream `key`: start it if
    /// this worker runs the stream's publisher.
    pub(super) fn start_push_rule(
        &mut self,
        shared: &Shared,
        worker: usize,
        rule: RuleId,
        key: &str,
    ) {
        let (Some(rule), Some(stream)) = (shared.relays.rule(rule), shared.registry.get(key))
        else {
            return;
        };
        let publisher = stream.with_state(|st| {
            st.publisher()
                .filter(|p| p.worker == worker)
                .map(|p| p.conn_id)
        });
        if let Some(p) = publisher {
            self.start_push(shared, worker, rule, stream, p);
        }
    }

    /// Static pull rule `rule` was added (or the worker started).
    pub(super) fn start_static_pull(&mut self, shared: &Shared, worker: usize, rule: RuleId) {
        if let Some(key) = shared
            .relays
            .rule(rule)
            .and_then(|r| r.static_key().map(str::to_owned))
        {
            self.ensure_pull(shared, worker, &key);
        }
    }

    /// Shutdown: no more connections; those open say goodbye.
    pub(super) fn clear(&mut self) {
        self.tasks.clear();
        self.to_connect.clear();
    }

    /// Periodic upkeep: at the first call this worker's share of the static
    /// pulls starts; retries that are due are queued to connect; pulls
    /// nobody watched for their idle timeout stop (their connections are
    /// returned, to be told goodbye).
    pub(super) fn tick(&mut self, shared: &Shared, worker: usize, now: Instant) -> Vec<ConnId> {
        if !self.static_started {
            self.static_started = true;
            for rule in shared.relays.rules() {
                if rule.static_key().is_some()
                    && static_worker(shared.workers.len(), rule.id) == worker
                {
                    self.start_static_pull(shared, worker, rule.id);
                }
            }
        }
        let mut idle = Vec::new();
        for (id, t) in self.tasks.iter_mut() {
            if let Link::Waiting { retry_at: Some(at) } = t.link {
                if now >= at {
                    t.link = Link::Waiting { retry_at: None };
                    self.to_connect.push(*id);
                }
            }
            if let TaskRole::Pull { idle_since } = &mut t.role {
                if t.rule.always {
                    continue;
                }
                if watched(shared, &t.key, now, t.rule.idle_timeout) {
                    *idle_since = None;
                } else if now.saturating_duration_since(*idle_since.get_or_insert(now))
                    >= t.rule.idle_timeout
                {
                    idle.push(*id);
                }
            }
        }
        let mut goodbyes = Vec::new();
        for id in idle {
            let Some((key, timeout)) = self
                .tasks
                .get(&id)
                .map(|t| (t.key.clone(), t.rule.idle_timeout))
            else {
                continue;
            };
            // Re-checked under the pulls lock: a player that joined since
            // (and so found this pull claimed) keeps it running. The claim
            // goes in the same critical section, so a player who finds it
            // claimed after this check is sure to be served.
            let mut pulls = locked(&shared.relays.pulls);
            let watched = watched(shared, &key, now, timeout);
            if !watched && pulls.get(&key) == Some(&id) {
                pulls.remove(&key);
            }
            drop(pulls);
            if !watched {
                goodbyes.extend(self.stop(shared, id, &format!("no player for {timeout:?}")));
            }
        }
        goodbyes
    }
}
