//! The HTTP API (JSON) and `/metrics` (Prometheus text exposition format
//! 0.0.4), aggregated over all workers. Answers are built from the stream
//! registry, the process counters and each worker's client table; a DELETE
//! posts a close request to the worker that owns the connection.
//!
//! Who may use it is one rule, [`admin_access`], for every admin surface:
//! the API, `/metrics`, and the console's files (`server::console`), which
//! are served exactly where and to whom the API answers (docs/http.md, "Who
//! may use the API", and docs/hardening.md case 39).

use super::base::ConnId;
use super::http::Request;
use super::relays::{static_worker, TaskInfo, TaskState};
use super::shared::ListenerKind;
use super::shared::{ClientInfo, Command, Message, RelayCommand, Shared, WorkerHandle};
use super::stats::{CloseReason, Protocol, WaitSnapshot, WRITE_WAIT_BUCKETS_US};
use super::stream::{Format, Stream};
use crate::config::Config;
use crate::protocol::session::MediaKind;
use crate::record_settings::RecordFormat;
use crate::relay::{RelayKind, RuleId, RuleSpec, Scope, Unavailable};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why an admin request is refused: the status, a message for the JSON
/// body, and whether to ask for a bearer token (`WWW-Authenticate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub why: &'static str,
    pub ask_token: bool,
}

const fn refuse(status: u16, why: &'static str) -> Refusal {
    Refusal {
        status,
        why,
        ask_token: false,
    }
}

/// The methods an admin preflight allows a browser on another origin.
/// With `--cors-origin *` (the default) only reads: a page on any origin
/// must never be told it may change anything.
pub fn admin_preflight_methods(config: &Config) -> &'static str {
    if config.cors_origin == "*" {
        "GET, HEAD, OPTIONS"
    } else {
        "GET, HEAD, OPTIONS, POST, DELETE"
    }
}

/// True for what changes the server or shows who watches: every method but
/// GET and HEAD, and the client list (viewers' addresses).
fn sensitive(req: &Request) -> bool {
    !matches!(req.method.as_str(), "GET" | "HEAD")
        || req.path == "/api/clients"
        || req.path.starts_with("/api/clients/")
}

/// True when a browser says the request comes from a page of another
/// origin than this server (and not the one `--cors-origin` names).
fn cross_origin(config: &Config, req: &Request) -> bool {
    if req
        .header("sec-fetch-site")
        .is_some_and(|s| s.eq_ignore_ascii_case("cross-site"))
    {
        return true;
    }
    let Some(origin) = req.header("origin") else {
        return false; // not a browser's cross-origin request (curl, scripts)
    };
    if config.cors_origin != "*" && origin == config.cors_origin {
        return false;
    }
    let host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (host, req.header("host")) {
        (Some(h), Some(own)) => !h.eq_ignore_ascii_case(own),
        _ => true, // "null" (a sandboxed or file: page), or no Host
    }
}

