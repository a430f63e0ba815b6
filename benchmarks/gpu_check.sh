#!/usr/bin/env bash
# One prepared check of the GPU paths, at most about 8 minutes on one GPU:
#   1. AMP: a smoke pseudo_label run with bf16 and with fp16 autocast (finite losses, an evaluation);
#   2. DDP over NCCL: 2 processes of a smoke run on the visible GPU(s) (with one GPU both share it;
#      skipped, with the reason, if NCCL is unavailable);
#   3. the paper-scale step: ResNet-50 FPN at 800 px with bf16 (seconds per step, peak memory);
#   4. the gpu-marked tests (pytest -m gpu).
# It prints one summary line per check at the end.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, with .venv installed (make install)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-$(mktemp -d)}
DATA="$OUT/data"
declare -a SUMMARY

step() {  # step NAME TIMEOUT_SECONDS COMMAND...
    local name=$1 limit=$2; shift 2
    local log="$OUT/$name.log" start=$SECONDS
    if timeout "$limit" "$@" >"$log" 2>&1; then
        SUMMARY+=("PASS  $name ($((SECONDS - start)) s): $(tail -n 1 "$log")")
    else
        SUMMARY+=("FAIL  $name ($((SECONDS - start)) s, exit $?): $(tail -n 3 "$log" | tr '\n' ' ')")
    fi
}

"$PY" - <<'EOF' || { echo "no CUDA device: nothing to check"; exit 0; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
print(f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}; "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
EOF
"$PY" -m ssodlib --quiet data synth --scale smoke --out "$DATA/synth-smoke" >/dev/null

for amp in bf16 fp16; do
    step "amp-$amp" 120 "$PY" -m ssodlib --quiet train --scale smoke --method pseudo_label --device cuda \
        --data-root "$DATA" --out "$OUT/amp-$amp" --set amp=$amp --set iterations=12 --set burn_in=4
done

step ddp-nccl 180 "$PY" - "$DATA" "$OUT" <<'EOF'
import os, subprocess, sys
data, out = sys.argv[1], sys.argv[2]
import torch.distributed as dist
if not dist.is_nccl_available():
    print("skipped: this torch build has no NCCL"); sys.exit(0)
cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ssodlib", "--quiet",
       "train", "--scale", "smoke", "--method", "pseudo_label", "--device", "cuda", "--data-root", data,
       "--out", f"{out}/ddp", "--set", "iterations=8", "--set", "burn_in=4"]
proc = subprocess.run(cmd, capture_output=True, text=True)
print(proc.stdout[-2000:], proc.stderr[-3000:])
if proc.returncode != 0 and "Duplicate GPU" in proc.stderr:
    print("skipped: NCCL refuses two ranks on one GPU (Duplicate GPU detected); needs 2 GPUs")
    sys.exit(0)
if proc.returncode == 0:
    print("2 ranks over NCCL finished")
sys.exit(proc.returncode)
EOF

step paper-step 240 "$PY" benchmarks/train_step.py --device cuda --backbone resnet50 --fpn-channels 256 \
    --representation-size 1024 --size 800 --amp bf16 --steps 10 --warmup 3

step gpu-tests 180 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests

echo
echo "GPU check summary (logs in $OUT):"
printf '  %s\n' "${SUMMARY[@]}"
