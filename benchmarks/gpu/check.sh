#!/usr/bin/env bash
# Every GPU check of alignlib in one run, for a lent GPU machine with no package registry (see
# ../shared/gpu/README.md). Prepare on the CPU machine with benchmarks/gpu/prepare.sh, then run
# this from the repository root on the GPU machine (at most ~10 min, one device call). Each
# check has its own time limit and prints one `RESULT <name>: ...` line; every log is appended
# to $OUT/all.log (the device tool returns at most 8 files).
#   DRY=1 bash benchmarks/gpu/check.sh    rehearse every command here first (the project's
#                                         .venv, the checkout installed non-editable as there,
#                                         a 2-layer stand-in, --device cpu, the gpu tests
#                                         on the CPU): no device time goes to a typo
#   CHECKS="install stand_in pytest_gpu"  run only the checks named
set -uo pipefail
cd "$(dirname "$0")/../.."
LOGS=/tmp/gpu-check
OUT=${OUT:-$LOGS}
rm -rf "$LOGS"
mkdir -p "$LOGS" "$OUT"
rm -f "$OUT/results.txt" "$OUT/all.log"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 \
  TOKENIZERS_PARALLELISM=false
# -P: the checkout's alignlib/ must not shadow the installed package (whose package-dir mapping
# provides alignlib.algorithms, .rewards and .rollout), so the working directory stays off sys.path.
if [[ ${DRY:-0} == 1 ]]; then  # the checkout installed as on the GPU machine (not editable)
  PY=".venv/bin/python -P" DEVICE=cpu LAYERS=2 SITE=/tmp/site-dry
  export ALIGNLIB_TEST_ACCELERATOR=cpu  # the gpu tests run their own code on the CPU
else
  PY="python3 -P" DEVICE=cuda LAYERS=24 SITE=/tmp/site
fi
export PYTHONPATH=$SITE
MODEL=/tmp/qwen05b-$LAYERS
RUNS=/tmp/gpu-runs
rm -rf "$RUNS"

BUDGET=${BUDGET:-560}
[[ ${DRY:-0} == 1 ]] && BUDGET=99999  # seconds for all checks: the device call's limit is 600

check() {  # check NAME SECONDS COMMAND...: run it, keep its log, print one result line
  local name=$1 limit=$2; shift 2
  [[ -n ${CHECKS:-} && " $CHECKS " != *" $name "* ]] && return  # CHECKS="a b": only those
  [[ ${DRY:-0} == 1 ]] && limit=$((limit * 6))  # a CPU is slower; the rehearsal checks commands
  local left=$((BUDGET - SECONDS))
  # Less than half its limit left: skip it rather than cut it off halfway (its time is lost)
  if ((left < 15 || left < limit / 2)); then
    echo "RESULT $name: skipped (budget spent)" | tee -a "$OUT/results.txt"; return
  fi
  ((limit > left)) && limit=$left
  local began=$SECONDS
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  local tail_line
  tail_line=$(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 1 | cut -c1-160)
  echo "RESULT $name: rc=$rc in $((SECONDS - began)) s | $tail_line" | tee -a "$OUT/results.txt"
  { echo "==== $name (rc=$rc)"; cat "$LOGS/$name.log"; } >>"$OUT/all.log"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | sed 's/^/GPU: /'
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# The checkout installed non-editable into $SITE, as on the GPU machine; there first the carried
# wheels of what its image lacks (DRY: the project's .venv has them).
PIP="$PY -m pip install -q --no-index --no-deps --no-compile --target $SITE"
WHEELS=$([[ ${DRY:-0} == 1 ]] || echo "$PIP --upgrade .whl/*.whl &&")
check install 60 bash -c "rm -rf $SITE && $WHEELS $PIP --no-build-isolation . && rm -rf build && \
  $PY -c 'import transformers, trl, peft, torch; print(\"installed: transformers\", \
  transformers.__version__, \"trl\", trl.__version__, \"peft\", peft.__version__, \"torch\", \
  torch.__version__)'"
check stand_in 45 $PY benchmarks/gpu/make_stand_in.py --tokenizer .gpu_assets/tokenizer \
  --layers $LAYERS --out "$MODEL"

# 1. The gpu tests: CPU/GPU parity for every step kind, bf16-mixed learning, resume, LoRA, eval;
#    packed (block mask, FlashAttention varlen when installed) equals padded on CUDA.
check pytest_gpu 120 $PY -m pytest -q -m gpu tests/test_gpu.py tests/test_packing.py -p no:cacheprovider

# 2. The recipes the issue names, with the model and data stood in by local ones.
check recipe_dpo 90 $PY -m alignlib.cli train configs/gpu/dpo_ultrafeedback.yaml \
  model.name_or_path=$MODEL data.path=builtin:gsm8k_pairs data.limit=128 data.max_prompt_length=256 \
  data.max_completion_length=128 train.max_steps=6 checkpoint.every=3 output_dir=$RUNS/dpo \
  logging.progress=false
check recipe_hpt 90 $PY -m alignlib.cli train configs/gpu/hpt_qwen2.5_math_1.5b.yaml \
  model.name_or_path=$MODEL data.path=builtin:arithmetic_prompts rollout.engine=transformers \
  rollout.n=4 rollout.max_new_tokens=64 online.prompts_per_step=8 online.micro_batch_size=16 \
  online.max_demonstration_length=128 algorithm.params.max_response_length=64 eval=null \
  train.max_steps=3 checkpoint.every=null output_dir=$RUNS/hpt logging.progress=false

# 3. alignlib vs TRL 1.16 on the same stand-in, bf16 mixed precision on both sides; first what
#    the first GPU call (2026-11-27) could not give: GRPO matched (gradient checkpointing off on
#    both), then both checkpointed (memory against memory).
check bench_grpo 120 $PY benchmarks/grpo_vs_trl.py --model $MODEL --device $DEVICE \
  --prompts 8 --n 8 --max-new 128 --micro 16 --steps 6 --warmup 2
check bench_dpo 90 $PY benchmarks/dpo_vs_trl.py --model $MODEL --device $DEVICE --pairs 16 \
  --micro 8 --max-length 384 --steps 12 --warmup 3
check bench_grpo_ckpt 120 $PY benchmarks/grpo_vs_trl.py --model $MODEL --device $DEVICE \
  --prompts 8 --n 8 --max-new 128 --micro 16 --steps 6 --warmup 2 --gradient-checkpointing
# 4. With time left (each measured once already): one FSDP2 rank between two plain runs, the
#    rollout alone, DPO with padding-free micro-batches.
check fsdp2_vs_single 90 $PY benchmarks/data_parallel.py fsdp2 --model $MODEL --steps 6
check bench_rollout 60 $PY benchmarks/rollout_vs_trl.py --model $MODEL --device $DEVICE \
  --prompts 8 --n 8 --max-new 128 --repeats 3
check bench_dpo_packing 90 $PY benchmarks/dpo_vs_trl.py --model $MODEL --device $DEVICE \
  --pairs 16 --micro 8 --max-length 384 --steps 12 --warmup 3 --packing
for name in pytest_gpu recipe_dpo recipe_hpt bench_grpo bench_dpo bench_grpo_ckpt fsdp2_vs_single \
  bench_rollout bench_dpo_packing; do
  [[ -f $LOGS/$name.log ]] || continue
  echo "---- $name"; grep -E "passed|failed|error|on cuda|done:|s/step|ratio|alignlib|TRL|plain" \
    "$LOGS/$name.log" 2>/dev/null | tail -n 8
done
