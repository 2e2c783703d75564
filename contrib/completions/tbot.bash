# bash completion for tbot (written by `tbot completions bash` from its flag table)
_tbot() {
    local cur="${COMP_WORDS[COMP_CWORD]}"
    local prev="${COMP_WORDS[COMP_CWORD-1]}"
    local cmd="" i skip=0
    for ((i = 1; i < COMP_CWORD; i++)); do
        if ((skip)); then skip=0; continue; fi
        case "${COMP_WORDS[i]}" in
            -c|--config|--diag-addr|--web-config-file|--log-format|--service|--timeout|--seconds|--level) skip=1 ;;
            -*) ;;
            *)
                if [[ -z $cmd ]]; then
                    cmd="${COMP_WORDS[i]}"
                    case "$cmd" in debug) continue ;; esac
                else
                    cmd="$cmd ${COMP_WORDS[i]}"
                fi
                break ;;
        esac
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W 'start check wait ssh-multiplexer-proxy-command status debug completions version help -h --help --version' -- "$cur"))
        return
    fi
    case "$cmd" in
        debug) COMPREPLY=($(compgen -W 'log-level profile logs -h --help' -- "$cur")); return ;;
    esac
    case "$prev" in
        -c|--config) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --diag-addr) COMPREPLY=(); return ;;
        --web-config-file) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --log-format) COMPREPLY=($(compgen -W 'text json' -- "$cur")); return ;;
        --service) COMPREPLY=(); return ;;
        --timeout) COMPREPLY=(); return ;;
        --seconds) COMPREPLY=(); return ;;
        --level) COMPREPLY=($(compgen -W 'debug info warn error' -- "$cur")); return ;;
    esac
    case "$cmd" in
        "start") COMPREPLY=($(compgen -W '-c --config --diag-addr --web-config-file -d --debug --log-format --oneshot -h --help' -- "$cur")) ;;
        "check") COMPREPLY=($(compgen -W '-c --config -h --help' -- "$cur")) ;;
        "wait") COMPREPLY=($(compgen -W '--diag-addr --service --timeout -h --help' -- "$cur")) ;;
        "ssh-multiplexer-proxy-command") COMPREPLY=($(compgen -f -W '-h --help' -- "$cur")) ;;
        "status") COMPREPLY=($(compgen -W '-c --config -h --help' -- "$cur")) ;;
        "debug log-level") COMPREPLY=($(compgen -W 'debug info warn error -c --config -h --help' -- "$cur")) ;;
        "debug profile") COMPREPLY=($(compgen -W '-c --config --seconds -h --help' -- "$cur")) ;;
        "debug logs") COMPREPLY=($(compgen -W '-c --config --level -h --help' -- "$cur")) ;;
        "completions") COMPREPLY=($(compgen -W 'bash zsh fish -h --help' -- "$cur")) ;;
        "version") COMPREPLY=($(compgen -W '-h --help' -- "$cur")) ;;
        "help") COMPREPLY=($(compgen -W 'start check wait ssh-multiplexer-proxy-command status debug completions version help -h --help' -- "$cur")) ;;
    esac
}
complete -F _tbot tbot
