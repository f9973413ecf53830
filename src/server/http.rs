//! HTTP/1.1 requests (parsed by httparse, bounded in bytes and header
//! count), responses, and the WebSocket pieces ws-flv needs (RFC 6455:
//! the upgrade's accept key, the server's binary frames, the client's
//! ping/pong/close frames). No I/O here: the worker feeds bytes and queues
//! what these functions return.
//!
//! # One body-length rule (RFC 9112 6.3)
//!
//! A request's body is exactly as long as its `Content-Length`, or empty
//! without one. Everything a proxy in front of Sluice might read
//! differently is refused with 400 and a close, so that no byte can be a
//! body to one and a request to the other (request smuggling,
//! docs/hardening.md case 38):
//!
//! * `Transfer-Encoding` with `Content-Length` (RFC 9112 6.1: "ought to be
//!   handled as an error"); `Transfer-Encoding` alone is 501 (no chunked
//!   request bodies here);
//! * a `Content-Length` that is not 1*DIGIT: a sign (`+5`), a list (`5, 5`),
//!   more than one space before it (`Content-Length:  5`), more than 19
//!   digits;
//! * two `Content-Length` fields with different values (the same value
//!   twice is the one length, RFC 9110 8.6).
//!
//! # The WebSocket handshake and framing (RFC 6455 4.2.1, 5.2)
//!
//! A request that asks for `Upgrade: websocket` is a WebSocket handshake or
//! an error, never silently a plain HTTP-FLV response: one
//! `Sec-WebSocket-Key` that is base64 of 16 bytes (else 400), version 13
//! (else 426 with `Sec-WebSocket-Version: 13`), `Connection: Upgrade`,
//! method GET and HTTP/1.1. Client frames must be masked, with the reserved
//! bits clear and a defined opcode; a violation is answered with a close
//! frame, status 1002 (1009 for a frame over [`MAX_WS_CLIENT_MESSAGE`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt::Write as _;

/// Most bytes of request line and headers. Browsers send 1-2 KiB; 16 KiB
/// is what nginx allows by default (large_client_header_buffers 4 x 8k / 2).
pub const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Most request headers.
pub const MAX_HEADERS: usize = 64;
/// Largest request body accepted (read and discarded, or given to the API).
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Largest WebSocket message a ws-flv client may send (it only needs pings
/// and close; control frames are at most 125 bytes).
pub const MAX_WS_CLIENT_MESSAGE: usize = 4096;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoding not applied (names are validated as-is).
    pub path: String,
    /// What followed `?`, if anything.
    pub query: String,
    /// HTTP/1.x minor version.
    pub minor_version: u8,
    /// Headers with lower-cased names, in order.
    pub headers: Vec<(String, String)>,
    /// Content-Length (0 when absent).
    pub body_len: usize,
}

impl Request {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when the client wants the connection kept open after the reply.
    pub fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        if self.minor_version == 0 {
            conn.contains("keep-alive")
        } else {
            !conn.contains("close")
        }
    }

    /// Every header named `name` (lower case), in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// True when a header named `name` lists `token` (comma-separated,
    /// case-insensitive), as `Connection: keep-alive, Upgrade` does.
    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers_named(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The WebSocket handshake this request asks for (RFC 6455 4.2.1):
    /// `Ok(None)` when it asks for none (no `Upgrade: websocket`),
    /// `Ok(Some(key))` for a valid one, and the status to refuse it with
    /// otherwise: 426 for a version other than 13 (the response names 13),
    /// 400 for the rest (a missing, malformed or repeated key, no
    /// `Connection: Upgrade`, not a GET over HTTP/1.1).
    pub fn websocket(&self) -> Result<Option<&str>, (u16, &'static str)> {
        if !self.has_token("upgrade", "websocket") {
            return Ok(None);
        }
        if self.method != "GET" || self.minor_version < 1 {
            return Err((400, "a WebSocket handshake is a GET over HTTP/1.1"));
        }
        if !self.has_token("connection", "upgrade") {
            return Err((400, "a WebSocket handshake needs Connection: Upgrade"));
        }
        let mut versions = self.headers_named("sec-websocket-version");
        if versions.next() != Some("13") || versions.next().is_some() {
            return Err((426, "WebSocket version 13 only"));
        }
        let mut keys = self.headers_named("sec-websocket-key");
        match (keys.next(), keys.next()) {
            (Some(key), None) if valid_websocket_key(key) => Ok(Some(key)),
            (None, _) => Err((400, "no Sec-WebSocket-Key")),
            (Some(_), Some(_)) => Err((400, "more than one Sec-WebSocket-Key")),
            (Some(_), None) => Err((400, "Sec-WebSocket-Key is not base64 of 16 bytes")),
        }
    }
}

