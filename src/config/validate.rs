//! Checks that span several fields, in named steps: the renewal window,
//! each entry's fields and destination, names (explicit ones first, then
//! defaults), each service's own settings, and references between services.
//! Each refusal is a path into the document and a message; `parse` places
//! it with [`locate`](super::locate).

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use super::locate::Seg::{self, Index, Key};
use super::names::{default_name, truncate, MAX_NAME_LEN};
use super::schema::{Dur, Name, RawConfig, RawDestination, RawService, ServiceType};
use super::{
    Access, Config, IdentityConfig, MultiplexerConfig, Reader, ServiceConfig,
    DEFAULT_CREDENTIAL_TTL, DEFAULT_DIAG_MAX_CONNECTIONS, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MUX_MAX_CONNECTIONS, DEFAULT_RENEWAL_INTERVAL, MAX_PRINCIPALS, MIN_CREDENTIAL_TTL,
    MIN_INTERVAL, MUX_SOCKET_NAME, RESERVED_NAMES,
};

/// Where a refusal points, and why.
pub type Invalid = (Vec<Seg>, String);

/// Turns the file as written into the configuration tbot runs, or the first
/// problem found.
pub fn validate(raw: RawConfig, base: &Path) -> Result<Config, Invalid> {
    let resolve = |p: &Path| resolve(base, p);
    check_storage(&raw.storage)?;
    let credential_ttl = raw.credential_ttl.map_or(DEFAULT_CREDENTIAL_TTL, |d| d.0);
    let renewal_interval = raw
        .renewal_interval
        .map_or(DEFAULT_RENEWAL_INTERVAL, |d| d.0);
    check_window(
        credential_ttl,
        renewal_interval,
        raw.renewal_interval,
        vec![],
    )?;

    check_not_storage(&raw.services, &resolve(&raw.storage.path.0), &resolve)?;
    let (names, taken) = check_entries(&raw.services, &resolve)?;
    let names = default_names(&raw.services, names, taken);

    let defaults = (credential_ttl, renewal_interval);
    let services = raw
        .services
        .into_iter()
        .zip(names)
        .enumerate()
        .map(|(i, (s, name))| service(i, s, name.unwrap_or_default(), defaults, &resolve))
        .collect::<Result<Vec<_>, _>>()?;
    check_references(&services)?;
    let heartbeat_interval = raw
        .heartbeat_interval
        .map_or(DEFAULT_HEARTBEAT_INTERVAL, |d| d.0);
    if heartbeat_interval < MIN_INTERVAL {
        return Err((
            vec![Key("heartbeat_interval")],
            too_short("heartbeat_interval", heartbeat_interval),
        ));
    }
    let storage = resolve(&raw.storage.path.0);
    // A walk of the path: off the main thread, bounded, ended by a stop.
    let walked = storage.clone();
    let bound = crate::infra::bounded_read::DISK_BOUND;
    crate::infra::bounded_read::beside("trust-walk", bound, move || {
        crate::infra::trust::check_dirs_to_be(&walked)
    })
    .map_err(|e| format!("{}: {e}", storage.display()))
    .and_then(|r| r)
    .map_err(|e| (vec![Key("storage"), Key("path")], e))?;
    let debug_socket = match &raw.debug_socket {
        Some(p) => resolve(&p.0),
        None => storage.join(DEBUG_SOCKET_NAME),
    };
    check_debug_socket_path(&debug_socket, raw.debug_socket.is_some())?;

    Ok(Config {
        file: String::new(),
        diag_addr: raw.diag_addr.map(|a| a.0),
        diag_max_connections: raw
            .diag_max_connections
            .map_or(DEFAULT_DIAG_MAX_CONNECTIONS, |c| c.0),
        web_config_file: raw.web_config_file.map(|p| resolve(&p.0)),
        web: None,
        diag_unauthenticated_paths: raw
            .diag_unauthenticated_paths
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.0)
            .collect(),
        debug: raw.debug,
        debug_socket,
        storage,
        credential_ttl,
        renewal_interval,
        heartbeat_interval,
        services,
    })
}

/// `p` against the configuration file's directory: `./out` under
/// `/etc/tbot` is `/etc/tbot/out`, not `/etc/tbot/./out`.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    let p: PathBuf = p.components().filter(|c| *c != Component::CurDir).collect();
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

/// The debug socket's file name in the storage directory, when
/// `debug_socket:` does not place it.
pub const DEBUG_SOCKET_NAME: &str = "debug.sock";

