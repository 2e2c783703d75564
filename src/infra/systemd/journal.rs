//! Is stderr connected to the journal?
//!
//! systemd sets `JOURNAL_STREAM=<device>:<inode>` (decimal) for a service
//! whose stdout or stderr is a stream to journald (systemd.exec(5),
//! "Environment variables in spawned processes"). The variable is inherited
//! by children whose stderr may go elsewhere, so it counts only when it
//! names the very file descriptor 2 has: compared with fstat(2) of fd 2,
//! as sd-daemon(3) recommends.

use std::os::fd::AsFd;
use std::sync::OnceLock;

/// Whether `$JOURNAL_STREAM` matches stderr. Computed once per process.
pub fn stderr_is_journal() -> bool {
    static IS: OnceLock<bool> = OnceLock::new();
    *IS.get_or_init(|| {
        let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some(want) = value.to_str().and_then(parse) else {
            return false;
        };
        stderr_dev_ino() == Some(want)
    })
}

/// `<device>:<inode>` in decimal, as systemd writes it.
fn parse(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

fn stderr_dev_ino() -> Option<(u64, u64)> {
    // fd 2 may be closed, which fstat reports as an error.
    let st = rustix::fs::fstat(std::io::stderr().as_fd()).ok()?;
    Some((st.st_dev, st.st_ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_and_inode() {
        assert_eq!(parse("8:1234"), Some((8, 1234)));
        assert_eq!(parse("8:"), None);
        assert_eq!(parse("8"), None);
        assert_eq!(parse("a:1"), None);
        assert_eq!(parse(" 8:1"), None);
    }
}
