#!/usr/bin/env bash
# Aggregation and streaming benchmark, in one run on one broker:
#   1. GET /v1/time (request/reply, one leg) and GET /v1/three (aggregate of 3 legs) with wrk
#      at CONNECTIONS connections, interleaved over ROUNDS rounds (the order alternates, so
#      neither always runs on a warmer or cooler machine); prints each round's req/s and p99,
#      the ratio aggregate / single per round and their median.
#   2. One stream of PARTS parts (POST /v1/stream/count, NDJSON) read by curl: parts/s.
#
#   benchmarks/shapes.sh [SECONDS] [CONNECTIONS] [PARTS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-64}
PARTS=${3:-100000}
ROUNDS=${4:-3}
source benchmarks/lib.sh
export GANGWAY_ROUTES=benchmarks/routes.yaml

for w in time profile orders count; do
  "$bin" worker "$w" --prefetch 128 --log-level warning > "$work/worker-$w.log" 2>&1 & pids+=($!)
done
"$bin" edge --port "$http_port" ${EDGE_ARGS:-} --log-level warning > "$work/edge.log" 2>&1 & pids+=($!)
wait_ready
sleep 1
curl -sf "localhost:$http_port/v1/three" >/dev/null

measure() {
  wrk -t2 -c"$CONNECTIONS" -d2s "http://localhost:$http_port$1" >/dev/null
  wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://localhost:$http_port$1" > "$2"
}
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then order="time three"; else order="three time"; fi
  for path in $order; do
    echo "round $round: /v1/$path..." >&2
    measure "/v1/$path" "$work/$path.$round.txt"
  done
done
echo "one stream of $PARTS parts..." >&2
start=$(date +%s.%N)
parts=$(curl -sN -X POST "localhost:$http_port/v1/stream/count?n=$PARTS&delay_ms=0" -H 'accept: application/x-ndjson' | grep -c '"n"')
end=$(date +%s.%N)

python3 - "$work" "$ROUNDS" "$parts" "$start" "$end" <<'PY'
import re, statistics, sys
work, rounds, parts, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
def ms(text):
    v, u = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(v) / 1000 if u == "us" else float(v) * 1000 if u == "s" else float(v)
def stats(path):
    out = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99, int(bad.group(1)) if bad else 0
print(f"{'round':<7}{'1 leg req/s':>12}{'p99 ms':>8}{'3 legs req/s':>14}{'p99 ms':>8}{'non-2xx':>9}{'ratio':>7}")
ratios = []
for r in range(1, rounds + 1):
    s_rps, s_p99, s_bad = stats(f"{work}/time.{r}.txt")
    t_rps, t_p99, t_bad = stats(f"{work}/three.{r}.txt")
    ratios.append(t_rps / s_rps)
    print(f"{r:<7}{s_rps:>12.0f}{s_p99:>8.2f}{t_rps:>14.0f}{t_p99:>8.2f}{s_bad + t_bad:>9}{t_rps / s_rps:>7.2f}")
print(f"ratio aggregate / single, median of {rounds} rounds: {statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
print(f"stream: {parts} parts in {end - start:.2f} s = {parts / (end - start):.0f} parts/s")
PY
