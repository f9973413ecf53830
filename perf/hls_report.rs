//! `sluice-hls-report`: turns the raw records of one `perf/hls` run into
//! `perf/results/NAME.json` and `NAME.md`.
//!
//! Reads, in the raw directory:
//! * `load-KIND-nN-rR.json`: sluice-load records (KIND `ll-hls` or
//!   `http-flv`, N viewers, repeat R); figures are medians over repeats;
//! * `mem-hls.json`, `mem-nohls.json` with `rss-idle-hls.txt`,
//!   `rss-idle-nohls.txt`: a publisher and no viewer, HLS on and off, and
//!   the server's RSS before anything connected (bytes);
//! * `g2g-VARIANT-rR.log`: Chromium's log with the page's `SLUICE-G2G-DONE`
//!   lines (perf/hls-g2g.html), and `g2g-VARIANT-rR-cpu.txt`: one line
//!   `LABEL SECONDS CPU_SECONDS` per server;
//! * `uptime-start.txt`, `uptime-end.txt`, `sluice-binary.txt`, `notes.txt`.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The value at quantile `q` of `v` (nearest rank).
fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(p).ok()?).ok()
}

/// `a.b.c` in a record, as a number.
fn num(v: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |v, k| v.get(k))?.as_f64()
}

/// The figures of one (kind, N) point: each a median over the repeats.
/// `load-none-n0-rR.json` (a publisher and no viewer, same timing) is each
/// repeat's baseline: RSS per viewer is the peak less the baseline's peak,
/// over N, so the stream's own growing HLS window is not counted per viewer.
fn load_points(raw: &Path) -> Vec<Value> {
    let mut groups: BTreeMap<(usize, String), Vec<(String, Value)>> = BTreeMap::new();
    let mut baseline: BTreeMap<String, f64> = BTreeMap::new();
    let Ok(dir) = fs::read_dir(raw) else {
        return Vec::new();
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name
            .strip_prefix("load-")
            .and_then(|s| s.strip_suffix(".json"))
        else {
            continue;
        };
        // KIND-nN-rR
        let mut parts = stem.rsplitn(3, '-');
        let (Some(r), Some(n), Some(kind)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Some(n) = n.strip_prefix('n').and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Some(v) = read_json(&e.path()) else {
            continue;
        };
        if kind == "none" {
            if let Some(peak) = num(&v, "server.rss_peak_bytes") {
                baseline.insert(r.to_owned(), peak);
            }
            continue;
        }
        groups
            .entry((n, kind.to_owned()))
            .or_default()
            .push((r.to_owned(), v));
    }
    let fields: &[(&str, &str)] = &[
        ("server_cpu_util", "server.cpu_util"),
        ("cpu_s_per_gb", "server.cpu_s_per_gb"),
        ("gbit_per_s", "window.gbit_per_s"),
        ("rss_per_viewer_bytes", "server.rss_per_player_bytes"),
        ("rss_peak_bytes", "server.rss_peak_bytes"),
        ("generator_cpu_util", "generator.cpu_util"),
        ("requests_per_s", "hls.window.requests_per_s"),
        (
            "requests_per_cpu_second",
            "hls.window.requests_per_cpu_second",
        ),
        (
            "blocking_reloads_per_s",
            "hls.window.blocking_reloads_per_s",
        ),
        ("parts_per_s", "hls.window.parts_per_s"),
        ("parked_median", "hls.parked.median"),
        ("parked_max", "hls.parked.max"),
        ("ready_p50_ms", "hls.latency_ms.video.ready.p50"),
        ("ready_p99_ms", "hls.latency_ms.video.ready.p99"),
        ("received_p50_ms", "hls.latency_ms.video.received.p50"),
        ("received_p99_ms", "hls.latency_ms.video.received.p99"),
        ("oldest_p50_ms", "hls.latency_ms.video.oldest.p50"),
        ("oldest_p99_ms", "hls.latency_ms.video.oldest.p99"),
        ("audio_ready_p50_ms", "hls.latency_ms.audio.ready.p50"),
        ("audio_ready_p99_ms", "hls.latency_ms.audio.ready.p99"),
        ("frame_p50_ms", "latency_ms.p50"),
        ("frame_p99_ms", "latency_ms.p99"),
    ];
    groups
        .into_iter()
        .map(|((n, kind), runs)| {
            let mut m = serde_json::Map::new();
            for (name, path) in fields {
                let v: Vec<f64> = runs.iter().filter_map(|(_, r)| num(r, path)).collect();
                m.insert((*name).into(), json!(median(v)));
            }
            let net: Vec<f64> = runs
                .iter()
                .filter_map(|(rep, r)| {
                    let peak = num(r, "server.rss_peak_bytes")?;
                    let base = baseline.get(rep)?;
                    (n > 0).then(|| (peak - base) / n as f64)
                })
                .collect();
            m.insert("rss_per_viewer_net_bytes".into(), json!(median(net)));
            let held = runs.iter().filter(|(_, r)| r["held"] == true).count();
            let saturated = runs
                .iter()
                .filter(|(_, r)| r["generator"]["saturated"] == true)
                .count();
            let errors: Vec<&Value> = runs
                .iter()
                .flat_map(|(_, r)| r["errors"].as_array().into_iter().flatten())
                .take(5)
                .collect();
            json!({
                "kind": kind, "viewers": n, "runs": runs.len(),
                "held_runs": held, "generator_saturated_runs": saturated,
                "median": m, "errors": errors,
            })
        })
        .collect()
}

fn memory(raw: &Path) -> Value {
    let one = |tag: &str| {
        let r = read_json(&raw.join(format!("mem-{tag}.json")))?;
        let idle: f64 = fs::read_to_string(raw.join(format!("rss-idle-{tag}.txt")))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let peak = num(&r, "server.rss_peak_bytes")?;
        Some(json!({
            "rss_idle_bytes": idle,
            "rss_peak_bytes": peak,
            "stream_bytes": peak - idle,
            "seconds_published": num(&r, "config.lead_s").unwrap_or(0.0)
                + num(&r, "config.settle_s").unwrap_or(0.0)
                + num(&r, "config.duration_s").unwrap_or(0.0),
            "bitrate_bps": num(&r, "publisher.window_bitrate_bps"),
        }))
    };
    json!({ "hls": one("hls"), "no_hls": one("nohls") })
}

/// The page's `SLUICE-G2G-DONE` records in a Chromium log.
fn done_records(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|l| {
            let i = l.find("SLUICE-G2G-DONE ")?;
            // Chromium quotes the console text: "...", source: ...
            let s = &l[i + "SLUICE-G2G-DONE ".len()..];
            let end = s.rfind("\", source:")?;
            serde_json::from_str(&s[..end]).ok()
        })
        .collect()
}

