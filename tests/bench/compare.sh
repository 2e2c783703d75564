#!/usr/bin/env bash
# Side by side, in one run on this machine: tbot's diagnostics service and the
# Go reference peer (../shared/peers/go-diag, tbot's own stack: net/http +
# client_golang). Measures idle RSS, threads and wake-ups (voluntary context
# switches of every thread over IDLE seconds, both servers at once), then wrk
# throughput and latency per endpoint, then RSS and threads after the load.
#
#   tests/bench/compare.sh            # 10 s idle, 10 s per endpoint and server
#   DUR=5 CONNS=32 IDLE=30 tests/bench/compare.sh
#
# Loopback only; every process started here is killed by PID on exit.
# Needs: wrk, golang-go, golang-github-prometheus-client-golang-dev, python3.
set -euo pipefail
DUR=${DUR:-10}
IDLE=${IDLE:-10}
CONNS=${CONNS:-16}
PROFILE=release TOOLS="wrk go python3 curl"
. "$(dirname "$0")/common.sh"

write_tbot_config
start_both

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); wrk -t2 -c$CONNS -d${DUR}s per row"
echo "binary size: tbot $(stat -c %s "$tbot") bytes, go-diag $(stat -c %s "$work/go-diag") bytes"
declare -A woke
while read -r pid total who; do woke[$pid]="$total wake-ups in ${IDLE} s${who:+ ($who)}"; done \
  < <(idle_wakeups "$IDLE" "$tpid" "$gpid")
printf '%-8s idle: RSS %6s KiB, %3s threads, %s\n' tbot "$(rss_kb $tpid)" "$(threads $tpid)" "${woke[$tpid]}"
printf '%-8s idle: RSS %6s KiB, %3s threads, %s\n' go-diag "$(rss_kb $gpid)" "$(threads $gpid)" "${woke[$gpid]}"
echo
printf '%-22s %-10s %12s %10s %10s\n' server endpoint req/s p50 p99
row() { # name addr path [extra wrk args]
  local name=$1 addr=$2 path=$3; shift 3
  local out; out=$(wrk -t2 -c"$CONNS" -d"${DUR}s" --latency "$@" "http://$addr$path" 2>&1)
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  printf '%-22s %-10s %12s %10s %10s\n' "$name" "$path" "$rps" "$p50" "$p99"
}
for path in /livez /readyz /metrics; do
  row tbot "127.0.0.1:$tport" "$path"
  row go-diag "127.0.0.1:$gport" "$path"
  row "go-diag (conn close)" "127.0.0.1:$gport" "$path" -H "Connection: close"
done
echo
printf '%-8s after load: RSS %6s KiB, %3s threads\n' tbot "$(rss_kb $tpid)" "$(threads $tpid)"
printf '%-8s after load: RSS %6s KiB, %3s threads\n' go-diag "$(rss_kb $gpid)" "$(threads $gpid)"
