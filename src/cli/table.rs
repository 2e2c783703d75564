//! The command line's tables: the commands, the flags, the signals `tbot
//! start` acts on, the shells completions are written for. One table feeds
//! the parser, `--help`, the completions and a man page check (ripgrep's
//! flag table is the model); nothing here parses.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmd {
    Start,
    Check,
    Wait,
    ProxyCommand,
    Status,
    DebugLogLevel,
    DebugProfile,
    DebugLogs,
    Completions,
    Version,
    Help,
}

pub struct CommandInfo {
    pub cmd: Cmd,
    pub name: &'static str,
    /// Positional arguments, as the usage line shows them (the flags come
    /// from [`FLAGS`]; see [`usage`]).
    pub args: &'static str,
    pub about: &'static str,
}

pub const COMMANDS: &[CommandInfo] = &[
    CommandInfo {
        cmd: Cmd::Start,
        name: "start",
        args: "",
        about:
            "Run the bot: keep credentials fresh, run services, serve diagnostics; SIGHUP reloads.",
    },
    CommandInfo {
        cmd: Cmd::Check,
        name: "check",
        args: "",
        about: "Check a configuration file as start would load it, starting nothing (exit 0 good, 2 not).",
    },
    CommandInfo {
        cmd: Cmd::Wait,
        name: "wait",
        args: "",
        about: "Wait until a running bot (or one of its services) is ready.",
    },
    CommandInfo {
        cmd: Cmd::ProxyCommand,
        name: "ssh-multiplexer-proxy-command",
        args: "SOCKET TARGET",
        about: "OpenSSH ProxyCommand: hand ssh a connection to TARGET through the multiplexer.",
    },
    CommandInfo {
        cmd: Cmd::Status,
        name: "status",
        args: "",
        about: "One line per service of the running bot, through its debug socket (exit 0 all healthy, 1 not).",
    },
    CommandInfo {
        cmd: Cmd::DebugLogLevel,
        name: "debug log-level",
        args: "[LEVEL]",
        about: "Print the running bot's log level, or set it (debug, info, warn, error) without a restart.",
    },
    CommandInfo {
        cmd: Cmd::DebugProfile,
        name: "debug profile",
        args: "",
        about: "Write a CPU profile of the running bot to stdout (pprof protobuf, for go tool pprof).",
    },
    CommandInfo {
        cmd: Cmd::DebugLogs,
        name: "debug logs",
        args: "",
        about: "Follow the running bot's log lines until interrupted.",
    },
    CommandInfo {
        cmd: Cmd::Completions,
        name: "completions",
        args: SHELLS_ARG,
        about: "Print shell completions for bash, zsh or fish (from this flag table).",
    },
    CommandInfo {
        cmd: Cmd::Version,
        name: "version",
        args: "",
        about: "Print the version.",
    },
    CommandInfo {
        cmd: Cmd::Help,
        name: "help",
        args: "[COMMAND]",
        about: "Print help.",
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Id {
    Config,
    DiagAddr,
    WebConfigFile,
    Debug,
    LogFormat,
    Oneshot,
    Service,
    Timeout,
    Seconds,
    Level,
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
    /// The commands that cannot do without it (shown without brackets).
    pub required: &'static [Cmd],
    pub help: &'static str,
}

pub const FLAGS: &[Flag] = &[
    Flag {
        id: Id::Config,
        long: "config",
        short: Some('c'),
        value: Some("FILE"),
        env: Some("TBOT_CONFIG_PATH"),
        commands: &[
            Cmd::Start,
            Cmd::Check,
            Cmd::Status,
            Cmd::DebugLogLevel,
            Cmd::DebugProfile,
            Cmd::DebugLogs,
        ],
        required: &[],
        help: "Configuration file (YAML, version: v2). For status and debug: the running bot's, which names its debug socket (default /etc/tbot/tbot.yaml).",
    },
    Flag {
        id: Id::DiagAddr,
        long: "diag-addr",
        short: None,
        value: Some("HOST:PORT"),
        env: None,
        commands: &[Cmd::Start, Cmd::Wait],
        required: &[Cmd::Wait],
        help: "Diagnostics service address. For start, overrides diag_addr from the file (port 0 picks a free port).",
    },
    Flag {
        id: Id::WebConfigFile,
        long: "web-config-file",
        short: None,
        value: Some("FILE"),
        env: None,
        commands: &[Cmd::Start],
        required: &[],
        help: "TLS and basic auth for the diagnostics service (Prometheus exporter-toolkit's web configuration). Overrides web_config_file from the file.",
    },
    Flag {
        id: Id::Debug,
        long: "debug",
        short: Some('d'),
        value: None,
        env: Some("TBOT_DEBUG"),
        commands: &[Cmd::Start],
        required: &[],
        help: "Debug mode: debug logs and the /debug/pprof/ endpoints.",
    },
    Flag {
        id: Id::LogFormat,
        long: "log-format",
        short: None,
        value: Some("text|json"),
        env: None,
        commands: &[Cmd::Start],
        required: &[],
        help: "Log line format on stderr (default text).",
    },
    Flag {
        id: Id::Oneshot,
        long: "oneshot",
        short: None,
        value: None,
        env: None,
        commands: &[Cmd::Start],
        required: &[],
        help: "Issue every output once, report, and exit (0 if all succeeded, else 1).",
    },
    Flag {
        id: Id::Service,
        long: "service",
        short: None,
        value: Some("NAME"),
        env: None,
        commands: &[Cmd::Wait],
        required: &[],
        help: "Wait for this service only.",
    },
    Flag {
        id: Id::Timeout,
        long: "timeout",
        short: None,
        value: Some("DURATION"),
        env: None,
        commands: &[Cmd::Wait],
        required: &[],
        help: "Give up after this long (Go syntax: 30s, 2m; default 30s).",
    },
    Flag {
        id: Id::Seconds,
        long: "seconds",
        short: None,
        value: Some("N"),
        env: None,
        commands: &[Cmd::DebugProfile],
        required: &[],
        help: "Profile for N seconds (1 to 300; default 30).",
    },
    Flag {
        id: Id::Level,
        long: "level",
        short: None,
        value: Some("LEVEL"),
        env: None,
        commands: &[Cmd::DebugLogs],
        required: &[],
        help: "Lines at LEVEL and above (debug, info, warn, error; default: the bot's level).",
    },
    Flag {
        id: Id::Help,
        long: "help",
        short: Some('h'),
        value: None,
        env: None,
        commands: &[
            Cmd::Start,
            Cmd::Check,
            Cmd::Wait,
            Cmd::ProxyCommand,
            Cmd::Status,
            Cmd::DebugLogLevel,
            Cmd::DebugProfile,
            Cmd::DebugLogs,
            Cmd::Completions,
            Cmd::Version,
            Cmd::Help,
        ],
        required: &[],
        help: "Print help for the command.",
    },
];

/// Every signal `tbot start` acts on, and what it does (the choices are
/// src/infra/signals.rs's). Printed by `tbot start --help`; each is in the man
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

/// The shells `tbot completions` writes for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Every [`Shell`], by the name the command line takes.
pub const SHELLS: &[(&str, Shell)] = &[
    ("bash", Shell::Bash),
    ("zsh", Shell::Zsh),
    ("fish", Shell::Fish),
];
/// The shells, as `tbot completions` takes them in usage lines.
pub(crate) const SHELLS_ARG: &str = "bash|zsh|fish";
