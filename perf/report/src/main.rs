//! `sluice-report`: reads the raw records `perf/run` leaves in
//! `perf/results/raw/NAME/` (one `sluice-load` or `sluice-limit` JSON per
//! run) and writes `NAME.json` (medians per server and player count, the
//! most players held, the limit), `NAME.md` (the tables for the README) and
//! two SVG plots: CPU-seconds per GB against players, and latency.
//!
//! Raw file names: `limit-MODE-nN.json`, `SERVER-wW-TAG-nN.json` with TAG
//! `rK` (repeat K of the matrix), `step`, `idle` or `nogop`.

use plotters::prelude::*;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Servers in the order the tables show them.
const ORDER: [&str; 4] = ["sluice", "nginx", "nms", "xiu"];

fn display_name(s: &str) -> &str {
    match s {
        "sluice" => "Sluice",
        "nginx" => "nginx-rtmp",
        "nms" => "node-media-server 4",
        "xiu" => "xiu",
        other => other,
    }
}

struct Args {
    raw: PathBuf,
    out: PathBuf,
    mode: String,
    machine: String,
    command: String,
    seconds: u64,
    nice: String,
    /// Player kind (rtmp, http-flv) and the publisher's bitrate, bit/s.
    kind: String,
    bitrate: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = std::env::args().skip(1);
    let (mut raw, mut out, mut mode, mut machine, mut command, mut seconds) =
        (None, None, String::new(), String::new(), String::new(), 0);
    let mut nice = String::from("0");
    let (mut kind, mut bitrate) = (String::from("rtmp"), 3_000_000);
    while let Some(k) = a.next() {
        let mut v = || a.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--raw" => raw = Some(PathBuf::from(v()?)),
            "--out" => out = Some(PathBuf::from(v()?)),
            "--mode" => mode = v()?,
            "--machine" => machine = v()?,
            "--command" => command = v()?,
            "--nice" => nice = v()?,
            "--kind" => kind = v()?,
            "--bitrate" => bitrate = v()?.parse().map_err(|e| format!("--bitrate: {e}"))?,
            "--seconds" => seconds = v()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        raw: raw.ok_or("--raw DIR is required")?,
        out: out.ok_or("--out PREFIX is required")?,
        mode,
        machine,
        command,
        seconds,
        nice,
        kind,
        bitrate,
    })
}

/// One `sluice-load` record with where it came from.
struct LoadRun {
    server: String,
    workers: u32,
    tag: String,
    players: u64,
    r: Value,
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn parse_name(stem: &str) -> Option<(String, u32, String, u64)> {
    // SERVER-wW-TAG-nN
    let mut parts = stem.rsplitn(2, "-n");
    let n: u64 = parts.next()?.parse().ok()?;
    let rest = parts.next()?;
    let mut p = rest.splitn(3, '-');
    let server = p.next()?.to_owned();
    let workers: u32 = p.next()?.strip_prefix('w')?.parse().ok()?;
    let tag = p.next()?.to_owned();
    Some((server, workers, tag, n))
}

/// Limit records by (mode, sockets).
/// The physical-limit records per (mode, sockets), one per repeat.
type Limits = BTreeMap<(String, u64), Vec<Value>>;

/// A line of a plot: label, points, colour, dashed.
type Line = (String, Vec<(f64, f64)>, RGBColor, bool);

fn load_raw(dir: &Path) -> Result<(Vec<LoadRun>, Limits), String> {
    let mut runs = Vec::new();
    let mut limits = BTreeMap::new();
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(_) => continue,
        };
        let Ok(r) = serde_json::from_str::<Value>(&text) else {
            eprintln!("sluice-report: {} is not JSON, ignored", path.display());
            continue;
        };
        if let Some(rest) = stem.strip_prefix("limit-") {
            // limit-MODE-nN or, one per repeat, limit-MODE-nN-rK.
            let rest = match rest.rsplit_once("-r") {
                Some((head, k)) if k.parse::<u32>().is_ok() => head,
                _ => rest,
            };
            let mut it = rest.rsplitn(2, "-n");
            let (Some(n), Some(mode)) = (it.next(), it.next()) else {
                continue;
            };
            if let Ok(n) = n.parse() {
                limits
                    .entry((mode.to_owned(), n))
                    .or_insert_with(Vec::new)
                    .push(r);
            }
        } else if let Some((server, workers, tag, players)) = parse_name(&stem) {
            runs.push(LoadRun {
                server,
                workers,
                tag,
                players,
                r,
            });
        }
    }
    Ok((runs, limits))
}

