//! A connection: its transport ([`ConnIo`]) and its protocol ([`Proto`]),
//! which owns its handlers. The worker loop calls the `on_*` methods here;
//! each hands the event to the protocol with the connection's transport and
//! the worker's context, and says through its result whether the
//! connection must close.

use super::access::{AwaitingHook, Reply};
use super::base::StreamId;
use super::ctx::WorkerCtx;
use super::http_conn::HttpConn;
use super::player::{Player, Release};
use super::relay_conn::RelayConn;
use super::rtmp_conn::RtmpConn;
use super::stats::CloseReason;
use super::transport::{Close, ConnIo};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Bytes read from one connection per wakeup before the others get a turn.
/// Messages are budgeted too (`SessionConfig::messages_per_input`): a
/// megabyte of 2-byte frames is half a million messages, far more work
/// than a megabyte of video (docs/hardening.md case 42).
const READ_BUDGET: usize = 1024 * 1024;

/// A connection's protocol state.
pub(super) enum Proto {
    Rtmp(Box<RtmpConn>),
    Http(Box<HttpConn>),
    /// An outbound connection: a push to a target or a pull from an origin.
    Relay(Box<RelayConn>),
}

/// One connection of a worker's slab.
pub(super) struct Conn {
    pub io: ConnIo,
    pub proto: Proto,
}

impl Conn {
    /// The socket has bytes (or an error, or the peer closed): read until
    /// it has none or the read budget is spent, feeding the protocol after
    /// each read.
    ///
    /// An accepted TLS connection still handshaking is read only while the
    /// iteration has handshake time left
    /// ([`HANDSHAKE_TIME_PER_ITERATION`](super::ctx::HANDSHAKE_TIME_PER_ITERATION)),
    /// else in the next.
    pub(super) fn on_readable(&mut self, now: Instant, ctx: &mut WorkerCtx) -> Result<(), Close> {
        if ctx.shutting_down().is_some() && !self.is_draining() {
            return Ok(());
        }
        if self.io.tls_handshake_counted() {
            if !ctx.handshake_time_left() {
                ctx.handshake_waits(self.io.key);
                return Ok(());
            }
            let started = Instant::now();
            let read = self.read_input(now, ctx);
            ctx.handshake_took(started.elapsed());
            return read;
        }
        self.read_input(now, ctx)
    }

    /// What [`on_readable`](Self::on_readable) does once it may read.
    fn read_input(&mut self, now: Instant, ctx: &mut WorkerCtx) -> Result<(), Close> {
        // Input left from the last turn (the protocol stopped at its message
        // budget) goes first; no more is read while some is left.
        if self.has_input_left() {
            self.handle_input(now, ctx)?;
            if self.has_input_left() {
                ctx.read_again(self.io.key);
                return Ok(());
            }
        }
        let mut budget = READ_BUDGET;
        while let Some(read) = self
            .io
            .read_some(&ctx.shared.stats, &mut ctx.read_scratch)?
        {
            if self.io.take_peer_change() {
                // A PROXY header named the client: the API shows it.
                ctx.set_client_peer(self.io.id, self.io.peer);
            }
            if self.io.take_handshake_done() {
                ctx.tls_handshake_ended();
            }
            if self.io.tls_wants_write() {
                ctx.schedule_write(&mut self.io);
            }
            if !self.io.read_buf.is_empty() {
                self.handle_input(now, ctx)?;
                self.io.check_read_buffer()?;
            }
            if read.peer_closed {
                return Err(Close::new(CloseReason::Peer, "TLS close_notify from peer"));
            }
            budget = budget.saturating_sub(read.raw);
            if budget == 0 || self.has_input_left() {
                ctx.read_again(self.io.key);
                return Ok(());
            }
        }
        Ok(())
    }

    /// True when the protocol stopped at its per-turn message budget with
    /// input left in the read buffer.
    fn has_input_left(&self) -> bool {
        match &self.proto {
            Proto::Rtmp(r) => r.has_input_left(),
            Proto::Http(_) | Proto::Relay(_) => false,
        }
    }

    /// Hands what is in the read buffer to the protocol.
    pub(super) fn handle_input(&mut self, now: Instant, ctx: &mut WorkerCtx) -> Result<(), Close> {
        match &mut self.proto {
            Proto::Rtmp(r) => r.handle_input(now, &mut self.io, ctx),
            Proto::Http(h) => h.handle_input(now, &mut self.io, ctx),
            Proto::Relay(r) => r.handle_input(now, &mut self.io, ctx),
        }
    }

