# Shared body of slurm/synpro_1b.sh and slurm/synpro_400m.sh (sourced, not run).
#
# The size script sets SYNPRO_MODEL and the SYNPRO_DEFAULT_* sizes, then sources this file, which
#   1. writes the loop config (unless SYNPRO_CONFIG names one),
#   2. points multi-node training at the first node (MASTER_ADDR/MASTER_PORT),
#   3. runs the controller (`synpro run`) in the background and waits for it,
#   4. on SIGUSR1 (Slurm's --signal=B:USR1@300 warning) forwards SIGTERM to the controller, which
#      stops the running stage (the trainer checkpoints), then requeues the job; the requeued job
#      reruns this script and the controller continues from RUN_DIR/state.json.
#
# Environment (all optional unless noted):
#   SYNPRO_SMOKE=1        the whole loop at toy scale on CPU: tiny model on the first node, small token
#                         budget (the packaged web sample), the first plateau check forced to a plateau,
#                         one round with a 1-step GRPO per kind and SYNPRO_SYNTH_LIMIT (4) documents
#                         rewritten per kind, synthesis over SYNPRO_SYNTH_NODES x SYNPRO_SYNTH_TASKS_PER_NODE
#                         ranks (default 1 x 1)
#   SYNPRO_GENERATOR      GRPO's start policy, an HF folder (default: the offline SmolLM2-135M-Instruct)
#   SYNPRO_CONFIG         a loop config (YAML/JSON) to use as is; otherwise one is written from:
#   SYNPRO_DATA | SYNPRO_INPUT   organic prefix (prepared) | JSONL(.gz) to prepare (one is required
#                         outside smoke mode)
#   SYNPRO_TOKENS, SYNPRO_ROUNDS, SYNPRO_TP, SYNPRO_PP, SYNPRO_MICRO_BATCH, SYNPRO_GLOBAL_BATCH,
#   SYNPRO_EVAL_INTERVAL, SYNPRO_SAVE_INTERVAL, SYNPRO_CHUNK_EVALS, SYNPRO_NPROC (ranks per node)
#   SYNPRO_RUN_DIR        default runs/synpro-<model>-<job id> (smoke: runs/synpro-smoke-<job id>)
#   SYNPRO_PYTHON         interpreter with synpro_megatron installed (default python3 on PATH)
#   SYNPRO_RUNNER=fake    fake stage outputs: tests the Slurm plumbing without training
#   SYNPRO_SRUN_ARGS      extra flags for the multi-node training srun (e.g. pyxis --container-image=...)
#   SYNPRO_REQUEUE_ON     signals that requeue the job (default "USR1"; SIGTERM also comes from
#                         scancel, which must not requeue; add TERM where preemption sends it)
#   SYNPRO_MAX_REQUEUES   default 20

set -euo pipefail

PYTHON=${SYNPRO_PYTHON:-python3}
JOB=${SLURM_JOB_ID:-local}
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
say() { echo "[synpro $(date +%H:%M:%S)] $*"; }

if [ "${SYNPRO_SMOKE:-0}" = 1 ]; then
    MODEL=tiny
    NNODES=1  # smoke runs on the first node whatever the allocation
    NPROC=${SYNPRO_NPROC:-1}
    TP=${SYNPRO_TP:-1}; PP=${SYNPRO_PP:-1}
    MICRO=${SYNPRO_MICRO_BATCH:-2}; GLOBAL=${SYNPRO_GLOBAL_BATCH:-8}
    TOKENS=${SYNPRO_TOKENS:-$((40 * 8 * 256))}  # 40 steps of tiny
    ROUNDS=${SYNPRO_ROUNDS:-1}
    EVAL=${SYNPRO_EVAL_INTERVAL:-10}; SAVE=${SYNPRO_SAVE_INTERVAL:-20}; CHUNK=${SYNPRO_CHUNK_EVALS:-2}
    RUN_DIR=${SYNPRO_RUN_DIR:-runs/synpro-smoke-$JOB}
    export CUDA_VISIBLE_DEVICES=""  # CPU, even on a GPU node
else
    MODEL=$SYNPRO_MODEL
    NPROC=${SYNPRO_NPROC:-${SLURM_GPUS_ON_NODE:-8}}
    TP=${SYNPRO_TP:-$SYNPRO_DEFAULT_TP}; PP=${SYNPRO_PP:-$SYNPRO_DEFAULT_PP}
    MICRO=${SYNPRO_MICRO_BATCH:-$SYNPRO_DEFAULT_MICRO_BATCH}; GLOBAL=${SYNPRO_GLOBAL_BATCH:-$SYNPRO_DEFAULT_GLOBAL_BATCH}
    TOKENS=${SYNPRO_TOKENS:-$SYNPRO_DEFAULT_TOKENS}
    ROUNDS=${SYNPRO_ROUNDS:-3}
    EVAL=${SYNPRO_EVAL_INTERVAL:-500}; SAVE=${SYNPRO_SAVE_INTERVAL:-1000}; CHUNK=${SYNPRO_CHUNK_EVALS:-2}
    RUN_DIR=${SYNPRO_RUN_DIR:-runs/synpro-$MODEL-$JOB}
fi
mkdir -p "$RUN_DIR"

if [ -n "${SYNPRO_CONFIG:-}" ]; then
    CONFIG=$SYNPRO_CONFIG
    MODEL="(from $CONFIG)"
