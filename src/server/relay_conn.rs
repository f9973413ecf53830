//! Outbound relay connections: an RTMP client session (the sans-IO
//! [`ClientSession`]) in the worker's slab beside accepted connections,
//! serving one relay task (`tasks.rs`).
//!
//! ```text
//!  Connecting ──writable──► Handshaking ──connect _result──► Creating
//!       ──createStream _result──► Starting ──Publish.Start / Play.Start──► Pushing / Pulling
//!       ──close──► its task backs off and retries with a new connection
//! ```
//!
//! A push runs on the publisher's worker and is a [`Player`] of the stream
//! like any other: frames reach it from the shared wire form (chunk size and
//! message stream id permitting), through the same bounded queue and
//! skip-to-keyframe policy, so a slow target never slows the source. A pull
//! is a publisher like an encoder: what it receives is published through
//! `WorkerCtx::publish_frame` and fans out to every worker's players (and
//! to HLS).

use super::base::{StreamId, TaskId};
use super::ctx::{Publication, WorkerCtx};
use super::player::{Form, Player, Role};
use super::queue::Item;
use super::relays::TaskState;
use super::shared::ClientState;
use super::stats::CloseReason;
use super::stream::{PublishError, PublisherInfo, PublisherKind, Stream};
use super::transport::{Close, ConnIo};
use crate::protocol::amf::Amf0Value;
use crate::protocol::client::{ClientConfig, ClientEvent, ClientSession};
use crate::protocol::message::UserControl;
use crate::protocol::session::MediaKind;
use crate::relay::RELAY_START_TIMEOUT;
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Where an outbound connection is in its exchange.
enum Phase {
    /// TLS and RTMP handshakes, then `connect`.
    Handshaking,
    /// `createStream` sent.
    Creating,
    /// `publish` / `play` sent on this message stream.
    Starting(u32),
    /// Publishing the stream at the target, as a player of it here.
    Pushing {
        msid: u32,
        since: Instant,
        player: Player,
    },
    /// Playing the stream at the origin; the local publication exists
    /// from its first media message until the origin's stream ends.
    Pulling {
        msid: u32,
        since: Instant,
        publication: Option<Publication>,
    },
}

/// The connection's transport-level state.
enum RelayLink {
    /// TCP connect in progress.
    Connecting(ClientConfig),
    /// Connected: the RTMP client session and where it is.
    Up {
        session: Box<ClientSession>,
        phase: Phase,
    },
}

/// An outbound connection's protocol state.
pub(super) struct RelayConn {
    task: TaskId,
    push: bool,
    /// The name published or played at the peer.
    remote: String,
    /// The local stream key.
    key: String,
    /// Until when it may take to become active.
    deadline: Instant,
    last_input: Instant,
    link: RelayLink,
    /// A successor's pull from its predecessor (`--takeover`): publishes
    /// as [`PublisherKind::Handover`].
    handover: bool,
}

impl RelayConn {
    /// The connection of task `task`, connecting now (its socket is in
    /// flight); `push`: it publishes `key` as `remote` at the peer, else it
    /// plays `remote` there and publishes it here as `key`.
    pub(super) fn new(
        task: TaskId,
        push: bool,
        key: String,
        remote: String,
        config: ClientConfig,
        deadline: Instant,
        now: Instant,
    ) -> Self {
        Self {
            task,
            push,
            remote,
            key,
            deadline,
            last_input: now,
            link: RelayLink::Connecting(config),
            handover: false,
        }
    }

    /// Marks a successor's pull from its predecessor (see `handover`).
    pub(super) fn pull_from_predecessor(&mut self) {
        self.handover = true;
    }

    /// A publisher here took over the stream this pull published: the
    /// task stops, the connection says goodbye.
    pub(super) fn replaced(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx) {
        let why = "a publisher here took the stream over";
        ctx.relays.stop(&ctx.shared, self.task, why);
        self.goodbye(io, ctx, why);
    }

    fn transmit(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx) {
        if let RelayLink::Up { session, .. } = &mut self.link {
            let mut any = false;
            while let Some(bytes) = session.poll_transmit() {
                io.push(Item::Control(bytes));
                any = true;
            }
            if any {
                ctx.schedule_write(io);
            }
        }
    }

