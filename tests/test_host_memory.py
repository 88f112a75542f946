"""Host memory at NSD scale (docs/memory.md): the latent cache is memory-mapped, and `sample`
reduces the decoder's samples to the first and the mean as they are drawn. Both give the
same numbers as the eager path they replace, to the bit."""

from __future__ import annotations

import numpy as np
import torch

from cortexflow import _io
from cortexflow.models.inference import reconstruct_first_and_mean, reconstruct_in_batches
from cortexflow.models.latents import load_latents, save_latents
from cortexflow.models.io import load_model
from test_training_stages import _dataset, _stimuli


def test_npz_members_are_memory_mapped_and_equal_to_the_eager_read(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"images": rng.random((7, 3, 5, 5), dtype=np.float32), "ids": np.asarray(["a", "bb", "c"]),
              "fortran": np.asfortranarray(rng.random((4, 6))), "empty": np.zeros((0, 2), np.float32)}
    path = _io.save_npz(tmp_path / "a.npz", **arrays)
    for name, value in arrays.items():
        mapped = _io.npz_memmap(path, name)
        assert mapped.dtype == value.dtype and mapped.shape == value.shape and np.array_equal(mapped, value), name
    assert isinstance(_io.npz_memmap(path, "images"), np.memmap)
    rows = _io.npz_memmap(path, "images")[np.asarray([5, 0, 5])]  # fancy indexing reads a copy of those rows
    assert type(rows) is np.ndarray and np.array_equal(rows, arrays["images"][[5, 0, 5]])
    # a compressed file (not what save_npz writes) is read whole, with the same values
    np.savez_compressed(tmp_path / "c.npz", **arrays)
    assert type(_io.npz_memmap(tmp_path / "c.npz", "images")) is np.ndarray
    assert np.array_equal(_io.npz_memmap(tmp_path / "c.npz", "images"), arrays["images"])


def test_load_latents_maps_the_large_arrays_and_reads_the_same_values(tmp_path):
    rng = np.random.default_rng(1)
    n = 9
    kw = dict(ids=np.asarray([f"s{i}" for i in range(n)]), latents=rng.normal(size=(n, 4, 2, 2)),
              targets=rng.random((n, 3, 8, 8)), vae_reconstructions=rng.random((n, 3, 8, 8)),
              splits=np.asarray(["train"] * (n - 2) + ["test"] * 2), norm_mean=0.25, norm_std=2.0)
    path = save_latents(tmp_path / "latents.npz", **kw)
    lazy, eager = load_latents(path), load_latents(path, mmap=False)
    for name in ("latents", "targets", "vae_reconstructions"):
        assert isinstance(getattr(lazy, name), np.memmap) and not isinstance(getattr(eager, name), np.memmap)
        assert np.array_equal(getattr(lazy, name), getattr(eager, name))
        assert np.array_equal(getattr(lazy, name), kw[name].astype(np.float32))
    assert (lazy.norm_mean, lazy.norm_std) == (0.25, 2.0) and list(lazy.ids) == list(kw["ids"])
    rows = lazy.rows(np.asarray(["s3", "s0"]), path)
    assert np.array_equal(lazy.targets[rows], kw["targets"][[3, 0]].astype(np.float32))


def _tiny_model():
    from cortexflow.models.brain2img import build_brain2img

    torch.manual_seed(0)
    return build_brain2img(n_voxels=12, img_size=16, in_channels=1, vae_hidden_dims=(8, 16), hidden_dim=32,
                           depth=1, num_heads=2, n_brain_tokens=2).eval()


def test_first_and_mean_reduced_as_drawn_equal_the_kept_samples_to_the_bit():
    model = _tiny_model()
    voxels = torch.randn(7, 12, generator=torch.Generator().manual_seed(3))
    kw = dict(seed=4, num_samples=3, num_steps=2, cfg_scale=1.5, progress=False)

    def to_stimulus(x):
        return np.clip(x * 1.7 + 0.2, 0.0, 1.0)

    kept = to_stimulus(reconstruct_in_batches(model, voxels, batch_size=7, **kw).numpy())
    for batch_size in (7, 3):  # one batch, and batches that do not divide the trials
        first, mean = reconstruct_first_and_mean(model, voxels, to_stimulus=to_stimulus, batch_size=batch_size, **kw)
        assert first.dtype == np.float32 and first.shape == kept[:, 0].shape
        if batch_size == 7:  # the same batches: the same computation
            assert np.array_equal(first, kept[:, 0]) and np.array_equal(mean, kept.mean(axis=1))
        else:  # other batches: the samples agree to float tolerance (models/inference.py)
            np.testing.assert_allclose(mean, kept.mean(axis=1), atol=1e-5)
    assert not np.array_equal(kept[:, 0], kept[:, 1])  # the mean is over distinct samples
    one, none = reconstruct_first_and_mean(model, voxels, batch_size=4, **{**kw, "num_samples": 1})
    assert none is None and one.shape == (7, 1, 16, 16)


