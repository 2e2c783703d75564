//! Reading and parsing the CA private key file (`STORAGE/ca_key`) for
//! `issuer`, with errors in the operator's words: what the file is (empty,
//! another PEM type, no key at all, cut short), never the decoder's jargon.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ssh_key::{Algorithm, PrivateKey};
use zeroize::Zeroizing;

/// Identity of the CA key file's current version, from `stat(2)`; see `issuer`'s
/// module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyFileStamp {
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

/// The stamp of the file `m` describes.
pub fn stamp_of(m: &fs::Metadata) -> KeyFileStamp {
    KeyFileStamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    }
}

/// A CA key file larger than this is not a key.
const MAX_KEY_FILE: u64 = 64 * 1024;

/// Reads the key file, refusing anything but a small regular file that only
/// its owner can access, owned by tbot's user or root (see
/// `infra::trust`). The open neither follows a symlink (`O_NOFOLLOW`)
/// nor waits for a writer on a FIFO (`O_NONBLOCK`, which does not change
/// reading a regular file); the checks use the opened descriptor (no race).
pub fn read_key_file(path: &Path) -> Result<(Zeroizing<Vec<u8>>, KeyFileStamp), String> {
    let at = |e: &dyn fmt::Display| format!("{}: {e}", path.display());
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            let symlink = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            if e.raw_os_error() == Some(libc::ELOOP) && symlink {
                at(&"is a symbolic link; the CA key must be a regular file")
            } else {
                at(&e)
            }
        })?;
    let meta = file.metadata().map_err(|e| at(&e))?;
    if !meta.is_file() {
        return Err(at(&"not a regular file"));
    }
    crate::infra::trust::check_file_owner(path, &meta)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(at(&format_args!(
            "mode {mode:04o} is too open; expected 0600"
        )));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(at(&format_args!(
            "{} bytes is too large for an OpenSSH private key",
            meta.len()
        )));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| at(&e))?;
    Ok((bytes, stamp_of(&meta)))
}

/// The first line of an OpenSSH private key file.
pub const OPENSSH_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";

/// Parses the CA key; errors say what the file is in the operator's words
/// (empty, another PEM type, no key at all) rather than the decoder's.
pub fn parse_ca_key(bytes: &[u8]) -> Result<PrivateKey, String> {
    let text = String::from_utf8_lossy(bytes);
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    match first {
        None => return Err("empty file; not an OpenSSH private key".to_string()),
        Some(OPENSSH_BEGIN) => {}
        Some(l) if l.starts_with("-----BEGIN ") && l.ends_with("-----") => {
            let kind = l
                .trim_start_matches("-----BEGIN ")
                .trim_end_matches("-----");
            return Err(format!(
                "not an OpenSSH private key: it is a PEM \"{kind}\"; convert it with ssh-keygen -p or make a new one with ssh-keygen -t ed25519"
            ));
        }
        Some(l) if l.starts_with("ssh-") || l.starts_with("ecdsa-") => {
            return Err(
                "not an OpenSSH private key: it is a public key line; the CA key file must hold the private key"
                    .to_string(),
            )
        }
        Some(_) => {
            return Err(format!(
                "not an OpenSSH private key (it does not begin with \"{OPENSSH_BEGIN}\")"
            ))
        }
    }
    let key = PrivateKey::from_openssh(bytes)
        .map_err(|e| format!("not an OpenSSH private key: damaged or cut short ({e})"))?;
    if key.is_encrypted() {
        return Err("the key is passphrase-protected; the CA key must be unencrypted".to_string());
    }
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(format!(
            "the key is {}; the CA key must be ssh-ed25519",
            key.algorithm()
        ));
    }
    Ok(key)
}
