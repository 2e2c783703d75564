//! Fault injection for the integration tests, compiled into debug builds
//! only (release builds get empty inline functions).
//!
//! `TBOT_FAILPOINTS="heartbeat=panic:1,heartbeat-start=sleep:3000"`: at the
//! point named `heartbeat`, panic the first time; at `heartbeat-start`,
//! sleep 3000 ms. This is how the suite proves, through the real binary,
//! that a panicking service is caught, reported and restarted.

#[cfg(debug_assertions)]
mod imp {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    enum Action {
        Panic(u32),
        Sleep(u64),
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
                    _ => None,
                };
            }
            Mutex::new(map)
        })
    }

    pub fn hit(point: &str) {
        let mut sleep = None;
        {
            let mut map = points().lock().unwrap_or_else(|p| p.into_inner());
            match map.get_mut(point) {
                Some(Action::Panic(n)) if *n > 0 => {
                    *n -= 1;
                    drop(map);
                    panic!("injected fault at {point}");
                }
                Some(Action::Sleep(ms)) => sleep = Some(*ms),
                _ => {}
            }
        }
        if let Some(ms) = sleep {
            std::thread::sleep(Duration::from_millis(ms));
        }
    }
}

#[cfg(debug_assertions)]
pub use imp::hit;

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: &str) {}
