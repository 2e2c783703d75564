//! The command line. One table ([`FLAGS`]) feeds the parser and the help
//! text; a unit test checks the man page mentions every entry.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::log::Format;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Start,
    Wait,
    ProxyCommand,
    Version,
    Help,
}

pub struct CommandInfo {
    pub cmd: Cmd,
    pub name: &'static str,
    pub usage: &'static str,
    pub about: &'static str,
}

pub const COMMANDS: &[CommandInfo] = &[
    CommandInfo {
        cmd: Cmd::Start,
        name: "start",
        usage:
            "tbot start [-c FILE] [--diag-addr HOST:PORT] [-d|--debug] [--log-format text|json] [--oneshot]",
        about: "Run the bot: keep credentials fresh, run services, serve diagnostics; SIGHUP reloads.",
    },
    CommandInfo {
        cmd: Cmd::Wait,
        name: "wait",
        usage: "tbot wait --diag-addr HOST:PORT [--service NAME] [--timeout DURATION]",
        about: "Wait until a running bot (or one of its services) is ready.",
    },
    CommandInfo {
        cmd: Cmd::ProxyCommand,
        name: "ssh-multiplexer-proxy-command",
        usage: "tbot ssh-multiplexer-proxy-command SOCKET TARGET",
        about: "OpenSSH ProxyCommand: hand ssh a connection to TARGET through the multiplexer.",
    },
    CommandInfo {
        cmd: Cmd::Version,
        name: "version",
        usage: "tbot version",
        about: "Print the version.",
    },
    CommandInfo {
        cmd: Cmd::Help,
        name: "help",
        usage: "tbot help [COMMAND]",
        about: "Print help.",
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id {
    Config,
    DiagAddr,
    Debug,
    LogFormat,
    Oneshot,
    Service,
    Timeout,
    Help,
}

pub struct Flag {
    pub id: Id,
    pub long: &'static str,
    pub short: Option<char>,
    /// Name of the value, or None for a switch.
    pub value: Option<&'static str>,
    pub env: Option<&'static str>,
    pub commands: &'static [Cmd],
    pub help: &'static str,
}

pub const FLAGS: &[Flag] = &[
    Flag {
        id: Id::Config,
        long: "config",
        short: Some('c'),
        value: Some("FILE"),
        env: Some("TBOT_CONFIG_PATH"),
        commands: &[Cmd::Start],
        help: "Configuration file (YAML, version: v2).",
    },
    Flag {
        id: Id::DiagAddr,
        long: "diag-addr",
        short: None,
        value: Some("HOST:PORT"),
        env: None,
        commands: &[Cmd::Start, Cmd::Wait],
        help: "Diagnostics service address. For start, overrides diag_addr from the file (port 0 picks a free port).",
    },
    Flag {
        id: Id::Debug,
        long: "debug",
        short: Some('d'),
        value: None,
        env: Some("TBOT_DEBUG"),
        commands: &[Cmd::Start],
        help: "Debug mode: debug logs and the /debug/pprof/ endpoints.",
    },
    Flag {
        id: Id::LogFormat,
        long: "log-format",
        short: None,
        value: Some("text|json"),
        env: None,
        commands: &[Cmd::Start],
        help: "Log line format on stderr (default text).",
    },
    Flag {
        id: Id::Oneshot,
        long: "oneshot",
        short: None,
        value: None,
        env: None,
        commands: &[Cmd::Start],
        help: "Issue every output once, report, and exit (0 if all succeeded, else 1).",
    },
    Flag {
        id: Id::Service,
        long: "service",
        short: None,
        value: Some("NAME"),
        env: None,
        commands: &[Cmd::Wait],
        help: "Wait for this service only.",
    },
    Flag {
        id: Id::Timeout,
        long: "timeout",
        short: None,
        value: Some("DURATION"),
        env: None,
        commands: &[Cmd::Wait],
        help: "Give up after this long (Go syntax: 30s, 2m; default 30s).",
    },
    Flag {
        id: Id::Help,
        long: "help",
        short: Some('h'),
        value: None,
        env: None,
        commands: &[Cmd::Start, Cmd::Wait, Cmd::ProxyCommand, Cmd::Version, Cmd::Help],
        help: "Print help for the command.",
    },
];

/// What the user asked for.
/// Every signal `tbot start` acts on, and what it does (the choices are
/// src/signals.rs's). Printed by `tbot start --help`; each is in the man
/// page's SIGNALS section (checked by a test below).
pub const SIGNALS: &[(&str, &str)] = &[
    (
        "SIGHUP",
        "Reload the configuration file (systemctl reload); a bad file changes nothing.",
    ),
    ("SIGINT, SIGTERM", "Stop every service cleanly and exit 0."),
    (
        "SIGPIPE",
        "Ignored: a peer that went away fails that one connection.",
    ),
    (
        "any other",
        "Its default action (SIGQUIT ends tbot with a core dump).",
    ),
];

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Start(StartArgs),
    Wait(WaitArgs),
    MuxProxy { socket: PathBuf, target: String },
    Version,
    Help(Option<Cmd>),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct StartArgs {
    pub config: Option<PathBuf>,
    /// Where the config path came from ("-c" or the env variable), for logs.
    pub config_from_env: bool,
    pub diag_addr: Option<String>,
    /// Some(true) when -d or TBOT_DEBUG asked for debug mode.
    pub debug: Option<bool>,
    pub debug_from_env: bool,
    pub log_format: Option<Format>,
    pub oneshot: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct WaitArgs {
    pub diag_addr: String,
    pub service: Option<String>,
    pub timeout: Duration,
}

/// A usage error: the message names the problem; exit code 2.
#[derive(Debug, PartialEq, Eq)]
pub struct Usage(pub String);

fn info(cmd: Cmd) -> &'static CommandInfo {
    // COMMANDS has an entry for every Cmd (checked by a unit test).
    COMMANDS
        .iter()
        .find(|c| c.cmd == cmd)
        .unwrap_or(&COMMANDS[0])
}

fn truthy(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("TBOT_DEBUG={v:?}: expected true or false")),
    }
}

