//! Access control: who may publish and who may play, per application.
//!
//! Every check here is synchronous, allocation-light and never blocks: it
//! runs on a worker's loop when a publish or play request arrives. In order:
//!
//! 1. address rules (`deny`, then `allow` if any is listed), by IP and CIDR,
//!    IPv4 and IPv6 (an IPv4-mapped IPv6 peer matches IPv4 rules);
//! 2. credentials, when any scheme is configured for the action: a static
//!    key (`?key=KEY`, from `keys` or a `key_file` reloaded on SIGHUP,
//!    compared in constant time) or a signed URL (`?sign=EXPIRES-HASH`,
//!    HMAC-SHA256 or node-media-server's MD5), either one suffices.
//!
//! Keys and signatures are never logged: a denial names the rule that
//! failed, not what the client sent.
//!
//! Failed attempts from one address are slowed ([`Penalties`]): the reply
//! to each denial waits longer, in a bounded map.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Publish or play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Play,
    /// RTMP `connect` (only callbacks decide it).
    Connect,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Play => "play",
            Action::Connect => "connect",
        }
    }
}

/// An address or a network (`10.0.0.0/8`, `::1`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?
        };
        Ok(Cidr { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        match self.prefix {
            p if p == max => write!(f, "{}", self.addr),
            p => write!(f, "{}/{p}", self.addr),
        }
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `::ffff:a.b.c.d` as `a.b.c.d`, so IPv4 rules hold on dual-stack sockets.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |x: u128, len: u32, prefix: u8| -> u128 {
            if prefix == 0 {
                0
            } else {
                x >> (len - u32::from(prefix))
            }
        };
        match (canonical(self.addr), canonical(ip)) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                bits(u32::from(a).into(), 32, self.prefix)
                    == bits(u32::from(b).into(), 32, self.prefix)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                bits(u128::from(a), 128, self.prefix) == bits(u128::from(b), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Which hash a signed URL carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignScheme {
    /// hex(HMAC-SHA256(secret, "/APP/NAME-EXPIRES")): the recommended one.
    #[default]
    HmacSha256,
    /// hex(md5("/APP/NAME-EXPIRES-SECRET")): node-media-server's scheme.
    Md5,
}

/// Signed URLs: `?sign=EXPIRES-HASH`, EXPIRES in Unix seconds.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignRule {
    pub secret: String,
    #[serde(default)]
    pub scheme: SignScheme,
}

impl std::fmt::Debug for SignRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignRule")
            .field("secret", &"<hidden>")
            .field("scheme", &self.scheme)
            .finish()
    }
}

/// The rules for one action (publish or play) of one application.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Addresses and networks allowed; when not empty, every other address
    /// is denied.
    #[serde(default)]
    pub allow: Vec<Cidr>,
    /// Addresses and networks denied (checked before `allow`).
    #[serde(default)]
    pub deny: Vec<Cidr>,
    /// Static keys: `?key=KEY` must be one of them.
    #[serde(default)]
    pub keys: Vec<String>,
    /// A file of keys, one a line (`#` comments, blank lines ignored),
    /// read at start and on SIGHUP.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Signed URLs.
    #[serde(default)]
    pub sign: Option<SignRule>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("allow", &self.allow)
            .field("deny", &self.deny)
            .field("keys", &format_args!("<{} hidden>", self.keys.len()))
            .field("key_file", &self.key_file)
            .field("sign", &self.sign)
            .finish()
    }
}

impl Rules {
    fn needs_credentials(&self) -> bool {
        !self.keys.is_empty() || self.key_file.is_some() || self.sign.is_some()
    }
}

/// Publish and play rules of one application.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRules {
    #[serde(default)]
    pub publish: Rules,
    #[serde(default)]
    pub play: Rules,
    /// HTTP callbacks (`[app.NAME.hooks]`).
    #[serde(default)]
    pub hooks: crate::hooks::Hooks,
    /// HLS settings of this application (`[app.NAME.hls]`).
    #[serde(default)]
    pub hls: crate::hls_settings::HlsApp,
    /// Recording settings of this application (`[app.NAME.record]`).
    #[serde(default)]
    pub record: crate::record_settings::RecordApp,
    /// Video on demand: the application plays files from this directory
    /// (`[app.NAME.vod]`).
    #[serde(default)]
    pub vod: Option<crate::vod_settings::VodApp>,
}

/// Every application's rules; `*` applies to applications not listed.
/// An application with no rules (and no `*`) is open.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    pub apps: BTreeMap<String, AppRules>,
}

/// Why a request was denied (logged; never contains a credential).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    AddressDenied,
    AddressNotAllowed,
    NoCredentials,
    WrongKey,
    BadSignature,
    Expired,
    /// The HTTP callback said no (or did not answer in time).
    Callback,
}

