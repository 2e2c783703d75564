//! The web configuration file of Prometheus' exporter-toolkit
//! (node_exporter's `--web.config.file`, documented in exporter-toolkit's
//! `docs/web-configuration.md`): TLS for the diagnostics port, client
//! certificates and basic auth, with the same keys and meanings so that an
//! operator reuses the file they have. Named by `web_config_file:` in
//! tbot.yaml or `--web-config-file`; read at start and on every reload.
//!
//! Kept from the format: `tls_server_config` (`cert_file`, `key_file`,
//! `client_auth_type`, `client_ca_file`, `min_version`, `max_version`) and
//! `basic_auth_users` (bcrypt hashes). Refused with `file:line:column`:
//! unknown keys, and keys or values of the format tbot does not implement
//! (TLS 1.0 and 1.1, which rustls does not speak; `RequestClientCert` and
//! `RequireAnyClientCert`, which take certificates nobody verifies).
//! Relative paths are resolved against the file's directory, as
//! exporter-toolkit does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::locate::Seg::{self, Key};
use super::{admit, locate, read_text, yaml_error, Error};

/// The web configuration, checked (the files it names are read by the
/// diagnostics service, which refuses what it cannot load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// The file it came from, for messages.
    pub file: String,
    /// None: plain HTTP (`tls_server_config` absent, or without
    /// `cert_file` and `key_file`, as in exporter-toolkit).
    pub tls: Option<TlsConfig>,
    /// User name → bcrypt hash (`$2a$`, `$2b$`, `$2y$`). Empty: no basic auth.
    pub basic_auth_users: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    /// PEM CA certificates that client certificates must chain to.
    pub client_ca_file: Option<PathBuf>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
}

/// `client_auth_type`, with Go's `crypto/tls` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeb {
    #[serde(default)]
    tls_server_config: Option<RawTls>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert_file: Option<PathBuf>,
    #[serde(default)]
    key_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: Option<String>,
    #[serde(default)]
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    min_version: Option<String>,
    #[serde(default)]
    max_version: Option<String>,
}

/// Reads and checks a web configuration file. Errors are
/// `file:line:column: message` where a node is to blame.
pub fn load_web(path: &Path) -> Result<WebConfig, Error> {
    let (file, text, base) = read_text(path)?;
    parse_web(&file, &text, &base)
}

/// Parses and checks web configuration text; relative paths against `base`.
pub fn parse_web(file: &str, text: &str, base: &Path) -> Result<WebConfig, Error> {
    let text = admit(file, text)?;
    // An empty file is an empty configuration (plain HTTP, no auth).
    let raw: RawWeb = if text.trim().is_empty() {
        RawWeb {
            tls_server_config: None,
            basic_auth_users: None,
        }
    } else {
        serde_yaml::from_str(text).map_err(|e| yaml_error(file, &e))?
    };
    let mut web = check(raw, base).map_err(|(path, message)| {
        let (line, column) = locate(text, &path).unwrap_or((0, 0));
        Error {
            file: file.to_string(),
            line,
            column,
            message,
        }
    })?;
    web.file = file.to_string();
    Ok(web)
}

type Invalid = (Vec<Seg>, String);

fn check(raw: RawWeb, base: &Path) -> Result<WebConfig, Invalid> {
    let users = raw.basic_auth_users.unwrap_or_default();
    for (user, hash) in &users {
        if user.contains(':') {
            return Err((
                vec![Key("basic_auth_users")],
                format!("user {user:?}: a basic auth user name cannot hold ':' (RFC 7617)"),
            ));
        }
        if hash.parse::<bcrypt::HashParts>().is_err() {
            return Err((
                vec![Key("basic_auth_users")],
                format!("user {user:?}: not a bcrypt hash (want $2y$..., as htpasswd -B makes)"),
            ));
        }
    }
    let tls = match raw.tls_server_config {
        Some(t) => tls(t, base)?,
        None => None,
    };
    Ok(WebConfig {
        file: String::new(),
        tls,
        basic_auth_users: users,
    })
}

fn at(key: &'static str) -> Vec<Seg> {
    vec![Key("tls_server_config"), Key(key)]
}

