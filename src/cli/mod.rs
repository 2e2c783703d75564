//! The command line: parsing (lexopt), usage lines and `--help`, all read
//! from the one table in `table.rs`; a unit test checks the man page
//! mentions every entry.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::log::Format;

mod table;
pub use table::*;

/// What the user asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Start(StartArgs),
    /// `tbot check`: only `config` and `config_from_env` are set.
    Check(StartArgs),
    Wait(WaitArgs),
    MuxProxy {
        socket: PathBuf,
        target: String,
    },
    /// `tbot status` and `tbot debug ...`: through the debug socket.
    Debug(DebugArgs),
    Completions(Shell),
    Version,
    Help(Option<Cmd>),
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct StartArgs {
    pub config: Option<PathBuf>,
    /// Where the config path came from ("-c" or the env variable), for logs.
    pub config_from_env: bool,
    pub diag_addr: Option<String>,
    pub web_config_file: Option<PathBuf>,
    /// Some(true) when -d or TBOT_DEBUG asked for debug mode.
    pub debug: Option<bool>,
    pub debug_from_env: bool,
    pub log_format: Option<Format>,
    pub oneshot: bool,
}

/// What `tbot status` and `tbot debug ...` ask the running bot.
#[derive(Debug, PartialEq, Eq)]
pub enum Ask {
    Status,
    /// Read the level, or set it (0 debug … 3 error).
    LogLevel(Option<u8>),
    Profile {
        seconds: u64,
    },
    /// Lines at this level and above (None: the bot's level).
    Logs(Option<u8>),
}

#[derive(Debug, PartialEq, Eq)]
pub struct DebugArgs {
    /// The running bot's configuration file, which names its debug socket.
    pub config: PathBuf,
    pub ask: Ask,
}

/// The configuration `tbot status` and `tbot debug` read without `-c` or
/// `TBOT_CONFIG_PATH`: the packaged one.
pub const DEFAULT_CONFIG: &str = "/etc/tbot/tbot.yaml";

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

/// A boolean environment variable's value (`name` for the error).
fn truthy(name: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "" | "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("{name}={v:?}: expected true or false")),
    }
}

/// Parses the arguments (without the program name) and the environment.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Command, Usage> {
    let mut p = lexopt::Parser::from_args(args);
    let cmd = match command(&mut p)? {
        Ok(cmd) => cmd,
        Err(done) => return Ok(done),
    };
    let Some(read) = read_flags(&mut p, cmd)? else {
        return Ok(Command::Help(Some(cmd)));
    };
    match cmd {
        Cmd::Version => no_positional(&read.positional, cmd).map(|_| Command::Version),
        Cmd::Help => match read.positional.as_slice() {
            [] => Ok(Command::Help(None)),
            // One word, or two after `debug` (`tbot help debug logs`).
            [_] | [_, _] if read.positional.len() == 1 || read.positional[0] == "debug" => {
                let name = read.positional.join(" ");
                match COMMANDS.iter().find(|c| c.name == name) {
                    Some(c) => Ok(Command::Help(Some(c.cmd))),
                    None => Err(Usage(format!("unknown command {name:?}"))),
                }
            }
            _ => Err(Usage("`tbot help` takes at most one command".into())),
        },
        Cmd::ProxyCommand => match read.positional.as_slice() {
            [socket, target] => Ok(Command::MuxProxy {
                socket: socket.into(),
                target: target.clone(),
            }),
            _ => Err(Usage(format!("usage: {}", usage(cmd)))),
        },
        Cmd::Start => start_args(&read, env, cmd).map(Command::Start),
        Cmd::Check => start_args(&read, env, cmd).map(Command::Check),
        Cmd::Completions => match read.positional.as_slice() {
            [name] => match SHELLS.iter().find(|(n, _)| n == name) {
                Some((_, shell)) => Ok(Command::Completions(*shell)),
                None => Err(Usage(format!(
                    "unknown shell {name:?}: expected {SHELLS_ARG}"
                ))),
            },
            _ => Err(Usage(format!("usage: {}", usage(cmd)))),
        },
        Cmd::Wait => wait_args(&read).map(Command::Wait),
        Cmd::Status | Cmd::DebugLogLevel | Cmd::DebugProfile | Cmd::DebugLogs => {
            debug_args(&read, env, cmd).map(Command::Debug)
        }
    }
}

