"""Brain encoders: shapes, input checks, and behaviour (they learn a linear
read-out, ROI tokens stay local, the subject adapter starts as the identity)."""

from __future__ import annotations

import pytest
import torch

from cortexflow.errors import CortexflowInputError
from cortexflow.models.brain_encoder import (
    BrainEncoder,
    BrainEncoderConfig,
    ROIBrainEncoder,
    SubjectAdapter,
)



def test_brain_encoder_shapes_and_config_round_trip():
    torch.manual_seed(0)
    enc = BrainEncoder(n_voxels=120, cond_dim=32, n_tokens=5, hidden_dim=48, n_blocks=2).eval()
    x = torch.randn(3, 120)
    g, t = enc(x)
    assert g.shape == (3, 32) and t.shape == (3, 5, 32)
    assert isinstance(enc.config, BrainEncoderConfig)
    assert (enc.n_voxels, enc.cond_dim, enc.n_tokens) == (120, 32, 5)

    clone = BrainEncoder.from_config(enc.config).eval()
    clone.load_state_dict(enc.state_dict())
    g2, t2 = clone(x)
    torch.testing.assert_close(g2, g)
    torch.testing.assert_close(t2, t)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.randn(2, 99), "99 voxels but the encoder was built for 100"),
        (torch.randn(100), "must have 2 dimensions"),
        (torch.randn(2, 1, 100), "must have 2 dimensions"),
        (torch.ones(2, 100, dtype=torch.long), "floating point"),
        ([[0.0] * 100], "torch.Tensor"),
    ],
)
def test_brain_encoder_rejects_bad_input(bad, message):
    enc = BrainEncoder(n_voxels=100, cond_dim=16)
    with pytest.raises(CortexflowInputError, match=message):
        enc(bad)


def test_brain_encoder_rejects_bad_config():
    with pytest.raises(CortexflowInputError, match="n_voxels must be a positive integer"):
        BrainEncoder(n_voxels=0, cond_dim=8)
    with pytest.raises(CortexflowInputError, match="dropout"):
        BrainEncoder(n_voxels=10, cond_dim=8, dropout=1.5)


def test_input_norm_makes_encoder_invariant_to_trial_scale_and_offset():
    """LayerNorm over voxels removes each trial's global signal and gain."""
    torch.manual_seed(0)
    enc = BrainEncoder(n_voxels=200, cond_dim=16).eval()
    x = torch.randn(4, 200)
    scaled = 3.0 * x + torch.tensor([[1.0], [-2.0], [0.5], [4.0]])
    for a, b in zip(enc(x), enc(scaled)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_dropout_active_only_in_training():
    torch.manual_seed(0)
    enc = BrainEncoder(n_voxels=50, cond_dim=16, dropout=0.5, input_dropout=0.2)
    x = torch.randn(2, 50)
    enc.train()
    assert not torch.equal(enc(x)[0], enc(x)[0])
    enc.eval()
    assert torch.equal(enc(x)[0], enc(x)[0])


def test_brain_encoder_learns_a_linear_readout():
    """Trained briefly on y = W x + noise it must predict held-out y well (R^2 > 0.8):
    catches a broken projector, a detached path or a wrong residual."""
    torch.manual_seed(0)
    n_vox, dim = 40, 4
    weights = torch.randn(n_vox, dim) / n_vox**0.5
    x = torch.randn(400, n_vox)
    x = x - x.mean(dim=1, keepdim=True)  # input LayerNorm discards the trial mean anyway
    y = x @ weights + 0.05 * torch.randn(400, dim)
    enc = BrainEncoder(n_voxels=n_vox, cond_dim=dim, n_tokens=1, hidden_dim=64, dropout=0.0)
    opt = torch.optim.Adam(enc.parameters(), lr=3e-3)
    for _ in range(300):
        idx = torch.randint(0, 300, (64,))
        loss = torch.nn.functional.mse_loss(enc(x[idx])[0], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    enc.eval()
    with torch.no_grad():
        pred = enc(x[300:])[0]
    r2 = 1 - ((pred - y[300:]) ** 2).sum() / ((y[300:] - y[300:].mean(0)) ** 2).sum()
    assert r2 > 0.8, f"R^2 {r2:.3f}"


ROI_SIZES = {"V1": 30, "V2": 20, "lh.FFA": 10}  # a dotted name must work too


def _roi_inputs(batch: int = 3) -> dict[str, torch.Tensor]:
    return {name: torch.randn(batch, n) for name, n in ROI_SIZES.items()}


def test_roi_encoder_dict_and_flat_inputs_agree():
    torch.manual_seed(0)
    enc = ROIBrainEncoder(ROI_SIZES, cond_dim=16, tokens_per_roi=2).eval()
    inputs = _roi_inputs()
    g, t = enc(inputs)
    assert g.shape == (3, 16) and t.shape == (3, 6, 16)
    assert enc.n_tokens == 6 and enc.n_voxels == 60 and enc.roi_names == list(ROI_SIZES)
    g_flat, t_flat = enc(torch.cat(list(inputs.values()), dim=1))
    torch.testing.assert_close(g_flat, g)
    torch.testing.assert_close(t_flat, t)
    clone = ROIBrainEncoder.from_config(enc.config).eval()
    clone.load_state_dict(enc.state_dict())
    torch.testing.assert_close(clone(inputs)[1], t)


def test_roi_tokens_depend_only_on_their_roi():
    torch.manual_seed(0)
    enc = ROIBrainEncoder(ROI_SIZES, cond_dim=16, tokens_per_roi=2).eval()
    inputs = _roi_inputs()
    _, before = enc(inputs)
    changed = dict(inputs, V2=torch.randn(3, 20))
    g_after, after = enc(changed)
    torch.testing.assert_close(after[:, 0:2], before[:, 0:2])  # V1 tokens unchanged
    torch.testing.assert_close(after[:, 4:6], before[:, 4:6])  # FFA tokens unchanged
    assert (after[:, 2:4] - before[:, 2:4]).abs().max() > 1e-3  # V2 tokens changed
    assert not torch.allclose(g_after, enc(inputs)[0])  # the global sees every ROI


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda d: {k: v for k, v in d.items() if k != "V2"}, r"missing \['V2'\]"),
        (lambda d: dict(d, PPA=torch.randn(3, 5)), r"unexpected \['PPA'\]"),
        (lambda d: dict(d, V1=torch.randn(3, 31)), r"voxels\['V1'\] has 31 voxels"),
        (lambda d: dict(d, V1=torch.randn(2, 30)), "different batch sizes"),
        (lambda d: torch.randn(3, 59), "59 voxels but the encoder was built for 60"),
        (lambda d: [1, 2], "takes a dict"),
    ],
)
def test_roi_encoder_rejects_mismatched_inputs(make_bad, message):
    enc = ROIBrainEncoder(ROI_SIZES, cond_dim=8)
    with pytest.raises(CortexflowInputError, match=message):
        enc(make_bad(_roi_inputs()))


