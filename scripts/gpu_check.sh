#!/usr/bin/env bash
# GPU check (issues #14, #15): at most 8 minutes on one GPU. Six parts, each under its own `timeout`:
#   bench     bench/dpo_step.py --size smolvlm-256m --device cuda --dtype bf16: ours vs TRL at the real shape
#   families  one bf16 mixed-precision DPO step per family (tests/tiny_models.py ALL_FAMILIES) through train_dpo
#   autocast  under mixed_precision=bf16 an nn.Linear computes in bf16 while the parameters stay fp32
#   fsdp, zero2, zero3  two DPO steps + checkpoint + consolidated save under `accelerate launch` with
#             scripts/accelerate/{fsdp,deepspeed_zero2,deepspeed_zero3}.yaml on 1 process (ZeRO parts: "skipped"
#             when deepspeed is not installed; they do not fail the check then)
# Writes a dated log (and each part's JSON line) under $OUT when set (the device machine's output folder), else
# runs/gpu_check/. Exits 0 only when every part is ok. Needs `bash scripts/setup.sh` run first (.venv).
#
#   bash scripts/gpu_check.sh                          # on a machine with a CUDA GPU
#   GPU_CHECK_DEVICE=cpu bash scripts/gpu_check.sh     # dry run of every part on CPU at tiny size (seconds)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
DIR=${OUT:-runs/gpu_check}/gpu_check-$STAMP-$DEVICE
mkdir -p "$DIR"
LOG=$DIR/gpu_check.log
export OMP_WAIT_POLICY=PASSIVE TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

if [ ! -x "$PY" ]; then
  say "FAILED: $PY not found: run 'bash scripts/setup.sh' first"
  exit 2
fi
say "device=$DEVICE python=$PY log=$LOG"
case "$DEVICE" in
  cuda)
    if ! timeout 60 "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), torch.__version__)" >>"$LOG" 2>&1; then
      say "FAILED: no CUDA device (torch.cuda.is_available() is False). GPU_CHECK_DEVICE=cpu dry-runs the parts on CPU."
      exit 3
    fi
    nvidia-smi >>"$LOG" 2>&1 || true
    BENCH=(--size smolvlm-256m --device cuda --dtype bf16)
    LAUNCH_DEV=() T_BENCH=240 T_FAM=100 T_AUTO=40 T_ENGINE=30 ;;
  cpu)
    # the same code paths at tiny size; CUDA hidden so nothing lands on a GPU by accident
    export CUDA_VISIBLE_DEVICES="" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
    BENCH=(--size tiny --device cpu --dtype bf16 --steps 2 --warmup 1 --rounds 2 --threads "$OMP_NUM_THREADS")
    LAUNCH_DEV=(--cpu) T_BENCH=120 T_FAM=120 T_AUTO=60 T_ENGINE=120 ;;
  *) say "FAILED: GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'"; exit 2 ;;
esac

declare -A RESULT
run_part() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc
  say "part $name: start (timeout ${limit}s): $*"
  timeout -k 10 "$limit" "$@" >"$DIR/$name.out" 2>"$DIR/$name.err"
  rc=$?
  tail -n 1 "$DIR/$name.out" >"$DIR/$name.json" 2>/dev/null
  local ok
  ok=$("$PY" - "$DIR/$name.json" "$name" <<'PY'
import json, sys
try:
    d = json.loads(open(sys.argv[1]).read())
except Exception:
    print("no-json"); sys.exit()
if sys.argv[2] == "bench":  # ran end to end on both sides with comparable losses; the targets are reported
    good = d.get("loss_comparable") is True and d.get("trainable_same_both_sides") is True
    print("ok" if good else "bad-report")
    print("targets " + json.dumps(d.get("targets")) + " speedup=%s memory_ratio=%s loss_abs_diff=%s" % (
        d.get("speedup"), d.get("memory_ratio"), d.get("loss_abs_diff")), file=sys.stderr)
else:
    print("ok" if d.get("ok") is True else "not-ok")
PY
  2>>"$LOG")
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then ok="timeout"; fi
  if [ $rc -ne 0 ] && [ "$ok" = "ok" ]; then ok="exit-$rc"; fi
  RESULT[$name]=$ok
  if [ "$ok" != "ok" ]; then tail -n 30 "$DIR/$name.err" >>"$LOG"; fi
  say "part $name: $ok (rc=$rc, $((SECONDS - t0))s)"
}

run_part bench "$T_BENCH" "$PY" bench/dpo_step.py "${BENCH[@]}"
run_part families "$T_FAM" "$PY" scripts/gpu_families.py families --device "$DEVICE"
run_part autocast "$T_AUTO" "$PY" scripts/gpu_families.py autocast --device "$DEVICE"

engine_part() {  # name, accelerate config
  local name=$1 config=$2
  if [ "$name" != fsdp ] && ! "$PY" -c "import deepspeed" >/dev/null 2>&1; then
    RESULT[$name]=skipped
    say "part $name: skipped (deepspeed is not installed: pip install deepspeed)"
    return
  fi
  run_part "$name" "$T_ENGINE" "$PY" -m accelerate.commands.launch --config_file "$config" --num_processes 1 \
    --num_machines 1 --mixed_precision bf16 --dynamo_backend no "${LAUNCH_DEV[@]}" scripts/gpu_families.py engine \
    --device "$DEVICE"
}
engine_part fsdp scripts/accelerate/fsdp.yaml
engine_part zero2 scripts/accelerate/deepspeed_zero2.yaml
engine_part zero3 scripts/accelerate/deepspeed_zero3.yaml

status=0
for p in bench families autocast fsdp zero2 zero3; do
  echo "PART $p: ${RESULT[$p]}" | tee -a "$LOG"
  [ "${RESULT[$p]}" = "ok" ] || [ "${RESULT[$p]}" = "skipped" ] || status=1
done
if [ $status -eq 0 ]; then say "GPU CHECK OK ($DEVICE, ${SECONDS}s)"; else say "GPU CHECK FAILED ($DEVICE, ${SECONDS}s)"; fi
exit $status