/// Whether `req` from `peer`, on a listener of kind `listener`, may use the
/// admin surface. The one rule, in order:
///
/// 1. with `--api ADDR` the admin surface is on that address only (404
///    elsewhere);
/// 2. with `--api-token`, a request must carry `Authorization: Bearer
///    TOKEN` (401);
/// 3. without a token, only loopback peers are answered unless
///    `--api-public` says otherwise (403);
/// 4. a browser request from a page on another origin (its `Origin` or
///    `Sec-Fetch-Site`) may read stats but never change anything or list
///    clients (403), whatever the token: browsers send simple POSTs
///    without a preflight, and the operator's own browser is a loopback
///    peer.
pub fn admin_access(
    config: &Config,
    listener: ListenerKind,
    peer: IpAddr,
    req: &Request,
) -> Result<(), Refusal> {
    if listener != ListenerKind::Api && config.api_addr.is_some() {
        return Err(refuse(404, "the API is on its own address"));
    }
    match &config.api_token {
        Some(token) => {
            let given = req
                .header("authorization")
                // The auth scheme is case-insensitive (RFC 9110 11.1).
                .and_then(|h| h.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                .map_or("", |(_, t)| t);
            if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                return Err(Refusal {
                    status: 401,
                    why: "missing or wrong bearer token",
                    ask_token: true,
                });
            }
        }
        None if !config.api_public && !peer.to_canonical().is_loopback() => {
            return Err(refuse(
                403,
                "the API answers loopback peers only (see --api-token, --api-public)",
            ));
        }
        None => {}
    }
    if sensitive(req) && cross_origin(config, req) {
        return Err(refuse(
            403,
            "a page on another origin may not change anything or list clients",
        ));
    }
    Ok(())
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn stream_json(shared: &Shared, s: &Stream, relays: &[TaskInfo]) -> Value {
    let (app, name) = s.key.split_once('/').unwrap_or(("", &s.key));
    let recording = shared.recordings.describe(s);
    s.with_state(|st| {
        let media = st.media();
        let (has_audio, has_video) = st.has_audio_video();
        let (gop_frames, gop_bytes) = st.gop_cache();
        let players: u32 = Format::ALL.iter().map(|f| st.players(*f)).sum();
        let tracks: Vec<Value> = st
            .tracks()
            .into_iter()
            .map(|(kind, id, codec)| {
                json!({
                    "type": if kind == MediaKind::Video { "video" } else { "audio" },
                    "id": id,
                    "codec": codec.name(),
                    "fourcc": codec.fourcc().map(|f| String::from_utf8_lossy(&f).into_owned()),
                })
            })
            .collect();
        json!({
            "name": s.key,
            "app": app,
            "stream": name,
            "live": st.publisher().is_some(),
            "publisher": st.publisher().map(|p| json!({
                "id": p.conn_id.0,
                "address": p.peer.to_string(),
                "protocol": p.kind.name(),
                "since": unix_secs(p.since),
                "worker": p.worker,
            })),
            "video": has_video.then(|| json!({
                "codec": media.video_codec,
                "width": media.width,
                "height": media.height,
                "frame_rate": media.frame_rate,
            })),
            "audio": has_audio.then(|| json!({
                "codec": media.audio_codec,
                "sample_rate": media.sample_rate,
                "channels": media.channels,
            })),
            "bitrate_in": st.bitrate_in().map(|b| b.round() as u64),
            "bytes_in": st.bytes_in,
            "bytes_out": s.bytes_out.load(Ordering::Relaxed),
            "frames_dropped": s.frames_dropped.load(Ordering::Relaxed),
            "players": {
                "rtmp": st.players(Format::Rtmp),
                "http-flv": st.players(Format::Flv),
                "ws-flv": st.players(Format::WsFlv),
                "total": players,
            },
            "gop_cache": { "frames": gop_frames, "bytes": gop_bytes },
            "hls": s.hls().map(|h| h.describe()),
            "recording": recording,
            "tracks": tracks,
            "renditions": st
                .rendition_keys()
                .into_iter()
                .map(|(track, name)| json!({ "track": track, "stream": name }))
                .collect::<Vec<_>>(),
            "relays": {
                "push": relays
                    .iter()
                    .filter(|t| t.stream == s.key && t.kind == RelayKind::Push)
                    .map(task_json)
                    .collect::<Vec<_>>(),
                "pull": relays
                    .iter()
                    .find(|t| t.stream == s.key && t.kind == RelayKind::Pull)
                    .map(task_json),
            },
        })
    })
}

fn task_json(t: &TaskInfo) -> Value {
    json!({
        "id": t.id.0,
        "rule": t.rule.0,
        "type": t.kind.name(),
        "stream": t.stream,
        "url": t.url,
        "state": t.state.name(),
        "worker": t.worker,
        "reconnects": t.reconnects,
        "bytes_in": t.counters.bytes_in.load(Ordering::Relaxed),
        "bytes_out": t.counters.bytes_out.load(Ordering::Relaxed),
        "since": unix_secs(t.since),
        "last_error": t.last_error,
    })
}

/// Every rule with its running tasks.
fn relays_json(shared: &Shared) -> Value {
    let tasks = shared.relays.tasks();
    let rules: Vec<Value> = shared
        .relays
        .rules()
        .iter()
        .map(|r| {
            let (app, stream) = match &r.scope {
                Scope::App(a) => (Some(a.as_str()), None),
                Scope::Stream(s) => (None, Some(s.as_str())),
                Scope::Any => (Some("*"), None),
            };
            let running: Vec<Value> = tasks
                .iter()
                .filter(|t| t.rule == r.id)
                .map(task_json)
                .collect();
            let mut v = json!({
                "id": r.id.0,
                "type": r.kind.name(),
                "app": app,
                "stream": stream,
                "url": r.url.redacted(),
                "insecure": r.insecure,
                "source": r.source,
                "tasks": running,
            });
            if r.kind == RelayKind::Pull {
                v["static"] = json!(r.always);
                v["on_unavailable"] = json!(match r.on_unavailable {
                    Unavailable::NotFound => "not_found",
                    Unavailable::Wait => "wait",
                });
                v["idle_timeout_secs"] = json!(r.idle_timeout.as_secs_f64());
            }
            v
        })
        .collect();
    json!({ "relays": rules })
}

/// `POST /api/relays`: a rule from a JSON body (see [`RuleSpec`]), started
/// at once where it applies: a push for each matching live stream (on its
/// publisher's worker), a static pull on the worker it is assigned to.
fn add_relay(shared: &Shared, body: &[u8]) -> (u16, Value) {
    let spec: RuleSpec = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(e) => return error(400, &format!("bad relay: {e}")),
    };
    let Some(kind) = spec.kind else {
        return error(400, "bad relay: \"type\" must be \"push\" or \"pull\"");
    };
    let rule = match shared.config.relay_rule(kind, &spec, "api") {
        Ok(r) => r,
        Err(e) => return error(400, &format!("bad relay: {e}")),
    };
    let rule = shared.relays.add(rule);
    log::info!(
        "api: relay rule {} added ({} {} {})",
        rule.id,
        rule.kind.name(),
        rule.scope.as_str(),
        rule.url.redacted()
    );
    match rule.kind {
        RelayKind::Push => {
            for s in shared.registry.streams() {
                let publisher = s.with_state(|st| st.publisher().map(|p| p.worker));
                if let Some(w) = publisher.filter(|_| rule.scope.matches(&s.key)) {
                    let cmd = RelayCommand::StartPush {
                        rule: rule.id,
                        key: s.key.clone(),
                    };
                    shared.post_relay(w, cmd);
                }
            }
        }
        RelayKind::Pull if rule.always => {
            let w = static_worker(shared.workers.len(), rule.id);
            shared.post_relay(w, RelayCommand::StartPull { rule: rule.id });
        }
        RelayKind::Pull => {}
    }
    (201, json!({ "id": rule.id.0 }))
}

