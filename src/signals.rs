//! SIGINT and SIGTERM, delivered to one place.
//!
//! [`block`] runs first in `main`, before any thread exists, so every thread
//! inherits a mask that blocks both; [`wait`] (on the main thread) then
//! receives them synchronously with sigwait(2). No async-signal-safety
//! puzzles, no self-pipe.

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM for this thread and every thread it spawns.
pub fn block() -> std::io::Result<()> {
    let set = set();
    // SAFETY: a valid set; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// Waits for SIGINT or SIGTERM; returns its name.
pub fn wait() -> &'static str {
    let set = set();
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: a valid set and a place for the result.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            return match sig {
                libc::SIGINT => "SIGINT",
                _ => "SIGTERM",
            };
        }
    }
}