def test_sample_stage_writes_what_the_eager_path_computed(tmp_path):
    """The sample stage (memory-mapped latents, samples reduced as drawn, nn_mean in chunks) against the
    eager computation it replaced, on a tiny trained decoder: every array equal to the bit."""
    from cortexflow.models.baselines import load_baselines, nearest_by_correlation
    from cortexflow.models.ridge import load_ridge
    from cortexflow.stages.baseline import fit_baseline_stage
    from cortexflow.stages.decoder import train_decoder_stage
    from cortexflow.stages.sample import _from_model_space
    from cortexflow.stages.sample import sample_stage
    from cortexflow.stages.vae import encode_latents_stage, pretrain_vae_stage

    stimuli = _stimuli(tmp_path)
    vae_params = {"image": {"hidden_dims": [8, 16], "steps": 2, "batch_size": 4, "warmup_steps": 1}}
    pretrain_vae_stage(stimuli=str(stimuli), modality="image", out=str(tmp_path / "vae.pt"), params=vae_params)
    latents = str(tmp_path / "latents.npz")
    encode_latents_stage(stimuli=str(stimuli), modality="image", vae=str(tmp_path / "vae.pt"), out=latents,
                         params=vae_params)
    dataset = _dataset(tmp_path / "ds", [f"img-{n}" for n in range(10)] * 2, ["img-10", "img-11"])
    ridge, baselines = tmp_path / "ridge.npz", tmp_path / "baselines.npz"
    fit_baseline_stage(dataset=str(dataset), out=str(ridge), out_baselines=str(baselines), latents=latents,
                       params={"cv_folds": 3, "alphas": [1.0, 10.0]})
    train_decoder_stage(dataset=str(dataset), modality="image", out=str(tmp_path / "decoder.pt"),
                        checkpoint_dir=str(tmp_path / "ckpt"), latents=latents, vae=str(tmp_path / "vae.pt"),
                        ridge=str(ridge), stimuli=str(stimuli),
                        params={"image": {"hidden_dim": 32, "depth": 1, "num_heads": 2, "n_tokens": 2, "steps": 2,
                                          "batch_size": 4, "warmup_steps": 1}})
    k = 3
    sampling = {"num_steps": 2, "n_samples": k, "batch_size": 2}
    out = tmp_path / "recon.npz"
    sample_stage(dataset=str(dataset), modality="image", decoder=str(tmp_path / "decoder.pt"), out=str(out),
                 params={"image": sampling}, seed=5, latents=latents, ridge=str(ridge), baselines=str(baselines))

    # the eager path: the whole cache in memory, every sample kept, then reduced
    from cortexflow.preprocess.dataset import load_dataset
    from cortexflow.stages.params import SamplingParams, modality_params

    p = modality_params({"image": sampling}, "image", SamplingParams, "sampling")
    lat = load_latents(latents, mmap=False)
    data = load_dataset(str(dataset))
    X = data.X_test.astype(np.float32)
    model = load_model(tmp_path / "decoder.pt")
    z_ridge = load_ridge(ridge).predict(X).astype(np.float32)
    samples = reconstruct_in_batches(model, torch.from_numpy(X), torch.from_numpy(z_ridge), batch_size=p.batch_size,
                                     seed=5, num_samples=k, num_steps=p.num_steps, cfg_scale=p.cfg_scale,
                                     solver=p.solver, shift=p.shift, precision=p.precision,
                                     noise_scale=p.noise_scale).numpy()
    samples = _from_model_space(samples, lat, "image")
    rows = lat.rows(data.test["stimulus_id"].to_numpy(str), latents)
    others = load_baselines(baselines)
    train_rows = lat.rows(others.training_ids, latents)
    nearest = train_rows[nearest_by_correlation(z_ridge, lat.latents[train_rows], others.nn_k)]
    expected = {"truth": lat.targets[rows], "ceiling": lat.vae_reconstructions[rows], "dit": samples[:, 0],
                f"dit_mean{k}": samples.mean(axis=1), "nn": lat.vae_reconstructions[nearest[:, 0]],
                f"nn_mean{others.nn_k}": lat.vae_reconstructions[nearest].mean(axis=1)}
    with np.load(out) as written:
        for name, value in expected.items():
            assert written[name].dtype == value.dtype and np.array_equal(written[name], value), name
