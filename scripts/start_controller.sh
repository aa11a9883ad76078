#!/usr/bin/env bash
# Starts the RayVault controller (rayvault-orchestrator) as the README shows:
#
#   scripts/start_controller.sh health
#   scripts/start_controller.sh caps
#   scripts/start_controller.sh submit --run-id R --job-id J --step-name FFMPEG_PROBE \
#       --payload-json '{"media_path":"/path/to/video.mp4"}' \
#       [--requirements-json '{"os_in":["windows"],"min_ram_gb":8}'] [--no-fallback] [--no-wait] [--timeout S]
#   scripts/start_controller.sh sync-artifacts --run-id R --job-id J --node-id windows-worker-1
#   scripts/start_controller.sh daemon | status | cancel --run-id R --job-id J
#   scripts/start_controller.sh wait | result | logs [--follow] --run-id R --job-id J
#   scripts/start_controller.sh --help | <subcommand> --help
#
# It runs in the caller's working directory, so relative paths (a media path
# in a payload, --config, RAYVAULT_STATE_DIR) mean what they mean to the
# binary itself.
#
# The secret comes only from the environment: RAYVAULT_CLUSTER_SECRET, else
# RAYVAULT_CLUSTER_SECRET_CURRENT (optionally RAYVAULT_CLUSTER_SECRET_PREVIOUS
# during a rotation). Without one, every step runs locally on this machine.
# RAYVAULT_ALLOW_PLAIN_FALLBACK=1 lets the controller send the plain token to
# a v0.5 worker that rejects HMAC (logged as a warning).
#
# Other variables: RAYVAULT_STATE_DIR (default: state/ in the project, which
# holds cluster/nodes.json and cluster/receipts/), RAYVAULT_ORCHESTRATOR_BIN
# (path to the binary; default: the project's target/release, then
# target/debug, then PATH).
# Exit codes are the binary's: 0 succeeded, 1 failed, 2 bad usage/configuration,
# 3 the job ran but its verdict failed.
set -euo pipefail

project="$(cd "$(dirname "$0")/.." && pwd)"

if [ $# -eq 0 ]; then
    echo "usage: $0 health|caps|submit|wait|result|logs|sync-artifacts|daemon|status|cancel [flags]  (--help for more)" >&2
    exit 2
fi

bin="${RAYVAULT_ORCHESTRATOR_BIN:-}"
if [ -z "$bin" ]; then
    for candidate in "$project/target/release/rayvault-orchestrator" "$project/target/debug/rayvault-orchestrator"; do
        if [ -x "$candidate" ]; then bin=$candidate; break; fi
    done
fi
if [ -z "$bin" ]; then
    bin=$(command -v rayvault-orchestrator || true)
fi
if [ -z "$bin" ]; then
    echo "start_controller: rayvault-orchestrator not found; build it with: cargo build --release --bin rayvault-orchestrator" >&2
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

export RAYVAULT_STATE_DIR="${RAYVAULT_STATE_DIR:-$project/state}"
mkdir -p "$RAYVAULT_STATE_DIR/cluster"

if [ "$1" = "daemon" ] && [ -z "${RAYVAULT_CLUSTER_SECRET:-}" ] && [ -z "${RAYVAULT_CLUSTER_SECRET_CURRENT:-}" ]; then
    echo "start_controller: the daemon authenticates its API with the cluster secret; set RAYVAULT_CLUSTER_SECRET, e.g." >&2
    echo "  read -rs RAYVAULT_CLUSTER_SECRET && export RAYVAULT_CLUSTER_SECRET" >&2
    exit 2
fi

exec "$bin" "$@"
