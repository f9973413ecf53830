//! Relays: what to push where (restreaming) and where to pull from (edge
//! nodes). This module holds the rules, the target URLs and the TLS client
//! settings; the outbound connections themselves live in the workers' slabs
//! (`server::tasks`, `server::relay_conn`), driven by the sans-IO [`crate::protocol::client`].
//!
//! * A **push** rule names local streams (every stream of an application, or
//!   one stream) and a target URL. When a matching stream goes live, the
//!   publisher's worker opens one outbound connection per target, publishes
//!   there, and queues the stream's frames to it like a player's: same
//!   shared wire form, same bounded queue and skip-to-keyframe policy.
//! * A **pull** rule makes an application (or one stream) an edge of an
//!   origin. The first player of a stream that is not live here starts one
//!   pull (one per node, whichever worker the player is on); the pulled
//!   stream is published locally and fans out to every player on every
//!   worker. With no player for the idle timeout, the pull stops. A static
//!   pull runs for as long as the rule exists.
//!
//! URLs are `rtmp://HOST[:PORT]/APP[/NAME][?QUERY]` or `rtmps://...`: the
//! first path segment is the application, the rest (query included) the
//! stream name. A push target without a name gets the local stream's name;
//! a pull origin without a name is asked for the name the player asked for.

use crate::protocol::name::{AppName, StreamKey};
use serde::Deserialize;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Default RTMP and RTMPS ports.
const RTMP_PORT: u16 = 1935;
const RTMPS_PORT: u16 = 443;

/// How long a pulled stream with no player keeps being pulled: a viewer who
/// reloads comes back within seconds and should not wait for a new pull.
pub const DEFAULT_PULL_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time from starting an outbound connection to publishing or playing on it
/// (TCP connect, TLS, RTMP handshake, connect, createStream, publish/play).
pub const RELAY_START_TIMEOUT: Duration = Duration::from_secs(10);

/// First retry delay after a relay fails; it doubles per failure up to
/// [`RELAY_MAX_BACKOFF`] and resets once a relay has run for a while.
pub const RELAY_MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two attempts: a platform that comes back is
/// reached within this.
pub const RELAY_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Push or pull.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayKind {
    Push,
    Pull,
}

impl RelayKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::Pull => "pull",
        }
    }
}

/// What a pull does for its players when the origin cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// Players waiting for the stream get NetStream.Play.StreamNotFound
    /// (HTTP-FLV players see the response end) and the pull stops; the
    /// next player tries again.
    #[default]
    NotFound,
    /// Players keep waiting while the pull retries with backoff.
    Wait,
}

impl std::str::FromStr for Unavailable {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "not_found" | "not-found" => Ok(Self::NotFound),
            "wait" => Ok(Self::Wait),
            _ => Err("expected not_found or wait".into()),
        }
    }
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotFound => "not_found",
            Self::Wait => "wait",
        })
    }
}

/// An `rtmp://` or `rtmps://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub app: String,
    /// The stream name, with its query (a stream key, a token), if given.
    pub name: Option<String>,
}

impl RelayUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("rtmp://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("rtmps://") {
            (true, r)
        } else {
            return Err(format!("{s:?}: expected rtmp:// or rtmps://"));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let default_port = if tls { RTMPS_PORT } else { RTMP_PORT };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("{s:?}: bad port"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("{s:?}: bad host")),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_owned(),
                    p.parse().map_err(|_| format!("{s:?}: bad port"))?,
                ),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(format!("{s:?}: no host or port"));
        }
        let (app, name) = match path.split_once('/') {
            Some((app, name)) if !name.is_empty() => (app, Some(name.to_owned())),
            Some((app, _)) => (app, None),
            None => (path, None),
        };
        if app.is_empty() {
            return Err(format!("{s:?}: no application in the path"));
        }
        Ok(Self {
            tls,
            host,
            port,
            app: app.to_owned(),
            name,
        })
    }

    /// The same URL in application `app` (a rule for every application
    /// connects to each stream's own).
    pub fn in_app(&self, app: &str) -> RelayUrl {
        RelayUrl {
            app: app.to_owned(),
            ..self.clone()
        }
    }

    /// The `tcUrl` sent in `connect`.
    pub fn tc_url(&self) -> String {
        let scheme = if self.tls { "rtmps" } else { "rtmp" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}/{}", self.port, self.app)
    }

    /// The name to publish or play: the URL's own, else `local`.
    pub fn stream_name<'a>(&'a self, local: &'a str) -> &'a str {
        self.name.as_deref().unwrap_or(local)
    }

    /// The URL for logs and the API: a stream key is a secret, so a name
    /// given in the URL shows its first characters only, and no query.
    pub fn redacted(&self) -> String {
        match &self.name {
            None => self.tc_url(),
            Some(n) => {
                let n = n.split('?').next().unwrap_or("");
                if n.chars().count() <= 4 {
                    format!("{}/{n}", self.tc_url())
                } else {
                    let head: String = n.chars().take(4).collect();
                    format!("{}/{head}…", self.tc_url())
                }
            }
        }
    }

    /// The host as an IP address when it is one (no resolution needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Which local streams a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every stream of this application.
    App(AppName),
    /// One stream, `app/name`.
    Stream(StreamKey),
    /// Every stream: the rule a successor pulls its predecessor's streams
    /// with during a handover (`--takeover`); never written in a config.
    Any,
}