    /// A connecting socket became writable: connected, or failed.
    pub(super) fn on_writable(
        &mut self,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<(), Close> {
        let RelayLink::Connecting(config) = &self.link else {
            return Ok(());
        };
        // mio: a writable connecting socket has connected when it has a peer
        // address and no pending error.
        match io.socket().take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                return Err(Close::new(CloseReason::Peer, format!("connect: {e}")));
            }
        }
        if let Err(e) = io.socket().peer_addr() {
            if e.kind() == std::io::ErrorKind::NotConnected {
                return Ok(()); // not yet
            }
            return Err(Close::new(CloseReason::Peer, format!("connect: {e}")));
        }
        if let Err(e) = io.socket().set_nodelay(true) {
            log::debug!("relay conn={}: TCP_NODELAY: {e}", io.id);
        }
        let seed = io.id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.link = RelayLink::Up {
            session: Box::new(ClientSession::new(config.clone(), seed)),
            phase: Phase::Handshaking,
        };
        ctx.shared.relays.set_state(self.task, TaskState::Handshake);
        self.transmit(io, ctx);
        Ok(())
    }

    /// Feeds what the connection read to its client session.
    pub(super) fn handle_input(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<(), Close> {
        self.last_input = now;
        let RelayLink::Up { session, .. } = &mut self.link else {
            io.read_buf.clear();
            return Ok(());
        };
        let result = session.handle_input(&mut io.read_buf);
        let mut events = Vec::new();
        while let Some(ev) = session.poll_event() {
            events.push(ev);
        }
        self.transmit(io, ctx);
        for ev in events {
            self.handle_event(now, io, ctx, ev)
                .map_err(|why| Close::new(CloseReason::Protocol, why))?;
            if io.is_closing() {
                break;
            }
        }
        self.transmit(io, ctx);
        result.map_err(|e| Close::new(CloseReason::Protocol, e.to_string()))
    }

    fn handle_event(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        ev: ClientEvent,
    ) -> Result<(), String> {
        let RelayLink::Up { session, phase } = &mut self.link else {
            return Ok(());
        };
        match ev {
            ClientEvent::Connected => {
                if self.push {
                    // What encoders send: some ingest servers expect it.
                    let name = Amf0Value::string(self.remote.clone());
                    session.send_command(0, "releaseStream", &[Amf0Value::Null, name.clone()]);
                    session.send_command(0, "FCPublish", &[Amf0Value::Null, name]);
                }
                session.create_stream();
                *phase = Phase::Creating;
            }
            ClientEvent::StreamCreated { stream_id } if matches!(phase, Phase::Creating) => {
                if self.push {
                    session.publish(stream_id, &self.remote);
                } else {
                    session.play(stream_id, &self.remote);
                }
                *phase = Phase::Starting(stream_id);
            }
            ClientEvent::Status { code, level, .. } => {
                return self.on_status(now, io, ctx, &level, &code)
            }
            // An `_error` to `connect` (a refused app or key): this attempt
            // failed. Later ones may answer releaseStream / FCPublish, which
            // some servers do not implement (as ffmpeg, carry on); a refused
            // createStream runs into the start deadline, a refused publish
            // or play is an error onStatus.
            ClientEvent::Command { name, args }
                if name == "_error" && matches!(phase, Phase::Handshaking) =>
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
            } if !self.push => {
                if kind == MediaKind::Data && is_sample_access(&payload) {
                    // The origin's own notice to its players; ours send theirs.
                    return Ok(());
                }
                self.pulled_media(now, io, ctx, kind, timestamp, payload);
            }
            ClientEvent::UserControl(UserControl::StreamEof(_)) if !self.push => {
                self.end_pulled_publication(io, ctx, "the origin's stream ended");
            }
            _ => {}
        }
        Ok(())
    }

    fn on_status(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        level: &str,
        code: &str,
    ) -> Result<(), String> {
        let RelayLink::Up { phase, .. } = &mut self.link else {
            return Ok(());
        };
        match (code, &*phase) {
            ("NetStream.Publish.Start", Phase::Starting(msid)) if self.push => {
                let msid = *msid;
                let Some(stream) = ctx.relays.pushed_stream(self.task).map(|s| s.key.clone())
                else {
                    return Ok(());
                };
                self.activate(io, ctx, TaskState::Publishing);
                // The push joins the stream like a player, from the latest
                // headers and the cached GOP (a keyframe).
                let form = Form::Push {
                    chunk_size: ctx.shared.config.chunk_size,
                    msid,
                };
                let (player, _, _) = ctx.start_player(io, &stream, msid, form, Role::Relay, None);
                if let RelayLink::Up { phase, .. } = &mut self.link {
                    *phase = Phase::Pushing {
                        msid,
                        since: now,
                        player,
                    };
                }
            }
            ("NetStream.Play.Start" | "NetStream.Play.Reset", Phase::Starting(msid))
                if !self.push =>
            {
                *phase = Phase::Pulling {
                    msid: *msid,
                    since: now,
                    publication: None,
                };
                self.activate(io, ctx, TaskState::Playing);
            }
            ("NetStream.Play.UnpublishNotify", _) if self.handover => {
                // The predecessor's publisher left (moved here, or ended):
                // nothing more will come from it.
                let why = "the predecessor's stream ended";
                ctx.relays.stop(&ctx.shared, self.task, why);
                self.goodbye(io, ctx, why);
            }
            ("NetStream.Play.UnpublishNotify", _) if !self.push => {
                self.end_pulled_publication(io, ctx, "the origin's stream was unpublished");
            }
            (_, _) if level == "error" => return Err(format!("the peer answered {code}")),
            _ => {}
        }
        Ok(())
    }

    fn activate(&mut self, io: &ConnIo, ctx: &mut WorkerCtx, state: TaskState) {
        ctx.relays.active(&ctx.shared, self.task, state);
        let client = if self.push {
            ClientState::RelayPush
        } else {
            ClientState::RelayPull
        };
        ctx.set_client_state(io.id, client, None);
        log::info!(
            "relay {} id={} conn={} peer={} worker={}",
            state.name(),
            self.task,
            io.id,
            io.peer,
            ctx.index
        );
    }

    /// A media message from the origin: published locally (claiming the
    /// name at the first one), then fanned out like an encoder's.
    fn pulled_media(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    ) {
        let RelayLink::Up {
            phase: Phase::Pulling { publication, .. },
            ..
        } = &mut self.link
        else {
            return;
        };
        let stream = match publication {
            Some(p) => p.stream.clone(),
            None => {
                let info = PublisherInfo {
                    conn_id: io.id,
                    worker: ctx.index,
                    peer: io.peer,
                    kind: if self.handover {
                        PublisherKind::Handover
                    } else {
                        PublisherKind::Pull
                    },
                    since: SystemTime::now(),
                };
                match ctx.shared.registry.publish(&self.key, info) {
                    Ok((stream, notice)) => {
                        *publication = Some(Publication {
                            msid: 0,
                            stream: stream.clone(),
                        });
                        log::info!(
                            "publish start stream={} conn={} peer={} worker={} protocol=pull",
                            self.key,
                            io.id,
                            io.peer,
                            ctx.index
                        );
                        ctx.publication_started(now, &stream, notice, io.id);
                        stream
                    }
                    Err(PublishError::AlreadyPublishing { peer: by }) => {
                        let why = format!("{} is published here by {by}; not pulling it", self.key);
                        ctx.relays.stop(&ctx.shared, self.task, &why);
                        self.goodbye(io, ctx, &why);
                        return;
                    }
                }
            }
        };
        ctx.publish_frame(&stream, io.id, kind, timestamp, payload);
    }

    /// The origin's stream ended (the pull stays connected for its return).
    fn end_pulled_publication(&mut self, io: &ConnIo, ctx: &mut WorkerCtx, why: &str) {
        if let RelayLink::Up {
            phase: Phase::Pulling { publication, .. },
            ..
        } = &mut self.link
        {
            if let Some(p) = publication.take() {
                ctx.end_publication(io, p, why);
            }
        }
    }

    /// A push's player of `stream` (frames go to it directly,
    /// `Conn::deliver_frames`).
    pub(super) fn player_of(&mut self, stream: StreamId) -> Option<&mut Player> {
        match &mut self.link {
            RelayLink::Up {
                phase: Phase::Pushing { player, .. },
                ..
            } if player.stream.id == stream => Some(player),
            _ => None,
        }
    }

    /// A publish or unpublish notice of `stream` for a push's player.
    /// (A push ends with its publication: `Tasks::stop_pushes`.)
    pub(super) fn notify(&mut self, stream: StreamId, seq: u64) {
        if let Some(player) = self.player_of(stream) {
            player.publisher_changed(seq);
        }
    }

    /// The stream a pushing connection plays here.
    pub(super) fn pushed_stream(&self) -> Option<&Arc<Stream>> {
        match &self.link {
            RelayLink::Up {
                phase: Phase::Pushing { player, .. },
                ..
            } => Some(&player.stream),
            _ => None,
        }
    }

    /// True while a pull publishes its stream here.
    pub(super) fn is_publishing(&self) -> bool {
        matches!(
            &self.link,
            RelayLink::Up {
                phase: Phase::Pulling {
                    publication: Some(_),
                    ..
                },
                ..
            }
        )
    }

    /// Deadlines: becoming active, and (once active) hearing from the peer.
    pub(super) fn on_timeout(&self, now: Instant, silence: Duration) -> Result<(), Close> {
        match self.deadline(silence) {
            Some(at) if now >= at => Err(Close::new(
                CloseReason::Timeout,
                self.timeout_reason(silence),
            )),
            _ => Ok(()),
        }
    }

    fn timeout_reason(&self, silence: Duration) -> String {
        match &self.link {
            RelayLink::Up {
                phase: Phase::Pulling { .. },
                ..
            } => format!("nothing from the origin for {silence:?}"),
            RelayLink::Connecting(_) => format!(
                "not {} within {RELAY_START_TIMEOUT:?} (connecting)",
                if self.push { "publishing" } else { "playing" }
            ),
            _ => format!(
                "not {} within {RELAY_START_TIMEOUT:?} (handshake)",
                if self.push { "publishing" } else { "playing" }
            ),
        }
    }

    /// When [`RelayConn::on_timeout`] next has work: the start deadline; a
    /// pull hearing nothing for `silence` has lost its origin (a push's
    /// target only acknowledges, and a stalled socket is caught by the
    /// stall timeout instead).
    pub(super) fn deadline(&self, silence: Duration) -> Option<Instant> {
        match &self.link {
            RelayLink::Up {
                phase: Phase::Pushing { .. },
                ..
            } => None,
            RelayLink::Up {
                phase: Phase::Pulling { publication, .. },
                ..
            } => publication.as_ref().map(|_| self.last_input + silence),
            _ => Some(self.deadline),
        }
    }

    /// Ends the relay politely (shutdown, stopped task): unpublish / stop;
    /// the caller closes after the flush.
    pub(super) fn say_goodbye(&mut self, io: &mut ConnIo) {
        let RelayLink::Up { session, phase } = &mut self.link else {
            return;
        };
        let msid = match phase {
            Phase::Starting(msid) | Phase::Pushing { msid, .. } | Phase::Pulling { msid, .. } => {
                *msid
            }
            Phase::Handshaking | Phase::Creating => return,
        };
        if self.push {
            session.send_command(
                0,
                "FCUnpublish",
                &[Amf0Value::Null, Amf0Value::string(self.remote.clone())],
            );
        }
        session.delete_stream(msid);
        while let Some(bytes) = session.poll_transmit() {
            io.push(Item::Control(bytes));
        }
    }

    /// The task stopped: goodbye, close once flushed; a pull's local
    /// publication ends now, not when the goodbye is out.
    pub(super) fn goodbye(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, why: &str) {
        self.say_goodbye(io);
        io.close_after_flush(Close::new(CloseReason::Done, why));
        self.end_pulled_publication(io, ctx, why);
        ctx.schedule_write(io);
    }

    /// The connection closed: its player or publication ends, and its task
    /// backs off to retry (unless it was stopped).
    pub(super) fn on_close(&mut self, now: Instant, io: &ConnIo, ctx: &mut WorkerCtx, why: &str) {
        let mut active_for = None;
        if let RelayLink::Up { phase, .. } = &mut self.link {
            match std::mem::replace(phase, Phase::Handshaking) {
                Phase::Pushing { since, player, .. } => {
                    active_for = Some(now.saturating_duration_since(since));
                    ctx.end_player(io, player, why);
                }
                Phase::Pulling {
                    since, publication, ..
                } => {
                    active_for = Some(now.saturating_duration_since(since));
                    if let Some(p) = publication {
                        ctx.end_publication(io, p, why);
                    }
                }
                _ => {}
            }
        }
        if ctx.shutting_down().is_some() {
            ctx.relays.clear();
        }
        let index = ctx.index;
        ctx.relays
            .conn_closed(&ctx.shared, index, now, self.task, active_for, why);
    }

    /// The state, for the panic backstop's log line.
    pub(super) fn describe(&self) -> String {
        let phase = match &self.link {
            RelayLink::Connecting(_) => "connecting",
            RelayLink::Up { phase, .. } => match phase {
                Phase::Handshaking => "handshaking",
                Phase::Creating => "creating",
                Phase::Starting(_) => "starting",
                Phase::Pushing { .. } => "pushing",
                Phase::Pulling { .. } => "pulling",
            },
        };
        format!("relay task={} stream={} phase={phase}", self.task, self.key)
    }
}

/// `|RtmpSampleAccess`: a server's notice to Flash players.
fn is_sample_access(payload: &[u8]) -> bool {
    const NAME: &[u8] = b"|RtmpSampleAccess";
    payload.len() >= 3 + NAME.len() && payload[0] == 0x02 && &payload[3..3 + NAME.len()] == NAME
}