/// One page record and the server's CPU (cores) in that run.
type G2gRun = (Value, Option<f64>);

fn g2g(raw: &Path) -> Vec<Value> {
    // (variant, label) -> runs
    let mut by: BTreeMap<(String, String), Vec<G2gRun>> = BTreeMap::new();
    let Ok(dir) = fs::read_dir(raw) else {
        return Vec::new();
    };
    let mut logs: Vec<PathBuf> = dir
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("g2g-") && n.ends_with(".log"))
        })
        .collect();
    logs.sort();
    for path in logs {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        // g2g-VARIANT-rR
        let variant = stem
            .strip_prefix("g2g-")
            .and_then(|s| s.rsplit_once('-'))
            .map_or("default", |(v, _)| v)
            .to_owned();
        let cpu_text =
            fs::read_to_string(path.with_file_name(format!("{stem}-cpu.txt"))).unwrap_or_default();
        let text = fs::read_to_string(&path).unwrap_or_default();
        for rec in done_records(&text) {
            let label = rec["label"].as_str().unwrap_or("?").to_owned();
            let cpu = cpu_text.lines().find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == label).then_some(())?;
                let secs: f64 = f.next()?.parse().ok()?;
                let cpu: f64 = f.next()?.parse().ok()?;
                (secs > 0.0).then_some(cpu / secs)
            });
            by.entry((variant.clone(), label))
                .or_default()
                .push((rec, cpu));
        }
    }
    by.into_iter()
        .map(|((variant, label), runs)| {
            let series = |key: &str, scale: f64| -> Vec<f64> {
                runs.iter()
                    .flat_map(|(r, _)| r["samples"].as_array().into_iter().flatten())
                    .filter_map(|s| s[key].as_f64().map(|x| x * scale))
                    .collect()
            };
            let stat = |v: &[f64]| {
                json!({ "samples": v.len(), "p50": quantile(v, 0.5), "p99": quantile(v, 0.99),
                        "min": quantile(v, 0.0), "max": quantile(v, 1.0) })
            };
            let per_run: Vec<Value> = runs
                .iter()
                .map(|(r, cpu)| {
                    let g: Vec<f64> = r["samples"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s["g2g_ms"].as_f64())
                        .collect();
                    json!({ "g2g_p50_ms": quantile(&g, 0.5), "g2g_p99_ms": quantile(&g, 0.99),
                            "samples": g.len(), "stalls": r["stalls"], "stalled_ms": r["stalled_ms"],
                            "frames": r["frames"], "unread_frames": r["unread"],
                            "server_cpu_util": cpu, "errors": r["errors"], "config": r["config"],
                            "hlsjs": r["hlsjs"], "url": r["url"] })
                })
                .collect();
            json!({
                "variant": variant, "label": label, "runs": runs.len(),
                "g2g_ms": stat(&series("g2g_ms", 1.0)),
                "hlsjs_latency_ms": stat(&series("hlsjs_latency_s", 1000.0)),
                "hlsjs_target_latency_ms": stat(&series("hlsjs_target_latency_s", 1000.0)),
                "pdt_ms": stat(&series("pdt_ms", 1.0)),
                "buffered_ahead_ms": stat(&series("buffered_ahead_s", 1000.0)),
                "server_cpu_util": median(runs.iter().filter_map(|(_, c)| *c).collect()),
                "per_run": per_run,
            })
        })
        .collect()
}

