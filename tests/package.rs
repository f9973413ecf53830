//! The Debian package (pkg/build-deb) and what it ships: the example config
//! (pkg/sluice.toml) and the systemd unit (pkg/sluice.service).
//!
//! `deb_installs_with_dpkg_and_serves_as_its_user` installs the package on
//! this machine with `dpkg -i` (as root), checks the unit with
//! `systemd-analyze verify`, runs the installed binary as the package's user
//! with the installed config, then purges the package. It changes the
//! machine, so it is `#[ignore]`d and a long check of .ci/run (after
//! `pkg/build-deb` built the release package; SLUICE_DEB names it); run by
//! hand: `cargo test --test package -- --ignored` (as root).

mod common;
mod support;

use common::{api, free_port, send_signal, wait_timeout, TestDir};
use sluice::config::{FileConfig, SETTINGS};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use support::WAIT;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

#[track_caller]
fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_example_config_lists_every_setting_and_parses() {
    let text = std::fs::read_to_string(repo("pkg/sluice.toml")).unwrap();
    for s in SETTINGS {
        let set = format!("\n{} = ", s.key);
        let commented = format!("\n# {} = ", s.key);
        assert!(
            text.contains(&set) || text.contains(&commented),
            "pkg/sluice.toml does not mention {}",
            s.key
        );
    }
    // As shipped.
    let shipped = FileConfig::parse(&text)
        .and_then(|f| f.to_config())
        .unwrap_or_else(|e| panic!("pkg/sluice.toml: {e}"));
    shipped.validate().unwrap();
    // With every commented top-level setting written in: each example is a
    // value the setting takes (tables start at the first commented `[`).
    let mut uncommented = String::new();
    let mut in_tables = false;
    for line in text.lines() {
        in_tables |= line.starts_with("# [");
        let setting = line
            .strip_prefix("# ")
            .filter(|l| !in_tables && l.split(" = ").count() > 1)
            .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_lowercase()));
        uncommented.push_str(setting.unwrap_or(line));
        uncommented.push('\n');
    }
    let all = FileConfig::parse(&uncommented)
        .and_then(|f| f.to_config())
        .unwrap_or_else(|e| panic!("pkg/sluice.toml, every setting uncommented: {e}"));
    assert_eq!(all.log_format, sluice::config::LogFormat::Text);
    assert!(all.rtmps_addr.is_some() && !all.proxy_protocol.0.is_empty());
}

/// The `.deb`: SLUICE_DEB, else built now from this build's binary.
fn deb() -> PathBuf {
    if let Ok(p) = std::env::var("SLUICE_DEB") {
        return PathBuf::from(p);
    }
    let out = run_ok(
        repo("pkg/build-deb").to_str().unwrap(),
        &["--binary", env!("CARGO_BIN_EXE_sluice")],
    );
    repo(
        out.lines()
            .last()
            .expect("build-deb prints the package's path"),
    )
}

