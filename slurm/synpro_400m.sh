#!/bin/bash
# The SynPro loop at 400M parameters (pretrain -> plateau -> generators -> synthesis -> ... until
# the token budget is spent), driven by `synpro run`. Every #SBATCH line can be overridden:
#
#   mkdir -p logs && sbatch -A ACCOUNT -p PARTITION --export=ALL,SYNPRO_DATA=/data/organic slurm/synpro_400m.sh
#   sbatch -N 1 --export=ALL,SYNPRO_SMOKE=1 slurm/synpro_400m.sh      # tiny model on CPU, minutes
#
# Environment knobs: see slurm/common.sh. A requeued job continues where it stopped.
#SBATCH --job-name=synpro-400m
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
#SBATCH --time=24:00:00
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
# (no --account/--partition here: they differ per cluster; give them with -A/-p)

SYNPRO_MODEL=400m
SYNPRO_DEFAULT_TP=1
SYNPRO_DEFAULT_PP=1
SYNPRO_DEFAULT_MICRO_BATCH=8
SYNPRO_DEFAULT_GLOBAL_BATCH=512
SYNPRO_DEFAULT_TOKENS=8400000000  # 8.4B tokens (20x the parameters)

# Slurm runs a copy of this script from its spool dir: find the original to source common.sh
if [ -z "${SYNPRO_SLURM_DIR:-}" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
    cmd=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n 1)
    case "$cmd" in /*) ;; *) cmd="${SLURM_SUBMIT_DIR:-.}/$cmd" ;; esac
    SYNPRO_SLURM_DIR=$(dirname "$cmd")
fi
. "${SYNPRO_SLURM_DIR:-$(dirname "$0")}/common.sh"
