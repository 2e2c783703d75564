//! Writes an issued credential into an identity output's destination
//! directory: `key`, `key.pub`, `key-cert.pub` and `ssh_ca.pub`, mode 0600,
//! each replaced atomically (never truncated, even if the bot is killed).
//!
//! Order: all four files are first written to temp files and fsynced
//! (nothing visible changes yet; any failure leaves the old set untouched and
//! removes the temps). Then they are renamed in back to back: `ssh_ca.pub`,
//! `key.pub`, `key`, `key-cert.pub`, and the directory is fsynced once. So a
//! reader can only see a `key` that does not match `key-cert.pub` during the
//! microseconds between two rename(2) calls, not during key generation or
//! disk writes. `key-cert.pub` goes last so that the certificate on disk is
//! never newer than the key it certifies (ssh ignores a certificate that does
//! not match its key and falls back to the plain key, which sshd refuses; a
//! retry a moment later succeeds). A crash between renames leaves a
//! mismatched pair until the next issue, which the identity service does at
//! start. Two files cannot be swapped truly atomically without a directory
//! symlink flip, which OpenSSH's fixed file names do not allow here.

use std::path::Path;

use crate::atomic_file::{sync_dir, StagedFile};
use crate::issuer::Credential;

pub const KEY_FILE: &str = "key";
pub const PUBLIC_KEY_FILE: &str = "key.pub";
pub const CERT_FILE: &str = "key-cert.pub";
pub const CA_FILE: &str = "ssh_ca.pub";
/// The four files [`write_identity`] writes.
pub const FILES: [&str; 4] = [CA_FILE, PUBLIC_KEY_FILE, KEY_FILE, CERT_FILE];
/// Mode of every file written.
pub const FILE_MODE: u32 = 0o600;

/// Writes `cred` and the CA public key line `ca_pub` into `dest`, creating
/// `dest` (0700) if missing. Errors are one line: `<path>: <OS error>`.
pub fn write_identity(dest: &Path, cred: &Credential, ca_pub: &str) -> Result<(), String> {
    crate::fsutil::create_private_dir(dest)?;

    let files: [(&str, &[u8]); 4] = [
        (CA_FILE, ca_pub.as_bytes()),
        (PUBLIC_KEY_FILE, cred.public_key_openssh.as_bytes()),
        (KEY_FILE, cred.private_key_openssh.as_bytes()),
        (CERT_FILE, cred.certificate_openssh.as_bytes()),
    ];
    let mut staged = Vec::with_capacity(files.len());
    for (name, contents) in files {
        let path = dest.join(name);
        let contents = with_newline(contents);
        let s = StagedFile::stage(&path, &contents, FILE_MODE)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        staged.push(s);
    }
    for s in staged {
        let target = s.target().to_path_buf();
        s.commit()
            .map_err(|e| format!("{}: {e}", target.display()))?;
    }
    sync_dir(dest).map_err(|e| format!("{}: {e}", dest.display()))
}

/// Removes the temp files an interrupted [`write_identity`] left in `dest`
/// (they can hold private keys). Only for the destination's owner, before
/// its first write: see [`crate::atomic_file::remove_stale_temps`].
pub fn remove_stale_temps(dest: &Path) {
    crate::atomic_file::remove_stale_temps(dest, &FILES);
}