/// RFC 6455 4.1: the key is 16 random bytes, base64-encoded: 22 characters
/// of the alphabet, then `==`.
fn valid_websocket_key(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// The outcome of parsing what has arrived of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete head; `usize` bytes of the buffer were the head.
    Complete(Request, usize),
    /// Need more bytes.
    Partial,
    /// Refuse with this status and reason, then close.
    Error(u16, &'static str),
}

/// Longest `Content-Length` value read: 19 digits always fit a `u64`.
const MAX_CONTENT_LENGTH_DIGITS: usize = 19;

/// Parses a request head from the start of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_REQUEST_HEAD {
                Parsed::Error(431, "request head too large")
            } else {
                Parsed::Partial
            }
        }
        Ok(httparse::Status::Complete(n)) => {
            if n > MAX_REQUEST_HEAD {
                return Parsed::Error(431, "request head too large");
            }
            let body_len = match body_length(buf, req.headers) {
                Ok(len) => len,
                Err(e) => return e,
            };
            let raw_path = req.path.unwrap_or("/");
            let (path, query) = raw_path.split_once('?').unwrap_or((raw_path, ""));
            let headers: Vec<(String, String)> = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).trim().to_owned(),
                    )
                })
                .collect();
            Parsed::Complete(
                Request {
                    method: req.method.unwrap_or("").to_owned(),
                    path: path.to_owned(),
                    query: query.to_owned(),
                    minor_version: req.version.unwrap_or(1),
                    headers,
                    body_len,
                },
                n,
            )
        }
        Err(httparse::Error::TooManyHeaders) => Parsed::Error(431, "too many headers"),
        Err(_) => Parsed::Error(400, "malformed request"),
    }
}

/// The body length of a request (see the module documentation: one rule).
/// `buf` is the buffer `headers` were parsed from: the whitespace before a
/// value is read from it, since httparse trims it.
fn body_length(buf: &[u8], headers: &[httparse::Header<'_>]) -> Result<usize, Parsed> {
    let chunked = headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("transfer-encoding"));
    let mut length: Option<u64> = None;
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        if chunked {
            return Err(Parsed::Error(
                400,
                "Transfer-Encoding and Content-Length together",
            ));
        }
        let v = h.value;
        let digits_only = !v.is_empty()
            && v.len() <= MAX_CONTENT_LENGTH_DIGITS
            && v.iter().all(u8::is_ascii_digit);
        if !digits_only || space_before(buf, h) > 1 {
            return Err(Parsed::Error(400, "malformed Content-Length"));
        }
        let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return Err(Parsed::Error(400, "differing Content-Length headers"));
        }
        length = Some(n);
    }
    if chunked {
        return Err(Parsed::Error(
            501,
            "chunked request bodies are not supported",
        ));
    }
    match length {
        None => Ok(0),
        Some(n) if n <= MAX_REQUEST_BODY as u64 => Ok(n as usize),
        Some(_) => Err(Parsed::Error(413, "request body too large")),
    }
}

/// Bytes of whitespace between a header's colon and its value in `buf`
/// (httparse's slices point into it). 0 when they cannot be located.
fn space_before(buf: &[u8], h: &httparse::Header<'_>) -> usize {
    let base = buf.as_ptr() as usize;
    let name_end = h.name.as_ptr() as usize + h.name.len();
    let value_start = h.value.as_ptr() as usize;
    if name_end < base || value_start > base + buf.len() || value_start <= name_end {
        return 0;
    }
    // The colon directly follows the name (httparse allows no space there).
    (value_start - name_end).saturating_sub(1)
}

