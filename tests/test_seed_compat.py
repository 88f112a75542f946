"""Seed-library (cortexflowx 0.4) API in this package: the behaviours that the
seed's examples and tests touch only loosely, checked by value."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import cortexflow
from cortexflow import (
    Brain2Text,
    BrainData,
    EMAModel,
    Modality,
    ReconstructionResult,
    ROIBrainEncoder,
    SyntheticBrainDataset,
    Trainer,
    TrainingConfig,
    build_brain2audio,
    build_brain2img,
    build_brain2text,
    make_synthetic_brain_data,
)
from cortexflow._seed_compat import SeedNameError
from cortexflow.errors import CortexflowInputError
from cortexflow.models.brain2text import PAD_ID


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- names and modules

SEED_MODULES = {
    "cortexflow._types": ["BrainData", "CortexFlowError", "DiTConfig", "FlowConfig", "Modality",
                          "ReconstructionResult", "TrainingConfig", "VAEConfig"],
    "cortexflow.dit": ["DiffusionTransformer", "DiTBlock", "FinalLayer", "SwiGLU", "TimestepEmbedding", "modulate"],
    "cortexflow.flow_matching": ["RectifiedFlowMatcher", "EMAModel"],
    "cortexflow.vae": ["LatentVAE", "AudioVAE", "ResBlock", "ResBlock1D"],
    "cortexflow.brain_encoder": ["BrainEncoder", "ROIBrainEncoder", "SubjectAdapter", "make_synthetic_brain_data"],
    "cortexflow.brain2img": ["Brain2Image", "build_brain2img"],
    "cortexflow.brain2audio": ["AudioDiT", "Brain2Audio", "build_brain2audio"],
    "cortexflow.brain2text": ["Brain2Text", "build_brain2text"],
    "cortexflow.training": ["SyntheticBrainDataset", "Trainer", "WarmupCosineScheduler"],
}


@pytest.mark.parametrize("module", sorted(SEED_MODULES))
def test_seed_module_paths_re_export_the_package_objects(module):
    mod = importlib.import_module(module)
    for name in SEED_MODULES[module]:
        obj = getattr(mod, name)
        if name in ("modulate", "ResBlock", "ResBlock1D", "CortexFlowError"):
            continue  # seed-signature adapters / alias, checked below
        assert obj is getattr(cortexflow, name, obj), f"{module}.{name} is not the package's object"
        assert obj.__module__.startswith("cortexflow.models") or obj.__module__.startswith("cortexflow.training")


def test_seed_top_level_names_all_resolve():
    seed_all = ["BrainData", "ReconstructionResult", "DiTConfig", "FlowConfig", "VAEConfig", "TrainingConfig",
                "Modality", "CortexFlowError", "DiffusionTransformer", "RectifiedFlowMatcher", "EMAModel",
                "LatentVAE", "AudioVAE", "BrainEncoder", "ROIBrainEncoder", "SubjectAdapter", "Brain2Image",
                "Brain2Audio", "Brain2Text", "AudioDiT", "build_brain2img", "build_brain2audio",
                "build_brain2text", "make_synthetic_brain_data", "Trainer", "WarmupCosineScheduler",
                "SyntheticBrainDataset"]
    for name in seed_all:
        assert name in cortexflow.__all__ and getattr(cortexflow, name) is not None
    assert issubclass(cortexflow.CortexFlowError, Exception)
    assert cortexflow.CortexFlowError is CortexflowInputError


@pytest.mark.parametrize(
    "module, name",
    [("cortexflow", "BrainTextDecoder"), ("cortexflow.brain2text", "TextDecoderBlock"),
     ("cortexflow.dit", "PatchEmbed"), ("cortexflow.vae", "Encoder"), ("cortexflow.brain2audio", "DiTBlock1D")],
)
def test_seed_names_without_counterpart_raise_an_import_error_that_says_why(module, name):
    with pytest.raises(ImportError, match=f"{name} \\(cortexflowx 0.4\\) is not part of this cortexflow: .+seed-compat"):
        exec(f"from {module} import {name}", {})
    with pytest.raises(SeedNameError):
        getattr(importlib.import_module(module), name)
    with pytest.raises(AttributeError):
        importlib.import_module(module).NoSuchName  # noqa: B018


def test_seed_modulate_and_resblocks_keep_the_seed_semantics():
    from cortexflow.dit import modulate
    from cortexflow.vae import ResBlock, ResBlock1D

    x, shift, scale = torch.randn(2, 5, 8), torch.randn(2, 8), torch.randn(2, 8)
    torch.testing.assert_close(modulate(x, shift, scale), x * (1 + scale[:, None]) + shift[:, None])
    torch.testing.assert_close(modulate(x, torch.zeros(2, 8), torch.zeros(2, 8)), x)
    assert ResBlock(8)(torch.randn(1, 8, 4, 4)).shape == (1, 8, 4, 4)
    assert ResBlock1D(8)(torch.randn(1, 8, 6)).shape == (1, 8, 6)


# ----------------------------------------------------------------------------- types


def test_modality_is_a_str_enum_that_formats_as_its_value():
    assert Modality.IMAGE == "image" and Modality("audio") is Modality.AUDIO and isinstance(Modality.TEXT, str)
    assert f"{Modality.IMAGE}" == "image" and str(Modality.TEXT) == "text" and Modality.AUDIO.value == "audio"
    assert json.dumps({"m": Modality.IMAGE}) == '{"m": "image"}'
    result = ReconstructionResult(output=torch.zeros(1), modality="text")
    assert result.modality is Modality.TEXT and result.modality == "text"
    with pytest.raises(CortexflowInputError, match="unknown modality 'video'"):
        ReconstructionResult(output=torch.zeros(1), modality="video")


def test_reconstruction_result_takes_and_gives_the_seed_names():
    cond = torch.randn(1, 4)
    r = ReconstructionResult(modality=Modality.IMAGE, output=torch.zeros(1, 3), brain_condition=cond, n_steps=7,
                             cfg_scale=2.5)
    assert r.brain_global is cond and r.brain_condition is cond
    assert (r.n_steps, r.cfg_scale) == (7, 2.5) and r.metadata == {"num_steps": 7, "cfg_scale": 2.5}
    bare = ReconstructionResult(output=torch.zeros(1), modality="image")
    assert (bare.n_steps, bare.cfg_scale, bare.brain_condition) == (50, 1.0, None)
    with pytest.raises(CortexflowInputError, match="the seed library had modality first"):
        ReconstructionResult(Modality.IMAGE, torch.zeros(1))  # the seed's positional order


def test_brain_data_seed_fields_and_device_move():
    roi = {"V1": torch.randn(2, 3), "FFA": torch.randn(2, 2)}
    bd = BrainData(voxels=torch.randn(2, 5), roi_voxels=roi, roi_mask=torch.ones(5, dtype=torch.bool), tr=1.5)
    assert (bd.batch_size, bd.n_voxels, bd.tr) == (2, 5, 1.5)
    assert BrainData(voxels=torch.randn(7)).batch_size == 1 and BrainData(voxels=torch.randn(7)).tr == 2.0
    moved = bd.to("cpu")
    assert moved.roi_voxels.keys() == roi.keys() and moved.tr == 1.5 and moved.roi_mask.shape == (5,)
    assert torch.equal(moved.roi_voxels["V1"], roi["V1"])


# ----------------------------------------------------------------------------- image / audio sampling


def _img(**kw):
    torch.manual_seed(0)
    return build_brain2img(n_voxels=12, img_size=8, hidden_dim=16, depth=1, num_heads=2, **kw).eval()


def test_reconstruct_takes_the_seeds_positional_order():
    model, brain = _img(), BrainData(voxels=torch.randn(2, 12))
    r = model.reconstruct(brain, 2, 1.5, 3, 0.25, generator=_gen())
    assert r.output.shape == (2, 3, 3, 8, 8)
    assert (r.n_steps, r.cfg_scale, r.metadata["num_samples"], r.metadata["brain_noise"]) == (2, 1.5, 3, 0.25)
    assert r.modality is Modality.IMAGE and r.modality.value == "image"
    with pytest.raises(TypeError):
        model.reconstruct(brain, 2, 1.5, 1, 0.0, "euler")  # solver etc. are keyword-only


def test_brain_noise_perturbs_the_condition_reproducibly_and_zero_changes_nothing():
    model, brain = _img(), BrainData(voxels=torch.randn(2, 12))
    # Train the DiT away from its zero-velocity start so the condition matters.
    with torch.no_grad():
        for p in model.dit.parameters():
            p.add_(0.05 * torch.randn_like(p))
    base = model.reconstruct(brain, num_steps=3, generator=_gen(1)).output
    zero = model.reconstruct(brain, num_steps=3, brain_noise=0.0, generator=_gen(1)).output
    noisy = model.reconstruct(brain, num_steps=3, brain_noise=0.5, generator=_gen(1)).output
    again = model.reconstruct(brain, num_steps=3, brain_noise=0.5, generator=_gen(1)).output
    assert torch.equal(base, zero) and torch.equal(noisy, again)
    assert (noisy - base).abs().max() > 1e-4
    for bad in (-0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(CortexflowInputError, match="brain_noise"):
            model.reconstruct(brain, num_steps=1, brain_noise=bad)


def test_audio_reconstruct_has_the_same_seed_arguments():
    torch.manual_seed(0)
    model = build_brain2audio(n_voxels=12, n_mels=8, audio_len=16, hidden_dim=16, depth=1).eval()
    r = model.reconstruct(BrainData(voxels=torch.randn(1, 12)), 2, 2.0, 2, 0.5, generator=_gen())
    assert r.output.shape == (1, 2, 8, 16) and r.modality is Modality.AUDIO and r.metadata["brain_noise"] == 0.5


def test_roi_encoder_reads_brain_data_roi_voxels():
    torch.manual_seed(0)
    sizes = {"V1": 6, "FFA": 4, "A1": 3}
    enc = ROIBrainEncoder(roi_sizes=sizes, cond_dim=16, n_tokens=4, per_roi_dim=8)
    assert enc.n_tokens == 4 and enc.config.token_counts == [2, 1, 1] and enc.config.hidden_dim == 8
    roi = {k: torch.randn(2, n) for k, n in sizes.items()}
    flat = torch.cat([roi[k] for k in sizes], dim=1)
    model = build_brain2img(n_voxels=13, img_size=8, hidden_dim=16, depth=1, num_heads=2, brain_encoder=enc).eval()
    # voxels is ignored when roi_voxels is given: any tensor there gives the same result.
    a = model.encode_brain(BrainData(voxels=torch.randn(2, 13), roi_voxels=roi))
    b = model.encode_brain(BrainData(voxels=flat))
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)
    ablated = dict(roi, FFA=torch.zeros(2, 4))
    c = model.encode_brain(BrainData(voxels=flat, roi_voxels=ablated))
    assert not torch.allclose(a[0], c[0])
    # A whole-brain encoder reads voxels even when roi_voxels is given.
    plain = _img()
    vox = torch.randn(2, 12)
    torch.testing.assert_close(plain.encode_brain(BrainData(voxels=vox, roi_voxels=roi))[0],
                               plain.encode_brain(BrainData(voxels=vox))[0])
    with pytest.raises(CortexflowInputError, match="cannot give each of the 3 ROIs"):
        ROIBrainEncoder(roi_sizes=sizes, cond_dim=16, n_tokens=2)
    with pytest.raises(CortexflowInputError, match="disagree"):
        ROIBrainEncoder(roi_sizes=sizes, cond_dim=16, hidden_dim=4, per_roi_dim=8)


# ----------------------------------------------------------------------------- text


def _text():
    torch.manual_seed(0)
    return build_brain2text(n_voxels=12, max_len=10, hidden_dim=16, depth=1)


def test_text_byte_helpers_round_trip_and_stop_at_nul():
    tokens = Brain2Text.text_to_tokens("héllo")
    assert tokens.dtype == torch.long and tokens.tolist() == list("héllo".encode())
    assert Brain2Text.tokens_to_text(tokens) == "héllo"
    assert Brain2Text.tokens_to_text(torch.tensor([72, 105, 0, 99])) == "Hi"
    assert Brain2Text.tokens_to_text(torch.tensor([72, PAD_ID, 99])) == "H"


def test_text_training_accepts_the_seeds_zero_padding():
    model, brain = _text().eval(), BrainData(voxels=torch.randn(2, 12))
    zero_padded = torch.zeros(2, 6, dtype=torch.long)
    pad_padded = torch.full((2, 6), PAD_ID, dtype=torch.long)
    for i, w in enumerate(["cat", "dog!"]):
        t = Brain2Text.text_to_tokens(w)
        zero_padded[i, : len(t)] = t
        pad_padded[i, : len(t)] = t
    torch.manual_seed(1)
    a = model.training_loss(zero_padded, brain)
    torch.manual_seed(1)
    b = model.training_loss(pad_padded, brain)
    torch.manual_seed(1)
    c = model.training_loss(["cat", "dog!"], brain)
    assert a.item() == b.item() == c.item()


def test_text_reconstruct_seed_order_num_samples_and_top_p_zero():
    model, brain = _text(), BrainData(voxels=torch.randn(2, 12))
    r = model.reconstruct(brain, 6, 1.0, 0, 0.0, 3, 0.5, generator=_gen(2))
    assert r.output.shape == (2, 3, 6) and r.modality is Modality.TEXT
    texts, lengths = r.metadata["texts"], r.metadata["lengths"]
    assert len(texts) == 2 and all(len(g) == 3 and all(isinstance(t, str) for t in g) for g in texts)
    assert len(lengths) == 2 and all(len(g) == 3 for g in lengths) and r.metadata["brain_noise"] == 0.5
    # top_p=0 (the seed's "off") samples exactly as top_p=1.
    off = model.reconstruct(brain, max_len=6, top_p=0.0, generator=_gen(3)).output
    one = model.reconstruct(brain, max_len=6, top_p=1.0, generator=_gen(3)).output
    assert torch.equal(off, one) and off.shape == (2, 6)
    with pytest.raises(CortexflowInputError, match="num_samples"):
        model.reconstruct(brain, num_samples=0)


# ----------------------------------------------------------------------------- training and EMA


def test_trainer_global_step_and_ema_decay_zero():
    model = build_brain2img(n_voxels=12, img_size=8, hidden_dim=16, depth=1, num_heads=2)
    trainer = Trainer(model, TrainingConfig(ema_decay=0, device="cpu"))
    assert trainer.ema is None and trainer.global_step == 0
    batch = {"fmri": torch.randn(2, 12), "stimulus": torch.rand(2, 3, 8, 8)}
    trainer.train_step(batch, lambda m, b: m.training_loss(b["stimulus"], BrainData(voxels=b["fmri"])))
    assert trainer.global_step == trainer.step == 1
    trainer.global_step = 42
    assert trainer.step == 42
    with pytest.raises(CortexflowInputError, match="second argument is the number of steps"):
        trainer.fit([batch], lambda m, b: m.training_loss(b["stimulus"], BrainData(voxels=b["fmri"])))


def test_ema_default_is_the_seeds_constant_decay_and_warmup_is_opt_in():
    model = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.named_parameters()}
    seed_like, warm = EMAModel(model, decay=0.9), EMAModel(model, decay=0.9, warmup=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    seed_like.update(model)
    warm.update(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(seed_like.shadow[name], 0.9 * start[name] + 0.1 * p.detach())
        # warm-up: decay min(0.9, 1/10) = 0.1 on the first update
        torch.testing.assert_close(warm.shadow[name], 0.1 * start[name] + 0.9 * p.detach())
    assert TrainingConfig().ema_warmup is False
    trainer = Trainer(model, TrainingConfig(ema_decay=0.9, ema_warmup=True, device="cpu"))
    assert trainer.ema.warmup is True


def test_the_workflow_keeps_its_ema_warmup_explicitly():
    from cortexflow.stages.decoder import DecoderParams, _training_config

    assert _training_config(DecoderParams(), 0, "cpu").ema_warmup is True


# ----------------------------------------------------------------------------- synthetic data


def test_make_synthetic_brain_data_is_smooth_standardised_and_seedable():
    x = make_synthetic_brain_data(batch_size=8, n_voxels=256, generator=_gen(0))
    assert x.shape == (8, 256) and x.dtype == torch.float32
    torch.testing.assert_close(x.mean(dim=1), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=1), torch.ones(8), atol=1e-4, rtol=0)
    # Smoothed: neighbouring voxels are strongly correlated (white noise: ~0).
    lag1 = (x[:, 1:] * x[:, :-1]).mean()
    assert lag1 > 0.8
    assert torch.equal(x, make_synthetic_brain_data(8, 256, generator=_gen(0)))
    assert not torch.equal(x, make_synthetic_brain_data(8, 256, generator=_gen(1)))
    with pytest.raises(CortexflowInputError, match="n_voxels must be a positive integer"):
        make_synthetic_brain_data(2, 0)


def test_synthetic_dataset_items_are_deterministic_and_batches_stack():
    ds = SyntheticBrainDataset(n_samples=10, n_voxels=16, modality="image", img_size=4)
    assert torch.equal(ds[3]["fmri"], ds[3]["fmri"]) and not torch.equal(ds[3]["fmri"], ds[4]["fmri"])
    batches = list(ds.to_loader(batch_size=4, shuffle=True, generator=_gen()))
    assert [b["fmri"].shape[0] for b in batches] == [4, 4, 2]
    seen = torch.cat([b["fmri"] for b in batches])
    expected = torch.stack([ds[i]["fmri"] for i in range(10)])
    assert sorted(map(tuple, seen.tolist())) == sorted(map(tuple, expected.tolist()))
    text = SyntheticBrainDataset(n_samples=2, n_voxels=4, modality="text", max_text_len=5)[0]["stimulus"]
    assert text.dtype == torch.long and bool(((text >= 32) & (text < 127)).all())
    audio = SyntheticBrainDataset(n_samples=2, n_voxels=4, modality="audio", n_mels=3, audio_len=5)[1]["stimulus"]
    assert audio.shape == (3, 5) and bool((audio >= 0).all())
    with pytest.raises(CortexflowInputError, match="modality 'video'"):
        SyntheticBrainDataset(modality="video")[0]
    with pytest.raises(IndexError):
        ds[10]
