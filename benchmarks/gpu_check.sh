#!/usr/bin/env bash
# One prepared check of the GPU paths, at most about 8 minutes on one GPU:
#   1. AMP: a smoke pseudo_label run with bf16 and with fp16 autocast (finite losses, an evaluation);
#   2. DDP: 2 processes of a smoke run over NCCL; on one GPU NCCL refuses two ranks ("Duplicate GPU
#      detected"), so there the same 2-rank run goes over gloo's CUDA collectives (the multi-rank code
#      paths: sharded evaluation, gathers, DDP's gradient sync) and a 1-rank NCCL run checks NCCL itself;
#   3. the paper-scale step: supervised ResNet-50 FPN at 800 px with bf16, in the matched setting (FPN
#      256, 1024-wide box head, 512 RoIs per image): seconds per step and peak memory;
#   4. the gpu-marked tests (pytest -m gpu).
# The step limits add up to 7 minutes (450 s). It prints one summary line per check at the end.
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
    step "amp-$amp" 75 "$PY" -m ssodlib --quiet train --scale smoke --method pseudo_label --device cuda \
        --data-root "$DATA" --out "$OUT/amp-$amp" --set amp=$amp --set iterations=12 --set burn_in=4
done

step ddp 120 "$PY" - "$DATA" "$OUT" <<'EOF'
import os, subprocess, sys
data, out = sys.argv[1], sys.argv[2]
import torch, torch.distributed as dist


def run(ranks, backend, name):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m",
           "ssodlib", "--quiet", "train", "--scale", "smoke", "--method", "pseudo_label", "--device", "cuda",
           "--data-root", data, "--out", f"{out}/{name}", "--set", "iterations=8", "--set", "burn_in=4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SSOD_DIST_BACKEND": backend})
    print(f"--- {ranks} rank(s) over {backend}: exit {proc.returncode}", proc.stdout[-1500:], proc.stderr[-2500:])
    return proc


if not dist.is_nccl_available():
    print("skipped: this torch build has no NCCL"); sys.exit(0)
two = run(2, "nccl", "ddp-nccl")
if two.returncode == 0:
    print("2 ranks over NCCL finished"); sys.exit(0)
if "Duplicate GPU" not in two.stderr or torch.cuda.device_count() > 1:
    sys.exit(two.returncode)
gloo, one = run(2, "gloo", "ddp-gloo"), run(1, "nccl", "ddp-nccl-1")
print(f"one GPU: NCCL refuses 2 ranks (Duplicate GPU detected); 2 ranks over gloo on CUDA: "
      f"{'ok' if gloo.returncode == 0 else 'FAILED'}; 1 rank over NCCL: {'ok' if one.returncode == 0 else 'FAILED'}")
sys.exit(gloo.returncode or one.returncode)
EOF

step paper-step 120 "$PY" benchmarks/train_step.py --device cuda --methods supervised --families faster_rcnn \
    --baseline none --matched --backbone resnet50 --size 800 --amp bf16 --steps 10 --warmup 3

step gpu-tests 60 "$PY" -m pytest -q -p no:cacheprovider -m gpu tests

echo
echo "GPU check summary (logs in $OUT):"
printf '  %s\n' "${SUMMARY[@]}"
