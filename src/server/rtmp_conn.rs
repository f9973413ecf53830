//! RTMP connections: feeding the sans-IO [`ServerSession`] what the socket
//! brought, and acting on its events (connect, publish, play, media, stop)
//! with the worker's context: access checks, the stream registry, the
//! fan-out, relays.
//!
//! ```text
//!  accepted ─► handshake + connect ─(on_connect callback?)─► connected
//!     connected ─ publish ─(rules, on_publish?)─► publishing one or more message streams
//!     connected ─ play ────(rules, on_play?)────► playing one or more message streams
//! ```
//! A connection may publish and play on several message streams at once;
//! each publication and each player is its own value here.

use super::access::{AwaitingHook, Reply};
use super::base::StreamId;
use super::ctx::{Publication, WorkerCtx};
use super::player::{Form, Player, Role};
use super::shared::ClientState;
use super::stats::CloseReason;
use super::stream::{PublishError, PublisherInfo, PublisherKind, Stream};
use super::transport::{Close, ConnIo};
use super::vod::{self, VodEnd, VodPlayer};
use crate::auth::{Action, Denial};
use crate::config::PublisherPolicy;
use crate::hooks::Answer;
use crate::protocol::handshake::HandshakeError;
use crate::protocol::session::{
    caps_ex, Event, MediaKind, PlayRejection, PlayRequest, PublishRejection, PublishRequest,
    ServerSession, SessionError,
};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A publish accepted on a name a successor's handover pull still holds
/// (see [`PublisherKind::Handover`]). An Enhanced RTMP publisher moving
/// over from the predecessor switches at a keyframe: its frames from that
/// keyframe on come here, those before it still travel through the
/// predecessor and the pull. So the pull keeps the stream until its
/// publication ends (the publisher left the predecessor, which says so
/// after its last frame); meanwhile this publisher's messages wait, then go
/// out in order. Players see a new publisher, not an end: no frame is lost
/// on either side of the switch. More than the GOP cache's bytes waiting
/// (a predecessor that never lets go) takes the stream at once.
struct PendingTakeover {
    msid: u32,
    key: String,
    stream: Arc<Stream>,
    /// Messages received so far, in order.
    held: Vec<(MediaKind, u32, Bytes)>,
    held_bytes: usize,
}

/// An RTMP connection's protocol state.
pub(super) struct RtmpConn {
    session: ServerSession,
    publications: Vec<Publication>,
    /// Publishes waiting to take a stream over from a handover pull.
    takeovers: Vec<PendingTakeover>,
    players: Vec<Player>,
    /// Players of files (video on demand applications).
    vods: Vec<VodPlayer>,
    /// SetBufferLength announced before its play started, per message
    /// stream.
    buffers: Vec<(u32, u32)>,
    /// Events taken from the session, reused between reads.
    events: Vec<Event>,
    /// Shutdown asked this publisher to reconnect (Enhanced RTMP): it is
    /// still served until it leaves or the drain deadline passes.
    draining: bool,
    /// The `tcUrl` from `connect` (for callbacks).
    tc_url: String,
    /// Accepted on the handover listener: the successor pulling this
    /// process's streams, whose plays skip the access rules.
    successor: bool,
}

impl RtmpConn {
    pub(super) fn new(session: ServerSession) -> Self {
        Self {
            session,
            publications: Vec::new(),
            takeovers: Vec::new(),
            players: Vec::new(),
            vods: Vec::new(),
            buffers: Vec::new(),
            events: Vec::new(),
            draining: false,
            tc_url: String::new(),
            successor: false,
        }
    }

    /// This connection came to the handover listener (see `successor`).
    pub(super) fn serve_successor(&mut self) {
        self.successor = true;
    }

    /// Moves the session's pending bytes to the output queue.
    fn transmit(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx) {
        let mut any = false;
        while let Some(bytes) = self.session.poll_transmit() {
            io.push(super::queue::Item::Control(bytes));
            any = true;
        }
        if any {
            ctx.schedule_write(io);
        }
    }

