//! `sluice`: the command-line entry point. Parses flags (getopts), sets up
//! logging (env_logger, `RUST_LOG`, info by default), binds the listeners,
//! and runs the workers until SIGINT or SIGTERM.

use getopts::Options;
use sluice::config::{self, Config};
use sluice::relay::{RelayKind, RuleSpec};
use sluice::server::Server;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

fn options() -> Options {
    let d = Config::default();
    let mut o = Options::new();
    o.optopt(
        "",
        "rtmp",
        &format!("RTMP listen address [{}]", config::DEFAULT_RTMP_ADDR),
        "ADDR",
    );
    o.optopt(
        "",
        "http",
        &format!(
            "HTTP-FLV / ws-flv / API listen address [{}]",
            config::DEFAULT_HTTP_ADDR
        ),
        "ADDR",
    );
    o.optflag("", "no-http", "do not listen for HTTP");
    o.optopt(
        "",
        "rtmps",
        "RTMPS (RTMP in TLS) listen address, e.g. 0.0.0.0:443",
        "ADDR",
    );
    o.optopt(
        "",
        "https",
        "HTTPS-FLV / wss-flv / API listen address",
        "ADDR",
    );
    o.optmulti(
        "",
        "tls-cert",
        "PEM certificate chain (repeat with --tls-key; the first is the default)",
        "FILE",
    );
    o.optmulti(
        "",
        "tls-key",
        "PEM private key (RSA, ECDSA or Ed25519) for the --tls-cert at the same position",
        "FILE",
    );
    o.optopt(
        "",
        "tls-dir",
        "directory of NAME.crt (or NAME.pem) + NAME.key pairs",
        "DIR",
    );
    o.optopt(
        "",
        "max-tls-handshakes",
        &format!(
            "TLS handshakes in progress per worker [{}]",
            d.max_tls_handshakes_per_worker
        ),
        "N",
    );
    o.optopt(
        "",
        "api",
        "serve the API and /metrics on this address only (not on --http)",
        "ADDR",
    );
    o.optopt(
        "",
        "api-token",
        "bearer token the API and /metrics require",
        "TOKEN",
    );
    o.optopt(
        "",
        "cors-origin",
        "Access-Control-Allow-Origin for HTTP responses [*]",
        "ORIGIN",
    );
    o.optopt(
        "",
        "http-request-timeout",
        &format!(
            "time to send an HTTP request head [{}]",
            d.http_request_timeout.as_secs()
        ),
        "SECS",
    );
    o.optopt(
        "",
        "workers",
        &format!("worker threads, one poll loop each [{}: cores]", d.workers),
        "N",
    );
    o.optopt(
        "",
        "chunk-size",
        &format!("outbound RTMP chunk size [{}]", d.chunk_size),
        "BYTES",
    );
    o.optopt(
        "",
        "max-message-len",
        &format!("largest message accepted [{}]", d.max_message_len),
        "BYTES",
    );
    o.optopt(
        "",
        "max-chunk-streams",
        &format!("chunk streams per connection [{}]", d.max_chunk_streams),
        "N",
    );
    o.optopt(
        "",
        "max-partial-bytes",
        &format!(
            "bytes held in partial messages per connection [{}]",
            d.max_partial_bytes
        ),
        "BYTES",
    );
    o.optopt(
        "",
        "max-message-streams",
        &format!("createStream per connection [{}]", d.max_message_streams),
        "N",
    );
    o.optopt(
        "",
        "handshake-timeout",
        &format!(
            "handshake + connect deadline [{}]",
            d.handshake_timeout.as_secs()
        ),
        "SECS",
    );
    o.optopt(
        "",
        "ping-interval",
        &format!("ping a silent peer after [{}]", d.ping_interval.as_secs()),
        "SECS",
    );
    o.optopt(
        "",
        "ping-timeout",
        &format!("close a silent peer after [{}]", d.ping_timeout.as_secs()),
        "SECS",
    );
    o.optopt(
        "",
        "publisher-idle-timeout",
        &format!(
            "drop a publisher sending no media after [{}]",
            d.publisher_idle_timeout.as_secs()
        ),
        "SECS",
    );
    o.optopt(
        "",
        "player-queue-bytes",
        &format!(
            "queued bytes before a player skips to the next keyframe [{}]",
            d.player_queue_bytes
        ),
        "BYTES",
    );
    o.optopt(
        "",
        "player-stall-timeout",
        &format!(
            "disconnect a player whose socket takes nothing for [{}]",
            d.player_stall_timeout.as_secs()
        ),
        "SECS",
    );
    o.optopt(
        "",
        "gop-cache-bytes",
        &format!("GOP cache bound per stream [{}]", d.gop_cache_bytes),
        "BYTES",
    );
    o.optopt(
        "",
        "gop-cache-frames",
        &format!("GOP cache bound per stream [{}]", d.gop_cache_frames),
        "N",
    );
    o.optopt(
        "",
        "max-connections",
        &format!("connections per worker [{}]", d.max_connections_per_worker),
        "N",
    );
    o.optopt(
        "",
        "reconnect-url",
        "tcUrl Enhanced RTMP publishers are asked to reconnect to on shutdown \
         [their own]",
        "URL",
    );
    o.optopt(
        "",
        "drain-timeout",
        &format!(
            "on shutdown, how long publishers asked to reconnect may stay [{}]",
            d.drain_timeout.as_secs()
        ),
        "SECS",
    );
    o.optopt(
        "",
        "second-publisher",
        "a second publisher on a live name: reject or replace [reject]",
        "POLICY",
    );
    o.optmulti(
        "",
        "push",
        "push every stream of APP (or the stream APP/NAME) to URL \
         (rtmp:// or rtmps://; without a stream name in URL the local name is used); repeatable",
        "APP[/NAME]=URL",
    );
    o.optmulti(
        "",
        "pull",
        "make APP (or APP/NAME) an edge of the origin URL: a stream is pulled \
         when its first player arrives; repeatable",
        "APP[/NAME]=URL",
    );
    o.optmulti(
        "",
        "pull-static",
        "keep APP/NAME pulled from URL, players or not; repeatable",
        "APP/NAME=URL",
    );
    o.optopt(
        "",
        "pull-idle-timeout",
        &format!(
            "how long a pulled stream with no player stays pulled [{}]",
            d.pull_idle_timeout.as_secs()
        ),
        "SECS",
    );
    o.optopt(
        "",
        "pull-unavailable",
        "players of an unreachable origin get not_found, or wait [not_found]",
        "POLICY",
    );
    o.optopt(
        "",
        "relay-ca",
        "extra trusted root certificates (PEM) for rtmps:// relay peers",
        "FILE",
    );
    o.optopt(
        "c",
        "config",
        "TOML config file (flags given here override it)",
        "FILE",
    );
    o.optopt(
        "",
        "check-config",
        "check a config file, explain any error, and exit",
        "FILE",
    );
    o.optflag("h", "help", "print this help");
    o.optflag("V", "version", "print the version");
    o
}

