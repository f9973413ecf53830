//! RTMP connections on a worker: feeding the sans-IO [`ServerSession`] and
//! acting on its events (publish, play, media, stop).

use super::access::{AwaitingHook, Reply};
use super::stats::CloseReason;
use super::stream::{Format, PublishError, PublisherInfo, Stream};
use super::worker::{Proto, Worker};
use crate::auth::Action;
use crate::config::PublisherPolicy;
use crate::protocol::handshake::HandshakeError;
use crate::protocol::session::{
    Event, MediaKind, PlayRequest, PublishRejection, PublishRequest, ServerSession, SessionError,
};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// A stream this connection publishes.
pub(super) struct Publication {
    pub msid: u32,
    pub stream: Arc<Stream>,
}

/// An RTMP connection's protocol state.
pub(super) struct RtmpConn {
    pub session: ServerSession,
    pub publications: Vec<Publication>,
    events: Vec<Event>,
    /// Shutdown asked this publisher to reconnect (Enhanced RTMP): it is
    /// still served until it leaves or the drain deadline passes.
    pub reconnect_requested: bool,
    /// The `tcUrl` from `connect` (for callbacks).
    pub tc_url: String,
}

impl RtmpConn {
    pub fn new(session: ServerSession) -> Self {
        Self {
            session,
            publications: Vec::new(),
            events: Vec::new(),
            reconnect_requested: false,
            tc_url: String::new(),
        }
    }
}

impl Worker {
    /// Feeds what was read to the session until it stops making progress:
    /// it pauses at a publish/play decision, which handling its events makes.
    pub(super) fn rtmp_input(&mut self, now: Instant, k: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(k) else {
                return;
            };
            let Proto::Rtmp(r) = &mut conn.proto else {
                return;
            };
            let before = conn.read_buf.len();
            let result = r.session.handle_input(now, &mut conn.read_buf);
            let mut events = std::mem::take(&mut r.events);
            while let Some(ev) = r.session.poll_event() {
                events.push(ev);
            }
            conn.pull_transmit();
            let leftover = conn.read_buf.len();
            let decided = !events.is_empty();
            // Events before an error are valid (media already received).
            for ev in events.drain(..) {
                self.handle_event(k, ev);
            }
            if let Some(Proto::Rtmp(r)) = self.conns.get_mut(k).map(|c| &mut c.proto) {
                r.events = events;
            }
            self.mark_dirty(k);
            if let Err(e) = result {
                let mut why = e.to_string();
                if let SessionError::Handshake(h) = &e {
                    self.shared
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
                // Best effort, without blocking: the reply that explains the
                // close (`_error`, NetConnection.Connect.Rejected) goes first.
                if let Some(c) = self.conns.get_mut(k) {
                    if c.tls.is_none() {
                        let _ = c.out.write_to(&mut c.socket);
                    }
                }
                return self.close(k, CloseReason::Protocol, &why);
            }
            if leftover == 0 || (leftover == before && !decided) {
                return;
            }
        }
    }