impl Scope {
    /// `APP` or `APP/NAME`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let scope = if s.contains('/') {
            StreamKey::new(s).map(Self::Stream)
        } else {
            AppName::new(s).map(Self::App)
        };
        scope.map_err(|e| format!("{s:?}: expected APP or APP/NAME ({e})"))
    }

    /// True when the stream `key` (`app/name`) is in scope.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Self::App(app) => key.split_once('/').is_some_and(|(a, _)| app == a),
            Self::Stream(k) => k == key,
            Self::Any => true,
        }
    }

    /// `APP` or `APP/NAME`, as written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::App(s) => s,
            Self::Stream(s) => s,
            Self::Any => "*",
        }
    }
}

/// A relay rule's id: unique for the process's lifetime
/// (`DELETE /api/relays/ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RuleId(pub u64);

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One relay rule, from the config file, a flag or the API.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Unique for the process's lifetime (`DELETE /api/relays/ID`).
    pub id: RuleId,
    pub kind: RelayKind,
    pub scope: Scope,
    pub url: RelayUrl,
    /// Accept any certificate from an `rtmps://` peer (self-signed origins).
    pub insecure: bool,
    /// Pull only: keep the stream pulled with no player.
    pub always: bool,
    /// Pull only: what players get when the origin cannot be reached.
    pub on_unavailable: Unavailable,
    /// Pull only: how long a stream with no player stays pulled.
    pub idle_timeout: Duration,
    /// `config` or `api`.
    pub source: &'static str,
}

impl Rule {
    /// The rule a successor (`--takeover`) pulls its predecessor's streams
    /// with, from the predecessor's handover listener at `addr`: every
    /// stream, each from its own application; players wait while the
    /// predecessor has not opened that listener yet.
    pub fn handover(addr: std::net::SocketAddr, idle_timeout: Duration) -> Rule {
        Rule {
            id: RuleId::default(),
            kind: RelayKind::Pull,
            scope: Scope::Any,
            url: RelayUrl {
                tls: false,
                host: addr.ip().to_string(),
                port: addr.port(),
                app: "handover".to_owned(),
                name: None,
            },
            insecure: false,
            always: false,
            on_unavailable: Unavailable::Wait,
            idle_timeout,
            source: "handover",
        }
    }

    /// True for the rule of [`Rule::handover`].
    pub fn is_handover(&self) -> bool {
        self.scope == Scope::Any
    }

    /// The stream key this rule pulls when it is static.
    pub fn static_key(&self) -> Option<&str> {
        match (&self.scope, self.kind, self.always) {
            (Scope::Stream(k), RelayKind::Pull, true) => Some(k.as_str()),
            _ => None,
        }
    }
}

/// A rule as written in the config file (`[[push]]`, `[[pull]]`) or posted
/// to `POST /api/relays` (with `type`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `push` or `pull` (the API only; the config file's table says it).
    #[serde(rename = "type", default)]
    pub kind: Option<RelayKind>,
    /// Every stream of this application...
    pub app: Option<String>,
    /// ...or this one stream (`APP/NAME`).
    pub stream: Option<String>,
    pub url: String,
    #[serde(default)]
    pub insecure: bool,
    /// Pull only: keep this stream pulled (needs `stream`).
    #[serde(rename = "static", default)]
    pub always: bool,
    pub on_unavailable: Option<Unavailable>,
    /// Pull only, seconds.
    pub idle_timeout: Option<f64>,
}

impl RuleSpec {
    /// A flag's `SCOPE=URL`.
    pub fn from_flag(kind: RelayKind, arg: &str, always: bool) -> Result<Self, String> {
        let (scope, url) = arg
            .split_once('=')
            .ok_or_else(|| format!("{arg:?}: expected APP=URL or APP/NAME=URL"))?;
        let (app, stream) = if scope.contains('/') {
            (None, Some(scope.to_owned()))
        } else {
            (Some(scope.to_owned()), None)
        };
        Ok(Self {
            kind: Some(kind),
            app,
            stream,
            url: url.to_owned(),
            always,
            ..Default::default()
        })
    }

