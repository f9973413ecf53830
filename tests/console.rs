//! The web console (docs/console.md) in headless Chromium
//! (tests/common/browser.rs), against the `sluice` binary:
//!
//! * its files are served where the API answers (its own address with
//!   `--api`, else the HTTP port), with their content types, `no-cache`
//!   and an ETag that a `304` honours; the vendored players byte for byte;
//! * with `--api ADDR --api-token T` (the console on the API's address, the
//!   preview on the HTTP port) it asks for the token, refuses a wrong one,
//!   lists a stream ffmpeg publishes with its codecs and size, its numbers
//!   change from one answer to the next, its chart draws; the stream page's
//!   preview plays over ws-flv and then over LL-HLS (`currentTime`
//!   advances, no page error, Sluice counts the player of the right kind);
//!   a kick removes a connection; every view fits a phone's width;
//! * no stream key, signature or relay key reaches the page, whatever view.
//!
//! Screenshots are kept under target/tmp/browser/ (console-*.png).
//! Needs `chromium` and ffmpeg, as tests/browser.rs.

mod common;

use common::api::wait_for;
use common::browser::{artefact_dir, publish_small_live, Browser, BrowserError};
use common::{free_port, require_tool, Server, TestDir};
use serde_json::{json, Value};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Browser tests decode video on a shared 2-core machine: one at a time.
static BROWSER: Mutex<()> = Mutex::new(());

/// How far the preview's `currentTime` must advance for "it plays".
const PLAY_SECS: f64 = 3.0;
/// Bounds of the waits in a page (a loaded machine needs the margin).
const PAGE_LIMIT: Duration = Duration::from_secs(30);
const PLAY_LIMIT: Duration = Duration::from_secs(45);

fn one_browser_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    BROWSER.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------
// HTTP from the test
// ---------------------------------------------------------------------------------------

/// One response, read to its end (`Connection: close`).
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no response head in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// The API on `addr`, with a bearer token when given.
struct Api {
    addr: SocketAddr,
    token: Option<String>,
}

impl Api {
    fn call(&self, method: &str, path: &str) -> Answer {
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        http(self.addr, method, path, &headers)
    }

    fn get(&self, path: &str) -> Value {
        let a = self.call("GET", path);
        assert_eq!(
            a.status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&a.body)
        );
        a.json()
    }

    fn stream(&self, key: &str) -> Option<Value> {
        let a = self.call("GET", &format!("/api/streams/{key}"));
        (a.status == 200).then(|| a.json())
    }

    fn clients(&self) -> Vec<Value> {
        self.get("/api/clients")["clients"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// An HTTP-FLV player made of one socket, read on a thread of its own until
/// the server closes it.
struct RawPlayer {
    local: SocketAddr,
    closed: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    reader: Option<JoinHandle<()>>,
    socket: TcpStream,
}

impl RawPlayer {
    fn start(addr: SocketAddr, path: &str) -> RawPlayer {
        let mut socket = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        write!(socket, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let local = socket.local_addr().unwrap();
        let (closed, bytes) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let mut reading = socket.try_clone().unwrap();
        let (c, b) = (closed.clone(), bytes.clone());
        let reader = thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match reading.read(&mut buf) {
                    Ok(n @ 1..) => b.fetch_add(n as u64, Ordering::Relaxed),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    _ => break,
                };
            }
            c.store(true, Ordering::SeqCst);
        });
        RawPlayer {
            local,
            closed,
            bytes,
            reader: Some(reader),
            socket,
        }
    }
}

