//! What every worker shares: the process-wide [`Shared`] state, one
//! [`WorkerHandle`] per worker (its inbox, waker and the API's view of its
//! connections), the messages workers post to each other, and the ids that
//! name connections across threads.
//!
//! Cross-worker delivery is one mechanism: [`WorkerHandle::post`] (or
//! [`WorkerHandle::post_batch`] for a loop iteration's media) locks the
//! inbox, appends, and wakes the worker's poll. Media events and commands
//! are separate variants of [`Message`]: media arrive in stream order and
//! go to the players of one stream, commands to one connection or to the
//! worker's relay tasks.

use super::base::{locked, ConnCounters, ConnId, StreamId, TaskId};
use super::disk::{DiskReply, Reply};
use super::stats::{Protocol, Stats, WaitHistogram};
use super::stream::{Frame, Registry};
use crate::config::Config;
use crate::relay::RuleId;
use mio::Waker;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// What one worker posts to another (or the API to a worker) about relays.
#[derive(Debug)]
pub enum RelayCommand {
    /// Start push rule `rule` for the live stream `key` (this worker runs
    /// its publisher).
    StartPush { rule: RuleId, key: String },
    /// Start static pull rule `rule`.
    StartPull { rule: RuleId },
    /// Rule `rule` was deleted: stop its tasks.
    Stop { rule: RuleId },
    /// A helper thread resolved task `task`'s host.
    Resolved {
        task: TaskId,
        addr: Result<SocketAddr, String>,
    },
    /// The pull of `stream` failed and its players waiting here get
    /// NetStream.Play.StreamNotFound.
    PullFailed { stream: StreamId },
    /// Relay connection `conn`'s task stopped: say goodbye and close.
    Goodbye { conn: ConnId, why: String },
}

/// What a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Rtmp,
    /// HTTP-FLV, ws-flv, and the API unless it has its own listener.
    Http,
    /// The API and /metrics only.
    Api,
}

/// A stream's media, in publish order, for the players of one worker.
#[derive(Debug)]
pub enum MediaEvent {
    Frame(Arc<Frame>),
    /// A publisher took the stream (sequence number `seq`).
    Published {
        seq: u64,
    },
    /// The publisher left.
    Unpublished {
        seq: u64,
    },
}

/// What one worker posts to another (or the API and helper threads post to
/// a worker).
#[derive(Debug)]
pub enum Message {
    /// For the players of a stream on the receiving worker.
    Media(StreamId, MediaEvent),
    /// For one connection or the worker's relay tasks.
    Command(Command),
    /// The stream's HLS has something new: requests parked on it here may
    /// be answered.
    Hls(StreamId),
    /// A disk helper thread's answer for one connection of the receiving
    /// worker ([`Shared::disk_reply`]).
    Disk(DiskReply),
}

/// A request to a worker.
#[derive(Debug)]
pub enum Command {
    /// Close connection `id` (HTTP API).
    Close(ConnId),
    /// Close publisher `id`: another publisher took its stream over.
    Replaced(ConnId),
    /// An HTTP callback answered for connection `conn`.
    Hook {
        conn: ConnId,
        answer: crate::hooks::Answer,
    },
    /// Start, stop or advance a relay.
    Relay(RelayCommand),
}

/// Where a connection is, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// RTMP handshake and `connect` not done yet.
    Handshake,
    Connected,
    /// Waiting for an HTTP callback's verdict.
    Authorizing,
    Publishing,
    Playing,
    /// An HTTP connection between requests (or answering one).
    Http,
    /// An outbound relay pushing a stream.
    RelayPush,
    /// An outbound relay pulling a stream.
    RelayPull,
}

impl ClientState {
    pub fn name(self) -> &'static str {
        match self {
            ClientState::Handshake => "handshake",
            ClientState::Connected => "connected",
            ClientState::Authorizing => "authorizing",
            ClientState::Publishing => "publishing",
            ClientState::Playing => "playing",
            ClientState::Http => "http",
            ClientState::RelayPush => "relay-push",
            ClientState::RelayPull => "relay-pull",
        }
    }
}

/// What the API lists about a connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub id: ConnId,
    pub peer: SocketAddr,
    pub protocol: Protocol,
    pub state: ClientState,
    pub stream: Option<String>,
    pub since: SystemTime,
    pub counters: Arc<ConnCounters>,
}

/// The part of a worker other threads may touch.
pub struct WorkerHandle {
    waker: Waker,
    inbox: Mutex<Vec<Message>>,
    /// Connections this worker holds now.
    pub connections: AtomicUsize,
    /// Event loop iterations.
    pub iterations: AtomicU64,
    /// Write system calls made (`sendmsg`, `sendfile`, and TLS record
    /// writes).
    pub write_calls: AtomicU64,
    /// Of them, `sendfile` calls: batches sent from batch files.
    pub sendfile_calls: AtomicU64,
    /// How long queued media waited for its write.
    pub write_wait: WaitHistogram,
    /// Bytes in this worker's live batch files (batch_file.rs): shared
    /// memory its players' queues send from, not in the process's RSS.
    pub batch_file_bytes: Arc<AtomicU64>,
    /// The worker runs with its listeners registered (`/readyz`).
    pub listening: AtomicBool,
    /// The API's view of this worker's connections, updated when one opens,
    /// changes state or closes (never per byte).
    clients: Mutex<HashMap<ConnId, ClientInfo>>,
}

