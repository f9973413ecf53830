//! The web console: one page, its stylesheet and script (`src/web/console/`)
//! and the two vendored players (`src/web/vendor/`), compiled into the
//! binary with `include_bytes!`, so there is nothing to install or build to
//! use it (docs/console.md).
//!
//! | path | file |
//! | --- | --- |
//! | `/` | `console/index.html` |
//! | `/console/console.css`, `/console/console.js` | the console's own, plain and readable |
//! | `/console/vendor/mpegts.js`, `/console/vendor/hls.min.js` | the players, byte for byte as npm publishes them |
//! | `/console/vendor/mpegts.js.LICENSE`, `/console/vendor/hls.js.LICENSE` | their licences |
//! | `/console/vendor/mpegts.js.LICENSE.txt` | the licence of code bundled in mpegts.js (its first line names it) |
//!
//! The files are served exactly where the API answers and to whom it
//! answers ([`api::admin_access`]): on `--api ADDR` when it is set, else on
//! the HTTP port. They hold no data, so the one refusal that does not apply
//! to them is the missing bearer token: the page itself asks for the token
//! and sends it with every API call it makes.
//!
//! Each answer has an ETag (a SHA-256 of the file, computed once) and
//! `Cache-Control: no-cache`: a browser keeps the files and revalidates
//! them (`304`), so an upgraded binary is picked up at once. The page gets
//! a Content-Security-Policy (its own scripts only, no inline script, no
//! framing), which also keeps the kick and drain buttons out of other
//! sites' frames.

use super::api;
use super::http::{self, Request};
use super::shared::ListenerKind;
use crate::config::Config;
use crate::wire::WireForm;
use bytes::Bytes;
use std::net::IpAddr;
use std::sync::OnceLock;

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Every file the console serves.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: include_bytes!("../web/console/index.html"),
    },
    Asset {
        path: "/console/console.css",
        content_type: CSS,
        body: include_bytes!("../web/console/console.css"),
    },
    Asset {
        path: "/console/console.js",
        content_type: JS,
        body: include_bytes!("../web/console/console.js"),
    },
    Asset {
        path: "/console/vendor/mpegts.js",
        content_type: JS,
        body: include_bytes!("../web/vendor/mpegts.js/mpegts.js"),
    },
    Asset {
        path: "/console/vendor/mpegts.js.LICENSE",
        content_type: TEXT,
        body: include_bytes!("../web/vendor/mpegts.js/LICENSE"),
    },
    Asset {
        // mpegts.js names it in its first line: the licence of the
        // es6-promise code bundled in it.
        path: "/console/vendor/mpegts.js.LICENSE.txt",
        content_type: TEXT,
        body: include_bytes!("../web/vendor/mpegts.js/mpegts.js.LICENSE.txt"),
    },
    Asset {
        path: "/console/vendor/hls.min.js",
        content_type: JS,
        body: include_bytes!("../web/vendor/hls.js/hls.min.js"),
    },
    Asset {
        path: "/console/vendor/hls.js.LICENSE",
        content_type: TEXT,
        body: include_bytes!("../web/vendor/hls.js/LICENSE"),
    },
];

/// What the page may load and connect to. Players fetch from the HTTP port,
/// which may be another origin than the API's (and ws-flv is a WebSocket);
/// MSE plays from `blob:` URLs and hls.js runs its demuxer in a `blob:`
/// worker.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; media-src 'self' blob:; \
     worker-src 'self' blob:; connect-src 'self' http: https: ws: wss:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// True for the paths of the console's files (exactly those: a stream of
/// an application named `console` still plays at `/console/NAME.flv`).
pub(super) fn is_console_path(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The ETag of each asset, by position in [`ASSETS`]: a strong validator,
/// 16 hex digits of the file's SHA-256.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = ring::digest::digest(&ring::digest::SHA256, a.body);
                let hex: String = digest.as_ref()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!("\"{hex}\"")
            })
            .collect()
    })
}

