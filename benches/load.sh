#!/usr/bin/env bash
# Load benchmark on loopback: a fast upstream, the bare hyper-util proxy (no middleware) and the
# portcullis gateway in front of the same upstream, each driven by wrk for a bounded time.
# Prints requests/s and p50/p99 for each, and the gateway/bare ratios from this same run.
#
#   benches/load.sh [seconds=10] [connections=64]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
conns=${2:-64}
command -v wrk >/dev/null || { echo "load.sh needs wrk (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet --example gateway --example bench_servers
bin=target/release/examples
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

up=127.0.0.1:19100 bare=127.0.0.1:19101 gw=127.0.0.1:19102 gwlog=127.0.0.1:19103
"$bin/bench_servers" upstream $up & pids+=($!)
"$bin/bench_servers" bare-proxy $bare $up & pids+=($!)
for variant in off file; do
  port=$([ $variant = off ] && echo $gw || echo $gwlog)
  log=$([ $variant = off ] && echo off || echo "$tmp/access.log")
  cat > "$tmp/gw-$variant.yaml" <<YAML
_format_version: "3.0"
gateway:
  listen: $port
  access_log: $log
services:
- name: bench
  url: http://$up
  routes:
  - name: bench
    paths: [/]
YAML
  "$bin/gateway" --config "$tmp/gw-$variant.yaml" >/dev/null & pids+=($!)
done
sleep 1

run() { # name url -> "rps p50_ms p99_ms"
  wrk -t1 -c"$conns" -d"${secs}s" --latency "$2" > "$tmp/$1.txt"
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    END { printf "%s %.3f %.3f\n", rps, p50, p99 }' "$tmp/$1.txt"
}
# Warm every pool first so no run pays for connection setup.
for url in http://$bare/ http://$gw/ http://$gwlog/; do wrk -t1 -c"$conns" -d1s "$url" >/dev/null; done
read -r b_rps b_p50 b_p99 < <(run bare http://$bare/)
read -r g_rps g_p50 g_p99 < <(run gateway http://$gw/)
read -r l_rps l_p50 l_p99 < <(run gateway-log http://$gwlog/)
printf '%-28s %12s %10s %10s\n' target "req/s" "p50 ms" "p99 ms"
printf '%-28s %12s %10s %10s\n' "bare hyper-util proxy" "$b_rps" "$b_p50" "$b_p99"
printf '%-28s %12s %10s %10s\n' "portcullis (log off)" "$g_rps" "$g_p50" "$g_p99"
printf '%-28s %12s %10s %10s\n' "portcullis (log to file)" "$l_rps" "$l_p50" "$l_p99"
awk -v b="$b_rps" -v g="$g_rps" -v l="$l_rps" -v bp="$b_p99" -v gp="$g_p99" -v lp="$l_p99" 'BEGIN {
  printf "ratio gateway/bare: throughput %.3f (log off), %.3f (log on); p99 %.3f (log off), %.3f (log on)\n", g/b, l/b, gp/bp, lp/bp }'
echo "lines logged: $(wc -l < "$tmp/access.log")"
