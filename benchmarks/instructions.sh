#!/usr/bin/env bash
# benchmarks/instructions.sh [SECONDS] [CONNECTIONS]
#
# Counts the user-space instructions the edge and the echo worker execute per POST /v1/echo
# (64-byte body), under valgrind's callgrind. Unlike CPU time, the count does not move with
# what else the machine runs, so it shows a change of a few percent in the code's own work
# that run.sh's timings, which vary by ±10 % from round to round, cannot. It counts neither
# the kernel's work (the sockets' system calls) nor cache misses or waiting: run.sh remains
# the measure of throughput.
#
# Two phases, each on this run's broker: the edge under callgrind with the worker running
# natively, then the worker under callgrind with the edge running natively. Each warms up,
# then counts while wrk drives SECONDS (default 8) at CONNECTIONS (default 16); a phase with
# any answer but 200 fails, as the count would not be that of a served request.
#
# Needs valgrind (apt-get install valgrind) and strip (binutils). Valgrind 3.19 cannot read
# the DWARF 5 debug information Swift 6 writes, so the binary is copied without it first.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-8}
connections=${2:-16}
for tool in valgrind callgrind_control strip wrk; do
  command -v "$tool" >/dev/null || { echo "instructions.sh needs $tool (apt-get install valgrind binutils wrk)" >&2; exit 3; }
done
source benchmarks/lib.sh

counted="$work/gangway"
strip --strip-debug -o "$counted" "$bin"

# count NAME PID: instructions PID executes per request while wrk drives the edge.
count() {
  local name=$1 pid=$2
  # Under callgrind a process runs some 50 times slower: give it time to come up and warm.
  wrk -t1 -c"$connections" -d5s -s "$work/post.lua" "http://localhost:$http_port/v1/echo" > /dev/null
  callgrind_control -i on "$pid" > /dev/null 2>&1
  local out
  out=$(wrk -t1 -c"$connections" -d"${seconds}s" -s "$work/post.lua" "http://localhost:$http_port/v1/echo")
  callgrind_control -i off "$pid" > /dev/null 2>&1
  callgrind_control -d "$pid" > /dev/null 2>&1
  # The dump is written by the process itself, a moment after the request for it.
  for _ in $(seq 1 100); do
    grep -qs '^totals:' "$work/cg.$pid".* && break
    sleep 0.1
  done
  if echo "$out" | grep -q 'Non-2xx'; then
    echo "$name: some requests were not answered with 200:" >&2
    echo "$out" >&2
    return 1
  fi
  local requests instructions
  requests=$(echo "$out" | awk '/requests in/{print $1}')
  instructions=$({ cat "$work/cg.$pid".* 2>/dev/null || true; } | awk '/^totals:/{s += $2} END{print s + 0}')
  # No dump, or no request served, is no count: say so rather than print 0 or divide by it.
  if [ "${requests:-0}" -eq 0 ] || [ "$instructions" -eq 0 ]; then
    echo "$name: no count ($requests requests served, $instructions instructions in callgrind's dump; KEEP_WORK=1 keeps the logs)" >&2
    return 1
  fi
  printf '%-28s %12d requests  %8d instructions per request\n' "$name" "$requests" $((instructions / requests))
}

# wait_served: until POST /v1/echo is answered with 200 (the worker consumes).
wait_served() {
  for _ in $(seq 1 600); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -X POST --data x "localhost:$http_port/v1/echo")" = 200 ] && return 0
    sleep 0.2
  done
  echo "the edge did not serve /v1/echo; see $work" >&2
  return 1
}

callgrind=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/cg.%p")

echo "edge under callgrind, worker native (${seconds}s at $connections connections)..." >&2
"$bin" worker echo --prefetch 128 --log-level warning > "$work/worker.log" 2>&1 & worker=$!; pids+=("$worker")
"${callgrind[@]}" "$counted" edge --port "$http_port" ${EDGE_ARGS:-} --log-level warning > "$work/edge.log" 2>&1 & edge=$!; pids+=("$edge")
wait_served
count "edge" "$edge"
kill "$edge" "$worker"; wait "$edge" "$worker" 2>/dev/null || true

echo "worker under callgrind, edge native..." >&2
"${callgrind[@]}" "$counted" worker echo --prefetch 128 --log-level warning > "$work/worker.log" 2>&1 & worker=$!; pids+=("$worker")
"$bin" edge --port "$http_port" ${EDGE_ARGS:-} --log-level warning > "$work/edge.log" 2>&1 & edge=$!; pids+=("$edge")
wait_served
count "echo worker" "$worker"
