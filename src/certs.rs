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
