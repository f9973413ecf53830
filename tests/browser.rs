//! Sluice's streams in a real browser: headless Chromium (tests/common/browser.rs)
//! plays them with the vendored JavaScript players (src/web/vendor/): mpegts.js
//! over ws-flv and HTTP-FLV from the `sluice` binary, hls.js over HLS from a
//! static server. Each playback test checks that the video's `currentTime`
//! advances by seconds, that it has the published dimensions, that the page
//! logged no error, that Sluice counted the browser as a player of the right
//! kind, and that a screenshot shows the picture. The harness's own tests
//! check that it reports what goes wrong (errors, exceptions, time-outs, a
//! stream that is not live) and that no Chromium process outlives a test.
//!
//! Needs `chromium` (Debian's package) and ffmpeg: `./test` installs both.
//! Screenshots are kept under target/tmp/browser/.

mod common;

use common::browser::{
    artefact_dir, base64_decode, check_png, content_type, crc32, distinct_levels, group_processes,
    hls_page, mpegts_page, png_gray_pixels, processes_mentioning, publish_small_live, resolve_path,
    vendor_dir, Browser, BrowserError, PageLog, StaticServer, WINDOW,
};
use common::{require_tool, run_tool, Server, TestDir};
use serde_json::json;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

/// Playback tests decode video in Chromium on a shared 2-core machine: one at a
/// time in this binary.
static VIDEO: Mutex<()> = Mutex::new(());

/// How far `currentTime` must advance for "it plays".
const PLAY_SECS: f64 = 3.0;
/// The bound for that (first frame included): generous for a loaded machine.
const PLAY_LIMIT: Duration = Duration::from_secs(45);

fn one_video_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    VIDEO.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------
// The vendored players
// ---------------------------------------------------------------------------------------

/// Every vendored file is the one refresh.sh fetched (its SHA256SUMS), each
/// package has its licence and version, and the README names that version.
#[test]
fn vendored_players_match_their_checksums() {
    let vendor = vendor_dir();
    let readme = fs::read_to_string(vendor.join("README.md")).expect("src/web/vendor/README.md");
    for (package, main) in [("hls.js", "hls.min.js"), ("mpegts.js", "mpegts.js")] {
        let dir = vendor.join(package);
        let sums = fs::read_to_string(dir.join("SHA256SUMS"))
            .unwrap_or_else(|e| panic!("{package}/SHA256SUMS: {e}"));
        let mut listed = Vec::new();
        for line in sums.lines() {
            let (want, name) = line
                .split_once("  ")
                .unwrap_or_else(|| panic!("{package}/SHA256SUMS: bad line {line:?}"));
            let bytes =
                fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{package}/{name}: {e}"));
            let got = ring::digest::digest(&ring::digest::SHA256, &bytes);
            let got: String = got.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                got, want,
                "{package}/{name} is not the file refresh.sh vendored"
            );
            listed.push(name.to_string());
        }
        for needed in [main, "LICENSE", "VERSION"] {
            assert!(
                listed.iter().any(|n| n == needed),
                "{package}/SHA256SUMS lacks {needed}"
            );
        }
        // Nothing unlisted (a stray source map, a hand-added file).
        for entry in fs::read_dir(&dir).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                name == "SHA256SUMS" || listed.contains(&name),
                "{package}/{name} is not in SHA256SUMS"
            );
        }
        let version = fs::read_to_string(dir.join("VERSION")).unwrap();
        let version = version.trim();
        assert!(
            readme.contains(&format!("| `{package}/` | [{package}]"))
                && readme.contains(&format!("| {version} |")),
            "src/web/vendor/README.md does not list {package} {version}"
        );
        let licence = fs::read_to_string(dir.join("LICENSE")).unwrap();
        assert!(licence.contains("Apache License"), "{package}/LICENSE");
    }
}

// ---------------------------------------------------------------------------------------
// Harness pieces that need no browser
// ---------------------------------------------------------------------------------------

