"""The simulated study's noise-free linear decoder (method ``noise_free_linear``).

Not a noise ceiling in NSD's sense (that is the per-voxel ncsnr of the
test repeats, ``preprocess.ncsnr.noise_ceiling``, reported in summary.md): a
linear decoder without measurement noise, which a nonlinear decoder may exceed.

The simulator knows every tuned voxel's noise-free response amplitude to every
stimulus (``derivatives/ground_truth/sub-XX/sub-XX_responses.npz``, written by
``cortexflow simulate``). Ridge regression fitted on the noise-free responses of
the dataset's own voxels to the training stimuli, and applied to their
noise-free responses to the test stimuli, shows what the same linear decoder as
the ``ridge`` baseline (same targets, same alpha grid and folds, same VAE or
sentence retrieval) would reach if the measurement carried no noise: drift,
motion, physiological and AR(1) noise, single-trial GLM error and the limited
number of repeats are all gone. What is left is the loss that the voxels' tuning
itself imposes (a Gabor-energy or category voxel is not linear in pixels) and the
autoencoder's.

It is the ``noise_free_linear`` method of the summary. A real study has no such
row: its per-voxel noise ceiling is the dataset stage's ncsnr estimate.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cortexflow.errors import CortexflowInputError
from cortexflow.models.ridge import RidgeDecoder

log = logging.getLogger("cortexflow.evaluation.noise_free_linear")


def _one_file(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise CortexflowInputError(f"expected one file '{pattern}' in the ground-truth folder, found {len(found)}",
                                   path=folder, fix="pass derivatives/ground_truth/sub-XX of the simulated study")
    return found[0]


def noise_free_responses(ground_truth: str | Path, modality: str, voxels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Stimulus ids and (n_stimuli, n_voxels) noise-free responses of the dataset's ``voxels``.

    ``ground_truth`` is one subject's ground-truth folder; ``voxels`` is the
    dataset's voxel table (grid indices ``i, j, k`` and MNI ``x, y, z``). A voxel
    that the simulation did not tune to ``modality`` responds 0 to every stimulus.
    """
    folder = Path(ground_truth)
    if not folder.is_dir():
        raise CortexflowInputError("ground-truth folder not found", path=folder,
                                   fix="pass derivatives/ground_truth/sub-XX of a study written by cortexflow simulate")
    table_path, responses_path = _one_file(folder, "*_voxels.tsv"), _one_file(folder, "*_responses.npz")
    truth = pd.read_csv(table_path, sep="\t")
    with np.load(responses_path, allow_pickle=False) as f:
        if modality not in f.files:
            raise CortexflowInputError(f"no noise-free responses for modality '{modality}'", path=responses_path,
                                       fix="simulate the study with this modality")
        amplitudes, rows, ids = f[modality], f[f"{modality}_voxels"], f[f"{modality}_ids"].astype(str)
    missing = {"i", "j", "k", "x", "y", "z"} - set(voxels.columns)
    if missing:
        raise CortexflowInputError(f"the dataset's voxel table lacks columns {sorted(missing)}",
                                   fix="rerun extract_rois and make_dataset")
    tuned = truth.iloc[rows]
    position = {ijk: n for n, ijk in enumerate(zip(tuned["i"], tuned["j"], tuned["k"]))}
    found = [(v, position[ijk]) for v, ijk in enumerate(zip(voxels["i"], voxels["j"], voxels["k"])) if ijk in position]
    responses = np.zeros((len(ids), len(voxels)), np.float32)
    if found:
        cols, src = (np.asarray(a) for a in zip(*found))
        offset = np.abs(voxels[["x", "y", "z"]].to_numpy(float)[cols] - tuned[["x", "y", "z"]].to_numpy(float)[src])
        if offset.max() > 1e-3:
            raise CortexflowInputError(
                f"voxels with the same grid indices lie {offset.max():.1f} mm apart in the dataset and the ground truth",
                path=table_path, fix="use the ground truth of the study the dataset was made from (same grid)")
        responses[:, cols] = amplitudes[src].T
    log.info("%s: %d of the dataset's %d voxels carry a noise-free %s response (%d stimuli)",
             responses_path, len(found), len(voxels), modality, len(ids))
    return ids, responses


def predict_without_noise(ground_truth: str | Path, modality: str, voxels: pd.DataFrame, train_ids: np.ndarray,
                          train_targets: np.ndarray, test_ids: np.ndarray, baseline: RidgeDecoder) -> np.ndarray:
    """The noise-free linear decoder's predictions for ``test_ids``.

    Ridge from the noise-free responses of ``voxels`` to ``train_targets`` (one
    row per id of ``train_ids``), with the alpha grid, folds and seed of the
    fitted ``baseline``. Text returns sentences: the baseline's candidate nearest
    to each prediction, as the baseline decodes; other modalities return targets.
    """
    ids, responses = noise_free_responses(ground_truth, modality, voxels)
    inputs = _NoiseFreeInput(ids, responses, np.asarray(train_ids))
    decoder = RidgeDecoder(baseline.alphas, baseline.n_folds, baseline.seed).fit(inputs(train_ids), train_targets)
    if baseline.candidate_texts is None:
        return decoder.predict(inputs(test_ids))
    decoder.candidate_texts, decoder.candidate_ids = baseline.candidate_texts, baseline.candidate_ids
    decoder.text_features = baseline.text_features
    return decoder.predict_texts(inputs(test_ids))


class _NoiseFreeInput:
    """Stimulus ids -> noise-free responses, z-scored with the training stimuli's statistics.

    Voxels without a response to the training stimuli (untuned for this
    modality) are dropped: they carry nothing and cannot be scaled.
    """

    def __init__(self, ids: np.ndarray, responses: np.ndarray, train_ids: np.ndarray):
        self.index = {s: n for n, s in enumerate(ids)}
        self.responses = responses
        train = self.responses[self._rows(train_ids)]
        sd = train.std(axis=0)
        self.keep = sd > 1e-6 * max(float(sd.max()), 1e-30)
        if not self.keep.any():
            raise CortexflowInputError("none of the dataset's voxels responds to this modality in the ground truth",
                                       fix="check that data.tasks and rois select the simulated regions")
        self.mean, self.sd = train.mean(axis=0)[self.keep], sd[self.keep]

    def _rows(self, stimulus_ids: np.ndarray) -> list[int]:
        missing = sorted({s for s in stimulus_ids if s not in self.index})
        if missing:
            raise CortexflowInputError(f"{len(missing)} stimuli have no noise-free response (e.g. {missing[:3]})",
                                       fix="use the ground truth of the study the dataset was made from")
        return [self.index[s] for s in stimulus_ids]

    def __call__(self, stimulus_ids: np.ndarray) -> np.ndarray:
        x = self.responses[self._rows(stimulus_ids)][:, self.keep]
        return ((x - self.mean) / self.sd).astype(np.float32)
