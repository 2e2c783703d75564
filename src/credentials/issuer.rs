//! The bot's embedded SSH certificate authority.
//!
//! The CA key lives in `<storage>/ca_key` (OpenSSH private key format,
//! ed25519, unencrypted, mode 0600). [`Issuer::load_or_create`] makes it on
//! first start; [`Issuer::load`] only reads it (for the rotation watcher).
//!
//! Detecting that an operator replaced the key: [`ca_key_stamp`] is a cheap
//! `stat(2)` of the key file (device, inode, size, mtime, ctime). An issuer
//! remembers the stamp of the file it read ([`Issuer::stamp`]); when a later
//! [`ca_key_stamp`] differs, load the key again and compare
//! [`Issuer::fingerprint`]s. The stamp is only a hint (a `touch` changes it
//! too); the fingerprint decides whether the CA really changed. Replacing the
//! file by rename changes the inode, an in-place rewrite changes mtime/ctime.
//!
//! All cryptography and encoding come from the `ssh-key` crate.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand_core::{OsRng, RngCore};
use ssh_key::certificate::{Builder, CertType};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};
use zeroize::Zeroizing;

use crate::credentials::ca_key_file::{parse_ca_key, read_key_file, stamp_of, KeyFileStamp};

/// File name of the CA private key inside the storage directory.
pub const CA_KEY_FILE: &str = "ca_key";
/// Comment carried by the CA public key line.
pub const CA_COMMENT: &str = "tbot-ca";
/// How far `valid_after` is set in the past to tolerate clock skew.
pub const BACKDATE: Duration = Duration::from_secs(60);
/// The extensions OpenSSH's `ssh-keygen` puts in a user certificate by default.
pub const USER_EXTENSIONS: [&str; 5] = [
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];

/// The loaded CA.
pub struct Issuer {
    /// The CA key, expanded once for signing (see [`CaSigner`]).
    signer: CaSigner,
    key_path: PathBuf,
    fingerprint: String,
    ca_public: String,
    stamp: KeyFileStamp,
    /// Made by this process ([`Issuer::load_or_create`] found no key), not read.
    generated: bool,
}