/// The listen addresses as configured (what the console builds its play
/// and publish URLs from; an unspecified IP there means "the host the page
/// came from"). Addresses only: no key, token or secret is in them.
fn addresses_json(config: &Config) -> Value {
    let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
    json!({
        "rtmp": config.rtmp_addr.to_string(),
        "rtmps": addr(config.rtmps_addr),
        "http": addr(config.http_addr),
        "https": addr(config.https_addr),
        "api": addr(config.api_addr),
    })
}

/// Each worker's load: the connections it holds now and its event loop
/// iterations so far (a rate, over two answers, is how busy it is).
fn worker_load_json(shared: &Shared) -> Value {
    let load: Vec<Value> = shared
        .workers
        .iter()
        .enumerate()
        .map(|(w, h)| {
            json!({
                "worker": w,
                "connections": h.connections.load(Ordering::Relaxed),
                "loop_iterations": h.iterations.load(Ordering::Relaxed),
            })
        })
        .collect();
    Value::Array(load)
}

fn client_json(worker: usize, c: &ClientInfo) -> Value {
    json!({
        "id": c.id.0,
        "address": c.peer.to_string(),
        "protocol": c.protocol.name(),
        "state": c.state.name(),
        "stream": c.stream,
        "since": unix_secs(c.since),
        "bytes_in": c.counters.bytes_in.load(Ordering::Relaxed),
        "bytes_out": c.counters.bytes_out.load(Ordering::Relaxed),
        "worker": worker,
    })
}

fn error(status: u16, message: &str) -> (u16, Value) {
    (status, json!({ "error": message }))
}

/// Asks the worker holding connection `id` to close it.
fn close_client(shared: &Shared, id: ConnId) -> bool {
    match shared.worker_of(id) {
        Some(w) => {
            shared.post(w, Message::Command(Command::Close(id)));
            true
        }
        None => false,
    }
}

/// The stream `streams/APP/NAME/record` names, when it is known (a
/// stream called `NAME/record` is reached when `APP/NAME` is not one).
fn record_target(shared: &Shared, rest: &str) -> Option<Arc<Stream>> {
    let key = rest.strip_prefix("streams/")?.strip_suffix("/record")?;
    shared.registry.get(key)
}

