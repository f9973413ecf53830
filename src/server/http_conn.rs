//! HTTP connections on a worker: one request at a time (keep-alive and
//! pipelining for API calls), then either a complete response or a stream:
//!
//! ```text
//!   AwaitingRequest ──GET /APP/NAME.flv──────────────► Streaming { websocket: false }  (HTTP-FLV)
//!        │  ▲        ──GET ... Upgrade: websocket────► Streaming { websocket: true }   (ws-flv)
//!        │  └─ API / metrics / OPTIONS / errors: a response, then the next request
//!        └── deadline (slowloris) ──► closed
//! ```
//!
//! Streams end when their publisher leaves (HTTP-FLV has no in-band
//! notice; flv.js and mpegts.js reconnect), on a WebSocket close, or when
//! the player stalls, exactly like RTMP players: the same subscription,
//! queue bound and skip-to-keyframe policy, with the frame's FLV form.

use super::access::{self, AwaitingHook, Reply};
use super::api;
use super::flv;
use super::http::{self, Parsed, Request, WsFrame};
use super::queue::{Item, OutQueue};
use super::stats::CloseReason;
use super::stream::Format;
use super::worker::{ListenerKind, Proto, Worker};
use crate::auth::Action;
use crate::protocol::session::valid_name;
use crate::wire::WireForm;
use bytes::{Buf, Bytes};
use std::time::{Duration, Instant};

/// An HTTP connection's state, named for what it waits for.
pub(super) enum HttpState {
    /// Reading a request head (and body); closed at `deadline`.
    AwaitingRequest {
        deadline: Instant,
        timeout: Duration,
    },
    /// Streaming FLV (in WebSocket messages when `websocket`).
    Streaming { websocket: bool },
    /// A denied request whose reply is delayed (repeated failures from its
    /// address): nothing more is read as a request.
    Deciding,
}

impl HttpState {
    pub fn awaiting_request(now: Instant, timeout: Duration) -> Self {
        HttpState::AwaitingRequest {
            deadline: now + timeout,
            timeout,
        }
    }

    /// Err when a request did not arrive in time (slowloris, idle keep-alive).
    pub fn check_deadline(&self, now: Instant) -> Result<(), String> {
        match self {
            HttpState::AwaitingRequest { deadline, timeout } if now >= *deadline => {
                Err(format!("no complete HTTP request within {timeout:?}"))
            }
            _ => Ok(()),
        }
    }

    /// The stream ended: a ws-flv client gets a close frame (1000 normal
    /// closure) before the connection closes, not an abrupt end (1006).
    pub fn end_stream(&self, out: &mut OutQueue) {
        if let HttpState::Streaming { websocket: true } = self {
            out.push(Item::Control(http::ws_control(0x8, &1000u16.to_be_bytes())));
        }
    }

    /// Server shutdown: a ws-flv client gets a close frame (1001 going away).
    pub fn shutdown(&self, out: &mut OutQueue) {
        if let HttpState::Streaming { websocket: true } = self {
            out.push(Item::Control(http::ws_control(0x8, &1001u16.to_be_bytes())));
        }
    }
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        k == name && matches!(v, "" | "1" | "true" | "yes")
    })
}

