#!/usr/bin/env bash
# One-call GPU acceptance check (benchmarks/gpu_acceptance.py): throughput, memory, resume after
# SIGTERM, and a short MoNuSeg training, all with `recipe: gpu`; prints one table. From the
# repository root:
#   benchmarks/gpu_check.sh              # on a GPU machine (about 9 min on one H100/H200)
#   benchmarks/gpu_check.sh --cpu-smoke  # toy sizes on the CPU (what CI runs)
# Builds .venv with the README's setup (make setup) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make setup
monuseg=../shared/data/monuseg
args=("$@")
[ -d "$monuseg" ] && args+=(--monuseg "$monuseg")
PYTHONPATH=src exec .venv/bin/python benchmarks/gpu_acceptance.py "${args[@]}"
