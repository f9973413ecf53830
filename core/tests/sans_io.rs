//! The core stays sans-IO, checked on every `cargo test`: the compiler
//! already keeps it from importing the server (the server depends on it,
//! and Cargo refuses a cycle); this keeps it from growing I/O of its own.
//! Its dependencies are a short allow-list, and no source file names the
//! standard library's sockets, files, threads, processes, environment or
//! clock. Time reaches the core as an `Instant` argument, bytes as buffers.

use std::path::{Path, PathBuf};

/// What the core may depend on (core/Cargo.toml `[dependencies]`).
const ALLOWED_DEPENDENCIES: &[&str] = &["bytes", "log", "ring"];

/// Paths a sans-IO crate never names, and what each would bring in.
const FORBIDDEN: &[(&str, &str)] = &[
    ("std::net", "sockets"),
    ("std::fs", "files"),
    ("std::io", "readers and writers"),
    ("std::thread", "threads"),
    ("std::process", "processes"),
    ("std::env", "the environment"),
    ("std::sync::mpsc", "channels"),
    ("Instant::now", "a clock read"),
    ("SystemTime", "a clock read"),
    ("mio::", "the event loop"),
    ("rustls::", "TLS"),
    ("socket2::", "sockets"),
    ("sluice::", "the server"),
];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read core/src") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn dependencies_are_the_allowed_few() {
    let manifest = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).unwrap();
    let mut in_dependencies = false;
    let mut found = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        if in_dependencies && !line.is_empty() && !line.starts_with('#') {
            let name = line.split('=').next().unwrap_or("").trim();
            found.push(name.to_owned());
        }
    }
    assert!(
        !found.is_empty(),
        "no [dependencies] read from core/Cargo.toml"
    );
    for name in &found {
        assert!(
            ALLOWED_DEPENDENCIES.contains(&name.as_str()),
            "core/Cargo.toml depends on {name}: the core takes bytes and time as \
             arguments and needs no I/O crate (allowed: {ALLOWED_DEPENDENCIES:?})"
        );
    }
}

#[test]
fn no_source_file_names_io_threads_or_the_clock() {
    let mut files = Vec::new();
    rust_files(&manifest_dir().join("src"), &mut files);
    assert!(files.len() > 5, "found only {files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (path, what) in FORBIDDEN {
                assert!(
                    !line.contains(path),
                    "{}:{}: names {path} ({what}); the core is sans-IO: {line}",
                    file.display(),
                    n + 1
                );
            }
        }
    }
}