/// A freshly issued key pair and certificate, each in OpenSSH text form.
#[derive(Clone)]
pub struct Credential {
    /// `-----BEGIN OPENSSH PRIVATE KEY-----` ..., wiped from memory on drop.
    pub private_key_openssh: Zeroizing<String>,
    /// `ssh-ed25519 AAAA... <key id>` (one line, no newline).
    pub public_key_openssh: String,
    /// `ssh-ed25519-cert-v01@openssh.com AAAA... <key id>` (one line, no newline).
    pub certificate_openssh: String,
    /// The certificate's `valid_after`, exactly as encoded in it.
    pub valid_after: SystemTime,
    /// The certificate's `valid_before`, exactly as encoded in it.
    pub valid_before: SystemTime,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("private_key_openssh", &"<redacted>")
            .field("public_key_openssh", &self.public_key_openssh)
            .field("certificate_openssh", &self.certificate_openssh)
            .field("valid_after", &self.valid_after)
            .field("valid_before", &self.valid_before)
            .finish()
    }
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("key_path", &self.key_path)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Issuer {
    /// Loads `<storage_dir>/ca_key`, first creating the directory (0700) and a
    /// new ed25519 key (0600, written atomically) when they are missing.
    pub fn load_or_create(storage_dir: &Path) -> Result<Issuer, String> {
        crate::infra::fsutil::create_private_dir(storage_dir)?;
        crate::infra::trust::check_dirs(storage_dir)?;
        let key_path = storage_dir.join(CA_KEY_FILE);
        match fs::symlink_metadata(&key_path) {
            Ok(_) => Issuer::load(storage_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A create killed before its rename leaves a temp holding a
                // CA private key.
                crate::infra::atomic_file::remove_stale_temps(storage_dir, &[CA_KEY_FILE]);
                Issuer::create(key_path)
            }
            Err(e) => Err(format!("{}: {e}", key_path.display())),
        }
    }

    /// Loads `<storage_dir>/ca_key`; never creates anything.
    pub fn load(storage_dir: &Path) -> Result<Issuer, String> {
        // The directories first: a key in a directory others can write to
        // may be theirs, whoever owns it now.
        crate::infra::trust::check_dirs(storage_dir)?;
        let key_path = storage_dir.join(CA_KEY_FILE);
        let (bytes, stamp) = read_key_file(&key_path)?;
        let ca = parse_ca_key(&bytes).map_err(|e| format!("{}: {e}", key_path.display()))?;
        Issuer::new(ca, key_path, stamp)
    }

    fn create(key_path: PathBuf) -> Result<Issuer, String> {
        let at = |e: &dyn fmt::Display| format!("{}: {e}", key_path.display());
        let mut ca = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .map_err(|e| at(&format!("generating the CA key: {e}")))?;
        ca.set_comment(CA_COMMENT);
        let pem = ca
            .to_openssh(LineEnding::LF)
            .map_err(|e| at(&format!("encoding the CA key: {e}")))?;
        // Through the storage directory's handle (see `chase`).
        crate::infra::chase::open_dir(crate::infra::atomic_file::parent_dir(&key_path), true)?
            .write_atomic(CA_KEY_FILE, pem.as_bytes(), 0o600)?;
        let stamp = ca_key_stamp_at(&key_path)?;
        let mut issuer = Issuer::new(ca, key_path, stamp)?;
        issuer.generated = true;
        Ok(issuer)
    }

    fn new(ca: PrivateKey, key_path: PathBuf, stamp: KeyFileStamp) -> Result<Issuer, String> {
        let signer = CaSigner::new(&ca).map_err(|e| format!("{}: {e}", key_path.display()))?;
        let fingerprint = ca.public_key().fingerprint(HashAlg::Sha256).to_string();
        let mut public = ca.public_key().clone();
        public.set_comment(CA_COMMENT);
        let ca_public = public
            .to_openssh()
            .map_err(|e| format!("{}: encoding the CA public key: {e}", key_path.display()))?;
        Ok(Issuer {
            signer,
            key_path,
            fingerprint,
            ca_public,
            stamp,
            generated: false,
        })
    }

    /// Whether this process generated the key (there was none), rather than
    /// reading it.
    pub fn generated(&self) -> bool {
        self.generated
    }

    /// `SHA256:<base64>`, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The stamp of the key file as it was when this issuer read (or wrote) it.
    pub fn stamp(&self) -> KeyFileStamp {
        self.stamp
    }

    /// Path of the CA key file.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// `ssh-ed25519 AAAA... tbot-ca` (one line, no newline), for
    /// `TrustedUserCAKeys` / `ssh_ca.pub`.
    pub fn ca_public_openssh(&self) -> String {
        self.ca_public.clone()
    }

    /// Generates a fresh ed25519 key pair and signs an OpenSSH user
    /// certificate for it: `principals` and `key_id` as given, valid from
    /// one minute ago (clock skew) until now + `ttl`, the usual user
    /// extensions, random serial and nonce.
    pub fn issue(
        &self,
        principals: &[String],
        key_id: &str,
        ttl: Duration,
    ) -> Result<Credential, String> {
        if principals.is_empty() {
            return Err("cannot issue a certificate with no principals".to_string());
        }
        if let Some(p) = principals
            .iter()
            .find(|p| p.is_empty() || p.chars().any(char::is_control))
        {
            return Err(format!("invalid principal {p:?}"));
        }
        if ttl < Duration::from_secs(1) {
            return Err(format!("certificate lifetime {ttl:?} is shorter than 1s"));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "the system clock is set before 1970".to_string())?
            .as_secs();
        let valid_after = now.saturating_sub(BACKDATE.as_secs());
        let valid_before = now
            .checked_add(ttl.as_secs())
            .ok_or_else(|| format!("certificate lifetime {ttl:?} is too long"))?;

        let fail = |what: &str, e: ssh_key::Error| format!("issuing a certificate: {what}: {e}");
        let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
            .map_err(|e| fail("generating the key", e))?;
        key.set_comment(key_id);

        let mut builder = Builder::new_with_random_nonce(
            &mut OsRng,
            key.public_key().key_data().clone(),
            valid_after,
            valid_before,
        )
        .map_err(|e| fail("validity", e))?;
        builder
            .serial(OsRng.next_u64())
            .and_then(|b| b.cert_type(CertType::User))
            .and_then(|b| b.key_id(key_id))
            .and_then(|b| b.comment(key_id))
            .map_err(|e| fail("fields", e))?;
        for p in principals {
            builder
                .valid_principal(p.as_str())
                .map_err(|e| fail("principal", e))?;
        }
        for ext in USER_EXTENSIONS {
            builder
                .extension(ext, "")
                .map_err(|e| fail("extension", e))?;
        }
        let cert = builder.sign(&self.signer).map_err(|e| fail("signing", e))?;

        Ok(Credential {
            private_key_openssh: key
                .to_openssh(LineEnding::LF)
                .map_err(|e| fail("encoding the private key", e))?,
            public_key_openssh: key
                .public_key()
                .to_openssh()
                .map_err(|e| fail("encoding the public key", e))?,
            certificate_openssh: cert
                .to_openssh()
                .map_err(|e| fail("encoding the certificate", e))?,
            valid_after: UNIX_EPOCH + Duration::from_secs(valid_after),
            valid_before: UNIX_EPOCH + Duration::from_secs(valid_before),
        })
    }
}

