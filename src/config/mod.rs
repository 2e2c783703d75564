//! The configuration file (YAML, `version: v2`): strict parsing, validation,
//! default service names.
//!
//! Every error names the file, line and column: type and syntax errors come
//! with serde_yaml's location; checks that span several fields (durations
//! that must be ordered, duplicate names, references between services) find
//! the offending node's location with [`locate`], which walks the same text
//! again with serde_yaml.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

mod text;

pub const RESERVED_NAMES: [&str; 3] = ["identity", "heartbeat", "ca-rotation"];
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_RENEWAL_INTERVAL: Duration = Duration::from_secs(20 * 60);
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_DIAG_MAX_CONNECTIONS: usize = 64;
pub const DEFAULT_MUX_MAX_CONNECTIONS: usize = 64;
const MAX_NAME_LEN: usize = 64;

/// A configuration problem, rendered `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

// ---------------------------------------------------------------------------
// The validated configuration the rest of tbot uses.

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub file: String,
    pub diag_addr: Option<String>,
    pub diag_max_connections: usize,
    pub debug: bool,
    pub storage: PathBuf,
    pub credential_ttl: Duration,
    pub renewal_interval: Duration,
    pub heartbeat_interval: Duration,
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone)]
pub enum ServiceConfig {
    Identity(IdentityConfig),
    SshMultiplexer(MultiplexerConfig),
}

// PartialEq: a reload compares each service's configuration (see `reload::diff`).
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    pub name: String,
    pub principals: Vec<String>,
    pub destination: PathBuf,
    pub credential_ttl: Duration,
    pub renewal_interval: Duration,
}

// PartialEq: a reload compares each service's configuration (see `reload::diff`).
#[derive(Debug, Clone, PartialEq)]
pub struct MultiplexerConfig {
    pub name: String,
    pub destination: PathBuf,
    /// Name of the identity output whose key the written ssh_config uses.
    pub identity: String,
    pub max_connections: usize,
}

impl ServiceConfig {
    pub fn name(&self) -> &str {
        match self {
            ServiceConfig::Identity(c) => &c.name,
            ServiceConfig::SshMultiplexer(c) => &c.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ServiceConfig::Identity(_) => ServiceType::Identity.as_str(),
            ServiceConfig::SshMultiplexer(_) => ServiceType::SshMultiplexer.as_str(),
        }
    }
}

impl Config {
    pub fn identity(&self, name: &str) -> Option<&IdentityConfig> {
        self.services.iter().find_map(|s| match s {
            ServiceConfig::Identity(c) if c.name == name => Some(c),
            _ => None,
        })
    }
}

// ---------------------------------------------------------------------------
// The file as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[allow(dead_code)] // checked while parsing
    version: Version,
    #[serde(default)]
    diag_addr: Option<Addr>,
    #[serde(default)]
    diag_max_connections: Option<Count>,
    #[serde(default)]
    debug: bool,
    storage: RawDestination,
    #[serde(default)]
    credential_ttl: Option<Dur>,
    #[serde(default)]
    renewal_interval: Option<Dur>,
    #[serde(default)]
    heartbeat_interval: Option<Dur>,
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    #[serde(rename = "type")]
    #[allow(dead_code)] // one variant today; the field is still required
    kind: DestinationType,
    path: NonEmptyPath,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum DestinationType {
    Directory,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum ServiceType {
    Identity,
    SshMultiplexer,
}

impl ServiceType {
    fn as_str(self) -> &'static str {
        match self {
            ServiceType::Identity => "identity",
            ServiceType::SshMultiplexer => "ssh-multiplexer",
        }
    }
}

/// One entry of `services:`. Flat on purpose: serde_yaml reports precise
/// locations for flat structs; which fields a type accepts is checked after.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    #[serde(rename = "type")]
    kind: ServiceType,
    #[serde(default)]
    name: Option<Name>,
    #[serde(default)]
    principals: Option<Vec<Principal>>,
    #[serde(default)]
    destination: Option<RawDestination>,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    credential_ttl: Option<Dur>,
    #[serde(default)]
    renewal_interval: Option<Dur>,
    #[serde(default)]
    max_connections: Option<Count>,
}

