//! `tbot completions bash|zsh|fish`: shell completions generated from the
//! command line's one table ([`crate::cli::COMMANDS`] and
//! [`crate::cli::FLAGS`]), as ripgrep generates its own: a flag added to the
//! table is completed with no other change.
//!
//! What a flag's value completes to comes from its value name: `FILE` is a
//! file name, `a|b` one of the words, anything else (`HOST:PORT`,
//! `DURATION`) free text, `LEVEL` a log level. A command's positional
//! arguments: `completions` takes a shell, `help` a command,
//! `ssh-multiplexer-proxy-command` a socket file then free text,
//! `debug log-level` a level.
//!
//! A command named in two words (`debug log-level`) is completed as a
//! group: its first word among the commands, then the second.
//!
//! The Debian package installs each script where its shell looks for it:
//! bash-completion's `/usr/share/bash-completion/completions/tbot`, zsh's
//! `/usr/share/zsh/vendor-completions/_tbot`, fish's
//! `/usr/share/fish/vendor_completions.d/tbot.fish`.

use crate::cli::{Cmd, CommandInfo, Flag, Shell, COMMANDS, FLAGS, SHELLS};

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    match shell {
        Shell::Bash => bash(),
        Shell::Zsh => zsh(),
        Shell::Fish => fish(),
    }
}

/// What a value completes to.
enum Value {
    File,
    Words(Vec<&'static str>),
    Free,
}

/// The log levels `LEVEL` takes.
const LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

fn value_kind(name: &'static str) -> Value {
    if name == "FILE" || name == "SOCKET" {
        Value::File
    } else if name == "LEVEL" {
        Value::Words(LEVELS.to_vec())
    } else if name.contains('|') {
        Value::Words(name.split('|').collect())
    } else {
        Value::Free
    }
}

/// The flags `cmd` takes.
fn flags_of(cmd: Cmd) -> impl Iterator<Item = &'static Flag> {
    FLAGS.iter().filter(move |f| f.commands.contains(&cmd))
}

/// The words a command's positional arguments complete to, if any.
fn positional_words(c: &CommandInfo) -> Option<Vec<&'static str>> {
    match c.cmd {
        Cmd::Completions => Some(SHELLS.iter().map(|(n, _)| *n).collect()),
        Cmd::Help => Some(top_words()),
        Cmd::DebugLogLevel => Some(LEVELS.to_vec()),
        _ => None,
    }
}

/// The first words of the commands, each once, in the table's order.
fn top_words() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for c in COMMANDS {
        let w = first_word(c);
        if !out.contains(&w) {
            out.push(w);
        }
    }
    out
}

fn first_word(c: &CommandInfo) -> &'static str {
    c.name.split(' ').next().unwrap_or(c.name)
}

/// The last word of a command's name (`logs` of `debug logs`).
fn last_word(c: &CommandInfo) -> &'static str {
    c.name.rsplit(' ').next().unwrap_or(c.name)
}

/// The groups (commands named in two words) and their commands.
fn groups() -> Vec<(&'static str, Vec<&'static CommandInfo>)> {
    let mut out: Vec<(&'static str, Vec<&'static CommandInfo>)> = Vec::new();
    for c in COMMANDS.iter().filter(|c| c.name.contains(' ')) {
        let g = first_word(c);
        match out.iter_mut().find(|(n, _)| *n == g) {
            Some((_, cs)) => cs.push(c),
            None => out.push((g, vec![c])),
        }
    }
    out
}

/// A group's description: its commands.
fn group_about(cs: &[&CommandInfo]) -> String {
    let subs: Vec<&str> = cs.iter().map(|c| last_word(c)).collect();
    format!("Ask the running bot: {}.", subs.join(", "))
}

/// `-c --config`-style names of a flag.
fn names(f: &Flag) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = f.short {
        out.push(format!("-{s}"));
    }
    out.push(format!("--{}", f.long));
    out
}

/// The flags `tbot` takes before a command: `--help`, `-h`, `--version`.
const TOP_FLAGS: &str = "-h --help --version";