/// Medians over the repeats of one (server, workers, players) point.
fn summarize(runs: &[&LoadRun]) -> Value {
    let m = |path: &[&str]| {
        median(
            runs.iter()
                .filter_map(|r| {
                    let mut v = &r.r;
                    for k in path {
                        v = &v[*k];
                    }
                    f(v)
                })
                .collect(),
        )
    };
    let held = runs.iter().filter(|r| r.r["held"] == true).count();
    let saturated = runs.iter().any(|r| r.r["generator"]["saturated"] == true);
    let missing: u64 = runs
        .iter()
        .filter_map(|r| r.r["frames"]["missing"].as_u64())
        .sum();
    let complete: u64 = runs
        .iter()
        .filter_map(|r| r.r["counts"]["complete"].as_u64())
        .min()
        .unwrap_or(0);
    let errors: Vec<Value> = runs
        .iter()
        .flat_map(|r| r.r["errors"].as_array().cloned().unwrap_or_default())
        .take(5)
        .collect();
    json!({
        "runs": runs.len(),
        "held_runs": held,
        "held": held == runs.len() && !runs.is_empty(),
        "generator_saturated": saturated,
        "cpu_s_per_gb": m(&["server", "cpu_s_per_gb"]),
        // Server and generator together: on loopback each side's kernel
        // does part of the other's TCP work (the receiver's processing runs
        // in the sender's softirq, the sender's ACK handling in the
        // receiver's), so a server's send pattern also shows in the
        // generator's CPU.
        "system_cpu_s_per_gb": median(
            runs.iter()
                .filter_map(|r| {
                    let cpu = f(&r.r["server"]["cpu_seconds"])? + f(&r.r["generator"]["cpu_seconds"])?;
                    let gb = f(&r.r["window"]["bytes_delivered"])? / 1e9;
                    (gb > 0.0).then(|| cpu / gb)
                })
                .collect(),
        ),
        "server_cpu_util": m(&["server", "cpu_util"]),
        // Of the server's CPU, the share in its own code (utime): what a
        // change to it moves, where the kernel's share moves between runs.
        "server_user_share": m(&["server", "user_share"]),
        "gbit_per_s": m(&["window", "gbit_per_s"]),
        "min_rate_ratio": m(&["window", "min_rate_ratio"]),
        "latency_ms_p50": m(&["latency_ms", "p50"]),
        "latency_ms_p99": m(&["latency_ms", "p99"]),
        "latency_ms_max": m(&["latency_ms", "max"]),
        "join_ms_p50": m(&["join_ms", "p50"]),
        "join_ms_p99": m(&["join_ms", "p99"]),
        "rss_peak_bytes": m(&["server", "rss_peak_bytes"]),
        "rss_per_player_bytes": m(&["server", "rss_per_player_bytes"]),
        // Sluice counts its own sendmsg calls (/proc/PID/io does not);
        // other servers have only /proc's write and writev counts.
        "bytes_per_write_syscall": m(&["server", "bytes_per_write_call"]).or_else(|| m(&["server", "bytes_per_write_syscall"])),
        "write_wait_ms_p99_le": m(&["server", "write_wait_ms", "p99_le"]),
        "write_wait_ms_max_le": m(&["server", "write_wait_ms", "max_le"]),
        "generator_cpu_util": m(&["generator", "cpu_util"]),
        "missing_frames": missing,
        "min_complete_players": complete,
        "errors": errors,
    })
}

/// "3 Mbit/s", "600 kbit/s".
fn bitrate_text(bps: u64) -> String {
    if bps >= 1_000_000 && bps.is_multiple_of(100_000) {
        format!("{} Mbit/s", bps as f64 / 1e6)
    } else {
        format!("{} kbit/s", bps / 1000)
    }
}

fn fmt_opt(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "–".to_owned(),
    }
}

