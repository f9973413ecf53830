//! TLS for RTMPS and HTTPS: certificates from PEM files, chosen by SNI with
//! a default for clients that send none (encoders connecting by IP), and
//! reloaded in place (SIGHUP or a changed file): new handshakes get the new
//! certificates, established connections keep going.
//!
//! The connection side lives in the worker: rustls is driven with
//! `read_tls` / `process_new_packets` / `write_tls` from the same loop as
//! plain sockets, never blocking. Encryption is per connection; the frame's
//! wire form it encrypts is still built once and shared.

use crate::certs::load_certs;
pub use crate::certs::TlsFiles;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Most TLS bytes buffered per connection (plaintext waiting to be
/// encrypted plus records waiting for the socket): a little more than one
/// socket write, so a slow TLS peer is bounded like a plain one.
pub const TLS_BUFFER_LIMIT: usize = 256 * 1024;

/// A certificate chain and its private key, refused when the key is not
/// the certificate's: every handshake would then fail with a bad
/// signature, seen by clients only (a renewal that replaced one of the two
/// files, or the wrong key named), where this fails at start, and a reload
/// keeps the certificates in use.
fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = load_certs(cert)?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = crate::certs::tls_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: unsupported key: {e}", key.display()))?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        // A key whose public half the provider cannot tell is let through,
        // as rustls does: the check is for the mistake, not a gate.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(pair))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(format!(
                "{} is not the private key of the certificate in {}",
                key.display(),
                cert.display()
            ))
        }
        Err(e) => Err(format!("{}: {e}", cert.display())),
    }
}

/// Loads every certificate of `files`; the first is the default.
pub fn load(files: &TlsFiles) -> Result<Vec<Arc<CertifiedKey>>, String> {
    files
        .all_pairs()?
        .iter()
        .map(|(c, k)| load_pair(c, k))
        .collect()
}

/// The loaded certificates, and an index from the names they were issued
/// for to their places, so that a handshake checks the few that may serve
/// its SNI instead of every one (with 200 certificates, checking them all
/// took as long as the rest of the handshake: `benches/tls.rs`).
#[derive(Debug)]
struct Certs {
    /// In load order; the first is the default.
    list: Vec<Arc<CertifiedKey>>,
    /// A subject alternative name (lowercased), to the certificates with it.
    exact: HashMap<String, Vec<usize>>,
    /// The same for wildcards, `*.example.com` under `example.com`.
    wildcard: HashMap<String, Vec<usize>>,
    /// Certificates whose names could not be read: tried for every SNI.
    unread: Vec<usize>,
}

impl Certs {
    fn new(list: Vec<Arc<CertifiedKey>>) -> Self {
        let mut certs = Self {
            list,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            unread: Vec::new(),
        };
        for (i, c) in certs.list.iter().enumerate() {
            match c.cert.first().and_then(|der| crate::certs::dns_names(der)) {
                Some(names) => {
                    for name in names {
                        let (map, key) = match name.strip_prefix("*.") {
                            Some(parent) => (&mut certs.wildcard, parent.to_owned()),
                            None => (&mut certs.exact, name),
                        };
                        let places = map.entry(key).or_default();
                        if places.last() != Some(&i) {
                            places.push(i);
                        }
                    }
                }
                None => certs.unread.push(i),
            }
        }
        certs
    }

    /// The places of the certificates that may be valid for `sni`, in load
    /// order: those issued for it, for a wildcard over it, and those whose
    /// names could not be read.
    fn candidates(&self, sni: &str) -> Vec<usize> {
        let name = sni.strip_suffix('.').unwrap_or(sni).to_ascii_lowercase();
        let parent = name.split_once('.').map(|(_, parent)| parent);
        let mut places: Vec<usize> = self
            .exact
            .get(&name)
            .into_iter()
            .chain(parent.and_then(|p| self.wildcard.get(p)))
            .flatten()
            .chain(&self.unread)
            .copied()
            .collect();
        places.sort_unstable();
        places.dedup();
        places
    }
}

/// Chooses the certificate for a ClientHello by its SNI.
#[derive(Debug)]
pub struct CertResolver {
    files: TlsFiles,
    certs: RwLock<Certs>,
    loaded_at: RwLock<Option<SystemTime>>,
}

impl CertResolver {
    pub fn new(files: TlsFiles) -> Result<Self, String> {
        let certs = Certs::new(load(&files)?);
        let mtime = files.newest_mtime();
        Ok(Self {
            files,
            certs: RwLock::new(certs),
            loaded_at: RwLock::new(mtime),
        })
    }

    /// Loads the files again; on error the old certificates stay.
    pub fn reload(&self) -> Result<usize, String> {
        let certs = Certs::new(load(&self.files)?);
        let n = certs.list.len();
        *self.certs.write().unwrap_or_else(|p| p.into_inner()) = certs;
        *self.loaded_at.write().unwrap_or_else(|p| p.into_inner()) = self.files.newest_mtime();
        Ok(n)
    }

