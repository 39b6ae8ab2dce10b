#!/usr/bin/env bash
# The whole test suite: unit tests (swift test), then integration tests (pytest) that start
# their own RabbitMQ nodes on free ports in temporary directories, the real gangway binary,
# Swift and Python workers, and drive them with outside HTTP clients.
set -euo pipefail
cd "$(dirname "$0")/.."

swift build --build-tests
swift test --skip-build
python3 -m pytest Tests/IntegrationTests -q -p no:cacheprovider