/// The reason phrase for the statuses Sluice sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        416 => "Range Not Satisfiable",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

/// A response head; `content_length` None means the body runs to the close.
pub fn response_head(
    status: u16,
    headers: &[(&str, &str)],
    content_length: Option<usize>,
    keep_alive: bool,
) -> BytesMut {
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "HTTP/1.1 {status} {}\r\nServer: sluice\r\n",
        reason(status)
    );
    for (k, v) in headers {
        let _ = write!(s, "{k}: {v}\r\n");
    }
    // RFC 9110 8.6: a 1xx or 204 response has no body and MUST NOT carry
    // Content-Length; it still ends where its head ends. A 304 has no body
    // either (its Content-Length would be the 200's, 15.4.5): none is sent.
    let bodiless = matches!(status, 101 | 204 | 304);
    if let Some(n) = content_length.filter(|_| !bodiless) {
        let _ = write!(s, "Content-Length: {n}\r\n");
    }
    if status != 101 {
        s.push_str(if keep_alive && (content_length.is_some() || bodiless) {
            "Connection: keep-alive\r\n"
        } else {
            "Connection: close\r\n"
        });
    }
    s.push_str("\r\n");
    BytesMut::from(s.as_bytes())
}

/// A complete response with a body.
pub fn response(
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> Bytes {
    let mut headers = vec![("Content-Type", content_type)];
    headers.extend_from_slice(extra);
    let mut b = response_head(status, &headers, Some(body.len()), keep_alive);
    if !head_only {
        b.extend_from_slice(body);
    }
    b.freeze()
}

/// Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &str) -> String {
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.trim().as_bytes());
    ctx.update(GUID.as_bytes());
    base64(ctx.finish().as_ref())
}

/// Standard base64 with padding.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What a ws-flv client sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    Ping(Bytes),
    Pong,
    Close,
    /// Text, binary or continuation data: ignored by a ws-flv server.
    Data,
}

/// A WebSocket protocol violation by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    Unmasked,
    TooLarge(u64),
    BadControlFrame,
    /// RSV1-3 set with no extension negotiated (RFC 6455 5.2).
    ReservedBits(u8),
    /// Opcodes 3-7 and 0xB-0xF are reserved (RFC 6455 5.2).
    ReservedOpcode(u8),
}

impl WsError {
    /// The close status to send the client before closing (RFC 6455 7.4.1):
    /// 1009 for a message too big to process, 1002 for the rest.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::TooLarge(_) => 1009,
            _ => 1002,
        }
    }
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WsError::Unmasked => write!(f, "client WebSocket frame not masked"),
            WsError::TooLarge(n) => write!(
                f,
                "client WebSocket frame of {n} bytes (limit {MAX_WS_CLIENT_MESSAGE})"
            ),
            WsError::BadControlFrame => {
                write!(
                    f,
                    "fragmented, oversized or malformed WebSocket control frame"
                )
            }
            WsError::ReservedBits(b) => {
                write!(f, "WebSocket frame with reserved bits {b:#05b} set")
            }
            WsError::ReservedOpcode(op) => {
                write!(f, "WebSocket frame with reserved opcode {op:#x}")
            }
        }
    }
}

/// Decodes one client frame from `buf` (`Ok(None)`: need more bytes).
/// Nothing is consumed until a whole frame is there; a frame's size is
/// checked before its body is waited for.
pub fn decode_ws_frame(buf: &mut BytesMut) -> Result<Option<WsFrame>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x07;
    let opcode = b0 & 0x0F;
    if rsv != 0 {
        return Err(WsError::ReservedBits(rsv));
    }
    if matches!(opcode, 0x3..=0x7 | 0xB..=0xF) {
        return Err(WsError::ReservedOpcode(opcode));
    }
    if b1 & 0x80 == 0 {
        return Err(WsError::Unmasked);
    }
    let (len, mut at) = match b1 & 0x7F {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut l = [0u8; 8];
            l.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(l), 10)
        }
        126 | 127 => return Ok(None),
        n => (u64::from(n), 2),
    };
    if len > MAX_WS_CLIENT_MESSAGE as u64 {
        return Err(WsError::TooLarge(len));
    }
    let control = opcode & 0x08 != 0;
    // A close frame's body is empty or a 2-byte status and a reason.
    if control && (!fin || len > 125 || (opcode == 0x8 && len == 1)) {
        return Err(WsError::BadControlFrame);
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    buf.advance(at);
    let mut payload = buf.split_to(len);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Ok(Some(match opcode {
        0x8 => WsFrame::Close,
        0x9 => WsFrame::Ping(payload.freeze()),
        0xA => WsFrame::Pong,
        _ => WsFrame::Data,
    }))
}