/// The CA's ed25519 signing key, expanded once when the CA is loaded.
/// ssh-key's own `Signer` for a `PrivateKey` expands the secret again for
/// every signature and checks it against the stored public key (a
/// basepoint multiplication and a point decompression each time); this
/// signs with the expanded key, as `ssh-keygen -s` does with its loaded
/// key. The signature is the same: ed25519 signing is deterministic
/// (RFC 8032 §5.1.6).
struct CaSigner {
    key: ed25519_dalek::SigningKey,
    public: ssh_key::public::KeyData,
}

impl CaSigner {
    /// Errors: the key is not ed25519, or its public half does not match
    /// its secret (a damaged file).
    fn new(ca: &PrivateKey) -> Result<CaSigner, String> {
        let pair = ca.key_data().ed25519().ok_or_else(|| {
            format!(
                "the key is {}; the CA key must be ssh-ed25519",
                ca.algorithm()
            )
        })?;
        let key = ed25519_dalek::SigningKey::try_from(pair)
            .map_err(|e| format!("the CA key does not match its public key ({e})"))?;
        Ok(CaSigner {
            key,
            public: ca.public_key().key_data().clone(),
        })
    }
}

impl ed25519_dalek::Signer<ssh_key::Signature> for CaSigner {
    fn try_sign(
        &self,
        message: &[u8],
    ) -> Result<ssh_key::Signature, ed25519_dalek::SignatureError> {
        let signature = ed25519_dalek::Signer::sign(&self.key, message);
        ssh_key::Signature::new(Algorithm::Ed25519, signature.to_bytes().to_vec())
            .map_err(ed25519_dalek::SignatureError::from_source)
    }
}

/// What ssh-key's certificate builder puts in `signature_key`.
impl From<&CaSigner> for ssh_key::public::KeyData {
    fn from(signer: &CaSigner) -> ssh_key::public::KeyData {
        signer.public.clone()
    }
}

/// The current stamp of `<storage_dir>/ca_key`; errors name the path.
pub fn ca_key_stamp(storage_dir: &Path) -> Result<KeyFileStamp, String> {
    ca_key_stamp_at(&storage_dir.join(CA_KEY_FILE))
}

