#!/usr/bin/env bash
# Starts a local deployment: a nats-server with JetStream (data in .jetwatch/dev) and the
# gateway on 127.0.0.1:50051, both stopped together by Ctrl-C. Installs nats-server if missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-nats.sh
exec cargo run --quiet -- dev "$@"
