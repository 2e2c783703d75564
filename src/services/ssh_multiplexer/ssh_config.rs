//! The `ssh_config` the multiplexer writes beside its socket: every host
//! through the socket, with the identity output's key and certificate.

use std::path::{Path, PathBuf};

use crate::credentials::identity_files::{CERT_FILE, KEY_FILE};

use super::SSH_CONFIG_NAME;

/// The path of the running tbot binary, for the ssh_config's ProxyCommand.
pub(super) fn tbot_exe() -> Result<PathBuf, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("finding the tbot binary for ssh_config: {e}"))?;
    // Linux names a binary replaced since start (a package upgrade) "… (deleted)";
    // the new binary is at the original path.
    Ok(
        match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
            Some(s) => PathBuf::from(s),
            None => exe,
        },
    )
}

/// The `ssh_config` that sends every host through this multiplexer with the
/// identity output's key and certificate.
pub fn ssh_config_text(exe: &Path, socket: &Path, identity_dir: &Path) -> Result<String, String> {
    let proxy = format!(
        "{} ssh-multiplexer-proxy-command {} %h:%p",
        shell_word(exe)?,
        shell_word(socket)?
    );
    let key = config_word(&identity_dir.join(KEY_FILE))?;
    let cert = config_word(&identity_dir.join(CERT_FILE))?;
    Ok(format!(
        "\
# Written by tbot's ssh-multiplexer; replaced whenever the service starts.
# Use: ssh -F {config} user@host
# Host key checking (StrictHostKeyChecking, UserKnownHostsFile) is left to you.
Host *
    ProxyCommand {proxy}
    ProxyUseFdpass yes
    IdentityFile {key}
    CertificateFile {cert}
    IdentitiesOnly yes
",
        config = socket.with_file_name(SSH_CONFIG_NAME).display(),
    ))
}

fn utf8_path(p: &Path) -> Result<&str, String> {
    let s = p.to_str().ok_or_else(|| {
        format!(
            "{}: path is not UTF-8; cannot write it into ssh_config",
            p.display()
        )
    })?;
    if s.chars().any(char::is_control) {
        return Err(format!(
            "{}: path has control characters; cannot write it into ssh_config",
            p.display()
        ));
    }
    Ok(s)
}

/// A path as one word of ProxyCommand: ssh expands `%` tokens, then runs the
/// line with `sh -c`, so: `%` doubled, then single-quoted for the shell.
fn shell_word(p: &Path) -> Result<String, String> {
    let s = utf8_path(p)?.replace('%', "%%");
    Ok(format!("'{}'", s.replace('\'', r"'\''")))
}

/// A path as an ssh_config argument that ssh expands (`IdentityFile`,
/// `CertificateFile`): `%` doubled, double-quoted with `\` and `"` escaped.
/// `${` cannot be escaped (ssh would read an environment variable).
fn config_word(p: &Path) -> Result<String, String> {
    let s = utf8_path(p)?;
    if s.contains("${") {
        return Err(format!(
            "{}: path contains \"${{\", which ssh_config would expand as an environment variable",
            p.display()
        ));
    }
    let s = s
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    Ok(format!("\"{s}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_config_quotes_paths() {
        let text = ssh_config_text(
            Path::new("/usr/bin/tbot"),
            Path::new("/opt/mux/v1.sock"),
            Path::new("/opt/machine-id"),
        )
        .unwrap();
        assert!(text.contains(
            "\n    ProxyCommand '/usr/bin/tbot' ssh-multiplexer-proxy-command '/opt/mux/v1.sock' %h:%p\n"
        ), "{text}");
        assert!(text.contains("\n    ProxyUseFdpass yes\n"));
        assert!(text.contains("\n    IdentityFile \"/opt/machine-id/key\"\n"));
        assert!(text.contains("\n    CertificateFile \"/opt/machine-id/key-cert.pub\"\n"));
        assert!(text.contains("\nHost *\n"));

        let text = ssh_config_text(
            Path::new("/o'k/100%/tbot"),
            Path::new("/a b/$x/v1.sock"),
            Path::new("/id \"q\"\\%d"),
        )
        .unwrap();
        assert!(text.contains(
            r#"ProxyCommand '/o'\''k/100%%/tbot' ssh-multiplexer-proxy-command '/a b/$x/v1.sock' %h:%p"#
        ), "{text}");
        assert!(
            text.contains(r#"IdentityFile "/id \"q\"\\%%d/key""#),
            "{text}"
        );

        for (exe, sock, id) in [
            ("/bin/t\nx", "/s", "/i"),
            ("/bin/t", "/s\r", "/i"),
            ("/bin/t", "/s", "/i/${HOME}"),
        ] {
            assert!(ssh_config_text(Path::new(exe), Path::new(sock), Path::new(id)).is_err());
        }
    }
}
