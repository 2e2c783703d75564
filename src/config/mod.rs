//! The configuration file (YAML, `version: v2`): strict parsing, validation,
//! default service names.
//!
//! Every error names the file, line and column: type and syntax errors come
//! with serde_yaml's location; checks that span several fields (durations
//! that must be ordered, duplicate names, references between services) find
//! the offending node's location with [`locate`], which walks the same text
//! again with serde_yaml.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod locate;
mod names;
mod schema;
mod start_args;
mod text;
mod validate;
mod web;

pub use crate::infra::acl::{Access, Reader};
pub use locate::{locate, Seg};
pub use names::check_addr;
use schema::{RawConfig, ServiceType};
pub use start_args::{config_path, configure};
use validate::validate;
pub use web::{load_web, ClientAuth, TlsConfig, TlsVersion, WebConfig};

pub const RESERVED_NAMES: [&str; 3] = ["identity", "heartbeat", "ca-rotation"];
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_RENEWAL_INTERVAL: Duration = Duration::from_secs(20 * 60);
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_DIAG_MAX_CONNECTIONS: usize = 64;
pub const DEFAULT_MUX_MAX_CONNECTIONS: usize = 64;
/// An ssh-multiplexer's socket file name in its destination.
pub const MUX_SOCKET_NAME: &str = "v1.sock";
/// Most principals in one certificate: OpenSSH refuses a certificate with
/// more (`SSHKEY_CERT_MAX_PRINCIPALS` in sshkey.c: `ssh-keygen -L` says
/// `invalid format`, sshd denies the login).
pub const MAX_PRINCIPALS: usize = 256;
/// Shortest renewal or heartbeat interval: below it a loop would spin
/// (a renewal every nanosecond is all the CPU there is).
pub const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Shortest credential TTL: a certificate's validity is counted in whole
/// seconds.
pub const MIN_CREDENTIAL_TTL: Duration = Duration::from_secs(1);

/// A configuration problem, rendered `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// The message as shown: it may quote the file's text (an unknown key, a
/// bad value), so it is one line of at most
/// [`MAX_MESSAGE_CHARS`](crate::infra::quote::MAX_MESSAGE_CHARS)
/// characters, whatever that text held.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::infra::quote::{one_line, MAX_MESSAGE_CHARS};
        let message = one_line(&self.message, MAX_MESSAGE_CHARS);
        if self.line == 0 {
            write!(f, "{}: {message}", self.file)
        } else {
            write!(f, "{}:{}:{}: {message}", self.file, self.line, self.column)
        }
    }
}

// ---------------------------------------------------------------------------
// The validated configuration the rest of tbot uses.

#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, for messages.
    pub file: String,
    pub diag_addr: Option<String>,
    pub diag_max_connections: usize,
    /// `web_config_file:` (or `--web-config-file`): TLS and auth for the
    /// diagnostics port; `web` is that file, read by [`configure`].
    pub web_config_file: Option<PathBuf>,
    pub web: Option<WebConfig>,
    /// `diag_unauthenticated_paths:`: exact paths (`/livez`) that need no
    /// basic auth or client certificate when the web configuration asks for
    /// them. Empty unless the file lists some.
    pub diag_unauthenticated_paths: Vec<String>,
    pub debug: bool,
    /// The local debug service's Unix socket (`debug_socket:`, else
    /// `<storage>/debug.sock`).
    pub debug_socket: PathBuf,
    pub storage: PathBuf,
    pub credential_ttl: Duration,
    pub renewal_interval: Duration,
    pub heartbeat_interval: Duration,
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone)]
pub enum ServiceConfig {
    Identity(IdentityConfig),
    SshMultiplexer(MultiplexerConfig),
}

// Debug: a reload compares each service by what it is built from (its `Debug`
// text, hashed: see `services::Key`).
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    pub name: String,
    pub principals: Vec<String>,
    pub destination: PathBuf,
    /// The destination's `acls` and `readers`.
    pub access: Access,
    pub credential_ttl: Duration,
    pub renewal_interval: Duration,
}

// Debug: a reload compares each service by what it is built from (its `Debug`
// text, hashed: see `services::Key`).
#[derive(Debug, Clone, PartialEq)]
pub struct MultiplexerConfig {
    pub name: String,
    pub destination: PathBuf,
    /// The destination's `acls` and `readers` (the socket, its ssh_config).
    pub access: Access,
    /// Name of the identity output whose key the written ssh_config uses.
    pub identity: String,
    pub max_connections: usize,
}

