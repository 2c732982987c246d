#!/usr/bin/env bash
# Proof on a GPU machine: a few real training steps of the full-size policy (random weights, synthetic LIBERO-shaped
# batches; real weights with --vlm_path), baseline and CRaFT, LoRA r64, bf16 frozen weights, batch 8, through the
# trainer's own code; then the same with 2-process DDP when 2 GPUs exist. One JSON line per run (step time,
# samples/s, peak torch.cuda.max_memory_allocated, SDPA kernel, weight dtypes, torch / CUDA versions, GPU name).
# About 2-4 minutes on one H100-class GPU. Without CUDA it says so in one line and exits 0.
#
#   bash vla-scripts/gpu_check.sh
#   bash vla-scripts/gpu_check.sh --vlm_path pretrained_models/prism-qwen25-extra-dinosiglip-224px-0_5b
#   bash vla-scripts/gpu_check.sh --gradient_checkpointing True --batch_size 16
#   bash vla-scripts/gpu_check.sh --device cpu --preset tiny --batch_size 2 --lora_rank 8   # dry run, CPU (gloo)
#
# Flags go to vla-scripts/benchmarks/gpu_check.py. Environment: PYTHON (default .venv/bin/python), GPU_CHECK_DDP
# (auto: 2 processes on 2+ GPUs, or on the CPU dry run; 0: never; 1: always).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PY" ]]; then
  echo "gpu_check.sh: $PY not found; run 'bash setup.sh' first (or set PYTHON)" >&2
  exit 1
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-3}"
CHECK="$ROOT/vla-scripts/benchmarks/gpu_check.py"

dry=0
for arg in "$@"; do
  [[ "$arg" == "cpu" || "$arg" == "--device=cpu" ]] && dry=1
done
gpus="$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null)"
if [[ "$dry" == 0 && "$gpus" == 0 ]]; then
  exec "$PY" "$CHECK" "$@"  # prints the one-line "no CUDA device" notice and exits 0
fi

"$PY" "$CHECK" "$@"
ddp="${GPU_CHECK_DDP:-auto}"
if [[ "$ddp" == "1" || ( "$ddp" == "auto" && ( "$gpus" -ge 2 || "$dry" == 1 ) ) ]]; then
  "$PY" -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 2 "$CHECK" "$@"
fi