impl RawService {
    /// (field, is it set) for every optional field, to refuse the ones the
    /// type does not take.
    fn set_fields(&self) -> [(&'static str, bool); 6] {
        [
            ("principals", self.principals.is_some()),
            ("identity", self.identity.is_some()),
            ("credential_ttl", self.credential_ttl.is_some()),
            ("renewal_interval", self.renewal_interval.is_some()),
            ("max_connections", self.max_connections.is_some()),
            ("destination", self.destination.is_some()),
        ]
    }

    fn allowed(&self, field: &str) -> bool {
        match self.kind {
            ServiceType::Identity => {
                matches!(
                    field,
                    "principals" | "credential_ttl" | "renewal_interval" | "destination"
                )
            }
            ServiceType::SshMultiplexer => {
                matches!(field, "identity" | "max_connections" | "destination")
            }
        }
    }
}

// Scalar types that validate themselves while parsing, so their errors carry
// serde_yaml's exact location.

/// Deserializes a string and checks it inside the visitor, so that
/// serde_yaml stamps a refusal with the value's own line and column.
fn checked_str<'de, D: Deserializer<'de>, T>(
    d: D,
    check: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct V<T>(fn(&str) -> Result<T, String>);
    impl<'de, T> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(V(check))
}

struct Version;
impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| match s {
            "v2" => Ok(Version),
            _ => Err(format!(
                "unsupported version {s:?}: this tbot reads version: v2"
            )),
        })
    }
}

#[derive(Clone, Copy)]
struct Dur(Duration);
impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| match crate::duration::parse(s)? {
            v if v.is_zero() => Err(format!("invalid duration {s:?}: must be more than zero")),
            v => Ok(Dur(v)),
        })
    }
}

struct Count(usize);
impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Count;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number from 1 to 65535")
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Count, E> {
                if (1..=65_535).contains(&n) {
                    Ok(Count(n as usize))
                } else {
                    Err(E::custom(format!(
                        "invalid count {n}: must be between 1 and 65535"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Count, E> {
                Err(E::custom(format!(
                    "invalid count {n}: must be between 1 and 65535"
                )))
            }
        }
        d.deserialize_u64(V)
    }
}

struct Addr(String);
impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| check_addr(s).map(|_| Addr(s.to_string())))
    }
}

struct Name(String);
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| check_name(s).map(|_| Name(s.to_string())))
    }
}

struct Principal(String);
impl<'de> Deserialize<'de> for Principal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| {
            if s.is_empty()
                || s.len() > 256
                || s.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ',')
            {
                return Err(format!("invalid principal {s:?}: must be 1 to 256 characters, without spaces or commas"));
            }
            Ok(Principal(s.to_string()))
        })
    }
}

struct NonEmptyPath(PathBuf);
impl<'de> Deserialize<'de> for NonEmptyPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| {
            if s.is_empty() || s.contains('\0') {
                return Err("invalid path: must be non-empty".into());
            }
            Ok(NonEmptyPath(PathBuf::from(s)))
        })
    }
}

/// `HOST:PORT` with an IP literal (`[::1]:3001` for IPv6) or a host name.
pub fn check_addr(s: &str) -> Result<(), String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = |why: &str| {
        Err(format!(
            "invalid address {s:?}: {why} (expected HOST:PORT, e.g. 127.0.0.1:3001)"
        ))
    };
    let Some((host, port)) = s.rsplit_once(':') else {
        return bad("no port");
    };
    if port.parse::<u16>().is_err() {
        return bad("port must be a number from 0 to 65535");
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && !host.chars().all(|c| c.is_ascii_digit() || c == '.');
    if !host_ok {
        return bad("bad host");
    }
    Ok(())
}

/// `^[a-z0-9_+-]{1,64}$`, not a reserved name.
pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_NAME_LEN || !s.chars().all(name_char) {
        return Err(format!(
            "invalid service name {s:?}: use 1 to {MAX_NAME_LEN} characters from a-z, 0-9, '_', '+', '-'"
        ));
    }
    if RESERVED_NAMES.contains(&s) {
        return Err(format!(
            "service name {s:?} is reserved for an internal service"
        ));
    }
    Ok(())
}

fn name_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '+' | '-')
}