impl Drop for RawPlayer {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The files
// ---------------------------------------------------------------------------------------

fn vendored(path: &str) -> Vec<u8> {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// `/` and `/console/...` on the HTTP port when the API is there; with
/// `--api` only on the API's address (404 on the HTTP port), and without the
/// token (the page asks for it) while the API itself answers 401.
#[test]
fn console_files_are_served_where_the_api_answers() {
    let server = Server::start(2, &[]);
    let here = server.http_addr();
    let page = http(here, "GET", "/", &[]);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-cache"));
    let text = String::from_utf8_lossy(&page.body);
    assert!(text.contains("console/console.js") && text.contains("console/console.css"));
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    for (path, content_type, file) in [
        (
            "/console/console.js",
            "text/javascript; charset=utf-8",
            "src/web/console/console.js",
        ),
        (
            "/console/console.css",
            "text/css; charset=utf-8",
            "src/web/console/console.css",
        ),
        (
            "/console/vendor/mpegts.js",
            "text/javascript; charset=utf-8",
            "src/web/vendor/mpegts.js/mpegts.js",
        ),
        (
            "/console/vendor/hls.min.js",
            "text/javascript; charset=utf-8",
            "src/web/vendor/hls.js/hls.min.js",
        ),
        (
            "/console/vendor/hls.js.LICENSE",
            "text/plain; charset=utf-8",
            "src/web/vendor/hls.js/LICENSE",
        ),
    ] {
        let a = http(here, "GET", path, &[]);
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.header("content-type"), Some(content_type), "{path}");
        assert!(a.body == vendored(file), "{path} is not {file}");
        let etag = a.header("etag").expect("an ETag").to_string();
        let again = http(here, "GET", path, &[("If-None-Match", &etag)]);
        assert_eq!(again.status, 304, "{path} with its ETag");
        assert!(again.body.is_empty());
        let head = http(here, "HEAD", path, &[]);
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty());
        assert_eq!(
            head.header("content-length"),
            Some(&*a.body.len().to_string())
        );
    }
    assert_eq!(http(here, "GET", "/console/missing.js", &[]).status, 404);
    // Only the console's files are its own: an application named
    // `console` is played (here: not live yet).
    let player = http(here, "GET", "/console/cam.flv", &[]);
    assert_eq!(
        (
            player.status,
            String::from_utf8_lossy(&player.body).as_ref()
        ),
        (404, "stream not live\n")
    );
    assert_eq!(http(here, "POST", "/", &[]).status, 405);
    // What the console reads besides the streams: where to play from and
    // each worker's load.
    let info = Api {
        addr: here,
        token: None,
    }
    .get("/api/server");
    assert_eq!(info["addresses"]["http"], json!(here.to_string()), "{info}");
    assert_eq!(
        info["addresses"]["rtmp"],
        json!(format!("127.0.0.1:{}", server.port()))
    );
    assert_eq!(info["addresses"]["api"], Value::Null);
    let load = info["worker_load"].as_array().expect("worker_load");
    assert_eq!(load.len(), 2, "{info}");
    let held: u64 = load
        .iter()
        .map(|w| w["connections"].as_u64().unwrap())
        .sum();
    assert!(held >= 1, "this request's own connection: {info}");
    assert!(
        load.iter().all(|w| w["loop_iterations"].as_u64() > Some(0)),
        "{info}"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(info["time"].as_u64().unwrap().abs_diff(now) <= 2, "{info}");

    // The API on its own address, with a token.
    let api_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let api_arg = api_addr.to_string();
    let server = Server::start(1, &["--api", &api_arg, "--api-token", "c0nsole-t0ken"]);
    let on_http = http(server.http_addr(), "GET", "/", &[]);
    assert_eq!(on_http.status, 404, "the console is where the API is");
    assert_eq!(
        http(server.http_addr(), "GET", "/console/console.js", &[]).status,
        404
    );
    let page = http(api_addr, "GET", "/", &[]);
    assert_eq!(page.status, 200, "the page itself needs no token");
    assert_eq!(http(api_addr, "GET", "/api/server", &[]).status, 401);
    let info = Api {
        addr: api_addr,
        token: Some("c0nsole-t0ken".into()),
    }
    .get("/api/server");
    assert_eq!(info["addresses"]["api"], json!(api_arg));
    assert_eq!(
        info["addresses"]["http"],
        json!(server.http_addr().to_string())
    );
}

// ---------------------------------------------------------------------------------------
// The console in a browser
// ---------------------------------------------------------------------------------------

/// A JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// Shows `hash` (`#/clients`) in the page and waits until `ready` (a JS
/// expression) holds.
fn show(browser: &mut Browser, hash: &str, ready: &str) -> Value {
    browser
        .eval(&format!("location.hash = {}", js(hash)))
        .unwrap();
    browser
        .wait_until(ready, PAGE_LIMIT)
        .unwrap_or_else(|e| panic!("{hash}: {e}"))
}

fn screenshot(browser: &mut Browser, name: &str) {
    let path = artefact_dir().join(format!("{name}.png"));
    browser.screenshot(&path).expect("screenshot");
    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "{}: {size} bytes", path.display());
    eprintln!("screenshot: {}", path.display());
}

