//! Access control on a worker: applying [`crate::auth`]'s verdicts to
//! connections, delaying the replies to repeated failures without blocking
//! the loop, and taking a stream over from its publisher
//! (`second_publisher = "replace"`).
//!
//! A delayed denial leaves the connection waiting for its decision: an RTMP
//! session stays paused at the publish / play (it reads no further
//! command), an HTTP player's request is parked in [`HttpState::Deciding`];
//! either way what the client sends meanwhile is bounded by the worker's
//! read-buffer limit. The worker's poll wakes at the earliest reply due.

use super::http::{self, Request};
use super::http_conn::HttpState;
use super::queue::Item;
use super::stats::CloseReason;
use super::stream::PublisherInfo;
use super::worker::{Delivery, Proto, Worker};
use crate::auth::{Action, Denial};
use crate::hooks::{Answer, Call, Job};
use crate::protocol::session::{PlayRejection, PlayRequest, PublishRejection, PublishRequest};
use bytes::Bytes;
use std::time::Instant;

/// A denial whose reply waits.
pub(super) struct Deferred {
    pub at: Instant,
    pub conn_id: u64,
    pub reply: Reply,
}

/// What a denied request gets.
pub(super) enum Reply {
    /// NetConnection.Connect.Rejected, then the connection closes.
    RejectConnect,
    /// NetStream.Publish.Unauthorized on this message stream.
    RejectPublish(u32),
    /// NetStream.Play.Failed on this message stream.
    RejectPlay(u32),
    /// An HTTP response, then the connection closes.
    Http(Bytes),
}

/// The HTTP status for a denial: 401 when credentials are missing (the
/// client may retry with some), 403 otherwise.
pub(super) fn http_status(d: Denial) -> u16 {
    match d {
        Denial::NoCredentials => 401,
        _ => 403,
    }
}

/// The response an HTTP player gets for a denial.
pub(super) fn http_denial(d: Denial, cors: &str) -> Bytes {
    let status = http_status(d);
    let body: &[u8] = if status == 401 {
        b"a key or signature is required\n"
    } else {
        b"forbidden\n"
    };
    http::response(
        status,
        "text/plain",
        &[("Access-Control-Allow-Origin", cors)],
        body,
        false,
        false,
    )
}

impl Worker {
    /// Logs a denial (never the key) and answers it now, or later when
    /// this address has failed recently.
    pub(super) fn deny(&mut self, k: usize, action: Action, key: &str, why: Denial, reply: Reply) {
        let Some(conn) = self.conns.get(k) else {
            return;
        };
        let now = Instant::now();
        let delay = self.shared.auth.penalties.fail(conn.peer.ip(), now);
        log::info!(
            "{} denied stream={key} conn={} peer={} worker={} protocol={}: {}{}",
            action.name(),
            conn.id,
            conn.peer,
            self.index,
            conn.protocol().name(),
            why.describe(),
            if delay.is_zero() {
                String::new()
            } else {
                format!(" (reply delayed {delay:?}: repeated failures)")
            }
        );
        if delay.is_zero() {
            return self.apply_reply(now, k, reply, false);
        }
        let conn_id = conn.id;
        if let (Reply::Http(_), Some(c)) = (&reply, self.conns.get_mut(k)) {
            c.proto = Proto::Http(HttpState::Deciding);
        }
        self.deferred.push(Deferred {
            at: now + delay,
            conn_id,
            reply,
        });
    }

    /// Sends the replies that are due.
    pub(super) fn run_deferred(&mut self, now: Instant) {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.deferred.len() {
            if self.deferred[i].at <= now {
                due.push(self.deferred.swap_remove(i));
            } else {
                i += 1;
            }
        }
        for d in due {
            if let Some(&k) = self.ids.get(&d.conn_id) {
                self.guarded(k, "replying to a denied request", |w| {
                    w.apply_reply(now, k, d.reply, true)
                });
            }
        }
    }