/// A level named on the command line (`what` for the error).
fn level_arg(what: &str, v: &str) -> Result<u8, Usage> {
    crate::log::parse_level(v)
        .ok_or_else(|| Usage(format!("{what} {v:?}: expected debug, info, warn or error")))
}

fn debug_args(
    read: &Read,
    env: &dyn Fn(&str) -> Option<String>,
    cmd: Cmd,
) -> Result<DebugArgs, Usage> {
    if cmd != Cmd::DebugLogLevel {
        no_positional(&read.positional, cmd)?;
    }
    let config = read
        .get(Id::Config)
        .or_else(|| env_of(Id::Config, env).filter(|c| !c.is_empty()))
        .unwrap_or_else(|| DEFAULT_CONFIG.into())
        .into();
    let ask = match cmd {
        Cmd::DebugLogLevel => match read.positional.as_slice() {
            [] => Ask::LogLevel(None),
            [level] => Ask::LogLevel(Some(level_arg("level", level)?)),
            _ => return Err(Usage(format!("usage: {}", usage(cmd)))),
        },
        Cmd::DebugProfile => {
            let seconds = match read.get(Id::Seconds) {
                None => 30,
                Some(s) => s
                    .parse()
                    .ok()
                    .filter(|n| (1..=300).contains(n))
                    .ok_or_else(|| Usage(format!("--seconds {s:?}: expected 1 to 300")))?,
            };
            Ask::Profile { seconds }
        }
        Cmd::DebugLogs => Ask::Logs(match read.get(Id::Level) {
            Some(l) => Some(level_arg("--level", &l)?),
            None => None,
        }),
        _ => Ask::Status,
    };
    Ok(DebugArgs { config, ask })
}

/// The log format the arguments ask for (`--log-format json` or
/// `--log-format=json`), looked for before they are parsed: when the rest of
/// the command line is wrong, its error still comes in that format.
pub fn requested_log_format(args: &[OsString]) -> Option<Format> {
    let flag = format!("--{}", flag(Id::LogFormat).long);
    let mut it = args.iter().filter_map(|a| a.to_str());
    let mut found = None;
    while let Some(a) = it.next() {
        let value = if a == flag {
            it.next()
        } else {
            a.strip_prefix(&flag).and_then(|r| r.strip_prefix('='))
        };
        if let Some(f) = value.and_then(Format::parse) {
            found = Some(f);
        }
    }
    found
}

fn lexopt_error(e: lexopt::Error) -> Usage {
    Usage(e.to_string())
}

/// The first argument: a command (Ok), or `--help`/`--version` standing
/// alone, already the whole answer (Err).
fn command(p: &mut lexopt::Parser) -> Result<Result<Cmd, Command>, Usage> {
    use lexopt::prelude::*;
    match p.next().map_err(lexopt_error)? {
        None => Err(Usage("no command given; try `tbot help`".into())),
        Some(arg @ (Short('h') | Long("help") | Long("version"))) => {
            let (what, cmd) = match arg {
                Long("version") => ("--version", Command::Version),
                _ => ("--help", Command::Help(None)),
            };
            match p.next().map_err(lexopt_error)? {
                None => Ok(Err(cmd)),
                Some(extra) => Err(Usage(format!(
                    "{} after {what}, which stands alone",
                    extra.unexpected()
                ))),
            }
        }
        Some(Value(v)) => {
            let v = v
                .string()
                .map_err(|e| Usage(format!("command is not valid UTF-8: {e:?}")))?;
            let v = if v == "debug" {
                // Two words: `tbot debug log-level`.
                match p.next().map_err(lexopt_error)? {
                    Some(Value(sub)) => format!("debug {}", sub.string().unwrap_or_default()),
                    _ => {
                        return Err(Usage(
                            "`tbot debug` takes log-level, profile or logs; try `tbot help`".into(),
                        ))
                    }
                }
            } else {
                v
            };
            match COMMANDS.iter().find(|c| c.name == v) {
                Some(c) => Ok(Ok(c.cmd)),
                None => Err(Usage(format!("unknown command {v:?}; try `tbot help`"))),
            }
        }
        Some(other) => Err(Usage(format!(
            "{}; a command comes first (try `tbot help`)",
            other.unexpected()
        ))),
    }
}

