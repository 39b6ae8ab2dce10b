#!/usr/bin/env bash
# Request/reply benchmark: the edge against the raw broker round trip, in one run, on one
# broker with one echo worker.
#
#   benchmarks/run.sh [SECONDS] [CONNECTIONS] [ROUNDS]
#
# Each round runs three phases, in turns (the order alternates from round to round, so that
# no phase always runs on a warmer or cooler machine):
# - raw ceiling: benchmarks/raw_rpc (rabbitmq-c, CONNECTIONS requests in flight) → demo.echo,
#   once with bare messages (the issue's ceiling) and once with the edge's own messages (every
#   property and header of the contract, mandatory, confirmed);
# - edge: wrk, CONNECTIONS connections, POST /v1/echo with a 64-byte body → demo.echo.
# After the rounds, one more phase measures the edge's HTTP work alone: wrk on GET /readyz,
# which the edge answers itself, without the broker.
# Prints each round's req/s and ratios edge / ceiling, their medians, and the CPU time each
# process spent per request in each kind of phase over all rounds (from /proc and getrusage):
# on a machine whose cores are all busy, throughput is the cores divided by the sum of these;
# and the edge's share of it by thread (HTTP event loops, AMQP publish and consume threads).
# From those it prints the edge's share of the budget a ratio of 0.5 would leave, next to
# what its HTTP work alone costs.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-64}
ROUNDS=${3:-3}
source benchmarks/lib.sh
gcc -O2 -o "$work/raw_rpc" benchmarks/raw_rpc.c -lrabbitmq

"$bin" worker echo --prefetch 128 --log-level warning > "$work/worker.log" 2>&1 & worker_pid=$!; pids+=($worker_pid)
"$bin" edge --port "$http_port" ${EDGE_ARGS:-} --log-level warning > "$work/edge.log" 2>&1 & edge_pid=$!; pids+=($edge_pid)
wait_ready
curl -sf -X POST "localhost:$http_port/v1/echo" -d warmup >/dev/null
broker=$(broker_pid)

# Each of a process's threads: "tid name cpu-ticks" (a thread that ends meanwhile is left out).
thread_ticks() {
  for t in /proc/"$1"/task/*; do
    echo "${t##*/} $(tr ' ' _ < "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"
  done 2>/dev/null
}

# client KIND SECONDS: sets cmd to the load client of a phase of KIND, run for SECONDS.
client() {
  case $1 in
    edge) cmd=(wrk -t2 -c"$CONNECTIONS" -d"${2}s" -s "$work/post.lua" --latency "http://localhost:$http_port/v1/echo") ;;
    http) cmd=(wrk -t2 -c"$CONNECTIONS" -d"${2}s" --latency "http://localhost:$http_port/readyz") ;;
    *) cmd=("$work/raw_rpc" localhost "$port" gangway.rpc demo.echo "$2" "$CONNECTIONS" 64 "$1") ;;
  esac
}

# phase KIND ROUND: one phase (bare, contract, edge or http) after a 2 s warm-up; its client's
# output goes to KIND.ROUND.out, and a line "KIND ROUND client-seconds broker-ticks
# worker-ticks edge-ticks" to cpu.txt; the edge's threads' ticks before and after go to
# threads.KIND.ROUND.{0,1}.
phase() {
  local kind=$1 round=$2 seconds b0 w0 e0
  echo "round $round: $kind (${CONNECTIONS} $(case $kind in edge|http) echo connections ;; *) echo "in flight" ;; esac), ${SECONDS_PER_RUN}s)..." >&2
  client "$kind" 2
  "${cmd[@]}" >/dev/null
  client "$kind" "$SECONDS_PER_RUN"
  b0=$(cpu_ticks "$broker"); w0=$(cpu_ticks "$worker_pid"); e0=$(cpu_ticks "$edge_pid")
  thread_ticks "$edge_pid" > "$work/threads.$kind.$round.0"
  seconds=$(run_timed "$work/$kind.$round.out" "${cmd[@]}")
  thread_ticks "$edge_pid" > "$work/threads.$kind.$round.1"
  echo "$kind $round $seconds $(($(cpu_ticks "$broker") - b0)) $(($(cpu_ticks "$worker_pid") - w0)) $(($(cpu_ticks "$edge_pid") - e0))" >> "$work/cpu.txt"
}

for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="bare contract edge"; else order="edge contract bare"; fi
  for kind in $order; do phase "$kind" "$round"; done
done
phase http 1

python3 - "$work" "$ROUNDS" "$(getconf CLK_TCK)" "$(nproc)" <<'PY'
import re, statistics, sys
work, rounds, hz, cores = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])

def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v, u = float(m.group(1)), m.group(2)
    return v / 1000 if u == "us" else v * 1000 if u == "s" else v

def result(kind, round):
    text = open(f"{work}/{kind}.{round}.out").read()
    if kind not in ("edge", "http"):
        r = dict(kv.split("=") for kv in text.split())
        return {"n": float(r["requests"]), "rps": float(r["rps"]), "p50": float(r["p50_ms"]), "p99": float(r["p99_ms"]), "errors": 0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "n": float(re.search(r"(\d+) requests in", text).group(1)),
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),
        "p50": ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1)),
        "p99": ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1)),
        "errors": int(errors.group(1)) if errors else 0,
    }

