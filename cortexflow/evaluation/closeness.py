"""How close each metric's feature space is to the simulator's own code.

An identification metric rewards a decoder for getting right what its feature
space encodes. On a simulated study that space can sit close to what the
simulated voxels encode (early visual voxels: Gabor energy), and then a decoder
that learns the simulator's code scores well there whatever it does in pixels.
A reader should see that closeness beside the metric (docs/analysis-plan.md,
section 5). It is measured as representational similarity (Kriegeskorte et al.
2008): the Spearman correlation between the test images' pairwise distances
(1 - Pearson r) in the feature space and in their noise-free early visual
responses, which the simulator wrote to its ground truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow.errors import CortexflowInputError

#: feature space -> the metrics that use it
SPACES = {
    "pixels": ("pixcorr", "two_way_id_pixel"),
    "lowpass_pixels": ("two_way_id_lowpass",),
    "features": ("two_way_id_feature", "two_way_id_within_category"),
    "hog": ("two_way_id_hog",),
}
CLOSENESS_COLUMNS = ["subject", "space", "metrics", "closeness", "n_items", "n_voxels"]


def _upper_distances(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1)
    v = v - v.mean(axis=1, keepdims=True)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return (1.0 - v @ v.T)[np.triu_indices(len(v), k=1)]


def representational_closeness(space: np.ndarray, responses: np.ndarray) -> float:
    """Spearman r between the items' pairwise correlation distances in ``space`` and in ``responses``."""
    from scipy.stats import spearmanr

    if len(space) != len(responses) or len(space) < 3:
        raise ValueError(f"need the same >= 3 items in both, got {len(space)} and {len(responses)}")
    return float(spearmanr(_upper_distances(space), _upper_distances(responses)).statistic)


def early_visual_responses(ground_truth: str | Path, ids: np.ndarray) -> np.ndarray:
    """(n_items, n_voxels) noise-free image responses of a simulated subject's early visual voxels."""
    folder = Path(ground_truth)
    tables, arrays = sorted(folder.glob("*_voxels.tsv")), sorted(folder.glob("*_responses.npz"))
    if len(tables) != 1 or len(arrays) != 1:
        raise CortexflowInputError("expected one *_voxels.tsv and one *_responses.npz", path=folder,
                                   fix="pass derivatives/ground_truth/sub-XX of a study written by cortexflow simulate")
    voxels = pd.read_csv(tables[0], sep="\t")
    with np.load(arrays[0], allow_pickle=False) as f:
        if "image" not in f.files:
            raise CortexflowInputError("no noise-free image responses", path=arrays[0])
        amplitudes, rows, stim_ids = f["image"], f["image_voxels"], f["image_ids"].astype(str)
    early = voxels.iloc[rows]["region"].to_numpy() == "early_visual"
    index = {s: n for n, s in enumerate(stim_ids)}
    missing = [i for i in ids if i not in index]
    if missing or not early.any():
        raise CortexflowInputError(f"{len(missing)} test images have no noise-free response, "
                                   f"{int(early.sum())} early visual voxels", path=arrays[0],
                                   fix="use the ground truth of the study that was evaluated")
    return amplitudes[early][:, [index[i] for i in ids]].T


def closeness_table(truth: np.ndarray, ids: np.ndarray, ground_truth: str | Path, *, subject: str,
                    image_features: dict | None, lowpass_sigma: float) -> pd.DataFrame:
    """One row per feature space: its closeness to the subject's noise-free early visual code."""
    from cortexflow.evaluation.evaluate import lowpass_images
    from cortexflow.evaluation.features import HOGFeatures, make_image_features

    truth = np.asarray(truth, dtype=np.float64)
    responses = early_visual_responses(ground_truth, np.asarray(ids).astype(str))
    spaces = {"pixels": truth, "lowpass_pixels": lowpass_images(truth, lowpass_sigma),
              "features": make_image_features(image_features)(truth), "hog": HOGFeatures()(truth)}
    return pd.DataFrame([(subject, name, ", ".join(SPACES[name]), representational_closeness(x, responses),
                          len(truth), responses.shape[1]) for name, x in spaces.items()], columns=CLOSENESS_COLUMNS)
