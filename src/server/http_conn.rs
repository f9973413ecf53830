//! HTTP connections: one request at a time (keep-alive and pipelining for
//! API calls), then either a complete response or a stream:
//!
//! ```text
//!   AwaitingRequest ──GET /APP/NAME.flv──────────────► Streaming { websocket: false }  (HTTP-FLV)
//!        │  ▲        ──GET ... Upgrade: websocket────► Streaming { websocket: true }   (ws-flv)
//!        │  │        ──a denial delayed, a callback──► Deciding ──► Streaming, or a denial
//!        │  │        ──GET /APP/NAME/v0.m3u8?_HLS_msn=..─► HlsWaiting ──part out──┐
//!        │  │                                              └──3 target durations: 503
//!        │  └─ API / metrics / console / OPTIONS / HLS / errors: a response, then the next request ◄┘
//!        └── deadline (slowloris) ──► closed
//! ```
//!
//! Streams end when their publisher leaves (HTTP-FLV has no in-band
//! notice; flv.js and mpegts.js reconnect), on a WebSocket close, or when
//! the player stalls, exactly like RTMP players: the same [`Player`], queue
//! bound and skip-to-keyframe policy, with the frame's FLV form.

use super::access::{self, AwaitingHook, Reply};
use super::api;
use super::base::StreamId;
use super::console;
use super::ctx::WorkerCtx;
use super::flv;
use super::hls::{self, Answer};
use super::http::{self, Parsed, Request, WsFrame};
use super::player::{Form, Player, Role};
use super::queue::Item;
use super::shared::ClientState;
use super::shared::ListenerKind;
use super::stats::CloseReason;
use super::stream::{Format, Stream};
use super::transport::{Close, ConnIo};
use super::vod::{self, HttpOutcome, VodHttp};
use crate::auth::{Action, Denial};
use crate::cmaf::{Directives, Resource};
use crate::hooks::Answer as HookAnswer;
use crate::protocol::name::valid_name;
use crate::wire::WireForm;
use bytes::{Buf, Bytes};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where an HTTP connection is (see the module's diagram).
enum HttpState {
    /// Reading a request head (and body); closed at `deadline`.
    AwaitingRequest {
        deadline: Instant,
        timeout: Duration,
    },
    /// Streaming FLV (in WebSocket messages when `websocket`).
    Streaming { websocket: bool, player: Player },
    /// A request whose answer waits (a delayed denial, or a callback):
    /// nothing more is read as a request.
    Deciding,
    /// An HLS request (a blocking playlist reload, a hinted part) parked
    /// until the stream's HLS has something new, or 503 at `deadline`.
    /// Pipelined requests wait in the read buffer.
    HlsWaiting { req: HlsRequest, deadline: Instant },
    /// A file of a video on demand application being answered: waiting
    /// for the disk, or sending its body as the socket takes it.
    /// Pipelined requests wait in the read buffer.
    Vod(Box<VodHttp>),
    /// An HLS request for a stream this edge pulls on demand, whose pull
    /// it started: asked again at `next` until the stream is packaged, or
    /// 503 at `deadline`. Pipelined requests wait in the read buffer.
    HlsPulling {
        pending: Box<PendingHls>,
        next: Instant,
        deadline: Instant,
    },
}

/// An authorized HLS request waiting for its stream's pull.
struct PendingHls {
    req: Request,
    key: String,
    resource: Resource,
    directives: Directives,
    cors: String,
}

/// How often a request waiting for a pull looks for its stream.
const PULL_POLL: Duration = Duration::from_millis(100);

/// An authorized HLS request, as it waits.
struct HlsRequest {
    stream: Arc<Stream>,
    resource: Resource,
    directives: Directives,
    /// The request's query without the `_HLS_*` directives, carried into
    /// a playlist's URIs.
    query: String,
    keep_alive: bool,
    head_only: bool,
    cors: String,
}

/// Responses with shared bodies queued for one connection beyond which its
/// pipelined requests wait in the read buffer (read again once the queue
/// has drained).
const MAX_QUEUED_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// An HTTP connection's protocol state.
pub(super) struct HttpConn {
    /// The listener it came from: the API's own, or the public one.
    listener: ListenerKind,
    state: HttpState,
    /// Pipelined requests wait while responses fill the queue.
    paused: bool,
}

fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        k == name && matches!(v, "" | "1" | "true" | "yes")
    })
}

impl HttpConn {
    pub(super) fn new(listener: ListenerKind, now: Instant, timeout: Duration) -> Self {
        Self {
            listener,
            state: HttpState::AwaitingRequest {
                deadline: now + timeout,
                timeout,
            },
            paused: false,
        }
    }

    fn await_request(&mut self, now: Instant, ctx: &WorkerCtx) {
        let timeout = ctx.shared.config.http_request_timeout;
        self.state = HttpState::AwaitingRequest {
            deadline: now + timeout,
            timeout,
        };
    }

    /// The stream being sent, if any.
    pub(super) fn stream(&self) -> Option<&std::sync::Arc<super::stream::Stream>> {
        match &self.state {
            HttpState::Streaming { player, .. } => Some(&player.stream),
            _ => None,
        }
    }

    /// True while a stream is being sent.
    pub(super) fn is_playing(&self) -> bool {
        matches!(self.state, HttpState::Streaming { .. })
    }