fn mib(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{:.1}", x / (1024.0 * 1024.0)),
        None => "–".to_owned(),
    }
}

fn kib(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{:.1}", x / 1024.0),
        None => "–".to_owned(),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice-report: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-report: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<(), String> {
    let (runs, limits) = load_raw(&a.raw)?;
    let skipped: Vec<String> = fs::read_to_string(a.raw.join("skipped.txt"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    let loadavg = |n: &str| {
        fs::read_to_string(a.raw.join(n))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };

    let mut servers: Vec<String> = Vec::new();
    for s in ORDER {
        if runs.iter().any(|r| r.server == s) {
            servers.push(s.to_owned());
        }
    }
    for r in &runs {
        if !servers.contains(&r.server) {
            servers.push(r.server.clone());
        }
    }

    // Matrix medians: server -> players -> summary (one worker, repeats rK).
    let mut matrix: BTreeMap<String, BTreeMap<u64, Value>> = BTreeMap::new();
    let mut sizes: Vec<u64> = Vec::new();
    for s in &servers {
        let mut by_n: BTreeMap<u64, Vec<&LoadRun>> = BTreeMap::new();
        for r in runs
            .iter()
            .filter(|r| &r.server == s && r.workers == 1 && r.tag.starts_with('r'))
        {
            by_n.entry(r.players).or_default().push(r);
        }
        let mut row = BTreeMap::new();
        for (n, rs) in by_n {
            if !sizes.contains(&n) {
                sizes.push(n);
            }
            row.insert(n, summarize(&rs));
        }
        matrix.insert(s.clone(), row);
    }
    sizes.sort_unstable();

    // Most players held: the largest N of the matrix or the step test where
    // every run held; a lower bound when the generator was saturated or the
    // step test did not run past it.
    let mut most_held = Map::new();
    for s in &servers {
        let mut best: Option<(u64, bool)> = None;
        let mut pts: BTreeMap<u64, Vec<&LoadRun>> = BTreeMap::new();
        for r in runs.iter().filter(|r| {
            &r.server == s && r.workers == 1 && (r.tag.starts_with('r') || r.tag == "step")
        }) {
            pts.entry(r.players).or_default().push(r);
        }
        let mut largest_tried = 0;
        let mut failed_above = false;
        for (n, rs) in &pts {
            largest_tried = largest_tried.max(*n);
            let held = rs.iter().all(|r| r.r["held"] == true);
            let sat = rs.iter().any(|r| r.r["generator"]["saturated"] == true);
            if held {
                best = Some((*n, sat));
            } else if best.is_some_and(|(b, _)| *n > b) || best.is_none() {
                failed_above = true;
            }
        }
        let (n, sat) = best.unwrap_or((0, false));
        let lower_bound = sat || (!failed_above && n == largest_tried);
        most_held.insert(
            s.clone(),
            json!({ "players": n, "lower_bound": lower_bound, "generator_saturated": sat, "largest_tried": largest_tried }),
        );
    }

    // The limit: median per (mode, N) over its repeats.
    let mut limit = Map::new();
    for ((mode, n), rs) in &limits {
        let e = limit.entry(mode.clone()).or_insert_with(|| json!({}));
        let m = |k: &str| median(rs.iter().filter_map(|r| r[k].as_f64()).collect());
        e[n.to_string()] = json!({
            "cpu_s_per_gb": m("cpu_s_per_gb"),
            "bytes_per_syscall": m("bytes_per_syscall"),
            "gbit_per_s": m("gbit_per_s"),
            "cpu_util": m("cpu_util"),
            "user_share": m("user_share"),
            "repeats": rs.len(),
        });
    }

    // Extras.
    let pick = |tag: &str, server: &str| -> Vec<&LoadRun> {
        runs.iter()
            .filter(|r| r.tag == tag && r.server == server)
            .collect()
    };
    let mut idle = Map::new();
    for s in &servers {
        if let Some(r) = pick("idle", s).first() {
            idle.insert(
                s.clone(),
                json!({
                    "players": r.players,
                    "rss_per_connection_bytes": r.r["server"]["rss_per_player_bytes"],
                    "ready": r.r["counts"]["ready"],
                }),
            );
        }
    }
    let nogop = pick("nogop", "sluice")
        .first()
        .map(|r| r.r["join_ms"].clone());
    // Sluice on two workers: medians over repeats per player count.
    let mut by_n: BTreeMap<u64, Vec<&LoadRun>> = BTreeMap::new();
    for r in runs
        .iter()
        .filter(|r| r.workers == 2 && r.server == "sluice")
    {
        by_n.entry(r.players).or_default().push(r);
    }
    let mut two_workers = Map::new();
    for (n, rs) in by_n {
        two_workers.insert(n.to_string(), summarize(&rs));
    }

    let matrix_json: Map<String, Value> = matrix
        .iter()
        .map(|(s, row)| {
            (
                s.clone(),
                Value::Object(
                    row.iter()
                        .map(|(n, v)| (n.to_string(), v.clone()))
                        .collect(),
                ),
            )
        })
        .collect();
    let date = a
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    // Relative to the repository (perf/results/raw/NAME), whatever the checkout.
    let full = a.raw.display().to_string();
    let raw_rel = full
        .find("perf/results/")
        .map_or(full.clone(), |i| full[i..].to_owned());
    let record = json!({
        "name": date,
        "machine": a.machine,
        "mode": a.mode,
        "command": a.command,
        "seconds": a.seconds,
        "nice": a.nice,
        "loadavg_start": loadavg("loadavg-start.txt"),
        "loadavg_end": loadavg("loadavg-end.txt"),
        "skipped": skipped,
        "players": sizes,
        "servers": matrix_json,
        "most_held_per_core": most_held,
        "limit": limit,
        "idle_memory": idle,
        "join_without_gop_cache_sluice": nogop,
        "sluice_two_workers": two_workers,
        "raw": raw_rel,
    });
    let json_path = a.out.with_extension("json");
    fs::write(
        &json_path,
        serde_json::to_string_pretty(&record).expect("json") + "\n",
    )
    .map_err(|e| format!("{}: {e}", json_path.display()))?;

    let md = markdown(a, &record, &servers, &sizes);
    let md_path = a.out.with_extension("md");
    fs::write(&md_path, &md).map_err(|e| format!("{}: {e}", md_path.display()))?;

    let stem = a
        .out
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("run")
        .to_owned();
    let dir = a.out.parent().unwrap_or(Path::new("."));
    plot_cpu(
        &dir.join(format!("{stem}-cpu.svg")),
        &record,
        &servers,
        &sizes,
    )
    .map_err(|e| format!("cpu plot: {e}"))?;
    plot_latency(
        &dir.join(format!("{stem}-latency.svg")),
        &record,
        &servers,
        &sizes,
    )
    .map_err(|e| format!("latency plot: {e}"))?;
    print!("{md}");
    Ok(())
}

fn markdown(a: &Args, rec: &Value, servers: &[String], sizes: &[u64]) -> String {
    let mut s = String::new();
    let name = rec["name"].as_str().unwrap_or_default();
    let _ = writeln!(s, "## Run {name} ({} mode)\n", a.mode);
    let _ = writeln!(
        s,
        "Machine: {}. Load average at start / end: {} / {}.",
        a.machine,
        rec["loadavg_start"].as_str().unwrap_or("?"),
        rec["loadavg_end"].as_str().unwrap_or("?")
    );
    let _ = writeln!(s, "Server pinned to core 0 with one worker, load generator (`sluice-load`) on core 1, both at nice {}; one publisher at about {} (720p30-shaped H.264 + AAC, keyframe every 2 s), N {} players. Command: `{}` ({} s).\n", a.nice, bitrate_text(a.bitrate), match a.kind.as_str() { "http-flv" => "HTTP-FLV", "rtmps" => "RTMPS", _ => "RTMP" }, a.command, a.seconds);
    if let Some(sk) = rec["skipped"].as_array() {
        for k in sk {
            let _ = writeln!(s, "- Skipped {}", k.as_str().unwrap_or_default());
        }
        if !sk.is_empty() {
            s.push('\n');
        }
    }
    let _ = writeln!(
        s,
        "### Server CPU-seconds per GB delivered (lower is better)\n"
    );
    let mut header = String::from("| server |");
    let mut rule = String::from("|---|");
    for n in sizes {
        let _ = write!(header, " {n} players |");
        rule.push_str("---:|");
    }
    header.push_str(" most players held (one core) |");
    rule.push_str("---:|");
    let _ = writeln!(s, "{header}\n{rule}");
    for srv in servers {
        let _ = write!(s, "| {} |", display_name(srv));
        for n in sizes {
            let v = &rec["servers"][srv][n.to_string()];
            let mark = if v.is_null() {
                String::new()
            } else if v["generator_saturated"] == true {
                " (generator saturated: lower bound)".to_owned()
            } else if v["held"] != true {
                " (not held)".to_owned()
            } else {
                String::new()
            };
            let _ = write!(
                s,
                " {}{}{} |",
                fmt_opt(&v["cpu_s_per_gb"], 2),
                own_code(&v["server_user_share"]),
                mark
            );
        }
        let mh = &rec["most_held_per_core"][srv];
        let n = mh["players"].as_u64().unwrap_or(0);
        let bound = if mh["lower_bound"] == true {
            "≥ "
        } else {
            ""
        };
        let _ = writeln!(s, " {bound}{n} |");
    }
    let modes = rec["limit"]
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>());
    for mode in modes.unwrap_or_default() {
        let _ = write!(s, "| {} |", limit_label(&mode));
        for n in sizes {
            let v = &rec["limit"][&mode][n.to_string()];
            let per_write = v["bytes_per_syscall"]
                .as_f64()
                .map(|b| format!(" ({:.1} KB a write)", b / 1000.0))
                .unwrap_or_default();
            let _ = write!(
                s,
                " {}{}{per_write} |",
                fmt_opt(&v["cpu_s_per_gb"], 2),
                own_code(&v["user_share"])
            );
        }
        let _ = writeln!(s, " – |");
    }
    let _ = writeln!(s, "\n### Details per run (medians over repeats)\n");
    let _ = writeln!(s, "| server | players | held | server CPU (cores; in its own code) | Gbit/s | CPU-s/GB | server + generator CPU-s/GB | bytes/write syscall | latency p50 / p99 / max (ms) | Sluice's write wait p99 / max (ms, ≤) | join p50 / p99 (ms) | RSS peak (MiB) | RSS per player (KiB) | generator CPU (cores) |");
    let _ = writeln!(
        s,
        "|---|---:|:---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for srv in servers {
        for n in sizes {
            let v = &rec["servers"][srv][n.to_string()];
            if v.is_null() {
                continue;
            }
            let held = if v["held"] == true { "yes" } else { "no" };
            let _ = writeln!(
                s,
                "| {} | {n} | {held} | {}{} | {} | {} | {} | {} | {} / {} / {} | {} | {} / {} | {} | {} | {}{} |",
                display_name(srv),
                fmt_opt(&v["server_cpu_util"], 2),
                percent(&v["server_user_share"])
                    .map(|p| format!("; {p}"))
                    .unwrap_or_default(),
                fmt_opt(&v["gbit_per_s"], 2),
                fmt_opt(&v["cpu_s_per_gb"], 2),
                fmt_opt(&v["system_cpu_s_per_gb"], 2),
                fmt_opt(&v["bytes_per_write_syscall"], 0),
                fmt_opt(&v["latency_ms_p50"], 1),
                fmt_opt(&v["latency_ms_p99"], 1),
                fmt_opt(&v["latency_ms_max"], 1),
                if v["write_wait_ms_p99_le"].is_null() {
                    "–".to_owned()
                } else {
                    format!(
                        "{} / {}",
                        fmt_opt(&v["write_wait_ms_p99_le"], 0),
                        fmt_opt(&v["write_wait_ms_max_le"], 0)
                    )
                },
                fmt_opt(&v["join_ms_p50"], 1),
                fmt_opt(&v["join_ms_p99"], 1),
                mib(&v["rss_peak_bytes"]),
                kib(&v["rss_per_player_bytes"]),
                fmt_opt(&v["generator_cpu_util"], 2),
                if v["generator_saturated"] == true { " (saturated)" } else { "" },
            );
        }
    }
    let _ = writeln!(s, "\n\"held\": every player got every frame from its first keyframe, in order and intact, and within 1% of the publish rate over the window (one frame of slack at each edge). bytes/write syscall: Sluice's own count of its sendfile and sendmsg calls (`sluice_write_calls_total`); for the others /proc/PID/io, which counts only write/writev (nginx-rtmp uses send(), node uses writev through libuv). Sluice's write wait: from queueing media to the write that sends it (`sluice_write_wait_seconds`, the bucket bounds that hold the 99th percentile and the longest wait of the window; a median over repeats); latency: the publisher's stamp to the player's receipt, generator included. Server + generator: both processes' CPU per GB; on loopback each side's kernel does part of the other's TCP work, so a server's send pattern shows in the generator's CPU too.");
    if let Some(idle) = rec["idle_memory"].as_object().filter(|m| !m.is_empty()) {
        let _ = writeln!(s, "\n### Memory per idle connection (handshake + connect, no play)\n\n| server | connections | RSS per connection (KiB) |\n|---|---:|---:|");
        for srv in servers {
            if let Some(v) = idle.get(srv) {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    display_name(srv),
                    v["players"],
                    kib(&v["rss_per_connection_bytes"])
                );
            }
        }
    }
    if !rec["join_without_gop_cache_sluice"].is_null() {
        let j = &rec["join_without_gop_cache_sluice"];
        let w = &rec["servers"]["sluice"]["100"];
        let _ = writeln!(s, "\n### Join time, Sluice, 100 players\n\n| GOP cache | join p50 (ms) | join p99 (ms) |\n|---|---:|---:|\n| on (default) | {} | {} |\n| off (`--gop-cache-frames 1`) | {} | {} |", fmt_opt(&w["join_ms_p50"], 1), fmt_opt(&w["join_ms_p99"], 1), fmt_opt(&j["p50"], 1), fmt_opt(&j["p99"], 1));
    }
    if let Some(tw) = rec["sluice_two_workers"]
        .as_object()
        .filter(|m| !m.is_empty())
    {
        let _ = writeln!(s, "\n### Sluice on 1 and 2 workers (2 workers: cores 0 and 1, shared with the generator)\n\n| players | workers | CPU-s/GB | server CPU (cores) | held | latency p99 (ms) |\n|---:|---:|---:|---:|:---:|---:|");
        for (n, v) in tw {
            let one = &rec["servers"]["sluice"][n.as_str()];
            for (w, x) in [(1, one), (2, v)] {
                if x.is_null() {
                    continue;
                }
                let _ = writeln!(
                    s,
                    "| {n} | {w} | {} | {} | {} | {} |",
                    fmt_opt(&x["cpu_s_per_gb"], 2),
                    fmt_opt(&x["server_cpu_util"], 2),
                    if x["held"] == true { "yes" } else { "no" },
                    fmt_opt(&x["latency_ms_p99"], 1)
                );
            }
        }
    }
    let _ = writeln!(
        s,
        "\nRaw records: `{}`.",
        rec["raw"].as_str().unwrap_or_default()
    );
    s
}

const COLORS: [RGBColor; 5] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x7f, 0x7f, 0x7f),
];

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// "N %" for a share (0 to 1), None where the record has none.
fn percent(share: &Value) -> Option<String> {
    share.as_f64().map(|u| format!("{:.0} %", u * 100.0))
}

