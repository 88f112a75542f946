"""Brain2Image and Brain2Audio: latent training and sampling, guidance dropout,
prior conditioning, latent normalisation, the mel round trip, misuse errors."""

from __future__ import annotations

import math

import pytest
import torch

from cortexflow import BrainData
from cortexflow.errors import CortexflowInputError
from cortexflow.models.audio import mel_to_waveform, waveform_to_mel
from cortexflow.models.brain2audio import Brain2Audio, build_brain2audio
from cortexflow.models.brain2img import Brain2Image, build_brain2img
from cortexflow.models.brain_encoder import ROIBrainEncoder
from cortexflow.models.vae import LatentVAE, VAEConfig



def _image_model(**kw) -> Brain2Image:
    torch.manual_seed(0)
    args = dict(n_voxels=50, img_size=16, hidden_dim=32, depth=2, num_heads=4, in_channels=1, vae_hidden_dims=(8, 8))
    args.update(kw)
    return build_brain2img(**args)


def _randomize_dit(model) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.dit.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_grayscale_image_reconstruction_shapes_range_and_samples():
    model = _image_model()
    _randomize_dit(model)
    assert model.latent_shape == (4, 4, 4)
    assert model.dit.config.in_channels == 4 and model.dit.config.input_size == (4, 4)
    brain = BrainData(voxels=torch.randn(3, 50))
    result = model.reconstruct(brain, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert result.output.shape == (3, 1, 16, 16) and result.modality == "image"
    assert 0.0 <= result.output.min() and result.output.max() <= 1.0
    assert result.brain_global.shape == (3, 32)
    again = model.reconstruct(brain, num_steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(result.output, again.output)
    several = model.sample_latents(brain, num_steps=2, num_samples=4, solver="heun", shift=3.0)
    assert several.shape == (3, 4, 4, 4, 4)
    assert not torch.allclose(several[:, 0], several[:, 1])  # each sample has its own noise
    assert model.training  # sampling switched to eval mode and back


def test_fresh_decoder_samples_noise_in_the_training_latent_statistics():
    # adaLN-Zero: an untrained DiT predicts v = 0, so a sample is its starting noise,
    # mapped back through the latent normalisation.
    model = _image_model()
    latents = torch.randn(500, 4, 4, 4) * torch.tensor([0.5, 1.0, 2.0, 3.0]).view(1, 4, 1, 1) + 5.0
    model.set_latent_stats(latents)
    normalised = model.normalize_latents(latents)
    torch.testing.assert_close(normalised.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-4, rtol=0)
    z = model.sample_latents(BrainData(voxels=torch.randn(400, 50)), num_steps=2)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.full((4,), 5.0), atol=0.1, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3)), torch.tensor([0.5, 1.0, 2.0, 3.0]), atol=0.1, rtol=0.05)


def test_condition_dropout_replaces_the_brain_with_the_null_embedding():
    model = _image_model()
    _randomize_dit(model)
    latents = torch.randn(6, 4, 4, 4)
    a, b = BrainData(voxels=torch.randn(6, 50)), BrainData(voxels=torch.randn(6, 50))

    def loss(brain, p):
        return model.training_loss_latents(latents, brain, cfg_dropout=p, generator=torch.Generator().manual_seed(0))

    assert loss(a, 0.0) != loss(b, 0.0)
    assert loss(a, 0.999999) == loss(b, 0.999999)  # every row dropped: the brain no longer matters
    model.eval()  # no dropout outside training
    assert loss(a, 0.999999) != loss(b, 0.999999)


