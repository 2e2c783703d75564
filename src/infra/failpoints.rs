//! Fault injection for the integration tests, compiled into debug builds
//! only (release builds get empty inline functions).
//!
//! `TBOT_FAILPOINTS="heartbeat=panic:1,heartbeat-start=sleep:3000"`: at the
//! point named `heartbeat`, panic the first time; at `heartbeat-start`,
//! sleep 3000 ms. `name=on` sets a switch that [`on`] reads
//! (`mux-no-fd-budget=on`: the multiplexer's cap is not fitted to the
//! open-file limit, so that a test can run it out of descriptors;
//! `service-hold@NAME=on`: the supervisor holds the service NAME in its
//! start, `initializing`, until it stops).
//! `name=fail:N` makes [`fails`] true at the N-th time the point is
//! reached only (`diag-start=fail:2`: the diagnostics service starts at
//! tbot's start and fails to at the first reload that starts it again).
//! This is how the suite proves, through the real binary,
//! that a panicking service is caught, reported and restarted.
//!
//! A point inside a file write ([`hit_in_write`]) can also be named for one
//! file, `point@<file name>` (`stage-half@key=sleep:30000`), and logs
//! `failpoint reached name=... path=...` before acting, so that a test knows
//! the write is in progress and can SIGKILL tbot right there. It exists in
//! debug builds only: its caller (`atomic_file`) is compiled out of
//! release builds with it.

#[cfg(debug_assertions)]
mod imp {
    use std::collections::HashMap;
    use std::path::Path;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    enum Action {
        Panic(u32),
        Sleep(u64),
        On,
        /// Hits left until the one that fails (1: the next).
        FailAt(u64),
    }

    fn points() -> &'static Mutex<HashMap<String, Action>> {
        static P: OnceLock<Mutex<HashMap<String, Action>>> = OnceLock::new();
        P.get_or_init(|| {
            let spec = std::env::var("TBOT_FAILPOINTS").unwrap_or_default();
            let mut map = HashMap::new();
            for item in spec.split(',').filter(|s| !s.is_empty()) {
                let Some((name, action)) = item.split_once('=') else {
                    continue;
                };
                let (kind, arg) = action.split_once(':').unwrap_or((action, "1"));
                let n: u64 = arg.parse().unwrap_or(1);
                match kind {
                    "panic" => map.insert(name.to_string(), Action::Panic(n as u32)),
                    "sleep" => map.insert(name.to_string(), Action::Sleep(n)),
                    "on" => map.insert(name.to_string(), Action::On),
                    "fail" => map.insert(name.to_string(), Action::FailAt(n)),
                    _ => None,
                };
            }
            Mutex::new(map)
        })
    }

    enum Due {
        Panic,
        Sleep(u64),
    }

    /// What `name` does now, if anything (counting down a panic).
    fn due(name: &str) -> Option<Due> {
        let mut map = points().lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(name) {
            Some(Action::Panic(n)) if *n > 0 => {
                *n -= 1;
                Some(Due::Panic)
            }
            Some(Action::Sleep(ms)) => Some(Due::Sleep(*ms)),
            _ => None,
        }
    }

    /// Acts outside the lock, so that a panic does not poison it.
    fn act(name: &str, due: Due) {
        match due {
            Due::Panic => panic!("injected fault at {name}"),
            Due::Sleep(ms) => std::thread::sleep(Duration::from_millis(ms)),
        }
    }

    /// Whether the switch `name=on` is set.
    pub fn on(name: &str) -> bool {
        let map = points().lock().unwrap_or_else(|p| p.into_inner());
        matches!(map.get(name), Some(Action::On))
    }

    /// Whether the point `name` fails this time (see `fail:N`).
    pub fn fails(name: &str) -> bool {
        let mut map = points().lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(name) {
            Some(Action::FailAt(n)) if *n > 0 => {
                *n -= 1;
                *n == 0
            }
            _ => false,
        }
    }

    pub fn hit(point: &str) {
        if let Some(d) = due(point) {
            act(point, d);
        }
    }

    /// A point in the middle of writing `path`: `point@<file name>` is
    /// looked up first, then `point`. Logs the point and the path before
    /// acting.
    pub fn hit_in_write(point: &str, path: &Path) {
        let qualified = path
            .file_name()
            .map(|n| format!("{point}@{}", n.to_string_lossy()));
        let found = qualified
            .as_deref()
            .and_then(|q| due(q).map(|d| (q, d)))
            .or_else(|| due(point).map(|d| (point, d)));
        if let Some((name, d)) = found {
            crate::log::warn(
                "failpoint reached",
                &[("name", &name), ("path", &path.display())],
            );
            act(name, d);
        }
    }
}

#[cfg(debug_assertions)]
pub use imp::{fails, hit, hit_in_write, on};

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: &str) {}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn on(_name: &str) -> bool {
    false
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fails(_name: &str) -> bool {
    false
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit_in_write(_point: &str, _path: &std::path::Path) {}
