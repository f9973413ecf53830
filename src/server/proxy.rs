//! The PROXY protocol (HAProxy's, versions 1 and 2): the header a TCP load
//! balancer (HAProxy `send-proxy` / `send-proxy-v2`, AWS NLB, Envoy) writes
//! before the client's first byte, naming the client it accepted. Sluice
//! reads it, on the RTMP, RTMPS, HTTP and HTTPS listeners, before the
//! protocol (or TLS) sees a byte, and only from the load balancers it is
//! told to trust (`--proxy-protocol`); the client's address then replaces
//! the balancer's for access rules, failed-attempt delays, logs, the API
//! and callbacks. docs/deploying.md tells operators how to set it up.
//!
//! ```text
//!   from a trusted balancer:  [PROXY header][the client's bytes...]
//!                               │ v1 "PROXY TCP4 203.0.113.9 198.51.100.1 50122 1935\r\n"
//!                               │ v2 "\r\n\r\n\0\r\nQUIT\n" + version/command + family + length + addresses + TLVs
//!                               ▼
//!                             the header is required: anything else closes the connection
//!   from anyone else:         a header closes the connection (a client must not name
//!                             its own address); other bytes go to the protocol untouched
//! ```
//!
//! The header itself is parsed by the `ppp` crate; this module decides when
//! enough bytes are there, what a header means for the connection (v2
//! `LOCAL`, v1 `UNKNOWN` and non-IP families keep the balancer's address:
//! health checks send those), and bounds what is held: at most 107 bytes for
//! v1 (the spec's maximum) and 16 + 65,535 for v2 (its length field's).
//!
//! Pure functions of bytes, depending on `std` and `ppp` only, so the fuzz
//! target (fuzz/fuzz_targets/proxy.rs) compiles this file on its own.

use std::net::SocketAddr;

/// The version 2 signature (spec section 2.2).
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The version 1 prefix, with its space (spec section 2.1).
pub const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// The longest version 1 header, CRLF included (spec section 2.1).
pub const V1_MAX_LEN: usize = 107;
/// The longest version 2 header: 16 bytes, then at most 65,535.
pub const V2_MAX_LEN: usize = 16 + u16::MAX as usize;

/// Whether `buf`, a connection's first bytes, starts with a PROXY header's
/// signature: `None` while too few bytes are there to tell.
pub fn starts_with_header(buf: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for sig in [&V2_SIGNATURE[..], &V1_PREFIX[..]] {
        let n = buf.len().min(sig.len());
        if buf[..n] == sig[..n] {
            if n == sig.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    if undecided {
        None
    } else {
        Some(false)
    }
}

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// Bytes the header took: the client's own bytes start after them.
    pub len: usize,
    /// The client, when the header names one over TCP/IP; None for a v2
    /// `LOCAL` command (the balancer's own health check), v1 `UNKNOWN`, and
    /// other families: the connection keeps the balancer's address.
    pub source: Option<SocketAddr>,
}

/// Why a connection's first bytes are not an acceptable header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyError {
    /// A trusted balancer's connection did not start with a header.
    Missing,
    /// A header that does not parse.
    Invalid { version: u8, why: String },
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing => f.write_str(
                "no PROXY protocol header, which a trusted load balancer must send first",
            ),
            Self::Invalid { version, why } => {
                write!(f, "bad PROXY protocol v{version} header: {why}")
            }
        }
    }
}

impl std::error::Error for ProxyError {}

/// Decodes the header a trusted balancer sent at the start of `buf`.
/// `Ok(None)`: more bytes are needed (never more than [`V2_MAX_LEN`]).
pub fn decode(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    match starts_with_header(buf) {
        None => Ok(None),
        Some(false) => Err(ProxyError::Missing),
        Some(true) if buf.starts_with(V1_PREFIX) => decode_v1(buf),
        Some(true) => decode_v2(buf),
    }
}

fn decode_v1(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    use ppp::v1::{Addresses, Header as V1};
    let invalid = |why: String| ProxyError::Invalid { version: 1, why };
    // The line ends within the spec's maximum; it is parsed once whole
    // (ppp reads a line cut after a space as a bad port), and bytes after
    // it are the client's, none of ppp's business.
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        return match buf.len() < V1_MAX_LEN {
            true => Ok(None),
            false => Err(invalid(format!("no CRLF within {V1_MAX_LEN} bytes"))),
        };
    };
    match V1::try_from(&window[..=end]) {
        Ok(h) => {
            let source = match h.addresses {
                Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                Addresses::Unknown => None,
            };
            Ok(Some(Header {
                version: 1,
                len: h.header.len(),
                source,
            }))
        }
        // A whole line that ppp still finds short is a bad header.
        Err(e) => Err(invalid(e.to_string())),
    }
}