impl Worker {
    pub(super) fn http_input(&mut self, now: Instant, k: usize) {
        loop {
            let Some(conn) = self.conns.get_mut(k) else {
                return;
            };
            let Proto::Http(state) = &conn.proto else {
                return;
            };
            if conn.close_after_flush.is_some() {
                // A response that ends the connection is on its way.
                conn.read_buf.clear();
                return;
            }
            match state {
                HttpState::AwaitingRequest { .. } => match http::parse_request(&conn.read_buf) {
                    Parsed::Partial => return,
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
                        conn.push(Item::Control(resp));
                        conn.close_after_flush =
                            Some((CloseReason::Protocol, format!("HTTP {status}: {why}")));
                        conn.read_buf.clear();
                        self.mark_dirty(k);
                        return;
                    }
                    Parsed::Complete(req, head_len) => {
                        if conn.read_buf.len() < head_len + req.body_len {
                            return; // the body is still coming
                        }
                        conn.read_buf.advance(head_len);
                        let body = conn.read_buf.split_to(req.body_len).freeze();
                        self.handle_request(now, k, req, body);
                        self.mark_dirty(k);
                    }
                },
                HttpState::Streaming { websocket: true } => {
                    match http::decode_ws_frame(&mut conn.read_buf) {
                        Ok(None) => return,
                        Ok(Some(WsFrame::Ping(p))) => {
                            conn.push(Item::Control(http::ws_control(0xA, &p)))
                        }
                        Ok(Some(WsFrame::Close)) => {
                            conn.push(Item::Control(http::ws_control(0x8, &1000u16.to_be_bytes())));
                            conn.close_after_flush =
                                Some((CloseReason::Peer, "WebSocket closed by peer".into()));
                        }
                        Ok(Some(WsFrame::Pong | WsFrame::Data)) => {}
                        Err(e) => return self.close(k, CloseReason::Protocol, &e.to_string()),
                    }
                    self.mark_dirty(k);
                }
                HttpState::Streaming { websocket: false } | HttpState::Deciding => {
                    // An HTTP-FLV player has nothing more to say; a denied
                    // client waits for its answer.
                    conn.read_buf.clear();
                    return;
                }
            }
        }
    }

    fn respond(&mut self, now: Instant, k: usize, resp: Bytes, keep_alive: bool) {
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
        conn.push(Item::Control(resp));
        if keep_alive {
            conn.proto = Proto::Http(HttpState::awaiting_request(
                now,
                self.shared.config.http_request_timeout,
            ));
        } else {
            conn.close_after_flush = Some((CloseReason::Done, "response sent".into()));
        }
    }

    fn handle_request(&mut self, now: Instant, k: usize, req: Request, body: Bytes) {
        let Some(conn) = self.conns.get(k) else {
            return;
        };
        let listener = conn.listener;
        let config = &self.shared.config;
        let cors = config.cors_origin.clone();
        let keep = req.keep_alive();
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
            let resp = http::response(
                204,
                "text/plain",
                &[
                    ("Access-Control-Allow-Origin", cors.as_str()),
                    (
                        "Access-Control-Allow-Methods",
                        "GET, HEAD, OPTIONS, POST, DELETE",
                    ),
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
            return self.respond(now, k, resp, keep);
        }
        if is_api {
            let served_here = listener == ListenerKind::Api || config.api_addr.is_none();
            if !served_here {
                let resp = json(
                    404,
                    &serde_json::json!({ "error": "the API is on its own address" }),
                    &[],
                );
                return self.respond(now, k, resp, keep);
            }
            if let Some(token) = &config.api_token {
                let given = req
                    .header("authorization")
                    // The auth scheme is case-insensitive (RFC 9110 11.1).
                    .and_then(|h| h.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map_or("", |(_, t)| t);
                if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                    let resp = json(
                        401,
                        &serde_json::json!({ "error": "missing or wrong bearer token" }),
                        &[("WWW-Authenticate", "Bearer")],
                    );
                    return self.respond(now, k, resp, keep);
                }
            }
            let resp = if req.path == "/metrics" {
                let text = api::metrics(&self.shared);
                http::response(
                    200,
                    "text/plain; version=0.0.4",
                    &[],
                    text.as_bytes(),
                    keep,
                    head_only,
                )
            } else {
                let (status, answer) = api::handle(&self.shared, &req.method, &req.path, &body);
                json(status, &answer, &[])
            };
            return self.respond(now, k, resp, keep);
        }
        if listener == ListenerKind::Http && req.path.ends_with(".flv") {
            return self.start_http_player(now, k, req, &cors);
        }
        let resp = http::response(
            404,
            "text/plain",
            &[("Access-Control-Allow-Origin", cors.as_str())],
            b"not found\n",
            keep,
            head_only,
        );
        self.respond(now, k, resp, keep)
    }

    fn start_http_player(&mut self, now: Instant, k: usize, req: Request, cors: &str) {
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
            return self.respond(now, k, resp, keep);
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
            return self.respond(now, k, resp, keep);
        }
        let key = format!("{app}/{name}");
        let Some(conn) = self.conns.get(k) else {
            return;
        };
        let verdict = self
            .shared
            .auth
            .check(Action::Play, app, name, &req.query, conn.peer.ip());
        if let Err(why) = verdict {
            let reply = Reply::Http(access::http_denial(why, cors));
            return self.deny(k, Action::Play, &key, why, reply);
        }
        let (app, name) = (app.to_owned(), name.to_owned());
        let query = req.query.clone();
        let waiting = AwaitingHook::Http {
            req,
            app: app.clone(),
            name: name.clone(),
            cors: cors.to_owned(),
        };
        if let Some(AwaitingHook::Http { req, .. }) =
            self.ask_hook(k, Action::Play, &app, &name, &query, waiting)
        {
            self.http_player_allowed(now, k, req, &app, &name, cors);
        }
    }

    /// Starts an authorized HTTP-FLV / ws-flv player.
    pub(super) fn http_player_allowed(
        &mut self,
        now: Instant,
        k: usize,
        req: Request,
        app: &str,
        name: &str,
        cors: &str,
    ) {
        let keep = req.keep_alive();
        let head_only = req.method == "HEAD";
        let key = format!("{app}/{name}");
        let live = self.shared.registry.get(&key).and_then(|s| {
            s.with_state(|st| st.publisher().is_some().then(|| st.has_audio_video()))
        });
        // An edge waits for the stream its first player pulls.
        let pulled = live.is_none() && self.shared.relays.pull_for(&key).is_some();
        if live.is_none() && !pulled && !query_flag(&req.query, "wait") {
            let resp = http::response(
                404,
                "text/plain",
                &[("Access-Control-Allow-Origin", cors)],
                b"stream not live\n",
                keep,
                head_only,
            );
            return self.respond(now, k, resp, keep);
        }
        let flv_headers = [
            ("Content-Type", "video/x-flv"),
            ("Cache-Control", "no-cache"),
            ("Access-Control-Allow-Origin", cors),
        ];
        if head_only {
            let resp = http::response_head(200, &flv_headers, None, false).freeze();
            return self.respond(now, k, resp, false);
        }
        // Announce what has been seen; both when nothing has yet.
        let (audio, video) = match live {
            Some((false, false)) | None => (true, true),
            Some(av) => av,
        };
        let file_header = flv::file_header(audio, video);
        let websocket = req.websocket_key().map(http::websocket_accept);
        let Some(conn) = self.conns.get_mut(k) else {
            return;
        };
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
                conn.push(Item::Control(head.freeze()));
                conn.push(Item::OwnControl(flv::ws_wrap(file_header)));
                Format::WsFlv
            }
            None => {
                let head = http::response_head(200, &flv_headers, None, false);
                conn.push(Item::OwnControl(WireForm::new(vec![
                    head.freeze(),
                    file_header,
                ])));
                Format::Flv
            }
        };
        conn.proto = Proto::Http(HttpState::Streaming {
            websocket: websocket.is_some(),
        });
        let (id, peer) = (conn.id, conn.peer);
        let (live, cached) = self.start_player(k, &key, 0, format);
        if pulled {
            self.ensure_pull(now, &key);
        }
        log::info!(
            "play start stream={key} conn={id} peer={peer} worker={} protocol={} live={live} cached_frames={cached}",
            self.index,
            format.name()
        );
        self.set_client_state(k, "playing", Some(&key));
    }
}