/// A server control frame (pong or close) with `payload` (at most 125 bytes).
pub fn ws_control(opcode: u8, payload: &[u8]) -> Bytes {
    let payload = &payload[..payload.len().min(125)];
    let mut b = BytesMut::with_capacity(2 + payload.len());
    b.put_u8(0x80 | opcode);
    b.put_u8(payload.len() as u8);
    b.put_slice(payload);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_with_query_and_headers() {
        let raw =
            b"GET /live/cam.flv?wait=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\nrest";
        match parse_request(raw) {
            Parsed::Complete(r, n) => {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str(), r.query.as_str()),
                    ("GET", "/live/cam.flv", "wait=1")
                );
                assert_eq!(r.header("host"), Some("x"));
                assert!(r.keep_alive());
                assert_eq!(&raw[n..], b"rest");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_head_needs_more_until_the_limit() {
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        );
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_REQUEST_HEAD + 10, b'a');
        assert_eq!(
            parse_request(&big),
            Parsed::Error(431, "request head too large")
        );
    }

    #[test]
    fn refuses_too_many_headers_and_garbage() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            raw.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&raw), Parsed::Error(431, "too many headers"));
        assert!(matches!(
            parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"),
            Parsed::Error(400, _)
        ));
    }

    fn status_of(raw: &[u8]) -> u16 {
        match parse_request(raw) {
            Parsed::Complete(..) => 200,
            Parsed::Partial => 0,
            Parsed::Error(status, _) => status,
        }
    }

    /// docs/hardening.md case 38: one body-length rule; anything a proxy
    /// might read another way is 400.
    #[test]
    fn content_length_is_one_rule() {
        let with = |h: &str| format!("POST /api/relays HTTP/1.1\r\nHost: x\r\n{h}\r\n\r\n");
        for ok in [
            "Content-Length: 5",
            "Content-Length:5",
            "Content-Length: 005",
            "Content-Length: 5\r\nContent-Length: 5",
        ] {
            assert_eq!(status_of(with(ok).as_bytes()), 200, "{ok:?}");
        }
        for bad in [
            "Content-Length: 5\r\nContent-Length: 6",
            "Content-Length: +5",
            "Content-Length: -5",
            "Content-Length:  5",
            "Content-Length: 5, 5",
            "Content-Length: 5 5",
            "Content-Length: 0x5",
            "Content-Length: ",
            "Content-Length: 99999999999999999999999",
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nContent-Length: 5",
        ] {
            assert_eq!(status_of(with(bad).as_bytes()), 400, "{bad:?}");
        }
        assert_eq!(
            status_of(with("Transfer-Encoding: chunked").as_bytes()),
            501
        );
        assert_eq!(status_of(with("Content-Length: 65537").as_bytes()), 413);
        match parse_request(with("Content-Length: 7").as_bytes()) {
            Parsed::Complete(r, _) => assert_eq!(r.body_len, 7),
            other => panic!("{other:?}"),
        }
    }

    fn upgrade(extra: &str) -> Request {
        let raw = format!(
            "GET /live/x.flv HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{extra}\r\n"
        );
        match parse_request(raw.as_bytes()) {
            Parsed::Complete(r, _) => r,
            other => panic!("{other:?}"),
        }
    }

    /// docs/hardening.md case 45: the handshake by RFC 6455 4.2.1.
    #[test]
    fn websocket_handshake_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let good = upgrade(&format!(
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
        ));
        assert_eq!(good.websocket(), Ok(Some(key)));
        let plain = match parse_request(b"GET /live/x.flv HTTP/1.1\r\nHost: x\r\n\r\n") {
            Parsed::Complete(r, _) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(plain.websocket(), Ok(None));
        let refused = |extra: String| upgrade(&extra).websocket().map(|_| ()).map_err(|e| e.0);
        assert_eq!(
            refused(format!(
                "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {key}\r\n"
            )),
            Err(426)
        );
        assert_eq!(refused(format!("Sec-WebSocket-Key: {key}\r\n")), Err(426));
        let long = "A".repeat(10_000);
        for bad_key in ["", "abc", long.as_str(), "dGhlIHNhbXBsZSBub25jZQ=!"] {
            assert_eq!(
                refused(format!(
                    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {bad_key}\r\n"
                )),
                Err(400),
                "{bad_key:?}"
            );
        }
        assert_eq!(
            refused(format!(
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Key: {key}\r\n"
            )),
            Err(400),
            "a repeated key"
        );
        assert_eq!(
            refused("Sec-WebSocket-Version: 13\r\n".into()),
            Err(400),
            "no key"
        );
    }

    fn masked(b0: u8, payload: &[u8]) -> BytesMut {
        let mask = [9u8, 8, 7, 6];
        let mut raw = vec![b0, 0x80 | payload.len() as u8];
        raw.extend_from_slice(&mask);
        raw.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        BytesMut::from(&raw[..])
    }

    /// docs/hardening.md case 45: reserved bits and opcodes fail the
    /// connection with 1002.
    #[test]
    fn reserved_bits_and_opcodes_are_protocol_errors() {
        for rsv in [0x40u8, 0x20, 0x10] {
            let e = decode_ws_frame(&mut masked(0x80 | rsv | 0x2, b"x")).unwrap_err();
            assert_eq!(
                (e.clone(), e.close_code()),
                (WsError::ReservedBits(rsv >> 4), 1002)
            );
        }
        for op in [0x3u8, 0x7, 0xB, 0xF] {
            let e = decode_ws_frame(&mut masked(0x80 | op, b"")).unwrap_err();
            assert_eq!(
                (e.clone(), e.close_code()),
                (WsError::ReservedOpcode(op), 1002)
            );
        }
        let e = decode_ws_frame(&mut masked(0x88, b"x")).unwrap_err();
        assert_eq!(e, WsError::BadControlFrame, "a close frame of 1 byte");
        assert_eq!(WsError::TooLarge(1 << 20).close_code(), 1009);
        assert_eq!(
            decode_ws_frame(&mut masked(0x82, b"data")),
            Ok(Some(WsFrame::Data))
        );
    }

    #[test]
    fn no_content_has_no_content_length_and_keeps_alive() {
        let head = response(204, "text/plain", &[], b"", true, true);
        let head = std::str::from_utf8(&head).unwrap();
        assert!(head.starts_with("HTTP/1.1 204 No Content\r\n"), "{head}");
        assert!(!head.contains("Content-Length"), "{head}");
        assert!(head.contains("Connection: keep-alive\r\n"), "{head}");
        let ok = response(200, "text/plain", &[], b"hi", true, false);
        assert!(std::str::from_utf8(&ok)
            .unwrap()
            .contains("Content-Length: 2\r\n"));
    }

    #[test]
    fn websocket_accept_matches_rfc_6455_example() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
    }

    #[test]
    fn decodes_a_masked_ping_and_refuses_unmasked() {
        let mask = [1u8, 2, 3, 4];
        let mut raw = vec![0x89, 0x80 | 3];
        raw.extend_from_slice(&mask);
        raw.extend(b"abc".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        let mut buf = BytesMut::from(&raw[..]);
        assert_eq!(
            decode_ws_frame(&mut buf),
            Ok(Some(WsFrame::Ping(Bytes::from_static(b"abc"))))
        );
        assert!(buf.is_empty());
        let mut unmasked = BytesMut::from(&[0x89u8, 0x00][..]);
        assert_eq!(decode_ws_frame(&mut unmasked), Err(WsError::Unmasked));
    }

    #[test]
    fn refuses_oversized_client_frames_before_buffering() {
        let mut buf = BytesMut::from(&[0x82u8, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0][..]);
        assert!(matches!(
            decode_ws_frame(&mut buf),
            Err(WsError::TooLarge(_))
        ));
    }
}