def test_latent_training_lowers_the_loss():
    model = _image_model(depth=1)
    latents = torch.randn(16, 4, 4, 4)
    voxels = torch.randn(16, 50)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    assert not any(p.requires_grad for p in model.vae.parameters())  # the VAE is frozen

    def mean_loss(n=8):
        with torch.no_grad():
            return sum(
                model.training_loss_latents(latents, BrainData(voxels=voxels), generator=torch.Generator().manual_seed(s)).item()
                for s in range(n)
            ) / n

    before = mean_loss()
    for step in range(60):
        loss = model.training_loss_latents(latents, BrainData(voxels=voxels), generator=torch.Generator().manual_seed(100 + step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert mean_loss() < 0.8 * before


def test_training_loss_on_images_encodes_with_the_frozen_vae():
    vae = LatentVAE(VAEConfig(in_channels=1, latent_channels=4, hidden_dims=[8, 8]))
    model = build_brain2img(n_voxels=50, img_size=16, hidden_dim=32, depth=1, num_heads=4, vae=vae)
    assert model.vae is vae and model.config.vae.in_channels == 1
    images = torch.rand(4, 1, 16, 16)
    brain = BrainData(voxels=torch.randn(4, 50))
    direct = model.training_loss(images, brain, cfg_dropout=0.0)
    assert torch.isfinite(direct)
    with pytest.raises(CortexflowInputError, match="3 channels|1 channels"):
        model.training_loss(torch.rand(4, 3, 16, 16), brain)


def test_prior_conditioning_feeds_the_prior_to_the_dit():
    model = _image_model(prior_conditioning=True)
    _randomize_dit(model)
    assert model.dit.config.in_channels == 8 and model.dit.config.latent_out_channels == 4
    voxels = torch.randn(2, 50)
    prior = torch.randn(2, 4, 4, 4)
    z1 = model.sample_latents(BrainData(voxels=voxels, prior=prior), num_steps=2, generator=torch.Generator().manual_seed(0))
    z2 = model.sample_latents(BrainData(voxels=voxels, prior=-prior), num_steps=2, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(z1, z2)
    loss = model.training_loss_latents(torch.randn(2, 4, 4, 4), BrainData(voxels=voxels, prior=prior))
    assert torch.isfinite(loss)
    with pytest.raises(CortexflowInputError, match="BrainData.prior is None"):
        model.sample_latents(BrainData(voxels=voxels), num_steps=1)
    with pytest.raises(CortexflowInputError, match=r"BrainData.prior must be .*\(batch, 4, 4, 4\)"):
        model.sample_latents(BrainData(voxels=voxels, prior=torch.randn(2, 4, 8, 8)), num_steps=1)
    with pytest.raises(CortexflowInputError, match="without prior_conditioning"):
        _image_model().sample_latents(BrainData(voxels=voxels, prior=prior), num_steps=1)


def test_roi_encoder_inside_the_audio_pipeline():
    torch.manual_seed(0)
    encoder = ROIBrainEncoder(roi_sizes={"A1": 30, "STG": 20}, cond_dim=32, tokens_per_roi=3)
    model = Brain2Audio(n_mels=16, audio_len=32, hidden_dim=32, depth=1, num_heads=4, brain_encoder=encoder)
    assert model.config.n_voxels == 50 and model.uncond_tokens.shape == (1, 6, 32)
    brain = BrainData(voxels={"A1": torch.randn(2, 30), "STG": torch.randn(2, 20)})
    result = model.reconstruct(brain, num_steps=2, cfg_scale=2.0)
    assert result.output.shape == (2, 16, 32) and result.modality == "audio"
    assert model.latent_shape == (8, 8)
    mel = torch.randn(2, 16, 32)
    assert torch.isfinite(model.training_loss(mel, brain))


def test_misuse_raises_clear_errors():
    model = _image_model()
    brain = BrainData(voxels=torch.randn(2, 50))
    with pytest.raises(CortexflowInputError, match="has 60 voxels but the encoder was built for 50"):
        model.reconstruct(BrainData(voxels=torch.randn(2, 60)), num_steps=1)
    with pytest.raises(CortexflowInputError, match="unknown ODE solver 'rk4'.*'euler', 'midpoint', 'heun'"):
        model.reconstruct(brain, num_steps=1, solver="rk4")
    with pytest.raises(CortexflowInputError, match=r"latents must be .*\(batch, 4, 4, 4\)"):
        model.training_loss_latents(torch.randn(2, 4, 8, 8), brain)
    with pytest.raises(CortexflowInputError, match="3 rows but the brain data has 2"):
        model.training_loss_latents(torch.randn(3, 4, 4, 4), brain)
    with pytest.raises(CortexflowInputError, match="expected a BrainData"):
        model.reconstruct(torch.randn(2, 50), num_steps=1)
    with pytest.raises(CortexflowInputError, match="num_samples"):
        model.reconstruct(brain, num_steps=1, num_samples=0)
    with pytest.raises(CortexflowInputError, match="img_size=18"):
        _image_model(img_size=18)
    with pytest.raises(CortexflowInputError, match="audio_len=30"):
        build_brain2audio(n_voxels=10, n_mels=8, audio_len=30, hidden_dim=16, depth=1, num_heads=2)


def _test_tone(sr: int = 16000, seconds: float = 1.0) -> torch.Tensor:
    t = torch.arange(int(sr * seconds)) / sr
    chirp = 0.3 * torch.sin(2 * math.pi * (200 * t + 400 * t**2))
    decaying = 0.2 * torch.sin(2 * math.pi * 440 * t) * torch.exp(-2 * t)
    return (chirp + decaying).unsqueeze(0)


@pytest.mark.parametrize("n_mels,n_fft,hop", [(80, 1024, 256), (32, 512, 128)])
def test_mel_round_trip_waveform_mel_waveform_mel(n_mels, n_fft, hop):
    """waveform -> log-mel -> waveform -> log-mel stays within 0.5 log units (mean
    absolute error over bins above 1e-3 magnitude, i.e. where there is sound;
    measured 0.40 and 0.29) and correlates above 0.97 overall."""
    wave = _test_tone()
    params = dict(n_fft=n_fft, hop_length=hop)
    mel = waveform_to_mel(wave, n_mels=n_mels, **params)
    assert mel.shape == (1, n_mels, 1 + wave.shape[1] // hop)
    back = mel_to_waveform(mel, **params)
    assert back.shape == (1, (mel.shape[-1] - 1) * hop)
    mel2 = waveform_to_mel(back, n_mels=n_mels, **params)
    frames = min(mel.shape[-1], mel2.shape[-1]) - 1  # the last frame sees the shorter end
    a, b = mel[..., :frames], mel2[..., :frames]
    sounding = a > math.log(1e-3)
    assert (a - b).abs()[sounding].mean() < 0.5
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.97
    # and the seed-style static method is the same function with the seed defaults
    if n_mels == 80:
        torch.testing.assert_close(Brain2Audio.mel_to_waveform(mel), back)
        torch.testing.assert_close(Brain2Audio.waveform_to_mel(wave), mel)


def test_mel_errors():
    with pytest.raises(CortexflowInputError, match="mel must be a float tensor"):
        mel_to_waveform(torch.zeros(2, 3, 4, 5))
    with pytest.raises(CortexflowInputError, match="waveform must be a float tensor"):
        waveform_to_mel(torch.zeros(2, 3, 4))
    with pytest.raises(CortexflowInputError, match="hop_length"):
        waveform_to_mel(torch.zeros(100), hop_length=0)
