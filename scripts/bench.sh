#!/usr/bin/env bash
# Measures RayVault Cluster against the floor and against what a studio would
# otherwise run, side by side in one run, and prints one table (also written
# as JSON under target/bench/). How to read it: docs/benchmarks.md.
#
#   scripts/bench.sh                 the full run (about 20-30 minutes on 2 cores)
#   scripts/bench.sh --quick         the CI-sized version (a few minutes)
#   scripts/bench.sh --only 1,3      some scenarios only
#   SKIP_INSTALL=1 scripts/bench.sh  skip apt-get and pip (already installed)
#   SKIP_BUILD=1 scripts/bench.sh    skip the release build
#
# It installs Debian's nginx, redis-server, ffmpeg and espeak-ng, and Celery
# from PyPI into a virtual environment under target/bench/venv; builds the
# binaries and the benchmark drivers (examples/bench_*.rs) in release mode;
# starts every server on 127.0.0.1 only; stops everything it started by PID.
# It is not part of scripts/test.sh: no test asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

# Debian starts a freshly installed nginx or redis-server as a system service
# listening on all interfaces. The benchmark must not leave such a thing
# behind, so service starts are refused while it installs (the standard
# policy-rc.d mechanism), and only if no policy is already in place.
POLICY_RC=/usr/sbin/policy-rc.d
ADDED_POLICY=0
HARNESS_PID=""
cleanup() {
  if [ -n "$HARNESS_PID" ] && kill -0 "$HARNESS_PID" 2>/dev/null; then
    kill -TERM "$HARNESS_PID" 2>/dev/null || true
    wait "$HARNESS_PID" 2>/dev/null || true
  fi
  if [ "$ADDED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY_RC"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  step "installing the peers and tools (Debian packages)"
  need=()
  for pkg in nginx redis-server ffmpeg espeak-ng python3 python3-venv curl coreutils procps ca-certificates; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    if [ ! -e "$POLICY_RC" ]; then
      printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY_RC" >/dev/null
      $SUDO chmod 755 "$POLICY_RC"
      ADDED_POLICY=1
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    if [ "$ADDED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY_RC"; ADDED_POLICY=0; fi
  fi

  step "installing Celery 5 with Redis support into target/bench/venv"
  mkdir -p target/bench
  if [ ! -x target/bench/venv/bin/python ]; then
    python3 -m venv target/bench/venv
  fi
  target/bench/venv/bin/python -m pip install -q --disable-pip-version-check -r bench/requirements.txt
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  step "building the binaries and the benchmark drivers in release mode"
  cargo build --release --locked --bins --examples
fi

step "running the scenarios"
python3 bench/run.py "$@" &
HARNESS_PID=$!
set +e
wait "$HARNESS_PID"
rc=$?
set -e
HARNESS_PID=""
exit "$rc"
