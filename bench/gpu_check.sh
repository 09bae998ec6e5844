#!/usr/bin/env bash
# One GPU check, ready before a GPU comes: the CUDA test cases and every GPU benchmark, one table.
#
#   bench/gpu_check.sh            # CUDA when torch sees a GPU, else CPU mode (small sizes)
#   bench/gpu_check.sh --cpu      # force CPU mode (what tests/test_gpu_check.py runs)
#
# Parts (each under its own time limit; on a GPU the limits add up to < 10 minutes):
#   tests      the CUDA test cases (kernel vs reference op on the device) / CPU: the kernel tests
#              that run under the Triton interpreter ([s, b, h] in place vs packed, dispatcher)
#   kernel     bench/kernel_projection.py: kernel vs reference op, achieved bandwidth vs a measured
#              device-to-device copy (CPU: reference op vs materialised route, small shape)
#   valuation  bench/influence_overhead.py: pretraining step with --value-documents vs without,
#              kernel vs reference op on [s, b, h] (CPU: tiny model, short sequences)
#   pretrain   bench/pretrain_throughput.py: tokens/s and MFU for 400m and 1b (CPU: tiny, 3 steps)
#   generate   bench/synthesis_throughput.py: vLLM vs transformers generation (CPU: transformers, 1 doc)
#
# Prints one markdown table and writes it (with each part's full output) to
# ${GPU_CHECK_OUT:-bench/gpu_check_results.md}, ready to paste into bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-bench/gpu_check_results.md}
LOG_DIR=$(mktemp -d)
trap 'rm -rf "$LOG_DIR"' EXIT

MODE=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
if [[ "${1:-}" == "--cpu" ]]; then MODE=cpu; fi
DEVICE=$($PY -c "import torch, os; print(torch.cuda.get_device_name() if '$MODE' == 'cuda' else f'CPU ({os.cpu_count()} cores)')")

if [[ "$MODE" == "cuda" ]]; then
  TESTS=(-m pytest -q -x tests/test_kernels.py tests/test_rewards.py -k cuda)
  KERNEL=(bench/kernel_projection.py --docs 16 --tokens 2048 --d-in 4096 --d-out 4096 --k 32)
  VALUATION=(bench/influence_overhead.py --config 400m --micro-batch 4 --seq 2048 --rounds 5 --texts 256)
  PRETRAIN=(bench/pretrain_throughput.py --configs 400m 1b --tp 1 --steps 6 --limit 4000)
  GENERATE=(bench/synthesis_throughput.py --docs 16 --max-new-tokens 128 --rounds 2)
  LIMITS=(60 60 150 240 90)
else
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1
  TESTS=(-m pytest -q -x tests/test_kernels.py -k sbh)
  KERNEL=(bench/kernel_projection.py --docs 4 --tokens 64 --d-in 128 --d-out 128 --k 16 --rounds 2)
  VALUATION=(bench/influence_overhead.py --config tiny --micro-batch 2 --microbatches 1 --seq 32 --rounds 2 --skip-probe)
  PRETRAIN=(bench/pretrain_throughput.py --configs tiny --tp 1 --steps 3 --limit 600)
  GENERATE=(bench/synthesis_throughput.py --docs 1 --max-new-tokens 4 --max-source-tokens 32 --rounds 1)
  LIMITS=(300 300 600 600 600)
fi

NAMES=(tests kernel valuation pretrain generate)
CMDS=("${TESTS[*]}" "${KERNEL[*]}" "${VALUATION[*]}" "${PRETRAIN[*]}" "${GENERATE[*]}")
STATUS=()
SECS=()
SUMMARY=()
for i in "${!NAMES[@]}"; do
  name=${NAMES[$i]}
  echo "gpu_check: [$((i + 1))/${#NAMES[@]}] $name: $PY ${CMDS[$i]}" >&2
  start=$(date +%s)
  # shellcheck disable=SC2086
  timeout "${LIMITS[$i]}" $PY ${CMDS[$i]} >"$LOG_DIR/$name.log" 2>&1
  rc=$?
  SECS+=($(( $(date +%s) - start )))
  if [[ $rc -eq 0 ]]; then STATUS+=(ok); elif [[ $rc -eq 124 ]]; then STATUS+=(timeout); else STATUS+=("failed ($rc)"); fi
  # the result lines each script ends with (no warnings, no progress bars)
  SUMMARY+=("$(grep -v -i -E 'warn|^\s*$|it/s\]|^\[rank' "$LOG_DIR/$name.log" | tail -n 4 | sed 's/|/\\|/g' | paste -sd ';' -)")
done

{
  echo "## gpu_check ($MODE): $DEVICE, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "| part | status | seconds | result |"
  echo "| --- | --- | ---: | --- |"
  for i in "${!NAMES[@]}"; do
    echo "| ${NAMES[$i]} | ${STATUS[$i]} | ${SECS[$i]} | ${SUMMARY[$i]} |"
  done
  echo
  for i in "${!NAMES[@]}"; do
    echo "<details><summary>${NAMES[$i]}: $PY ${CMDS[$i]}</summary>"
    echo
    echo '```'
    grep -v -i -E 'warn' "$LOG_DIR/${NAMES[$i]}.log" | tail -n 40
    echo '```'
    echo "</details>"
  done
} >"$OUT"
sed -n '1,/^$/p;/^| part/,/^$/p' "$OUT" | uniq
echo "gpu_check: table and outputs written to $OUT" >&2
for s in "${STATUS[@]}"; do [[ "$s" == ok ]] || exit 1; done