fn decode_v2(buf: &[u8]) -> Result<Option<Header>, ProxyError> {
    use ppp::v2::{Addresses, Command, Header as V2};
    use ppp::PartialResult;
    let window = &buf[..buf.len().min(V2_MAX_LEN)];
    match V2::try_from(window) {
        Ok(h) => {
            let source = match (h.command, h.addresses) {
                (Command::Proxy, Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (Command::Proxy, Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                _ => None,
            };
            Ok(Some(Header {
                version: 2,
                len: h.len(),
                source,
            }))
        }
        Err(e) if e.is_incomplete() => Ok(None),
        Err(e) => Err(ProxyError::Invalid {
            version: 2,
            why: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 header: signature, version 2 + `command`, `family_proto`, the
    /// length, then `body` (addresses and TLVs).
    fn v2(command: u8, family_proto: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family_proto);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    const V4_BODY: [u8; 12] = [
        203, 0, 113, 9, // source address
        198, 51, 100, 1, // destination address
        0xC3, 0xCA, // source port 50122
        0x07, 0x8F, // destination port 1935
    ];

    #[test]
    fn v1_tcp4_names_the_client_and_leaves_its_bytes() {
        let mut buf = b"PROXY TCP4 203.0.113.9 198.51.100.1 50122 1935\r\n".to_vec();
        let len = buf.len();
        buf.extend_from_slice(&[0x03, 1, 2, 3]); // C0 and C1's start
        let h = decode(&buf).unwrap().unwrap();
        assert_eq!(h.version, 1);
        assert_eq!(h.len, len);
        assert_eq!(h.source, Some("203.0.113.9:50122".parse().unwrap()));
    }

    #[test]
    fn v1_tcp6_and_unknown() {
        let h = decode(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 443\r\nGET")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:4000".parse().unwrap()));
        let h = decode(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.source, h.len), (None, 35));
    }

    #[test]
    fn v1_arriving_byte_by_byte_needs_more_until_its_crlf() {
        let text = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\r\n";
        for n in 0..text.len() {
            assert_eq!(decode(&text[..n]), Ok(None), "after {n} bytes");
        }
        assert!(decode(text).unwrap().is_some());
    }

    #[test]
    fn v1_without_crlf_within_107_bytes_is_refused() {
        let mut text = b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2".to_vec();
        text.resize(200, b' ');
        assert!(matches!(
            decode(&text),
            Err(ProxyError::Invalid { version: 1, .. })
        ));
    }

    #[test]
    fn v1_garbage_is_refused() {
        for bad in [
            &b"PROXY TCP4 999.0.2.1 192.0.2.2 1 2\r\n"[..],
            b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",
            b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\rX\n",
            b"PROXY \xff\xfe\r\n",
        ] {
            assert!(
                matches!(decode(bad), Err(ProxyError::Invalid { version: 1, .. })),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                decode(bad)
            );
        }
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6() {
        let mut buf = v2(1, 0x11, &V4_BODY);
        let len = buf.len();
        buf.push(0x16); // a TLS ClientHello follows
        let h = decode(&buf).unwrap().unwrap();
        assert_eq!(
            (h.version, h.len, h.source),
            (2, len, Some("203.0.113.9:50122".parse().unwrap()))
        );
        let mut body = [0u8; 36];
        body[15] = 1; // ::1
        body[31] = 2; // ::2
        body[32..34].copy_from_slice(&4000u16.to_be_bytes());
        let h = decode(&v2(1, 0x21, &body)).unwrap().unwrap();
        assert_eq!(h.source, Some("[::1]:4000".parse().unwrap()));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut body = V4_BODY.to_vec();
        body.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c']); // PP2_TYPE_NOOP
        body.extend_from_slice(&[0xEA, 0x00, 0x01, 0x07]); // AWS's vendor TLV
        let buf = v2(1, 0x11, &body);
        let h = decode(&buf).unwrap().unwrap();
        assert_eq!(h.len, buf.len());
        assert_eq!(h.source, Some("203.0.113.9:50122".parse().unwrap()));
    }

    #[test]
    fn v2_local_and_unspecified_keep_the_balancers_address() {
        let h = decode(&v2(0, 0x11, &V4_BODY)).unwrap().unwrap();
        assert_eq!(h.source, None, "LOCAL: the balancer's own check");
        let h = decode(&v2(1, 0x00, &[])).unwrap().unwrap();
        assert_eq!((h.source, h.len), (None, 16));
        let h = decode(&v2(1, 0x31, &[0u8; 216])).unwrap().unwrap();
        assert_eq!(h.source, None, "a UNIX socket client");
    }

    #[test]
    fn v2_arriving_in_pieces_needs_more() {
        let buf = v2(1, 0x11, &V4_BODY);
        for n in 0..buf.len() {
            assert_eq!(decode(&buf[..n]), Ok(None), "after {n} bytes");
        }
        // A long header (65,535 bytes of TLVs declared) waits for all of them.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        big.extend_from_slice(&V4_BODY);
        assert_eq!(decode(&big), Ok(None));
    }

    #[test]
    fn v2_garbage_is_refused() {
        let short = {
            let mut h = V2_SIGNATURE.to_vec();
            h.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]); // 4 bytes for IPv4's 12
            h
        };
        for bad in [
            v2(2, 0x11, &V4_BODY),                             // command 2
            v2(1, 0x41, &V4_BODY),                             // family 4
            v2(1, 0x13, &V4_BODY),                             // protocol 3
            [&V2_SIGNATURE[..], &[0x11, 0x11, 0, 0]].concat(), // version 1 in binary
            short,
        ] {
            assert!(
                matches!(decode(&bad), Err(ProxyError::Invalid { version: 2, .. })),
                "{bad:?}: {:?}",
                decode(&bad)
            );
        }
    }

    proptest::proptest! {
        /// The fuzz target's properties (fuzz/fuzz_targets/proxy.rs), on
        /// every `cargo test`: real headers with random bytes after them,
        /// and random bytes after each signature.
        #[test]
        fn a_header_is_decoded_whatever_follows_it(
            v2_header in proptest::bool::ANY,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let mut buf = match v2_header {
                true => v2(1, 0x11, &V4_BODY),
                false => b"PROXY TCP4 203.0.113.9 198.51.100.1 50122 1935\r\n".to_vec(),
            };
            let len = buf.len();
            buf.extend_from_slice(&tail);
            let h = decode(&buf).unwrap().unwrap();
            proptest::prop_assert_eq!(h.len, len);
            proptest::prop_assert_eq!(h.source, Some("203.0.113.9:50122".parse().unwrap()));
            for n in 0..len {
                proptest::prop_assert_eq!(decode(&buf[..n]), Ok(None));
            }
        }

        #[test]
        fn random_bytes_after_a_signature_never_panic(
            v2_signature in proptest::bool::ANY,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let mut buf = match v2_signature {
                true => V2_SIGNATURE.to_vec(),
                false => V1_PREFIX.to_vec(),
            };
            buf.extend_from_slice(&tail);
            if let Ok(Some(h)) = decode(&buf) {
                proptest::prop_assert!(h.len <= buf.len());
                proptest::prop_assert_eq!(decode(&buf[..h.len]), Ok(Some(h)));
            }
        }
    }

    #[test]
    fn what_is_not_a_header() {
        for first in [
            &[0x03u8][..], // RTMP C0
            &[0x16],       // a TLS record
            b"GET / HTTP/1.1\r\n",
            b"POST /api/drain",
            b"PUT ",
            b"\r\n\r\n\0\r\nQUIX",
            b"PROXYZ",
        ] {
            assert_eq!(starts_with_header(first), Some(false), "{first:?}");
            assert_eq!(decode(first), Err(ProxyError::Missing), "{first:?}");
        }
        for undecided in [&b""[..], b"P", b"PROX", b"PROXY", b"\r\n\r\n\0\r\nQUI"] {
            assert_eq!(starts_with_header(undecided), None, "{undecided:?}");
        }
        assert_eq!(starts_with_header(b"PROXY "), Some(true));
        assert_eq!(starts_with_header(V2_SIGNATURE), Some(true));
    }
}