/// `POST /api/streams/APP/NAME/record` (body: optional `{"format": "flv"}`)
/// starts recording a live stream; `DELETE` stops it and finishes its file.
fn record(shared: &Shared, method: &str, stream: &Arc<Stream>, body: &[u8]) -> (u16, Value) {
    if method == "DELETE" {
        return match shared.recordings.stop(stream, "stopped through the API") {
            Some(v) => {
                log::info!("api: recording of {} stopped", stream.key);
                (200, v)
            }
            None => error(404, "the stream is not being recorded"),
        };
    }
    let format = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Start {
            format: Option<RecordFormat>,
        }
        match serde_json::from_slice::<Start>(body) {
            Ok(s) => s.format,
            Err(e) => return error(400, &format!("bad record request: {e}")),
        }
    };
    match shared.recordings.start(stream, format, true) {
        Ok(v) => {
            log::info!("api: recording of {} started", stream.key);
            (201, v)
        }
        Err((status, why)) => error(status, &why),
    }
}

/// Answers an API request (`path` starts with `/api/`).
pub fn handle(shared: &Shared, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let rest = path.trim_start_matches("/api/").trim_end_matches('/');
    match (method, rest) {
        ("GET" | "HEAD", "server") => {
            let s = &shared.stats;
            (
                200,
                json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_secs": s.started.elapsed().as_secs(),
                    "workers": shared.workers.len(),
                    "connections": {
                        "rtmp": s.connections(Protocol::Rtmp),
                        "rtmps": s.connections(Protocol::Rtmps),
                        "http": s.connections(Protocol::Http),
                        "https": s.connections(Protocol::Https),
                    },
                    "streams": shared.registry.len(),
                    "bytes_in": s.bytes_in.load(Ordering::Relaxed),
                    "bytes_out": s.bytes_out.load(Ordering::Relaxed),
                    "frames_dropped": s.frames_dropped.load(Ordering::Relaxed),
                    "time": unix_secs(SystemTime::now()),
                    "addresses": addresses_json(&shared.config),
                    "hls": shared.config.hls,
                    "worker_load": worker_load_json(shared),
                }),
            )
        }
        ("GET" | "HEAD", "streams") => {
            let relays = shared.relays.tasks();
            let streams: Vec<Value> = shared
                .registry
                .streams()
                .iter()
                .map(|s| stream_json(shared, s, &relays))
                .collect();
            (200, json!({ "streams": streams }))
        }
        ("GET" | "HEAD", "clients") => {
            let mut clients = Vec::new();
            for (w, handle) in shared.workers.iter().enumerate() {
                clients.extend(handle.clients().values().map(|c| client_json(w, c)));
            }
            clients.sort_by_key(|c| c["id"].as_u64());
            (200, json!({ "clients": clients }))
        }
        ("POST", "drain") => {
            // A graceful shutdown, as on SIGTERM: Enhanced RTMP publishers
            // that announced capsEx Reconnect are asked to reconnect and
            // served until they leave (or --drain-timeout); the rest close.
            log::info!("api: drain requested; shutting down");
            shared.shutdown();
            (
                202,
                json!({
                    "draining": true,
                    "reconnect_url": shared.config.reconnect_url,
                    "drain_timeout_secs": shared.config.drain_timeout.as_secs_f64(),
                }),
            )
        }
        ("POST" | "DELETE", r)
            if r.starts_with("streams/") && record_target(shared, r).is_some() =>
        {
            // The stream may have ended since the guard looked.
            match record_target(shared, r) {
                Some(stream) => record(shared, method, &stream, body),
                None => error(404, "no such stream"),
            }
        }
        ("GET" | "HEAD", "recordings") => (200, shared.recordings.list()),
        (m, r) if r.starts_with("streams/") => {
            let key = &r["streams/".len()..];
            let Some(stream) = shared.registry.get(key) else {
                return error(404, "no such stream");
            };
            match m {
                "GET" | "HEAD" => (200, stream_json(shared, &stream, &shared.relays.tasks())),
                "DELETE" => match stream.with_state(|st| st.publisher().map(|p| p.conn_id)) {
                    Some(id) if close_client(shared, id) => (200, json!({ "closed": id.0 })),
                    _ => error(404, "stream has no publisher"),
                },
                _ => error(405, "method not allowed"),
            }
        }
        ("GET" | "HEAD", "relays") => (200, relays_json(shared)),
        ("POST", "relays") => add_relay(shared, body),
        (m, r) if r.starts_with("relays/") => {
            let Ok(id) = r["relays/".len()..].parse::<u64>() else {
                return error(400, "relay ids are numbers");
            };
            match m {
                "DELETE" => match shared.relays.remove(RuleId(id)) {
                    Some(rule) => {
                        log::info!(
                            "api: relay rule {id} deleted ({} {} {})",
                            rule.kind.name(),
                            rule.scope.as_str(),
                            rule.url.redacted()
                        );
                        for w in 0..shared.workers.len() {
                            shared.post_relay(w, RelayCommand::Stop { rule: RuleId(id) });
                        }
                        (200, json!({ "deleted": id }))
                    }
                    None => error(404, "no such relay"),
                },
                "GET" | "HEAD" => match relays_json(shared)["relays"]
                    .as_array()
                    .and_then(|a| a.iter().find(|r| r["id"] == id).cloned())
                {
                    Some(r) => (200, r),
                    None => error(404, "no such relay"),
                },
                _ => error(405, "method not allowed"),
            }
        }
        (m, r) if r.starts_with("clients/") => {
            let Ok(id) = r["clients/".len()..].parse::<u64>() else {
                return error(400, "client ids are numbers");
            };
            match m {
                "DELETE" if close_client(shared, ConnId(id)) => (200, json!({ "closed": id })),
                "DELETE" => error(404, "no such client"),
                _ => error(405, "method not allowed"),
            }
        }
        _ => error(404, "no such endpoint"),
    }
}