/// ", N % own code" for a share of CPU time in a program's own code (the
/// rest is the kernel's), nothing where the record has none.
fn own_code(share: &Value) -> String {
    percent(share)
        .map(|p| format!(", {p} own code"))
        .unwrap_or_default()
}

/// A physical-limit run's row name: `MODE[+merge][+bK][+replies][+shaped]` as `perf/run
/// --limit-modes` names it (`sluice-limit` writes the same bytes to N
/// loopback sockets and does nothing else).
fn limit_label(mode: &str) -> String {
    let mut parts = mode.split('+');
    let base = match parts.next().unwrap_or_default() {
        "frame" => "physical limit (one write per frame)",
        "send" => "physical limit (one send(2) per frame)",
        "writev" => "physical limit (writev of the server's chunked form)",
        "sendmsg" => "physical limit (sendmsg of the server's chunked form)",
        "sendfile" => "physical limit (sendfile of the server's chunked form from a memory file)",
        "chunk" => "one write per 4 KiB chunk",
        other => other,
    };
    let mut label = base.to_owned();
    for p in parts {
        if p == "merge" {
            label.push_str(", audio with the next video frame (Sluice's default budget)");
        } else if let Some(k) = p.strip_prefix('b') {
            let _ = write!(label, ", {k} frames a write");
        } else if p == "replies" {
            label.push_str(", readers that reply as RTMP players do");
        } else if p == "shaped" {
            label.push_str(", in a process of 8 threads with 8 cache lines of state per socket");
        }
    }
    label
}

