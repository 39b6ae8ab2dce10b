#!/usr/bin/env bash
# Starts or stops a private RabbitMQ node in its own directory, without systemd.
#
#   scripts/broker.sh start DIR PORT   → prints the node name; the AMQP URL is amqp://localhost:PORT
#   scripts/broker.sh stop DIR
#   scripts/broker.sh ctl DIR ARGS...  → rabbitmqctl against that node
#
# With BROKER_TLS_PORT and BROKER_TLS_DIR (holding ca.pem, server.pem, server.key) set, the
# node also listens for amqps:// on BROKER_TLS_PORT; with BROKER_TLS_CLIENT_CERT=required as
# well, it accepts only clients that present a certificate signed by ca.pem.
#
# The Erlang schedulers do not busy-wait for work (BROKER_ERL_ARGS, default
# "+sbwt none +sbwtdcpu none +sbwtdio none"): on a small machine that the broker shares with
# the edge, workers and tests, spinning schedulers take CPU the others need. BROKER_ERL_ARGS=""
# keeps Erlang's defaults.
#
# Each node gets its own name (gw<PORT>@localhost), Mnesia and log directory, and
# distribution port (PORT + 20000), so several can run side by side.
set -euo pipefail

cmd=${1:?usage: broker.sh start|stop|ctl DIR [PORT]}
dir=${2:?usage: broker.sh start|stop|ctl DIR [PORT]}

if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  echo "rabbitmq-server is not installed: run 'sudo apt-get install rabbitmq-server' (Debian/Ubuntu)" >&2
  exit 3
fi
export PATH="$PATH:/usr/sbin:/usr/lib/rabbitmq/bin"

node_of() { cat "$1/nodename"; }

case "$cmd" in
  start)
    port=${3:?usage: broker.sh start DIR PORT}
    mkdir -p "$dir/mnesia" "$dir/log"
    node="gw${port}@localhost"
    echo "$node" > "$dir/nodename"
    echo "$port" > "$dir/port"
    # Debian's wrapper runs the broker as the rabbitmq user when started as root.
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then chown -R rabbitmq:rabbitmq "$dir"; fi
    : > "$dir/enabled_plugins.tmp"; echo "[]." > "$dir/enabled_plugins.tmp"; mv "$dir/enabled_plugins.tmp" "$dir/enabled_plugins"
    if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then chown rabbitmq:rabbitmq "$dir/enabled_plugins"; fi
    config_env=()
    if [ -n "${BROKER_TLS_PORT:-}" ]; then
      cp "$BROKER_TLS_DIR/ca.pem" "$BROKER_TLS_DIR/server.pem" "$BROKER_TLS_DIR/server.key" "$dir/"
      cat > "$dir/rabbitmq.conf" <<CONF
listeners.ssl.default = $BROKER_TLS_PORT
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = $([ "${BROKER_TLS_CLIENT_CERT:-}" = required ] && echo true || echo false)
CONF
      if [ "$(id -u)" = 0 ] && id rabbitmq >/dev/null 2>&1; then chown rabbitmq:rabbitmq "$dir"/*.pem "$dir"/*.key "$dir/rabbitmq.conf"; fi
      config_env=(RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf")
    fi
    env "${config_env[@]}" \
    RABBITMQ_NODENAME="$node" RABBITMQ_NODE_PORT="$port" RABBITMQ_DIST_PORT=$((port + 20000)) \
      RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
      RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="${BROKER_ERL_ARGS-+sbwt none +sbwtdcpu none +sbwtdio none}" \
      setsid rabbitmq-server > "$dir/server.out" 2>&1 < /dev/null &
    echo $! > "$dir/pid"
    for _ in $(seq 1 120); do
      if rabbitmqctl -n "$node" await_startup --timeout 5 >/dev/null 2>&1; then
        echo "$node"
        exit 0
      fi
      if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
        echo "RabbitMQ node $node died while starting; see $dir/server.out and $dir/log" >&2
        tail -20 "$dir/server.out" >&2 || true
        exit 1
      fi
      sleep 1
    done
    echo "RabbitMQ node $node did not start within 120 s; see $dir/log" >&2
    exit 1
    ;;
  stop)
    [ -f "$dir/nodename" ] || exit 0
    rabbitmqctl -n "$(node_of "$dir")" stop >/dev/null 2>&1 || true
    if [ -f "$dir/pid" ]; then kill "$(cat "$dir/pid")" 2>/dev/null || true; fi
    ;;
  ctl)
    shift 2
    exec rabbitmqctl -n "$(node_of "$dir")" "$@"
    ;;
  *)
    echo "usage: broker.sh start|stop|ctl DIR [PORT]" >&2
    exit 2
    ;;
esac