/// `client_auth_type` (Go's crypto/tls names; default NoClientCert).
fn client_auth(v: Option<&str>) -> Result<ClientAuth, Invalid> {
    Ok(match v {
        None | Some("NoClientCert") => ClientAuth::NoClientCert,
        Some("VerifyClientCertIfGiven") => ClientAuth::VerifyClientCertIfGiven,
        Some("RequireAndVerifyClientCert") => ClientAuth::RequireAndVerifyClientCert,
        Some(v @ ("RequestClientCert" | "RequireAnyClientCert")) => {
            return Err((
                at("client_auth_type"),
                format!("{v} takes client certificates without verifying them; tbot offers NoClientCert, VerifyClientCertIfGiven and RequireAndVerifyClientCert"),
            ))
        }
        Some(v) => {
            return Err((
                at("client_auth_type"),
                format!("unknown client_auth_type {v:?}: expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
            ))
        }
    })
}

fn tls(t: RawTls, base: &Path) -> Result<Option<TlsConfig>, Invalid> {
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let client_auth = client_auth(t.client_auth_type.as_deref())?;
    let version = |k: &'static str, v: Option<&str>, default| match v {
        None => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(v @ ("TLS10" | "TLS11")) => Err((
            at(k),
            format!("{v}: TLS 1.0 and 1.1 are not offered (rustls); use TLS12 or TLS13"),
        )),
        Some(v) => Err((
            at(k),
            format!("unknown TLS version {v:?}: expected TLS12 or TLS13"),
        )),
    };
    let min_version = version("min_version", t.min_version.as_deref(), TlsVersion::Tls12)?;
    let max_version = version("max_version", t.max_version.as_deref(), TlsVersion::Tls13)?;
    if max_version < min_version {
        return Err((at("max_version"), "max_version is below min_version".into()));
    }
    let client_ca_file = t.client_ca_file.as_deref().map(resolve);
    match (client_auth, &client_ca_file) {
        // exporter-toolkit: "Client CA's have been configured without a
        // Client Auth Policy".
        (ClientAuth::NoClientCert, Some(_)) => {
            return Err((
                at("client_ca_file"),
                "client_ca_file is set but client_auth_type is NoClientCert".into(),
            ))
        }
        (ClientAuth::NoClientCert, None) | (_, Some(_)) => {}
        (_, None) => {
            return Err((
                at("client_auth_type"),
                "verifying client certificates needs client_ca_file".into(),
            ))
        }
    }
    let (cert_file, key_file) = match (t.cert_file, t.key_file) {
        (Some(c), Some(k)) => (resolve(&c), resolve(&k)),
        // As exporter-toolkit: neither is "TLS disabled".
        (None, None) if client_auth == ClientAuth::NoClientCert => return Ok(None),
        (None, None) => {
            return Err((
                vec![Key("tls_server_config")],
                "client certificates need TLS: missing cert_file and key_file".into(),
            ))
        }
        (Some(_), None) => return Err((vec![Key("tls_server_config")], "missing key_file".into())),
        (None, Some(_)) => {
            return Err((vec![Key("tls_server_config")], "missing cert_file".into()))
        }
    };
    Ok(Some(TlsConfig {
        cert_file,
        key_file,
        client_auth,
        client_ca_file,
        min_version,
        max_version,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WebConfig, String> {
        parse_web("web.yml", text, Path::new("/etc/tbot")).map_err(|e| e.to_string())
    }

    // `htpasswd -nbB prometheus secret`
    const HASH: &str = "$2y$10$mA1L6KK0HPvzPwWVwK9QLOdVyoeN5sJBsRgsGLMlZ3c.KUIwpU26.";

    #[test]
    fn reads_the_exporter_toolkit_keys() {
        let w = parse(&format!(
            "tls_server_config:\n  cert_file: tls.crt\n  key_file: /k/tls.key\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  min_version: TLS13\nbasic_auth_users:\n  prometheus: {HASH}\n"
        ))
        .unwrap();
        let tls = w.tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("/etc/tbot/tls.crt"));
        assert_eq!(tls.key_file, Path::new("/k/tls.key"));
        assert_eq!(
            tls.client_ca_file.as_deref(),
            Some(Path::new("/etc/tbot/ca.crt"))
        );
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(w.basic_auth_users["prometheus"], HASH);
        assert_eq!(parse("").unwrap().tls, None);
        assert_eq!(parse("tls_server_config: {}\n").unwrap().tls, None);
    }

    #[test]
    fn tbot_yaml_names_the_file_and_the_open_paths() {
        let top = "version: v2\nstorage: {type: directory, path: /s}\n";
        let c = crate::config::parse(
            "t.yaml",
            &format!(
                "{top}web_config_file: web.yml\ndiag_unauthenticated_paths: [/livez, /readyz]\n"
            ),
            Path::new("/etc/tbot"),
        )
        .unwrap();
        assert_eq!(
            c.web_config_file.as_deref(),
            Some(Path::new("/etc/tbot/web.yml"))
        );
        assert_eq!(c.diag_unauthenticated_paths, ["/livez", "/readyz"]);
        for bad in ["livez", "/livez?x=1", "/a b"] {
            let e = crate::config::parse(
                "t.yaml",
                &format!("{top}diag_unauthenticated_paths: [\"{bad}\"]\n"),
                Path::new("/"),
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.starts_with("t.yaml:3:30: ") && e.contains("invalid path"),
                "{e}"
            );
        }
    }

    #[test]
    fn refuses_with_file_line_and_column() {
        let e = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  cert_fil: c\n")
            .unwrap_err();
        assert!(e.starts_with("web.yml:4:3: "), "{e}");
        assert!(e.contains("unknown field `cert_fil`"), "{e}");
        let e = parse("http_server_config: {http2: false}\n").unwrap_err();
        assert!(e.starts_with("web.yml:1:1: unknown field"), "{e}");
        let e = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n")
            .unwrap_err();
        assert!(e.starts_with("web.yml:4:16: TLS10"), "{e}");
        let e = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n").unwrap_err();
        assert!(
            e.starts_with("web.yml:4:21: verifying client certificates needs client_ca_file"),
            "{e}"
        );
        let e = parse("tls_server_config:\n  cert_file: a\n").unwrap_err();
        assert!(e.starts_with("web.yml:2:3: missing key_file"), "{e}");
        let e = parse("basic_auth_users:\n  alice: hunter2\n").unwrap_err();
        assert!(
            e.starts_with("web.yml:2:3: user \"alice\": not a bcrypt hash"),
            "{e}"
        );
    }
}