/// Escapes a label value (text exposition format: backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: HELP and TYPE, then one sample per (labels, value).
fn family(
    o: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(o, "{name} {value}");
        } else {
            let _ = writeln!(o, "{name}{{{labels}}} {value}");
        }
    }
}

/// `sluice_write_wait_seconds`: how long queued media waited for its write
/// (all workers), as a Prometheus histogram, and the longest wait seen.
fn write_wait_histogram(o: &mut String, w: &WaitSnapshot) {
    let name = "sluice_write_wait_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Time from holding (or queueing) media to the write that starts sending it (the write policy's hold plus the loop's own delay), sockets with room only.\n# TYPE {name} histogram"
    );
    let mut count = 0;
    for (i, n) in w.buckets.iter().enumerate() {
        count += n;
        match WRITE_WAIT_BUCKETS_US.get(i) {
            Some(us) => {
                let le = *us as f64 / 1e6;
                let _ = writeln!(o, "{name}_bucket{{le=\"{le}\"}} {count}");
            }
            None => {
                let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {count}");
            }
        }
    }
    let _ = writeln!(o, "{name}_sum {}", w.sum_us as f64 / 1e6);
    let _ = writeln!(o, "{name}_count {count}");
    let max = "sluice_write_wait_max_seconds";
    let _ = writeln!(
        o,
        "# HELP {max} The longest wait of sluice_write_wait_seconds since the server started.\n# TYPE {max} gauge\n{max} {}",
        w.max_us as f64 / 1e6
    );
}

