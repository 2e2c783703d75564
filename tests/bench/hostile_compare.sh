#!/usr/bin/env bash
# The hostile-client cases of tests/hostile.rs, pointed at tbot and at the Go
# reference peer (../shared/peers/go-diag: net/http + client_golang) in one
# run: threads, RSS and /livez latency under 300 idle/dripping connections,
# oversized heads, bodies, TLS and bad requests, and probes beside 64 clients
# that pipeline /metrics and never read. It prints what it measured;
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
TOOLS="go python3 curl"
. "$(dirname "$0")/common.sh"

cat > "$work/tbot.yaml" <<YAML
version: v2
storage: {type: directory, path: $work/storage}
YAML
start_both

echo "machine: $(nproc) cores, $(uname -r); tbot $PROFILE build; go $(go env GOVERSION)"
run() { # name addr pid
  HOSTILE_NAME=$1 HOSTILE_ADDR=$2 HOSTILE_PID=$3 timeout 300 \
    cargo test "${flag[@]}" --quiet --manifest-path "$root/Cargo.toml" --test hostile \
    -- --ignored --exact peer_comparison --nocapture --test-threads 1 2>&1 |
    grep -E "^$1: |panicked" || true
}
# The probe under pressure (tests/pressure.rs, issue 17).
pressure() { # name addr
  HOSTILE_NAME=$1 HOSTILE_ADDR=$2 timeout 120 \
    cargo test "${flag[@]}" --quiet --manifest-path "$root/Cargo.toml" --test pressure \
    -- --ignored --exact peer_comparison_under_pressure --nocapture --test-threads 1 2>&1 |
    grep -E "^$1: |panicked" || true
}
run tbot "127.0.0.1:$tport" "$tpid"
pressure tbot "127.0.0.1:$tport"
echo
run go-diag "127.0.0.1:$gport" "$gpid"
pressure go-diag "127.0.0.1:$gport"
echo
kill -0 "$tpid" && echo "tbot alive; panics in its log: $(grep -ci panic "$work/tbot.log" || true)"
kill -0 "$gpid" && echo "go-diag alive"
