"""Where models run: the one resolution of the config's ``device`` key.

A GPU node whose GPU torch cannot use (most often: a driver older than the
CUDA build of the installed torch wheel needs; docs/gpu.md) is not silently
treated as a CPU node: when the job was given GPUs -- by ``CUDA_VISIBLE_DEVICES``
or SLURM's ``SLURM_JOB_GPUS``/``SLURM_STEP_GPUS``/``SLURM_GPUS_ON_NODE`` -- but
CUDA is unusable, ``device: cuda`` fails with the cause and the fix, and
``device: auto`` logs a warning with both before it falls back to the CPU
(``auto`` is meant to run anywhere; ``cuda`` is how a config says "a GPU or
nothing").
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from cortexflow.errors import CortexflowInputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("cortexflow.devices")

#: Environment variables through which a scheduler hands a job its GPUs.
GPU_ENV = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "SLURM_GPUS_ON_NODE")

_said: set[str] = set()


def assigned_gpus(environ: "os._Environ[str] | dict[str, str] | None" = None) -> str | None:
    """``NAME=value`` of the first variable saying this job was given GPUs, or None.

    An empty ``CUDA_VISIBLE_DEVICES``, ``-1`` or SLURM's ``NoDevFiles`` hides every
    GPU on purpose; ``SLURM_GPUS_ON_NODE=0`` gives none."""
    env = os.environ if environ is None else environ
    for name in GPU_ENV:
        value = (env.get(name) or "").strip()
        if not value or value in ("-1", "NoDevFiles", "none") or (name == "SLURM_GPUS_ON_NODE" and value == "0"):
            if name == "CUDA_VISIBLE_DEVICES" and name in env:
                return None  # hidden on purpose: SLURM variables do not override it
            continue
        return f"{name}={value}"
    return None


def _driver_version() -> str | None:
    """The NVIDIA kernel driver's version, read without CUDA (None where there is none)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        if word[:1].isdigit() and word.count(".") >= 1:
            return word
    return None


def _cuda_available() -> tuple[bool, str | None]:
    """(torch.cuda.is_available(), the warning torch gave while finding out, if any)."""
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    reason = next((str(w.message).splitlines()[0] for w in caught if "CUDA" in str(w.message)), None)
    return available, reason


def unusable_gpu_message(given: str, reason: str | None = None) -> tuple[str, str]:
    """(problem, fix) for a job that was given GPUs (``given``: the variable) but cannot use them."""
    import torch

    base = torch.__version__.split("+")[0]
    built = torch.version.cuda
    driver = _driver_version()
    problem = (f"this job was given GPUs ({given}) but torch {torch.__version__} cannot use them: "
               + (f"the wheel is built for CUDA {built}" if built else "the wheel is a CPU-only build")
               + (f", the NVIDIA driver here is {driver}" if driver else ", no NVIDIA driver was found")
               + (f" ({reason})" if reason else ""))
    if built:
        fix = (f"CUDA {built} needs a recent NVIDIA driver (CUDA 13: R580 or newer, Turing or newer GPUs): ask "
               f"for nodes with one, or install a build of the same torch for an older CUDA, e.g. "
               f"`pip install torch=={base} --index-url https://download.pytorch.org/whl/cu126` "
               f"(docs/gpu.md; the builds on offer per version: https://pytorch.org/get-started/previous-versions/)")
    else:
        fix = (f"install a CUDA build of torch, e.g. `pip install torch=={base} --index-url "
               f"https://download.pytorch.org/whl/cu130` (docs/gpu.md)")
    return problem, fix


def resolve_device(device: "str | torch.device") -> "torch.device":
    """``device`` as a torch device (``auto``: CUDA when available); CUDA asked for without CUDA is an error.

    With ``auto`` on a job that was given GPUs it cannot use, a warning names the
    cause and the fix (once per process) and the CPU is used."""
    import torch

    if str(device) == "auto":
        available, reason = _cuda_available()
        if available:
            configure_cuda(torch.device("cuda"))
            return torch.device("cuda")
        given = assigned_gpus()
        if given is not None:
            problem, fix = unusable_gpu_message(given, reason)
            if problem not in _said:
                _said.add(problem)
                log.warning("device auto: TRAINING ON THE CPU although %s. Fix: %s. "
                            "(Set device: cuda to make this an error.)", problem, fix)
        return torch.device("cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda":
        available, reason = _cuda_available()
        if not available:
            given = assigned_gpus()
            if given is not None:
                problem, fix = unusable_gpu_message(given, reason)
                raise CortexflowInputError(f"device {str(device)!r} was asked for but {problem}", fix=fix)
            raise CortexflowInputError(f"device {str(device)!r} was asked for but CUDA is not available",
                                       fix="set device: cpu (or auto) in the config, or run on a GPU node")
        configure_cuda(resolved)
    return resolved


def tf32_wanted(environ: "os._Environ[str] | dict[str, str] | None" = None) -> bool:
    """Config ``cuda_tf32`` as the workflow hands it to its jobs (``CORTEXFLOW_CUDA_TF32``, set by the
    Snakefile); on when unset, e.g. in a Python session."""
    env = os.environ if environ is None else environ
    return (env.get("CORTEXFLOW_CUDA_TF32") or "1").strip().lower() not in ("0", "false", "no", "off")


def configure_cuda(device: "torch.device", tf32: bool | None = None) -> None:
    """Per-process CUDA settings for ``device``: TF32 matrix products (and convolutions) when
    ``tf32`` (default: :func:`tf32_wanted`). Called by :func:`resolve_device` when it picks CUDA.

    TF32 keeps fp32 storage and rounds the inputs of matrix products to a 10-bit
    mantissa on Ampere and newer GPUs, several times faster than full fp32;
    training runs in bf16 autocast there anyway, so this speeds up only what
    stays in fp32. Logged once per process; nothing on the CPU."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return
    tf32 = tf32_wanted() if tf32 is None else tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    message = f"CUDA: TF32 matrix products {'on' if tf32 else 'off'} (config cuda_tf32)"
    if message not in _said:
        _said.add(message)
        log.info(message)