    /// Checks the spec and makes a rule (its id is set by the registry).
    pub fn to_rule(
        &self,
        kind: RelayKind,
        idle_default: Duration,
        unavailable_default: Unavailable,
        source: &'static str,
    ) -> Result<Rule, String> {
        let scope = match (&self.app, &self.stream) {
            (Some(a), None) => Scope::parse(a).and_then(|s| match s {
                Scope::App(_) => Ok(s),
                Scope::Stream(_) | Scope::Any => {
                    Err(format!("app = {a:?}: an application has no '/'"))
                }
            })?,
            (None, Some(s)) => Scope::parse(s).and_then(|sc| match sc {
                Scope::Stream(_) => Ok(sc),
                Scope::App(_) | Scope::Any => Err(format!("stream = {s:?}: expected APP/NAME")),
            })?,
            _ => return Err("give either app or stream".into()),
        };
        let url = RelayUrl::parse(&self.url)?;
        if kind == RelayKind::Push && self.always {
            return Err("static applies to pulls".into());
        }
        if self.always && !matches!(scope, Scope::Stream(_)) {
            return Err("a static pull names one stream (stream = \"APP/NAME\")".into());
        }
        let idle_timeout = match self.idle_timeout {
            Some(s) => crate::seconds::positive(s).map_err(|e| format!("idle_timeout: {e}"))?,
            None => idle_default,
        };
        Ok(Rule {
            id: RuleId::default(),
            kind,
            scope,
            url,
            insecure: self.insecure,
            always: self.always,
            on_unavailable: self.on_unavailable.unwrap_or(unavailable_default),
            idle_timeout,
            source,
        })
    }
}

/// rustls client settings for `rtmps://` peers: verified against Mozilla's
/// roots plus `extra_ca`, or (per rule) not verified at all.
pub struct ClientTls {
    pub verified: Arc<rustls::ClientConfig>,
    pub insecure: Arc<rustls::ClientConfig>,
}

impl ClientTls {
    pub fn new(extra_ca: Option<&Path>) -> Result<Self, String> {
        let provider = crate::certs::tls_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            for c in crate::certs::load_certs(path)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        let verified = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let insecure = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(Self {
            verified: Arc::new(verified),
            insecure: Arc::new(insecure),
        })
    }

    pub fn config(&self, insecure: bool) -> Arc<rustls::ClientConfig> {
        if insecure {
            self.insecure.clone()
        } else {
            self.verified.clone()
        }
    }
}

/// `insecure = true`: any certificate is accepted (the handshake's
/// signatures are still checked, so the session keys are the peer's).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = RelayUrl::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh?x=1").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.app.as_str()),
            (false, "a.rtmp.youtube.com", 1935, "live2")
        );
        assert_eq!(u.name.as_deref(), Some("abcd-efgh?x=1"));
        assert_eq!(u.tc_url(), "rtmp://a.rtmp.youtube.com:1935/live2");
        assert_eq!(u.redacted(), "rtmp://a.rtmp.youtube.com:1935/live2/abcd…");
        let u = RelayUrl::parse("rtmps://live-api-s.facebook.com:443/rtmp/").unwrap();
        assert_eq!((u.tls, u.port, u.name.as_deref()), (true, 443, None));
        assert_eq!(u.stream_name("cam"), "cam");
        let u = RelayUrl::parse("rtmps://[::1]:4443/live").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 4443));
        assert_eq!(u.tc_url(), "rtmps://[::1]:4443/live");
        assert!(u.ip().is_some());
        for bad in [
            "http://x/live",
            "rtmp://",
            "rtmp://host",
            "rtmp://host:x/live",
            "rtmp://:1935/live",
            "rtmp://[::1/live",
        ] {
            assert!(RelayUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn specs() {
        let s = RuleSpec::from_flag(RelayKind::Push, "live=rtmp://h/app", false).unwrap();
        let r = s
            .to_rule(
                RelayKind::Push,
                Duration::from_secs(1),
                Unavailable::Wait,
                "config",
            )
            .unwrap();
        assert_eq!(r.scope, Scope::App("live".parse().unwrap()));
        assert!(r.scope.matches("live/cam") && !r.scope.matches("other/cam"));
        let s = RuleSpec::from_flag(RelayKind::Pull, "live/cam=rtmp://o/live", true).unwrap();
        let r = s
            .to_rule(
                RelayKind::Pull,
                Duration::from_secs(1),
                Unavailable::Wait,
                "config",
            )
            .unwrap();
        assert_eq!(r.static_key(), Some("live/cam"));
        assert!(
            RuleSpec::from_flag(RelayKind::Pull, "live=rtmp://o/live", true)
                .unwrap()
                .to_rule(
                    RelayKind::Pull,
                    Duration::from_secs(1),
                    Unavailable::Wait,
                    "config"
                )
                .is_err()
        );
        assert!(
            RuleSpec::from_flag(RelayKind::Push, "live/../x=rtmp://o/live", false)
                .unwrap()
                .to_rule(
                    RelayKind::Push,
                    Duration::from_secs(1),
                    Unavailable::Wait,
                    "config"
                )
                .is_err()
        );
    }
}