    fn handle_event(&mut self, k: usize, ev: Event) {
        match ev {
            Event::ConnectRequested { app, tc_url, query } => {
                if let Some(Proto::Rtmp(r)) = self.conns.get_mut(k).map(|c| &mut c.proto) {
                    r.tc_url = tc_url;
                }
                let waiting = AwaitingHook::Connect { app: app.clone() };
                if self
                    .ask_hook(k, Action::Connect, &app, "", &query, waiting)
                    .is_some()
                {
                    // No on_connect for this application.
                    if let Some(Proto::Rtmp(r)) = self.conns.get_mut(k).map(|c| &mut c.proto) {
                        r.session.accept_connect();
                    }
                }
            }
            Event::Connected { app, tc_url } => {
                if let Some(c) = self.conns.get(k) {
                    let caps = match &c.proto {
                        Proto::Rtmp(r) => r.session.client_caps().clone(),
                        Proto::Http(_) | Proto::Relay(_) => Default::default(),
                    };
                    // The query may carry a key or a signature: never logged.
                    let shown = tc_url.split_once('?').map_or(tc_url.as_str(), |(u, _)| u);
                    log::debug!(
                        "conn={} peer={}: connect app={app:?} tcUrl={shown:?} fourCCs={:?} capsEx={:?}",
                        c.id,
                        c.peer,
                        caps.fourccs,
                        caps.caps_ex
                    );
                }
                if let Some(Proto::Rtmp(r)) = self.conns.get_mut(k).map(|c| &mut c.proto) {
                    if r.tc_url.is_empty() {
                        r.tc_url = tc_url;
                    }
                }
                self.set_client_state(k, "connected", None);
            }
            Event::PublishRequested(req) => self.on_publish(k, req),
            Event::Media {
                stream_id,
                kind,
                timestamp,
                payload,
            } => {
                let Some(conn) = self.conns.get(k) else {
                    return;
                };
                let Proto::Rtmp(r) = &conn.proto else { return };
                let Some(p) = r.publications.iter().find(|p| p.msid == stream_id) else {
                    return;
                };
                let stream = p.stream.clone();
                // None: replaced by another publisher; its worker closes
                // this connection.
                let Some((frame, interest)) = stream.push_from(conn.id, kind, timestamp, payload)
                else {
                    return;
                };
                self.fan_out(interest, frame, stream.id);
            }
            Event::PublishStopped { stream_id } => {
                self.stop_publication(k, stream_id, "unpublished")
            }
            Event::PlayRequested(req) => self.on_play(k, req),
            Event::PlayStopped { stream_id } => {
                self.stop_subscription(k, stream_id, "stopped by player")
            }
            Event::Pause { stream_id, paused } => {
                if let Some(s) = self.subscription(k, stream_id) {
                    s.paused = paused;
                    s.skipping |= !paused; // resume on a keyframe
                }
            }
            Event::Receive {
                stream_id,
                kind,
                enabled,
            } => {
                if let Some(s) = self.subscription(k, stream_id) {
                    match kind {
                        MediaKind::Audio => s.audio = enabled,
                        _ => {
                            s.skipping |= enabled && !s.video;
                            s.video = enabled;
                        }
                    }
                }
            }
        }
        if let Some(c) = self.conns.get_mut(k) {
            c.pull_transmit();
        }
    }

    fn on_publish(&mut self, k: usize, req: PublishRequest) {
        let key = format!("{}/{}", req.app, req.name);
        #[cfg(feature = "fault-injection")]
        if req.name == super::worker::FAULT_PANIC_ON_PUBLISH {
            panic!("injected fault: publish {key}");
        }
        let Some(conn) = self.conns.get(k) else {
            return;
        };
        let verdict = self.shared.auth.check(
            Action::Publish,
            &req.app,
            &req.name,
            &req.query,
            conn.peer.ip(),
        );
        if let Err(why) = verdict {
            let reply = Reply::RejectPublish(req.stream_id);
            return self.deny(k, Action::Publish, &key, why, reply);
        }
        let (app, name, query) = (req.app.clone(), req.name.clone(), req.query.clone());
        let waiting = AwaitingHook::Publish(req);
        if let Some(AwaitingHook::Publish(req)) =
            self.ask_hook(k, Action::Publish, &app, &name, &query, waiting)
        {
            self.publish_allowed(k, req, key);
        }
    }

    /// Claims the name for an authorized publisher.
    pub(super) fn publish_allowed(&mut self, k: usize, req: PublishRequest, key: String) {
        let index = self.index;
        let replace = self.shared.config.second_publisher == PublisherPolicy::Replace;
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let Proto::Rtmp(r) = &mut conn.proto else {
            return;
        };
        let info = PublisherInfo {
            conn_id: conn.id,
            worker: index,
            peer: conn.peer,
            protocol: if conn.tls.is_some() { "rtmps" } else { "rtmp" },
            since: SystemTime::now(),
        };
        let claimed = if replace && !r.publications.iter().any(|p| p.stream.key == key) {
            let (stream, notice, old) = self.shared.registry.publish_replacing(&key, info);
            Ok((stream, notice, old))
        } else {
            self.shared
                .registry
                .publish(&key, info)
                .map(|(s, n)| (s, n, None))
        };
        match claimed {
            Ok((stream, notice, old)) => {
                r.session.accept_publish(req.stream_id);
                r.publications.push(Publication {
                    msid: req.stream_id,
                    stream: stream.clone(),
                });
                log::info!(
                    "publish start stream={key} conn={} peer={} worker={index} protocol={} type={}",
                    conn.id,
                    conn.peer,
                    conn.protocol().name(),
                    req.publish_type
                );
                let id = conn.id;
                self.set_client_state(k, "publishing", Some(&key));
                self.notify(&stream, notice, true);
                self.start_pushes(Instant::now(), &stream, id);
                if let Some(old) = old {
                    log::info!(
                        "publish replaced stream={key}: conn={} peer={} worker={} loses it",
                        old.conn_id,
                        old.peer,
                        old.worker
                    );
                    self.close_replaced(old);
                }
            }
            Err(PublishError::AlreadyPublishing { peer }) => {
                r.session
                    .reject_publish(req.stream_id, PublishRejection::BadName);
                log::info!(
                    "publish refused stream={key} conn={} peer={} worker={index}: already published by {peer}",
                    conn.id,
                    conn.peer
                );
            }
        }
    }