/// A command's flags (in order; the last of a repeated flag wins) and
/// positional arguments.
struct Read {
    values: Vec<(Id, String)>,
    positional: Vec<String>,
}

impl Read {
    fn get(&self, id: Id) -> Option<String> {
        self.values
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.clone())
    }

    fn has(&self, id: Id) -> bool {
        self.values.iter().any(|(i, _)| *i == id)
    }
}

/// The rest of the arguments, against [`FLAGS`]; None when `--help` came.
fn read_flags(p: &mut lexopt::Parser, cmd: Cmd) -> Result<Option<Read>, Usage> {
    use lexopt::prelude::*;
    let mut read = Read {
        values: Vec::new(),
        positional: Vec::new(),
    };
    while let Some(arg) = p.next().map_err(lexopt_error)? {
        let flag = match &arg {
            Long(l) => FLAGS.iter().find(|f| f.long == *l),
            Short(s) => FLAGS.iter().find(|f| f.short == Some(*s)),
            Value(v) => {
                read.positional.push(
                    v.clone()
                        .string()
                        .map_err(|e| Usage(format!("argument is not valid UTF-8: {e:?}")))?,
                );
                continue;
            }
        };
        let Some(flag) = flag.filter(|f| f.commands.contains(&cmd)) else {
            return Err(Usage(format!(
                "{} for `tbot {}`; try `tbot {} --help`",
                arg.unexpected(),
                info(cmd).name,
                info(cmd).name
            )));
        };
        if flag.id == Id::Help {
            return Ok(None);
        }
        let value = match flag.value {
            Some(_) => p
                .value()
                .map_err(lexopt_error)?
                .string()
                .map_err(|e| Usage(format!("--{} is not valid UTF-8: {e:?}", flag.long)))?,
            None => String::new(),
        };
        read.values.push((flag.id, value));
    }
    Ok(Some(read))
}

/// The table's entry for `id`.
fn flag(id: Id) -> &'static Flag {
    // FLAGS has an entry for every Id (checked by a unit test).
    FLAGS.iter().find(|f| f.id == id).unwrap_or(&FLAGS[0])
}

/// The value of `id`'s environment variable (named in [`FLAGS`]), if it has one.
fn env_of(id: Id, env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    flag(id).env.and_then(env)
}

/// `tbot start`'s arguments, and `tbot check`'s (the flags of [`FLAGS`]
/// that `check` takes are read the same way; the others are not there).
fn start_args(
    read: &Read,
    env: &dyn Fn(&str) -> Option<String>,
    cmd: Cmd,
) -> Result<StartArgs, Usage> {
    no_positional(&read.positional, cmd)?;
    // A flag's environment variable counts only for the commands it is for.
    let env = |id: Id| {
        if flag(id).commands.contains(&cmd) {
            env_of(id, env)
        } else {
            None
        }
    };
    let mut a = StartArgs::default();
    if let Some(c) = read.get(Id::Config) {
        a.config = Some(c.into());
    } else if let Some(c) = env(Id::Config).filter(|c| !c.is_empty()) {
        a.config = Some(c.into());
        a.config_from_env = true;
    }
    if let Some(addr) = read.get(Id::DiagAddr) {
        crate::config::check_addr(&addr).map_err(|e| Usage(format!("--diag-addr: {e}")))?;
        a.diag_addr = Some(addr);
    }
    if let Some(web) = read.get(Id::WebConfigFile) {
        if web.is_empty() {
            return Err(Usage("--web-config-file: empty path".into()));
        }
        a.web_config_file = Some(web.into());
    }
    if read.has(Id::Debug) {
        a.debug = Some(true);
    } else if let Some(v) = env(Id::Debug) {
        if truthy(flag(Id::Debug).env.unwrap_or_default(), &v).map_err(Usage)? {
            a.debug = Some(true);
            a.debug_from_env = true;
        }
    }
    if let Some(f) = read.get(Id::LogFormat) {
        a.log_format = Some(
            Format::parse(&f)
                .ok_or_else(|| Usage(format!("--log-format {f:?}: expected text or json")))?,
        );
    }
    a.oneshot = read.has(Id::Oneshot);
    Ok(a)
}