/// The default name of a service: its type and its destination path,
/// sanitised (`identity` at `/opt/machine-id` → `identity-opt-machine-id`).
pub fn default_name(kind: &str, destination: &str) -> String {
    let mut out = String::from(kind);
    let mut dash = true;
    out.push('-');
    for c in destination.chars().flat_map(char::to_lowercase) {
        if name_char(c) && c != '-' {
            out.push(c);
            dash = false;
        } else if !dash {
            out.push('-');
            dash = true;
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    truncate(out, MAX_NAME_LEN)
}

fn truncate(mut s: String, max: usize) -> String {
    // Names are ASCII, so byte truncation is char truncation.
    s.truncate(max);
    while s.ends_with('-') {
        s.pop();
    }
    s
}

// ---------------------------------------------------------------------------
// Loading.

/// The largest configuration file read, in bytes: a real one is a few KiB;
/// a wrong path (`/dev/zero`, a log file) is refused rather than read into
/// memory without end.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, Error> {
    let file = path.display().to_string();
    let error = |message: String| Error {
        file: file.clone(),
        line: 0,
        column: 0,
        message,
    };
    let text = read_limited(path, MAX_CONFIG_BYTES).map_err(|e| error(e.to_string()))?;
    let Some(text) = text else {
        return Err(error(format!(
            "larger than {} MiB; is this the configuration file?",
            MAX_CONFIG_BYTES / (1024 * 1024)
        )));
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&file, &text, &base)
}

/// Reads a whole file as UTF-8 text, or None when it is longer than `max`
/// bytes. Any kind of file: a pipe (`-c <(...)`) works like a regular file.
fn read_limited(path: &Path, max: u64) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        // Checked before UTF-8: the cut may split a character.
        return Ok(None);
    }
    String::from_utf8(bytes).map(Some).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// Parses and validates configuration text. Relative paths are resolved
/// against `base` (the configuration file's directory).
pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, Error> {
    let text = text::admit(text).map_err(|(line, column, message)| Error {
        file: file.to_string(),
        line,
        column,
        message,
    })?;
    let raw: RawConfig = serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?;
    validate(raw, base).map_err(|(path, message)| {
        let (line, column) = locate(text, &path).unwrap_or((0, 0));
        let message = if path.is_empty() {
            message
        } else {
            format!("{}: {message}", render_path(&path))
        };
        Error {
            file: file.to_string(),
            line,
            column,
            message,
        }
    })
}

/// `services[1].name`, as serde_yaml writes paths.
fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out += k,
            Seg::Key(k) => out += &format!(".{k}"),
            Seg::Index(i) => out += &format!("[{i}]"),
        }
    }
    out
}

fn yaml_error(file: &str, e: &serde_yaml::Error) -> Error {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    // serde_yaml says " at line L column C" of the error's own place, which
    // the prefix says already; another place it names (where the flow
    // mapping being parsed began) stays.
    let message = e
        .to_string()
        .replace(&format!(" at line {line} column {column}"), "");
    Error {
        file: file.to_string(),
        line,
        column,
        message,
    }
}

