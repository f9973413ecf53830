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
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// Most TLS bytes buffered per connection (plaintext waiting to be
/// encrypted plus records waiting for the socket): a little more than one
/// socket write, so a slow TLS peer is bounded like a plain one.
pub const TLS_BUFFER_LIMIT: usize = 256 * 1024;

fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = load_certs(cert)?;
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let signing = crate::certs::tls_provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| format!("{}: unsupported key: {e}", key.display()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing)))
}

/// Loads every certificate of `files`; the first is the default.
pub fn load(files: &TlsFiles) -> Result<Vec<Arc<CertifiedKey>>, String> {
    files
        .all_pairs()?
        .iter()
        .map(|(c, k)| load_pair(c, k))
        .collect()
}

/// Chooses the certificate for a ClientHello by its SNI.
#[derive(Debug)]
pub struct CertResolver {
    files: TlsFiles,
    certs: RwLock<Vec<Arc<CertifiedKey>>>,
    loaded_at: RwLock<Option<SystemTime>>,
}

impl CertResolver {
    pub fn new(files: TlsFiles) -> Result<Self, String> {
        let certs = load(&files)?;
        let mtime = files.newest_mtime();
        Ok(Self {
            files,
            certs: RwLock::new(certs),
            loaded_at: RwLock::new(mtime),
        })
    }

    /// Loads the files again; on error the old certificates stay.
    pub fn reload(&self) -> Result<usize, String> {
        let certs = load(&self.files)?;
        let n = certs.len();
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

    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.read().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = sni.and_then(|n| ServerName::try_from(n.to_owned()).ok()) {
            for c in certs.iter() {
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
        certs.first().cloned()
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