/// Parses the arguments (without the program name) and the environment.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let usage = |m: String| Usage(m);

    let first = p.next().map_err(|e| usage(e.to_string()))?;
    let cmd = match first {
        None => return Err(usage("no command given; try `tbot help`".into())),
        Some(arg @ (Short('h') | Long("help") | Long("version"))) => {
            let (what, cmd) = match arg {
                Long("version") => ("--version", Command::Version),
                _ => ("--help", Command::Help(None)),
            };
            return match p.next().map_err(|e| usage(e.to_string()))? {
                None => Ok(cmd),
                Some(extra) => Err(usage(format!(
                    "{} after {what}, which stands alone",
                    extra.unexpected()
                ))),
            };
        }
        Some(Value(v)) => {
            let v = v
                .string()
                .map_err(|e| usage(format!("command is not valid UTF-8: {e:?}")))?;
            match COMMANDS.iter().find(|c| c.name == v) {
                Some(c) => c.cmd,
                None => return Err(usage(format!("unknown command {v:?}; try `tbot help`"))),
            }
        }
        Some(other) => {
            return Err(usage(format!(
                "{}; a command comes first (try `tbot help`)",
                other.unexpected()
            )))
        }
    };

    let mut values: Vec<(Id, String)> = Vec::new();
    let mut positional: Vec<String> = Vec::new();
    while let Some(arg) = p.next().map_err(|e| usage(e.to_string()))? {
        let flag = match &arg {
            Long(l) => FLAGS.iter().find(|f| f.long == *l),
            Short(s) => FLAGS.iter().find(|f| f.short == Some(*s)),
            Value(v) => {
                positional.push(
                    v.clone()
                        .string()
                        .map_err(|e| usage(format!("argument is not valid UTF-8: {e:?}")))?,
                );
                continue;
            }
        };
        let Some(flag) = flag.filter(|f| f.commands.contains(&cmd)) else {
            return Err(usage(format!(
                "{} for `tbot {}`; try `tbot {} --help`",
                arg.unexpected(),
                info(cmd).name,
                info(cmd).name
            )));
        };
        if flag.id == Id::Help {
            return Ok(Command::Help(Some(cmd)));
        }
        let value = match flag.value {
            Some(_) => p
                .value()
                .map_err(|e| usage(e.to_string()))?
                .string()
                .map_err(|e| usage(format!("--{} is not valid UTF-8: {e:?}", flag.long)))?,
            None => String::new(),
        };
        values.push((flag.id, value));
    }
    let get = |id: Id| {
        values
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.clone())
    };
    let has = |id: Id| values.iter().any(|(i, _)| *i == id);

    match cmd {
        Cmd::Version => no_positional(&positional, cmd).map(|_| Command::Version),
        Cmd::Help => match positional.as_slice() {
            [] => Ok(Command::Help(None)),
            [name] => match COMMANDS.iter().find(|c| c.name == name) {
                Some(c) => Ok(Command::Help(Some(c.cmd))),
                None => Err(usage(format!("unknown command {name:?}"))),
            },
            _ => Err(usage("`tbot help` takes at most one command".into())),
        },
        Cmd::ProxyCommand => match positional.as_slice() {
            [socket, target] => Ok(Command::MuxProxy {
                socket: socket.into(),
                target: target.clone(),
            }),
            _ => Err(usage(format!("usage: {}", info(cmd).usage))),
        },
        Cmd::Start => {
            no_positional(&positional, cmd)?;
            let mut a = StartArgs::default();
            if let Some(c) = get(Id::Config) {
                a.config = Some(c.into());
            } else if let Some(c) = env("TBOT_CONFIG_PATH").filter(|c| !c.is_empty()) {
                a.config = Some(c.into());
                a.config_from_env = true;
            }
            if let Some(addr) = get(Id::DiagAddr) {
                crate::config::check_addr(&addr).map_err(|e| usage(format!("--diag-addr: {e}")))?;
                a.diag_addr = Some(addr);
            }
            if has(Id::Debug) {
                a.debug = Some(true);
            } else if let Some(v) = env("TBOT_DEBUG") {
                if truthy(&v).map_err(usage)? {
                    a.debug = Some(true);
                    a.debug_from_env = true;
                }
            }
            if let Some(f) = get(Id::LogFormat) {
                a.log_format =
                    Some(Format::parse(&f).ok_or_else(|| {
                        usage(format!("--log-format {f:?}: expected text or json"))
                    })?);
            }
            a.oneshot = has(Id::Oneshot);
            Ok(Command::Start(a))
        }
        Cmd::Wait => {
            no_positional(&positional, cmd)?;
            let diag_addr = get(Id::DiagAddr)
                .ok_or_else(|| usage("`tbot wait` needs --diag-addr HOST:PORT".into()))?;
            crate::config::check_addr(&diag_addr)
                .map_err(|e| usage(format!("--diag-addr: {e}")))?;
            let timeout = match get(Id::Timeout) {
                Some(t) => {
                    crate::duration::parse(&t).map_err(|e| usage(format!("--timeout: {e}")))?
                }
                None => Duration::from_secs(30),
            };
            Ok(Command::Wait(WaitArgs {
                diag_addr,
                service: get(Id::Service),
                timeout,
            }))
        }
    }
}