def test_subject_adapter_starts_as_identity_and_learns_per_subject():
    torch.manual_seed(0)
    adapter = SubjectAdapter(cond_dim=8, rank=2, n_subjects=3)
    x = torch.randn(4, 8)
    idx = torch.tensor([0, 1, 2, 1])
    assert torch.equal(adapter(x, idx), x)

    # One gradient step must move it away from the identity (the zero-initialised
    # factor gets a gradient because the other one is not zero).
    target = torch.randn(4, 8)
    loss = ((adapter(x, idx) - target) ** 2).mean()
    loss.backward()
    assert adapter.up.grad.abs().sum() > 0
    with torch.no_grad():
        adapter.up.normal_()
    out = adapter(x, idx)
    assert not torch.allclose(out, x)
    # Each row uses its own subject's factors: row 3 (subject 1) equals a lone call.
    torch.testing.assert_close(out[3:4], adapter(x[3:4], torch.tensor([1])))
    expected = x[0] + (x[0] @ adapter.down[0]) @ adapter.up[0]
    torch.testing.assert_close(out[0], expected)
    # A single index applies to the whole batch; tokens (B, T, D) work too.
    torch.testing.assert_close(adapter(x, 2), adapter(x, torch.tensor([2, 2, 2, 2])))
    tokens = torch.randn(4, 5, 8)
    torch.testing.assert_close(adapter(tokens, idx)[:, 1], adapter(tokens[:, 1], idx))
    assert SubjectAdapter.from_config(adapter.config).config == adapter.config


def test_subject_adapter_rejects_bad_indices():
    adapter = SubjectAdapter(cond_dim=8, rank=2, n_subjects=3)
    x = torch.randn(2, 8)
    with pytest.raises(CortexflowInputError, match=r"must be in \[0, 3\)"):
        adapter(x, torch.tensor([0, 3]))
    with pytest.raises(CortexflowInputError, match="3 entries for a batch of 2"):
        adapter(x, torch.tensor([0, 1, 2]))
    with pytest.raises(CortexflowInputError, match="integers"):
        adapter(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(CortexflowInputError, match=r"\(batch, 8\)"):
        adapter(torch.randn(2, 7), torch.tensor([0, 1]))