/// The debug socket's path fits a Unix socket address (unix(7): 107
/// bytes), made absolute as the daemon will; the refusal points at
/// `debug_socket`, or at the storage path the default is made from.
fn check_debug_socket_path(p: &Path, set: bool) -> Result<(), Invalid> {
    let max = crate::infra::sockets::MAX_UNIX_SOCKET_PATH;
    let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let len = absolute.as_os_str().len();
    if len <= max {
        return Ok(());
    }
    let at = if set {
        vec![Key("debug_socket")]
    } else {
        vec![Key("storage"), Key("path")]
    };
    Err((
        at,
        format!(
            "the debug socket {} would be {len} bytes; a Unix socket path has at most {max} (unix(7)): set debug_socket: to a shorter one",
            absolute.display()
        ),
    ))
}

/// A renewal must come before the credential expires. The refusal points at
/// `renewal_interval` when it is set where checked (`at`), else at
/// `credential_ttl`. The one place this rule is checked, top level and per
/// service.
fn check_window(
    ttl: Duration,
    renew: Duration,
    renew_set: Option<Dur>,
    at: Vec<Seg>,
) -> Result<(), Invalid> {
    let fmt = crate::infra::duration::format;
    if ttl < MIN_CREDENTIAL_TTL || ttl.subsec_nanos() != 0 {
        let mut path = at;
        path.push(Key("credential_ttl"));
        return Err((
            path,
            format!(
                "credential_ttl ({}) must be a whole number of seconds, at least 1s: a certificate's validity is counted in seconds",
                fmt(ttl)
            ),
        ));
    }
    if renew < MIN_INTERVAL {
        let mut path = at;
        path.push(Key("renewal_interval"));
        return Err((path, too_short("renewal_interval", renew)));
    }
    if renew < ttl {
        return Ok(());
    }
    let field = if renew_set.is_some() {
        "renewal_interval"
    } else {
        "credential_ttl"
    };
    let mut path = at;
    path.push(Key(field));
    Err((
        path,
        format!(
            "renewal_interval ({}) must be shorter than credential_ttl ({})",
            crate::infra::duration::format(renew),
            crate::infra::duration::format(ttl)
        ),
    ))
}

/// The refusal of an interval below [`MIN_INTERVAL`].
fn too_short(field: &str, d: Duration) -> String {
    format!(
        "{field} ({}) is shorter than {}: tbot would do nothing else",
        crate::infra::duration::format(d),
        crate::infra::duration::format(MIN_INTERVAL)
    )
}

/// Each entry, in order: only the fields its type takes, a destination no
/// other entry uses, an explicit name that is unique and not reserved.
/// Returns the explicit names by index and every name taken.
fn check_entries(
    services: &[RawService],
    resolve: &impl Fn(&Path) -> PathBuf,
) -> Result<(Vec<Option<String>>, HashSet<String>), Invalid> {
    let mut taken: HashSet<String> = RESERVED_NAMES.iter().map(|s| s.to_string()).collect();
    let mut names: Vec<Option<String>> = vec![None; services.len()];
    let mut destinations: BTreeMap<PathBuf, usize> = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
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
    Ok((names, taken))
}

/// Default names for the entries without one, in an order that does not
/// depend on the list's order: by default name, then destination; a name
/// taken gets `-2`, `-3`, ... (within [`MAX_NAME_LEN`]).
fn default_names(
    services: &[RawService],
    mut names: Vec<Option<String>>,
    mut taken: HashSet<String>,
) -> Vec<Option<String>> {
    let mut unnamed: Vec<(String, String, usize)> = services
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
    names
}

