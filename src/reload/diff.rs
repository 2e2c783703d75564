//! Which services a new configuration adds, removes, changes and keeps.
//!
//! A service is compared by name on its *effective* configuration: its own
//! section plus every top-level setting it is built from (`services::build`).
//! So a changed `renewal_interval` changes every identity output that does
//! not override it, and the internal `identity`; a changed
//! `heartbeat_interval` changes `heartbeat`; a multiplexer whose identity
//! output moved changes too, since its ssh_config names that directory.
//!
//! A destination's `acls` and `readers` are not part of what a service is
//! built from: a service whose only change is there is kept (same thread,
//! same credential, same socket) and listed in `readers`, which a reload
//! applies in place (`services::readers`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{Access, Config, IdentityConfig, MultiplexerConfig, ServiceConfig};

/// What one service is built from. Two equal values build the same service.
#[derive(Debug, PartialEq)]
enum Effective {
    BotIdentity {
        storage: PathBuf,
        renewal_interval: Duration,
    },
    CaRotation {
        storage: PathBuf,
    },
    Heartbeat {
        storage: PathBuf,
        interval: Duration,
    },
    Identity(IdentityConfig),
    Multiplexer {
        config: MultiplexerConfig,
        identity_dir: Option<PathBuf>,
    },
}

/// Every service of `config` by name, as `services::build` builds them,
/// with its destination's access (set apart, see the module's doc).
fn effective(config: &Config) -> BTreeMap<String, (Effective, Option<Access>)> {
    let storage = || config.storage.clone();
    let mut all = BTreeMap::new();
    all.insert(
        "identity".to_string(),
        (
            Effective::BotIdentity {
                storage: storage(),
                renewal_interval: config.renewal_interval,
            },
            None,
        ),
    );
    all.insert(
        "ca-rotation".to_string(),
        (Effective::CaRotation { storage: storage() }, None),
    );
    all.insert(
        "heartbeat".to_string(),
        (
            Effective::Heartbeat {
                storage: storage(),
                interval: config.heartbeat_interval,
            },
            None,
        ),
    );
    for s in &config.services {
        let e = match s {
            ServiceConfig::Identity(c) => {
                let mut c = c.clone();
                let access = std::mem::take(&mut c.access);
                (Effective::Identity(c), Some(access))
            }
            ServiceConfig::SshMultiplexer(m) => {
                let mut m = m.clone();
                let access = std::mem::take(&mut m.access);
                let identity_dir = config.identity(&m.identity).map(|i| i.destination.clone());
                (
                    Effective::Multiplexer {
                        config: m,
                        identity_dir,
                    },
                    Some(access),
                )
            }
        };
        all.insert(s.name().to_string(), e);
    }
    all
}

/// Service names, sorted, in four disjoint sets.
#[derive(Debug, Default, PartialEq)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub kept: Vec<String>,
    /// Kept services whose destination's `acls`/`readers` changed, with
    /// the new ones (a subset of `kept`).
    pub readers: Vec<(String, Access)>,
}

/// Compares the services of `old` and `new` by name.
pub fn diff(old: &Config, new: &Config) -> Diff {
    let (old, new) = (effective(old), effective(new));
    let mut d = Diff::default();
    for (name, (was, was_access)) in &old {
        match new.get(name) {
            None => d.removed.push(name.clone()),
            Some((now, access)) if now == was => {
                d.kept.push(name.clone());
                if let Some(a) = access.as_ref().filter(|a| Some(*a) != was_access.as_ref()) {
                    d.readers.push((name.clone(), a.clone()));
                }
            }
            Some(_) => d.changed.push(name.clone()),
        }
    }
    d.added = new
        .keys()
        .filter(|n| !old.contains_key(*n))
        .cloned()
        .collect();
    d
}