fn ca_key_stamp_at(path: &Path) -> Result<KeyFileStamp, String> {
    fs::metadata(path)
        .map(|m| stamp_of(&m))
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::ca_key_file::OPENSSH_BEGIN;
    use crate::infra::atomic_file::write_atomic;
    use crate::testutil::TestDir;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::process::Command;

    fn ssh_keygen(args: &[&str]) -> std::process::Output {
        let out = Command::new("ssh-keygen")
            .args(args)
            .env("TZ", "UTC")
            .output()
            .expect("ssh-keygen must be installed (apt-get install openssh-client)");
        out
    }

    fn ok(out: std::process::Output) -> String {
        assert!(
            out.status.success(),
            "ssh-keygen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_once_then_reloads_the_same_key() {
        let d = TestDir::new("issuer-create");
        let storage = d.0.join("state").join("tbot");
        // A create killed before its rename left a temp (a private key).
        crate::infra::fsutil::create_private_dir(&storage).unwrap();
        fs::write(storage.join(".ca_key.tmp.1.0.7"), b"stale").unwrap();
        let a = Issuer::load_or_create(&storage).unwrap();
        assert_eq!(mode_of(&storage), 0o700);
        let key = storage.join(CA_KEY_FILE);
        assert_eq!(mode_of(&key), 0o600);
        assert_eq!(fs::read_dir(&storage).unwrap().count(), 1, "no temp left");

        let b = Issuer::load_or_create(&storage).unwrap();
        let c = Issuer::load(&storage).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.stamp(), c.stamp());
        assert_eq!(ca_key_stamp(&storage).unwrap(), a.stamp());
        assert!(a.fingerprint().starts_with("SHA256:"));

        // OpenSSH reads the key we wrote, and agrees on fingerprint and public key.
        let l = ok(ssh_keygen(&["-l", "-f", key.to_str().unwrap()]));
        assert!(l.contains(a.fingerprint()), "{l} vs {}", a.fingerprint());
        assert!(l.contains("(ED25519)"), "{l}");
        let y = ok(ssh_keygen(&["-y", "-f", key.to_str().unwrap()]));
        let pubkey = a.ca_public_openssh();
        assert!(pubkey.starts_with("ssh-ed25519 AAAA"), "{pubkey}");
        assert!(pubkey.ends_with(" tbot-ca"), "{pubkey}");
        assert!(!pubkey.contains('\n'));
        assert_eq!(
            y.split_whitespace().take(2).collect::<Vec<_>>(),
            pubkey.split_whitespace().take(2).collect::<Vec<_>>()
        );
    }

    #[test]
    fn load_does_not_create() {
        let d = TestDir::new("issuer-nocreate");
        let e = Issuer::load(&d.0).unwrap_err();
        let want = format!(
            "{}: No such file or directory (os error 2)",
            d.0.join("ca_key").display()
        );
        assert_eq!(e, want);
        assert_eq!(fs::read_dir(&d.0).unwrap().count(), 0);
    }

    #[test]
    fn rotation_is_visible_in_stamp_and_fingerprint() {
        let d = TestDir::new("issuer-rotate");
        let a = Issuer::load_or_create(&d.0).unwrap();
        let key = d.0.join(CA_KEY_FILE);
        fs::remove_file(&key).unwrap();
        ok(ssh_keygen(&[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "operator",
            "-f",
            key.to_str().unwrap(),
        ]));
        assert_ne!(ca_key_stamp(&d.0).unwrap(), a.stamp());
        let b = Issuer::load(&d.0).unwrap();
        assert_ne!(a.fingerprint(), b.fingerprint());
        // The public line always carries our comment, whatever the file says.
        assert!(b.ca_public_openssh().ends_with(" tbot-ca"));
    }

    #[test]
    fn refuses_group_or_world_accessible_key() {
        let d = TestDir::new("issuer-mode");
        Issuer::load_or_create(&d.0).unwrap();
        let key = d.0.join(CA_KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Issuer::load_or_create(&d.0).unwrap_err();
        assert_eq!(
            e,
            format!("{}: mode 0644 is too open; expected 0600", key.display())
        );
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        Issuer::load(&d.0).expect("0400 is fine");
    }

    #[test]
    fn refuses_malformed_key_without_overwriting_it() {
        let d = TestDir::new("issuer-malformed");
        let key = d.0.join(CA_KEY_FILE);
        write_atomic(&key, b"hello, not a key\n", 0o600).unwrap();
        let e = Issuer::load_or_create(&d.0).unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: not an OpenSSH private key (it does not begin with \"{OPENSSH_BEGIN}\")",
                key.display()
            )
        );
        assert_eq!(fs::read(&key).unwrap(), b"hello, not a key\n");

        // Empty, another PEM type, a cut-short key: each said plainly.
        write_atomic(&key, b"", 0o600).unwrap();
        let e = Issuer::load(&d.0).unwrap_err();
        assert_eq!(
            e,
            format!("{}: empty file; not an OpenSSH private key", key.display())
        );
        write_atomic(&key, b"-----BEGIN RSA PRIVATE KEY-----\nAAAA\n", 0o600).unwrap();
        let e = Issuer::load(&d.0).unwrap_err();
        assert!(
            e.contains("not an OpenSSH private key: it is a PEM \"RSA PRIVATE KEY\""),
            "{e}"
        );
        let good = Issuer::load_or_create(&d.0.join("good")).unwrap();
        write_atomic(&key, good.ca_public_openssh().as_bytes(), 0o600).unwrap();
        let e = Issuer::load(&d.0).unwrap_err();
        assert!(e.ends_with(": not an OpenSSH private key: it is a public key line; the CA key file must hold the private key"), "{e}");
        let pem = fs::read_to_string(good.key_path()).unwrap();
        write_atomic(&key, &pem.as_bytes()[..pem.len() / 2], 0o600).unwrap();
        let e = Issuer::load(&d.0).unwrap_err();
        assert!(
            e.contains("not an OpenSSH private key: damaged or cut short ("),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn refuses_non_ed25519_and_encrypted_keys() {
        let d = TestDir::new("issuer-alg");
        let key = d.0.join(CA_KEY_FILE);
        let k = key.to_str().unwrap();
        ok(ssh_keygen(&["-q", "-t", "ecdsa", "-N", "", "-f", k]));
        let e = Issuer::load(&d.0).unwrap_err();
        assert!(e.starts_with(&format!("{k}: ")), "{e}");
        assert!(e.contains("ecdsa"), "{e}");
        assert!(e.contains("must be ssh-ed25519"), "{e}");

        fs::remove_file(&key).unwrap();
        ok(ssh_keygen(&[
            "-q", "-t", "ed25519", "-N", "secret", "-f", k,
        ]));
        let e = Issuer::load(&d.0).unwrap_err();
        assert_eq!(
            e,
            format!("{k}: the key is passphrase-protected; the CA key must be unencrypted")
        );
    }

    #[test]
    fn reports_unreadable_key_and_storage_dir() {
        let d = TestDir::new("issuer-unreadable");
        // A directory where the key should be: a clear error, not a crash.
        fs::create_dir(d.0.join(CA_KEY_FILE)).unwrap();
        let e = Issuer::load(&d.0).unwrap_err();
        assert_eq!(
            e,
            format!("{}: not a regular file", d.0.join("ca_key").display())
        );

        // A file where the storage directory should be.
        let file = d.0.join("plain");
        fs::write(&file, b"x").unwrap();
        let e = Issuer::load_or_create(&file).unwrap_err();
        assert_eq!(e, format!("{}: not a directory", file.display()));
    }

    /// Runs `Issuer::load` on another thread and gives up after 5 s, so a
    /// blocking open fails the test instead of hanging it.
    fn load_within_5s(storage: &Path) -> Option<Result<Issuer, String>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let dir = storage.to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(Issuer::load(&dir));
        });
        rx.recv_timeout(Duration::from_secs(5)).ok()
    }

    #[test]
    fn refuses_a_fifo_or_symlink_without_blocking() {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let d = TestDir::new("issuer-fifo");
        let key = d.0.join(CA_KEY_FILE);
        let c = CString::new(key.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let load = load_within_5s(&d.0);
        // Release a reader stuck in open(2) (before the fix) so that the
        // thread ends: a writer opening the FIFO unblocks it.
        let _writer = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&key);
        let e = load.expect("Issuer::load blocked on a FIFO").unwrap_err();
        assert_eq!(e, format!("{}: not a regular file", key.display()));
        let e = Issuer::load_or_create(&d.0).unwrap_err();
        assert_eq!(e, format!("{}: not a regular file", key.display()));

        // A symlink to a good key is not followed.
        fs::remove_file(&key).unwrap();
        let real = d.0.join("real");
        Issuer::load_or_create(&real).unwrap();
        std::os::unix::fs::symlink(real.join(CA_KEY_FILE), &key).unwrap();
        let e = load_within_5s(&d.0).expect("blocked").unwrap_err();
        assert_eq!(
            e,
            format!(
                "{}: is a symbolic link; the CA key must be a regular file",
                key.display()
            )
        );
    }

    #[test]
    fn refuses_bad_issue_arguments() {
        let d = TestDir::new("issuer-args");
        let i = Issuer::load_or_create(&d.0).unwrap();
        let hour = Duration::from_secs(3600);
        assert!(i.issue(&[], "id", hour).is_err());
        assert!(i.issue(&[String::new()], "id", hour).is_err());
        assert!(i.issue(&["a".into()], "id", Duration::ZERO).is_err());
        assert!(i.issue(&["a".into()], "id", Duration::MAX).is_err());
    }

    #[test]
    fn issued_certificate_is_what_openssh_expects() {
        let d = TestDir::new("issuer-issue");
        let i = Issuer::load_or_create(&d.0.join("storage")).unwrap();
        let principals = vec!["deploy".to_string(), "root".to_string()];
        let before = SystemTime::now();
        let cred = i
            .issue(&principals, "tbot-my-service", Duration::from_secs(3600))
            .unwrap();
        let _ = format!("{cred:?}"); // Debug must not leak the key
        assert!(!format!("{cred:?}").contains("PRIVATE KEY"));

        let key = d.0.join("key");
        let cert = d.0.join("key-cert.pub");
        write_atomic(&key, cred.private_key_openssh.as_bytes(), 0o600).unwrap();
        write_atomic(&cert, cred.certificate_openssh.as_bytes(), 0o600).unwrap();

        // The private key matches the public key we hand out.
        let y = ok(ssh_keygen(&["-y", "-f", key.to_str().unwrap()]));
        assert_eq!(
            y.split_whitespace().take(2).collect::<Vec<_>>(),
            cred.public_key_openssh
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
        );

        // The certificate, as OpenSSH reads it.
        let l = ok(ssh_keygen(&["-L", "-f", cert.to_str().unwrap()]));
        let lines: Vec<&str> = l.lines().map(str::trim).collect();
        assert!(
            l.contains("Type: ssh-ed25519-cert-v01@openssh.com user certificate"),
            "{l}"
        );
        assert!(
            l.contains(&format!("Signing CA: ED25519 {}", i.fingerprint())),
            "{l}"
        );
        assert!(l.contains("Key ID: \"tbot-my-service\""), "{l}");
        assert!(l.contains("Critical Options: (none)"), "{l}");
        let section = |name: &str| -> Vec<&str> {
            let start = lines.iter().position(|s| s.starts_with(name)).unwrap();
            lines[start + 1..]
                .iter()
                .take_while(|s| !s.ends_with(':') && !s.contains(": "))
                .copied()
                .collect()
        };
        assert_eq!(section("Principals:"), vec!["deploy", "root"], "{l}");
        let mut exts = section("Extensions:");
        exts.sort();
        let mut want: Vec<&str> = USER_EXTENSIONS.to_vec();
        want.sort();
        assert_eq!(exts, want, "{l}");

        // Validity: from now-60s to now+1h, as the Credential says.
        let vb = cred
            .valid_before
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let now = before.duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!((now + 3600..=now + 3602).contains(&vb), "{vb} vs {now}");
        let fmt = |t: u64| {
            let out = Command::new("date")
                .args(["-u", "-d", &format!("@{t}"), "+%Y-%m-%dT%H:%M:%S"])
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        let want = format!("Valid: from {} to {}", fmt(vb - 3600 - 60), fmt(vb));
        assert!(l.contains(&want), "want {want:?} in\n{l}");

        // Two issues give distinct keys, serials and nonces.
        let again = i
            .issue(&principals, "tbot-my-service", Duration::from_secs(3600))
            .unwrap();
        assert_ne!(again.public_key_openssh, cred.public_key_openssh);
        assert_ne!(again.certificate_openssh, cred.certificate_openssh);
    }
}
