#!/usr/bin/env bash
# CI: bring the local two-node Slurm cluster up (idempotent) and write/print its env file.
#   .ci/slurm_up.sh && source "${SYNPRO_SLURM_BASE:-/tmp/synpro-slurm}/slurm_env.sh"
# The real-Slurm tests (pytest -m slurm) need SLURM_CONF from that file.
set -euo pipefail
cd "$(dirname "$0")/.."
bash slurm/local_cluster.sh up
