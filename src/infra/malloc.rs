//! glibc malloc, tuned for a daemon with a thread per service.
//!
//! Measured at 1000 identity services (`SECTIONS=3 tests/bench/cost.sh`, 2
//! cores): with glibc's defaults the process grew from 27,912 KiB idle to
//! 32,196 KiB after the scrapes. Two defaults cause it:
//! - up to 8 arenas per core (16 here), each keeping the blocks its threads
//!   freed (`M_ARENA_MAX`, mallopt(3));
//! - the dynamic mmap threshold: once a large block is freed, blocks of that
//!   size come from an arena and stay there after their free
//!   (`M_MMAP_THRESHOLD`, whose setting also turns the dynamic rise off).
//!
//! With 2 arenas and a fixed 256 KiB threshold, a scrape's buffers go back to
//! the system when freed: 25,596 KiB idle, 25,724 KiB after the scrapes.
//!
//! The daemon also runs with glibc's per-thread cache (tcache) off
//! ([`exec_without_tcache`]). Each thread keeps up to 7 freed blocks of each
//! of 64 sizes for itself; on tbot's long-lived threads (the main loop, the
//! health applier, the deep-work threads, the log writer) those blocks are
//! never handed back, and they pin the blocks around them. Measured with
//! 1,000 reloads that add and remove 10 identity outputs
//! (`ROWS=reload tests/bench/service_cost.sh`, 2 cores): RSS grew 7,284 →
//! 7,816 → 7,912 KiB (after 20, 500, 1,000), while heaptrack, attached
//! after 20 reloads, found 8 KiB not freed over the next 300, and glibc's
//! own count of bytes in use (`mallinfo2().uordblks`, tcache blocks count
//! as in use) went 612 → 974 → 1,103 KiB over 20, 200, 400 reloads. With
//! the tcache off the same count stayed at 160-162 KiB and RSS went 6,688 →
//! 6,696 KiB: no leak, only the caches. glibc has no mallopt(3) for it:
//! the tunable `glibc.malloc.tcache_count` is read when the process starts
//! (tunables(7)), hence the exec.

/// Arenas at most: the serving loop and the renderer each get one when they
/// contend; service threads allocate little and rarely.
const ARENA_MAX: libc::c_int = 2;

/// Blocks at least this size are mmap(2)ed, and unmapped when freed (bytes).
const MMAP_THRESHOLD_BYTES: libc::c_int = 256 * 1024;

/// Applies the settings above. Call first thing in `main`, before any
/// thread exists (an arena made before it stays). Errors cannot happen for
/// these values (mallopt returns 0 only for an unknown or bad parameter),
/// and would leave glibc's defaults, which work, only larger.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn tune() {
    // SAFETY: mallopt(3) takes two ints and changes only malloc's own
    // settings; nothing is allocated yet on another thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
    }
}

/// Other C libraries have their own allocators: nothing to tune.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn tune() {}

/// The GLIBC_TUNABLES entry that turns the per-thread cache off.
pub const TCACHE_OFF: &str = "glibc.malloc.tcache_count=0";

/// Executes tbot again, the same arguments and environment, with
/// [`TCACHE_OFF`] added to `GLIBC_TUNABLES` (see the module
/// documentation), unless that variable sets `glibc.malloc.tcache_count`
/// already (the operator's choice, or this exec done). Call only before
/// any thread exists: the exec keeps the process, its descriptors and its
/// signal mask (execve(2) directly, not `std::process::Command`, which
/// would unblock every signal). Returns only when it did not exec: the
/// reason, or None when there was nothing to do. tbot then runs with
/// glibc's defaults, which work, only larger.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn exec_without_tcache() -> Option<String> {
    use std::ffi::CString;

    let current = std::env::var_os("GLIBC_TUNABLES").map(|v| v.to_string_lossy().into_owned());
    let set = |v: &String| {
        v.split(':')
            .any(|t| t.starts_with("glibc.malloc.tcache_count="))
    };
    if current.as_ref().is_some_and(set) {
        return None;
    }
    // SAFETY: getauxval(3) reads the auxiliary vector the kernel gave the
    // process; it takes a number and touches no memory of ours.
    if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
        // Secure-execution mode (set-user-ID, file capabilities): glibc
        // may drop the tunable from the variable it hands on, and the
        // next start would exec again, for good.
        return Some("secure-execution mode (AT_SECURE)".to_string());
    }
    let tunables = match current {
        Some(v) if !v.is_empty() => format!("{v}:{TCACHE_OFF}"),
        _ => TCACHE_OFF.to_string(),
    };
    let (argv, envp) = match args_and_env(&tunables) {
        Ok(v) => v,
        Err(e) => return Some(e),
    };
    // The file by its own path, not /proc/self/exe: the kernel names the
    // process (comm, what ps and systemd show) after the path's last part.
    let path = match this_binary() {
        Ok(p) => p,
        Err(e) => return Some(e),
    };
    let ptrs = |v: &[CString]| -> Vec<*const libc::c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv_p, envp_p) = (ptrs(&argv), ptrs(&envp));
    // SAFETY: execve(2) reads a NUL-terminated path and two arrays of
    // pointers to NUL-terminated strings, each array ending in a null
    // pointer; all of them live (`argv`, `envp`, the literal) until it
    // returns, which it does only on failure.
    unsafe {
        libc::execve(path.as_ptr(), argv_p.as_ptr(), envp_p.as_ptr());
    }
    Some(format!(
        "executing {}: {}",
        path.to_string_lossy(),
        std::io::Error::last_os_error()
    ))
}

/// This process's arguments, and its environment with `GLIBC_TUNABLES`
/// set to `tunables`, as C strings for execve(2).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn args_and_env(
    tunables: &str,
) -> Result<(Vec<std::ffi::CString>, Vec<std::ffi::CString>), String> {
    use std::os::unix::ffi::OsStringExt;
    let c =
        |b: Vec<u8>| std::ffi::CString::new(b).map_err(|_| "a NUL byte in an argument".to_string());
    let argv = std::env::args_os()
        .map(|a| c(a.into_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        if k != "GLIBC_TUNABLES" {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            envp.push(c(kv)?);
        }
    }
    envp.push(c(format!("GLIBC_TUNABLES={tunables}").into_bytes())?);
    Ok((argv, envp))
}

/// The path of the running binary, if that path still names it (the same
/// device and inode as /proc/self/exe: not replaced by an upgrade since).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn this_binary() -> Result<std::ffi::CString, String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let exe = std::path::Path::new("/proc/self/exe");
    let path = std::fs::read_link(exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let (a, b) = (std::fs::metadata(exe), std::fs::metadata(&path));
    match (a, b) {
        (Ok(a), Ok(b)) if (a.dev(), a.ino()) == (b.dev(), b.ino()) => {
            std::ffi::CString::new(path.as_os_str().as_bytes())
                .map_err(|_| format!("{}: a NUL byte in the path", path.display()))
        }
        _ => Err(format!(
            "{}: not the running binary any more",
            path.display()
        )),
    }
}

/// Other C libraries have no such cache: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn exec_without_tcache() -> Option<String> {
    None
}
