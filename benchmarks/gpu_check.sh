#!/usr/bin/env bash
# The GPU check of brainfm-kit, in one command on a machine with an NVIDIA GPU (about 8 minutes on an H200):
#   1. the smoke pipeline (kit reproduce --profile smoke --device cuda)  -> results/smoke_cuda.json
#   2. training throughput, the paper's setting (SwinUNETR fs48, 96^3, bf16), batch 2 and batch 8,
#      kit vs the plain MONAI loop, with the share of each step spent making the SSL views
#                                                                      -> results/train_cuda.json
#   3. whole-volume inference, bf16, 4 windows per pass                -> results/inference_cuda.json
# Every JSON holds the GPU's name. A failing step is recorded (rc) and the others still run; the
# script exits non-zero if any failed.
#
# Usage (from anywhere; run with the kit's Python environment active):
#   benchmarks/gpu_check.sh              # the check
#   benchmarks/gpu_check.sh --dry-run    # print the commands, run nothing
# Environment: PYTHON (default python), COMPILE=1 adds TrainConfig(compile=True) to the batch-8 run.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
RESULTS=benchmarks/results
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "gpu_check: unknown argument '$1' (usage: benchmarks/gpu_check.sh [--dry-run])" >&2; exit 2 ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

PAPER=(--device cuda --amp bf16 --backbone swinunetr --feature-size 48 --crop 96 --steps 30 --warmup 5
       --num-workers 8 --resolution 1 --n 8)
COMPILE_FLAG=()
[[ "${COMPILE:-0}" == "1" ]] && COMPILE_FLAG=(--compile)
SMOKE=("$PYTHON" -m kit.cli reproduce --profile smoke --device cuda --out "$WORK/smoke" --quiet)
TRAIN_B2=("$PYTHON" benchmarks/bench_train.py "${PAPER[@]}" --batch-size 2 --out "$WORK/train_b2.json")
TRAIN_B8=("$PYTHON" benchmarks/bench_train.py "${PAPER[@]}" --batch-size 8 "${COMPILE_FLAG[@]}" --out "$WORK/train_b8.json")
INFER=("$PYTHON" benchmarks/bench_inference.py --device cuda --amp bf16 --sw-batch-size 4 --out "$RESULTS/inference_cuda.json")

if [[ $DRY_RUN == 1 ]]; then
  for cmd in SMOKE TRAIN_B2 TRAIN_B8 INFER; do
    declare -n parts=$cmd
    echo "$cmd: ${parts[*]}"
  done
  exit 0
fi

# Before anything else: a GPU, or one clear line and exit 1.
if ! GPU=$("$PYTHON" - <<'EOF' 2>"$WORK/cuda_check.err"
import os, sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"no CUDA GPU visible to torch {torch.__version__} (torch.version.cuda={torch.version.cuda}, "
             f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
print(torch.cuda.get_device_name(0))
EOF
); then
  reason=$(tail -n 1 "$WORK/cuda_check.err")
  echo "gpu_check: ${reason:-the CUDA check failed}; run this script on a machine with an NVIDIA GPU" >&2
  exit 1
fi
echo "gpu_check on $GPU"
mkdir -p "$RESULTS"
export GPU_CHECK_GPU="$GPU"
failed=0

run_timed() {  # run_timed NAME CMD...: runs CMD, leaves its rc and wall seconds in $WORK/NAME.{rc,wall}
  local name=$1; shift
  local start end rc=0
  echo; echo "== $name: $*"
  start=$(date +%s.%N)
  "$@" || rc=$?
  end=$(date +%s.%N)
  echo "$rc" > "$WORK/$name.rc"
  "$PYTHON" -c "print(round($end - $start, 1))" > "$WORK/$name.wall"
  [[ $rc == 0 ]] || { echo "gpu_check: $name failed with rc $rc" >&2; failed=1; }
}

# 1. the smoke pipeline on the GPU
run_timed smoke "${SMOKE[@]}"
SMOKE_CMD="${SMOKE[*]}" "$PYTHON" - "$WORK" "$RESULTS/smoke_cuda.json" <<'EOF'
import json, os, sys, time
work, out = sys.argv[1:]
payload = {"rc": int(open(f"{work}/smoke.rc").read()), "wall_s": float(open(f"{work}/smoke.wall").read()),
           "gpu": os.environ["GPU_CHECK_GPU"], "command": os.environ["SMOKE_CMD"],
           "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
json.dump(payload, open(out, "w"), indent=2)
print(f"wrote {out}: {payload}")
EOF

# 2. training throughput: the paper's setting at batch 2, then batch 8
run_timed train_b2 "${TRAIN_B2[@]}"
run_timed train_b8 "${TRAIN_B8[@]}"
"$PYTHON" - "$WORK" "$RESULTS/train_cuda.json" <<'EOF'
import json, os, sys, time
work, out = sys.argv[1:]
runs, summary = [], []
for name in ("train_b2", "train_b8"):
    rc = int(open(f"{work}/{name}.rc").read())
    path = f"{work}/{name}.json"
    report = json.load(open(path)) if rc == 0 and os.path.exists(path) else None
    runs.append({"name": name, "rc": rc, "wall_s": float(open(f"{work}/{name}.wall").read()), "report": report})
    if report:
        kit, ref = report["results"]
        summary.append({"batch_size": report["settings"]["batch_size"], "compile": report["settings"].get("compile"),
                        "kit_samples_per_s": kit["samples_per_s"], "reference_samples_per_s": ref["samples_per_s"],
                        "ratio_kit_to_reference": report["ratio_kit_to_reference"],
                        "kit_views_share": kit.get("views_share"), "kit_tflops_per_s": kit.get("tflops_per_s"),
                        "kit_data_share": kit["data_share"]})
payload = {"benchmark": "bench_train.py on CUDA, paper setting (swinunetr fs48, crop 96, bf16), batch 2 and 8",
           "gpu": os.environ["GPU_CHECK_GPU"], "summary": summary, "runs": runs,
           "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
json.dump(payload, open(out, "w"), indent=2)
print(f"wrote {out}")
for row in summary:
    print(row)
EOF

# 3. inference (bench_inference writes its JSON, GPU name included)
run_timed inference "${INFER[@]}"

exit $failed
