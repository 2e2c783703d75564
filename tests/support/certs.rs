//! Checks of an identity output's files with the real `ssh-keygen`: the
//! key matches its certificate, the certificate is signed by the
//! `ssh_ca.pub` beside it, its validity window.

use std::fs;
use std::path::Path;
use std::process::Command;

/// `ssh-keygen ARGS FILE`'s stdout, or its error.
pub fn ssh_keygen(args: &[&str], file: &Path) -> Result<String, String> {
    let out = Command::new("ssh-keygen")
        .args(args)
        .arg(file)
        .env("TZ", "UTC")
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ssh-keygen {args:?} {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `SHA256:...` of a key file.
pub fn fingerprint(file: &Path) -> Result<String, String> {
    let l = ssh_keygen(&["-l", "-f"], file)?;
    l.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| format!("no fingerprint in {l:?}"))
}

/// A field of `ssh-keygen -L` ("Signing CA", "Public key", "Valid").
pub fn cert_field(cert: &Path, field: &str) -> Result<String, String> {
    let l = ssh_keygen(&["-L", "-f"], cert)?;
    l.lines()
        .find_map(|line| line.trim().strip_prefix(&format!("{field}: ")))
        .map(str::to_string)
        .ok_or_else(|| format!("no {field} in {l}"))
}

/// Why the set in `dest` is not whole, if it is not: `key` must give the key
/// in `key.pub`, the certificate must be for it and signed by `ssh_ca.pub`.
pub fn set_problem(dest: &Path) -> Option<String> {
    let check = || -> Result<Option<String>, String> {
        let derived = ssh_keygen(&["-y", "-f"], &dest.join("key"))?;
        let written = fs::read_to_string(dest.join("key.pub")).map_err(|e| e.to_string())?;
        if derived.split_whitespace().nth(1) != written.split_whitespace().nth(1) {
            return Ok(Some("key and key.pub differ".into()));
        }
        let cert = dest.join("key-cert.pub");
        let cert_key = cert_field(&cert, "Public key")?;
        let fp = fingerprint(&dest.join("key.pub"))?;
        if !cert_key.contains(&fp) {
            return Ok(Some(format!(
                "certificate is for {cert_key}, key.pub is {fp}"
            )));
        }
        let signer = cert_field(&cert, "Signing CA")?;
        let ca = fingerprint(&dest.join("ssh_ca.pub"))?;
        if !signer.contains(&ca) {
            return Ok(Some(format!(
                "certificate signed by {signer}, ssh_ca.pub is {ca}"
            )));
        }
        Ok(None)
    };
    match check() {
        Ok(None) => None,
        Ok(Some(p)) => Some(format!("{}: {p}", dest.display())),
        Err(e) => Some(format!("{}: {e}", dest.display())),
    }
}

/// A set is published by one rename of `DEST/..data` (see
/// src/identity_files.rs), but read here file by file through the names
/// beside it: a renewal in between (every second in some tests) mixes two
/// whole sets. So the check counts only if `..data` pointed at the same
/// generation before and after it; otherwise it is made again (a broken
/// set fails every time).
pub fn assert_whole_set(dest: &Path) {
    let generation = || fs::read_link(dest.join("..data")).ok();
    let mut last = None;
    for _ in 0..5 {
        let before = generation();
        last = set_problem(dest);
        if last.is_none() || generation() == before {
            break;
        }
    }
    if let Some(p) = last {
        panic!("{p}");
    }
}
