//! Proves the sshd harness with certificates made by OpenSSH's own
//! `ssh-keygen`: a certificate for the login user gets in, others do not.

#[path = "support/sshd.rs"]
#[allow(dead_code)]
mod sshd;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sshd::{describe, ssh_run, ssh_run_config, unique_temp_dir, Sshd};

/// A throwaway directory with a CA and a user key pair, removed on drop.
struct Keys {
    dir: PathBuf,
}

impl Keys {
    fn new() -> Keys {
        let dir = unique_temp_dir("harness-keys");
        keygen(&dir.join("ca"));
        keygen(&dir.join("other_ca"));
        keygen(&dir.join("user"));
        Keys { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Signs `user.pub` with `ca` for `principals` and `validity`; returns
    /// the certificate path.
    fn sign(&self, ca: &str, principals: &str, validity: &str) -> PathBuf {
        let cert = self.path("user-cert.pub");
        let _ = fs::remove_file(&cert);
        run(Command::new("ssh-keygen")
            .args(["-q", "-s"])
            .arg(self.path(ca))
            .args(["-I", "harness-id", "-n", principals, "-V", validity])
            .arg(self.path("user.pub")));
        assert!(cert.exists());
        cert
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn keygen(path: &Path) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path));
}

/// `ssh` as the login user with the user key and `cert`, running `command`.
fn login(sshd: &Sshd, keys: &Keys, cert: &Path, command: &str) -> std::process::Output {
    ssh_run(
        sshd.port(),
        &keys.path("user"),
        cert,
        sshd.user(),
        &[],
        command,
    )
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("ssh-keygen must be installed");
    assert!(out.status.success(), "{cmd:?}: {}", describe(&out));
}

#[test]
fn certificate_for_the_login_user_is_accepted() {
    let keys = Keys::new();
    let sshd = Sshd::start(&keys.path("ca.pub"));
    let cert = keys.sign("ca", sshd.user(), "-5m:+5m");
    let out = login(&sshd, &keys, &cert, "echo logged-in-as-$(id -un)");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("logged-in-as-{}", sshd.user())
    );
    assert!(
        sshd.wait_for_log("ID harness-id", Duration::from_secs(5)),
        "sshd log names the certificate:\n{}",
        sshd.log()
    );

    // The remote exit status comes back, so tests can assert on commands.
    let out = login(&sshd, &keys, &cert, "exit 3");
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
}

#[test]
fn certificate_for_another_principal_is_refused() {
    let keys = Keys::new();
    let sshd = Sshd::start(&keys.path("ca.pub"));
    let cert = keys.sign("ca", "somebody-else", "-5m:+5m");
    let out = login(&sshd, &keys, &cert, "true");
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        describe(&out)
    );
    assert!(
        sshd.wait_for_log("not a listed principal", Duration::from_secs(5)),
        "{}",
        sshd.log()
    );
}

#[test]
fn certificate_from_an_untrusted_ca_or_expired_is_refused() {
    let keys = Keys::new();
    let sshd = Sshd::start(&keys.path("ca.pub"));

    let cert = keys.sign("other_ca", sshd.user(), "-5m:+5m");
    let out = login(&sshd, &keys, &cert, "true");
    assert!(!out.status.success(), "untrusted CA: {}", describe(&out));

    let cert = keys.sign("ca", sshd.user(), "-10m:-5m");
    let out = login(&sshd, &keys, &cert, "true");
    assert!(!out.status.success(), "expired: {}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        describe(&out)
    );

    // And the same server still lets a good certificate in.
    let cert = keys.sign("ca", sshd.user(), "-5m:+5m");
    let out = login(&sshd, &keys, &cert, "true");
    assert!(out.status.success(), "{}", describe(&out));
}

#[test]
fn a_custom_ssh_config_can_be_used() {
    let keys = Keys::new();
    let sshd = Sshd::start(&keys.path("ca.pub"));
    let cert = keys.sign("ca", sshd.user(), "-5m:+5m");
    // Strict host key checking against the harness's host key, via the config.
    let known_hosts = keys.path("known_hosts");
    fs::write(
        &known_hosts,
        format!("[127.0.0.1]:{} {}\n", sshd.port(), sshd.host_public_key()),
    )
    .unwrap();
    let config = keys.path("ssh_config");
    fs::write(
        &config,
        format!(
            "Host harness\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  \
             CertificateFile {}\n  IdentitiesOnly yes\n",
            sshd.port(),
            sshd.user(),
            keys.path("user").display(),
            cert.display(),
        ),
    )
    .unwrap();
    let strict = [
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        &format!("UserKnownHostsFile={}", known_hosts.display()),
    ];
    let out = ssh_run_config(&config, &strict, "harness", "echo via-config");
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "via-config");

    // A wrong host key is refused: the strict options really apply.
    fs::write(
        &known_hosts,
        format!(
            "[127.0.0.1]:{} {}\n",
            sshd.port(),
            fs::read_to_string(keys.path("other_ca.pub"))
                .unwrap()
                .trim()
        ),
    )
    .unwrap();
    let out = ssh_run_config(&config, &strict, "harness", "true");
    assert!(!out.status.success(), "{}", describe(&out));
}
