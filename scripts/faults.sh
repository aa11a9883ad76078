#!/usr/bin/env bash
# The fault suite: "exactly once when things break". Kills workers and the
# controller daemon mid-job, cuts a worker's network link, fills disks and
# panics a step, then checks from the step's own ledger that no job was lost
# or run twice at once and that every receipt agrees with what ran.
#
#   scripts/faults.sh                      every scenario, ROUNDS=3 each
#   ROUNDS=1 scripts/faults.sh --only partition --only disk
#   FAULTS_KEEP=1 scripts/faults.sh ...    keep each round's folder and logs
#
# Needs root for the partition (network namespaces) and disk (tmpfs)
# scenarios; they print SKIP otherwise. Uses target/debug binaries (built
# when missing). Prints a table; exits 1 when a scenario FAILs.
set -euo pipefail
cd "$(dirname "$0")/.."
unset RAYVAULT_CLUSTER_SECRET RAYVAULT_CLUSTER_SECRET_CURRENT RAYVAULT_CLUSTER_SECRET_PREVIOUS || true
exec python3 scripts/faults/driver.py "$@"
