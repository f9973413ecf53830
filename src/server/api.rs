//! The HTTP API (JSON) and `/metrics` (Prometheus text exposition format
//! 0.0.4), aggregated over all workers. Answers are built from the stream
//! registry, the process counters and each worker's client table; a DELETE
//! posts a close request to the worker that owns the connection.

use super::relay::{RelayCommand, TaskInfo};
use super::stats::{CloseReason, Protocol};
use super::stream::{Format, Stream};
use super::worker::{ClientInfo, Delivery, Shared};
use crate::protocol::session::MediaKind;
use crate::relay::{RelayKind, RuleSpec, Scope, Unavailable};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn stream_json(s: &Stream, relays: &[TaskInfo]) -> Value {
    let (app, name) = s.key.split_once('/').unwrap_or(("", &s.key));
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
                "id": p.conn_id,
                "address": p.peer.to_string(),
                "protocol": p.protocol,
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
            "tracks": tracks,
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
        "id": t.id,
        "rule": t.rule,
        "type": t.kind.name(),
        "stream": t.stream,
        "url": t.url,
        "state": t.state,
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
            };
            let running: Vec<Value> = tasks
                .iter()
                .filter(|t| t.rule == r.id)
                .map(task_json)
                .collect();
            let mut v = json!({
                "id": r.id,
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
                    super::relay::post(shared, w, cmd);
                }
            }
        }
        RelayKind::Pull if rule.always => {
            let w = super::relay::static_worker(shared, rule.id);
            super::relay::post(shared, w, RelayCommand::StartPull { rule: rule.id });
        }
        RelayKind::Pull => {}
    }
    (201, json!({ "id": rule.id }))
}

fn client_json(worker: usize, c: &ClientInfo) -> Value {
    json!({
        "id": c.id,
        "address": c.peer.to_string(),
        "protocol": c.protocol.name(),
        "state": c.state,
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
fn close_client(shared: &Shared, id: u64) -> bool {
    for (w, handle) in shared.workers.iter().enumerate() {
        let owns = handle
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&id);
        if owns {
            handle
                .inbox
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Delivery::Close(id));
            if let Err(e) = shared.workers[w].waker.wake() {
                log::warn!("api: waking worker {w}: {e}");
            }
            return true;
        }
    }
    false
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
                }),
            )
        }
        ("GET" | "HEAD", "streams") => {
            let relays = shared.relays.tasks();
            let streams: Vec<Value> = shared
                .registry
                .streams()
                .iter()
                .map(|s| stream_json(s, &relays))
                .collect();
            (200, json!({ "streams": streams }))
        }
        ("GET" | "HEAD", "clients") => {
            let mut clients = Vec::new();
            for (w, handle) in shared.workers.iter().enumerate() {
                let map = handle.clients.lock().unwrap_or_else(|p| p.into_inner());
                clients.extend(map.values().map(|c| client_json(w, c)));
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
        (m, r) if r.starts_with("streams/") => {
            let key = &r["streams/".len()..];
            let Some(stream) = shared.registry.get(key) else {
                return error(404, "no such stream");
            };
            match m {
                "GET" | "HEAD" => (200, stream_json(&stream, &shared.relays.tasks())),
                "DELETE" => match stream.with_state(|st| st.publisher().map(|p| p.conn_id)) {
                    Some(id) if close_client(shared, id) => (200, json!({ "closed": id })),
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
                "DELETE" => match shared.relays.remove(id) {
                    Some(rule) => {
                        log::info!(
                            "api: relay rule {id} deleted ({} {} {})",
                            rule.kind.name(),
                            rule.scope.as_str(),
                            rule.url.redacted()
                        );
                        for w in 0..shared.workers.len() {
                            super::relay::post(shared, w, RelayCommand::Stop { rule: id });
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
                "DELETE" if close_client(shared, id) => (200, json!({ "closed": id })),
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
    family(
        &mut o,
        "sluice_worker_loop_iterations_total",
        "counter",
        "Event loop iterations per worker.",
        shared.workers.iter().enumerate().map(|(w, h)| {
            (
                format!("worker=\"{w}\""),
                h.iterations.load(Ordering::Relaxed),
            )
        }),
    );
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
            &(|t: &TaskInfo| u64::from(matches!(t.state, "publishing" | "playing")))
                as &dyn Fn(&TaskInfo) -> u64,
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
    o
}
