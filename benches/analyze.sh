#!/usr/bin/env bash
# Analyzer throughput and memory: generates an access log of N lines (default 5,000,000) in the
# format the gateway writes (routes, consumers, IPs, 200/401/429/502, microsecond latencies),
# then times `analyze_logs` on it and reports lines per CPU second, lines per wall second and
# peak RSS (GNU time). Then peak RSS on the first fifth of the log, and on that fifth read five
# times (as many lines as the whole log, with the first fifth's clients and latencies): memory
# follows the distinct IPs and latencies a log shows, not its number of lines.
#
#   benches/analyze.sh [lines=5000000]
set -euo pipefail
cd "$(dirname "$0")/.."
lines=${1:-5000000}
cargo build --release --quiet --features analyze --example analyze_logs
# The log takes ~440 bytes a line: in memory (tmpfs) when there is one, not on a full disk.
tmp=$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$lines" > "$tmp/access.log" <<'PY'
import random, sys
n = int(sys.argv[1])
rnd = random.Random(7)
routes = [f"route-{i}" for i in range(20)]
out = sys.stdout
for i in range(n):
    status = rnd.choices([200, 401, 429, 502], [90, 4, 5, 1])[0]
    up = round(rnd.lognormvariate(2.0, 0.6), 3)
    gw = round(up + rnd.uniform(0.05, 0.6), 3)
    consumer = f'"consumer_id":"c{rnd.randrange(500)}",' if status != 401 else ""
    out.write(
        f'{{"timestamp":"2026-11-28T06:{(i // 100000) % 60:02d}:{(i // 2000) % 60:02d}.{i % 1000:03d}Z",'
        f'"request_id":"{i:08x}-0000-4000-8000-000000000000","method":"GET","path":"/v1/items/{i % 997}",'
        f'"route_name":"{rnd.choice(routes)}","service_name":"svc","status":{status},{consumer}'
        f'"client_ip":"10.{rnd.randrange(4)}.{rnd.randrange(256)}.{rnd.randrange(256)}",'
        f'"upstream_host":"127.0.0.1:9000","upstream_status":{status if status != 401 else "null"},'
        f'"upstream_latency_ms":{up if status != 401 else "null"},"gateway_latency_ms":{gw},'
        f'"attempts":null,"rate_limit":null,"breaker":null,"bytes_sent":512,"user_agent":"bench/1.0"}}\n'
    )
PY
size=$(du -h "$tmp/access.log" | cut -f1)
# GNU time: peak RSS, CPU seconds (user + sys: what one core spends, whatever else the machine
# runs) and wall seconds.
/usr/bin/time -f "%M %U %S %e" -o "$tmp/time" target/release/examples/analyze_logs "$tmp/access.log" > "$tmp/report.txt"
read -r rss user sys wall < "$tmp/time"
cpu=$(echo "$user + $sys" | bc -l)
printf 'lines: %d (%s)\nCPU seconds: %.2f (user %.2f, sys %.2f)\nlines per CPU second: %.0f\nwall seconds: %.2f (lines/s %.0f)\npeak RSS: %s KiB\n' \
  "$lines" "$size" "$cpu" "$user" "$sys" "$(echo "$lines / $cpu" | bc -l)" "$wall" "$(echo "$lines / $wall" | bc -l)" "$rss"
head -3 "$tmp/report.txt"
head -n "$((lines / 5))" "$tmp/access.log" > "$tmp/fifth.log"
rm "$tmp/access.log"
/usr/bin/time -f "%M" -o "$tmp/time" target/release/examples/analyze_logs "$tmp/fifth.log" > /dev/null
printf 'peak RSS, first %d lines: %s KiB\n' "$((lines / 5))" "$(cat "$tmp/time")"
/usr/bin/time -f "%M" -o "$tmp/time" target/release/examples/analyze_logs \
  "$tmp/fifth.log" "$tmp/fifth.log" "$tmp/fifth.log" "$tmp/fifth.log" "$tmp/fifth.log" > /dev/null
printf 'peak RSS, those lines read 5 times: %s KiB\n' "$(cat "$tmp/time")"
