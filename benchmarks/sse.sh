#!/usr/bin/env bash
# Event-stream fan-out and job submission, in one run on one broker:
#   1. SUBSCRIBERS SSE subscribers on one edge (GET /v1/topics/stream), RATE events/s published
#      through the same edge for SECONDS s: delivery latency p50/p99 (send → arrival at each
#      subscriber), events lost, edge RSS per 1,000 open streams, edge CPU.
#   2. Job submission with publisher confirms (POST /v1/jobs/render → 202) with wrk at 64
#      connections: jobs/s and p99.
#
#   benchmarks/sse.sh [SUBSCRIBERS] [RATE] [SECONDS]
#
# SSE_LOAD_PAUSE_US (default 1000) is how long the load client pauses after reading what was
# ready (0: it sleeps in epoll_wait, and every write of the edge wakes it; see sse_load.c).
set -euo pipefail
cd "$(dirname "$0")/.."
SUBSCRIBERS=${1:-10000}
RATE=${2:-5}
SECONDS_PER_RUN=${3:-30}
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((SUBSCRIBERS + 256)) ]; then
  echo "open-file limit $(ulimit -n) is too low for $SUBSCRIBERS subscribers" >&2
  exit 1
fi
source benchmarks/lib.sh
cc -O2 -o "$work/sse_load" benchmarks/sse_load.c -lpthread

"$bin" edge --port "$http_port" ${EDGE_ARGS:-} --log-level warning > "$work/edge.log" 2>&1 & edge_pid=$!; pids+=($edge_pid)
wait_ready
hz=$(getconf CLK_TCK)
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Warm the paths once, then take the idle footprint.
curl -sf -X POST "localhost:$http_port/v1/topics/bench.warm" -d '{}' >/dev/null
sleep 1
rss_idle=$(rss_kib $edge_pid)

echo "opening $SUBSCRIBERS event streams, then $RATE events/s for ${SECONDS_PER_RUN}s..." >&2
"$work/sse_load" 127.0.0.1 "$http_port" "$SUBSCRIBERS" "$RATE" "$SECONDS_PER_RUN" bench.tick > "$work/sse.out" 2> "$work/sse.err" & load_pid=$!
until grep -q READY "$work/sse.err" 2>/dev/null; do
  kill -0 $load_pid 2>/dev/null || { cat "$work/sse.err" >&2; exit 1; }
  sleep 0.2
done
rss_open=$(rss_kib $edge_pid)
streams=$(curl -sf "localhost:$http_port/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["event_streams"])')
sleep 2  # sse_load starts publishing now
t0=$(date +%s.%N); c0=$(cpu_ticks $edge_pid)
wait $load_pid
t1=$(date +%s.%N); c1=$(cpu_ticks $edge_pid)
rss_after=$(rss_kib $edge_pid)
cut_off=$(curl -sf "localhost:$http_port/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["event_streams_cut_off"])')

echo "job submission at 64 connections..." >&2
cat > "$work/job.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"scene":"bench"}'
wrk.headers["Content-Type"] = "application/json"
LUA
wrk -t2 -c64 -d2s -s "$work/job.lua" "http://localhost:$http_port/v1/jobs/render?steps=1&delay_ms=0" >/dev/null
jobs=$(wrk -t2 -c64 -d10s --latency -s "$work/job.lua" "http://localhost:$http_port/v1/jobs/render?steps=1&delay_ms=0")

python3 - "$(cat "$work/sse.out")" "$rss_idle" "$rss_open" "$rss_after" "$streams" "$c0" "$c1" "$t0" "$t1" "$hz" "$cut_off" "$jobs" <<'PY'
import re, sys
out, rss_idle, rss_open, rss_after, streams, c0, c1, t0, t1, hz, cut_off, jobs = sys.argv[1:]
kv = dict(x.split("=") for x in out.split())
streams = int(streams)
per_k = (int(rss_open) - int(rss_idle)) / 1024 / (streams / 1000)
cpu = (int(c1) - int(c0)) / int(hz) / (float(t1) - float(t0)) * 100
print(f"subscribers: {kv['streams_open']} open on the edge ({streams} by /healthz), {kv['published']} events published")
print(f"deliveries: {kv['received']} of {kv['expected']} expected; streams closed early: {kv['closed']}, cut off: {cut_off}")
print(f"delivery latency ms: p50 {kv['p50_ms']}  p90 {kv['p90_ms']}  p99 {kv['p99_ms']}  max {kv['max_ms']}")
print(f"edge RSS: idle {int(rss_idle)/1024:.1f} MiB, with the streams {int(rss_open)/1024:.1f} MiB, after publishing {int(rss_after)/1024:.1f} MiB"
      f" = {per_k:.2f} MiB per 1,000 open streams")
print(f"edge CPU while publishing: {cpu:.0f}% of one core; the load client (reading every stream, pausing {kv['pause_us']} µs after each drain): {kv['client_cpu_pct']}%")
def ms(text):
    v, u = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(v) / 1000 if u == "us" else float(v) * 1000 if u == "s" else float(v)
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", jobs).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", jobs, re.M).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", jobs)
print(f"job submission (202 after confirm), 64 connections: {rps:.0f} jobs/s, p99 {p99:.2f} ms, non-2xx {bad.group(1) if bad else 0}")
PY
