#!/usr/bin/env bash
# Request/reply benchmark: the edge against the raw broker round trip, in one run, on one
# broker with one echo worker.
#
#   benchmarks/run.sh [SECONDS] [CONNECTIONS]
#
# 1. raw ceiling: benchmarks/raw_rpc (rabbitmq-c, CONNECTIONS requests in flight) → demo.echo,
#    once with bare messages (the issue's ceiling) and once with the edge's own messages (every
#    property and header of the contract, mandatory, confirmed)
# 2. edge: wrk, CONNECTIONS connections, POST /v1/echo with a 64-byte body → demo.echo
# Prints req/s, p50 and p99 for each and the ratios edge / ceiling, then the CPU time each
# process spent per request in each phase (from /proc and getrusage): on a machine whose
# cores are all busy, throughput is the cores divided by the sum of these.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-64}
source benchmarks/lib.sh
gcc -O2 -o "$work/raw_rpc" benchmarks/raw_rpc.c -lrabbitmq

"$bin" worker echo --prefetch 128 --log-level warning > "$work/worker.log" 2>&1 & worker_pid=$!; pids+=($worker_pid)
"$bin" edge --port "$http_port" ${EDGE_ARGS:-} --log-level warning > "$work/edge.log" 2>&1 & edge_pid=$!; pids+=($edge_pid)
wait_ready
curl -sf -X POST "localhost:$http_port/v1/echo" -d warmup >/dev/null
broker=$(broker_pid)

# ticks PHASE: records the CPU ticks of the broker, worker and edge as PHASE_broker etc.
ticks() {
  eval "${1}_broker=$(cpu_ticks "$broker") ${1}_worker=$(cpu_ticks "$worker_pid") ${1}_edge=$(cpu_ticks "$edge_pid")"
}

# raw KIND: the raw client's round trip with bare or contract messages (see raw_rpc.c).
raw() {
  echo "raw broker round trip, $1 messages (${CONNECTIONS} in flight, ${SECONDS_PER_RUN}s)..." >&2
  "$work/raw_rpc" localhost "$port" gangway.rpc demo.echo 2 "$CONNECTIONS" 64 "$1" >/dev/null
  ticks "raw_$1_0"
  printf -v "raw_$1_client" %s \
    "$(run_timed "$work/raw_$1.out" "$work/raw_rpc" localhost "$port" gangway.rpc demo.echo "$SECONDS_PER_RUN" "$CONNECTIONS" 64 "$1")"
  ticks "raw_$1_1"
}
raw bare
raw contract

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("a", 64)
wrk.headers["Content-Type"] = "text/plain"
LUA
echo "edge (wrk, ${CONNECTIONS} connections, ${SECONDS_PER_RUN}s)..." >&2
wrk -t2 -c"$CONNECTIONS" -d2s -s "$work/post.lua" "http://localhost:$http_port/v1/echo" >/dev/null
ticks edge0
edge_client=$(run_timed "$work/wrk.out" wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" -s "$work/post.lua" --latency "http://localhost:$http_port/v1/echo")
ticks edge1

python3 - "$(cat "$work/wrk.out")" "$(getconf CLK_TCK)" \
  "$(cat "$work/raw_bare.out")" "$raw_bare_client" $((raw_bare_1_broker - raw_bare_0_broker)) $((raw_bare_1_worker - raw_bare_0_worker)) \
  "$(cat "$work/raw_contract.out")" "$raw_contract_client" $((raw_contract_1_broker - raw_contract_0_broker)) $((raw_contract_1_worker - raw_contract_0_worker)) \
  "$edge_client" $((edge1_broker - edge0_broker)) $((edge1_worker - edge0_worker)) $((edge1_edge - edge0_edge)) <<'PY'
import re, sys
out, hz = sys.argv[1], float(sys.argv[2])
def raw_phase(i):
    r = dict(kv.split("=") for kv in sys.argv[i].split())
    return r, float(sys.argv[i + 1]), int(sys.argv[i + 2]) / hz, int(sys.argv[i + 3]) / hz
bare, contract = raw_phase(3), raw_phase(7)
edge_client, edge_broker, edge_worker, edge_edge = float(sys.argv[11]), int(sys.argv[12]) / hz, int(sys.argv[13]) / hz, int(sys.argv[14]) / hz
def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
print(f"{'':28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'edge / this':>13}")
for label, (r, *_) in (("raw ceiling, bare", bare), ("raw ceiling, contract", contract)):
    print(f"{label:28}{float(r['rps']):>10.0f}{float(r['p50_ms']):>10.2f}{float(r['p99_ms']):>10.2f}{rps / float(r['rps']):>13.2f}")
print(f"{'edge POST /v1/echo':28}{rps:>10.0f}{p50:>10.2f}{p99:>10.2f}")
print(f"ratio edge / ceiling: {rps / float(bare[0]['rps']):.2f} (the issue's ceiling, bare messages);"
      f" {rps / float(contract[0]['rps']):.2f} against a client that sends the edge's messages")
if errors:
    print(f"non-2xx responses: {errors.group(1)}")
edge_n = float(re.search(r"(\d+) requests in", out).group(1))
us = lambda cpu, n: f"{cpu * 1e6 / n:.0f}" if n else "-"
print()
print("CPU per request, µs")
print(f"{'':28}{'client':>8}{'edge':>8}{'broker':>8}{'worker':>8}{'all':>8}")
for label, (r, client, broker, worker) in (("raw ceiling, bare", bare), ("raw ceiling, contract", contract)):
    n = float(r["requests"])
    print(f"{label:28}{us(client, n):>8}{'':>8}{us(broker, n):>8}{us(worker, n):>8}{us(client + broker + worker, n):>8}")
print(f"{'edge POST /v1/echo':28}{us(edge_client, edge_n):>8}{us(edge_edge, edge_n):>8}{us(edge_broker, edge_n):>8}{us(edge_worker, edge_n):>8}{us(edge_client + edge_edge + edge_broker + edge_worker, edge_n):>8}")
PY
