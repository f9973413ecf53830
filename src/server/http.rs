//! HTTP/1.1 requests (parsed by httparse, bounded in bytes and header
//! count), responses, and the WebSocket pieces ws-flv needs (RFC 6455:
//! the upgrade's accept key, the server's binary frames, the client's
//! ping/pong/close frames). No I/O here: the worker feeds bytes and queues
//! what these functions return.

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

    /// The Sec-WebSocket-Key of a valid WebSocket upgrade request.
    pub fn websocket_key(&self) -> Option<&str> {
        let upgrade = self.header("upgrade")?.eq_ignore_ascii_case("websocket");
        let connection = self
            .header("connection")?
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        let version = self.header("sec-websocket-version")? == "13";
        (upgrade && connection && version && self.method == "GET")
            .then(|| self.header("sec-websocket-key"))
            .flatten()
    }
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
            let mut r = Request {
                method: req.method.unwrap_or("").to_owned(),
                path: path.to_owned(),
                query: query.to_owned(),
                minor_version: req.version.unwrap_or(1),
                headers,
                body_len: 0,
            };
            if r.header("transfer-encoding").is_some() {
                return Parsed::Error(501, "chunked request bodies are not supported");
            }
            if let Some(len) = r.header("content-length") {
                match len.parse::<usize>() {
                    Ok(n) if n <= MAX_REQUEST_BODY => r.body_len = n,
                    Ok(_) => return Parsed::Error(413, "request body too large"),
                    Err(_) => return Parsed::Error(400, "bad Content-Length"),
                }
            }
            Parsed::Complete(r, n)
        }
        Err(httparse::Error::TooManyHeaders) => Parsed::Error(431, "too many headers"),
        Err(_) => Parsed::Error(400, "malformed request"),
    }
}

/// The reason phrase for the statuses Sluice sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
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
    // Content-Length; it still ends where its head ends.
    let bodiless = status == 101 || status == 204;
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
                write!(f, "fragmented or oversized WebSocket control frame")
            }
        }
    }
}

/// Decodes one client frame from `buf` (`Ok(None)`: need more bytes).
pub fn decode_ws_frame(buf: &mut BytesMut) -> Result<Option<WsFrame>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
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
    if control && (!fin || len > 125) {
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