    /// The socket became writable: it has room, or (an outbound connection)
    /// it connected.
    pub(super) fn on_writable(&mut self, ctx: &mut WorkerCtx) -> Result<(), Close> {
        self.io.writable();
        if let Proto::Relay(r) = &mut self.proto {
            r.on_writable(&mut self.io, ctx)?;
        }
        ctx.schedule_write(&mut self.io);
        Ok(())
    }

    /// Frames of `stream` for this connection's player of it, released by
    /// the write policy (the oldest waited since `since`): what the player
    /// queues is written in this iteration ([`WorkerCtx::media_released`]).
    /// The player is looked up once for all of them. Returns true when the
    /// player then waits for a start point.
    pub(super) fn deliver_frames(
        &mut self,
        ctx: &mut WorkerCtx,
        stream: StreamId,
        release: &Release,
        since: Option<Instant>,
    ) -> bool {
        if self.io.is_closing() {
            // Nothing may follow what is queued (a WebSocket Close frame,
            // the end of a response).
            return false;
        }
        let Some(player) = player_of(&mut self.proto, stream) else {
            return false;
        };
        let pushed = self.io.out.media_pushed();
        let files = self.io.sends_files();
        player.deliver_release(
            &mut self.io.out,
            release,
            files,
            &ctx.limits,
            &ctx.shared.stats,
        );
        let awaits_start = player.awaits_start();
        if self.io.out.media_pushed() != pushed {
            ctx.media_released(&mut self.io, since);
        } else if self.io.out.control_bytes() > 0 {
            ctx.schedule_write(&mut self.io);
        }
        awaits_start
    }

    /// Touches, changing nothing, what delivering `stream`'s frames to this
    /// connection and writing them touch first: its state, its player, its
    /// queue and its counters. A caller that warms a few connections before
    /// working on any of them has their cache misses overlap, where the
    /// work alone meets them one after another
    /// ([`WARM_AHEAD`](super::worker::WARM_AHEAD)). The value only keeps the
    /// reads from being optimised away.
    pub(super) fn warm(&mut self, stream: StreamId) -> u64 {
        let player = player_of(&mut self.proto, stream).map_or(0, |p| p.warm());
        player ^ u64::from(self.wants_drained()) ^ self.io.warm()
    }

    /// A publish or unpublish notice of `stream` for this connection's
    /// player of it: its replies are written at once.
    /// `seq` is the notice's place in the stream's sequence; `published`
    /// tells a publish from an unpublish.
    pub(super) fn notify(
        &mut self,
        ctx: &mut WorkerCtx,
        stream: StreamId,
        seq: u64,
        published: bool,
    ) {
        if self.io.is_closing() {
            return;
        }
        match &mut self.proto {
            Proto::Rtmp(r) => r.notify(&mut self.io, ctx, stream, seq, published),
            Proto::Http(h) => h.notify(&mut self.io, stream, seq, published),
            Proto::Relay(r) => r.notify(stream, seq),
        }
        ctx.schedule_write(&mut self.io);
    }

    /// The connection's timer fired: check its deadlines.
    pub(super) fn on_timeout(&mut self, now: Instant, ctx: &mut WorkerCtx) -> Result<(), Close> {
        match &mut self.proto {
            Proto::Rtmp(r) => r.on_timeout(now, &mut self.io, ctx)?,
            Proto::Http(h) => h.on_timeout(now, &mut self.io, ctx)?,
            Proto::Relay(r) => r.on_timeout(now, ctx.shared.config.publisher_idle_timeout)?,
        }
        if let Some(since) = self.io.blocked_since() {
            let stalled = now.saturating_duration_since(since);
            if stalled >= ctx.limits.stall {
                return Err(Close::new(
                    CloseReason::Stalled,
                    format!("socket accepted nothing for {stalled:?}"),
                ));
            }
        }
        if self.io.has_pending_output() {
            ctx.schedule_write(&mut self.io);
        }
        Ok(())
    }