/// A port below 1024 nobody listens on.
fn free_privileged_port() -> u16 {
    (900..1000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port in 900..1000")
}

#[test]
#[ignore = "installs a package on this machine (as root): a long check of .ci/run"]
fn deb_installs_with_dpkg_and_serves_as_its_user() {
    assert_eq!(
        run_ok("id", &["-u"]).trim(),
        "0",
        "dpkg -i needs root (CI runs as root)"
    );
    assert!(
        !run("dpkg", &["-s", "sluice"]).status.success(),
        "a sluice package is installed here already; this test installs and purges its own"
    );
    let deb = deb();
    let deb = deb.to_str().unwrap();
    let contents = run_ok("dpkg-deb", &["--contents", deb]);
    for path in [
        "./usr/bin/sluice",
        "./lib/systemd/system/sluice.service",
        "./etc/sluice/sluice.toml",
        "./usr/share/doc/sluice/deploying.md",
    ] {
        assert!(contents.contains(path), "{path} in\n{contents}");
    }
    assert_eq!(
        run_ok("dpkg-deb", &["--field", deb, "Package"]).trim(),
        "sluice"
    );

    run_ok("dpkg", &["-i", deb]);
    let purge = Purge;
    assert!(run_ok("getent", &["passwd", "sluice"]).contains("/usr/sbin/nologin"));
    let config = std::fs::metadata("/etc/sluice/sluice.toml").unwrap();
    assert_eq!(config.mode() & 0o777, 0o640, "the config is the service's");
    let group = run_ok("getent", &["group", "sluice"]);
    let gid: u32 = group.split(':').nth(2).unwrap().trim().parse().unwrap();
    assert_eq!(config.gid(), gid);
    assert!(
        run_ok("dpkg-query", &["-W", "-f", "${Conffiles}", "sluice"])
            .contains("/etc/sluice/sluice.toml")
    );

    // The unit, as systemd reads it (binary, user and directives checked).
    let verify = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/sluice.service"],
    );
    let said = String::from_utf8_lossy(&verify.stderr).into_owned();
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    assert!(
        !said.contains("sluice.service"),
        "systemd-analyze verify has remarks on the unit:\n{said}"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/sluice.service").unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "User=sluice",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in the unit");
    }
    // The unit's own commands, as its user.
    let exec = |key: &str| -> Vec<String> {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in the unit"));
        line.split_whitespace().map(str::to_owned).collect()
    };
    let check = exec("ExecStartPre=");
    let mut args = vec!["-u", "sluice", "--"];
    args.extend(check.iter().map(String::as_str));
    assert!(run_ok("runuser", &args).contains("OK"));

    let dir = TestDir::new();
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    // The socket is the test's: let the service's user write to it.
    run_ok("chmod", &["0777", dir.path().to_str().unwrap()]);
    run_ok("chmod", &["0666", notify_path.to_str().unwrap()]);
    let (rtmp, http) = (free_port(), free_port());
    let start = exec("ExecStart=");
    let mut child = Command::new("runuser")
        .args(["-u", "sluice", "--"])
        .args(&start)
        .args(["--rtmp", &format!("127.0.0.1:{rtmp}")])
        .args(["--http", &format!("127.0.0.1:{http}"), "--workers", "1"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = notify
        .recv(&mut buf)
        .expect("READY=1 from the installed binary");
    assert_eq!(&buf[..n], b"READY=1");
    let http_addr: SocketAddr = ([127, 0, 0, 1], http).into();
    let (status, body) = api::request(http_addr, "GET", "/readyz", "");
    assert_eq!(status, 200, "{body}");
    let server = api::get_json(http_addr, "/api/server");
    assert_eq!(server["version"], env!("CARGO_PKG_VERSION"));
    let rtmp_addr: SocketAddr = ([127, 0, 0, 1], rtmp).into();
    let mut publisher = support::TestClient::connect(rtmp_addr, "live");
    publisher.publish("packaged");
    api::wait_until(WAIT, "live/packaged live", || {
        api::stream(http_addr, "live/packaged").is_some_and(|s| s["live"] == true)
    });
    let pid = run_ok("pgrep", &["-u", "sluice", "-x", "sluice"]);
    let pid: u32 = pid
        .trim()
        .parse()
        .expect("one sluice process, as the sluice user");
    drop(publisher);
    // To the server itself (runuser, its parent, passes its status on).
    send_signal(pid, "TERM");
    let status = wait_timeout(&mut child, WAIT).expect("stops on SIGTERM");
    assert!(status.success(), "{status}");

    // Port 443 and friends: only with the capability the unit grants.
    let port = free_privileged_port();
    let listen = format!("127.0.0.1:{port}");
    let setpriv = |caps: bool| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "sluice", "--regid", "sluice", "--init-groups"]);
        if caps {
            c.args([
                "--inh-caps",
                "+net_bind_service",
                "--ambient-caps",
                "+net_bind_service",
            ]);
        }
        c.args([
            "/usr/bin/sluice",
            "--rtmp",
            &listen,
            "--no-http",
            "--workers",
            "1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        c
    };
    let status = setpriv(false).status().unwrap();
    assert!(!status.success(), "port {port} without the capability");
    let mut with_cap = setpriv(true).spawn().unwrap();
    api::wait_until(WAIT, "listening on the privileged port", || {
        TcpStream::connect_timeout(&listen.parse().unwrap(), Duration::from_millis(200)).is_ok()
    });
    send_signal(with_cap.id(), "TERM");
    assert!(wait_timeout(&mut with_cap, WAIT).is_some_and(|s| s.success()));

    // Removing keeps the config; purging takes it.
    run_ok("dpkg", &["-r", "sluice"]);
    assert!(!Path::new("/usr/bin/sluice").exists());
    assert!(Path::new("/etc/sluice/sluice.toml").exists());
    drop(purge);
    assert!(!Path::new("/etc/sluice/sluice.toml").exists());
}

/// Purges the package when dropped, so a failed test leaves nothing behind.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["-P", "sluice"]);
    }
}
