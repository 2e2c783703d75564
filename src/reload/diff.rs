//! Which services a new configuration adds, removes, changes and keeps.
//!
//! A service is compared by name on its key (`services::Key`): what
//! `services::build` built it from, its own section plus every top-level
//! setting it reads. So a changed `renewal_interval` changes every identity
//! output that does not override it, and the internal `identity`; a changed
//! `heartbeat_interval` changes `heartbeat`; a multiplexer whose identity
//! output moved changes too, since its ssh_config names that directory.
//!
//! A destination's `acls` and `readers` are not part of a service's key:
//! a service whose only change is there is kept (same thread, same
//! credential, same socket) and listed in `readers`, which a reload
//! applies in place (`services::readers`).

use std::collections::BTreeMap;

use crate::config::{Access, Config};
use crate::services::Key;

/// A service as the diff sees it: its name, its key and its destination's
/// access (None: no destination).
pub type Item<'a> = (&'a str, Key, Option<&'a Access>);

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

/// Compares the services in force (`old`) with those of the new
/// configuration (`new`) by name.
pub fn diff<'a>(
    old: impl IntoIterator<Item = Item<'a>>,
    new: impl IntoIterator<Item = Item<'a>>,
) -> Diff {
    let by_name = |items: &mut dyn Iterator<Item = Item<'a>>| -> BTreeMap<&'a str, _> {
        items
            .map(|(name, key, access)| (name, (key, access)))
            .collect()
    };
    let old = by_name(&mut old.into_iter());
    let new = by_name(&mut new.into_iter());
    let mut d = Diff::default();
    for (name, (was, was_access)) in &old {
        match new.get(name) {
            None => d.removed.push(name.to_string()),
            Some((now, access)) if now == was => {
                d.kept.push(name.to_string());
                if let Some(a) = access.filter(|a| Some(*a) != *was_access) {
                    d.readers.push((name.to_string(), a.clone()));
                }
            }
            Some(_) => d.changed.push(name.to_string()),
        }
    }
    d.added = new
        .keys()
        .filter(|n| !old.contains_key(*n))
        .map(|n| n.to_string())
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
    use std::path::{Path, PathBuf};

    /// The diff of two configurations, through `services::build`'s keys.
    fn diff_of(old: &Config, new: &Config) -> Diff {
        let (old, new) = (crate::services::build(old), crate::services::build(new));
        diff(
            old.iter()
                .map(|s| (s.name.as_str(), s.key, s.access.as_ref())),
            new.iter()
                .map(|s| (s.name.as_str(), s.key, s.access.as_ref())),
        )
    }

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
        let d = diff_of(&old, &new);
        assert_eq!(d.added, ["c"]);
        assert_eq!(d.removed, ["m"]);
        assert_eq!(d.changed, ["b"]);
        assert_eq!(d.kept, ["a", "ca-rotation", "heartbeat", "identity"]);
        assert_eq!(diff_of(&old, &old).kept.len(), 6);
    }

    #[test]
    fn top_level_settings_change_the_services_built_from_them() {
        let old = parse("", &[ID_A, ID_C, MUX].concat());
        let new = parse("renewal_interval: 10m\n", &[ID_A, ID_C, MUX].concat());
        let d = diff_of(&old, &new);
        // `c` overrides the interval; the multiplexer does not use it.
        assert_eq!(d.changed, ["a", "identity"]);
        let new = parse("heartbeat_interval: 1m\n", &[ID_A, ID_C, MUX].concat());
        assert_eq!(diff_of(&old, &new).changed, ["heartbeat"]);
        // The multiplexer's ssh_config names its identity output's directory.
        let moved = ID_A.replace("path: /a", "path: /a2");
        let new = parse("", &[moved.as_str(), ID_C, MUX].concat());
        assert_eq!(diff_of(&old, &new).changed, ["a", "m"]);
        let new = parse(
            "debug: true\ndiag_addr: 127.0.0.1:9\n",
            &[ID_A, ID_C, MUX].concat(),
        );
        assert!(diff_of(&old, &new).changed.is_empty());
    }

    #[test]
    fn a_readers_only_change_keeps_the_service_and_lists_the_new_readers() {
        let old = parse("", &[ID_A, MUX].concat());
        let with = |s: &str| s.replace("path: /a}", "path: /a, readers: [{user: root}]}");
        let new = parse("", &[with(ID_A).as_str(), MUX].concat());
        let d = diff_of(&old, &new);
        assert!(d.changed.is_empty(), "{d:?}");
        assert!(d.kept.contains(&"a".to_string()));
        assert_eq!(d.readers.len(), 1);
        assert_eq!(d.readers[0].0, "a");
        assert_eq!(d.readers[0].1.readers.len(), 1);
        // With another change too, the service is restarted (and built
        // with its new readers): not listed.
        let both = with(ID_A).replace("principals: [x]", "principals: [y]");
        let d = diff_of(&old, &parse("", &[both.as_str(), MUX].concat()));
        assert_eq!(d.changed, ["a"]);
        assert!(d.readers.is_empty());
        // The multiplexer's own readers.
        let mux = MUX.replace("path: /m}", "path: /m, acls: off}");
        let d = diff_of(&old, &parse("", &[ID_A, mux.as_str()].concat()));
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
