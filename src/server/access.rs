//! Access control on a worker: delaying the replies to repeated failures
//! without blocking the loop, asking HTTP callbacks on helper threads, and
//! telling callbacks what ended. The verdicts come from [`crate::auth`];
//! applying them to a connection is the connection's own business
//! (`RtmpConn::apply_reply`, `HttpConn::apply_reply`).
//!
//! A delayed denial or a pending callback leaves the connection waiting for
//! its decision: an RTMP session stays paused at the publish / play (it
//! reads no further command), an HTTP player's request is parked in its
//! `Deciding` state; either way what the client sends meanwhile is bounded
//! by the read-buffer limit. The worker's poll wakes at the earliest reply
//! due, and a callback's answer arrives as a [`Command::Hook`] in the
//! worker's inbox.

use super::base::ConnId;
use super::http::{self, Request};
use super::shared::{Command, Message, Shared};
use super::transport::ConnIo;
use crate::auth::{Action, Denial};
use crate::hooks::{Call, Job};
use crate::protocol::session::{PlayRequest, PublishRequest};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A denial whose reply waits.
pub(super) struct Deferred {
    pub at: Instant,
    pub conn: ConnId,
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

impl AwaitingHook {
    /// What is being decided, for logs: (action, app, name).
    pub(super) fn describe(&self) -> (Action, &str, &str) {
        match self {
            AwaitingHook::Connect { app } => (Action::Connect, app, ""),
            AwaitingHook::Publish(r) => (Action::Publish, &r.app, &r.name),
            AwaitingHook::Play(r) => (Action::Play, &r.app, &r.name),
            AwaitingHook::Http { app, name, .. } => (Action::Play, app, name),
        }
    }

    /// The reply a denial of this request gets.
    pub(super) fn denial(&self, why: Denial) -> Reply {
        match self {
            AwaitingHook::Connect { .. } => Reply::RejectConnect,
            AwaitingHook::Publish(r) => Reply::RejectPublish(r.stream_id),
            AwaitingHook::Play(r) => Reply::RejectPlay(r.stream_id),
            AwaitingHook::Http { cors, .. } => Reply::Http(http_denial(why, cors)),
        }
    }
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

/// A worker's pending access decisions.
#[derive(Default)]
pub(super) struct Access {
    /// Denials whose reply waits (failed attempts are slowed).
    deferred: Vec<Deferred>,
    /// Requests waiting for an HTTP callback's answer, by connection.
    awaiting: HashMap<ConnId, AwaitingHook>,
}

impl Access {
    /// Logs a denial (never the key) and returns the reply to give now, or
    /// parks it (None) when this address has failed recently.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn deny(
        &mut self,
        shared: &Shared,
        worker: usize,
        io: &ConnIo,
        action: Action,
        key: &str,
        why: Denial,
        reply: Reply,
    ) -> Option<Reply> {
        let now = Instant::now();
        let delay = shared.auth.penalties.fail(io.peer.ip(), now);
        log::info!(
            "{} denied stream={key} conn={} peer={} worker={worker} protocol={}: {}{}",
            action.name(),
            io.id,
            io.peer,
            io.protocol.name(),
            why.describe(),
            if delay.is_zero() {
                String::new()
            } else {
                format!(" (reply delayed {delay:?}: repeated failures)")
            }
        );
        if delay.is_zero() {
            return Some(reply);
        }
        self.deferred.push(Deferred {
            at: now + delay,
            conn: io.id,
            reply,
        });
        None
    }

    /// When the next delayed reply is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.deferred.iter().map(|d| d.at).min()
    }

    /// The delayed replies due at `now`.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Deferred> {
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.deferred.len() {
            if self.deferred[i].at <= now {
                due.push(self.deferred.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due
    }

    /// If `app` has a deciding callback for `action`, asks it (on a helper
    /// thread, the answer posted back to `worker`) and parks the request;
    /// otherwise hands the request back.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ask_hook(
        &mut self,
        shared: &Arc<Shared>,
        worker: usize,
        io: &ConnIo,
        query: &str,
        tc_url: &str,
        waiting: AwaitingHook,
    ) -> Option<AwaitingHook> {
        let (action, app, name) = waiting.describe();
        let Some(pool) = &shared.hooks else {
            return Some(waiting);
        };
        let Some(hooks) = shared.auth.hooks(app) else {
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
        let call = Call {
            call: action.name(),
            app: app.to_owned(),
            name: name.to_owned(),
            addr: io.peer.ip().to_string(),
            client_id: io.id.0,
            tc_url: tc_url.to_owned(),
            query: query.to_owned(),
            path: String::new(),
        };
        let conn = io.id;
        log::debug!(
            "{} stream={app}/{name} conn={conn} worker={worker}: asking {url}",
            action.name(),
        );
        let shared_for_reply = shared.clone();
        pool.submit(Job {
            url,
            call,
            hooks: hooks.clone(),
            reply: Some(Box::new(move |answer| {
                shared_for_reply.post(worker, Message::Command(Command::Hook { conn, answer }));
            })),
            queued: Instant::now(),
        });
        self.awaiting.insert(conn, waiting);
        None
    }

    /// The request connection `conn` parked for its callback.
    pub(super) fn take_awaiting(&mut self, conn: ConnId) -> Option<AwaitingHook> {
        self.awaiting.remove(&conn)
    }

    /// Connection `conn` closed: its parked request and delayed replies go.
    pub(super) fn forget(&mut self, conn: ConnId) {
        self.awaiting.remove(&conn);
        self.deferred.retain(|d| d.conn != conn);
    }

    /// Tells `key`'s application callback that something ended (fire and
    /// forget): `publish_done`, `play_done`, or `done` (the connection).
    pub(super) fn notify_hook(
        &self,
        shared: &Shared,
        call: &'static str,
        key: &str,
        io: &ConnIo,
        tc_url: &str,
    ) {
        let Some(pool) = &shared.hooks else {
            return;
        };
        let (app, name) = key.split_once('/').unwrap_or((key, ""));
        let Some(hooks) = shared.auth.hooks(app) else {
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
                addr: io.peer.ip().to_string(),
                client_id: io.id.0,
                tc_url: tc_url.to_owned(),
                query: String::new(),
                path: String::new(),
            },
            hooks: hooks.clone(),
            reply: None,
            queued: Instant::now(),
        });
    }
}
