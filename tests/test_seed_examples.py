"""The seed library's (cortexflowx 0.4.0) four example scripts run unchanged
against this package.

``tests/seed_examples/`` holds them as shipped in the seed's sdist (byte for
byte); each runs in its own Python process with this checkout first on the
path, must exit 0, and must print what the script promises (shapes, value
ranges, sample counts). They build small models and take 8-15 s each on one
CPU thread.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = Path(__file__).resolve().parent / "seed_examples"


def _run(script: str, tmp_path: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"{script} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return float(match.group(1))


def test_the_four_examples_are_the_seeds_files():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == [
        "brain2audio_demo.py", "brain2img_demo.py", "brain2text_demo.py", "diversity_demo.py",
    ]


def test_brain2img_demo(tmp_path):
    out = _run("brain2img_demo.py", tmp_path)
    assert math.isfinite(_number(r"Training loss: (\S+)", out))
    assert "Reconstructed image shape: torch.Size([2, 3, 64, 64])" in out
    low, high = re.search(r"Pixel value range: \[(\S+), (\S+)\]", out).groups()
    assert 0.0 <= float(low) <= float(high) <= 1.0


def test_brain2audio_demo(tmp_path):
    out = _run("brain2audio_demo.py", tmp_path)
    assert math.isfinite(_number(r"Training loss: (\S+)", out))
    assert "Reconstructed mel shape: torch.Size([2, 80, 128])" in out
    # (frames - 1) * hop samples (torch.istft without padding beyond the last frame).
    assert f"Waveform shape: torch.Size([2, {127 * 256}])" in out
    assert _number(r"Duration: (\S+)s at 16kHz", out) == pytest.approx(127 * 256 / 16000, abs=0.01)


def test_brain2text_demo(tmp_path):
    out = _run("brain2text_demo.py", tmp_path)
    assert math.isfinite(_number(r"Training loss: (\S+)", out))
    # repr() of random bytes: quoted with ' or " (when the text holds a ').
    assert re.search(r"^  Sample 0: ['\"]", out, re.M) and re.search(r"^  Sample 1: ['\"]", out, re.M)


def test_diversity_demo(tmp_path):
    out = _run("diversity_demo.py", tmp_path)
    with_noise = _number(r"Diversity WITH brain_noise:\s+(\S+)", out)
    without = _number(r"Diversity WITHOUT brain_noise:\s+(\S+)", out)
    assert with_noise > 0 and without > 0
    shifts = re.findall(r"Silence\s+(\w+) \(\s*\d+ voxels\) → L2 shift = (\S+)", out)
    assert [name for name, _ in shifts] == ["V1", "FFA", "A1"] and all(float(v) > 0 for _, v in shifts)
    assert "Audio output shape: torch.Size([1, 3, 16, 32])" in out
    assert "Generated 5 diverse texts from same brain input:" in out
    assert len(re.findall(r"^  \[\d\] ['\"]", out, re.M)) == 5
    assert 1 <= _number(r"Unique: (\d+)/5", out) <= 5
