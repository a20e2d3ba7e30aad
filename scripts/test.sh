#!/usr/bin/env bash
# Runs the whole test suite against the pinned nats-server (installed first if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-nats.sh
cargo test --lib --bins --tests "$@"