impl Denial {
    pub fn describe(self) -> &'static str {
        match self {
            Denial::AddressDenied => "address denied",
            Denial::AddressNotAllowed => "address not in the allow list",
            Denial::NoCredentials => "no key or signature",
            Denial::WrongKey => "wrong key",
            Denial::BadSignature => "bad signature",
            Denial::Expired => "signature expired",
            Denial::Callback => "refused by the callback",
        }
    }
}

/// The value of `name` in a query string (`a=1&key=...`), percent-decoding
/// not applied (keys and signatures are URL-safe).
pub fn query_arg<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// Compares in time independent of where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `sign` value for `/APP/NAME` valid until `expires` (Unix seconds):
/// what an operator's backend computes to hand out a URL.
pub fn sign(scheme: SignScheme, secret: &str, app: &str, name: &str, expires: u64) -> String {
    format!(
        "{expires}-{}",
        sign_hash(scheme, secret, app, name, expires)
    )
}

fn sign_hash(scheme: SignScheme, secret: &str, app: &str, name: &str, expires: u64) -> String {
    match scheme {
        SignScheme::Md5 => {
            use md5::Digest;
            hex(&md5::Md5::digest(
                format!("/{app}/{name}-{expires}-{secret}").as_bytes(),
            ))
        }
        SignScheme::HmacSha256 => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
            hex(ring::hmac::sign(&key, format!("/{app}/{name}-{expires}").as_bytes()).as_ref())
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Access control as the workers use it: the configuration plus the keys
/// read from key files (replaced whole on reload).
pub struct Auth {
    config: AccessConfig,
    /// Keys from each `key_file`, by path.
    file_keys: RwLock<HashMap<PathBuf, Vec<String>>>,
    pub penalties: Penalties,
    /// Each application's callbacks, shared with the helper threads.
    hooks: HashMap<String, std::sync::Arc<crate::hooks::Hooks>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("config", &self.config)
            .finish()
    }
}

fn read_keys(path: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

impl Auth {
    /// Reads the key files; Err names a file that does not load.
    pub fn new(config: AccessConfig) -> Result<Self, String> {
        let hooks = config
            .apps
            .iter()
            .map(|(app, r)| (app.clone(), std::sync::Arc::new(r.hooks.clone())))
            .collect();
        let auth = Self {
            config,
            file_keys: RwLock::new(HashMap::new()),
            penalties: Penalties::default(),
            hooks,
        };
        auth.reload()?;
        Ok(auth)
    }

    /// Re-reads every key file; on an error nothing changes. Returns how
    /// many keys the files hold.
    pub fn reload(&self) -> Result<usize, String> {
        let mut next = HashMap::new();
        for app in self.config.apps.values() {
            for rules in [&app.publish, &app.play] {
                if let Some(p) = &rules.key_file {
                    if !next.contains_key(p) {
                        next.insert(p.clone(), read_keys(p)?);
                    }
                }
            }
        }
        let n = next.values().map(Vec::len).sum();
        *self.file_keys.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(n)
    }

    /// The callbacks of `app` (or of `*`), if any is configured.
    pub fn hooks(&self, app: &str) -> Option<&std::sync::Arc<crate::hooks::Hooks>> {
        self.hooks.get(app).or_else(|| self.hooks.get("*"))
    }

    /// Whether any application has an `on_connect` callback (RTMP sessions
    /// then wait for a decision at `connect`).
    pub fn has_connect_hooks(&self) -> bool {
        self.hooks.values().any(|h| h.on_connect.is_some())
    }

    /// Whether any application has a callback (the helper threads are
    /// started only then).
    pub fn has_hooks(&self) -> bool {
        self.hooks.values().any(|h| {
            h.on_connect.is_some()
                || h.on_publish.is_some()
                || h.on_play.is_some()
                || h.on_publish_done.is_some()
                || h.on_play_done.is_some()
                || h.on_done.is_some()
                || h.on_record_done.is_some()
        })
    }

    fn rules(&self, app: &str, action: Action) -> Option<&Rules> {
        let a = self
            .config
            .apps
            .get(app)
            .or_else(|| self.config.apps.get("*"))?;
        match action {
            Action::Publish => Some(&a.publish),
            Action::Play => Some(&a.play),
            Action::Connect => None,
        }
    }

    /// Whether `peer` may `action` `/app/name` with this query string.
    pub fn check(
        &self,
        action: Action,
        app: &str,
        name: &str,
        query: &str,
        peer: IpAddr,
    ) -> Result<(), Denial> {
        self.check_at(action, app, name, query, peer, unix_now())
    }

    /// [`Auth::check`] at a given time (Unix seconds), for tests.
    pub fn check_at(
        &self,
        action: Action,
        app: &str,
        name: &str,
        query: &str,
        peer: IpAddr,
        now: u64,
    ) -> Result<(), Denial> {
        let Some(rules) = self.rules(app, action) else {
            return Ok(());
        };
        if rules.deny.iter().any(|c| c.contains(peer)) {
            return Err(Denial::AddressDenied);
        }
        if !rules.allow.is_empty() && !rules.allow.iter().any(|c| c.contains(peer)) {
            return Err(Denial::AddressNotAllowed);
        }
        if !rules.needs_credentials() {
            return Ok(());
        }
        let mut denial = Denial::NoCredentials;
        if let Some(given) = query_arg(query, "key") {
            // Every key is compared, so timing says nothing about which
            // (or whether one) matched.
            let mut ok = false;
            for k in &rules.keys {
                ok |= constant_time_eq(given.as_bytes(), k.as_bytes());
            }
            if let Some(path) = &rules.key_file {
                let files = self.file_keys.read().unwrap_or_else(|p| p.into_inner());
                for k in files.get(path).into_iter().flatten() {
                    ok |= constant_time_eq(given.as_bytes(), k.as_bytes());
                }
            }
            if ok {
                return Ok(());
            }
            denial = Denial::WrongKey;
        }
        if let (Some(rule), Some(given)) = (&rules.sign, query_arg(query, "sign")) {
            let Some((expires, hash)) = given.split_once('-') else {
                return Err(Denial::BadSignature);
            };
            let Ok(expires) = expires.parse::<u64>() else {
                return Err(Denial::BadSignature);
            };
            let want = sign_hash(rule.scheme, &rule.secret, app, name, expires);
            if !constant_time_eq(hash.to_ascii_lowercase().as_bytes(), want.as_bytes()) {
                return Err(Denial::BadSignature);
            }
            if expires < now {
                return Err(Denial::Expired);
            }
            return Ok(());
        }
        Err(denial)
    }
}

/// Most addresses whose failures are remembered. Past it, entries older
/// than [`PENALTY_FORGET`] are dropped, then the map is cleared: an
/// attacker with many addresses cannot grow memory, at worst resets delays.
pub const PENALTY_MAX_ADDRS: usize = 16_384;
/// Failures are forgotten after this long without another.
pub const PENALTY_FORGET: Duration = Duration::from_secs(60);
/// The delay before the reply to the second failure in a row; it doubles
/// with each further failure up to [`PENALTY_MAX_DELAY`]. The first failure
/// is answered at once (a typo costs nothing).
pub const PENALTY_BASE_DELAY: Duration = Duration::from_millis(250);
/// The longest delay (below every client's usual timeout).
pub const PENALTY_MAX_DELAY: Duration = Duration::from_secs(4);

/// Failed attempts by address, bounded in memory.
#[derive(Debug, Default)]
pub struct Penalties {
    map: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Penalties {
    /// Records a failure from `ip`; returns how long to wait before replying.
    pub fn fail(&self, ip: IpAddr, now: Instant) -> Duration {
        let ip = canonical(ip);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= PENALTY_MAX_ADDRS && !map.contains_key(&ip) {
            map.retain(|_, (_, last)| now.duration_since(*last) < PENALTY_FORGET);
            if map.len() >= PENALTY_MAX_ADDRS {
                map.clear();
            }
        }
        let e = map.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= PENALTY_FORGET {
            e.0 = 0;
        }
        e.0 = e.0.saturating_add(1);
        e.1 = now;
        match e.0 {
            1 => Duration::ZERO,
            n => PENALTY_BASE_DELAY
                .saturating_mul(1 << (n - 2).min(8))
                .min(PENALTY_MAX_DELAY),
        }
    }

    /// Addresses remembered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(toml_rules: &str) -> Auth {
        let c = crate::config::FileConfig::parse(toml_rules).unwrap();
        Auth::new(c.access()).unwrap()
    }

    const V4: &str = "192.0.2.7";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        let c: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(c.contains(ip("2001:db8:1::5")));
        assert!(!c.contains(ip("2001:db9::1")));
        assert!(!c.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let one: Cidr = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn open_without_rules() {
        let a = auth("");
        assert_eq!(a.check(Action::Publish, "live", "s", "", ip(V4)), Ok(()));
    }

    #[test]
    fn keys() {
        let a = auth("[app.live.publish]\nkeys = [\"s3cret\", \"other\"]\n");
        let p = |q: &str| a.check(Action::Publish, "live", "s", q, ip(V4));
        assert_eq!(p("key=s3cret"), Ok(()));
        assert_eq!(p("a=1&key=other"), Ok(()));
        assert_eq!(p("key=s3cre"), Err(Denial::WrongKey));
        assert_eq!(p(""), Err(Denial::NoCredentials));
        // Play is not restricted; other apps are open.
        assert_eq!(a.check(Action::Play, "live", "s", "", ip(V4)), Ok(()));
        assert_eq!(a.check(Action::Publish, "vod", "s", "", ip(V4)), Ok(()));
    }

    #[test]
    fn wildcard_app() {
        let a = auth("[app.\"*\".publish]\nkeys = [\"k\"]\n[app.open]\n");
        assert_eq!(
            a.check(Action::Publish, "x", "s", "", ip(V4)),
            Err(Denial::NoCredentials)
        );
        assert_eq!(a.check(Action::Publish, "open", "s", "", ip(V4)), Ok(()));
    }

    #[test]
    fn signatures() {
        for (scheme, name) in [
            (SignScheme::Md5, "md5"),
            (SignScheme::HmacSha256, "hmac-sha256"),
        ] {
            let a = auth(&format!(
                "[app.live.play]\nsign = {{ secret = \"nodemedia2017privatekey\", scheme = \"{name}\" }}\n"
            ));
            let now = 1_700_000_000;
            let s = sign(
                scheme,
                "nodemedia2017privatekey",
                "live",
                "stream",
                now + 60,
            );
            let q = format!("sign={s}");
            let c = |q: &str, name: &str, t| a.check_at(Action::Play, "live", name, q, ip(V4), t);
            assert_eq!(c(&q, "stream", now), Ok(()));
            assert_eq!(c(&q, "stream", now + 61), Err(Denial::Expired));
            assert_eq!(c(&q, "other", now), Err(Denial::BadSignature));
            assert_eq!(c("sign=123", "stream", now), Err(Denial::BadSignature));
            assert_eq!(c("", "stream", now), Err(Denial::NoCredentials));
        }
    }

    #[test]
    fn md5_matches_node_media_server() {
        // md5("/live/stream-1503458721-nodemedia2017privatekey"), the
        // example in node-media-server's README.
        assert_eq!(
            sign(
                SignScheme::Md5,
                "nodemedia2017privatekey",
                "live",
                "stream",
                1503458721
            ),
            "1503458721-80c1d1ad2e0c2ab63eebb50eed64201a"
        );
    }

    #[test]
    fn address_rules_first() {
        let a = auth(
            "[app.live.publish]\nallow = [\"127.0.0.0/8\", \"::1\"]\ndeny = [\"127.0.0.2\"]\nkeys = [\"k\"]\n",
        );
        let p = |ip_: &str, q: &str| a.check(Action::Publish, "live", "s", q, ip(ip_));
        assert_eq!(p("127.0.0.1", "key=k"), Ok(()));
        assert_eq!(p("::1", "key=k"), Ok(()));
        assert_eq!(p("127.0.0.2", "key=k"), Err(Denial::AddressDenied));
        assert_eq!(p("192.0.2.1", "key=k"), Err(Denial::AddressNotAllowed));
        assert_eq!(p("::2", "key=k"), Err(Denial::AddressNotAllowed));
        assert_eq!(p("127.0.0.1", "key=x"), Err(Denial::WrongKey));
    }

    #[test]
    fn key_file_reload() {
        let dir = std::env::temp_dir().join(format!("sluice-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keys.txt");
        std::fs::write(&f, "# comment\none\n\n").unwrap();
        let a = auth(&format!(
            "[app.live.publish]\nkey_file = {:?}\n",
            f.display().to_string()
        ));
        let p = |q: &str| a.check(Action::Publish, "live", "s", q, ip(V4));
        assert_eq!(p("key=one"), Ok(()));
        assert_eq!(p("key=two"), Err(Denial::WrongKey));
        std::fs::write(&f, "two\n").unwrap();
        assert_eq!(a.reload(), Ok(1));
        assert_eq!(p("key=two"), Ok(()));
        assert_eq!(p("key=one"), Err(Denial::WrongKey));
        std::fs::remove_file(&f).unwrap();
        assert!(a.reload().is_err());
        assert_eq!(p("key=two"), Ok(()), "a failed reload keeps the old keys");
    }

    #[test]
    fn penalties_grow_and_stay_bounded() {
        let p = Penalties::default();
        let t = Instant::now();
        let a = ip(V4);
        assert_eq!(p.fail(a, t), Duration::ZERO);
        assert_eq!(p.fail(a, t), PENALTY_BASE_DELAY);
        assert_eq!(p.fail(a, t), PENALTY_BASE_DELAY * 2);
        for _ in 0..20 {
            p.fail(a, t);
        }
        assert_eq!(p.fail(a, t), PENALTY_MAX_DELAY);
        assert_eq!(p.fail(a, t + PENALTY_FORGET), Duration::ZERO);
        for i in 0..(PENALTY_MAX_ADDRS as u32 + 10) {
            p.fail(IpAddr::V4(i.into()), t);
        }
        assert!(p.len() <= PENALTY_MAX_ADDRS);
    }
}