fn bash() -> String {
    let commands = top_words();
    let mut valued = Vec::new();
    let mut value_cases = String::new();
    for f in FLAGS {
        let Some(v) = f.value else { continue };
        let pattern = names(f).join("|");
        valued.push(pattern.clone());
        let action = match value_kind(v) {
            Value::File => "COMPREPLY=($(compgen -f -- \"$cur\"))".to_string(),
            Value::Words(w) => format!("COMPREPLY=($(compgen -W '{}' -- \"$cur\"))", w.join(" ")),
            Value::Free => "COMPREPLY=()".to_string(),
        };
        value_cases += &format!("        {pattern}) {action}; return ;;\n");
    }
    let mut command_cases = String::new();
    for c in COMMANDS {
        let flags: Vec<String> = flags_of(c.cmd).flat_map(names).collect();
        let mut words = flags.join(" ");
        if let Some(p) = positional_words(c) {
            words = format!("{} {words}", p.join(" "));
        }
        let files = if c.args.contains("SOCKET") { " -f" } else { "" };
        command_cases += &format!(
            "        \"{}\") COMPREPLY=($(compgen{files} -W '{words}' -- \"$cur\")) ;;\n",
            c.name
        );
    }
    let mut group_cases = String::new();
    for (g, cs) in groups() {
        let subs: Vec<&str> = cs.iter().map(|c| last_word(c)).collect();
        group_cases += &format!(
            "        {g}) COMPREPLY=($(compgen -W '{} -h --help' -- \"$cur\")); return ;;\n",
            subs.join(" ")
        );
    }
    let group_names: Vec<&str> = groups().iter().map(|(g, _)| *g).collect();
    format!(
        r#"# bash completion for tbot (written by `tbot completions bash` from its flag table)
_tbot() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}"
    local prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    local cmd="" i skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        if ((skip)); then skip=0; continue; fi
        case "${{COMP_WORDS[i]}}" in
            {valued}) skip=1 ;;
            -*) ;;
            *)
                if [[ -z $cmd ]]; then
                    cmd="${{COMP_WORDS[i]}}"
                    case "$cmd" in {groups}) continue ;; esac
                else
                    cmd="$cmd ${{COMP_WORDS[i]}}"
                fi
                break ;;
        esac
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W '{commands} {TOP_FLAGS}' -- "$cur"))
        return
    fi
    case "$cmd" in
{group_cases}    esac
    case "$prev" in
{value_cases}    esac
    case "$cmd" in
{command_cases}    esac
}}
complete -F _tbot tbot
"#,
        valued = valued.join("|"),
        commands = commands.join(" "),
        groups = group_names.join("|"),
    )
}

/// `text` inside single quotes, for zsh: `'` closed, escaped and reopened;
/// `[`, `]` and `:` escaped for `_arguments` and `_describe`.
fn zsh_quote(text: &str) -> String {
    let mut out = String::new();
    for ch in text.chars() {
        match ch {
            '\'' => out += r"'\''",
            '[' | ']' | ':' | '\\' => {
                out.push('\\');
                out.push(ch);
            }
            _ => out.push(ch),
        }
    }
    out
}

fn zsh_flag(f: &Flag) -> String {
    let help = zsh_quote(f.help);
    let value = match f.value {
        None => String::new(),
        Some(v) => {
            let action = match value_kind(v) {
                Value::File => "_files".to_string(),
                Value::Words(w) => format!("({})", w.join(" ")),
                Value::Free => " ".to_string(),
            };
            format!(":{}:{action}", zsh_quote(v))
        }
    };
    let eq = if f.value.is_some() { "=" } else { "" };
    match f.short {
        Some(s) => format!(
            "'(-{s} --{l})'{{-{s}{plus},--{l}{eq}}}'[{help}]{value}'",
            l = f.long,
            plus = if f.value.is_some() { "+" } else { "" },
        ),
        None => format!("'--{}{eq}[{help}]{value}'", f.long),
    }
}

/// `_arguments` specs of a command's flags and positional arguments.
fn zsh_specs(c: &CommandInfo) -> Vec<String> {
    let mut specs: Vec<String> = flags_of(c.cmd).map(zsh_flag).collect();
    if let Some(words) = positional_words(c) {
        specs.push(format!("'1:{}:({})'", zsh_quote(c.args), words.join(" ")));
    } else if c.args.contains("SOCKET") {
        specs.push("'1:SOCKET:_files'".into());
        specs.push("'2:TARGET: '".into());
    }
    specs
}

/// One `case` arm: `word)`, then `_arguments` with `specs`, indented by
/// `pad` spaces.
fn zsh_arm(word: &str, specs: &[String], pad: usize) -> String {
    let p = " ".repeat(pad);
    format!(
        "{p}{word})\n{p}    _arguments -s \\\n{p}        {}\n{p}    ;;\n",
        specs.join(&format!(" \\\n{p}        "))
    )
}

/// A group's arm: its commands first, then each one's arguments.
fn zsh_group(g: &str, cs: &[&CommandInfo]) -> String {
    let mut subs = String::new();
    let mut arms = String::new();
    for c in cs {
        subs += &format!(
            "                            '{}:{}'\n",
            last_word(c),
            zsh_quote(c.about)
        );
        arms += &zsh_arm(last_word(c), &zsh_specs(c), 24);
    }
    format!(
        r#"            {g})
                _arguments -C \
                    '1: :->sub' \
                    '*:: :->subargs'
                case $state in
                    sub)
                        local -a subs
                        subs=(
{subs}                        )
                        _describe -t commands 'tbot {g} command' subs
                        ;;
                    subargs)
                        case $line[1] in
{arms}                        esac
                        ;;
                esac
                ;;