/// The viewport: `(width, height)` CSS pixels, a phone's when `mobile`.
fn viewport(browser: &mut Browser, width: u32, height: u32, mobile: bool) {
    browser
        .page_call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .expect("Emulation.setDeviceMetricsOverride");
}

/// The preview's video state.
const VIDEO_STATE: &str = "(() => { const v = document.querySelector('#preview video'); \
    const p = sluiceConsole.preview; \
    return { kind: p.kind, error: p.error, currentTime: v.currentTime, readyState: v.readyState, \
             width: v.videoWidth, height: v.videoHeight, \
             status: document.querySelector('#preview-status').textContent }; })()";

/// Waits until the preview plays `kind`: a frame, then `currentTime`
/// advancing by PLAY_SECS. Fails at once on a page error.
fn wait_preview_plays(browser: &mut Browser, kind: &str) -> Value {
    let first = browser
        .wait_until(
            &format!(
                "(() => {{ const s = {VIDEO_STATE}; \
                 return s.kind === {} && s.readyState >= 2 && s.width > 0 ? s : false; }})()",
                js(kind)
            ),
            PLAY_LIMIT,
        )
        .unwrap_or_else(|e| panic!("the {kind} preview has no picture: {e}"));
    let start = first["currentTime"].as_f64().unwrap();
    let state = browser
        .wait_until(
            &format!(
                "(() => {{ const s = {VIDEO_STATE}; \
                 return s.kind === {} && s.currentTime >= {} ? s : false; }})()",
                js(kind),
                start + PLAY_SECS
            ),
            PLAY_LIMIT,
        )
        .unwrap_or_else(|e| panic!("the {kind} preview does not advance from {start}: {e}"));
    eprintln!("preview {kind}: {first} -> {state}");
    assert_eq!(
        (state["width"].as_u64(), state["height"].as_u64()),
        (Some(320), Some(240))
    );
    state
}

/// Every view fits a phone's width: nothing wider than the screen.
fn fits(browser: &mut Browser, what: &str) {
    let widths = browser
        .eval("[document.documentElement.scrollWidth, window.innerWidth]")
        .unwrap();
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "{what}: the page is wider than the phone's screen ({widths})"
    );
}

const STREAM_CARD: &str = r#"article.stream[data-stream="live/cam"]"#;