fn wait_args(read: &Read) -> Result<WaitArgs, Usage> {
    no_positional(&read.positional, Cmd::Wait)?;
    let diag_addr = read
        .get(Id::DiagAddr)
        .ok_or_else(|| Usage("`tbot wait` needs --diag-addr HOST:PORT".into()))?;
    crate::config::check_addr(&diag_addr).map_err(|e| Usage(format!("--diag-addr: {e}")))?;
    let timeout = match read.get(Id::Timeout) {
        Some(t) => {
            crate::infra::duration::parse(&t).map_err(|e| Usage(format!("--timeout: {e}")))?
        }
        None => Duration::from_secs(30),
    };
    Ok(WaitArgs {
        diag_addr,
        service: read.get(Id::Service),
        timeout,
    })
}

/// A command's usage line, from its entry in [`COMMANDS`] and its flags in
/// [`FLAGS`] (`--help` left out): `tbot wait --diag-addr HOST:PORT
/// [--service NAME] [--timeout DURATION]`.
pub fn usage(cmd: Cmd) -> String {
    let c = info(cmd);
    let mut out = format!("tbot {}", c.name);
    for f in FLAGS
        .iter()
        .filter(|f| f.commands.contains(&cmd) && f.id != Id::Help)
    {
        let item = match (f.short, f.value) {
            (Some(s), Some(v)) => format!("-{s} {v}"),
            (Some(s), None) => format!("-{s}|--{}", f.long),
            (None, Some(v)) => format!("--{} {v}", f.long),
            (None, None) => format!("--{}", f.long),
        };
        if f.required.contains(&cmd) {
            out += &format!(" {item}");
        } else {
            out += &format!(" [{item}]");
        }
    }
    if !c.args.is_empty() {
        out += &format!(" {}", c.args);
    }
    out
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
                out += &format!("  {}\n", usage(c.cmd));
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
            let mut out = format!("{}\n\nUsage: {}\n\nFlags:\n", c.about, usage(cmd));
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
    fn usage_lines_come_from_the_tables() {
        let lines: Vec<String> = COMMANDS.iter().map(|c| usage(c.cmd)).collect();
        assert_eq!(
            lines,
            [
                "tbot start [-c FILE] [--diag-addr HOST:PORT] [--web-config-file FILE] [-d|--debug] [--log-format text|json] [--oneshot]",
                "tbot check [-c FILE]",
                "tbot wait --diag-addr HOST:PORT [--service NAME] [--timeout DURATION]",
                "tbot ssh-multiplexer-proxy-command SOCKET TARGET",
                "tbot status [-c FILE]",
                "tbot debug log-level [-c FILE] [LEVEL]",
                "tbot debug profile [-c FILE] [--seconds N]",
                "tbot debug logs [-c FILE] [--level LEVEL]",
                "tbot completions bash|zsh|fish",
                "tbot version",
                "tbot help [COMMAND]",
            ]
        );
        for id in [
            Id::Config,
            Id::DiagAddr,
            Id::WebConfigFile,
            Id::Debug,
            Id::LogFormat,
            Id::Oneshot,
            Id::Service,
            Id::Timeout,
            Id::Seconds,
            Id::Level,
            Id::Help,
        ] {
            assert_eq!(flag(id).id, id);
        }
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
    fn status_and_debug() {
        let Ok(Command::Debug(a)) = run(&["status", "-c", "x.yaml"]) else {
            panic!("status did not parse")
        };
        assert_eq!(a.config, PathBuf::from("x.yaml"));
        assert_eq!(a.ask, Ask::Status);
        let Ok(Command::Debug(a)) = run(&["debug", "log-level"]) else {
            panic!()
        };
        assert_eq!(
            (a.config, a.ask),
            (PathBuf::from(DEFAULT_CONFIG), Ask::LogLevel(None))
        );
        let Ok(Command::Debug(a)) = run(&["debug", "log-level", "DEBUG"]) else {
            panic!()
        };
        assert_eq!(a.ask, Ask::LogLevel(Some(0)));
        let Ok(Command::Debug(a)) = run(&["debug", "profile", "--seconds", "5"]) else {
            panic!()
        };
        assert_eq!(a.ask, Ask::Profile { seconds: 5 });
        let Ok(Command::Debug(a)) = run(&["debug", "logs", "--level", "warn"]) else {
            panic!()
        };
        assert_eq!(a.ask, Ask::Logs(Some(2)));
        for bad in [
            &["debug"][..],
            &["debug", "nope"],
            &["debug", "log-level", "loud"],
            &["debug", "profile", "--seconds", "0"],
            &["debug", "logs", "--level", "x"],
            &["status", "extra"],
        ] {
            assert!(run(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            run(&["help", "debug", "logs"]),
            Ok(Command::Help(Some(Cmd::DebugLogs)))
        );
        assert_eq!(
            run(&["debug", "logs", "--help"]),
            Ok(Command::Help(Some(Cmd::DebugLogs)))
        );
    }

    #[test]
    fn check_and_completions() {
        let Ok(Command::Check(a)) = run(&["check", "-c", "x.yaml"]) else {
            panic!("check did not parse")
        };
        assert_eq!(a.config.as_deref(), Some(std::path::Path::new("x.yaml")));
        // Only the flags check takes; TBOT_DEBUG is not one of them.
        assert!(run(&["check", "--oneshot"]).is_err());
        assert!(run(&["check", "extra"])
            .unwrap_err()
            .0
            .contains("tbot check"));
        let env = |k: &str| (k == "TBOT_DEBUG").then(|| "maybe".to_string());
        assert!(parse(["check"].map(OsString::from), &env).is_ok());
        assert_eq!(
            run(&["completions", "zsh"]),
            Ok(Command::Completions(Shell::Zsh))
        );
        assert!(run(&["completions", "tcsh"]).is_err());
        assert!(run(&["completions"]).is_err());
    }

    #[test]
    fn the_log_format_is_found_before_parsing() {
        let f = |args: &[&str]| {
            requested_log_format(&args.iter().map(OsString::from).collect::<Vec<_>>())
        };
        assert_eq!(
            f(&["start", "--log-format", "json", "--bad"]),
            Some(Format::Json)
        );
        assert_eq!(f(&["start", "--log-format=json"]), Some(Format::Json));
        assert_eq!(f(&["start", "--log-format=xml"]), None);
        assert_eq!(f(&["start"]), None);
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
        let man = include_str!("../../man/tbot.1");
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
        let status: Vec<&str> = man
            .lines()
            .skip_while(|l| *l != ".Sh EXIT STATUS")
            .take_while(|l| *l != ".Sh EXAMPLES")
            .collect();
        for code in [crate::exit::OK, crate::exit::FAILURE, crate::exit::USAGE] {
            assert!(
                status.contains(&format!(".It {code}").as_str()),
                "man page EXIT STATUS lacks {code}"
            );
        }
    }
}
