#!/usr/bin/env bash
# The project's test command: installs what the tests need on a fresh Debian
# machine, builds, lints with warnings as errors, runs every test, then the
# macOS check, the Windows cross-build and the Windows-under-Wine smoke test.
#
#   scripts/test.sh            everything (what CI runs)
#   SKIP_INSTALL=1 scripts/test.sh   skip the apt/rustup step
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  step "installing system packages and Rust targets"
  bash scripts/install_deps.sh
fi

export CARGO_TERM_COLOR=never
# The tests must never see a secret from the caller's environment.
unset RAYVAULT_CLUSTER_SECRET RAYVAULT_CLUSTER_SECRET_CURRENT RAYVAULT_CLUSTER_SECRET_PREVIOUS || true

step "build"
cargo build --all-targets --locked

step "clippy (warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings

step "tests"
cargo test --locked -- --test-threads=2

step "macOS check and Windows cross-build"
bash scripts/cross_check.sh

step "Windows worker under Wine"
bash scripts/wine_smoke.sh

step "all checks passed in $(( $(date +%s) - started )) s"