#[test]
fn base64_decodes_known_vectors_and_refuses_garbage() {
    for (text, bytes) in [
        ("", &b""[..]),
        ("Zg==", b"f"),
        ("Zm8=", b"fo"),
        ("Zm9v", b"foo"),
        ("Zm9vYg==", b"foob"),
        ("Zm9vYmE=", b"fooba"),
        ("Zm9vYmFy", b"foobar"),
        ("/+8A", b"\xff\xef\x00"),
    ] {
        assert_eq!(base64_decode(text).unwrap(), bytes, "{text}");
    }
    assert!(base64_decode("Zm9v!").is_err());
    assert!(base64_decode("Z").is_err());
    assert!(base64_decode("Zg==Zg").is_err());
}

/// A 1x1 gray PNG built chunk by chunk.
fn tiny_png() -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
    // A zlib stream with one stored block: filter byte 0, one pixel 0x7f.
    chunk(
        &mut png,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x02, 0x00, 0xfd, 0xff, 0x00, 0x7f, 0x00, 0x80, 0x00, 0x80,
        ],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn png_check_accepts_a_png_and_refuses_damage() {
    assert_eq!(crc32(&[b"IEND"]), 0xae42_6082);
    let png = tiny_png();
    let info = check_png(&png).unwrap();
    assert_eq!((info.width, info.height, info.idat_bytes), (1, 1, 13));
    let mut bad = png.clone();
    let n = bad.len();
    bad[n - 20] ^= 1; // inside IDAT
    assert!(check_png(&bad).unwrap_err().contains("CRC"));
    assert!(check_png(&png[..png.len() - 1]).is_err());
    assert!(check_png(b"GIF89a").is_err());
}

#[test]
fn page_log_keeps_the_page_sessions_console_and_errors() {
    let mut log = PageLog {
        session: "S".into(),
        target: "T".into(),
        ..PageLog::default()
    };
    let events = [
        json!({"method": "Runtime.consoleAPICalled", "sessionId": "S", "params": {"type": "error",
            "args": [{"type": "string", "value": "boom"}, {"type": "number", "value": 3}]}}),
        json!({"method": "Runtime.consoleAPICalled", "sessionId": "OTHER", "params": {"type": "error",
            "args": [{"type": "string", "value": "not this page's"}]}}),
        json!({"method": "Runtime.consoleAPICalled", "sessionId": "S", "params": {"type": "log",
            "args": [{"type": "string", "value": "fine"}]}}),
        json!({"method": "Runtime.exceptionThrown", "sessionId": "S", "params": {"exceptionDetails":
            {"text": "Uncaught", "exception": {"description": "Error: bad"}}}}),
        json!({"method": "Log.entryAdded", "sessionId": "S", "params": {"entry": {"level": "error",
            "source": "network", "text": "Failed to load resource", "url": "http://x/"}}}),
        json!({"method": "Page.loadEventFired", "sessionId": "S", "params": {}}),
    ];
    for event in &events {
        log.record(event);
    }
    assert_eq!(
        log.errors,
        [
            "console.error: boom 3",
            "uncaught exception: Error: bad",
            "log.error (network): Failed to load resource (http://x/)"
        ]
    );
    assert_eq!(log.console.len(), 4);
    assert_eq!(log.loads, 1);
    assert!(log.gone.is_none());
    log.record(&json!({"method": "Target.targetCrashed",
        "params": {"targetId": "T", "status": "crashed"}}));
    assert!(log.gone.is_some());
}

