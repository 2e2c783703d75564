#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs the real peers the
# tests use when they are missing, then runs every test (unit, integration,
# man page lint, promtool, go tool pprof, OpenSSH).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v mandoc >/dev/null 2>&1 || need+=(mandoc)
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cargo build --all-targets
cargo test --all-targets -- --test-threads="${TEST_THREADS:-4}"
