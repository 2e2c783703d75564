#!/usr/bin/env bash
# Cost per request, tbot vs the Go reference peer (../shared/peers/go-diag,
# tbot's upstream stack), in one run on this machine (issue 11, item 4):
#
# 1. CPU per request at fixed rates (tests/bench/cost.py: open-loop driver,
#    the two servers alternating in 1-second slices, CPU from a cgroup v1
#    cpuacct group per server, all threads): /livez and /readyz keep-alive
#    and a new connection per request, /metrics keep-alive (with
#    Accept-Encoding: gzip, as Prometheus), at 50, 500 and 2000 req/s;
#    µs of CPU per answered request and the ratio tbot/Go; beside them the
#    floor (tests/bench/floor.c, built here with cc -O2: one thread, epoll,
#    a fixed 200 OK to every request head, keep-alive, pipelining
#    tolerated; no parsing, no routing), the least a server can spend per
#    request on this machine, and the ratios tbot/floor and Go/floor
#    (issue 21, section 4).
# 2. Saturated keep-alive throughput (wrk -t2 -c16) on /livez and /readyz,
#    ROUNDS (default 3) rounds with tbot, Go and the floor alternating; the
#    ratios are the medians of the rounds' ratios (one round swings by about
#    ±10 % on a 2-core VM); a round where wrk printed no rate shows "failed"
#    and does not count.
# 3. At 1000 identity services: /metrics p50 (wrk -t1 -c1, with and without
#    gzip) and RSS, both servers.
#    Sections 3 and 4 have no floor (it has no metrics and no TLS).
# 4. Over TLS with basic auth (issue 20): tbot with a web configuration
#    (tls_server_config, basic_auth_users with a bcrypt hash of cost 10),
#    go-diag with -tls-cert/-tls-key/-basic-auth (Go's crypto/tls, a cached
#    check); a P-256 certificate made with openssl. CPU per request as in 1:
#    /livez with a new connection (and TLS handshake) per request, as the
#    kubelet probes; /livez and /metrics keep-alive, as Prometheus scrapes.
#    TLS_RATES (default "50 500") sets the rates.
#
#   tests/bench/cost.sh                      # about 5 minutes after the builds
#   SLICES=3 RATES="500" DUR=3 tests/bench/cost.sh
#   SECTIONS="1 2" tests/bench/cost.sh       # the sections with the floor
#   FLOOR_HOPS=2 SECTIONS="1 2" tests/bench/cost.sh  # the floor with tbot's hops:
#                                            # each answer passed through 2 threads
#                                            # (3 cross-thread wake-ups, as tbot's
#                                            # front, tiny_http worker, serving loop)
#   ROWS="/livez:keep-alive /readyz:keep-alive" tests/bench/cost.sh  # those rows only
#   TBOT=/tmp/tbot-before tests/bench/cost.sh  # another tbot binary
#
# Loopback only, bounded in time; every process started here is killed by
# PID on exit. Not part of the test suite. The load average column is the
# machine's 1-minute load during the row (other work on the box shows there).
# Needs: wrk, cc (gcc), golang-go, golang-github-prometheus-client-golang-dev, python3,
# root for the cpuacct groups (else /proc/PID/stat ticks, coarser).
set -euo pipefail
DUR=${DUR:-5}
FLOOR_HOPS=${FLOOR_HOPS:-0}
# PROFILE=debug: a quick check of the script itself (figures not comparable).
PROFILE=${PROFILE:-release} TOOLS="wrk go cc python3 curl"
. "$(dirname "$0")/common.sh"
here=$(cd "$(dirname "$0")" && pwd)
# TBOT=/path/to/tbot measures another build (say, the commit before a change).
tbot=${TBOT:-$tbot}

write_tbot_config
start_both
cc -O2 -pthread -o "$work/floor" "$here/floor.c"
fport=$(free_port)
"$work/floor" "$fport" "$FLOOR_HOPS" &
fpid=$!; pids+=("$fpid")
wait_up "127.0.0.1:$fport"

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); tbot ${TBOT:-commit $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- src || echo '+dirty')}"
echo "floor: tests/bench/floor.c with FLOOR_HOPS=$FLOOR_HOPS hop threads"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
# SECTIONS picks the sections by number (default all: 1 2 3 4).
SECTIONS=${SECTIONS:-1 2 3 4}
section() { [[ " $SECTIONS " == *" $1 "* ]]; }
if section 1; then
echo
echo "## CPU per request (SLICES=${SLICES:-6} one-second slices per server and row)"
python3 "$here/cost.py" "$tport" "$tpid" "$gport" "$gpid" "$fport" "$fpid"
fi