/// The whole console against one server with the API on its own address
/// and a token: login, the stream list and its live numbers, the preview
/// over ws-flv and LL-HLS from the HTTP port, a kick, a phone's screen.
#[test]
fn console_lists_a_stream_plays_its_preview_and_kicks_a_client() {
    require_tool("chromium");
    require_tool("ffmpeg");
    let _one = one_browser_at_a_time();
    let token = "c0nsole-t0ken";
    let api_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let api_arg = api_addr.to_string();
    let server = Server::start(2, &["--api", &api_arg, "--api-token", token]);
    let api = Api {
        addr: api_addr,
        token: Some(token.into()),
    };
    let _publisher = publish_small_live(&server.url("live", "cam"), 120);
    wait_for(Duration::from_secs(15), "live/cam live", || {
        api.stream("live/cam").filter(|s| s["live"] == true)
    });
    let console = format!("http://{api_addr}/");
    let mut browser = Browser::launch();
    let started = Instant::now();

    // The token: asked for, a wrong one refused, the right one kept for the tab.
    browser.navigate(&console).expect("the console loads");
    browser
        .wait_until_ignoring_errors("!document.querySelector('#login').hidden", PAGE_LIMIT)
        .expect("the console asks for the token");
    let submit = |browser: &mut Browser, t: &str| {
        browser
            .eval(&format!(
                "document.querySelector('#token').value = {}; \
                 document.querySelector('#login-form').requestSubmit()",
                js(t)
            ))
            .unwrap();
    };
    submit(&mut browser, "wrong");
    browser
        .wait_until_ignoring_errors(
            "document.querySelector('#login-error').textContent.includes('refused')",
            PAGE_LIMIT,
        )
        .expect("a wrong token is refused");
    submit(&mut browser, token);
    browser
        .wait_until_ignoring_errors(
            &format!("!!document.querySelector({})", js(STREAM_CARD)),
            PAGE_LIMIT,
        )
        .expect("with the token the stream shows");
    assert_eq!(
        browser
            .eval("sessionStorage.getItem('sluice.apiToken')")
            .unwrap(),
        json!(token)
    );
    // From here on, no 401 and no error at all: the tab sends its token.
    browser.navigate(&console).unwrap();

    // The stream, its codecs and size, then its numbers changing.
    let first = browser
        .wait_until(
            &format!(
                "(() => {{ const f = {}; return f && f.video.includes('320×240') && \
                 f.bitrate !== '—' ? f : false; }})()",
                card_figures_js()
            ),
            PAGE_LIMIT,
        )
        .unwrap_or_else(|e| panic!("the stream's card: {e}"));
    eprintln!("stream card: {first}");
    assert!(
        first["video"]
            .as_str()
            .unwrap()
            .starts_with("H.264 320×240"),
        "{first}"
    );
    assert!(
        first["audio"]
            .as_str()
            .unwrap()
            .starts_with("AAC 44.1 kHz mono"),
        "{first}"
    );
    assert!(
        first["publisher"]
            .as_str()
            .unwrap()
            .contains("(rtmp, worker"),
        "{first}"
    );
    let later = browser
        .wait_until(
            &format!(
                "(() => {{ const f = {}; return f && f.bytes !== {} && f.uptime !== {} && f.points >= 3 ? f : false; }})()",
                card_figures_js(),
                js(first["bytes"].as_str().unwrap()),
                js(first["uptime"].as_str().unwrap())
            ),
            PAGE_LIMIT,
        )
        .unwrap_or_else(|e| panic!("the numbers do not change: {e}"));
    eprintln!("later: {later}");
    // The chart draws (bitrate and viewers lines: pixels that are not blank).
    browser
        .wait_until(
            &format!(
                "(() => {{ const c = document.querySelector({} + ' canvas'); \
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
                 let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n > 100 ? n : false; }})()",
                js(STREAM_CARD)
            ),
            PAGE_LIMIT,
        )
        .unwrap_or_else(|e| panic!("the chart draws nothing: {e}"));
    screenshot(&mut browser, "console-streams");

    // The stream page: the preview plays from the HTTP port (another
    // address than the console's) over ws-flv, then over LL-HLS.
    viewport(&mut browser, 1280, 800, false);
    show(
        &mut browser,
        "#/stream/live/cam",
        "document.querySelectorAll('#urls tr').length >= 5",
    );
    let urls = browser
        .eval("Object.fromEntries([...document.querySelectorAll('#urls tr')].map(r => [r.dataset.url, r.querySelector('code').textContent]))")
        .unwrap();
    let http_base = format!("http://{}", server.http_addr());
    assert_eq!(
        urls["http-flv"],
        json!(format!("{http_base}/live/cam.flv")),
        "{urls}"
    );
    assert_eq!(
        urls["ws-flv"],
        json!(format!("ws://{}/live/cam.flv", server.http_addr()))
    );
    assert_eq!(
        urls["hls"],
        json!(format!("{http_base}/live/cam/index.m3u8"))
    );
    assert_eq!(
        urls["rtmp"],
        json!(format!("rtmp://127.0.0.1:{}/live/cam", server.port()))
    );
    assert_eq!(
        urls["obs-server"],
        json!(format!("rtmp://127.0.0.1:{}/live", server.port()))
    );
    assert_eq!(urls["obs-key"], json!("cam"));
    wait_preview_plays(&mut browser, "ws-flv");
    let s = api.stream("live/cam").unwrap();
    assert_eq!(
        s["players"]["ws-flv"], 1,
        "the preview is a ws-flv player: {s}"
    );
    browser
        .wait_until(
            "document.querySelectorAll('#tracks tbody tr').length >= 2",
            PAGE_LIMIT,
        )
        .expect("the tracks and renditions");
    screenshot(&mut browser, "console-stream-ws-flv");

    let parts_before = s["hls"]["requests"]["parts"].as_u64().unwrap_or(0);
    browser
        .eval(
            "(() => { const k = document.querySelector('#preview-kind'); k.value = 'll-hls'; \
             k.dispatchEvent(new Event('change')); })()",
        )
        .unwrap();
    wait_preview_plays(&mut browser, "ll-hls");
    let s = api.stream("live/cam").unwrap();
    assert_eq!(
        s["players"]["ws-flv"], 0,
        "the ws-flv preview was stopped: {s}"
    );
    let parts = s["hls"]["requests"]["parts"].as_u64().unwrap_or(0);
    assert!(
        parts > parts_before + 3,
        "hls.js in low-latency mode asks for parts: {parts_before} -> {parts}; {s}"
    );
    let low_latency = browser
        .eval("sluiceConsole.preview.hls.config.lowLatencyMode")
        .unwrap();
    assert_eq!(low_latency, json!(true));
    screenshot(&mut browser, "console-stream-ll-hls");
    // The picture for docs/console.png, three quarters of the size.
    let docs = artefact_dir().join("console-docs.png");
    browser
        .page_call(
            "Page.captureScreenshot",
            json!({ "format": "png", "clip": { "x": 0, "y": 0, "width": 1280, "height": 800, "scale": 0.75 } }),
        )
        .and_then(|a| {
            let png = common::browser::base64_decode(a["data"].as_str().unwrap_or(""))
                .map_err(BrowserError::Cdp)?;
            fs::write(&docs, png).map_err(|e| BrowserError::Cdp(e.to_string()))
        })
        .expect("the docs screenshot");
    eprintln!("screenshot: {}", docs.display());

    // A kick: an HTTP-FLV player disappears from the list and its
    // connection is closed.
    let player = RawPlayer::start(server.http_addr(), "/live/cam.flv");
    let id = wait_for(Duration::from_secs(10), "the raw player listed", || {
        api.clients()
            .into_iter()
            .find(|c| c["address"] == json!(player.local.to_string()) && c["state"] == "playing")
            .map(|c| c["id"].as_u64().unwrap())
    });
    let row = js(&format!("#clients tr[data-client=\"{id}\"]"));
    show(
        &mut browser,
        "#/clients",
        &format!("!!document.querySelector({row})"),
    );
    assert!(player.bytes.load(Ordering::Relaxed) > 0);
    browser
        .eval(&format!(
            "document.querySelector({row} + ' button.kick').click()"
        ))
        .unwrap();
    browser
        .wait_until(&format!("!document.querySelector({row})"), PAGE_LIMIT)
        .expect("the kicked client leaves the list");
    assert!(
        !api.clients().iter().any(|c| c["id"] == json!(id)),
        "the API still lists {id}"
    );
    wait_closed(&player);
    screenshot(&mut browser, "console-clients");

    // The server page: per-worker load.
    let workers = show(
        &mut browser,
        "#/server",
        "(() => { const r = [...document.querySelectorAll('#workers tbody tr')]; \
         return r.length === 2 && r.every(t => t.children[2].textContent !== '—') ? r.length : false; })()",
    );
    assert_eq!(workers, json!(2));

    // A phone: every view fits its width.
    viewport(&mut browser, 390, 844, true);
    for (hash, ready, name) in [
        (
            "#/streams",
            format!("!!document.querySelector({})", js(STREAM_CARD)),
            "console-phone-streams",
        ),
        (
            "#/stream/live/cam",
            "document.querySelectorAll('#urls tr').length >= 5".to_string(),
            "console-phone-stream",
        ),
        (
            "#/clients",
            "!!document.querySelector('#clients tbody tr')".to_string(),
            "console-phone-clients",
        ),
        (
            "#/relays",
            "!!document.querySelector('#relay-form')".to_string(),
            "console-phone-relays",
        ),
        (
            "#/server",
            "document.querySelectorAll('#workers tbody tr').length === 2".to_string(),
            "console-phone-server",
        ),
    ] {
        show(&mut browser, hash, &ready);
        // A refresh or two, then measure.
        browser.pump(Duration::from_millis(1600)).unwrap();
        fits(&mut browser, hash);
        screenshot(&mut browser, name);
    }
    assert!(browser.errors().is_empty(), "{:?}", browser.errors());
    eprintln!("console test took {:?}", started.elapsed());
}