/// Entry `i` as the service it configures; `defaults` are the top level's
/// (credential_ttl, renewal_interval).
fn service(
    i: usize,
    s: RawService,
    name: String,
    defaults: (Duration, Duration),
    resolve: &impl Fn(&Path) -> PathBuf,
) -> Result<ServiceConfig, Invalid> {
    let access = access(i, s.destination.as_ref())?;
    let destination = s
        .destination
        .map(|d| resolve(&d.path.0))
        .unwrap_or_default();
    Ok(match s.kind {
        ServiceType::Identity => {
            let principals: Vec<String> = s
                .principals
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.0)
                .collect();
            if principals.len() > MAX_PRINCIPALS {
                return Err((
                    vec![Key("services"), Index(i), Key("principals"), Index(MAX_PRINCIPALS)],
                    format!(
                        "{} principals: OpenSSH takes at most {MAX_PRINCIPALS} in a certificate (ssh-keygen -L says invalid format, sshd denies the login)",
                        principals.len()
                    ),
                ));
            }
            if principals.is_empty() {
                return Err((
                    vec![Key("services"), Index(i)],
                    "an identity service needs at least one entry in `principals`".into(),
                ));
            }
            let ttl = s.credential_ttl.map_or(defaults.0, |d| d.0);
            let renew = s.renewal_interval.map_or(defaults.1, |d| d.0);
            check_window(
                ttl,
                renew,
                s.renewal_interval,
                vec![Key("services"), Index(i)],
            )?;
            ServiceConfig::Identity(IdentityConfig {
                name,
                principals,
                destination,
                access,
                credential_ttl: ttl,
                renewal_interval: renew,
            })
        }
        ServiceType::SshMultiplexer => {
            let Some(identity) = s.identity else {
                return Err((
                    vec![Key("services"), Index(i)],
                    "an ssh-multiplexer service needs `identity`: the name of an identity service"
                        .into(),
                ));
            };
            check_socket_path(&destination, i)?;
            ServiceConfig::SshMultiplexer(MultiplexerConfig {
                name,
                destination,
                access,
                identity,
                max_connections: s
                    .max_connections
                    .map_or(DEFAULT_MUX_MAX_CONNECTIONS, |c| c.0),
            })
        }
    })
}

/// A multiplexer's `DESTINATION/v1.sock` fits a Unix socket address
/// (unix(7): 107 bytes), the destination made absolute as the service
/// will.
fn check_socket_path(destination: &Path, i: usize) -> Result<(), Invalid> {
    let max = crate::infra::sockets::MAX_UNIX_SOCKET_PATH;
    let absolute = std::path::absolute(destination).unwrap_or_else(|_| destination.to_path_buf());
    let len = absolute.join(MUX_SOCKET_NAME).as_os_str().len();
    if len <= max {
        return Ok(());
    }
    Err((
        vec![Key("services"), Index(i), Key("destination"), Key("path")],
        format!(
            "the socket path DESTINATION/{MUX_SOCKET_NAME} would be {len} bytes; a Unix socket path has at most {max} (unix(7)): choose a shorter destination"
        ),
    ))
}

/// The storage directory holds the CA key: it has no readers.
fn check_storage(storage: &RawDestination) -> Result<(), Invalid> {
    for (field, set) in [
        ("acls", storage.acls.is_some()),
        ("readers", storage.readers.is_some()),
    ] {
        if set {
            return Err((
                vec![Key("storage"), Key(field)],
                format!("field `{field}` does not apply to storage (it holds the CA key); set it on a service's destination"),
            ));
        }
    }
    Ok(())
}

/// No destination is the storage directory itself: it holds the CA key, and
/// its readers would be given traverse on it (see `services::readers`).
fn check_not_storage(
    services: &[RawService],
    storage: &Path,
    resolve: &impl Fn(&Path) -> PathBuf,
) -> Result<(), Invalid> {
    for (i, s) in services.iter().enumerate() {
        if s.destination
            .as_ref()
            .map(|d| resolve(&d.path.0))
            .as_deref()
            == Some(storage)
        {
            return Err((
                vec![Key("services"), Index(i), Key("destination"), Key("path")],
                format!(
                    "destination {} is the storage directory (it holds the CA key); use a directory inside it or elsewhere",
                    storage.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Entry `i`'s `acls` and `readers` (upstream's directory destination):
/// each reader names exactly one user or group, already looked up.
fn access(i: usize, dest: Option<&RawDestination>) -> Result<Access, Invalid> {
    let Some(dest) = dest else {
        return Ok(Access::default());
    };
    let mut readers = Vec::new();
    for (j, r) in dest.readers.iter().flatten().enumerate() {
        readers.push(match (&r.user, &r.group) {
            (Some(u), None) => Reader::User {
                name: u.0.clone(),
                uid: u.1,
            },
            (None, Some(g)) => Reader::Group {
                name: g.0.clone(),
                gid: g.1,
            },
            _ => {
                return Err((
                    vec![
                        Key("services"),
                        Index(i),
                        Key("destination"),
                        Key("readers"),
                        Index(j),
                    ],
                    "a reader is `{user: NAME}` or `{group: NAME}`: exactly one of the two".into(),
                ))
            }
        });
    }
    Ok(Access {
        acls: dest.acls.map_or_else(Default::default, |m| m.mode()),
        readers,
    })
}

/// Every multiplexer's `identity` names an identity service (now that every
/// name is known).
fn check_references(services: &[ServiceConfig]) -> Result<(), Invalid> {
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
                    format!(
                        "{:?} is not the name of an identity service (identity services: {known:?})",
                        m.identity
                    ),
                ));
            }
        }
    }
    Ok(())
}
