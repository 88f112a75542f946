"""docs/nsd-scale.yaml is a valid config whose model has the size docs/nsd-scale.md describes."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_nsd_config_validates_and_builds_a_dit_b2_sized_decoder():
    from snakemake.utils import validate

    config = copy.deepcopy(yaml.safe_load((REPO / "config.yaml").read_text()))
    config.update(yaml.safe_load((REPO / "docs" / "nsd-scale.yaml").read_text()))
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))

    spec = importlib.util.spec_from_file_location("bench_nsd_scale", REPO / "benchmarks" / "bench_nsd_scale.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    with torch.device("meta"):  # shapes and sizes only: no 800 MB of weights
        model, params = bench.build(torch.device("meta"))
    assert model.latent_shape == (4, 32, 32)
    assert (32 // params.patch_size) ** 2 == 256  # DiT-B/2's token count at 256 px
    dit = sum(p.numel() for p in model.dit.parameters())
    assert 130e6 < dit < 200e6, dit  # DiT-B/2 is 130M; cross-attention to brain tokens adds the rest
    assert config["sampling"]["image"]["batch_size"] * config["sampling"]["image"]["n_samples"] <= 128