#[test]
fn static_paths_stay_inside_their_mounts() {
    let dir = std::env::temp_dir();
    let mounts = vec![
        ("/vendor/".to_string(), dir.join("v")),
        ("/".to_string(), dir.clone()),
    ];
    assert_eq!(resolve_path(&mounts, "/../etc/passwd"), Err(400));
    assert_eq!(resolve_path(&mounts, "/vendor/../../x"), Err(400));
    assert_eq!(resolve_path(&mounts, "/a%2e%2e/x"), Err(400));
    assert_eq!(resolve_path(&mounts, "relative"), Err(400));
    assert_eq!(resolve_path(&mounts, "/no-such-file-here.js"), Ok(None));
    assert_eq!(
        content_type(Path::new("a/b.m3u8")),
        "application/vnd.apple.mpegurl"
    );
    assert_eq!(
        content_type(Path::new("x.JS")),
        "text/javascript; charset=utf-8"
    );
}

/// One `Connection: close` request: (status, head, body).
fn raw_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    s.read_to_end(&mut response).expect("read the response");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (status, head, response[split + 4..].to_vec())
}

#[test]
fn static_server_serves_players_and_pages_with_their_types() {
    let dir = TestDir::new();
    fs::write(dir.join("page.html"), "<!doctype html><p>hi</p>").unwrap();
    fs::create_dir_all(dir.join("hls")).unwrap();
    fs::write(dir.join("hls/index.m3u8"), "#EXTM3U\n").unwrap();
    let site = StaticServer::with_players(dir.path());

    let (status, head, body) = raw_request(site.addr(), "GET", "/vendor/mpegts.js/mpegts.js");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("Content-Type: text/javascript"), "{head}");
    assert!(head.contains("Access-Control-Allow-Origin: *"), "{head}");
    assert_eq!(
        body,
        fs::read(vendor_dir().join("mpegts.js/mpegts.js")).unwrap()
    );

    let (status, head, body) = raw_request(site.addr(), "GET", "/page.html?x=1");
    assert_eq!(
        (status, body.as_slice()),
        (200, &b"<!doctype html><p>hi</p>"[..])
    );
    assert!(head.contains("Content-Type: text/html"), "{head}");
    let (status, head, _) = raw_request(site.addr(), "GET", "/hls/index.m3u8");
    assert_eq!(status, 200);
    assert!(head.contains("application/vnd.apple.mpegurl"), "{head}");

    let (status, head, body) = raw_request(site.addr(), "HEAD", "/vendor/hls.js/hls.min.js");
    assert_eq!(status, 200);
    assert!(body.is_empty());
    let length = fs::metadata(vendor_dir().join("hls.js/hls.min.js"))
        .unwrap()
        .len();
    assert!(
        head.contains(&format!("Content-Length: {length}")),
        "{head}"
    );

    assert_eq!(raw_request(site.addr(), "GET", "/missing.js").0, 404);
    assert_eq!(
        raw_request(site.addr(), "GET", "/vendor/../page.html").0,
        400
    );
    assert_eq!(raw_request(site.addr(), "POST", "/page.html").0, 405);
    assert_eq!(raw_request(site.addr(), "GET", "/favicon.ico").0, 204);
    let served = site.requests();
    assert!(
        served.contains(&"GET /missing.js 404".to_string()),
        "{served:?}"
    );
}

// ---------------------------------------------------------------------------------------
// The harness itself, with Chromium
// ---------------------------------------------------------------------------------------