    /// Answers a denied request; `resume` feeds the RTMP session what it
    /// buffered while it waited.
    fn apply_reply(&mut self, now: Instant, k: usize, reply: Reply, resume: bool) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        match (reply, &mut conn.proto) {
            (Reply::RejectConnect, Proto::Rtmp(r)) => {
                r.session.reject_connect();
                conn.close_after_flush = Some((CloseReason::Done, "connect rejected".into()));
            }
            (Reply::RejectPublish(sid), Proto::Rtmp(r)) => r
                .session
                .reject_publish(sid, PublishRejection::Unauthorized),
            (Reply::RejectPlay(sid), Proto::Rtmp(r)) => {
                r.session.reject_play(sid, PlayRejection::Unauthorized)
            }
            (Reply::Http(resp), Proto::Http(_)) => {
                conn.read_buf.clear();
                conn.push(Item::Control(resp));
                conn.close_after_flush = Some((CloseReason::Done, "access denied".into()));
            }
            _ => {}
        }
        conn.pull_transmit();
        self.mark_dirty(k);
        if resume && matches!(self.conns.get(k).map(|c| &c.proto), Some(Proto::Rtmp(_))) {
            self.rtmp_input(now, k);
        }
    }

    /// `second_publisher = "replace"`: the publisher `old` lost its stream;
    /// its own worker closes it (this one, or another through its inbox).
    pub(super) fn close_replaced(&mut self, old: PublisherInfo) {
        if old.worker == self.index {
            if let Some(&k) = self.ids.get(&old.conn_id) {
                self.close(k, CloseReason::Replaced, "replaced by a new publisher");
            }
        } else if let Some(out) = self.outgoing.get_mut(old.worker) {
            out.push(Delivery::Replaced(old.conn_id));
        }
    }
}

/// A request waiting for its HTTP callback.
pub(super) enum AwaitingHook {
    /// An RTMP `connect` to this application.
    Connect {
        app: String,
    },
    Publish(PublishRequest),
    Play(PlayRequest),
    /// An HTTP-FLV / ws-flv player's request, and its CORS origin.
    Http {
        req: Request,
        app: String,
        name: String,
        cors: String,
    },
}