/// OpenSSH files end with a newline; the one-line encodings come without.
fn with_newline(contents: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    let mut v = zeroize::Zeroizing::new(Vec::with_capacity(contents.len() + 1));
    v.extend_from_slice(contents);
    if !v.ends_with(b"\n") {
        v.push(b'\n');
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuer::Issuer;
    use crate::testutil::TestDir;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::time::Duration;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn issue(i: &Issuer, user: &str) -> Credential {
        i.issue(&[user.to_string()], "tbot-test", Duration::from_secs(600))
            .unwrap()
    }

    #[test]
    fn writes_the_four_files_0600_and_replaces_them() {
        let d = TestDir::new("identity");
        let issuer = Issuer::load_or_create(&d.0.join("storage")).unwrap();
        let dest = d.0.join("out").join("machine-id");
        let c1 = issue(&issuer, "deploy");
        write_identity(&dest, &c1, &issuer.ca_public_openssh()).unwrap();
        assert_eq!(mode_of(&dest), 0o700);
        let mut names: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["key", "key-cert.pub", "key.pub", "ssh_ca.pub"]);
        for n in &names {
            assert_eq!(mode_of(&dest.join(n)), 0o600, "{n}");
            assert!(fs::read(dest.join(n)).unwrap().ends_with(b"\n"), "{n}");
        }
        assert_eq!(
            fs::read_to_string(dest.join("ssh_ca.pub")).unwrap(),
            format!("{}\n", issuer.ca_public_openssh())
        );

        // ssh-keygen accepts the key file (it refuses keys that are too open)
        // and derives the public key we wrote.
        let y = Command::new("ssh-keygen")
            .args(["-y", "-f"])
            .arg(dest.join("key"))
            .output()
            .unwrap();
        assert!(y.status.success(), "{}", String::from_utf8_lossy(&y.stderr));
        let derived = String::from_utf8(y.stdout).unwrap();
        let written = fs::read_to_string(dest.join("key.pub")).unwrap();
        assert_eq!(
            derived.split_whitespace().nth(1),
            written.split_whitespace().nth(1)
        );

        let c2 = issue(&issuer, "deploy");
        write_identity(&dest, &c2, &issuer.ca_public_openssh()).unwrap();
        assert_eq!(
            fs::read_to_string(dest.join("key-cert.pub")).unwrap(),
            format!("{}\n", c2.certificate_openssh)
        );
        assert_eq!(
            fs::read_dir(&dest).unwrap().count(),
            4,
            "no temp files left"
        );
    }

    #[test]
    fn errors_name_the_path() {
        let d = TestDir::new("identity-err");
        let issuer = Issuer::load_or_create(&d.0.join("storage")).unwrap();
        let cred = issue(&issuer, "deploy");
        let file = d.0.join("plain");
        fs::write(&file, b"x").unwrap();
        // A file where the destination directory should be.
        let e = write_identity(&file, &cred, "ca").unwrap_err();
        assert_eq!(e, format!("{}: File exists (os error 17)", file.display()));
        let e = write_identity(&file.join("sub"), &cred, "ca").unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: Not a directory (os error 20)",
                file.join("sub").display()
            )
        );
        // A directory where a file should be: staged temps are cleaned up.
        let dest = d.0.join("dest");
        fs::create_dir_all(dest.join(CERT_FILE).join("x")).unwrap();
        let e = write_identity(&dest, &cred, "ca").unwrap_err();
        assert!(
            e.starts_with(&format!("{}: ", dest.join(CERT_FILE).display())),
            "{e}"
        );
        assert!(e.contains("(os error"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn real_sshd_trusting_the_ca_accepts_the_written_identity() {
        use crate::sshd_harness::{describe, ssh_run, Sshd};
        let d = TestDir::new("identity-sshd");
        let issuer = Issuer::load_or_create(&d.0.join("storage")).unwrap();
        let dest = d.0.join("machine-id");
        let ca_pub = issuer.ca_public_openssh();
        let sshd_user = crate::sshd_harness::current_user();
        let cred = issue(&issuer, &sshd_user);
        write_identity(&dest, &cred, &ca_pub).unwrap();
        // sshd re-reads TrustedUserCAKeys per login: give it its own copy.
        let trusted = d.0.join("trusted_ca.pub");
        fs::copy(dest.join(CA_FILE), &trusted).unwrap();
        let sshd = Sshd::start(&trusted);
        let (key, cert) = (dest.join(KEY_FILE), dest.join(CERT_FILE));

        let out = ssh_run(sshd.port(), &key, &cert, sshd.user(), &[], "echo ok");
        assert!(out.status.success(), "{}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
        assert!(sshd.wait_for_log("ID tbot-test", Duration::from_secs(5)));

        // A certificate for another login is refused by the same server.
        let other = issue(&issuer, "not-the-login-user");
        write_identity(&dest, &other, &ca_pub).unwrap();
        let out = ssh_run(sshd.port(), &key, &cert, sshd.user(), &[], "true");
        assert!(!out.status.success(), "{}", describe(&out));

        // A rotated CA's certificates are refused until sshd trusts it.
        fs::remove_file(d.0.join("storage").join("ca_key")).unwrap();
        let rotated = Issuer::load_or_create(&d.0.join("storage")).unwrap();
        assert_ne!(rotated.fingerprint(), issuer.fingerprint());
        let cred = rotated
            .issue(
                std::slice::from_ref(&sshd_user),
                "tbot-test",
                Duration::from_secs(600),
            )
            .unwrap();
        write_identity(&dest, &cred, &rotated.ca_public_openssh()).unwrap();
        let out = ssh_run(sshd.port(), &key, &cert, sshd.user(), &[], "true");
        assert!(!out.status.success(), "{}", describe(&out));
    }
}
