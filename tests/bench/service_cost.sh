#!/usr/bin/env bash
# What a service costs (issue 21, section 3): descriptors per service, the
# cgroup memory peak of 500 identity outputs that start, renew and serve
# scrapes (and whether they survive a 32 MB limit), idle wake-ups in 30 s,
# RSS over 1,000 reloads that add and remove 10 outputs, exec -> every
# service healthy at 1,000 outputs, and the system calls of a start per
# output (strace). Each row prints its target; the rows and
# their method are in tests/bench/service_cost.py.
#
#   tests/bench/service_cost.sh                 # about 3 minutes after the build
#   ROWS="idle exec" tests/bench/service_cost.sh
#   TBOT=/tmp/tbot-before tests/bench/service_cost.sh   # another binary
#
# As root (the cgroup rows make a child memory group: cgroup v2 when its
# memory controller is there, else v1). Loopback only; every process started
# is killed by PID and every group made is removed on exit. Not part of the
# test suite.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "needs root (cgroup rows)"; exit 1; }
if [ -z "${TBOT:-}" ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
  TBOT="$root/target/release/tbot"
fi
exec python3 "$root/tests/bench/service_cost.py" "$TBOT"