fn series(rec: &Value, srv: &str, sizes: &[u64], key: &str) -> Vec<(f64, f64)> {
    sizes
        .iter()
        .filter_map(|n| {
            rec["servers"][srv][n.to_string()][key]
                .as_f64()
                .map(|v| (*n as f64, v))
        })
        .collect()
}

fn plot_cpu(path: &Path, rec: &Value, servers: &[String], sizes: &[u64]) -> PlotResult {
    let mut lines: Vec<Line> = Vec::new();
    for (i, srv) in servers.iter().enumerate() {
        lines.push((
            display_name(srv).to_owned(),
            series(rec, srv, sizes, "cpu_s_per_gb"),
            COLORS[i % 4],
            false,
        ));
    }
    for (mode, label) in [
        ("frame", "physical limit"),
        ("chunk", "write per 4 KiB chunk"),
    ] {
        let pts: Vec<(f64, f64)> = sizes
            .iter()
            .filter_map(|n| {
                rec["limit"][mode][n.to_string()]["cpu_s_per_gb"]
                    .as_f64()
                    .map(|v| (*n as f64, v))
            })
            .collect();
        if !pts.is_empty() {
            lines.push((label.to_owned(), pts, COLORS[4], mode == "chunk"));
        }
    }
    let ymax = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.1);
    let xmax = sizes.iter().copied().max().unwrap_or(100) as f64 * 1.05;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Server CPU-seconds per GB delivered (one core, 3 Mbit/s stream)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("players")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("CPU-s / GB")
        .y_label_formatter(&|v| format!("{v:.2}"))
        .draw()?;
    for (label, pts, color, dashed) in lines {
        let style = ShapeStyle::from(&color).stroke_width(if dashed { 1 } else { 2 });
        chart
            .draw_series(LineSeries::new(pts.clone(), style))?
            .label(label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_latency(path: &Path, rec: &Value, servers: &[String], sizes: &[u64]) -> PlotResult {
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut all = Vec::new();
    for srv in servers {
        all.extend(series(rec, srv, sizes, "latency_ms_p99"));
        all.extend(series(rec, srv, sizes, "latency_ms_p50"));
    }
    let ymax = all.iter().map(|p| p.1).fold(1.0f64, f64::max);
    let ymin = all
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .min(ymax);
    let xmax = sizes.iter().copied().max().unwrap_or(100) as f64 * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Publisher-to-player latency, p50 (solid) and p99 (thin)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, ((ymin * 0.5).max(0.01)..ymax * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("players")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("ms (log)")
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;
    for (i, srv) in servers.iter().enumerate() {
        let color = COLORS[i % 4];
        let p50 = series(rec, srv, sizes, "latency_ms_p50");
        let p99 = series(rec, srv, sizes, "latency_ms_p99");
        let bold = ShapeStyle::from(&color).stroke_width(2);
        chart
            .draw_series(LineSeries::new(p50.clone(), bold))?
            .label(format!("{} p50", display_name(srv)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], bold));
        chart.draw_series(p50.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        let thin = ShapeStyle::from(&color).stroke_width(1);
        chart.draw_series(LineSeries::new(p99.clone(), thin))?;
        chart.draw_series(
            p99.iter()
                .map(|p| TriangleMarker::new(*p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_raw_names() {
        assert_eq!(
            parse_name("sluice-w1-r2-n500"),
            Some(("sluice".into(), 1, "r2".into(), 500))
        );
        assert_eq!(
            parse_name("nms-w1-idle-n1000"),
            Some(("nms".into(), 1, "idle".into(), 1000))
        );
        assert_eq!(parse_name("junk"), None);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
