#!/usr/bin/env bash
# Aggregation and streaming benchmark, in one run on one broker:
#   1. GET /v1/time (request/reply, one leg) and GET /v1/three (aggregate of 3 legs) with wrk
#      at CONNECTIONS connections; prints req/s, p99 and the ratio aggregate / single.
#   2. One stream of PARTS parts (POST /v1/stream/count, NDJSON) read by curl: parts/s.
#
#   benchmarks/shapes.sh [SECONDS] [CONNECTIONS] [PARTS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-10}
CONNECTIONS=${2:-64}
PARTS=${3:-100000}
source benchmarks/lib.sh
export GANGWAY_ROUTES=benchmarks/routes.yaml

for w in time profile orders count; do
  "$bin" worker "$w" --prefetch 128 --log-level warning > "$work/worker-$w.log" 2>&1 & pids+=($!)
done
"$bin" edge --port "$http_port" --log-level warning > "$work/edge.log" 2>&1 & pids+=($!)
wait_ready
sleep 1
curl -sf "localhost:$http_port/v1/three" >/dev/null

measure() {
  wrk -t2 -c"$CONNECTIONS" -d2s "http://localhost:$http_port$1" >/dev/null
  wrk -t2 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://localhost:$http_port$1"
}
echo "single request/reply..." >&2
single=$(measure /v1/time)
echo "3-leg aggregate..." >&2
three=$(measure /v1/three)
echo "one stream of $PARTS parts..." >&2
start=$(date +%s.%N)
parts=$(curl -sN -X POST "localhost:$http_port/v1/stream/count?n=$PARTS&delay_ms=0" -H 'accept: application/x-ndjson' | grep -c '"n"')
end=$(date +%s.%N)

python3 - "$single" "$three" "$parts" "$start" "$end" <<'PY'
import re, sys
single, three, parts, start, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
def ms(text):
    v, u = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(v) / 1000 if u == "us" else float(v) * 1000 if u == "s" else float(v)
def stats(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p99, int(bad.group(1)) if bad else 0
s_rps, s_p99, s_bad = stats(single)
t_rps, t_p99, t_bad = stats(three)
print(f"{'':28}{'req/s':>10}{'p99 ms':>10}{'non-2xx':>10}")
print(f"{'GET /v1/time (1 leg)':28}{s_rps:>10.0f}{s_p99:>10.2f}{s_bad:>10}")
print(f"{'GET /v1/three (3 legs)':28}{t_rps:>10.0f}{t_p99:>10.2f}{t_bad:>10}")
print(f"ratio aggregate / single: {t_rps / s_rps:.2f}")
print(f"stream: {parts} parts in {end - start:.2f} s = {parts / (end - start):.0f} parts/s")
PY
