//! `sluice`: the command-line entry point. Reads the settings (the flags
//! and the config file: [`sluice::config`]), sets up logging (env_logger,
//! `RUST_LOG`, info by default; text, or JSON with `--log-format json`),
//! binds the listeners, tells systemd it is ready, and runs the workers
//! until SIGINT or SIGTERM. SIGHUP reloads key files and certificates;
//! SIGUSR2 starts a successor from the binary on disk and hands over to it
//! (docs/deploying.md).

use sluice::config::{self, Config, LogFormat};
use sluice::server::{Server, ShutdownHandle};
use std::io::{BufRead, Write};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a successor (`--takeover`) prints on its standard output once its
/// listeners are bound: its predecessor, which started it, then hands over.
const SUCCESSOR_READY: &str = "SLUICE-READY";

/// env_logger with `RUST_LOG` (info by default), in `format`.
fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            let ts = buf.timestamp_millis().to_string();
            let line = sluice::logjson::line(
                &ts,
                record.level().as_str(),
                record.target(),
                &record.args().to_string(),
            );
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

/// Warns when the descriptor limit is below what the connection cap needs
/// (one descriptor per connection, and a few for listeners and logs).
fn check_descriptor_limit(config: &Config) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<usize>().ok());
    let workers = config.workers.clamp(1, sluice::server::stream::MAX_WORKERS);
    let needed = config
        .max_connections_per_worker
        .saturating_mul(workers)
        .saturating_add(64);
    if let Some(soft) = soft.filter(|&s| s < needed) {
        log::warn!(
            "the descriptor limit is {soft}, below the {needed} that {workers} workers x {} connections need: raise it (LimitNOFILE= in the unit, ulimit -n) or lower --max-connections",
            config.max_connections_per_worker
        );
    }
}

/// SIGUSR2: starts a successor (this binary as it is on disk now, with this
/// process's arguments and `--takeover`) and, once it says its listeners
/// are up, hands over to it. A successor that fails to start changes
/// nothing: this process keeps serving.
fn start_successor(handle: ShutdownHandle, busy: Arc<AtomicBool>) {
    if busy.swap(true, Ordering::SeqCst) {
        log::warn!("SIGUSR2: a successor is already starting or started");
        return;
    }
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| "sluice".into());
    let args: Vec<_> = args.filter(|a| a != "--takeover").collect();
    let child = Command::new(&program)
        .args(&args)
        .arg("--takeover")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::error!(
                "SIGUSR2: cannot start {}: {e}; keeping on",
                program.to_string_lossy()
            );
            busy.store(false, Ordering::SeqCst);
            return;
        }
    };
    let pid = child.id();
    log::info!(
        "SIGUSR2: started successor pid={pid} ({} --takeover); waiting for its listeners",
        program.to_string_lossy()
    );
    let Some(stdout) = child.stdout.take() else {
        return;
    };
    std::thread::spawn(move || {
        let mut ready = false;
        for line in std::io::BufReader::new(stdout).lines() {
            match line {
                Ok(l) if l.trim() == SUCCESSOR_READY => {
                    ready = true;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if ready {
            log::info!("handover: successor pid={pid} listens; handing over to it");
            handle.hand_over();
            return;
        }
        let status = child.wait();
        log::error!(
            "handover: successor pid={pid} exited before it was ready ({}); keeping on",
            status.map_or_else(|e| e.to_string(), |s| s.to_string())
        );
        busy.store(false, Ordering::SeqCst);
    });
}

/// The config file and the flags, checked, with the files they name
/// loaded once now rather than at the first connection that needs them.
fn config_from(c: Config) -> Result<Config, String> {
    c.validate()?;
    // Relay certificates must load now too.
    sluice::relay::ClientTls::new(c.relay_ca.as_deref())?;
    // Key files must load now, not at the first publish.
    sluice::auth::Auth::new(c.access.clone())?;
    Ok(c)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let opts = config::options();
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
    // The log format is a setting: read the settings first (their errors
    // go to stderr as they are), then the logger, then what may log.
    let config = match Config::from_args(&m) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let config = match config_from(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return ExitCode::from(2);
        }
    };
    check_descriptor_limit(&config);
    let server = match Server::bind(config.clone()) {
        Ok(s) => s,
        // A setting the server refused (a certificate and a key that do not
        // belong together, an access list) is not a listening problem.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput && e.get_ref().is_some() => {
            log::error!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            log::error!("cannot listen on {}: {e}", config.rtmp_addr);
            return ExitCode::FAILURE;
        }
    };
    let handle = server.shutdown_handle();
    std::thread::Builder::new()
        .name("heap-trim".into())
        .spawn(trim_heap_forever)
        .ok();
    if config.rtmps_addr.is_some() || config.https_addr.is_some() {
        // Certificates replaced on disk are picked up without a signal too.
        // Files that do not load are tried again every 2 s (a renewal may
        // be half written: the certificate replaced, not yet its key), and
        // the reason is logged once, not every 2 s.
        let watcher = handle.clone();
        std::thread::spawn(move || {
            let mut refused: Option<String> = None;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(2));
                match watcher.reload_tls_if_changed() {
                    Some(Ok(n)) => {
                        refused = None;
                        log::info!("certificate files changed: reloaded {n} TLS certificates")
                    }
                    Some(Err(e)) if refused.as_ref() != Some(&e) => {
                        log::warn!(
                            "certificate files changed but do not load, keeping the old ones: {e}"
                        );
                        refused = Some(e);
                    }
                    Some(Err(_)) | None => {}
                }
            }
        });
    }
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGUSR2,
    ]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let successor = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        let mut asked = false;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGUSR2 {
                start_successor(handle.clone(), successor.clone());
                continue;
            }
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
            // Not after a handover: the successor is systemd's main process
            // by now, and this would tell systemd the service stops.
            if !successor.load(Ordering::SeqCst) {
                let _ = sluice::sdnotify::notify("STOPPING=1");
            }
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
    if config.takeover {
        // The predecessor that started this process reads this line, then
        // hands over; systemd (NotifyAccess=all) follows this process.
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{SUCCESSOR_READY}").and_then(|()| out.flush());
        let state = format!("MAINPID={}\nREADY=1", std::process::id());
        if let Err(e) = sluice::sdnotify::notify(&state) {
            log::warn!("telling systemd this process is the service's: {e}");
        }
    } else if let Err(e) = sluice::sdnotify::notify("READY=1") {
        log::warn!("telling systemd the service is ready: {e}");
    }
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

/// How often freed heap memory is handed back to the system.
const HEAP_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Hands memory glibc's malloc keeps after frees back to the system, every
/// [`HEAP_TRIM_INTERVAL`], on a helper thread (never a worker). glibc
/// returns only the top of each heap by itself: after players that
/// stalled with full queues leave, or an attack is closed, the process
/// would otherwise stay at its peak (docs/hardening.md case 47, with the
/// figures in SECURITY.md, "Memory"). Elsewhere (musl, other systems) this
/// thread returns at once.
fn trim_heap_forever() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    loop {
        std::thread::sleep(HEAP_TRIM_INTERVAL);
        // SAFETY: malloc_trim takes no pointer, only walks the allocator's
        // own arenas under their locks; 0 keeps no extra padding.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