    /// Reloads when a file changed since the last load (cheap: a few stats).
    pub fn reload_if_changed(&self) -> Option<Result<usize, String>> {
        let now = self.files.newest_mtime();
        let then = *self.loaded_at.read().unwrap_or_else(|p| p.into_inner());
        (now.is_some() && now != then).then(|| self.reload())
    }

    /// The first certificate, in load order, valid for `sni` (webpki's
    /// check, as a client makes it), or the default.
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        if let Some(sni) = sni {
            if let Ok(name) = ServerName::try_from(sni.to_owned()) {
                for i in certs.candidates(sni) {
                    let c = &certs.list[i];
                    let valid = c
                        .cert
                        .first()
                        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok());
                    if valid {
                        return Some(c.clone());
                    }
                }
            }
        }
        certs.list.first().cloned()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// A server configuration using `resolver` (TLS 1.2 and 1.3, no client auth).
pub fn server_config(resolver: Arc<CertResolver>) -> Arc<rustls::ServerConfig> {
    let config = rustls::ServerConfig::builder_with_provider(crate::certs::tls_provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("aws-lc-rs supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    Arc::new(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivatePkcs8KeyDer;

    /// A certificate for `names`, as the server loads one.
    fn certified(names: &[&str]) -> Arc<CertifiedKey> {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = crate::certs::tls_provider()
            .key_provider
            .load_private_key(der)
            .unwrap();
        Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing))
    }

    fn resolver(certs: Vec<Arc<CertifiedKey>>) -> CertResolver {
        CertResolver {
            files: TlsFiles::default(),
            certs: RwLock::new(Certs::new(certs)),
            loaded_at: RwLock::new(None),
        }
    }

    /// What the choice was before the index: every certificate checked in
    /// load order.
    fn scan_all(certs: &[Arc<CertifiedKey>], sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni.and_then(|n| ServerName::try_from(n.to_owned()).ok()) {
            for c in certs {
                let ee = webpki::EndEntityCert::try_from(&c.cert[0]).unwrap();
                if ee.verify_is_valid_for_subject_name(&name).is_ok() {
                    return Some(c.clone());
                }
            }
        }
        certs.first().cloned()
    }

    #[test]
    fn the_index_chooses_what_checking_every_certificate_chose() {
        let certs = vec![
            certified(&["default.example.net"]),
            certified(&["a.example.com", "live.example.org"]),
            certified(&["*.example.com"]),
            certified(&["b.example.com", "*.cdn.example.com"]),
            certified(&["LIVE.example.org"]),
            certified(&["*.example.com", "c.example.com"]),
        ];
        let r = resolver(certs.clone());
        let snis = [
            None,
            Some("a.example.com"),
            Some("A.Example.COM"),
            Some("a.example.com."),
            Some("b.example.com"),
            Some("c.example.com"),
            Some("zz.example.com"),
            Some("x.y.example.com"),
            Some("example.com"),
            Some("edge.cdn.example.com"),
            Some("cdn.example.com"),
            Some("live.example.org"),
            Some("default.example.net"),
            Some("unknown.test"),
            Some("*.example.com"),
            Some("not a name"),
            Some(""),
        ];
        for sni in snis {
            let want = scan_all(&certs, sni).map(|c| c.cert[0].clone());
            let got = r.pick(sni).map(|c| c.cert[0].clone());
            assert_eq!(got, want, "{sni:?}");
        }
        // And the choices are the ones a reader of the list expects.
        let place = |sni| {
            let got = r.pick(Some(sni)).unwrap();
            certs.iter().position(|c| Arc::ptr_eq(c, &got)).unwrap()
        };
        assert_eq!(place("a.example.com"), 1);
        assert_eq!(place("b.example.com"), 2, "the wildcard comes first");
        assert_eq!(place("edge.cdn.example.com"), 3);
        assert_eq!(place("x.y.example.com"), 0, "a wildcard covers one label");
        assert_eq!(place("unknown.test"), 0);
    }

    #[test]
    fn a_certificate_whose_names_cannot_be_read_is_tried_for_every_name() {
        let readable = certified(&["a.example.com"]);
        // A DER the index's reader refuses (a length of five bytes),
        // standing in for a certificate shaped as it does not expect.
        let mut unreadable = (*certified(&["b.example.com"])).clone();
        unreadable.cert = vec![vec![0x30, 0x85, 0, 0, 0, 0, 1, 0].into()];
        let certs = Certs::new(vec![readable, Arc::new(unreadable)]);
        assert_eq!(certs.unread, [1]);
        assert_eq!(certs.candidates("b.example.com"), [1]);
        assert_eq!(certs.candidates("a.example.com"), [0, 1]);
    }
}
