//! Certificate files: which ones the server uses ([`TlsFiles`], from
//! `--tls-cert` / `--tls-key` / `--tls-dir` or the config file) and the PEM
//! reader both TLS listeners (`server::tls`) and `rtmps://` relay roots
//! ([`crate::relay::ClientTls`]) load certificates with, and the
//! cryptography both use ([`tls_provider`]). Plain data and file reads:
//! nothing here knows about sockets or the server.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Where certificates come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// (certificate chain PEM, private key PEM) pairs; the first is the
    /// default for clients without SNI or with an unknown name.
    pub pairs: Vec<(PathBuf, PathBuf)>,
    /// A directory of `NAME.crt` (or `NAME.pem`) + `NAME.key` pairs, added
    /// after `pairs` in name order.
    pub dir: Option<PathBuf>,
}

impl TlsFiles {
    /// True when no certificate is configured.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty() && self.dir.is_none()
    }

    /// Every (cert, key) pair, files first, then the directory's.
    pub fn all_pairs(&self) -> Result<Vec<(PathBuf, PathBuf)>, String> {
        let mut pairs = self.pairs.clone();
        if let Some(dir) = &self.dir {
            let mut found = Vec::new();
            let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for entry in entries.flatten() {
                let path = entry.path();
                let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
                if matches!(ext, "crt" | "pem") {
                    let key = path.with_extension("key");
                    if key.exists() {
                        found.push((path, key));
                    }
                }
            }
            found.sort();
            pairs.extend(found);
        }
        if pairs.is_empty() {
            return Err("no certificate and key found".into());
        }
        Ok(pairs)
    }

    /// When the newest of the files was last modified (None when none
    /// can be read), so a change on disk can be noticed with a few stats.
    pub fn newest_mtime(&self) -> Option<SystemTime> {
        let pairs = self.all_pairs().ok()?;
        pairs
            .iter()
            .flat_map(|(c, k)| [c, k])
            .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .max()
    }
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

/// The DNS names in a certificate's subject alternative names (wildcards
/// as written, `*.example.com`), lowercased, read from its DER; `None`
/// when the DER is not shaped as a certificate is.
///
/// The server's certificate choice uses them only as an index, to find
/// which of many certificates (`--tls-dir` with a certificate per
/// customer's domain) may serve a client's SNI without checking them all:
/// whether one does is still decided by webpki, the same check rustls's
/// clients make. So this is a small reader of the few DER elements on the
/// way to the names, not a certificate parser: it checks no signature and
/// trusts nothing, and a certificate it cannot read is tried for every name
/// as before.
pub fn dns_names(cert_der: &[u8]) -> Option<Vec<String>> {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    /// tbsCertificate's `[3] EXPLICIT Extensions`.
    const EXTENSIONS: u8 = 0xa3;
    /// GeneralName's `dNSName [2] IMPLICIT IA5String`.
    const DNS_NAME: u8 = 0x82;
    /// id-ce-subjectAltName, 2.5.29.17.
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

    fn expect(tag: u8, input: &[u8]) -> Option<&[u8]> {
        let (t, contents, _) = der_element(input)?;
        (t == tag).then_some(contents)
    }
    let certificate = expect(SEQUENCE, cert_der)?;
    let mut tbs = expect(SEQUENCE, certificate)?;
    let mut names = Vec::new();
    // The version, serial number, algorithm, issuer, validity, subject,
    // key and unique ids come first; only the extensions matter here.
    while !tbs.is_empty() {
        let (tag, contents, rest) = der_element(tbs)?;
        tbs = rest;
        if tag != EXTENSIONS {
            continue;
        }
        let mut extensions = expect(SEQUENCE, contents)?;
        while !extensions.is_empty() {
            let (tag, extension, rest) = der_element(extensions)?;
            extensions = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, mut fields) = der_element(extension)?;
            if tag != OID {
                return None;
            }
            if oid != SUBJECT_ALT_NAME {
                continue;
            }
            let (mut tag, mut value, rest) = der_element(fields)?;
            fields = rest;
            if tag == BOOLEAN {
                (tag, value, _) = der_element(fields)?;
            }
            if tag != OCTET_STRING {
                return None;
            }
            let mut general_names = expect(SEQUENCE, value)?;
            while !general_names.is_empty() {
                let (tag, name, rest) = der_element(general_names)?;
                general_names = rest;
                if tag == DNS_NAME {
                    names.push(std::str::from_utf8(name).ok()?.to_ascii_lowercase());
                }
            }
        }
    }
    Some(names)
}

/// The DER element at the front of `input`: its tag, its contents and what
/// follows it. Only the short tags and definite lengths DER allows.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// The cryptography of every TLS connection, served and relayed: rustls's
/// aws-lc-rs provider with its defaults. A TLS player's bytes are sealed
/// once per player, so the bulk cipher is most of what TLS adds to a
/// player's cost; aws-lc's AES-GCM uses AVX-512 (VAES) where the CPU has
/// it, and seals about 1.5 times as fast as ring's on such CPUs
/// (perf/README.md, "RTMPS: the AES-GCM of aws-lc"). The key exchange is
/// the client's first choice among X25519, P-256, P-384 and the hybrid
/// post-quantum X25519MLKEM768, which current browsers and OpenSSL 3.5
/// list first (one ML-KEM encapsulation more per handshake: about a fifth
/// more of the server's handshake time, docs/tls.md).
pub fn tls_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CipherSuite, NamedGroup};

    #[test]
    fn dns_names_are_read_from_the_subject_alternative_names() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "Live.Example.com".to_owned(),
            "*.cdn.example.com".to_owned(),
        ])
        .unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "not.a.san.example.com");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            dns_names(cert.der()).unwrap(),
            ["live.example.com", "*.cdn.example.com"]
        );
        // No extensions at all: no names, but read.
        let bare = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(dns_names(bare.der()).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn dns_names_of_damaged_der_is_none_never_a_panic() {
        let cert = rcgen::generate_simple_self_signed(vec!["a.example.com".to_owned()]).unwrap();
        let der = cert.cert.der().to_vec();
        assert_eq!(dns_names(&der).unwrap(), ["a.example.com"]);
        // Every truncation, and every byte changed, of a real certificate.
        for len in 0..der.len() {
            assert_eq!(dns_names(&der[..len]), None, "truncated to {len}");
        }
        for i in 0..der.len() {
            for x in [0x00, 0x1f, 0x80, 0x84, 0xff] {
                let mut d = der.clone();
                d[i] ^= x;
                let _ = dns_names(&d);
            }
        }
        assert_eq!(dns_names(&[0x30, 0x85, 1, 2, 3, 4, 5]), None);
        assert_eq!(dns_names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn the_tls_provider_offers_aes_gcm_first_and_post_quantum_key_exchange() {
        let p = tls_provider();
        let suites: Vec<CipherSuite> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            &suites[..2],
            &[
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_AES_128_GCM_SHA256
            ],
            "{suites:?}"
        );
        assert!(suites.contains(&CipherSuite::TLS13_CHACHA20_POLY1305_SHA256));
        assert!(suites.contains(&CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256));
        let groups: Vec<NamedGroup> = p.kx_groups.iter().map(|g| g.name()).collect();
        for g in [
            NamedGroup::X25519,
            NamedGroup::secp256r1,
            NamedGroup::X25519MLKEM768,
        ] {
            assert!(groups.contains(&g), "{g:?} in {groups:?}");
        }
    }
}
