//! `tbot completions bash|zsh|fish`: shell completions generated from the
//! command line's one table ([`crate::cli::COMMANDS`] and
//! [`crate::cli::FLAGS`]), as ripgrep generates its own: a flag added to the
//! table is completed with no other change.
//!
//! What a flag's value completes to comes from its value name: `FILE` is a
//! file name, `a|b` one of the words, anything else (`HOST:PORT`,
//! `DURATION`) free text. A command's positional arguments: `completions`
//! takes a shell, `help` a command, `ssh-multiplexer-proxy-command` a socket
//! file then free text.
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

fn value_kind(name: &'static str) -> Value {
    if name == "FILE" || name == "SOCKET" {
        Value::File
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
        Cmd::Help => Some(COMMANDS.iter().map(|c| c.name).collect()),
        _ => None,
    }
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
    let commands: Vec<&str> = COMMANDS.iter().map(|c| c.name).collect();
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
            "        {}) COMPREPLY=($(compgen{files} -W '{words}' -- \"$cur\")) ;;\n",
            c.name
        );
    }
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
            *) cmd="${{COMP_WORDS[i]}}"; break ;;
        esac
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W '{commands} {TOP_FLAGS}' -- "$cur"))
        return
    fi
    case "$prev" in
{value_cases}    esac
    case "$cmd" in
{command_cases}    esac
}}
complete -F _tbot tbot
"#,
        valued = valued.join("|"),
        commands = commands.join(" "),
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

fn zsh() -> String {
    let mut cmds = String::new();
    for c in COMMANDS {
        cmds += &format!("        '{}:{}'\n", c.name, zsh_quote(c.about));
    }
    let mut cases = String::new();
    for c in COMMANDS {
        let mut specs: Vec<String> = flags_of(c.cmd).map(zsh_flag).collect();
        if let Some(words) = positional_words(c) {
            specs.push(format!("'1:{}:({})'", zsh_quote(c.args), words.join(" ")));
        } else if c.args.contains("SOCKET") {
            specs.push("'1:SOCKET:_files'".into());
            specs.push("'2:TARGET: '".into());
        }
        cases += &format!(
            "            {})\n                _arguments -s \\\n                    {}\n                ;;\n",
            c.name,
            specs.join(" \\\n                    ")
        );
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
    for c in COMMANDS {
        out += &format!(
            "complete -c tbot -n __fish_use_subcommand -a {} -d {}\n",
            c.name,
            fish_quote(c.about)
        );
    }
    for f in FLAGS {
        let on: Vec<&str> = COMMANDS
            .iter()
            .filter(|c| f.commands.contains(&c.cmd))
            .map(|c| c.name)
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
        let when = format!("-n '__fish_seen_subcommand_from {}'", c.name);
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
                assert!(s.contains(c.name), "{name} lacks command {}", c.name);
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
