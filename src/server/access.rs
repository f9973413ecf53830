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

use super::http;
use super::http_conn::HttpState;
use super::queue::Item;
use super::stats::CloseReason;
use super::stream::PublisherInfo;
use super::worker::{Delivery, Proto, Worker};
use crate::auth::{Action, Denial};
use crate::protocol::session::{PlayRejection, PublishRejection};
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
