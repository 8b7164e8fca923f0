#!/usr/bin/env bash
# GPU readiness check of probekit on one CUDA device (under 8 minutes): extraction throughput
# fp32 vs bf16 (ViT-B/16 timm, BERT-base HF, random weights), extract() / plain forward,
# per-layer linear probes on the GPU vs scikit-learn + joblib on the CPU (target >= 30x), the
# ALF 21-config grid vectorised vs one at a time, peak GPU memory.
#
#   bash benchmarks/gpu_check.sh             # on a machine with a GPU
#   bash benchmarks/gpu_check.sh --dry-run   # tiny sizes on the CPU: checks the script only
#
# Without CUDA (and without --dry-run) it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"
if [[ " $* " != *" --dry-run "* ]] && \
   ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check: no CUDA device visible to torch; nothing to measure (try --dry-run)."
  exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout 470 "$PY" benchmarks/gpu_check.py "$@"