/// `/metrics` in the Prometheus text exposition format.
pub fn metrics(shared: &Shared) -> String {
    let s = &shared.stats;
    let streams = shared.registry.streams();
    let one = |v: u64| [(String::new(), v)];
    let per_stream = |f: &dyn Fn(&Stream) -> u64| {
        streams
            .iter()
            .map(|st| (format!("stream=\"{}\"", label(&st.key)), f(st)))
            .collect::<Vec<_>>()
    };
    let mut o = String::with_capacity(4096);
    family(
        &mut o,
        "sluice_connections",
        "gauge",
        "Open connections by protocol.",
        Protocol::ALL.map(|p| {
            (
                format!("protocol=\"{}\"", p.name()),
                s.connections(p) as u64,
            )
        }),
    );
    family(
        &mut o,
        "sluice_streams",
        "gauge",
        "Streams known (live or awaited by players).",
        one(streams.len() as u64),
    );
    for (name, help, value) in [
        (
            "sluice_bytes_in_total",
            "Bytes read from all peers.",
            &s.bytes_in,
        ),
        (
            "sluice_bytes_out_total",
            "Bytes written to all peers.",
            &s.bytes_out,
        ),
        (
            "sluice_frames_dropped_total",
            "Frames skipped for slow players.",
            &s.frames_dropped,
        ),
        (
            "sluice_handshake_failures_total",
            "RTMP and TLS handshakes refused or timed out.",
            &s.handshake_failures,
        ),
        (
            "sluice_tls_handshakes_deferred_total",
            "Reads of TLS handshakes put off to a later loop iteration (a burst of joiners).",
            &s.handshakes_deferred,
        ),
    ] {
        family(
            &mut o,
            name,
            "counter",
            help,
            one(value.load(Ordering::Relaxed)),
        );
    }
    family(
        &mut o,
        "sluice_closes_total",
        "counter",
        "Connections closed, by reason.",
        CloseReason::ALL.map(|r| (format!("reason=\"{}\"", r.name()), s.closes(r))),
    );
    // Per-worker families: one sample per worker, labelled by its index.
    type PerWorker = fn(&WorkerHandle) -> &AtomicU64;
    for (name, kind, help, value) in [
        (
            "sluice_worker_loop_iterations_total",
            "counter",
            "Event loop iterations per worker.",
            (|h| &h.iterations) as PerWorker,
        ),
        (
            "sluice_write_calls_total",
            "counter",
            "Write system calls per worker (sendmsg, sendfile, and TLS record writes).",
            |h| &h.write_calls,
        ),
        (
            "sluice_sendfile_calls_total",
            "counter",
            "Of the write calls, sendfile calls per worker: released media sent to plain TCP players from batch files.",
            |h| &h.sendfile_calls,
        ),
        (
            "sluice_batch_file_bytes",
            "gauge",
            "Bytes of released media in each worker's in-memory batch files, which plain TCP players are sent from with sendfile (shared memory, not in the process's RSS).",
            |h| &*h.batch_file_bytes,
        ),
    ] {
        family(
            &mut o,
            name,
            kind,
            help,
            shared
                .workers
                .iter()
                .enumerate()
                .map(|(w, h)| (format!("worker=\"{w}\""), value(h).load(Ordering::Relaxed))),
        );
    }
    let mut wait = WaitSnapshot::default();
    for h in &shared.workers {
        h.write_wait.add_to(&mut wait);
    }
    write_wait_histogram(&mut o, &wait);
    let players = streams.iter().flat_map(|st| {
        let n = label(&st.key);
        st.with_state(|state| {
            Format::ALL.map(|f| {
                (
                    format!("stream=\"{n}\",protocol=\"{}\"", f.name()),
                    u64::from(state.players(f)),
                )
            })
        })
    });
    family(
        &mut o,
        "sluice_stream_players",
        "gauge",
        "Players per stream and protocol.",
        players,
    );
    family(
        &mut o,
        "sluice_stream_bytes_in_total",
        "counter",
        "Bytes published into a stream by its current publisher.",
        per_stream(&|st| st.with_state(|x| x.bytes_in)),
    );
    family(
        &mut o,
        "sluice_stream_bytes_out_total",
        "counter",
        "Bytes written to a stream's players.",
        per_stream(&|st| st.bytes_out.load(Ordering::Relaxed)),
    );
    family(
        &mut o,
        "sluice_stream_frames_dropped_total",
        "counter",
        "Frames skipped for a stream's slow players.",
        per_stream(&|st| st.frames_dropped.load(Ordering::Relaxed)),
    );
    let tasks = shared.relays.tasks();
    let per_task = |f: &dyn Fn(&TaskInfo) -> u64| {
        tasks
            .iter()
            .map(|t| {
                let labels = format!(
                    "id=\"{}\",type=\"{}\",stream=\"{}\",url=\"{}\"",
                    t.id,
                    t.kind.name(),
                    label(&t.stream),
                    label(&t.url)
                );
                (labels, f(t))
            })
            .collect::<Vec<_>>()
    };
    for (name, kind, help, f) in [
        (
            "sluice_relay_up",
            "gauge",
            "1 while a relay publishes (push) or plays (pull), else 0.",
            &(|t: &TaskInfo| {
                u64::from(matches!(
                    t.state,
                    TaskState::Publishing | TaskState::Playing
                ))
            }) as &dyn Fn(&TaskInfo) -> u64,
        ),
        (
            "sluice_relay_reconnects_total",
            "counter",
            "Connections a relay made after its first.",
            &|t: &TaskInfo| t.reconnects,
        ),
        (
            "sluice_relay_bytes_in_total",
            "counter",
            "Bytes read by a relay over all its connections.",
            &|t: &TaskInfo| t.counters.bytes_in.load(Ordering::Relaxed),
        ),
        (
            "sluice_relay_bytes_out_total",
            "counter",
            "Bytes written by a relay over all its connections.",
            &|t: &TaskInfo| t.counters.bytes_out.load(Ordering::Relaxed),
        ),
    ] {
        family(&mut o, name, kind, help, per_task(f));
    }
    let hls = &super::hls::TOTALS;
    family(
        &mut o,
        "sluice_hls_requests_total",
        "counter",
        "HLS requests answered, by what they asked for.",
        [
            ("playlist", &hls.playlists),
            ("part", &hls.parts),
            ("segment", &hls.segments),
            ("init", &hls.inits),
        ]
        .map(|(kind, c)| (format!("kind=\"{kind}\""), c.load(Ordering::Relaxed))),
    );
    for (name, kind, help, value) in [
        (
            "sluice_hls_blocked_total",
            "counter",
            "HLS requests that waited for a part (blocking reloads, hinted parts).",
            hls.blocked.load(Ordering::Relaxed),
        ),
        (
            "sluice_hls_timeouts_total",
            "counter",
            "Waiting HLS requests answered 503 after three target durations.",
            hls.timeouts.load(Ordering::Relaxed),
        ),
        (
            "sluice_hls_bytes_out_total",
            "counter",
            "Bytes of HLS responses (heads and bodies).",
            hls.bytes_out.load(Ordering::Relaxed),
        ),
        (
            "sluice_hls_waiting",
            "gauge",
            "HLS requests waiting now, on every worker.",
            hls.waiting.load(Ordering::Relaxed),
        ),
        (
            "sluice_hls_streams",
            "gauge",
            "Streams packaged as HLS.",
            streams.iter().filter(|s| s.hls().is_some()).count() as u64,
        ),
        (
            "sluice_hls_window_reserved_bytes",
            "gauge",
            "Window bytes the packaged streams reserved in --hls-max-bytes.",
            shared
                .registry
                .hls_policy()
                .map_or(0, |p| p.budget().0 as u64),
        ),
        (
            "sluice_hls_streams_refused_total",
            "counter",
            "Streams not packaged because --hls-max-bytes was spent.",
            shared.registry.hls_policy().map_or(0, |p| p.refused()),
        ),
    ] {
        family(&mut o, name, kind, help, one(value));
    }
    let vod = &super::vod::TOTALS;
    for (name, kind, help, c) in [
        (
            "sluice_vod_players",
            "gauge",
            "RTMP players of files (video on demand) now.",
            &vod.players,
        ),
        (
            "sluice_vod_plays_total",
            "counter",
            "RTMP plays of files started (the file opened and its header read).",
            &vod.plays,
        ),
        (
            "sluice_vod_http_requests_total",
            "counter",
            "HTTP requests answered from files (whole, ranges, FLV start, HLS VOD).",
            &vod.http_requests,
        ),
        (
            "sluice_vod_bytes_out_total",
            "counter",
            "Bytes sent from files (RTMP payloads, HTTP bodies).",
            &vod.bytes_out,
        ),
        (
            "sluice_vod_reads_total",
            "counter",
            "Reads of files submitted to the disk threads.",
            &vod.reads,
        ),
        (
            "sluice_vod_errors_total",
            "counter",
            "Plays and requests that failed on a file (not parsable, truncated, a read error).",
            &vod.errors,
        ),
        (
            "sluice_vod_not_found_total",
            "counter",
            "Plays and requests of names that are no file here (missing, outside the directory).",
            &vod.not_found,
        ),
        (
            "sluice_vod_index_cache_hits_total",
            "counter",
            "MP4 indexes reused instead of read again.",
            &vod.cache_hits,
        ),
    ] {
        family(&mut o, name, kind, help, one(c.load(Ordering::Relaxed)));
    }
    let rec = &shared.recordings;
    let t = &rec.totals;
    for (name, kind, help, value) in [
        (
            "sluice_recordings_active",
            "gauge",
            "Recordings running now (a failed one counts until its stream ends).",
            rec.active_count() as u64,
        ),
        (
            "sluice_record_bytes_total",
            "counter",
            "Bytes the disk wrote for recordings.",
            t.bytes.load(Ordering::Relaxed),
        ),
        (
            "sluice_record_queued_bytes",
            "gauge",
            "Bytes recordings have waiting for the disk.",
            rec.queued_bytes(),
        ),
        (
            "sluice_record_dropped_total",
            "counter",
            "Fragments (mp4) and tags (flv) recordings dropped because the disk fell behind.",
            t.dropped.load(Ordering::Relaxed),
        ),
        (
            "sluice_record_failures_total",
            "counter",
            "Recordings stopped by an error (a full disk, an unwritable path).",
            t.failures.load(Ordering::Relaxed),
        ),
        (
            "sluice_record_files_total",
            "counter",
            "Recording files finished.",
            t.files.load(Ordering::Relaxed),
        ),
        (
            "sluice_record_deleted_total",
            "counter",
            "Recording files deleted by the retention.",
            t.deleted.load(Ordering::Relaxed),
        ),
        (
            "sluice_disk_jobs_pending",
            "gauge",
            "Jobs queued or running on the disk helper threads.",
            shared.disk.pending() as u64,
        ),
    ] {
        family(&mut o, name, kind, help, one(value));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::http::{parse_request, Parsed};

    fn req(method: &str, path: &str, headers: &str) -> Request {
        let raw = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n{headers}\r\n");
        match parse_request(raw.as_bytes()) {
            Parsed::Complete(r, _) => r,
            other => panic!("{other:?}"),
        }
    }

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const REMOTE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7));

    fn status(config: &Config, peer: IpAddr, r: &Request) -> u16 {
        admin_access(config, ListenerKind::Http, peer, r).map_or_else(|e| e.status, |()| 200)
    }

    /// docs/hardening.md case 39: by default the admin surface answers
    /// loopback peers only; a token or `--api-public` opens it.
    #[test]
    fn loopback_only_unless_a_token_or_api_public() {
        let get = req("GET", "/api/server", "");
        let config = Config::default();
        assert_eq!(status(&config, LOOPBACK, &get), 200);
        assert_eq!(status(&config, REMOTE, &get), 403);
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(status(&config, mapped, &get), 200, "IPv4-mapped loopback");
        let public = Config {
            api_public: true,
            ..Config::default()
        };
        assert_eq!(status(&public, REMOTE, &get), 200);
        let token = Config {
            api_token: Some("t0k".into()),
            ..Config::default()
        };
        assert_eq!(status(&token, REMOTE, &get), 401);
        assert_eq!(
            status(&token, LOOPBACK, &get),
            401,
            "a token binds everyone"
        );
        let with = req("GET", "/api/server", "Authorization: Bearer t0k\r\n");
        assert_eq!(status(&token, REMOTE, &with), 200);
        let elsewhere = Config {
            api_addr: Some("127.0.0.1:9000".parse().unwrap()),
            ..Config::default()
        };
        assert_eq!(status(&elsewhere, LOOPBACK, &get), 404);
        assert_eq!(
            admin_access(&elsewhere, ListenerKind::Api, LOOPBACK, &get),
            Ok(())
        );
    }

    /// A page on another origin may read stats, never change anything or
    /// list clients; the same origin, and a named `--cors-origin`, may.
    #[test]
    fn other_origins_may_not_change_anything_or_list_clients() {
        let config = Config {
            api_public: true,
            ..Config::default()
        };
        let evil = "Origin: https://evil.test\r\n";
        for (m, p) in [
            ("POST", "/api/drain"),
            ("DELETE", "/api/clients/3"),
            ("POST", "/api/relays"),
            ("GET", "/api/clients"),
        ] {
            assert_eq!(status(&config, LOOPBACK, &req(m, p, evil)), 403, "{m} {p}");
            let same = req(m, p, "Origin: http://127.0.0.1:8080\r\n");
            assert_eq!(status(&config, LOOPBACK, &same), 200, "{m} {p} same origin");
            assert_eq!(
                status(&config, LOOPBACK, &req(m, p, "")),
                200,
                "{m} {p} no Origin"
            );
        }
        assert_eq!(
            status(&config, LOOPBACK, &req("GET", "/api/streams", evil)),
            200
        );
        assert_eq!(
            status(&config, LOOPBACK, &req("GET", "/metrics", evil)),
            200
        );
        let null = req("POST", "/api/drain", "Origin: null\r\n");
        assert_eq!(status(&config, LOOPBACK, &null), 403);
        let named = Config {
            cors_origin: "https://console.test".into(),
            ..config.clone()
        };
        let console = req(
            "DELETE",
            "/api/clients/3",
            "Origin: https://console.test\r\n",
        );
        assert_eq!(status(&named, LOOPBACK, &console), 200);
        assert_eq!(admin_preflight_methods(&config), "GET, HEAD, OPTIONS");
        assert!(admin_preflight_methods(&named).contains("DELETE"));
    }
}
