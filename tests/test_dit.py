"""The Diffusion Transformer: shapes for 1-D and 2-D latents, adaLN-Zero start,
precomputed conditions, attention that mixes tokens, and input errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError
from cortexflow.models.dit import DiffusionTransformer, DiTConfig



def _dit(**kw) -> DiffusionTransformer:
    base = dict(hidden_dim=32, depth=2, num_heads=4, cond_dim=24, input_size=(8, 8), patch_size=2, in_channels=4)
    base.update(kw)
    return DiffusionTransformer(DiTConfig(**base))


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Replace the zero initialisation so every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _inputs(batch=3, channels=4, size=(8, 8), cond_dim=24, tokens=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, channels, *size, generator=g),
        torch.rand(batch, generator=g),
        torch.randn(batch, cond_dim, generator=g),
        torch.randn(batch, tokens, cond_dim, generator=g),
    )


def test_fresh_model_predicts_zero_velocity():
    # adaLN-Zero (Peebles & Xie 2022): zero-initialised modulation and output layer.
    x, t, g, tok = _inputs()
    out = _dit()(x, t, g, tok)
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("size,patch", [((8, 8), 2), ((4, 6), 2), ((16,), 4), ((12,), 1)])
def test_patchify_unpatchify_round_trip(size, patch):
    model = _dit(input_size=size, patch_size=patch)
    x = torch.randn(2, 4, *size)
    tokens = model.patchify(x)
    n_tokens = 1
    for s in size:
        n_tokens *= s // patch
    assert tokens.shape == (2, n_tokens, 4 * patch ** len(size))
    assert torch.equal(model.unpatchify(tokens), x)
    # The first token is the top-left patch, channel-last inside the patch.
    if len(size) == 2:
        assert torch.equal(tokens[0, 0].view(patch, patch, 4), x[0, :, :patch, :patch].permute(1, 2, 0))


def test_one_dimensional_latents_and_separate_output_channels():
    model = _randomize(_dit(input_size=(16,), in_channels=8, out_channels=4))
    x, t, g, tok = _inputs(channels=8, size=(16,))
    out = model(x, t, g, tok)
    assert out.shape == (3, 4, 16)
    assert torch.isfinite(out).all()


def test_prepared_condition_and_scalar_time_match_forward():
    model = _randomize(_dit()).eval()
    x, _, g, tok = _inputs()
    t = torch.full((3,), 0.37)
    expected = model(x, t, g, tok)
    cond = model.prepare_condition(g, tok)
    torch.testing.assert_close(model.forward_prepared(x, t, cond), expected)
    torch.testing.assert_close(model.forward_prepared(x, torch.tensor(0.37), cond), expected)


def test_every_input_reaches_the_output():
    model = _randomize(_dit()).eval()
    x, t, g, tok = _inputs()
    base = model(x, t, g, tok)
    assert not torch.allclose(model(x, t.flip(0), g, tok), base)  # time
    assert not torch.allclose(model(x, t, g + 1.0, tok), base)  # global embedding (adaLN)
    assert not torch.allclose(model(x, t, g, tok + 1.0), base)  # tokens (cross-attention)
    assert not torch.allclose(model(x, t, g, None), base)  # cross-attention skipped
    without_cross = _randomize(_dit(use_cross_attn=False)).eval()
    torch.testing.assert_close(without_cross(x, t, g, tok), without_cross(x, t, g, tok + 5.0))


def test_self_attention_mixes_tokens_and_rows_stay_independent():
    model = _randomize(_dit()).eval()
    x, t, g, tok = _inputs()
    base = model(x, t, g, tok)
    x2 = x.clone()
    x2[0, :, :2, :2] += 1.0  # change only the first patch of the first sample
    out = model(x2, t, g, tok)
    # the far corner patch of sample 0 changes (attention), other samples do not
    assert not torch.allclose(out[0, :, -2:, -2:], base[0, :, -2:, -2:])
    torch.testing.assert_close(out[1:], base[1:])


def test_attention_has_fused_projections_and_qk_norm():
    model = _dit()
    block = model.blocks[0]
    assert block.attn.qkv.weight.shape == (3 * 32, 32)
    assert block.attn.proj.weight.shape == (32, 32)
    assert block.cross_attn.kv.weight.shape == (2 * 32, 24)
    assert isinstance(block.attn.q_norm, nn.LayerNorm) and isinstance(block.attn.k_norm, nn.LayerNorm)
    # SwiGLU width: 2/3 * 4 * 32 = 85.3, rounded up to a multiple of 64
    assert block.mlp.w2.weight.shape == (32, 128)
    assert _dit(mlp_hidden_dim=96).blocks[0].mlp.w2.weight.shape == (32, 96)


def test_seed_constructor_and_training_step_reduces_loss():
    torch.manual_seed(0)
    cfg = DiTConfig(in_channels=4, hidden_dim=32, depth=2, num_heads=4, cond_dim=32)
    model = DiffusionTransformer(cfg, img_size=4)
    assert model.config.input_size == (4, 4) and model.img_size == 4
    x, t, g, tok = _inputs(channels=4, size=(4, 4), cond_dim=32)
    target = torch.tanh(x.flip(1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = ((model(x, t, g, tok) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden_dim=30, num_heads=4), "divisible by num_heads"),
        (dict(input_size=(7, 8)), "not divisible by patch_size"),
        (dict(input_size=(2, 2, 2)), "input_size"),
        (dict(depth=0), "depth"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(CortexflowInputError, match=match):
        _dit(**kwargs)


def test_bad_inputs_raise_clear_errors():
    model = _dit()
    x, t, g, tok = _inputs()
    with pytest.raises(CortexflowInputError, match=r"latents of shape \(batch, 4, 8, 8\)"):
        model(x[:, :3], t, g, tok)
    with pytest.raises(CortexflowInputError, match=r"brain_global must be \(batch, 24\)"):
        model(x, t, g[:, :10], tok)
    with pytest.raises(CortexflowInputError, match="brain_tokens"):
        model(x, t, g, tok[:2])
    with pytest.raises(CortexflowInputError, match="t must be"):
        model(x, torch.rand(2), g, tok)
    with pytest.raises(CortexflowInputError, match="condition has 2"):
        model.forward_prepared(x, t, model.prepare_condition(g[:2], tok[:2]))
