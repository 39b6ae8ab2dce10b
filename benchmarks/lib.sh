#!/usr/bin/env bash
# Shared by the benchmark scripts: a work directory, a private broker, release binaries, and
# cleanup of everything they start. Source it; it sets work, bin, port, http_port and
# GANGWAY_AMQP_URL, and appends background pids to pids. KEEP_WORK=1 keeps the work directory
# (logs, profiles) and prints where it is.
export PATH="/opt/swift/usr/bin:$PATH:/usr/sbin"

work=$(mktemp -d /tmp/gangway-bench-XXXXXX)
chmod 755 "$work"  # the broker runs as the rabbitmq user and must reach its directory
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  scripts/broker.sh stop "$work/broker" || true
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# GANGWAY_BENCH_BIN runs a given gangway binary instead (to compare two builds in turn).
if [ -n "${GANGWAY_BENCH_BIN:-}" ]; then
  bin=$GANGWAY_BENCH_BIN
else
  # Built as docker/Dockerfile builds the shipped image: the Swift runtime linked in statically
  # (its thread-local state and calls then skip the dynamic linker's indirections).
  echo "building (release, static Swift runtime, as the image)..." >&2
  swift build -c release --product gangway --static-swift-stdlib >/dev/null
  bin=$(swift build -c release --static-swift-stdlib --show-bin-path)/gangway
fi

port=$(free_port)
while [ $((port + 20000)) -gt 65535 ]; do port=$(free_port); done
scripts/broker.sh start "$work/broker" "$port" >/dev/null
export GANGWAY_AMQP_URL="amqp://guest:guest@localhost:$port/"
http_port=$(free_port)

# wrk's script for the issue's load: POST /v1/echo with a 64-byte body (wrk -s "$work/post.lua").
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("a", 64)
wrk.headers["Content-Type"] = "text/plain"
LUA

# CPU time of a process so far, in clock ticks (getconf CLK_TCK per second).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# The pid of this run's broker (the Erlang VM that listens on $port).
broker_pid() {
  for p in $(pgrep -f beam.smp); do
    if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "RABBITMQ_NODE_PORT=$port"; then
      echo "$p"
      return 0
    fi
  done
  return 1
}

# run_timed OUT CMD...: runs CMD with its output in OUT and prints the CPU seconds it used.
run_timed() {
  python3 -c 'import resource, subprocess, sys
with open(sys.argv[1], "w") as out:
    code = subprocess.run(sys.argv[2:], stdout=out).returncode
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(u.ru_utime + u.ru_stime)
sys.exit(code)' "$@"
}

# Waits until the edge on $http_port is ready.
wait_ready() {
  for _ in $(seq 1 100); do
    curl -sf "localhost:$http_port/readyz" >/dev/null && return 0
    sleep 0.1
  done
  echo "the edge did not become ready; see $work/edge.log" >&2
  return 1
}