impl ServiceConfig {
    pub fn name(&self) -> &str {
        match self {
            ServiceConfig::Identity(c) => &c.name,
            ServiceConfig::SshMultiplexer(c) => &c.name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ServiceConfig::Identity(_) => ServiceType::Identity.as_str(),
            ServiceConfig::SshMultiplexer(_) => ServiceType::SshMultiplexer.as_str(),
        }
    }
}

impl Config {
    pub fn identity(&self, name: &str) -> Option<&IdentityConfig> {
        self.services.iter().find_map(|s| match s {
            ServiceConfig::Identity(c) if c.name == name => Some(c),
            _ => None,
        })
    }
}

// ---------------------------------------------------------------------------
// Loading.

/// The largest configuration file read, in bytes: a real one is a few KiB;
/// a wrong path (`/dev/zero`, a log file) is refused rather than read into
/// memory without end.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, Error> {
    load_with_text(path).map(|(config, _)| config)
}

/// [`load`], with the text it read (once, within [`CONFIG_READ_BOUND`]):
/// `tbot check` locates its findings in it, and a second read could block
/// again (a FIFO) or read something else.
pub fn load_with_text(path: &Path) -> Result<(Config, String), Error> {
    let (file, text, base) = read_text(path)?;
    parse(&file, &text, &base).map(|config| (config, text))
}

/// A configuration file's name (for messages), its text (UTF-8, at most
/// [`MAX_CONFIG_BYTES`]) and its directory (relative paths in it are
/// resolved against it).
fn read_text(path: &Path) -> Result<(String, String, PathBuf), Error> {
    let file = path.display().to_string();
    let error = |message: String| Error {
        file: file.clone(),
        line: 0,
        column: 0,
        message,
    };
    let text = read_limited(path, MAX_CONFIG_BYTES).map_err(|e| error(e.to_string()))?;
    let Some(text) = text else {
        return Err(error(format!(
            "larger than {} MiB; is this the configuration file?",
            MAX_CONFIG_BYTES / (1024 * 1024)
        )));
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((file, text, base))
}

/// How long reading the configuration file may take: a FIFO or
/// `-c <(...)` that nobody writes, a network mount that does not answer.
/// A stop signal ends the wait sooner (see `infra::bounded_read`).
pub const CONFIG_READ_BOUND: Duration = Duration::from_secs(10);

/// Reads a whole file as UTF-8 text, or None when it is longer than `max`
/// bytes. Any kind of file: a pipe (`-c <(...)`) works like a regular file,
/// within [`CONFIG_READ_BOUND`].
fn read_limited(path: &Path, max: u64) -> std::io::Result<Option<String>> {
    let Some(bytes) = crate::infra::bounded_read::read_whole(path, max, CONFIG_READ_BOUND)? else {
        return Ok(None);
    };
    // The length was checked before UTF-8: a cut may split a character.
    String::from_utf8(bytes).map(Some).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        )
    })
}

/// Parses and validates configuration text. Relative paths are resolved
/// against `base` (the configuration file's directory).
pub fn parse(file: &str, text: &str, base: &Path) -> Result<Config, Error> {
    let text = admit(file, text)?;
    let raw: RawConfig = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => match merged(text) {
            None => return Err(yaml_error(file, &e)),
            Some(Ok(raw)) => raw,
            // Merged mappings have no place in the text.
            Some(Err(e)) => {
                return Err(Error {
                    file: file.to_string(),
                    line: 0,
                    column: 0,
                    message: format!("{e} (after applying the merge keys '<<')"),
                })
            }
        },
    };
    validate(raw, base).map_err(|(path, message)| {
        let (line, column) = locate(text, &path).unwrap_or((0, 0));
        let message = if path.is_empty() {
            message
        } else {
            format!("{}: {message}", render_path(&path))
        };
        Error {
            file: file.to_string(),
            line,
            column,
            message,
        }
    })
}

/// The text past its front door ([`text::admit`]: BOM, nesting depth).
fn admit<'a>(file: &str, text: &'a str) -> Result<&'a str, Error> {
    text::admit(text).map_err(|(line, column, message)| Error {
        file: file.to_string(),
        line,
        column,
        message,
    })
}

