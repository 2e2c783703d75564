# Shared by the benchmark scripts (sourced, not run): builds tbot and the Go
# reference peer, tracks started processes and kills them by PID on exit.
# Set before sourcing: PROFILE (release|debug), TOOLS (commands needed).
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
peer="$root/../shared/peers/go-diag"
[ -d "$peer" ] || peer=/work/shared/peers/go-diag
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for tool in $TOOLS; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install wrk golang-go golang-github-prometheus-client-golang-dev python3 curl)"; exit 1; }
done

flag=()
[ "${PROFILE:-release}" = release ] && flag=(--release)
cargo build "${flag[@]}" --quiet --manifest-path "$root/Cargo.toml" 2>"$work/build.log" ||
  { cat "$work/build.log"; exit 1; }
tbot="$root/target/${PROFILE:-release}/tbot"
(cd "$peer" && GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$work/go-diag" .)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -fs "http://$1/livez" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "server at $1 did not come up"; exit 1; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
threads() { awk '/^Threads:/ {print $2}' "/proc/$1/status"; }
# One line per thread of PID: tid, voluntary context switches (each one a
# wake-up from sleep), name (spaces as _).
ctxsw() {
  for t in /proc/"$1"/task/*; do
    printf '%s %s %s\n' "${t##*/}" "$(awk '/^voluntary_ctxt_switches:/ {print $2}' "$t/status" 2>/dev/null)" "$(tr " " _ <"$t/comm" 2>/dev/null)"
  done | sort
}
# Idle wake-ups of PID... over the same SECONDS: for each PID, a line
# "PID TOTAL NAME:N ..." (the threads that woke, by name, most first).
idle_wakeups() { # seconds pid...
  local secs=$1 p; shift
  for p in "$@"; do ctxsw "$p" >"$work/ctxsw.$p.a"; done
  sleep "$secs"
  for p in "$@"; do
    ctxsw "$p" >"$work/ctxsw.$p.b"
    # Threads that came or went in between are left out.
    join "$work/ctxsw.$p.a" "$work/ctxsw.$p.b" |
      awk '{ n[$3] += $4 - $2 } END { for (k in n) print n[k], k }' | sort -rn |
      awk -v pid="$p" '{ t += $1; if ($1 > 0) w = w " " $2 ":" $1 } END { print pid, t + 0 w }'
  done
}

# Starts tbot on $work/tbot.yaml and go-diag (4 services), each on a free
# loopback port; sets tport/tpid and gport/gpid once both answer /livez.
# tbot's bench configuration: one identity output plus the internal
# services (about as many as go-diag's default 4).
write_tbot_config() {
  cat > "$work/tbot.yaml" <<YAML
version: v2
storage: {type: directory, path: $work/storage}
services:
  - type: identity
    principals: [bench]
    destination: {type: directory, path: $work/out}
YAML
}

start_both() {
  tport=$(free_port)
  "$tbot" start -c "$work/tbot.yaml" --diag-addr "127.0.0.1:$tport" 2>"$work/tbot.log" &
  tpid=$!; pids+=("$tpid")
  gport=$(free_port)
  "$work/go-diag" -addr "127.0.0.1:$gport" -services 4 2>"$work/go.log" &
  gpid=$!; pids+=("$gpid")
  wait_up "127.0.0.1:$tport"; wait_up "127.0.0.1:$gport"
  sleep 1
}
