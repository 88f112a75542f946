#!/usr/bin/env bash
# GPU smoke run: what a session with a CUDA GPU runs to check device handling and
# to measure the figures the README quotes (docs/nsd-scale.md has their place).
#
#   bash benchmarks/gpu_smoke.sh            # from the repository root, in the project's environment
#
# 1. the device tests, with the real-GPU ones no longer skipped;
# 2. the tiny config end to end with device: cuda (tests/test_gpu_smoke.py), timed;
# 3. the NSD-sized decoder's training step, memory and sampling cost in bf16
#    (benchmarks/bench_nsd_scale.py), the figures to compare with the FLOP estimate.
# Prints one "FIGURE" line per number to copy.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: nothing to smoke-test"
p = torch.cuda.get_device_properties(0)
print(f"FIGURE gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s), torch {torch.__version__}")
PY
python -m pytest -q -rs tests/test_device_and_batching.py
start=$(date +%s)
python -m pytest -q -rs -m slow tests/test_gpu_smoke.py
echo "FIGURE tiny config end to end on cuda (pytest, incl. the simulated study): $(( $(date +%s) - start )) s"
python benchmarks/bench_nsd_scale.py --device cuda --bf16 --threads 8 --batches 16 32 64 --steps 5 \
    --json "${OUT:-.}/nsd_scale_cuda.json" | sed 's/^/FIGURE nsd-scale: /'
