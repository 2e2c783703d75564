#!/usr/bin/env bash
# The hostile-client cases of tests/hostile.rs, pointed at tbot and at the Go
# reference peer (../shared/peers/go-diag: net/http + client_golang) in one
# run: threads, RSS and /livez latency under 300 idle/dripping connections,
# oversized heads, bodies, TLS and bad requests. It prints what it measured;
# it asserts only that each server still answers /livez at the end.
#
#   tests/bench/hostile_compare.sh              # release builds
#   PROFILE=debug tests/bench/hostile_compare.sh
#
# Loopback only, bounded (each scenario has its own time limits; the whole
# run takes about a minute after the builds); every process started here is
# killed by PID on exit.
# Needs: golang-go, golang-github-prometheus-client-golang-dev, python3.
set -euo pipefail
PROFILE=${PROFILE:-release}
root=$(cd "$(dirname "$0")/../.." && pwd)
peer="$root/../shared/peers/go-diag"
[ -d "$peer" ] || peer=/work/shared/peers/go-diag
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

for tool in go python3 curl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install golang-go golang-github-prometheus-client-golang-dev python3 curl)"; exit 1; }
done

flag=()
[ "$PROFILE" = release ] && flag=(--release)
cargo build "${flag[@]}" --quiet --manifest-path "$root/Cargo.toml" 2>"$work/build.log" ||
  { cat "$work/build.log"; exit 1; }
tbot="$root/target/$PROFILE/tbot"
(cd "$peer" && GO111MODULE=off GOPATH=/usr/share/gocode go build -o "$work/go-diag" .)

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -fs "http://$1/livez" >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "server at $1 did not come up"; exit 1; }

cat > "$work/tbot.yaml" <<YAML
version: v2
storage: {type: directory, path: $work/storage}
YAML
tport=$(free_port)
"$tbot" start -c "$work/tbot.yaml" --diag-addr "127.0.0.1:$tport" 2>"$work/tbot.log" &
tpid=$!; pids+=("$tpid")
gport=$(free_port)
"$work/go-diag" -addr "127.0.0.1:$gport" -services 4 2>"$work/go.log" &
gpid=$!; pids+=("$gpid")
wait_up "127.0.0.1:$tport"; wait_up "127.0.0.1:$gport"
sleep 1

echo "machine: $(nproc) cores, $(uname -r); tbot $PROFILE build; go $(go env GOVERSION)"
run() { # name addr pid
  HOSTILE_NAME=$1 HOSTILE_ADDR=$2 HOSTILE_PID=$3 timeout 300 \
    cargo test "${flag[@]}" --quiet --manifest-path "$root/Cargo.toml" --test hostile \
    -- --ignored --exact peer_comparison --nocapture --test-threads 1 2>&1 |
    grep -E "^$1: |panicked" || true
}
run tbot "127.0.0.1:$tport" "$tpid"
echo
run go-diag "127.0.0.1:$gport" "$gpid"
echo
kill -0 "$tpid" && echo "tbot alive; panics in its log: $(grep -ci panic "$work/tbot.log" || true)"
kill -0 "$gpid" && echo "go-diag alive"
