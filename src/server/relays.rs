//! The relay state every worker and the API share: the rules, which streams
//! are being pulled (one pull per stream per node), and what the API shows
//! of each task. The tasks themselves run on the workers (`tasks.rs`), their
//! connections are `relay_conn.rs`; the rules and URLs are [`crate::relay`].

use super::base::{locked, ConnCounters, TaskId};
use crate::relay::{ClientTls, RelayKind, Rule, RuleId, Scope};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Where a task is, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// A helper thread resolves the peer's host name.
    Resolving,
    /// TCP connect in progress.
    Connecting,
    /// TLS and RTMP handshakes, `connect`, `createStream`, `publish`/`play`.
    Handshake,
    Publishing,
    Playing,
    /// Waiting to retry after a failure.
    Waiting,
}

impl TaskState {
    pub fn name(self) -> &'static str {
        match self {
            TaskState::Resolving => "resolving",
            TaskState::Connecting => "connecting",
            TaskState::Handshake => "handshake",
            TaskState::Publishing => "publishing",
            TaskState::Playing => "playing",
            TaskState::Waiting => "waiting",
        }
    }
}

/// What the API shows of a task.
#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub id: TaskId,
    pub rule: RuleId,
    pub kind: RelayKind,
    /// The local stream (`app/name`).
    pub stream: String,
    /// The peer's URL, stream key redacted.
    pub url: String,
    pub worker: usize,
    pub state: TaskState,
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
    pub(super) next_task: AtomicU64,
    /// Stream key → the task pulling it.
    pub(super) pulls: Mutex<HashMap<String, TaskId>>,
    pub(super) tasks: Mutex<BTreeMap<TaskId, TaskInfo>>,
    pub tls: ClientTls,
}

impl Relays {
    pub fn new(config: &crate::config::Config) -> Result<Self, String> {
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
        if let (true, Some(addr)) = (config.takeover, config.handover_addr) {
            let rule = relays.add(Rule::handover(addr, config.pull_idle_timeout));
            log::info!(
                "takeover: streams not live here are pulled from the predecessor at {addr} (rule {})",
                rule.id
            );
        }
        Ok(relays)
    }

    /// Adds a rule, giving it its id.
    pub fn add(&self, mut rule: Rule) -> Arc<Rule> {
        rule.id = RuleId(self.next_rule.fetch_add(1, Ordering::Relaxed));
        let rule = Arc::new(rule);
        locked(&self.rules).push(rule.clone());
        rule
    }

    pub fn remove(&self, id: RuleId) -> Option<Arc<Rule>> {
        let mut rules = locked(&self.rules);
        let i = rules.iter().position(|r| r.id == id)?;
        Some(rules.remove(i))
    }

    pub fn rules(&self) -> Vec<Arc<Rule>> {
        locked(&self.rules).clone()
    }

    pub(super) fn rule(&self, id: RuleId) -> Option<Arc<Rule>> {
        locked(&self.rules).iter().find(|r| r.id == id).cloned()
    }

    pub(super) fn pushes_for(&self, key: &str) -> Vec<Arc<Rule>> {
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
        // The handover's rule (every stream) comes last.
        pulls
            .clone()
            .find(|r| matches!(r.scope, Scope::Stream(_)))
            .or_else(|| pulls.clone().find(|r| matches!(r.scope, Scope::App(_))))
            .or_else(|| pulls.clone().next())
            .cloned()
    }

    /// Every task, for the API.
    pub fn tasks(&self) -> Vec<TaskInfo> {
        locked(&self.tasks).values().cloned().collect()
    }

    pub(super) fn update(&self, task: TaskId, f: impl FnOnce(&mut TaskInfo)) {
        if let Some(t) = locked(&self.tasks).get_mut(&task) {
            f(t);
        }
    }

    pub(super) fn set_state(&self, task: TaskId, state: TaskState) {
        self.update(task, |t| t.state = state);
    }
}

/// The worker that runs a static pull (spread by rule id).
pub(super) fn static_worker(workers: usize, rule: RuleId) -> usize {
    (rule.0 as usize) % workers.max(1)
}