/// A change tbot cannot apply while running, as a message that says so; or
/// None. The storage directory holds the CA key and the instance's identity:
/// moving it live would split the daemon across two directories. The
/// diagnostics connection cap also bounds the serving loop's parked `/wait`
/// requests, fixed when it starts.
pub fn needs_restart(old: &Config, new: &Config) -> Option<String> {
    if old.storage != new.storage {
        return Some(format!(
            "storage.path changed from {} to {}: a restart is needed to apply it",
            old.storage.display(),
            new.storage.display()
        ));
    }
    if old.diag_max_connections != new.diag_max_connections {
        return Some(format!(
            "diag_max_connections changed from {} to {}: a restart is needed to apply it",
            old.diag_max_connections, new.diag_max_connections
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(top: &str, services: &str) -> Config {
        let text = format!(
            "version: v2\nstorage: {{type: directory, path: /s}}\n{top}services:\n{services}"
        );
        crate::config::parse("t.yaml", &text, Path::new("/")).unwrap()
    }

    const ID_A: &str = "  - type: identity\n    name: a\n    principals: [x]\n    destination: {type: directory, path: /a}\n";
    const ID_B: &str = "  - type: identity\n    name: b\n    principals: [x]\n    destination: {type: directory, path: /b}\n";
    const ID_B2: &str = "  - type: identity\n    name: b\n    principals: [y]\n    destination: {type: directory, path: /b}\n";
    const ID_C: &str = "  - type: identity\n    name: c\n    principals: [x]\n    destination: {type: directory, path: /c}\n    renewal_interval: 5m\n";
    const MUX: &str = "  - type: ssh-multiplexer\n    name: m\n    identity: a\n    destination: {type: directory, path: /m}\n";

    #[test]
    fn services_are_added_removed_changed_and_kept_by_name() {
        let old = parse("", &[ID_A, ID_B, MUX].concat());
        let new = parse("", &[ID_A, ID_B2, ID_C].concat());
        let d = diff(&old, &new);
        assert_eq!(d.added, ["c"]);
        assert_eq!(d.removed, ["m"]);
        assert_eq!(d.changed, ["b"]);
        assert_eq!(d.kept, ["a", "ca-rotation", "heartbeat", "identity"]);
        assert_eq!(diff(&old, &old).kept.len(), 6);
    }

    #[test]
    fn top_level_settings_change_the_services_built_from_them() {
        let old = parse("", &[ID_A, ID_C, MUX].concat());
        let new = parse("renewal_interval: 10m\n", &[ID_A, ID_C, MUX].concat());
        let d = diff(&old, &new);
        // `c` overrides the interval; the multiplexer does not use it.
        assert_eq!(d.changed, ["a", "identity"]);
        let new = parse("heartbeat_interval: 1m\n", &[ID_A, ID_C, MUX].concat());
        assert_eq!(diff(&old, &new).changed, ["heartbeat"]);
        // The multiplexer's ssh_config names its identity output's directory.
        let moved = ID_A.replace("path: /a", "path: /a2");
        let new = parse("", &[moved.as_str(), ID_C, MUX].concat());
        assert_eq!(diff(&old, &new).changed, ["a", "m"]);
        let new = parse(
            "debug: true\ndiag_addr: 127.0.0.1:9\n",
            &[ID_A, ID_C, MUX].concat(),
        );
        assert!(diff(&old, &new).changed.is_empty());
    }

    #[test]
    fn a_readers_only_change_keeps_the_service_and_lists_the_new_readers() {
        let old = parse("", &[ID_A, MUX].concat());
        let with = |s: &str| s.replace("path: /a}", "path: /a, readers: [{user: root}]}");
        let new = parse("", &[with(ID_A).as_str(), MUX].concat());
        let d = diff(&old, &new);
        assert!(d.changed.is_empty(), "{d:?}");
        assert!(d.kept.contains(&"a".to_string()));
        assert_eq!(d.readers.len(), 1);
        assert_eq!(d.readers[0].0, "a");
        assert_eq!(d.readers[0].1.readers.len(), 1);
        // With another change too, the service is restarted (and built
        // with its new readers): not listed.
        let both = with(ID_A).replace("principals: [x]", "principals: [y]");
        let d = diff(&old, &parse("", &[both.as_str(), MUX].concat()));
        assert_eq!(d.changed, ["a"]);
        assert!(d.readers.is_empty());
        // The multiplexer's own readers.
        let mux = MUX.replace("path: /m}", "path: /m, acls: off}");
        let d = diff(&old, &parse("", &[ID_A, mux.as_str()].concat()));
        assert_eq!(
            d.readers.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
            ["m"]
        );
        assert!(d.changed.is_empty());
    }

    #[test]
    fn storage_and_the_diag_cap_need_a_restart() {
        let old = parse("", ID_A);
        assert_eq!(needs_restart(&old, &old), None);
        let mut new = old.clone();
        new.storage = PathBuf::from("/elsewhere");
        let msg = needs_restart(&old, &new).unwrap();
        assert!(
            msg.contains("/elsewhere") && msg.contains("restart"),
            "{msg}"
        );
        let mut new = old.clone();
        new.diag_max_connections += 1;
        assert!(needs_restart(&old, &new).unwrap().contains("restart"));
        new.diag_max_connections = old.diag_max_connections;
        new.diag_addr = Some("127.0.0.1:9".into());
        new.debug = !old.debug;
        assert_eq!(needs_restart(&old, &new), None);
    }
}
