"""The image and audio VAEs: shapes, posterior, KL, training lowers the
reconstruction error, and clear errors for inputs they cannot take."""

from __future__ import annotations

import pytest
import torch

from cortexflow.errors import CortexflowInputError
from cortexflow.models.vae import AudioVAE, AudioVAEConfig, LatentVAE, VAEConfig



def _blobs(n: int, size: int = 16, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Smooth images in [0, 1]: one Gaussian blob each at a random place and width."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    centre = torch.rand(n, 2, generator=g) * size
    width = 1.5 + 3 * torch.rand(n, 1, 1, generator=g)
    d2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
    img = torch.exp(-d2 / (2 * width**2))
    return img.unsqueeze(1).expand(n, channels, size, size).contiguous()


def test_image_vae_shapes_and_posterior():
    torch.manual_seed(0)
    vae = LatentVAE(VAEConfig(in_channels=3, latent_channels=4, hidden_dims=[8, 16]))
    x = torch.rand(2, 3, 32, 32)
    z, mu, logvar = vae.encode(x)
    assert z.shape == mu.shape == logvar.shape == (2, 4, 8, 8)
    assert vae.latent_shape((32, 32)) == (4, 8, 8) and vae.downsample_factor == 4
    assert vae.decode(z).shape == x.shape
    # z is a sample around mu with std exp(logvar / 2)
    z2, mu2, _ = vae.encode(x)
    assert torch.equal(mu, mu2) and not torch.equal(z, z2)
    x_hat, mu3, logvar3 = vae(x)
    assert x_hat.shape == x.shape
    total, parts = vae.loss(x, x_hat, mu3, logvar3)
    assert total.item() == pytest.approx(parts["recon"] + 1e-6 * parts["kl"], rel=1e-5)


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    vae = LatentVAE(VAEConfig(in_channels=1, hidden_dims=[8]))
    x = torch.zeros(1, 1, 4, 4)
    zeros = torch.zeros(1, 4, 2, 2)
    assert vae.loss(x, x, zeros, zeros)[1]["kl"] == 0.0
    # KL(N(1, e^0) || N(0, 1)) = 0.5 * mu^2 = 0.5 per element
    assert vae.loss(x, x, zeros + 1, zeros)[1]["kl"] == pytest.approx(0.5)


def _train(vae, data, steps: int) -> list[float]:
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    recon = []
    for _ in range(steps):
        x_hat, mu, logvar = vae(data)
        loss, parts = vae.loss(data, x_hat, mu, logvar)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recon.append(parts["recon"])
    return recon


def test_image_vae_reconstruction_error_falls_with_training():
    torch.manual_seed(0)
    data = _blobs(32)
    vae = LatentVAE(VAEConfig(in_channels=1, latent_channels=4, hidden_dims=[8, 8]))
    recon = _train(vae, data, 60)
    assert recon[-1] < 0.25 * recon[0]
    # and it generalises to blobs it has not seen
    held_out = _blobs(16, seed=1)
    with torch.no_grad():
        _, mu, _ = vae.encode(held_out)
        error = torch.mean((vae.decode(mu) - held_out) ** 2).item()
    assert error < 0.5 * torch.var(held_out).item()


def test_audio_vae_shapes_and_training():
    torch.manual_seed(0)
    vae = AudioVAE(n_mels=16, latent_channels=4, hidden_dim=16, n_downsample=2)
    assert vae.config == AudioVAEConfig(16, 4, 16, 2)
    t = torch.linspace(0, 1, 32)
    # log-mel-like: a few harmonic tracks that glide over time
    mel = torch.stack(
        [torch.sin(torch.arange(16)[:, None] * 0.4 * (1 + k / 8) + 6 * t) for k in range(16)]
    )
    z, mu, _ = vae.encode(mel)
    assert z.shape == (16, 4, 8) and vae.decode(z).shape == mel.shape
    recon = _train(vae, mel, 60)
    assert recon[-1] < 0.3 * recon[0]


def test_seed_defaults():
    assert VAEConfig() == VAEConfig(3, 4, [64, 128, 256, 512], 1e-6)
    vae = AudioVAE()
    assert vae.config.n_mels == 80 and vae.latent_channels == 8 and vae.downsample_factor == 8


def test_bad_inputs_raise_clear_errors():
    vae = LatentVAE(VAEConfig(in_channels=1, hidden_dims=[8, 8]))
    with pytest.raises(CortexflowInputError, match="1 channels, got \\(2, 3, 16, 16\\)"):
        vae.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(CortexflowInputError, match="not divisible by the VAE's downsampling factor 4"):
        vae.encode(torch.rand(2, 1, 18, 16))
    with pytest.raises(CortexflowInputError, match="4 channels"):
        vae.decode(torch.rand(2, 3, 4, 4))
    audio = AudioVAE(n_mels=8, hidden_dim=8, n_downsample=1)
    with pytest.raises(CortexflowInputError, match="n_mels, frames"):
        audio.encode(torch.rand(2, 8, 4, 4))
    with pytest.raises(CortexflowInputError, match="hidden_dims"):
        VAEConfig(hidden_dims=[])
    with pytest.raises(CortexflowInputError, match="n_downsample"):
        AudioVAEConfig(n_downsample=0)