    fn on_play(&mut self, k: usize, req: PlayRequest) {
        let key = format!("{}/{}", req.app, req.name);
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let verdict = self.shared.auth.check(
            Action::Play,
            &req.app,
            &req.name,
            &req.query,
            conn.peer.ip(),
        );
        if let Err(why) = verdict {
            let reply = Reply::RejectPlay(req.stream_id);
            return self.deny(k, Action::Play, &key, why, reply);
        }
        let (app, name, query) = (req.app.clone(), req.name.clone(), req.query.clone());
        let waiting = AwaitingHook::Play(req);
        if let Some(AwaitingHook::Play(req)) =
            self.ask_hook(k, Action::Play, &app, &name, &query, waiting)
        {
            self.play_allowed(k, req);
        }
    }

    /// Starts an authorized player.
    pub(super) fn play_allowed(&mut self, k: usize, req: PlayRequest) {
        let key = format!("{}/{}", req.app, req.name);
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let Proto::Rtmp(r) = &mut conn.proto else {
            return;
        };
        r.session.accept_play(req.stream_id, req.reset);
        conn.pull_transmit();
        let (live, cached) = self.start_player(k, &key, req.stream_id, Format::Rtmp);
        if !live {
            // An edge: the first player of a stream starts its pull.
            self.ensure_pull(Instant::now(), &key);
        }
        if let Some(conn) = self.conns.get(k) {
            log::info!(
                "play start stream={key} conn={} peer={} worker={} protocol={} live={live} cached_frames={cached}",
                conn.id,
                conn.peer,
                self.index,
                conn.protocol().name()
            );
        }
        self.set_client_state(k, "playing", Some(&key));
    }

    fn stop_publication(&mut self, k: usize, msid: u32, why: &str) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let Proto::Rtmp(r) = &mut conn.proto else {
            return;
        };
        let Some(pos) = r.publications.iter().position(|p| p.msid == msid) else {
            return;
        };
        let p = r.publications.remove(pos);
        let (id, peer) = (conn.id, conn.peer);
        self.end_publication(id, peer, p, why);
        self.set_client_state(k, "connected", None);
    }

    pub(super) fn end_publication(
        &mut self,
        conn_id: u64,
        peer: SocketAddr,
        p: Publication,
        why: &str,
    ) {
        let (frames, bytes) = p.stream.with_state(|s| (s.frames_in, s.bytes_in));
        log::info!(
            "publish stop stream={} conn={conn_id} peer={peer} worker={} frames={frames} bytes={bytes}: {why}",
            p.stream.key,
            self.index
        );
        if let Some(notice) = self.shared.registry.unpublish(&p.stream, conn_id) {
            self.notify(&p.stream, notice, false);
        }
        self.stop_pushes(&p.stream, conn_id);
        self.notify_hook("publish_done", &p.stream.key, conn_id, peer, "");
    }

    pub(super) fn stop_subscription(&mut self, k: usize, msid: u32, why: &str) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        let Some(pos) = conn.subscriptions.iter().position(|s| s.msid == msid) else {
            return;
        };
        let s = conn.subscriptions.remove(pos);
        let who = (conn.id, conn.peer, conn.protocol());
        self.end_subscription(k, who, s, why);
    }
}
