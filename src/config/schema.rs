//! The file as written: serde types that mirror `tbot.yaml` field by field,
//! and scalar types that check themselves while parsing, so that their
//! errors carry serde_yaml's exact line and column.

use std::fmt;
use std::path::{Component, PathBuf};
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer};

use super::names::{check_addr, check_name};
use crate::infra::acl::AclMode;
use crate::infra::owner::{check_id, resolve_group, resolve_user};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[allow(dead_code)] // checked while parsing
    pub(super) version: Version,
    #[serde(default)]
    pub(super) diag_addr: Option<Addr>,
    #[serde(default)]
    pub(super) diag_max_connections: Option<Count>,
    #[serde(default)]
    pub(super) debug: bool,
    #[serde(default)]
    pub(super) debug_socket: Option<NonEmptyPath>,
    /// exporter-toolkit's web configuration file (see `super::web`).
    #[serde(default)]
    pub(super) web_config_file: Option<NonEmptyPath>,
    /// Paths served without basic auth or a client certificate.
    #[serde(default)]
    pub(super) diag_unauthenticated_paths: Option<Vec<UrlPath>>,
    pub(super) storage: RawDestination,
    #[serde(default)]
    pub(super) credential_ttl: Option<Dur>,
    #[serde(default)]
    pub(super) renewal_interval: Option<Dur>,
    #[serde(default)]
    pub(super) heartbeat_interval: Option<Dur>,
    #[serde(default)]
    pub(super) services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    #[serde(rename = "type")]
    #[allow(dead_code)] // one variant today; the field is still required
    pub(super) kind: DestinationType,
    pub(super) path: NonEmptyPath,
    /// Upstream's `acls: off|try|required` (directory destinations of
    /// services only; see `infra::acl`).
    #[serde(default)]
    pub(super) acls: Option<AclModeField>,
    #[serde(default)]
    pub(super) readers: Option<Vec<RawReader>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub(super) enum AclModeField {
    Off,
    Try,
    Required,
}

impl AclModeField {
    pub(super) fn mode(self) -> AclMode {
        match self {
            AclModeField::Off => AclMode::Off,
            AclModeField::Try => AclMode::Try,
            AclModeField::Required => AclMode::Required,
        }
    }
}

/// One entry of `readers:`: `{user: NAME|UID}` or `{group: NAME|GID}`
/// (exactly one: checked in `validate`). Each name is looked up while
/// parsing, so an unknown one is refused at its own line and column.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReader {
    #[serde(default)]
    pub(super) user: Option<UserId>,
    #[serde(default)]
    pub(super) group: Option<GroupId>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum DestinationType {
    Directory,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum ServiceType {
    Identity,
    SshMultiplexer,
}

impl ServiceType {
    pub(super) fn as_str(self) -> &'static str {
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
pub(super) struct RawService {
    #[serde(rename = "type")]
    pub(super) kind: ServiceType,
    #[serde(default)]
    pub(super) name: Option<Name>,
    #[serde(default)]
    pub(super) principals: Option<Vec<Principal>>,
    #[serde(default)]
    pub(super) destination: Option<RawDestination>,
    #[serde(default)]
    pub(super) identity: Option<String>,
    #[serde(default)]
    pub(super) credential_ttl: Option<Dur>,
    #[serde(default)]
    pub(super) renewal_interval: Option<Dur>,
    #[serde(default)]
    pub(super) max_connections: Option<Count>,
}

impl RawService {
    /// (field, is it set) for every optional field, to refuse the ones the
    /// type does not take.
    pub(super) fn set_fields(&self) -> [(&'static str, bool); 6] {
        [
            ("principals", self.principals.is_some()),
            ("identity", self.identity.is_some()),
            ("credential_ttl", self.credential_ttl.is_some()),
            ("renewal_interval", self.renewal_interval.is_some()),
            ("max_connections", self.max_connections.is_some()),
            ("destination", self.destination.is_some()),
        ]
    }

    pub(super) fn allowed(&self, field: &str) -> bool {
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

pub(super) struct Version;
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
pub(super) struct Dur(pub(super) Duration);
impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| match crate::infra::duration::parse(s)? {
            v if v.is_zero() => Err(format!("invalid duration {s:?}: must be more than zero")),
            v => Ok(Dur(v)),
        })
    }
}

pub(super) struct Count(pub(super) usize);
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

pub(super) struct Addr(pub(super) String);
impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| check_addr(s).map(|_| Addr(s.to_string())))
    }
}

pub(super) struct Name(pub(super) String);
impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| check_name(s).map(|_| Name(s.to_string())))
    }
}

pub(super) struct Principal(pub(super) String);
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

pub(super) struct NonEmptyPath(pub(super) PathBuf);
impl<'de> Deserialize<'de> for NonEmptyPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| {
            if s.is_empty() || s.contains('\0') {
                return Err("invalid path: must be non-empty".into());
            }
            let path = PathBuf::from(s);
            if path.components().any(|c| c == Component::ParentDir) {
                // Lexical rules (storage containment, one destination per
                // entry) would say one thing and the walk, which follows
                // `..`, another.
                return Err(format!(
                    "invalid path {s:?}: `..` is not allowed; write the directory itself"
                ));
            }
            Ok(NonEmptyPath(path))
        })
    }
}

/// A diagnostics path as a request names it: `/livez`, exact (no query).
pub(super) struct UrlPath(pub(super) String);
impl<'de> Deserialize<'de> for UrlPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_str(d, |s| {
            if !s.starts_with('/')
                || s.contains(['?', '#'])
                || !s.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(format!(
                    "invalid path {s:?}: an absolute request path such as /livez, without query"
                ));
            }
            Ok(UrlPath(s.to_string()))
        })
    }
}

/// A user or group as written (a name, or a number, quoted or not) and its
/// id, looked up in the system's database while parsing.
fn checked_id<'de, D: Deserializer<'de>>(
    d: D,
    resolve: fn(&str) -> Result<u32, String>,
) -> Result<(String, u32), D::Error> {
    struct V(fn(&str) -> Result<u32, String>);
    impl Visitor<'_> for V {
        type Value = (String, u32);
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a name or a numeric id")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            (self.0)(v).map(|id| (v.to_string(), id)).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            check_id(n, "user or group")
                .map(|id| (n.to_string(), id))
                .map_err(E::custom)
        }
    }
    d.deserialize_any(V(resolve))
}

pub(super) struct UserId(pub(super) String, pub(super) u32);
impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_id(d, resolve_user).map(|(n, id)| UserId(n, id))
    }
}

pub(super) struct GroupId(pub(super) String, pub(super) u32);
impl<'de> Deserialize<'de> for GroupId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked_id(d, resolve_group).map(|(n, id)| GroupId(n, id))
    }
}
