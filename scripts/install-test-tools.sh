#!/usr/bin/env bash
# Installs what the tests use besides nats-server, idempotently:
# - the Python Prometheus client, into the git-ignored .tools/ (its OpenMetrics parser reads
#   /metrics in tests/observability.rs);
# - a headless browser, Debian's `chromium` package (tests/browser.rs watches with a real
#   EventSource), when no Chromium is on the PATH. Installing it needs root and apt-get; set
#   JETWATCH_CHROMIUM to a Chromium binary to use another one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

install_chromium() {
  if [ -n "${JETWATCH_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 \
     || command -v chromium-browser >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "warning: no Chromium found and cannot install Debian's chromium (needs root and apt-get);" \
         "tests/browser.rs will fail: install Chromium or set JETWATCH_CHROMIUM" >&2
    return 0
  fi
  echo "installing Debian's chromium for tests/browser.rs"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
}

install_prometheus_client() {
  local version=0.21.1 dest="$root/.tools/python"
  if PYTHONPATH="$dest" python3 -c "import prometheus_client" 2>/dev/null \
     && [ -f "$dest/.prometheus-client-$version" ]; then
    return 0
  fi
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target "$dest" "prometheus-client==$version"
  touch "$dest/.prometheus-client-$version"
  echo "installed: prometheus-client $version into $dest"
}

install_prometheus_client
install_chromium