else
    CONFIG=$RUN_DIR/slurm_config.yaml
    if [ -n "${SYNPRO_DATA:-}" ]; then
        DATA_LINE="data: $SYNPRO_DATA"
    elif [ -n "${SYNPRO_INPUT:-}" ]; then
        DATA_LINE="input: $SYNPRO_INPUT"
    elif [ "${SYNPRO_SMOKE:-0}" = 1 ]; then
        DATA_LINE="input: $("$PYTHON" -c 'import os, synpro_megatron as s; print(os.path.join(os.path.dirname(s.__file__), "assets", "web_sample.jsonl.gz"))')"
    else
        say "error: set SYNPRO_DATA (prepared prefix), SYNPRO_INPUT (JSONL) or SYNPRO_CONFIG" >&2
        exit 2
    fi
    # synthesis: srun over SYNTH_NODES x SYNTH_TASKS ranks (the controller's CliRunner launches it)
    SYNTH_LINE=", vllm_tp: ${SYNPRO_VLLM_TP:-1}"
    if [ "${SYNPRO_SMOKE:-0}" = 1 ]; then
        SYNTH_LINE="$SYNTH_LINE, synthesis_nodes: ${SYNPRO_SYNTH_NODES:-1}, synthesis_tasks_per_node: ${SYNPRO_SYNTH_TASKS_PER_NODE:-1}"
    else
        SYNTH_LINE="$SYNTH_LINE, synthesis_nodes: ${SYNPRO_SYNTH_NODES:-${SLURM_JOB_NUM_NODES:-$NNODES}}"
        if [ -n "${SYNPRO_SYNTH_TASKS_PER_NODE:-}" ]; then
            SYNTH_LINE="$SYNTH_LINE, synthesis_tasks_per_node: $SYNPRO_SYNTH_TASKS_PER_NODE"
        fi
    fi
    GEN_ARGS=""
    if [ -n "${SYNPRO_GENERATOR:-}" ]; then GEN_ARGS="--generator, \"$SYNPRO_GENERATOR\""; fi
    if [ "${SYNPRO_SMOKE:-0}" = 1 ]; then
        # every stage in minutes: any improvement counts as flat (the first plateau check is one),
        # one GRPO step per kind on two prompts, a few documents rewritten per kind
        EXTRA_LINES="plateau: {window: 1, patience: 1, rel_threshold: 10.0, min_steps_after_refresh: 0}
generators: {train_args: [--steps, \"1\", --num-prompts, \"2\", --num-generations, \"2\", --max-completion-length, \"16\", --max-source-tokens, \"48\"${GEN_ARGS:+, $GEN_ARGS}], synth_args: [--limit, \"${SYNPRO_SYNTH_LIMIT:-4}\", --batch-size, \"1\", --max-new-tokens, \"128\", --max-source-tokens, \"96\", --few-shot, --temperature, \"0.5\"]}"
    else
        EXTRA_LINES="${GEN_ARGS:+generators: {train_args: [$GEN_ARGS]\}}"
    fi
    cat > "$CONFIG.tmp" <<YAML
# written by slurm/common.sh for job $JOB
model: $MODEL
$DATA_LINE
token_budget: $TOKENS
max_rounds: $ROUNDS
parallel: {tp: $TP, pp: $PP, nproc_per_node: $NPROC, nnodes: $NNODES$SYNTH_LINE}
train: {micro_batch: $MICRO, global_batch: $GLOBAL, eval_interval: $EVAL, save_interval: $SAVE, chunk_evals: $CHUNK}
$EXTRA_LINES
YAML
    mv "$CONFIG.tmp" "$CONFIG"
fi

if [ "$NNODES" -gt 1 ]; then
    # ask the first node for its address rather than resolving its name here: node names need
    # not resolve on every host (and on the local test cluster they do not resolve at all)
    head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    MASTER_ADDR=$(srun --nodes=1 --ntasks=1 -w "$head_node" hostname --ip-address | awk '{print $1}')
    export MASTER_ADDR
    export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
    say "multi-node: $NNODES nodes, rendezvous $MASTER_ADDR:$MASTER_PORT"
fi

say "job $JOB restart ${SLURM_RESTART_COUNT:-0}: model $MODEL, config $CONFIG, run dir $RUN_DIR"
"$PYTHON" -m synpro_megatron.cli run --config "$CONFIG" --run-dir "$RUN_DIR" --runner "${SYNPRO_RUNNER:-cli}" &
CTRL=$!
STOP=""
on_signal() {
    STOP=$1
    say "got SIG$1: stopping the running stage (it checkpoints), then requeue"
    kill -TERM "$CTRL" 2>/dev/null || true
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

while :; do
    set +e
    wait "$CTRL"
    rc=$?
    set -e
    # a trapped signal interrupts `wait` (rc > 128) while the controller is still checkpointing
    if [ "$rc" -gt 128 ] && kill -0 "$CTRL" 2>/dev/null; then continue; fi
    break
done

stage=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["stage"])' "$RUN_DIR/state.json" 2>/dev/null || echo unknown)
say "controller exited with $rc at stage '$stage'"
if [ "$stage" = done ]; then
    exit 0
fi
if [ -n "$STOP" ] && [[ " ${SYNPRO_REQUEUE_ON:-USR1} " == *" $STOP "* ]] && [ -n "${SLURM_JOB_ID:-}" ]; then
    if [ "${SLURM_RESTART_COUNT:-0}" -lt "${SYNPRO_MAX_REQUEUES:-20}" ]; then
        say "requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    say "not requeueing: already restarted ${SLURM_RESTART_COUNT} times (SYNPRO_MAX_REQUEUES)"
fi
exit "$rc"