fn no_positional(positional: &[String], cmd: Cmd) -> Result<(), Usage> {
    match positional.first() {
        None => Ok(()),
        Some(v) => Err(Usage(format!(
            "unexpected argument {v:?} for `tbot {}`",
            info(cmd).name
        ))),
    }
}

fn flag_line(f: &Flag) -> String {
    let mut names = match f.short {
        Some(s) => format!("-{s}, --{}", f.long),
        None => format!("    --{}", f.long),
    };
    if let Some(v) = f.value {
        names += &format!(" {v}");
    }
    let mut line = format!("  {names:<30} {}", f.help);
    if let Some(e) = f.env {
        line += &format!(" [env: {e}]");
    }
    line
}

/// `tbot help` or `tbot COMMAND --help`.
pub fn help(cmd: Option<Cmd>) -> String {
    let version = env!("CARGO_PKG_VERSION");
    match cmd {
        None => {
            let mut out = format!(
                "tbot {version}: keeps short-lived SSH credentials fresh, brokers SSH connections,\nand reports its health over HTTP.\n\nUsage:\n"
            );
            for c in COMMANDS {
                out += &format!("  {}\n", c.usage);
            }
            out += "\nCommands:\n";
            for c in COMMANDS {
                out += &format!("  {:<31} {}\n", c.name, c.about);
            }
            out += "\nRun `tbot COMMAND --help` for a command's flags. See tbot(1).\n";
            out
        }
        Some(cmd) => {
            let c = info(cmd);
            let mut out = format!("{}\n\nUsage: {}\n\nFlags:\n", c.about, c.usage);
            for f in FLAGS.iter().filter(|f| f.commands.contains(&cmd)) {
                out += &flag_line(f);
                out.push('\n');
            }
            if cmd == Cmd::Start {
                out += "\nSignals (with --oneshot, SIGHUP, SIGINT and SIGTERM end the run):\n";
                for (sig, what) in SIGNALS {
                    out += &format!("  {sig:<30} {what}\n");
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command, Usage> {
        parse(args.iter().map(OsString::from), &|_| None)
    }

    #[test]
    fn start_flags() {
        let Ok(Command::Start(a)) = run(&[
            "start",
            "-c",
            "x.yaml",
            "--diag-addr",
            "127.0.0.1:0",
            "-d",
            "--oneshot",
        ]) else {
            panic!("start did not parse")
        };
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("x.yaml")));
        assert_eq!(a.diag_addr.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(a.debug, Some(true));
        assert!(a.oneshot);
    }

    #[test]
    fn env_fills_in_and_flags_win() {
        let env = |k: &str| match k {
            "TBOT_CONFIG_PATH" => Some("env.yaml".to_string()),
            "TBOT_DEBUG" => Some("1".to_string()),
            _ => None,
        };
        let Ok(Command::Start(a)) = parse(["start"].map(OsString::from), &env) else {
            panic!()
        };
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("env.yaml")));
        assert!(a.config_from_env && a.debug == Some(true) && a.debug_from_env);
        let Ok(Command::Start(a)) =
            parse(["start", "--config=flag.yaml"].map(OsString::from), &env)
        else {
            panic!()
        };
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("flag.yaml")));
    }

    #[test]
    fn usage_errors() {
        assert!(run(&[]).is_err());
        assert!(run(&["nope"]).is_err());
        assert!(run(&["start", "--service", "x"])
            .unwrap_err()
            .0
            .contains("tbot start"));
        assert!(run(&["start", "--diag-addr", "nope"]).is_err());
        assert!(run(&["start", "--log-format", "xml"]).is_err());
        assert!(run(&["wait"]).unwrap_err().0.contains("--diag-addr"));
        assert!(run(&["wait", "--diag-addr", "127.0.0.1:1", "--timeout", "5"]).is_err());
        assert!(run(&["ssh-multiplexer-proxy-command", "only-one"]).is_err());
        assert!(
            parse(["start"].map(OsString::from), &|k| (k == "TBOT_DEBUG")
                .then(|| "maybe".into()))
            .is_err()
        );
    }

    #[test]
    fn help_and_version() {
        assert_eq!(run(&["--help"]), Ok(Command::Help(None)));
        assert_eq!(
            run(&["start", "--help"]),
            Ok(Command::Help(Some(Cmd::Start)))
        );
        assert_eq!(run(&["help", "wait"]), Ok(Command::Help(Some(Cmd::Wait))));
        assert_eq!(run(&["--version"]), Ok(Command::Version));
        assert_eq!(run(&["version"]), Ok(Command::Version));
        for extra in [&["--version", "x"][..], &["-h", "junk"], &["--help", "-d"]] {
            let e = run(extra).unwrap_err().0;
            assert!(e.contains("stands alone"), "{extra:?}: {e}");
        }
        let h = help(Some(Cmd::Start));
        assert!(h.contains("--diag-addr HOST:PORT") && h.contains("TBOT_CONFIG_PATH"));
        assert!(h.contains("SIGHUP") && h.contains("Reload the configuration"));
        assert!(!help(Some(Cmd::Wait)).contains("SIGHUP"));
    }

    #[test]
    fn every_command_and_flag_is_in_the_man_page() {
        let man = include_str!("../man/tbot.1");
        for c in COMMANDS {
            assert!(info(c.cmd).name == c.name);
            assert!(
                man.contains(&c.name.replace('-', "\\-")),
                "man page lacks command {}",
                c.name
            );
        }
        for f in FLAGS {
            assert!(
                man.contains(&format!("Fl \\-{}", f.long.replace('-', "\\-"))),
                "man page lacks --{}",
                f.long
            );
            if let Some(e) = f.env {
                assert!(man.contains(e), "man page lacks {e}");
            }
        }
        let signals: String = man
            .lines()
            .skip_while(|l| *l != ".Sh SIGNALS")
            .skip(1)
            .take_while(|l| !l.starts_with(".Sh "))
            .collect::<Vec<_>>()
            .join("\n");
        for (sig, _) in SIGNALS.iter().filter(|(s, _)| s.starts_with("SIG")) {
            for one in sig.split(", ") {
                assert!(
                    signals.contains(&format!("Dv {one}")),
                    "man page SIGNALS lacks {one}"
                );
            }
        }
        assert!(
            signals.contains("SIGQUIT"),
            "man page SIGNALS lacks the rest"
        );
    }
}
