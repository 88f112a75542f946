#!/usr/bin/env bash
# The GPU check: what a session with a CUDA GPU runs, in under 10 minutes, to see
# the CUDA, resume and DDP paths work and to measure the NSD-size training step.
#
#   bash benchmarks/gpu_smoke.sh          # from the repository root
#
# Needs only this repository and a Python with torch, numpy, pandas, pyarrow,
# Pillow and PyYAML (a GPU machine's image usually has them; nothing is fetched
# from the network). It uses .venv/bin/python when there is one, else python3
# (or $PYTHON). Wheels in .whl/ (docs/gpu.md says which and how to get them) are
# installed into a temporary folder first; without Snakemake and the study's
# libraries, check (a) is skipped and says so.
#
#   (a) the tiny study end to end with device: cuda (tests/test_gpu_smoke.py, Snakemake);
#   (b) kill and resume: train-decoder gets SIGTERM after its first checkpoint, the
#       rerun must resume there and finish (benchmarks/gpu_checks.py kill-resume);
#   (c) train-decoder under torchrun with 2 processes (NCCL; on a one-GPU machine
#       NCCL refuses two processes on one GPU, so they run on the CPU over gloo);
#   (d) one NSD-size training step: time, peak memory, TFLOP/s against the card's
#       bf16 peak (FlopCounterMode).
# Prints a table at the end (also $OUT/gpu_smoke.md, with JSON of each check);
# exits 1 if a check failed. GPU_SMOKE_DEVICE=cpu runs (b)-(d) on the CPU (small step);
# GPU_SMOKE_STUDY=0 skips (a).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
DEVICE=${GPU_SMOKE_DEVICE:-cuda}
OUT=${OUT:-$(mktemp -d /tmp/gpu-smoke-out.XXXXXX)}
WORK=$(mktemp -d /tmp/gpu-smoke.XXXXXX)
mkdir -p "$OUT"
TABLE=$OUT/gpu_smoke.md
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl \
        && export PYTHONPATH="$WORK/site"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! command -v cortexflow >/dev/null; then  # the workflow's rules call `cortexflow`
    mkdir -p "$WORK/bin"
    printf '#!/bin/sh\nexec %s -m cortexflow.cli "$@"\n' "$(command -v "$PY")" >"$WORK/bin/cortexflow"
    chmod +x "$WORK/bin/cortexflow"
    export PATH="$WORK/bin:$PATH"
fi

"$PY" - <<'PY' || exit 1
import torch
print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}), cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"FIGURE gpu: {p.name}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} device(s)")
PY
if [ "$DEVICE" = cuda ] && ! "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    echo "no usable CUDA device (see the line above; docs/gpu.md): nothing to check on a GPU" >&2
    exit 1
fi
printf '| check | result | seconds | figures |\n| --- | --- | --- | --- |\n' >"$TABLE"
status=0
check() {  # check NAME LIMIT_S COMMAND...: run with a time limit; a failure is a table row, not the end
    local name=$1 limit=$2 rc
    shift 2
    echo "== $name (at most $limit s)"
    timeout -k 10 "$limit" "$@"
    rc=$?
    if [ $rc -ne 0 ]; then
        status=1
        grep -q "^| ${name%% *}" "$TABLE" || printf '| %s | FAILED (exit %s%s) | - | see the output above |\n' \
            "$name" "$rc" "$([ $rc -eq 124 ] && echo ', time limit')" >>"$TABLE"
    fi
}

# (a) at most 4 minutes
if [ "${GPU_SMOKE_STUDY:-1}" = 0 ]; then
    printf '| tiny study (device cuda) | SKIPPED | - | GPU_SMOKE_STUDY=0 |\n' >>"$TABLE"
elif "$PY" -c 'import snakemake, nibabel, nilearn, jsonschema, pytest' 2>/dev/null; then
    start=$(date +%s)
    if timeout -k 10 240 "$PY" -m pytest -q -rs -m slow tests/test_gpu_smoke.py -k tiny_study; then
        printf '| tiny study (device cuda) | ok | %s | snakemake, tests/configs/tiny.yaml |\n' "$(( $(date +%s) - start ))" >>"$TABLE"
    else
        status=1
        printf '| tiny study (device cuda) | FAILED | %s | see the output above |\n' "$(( $(date +%s) - start ))" >>"$TABLE"
    fi
else
    printf '| tiny study (device cuda) | SKIPPED | - | no snakemake/nibabel/nilearn/jsonschema here: carry their wheels in .whl (docs/gpu.md) |\n' >>"$TABLE"
fi
# (b)-(d): inputs made once (seconds, on the CPU)
"$PY" benchmarks/gpu_checks.py prepare "$WORK" >/dev/null || status=1
check "kill-resume" 120 "$PY" benchmarks/gpu_checks.py kill-resume "$WORK" --device "$DEVICE" --steps 600 \
    --table "$TABLE" --json "$OUT/kill_resume.json"
check "torchrun" 90 "$PY" benchmarks/gpu_checks.py torchrun "$WORK" --device "$DEVICE" --nproc 2 \
    --table "$TABLE" --json "$OUT/torchrun.json"
size=nsd
[ "$DEVICE" = cpu ] && size=small
check "step" 100 "$PY" benchmarks/gpu_checks.py step --device "$DEVICE" --size "$size" \
    --table "$TABLE" --json "$OUT/step.json"

echo
cat "$TABLE"
rm -rf "$WORK"
exit $status