/// The configuration with YAML merge keys (`<<: *anchor`, YAML 1.1's
/// merge type) applied, when the text has any; None when it has none.
/// Upstream tbot's loader (Go's yaml.v3) applies them; serde_yaml reads
/// `<<` as a key of its own, which `deny_unknown_fields` refuses.
fn merged(text: &str) -> Option<Result<RawConfig, serde_yaml::Error>> {
    fn has_merge(v: &serde_yaml::Value) -> bool {
        match v {
            serde_yaml::Value::Mapping(m) => m.contains_key("<<") || m.values().any(has_merge),
            serde_yaml::Value::Sequence(s) => s.iter().any(has_merge),
            serde_yaml::Value::Tagged(t) => has_merge(&t.value),
            _ => false,
        }
    }
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
    if !has_merge(&value) {
        return None;
    }
    Some(
        value
            .apply_merge()
            .and_then(|()| serde_yaml::from_value(value)),
    )
}

/// `services[1].name`, as serde_yaml writes paths.
fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out += k,
            Seg::Key(k) => out += &format!(".{k}"),
            Seg::Index(i) => out += &format!("[{i}]"),
        }
    }
    out
}

fn yaml_error(file: &str, e: &serde_yaml::Error) -> Error {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    // serde_yaml says " at line L column C" of the error's own place, which
    // the prefix says already; another place it names (where the flow
    // mapping being parsed began) stays.
    let message = e
        .to_string()
        .replace(&format!(" at line {line} column {column}"), "");
    Error {
        file: file.to_string(),
        line,
        column,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::names::default_name;
    use super::*;
    use std::collections::HashSet;

    fn parse_str(text: &str) -> Result<Config, Error> {
        parse("c.yaml", text, Path::new("/base"))
    }

    #[test]
    fn merge_keys_are_applied_as_upstream_does() {
        let text = "version: v2\nstorage: {type: directory, path: /s}\nservices:\n  - &web\n    type: identity\n    name: web\n    principals: [a, b]\n    destination: {type: directory, path: /x/a}\n  - <<: *web\n    name: web2\n    destination: {type: directory, path: /x/b}\n";
        let c = parse_str(text).unwrap();
        let web2 = c.identity("web2").unwrap();
        assert_eq!(web2.principals, ["a", "b"]);
        assert_eq!(web2.destination, Path::new("/x/b"));
        // A bad value after the merge is still refused, and says so.
        let bad = text.replace("name: web2", "name: Web2");
        let e = parse_str(&bad).unwrap_err().to_string();
        assert!(
            e.contains("invalid service name") && e.contains("merge keys"),
            "{e}"
        );
    }

    #[test]
    fn reads_at_most_the_limit_and_says_which_limit_was_hit() {
        let dir = crate::testutil::TestDir::new("cfg-limit");
        let file = dir.0.join("c.yaml");
        // The limit falls inside a two-byte character: still "too large".
        std::fs::write(&file, "#aaé").unwrap();
        assert_eq!(read_limited(&file, 4).unwrap(), None);
        assert_eq!(read_limited(&file, 5).unwrap().as_deref(), Some("#aaé"));
        std::fs::write(&file, b"ok\n\xff").unwrap();
        let e = read_limited(&file, 100).unwrap_err();
        assert_eq!(e.to_string(), "not UTF-8 text (byte 3)");
    }

    const GOOD: &str = "version: v2
storage: {type: directory, path: /var/lib/tbot}
services:
  - type: identity
    principals: [deploy]
    destination: {type: directory, path: /opt/machine-id}
  - type: identity
    name: my-service-123
    principals: [a, b]
    destination: {type: directory, path: out}
  - type: ssh-multiplexer
    destination: {type: directory, path: /opt/machine-id/mux}
    identity: my-service-123
";

    #[test]
    fn good_config_gets_defaults_and_names() {
        let c = parse_str(GOOD).unwrap();
        let names: Vec<&str> = c.services.iter().map(ServiceConfig::name).collect();
        assert_eq!(
            names,
            [
                "identity-opt-machine-id",
                "my-service-123",
                "ssh-multiplexer-opt-machine-id-mux"
            ]
        );
        assert_eq!(c.credential_ttl, DEFAULT_CREDENTIAL_TTL);
        assert_eq!(
            c.identity("my-service-123").unwrap().destination,
            Path::new("/base/out")
        );
        assert!(c.diag_addr.is_none());
        let c = parse_str(&GOOD.replace("path: out}", "path: ./out/./x}")).unwrap();
        assert_eq!(
            c.identity("my-service-123").unwrap().destination,
            Path::new("/base/out/x")
        );
    }

    fn err(text: &str) -> String {
        parse_str(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_carry_line_and_column() {
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nbogus: 1\n");
        assert!(e.starts_with("c.yaml:3:1: unknown field `bogus`"), "{e}");
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: identity\n    principals: [a]\n    destination: {type: directory, path: /o}\n    colour: red\n");
        assert!(
            e.starts_with("c.yaml:7:5: services[0]: unknown field `colour`"),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\ncredential_ttl: 5x\n");
        assert!(
            e.starts_with("c.yaml:3:17: ") && e.contains("invalid duration \"5x\""),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\ndiag_addr: nope\n");
        assert!(
            e.starts_with("c.yaml:3:12: ") && e.contains("invalid address"),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\ncredential_ttl: 10m\nrenewal_interval: 20m\n");
        assert!(
            e.starts_with(
                "c.yaml:4:19: renewal_interval: renewal_interval (20m0s) must be shorter"
            ),
            "{e}"
        );
        let e = err("version: v3\n");
        assert!(
            e.starts_with("c.yaml:1:10: version: unsupported version"),
            "{e}"
        );
        let e = err("version: v2\n");
        assert!(e.starts_with("c.yaml:1:1: missing field `storage`"), "{e}");
        let e = err("");
        assert!(e.contains("missing field `version`"), "{e}");
        let e = err("version: v2\nstorage: [\n");
        assert!(e.starts_with("c.yaml:"), "{e}");
    }

    #[test]
    fn name_rules() {
        let svc = |name: &str| {
            format!("version: v2\nstorage: {{type: directory, path: /x}}\nservices:\n  - type: identity\n    name: {name}\n    principals: [a]\n    destination: {{type: directory, path: /o}}\n")
        };
        assert!(
            err(&svc("Upper")).starts_with("c.yaml:5:11: services[0].name: invalid service name")
        );
        assert!(err(&svc(&"a".repeat(65))).contains("invalid service name"));
        assert!(err(&svc("heartbeat")).contains("reserved"));
        assert!(parse_str(&svc(&"a".repeat(64))).is_ok());
        let twice = "version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: identity\n    name: a\n    principals: [a]\n    destination: {type: directory, path: /o}\n  - type: identity\n    name: a\n    principals: [a]\n    destination: {type: directory, path: /p}\n";
        assert!(
            err(twice)
                .starts_with("c.yaml:9:11: services[1].name: service name \"a\" is used twice"),
            "{}",
            err(twice)
        );
    }

    #[test]
    fn default_names_are_stable_under_reordering() {
        let a = "  - type: identity\n    principals: [a]\n    destination: {type: directory, path: /opt/a.b}\n";
        let b = "  - type: identity\n    principals: [a]\n    destination: {type: directory, path: /opt/a b}\n";
        let head = "version: v2\nstorage: {type: directory, path: /x}\nservices:\n";
        let one = parse_str(&format!("{head}{a}{b}")).unwrap();
        let two = parse_str(&format!("{head}{b}{a}")).unwrap();
        let by_dest = |c: &Config| {
            let mut v: Vec<(String, String)> = c
                .services
                .iter()
                .map(|s| match s {
                    ServiceConfig::Identity(i) => {
                        (i.destination.display().to_string(), i.name.clone())
                    }
                    ServiceConfig::SshMultiplexer(_) => unreachable!(),
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(by_dest(&one), by_dest(&two));
        let names: HashSet<String> = one.services.iter().map(|s| s.name().to_string()).collect();
        assert!(
            names.contains("identity-opt-a-b") && names.contains("identity-opt-a-b-2"),
            "{names:?}"
        );
    }

    #[test]
    fn default_name_sanitises() {
        assert_eq!(
            default_name("identity", "/opt/machine-id"),
            "identity-opt-machine-id"
        );
        assert_eq!(
            default_name("identity", "./Out Dir//x"),
            "identity-out-dir-x"
        );
        assert_eq!(default_name("identity", "/"), "identity");
        assert!(default_name("identity", &"/abc".repeat(40)).len() <= 64);
    }

    #[test]
    fn reserved_default_names_get_a_suffix() {
        let c = parse_str("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: identity\n    principals: [a]\n    destination: {type: directory, path: /}\n").unwrap();
        assert_eq!(c.services[0].name(), "identity-2");
    }

    #[test]
    fn readers_are_looked_up_at_load_and_placed_when_refused() {
        let svc = |dest: &str| {
            format!("version: v2\nstorage: {{type: directory, path: /x}}\nservices:\n  - type: identity\n    principals: [a]\n    destination:\n{dest}")
        };
        let c = parse_str(&svc("      type: directory\n      path: /o\n      acls: required\n      readers:\n        - user: root\n        - group: 1234\n        - group: \"0\"\n")).unwrap();
        let ServiceConfig::Identity(i) = &c.services[0] else {
            unreachable!()
        };
        assert_eq!(i.access.acls, crate::infra::acl::AclMode::Required);
        assert_eq!(
            i.access.readers,
            [
                Reader::User {
                    name: "root".into(),
                    uid: 0
                },
                Reader::Group {
                    name: "1234".into(),
                    gid: 1234
                },
                Reader::Group {
                    name: "0".into(),
                    gid: 0
                },
            ]
        );
        // The default is upstream's: try.
        let c = parse_str(&svc("      {type: directory, path: /o}\n")).unwrap();
        let ServiceConfig::Identity(i) = &c.services[0] else {
            unreachable!()
        };
        assert_eq!(i.access, Access::default());
        assert_eq!(i.access.acls, crate::infra::acl::AclMode::Try);
        let e = err(&svc("      type: directory\n      path: /o\n      readers:\n        - user: root\n        - user: no-such-user-tbot\n"));
        assert!(
            e.starts_with("c.yaml:11:17: ") && e.contains("unknown user \"no-such-user-tbot\""),
            "{e}"
        );
        let e = err(&svc(
            "      type: directory\n      path: /o\n      readers: [{group: no-such-group-tbot}]\n",
        ));
        assert!(
            e.starts_with("c.yaml:9:25: ") && e.contains("unknown group"),
            "{e}"
        );
        let e = err(&svc(
            "      type: directory\n      path: /o\n      readers: [{user: root, group: root}]\n",
        ));
        assert!(
            e.starts_with("c.yaml:9:17: services[0].destination.readers[0]: a reader is"),
            "{e}"
        );
        let e = err(&svc(
            "      type: directory\n      path: /o\n      acls: sometimes\n",
        ));
        assert!(
            e.starts_with("c.yaml:9:13: ") && e.contains("unknown variant `sometimes`"),
            "{e}"
        );
        // `..` never (the walk and the lexical rules would disagree), nor
        // storage itself as a destination, nor (uid_t)-1.
        let e = err(&svc("      {type: directory, path: /x/../etc}\n"));
        assert!(
            e.starts_with("c.yaml:7:31: ") && e.contains("`..` is not allowed"),
            "{e}"
        );
        let e = err(&svc("      {type: directory, path: /x/}\n"));
        assert!(e.contains("destination /x is the storage directory"), "{e}");
        let e = err(&svc(
            "      {type: directory, path: /o, readers: [{group: 4294967295}]}\n",
        ));
        assert!(e.contains("invalid user or group id 4294967295"), "{e}");
        let e = err("version: v2\nstorage: {type: directory, path: /x, readers: [{user: root}]}\n");
        assert!(
            e.starts_with(
                "c.yaml:2:47: storage.readers: field `readers` does not apply to storage"
            ),
            "{e}"
        );
    }

    #[test]
    fn type_specific_fields_and_references() {
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: ssh-multiplexer\n    principals: [a]\n    destination: {type: directory, path: /o}\n");
        assert!(
            e.starts_with("c.yaml:5:17: services[0].principals: field `principals` does not apply"),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: ssh-multiplexer\n    identity: nope\n    destination: {type: directory, path: /o}\n");
        assert!(
            e.starts_with("c.yaml:5:15: services[0].identity: \"nope\" is not the name of an identity service"),
            "{e}"
        );
        let e = err("version: v2\nstorage: {type: directory, path: /x}\nservices:\n  - type: identity\n    destination: {type: directory, path: /o}\n");
        assert!(
            e.starts_with("c.yaml:4:5: services[0]: an identity service needs"),
            "{e}"
        );
    }
}