impl Worker {
    /// If `app` has a deciding callback for `action`, asks it (on a helper
    /// thread) and parks the request; otherwise hands the request back.
    pub(super) fn ask_hook(
        &mut self,
        k: usize,
        action: Action,
        app: &str,
        name: &str,
        query: &str,
        waiting: AwaitingHook,
    ) -> Option<AwaitingHook> {
        let Some(pool) = &self.shared.hooks else {
            return Some(waiting);
        };
        let Some(hooks) = self.shared.auth.hooks(app) else {
            return Some(waiting);
        };
        let url = match action {
            Action::Connect => &hooks.on_connect,
            Action::Publish => &hooks.on_publish,
            Action::Play => &hooks.on_play,
        };
        let Some(url) = url.clone() else {
            return Some(waiting);
        };
        let conn = self.conns.get_mut(k)?;
        let tc_url = match &conn.proto {
            Proto::Rtmp(r) => r.tc_url.clone(),
            Proto::Http(_) | Proto::Relay(_) => String::new(),
        };
        if let AwaitingHook::Http { .. } = waiting {
            conn.proto = Proto::Http(HttpState::Deciding);
        }
        let call = Call {
            call: action.name(),
            app: app.to_owned(),
            name: name.to_owned(),
            addr: conn.peer.ip().to_string(),
            client_id: conn.id,
            tc_url,
            query: query.to_owned(),
        };
        let conn_id = conn.id;
        log::debug!(
            "{} stream={app}/{name} conn={conn_id} worker={}: asking {url}",
            action.name(),
            self.index
        );
        self.awaiting_hook.insert(conn_id, waiting);
        self.set_client_state(k, "authorizing", None);
        let (shared, index) = (self.shared.clone(), self.index);
        pool.submit(Job {
            url,
            call,
            hooks: hooks.clone(),
            reply: Some(Box::new(move |answer| {
                let handle = &shared.workers[index];
                handle
                    .inbox
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Delivery::Hook { conn_id, answer });
                if let Err(e) = handle.waker.wake() {
                    log::warn!("waking worker {index} with a callback's answer: {e}");
                }
            })),
            queued: Instant::now(),
        });
        None
    }

    /// A callback answered: carry on with the parked request.
    pub(super) fn hook_answered(&mut self, conn_id: u64, answer: Answer) {
        let Some(waiting) = self.awaiting_hook.remove(&conn_id) else {
            return;
        };
        let Some(&k) = self.ids.get(&conn_id) else {
            return; // gone while waiting
        };
        self.guarded(k, "acting on a callback's answer", |w| {
            let now = Instant::now();
            let (action, app, name) = match &waiting {
                AwaitingHook::Connect { app } => (Action::Connect, app.clone(), String::new()),
                AwaitingHook::Publish(r) => (Action::Publish, r.app.clone(), r.name.clone()),
                AwaitingHook::Play(r) => (Action::Play, r.app.clone(), r.name.clone()),
                AwaitingHook::Http { app, name, .. } => (Action::Play, app.clone(), name.clone()),
            };
            let key = format!("{app}/{name}");
            let renamed = match &answer {
                Answer::Deny(why) => {
                    log::info!(
                        "{} callback for stream={key} conn={conn_id}: {why}",
                        action.name()
                    );
                    let reply = match waiting {
                        AwaitingHook::Connect { .. } => Reply::RejectConnect,
                        AwaitingHook::Publish(r) => Reply::RejectPublish(r.stream_id),
                        AwaitingHook::Play(r) => Reply::RejectPlay(r.stream_id),
                        AwaitingHook::Http { cors, .. } => {
                            Reply::Http(http_denial(Denial::Callback, &cors))
                        }
                    };
                    w.deny(k, action, &key, Denial::Callback, reply);
                    if matches!(w.conns.get(k).map(|c| &c.proto), Some(Proto::Rtmp(_))) {
                        w.rtmp_input(now, k);
                    }
                    return;
                }
                Answer::Allow => None,
                Answer::Rename(n) => {
                    log::info!(
                        "{} callback for stream={key} conn={conn_id}: renamed to {app}/{n}",
                        action.name()
                    );
                    Some(n.clone())
                }
            };
            match waiting {
                AwaitingHook::Connect { .. } => {
                    if let Some(Proto::Rtmp(r)) = w.conns.get_mut(k).map(|c| &mut c.proto) {
                        r.session.accept_connect();
                    }
                }
                AwaitingHook::Publish(mut r) => {
                    if let Some(n) = renamed {
                        r.name = n;
                    }
                    let key = format!("{}/{}", r.app, r.name);
                    w.publish_allowed(k, r, key);
                }
                AwaitingHook::Play(mut r) => {
                    if let Some(n) = renamed {
                        r.name = n;
                    }
                    w.play_allowed(k, r);
                }
                AwaitingHook::Http {
                    req,
                    app,
                    name,
                    cors,
                } => {
                    let name = renamed.unwrap_or(name);
                    w.http_player_allowed(now, k, req, &app, &name, &cors);
                }
            }
            if let Some(c) = w.conns.get_mut(k) {
                c.pull_transmit();
            }
            w.mark_dirty(k);
            if matches!(w.conns.get(k).map(|c| &c.proto), Some(Proto::Rtmp(_))) {
                w.rtmp_input(now, k);
            }
        });
    }

    /// Tells `app`'s callback that something ended (fire and forget).
    pub(super) fn notify_hook(
        &self,
        call: &'static str,
        key: &str,
        conn_id: u64,
        peer: std::net::SocketAddr,
        tc_url: &str,
    ) {
        let Some(pool) = &self.shared.hooks else {
            return;
        };
        let (app, name) = key.split_once('/').unwrap_or((key, ""));
        let Some(hooks) = self.shared.auth.hooks(app) else {
            return;
        };
        let url = match call {
            "publish_done" => &hooks.on_publish_done,
            "play_done" => &hooks.on_play_done,
            _ => &hooks.on_done,
        };
        let Some(url) = url.clone() else {
            return;
        };
        pool.submit(Job {
            url,
            call: Call {
                call,
                app: app.to_owned(),
                name: name.to_owned(),
                addr: peer.ip().to_string(),
                client_id: conn_id,
                tc_url: tc_url.to_owned(),
                query: String::new(),
            },
            hooks: hooks.clone(),
            reply: None,
            queued: Instant::now(),
        });
    }
}