"#
    )
}

fn zsh() -> String {
    let mut cmds = String::new();
    let mut cases = String::new();
    let groups = groups();
    for c in COMMANDS {
        if !c.name.contains(' ') {
            cmds += &format!("        '{}:{}'\n", c.name, zsh_quote(c.about));
            cases += &zsh_arm(c.name, &zsh_specs(c), 12);
            continue;
        }
        // A group: once, where its first command is.
        let Some((g, cs)) = groups.iter().find(|(g, _)| *g == first_word(c)) else {
            continue;
        };
        if cs.first().is_some_and(|f| f.cmd == c.cmd) {
            cmds += &format!("        '{g}:{}'\n", zsh_quote(&group_about(cs)));
            cases += &zsh_group(g, cs);
        }
    }
    format!(
        r#"#compdef tbot
# zsh completion for tbot (written by `tbot completions zsh` from its flag table)
_tbot() {{
    local curcontext="$curcontext" state line
    typeset -A opt_args
    _arguments -C \
        '(- *)'{{-h,--help}}'[Print help.]' \
        '(- *)--version[Print the version.]' \
        '1: :->command' \
        '*:: :->args'
    case $state in
        command)
            local -a commands
            commands=(
{cmds}            )
            _describe -t commands 'tbot command' commands
            ;;
        args)
            case $line[1] in
{cases}            esac
            ;;
    esac
}}
# Autoloaded from $fpath, run it; sourced, register it.
if [ "$funcstack[1]" = "_tbot" ]; then
    _tbot "$@"
else
    compdef _tbot tbot
fi
"#
    )
}

/// `text` inside single quotes, for fish.
fn fish_quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', r"\\").replace('\'', r"\'"))
}

fn fish() -> String {
    let mut out = String::from(
        "# fish completion for tbot (written by `tbot completions fish` from its flag table)\n\
         complete -c tbot -f\n\
         complete -c tbot -n __fish_use_subcommand -s h -l help -d 'Print help.'\n\
         complete -c tbot -n __fish_use_subcommand -l version -d 'Print the version.'\n",
    );
    let groups = groups();
    for c in COMMANDS.iter().filter(|c| !c.name.contains(' ')) {
        out += &format!(
            "complete -c tbot -n __fish_use_subcommand -a {} -d {}\n",
            c.name,
            fish_quote(c.about)
        );
    }
    for (g, cs) in &groups {
        out += &format!(
            "complete -c tbot -n __fish_use_subcommand -a {g} -d {}\n",
            fish_quote(&group_about(cs))
        );
        let subs: Vec<&str> = cs.iter().map(|c| last_word(c)).collect();
        for c in cs {
            out += &format!(
                "complete -c tbot -n '__fish_seen_subcommand_from {g}; and not __fish_seen_subcommand_from {}' -a {} -d {}\n",
                subs.join(" "),
                last_word(c),
                fish_quote(c.about)
            );
        }
    }
    // A command is known by its last word (`logs` of `debug logs`).
    for f in FLAGS {
        let on: Vec<&str> = COMMANDS
            .iter()
            .filter(|c| f.commands.contains(&c.cmd))
            .map(|c| last_word(c))
            .collect();
        let mut line = format!(
            "complete -c tbot -n '__fish_seen_subcommand_from {}'",
            on.join(" ")
        );
        if let Some(s) = f.short {
            line += &format!(" -s {s}");
        }
        line += &format!(" -l {}", f.long);
        match f.value.map(value_kind) {
            None => {}
            Some(Value::File) => line += " -r -F",
            Some(Value::Words(w)) => line += &format!(" -x -a {}", fish_quote(&w.join(" "))),
            Some(Value::Free) => line += " -x",
        }
        line += &format!(" -d {}\n", fish_quote(f.help));
        out += &line;
    }
    for c in COMMANDS {
        let when = format!("-n '__fish_seen_subcommand_from {}'", last_word(c));
        if let Some(words) = positional_words(c) {
            out += &format!(
                "complete -c tbot {when} -x -a {}\n",
                fish_quote(&words.join(" "))
            );
        } else if c.args.contains("SOCKET") {
            out += &format!("complete -c tbot {when} -F\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_flag_is_in_every_script() {
        for (name, shell) in SHELLS {
            let s = script(*shell);
            for c in COMMANDS {
                assert!(s.contains(last_word(c)), "{name} lacks command {}", c.name);
                assert!(s.contains(first_word(c)), "{name} lacks command {}", c.name);
            }
            for f in FLAGS {
                assert!(s.contains(&f.long.to_string()), "{name} lacks --{}", f.long);
            }
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(zsh_quote("a'b[c]:d"), r"a'\''b\[c\]\:d");
        assert_eq!(fish_quote(r"it's \ ok"), r"'it\'s \\ ok'");
    }
}
