#!/usr/bin/env bash
# The whole test suite: unit tests (swift test), then integration tests (pytest) that start
# their own RabbitMQ nodes on free ports in temporary directories, the real gangway binary,
# Swift and Python workers, and drive them with outside HTTP clients.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build --build-tests
# The unit tests take about a second; a hung one (a task waiting for what never comes) fails
# the run here instead of holding CI until its own time limit.
if ! timeout 300 swift test --skip-build; then
  echo "unit tests failed or did not finish within 300 s" >&2
  exit 1
fi
python3 -m pytest Tests/IntegrationTests -q -p no:cacheprovider
