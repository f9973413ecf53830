//! The perf tools (`sluice-load`, `sluice-limit`) for tests of this package.
//!
//! They are binaries of the workspace member `sluice-perf` (perf/Cargo.toml),
//! and Cargo's `CARGO_BIN_EXE_<name>` only names binaries of a test's own
//! package. So the first call builds the tool with the cargo that runs this
//! test, in the same profile and with the same server features, and takes
//! the executable's path from cargo's own report of what it built: the tool
//! is never stale and never looked up by a guessed path. A failed build
//! fails the test with cargo's output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The `sluice-load` executable, built if needed.
pub fn sluice_load() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build("sluice-load")).clone()
}

/// The `sluice-limit` executable, built if needed.
pub fn sluice_limit() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| build("sluice-limit")).clone()
}

fn build(bin: &str) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--message-format=json-render-diagnostics"])
        .args(["--package", "sluice-perf", "--bin", bin])
        .args(["--profile", &profile()])
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    // Cargo sets these for the test it runs (this process); build scripts
    // that watch them (ring's does) would see a changed environment and the
    // next `cargo test` would rebuild them. The build must see what the
    // outer cargo saw.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                &*key,
                "OUT_DIR"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    // The same server library as this test's, so cargo reuses it.
    if cfg!(feature = "fault-injection") {
        cmd.args(["--features", "sluice/fault-injection"]);
    }
    let out = cmd.output().expect("run cargo to build the perf tools");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "building {bin} failed:\n{stderr}");
    // One JSON object per line; the artifact of our binary names its
    // executable.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo built no executable named {bin}:\n{stderr}"))
}

/// The cargo profile this test was built in, read from where cargo put this
/// package's own server binary (`target/<profile dir>/sluice`).
fn profile() -> String {
    let server = Path::new(env!("CARGO_BIN_EXE_sluice"));
    let dir = server
        .parent()
        .and_then(Path::file_name)
        .and_then(|d| d.to_str())
        .expect("the server binary lies in a profile directory");
    match dir {
        // `cargo test` builds in the dev profile's directory.
        "debug" => "dev".to_owned(),
        other => other.to_owned(),
    }
}
