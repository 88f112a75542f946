"""The training stages on a hand-made stimulus set: same seed, same model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cortexflow.models.io import load_model
from cortexflow.training.stages import pretrain_vae_stage


def _stimuli(root):
    folder = root / "stimuli" / "images"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for n in range(12):
        Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8), mode="L").save(folder / f"img-{n}.png")
        rows.append({"stimulus_id": f"img-{n}", "modality": "image", "path": f"images/img-{n}.png",
                     "split": "train" if n < 10 else "test"})
    pd.DataFrame(rows).to_csv(root / "stimuli" / "stimuli.tsv", sep="\t", index=False)
    return root / "stimuli" / "stimuli.tsv"


def test_pretrain_vae_with_the_same_seed_gives_the_same_weights(tmp_path):
    """Each process starts torch's generator at a random seed; the stage must not depend on it."""
    stimuli = _stimuli(tmp_path)
    params = {"image": {"hidden_dims": [8, 16], "steps": 3, "batch_size": 4, "warmup_steps": 1}}
    outs = []
    for run, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)  # what a fresh process would have
        outs.append(tmp_path / f"vae{run}.pt")
        pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(outs[-1]), params=params, seed=7)
    a, b = (load_model(p).state_dict() for p in outs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(3)
    pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(tmp_path / "other.pt"), params=params, seed=8)
    c = load_model(tmp_path / "other.pt").state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)
