#!/usr/bin/env bash
# Starts rayvault-worker on Linux or macOS.
#
#   scripts/start_worker.sh [--host 100.x.y.z] [--port 8787] [other rayvault-worker flags]
#
# Needs RAYVAULT_CLUSTER_SECRET (or RAYVAULT_CLUSTER_SECRET_CURRENT) in the
# environment: the secret is never taken as an argument, because argv is
# visible to every user in the process list. Optional: RAYVAULT_WORKER_ID,
# RAYVAULT_WORKER_PORT, RAYVAULT_WORKER_HOST, RAYVAULT_STATE_DIR,
# RAYVAULT_WORKER_BIN (path to the binary; default: the project's
# target/release, then target/debug, then PATH). RAYVAULT_STATE_DIR defaults
# to state/ in the project. The script runs in the caller's working
# directory, so relative paths (--config, RAYVAULT_STATE_DIR) mean what they
# mean to the binary. `--help` needs no secret.
#
# The worker logs to stderr; this script appends that to
# $RAYVAULT_STATE_DIR/worker/worker-daemon.log and shows it on the terminal.
set -euo pipefail

project="$(cd "$(dirname "$0")/.." && pwd)"

bin="${RAYVAULT_WORKER_BIN:-}"
if [ -z "$bin" ]; then
    for candidate in "$project/target/release/rayvault-worker" "$project/target/debug/rayvault-worker"; do
        if [ -x "$candidate" ]; then bin=$candidate; break; fi
    done
fi
if [ -z "$bin" ]; then
    bin=$(command -v rayvault-worker || true)
fi
if [ -z "$bin" ]; then
    echo "start_worker: rayvault-worker not found; build it with: cargo build --release --bin rayvault-worker" >&2
    exit 2
fi

# Help and version need no secret and no state.
[ "${1:-}" = help ] && exec "$bin" "$@"
for arg in "$@"; do
    case "$arg" in
        --help | -h | --version | -V) exec "$bin" "$@" ;;
    esac
done

# The project's config/local.toml applies wherever the script is run from
# (the binary itself only looks in the working directory).
if [ -z "${RAYVAULT_CONFIG:-}" ] && [ ! -e config/local.toml ] && [ -e "$project/config/local.toml" ]; then
    export RAYVAULT_CONFIG="$project/config/local.toml"
fi

if [ -z "${RAYVAULT_CLUSTER_SECRET:-}" ] && [ -z "${RAYVAULT_CLUSTER_SECRET_CURRENT:-}" ]; then
    echo "start_worker: set RAYVAULT_CLUSTER_SECRET to the secret shared with the controller, e.g." >&2
    echo "  read -rs RAYVAULT_CLUSTER_SECRET && export RAYVAULT_CLUSTER_SECRET" >&2
    exit 2
fi

state_dir="${RAYVAULT_STATE_DIR:-$project/state}"
export RAYVAULT_STATE_DIR="$state_dir"
mkdir -p "$state_dir/worker"
log="$state_dir/worker/worker-daemon.log"
echo "start_worker: starting $bin $*"
echo "start_worker: state in $state_dir/worker, daemon log in $log, per-job logs in $state_dir/worker/jobs/<job_id>/worker.log"
# exec keeps signals (Ctrl-C, SIGTERM) going to the worker, which shuts down
# gracefully; tee keeps the log on screen too, and ignores those signals so
# that it outlives the worker and records its shutdown lines.
exec > >(trap '' INT TERM; exec tee -a "$log") 2>&1
exec "$bin" "$@"