impl WorkerHandle {
    pub fn new(waker: Waker) -> Self {
        Self {
            waker,
            inbox: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            iterations: AtomicU64::new(0),
            write_calls: AtomicU64::new(0),
            sendfile_calls: AtomicU64::new(0),
            write_wait: WaitHistogram::default(),
            batch_file_bytes: Arc::new(AtomicU64::new(0)),
            listening: AtomicBool::new(false),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Posts one message and wakes the worker.
    pub fn post(&self, msg: Message) {
        locked(&self.inbox).push(msg);
        self.wake();
    }

    /// Posts a batch (one loop iteration's media for this worker) with one
    /// lock and one wake; `batch` is left empty.
    pub fn post_batch(&self, batch: &mut Vec<Message>) {
        if batch.is_empty() {
            return;
        }
        {
            let mut inbox = locked(&self.inbox);
            if inbox.is_empty() {
                std::mem::swap(&mut *inbox, batch);
            } else {
                inbox.append(batch);
            }
        }
        self.wake();
    }

    /// Wakes the worker's poll.
    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            log::warn!("waking a worker: {e}");
        }
    }

    /// Swaps the inbox with `into` (which must be empty): the worker takes
    /// everything posted so far with one lock.
    pub(super) fn take_inbox(&self, into: &mut Vec<Message>) {
        std::mem::swap(&mut *locked(&self.inbox), into);
    }

    /// The API's view of this worker's connections.
    pub fn clients(&self) -> MutexGuard<'_, HashMap<ConnId, ClientInfo>> {
        locked(&self.clients)
    }

    /// True when connection `id` lives on this worker.
    pub fn owns(&self, id: ConnId) -> bool {
        self.clients().contains_key(&id)
    }
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
    /// A handover to a successor began (SIGUSR2): see
    /// [`Shared::hand_over`].
    handover: AtomicBool,
    next_conn_id: AtomicU64,
    /// Panics caught while handling one connection (each closed that
    /// connection only); should stay 0.
    pub panics: AtomicU64,
    pub stats: Stats,
    pub tls: Option<Tls>,
    /// Access control (publish / play rules, failed-attempt delays).
    pub auth: crate::auth::Auth,
    /// Helper threads for HTTP callbacks (when any is configured).
    pub hooks: Option<Arc<crate::hooks::Pool>>,
    /// Push and pull rules and tasks.
    pub relays: super::relays::Relays,
    /// Helper threads for files (recordings, video on demand).
    pub disk: Arc<super::disk::DiskPool>,
    /// Recordings in progress and finished.
    pub recordings: Arc<super::record::Recordings>,
    /// The parent process when this one started: for a successor started
    /// by SIGUSR2, its predecessor (see `--takeover`).
    pub parent_at_start: u32,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        registry: Registry,
        workers: Vec<WorkerHandle>,
        tls: Option<Tls>,
        auth: crate::auth::Auth,
        hooks: Option<Arc<crate::hooks::Pool>>,
        relays: super::relays::Relays,
        disk: Arc<super::disk::DiskPool>,
        recordings: Arc<super::record::Recordings>,
    ) -> Self {
        Self {
            config,
            registry,
            workers,
            shutdown: AtomicBool::new(false),
            handover: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
            panics: AtomicU64::new(0),
            stats: Stats::default(),
            tls,
            auth,
            hooks,
            relays,
            disk,
            recordings,
            parent_at_start: std::os::unix::process::parent_id(),
        }
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Posts `msg` to worker `w` (ignored for a worker that does not exist).
    /// A disk job's answer that posts the result to worker `worker` as
    /// `Message::Disk(DiskReply { conn, tag, result })`.
    pub fn disk_reply(self: &Arc<Self>, worker: usize, conn: ConnId, tag: u64) -> Reply {
        let shared = self.clone();
        Reply::call(move |result| {
            shared.post(worker, Message::Disk(DiskReply { conn, tag, result }));
        })
    }

    pub fn post(&self, w: usize, msg: Message) {
        if let Some(h) = self.workers.get(w) {
            h.post(msg);
        }
    }

    /// Posts a relay command to worker `w`.
    pub fn post_relay(&self, w: usize, cmd: RelayCommand) {
        self.post(w, Message::Command(Command::Relay(cmd)));
    }

    /// Asks every worker to shut down gracefully.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.wake();
        }
    }

    /// Asks every worker to hand over to a successor that shares the
    /// listening ports: stop accepting, ask Enhanced RTMP publishers to
    /// reconnect, serve the publishers and players already here until they
    /// leave or `handover_timeout`, then stop (docs/deploying.md).
    pub fn hand_over(&self) {
        self.handover.store(true, Ordering::SeqCst);
        for w in &self.workers {
            w.wake();
        }
    }

    /// True once a handover has been asked for.
    pub fn handing_over(&self) -> bool {
        self.handover.load(Ordering::SeqCst)
    }

    /// True once a shutdown has been asked for.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// The worker holding connection `id`, if any.
    pub fn worker_of(&self, id: ConnId) -> Option<usize> {
        self.workers.iter().position(|w| w.owns(id))
    }
}
