#!/usr/bin/env bash
# Pinned A/B load run of two gateway builds against the bare hyper-util proxy: each proxy on core 0
# with one tokio worker thread, wrk and the upstream on core 1; alternating rounds; prints req/s
# and CPU microseconds per request (from /proc/PID/stat ticks over the run) for each.
#
#   benches/ab_load.sh BASE_EXAMPLES_DIR NEW_EXAMPLES_DIR [seconds=5] [rounds=3]
#
# Each directory holds `gateway` and `bench_servers` from `cargo build --release --example gateway
# --example bench_servers` of one checkout (for example a `git worktree` of the base commit).
set -u
BB=${1:?base examples dir}; NB=${2:?new examples dir}
secs=${3:-5}; rounds=${4:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
tmp=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
up=127.0.0.1:19200 bare=127.0.0.1:19201 gb=127.0.0.1:19202 gn=127.0.0.1:19203
taskset -c 1 env TOKIO_WORKER_THREADS=1 $BB/bench_servers upstream $up & pids+=($!)
sleep 0.3
taskset -c 0 env TOKIO_WORKER_THREADS=1 $BB/bench_servers bare-proxy $bare $up & bare_pid=$!; pids+=($bare_pid)
for v in gb gn; do
  port=${!v}
  cat > $tmp/$v.yaml <<YAML
_format_version: "3.0"
gateway:
  listen: $port
  access_log: off
services:
- name: bench
  url: http://$up
  routes:
  - name: bench
    paths: [/]
YAML
done
taskset -c 0 env TOKIO_WORKER_THREADS=1 $BB/gateway --config $tmp/gb.yaml >/dev/null 2>&1 & gb_pid=$!; pids+=($gb_pid)
taskset -c 0 env TOKIO_WORKER_THREADS=1 $NB/gateway --config $tmp/gn.yaml >/dev/null 2>&1 & gn_pid=$!; pids+=($gn_pid)
sleep 1
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
run() { # name addr pid
  local t0=$(ticks $3)
  taskset -c 1 wrk -t1 -c64 -d${secs}s http://$2/ > $tmp/w.txt
  local t1=$(ticks $3)
  local rps=$(awk '/Requests\/sec/ {print $2}' $tmp/w.txt)
  local n=$(awk '/requests in/ {print $1}' $tmp/w.txt)
  awk -v name=$1 -v rps=$rps -v n=$n -v dt=$((t1-t0)) 'BEGIN { printf "%s rps=%.0f cpu_us_per_req=%.2f\n", name, rps, dt*10000.0/n }'
}
for a in $bare $gb $gn; do taskset -c 1 wrk -t1 -c64 -d1s http://$a/ >/dev/null; done
for r in $(seq $rounds); do
  run bare $bare $bare_pid; run base $gb $gb_pid; run new $gn $gn_pid
done