fn parse<T: FromStr>(m: &getopts::Matches, name: &str, into: &mut T) -> Result<(), String>
where
    T::Err: std::fmt::Display,
{
    if let Some(v) = m.opt_str(name) {
        *into = v.parse().map_err(|e| format!("--{name} {v:?}: {e}"))?;
    }
    Ok(())
}

fn parse_secs(m: &getopts::Matches, name: &str, into: &mut Duration) -> Result<(), String> {
    let mut secs = into.as_secs_f64();
    parse(m, name, &mut secs)?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("--{name} must be a positive number of seconds"));
    }
    *into = Duration::from_secs_f64(secs);
    Ok(())
}

fn config_from(m: &getopts::Matches) -> Result<Config, String> {
    let mut c = match m.opt_str("c") {
        Some(path) => config::FileConfig::load(path.as_ref())?.to_config()?,
        None => Config::default(),
    };
    parse(m, "rtmp", &mut c.rtmp_addr)?;
    if let Some(a) = m.opt_str("http") {
        c.http_addr = Some(a.parse().map_err(|e| format!("--http {a:?}: {e}"))?);
    }
    if m.opt_present("no-http") {
        c.http_addr = None;
    }
    if let Some(a) = m.opt_str("rtmps") {
        c.rtmps_addr = Some(a.parse().map_err(|e| format!("--rtmps {a:?}: {e}"))?);
    }
    if let Some(a) = m.opt_str("https") {
        c.https_addr = Some(a.parse().map_err(|e| format!("--https {a:?}: {e}"))?);
    }
    let (certs, keys) = (m.opt_strs("tls-cert"), m.opt_strs("tls-key"));
    if certs.len() != keys.len() {
        return Err(format!(
            "{} --tls-cert but {} --tls-key: give them in pairs",
            certs.len(),
            keys.len()
        ));
    }
    if !certs.is_empty() {
        c.tls.pairs = certs
            .into_iter()
            .map(Into::into)
            .zip(keys.into_iter().map(Into::into))
            .collect();
    }
    if let Some(d) = m.opt_str("tls-dir") {
        c.tls.dir = Some(d.into());
    }
    parse(
        m,
        "max-tls-handshakes",
        &mut c.max_tls_handshakes_per_worker,
    )?;
    if let Some(a) = m.opt_str("api") {
        c.api_addr = Some(a.parse().map_err(|e| format!("--api {a:?}: {e}"))?);
    }
    c.api_token = m.opt_str("api-token").or(c.api_token);
    parse(m, "cors-origin", &mut c.cors_origin)?;
    parse_secs(m, "http-request-timeout", &mut c.http_request_timeout)?;
    parse(m, "workers", &mut c.workers)?;
    parse(m, "chunk-size", &mut c.chunk_size)?;
    parse(m, "max-message-len", &mut c.max_message_len)?;
    parse(m, "max-chunk-streams", &mut c.max_chunk_streams)?;
    parse(m, "max-partial-bytes", &mut c.max_partial_bytes)?;
    parse(m, "max-message-streams", &mut c.max_message_streams)?;
    parse_secs(m, "handshake-timeout", &mut c.handshake_timeout)?;
    parse_secs(m, "ping-interval", &mut c.ping_interval)?;
    parse_secs(m, "ping-timeout", &mut c.ping_timeout)?;
    parse_secs(m, "publisher-idle-timeout", &mut c.publisher_idle_timeout)?;
    parse(m, "player-queue-bytes", &mut c.player_queue_bytes)?;
    parse_secs(m, "player-stall-timeout", &mut c.player_stall_timeout)?;
    parse(m, "gop-cache-bytes", &mut c.gop_cache_bytes)?;
    parse(m, "gop-cache-frames", &mut c.gop_cache_frames)?;
    parse(m, "max-connections", &mut c.max_connections_per_worker)?;
    c.reconnect_url = m.opt_str("reconnect-url").or(c.reconnect_url);
    parse_secs(m, "drain-timeout", &mut c.drain_timeout)?;
    parse(m, "second-publisher", &mut c.second_publisher)?;
    parse_secs(m, "pull-idle-timeout", &mut c.pull_idle_timeout)?;
    parse(m, "pull-unavailable", &mut c.pull_unavailable)?;
    if let Some(f) = m.opt_str("relay-ca") {
        c.relay_ca = Some(f.into());
    }
    for (flag, kind, always) in [
        ("push", RelayKind::Push, false),
        ("pull", RelayKind::Pull, false),
        ("pull-static", RelayKind::Pull, true),
    ] {
        for arg in m.opt_strs(flag) {
            let spec =
                RuleSpec::from_flag(kind, &arg, always).map_err(|e| format!("--{flag} {e}"))?;
            c.relays.push((kind, spec));
        }
    }
    c.validate()?;
    // Relay certificates must load now too.
    sluice::relay::ClientTls::new(c.relay_ca.as_deref())?;
    // Key files must load now, not at the first publish.
    sluice::auth::Auth::new(c.access.clone())?;
    Ok(c)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let opts = options();
    let m = match opts.parse(&args[1..]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sluice: {e}\n{}", opts.usage("Usage: sluice [options]"));
            return ExitCode::from(2);
        }
    };
    if m.opt_present("h") {
        print!(
            "{}",
            opts.usage(
                "Usage: sluice [options]\n\nA live-streaming server: publish over RTMP or RTMPS; play over RTMP, RTMPS, HTTP-FLV and WebSocket-FLV (and their TLS forms)."
            )
        );
        return ExitCode::SUCCESS;
    }
    if m.opt_present("V") {
        println!("sluice {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(path) = m.opt_str("check-config") {
        let checked = config::FileConfig::load(path.as_ref())
            .and_then(|f| f.to_config())
            .and_then(|c| {
                c.validate()?;
                sluice::auth::Auth::new(c.access.clone())?;
                Ok(c)
            });
        return match checked {
            Ok(c) => {
                println!("{path}: OK ({} application rule sets)", c.access.apps.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: {e}");
                ExitCode::from(2)
            }
        };
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match config_from(&m) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::bind(config.clone()) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot listen on {}: {e}", config.rtmp_addr);
            return ExitCode::FAILURE;
        }
    };
    let handle = server.shutdown_handle();
    if config.rtmps_addr.is_some() || config.https_addr.is_some() {
        // Certificates replaced on disk are picked up without a signal too.
        let watcher = handle.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(2));
            match watcher.reload_tls_if_changed() {
                Some(Ok(n)) => {
                    log::info!("certificate files changed: reloaded {n} TLS certificates")
                }
                Some(Err(e)) => log::warn!(
                    "certificate files changed but do not load, keeping the old ones: {e}"
                ),
                None => {}
            }
        });
    }
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    std::thread::spawn(move || {
        let mut asked = false;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                match handle.reload_access() {
                    Ok(n) => log::info!("SIGHUP: reloaded key files ({n} keys)"),
                    Err(e) => {
                        log::warn!("SIGHUP: key file reload failed, keeping the old keys: {e}")
                    }
                }
                match handle.reload_tls() {
                    Ok(n) => log::info!("SIGHUP: reloaded {n} TLS certificates"),
                    Err(e) => {
                        log::warn!("SIGHUP: TLS reload failed, keeping the old certificates: {e}")
                    }
                }
                continue;
            }
            if asked {
                log::warn!("signal {sig} again: exiting now");
                std::process::exit(1);
            }
            asked = true;
            log::info!("signal {sig}: shutting down");
            handle.shutdown();
        }
    });
    let addrs = server.addrs();
    log::info!(
        "sluice {} with {} workers: RTMP on {}, RTMPS on {}, HTTP on {}, HTTPS on {}, API on {}",
        env!("CARGO_PKG_VERSION"),
        config.workers.clamp(1, sluice::server::stream::MAX_WORKERS),
        addrs.rtmp,
        addrs.rtmps.map_or("off".into(), |a| a.to_string()),
        addrs.http.map_or("off".into(), |a| a.to_string()),
        addrs.https.map_or("off".into(), |a| a.to_string()),
        addrs
            .api
            .or(addrs.http)
            .map_or("off".into(), |a| a.to_string()),
    );
    match server.run() {
        Ok(()) => {
            log::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
