"""The seed library's README and docstring code for images and audio runs
unchanged against cortexflow (only the sizes are made small)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts from the same torch seed (one thread: conftest's _one_thread)."""
    torch.manual_seed(0)


def test_readme_quick_start_brain_to_image():
    import torch
    from cortexflow import build_brain2img, BrainData

    model = build_brain2img(n_voxels=1500, img_size=32, hidden_dim=64, depth=2)

    fmri = torch.randn(1, 1500)  # your fMRI data
    brain = BrainData(voxels=fmri, subject_id="sub-01")

    # Reconstruct
    model.eval()
    result = model.reconstruct(brain, num_steps=50, cfg_scale=4.0)
    image = result.output  # (1, 3, 256, 256)

    assert image.shape == (1, 3, 32, 32)
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_readme_quick_start_brain_to_audio():
    from cortexflow import build_brain2audio, BrainData

    fmri = torch.randn(1, 1500)
    model = build_brain2audio(n_voxels=1500, n_mels=80, audio_len=64, hidden_dim=64, depth=2)

    result = model.reconstruct(BrainData(voxels=fmri), num_steps=50)
    mel = result.output  # (1, 80, 256) mel spectrogram

    # Convert to waveform
    from cortexflow import Brain2Audio
    waveform = Brain2Audio.mel_to_waveform(mel)

    assert mel.shape == (1, 80, 64)
    assert waveform.shape == (1, 63 * 256) and torch.isfinite(waveform).all()


def test_readme_training_loop_with_the_image_model():
    from cortexflow import build_brain2img, BrainData, Trainer, TrainingConfig

    model = build_brain2img(n_voxels=300, img_size=16, hidden_dim=32, depth=1)
    trainer = Trainer(model, TrainingConfig(learning_rate=1e-4, batch_size=16))
    dataloader = [(torch.rand(4, 3, 16, 16), torch.randn(4, 300)) for _ in range(2)]

    # Your training loop
    losses = []
    for images, fmri in dataloader:
        brain = BrainData(voxels=fmri)
        loss = trainer.train_step(
            {"stimulus": images, "fmri": fmri},
            loss_fn=lambda m, b: m.training_loss(b["stimulus"], BrainData(voxels=b["fmri"]))
        )
        losses.append(loss)
    # an untrained DiT predicts v = 0, so the loss is E|x_1 - x_0|^2 ~ 1 + E[z^2] ~ 2
    assert all(1.0 < x < 4.0 for x in losses)


def test_readme_ema_with_the_image_model():
    from cortexflow import BrainData, EMAModel, build_brain2img

    model = build_brain2img(n_voxels=300, img_size=16, hidden_dim=32, depth=1)
    brain_data = BrainData(voxels=torch.randn(2, 300))
    ema = EMAModel(model, decay=0.9999)
    # During training:
    ema.update(model)
    # For sampling:
    originals = ema.apply_to(model)
    result = model.reconstruct(brain_data)
    ema.restore(model, originals)
    assert result.output.shape == (2, 3, 16, 16)


def test_docstring_usage_of_the_components():
    from cortexflow import DiffusionTransformer, DiTConfig, LatentVAE, RectifiedFlowMatcher, AudioVAE

    dit = DiffusionTransformer(DiTConfig(hidden_dim=32, depth=1, num_heads=4, cond_dim=32), img_size=8)
    bg, bt = torch.randn(2, 32), torch.randn(2, 16, 32)
    x_clean = torch.randn(2, 4, 8, 8)

    fm = RectifiedFlowMatcher()
    # Training step
    loss = fm.compute_loss(dit, x_clean, bg, bt)
    loss.backward()
    # Sampling
    x_gen = fm.sample(dit, shape=(2, 4, 8, 8), brain_global=bg, brain_tokens=bt)
    assert x_gen.shape == (2, 4, 8, 8) and loss.ndim == 0

    vae = LatentVAE()
    images = torch.rand(1, 3, 32, 32)
    z, mu, logvar = vae.encode(images)
    reconstructed = vae.decode(z)
    loss, parts = vae.loss(images, reconstructed, mu, logvar)
    assert z.shape == (1, 4, 2, 2) and reconstructed.shape == images.shape and set(parts) == {"recon", "kl"}

    audio_vae = AudioVAE(n_mels=80)
    z, mu, logvar = audio_vae.encode(torch.randn(1, 80, 64))
    assert z.shape == (1, 8, 8) and audio_vae.decode(z).shape == (1, 80, 64)