/// True when `If-None-Match` (a list of entity tags, or `*`) names `etag`
/// (weak comparison, RFC 9110 13.1.2).
fn not_modified(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// The files the console serves, for the docs and tests: (path, type, size).
#[cfg(test)]
fn listing() -> impl Iterator<Item = (&'static str, &'static str, usize)> {
    ASSETS
        .iter()
        .map(|a| (a.path, a.content_type, a.body.len()))
}

/// The answer to a request for a console path (see [`is_console_path`]):
/// the file, a `304`, or the API's refusal (as JSON, like the API's own).
pub(super) fn respond(
    config: &Config,
    listener: ListenerKind,
    peer: IpAddr,
    req: &Request,
    cors: &str,
) -> WireForm {
    let keep = req.keep_alive();
    let head_only = req.method == "HEAD";
    let plain = |status: u16, extra: &[(&str, &str)], body: &str| {
        let mut headers = vec![("Access-Control-Allow-Origin", cors)];
        headers.extend_from_slice(extra);
        WireForm::new(vec![http::response(
            status,
            TEXT,
            &headers,
            body.as_bytes(),
            keep,
            head_only,
        )])
    };
    match api::admin_access(config, listener, peer, req) {
        Ok(()) => {}
        // The page asks for the token itself.
        Err(refusal) if refusal.ask_token => {}
        Err(refusal) => {
            let body = serde_json::json!({ "error": refusal.why }).to_string();
            let resp = http::response(
                refusal.status,
                "application/json",
                &[("Access-Control-Allow-Origin", cors)],
                body.as_bytes(),
                keep,
                head_only,
            );
            return WireForm::new(vec![resp]);
        }
    }
    let Some(index) = ASSETS.iter().position(|a| a.path == req.path) else {
        return plain(404, &[], "not found\n");
    };
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return plain(405, &[("Allow", "GET, HEAD, OPTIONS")], "");
    }
    let asset = &ASSETS[index];
    let etag = etags()[index].as_str();
    let mut headers = vec![
        ("Content-Type", asset.content_type),
        ("Cache-Control", "no-cache"),
        ("ETag", etag),
        ("X-Content-Type-Options", "nosniff"),
        ("Access-Control-Allow-Origin", cors),
    ];
    if asset.content_type == HTML {
        headers.extend([
            ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
        ]);
    }
    if req
        .header("if-none-match")
        .is_some_and(|v| not_modified(v, etag))
    {
        // Content-Type is not repeated on a 304 (RFC 9110 15.4.5 lists
        // the validators and caching headers).
        headers.remove(0);
        let head = http::response_head(304, &headers, None, keep);
        return WireForm::new(vec![head.freeze()]);
    }
    let head = http::response_head(200, &headers, Some(asset.body.len()), keep);
    if head_only {
        WireForm::new(vec![head.freeze()])
    } else {
        WireForm::new(vec![head.freeze(), Bytes::from_static(asset.body)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::http::{parse_request, Parsed};

    fn request(text: &str) -> Request {
        match parse_request(text.as_bytes()) {
            Parsed::Complete(r, _) => r,
            other => panic!("{text:?}: {other:?}"),
        }
    }

    fn answer(config: &Config, listener: ListenerKind, text: &str) -> String {
        let req = request(text);
        let form = respond(config, listener, [127, 0, 0, 1].into(), &req, "*");
        let bytes: Vec<u8> = form.pieces().iter().flat_map(|p| p.to_vec()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
        let head = response.split("\r\n\r\n").next().unwrap_or("");
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[test]
    fn every_asset_is_served_with_its_type_and_a_validator() {
        let config = Config::default();
        for (path, content_type, size) in listing() {
            assert!(size > 0, "{path} is empty");
            assert!(is_console_path(path), "{path}");
            let resp = answer(
                &config,
                ListenerKind::Http,
                &format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n"),
            );
            assert!(
                resp.starts_with("HTTP/1.1 200 OK\r\n"),
                "{path}: {resp:.200}"
            );
            assert_eq!(header(&resp, "content-type"), Some(content_type));
            assert_eq!(header(&resp, "cache-control"), Some("no-cache"));
            assert_eq!(header(&resp, "content-length"), Some(&*size.to_string()));
            let etag = header(&resp, "etag").expect("an ETag");
            assert!(etag.len() == 18 && etag.starts_with('"') && etag.ends_with('"'));
            assert_eq!(resp.split_once("\r\n\r\n").unwrap().1.len(), size);
        }
        // Different files, different tags.
        let mut tags = etags().to_vec();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), ASSETS.len());
    }

    #[test]
    fn a_known_etag_gets_304_without_a_body() {
        let config = Config::default();
        let first = answer(
            &config,
            ListenerKind::Http,
            "GET /console/console.js HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        let etag = header(&first, "etag").unwrap().to_owned();
        for list in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"other\", {etag}"),
            "*".to_owned(),
        ] {
            let resp = answer(
                &config,
                ListenerKind::Http,
                &format!(
                    "GET /console/console.js HTTP/1.1\r\nHost: h\r\nIf-None-Match: {list}\r\n\r\n"
                ),
            );
            assert!(
                resp.starts_with("HTTP/1.1 304 Not Modified\r\n"),
                "{list}: {resp}"
            );
            assert!(resp.ends_with("\r\n\r\n"), "a 304 has no body: {resp}");
            assert_eq!(header(&resp, "etag"), Some(etag.as_str()));
            assert_eq!(header(&resp, "content-length"), None);
            assert_eq!(header(&resp, "connection"), Some("keep-alive"));
        }
        let stale = answer(
            &config,
            ListenerKind::Http,
            "GET /console/console.js HTTP/1.1\r\nHost: h\r\nIf-None-Match: \"0000\"\r\n\r\n",
        );
        assert!(stale.starts_with("HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn the_page_has_its_security_headers_and_head_has_no_body() {
        let config = Config::default();
        let resp = answer(
            &config,
            ListenerKind::Http,
            "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
        );
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\n"), "HEAD: no body");
        let csp = header(&resp, "content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(header(&resp, "x-frame-options"), Some("DENY"));
        assert_eq!(header(&resp, "x-content-type-options"), Some("nosniff"));
    }

    #[test]
    fn only_the_files_are_console_paths() {
        for path in ["/", "/console/console.js", "/console/vendor/hls.min.js"] {
            assert!(is_console_path(path), "{path}");
        }
        // Anything else goes on to the players and HLS (an application
        // may be named `console`), or to the 404 of the HTTP port.
        for path in [
            "/console/",
            "/console/nothing.js",
            "/console/cam.flv",
            "/console/cam/index.m3u8",
            "/console/../Cargo.toml",
            "/index.html",
            "",
        ] {
            assert!(!is_console_path(path), "{path}");
        }
    }

    #[test]
    fn unknown_files_and_other_methods_are_refused() {
        let config = Config::default();
        for (request, status) in [
            ("GET /console/nothing.js HTTP/1.1\r\n\r\n", "404"),
            ("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405"),
            ("DELETE /console/console.js HTTP/1.1\r\n\r\n", "405"),
        ] {
            let resp = answer(&config, ListenerKind::Http, request);
            assert!(
                resp.starts_with(&format!("HTTP/1.1 {status} ")),
                "{request:?}: {resp}"
            );
        }
    }

    #[test]
    fn the_console_is_where_the_api_is() {
        let config = Config {
            api_addr: Some("127.0.0.1:9".parse().unwrap()),
            api_token: Some("t0ken".into()),
            ..Config::default()
        };
        // Not on the public HTTP port when the API has its own address.
        let resp = answer(&config, ListenerKind::Http, "GET / HTTP/1.1\r\n\r\n");
        assert!(resp.starts_with("HTTP/1.1 404 "), "{resp}");
        assert!(resp.contains("the API is on its own address"), "{resp}");
        // On the API's address, without the token: the page asks for it.
        let resp = answer(&config, ListenerKind::Api, "GET / HTTP/1.1\r\n\r\n");
        assert!(resp.starts_with("HTTP/1.1 200 "), "{resp:.100}");
    }
}