/// A step of a path into the YAML document.
#[derive(Clone, Debug)]
pub enum Seg {
    Key(&'static str),
    Index(usize),
}

type Invalid = (Vec<Seg>, String);

fn validate(raw: RawConfig, base: &Path) -> Result<Config, Invalid> {
    use Seg::{Index, Key};
    // `./out` under `/etc/tbot` is `/etc/tbot/out`, not `/etc/tbot/./out`.
    let resolve = |p: &Path| -> PathBuf {
        let p: PathBuf = p
            .components()
            .filter(|c| *c != std::path::Component::CurDir)
            .collect();
        if p.is_absolute() {
            p
        } else {
            base.join(p)
        }
    };

    let credential_ttl = raw.credential_ttl.map_or(DEFAULT_CREDENTIAL_TTL, |d| d.0);
    let renewal_interval = raw
        .renewal_interval
        .map_or(DEFAULT_RENEWAL_INTERVAL, |d| d.0);
    if renewal_interval >= credential_ttl {
        let at = if raw.renewal_interval.is_some() {
            "renewal_interval"
        } else {
            "credential_ttl"
        };
        return Err((
            vec![Key(at)],
            format!(
                "renewal_interval ({}) must be shorter than credential_ttl ({})",
                crate::duration::format(renewal_interval),
                crate::duration::format(credential_ttl)
            ),
        ));
    }

    // Names: explicit ones first (unique, not reserved), then defaults for
    // the rest, in an order that does not depend on the list's order.
    let mut taken: HashSet<String> = RESERVED_NAMES.iter().map(|s| s.to_string()).collect();
    let mut names: Vec<Option<String>> = vec![None; raw.services.len()];
    let mut destinations: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for (i, s) in raw.services.iter().enumerate() {
        let at = |k| vec![Key("services"), Index(i), Key(k)];
        for (field, set) in s.set_fields() {
            if set && !s.allowed(field) {
                return Err((
                    at(field),
                    format!(
                        "field `{field}` does not apply to a {} service",
                        s.kind.as_str()
                    ),
                ));
            }
        }
        let Some(dest) = &s.destination else {
            return Err((
                vec![Key("services"), Index(i)],
                "missing field `destination`".into(),
            ));
        };
        if let Some(j) = destinations.insert(resolve(&dest.path.0), i) {
            return Err((
                vec![Key("services"), Index(i), Key("destination"), Key("path")],
                format!(
                    "destination {} is already used by services[{j}]",
                    dest.path.0.display()
                ),
            ));
        }
        if let Some(Name(n)) = &s.name {
            if !taken.insert(n.clone()) {
                return Err((at("name"), format!("service name {n:?} is used twice")));
            }
            names[i] = Some(n.clone());
        }
    }
    let mut unnamed: Vec<(String, String, usize)> = raw
        .services
        .iter()
        .enumerate()
        .filter(|(i, _)| names[*i].is_none())
        .filter_map(|(i, s)| {
            let dest = s.destination.as_ref()?.path.0.display().to_string();
            Some((default_name(s.kind.as_str(), &dest), dest, i))
        })
        .collect();
    unnamed.sort();
    for (name, _, i) in unnamed {
        let mut candidate = name.clone();
        let mut n = 2;
        while taken.contains(&candidate) {
            let suffix = format!("-{n}");
            candidate = truncate(name.clone(), MAX_NAME_LEN - suffix.len()) + &suffix;
            n += 1;
        }
        taken.insert(candidate.clone());
        names[i] = Some(candidate);
    }

    let mut services = Vec::with_capacity(raw.services.len());
    for (i, (s, name)) in raw.services.into_iter().zip(names).enumerate() {
        let at = |k| vec![Key("services"), Index(i), Key(k)];
        let name = name.unwrap_or_default();
        let destination = s
            .destination
            .map(|d| resolve(&d.path.0))
            .unwrap_or_default();
        services.push(match s.kind {
            ServiceType::Identity => {
                let principals: Vec<String> = s.principals.unwrap_or_default().into_iter().map(|p| p.0).collect();
                if principals.is_empty() {
                    return Err((
                        vec![Key("services"), Index(i)],
                        "an identity service needs at least one entry in `principals`".into(),
                    ));
                }
                let ttl = s.credential_ttl.map_or(credential_ttl, |d| d.0);
                let renew = s.renewal_interval.map_or(renewal_interval, |d| d.0);
                if renew >= ttl {
                    let field = if s.renewal_interval.is_some() { "renewal_interval" } else { "credential_ttl" };
                    return Err((
                        at(field),
                        format!(
                            "renewal_interval ({}) must be shorter than credential_ttl ({})",
                            crate::duration::format(renew),
                            crate::duration::format(ttl)
                        ),
                    ));
                }
                ServiceConfig::Identity(IdentityConfig {
                    name,
                    principals,
                    destination,
                    credential_ttl: ttl,
                    renewal_interval: renew,
                })
            }
            ServiceType::SshMultiplexer => {
                let Some(identity) = s.identity else {
                    return Err((
                        vec![Key("services"), Index(i)],
                        "an ssh-multiplexer service needs `identity`: the name of an identity service".into(),
                    ));
                };
                ServiceConfig::SshMultiplexer(MultiplexerConfig {
                    name,
                    destination,
                    identity,
                    max_connections: s.max_connections.map_or(DEFAULT_MUX_MAX_CONNECTIONS, |c| c.0),
                })
            }
        });
    }
    // References between services, now that every name is known.
    for (i, s) in services.iter().enumerate() {
        if let ServiceConfig::SshMultiplexer(m) = s {
            let target = services.iter().find(|t| t.name() == m.identity);
            if !matches!(target, Some(ServiceConfig::Identity(_))) {
                let known: Vec<&str> = services
                    .iter()
                    .filter(|t| matches!(t, ServiceConfig::Identity(_)))
                    .map(ServiceConfig::name)
                    .collect();
                return Err((
                    vec![Key("services"), Index(i), Key("identity")],
                    format!("{:?} is not the name of an identity service (identity services: {known:?})", m.identity),
                ));
            }
        }
    }

    Ok(Config {
        file: String::new(),
        diag_addr: raw.diag_addr.map(|a| a.0),
        diag_max_connections: raw
            .diag_max_connections
            .map_or(DEFAULT_DIAG_MAX_CONNECTIONS, |c| c.0),
        debug: raw.debug,
        storage: resolve(&raw.storage.path.0),
        credential_ttl,
        renewal_interval,
        heartbeat_interval: raw
            .heartbeat_interval
            .map_or(DEFAULT_HEARTBEAT_INTERVAL, |d| d.0),
        services,
    })
}

// ---------------------------------------------------------------------------
// Locating a node: walk the document along `path` and fail on purpose at the
// node; serde_yaml stamps that failure with the node's line and column.

const HERE: &str = "\u{0}tbot-locate";

/// (line, column) of the node at `path`, or of its nearest existing parent.
pub fn locate(text: &str, path: &[Seg]) -> Option<(usize, usize)> {
    for len in (0..=path.len()).rev() {
        let seed = Walk { path: &path[..len] };
        if let Err(e) = seed.deserialize(serde_yaml::Deserializer::from_str(text)) {
            if e.to_string().contains(HERE) {
                return e.location().map(|l| (l.line(), l.column()));
            }
        }
    }
    None
}

struct Walk<'a> {
    path: &'a [Seg],
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Seg::Key(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(HERE));
        };
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            if key.as_str() == Some(*want) {
                return map.next_value_seed(Walk { path: rest });
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Seg::Index(want), rest)) = self.path.split_first() else {
            return Err(de::Error::custom(HERE));
        };
        let mut i = 0;
        while i < *want {
            if seq.next_element::<IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
        seq.next_element_seed(Walk { path: rest }).map(|_| ())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.leaf()
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.leaf()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.leaf()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf()
    }
}

