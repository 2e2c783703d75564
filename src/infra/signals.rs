//! The signals tbot handles, delivered to one place. Every choice here is
//! written down in the man page (SIGNALS) and `tbot start --help`:
//!
//! - SIGINT, SIGTERM: stop cleanly (services stopped, sockets removed).
//! - SIGHUP: reload the configuration file (`systemctl reload`); never kills.
//! - SIGPIPE: ignored. A peer that went away is an `EPIPE` error on that one
//!   connection, never the end of the process. (Rust's runtime ignores it
//!   already; [`block`] says so explicitly so the choice does not rest on a
//!   runtime default.)
//! - Every other signal keeps its default action (SIGQUIT dumps core, as a
//!   last-resort debugging aid; SIGKILL cannot be caught).
//!
//! [`block`] is the first instruction of `main`, before any thread exists
//! and before the configuration is read, so every thread inherits a mask
//! that blocks SIGINT, SIGTERM and SIGHUP, and one that arrives during
//! start-up waits (a SIGHUP while a slow or FIFO configuration path is
//! read was status 129 before). [`wait`] (on the main thread) then
//! receives them synchronously with sigwait(2). No async-signal-safety
//! puzzles, no self-pipe. Commands other than the daemon ([`unblock`]
//! right after the command line is parsed) and `--oneshot` (once its
//! configuration is read) give SIGHUP, SIGINT and SIGTERM their default
//! action back (each ends the run); SIGPIPE stays ignored.
//!
//! A wait on something outside tbot that the main thread makes before or
//! between [`wait`]s (the configuration file) asks [`stop_pending`] and
//! ends when a stop arrived, leaving the signal pending for [`wait`].

/// What a received signal asks of the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT or SIGTERM: stop. The name is for the log.
    Stop(&'static str),
    /// SIGHUP: reload the configuration.
    Reload,
}

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Ignores SIGPIPE, and blocks SIGINT, SIGTERM and SIGHUP for this thread
/// and every thread it spawns.
pub fn block() -> std::io::Result<()> {
    let set = set();
    // SAFETY: setting a standard signal's disposition to SIG_IGN; then
    // blocking a valid set (the old mask is not needed).
    let rc = unsafe {
        if libc::signal(libc::SIGPIPE, libc::SIG_IGN) == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Unblocks SIGINT, SIGTERM and SIGHUP for this thread (and threads it
/// spawns from now on): their default action again, and one that arrived
/// while blocked acts now.
pub fn unblock() {
    let set = set();
    // SAFETY: unblocking a valid set for this thread.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Whether SIGINT or SIGTERM is pending (blocked and not yet taken by
/// [`wait`]): a wait on a peer made by the main thread ends on it. The
/// signal stays pending.
pub fn stop_pending() -> bool {
    // SAFETY: sigpending fills a set we own; sigismember reads it.
    unsafe {
        let mut pending: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut pending) != 0 {
            return false;
        }
        libc::sigismember(&pending, libc::SIGINT) == 1
            || libc::sigismember(&pending, libc::SIGTERM) == 1
    }
}

/// [`wait`], for at most `timeout` (None: no limit); None when it passed
/// with no signal. For the main loop, which also has timed work (a service
/// waiting for a thread, see `supervisor::Running::retry`).
pub fn wait_timeout(timeout: Option<std::time::Duration>) -> Option<Signal> {
    let Some(timeout) = timeout else {
        return Some(wait());
    };
    let set = set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: a valid set, no siginfo wanted, a valid timeout.
    match unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) } {
        libc::SIGINT => Some(Signal::Stop("SIGINT")),
        libc::SIGHUP => Some(Signal::Reload),
        libc::SIGTERM => Some(Signal::Stop("SIGTERM")),
        // EAGAIN (the timeout) or EINTR: the caller looks at its clock.
        _ => None,
    }
}

/// Waits for SIGINT, SIGTERM or SIGHUP. (Several SIGHUPs that arrive during
/// one reload are one pending signal: they make one more reload.)
pub fn wait() -> Signal {
    let set = set();
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: a valid set and a place for the result.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            return match sig {
                libc::SIGINT => Signal::Stop("SIGINT"),
                libc::SIGHUP => Signal::Reload,
                _ => Signal::Stop("SIGTERM"),
            };
        }
    }
}
