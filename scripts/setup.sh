#!/usr/bin/env bash
# Installs what Gangway needs on Debian/Ubuntu: rabbitmq-c and OpenSSL headers to build,
# RabbitMQ to run a local broker, and the outside clients the tests drive it with
# (curl, wrk, pika, sseclient-py, and headless Chromium through selenium).
# The Swift 6.2 (or later) toolchain itself is expected on PATH (swift.org builds; /opt/swift here).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

packages=(rabbitmq-server librabbitmq-dev libssl-dev curl wrk python3 python3-pip openssl chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  $SUDO apt-get update -qq
  # No service start from the package: Gangway runs its own nodes (scripts/broker.sh).
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Debian's own python3 is "externally managed" (PEP 668): pip then needs to be told that
# installing the test clients for this user is intended.
pip_install() {
  python3 -m pip install -q --disable-pip-version-check "$@" -r Tests/IntegrationTests/requirements.txt 2>&1 \
    | grep -v "Running pip as the 'root' user"
  return "${PIPESTATUS[0]}"
}
pip_install || pip_install --break-system-packages
python3 -c 'import pytest, requests, pika, sseclient, selenium' \
  || { echo "the Python test clients did not install (see above)" >&2; exit 1; }

if ! command -v swift >/dev/null 2>&1; then
  echo "swift is not on PATH: install a Swift 6.2 (or later) toolchain (https://www.swift.org/install/linux/)" >&2
  exit 1
fi
# The worker SDK starts handlers with Task.immediate, which came with Swift 6.2.
version=$(swift --version 2>/dev/null | sed -n 's/.*Swift version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)
read -r major minor <<< "${version:-0 0}"
if [ "$major" -lt 6 ] || { [ "$major" = 6 ] && [ "$minor" -lt 2 ]; }; then
  echo "swift on PATH is ${major}.${minor}; Gangway needs Swift 6.2 or later (https://www.swift.org/install/linux/)" >&2
  exit 1
fi
echo "setup: ok"