if section 2; then
ROUNDS=${ROUNDS:-3}
echo
echo "## Saturated keep-alive throughput (wrk -t2 -c16 -d${DUR}s; ROUNDS=$ROUNDS rounds, tbot, Go and the floor alternating; each ratio is the median round's)"
rps() { wrk -t2 -c16 -d"${DUR}s" "$@" 2>&1 | awk '/Requests\/sec/ {print $2}'; }
# The median of the ratios A/B over the rounds where both printed a rate (of
# an even count, the mean of the middle two); n/a if no round counted.
median_ratio() { # "a1 a2 ..." "b1 b2 ..."
  local -a a=($1) b=($2) r=()
  local i
  for i in "${!a[@]}"; do
    [[ ${a[i]} =~ ^[0-9.]+$ && ${b[i]} =~ ^[0-9.]+$ && ${b[i]//[0.]/} ]] || continue
    r+=("$(echo "${a[i]} / ${b[i]}" | bc -l)")
  done
  printf '%s\n' "${r[@]}" | sort -g | awk 'NF {a[++n]=$1} END {
    if (!n) print "n/a"; else if (n % 2) printf "%.2f", a[(n+1)/2]; else printf "%.2f", (a[n/2]+a[n/2+1])/2 }'
}
printf '%-9s %-24s %-24s %-24s %7s %10s %8s %6s\n' endpoint "tbot req/s by round" "go req/s by round" \
  "floor req/s by round" tbot/go tbot/floor go/floor load1
for path in /livez /readyz; do
  ts=() gs=() fs=()
  for _ in $(seq "$ROUNDS"); do
    t=$(rps "http://127.0.0.1:$tport$path")
    g=$(rps "http://127.0.0.1:$gport$path")
    f=$(rps "http://127.0.0.1:$fport$path")
    ts+=("${t:-failed}") gs+=("${g:-failed}") fs+=("${f:-failed}")
  done
  printf '%-9s %-24s %-24s %-24s %7s %10s %8s %6s\n' "$path" "${ts[*]%.*}" "${gs[*]%.*}" "${fs[*]%.*}" \
    "$(median_ratio "${ts[*]}" "${gs[*]}")" "$(median_ratio "${ts[*]}" "${fs[*]}")" \
    "$(median_ratio "${gs[*]}" "${fs[*]}")" "$(cut -d' ' -f1 /proc/loadavg)"
done
fi
if section 4; then
echo
echo "## Over TLS with basic auth: CPU per request (TLS 1.3, P-256 certificate; SLICES=${SLICES:-6})"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/tls.key" \
  -out "$work/tls.crt" -subj /CN=bench -days 1 -addext subjectAltName=IP:127.0.0.1 2>/dev/null
hash=$(python3 -W ignore -c 'import crypt; print(crypt.crypt("bench-pw", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1024)))')
printf 'tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  bench: %s\n' \
  "$work/tls.crt" "$work/tls.key" "$hash" > "$work/web.yml"
# A storage directory of its own: one tbot per storage directory.
sed "s|$work/storage|$work/storage-tls|; s|$work/out|$work/out-tls|" "$work/tbot.yaml" > "$work/tbot-tls.yaml"
tlsport=$(free_port)
"$tbot" start -c "$work/tbot-tls.yaml" --diag-addr "127.0.0.1:$tlsport" --web-config-file "$work/web.yml" 2>"$work/tbot-tls.log" &
tlspid=$!; pids+=("$tlspid")
gtlsport=$(free_port)
"$work/go-diag" -addr "127.0.0.1:$gtlsport" -services 4 -tls-cert "$work/tls.crt" -tls-key "$work/tls.key" \
  -basic-auth bench:bench-pw 2>"$work/go-tls.log" &
gtlspid=$!; pids+=("$gtlspid")
for a in "$tlsport" "$gtlsport"; do
  for _ in $(seq 100); do curl -fsk -u bench:bench-pw "https://127.0.0.1:$a/livez" >/dev/null 2>&1 && break; sleep 0.05; done
done
TLS=1 AUTH=bench:bench-pw RATES="${TLS_RATES:-50 500}" ROWS="/livez:new /livez:keep-alive /metrics:keep-alive" \
  python3 "$here/cost.py" "$tlsport" "$tlspid" "$gtlsport" "$gtlspid"
fi
section 3 || exit 0

echo
echo "## 1000 identity services: /metrics p50 (wrk -t1 -c1 -d${DUR}s) and RSS (idle: before the scrapes; RSS-KiB: after them)"
kill "$tpid" "$gpid" "$fpid"; wait "$tpid" "$gpid" "$fpid" 2>/dev/null || true
{
  echo "version: v2"
  echo "storage: {type: directory, path: $work/storage}"
  echo "services:"
  for i in $(seq 1000); do
    echo "  - {type: identity, name: id-$i, principals: [bench], destination: {type: directory, path: $work/out/$i}}"
  done
} > "$work/tbot.yaml"
rm -rf "$work/storage"
start_both
kill "$gpid"; wait "$gpid" 2>/dev/null || true
gport=$(free_port)
"$work/go-diag" -addr "127.0.0.1:$gport" -services 1000 2>"$work/go.log" &
gpid=$!; pids+=("$gpid")
wait_up "127.0.0.1:$gport"
sleep 3
p50() { wrk -t1 -c1 -d"${DUR}s" --latency "$@" 2>&1 | awk '$1=="50%" {print $2}'; }
size() { curl -s -o /dev/null -w '%{size_download}' "$@"; }
printf '%-8s %10s %10s %12s %12s %10s %10s %6s\n' server p50 p50-gzip bytes bytes-gzip idle-KiB RSS-KiB load1
for s in tbot go; do
  if [ $s = tbot ]; then a="127.0.0.1:$tport"; p=$tpid; else a="127.0.0.1:$gport"; p=$gpid; fi
  idle=$(rss_kb $p)
  printf '%-8s %10s %10s %12s %12s %10s %10s %6s\n' $s "$(p50 "http://$a/metrics")" \
    "$(p50 -H 'Accept-Encoding: gzip' "http://$a/metrics")" "$(size "http://$a/metrics")" \
    "$(size -H 'Accept-Encoding: gzip' "http://$a/metrics")" "$idle" "$(rss_kb $p)" "$(cut -d' ' -f1 /proc/loadavg)"
done
echo "tbot threads: $(threads $tpid); go-diag threads: $(threads $gpid)"