/// The figures of the stream's card, as shown (null while it is not there).
fn card_figures_js() -> String {
    format!(
        "(() => {{ const c = document.querySelector({}); if (!c) return null; \
         const f = (n) => c.querySelector('[data-field=\"' + n + '\"]').textContent; \
         return {{ video: f('video'), audio: f('audio'), bitrate: f('bitrate'), bytes: f('bytes-in'), \
                  uptime: f('uptime'), viewers: f('viewers'), publisher: f('publisher'), \
                  points: Number(c.querySelector('canvas').dataset.points) }}; }})()",
        js(STREAM_CARD)
    )
}

/// Waits (≤ 10 s) until the server has closed the player's connection.
#[track_caller]
fn wait_closed(player: &RawPlayer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !player.closed.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the kicked player's connection is still open"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Whatever the view, the page never holds a publish key, a play
/// signature or a relay's stream key: not in its text, not in its HTML, not
/// in its form fields, not in what it kept from the API.
#[test]
fn console_never_shows_keys_or_signatures() {
    require_tool("chromium");
    require_tool("ffmpeg");
    let _one = one_browser_at_a_time();
    let dir = TestDir::new();
    let config = dir.join("sluice.toml");
    fs::write(
        &config,
        "[app.live.publish]\nkeys = [\"pubKEY-SECRET-1234\"]\n\
         [app.live.play]\nsign = { secret = \"sign-secret-5678\" }\n",
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let server = Server::start(
        1,
        &[
            "-c",
            &config_arg,
            "--push",
            "live=rtmp://127.0.0.1:9/live/RELAYKEY-SECRET-9999",
        ],
    );
    let api = Api {
        addr: server.http_addr(),
        token: None,
    };
    let _publisher = publish_small_live(
        &format!("{}?key=pubKEY-SECRET-1234", server.url("live", "cam")),
        60,
    );
    wait_for(Duration::from_secs(15), "live/cam live", || {
        api.stream("live/cam").filter(|s| s["live"] == true)
    });
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let signature = sluice::auth::sign(
        sluice::auth::SignScheme::HmacSha256,
        "sign-secret-5678",
        "live",
        "cam",
        expires,
    );
    let player = RawPlayer::start(
        server.http_addr(),
        &format!("/live/cam.flv?sign={signature}&token=TOKSECRET"),
    );
    wait_for(Duration::from_secs(10), "the signed player plays", || {
        (player.bytes.load(Ordering::Relaxed) > 1000).then_some(())
    });
    let hash = signature.split_once('-').unwrap().1.to_string();
    let secrets = [
        "pubKEY-SECRET-1234",
        "KEY-SECRET",
        "sign-secret-5678",
        "TOKSECRET",
        hash.as_str(),
        "FORMKEY",
    ];

    let mut browser = Browser::launch();
    browser
        .navigate(&format!("http://{}/", server.http_addr()))
        .unwrap();
    // (Page errors are expected here: the preview has no signature to play
    // with, so every wait below ignores them.)
    let card = format!("!!document.querySelector({})", js(STREAM_CARD));
    let streams = check_page(&mut browser, "#/streams", &card, &secrets);
    assert!(streams.contains("live/cam"));
    let relays_line = browser
        .eval(&format!(
            "document.querySelector({} + ' [data-field=\"relays\"]').textContent",
            js(STREAM_CARD)
        ))
        .unwrap();
    assert!(
        relays_line
            .as_str()
            .unwrap()
            .contains("push to rtmp://127.0.0.1:9/live/RELA…"),
        "the push shows redacted: {relays_line}"
    );
    check_page(
        &mut browser,
        "#/stream/live/cam",
        "document.querySelectorAll('#urls tr').length >= 5",
        &secrets,
    );
    let clients = check_page(
        &mut browser,
        "#/clients",
        "document.querySelectorAll('#clients tbody tr').length >= 2",
        &secrets,
    );
    assert!(
        clients.contains(&player.local.to_string()),
        "the signed player is listed"
    );

    // A relay added through the console's form: the key typed in leaves
    // the field once it is sent, and shows redacted.
    show_ignoring(
        &mut browser,
        "#/relays",
        "!!document.querySelector('#relay-form')",
    );
    browser
        .eval(
            "(() => { const f = document.querySelector('#relay-form'); \
             f.querySelector('[name=scope]').value = 'live/cam'; \
             f.querySelector('[name=url]').value = 'rtmp://127.0.0.1:9/live/FORMKEY-SECRET-4321?sign=1-2'; \
             f.requestSubmit(); })()",
        )
        .unwrap();
    let two = "document.querySelectorAll('#relays article.relay').length === 2";
    show_ignoring(&mut browser, "#/relays", two);
    let relays = check_page(&mut browser, "#/relays", two, &secrets);
    assert!(
        relays.contains("rtmp://127.0.0.1:9/live/FORM…"),
        "the new relay, redacted"
    );
    check_page(
        &mut browser,
        "#/server",
        "!!document.querySelector('#workers tbody tr')",
        &secrets,
    );

    // Removing the relay added above: one click arms the button, the second
    // removes the rule.
    show_ignoring(&mut browser, "#/relays", two);
    let added = wait_for(Duration::from_secs(5), "the added rule", || {
        api.get("/api/relays")["relays"]
            .as_array()?
            .iter()
            .find(|r| r["source"] == "api")
            .and_then(|r| r["id"].as_u64())
    });
    let remove = format!(
        "(() => {{ const b = document.querySelector('#relays article[data-relay=\"{added}\"] button.danger'); \
         b.click(); return b.classList.contains('armed'); }})()"
    );
    assert_eq!(
        browser.eval(&remove).unwrap(),
        json!(true),
        "one click only arms it"
    );
    // A refresh (every 1.5 s) re-renders the button: it stays armed.
    browser.pump(Duration::from_millis(1800)).unwrap();
    assert_eq!(
        api.get("/api/relays")["relays"].as_array().unwrap().len(),
        2,
        "one click removes nothing"
    );
    browser.eval(&remove).unwrap();
    show_ignoring(
        &mut browser,
        "#/relays",
        "document.querySelectorAll('#relays article.relay').length === 1",
    );
    assert_eq!(
        api.get("/api/relays")["relays"].as_array().unwrap().len(),
        1
    );

    // The drain button, twice: the server shuts down (ffmpeg announced no
    // Reconnect capability, so nothing keeps it).
    show_ignoring(
        &mut browser,
        "#/server",
        "!!document.querySelector('#workers tbody tr')",
    );
    let drain = "[...document.querySelectorAll('button.danger')].find(b => b.textContent.startsWith('Drain') || b.classList.contains('armed')).click()";
    browser.eval(drain).unwrap();
    browser.eval(drain).unwrap();
    wait_for(
        Duration::from_secs(20),
        "the server gone after the drain",
        || {
            TcpStream::connect_timeout(&server.http_addr(), Duration::from_millis(200))
                .is_err()
                .then_some(())
        },
    );
    assert!(
        server.log().contains("api: drain requested"),
        "{}",
        common::tail(&server.log(), 20)
    );
}

/// Like `show`, without failing on page errors.
fn show_ignoring(browser: &mut Browser, hash: &str, ready: &str) -> Value {
    browser
        .eval(&format!("location.hash = {}", js(hash)))
        .unwrap();
    browser
        .wait_until_ignoring_errors(ready, PAGE_LIMIT)
        .unwrap_or_else(|e| panic!("{hash}: {e}"))
}

/// Shows `hash`, lets it refresh, and checks that none of `secrets` is in
/// the page's text, HTML, form values or what it kept of the API's answers;
/// returns all of that.
fn check_page(browser: &mut Browser, hash: &str, ready: &str, secrets: &[&str]) -> String {
    const EVERYTHING: &str = "(() => { const s = sluiceConsole.state; \
        return [document.documentElement.outerHTML, document.body.innerText, \
                ...[...document.querySelectorAll('input, textarea, select')].map(e => e.value), \
                JSON.stringify({ server: s.server, streams: s.streams, clients: s.clients, relays: s.relays })].join('\\n'); })()";
    show_ignoring(browser, hash, ready);
    browser.pump(Duration::from_millis(1600)).unwrap();
    let page = browser.eval_within(EVERYTHING, PAGE_LIMIT).unwrap();
    let page = page.as_str().unwrap_or("").to_string();
    assert!(page.len() > 1000, "{hash}: {page}");
    for secret in secrets {
        assert!(!page.contains(secret), "{hash} shows {secret:?}");
    }
    page
}