/// eval returns JSON values and awaits promises; wait_until returns once true,
/// times out with the last value, fails at once on a page error; exceptions,
/// console errors and unreachable URLs are reported; screenshots are PNGs of
/// the window's size.
#[test]
fn harness_evaluates_waits_and_reports_what_goes_wrong() {
    require_tool("chromium");
    let dir = TestDir::new();
    fs::write(
        dir.join("page.html"),
        r#"<!doctype html><html><head><link rel="icon" href="data:,"></head>
<body style="margin:0;background:#0000ff"><div id="box" style="width:100px;height:50px;background:#ff0000"></div>
<script>
console.log('page script ran');
setTimeout(() => { window.ready = 'yes'; }, 300);
</script></body></html>"#,
    )
    .unwrap();
    let site = StaticServer::with_players(dir.path());
    let mut browser = Browser::launch();

    browser.navigate(&site.url("/page.html")).expect("navigate");
    assert_eq!(browser.eval("1 + 2").unwrap(), json!(3));
    assert_eq!(
        browser.eval("({a: [1, 'x'], b: null})").unwrap(),
        json!({"a": [1, "x"], "b": null})
    );
    assert_eq!(
        browser
            .eval("new Promise(r => setTimeout(() => r('later'), 50))")
            .unwrap(),
        json!("later")
    );
    assert_eq!(browser.eval("undefined").unwrap(), json!(null));
    assert_eq!(
        browser
            .wait_until("window.ready", Duration::from_secs(10))
            .unwrap(),
        json!("yes")
    );
    assert!(
        browser
            .console()
            .iter()
            .any(|l| l.starts_with("console.log: page script ran")),
        "{:?}",
        browser.console()
    );

    // A wait that never comes true: a time-out naming the expression and its last value.
    let started = Instant::now();
    match browser.wait_until("document.title === 'never'", Duration::from_millis(800)) {
        Err(BrowserError::Timeout { what, last, .. }) => {
            assert!(what.contains("never") && last == "false", "{what} {last}")
        }
        other => panic!("expected a time-out, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // An exception in evaluated code.
    match browser.eval("(() => { throw new Error('nope'); })()") {
        Err(BrowserError::Exception(text)) => assert!(text.contains("nope"), "{text}"),
        other => panic!("expected an exception, got {other:?}"),
    }
    match browser.eval("Promise.reject(new Error('rejected'))") {
        Err(BrowserError::Exception(text)) => assert!(text.contains("rejected"), "{text}"),
        other => panic!("expected an exception, got {other:?}"),
    }
    assert!(browser.errors().is_empty(), "{:?}", browser.errors());

    // Errors the page logs: console.error and an uncaught exception in a timer.
    browser
        .eval("console.error('bad thing', 42); setTimeout(() => { throw new Error('async boom'); }, 10); 0")
        .unwrap();
    match browser.wait_until("false", Duration::from_secs(10)) {
        Err(BrowserError::PageErrors(errors)) => {
            assert!(
                errors.iter().any(|e| e.contains("bad thing 42")),
                "{errors:?}"
            )
        }
        other => panic!("expected the page's errors, got {other:?}"),
    }
    browser
        .wait_until_ignoring_errors(
            "new Promise(r => setTimeout(() => r(true), 100))",
            Duration::from_secs(10),
        )
        .unwrap();
    assert!(
        browser.errors().iter().any(|e| e.contains("async boom")),
        "{:?}",
        browser.errors()
    );

    // Screenshots: the window, and one element (red on blue).
    let shots = TestDir::new();
    let page_png = shots.join("page.png");
    browser.screenshot(&page_png).expect("screenshot");
    let info = check_png(&fs::read(&page_png).unwrap()).unwrap();
    assert_eq!((info.width, info.height), WINDOW);
    let box_png = shots.join("box.png");
    browser
        .screenshot_element("#box", &box_png)
        .expect("element screenshot");
    let (w, h, pixels) = png_gray_pixels(&box_png).unwrap();
    assert_eq!((w, h), (100, 50));
    assert_eq!(
        distinct_levels(&pixels, w, (0, 0, w, h)),
        1,
        "a flat red box"
    );
    assert!(matches!(
        browser.screenshot_element("#nothing", &box_png),
        Err(BrowserError::Exception(_))
    ));

    // Navigating clears the errors; an unreachable URL is an error of its own.
    browser.navigate(&site.url("/page.html")).unwrap();
    assert!(browser.errors().is_empty(), "{:?}", browser.errors());
    let closed_port = common::free_port();
    match browser.navigate(&format!("http://127.0.0.1:{closed_port}/")) {
        Err(BrowserError::Navigation { error, .. }) => {
            assert!(error.contains("ERR_CONNECTION_REFUSED"), "{error}")
        }
        other => panic!("expected a navigation error, got {other:?}"),
    }
}

/// Dropping a Browser kills every Chromium process and removes its profile,
/// also when the test panics; close() ends Chromium by itself.
#[test]
fn no_chromium_process_outlives_its_browser() {
    require_tool("chromium");
    let check_gone = |pgid: u32, profile: &Path| {
        assert!(
            group_processes(pgid).is_empty(),
            "processes of group {pgid} left: {:?}",
            group_processes(pgid)
        );
        let needle = profile.display().to_string();
        assert!(
            processes_mentioning(&needle).is_empty(),
            "processes naming {needle} left: {:?}",
            processes_mentioning(&needle)
        );
        assert!(!profile.exists(), "{} was not removed", profile.display());
    };

    // Plain drop.
    let browser = Browser::launch();
    let (pgid, profile) = (browser.process_group(), browser.profile_dir().to_path_buf());
    let running = browser.processes();
    assert!(
        running.len() >= 3,
        "a browser, zygotes and renderers run: {running:?}"
    );
    // Every process of the group names the profile but the `timeout` wrapper.
    let naming = processes_mentioning(&profile.display().to_string());
    assert!(
        running.iter().filter(|p| !naming.contains(p)).count() <= 1,
        "group {running:?}, naming the profile {naming:?}"
    );
    drop(browser);
    check_gone(pgid, &profile);

    // A test that panics while its browser is open.
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = thread::spawn(move || {
        let browser = Browser::launch();
        tx.send((browser.process_group(), browser.profile_dir().to_path_buf()))
            .unwrap();
        panic!("a test failing on purpose with its browser open");
    })
    .join();
    assert!(failed.is_err());
    let (pgid, profile) = rx.recv().unwrap();
    check_gone(pgid, &profile);

    // close(): Browser.close, Chromium exits by itself.
    let browser = Browser::launch();
    let (pgid, profile) = (browser.process_group(), browser.profile_dir().to_path_buf());
    browser.close().expect("chromium exits after Browser.close");
    check_gone(pgid, &profile);
}

// ---------------------------------------------------------------------------------------
// Sluice's streams in the browser
// ---------------------------------------------------------------------------------------

/// What a playback test checks once the video plays: no page errors, the
/// screenshot is a PNG of the window whose video area shows a picture (many
/// gray levels) next to the flat page background.
fn check_screenshot(browser: &mut Browser, name: &str) {
    let path = artefact_dir().join(format!("{name}.png"));
    browser.screenshot(&path).expect("screenshot");
    eprintln!("screenshot: {}", path.display());
    let (w, h, pixels) = png_gray_pixels(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((w, h), WINDOW, "the screenshot has the window's size");
    // The video element is 320x240 at the top left (see tests/common/browser.rs `page`).
    let video = distinct_levels(&pixels, w, (0, 0, 320, 240));
    let background = distinct_levels(&pixels, w, (400, 300, 200, 200));
    assert!(
        video >= 32 && background <= 2,
        "{}: the video area has {video} gray levels (a test card has dozens), \
         the background {background}",
        path.display()
    );
}

/// ffmpeg publishes a live test card to Sluice; mpegts.js in Chromium plays
/// `url_of(server)`; Sluice counts it as a `kind` player.
fn mpegts_plays_from_sluice(name: &str, kind: &str, url_of: impl Fn(&Server) -> String) {
    require_tool("chromium");
    require_tool("ffmpeg");
    let _one = one_video_at_a_time();
    let server = Server::start(1, &[]);
    let mut publisher = publish_small_live(&server.url("live", name), 60);
    server.wait_live(&format!("live/{name}"));
    let dir = TestDir::new();
    let url = url_of(&server);
    fs::write(dir.join("play.html"), mpegts_page(&url)).unwrap();
    let site = StaticServer::with_players(dir.path());
    let mut browser = Browser::launch();

    browser.navigate(&site.url("/play.html")).expect("navigate");
    let playback = browser
        .wait_playback(PLAY_SECS, PLAY_LIMIT)
        .unwrap_or_else(|e| panic!("mpegts.js playing {url}: {e}"));
    eprintln!(
        "{url}: first frame after {:?}, currentTime {:.2} -> {:.2} in {:?}; {}",
        playback.first_frame_after, playback.start, playback.end, playback.waited, playback.state
    );
    assert_eq!((playback.width, playback.height), (320, 240));
    assert!(playback.state["totalVideoFrames"].as_u64().unwrap_or(0) > 20);

    let stream = server.stream(&format!("live/{name}")).expect("the stream");
    assert_eq!(stream["players"][kind], 1, "{stream}");
    assert_eq!(stream["players"]["total"], 1, "{stream}");
    check_screenshot(&mut browser, name);
    assert!(browser.errors().is_empty(), "{:?}", browser.errors());
    assert!(
        site.requests()
            .contains(&"GET /vendor/mpegts.js/mpegts.js 200".to_string()),
        "{:?}",
        site.requests()
    );
    assert!(publisher.is_running(), "{}", publisher.stderr());
}

#[test]
fn mpegts_js_plays_ws_flv_from_sluice() {
    mpegts_plays_from_sluice("wsflv", "ws-flv", |server| {
        server
            .http_url("live", "wsflv")
            .replacen("http://", "ws://", 1)
    });
}

#[test]
fn mpegts_js_plays_http_flv_from_sluice() {
    mpegts_plays_from_sluice("httpflv", "http-flv", |server| {
        server.http_url("live", "httpflv")
    });
}

/// The failure the playback tests rely on being told about: mpegts.js asked for
/// a stream that is not live gets Sluice's 404, and wait_playback reports the
/// player's error at once instead of waiting out its limit.
#[test]
fn playback_of_a_stream_that_is_not_live_is_reported() {
    require_tool("chromium");
    let server = Server::start(1, &[]);
    let dir = TestDir::new();
    let site = StaticServer::with_players(dir.path());
    let mut browser = Browser::launch();
    for (page, url) in [
        ("http.html", server.http_url("live", "nobody")),
        (
            "ws.html",
            server
                .http_url("live", "nobody")
                .replacen("http://", "ws://", 1),
        ),
    ] {
        fs::write(dir.join(page), mpegts_page(&url)).unwrap();
        browser.navigate(&site.url(&format!("/{page}"))).unwrap();
        let started = Instant::now();
        match browser.wait_playback(PLAY_SECS, PLAY_LIMIT) {
            Err(BrowserError::PageErrors(mut errors)) => {
                // Chromium's own network line can come a moment before the
                // player's error: give the player a few seconds to speak.
                let waiting = Instant::now();
                while !errors.iter().any(|e| e.contains("mpegts.js"))
                    && waiting.elapsed() < Duration::from_secs(5)
                {
                    browser.pump(Duration::from_millis(100)).unwrap();
                    errors = browser.errors().to_vec();
                }
                eprintln!("{url}: {errors:?}");
                assert!(
                    errors.iter().any(|e| e.contains("mpegts.js")),
                    "{url}: {errors:?}"
                );
            }
            other => panic!("{url}: expected the player's error, got {other:?}"),
        }
        assert!(
            started.elapsed() < PLAY_LIMIT / 2,
            "the error came late: {:?}",
            started.elapsed()
        );
    }
}

/// A page plays HTTP-FLV from another origin (the static server's) only because
/// Sluice's answer carries `Access-Control-Allow-Origin`: with `--cors-origin`
/// naming some other origin, Chromium blocks the response and mpegts.js
/// reports it; naming the page's origin, it plays.
#[test]
fn http_flv_in_a_page_needs_sluices_cors_header() {
    require_tool("chromium");
    require_tool("ffmpeg");
    let _one = one_video_at_a_time();
    let dir = TestDir::new();
    let site = StaticServer::with_players(dir.path());
    let page_origin = site.url("");
    let mut browser = Browser::launch();
    for (i, (origin, plays)) in [("http://127.0.0.1:9", false), (page_origin.as_str(), true)]
        .into_iter()
        .enumerate()
    {
        let server = Server::start(1, &["--cors-origin", origin]);
        let _publisher = publish_small_live(&server.url("live", "cors"), 30);
        server.wait_live("live/cors");
        // A page of its own per server: the browser may keep the previous
        // one cached, and that one plays from the previous server.
        let page = format!("cors-{i}.html");
        fs::write(
            dir.join(&page),
            mpegts_page(&server.http_url("live", "cors")),
        )
        .unwrap();
        browser.navigate(&site.url(&format!("/{page}"))).unwrap();
        let result = browser.wait_playback(1.0, PLAY_LIMIT);
        match (plays, result) {
            (true, Ok(playback)) => assert_eq!((playback.width, playback.height), (320, 240)),
            (false, Err(BrowserError::PageErrors(errors))) => assert!(
                errors.iter().any(|e| e.contains("CORS")),
                "--cors-origin {origin}: {errors:?}"
            ),
            (_, other) => panic!("--cors-origin {origin} (page at {page_origin}): {other:?}"),
        }
    }
}

/// hls.js (vendored) plays fMP4 HLS from the static server in Chromium: the
/// harness's HLS side, ready for Sluice's own HLS. Also reads hls.js's figures
/// through `sluice.state().player`.
#[test]
fn hls_js_plays_hls_from_the_static_server() {
    require_tool("chromium");
    let ffmpeg = require_tool("ffmpeg");
    let _one = one_video_at_a_time();
    let dir = TestDir::new();
    fs::create_dir_all(dir.join("hls")).unwrap();
    let playlist = dir.join("hls/index.m3u8");
    let args: Vec<String> = [
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x240:rate=20",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=44100",
        "-t",
        "8",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-pix_fmt",
        "yuv420p",
        "-g",
        "20",
        "-c:a",
        "aac",
        "-ac",
        "1",
        "-f",
        "hls",
        "-hls_time",
        "1",
        "-hls_playlist_type",
        "vod",
        "-hls_segment_type",
        "fmp4",
        &playlist.display().to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (status, _, err) = run_tool(&ffmpeg, &args, Duration::from_secs(60));
    assert!(status.success(), "ffmpeg making HLS: {err}");
    fs::write(dir.join("play.html"), hls_page("/hls/index.m3u8", "{}")).unwrap();
    let site = StaticServer::with_players(dir.path());
    let mut browser = Browser::launch();

    browser.navigate(&site.url("/play.html")).expect("navigate");
    let playback = browser
        .wait_playback(PLAY_SECS, PLAY_LIMIT)
        .unwrap_or_else(|e| panic!("hls.js: {e}"));
    eprintln!("hls.js: {playback:?}");
    assert_eq!((playback.width, playback.height), (320, 240));
    let player = &playback.state["player"];
    assert_eq!(player["live"], json!(false), "a VOD playlist: {player}");
    assert!(player.get("latency").is_some(), "{player}");
    let vendored = fs::read_to_string(vendor_dir().join("hls.js/VERSION")).unwrap();
    assert_eq!(browser.eval("Hls.version").unwrap(), json!(vendored.trim()));
    check_screenshot(&mut browser, "hls");
    assert!(browser.errors().is_empty(), "{:?}", browser.errors());
    let served = site.requests();
    assert!(
        served
            .iter()
            .any(|r| r.starts_with("GET /hls/") && r.ends_with(".m4s 200")),
        "{served:?}"
    );
}