    /// The earliest instant at which [`Conn::on_timeout`] has work.
    pub(super) fn deadline(&self, ctx: &WorkerCtx) -> Option<Instant> {
        let proto = match &self.proto {
            Proto::Rtmp(r) => Some(r.deadline()),
            Proto::Http(h) => h.deadline(),
            Proto::Relay(r) => r.deadline(ctx.shared.config.publisher_idle_timeout),
        };
        let stall = self.io.blocked_since().map(|s| s + ctx.limits.stall);
        match (proto, stall) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A delayed denial is due.
    pub(super) fn apply_reply(
        &mut self,
        now: Instant,
        ctx: &mut WorkerCtx,
        reply: Reply,
    ) -> Result<(), Close> {
        match &mut self.proto {
            Proto::Rtmp(r) => r.apply_reply(now, &mut self.io, ctx, reply, true),
            Proto::Http(h) => {
                h.apply_reply(&mut self.io, ctx, reply);
                Ok(())
            }
            Proto::Relay(_) => Ok(()),
        }
    }

    /// A callback answered for the request this connection parked.
    pub(super) fn on_hook_answer(
        &mut self,
        now: Instant,
        ctx: &mut WorkerCtx,
        waiting: AwaitingHook,
        answer: crate::hooks::Answer,
    ) -> Result<(), Close> {
        match &mut self.proto {
            Proto::Rtmp(r) => r.on_hook_answer(now, &mut self.io, ctx, waiting, answer),
            Proto::Http(h) => {
                h.on_hook_answer(now, &mut self.io, ctx, waiting, answer);
                Ok(())
            }
            Proto::Relay(_) => Ok(()),
        }
    }

    /// `stream`'s HLS has something new: a request parked on it may be
    /// answered.
    pub(super) fn on_hls(
        &mut self,
        now: Instant,
        ctx: &mut WorkerCtx,
        stream: StreamId,
    ) -> Result<(), Close> {
        match &mut self.proto {
            Proto::Http(h) => h.on_hls(now, &mut self.io, ctx, stream),
            _ => Ok(()),
        }
    }

    /// A disk helper thread answered a job this connection submitted with
    /// [`super::shared::Shared::disk_reply`] (a video on demand read).
    pub(super) fn on_disk(
        &mut self,
        now: Instant,
        ctx: &mut WorkerCtx,
        reply: super::disk::DiskReply,
    ) -> Result<(), Close> {
        match &mut self.proto {
            Proto::Rtmp(r) => r.on_disk(now, &mut self.io, ctx, reply)?,
            Proto::Http(h) => h.on_disk(now, &mut self.io, ctx, reply)?,
            Proto::Relay(_) => log::debug!(
                "conn={}: disk answer {} not awaited: {:?}",
                self.io.id,
                reply.tag,
                reply.result.as_ref().err()
            ),
        }
        ctx.schedule_write(&mut self.io);
        Ok(())
    }

    /// Everything queued was written: a connection that stopped reading
    /// requests while its responses filled the queue reads them again.
    pub(super) fn on_drained(&mut self, now: Instant, ctx: &mut WorkerCtx) -> Result<(), Close> {
        match &mut self.proto {
            Proto::Http(h) => h.on_drained(now, &mut self.io, ctx),
            Proto::Rtmp(r) => r.on_drained(now, &mut self.io, ctx),
            Proto::Relay(_) => Ok(()),
        }
    }

    /// True when [`Conn::on_drained`] has work: a video-on-demand reader
    /// fed as its output drains, or an HTTP request whose reading paused
    /// on its output. A live player has none, so a write pass that drains
    /// a thousand of them does not visit them again (nor re-arm timers
    /// that a write does not move).
    pub(super) fn wants_drained(&self) -> bool {
        match &self.proto {
            Proto::Rtmp(r) => r.wants_drained(),
            Proto::Http(h) => h.wants_drained(),
            Proto::Relay(_) => false,
        }
    }

    /// The pull of `stream` failed: players waiting for it are told.
    pub(super) fn on_pull_failed(&mut self, ctx: &mut WorkerCtx, stream: StreamId) {
        match &mut self.proto {
            Proto::Rtmp(r) => r.pull_failed(&mut self.io, ctx, stream),
            Proto::Http(h) => h.pull_failed(&mut self.io, stream),
            Proto::Relay(_) => {}
        }
        ctx.schedule_write(&mut self.io);
    }

    /// Its relay task stopped: an outbound connection says goodbye and
    /// closes once flushed.
    pub(super) fn relay_goodbye(&mut self, ctx: &mut WorkerCtx, why: &str) {
        if let Proto::Relay(r) = &mut self.proto {
            r.goodbye(&mut self.io, ctx, why);
        }
    }

    /// Another publisher took over the stream this connection published:
    /// a pull stops for good (its task with it) rather than retrying.
    /// False for any other connection, which the caller closes.
    pub(super) fn relay_replaced(&mut self, ctx: &mut WorkerCtx) -> bool {
        match &mut self.proto {
            Proto::Relay(r) => {
                r.replaced(&mut self.io, ctx);
                true
            }
            _ => false,
        }
    }

    /// The stream of this connection's only player, if it has exactly one
    /// (bytes written are counted on it).
    pub(super) fn sole_stream(&self) -> Option<&std::sync::Arc<super::stream::Stream>> {
        match &self.proto {
            Proto::Rtmp(r) => r.sole_stream(),
            Proto::Http(h) => h.stream(),
            Proto::Relay(r) => r.pushed_stream(),
        }
    }

    /// The server shuts down. Returns true for an Enhanced RTMP publisher
    /// asked to reconnect elsewhere, which is served on until it leaves;
    /// the others are told goodbye and close once flushed.
    pub(super) fn begin_shutdown(&mut self, ctx: &mut WorkerCtx) -> bool {
        let asked = match &mut self.proto {
            Proto::Rtmp(r) => r.begin_shutdown(&mut self.io, ctx),
            Proto::Http(h) => {
                self.io.out.drop_unstarted_media();
                h.shutdown(&mut self.io);
                false
            }
            Proto::Relay(r) => {
                self.io.out.drop_unstarted_media();
                r.say_goodbye(&mut self.io);
                false
            }
        };
        if !asked {
            self.io
                .close_after_flush(Close::new(CloseReason::Shutdown, "server shutting down"));
        }
        ctx.schedule_write(&mut self.io);
        asked
    }

    /// A handover to a successor began: an Enhanced RTMP publisher is asked
    /// to reconnect (true); the rest is served on (an HTTP connection
    /// between requests gets one more answer, its last).
    pub(super) fn begin_handover(&mut self, ctx: &mut WorkerCtx) -> bool {
        let asked = match &mut self.proto {
            Proto::Rtmp(r) => r.begin_handover(&mut self.io, ctx),
            Proto::Http(_) | Proto::Relay(_) => false,
        };
        ctx.schedule_write(&mut self.io);
        asked
    }

    /// During a handover: true while this connection publishes a stream, or
    /// plays or relays one that is still published in this process.
    pub(super) fn serves_live_stream(&self) -> bool {
        let live =
            |s: &std::sync::Arc<super::stream::Stream>| s.with_state(|st| st.publisher().is_some());
        match &self.proto {
            Proto::Rtmp(r) => r.is_publishing() || r.played_streams().any(live),
            Proto::Http(h) => h.stream().is_some_and(live),
            Proto::Relay(r) => r.pushed_stream().is_some_and(live) || r.is_publishing(),
        }
    }

    /// True for a publisher that shutdown asked to reconnect and that is
    /// still being served.
    pub(super) fn is_draining(&self) -> bool {
        matches!(&self.proto, Proto::Rtmp(r) if r.is_draining())
    }

    /// The connection is closed (already out of the slab): what it
    /// published, played and relayed ends.
    pub(super) fn on_close(&mut self, now: Instant, ctx: &mut WorkerCtx, why: &str) {
        ctx.access.forget(self.io.id);
        match &mut self.proto {
            Proto::Rtmp(r) => r.on_close(&self.io, ctx, why),
            Proto::Http(h) => h.on_close(&self.io, ctx, why),
            Proto::Relay(r) => r.on_close(now, &self.io, ctx, why),
        }
    }

    /// What the connection is, for its close log line.
    pub(super) fn role(&self) -> &'static str {
        match &self.proto {
            Proto::Rtmp(r) => r.role(),
            Proto::Http(h) if h.is_playing() => "player",
            Proto::Http(_) => "client",
            Proto::Relay(_) => "relay",
        }
    }

    /// The connection's state, for the panic backstop's log line.
    pub(super) fn describe(&self) -> String {
        let detail = match &self.proto {
            Proto::Rtmp(r) => r.describe(),
            Proto::Http(h) => h.describe(),
            Proto::Relay(r) => r.describe(),
        };
        let io = &self.io;
        format!(
            "conn={} peer={} protocol={} role={} {detail} bytes_in={} bytes_out={} read_buf={} queued_media={} queued_control={}",
            io.id,
            io.peer,
            io.protocol.name(),
            self.role(),
            io.counters.bytes_in.load(Ordering::Relaxed),
            io.counters.bytes_out.load(Ordering::Relaxed),
            io.read_buf.len(),
            io.out.media_bytes(),
            io.out.control_bytes(),
        )
    }
}

/// The connection's player of `stream`, whatever its protocol.
fn player_of(proto: &mut Proto, stream: StreamId) -> Option<&mut Player> {
    match proto {
        Proto::Rtmp(r) => r.player_of(stream),
        Proto::Http(h) => h.player_of(stream),
        Proto::Relay(r) => r.player_of(stream),
    }
}