impl Walk<'_> {
    fn leaf<E: de::Error>(&self) -> Result<(), E> {
        if self.path.is_empty() {
            Err(E::custom(HERE))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, Error> {
        parse("c.yaml", text, Path::new("/base"))
    }

    #[test]
    fn reads_at_most_the_limit_and_says_which_limit_was_hit() {
        let dir = crate::testutil::TestDir::new("cfg-limit");
        let file = dir.0.join("c.yaml");
        // The limit falls inside a two-byte character: still "too large".
        std::fs::write(&file, "#aaé").unwrap();
        assert_eq!(read_limited(&file, 4).unwrap(), None);
        assert_eq!(read_limited(&file, 5).unwrap().as_deref(), Some("#aaé"));
        std::fs::write(&file, b"ok\n\xff").unwrap();
        let e = read_limited(&file, 100).unwrap_err();
        assert_eq!(e.to_string(), "not UTF-8 text (byte 3)");
    }

    const GOOD: &str = "version: v2
storage: {type: directory, path: /var/lib/tbot}
services:
  - type: identity
    principals: [deploy]
    destination: {type: directory, path: /opt/machine-id}
  - type: identity
    name: my-service-123
    principals: [a, b]
    destination: {type: directory, path: out}
  - type: ssh-multiplexer
    destination: {type: directory, path: /opt/machine-id/mux}
    identity: my-service-123
";

    #[test]
    fn good_config_gets_defaults_and_names() {
        let c = parse_str(GOOD).unwrap();
        let names: Vec<&str> = c.services.iter().map(ServiceConfig::name).collect();
        assert_eq!(
            names,
            [
                "identity-opt-machine-id",
                "my-service-123",
                "ssh-multiplexer-opt-machine-id-mux"
            ]
        );
        assert_eq!(c.credential_ttl, DEFAULT_CREDENTIAL_TTL);
        assert_eq!(
            c.identity("my-service-123").unwrap().destination,
            Path::new("/base/out")
        );
        assert!(c.diag_addr.is_none());
        let c = parse_str(&GOOD.replace("path: out}", "path: ./out/./x}")).unwrap();
        assert_eq!(
            c.identity("my-service-123").unwrap().destination,
            Path::new("/base/out/x")
        );
    }

    fn err(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nbogus: 1\n");
        assert!(e.starts_with("c.yaml:3:1: unknown field `bogus`"), "{e}");
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: identity\n    principals: [a]\n    destination: {type: directory, path: /o}\n    colour: red\n");
        assert!(
            e.starts_with("c.yaml:7:5: services[0]: unknown field `colour`"),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\ncredential_ttl: 5x\n");
        assert!(
            e.starts_with("c.yaml:3:17: ") && e.contains("invalid duration \"5x\""),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\ndiag_addr: nope\n");
        assert!(
            e.starts_with("c.yaml:3:12: ") && e.contains("invalid address"),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\ncredential_ttl: 10m\nrenewal_interval: 20m\n");
        assert!(
            e.starts_with(
                "c.yaml:4:19: renewal_interval: renewal_interval (20m0s) must be shorter"
            ),
            "{e}"
        );
        let e = err("version: v3\n");
        assert!(
            e.starts_with("c.yaml:1:10: version: unsupported version"),
            "{e}"
        );
        let e = err("version: v2\n");
        assert!(e.starts_with("c.yaml:1:1: missing field `storage`"), "{e}");
        let e = err("");
        assert!(e.contains("missing field `version`"), "{e}");
        let e = err("version: v2\nstorage: [\n");
        assert!(e.starts_with("c.yaml:"), "{e}");
    }

    #[test]
    fn name_rules() {
        let svc = |name: &str| {
            format!("version: v2\nstorage: {{type: directory, path: /x}}\nservices:\n  - type: identity\n    name: {name}\n    principals: [a]\n    destination: {{type: directory, path: /o}}\n")
        };
        assert!(
            err(&svc("Upper")).starts_with("c.yaml:5:11: services[0].name: invalid service name")
        );
        assert!(err(&svc(&"a".repeat(65))).contains("invalid service name"));
        assert!(err(&svc("heartbeat")).contains("reserved"));
        assert!(parse_str(&svc(&"a".repeat(64))).is_ok());
        let twice = "version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: identity\n    name: a\n    principals: [a]\n    destination: {type: directory, path: /o}\n  - type: identity\n    name: a\n    principals: [a]\n    destination: {type: directory, path: /p}\n";
        assert!(
            err(twice)
                .starts_with("c.yaml:9:11: services[1].name: service name \"a\" is used twice"),
            "{}",
            err(twice)
        );
    }

    #[test]
    fn default_names_are_stable_under_reordering() {
        let a = "  - type: identity\n    principals: [a]\n    destination: {type: directory, path: /opt/a.b}\n";
        let b = "  - type: identity\n    principals: [a]\n    destination: {type: directory, path: /opt/a b}\n";
        let head = "version: v2\nstorage: {type: directory, path: /x}\nservices:\n";
        let one = parse_str(&format!("{head}{a}{b}")).unwrap();
        let two = parse_str(&format!("{head}{b}{a}")).unwrap();
        let by_dest = |c: &Config| {
            let mut v: Vec<(String, String)> = c
                .services
                .iter()
                .map(|s| match s {
                    ServiceConfig::Identity(i) => {
                        (i.destination.display().to_string(), i.name.clone())
                    }
                    ServiceConfig::SshMultiplexer(_) => unreachable!(),
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(by_dest(&one), by_dest(&two));
        let names: HashSet<String> = one.services.iter().map(|s| s.name().to_string()).collect();
        assert!(
            names.contains("identity-opt-a-b") && names.contains("identity-opt-a-b-2"),
            "{names:?}"
        );
    }

    #[test]
    fn default_name_sanitises() {
        assert_eq!(
            default_name("identity", "/opt/machine-id"),
            "identity-opt-machine-id"
        );
        assert_eq!(
            default_name("identity", "./Out Dir//x"),
            "identity-out-dir-x"
        );
        assert_eq!(default_name("identity", "/"), "identity");
        assert!(default_name("identity", &"/abc".repeat(40)).len() <= 64);
    }

    #[test]
    fn reserved_default_names_get_a_suffix() {
        let c = parse_str("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: identity\n    principals: [a]\n    destination: {type: directory, path: /}\n").unwrap();
        assert_eq!(c.services[0].name(), "identity-2");
    }

    #[test]
    fn type_specific_fields_and_references() {
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: ssh-multiplexer\n    principals: [a]\n    destination: {type: directory, path: /o}\n");
        assert!(
            e.starts_with("c.yaml:5:17: services[0].principals: field `principals` does not apply"),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: ssh-multiplexer\n    identity: nope\n    destination: {type: directory, path: /o}\n");
        assert!(
            e.starts_with("c.yaml:5:15: services[0].identity: \"nope\" is not the name of an identity service"),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: identity\n    destination: {type: directory, path: /o}\n");
        assert!(
            e.starts_with("c.yaml:4:5: services[0]: an identity service needs"),
            "{e}"
        );
    }
}
