#!/usr/bin/env bash
# Installs what the tests use besides nats-server, idempotently, into the git-ignored .tools/:
# the Python Prometheus client (its OpenMetrics parser reads /metrics in tests/observability.rs).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=0.21.1
dest="$root/.tools/python"
if PYTHONPATH="$dest" python3 -c "import prometheus_client, sys; sys.exit(prometheus_client.__version__ != '$VERSION' if hasattr(prometheus_client, '__version__') else 0)" 2>/dev/null \
   && [ -f "$dest/.prometheus-client-$VERSION" ]; then
  exit 0
fi
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --target "$dest" "prometheus-client==$VERSION"
touch "$dest/.prometheus-client-$VERSION"
echo "installed: prometheus-client $VERSION into $dest"
