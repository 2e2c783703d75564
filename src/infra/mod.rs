//! The ground the data flow stands on, kept out of the crate root: system
//! interfaces and the helpers every room uses.
//!
//! - waiting on descriptors: `poll` (poll(2)), `inotify` (inotify(7)),
//!   `signals` (the signals tbot handles, taken with sigwait),
//!   `clock_step` (wall-clock steps, through a timerfd);
//! - files: `bounded_read` (a whole file that may not answer: a FIFO, a
//!   hung mount), `chase` (output directories without following others'
//!   symlinks), `atomic_file` (crash-safe writes), `fsutil` (private
//!   directories), `trust` (sshd's StrictModes for the CA key),
//!   `instance_lock` (flock(2): one tbot per storage directory),
//!   `acl` (POSIX ACLs for a destination's readers), `owner` (whose a
//!   directory is; no running on another user's storage);
//! - public sockets: `sockets` (descriptors in reserve, out-of-descriptors
//!   check, lingering close); `lookup` (name lookups, bounded and capped);
//! - stopping: `stop` (the one stop signal: a flag and a channel, and a
//!   descriptor for those who ask);
//! - subscriptions: `subscribers` (lists whose entries end with their
//!   subscriber);
//! - retries: `backoff` (exponential, the one kind);
//! - threads: `threads` (named threads), `deep_work` (the few shared
//!   threads that run the services' deep work), `malloc` (glibc arenas for a
//!   thread per service, and no per-thread caches), `progress` (turn counters the
//!   watchdog reads);
//! - systemd: `systemd` (`sd_notify`, `STATUS=`, the watchdog, journald);
//! - the host: `host` (its name); `limits` (RLIMIT_NOFILE raised at start,
//!   errors that name the limit that ran out); `procstat` (`/proc/*/stat` lines);
//! - formats: `duration` (Go syntax), `timefmt` (RFC 3339), `quote` (outside
//!   text on one bounded line);
//! - `failpoints`: fault injection for the tests (debug builds only).

pub mod acl;
pub mod atomic_file;
pub mod backoff;
pub mod bounded_read;
pub mod chase;
pub mod clock_step;
pub mod deep_work;
pub mod duration;
pub mod failpoints;
pub mod fsutil;
pub mod host;
pub mod inotify;
pub mod instance_lock;
pub mod limits;
pub mod lookup;
pub mod malloc;
pub mod owner;
pub mod poll;
pub mod procstat;
pub mod progress;
pub mod quote;
pub mod signals;
pub mod sockets;
pub mod stop;
pub mod subscribers;
pub mod systemd;
pub mod threads;
pub mod timefmt;
pub mod trust;