    /// Feeds what was read to the session until it stops making progress:
    /// it pauses at a publish/play decision, which handling its events makes.
    pub(super) fn handle_input(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<(), Close> {
        loop {
            let before = io.read_buf.len();
            let result = self.session.handle_input(now, &mut io.read_buf);
            let mut events = std::mem::take(&mut self.events);
            while let Some(ev) = self.session.poll_event() {
                events.push(ev);
            }
            self.transmit(io, ctx);
            let leftover = io.read_buf.len();
            let decided = !events.is_empty();
            // Events before an error are valid (media already received).
            for ev in events.drain(..) {
                self.handle_event(io, ctx, ev);
            }
            self.events = events;
            if let Err(e) = result {
                let mut why = e.to_string();
                if let SessionError::Handshake(h) = &e {
                    ctx.shared
                        .stats
                        .handshake_failures
                        .fetch_add(1, Ordering::Relaxed);
                    match h {
                        HandshakeError::UnsupportedVersion(0x16) => {
                            why.push_str(" (a TLS ClientHello on the plain RTMP port?)")
                        }
                        HandshakeError::UnsupportedVersion(b'G' | b'P' | b'H') => {
                            why.push_str(" (HTTP on the RTMP port?)")
                        }
                        _ => {}
                    }
                }
                return Err(Close::new(CloseReason::Protocol, why).with_last_gasp());
            }
            // At its message budget the session stops: the rest waits for
            // this connection's next turn (Conn::on_readable).
            if leftover == 0 || (leftover == before && !decided) || self.session.has_input_left() {
                return Ok(());
            }
        }
    }

    /// True when the last input stopped at the session's message budget
    /// with bytes left to decode.
    pub(super) fn has_input_left(&self) -> bool {
        self.session.has_input_left()
    }

    fn handle_event(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, ev: Event) {
        match ev {
            Event::ConnectRequested { app, tc_url, query } => {
                self.tc_url = tc_url;
                let waiting = AwaitingHook::Connect {
                    app: app.to_string(),
                };
                let index = ctx.index;
                match ctx
                    .access
                    .ask_hook(&ctx.shared, index, io, &query, &self.tc_url, waiting)
                {
                    // No on_connect for this application.
                    Some(_) => self.session.accept_connect(),
                    None => ctx.set_client_state(io.id, ClientState::Authorizing, None),
                }
            }
            Event::Connected { app, tc_url } => {
                let caps = self.session.client_caps();
                // The query may carry a key or a signature: never logged.
                let shown = tc_url.split_once('?').map_or(tc_url.as_str(), |(u, _)| u);
                log::debug!(
                    "conn={} peer={}: connect app={app:?} tcUrl={shown:?} fourCCs={:?} capsEx={:?}",
                    io.id,
                    io.peer,
                    caps.fourccs,
                    caps.caps_ex
                );
                if self.tc_url.is_empty() {
                    self.tc_url = tc_url;
                }
                ctx.set_client_state(io.id, ClientState::Connected, None);
            }
            Event::PublishRequested(req) => self.on_publish(io, ctx, req),
            Event::Media {
                stream_id,
                kind,
                timestamp,
                payload,
            } => {
                if self.takeovers.iter().any(|t| t.msid == stream_id) {
                    return self.takeover_media(io, ctx, stream_id, kind, timestamp, payload);
                }
                let Some(p) = self.publications.iter().find(|p| p.msid == stream_id) else {
                    return;
                };
                ctx.publish_frame(&p.stream, io.id, kind, timestamp, payload);
            }
            Event::PublishStopped { stream_id } => {
                self.stop_publication(io, ctx, stream_id, "unpublished")
            }
            Event::PlayRequested(req) => self.on_play(io, ctx, req),
            Event::PlayStopped { stream_id } => {
                self.stop_player(io, ctx, stream_id, "stopped by player");
                self.stop_vod(io, ctx, stream_id, "stopped by player");
            }
            Event::Pause {
                stream_id, paused, ..
            } => {
                if let Some(p) = self.players.iter_mut().find(|p| p.msid == stream_id) {
                    p.set_paused(paused);
                }
                let now = Instant::now();
                self.with_vod(io, ctx, stream_id, |v, io, session, ctx| {
                    v.set_paused(now, paused, io, session, ctx)
                });
            }
            Event::Seek {
                stream_id,
                position_ms,
            } => {
                if self.vods.iter().any(|v| v.msid == stream_id) {
                    let now = Instant::now();
                    self.with_vod(io, ctx, stream_id, |v, io, session, ctx| {
                        v.seek(now, position_ms, io, session, ctx)
                    });
                } else {
                    // A live stream has nowhere to seek; say so, keep playing.
                    self.session.seek_failed(stream_id);
                }
            }
            Event::BufferLength { stream_id, millis } => {
                match self.vods.iter_mut().find(|v| v.msid == stream_id) {
                    Some(v) => v.set_buffer(millis),
                    None => {
                        self.buffers.retain(|(id, _)| *id != stream_id);
                        if self.buffers.len() < 8 {
                            self.buffers.push((stream_id, millis));
                        }
                    }
                }
            }
            Event::Receive {
                stream_id,
                kind,
                enabled,
            } => {
                if let Some(p) = self.players.iter_mut().find(|p| p.msid == stream_id) {
                    p.set_receive(kind, enabled);
                }
            }
        }
        self.transmit(io, ctx);
    }

    fn on_publish(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, req: PublishRequest) {
        let key = format!("{}/{}", req.app, req.name);
        #[cfg(feature = "fault-injection")]
        if req.name == super::fault::FAULT_PANIC_ON_PUBLISH {
            panic!("injected fault: publish {key}");
        }
        let verdict = ctx.shared.auth.check(
            Action::Publish,
            &req.app,
            &req.name,
            &req.query,
            io.peer.ip(),
        );
        if let Err(why) = verdict {
            let reply = Reply::RejectPublish(req.stream_id);
            return self.deny(io, ctx, Action::Publish, &key, why, reply);
        }
        let query = req.query.clone();
        let index = ctx.index;
        match ctx.access.ask_hook(
            &ctx.shared,
            index,
            io,
            &query,
            &self.tc_url,
            AwaitingHook::Publish(req),
        ) {
            Some(AwaitingHook::Publish(req)) => self.publish_allowed(io, ctx, req),
            Some(_) => {}
            None => ctx.set_client_state(io.id, ClientState::Authorizing, None),
        }
    }

    /// Claims the name for an authorized publisher.
    fn publish_allowed(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, req: PublishRequest) {
        let key = format!("{}/{}", req.app, req.name);
        let index = ctx.index;
        let replace = ctx.shared.config.second_publisher == PublisherPolicy::Replace;
        let info = PublisherInfo {
            conn_id: io.id,
            worker: index,
            peer: io.peer,
            kind: if io.is_tls() {
                PublisherKind::Rtmps
            } else {
                PublisherKind::Rtmp
            },
            since: SystemTime::now(),
        };
        let registry = &ctx.shared.registry;
        // A successor's handover pull holds the name: take it over at the
        // first frame, whatever `second_publisher` says.
        let handover = registry.get(&key).is_some_and(|s| {
            s.with_state(|st| {
                st.publisher()
                    .is_some_and(|p| p.kind == PublisherKind::Handover)
            })
        });
        let claimed = if handover {
            registry.publish(&key, info).map(|(s, n)| (s, n, None))
        } else if replace && !self.publications.iter().any(|p| p.stream.key == key) {
            Ok(registry.publish_replacing(&key, info))
        } else {
            registry.publish(&key, info).map(|(s, n)| (s, n, None))
        };
        match claimed {
            Ok((stream, notice, old)) => {
                self.session.accept_publish(req.stream_id);
                self.publications.push(Publication {
                    msid: req.stream_id,
                    stream: stream.clone(),
                });
                log::info!(
                    "publish start stream={key} conn={} peer={} worker={index} protocol={} type={:?}",
                    io.id,
                    io.peer,
                    io.protocol.name(),
                    req.publish_type
                );
                ctx.set_client_state(io.id, ClientState::Publishing, Some(&key));
                ctx.publication_started(Instant::now(), &stream, notice, io.id);
                if let Some(old) = old {
                    log::info!(
                        "publish replaced stream={key}: conn={} peer={} worker={} loses it",
                        old.conn_id,
                        old.peer,
                        old.worker
                    );
                    ctx.close_replaced(&old);
                }
            }
            Err(PublishError::AlreadyPublishing { .. }) if handover => {
                self.session.accept_publish(req.stream_id);
                log::info!(
                    "publish start stream={key} conn={} peer={} worker={index} protocol={} type={:?}: takes the stream over from the handover pull at its first frame",
                    io.id,
                    io.peer,
                    io.protocol.name(),
                    req.publish_type
                );
                let stream = ctx.shared.registry.await_takeover(&key, io.id);
                self.takeovers.push(PendingTakeover {
                    msid: req.stream_id,
                    key: key.clone(),
                    stream,
                    held: Vec::new(),
                    held_bytes: 0,
                });
                ctx.set_client_state(io.id, ClientState::Publishing, Some(&key));
            }
            Err(PublishError::AlreadyPublishing { peer }) => {
                self.session
                    .reject_publish(req.stream_id, PublishRejection::BadName);
                log::info!(
                    "publish refused stream={key} conn={} peer={} worker={index}: already published by {peer}",
                    io.id,
                    io.peer
                );
            }
        }
    }

    fn on_play(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, req: PlayRequest) {
        if self.successor {
            // The successor's pull: it serves the same players under the
            // same rules, and the handover listener is on loopback.
            return self.play_allowed(io, ctx, req);
        }
        let key = format!("{}/{}", req.app, req.name);
        let verdict =
            ctx.shared
                .auth
                .check(Action::Play, &req.app, &req.name, &req.query, io.peer.ip());
        if let Err(why) = verdict {
            let reply = Reply::RejectPlay(req.stream_id);
            return self.deny(io, ctx, Action::Play, &key, why, reply);
        }
        let query = req.query.clone();
        let index = ctx.index;
        match ctx.access.ask_hook(
            &ctx.shared,
            index,
            io,
            &query,
            &self.tc_url,
            AwaitingHook::Play(req),
        ) {
            Some(AwaitingHook::Play(req)) => self.play_allowed(io, ctx, req),
            Some(_) => {}
            None => ctx.set_client_state(io.id, ClientState::Authorizing, None),
        }
    }

    /// Starts an authorized player.
    fn play_allowed(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, req: PlayRequest) {
        if let Some(app) = ctx.shared.config.vod_app(&req.app).cloned() {
            return self.vod_play(io, ctx, req, &app);
        }
        let key = format!("{}/{}", req.app, req.name);
        self.session.accept_play(req.stream_id, req.reset);
        self.transmit(io, ctx);
        let form = Form::rtmp(self.session.chunk_size(), req.stream_id);
        let caps = self.session.client_caps();
        let (player, live, cached) =
            ctx.start_player(io, &key, req.stream_id, form, Role::Viewer, Some(caps));
        self.players.push(player);
        if !live {
            // An edge: the first player of a stream starts its pull.
            ctx.ensure_pull(&key);
        }
        log::info!(
            "play start stream={key} conn={} peer={} worker={} protocol={} live={live} cached_frames={cached}",
            io.id,
            io.peer,
            ctx.index,
            io.protocol.name()
        );
        ctx.set_client_state(io.id, ClientState::Playing, Some(&key));
    }

    /// Starts an authorized player of a file: it is opened on a disk
    /// thread, and the play is answered once its header is read.
    fn vod_play(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: PlayRequest,
        app: &crate::vod_settings::VodApp,
    ) {
        let name = req.name.as_str();
        let shown = name
            .strip_prefix("mp4:")
            .or_else(|| name.strip_prefix("flv:"))
            .unwrap_or(name);
        let key = format!("{}/{shown}", req.app);
        let Some((path, container)) = vod::file_path(app, &req.name) else {
            log::info!(
                "vod play refused stream={key} conn={} peer={}: not a file name this application serves",
                io.id,
                io.peer
            );
            vod::TOTALS.not_found.fetch_add(1, Ordering::Relaxed);
            self.session.reject_play_because(
                req.stream_id,
                crate::protocol::session::PlayRejection::StreamNotFound,
                "No such file.",
            );
            return;
        };
        let lead = self
            .buffers
            .iter()
            .find(|(id, _)| *id == req.stream_id)
            .map(|(_, ms)| Duration::from_millis(u64::from(*ms)));
        let opened = VodPlayer::open(
            ctx,
            io.id,
            req.stream_id,
            key.clone(),
            path,
            container,
            app,
            req.start,
            req.duration,
            req.reset,
            lead,
        );
        match opened {
            Ok(mut v) => {
                if let Some((_, ms)) = self.buffers.iter().find(|(id, _)| *id == req.stream_id) {
                    v.set_buffer(*ms);
                }
                log::info!(
                    "vod play stream={key} file={} conn={} peer={} worker={} protocol={} start={} duration={}",
                    v.path().display(),
                    io.id,
                    io.peer,
                    ctx.index,
                    io.protocol.name(),
                    req.start,
                    req.duration
                );
                vod::TOTALS.players.fetch_add(1, Ordering::Relaxed);
                self.vods.push(v);
                ctx.set_client_state(io.id, ClientState::Playing, Some(&key));
            }
            Err(why) => {
                log::warn!("vod play stream={key} conn={}: {why}", io.id);
                self.session.reject_play_because(
                    req.stream_id,
                    crate::protocol::session::PlayRejection::Failed,
                    "The server is busy.",
                );
            }
        }
    }

    /// Runs `f` on the VOD player of message stream `msid`; a player that
    /// ends is removed (its reason logged).
    fn with_vod(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        msid: u32,
        f: impl FnOnce(
            &mut VodPlayer,
            &mut ConnIo,
            &mut ServerSession,
            &mut WorkerCtx,
        ) -> Result<(), VodEnd>,
    ) {
        let Some(v) = self.vods.iter_mut().find(|v| v.msid == msid) else {
            return;
        };
        let result = f(v, io, &mut self.session, ctx);
        self.transmit(io, ctx);
        if let Err(end) = result {
            self.stop_vod(io, ctx, end.msid, &end.why);
        }
    }

    /// Ends the VOD player of message stream `msid`.
    fn stop_vod(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, msid: u32, why: &str) {
        let Some(pos) = self.vods.iter().position(|v| v.msid == msid) else {
            return;
        };
        let v = self.vods.remove(pos);
        self.vod_ended(io, ctx, &v, why);
    }

    fn vod_ended(&self, io: &ConnIo, ctx: &mut WorkerCtx, v: &VodPlayer, why: &str) {
        vod::TOTALS.players.fetch_sub(1, Ordering::Relaxed);
        log::info!(
            "vod stop stream={} file={} conn={} peer={} worker={} bytes={}: {why}",
            v.key,
            v.path().display(),
            io.id,
            io.peer,
            ctx.index,
            v.bytes
        );
        ctx.access
            .notify_hook(&ctx.shared, "play_done", &v.key, io, "");
    }

    /// A disk thread answered for one of this connection's VOD players.
    pub(super) fn on_disk(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        reply: super::disk::DiskReply,
    ) -> Result<(), Close> {
        let msid = vod::FileSource::player_of(reply.tag);
        let was_opening = self
            .vods
            .iter()
            .find(|v| v.msid == msid)
            .is_some_and(VodPlayer::is_opening);
        self.with_vod(io, ctx, msid, |v, io, session, ctx| {
            v.on_disk(now, reply, io, session, ctx)
        });
        if was_opening {
            // The play was answered (or refused): the session reads on.
            self.handle_input(now, io, ctx)?;
        }
        Ok(())
    }

    /// True when [`RtmpConn::on_drained`] has work (a VOD reader here).
    pub(super) fn wants_drained(&self) -> bool {
        !self.vods.is_empty()
    }

    /// The output queue drained: VOD players queue more.
    pub(super) fn on_drained(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<(), Close> {
        let ids: Vec<u32> = self.vods.iter().map(|v| v.msid).collect();
        for msid in ids {
            self.with_vod(io, ctx, msid, |v, io, session, ctx| {
                v.on_drained(now, io, session, ctx)
            });
        }
        Ok(())
    }

    /// Logs a denial and answers it now, or later when this address has
    /// failed recently (the session stays paused meanwhile).
    fn deny(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        action: Action,
        key: &str,
        why: Denial,
        reply: Reply,
    ) {
        let index = ctx.index;
        if let Some(reply) = ctx
            .access
            .deny(&ctx.shared, index, io, action, key, why, reply)
        {
            // An immediate reply cannot fail: the close it may ask for
            // happens once the reply is written.
            let _ = self.apply_reply(Instant::now(), io, ctx, reply, false);
        }
    }

    /// Answers a denied request; `resume` feeds the session what it
    /// buffered while it waited.
    pub(super) fn apply_reply(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        reply: Reply,
        resume: bool,
    ) -> Result<(), Close> {
        match reply {
            Reply::RejectConnect => {
                self.session.reject_connect();
                io.close_after_flush(Close::new(CloseReason::Done, "connect rejected"));
            }
            Reply::RejectPublish(sid) => self
                .session
                .reject_publish(sid, PublishRejection::Unauthorized),
            Reply::RejectPlay(sid) => self.session.reject_play(sid, PlayRejection::Unauthorized),
            Reply::Http(_) => {}
        }
        self.transmit(io, ctx);
        ctx.schedule_write(io);
        if resume {
            self.handle_input(now, io, ctx)?;
        }
        Ok(())
    }

    /// A callback answered: carry on with the parked request, then with
    /// what the client sent meanwhile.
    pub(super) fn on_hook_answer(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        waiting: AwaitingHook,
        answer: Answer,
    ) -> Result<(), Close> {
        let (action, app, name) = waiting.describe();
        let key = format!("{app}/{name}");
        match answer {
            Answer::Deny(why) => {
                log::info!(
                    "{} callback for stream={key} conn={}: {why}",
                    action.name(),
                    io.id
                );
                let reply = waiting.denial(Denial::Callback);
                self.deny(io, ctx, action, &key, Denial::Callback, reply);
            }
            Answer::Allow | Answer::Rename(_) => {
                let renamed = match answer {
                    Answer::Rename(n) => {
                        log::info!(
                            "{} callback for stream={key} conn={}: renamed to {app}/{n}",
                            action.name(),
                            io.id
                        );
                        Some(n)
                    }
                    _ => None,
                };
                match waiting {
                    AwaitingHook::Connect { .. } => self.session.accept_connect(),
                    AwaitingHook::Publish(mut r) => {
                        if let Some(n) = renamed {
                            r.name = n;
                        }
                        self.publish_allowed(io, ctx, r);
                    }
                    AwaitingHook::Play(mut r) => {
                        if let Some(n) = renamed {
                            r.name = n;
                        }
                        self.play_allowed(io, ctx, r);
                    }
                    AwaitingHook::Http { .. } => {}
                }
                self.transmit(io, ctx);
            }
        }
        ctx.schedule_write(io);
        self.handle_input(now, io, ctx)
    }

    /// Media on a publish waiting to take its stream over from a handover
    /// pull (see [`PendingTakeover`]): held until the pull's publication
    /// ended, then published in order.
    fn takeover_media(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        msid: u32,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    ) {
        let Some(pos) = self.takeovers.iter().position(|t| t.msid == msid) else {
            return;
        };
        let pending = &mut self.takeovers[pos];
        pending.held_bytes += payload.len();
        pending.held.push((kind, timestamp, payload));
        let holder = pending
            .stream
            .with_state(|st| st.publisher().map(|p| (p.kind, p.conn_id)));
        let limit = ctx.shared.config.gop_cache_bytes;
        let force = match holder {
            Some((PublisherKind::Handover, _)) if pending.held_bytes <= limit => return,
            Some((PublisherKind::Handover, _)) => true,
            None => false,
            Some((_, conn)) => {
                let pending = self.takeovers.remove(pos);
                log::info!(
                    "publish refused stream={} conn={} peer={}: conn={conn} published it meanwhile",
                    pending.key,
                    io.id,
                    io.peer
                );
                if let Some(notice) = ctx.shared.registry.cancel_takeover(&pending.stream, io.id) {
                    ctx.notify(&pending.stream, notice, false);
                }
                return;
            }
        };
        let pending = self.takeovers.remove(pos);
        let info = PublisherInfo {
            conn_id: io.id,
            worker: ctx.index,
            peer: io.peer,
            kind: if io.is_tls() {
                PublisherKind::Rtmps
            } else {
                PublisherKind::Rtmp
            },
            since: SystemTime::now(),
        };
        let registry = &ctx.shared.registry;
        let (stream, notice, old) = if force {
            log::warn!(
                "publish takeover stream={} conn={}: {} bytes waited for the handover pull to end; taking the stream now",
                pending.key,
                io.id,
                pending.held_bytes
            );
            registry.publish_replacing(&pending.key, info)
        } else {
            match registry.publish(&pending.key, info) {
                Ok((stream, notice)) => (stream, notice, None),
                Err(PublishError::AlreadyPublishing { peer }) => {
                    log::info!(
                        "publish refused stream={} conn={}: already published by {peer}",
                        pending.key,
                        io.id
                    );
                    return;
                }
            }
        };
        self.publications.push(Publication {
            msid,
            stream: stream.clone(),
        });
        log::info!(
            "publish takeover stream={} conn={} peer={} worker={} held_messages={}: the handover pull gave way",
            pending.key,
            io.id,
            io.peer,
            ctx.index,
            pending.held.len()
        );
        ctx.publication_started(Instant::now(), &stream, notice, io.id);
        if let Some(old) = old {
            ctx.close_replaced(&old);
        }
        for (kind, timestamp, payload) in pending.held {
            if let Some((frame, interest)) = stream.push_from(io.id, kind, timestamp, payload) {
                ctx.fan_out(interest, frame, stream.id);
            }
        }
    }

    /// A publish that waited to take its stream over ends first.
    fn cancel_takeover(&mut self, io: &ConnIo, ctx: &mut WorkerCtx, msid: Option<u32>) {
        let (gone, kept): (Vec<PendingTakeover>, _) = std::mem::take(&mut self.takeovers)
            .into_iter()
            .partition(|t| msid.map_or(true, |m| m == t.msid));
        self.takeovers = kept;
        for t in gone {
            if let Some(notice) = ctx.shared.registry.cancel_takeover(&t.stream, io.id) {
                ctx.notify(&t.stream, notice, false);
            }
        }
    }

    fn stop_publication(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, msid: u32, why: &str) {
        self.cancel_takeover(io, ctx, Some(msid));
        let Some(pos) = self.publications.iter().position(|p| p.msid == msid) else {
            return;
        };
        let p = self.publications.remove(pos);
        ctx.end_publication(io, p, why);
        ctx.set_client_state(io.id, ClientState::Connected, None);
    }

    fn stop_player(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, msid: u32, why: &str) {
        let Some(pos) = self.players.iter().position(|p| p.msid == msid) else {
            return;
        };
        let p = self.players.remove(pos);
        ctx.end_player(io, p, why);
    }

    /// This connection's player of `stream` (frames go to it directly,
    /// `Conn::deliver_frames`).
    pub(super) fn player_of(&mut self, stream: StreamId) -> Option<&mut Player> {
        self.players.iter_mut().find(|p| p.stream.id == stream)
    }

    /// A publish or unpublish notice of `stream` for this connection's
    /// player of it.
    pub(super) fn notify(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        stream: StreamId,
        seq: u64,
        published: bool,
    ) {
        let Some(p) = self.players.iter_mut().find(|p| p.stream.id == stream) else {
            return;
        };
        if !p.publisher_changed(seq) {
            return;
        }
        if published {
            self.session.notify_published(p.msid);
        } else {
            self.session.notify_unpublished(p.msid);
        }
        self.transmit(io, ctx);
    }

    /// The pull of `stream` failed: a player still waiting for it gets
    /// NetStream.Play.StreamNotFound and stops.
    pub(super) fn pull_failed(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, stream: StreamId) {
        let Some(p) = self.players.iter().find(|p| p.stream.id == stream) else {
            return;
        };
        if p.stream.with_state(|st| st.publisher().is_some()) {
            return;
        }
        let msid = p.msid;
        self.session.notify_not_found(msid);
        self.transmit(io, ctx);
        self.stop_player(io, ctx, msid, "the origin is unreachable");
    }

    /// Deadlines: handshake, pings, an idle publisher.
    pub(super) fn on_timeout(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<(), Close> {
        if let Err(e) = self.session.handle_timeout(now) {
            if !self.session.is_connected() {
                ctx.shared
                    .stats
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
            }
            return Err(Close::new(CloseReason::Timeout, e.to_string()));
        }
        self.transmit(io, ctx);
        let ids: Vec<u32> = self.vods.iter().map(|v| v.msid).collect();
        for msid in ids {
            self.with_vod(io, ctx, msid, |v, io, session, ctx| {
                v.on_timeout(now, io, session, ctx)
            });
        }
        Ok(())
    }

    /// When [`RtmpConn::on_timeout`] next has work.
    pub(super) fn deadline(&self) -> Instant {
        let session = self.session.poll_timeout();
        self.vods
            .iter()
            .filter_map(VodPlayer::deadline)
            .fold(session, Instant::min)
    }

    /// Shutdown: an Enhanced RTMP publisher that announced capsEx Reconnect
    /// is asked to reconnect (it switches at its next keyframe) and is
    /// served until it leaves (true); everyone else is told the server is
    /// going away.
    pub(super) fn begin_shutdown(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx) -> bool {
        if self.session.is_publishing() && self.session.client_caps().has(caps_ex::RECONNECT) {
            self.session
                .send_reconnect_request(ctx.shared.config.reconnect_url.as_deref());
            self.draining = true;
        } else {
            io.out.drop_unstarted_media();
            self.session.notify_shutdown();
        }
        self.transmit(io, ctx);
        self.draining
    }

    pub(super) fn is_draining(&self) -> bool {
        self.draining
    }

    /// A handover began: an Enhanced RTMP publisher that announced capsEx
    /// Reconnect is asked to reconnect (reaching the successor, which now
    /// has the ports) and is served until it leaves (true). Nothing else
    /// changes: other publishers and players are served on.
    pub(super) fn begin_handover(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx) -> bool {
        if !(self.session.is_publishing() && self.session.client_caps().has(caps_ex::RECONNECT)) {
            return false;
        }
        self.session
            .send_reconnect_request(ctx.shared.config.reconnect_url.as_deref());
        self.transmit(io, ctx);
        true
    }

    /// True while this connection publishes a stream (or waits to take one
    /// over).
    pub(super) fn is_publishing(&self) -> bool {
        !self.publications.is_empty() || !self.takeovers.is_empty()
    }

    /// The streams this connection plays.
    pub(super) fn played_streams(
        &self,
    ) -> impl Iterator<Item = &std::sync::Arc<super::stream::Stream>> {
        self.players.iter().map(|p| &p.stream)
    }

    /// The connection closed: its publications and players end.
    pub(super) fn on_close(&mut self, io: &ConnIo, ctx: &mut WorkerCtx, why: &str) {
        self.cancel_takeover(io, ctx, None);
        for p in std::mem::take(&mut self.publications) {
            ctx.end_publication(io, p, why);
        }
        if let Some(app) = self.session.app() {
            let app = format!("{app}/");
            ctx.access
                .notify_hook(&ctx.shared, "done", &app, io, &self.tc_url);
        }
        for p in std::mem::take(&mut self.players) {
            ctx.end_player(io, p, why);
        }
        for v in std::mem::take(&mut self.vods) {
            self.vod_ended(io, ctx, &v, why);
        }
    }

    /// The stream of this connection's only player, if it has exactly one.
    pub(super) fn sole_stream(&self) -> Option<&std::sync::Arc<super::stream::Stream>> {
        match self.players.as_slice() {
            [p] => Some(&p.stream),
            _ => None,
        }
    }

    /// `publisher`, `player` or `client`, for logs.
    pub(super) fn role(&self) -> &'static str {
        if self.is_publishing() {
            "publisher"
        } else if !self.players.is_empty() || !self.vods.is_empty() {
            "player"
        } else {
            "client"
        }
    }

    /// The state, for the panic backstop's log line.
    pub(super) fn describe(&self) -> String {
        let keys = |it: &mut dyn Iterator<Item = &str>| it.collect::<Vec<_>>().join(",");
        format!(
            "connected={} publishing=[{}] playing=[{}] vod=[{}]",
            self.session.is_connected(),
            keys(&mut self.publications.iter().map(|p| p.stream.key.as_str())),
            keys(&mut self.players.iter().map(|p| p.stream.key.as_str())),
            keys(&mut self.vods.iter().map(|v| v.key.as_str())),
        )
    }
}
