#!/usr/bin/env bash
# Installs what RayVault Cluster's tests and demo need on a fresh Debian
# machine: media tools, the Windows cross toolchain and Wine, faketime,
# Chromium and chromedriver (the dashboard's browser test), and the Rust
# targets. Only missing packages are installed.
set -euo pipefail
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
need=()
for pkg in ffmpeg espeak-ng gcc-mingw-w64-x86-64 wine wine64 faketime python3 python3-venv curl ca-certificates procps iproute2 util-linux chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
rustup component add clippy >/dev/null 2>&1 || true
rustup target add x86_64-pc-windows-gnu aarch64-apple-darwin >/dev/null 2>&1
# The metrics tests read the expositions with the Prometheus text parser of
# the Python `prometheus_client` package, from a venv under the target folder.
venv="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/tmp/metrics-venv"
if ! "$venv/bin/python" -c "import prometheus_client.parser" >/dev/null 2>&1; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian keeps ensurepip, which venv needs, in its own package.
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet prometheus_client
fi