fn f(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "–".into(),
    }
}

fn markdown(r: &Value) -> String {
    let mut o = String::new();
    o += &format!(
        "# LL-HLS: latency and cost ({})\n\n",
        r["name"].as_str().unwrap_or("?")
    );
    o += &format!(
        "`{}` on {}; {} s of runs. Load before: `{}`; after: `{}`.\n\n",
        r["command"].as_str().unwrap_or("perf/hls"),
        r["machine"].as_str().unwrap_or("?"),
        r["seconds"],
        r["uptime_start"].as_str().unwrap_or("?").trim(),
        r["uptime_end"].as_str().unwrap_or("?").trim(),
    );
    if let Some(n) = r["notes"].as_str().filter(|s| !s.trim().is_empty()) {
        o += &format!("{}\n\n", n.trim());
    }
    let points = r["load"].as_array().cloned().unwrap_or_default();
    if !points.is_empty() {
        o += "## Cost: N viewers of one 3 Mbit/s stream, server on one core (medians)\n\n";
        o += "RSS per viewer: the server's peak RSS less that of a run with the publisher and no viewer (same timing, same repeat), over N.\n\n";
        o += "| viewers | kind | server CPU (cores) | CPU-s/GB | Gbit/s | requests/s | requests per CPU-s | parked (median / max) | RSS per viewer (KiB) | generator | held |\n";
        o += "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
        for p in &points {
            let m = &p["median"];
            let sat = p["generator_saturated_runs"].as_u64().unwrap_or(0);
            o += &format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} | {}/{} |\n",
                p["viewers"],
                p["kind"].as_str().unwrap_or("?"),
                f(&m["server_cpu_util"], 2),
                f(&m["cpu_s_per_gb"], 2),
                f(&m["gbit_per_s"], 2),
                f(&m["requests_per_s"], 0),
                f(&m["requests_per_cpu_second"], 0),
                if p["kind"] == "ll-hls" {
                    format!("{} / {}", f(&m["parked_median"], 0), f(&m["parked_max"], 0))
                } else {
                    "–".into()
                },
                m["rss_per_viewer_net_bytes"]
                    .as_f64()
                    .map_or("–".into(), |b| if b < 0.0 {
                        format!("{:.0} (noise)", b / 1024.0)
                    } else {
                        format!("{:.0}", b / 1024.0)
                    }),
                f(&m["generator_cpu_util"], 2),
                if sat > 0 {
                    " (saturated: lower bound)"
                } else {
                    ""
                },
                p["held_runs"],
                p["runs"],
            );
        }
        o += "\n## Latency at the viewers (load runs, medians of p50 / p99, ms)\n\n";
        o += "LL-HLS, per video part: *ready* = the blocking playlist answer listing the part arrived, less the part's newest sample's publisher stamp; *received* = the part's last byte arrived, less the same; *oldest* = the part's last byte arrived, less its oldest sample. HTTP-FLV: each frame's arrival less its stamp.\n\n";
        o += "| viewers | kind | ready | received | oldest sample | audio ready | HTTP-FLV frame |\n|---:|---|---:|---:|---:|---:|---:|\n";
        for p in &points {
            let m = &p["median"];
            let pair = |a: &str, b: &str| format!("{} / {}", f(&m[a], 0), f(&m[b], 0));
            let hls = p["kind"] == "ll-hls";
            o += &format!(
                "| {} | {} | {} | {} | {} | {} | {} |\n",
                p["viewers"],
                p["kind"].as_str().unwrap_or("?"),
                if hls {
                    pair("ready_p50_ms", "ready_p99_ms")
                } else {
                    "–".into()
                },
                if hls {
                    pair("received_p50_ms", "received_p99_ms")
                } else {
                    "–".into()
                },
                if hls {
                    pair("oldest_p50_ms", "oldest_p99_ms")
                } else {
                    "–".into()
                },
                if hls {
                    pair("audio_ready_p50_ms", "audio_ready_p99_ms")
                } else {
                    "–".into()
                },
                if hls {
                    "–".into()
                } else {
                    format!(
                        "{} / {}",
                        f(&m["frame_p50_ms"], 1),
                        f(&m["frame_p99_ms"], 1)
                    )
                },
            );
        }
        o += "\n";
        for p in &points {
            if let Some(errs) = p["errors"].as_array().filter(|e| !e.is_empty()) {
                o += &format!(
                    "Errors, {} {}: ",
                    p["kind"].as_str().unwrap_or("?"),
                    p["viewers"]
                );
                o += &errs
                    .iter()
                    .map(|e| format!("`{}`", e.as_str().unwrap_or("?")))
                    .collect::<Vec<_>>()
                    .join("; ");
                o += "\n\n";
            }
        }
    }
    let mem = &r["memory"];
    if !mem["hls"].is_null() || !mem["no_hls"].is_null() {
        o += "## Memory per stream (one publisher, no viewer)\n\n| | RSS idle | RSS after | per stream | published |\n|---|---:|---:|---:|---:|\n";
        for (k, label) in [
            ("hls", "HLS on (default window)"),
            ("no_hls", "`--hls false`"),
        ] {
            let m = &mem[k];
            if m.is_null() {
                continue;
            }
            let mib = |v: &Value| {
                v.as_f64()
                    .map_or("–".into(), |b| format!("{:.1} MiB", b / 1048576.0))
            };
            o += &format!(
                "| {label} | {} | {} | {} | {} s |\n",
                mib(&m["rss_idle_bytes"]),
                mib(&m["rss_peak_bytes"]),
                mib(&m["stream_bytes"]),
                f(&m["seconds_published"], 0)
            );
        }
        o += "\n";
    }
    let g = r["g2g"].as_array().cloned().unwrap_or_default();
    if !g.is_empty() {
        o += "## Glass-to-glass: hls.js in headless Chromium, one ffmpeg publisher to both servers\n\n";
        o += "Burnt-in clock read at each presented frame, less the frame's expected display time; sampled every second over the measured span (after the settle). hls.js `latency`: its own estimate behind the live edge; PDT: wall clock less hls.js's `playingDate`.\n\n";
        o += "| variant | server | runs | glass-to-glass p50 / p99 ms | hls.js latency p50 / p99 ms | hls.js target ms | PDT p50 / p99 ms | buffer ahead p50 ms | stalls | server CPU (cores) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
        for p in &g {
            let pp = |k: &str| format!("{} / {}", f(&p[k]["p50"], 0), f(&p[k]["p99"], 0));
            let stalls: u64 = p["per_run"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["stalls"].as_u64())
                .sum();
            o += &format!(
                "| {} | {} | {} | {} ({} samples) | {} | {} | {} | {} | {} | {} |\n",
                p["variant"].as_str().unwrap_or("?"),
                p["label"].as_str().unwrap_or("?"),
                p["runs"],
                pp("g2g_ms"),
                p["g2g_ms"]["samples"],
                pp("hlsjs_latency_ms"),
                f(&p["hlsjs_target_latency_ms"]["p50"], 0),
                pp("pdt_ms"),
                f(&p["buffered_ahead_ms"]["p50"], 0),
                stalls,
                f(&p["server_cpu_util"], 3),
            );
        }
        o += "\n";
    }
    o
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut o = getopts::Options::new();
    o.reqopt("", "raw", "raw records of the run", "DIR");
    o.reqopt("", "out", "output path without extension", "PATH");
    o.optopt("", "machine", "machine description", "TEXT");
    o.optopt("", "command", "command line of the run", "TEXT");
    o.optopt("", "seconds", "seconds the runs took", "N");
    let m = match o.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "sluice-hls-report: {e}\n{}",
                o.usage("Usage: sluice-hls-report --raw DIR --out PATH")
            );
            return ExitCode::from(2);
        }
    };
    let raw = PathBuf::from(m.opt_str("raw").expect("required"));
    let out = m.opt_str("out").expect("required");
    let text = |name: &str| fs::read_to_string(raw.join(name)).ok();
    let name = Path::new(&out)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_owned();
    let report = json!({
        "tool": "perf/hls",
        "name": name,
        "machine": m.opt_str("machine"),
        "command": m.opt_str("command"),
        "seconds": m.opt_str("seconds").and_then(|s| s.parse::<u64>().ok()),
        "uptime_start": text("uptime-start.txt"),
        "uptime_end": text("uptime-end.txt"),
        "sluice_binary": text("sluice-binary.txt"),
        "notes": text("notes.txt"),
        "load": load_points(&raw),
        "memory": memory(&raw),
        "g2g": g2g(&raw),
    });
    let json_text = serde_json::to_string_pretty(&report).expect("serializable") + "\n";
    let md = markdown(&report);
    for (ext, body) in [("json", json_text.as_str()), ("md", md.as_str())] {
        let path = format!("{out}.{ext}");
        if let Err(e) = fs::write(&path, body) {
            eprintln!("sluice-hls-report: {path}: {e}");
            return ExitCode::FAILURE;
        }
    }
    print!("{md}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pages_records_from_chromiums_log() {
        let log = "[1:1:1203/1:INFO:CONSOLE:1] \"SLUICE-G2G {\"label\":\"x\"}\", source: file:///p.html (1)\n\
                   [1:1:1203/1:INFO:CONSOLE:1] \"SLUICE-G2G-DONE {\"label\":\"sluice\",\"samples\":[{\"g2g_ms\":900},{\"g2g_ms\":1100}]}\", source: file:///p.html (208)\n";
        let r = done_records(log);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0]["label"], "sluice");
        assert_eq!(r[0]["samples"][1]["g2g_ms"], 1100);
    }

    #[test]
    fn medians_and_quantiles() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&v, 0.0), Some(1.0));
    }
}
