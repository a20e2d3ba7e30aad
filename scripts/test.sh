#!/usr/bin/env bash
# Runs the whole test suite against the pinned nats-server (installed first if missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-nats.sh
bash scripts/install-test-tools.sh
# Every package of the workspace: library, binary and integration tests, and the examples in
# the CESQL crate's documentation.
cargo test --workspace --lib --bins --tests "$@"
# The client crate's examples are documentation: they must build.
cargo build --workspace --examples
# Its API documentation builds without broken links.
RUSTDOCFLAGS="-D warnings" cargo doc -p jetwatch-client --no-deps --quiet
cargo test -p cesql -p jetwatch-client --doc
