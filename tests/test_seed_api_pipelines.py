"""The seed library's three pipelines (``build_brain2img``, ``build_brain2audio``,
``build_brain2text``) as its page and example scripts use them, checked by
value: where the gradient goes under condition dropout, sample layouts and
their independence, what ``brain_noise`` and silencing an ROI do to a briefly
trained model, the waveform conversion, and text sampling."""

from __future__ import annotations

import pytest
import torch

from cortexflow import (
    Brain2Audio,
    Brain2Image,
    Brain2Text,
    BrainData,
    ROIBrainEncoder,
    build_brain2audio,
    build_brain2img,
    build_brain2text,
)
from cortexflow._types import DiTConfig, FlowConfig, Modality, VAEConfig


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fit(model, stimulus, brain, steps: int, lr: float = 1e-2) -> list[float]:
    """A few full-batch Adam steps on the seed's ``training_loss``."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model.training_loss(stimulus, brain)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def _grad_size(params) -> float:
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


# ----------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def trained_image_model():
    """A tiny image model fitted for 25 steps to two (brain, image) pairs."""
    threads = torch.get_num_threads()  # module scope: set up before conftest's one-thread fixture
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_brain2img(n_voxels=30, img_size=8, hidden_dim=32, depth=1, num_heads=4, n_brain_tokens=4)
    brain = BrainData(voxels=torch.randn(2, 30, generator=_gen(1)))
    images = torch.rand(2, 3, 8, 8, generator=_gen(2))
    losses = _fit(model, images, brain, steps=25)
    torch.set_num_threads(threads)
    return model, brain, losses


def test_image_training_lowers_the_seed_loss(trained_image_model):
    _, _, losses = trained_image_model
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_condition_dropout_routes_the_gradient_to_the_null_embedding():
    """cfg_dropout=0: the brain encoder learns and the null embedding does not;
    cfg_dropout=1 (every row dropped): the reverse."""
    torch.manual_seed(0)
    model = build_brain2img(n_voxels=20, img_size=8, hidden_dim=16, depth=1, num_heads=2, n_brain_tokens=3)
    with torch.no_grad():  # leave the adaLN-Zero start so the condition reaches the loss
        for p in model.dit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    brain, images = BrainData(voxels=torch.randn(3, 20)), torch.rand(3, 3, 8, 8)
    model.train()
    null = [model.uncond_global, model.uncond_tokens]
    for p_drop, encoder_learns in ((0.0, True), (1.0, False)):
        model.zero_grad()
        model.training_loss(images, brain, cfg_dropout=p_drop).backward()
        assert (_grad_size(model.brain_encoder.parameters()) > 0) is encoder_learns
        assert (_grad_size(null) > 0) is not encoder_learns
        assert _grad_size(model.dit.parameters()) > 0
        assert all(p.grad is None for p in model.vae.parameters())  # the VAE stays frozen


def test_image_samples_layout_range_and_independence(trained_image_model):
    model, brain, _ = trained_image_model
    one = model.reconstruct(brain, num_steps=3, cfg_scale=2.0, generator=_gen(5))
    also_one = model.reconstruct(brain, num_steps=3, cfg_scale=2.0, num_samples=1, generator=_gen(5))
    assert one.modality is Modality.IMAGE and one.output.shape == (2, 3, 8, 8)
    assert (one.n_steps, one.cfg_scale) == (3, 2.0)
    assert torch.equal(one.output, also_one.output)
    assert 0.0 <= float(one.output.min()) and float(one.output.max()) <= 1.0
    many = model.reconstruct(brain, num_steps=3, num_samples=3, generator=_gen(5)).output
    assert many.shape == (2, 3, 3, 8, 8)
    assert not torch.allclose(many[:, 0], many[:, 1]) and not torch.allclose(many[:, 1], many[:, 2])
    other_brain = BrainData(voxels=torch.randn(2, 30, generator=_gen(9)))
    assert not torch.allclose(model.reconstruct(other_brain, num_steps=3, generator=_gen(5)).output, one.output)


def test_brain_noise_alone_makes_samples_differ(trained_image_model):
    """With every sample started from the same noise, samples differ only
    through brain_noise (the seed's 'diverse readings of one brain')."""
    model, brain, _ = trained_image_model
    single = BrainData(voxels=brain.voxels[:1])
    same_start = torch.randn(1, 1, *model.latent_shape, generator=_gen(3)).expand(1, 4, *model.latent_shape)

    def samples(noise_level):
        return model.reconstruct(single, num_steps=4, num_samples=4, brain_noise=noise_level,
                                 noise=same_start, generator=_gen(6)).output[0]

    quiet, noisy = samples(0.0), samples(0.5)
    assert all(torch.equal(quiet[0], quiet[i]) for i in range(1, 4))
    spread = torch.stack([(noisy[i] - noisy[j]).pow(2).mean() for i in range(4) for j in range(i + 1, 4)])
    assert bool((spread > 0).all())


def test_silencing_each_roi_changes_a_trained_roi_model():
    torch.manual_seed(0)
    sizes = {"V1": 12, "FFA": 8, "A1": 6}
    encoder = ROIBrainEncoder(roi_sizes=sizes, cond_dim=32, n_tokens=4, per_roi_dim=16)
    model = Brain2Image(img_size=8, dit_config=DiTConfig(hidden_dim=32, depth=1, num_heads=4, cond_dim=32),
                        vae_config=VAEConfig(hidden_dims=[8, 16]), flow_config=FlowConfig(num_steps=4),
                        n_brain_tokens=4, brain_encoder=encoder)
    rois = {name: torch.randn(2, n, generator=_gen(i)) for i, (name, n) in enumerate(sizes.items())}
    brain = BrainData(voxels=torch.zeros(2, 26), roi_voxels=rois)
    _fit(model, torch.rand(2, 3, 8, 8, generator=_gen(7)), brain, steps=15)

    def image(roi_voxels):
        return model.reconstruct(BrainData(voxels=torch.zeros(1, 26), roi_voxels=roi_voxels),
                                 generator=_gen(8)).output

    one = {k: v[:1] for k, v in rois.items()}
    full = image(one)
    assert torch.equal(image(dict(one)), full)  # nothing silenced: the same image
    for name in sizes:
        silenced = image(dict(one, **{name: torch.zeros_like(one[name])}))
        assert (silenced - full).pow(2).mean().sqrt() > 1e-4, name


def test_seed_example_sizes_build_and_sample():
    """The sizes the seed's example scripts use: 1,024 voxels, 64 px images, hidden 256, depth 6."""
    torch.manual_seed(0)
    model = build_brain2img(n_voxels=1024, img_size=64, hidden_dim=256, depth=6, num_heads=8)
    assert model.latent_shape == (4, 16, 16) and model.dit.config.n_tokens == 64
    brain = BrainData(voxels=torch.randn(2, 1024), subject_id="sub-01")
    assert torch.isfinite(model.training_loss(torch.rand(2, 3, 64, 64), brain))
    out = model.eval().reconstruct(brain, num_steps=2, cfg_scale=4.0).output
    assert out.shape == (2, 3, 64, 64) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0


# ----------------------------------------------------------------------------- audio


def test_audio_training_reaches_the_dit_and_samples_have_the_seed_layout():
    torch.manual_seed(0)
    model = build_brain2audio(n_voxels=20, n_mels=16, audio_len=32, hidden_dim=32, depth=1)
    brain, mel = BrainData(voxels=torch.randn(2, 20)), torch.randn(2, 16, 32)
    model.train()
    loss = model.training_loss(mel, brain, cfg_dropout=0.0)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and _grad_size(model.dit.parameters()) > 0
    result = model.eval().reconstruct(brain, 2, 2.0, generator=_gen(0))
    assert result.modality is Modality.AUDIO and result.output.shape == (2, 16, 32)
    several = model.reconstruct(brain, num_steps=2, num_samples=3, generator=_gen(0))
    assert several.output.shape == (2, 3, 16, 32) and several.metadata["num_samples"] == 3
    assert not torch.allclose(several.output[:, 0], several.output[:, 1])


def test_mel_to_waveform_is_per_row_and_sized_by_the_hop():
    mel = torch.log(torch.rand(3, 16, 12, generator=_gen(0)) + 0.05)
    wave = Brain2Audio.mel_to_waveform(mel, n_fft=64, hop_length=16)
    assert wave.shape == (3, 11 * 16) and torch.isfinite(wave).all()
    # deterministic and row-independent: one row alone gives that row of the batch
    torch.testing.assert_close(Brain2Audio.mel_to_waveform(mel[1:2], n_fft=64, hop_length=16), wave[1:2])
    assert wave.abs().max() > 0


# ----------------------------------------------------------------------------- text


def test_text_gradient_reaches_every_parameter_within_two_steps():
    """The encoder's residual blocks start as the identity (zero output layer),
    so their inner layers learn from the second step; everything else from the first."""
    torch.manual_seed(0)
    model = build_brain2text(n_voxels=20, max_len=12, hidden_dim=32, depth=2)
    brain = BrainData(voxels=torch.randn(2, 20))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    touched = []
    for _ in range(2):
        opt.zero_grad()
        model.training_loss(["brain", "to text"], brain).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        touched.append({n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0})
        opt.step()
    names = {n for n, _ in model.named_parameters()}
    assert names - touched[0] and all(".blocks." in n and "brain_encoder" in n for n in names - touched[0])
    assert touched[1] == names
    assert model.lm_head.weight is model.token_emb.weight  # tied byte embeddings


def test_text_sample_layouts_and_diversity():
    torch.manual_seed(0)
    model = build_brain2text(n_voxels=20, max_len=12, hidden_dim=32, depth=1).eval()
    brain = BrainData(voxels=torch.randn(2, 20))
    flat = model.reconstruct(brain, max_len=8, num_samples=1, generator=_gen(1)).metadata["texts"]
    assert len(flat) == 2 and all(isinstance(t, str) for t in flat)
    hot = model.reconstruct(brain, max_len=8, temperature=1.5, top_k=0, num_samples=4, generator=_gen(2))
    groups = hot.metadata["texts"]
    assert hot.output.shape == (2, 4, 8) and [len(g) for g in groups] == [4, 4]
    assert all(len(set(g)) > 1 for g in groups)  # independent draws per sample


def test_text_model_trained_on_one_brain_and_several_words_samples_several():
    """The seed's diversity demo: one brain pattern paired with four words. The
    model learns the shared prefix and keeps the ambiguity: greedy decoding
    gives one of the words, sampling at temperature 1 gives more than one."""
    torch.manual_seed(0)
    model = build_brain2text(n_voxels=16, max_len=8, hidden_dim=32, depth=1, dropout=0.0, encoder_dropout=0.0)
    words = ["cat", "car", "cap", "can"]
    brain = BrainData(voxels=torch.randn(1, 16).expand(4, -1).clone())
    tokens = torch.zeros(4, 8, dtype=torch.long)  # the seed's zero padding
    for i, w in enumerate(words):
        tokens[i, : len(w)] = Brain2Text.text_to_tokens(w)
    losses = _fit(model, tokens, brain, steps=60, lr=1e-2)
    # the floor is the ambiguity of the last letter: ln(4) / 4 nats per target byte
    assert losses[-1] < 0.6
    one = BrainData(voxels=brain.voxels[:1])
    assert model.reconstruct(one, greedy=True).metadata["texts"][0] in words
    texts = model.reconstruct(one, max_len=8, temperature=1.0, top_k=0, num_samples=12,
                              generator=_gen(3)).metadata["texts"][0]
    assert sum(t in words for t in texts) >= 9 and len(set(texts) & set(words)) >= 2


# ----------------------------------------------------------------------------- one brain, three decoders


def test_one_brain_data_drives_all_three_pipelines_unchanged():
    torch.manual_seed(0)
    voxels = torch.randn(2, 24)
    brain = BrainData(voxels=voxels.clone(), subject_id="sub-01")
    img = build_brain2img(n_voxels=24, img_size=8, hidden_dim=16, depth=1, num_heads=2).eval()
    aud = build_brain2audio(n_voxels=24, n_mels=8, audio_len=16, hidden_dim=16, depth=1, num_heads=2).eval()
    txt = build_brain2text(n_voxels=24, max_len=8, hidden_dim=16, depth=1).eval()
    results = [img.reconstruct(brain, num_steps=2), aud.reconstruct(brain, num_steps=2), txt.reconstruct(brain)]
    assert [r.modality for r in results] == [Modality.IMAGE, Modality.AUDIO, Modality.TEXT]
    assert [r.output.shape[0] for r in results] == [2, 2, 2]
    assert torch.equal(brain.voxels, voxels) and brain.subject_id == "sub-01"