kinds = ("bare", "contract", "edge")
runs = {(k, r): result(k, r) for k in kinds for r in range(1, rounds + 1)}
runs[("http", 1)] = result("http", 1)
print(f"{'round':<7}{'bare req/s':>12}{'contract':>10}{'edge':>8}{'edge p50':>10}{'edge p99':>10}{'edge/bare':>11}{'edge/contract':>15}")
vs_bare, vs_contract = [], []
for r in range(1, rounds + 1):
    bare, contract, edge = (runs[(k, r)] for k in kinds)
    vs_bare.append(edge["rps"] / bare["rps"])
    vs_contract.append(edge["rps"] / contract["rps"])
    print(f"{r:<7}{bare['rps']:>12.0f}{contract['rps']:>10.0f}{edge['rps']:>8.0f}{edge['p50']:>10.2f}{edge['p99']:>10.2f}{vs_bare[-1]:>11.2f}{vs_contract[-1]:>15.2f}")
median = lambda k, f: statistics.median(runs[(k, r)][f] for r in range(1, rounds + 1))
print(f"medians: raw bare {median('bare', 'rps'):.0f} req/s (p50 {median('bare', 'p50'):.2f} ms, p99 {median('bare', 'p99'):.2f}),"
      f" raw contract {median('contract', 'rps'):.0f} (p50 {median('contract', 'p50'):.2f}, p99 {median('contract', 'p99'):.2f}),"
      f" edge {median('edge', 'rps'):.0f} (p50 {median('edge', 'p50'):.2f}, p99 {median('edge', 'p99'):.2f})")
print(f"ratio edge / ceiling, median of {rounds} rounds: {statistics.median(vs_bare):.2f} (min {min(vs_bare):.2f}, max {max(vs_bare):.2f};"
      f" the issue's ceiling, bare messages); {statistics.median(vs_contract):.2f} (min {min(vs_contract):.2f}, max {max(vs_contract):.2f})"
      " against a client that sends the edge's messages")
errors = sum(runs[("edge", r)]["errors"] for r in range(1, rounds + 1))
if errors:
    print(f"non-2xx responses: {errors}")
if runs[("http", 1)]["errors"]:
    print(f"GET /readyz non-2xx responses: {runs[('http', 1)]['errors']} (the edge was not ready: its HTTP cost below is not comparable)")

# CPU per request over all rounds of a kind.
cpu = {k: [0.0, 0.0, 0.0, 0.0] for k in kinds + ("http",)}  # client s, broker, worker, edge ticks
for line in open(f"{work}/cpu.txt"):
    kind, _, client, broker, worker, edge = line.split()
    for i, v in enumerate((float(client), int(broker) / hz, int(worker) / hz, int(edge) / hz)):
        cpu[kind][i] += v
print()
print(f"CPU per request, µs (all rounds)")
print(f"{'':28}{'client':>8}{'edge':>8}{'broker':>8}{'worker':>8}{'all':>8}")
labels = {"bare": "raw ceiling, bare", "contract": "raw ceiling, contract", "edge": "edge POST /v1/echo", "http": "edge GET /readyz (no broker)"}
per_request = {}
for k in kinds + ("http",):
    n = runs[("http", 1)]["n"] if k == "http" else sum(runs[(k, r)]["n"] for r in range(1, rounds + 1))
    per_request[k] = client, broker, worker, edge = tuple(v * 1e6 / n for v in cpu[k])
    edge_text = f"{edge:.0f}" if k in ("edge", "http") else ""
    print(f"{labels[k]:28}{client:>8.0f}{edge_text:>8}{broker:>8.0f}{worker:>8.0f}{client + broker + worker + (edge if k in ('edge', 'http') else 0):>8.0f}")

# The edge's CPU per request by thread: its HTTP event loops and its two AMQP connections'
# owner threads (named after their connections).
def by_thread(kind, round):
    def load(end):
        rows = (l.split() for l in open(f"{work}/threads.{kind}.{round}.{end}"))
        return {row[0]: (row[1], int(row[2])) for row in rows if len(row) == 3}  # not a thread that ended mid-read
    before, after = load(0), load(1)
    groups = {}
    for tid, (name, ticks) in after.items():
        group = "event loops" if name.startswith("NIO-") else name if name in ("edge.publish", "edge.consume") else "other"
        groups[group] = groups.get(group, 0) + ticks - before.get(tid, (name, 0))[1]
    return groups
print()
print("edge CPU per request by thread, µs (all rounds):")
for k, rounds_of_kind in (("edge", range(1, rounds + 1)), ("http", (1,))):
    totals, n = {}, 0
    for r in rounds_of_kind:
        for group, ticks in by_thread(k, r).items():
            totals[group] = totals.get(group, 0) + ticks
        n += runs[(k, r)]["n"]
    shown = ", ".join(f"{g} {totals.get(g, 0) / hz * 1e6 / n:.0f}" for g in ("event loops", "edge.publish", "edge.consume", "other"))
    print(f"  {labels[k]:30}{shown}")

# What a ratio of 0.5 would leave the edge: all cores busy at half the bare rate, minus what
# wrk (as in the edge run), the broker and the worker spend per request: as in the edge run,
# and as in the contract run, which sends the edge's messages in 64-deep batches.
budget = cores * 1e6 / (0.5 * median("bare", "rps"))
client, broker, worker, _ = per_request["edge"]
_, c_broker, c_worker, _ = per_request["contract"]
print()
print(f"at edge / bare = 0.5 ({0.5 * median('bare', 'rps'):.0f} req/s) {cores} busy cores give {budget:.0f} µs per request;"
      f" the edge may have {budget - client - broker - worker:.0f} µs of them with the broker and worker costs of the edge run,"
      f" {budget - client - c_broker - c_worker:.0f} µs with those of the contract run;"
      f" its HTTP work alone (GET /readyz, {runs[('http', 1)]['rps']:.0f} req/s) costs it {per_request['http'][3]:.0f} µs")
PY
