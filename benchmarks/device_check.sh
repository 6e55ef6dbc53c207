#!/usr/bin/env bash
# One-GPU device check at Anole-7b's shapes (benchmarks/device_check.py): the MoDE layer, and a
# 2-task `mode` sequence with the online and the cached teacher. Prints one JSON line last.
# Without a CUDA GPU it exits 2 at once; --dry-run runs it on the CPU at tiny shapes.
#
#   benchmarks/device_check.sh [--dry-run] [--steps N] [--direct-steps N] [--budget-s S]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON="$(command -v python3)"

dry_run=0
for arg in "$@"; do [[ "$arg" == "--dry-run" ]] && dry_run=1; done
if [[ $dry_run == 0 ]] && ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
  echo "no CUDA GPU: nvidia-smi lists no GPU on this machine; the device check needs one" \
       "(--dry-run runs it on the CPU at tiny shapes)" >&2
  exit 2
fi

export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export AWS_EC2_METADATA_DISABLED="${AWS_EC2_METADATA_DISABLED:-true}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
cd "$ROOT"
exec "$PYTHON" benchmarks/device_check.py "$@"