    /// Err when a request did not arrive in time (slowloris, idle
    /// keep-alive); a parked HLS request past its time gets 503.
    pub(super) fn on_timeout(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<(), Close> {
        match self.state {
            HttpState::AwaitingRequest { deadline, timeout } if now >= deadline => Err(Close::new(
                CloseReason::Timeout,
                format!("no complete HTTP request within {timeout:?}"),
            )),
            HttpState::HlsWaiting { deadline, .. } if now >= deadline => {
                let HttpState::HlsWaiting { req, .. } =
                    std::mem::replace(&mut self.state, HttpState::Deciding)
                else {
                    return Ok(());
                };
                ctx.unpark_hls(io, req.stream.id);
                if let Some(h) = req.stream.hls() {
                    h.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                }
                hls::TOTALS.timeouts.fetch_add(1, Ordering::Relaxed);
                let why = "what the request asked for did not come within three target durations";
                self.hls_error(now, io, ctx, &req, 503, why);
                self.handle_input(now, io, ctx)
            }
            HttpState::Vod(ref mut v) => {
                let outcome = v.on_timeout(now, io)?;
                self.vod_outcome(now, io, ctx, outcome)
            }
            HttpState::HlsPulling { next, deadline, .. } if now >= next => {
                let HttpState::HlsPulling { pending, .. } =
                    std::mem::replace(&mut self.state, HttpState::Deciding)
                else {
                    return Ok(());
                };
                let PendingHls {
                    req,
                    key,
                    resource,
                    directives,
                    cors,
                } = *pending;
                let packaged = ctx
                    .shared
                    .registry
                    .get(&key)
                    .is_some_and(|s| s.hls().is_some());
                if packaged {
                    self.hls_allowed(now, io, ctx, req, key, resource, directives, &cors);
                } else if now >= deadline {
                    hls::TOTALS.timeouts.fetch_add(1, Ordering::Relaxed);
                    let keep = req.keep_alive();
                    let resp = http::response(
                        503,
                        "text/plain",
                        &[("Access-Control-Allow-Origin", cors.as_str())],
                        b"the pulled stream did not come in time\n",
                        keep,
                        req.method == "HEAD",
                    );
                    self.respond(now, io, ctx, resp, keep);
                } else {
                    let pending = Box::new(PendingHls {
                        req,
                        key,
                        resource,
                        directives,
                        cors,
                    });
                    self.state = HttpState::HlsPulling {
                        pending,
                        next: now + PULL_POLL,
                        deadline,
                    };
                    return Ok(());
                }
                ctx.schedule_write(io);
                if matches!(self.state, HttpState::AwaitingRequest { .. }) {
                    return self.handle_input(now, io, ctx);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// When [`HttpConn::on_timeout`] next has work.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.state {
            HttpState::AwaitingRequest { deadline, .. }
            | HttpState::HlsWaiting { deadline, .. } => Some(deadline),
            HttpState::Vod(ref v) => v.deadline(),
            HttpState::HlsPulling { next, .. } => Some(next),
            _ => None,
        }
    }

    /// A ws-flv client gets a close frame with `code` before the connection
    /// closes (not an abrupt end, 1006).
    fn ws_close(&self, io: &mut ConnIo, code: u16) {
        if let HttpState::Streaming {
            websocket: true, ..
        } = self.state
        {
            io.push(Item::Control(http::ws_control(0x8, &code.to_be_bytes())));
        }
    }

    /// Server shutdown: a ws-flv client is told the server is going away
    /// (1001).
    pub(super) fn shutdown(&self, io: &mut ConnIo) {
        self.ws_close(io, 1001);
    }

    /// The stream ended (normal closure, 1000); the response ends with it.
    fn end_stream(&self, io: &mut ConnIo, why: &str) {
        self.ws_close(io, 1000);
        io.close_after_flush(Close::new(CloseReason::StreamEnded, why));
    }

    pub(super) fn handle_input(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<(), Close> {
        loop {
            if io.is_closing() {
                // A response that ends the connection is on its way.
                io.read_buf.clear();
                return Ok(());
            }
            match &self.state {
                HttpState::AwaitingRequest { .. }
                    if io.out.response_bytes() > MAX_QUEUED_RESPONSE_BYTES =>
                {
                    // The next request is read once these are written.
                    self.paused = true;
                    return Ok(());
                }
                HttpState::AwaitingRequest { .. } => match http::parse_request(&io.read_buf) {
                    Parsed::Partial => return Ok(()),
                    Parsed::Error(status, why) => {
                        let body = format!("{why}\n");
                        let resp = http::response(
                            status,
                            "text/plain",
                            &[],
                            body.as_bytes(),
                            false,
                            false,
                        );
                        io.push(Item::Control(resp));
                        io.close_after_flush(Close::new(
                            CloseReason::Protocol,
                            format!("HTTP {status}: {why}"),
                        ));
                        io.read_buf.clear();
                        ctx.schedule_write(io);
                        return Ok(());
                    }
                    Parsed::Complete(req, head_len) => {
                        if io.read_buf.len() < head_len + req.body_len {
                            return Ok(()); // the body is still coming
                        }
                        io.read_buf.advance(head_len);
                        let body = io.read_buf.split_to(req.body_len).freeze();
                        self.handle_request(now, io, ctx, req, body);
                        ctx.schedule_write(io);
                    }
                },
                HttpState::Streaming {
                    websocket: true, ..
                } => {
                    match http::decode_ws_frame(&mut io.read_buf) {
                        Ok(None) => return Ok(()),
                        Ok(Some(WsFrame::Ping(p))) => {
                            io.push(Item::Control(http::ws_control(0xA, &p)))
                        }
                        Ok(Some(WsFrame::Close)) => {
                            io.push(Item::Control(http::ws_control(0x8, &1000u16.to_be_bytes())));
                            io.close_after_flush(Close::new(
                                CloseReason::Peer,
                                "WebSocket closed by peer",
                            ));
                        }
                        Ok(Some(WsFrame::Pong | WsFrame::Data)) => {}
                        Err(e) => {
                            // RFC 6455 7.1.7: fail the connection with a
                            // close frame that says why (1002, 1009).
                            let code = e.close_code().to_be_bytes();
                            io.out.drop_unstarted_media();
                            io.push(Item::Control(http::ws_control(0x8, &code)));
                            io.close_after_flush(Close::new(CloseReason::Protocol, e.to_string()));
                        }
                    }
                    ctx.schedule_write(io);
                }
                // Pipelined requests wait for the parked one.
                HttpState::HlsWaiting { .. } | HttpState::HlsPulling { .. } | HttpState::Vod(_) => {
                    return Ok(())
                }
                HttpState::Streaming {
                    websocket: false, ..
                }
                | HttpState::Deciding => {
                    // An HTTP-FLV player has nothing more to say; a denied
                    // client waits for its answer.
                    io.read_buf.clear();
                    return Ok(());
                }
            }
        }
    }

    fn respond(&mut self, now: Instant, io: &mut ConnIo, ctx: &WorkerCtx, resp: Bytes, keep: bool) {
        io.push(Item::Control(resp));
        if keep {
            self.await_request(now, ctx);
        } else {
            io.close_after_flush(Close::new(CloseReason::Done, "response sent"));
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: Request,
        body: Bytes,
    ) {
        let config = &ctx.shared.config;
        let cors = config.cors_origin.clone();
        // Handing over: each connection's next answer is its last, so a
        // balancer's keep-alive check sees /readyz fail, then reconnects
        // (to the successor).
        let keep = req.keep_alive() && !ctx.shared.handing_over();
        let head_only = req.method == "HEAD";
        let is_api = req.path == "/metrics" || req.path.starts_with("/api/");
        let json = |status: u16, body: &serde_json::Value, extra: &[(&str, &str)]| {
            let mut headers = vec![
                ("Access-Control-Allow-Origin", cors.as_str()),
                ("Cache-Control", "no-cache"),
            ];
            headers.extend_from_slice(extra);
            http::response(
                status,
                "application/json",
                &headers,
                body.to_string().as_bytes(),
                keep,
                head_only,
            )
        };
        if req.method == "OPTIONS" {
            // A preflight: playback is open to every origin; the admin
            // surface tells `*` it may only read (api::admin_preflight_methods).
            let methods = if is_api {
                api::admin_preflight_methods(config)
            } else {
                "GET, HEAD, OPTIONS"
            };
            let resp = http::response(
                204,
                "text/plain",
                &[
                    ("Access-Control-Allow-Origin", cors.as_str()),
                    ("Access-Control-Allow-Methods", methods),
                    (
                        "Access-Control-Allow-Headers",
                        "Authorization, Content-Type, Range",
                    ),
                    ("Access-Control-Max-Age", "86400"),
                ],
                b"",
                keep,
                true,
            );
            return self.respond(now, io, ctx, resp, keep);
        }
        if let Some((status, body)) = super::health::answer(&ctx.shared, &req.path) {
            // For balancers and orchestrators: no token, every listener.
            let resp = json(status, &body, &[]);
            return self.respond(now, io, ctx, resp, keep);
        }
        if is_api {
            if let Err(refusal) = api::admin_access(config, self.listener, io.peer.ip(), &req) {
                let ask = [("WWW-Authenticate", "Bearer")];
                let extra: &[(&str, &str)] = if refusal.ask_token { &ask } else { &[] };
                let resp = json(
                    refusal.status,
                    &serde_json::json!({ "error": refusal.why }),
                    extra,
                );
                return self.respond(now, io, ctx, resp, keep);
            }
            let resp = if req.path == "/metrics" {
                let text = api::metrics(&ctx.shared);
                http::response(
                    200,
                    "text/plain; version=0.0.4",
                    &[],
                    text.as_bytes(),
                    keep,
                    head_only,
                )
            } else {
                let (status, answer) = api::handle(&ctx.shared, &req.method, &req.path, &body);
                json(status, &answer, &[])
            };
            return self.respond(now, io, ctx, resp, keep);
        }
        if console::is_console_path(&req.path) {
            let response = console::respond(config, self.listener, io.peer.ip(), &req, &cors);
            io.push(Item::Response(response));
            return self.respond_done(now, io, ctx, keep);
        }
        if self.listener == ListenerKind::Http {
            if let Some(routed) = vod::route(config, &req.path, &req.query) {
                return self.vod_request(now, io, ctx, req, routed, &cors);
            }
            if let Some((key, resource)) = hls::route(&req.path) {
                return self.hls_request(now, io, ctx, req, key, resource, &cors);
            }
        }
        if self.listener == ListenerKind::Http && req.path.ends_with(".flv") {
            return self.start_player(now, io, ctx, req, &cors);
        }
        let resp = http::response(
            404,
            "text/plain",
            &[("Access-Control-Allow-Origin", cors.as_str())],
            b"not found\n",
            keep,
            head_only,
        );
        self.respond(now, io, ctx, resp, keep)
    }

    fn start_player(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: Request,
        cors: &str,
    ) {
        let keep = req.keep_alive();
        let head_only = req.method == "HEAD";
        let path = req.path.trim_start_matches('/');
        let path = &path[..path.len() - ".flv".len()];
        let Some((app, name)) = path
            .split_once('/')
            .filter(|(a, n)| valid_name(a) && valid_name(n))
        else {
            let resp = http::response(
                400,
                "text/plain",
                &[("Access-Control-Allow-Origin", cors)],
                b"bad stream name\n",
                keep,
                head_only,
            );
            return self.respond(now, io, ctx, resp, keep);
        };
        if req.method != "GET" && !head_only {
            let resp = http::response(
                405,
                "text/plain",
                &[("Allow", "GET, HEAD, OPTIONS")],
                b"",
                keep,
                head_only,
            );
            return self.respond(now, io, ctx, resp, keep);
        }
        if let Err((status, why)) = req.websocket() {
            // Asked for a WebSocket, and not a valid RFC 6455 handshake:
            // refused, never answered as plain HTTP-FLV.
            let version = [
                ("Access-Control-Allow-Origin", cors),
                ("Sec-WebSocket-Version", "13"),
            ];
            let extra = if status == 426 {
                &version[..]
            } else {
                &version[..1]
            };
            let body = format!("{why}\n");
            let resp = http::response(status, "text/plain", extra, body.as_bytes(), false, false);
            return self.respond(now, io, ctx, resp, false);
        }
        let key = format!("{app}/{name}");
        let verdict = ctx
            .shared
            .auth
            .check(Action::Play, app, name, &req.query, io.peer.ip());
        if let Err(why) = verdict {
            let reply = Reply::Http(access::http_denial(why, cors));
            return self.deny(io, ctx, &key, why, reply);
        }
        let (app, name) = (app.to_owned(), name.to_owned());
        let query = req.query.clone();
        let waiting = AwaitingHook::Http {
            req,
            app,
            name,
            cors: cors.to_owned(),
        };
        let index = ctx.index;
        match ctx
            .access
            .ask_hook(&ctx.shared, index, io, &query, "", waiting)
        {
            Some(AwaitingHook::Http {
                req,
                app,
                name,
                cors,
            }) => self.player_allowed(now, io, ctx, req, &app, &name, &cors),
            Some(_) => {}
            None => {
                self.state = HttpState::Deciding;
                ctx.set_client_state(io.id, ClientState::Authorizing, None);
            }
        }
    }

    /// Starts an authorized HTTP-FLV / ws-flv player.
    #[allow(clippy::too_many_arguments)]
    fn player_allowed(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: Request,
        app: &str,
        name: &str,
        cors: &str,
    ) {
        let keep = req.keep_alive();
        let head_only = req.method == "HEAD";
        let key = format!("{app}/{name}");
        // A rendition (`NAME~N`) is live once asked for.
        ctx.ensure_rendition(&key);
        let live = ctx.shared.registry.get(&key).and_then(|s| {
            s.with_state(|st| st.publisher().is_some().then(|| st.has_audio_video()))
        });
        // An edge waits for the stream its first player pulls.
        let pulled = live.is_none() && ctx.shared.relays.pull_for(&key).is_some();
        if live.is_none() && !pulled && !query_flag(&req.query, "wait") {
            let resp = http::response(
                404,
                "text/plain",
                &[("Access-Control-Allow-Origin", cors)],
                b"stream not live\n",
                keep,
                head_only,
            );
            return self.respond(now, io, ctx, resp, keep);
        }
        let flv_headers = [
            ("Content-Type", "video/x-flv"),
            ("Cache-Control", "no-cache"),
            ("Access-Control-Allow-Origin", cors),
        ];
        if head_only {
            let resp = http::response_head(200, &flv_headers, None, false).freeze();
            return self.respond(now, io, ctx, resp, false);
        }
        // Announce what has been seen; both when nothing has yet.
        let (audio, video) = match live {
            Some((false, false)) | None => (true, true),
            Some(av) => av,
        };
        let file_header = flv::file_header(audio, video);
        let websocket = req.websocket().ok().flatten().map(http::websocket_accept);
        let format = match &websocket {
            Some(accept) => {
                let head = http::response_head(
                    101,
                    &[
                        ("Upgrade", "websocket"),
                        ("Connection", "Upgrade"),
                        ("Sec-WebSocket-Accept", accept),
                    ],
                    None,
                    false,
                );
                io.push(Item::Control(head.freeze()));
                io.push(Item::OwnControl(flv::ws_wrap(file_header)));
                Format::WsFlv
            }
            None => {
                let head = http::response_head(200, &flv_headers, None, false);
                io.push(Item::OwnControl(WireForm::new(vec![
                    head.freeze(),
                    file_header,
                ])));
                Format::Flv
            }
        };
        let (player, live, cached) =
            ctx.start_player(io, &key, 0, Form::Shared(format), Role::Viewer, None);
        self.state = HttpState::Streaming {
            websocket: websocket.is_some(),
            player,
        };
        if pulled {
            ctx.ensure_pull(&key);
        }
        log::info!(
            "play start stream={key} conn={} peer={} worker={} protocol={} live={live} cached_frames={cached}",
            io.id,
            io.peer,
            ctx.index,
            format.name()
        );
        ctx.set_client_state(io.id, ClientState::Playing, Some(&key));
    }

    /// An HLS request (`/APP/NAME/index.m3u8`, a media playlist, an init
    /// segment, a segment or a part): the same access rules as every other
    /// player (keys and signed URLs on every request, checked without
    /// I/O); an application's `on_play` callback is asked once per viewer
    /// (address and query) and its verdict kept a while, so parts never
    /// wait for a callback each.
    #[allow(clippy::too_many_arguments)]
    fn hls_request(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: Request,
        key: String,
        resource: Resource,
        cors: &str,
    ) {
        let keep = req.keep_alive();
        let head_only = req.method == "HEAD";
        if req.method != "GET" && !head_only {
            let resp = http::response(
                405,
                "text/plain",
                &[("Allow", "GET, HEAD, OPTIONS")],
                b"",
                keep,
                head_only,
            );
            return self.respond(now, io, ctx, resp, keep);
        }
        let directives = match Directives::parse(&req.query) {
            Ok(d) => d,
            Err(e) => {
                let body = hls::error_body(e.0);
                let resp = http::response(
                    400,
                    "text/plain",
                    &[("Access-Control-Allow-Origin", cors)],
                    body.as_bytes(),
                    keep,
                    head_only,
                );
                return self.respond(now, io, ctx, resp, keep);
            }
        };
        let (app, name) = key.split_once('/').unwrap_or((&key, ""));
        let verdict = ctx
            .shared
            .auth
            .check(Action::Play, app, name, &req.query, io.peer.ip());
        if let Err(why) = verdict {
            let reply = Reply::Http(access::http_denial(why, cors));
            return self.deny(io, ctx, &key, why, reply);
        }
        let query = hls::carried_query(&req.query);
        let callback = ctx
            .shared
            .auth
            .hooks(app)
            .is_some_and(|h| h.on_play.is_some());
        let remembered = callback
            .then(|| ctx.shared.registry.hls_policy())
            .flatten()
            .and_then(|p| p.allowed_viewer(io.peer.ip(), &key, &query, now));
        if let Some(serve) = remembered {
            // Allowed (and maybe renamed) by the callback a moment ago.
            return self.hls_allowed(now, io, ctx, req, serve, resource, directives, cors);
        }
        if callback {
            let (app, name) = (app.to_owned(), name.to_owned());
            let waiting = AwaitingHook::Http {
                req,
                app,
                name,
                cors: cors.to_owned(),
            };
            let index = ctx.index;
            let rq = query.clone();
            match ctx
                .access
                .ask_hook(&ctx.shared, index, io, &rq, "", waiting)
            {
                Some(AwaitingHook::Http { req, .. }) => {
                    self.hls_allowed(now, io, ctx, req, key, resource, directives, cors)
                }
                Some(_) => {}
                None => {
                    self.state = HttpState::Deciding;
                    ctx.set_client_state(io.id, ClientState::Authorizing, None);
                }
            }
            return;
        }
        self.hls_allowed(now, io, ctx, req, key, resource, directives, cors);
    }

    /// Answers an authorized HLS request, or parks it.
    #[allow(clippy::too_many_arguments)]
    fn hls_allowed(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: Request,
        key: String,
        resource: Resource,
        directives: Directives,
        cors: &str,
    ) {
        let keep = req.keep_alive();
        let head_only = req.method == "HEAD";
        let query = hls::carried_query(&req.query);
        let packaged = ctx.shared.registry.get(&key).filter(|s| s.hls().is_some());
        // How long to wait for a pull (zero when the app packages no HLS).
        let timeout = ctx
            .shared
            .registry
            .hls_policy()
            .map_or(Duration::ZERO, |p| p.blocking_timeout(&key));
        let group = ctx
            .shared
            .registry
            .hls_policy()
            .is_some_and(|p| p.group(&key).is_some());
        if packaged.is_none()
            && !timeout.is_zero()
            && !group
            && ctx.shared.relays.pull_for(&key).is_some()
            && ctx.ensure_pull(&key)
        {
            // An edge: the first HLS viewer starts the pull, as a player
            // would, and waits for the stream to come in.
            hls::TOTALS.blocked.fetch_add(1, Ordering::Relaxed);
            let pending = Box::new(PendingHls {
                req,
                key,
                resource,
                directives,
                cors: cors.to_owned(),
            });
            self.state = HttpState::HlsPulling {
                pending,
                next: now + PULL_POLL,
                deadline: now + timeout,
            };
            return;
        }
        let registry = &ctx.shared.registry;
        let Some(stream) = packaged else {
            // A stream group's multivariant playlist, or nothing.
            let group = registry
                .hls_policy()
                .and_then(|p| p.group(&key))
                .filter(|_| resource == Resource::Multivariant);
            let body = group.and_then(|g| {
                let streams: Vec<_> = g.variants.iter().filter_map(|v| registry.get(v)).collect();
                let members: Vec<_> = streams
                    .iter()
                    .filter_map(|s| s.hls().map(|h| (format!("/{}/", s.key), h)))
                    .collect();
                hls::group_playlist(&members, &query)
            });
            let resp = match body {
                Some(b) => {
                    hls::TOTALS.playlists.fetch_add(1, Ordering::Relaxed);
                    let head = hls::response_head(
                        200,
                        "application/vnd.apple.mpegurl",
                        b.len(),
                        true,
                        cors,
                        keep,
                    );
                    let pieces = if head_only { vec![head] } else { vec![head, b] };
                    io.push(Item::Response(WireForm::new(pieces)));
                    return self.respond_done(now, io, ctx, keep);
                }
                None => http::response(
                    404,
                    "text/plain",
                    &[("Access-Control-Allow-Origin", cors)],
                    b"stream not live\n",
                    keep,
                    head_only,
                ),
            };
            return self.respond(now, io, ctx, resp, keep);
        };
        let req = HlsRequest {
            stream,
            resource,
            directives,
            query,
            keep_alive: keep,
            head_only,
            cors: cors.to_owned(),
        };
        self.hls_answer(now, io, ctx, req, None);
    }

    /// Asks the stream's HLS for the answer: sends it, or parks the
    /// request (`since`: when it first waited).
    fn hls_answer(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: HlsRequest,
        since: Option<Instant>,
    ) {
        let Some(hls) = req.stream.hls() else {
            return self.hls_error(now, io, ctx, &req, 404, "stream not live");
        };
        let mut answer = hls.answer(&req.resource, &req.directives, &req.query, io.peer.ip());
        if let Answer::Wait(_) = answer {
            // Set this worker's bit, then ask again: a part that came out
            // in between is not missed.
            ctx.park_hls(io, &req.stream);
            answer = hls.answer(&req.resource, &req.directives, &req.query, io.peer.ip());
            if !matches!(answer, Answer::Wait(_)) {
                ctx.unpark_hls(io, req.stream.id);
            }
        }
        match answer {
            Answer::Ok {
                content_type,
                playlist,
                body,
            } => {
                let head = hls::response_head(
                    200,
                    content_type,
                    body.len(),
                    playlist,
                    &req.cors,
                    req.keep_alive,
                );
                let mut pieces = Vec::with_capacity(1 + body.pieces().len());
                pieces.push(head);
                if !req.head_only {
                    pieces.extend(body.pieces().iter().cloned());
                }
                let response = WireForm::new(pieces);
                let n = response.len() as u64;
                hls.counters.bytes_out.fetch_add(n, Ordering::Relaxed);
                hls::TOTALS.bytes_out.fetch_add(n, Ordering::Relaxed);
                let total = match req.resource {
                    Resource::Multivariant | Resource::Media(_) => &hls::TOTALS.playlists,
                    Resource::Part { .. } => &hls::TOTALS.parts,
                    Resource::Segment { .. } => &hls::TOTALS.segments,
                    Resource::Init { .. } => &hls::TOTALS.inits,
                };
                total.fetch_add(1, Ordering::Relaxed);
                io.push(Item::Response(response));
                self.respond_done(now, io, ctx, req.keep_alive);
            }
            Answer::Wait(timeout) => {
                if since.is_none() {
                    hls.counters.blocked.fetch_add(1, Ordering::Relaxed);
                    hls::TOTALS.blocked.fetch_add(1, Ordering::Relaxed);
                }
                let deadline = since.unwrap_or(now) + timeout;
                self.state = HttpState::HlsWaiting { req, deadline };
            }
            Answer::Status(status, why) => self.hls_error(now, io, ctx, &req, status, why),
        }
    }

    /// An error answer to an HLS request.
    fn hls_error(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: &HlsRequest,
        status: u16,
        why: &str,
    ) {
        let body = hls::error_body(why);
        let resp = http::response(
            status,
            "text/plain",
            &[("Access-Control-Allow-Origin", req.cors.as_str())],
            body.as_bytes(),
            req.keep_alive,
            req.head_only,
        );
        self.respond(now, io, ctx, resp, req.keep_alive);
    }

    /// A response is queued: wait for the next request, or close once it is
    /// written.
    fn respond_done(&mut self, now: Instant, io: &mut ConnIo, ctx: &mut WorkerCtx, keep: bool) {
        if keep {
            self.await_request(now, ctx);
        } else {
            io.close_after_flush(Close::new(CloseReason::Done, "response sent"));
        }
        ctx.schedule_write(io);
    }

    /// The HLS of `stream` has something new: a request parked on it may be
    /// answered now (then the requests pipelined behind it are read).
    pub(super) fn on_hls(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        stream: StreamId,
    ) -> Result<(), Close> {
        let HttpState::HlsWaiting { req, .. } = &self.state else {
            return Ok(());
        };
        if req.stream.id != stream {
            return Ok(());
        }
        let HttpState::HlsWaiting { req, deadline } =
            std::mem::replace(&mut self.state, HttpState::Deciding)
        else {
            return Ok(());
        };
        ctx.unpark_hls(io, stream);
        let timeout = req
            .stream
            .hls()
            .map_or(Duration::ZERO, |h| h.blocking_timeout());
        let since = deadline.checked_sub(timeout).unwrap_or(now);
        self.hls_answer(now, io, ctx, req, Some(since));
        ctx.schedule_write(io);
        if matches!(self.state, HttpState::AwaitingRequest { .. }) {
            return self.handle_input(now, io, ctx);
        }
        Ok(())
    }

    /// True when [`HttpConn::on_drained`] has work: a VOD response fed as
    /// it drains, or reading paused on its output.
    pub(super) fn wants_drained(&self) -> bool {
        self.paused || matches!(self.state, HttpState::Vod(_))
    }

    /// The queue has drained: a file's body goes on, or the requests that
    /// waited for it are read.
    pub(super) fn on_drained(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
    ) -> Result<(), Close> {
        if let HttpState::Vod(v) = &mut self.state {
            let outcome = v.on_drained(io, ctx)?;
            return self.vod_outcome(now, io, ctx, outcome);
        }
        if !std::mem::take(&mut self.paused) {
            return Ok(());
        }
        self.handle_input(now, io, ctx)
    }

    /// Logs a denial and answers it now, or parks the request until its
    /// delayed answer is due.
    fn deny(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, key: &str, why: Denial, reply: Reply) {
        let index = ctx.index;
        match ctx
            .access
            .deny(&ctx.shared, index, io, Action::Play, key, why, reply)
        {
            Some(reply) => self.apply_reply(io, ctx, reply),
            None => self.state = HttpState::Deciding,
        }
    }

    /// Answers a denied request: the response, then the connection closes.
    pub(super) fn apply_reply(&mut self, io: &mut ConnIo, ctx: &mut WorkerCtx, reply: Reply) {
        if let Reply::Http(resp) = reply {
            io.read_buf.clear();
            io.push(Item::Control(resp));
            io.close_after_flush(Close::new(CloseReason::Done, "access denied"));
        }
        ctx.schedule_write(io);
    }

    /// A callback answered for the parked request.
    pub(super) fn on_hook_answer(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        waiting: AwaitingHook,
        answer: HookAnswer,
    ) {
        let AwaitingHook::Http {
            req,
            app,
            name,
            cors,
        } = waiting
        else {
            return;
        };
        let key = format!("{app}/{name}");
        if let Some(routed) = vod::route(&ctx.shared.config, &req.path, &req.query) {
            match (answer, routed) {
                (HookAnswer::Deny(why), _) => {
                    log::info!("play callback for stream={key} conn={}: {why}", io.id);
                    let reply = Reply::Http(access::http_denial(Denial::Callback, &cors));
                    self.deny(io, ctx, &key, Denial::Callback, reply);
                }
                (_, Ok((route, app))) => {
                    // Later requests of this viewer (ranges, HLS VOD
                    // segments) need no callback of their own; the
                    // verdicts are HLS's, kept while HLS is on.
                    if let Some(p) = ctx.shared.registry.hls_policy() {
                        p.remember_viewer(io.peer.ip(), &key, &req.query, key.clone(), now);
                    }
                    self.vod_allowed(now, io, ctx, req, route, &app, &cors);
                }
                (_, Err(_)) => self.await_request(now, ctx),
            }
            ctx.schedule_write(io);
            return;
        }
        let hls = hls::route(&req.path);
        match answer {
            HookAnswer::Deny(why) => {
                log::info!("play callback for stream={key} conn={}: {why}", io.id);
                let reply = Reply::Http(access::http_denial(Denial::Callback, &cors));
                self.deny(io, ctx, &key, Denial::Callback, reply);
            }
            HookAnswer::Allow | HookAnswer::Rename(_) => {
                let name = match answer {
                    HookAnswer::Rename(n) => {
                        log::info!(
                            "play callback for stream={key} conn={}: renamed to {app}/{n}",
                            io.id
                        );
                        n.to_string()
                    }
                    _ => name,
                };
                match hls {
                    Some((_, resource)) => {
                        let query = hls::carried_query(&req.query);
                        let serve = format!("{app}/{name}");
                        if let Some(p) = ctx.shared.registry.hls_policy() {
                            p.remember_viewer(io.peer.ip(), &key, &query, serve.clone(), now);
                        }
                        match Directives::parse(&req.query) {
                            Ok(d) => self.hls_allowed(now, io, ctx, req, serve, resource, d, &cors),
                            Err(_) => self.await_request(now, ctx),
                        }
                    }
                    None => self.player_allowed(now, io, ctx, req, &app, &name, &cors),
                }
            }
        }
        ctx.schedule_write(io);
    }

    /// This connection's player of `stream` (frames go to it directly,
    /// `Conn::deliver_frames`).
    pub(super) fn player_of(&mut self, stream: StreamId) -> Option<&mut Player> {
        match &mut self.state {
            HttpState::Streaming { player, .. } if player.stream.id == stream => Some(player),
            _ => None,
        }
    }

    /// A publish or unpublish notice of `stream` for this connection's
    /// player.
    pub(super) fn notify(&mut self, io: &mut ConnIo, stream: StreamId, seq: u64, published: bool) {
        let Some(player) = self.player_of(stream) else {
            return;
        };
        // HTTP-FLV has no in-band notice: the response ends with the stream
        // (players reconnect).
        if player.publisher_changed(seq) && !published {
            self.end_stream(io, "the publisher left");
        }
    }

    /// The pull of `stream` failed: a player still waiting for it ends.
    pub(super) fn pull_failed(&mut self, io: &mut ConnIo, stream: StreamId) {
        let HttpState::Streaming { player, .. } = &self.state else {
            return;
        };
        if player.stream.id != stream || player.stream.with_state(|st| st.publisher().is_some()) {
            return;
        }
        self.end_stream(io, "the origin is unreachable");
    }

    /// A request for a file of a video on demand application: the same
    /// access rules as every player (keys and signed URLs on every
    /// request; an `on_play` callback asked once per viewer and its
    /// verdict kept a while, as for HLS, so a browser's range requests do
    /// not each wait for it).
    fn vod_request(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: Request,
        routed: Result<(vod::VodRoute, crate::vod_settings::VodApp), u16>,
        cors: &str,
    ) {
        let keep = req.keep_alive();
        let head_only = req.method == "HEAD";
        let (route, app) = match routed {
            Ok(r) => r,
            Err(status) => {
                vod::TOTALS.not_found.fetch_add(1, Ordering::Relaxed);
                log::info!(
                    "vod http {status} path={:?} conn={} peer={}: not a file this application serves",
                    req.path,
                    io.id,
                    io.peer
                );
                let resp = vod::error_response(status, "no such file", cors, keep, head_only);
                return self.respond(now, io, ctx, resp, keep);
            }
        };
        if req.method != "GET" && !head_only {
            let resp = http::response(
                405,
                "text/plain",
                &[("Allow", "GET, HEAD, OPTIONS")],
                b"",
                keep,
                head_only,
            );
            return self.respond(now, io, ctx, resp, keep);
        }
        let verdict = ctx.shared.auth.check(
            Action::Play,
            &route.app,
            &route.name,
            &req.query,
            io.peer.ip(),
        );
        if let Err(why) = verdict {
            let reply = Reply::Http(access::http_denial(why, cors));
            return self.deny(io, ctx, &route.key, why, reply);
        }
        let callback = ctx
            .shared
            .auth
            .hooks(&route.app)
            .is_some_and(|h| h.on_play.is_some());
        let remembered = callback
            .then(|| ctx.shared.registry.hls_policy())
            .flatten()
            .and_then(|p| p.allowed_viewer(io.peer.ip(), &route.key, &req.query, now));
        if callback && remembered.is_none() {
            let waiting = AwaitingHook::Http {
                req,
                app: route.app.clone(),
                name: route.name.clone(),
                cors: cors.to_owned(),
            };
            let index = ctx.index;
            let AwaitingHook::Http { req: r, .. } = &waiting else {
                unreachable!()
            };
            let query = r.query.clone();
            match ctx
                .access
                .ask_hook(&ctx.shared, index, io, &query, "", waiting)
            {
                Some(AwaitingHook::Http { req, .. }) => {
                    self.vod_allowed(now, io, ctx, req, route, &app, cors)
                }
                Some(_) => {}
                None => {
                    self.state = HttpState::Deciding;
                    ctx.set_client_state(io.id, ClientState::Authorizing, None);
                }
            }
            return;
        }
        self.vod_allowed(now, io, ctx, req, route, &app, cors);
    }

    /// Answers an authorized request for a file: it is opened on a disk
    /// thread; the answer follows in `on_disk`.
    #[allow(clippy::too_many_arguments)]
    fn vod_allowed(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        req: Request,
        route: vod::VodRoute,
        app: &crate::vod_settings::VodApp,
        cors: &str,
    ) {
        let keep = req.keep_alive();
        let head_only = req.method == "HEAD";
        let cond = vod::Conditions {
            range: req.header("range").map(str::to_owned),
            if_range: req.header("if-range").map(str::to_owned),
            if_none_match: req.header("if-none-match").map(str::to_owned),
        };
        let key = route.key.clone();
        match VodHttp::open(
            ctx, io.id, route, app, cond, keep, head_only, cors, &req.query,
        ) {
            Ok(v) => self.state = HttpState::Vod(Box::new(v)),
            Err(why) => {
                let status = if why == "no such file" { 404 } else { 503 };
                log::info!("vod http {status} stream={key} conn={}: {why}", io.id);
                let resp = vod::error_response(status, &why, cors, keep, head_only);
                self.respond(now, io, ctx, resp, keep);
            }
        }
    }

    /// A disk thread answered for the file request in progress.
    pub(super) fn on_disk(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        reply: super::disk::DiskReply,
    ) -> Result<(), Close> {
        let HttpState::Vod(v) = &mut self.state else {
            return Ok(());
        };
        let outcome = v.on_disk(reply, io, ctx)?;
        self.vod_outcome(now, io, ctx, outcome)
    }

    /// A file answer is complete: the next request is read (or the
    /// connection closes once it is written).
    fn vod_outcome(
        &mut self,
        now: Instant,
        io: &mut ConnIo,
        ctx: &mut WorkerCtx,
        outcome: HttpOutcome,
    ) -> Result<(), Close> {
        ctx.schedule_write(io);
        let HttpOutcome::Done = outcome else {
            return Ok(());
        };
        let keep = match &self.state {
            HttpState::Vod(v) => v.keep_alive,
            _ => false,
        };
        self.respond_done(now, io, ctx, keep);
        if matches!(self.state, HttpState::AwaitingRequest { .. }) {
            return self.handle_input(now, io, ctx);
        }
        Ok(())
    }

    /// The connection closed: its player ends, its parked request goes.
    pub(super) fn on_close(&mut self, io: &ConnIo, ctx: &mut WorkerCtx, why: &str) {
        match std::mem::replace(&mut self.state, HttpState::Deciding) {
            HttpState::Streaming { player, .. } => ctx.end_player(io, player, why),
            HttpState::HlsWaiting { req, .. } => ctx.unpark_hls(io, req.stream.id),
            _ => {}
        }
    }

    /// The state, for the panic backstop's log line.
    pub(super) fn describe(&self) -> String {
        match &self.state {
            HttpState::AwaitingRequest { .. } => "http=awaiting-request".into(),
            HttpState::Streaming { websocket, player } => format!(
                "http=streaming websocket={websocket} playing=[{}]",
                player.stream.key
            ),
            HttpState::Deciding => "http=deciding".into(),
            HttpState::Vod(v) => format!("http=vod stream={}", v.key()),
            HttpState::HlsPulling { pending, .. } => {
                format!("http=hls-pulling stream={}", pending.key)
            }
            HttpState::HlsWaiting { req, .. } => {
                format!(
                    "http=hls-waiting stream={} resource={}",
                    req.stream.key, req.resource
                )
            }
        }
    }
}
