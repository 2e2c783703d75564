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
