"""Cross-subject decoding: per-subject voxel adapters into a shared space, shared
training, adapting to a new subject, freezing; the stage's run selection; and
the ROI encoder option of train_decoder."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cortexflow.errors import CortexflowInputError
from cortexflow.models.brain2img import Brain2Image
from cortexflow.models.cross_subject import ADAPTER_PREFIX, CrossSubjectEncoder, adapt_to_subject, set_trainable
from cortexflow.models.dit import DiTConfig
from cortexflow.models.io import load_model, save_model
from cortexflow.models.types import BrainData
from cortexflow.models.vae import LatentVAE, VAEConfig

SUBJECTS = {"01": 30, "02": 24}


def _decoder(subject_voxels=SUBJECTS, seed=0):
    torch.manual_seed(seed)
    enc = CrossSubjectEncoder(subject_voxels, shared_dim=16, cond_dim=32, n_tokens=2, dropout=0.0)
    vae = LatentVAE(VAEConfig(in_channels=1, latent_channels=2, hidden_dims=(8,)))
    dit = DiTConfig(hidden_dim=32, depth=1, num_heads=2, cond_dim=32, patch_size=2)
    return Brain2Image(enc.n_voxels, 8, dit, None, None, 2, enc, vae=vae, cond_drop_prob=0.0)


def _toy_data(n=48, seed=0):
    """Two subjects who see the same stimuli; each has its own random linear voxel code."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, 4, 4, generator=g)
    feats = z.flatten(1)
    X = {s: feats @ torch.randn(feats.shape[1], k, generator=g) + 0.1 * torch.randn(n, k, generator=g)
         for s, k in SUBJECTS.items()}
    return z, X


def test_adapters_have_each_subjects_shape_and_rows_use_their_own_adapter():
    model = _decoder()
    enc = model.brain_encoder
    assert enc.subjects == ["01", "02"] and enc.n_voxels == 30
    assert [a.linear.weight.shape for a in enc.adapters] == [torch.Size([16, 30]), torch.Size([16, 24])]
    enc.eval()
    x1, x2 = torch.randn(3, 30), torch.randn(2, 24)
    mixed = torch.zeros(5, 30)
    mixed[:3], mixed[3:, :24] = x1, x2
    idx = torch.tensor([0, 0, 0, 1, 1])
    g_mixed, t_mixed = enc(mixed, idx)
    g1, _ = enc(x1, 0)
    g2, t2 = enc(x2, torch.tensor([1, 1]))
    torch.testing.assert_close(g_mixed[:3], g1)
    torch.testing.assert_close(g_mixed[3:], g2)
    torch.testing.assert_close(t_mixed[3:], t2)
    # subject 01's voxels through subject 02's adapter give something else
    assert not torch.allclose(enc(x1[:, :24], 1)[0], g1)


def test_encoder_rejects_missing_or_bad_subject():
    enc = CrossSubjectEncoder(SUBJECTS, shared_dim=8, cond_dim=16)
    with pytest.raises(CortexflowInputError, match="names none"):
        enc(torch.randn(2, 30))
    with pytest.raises(CortexflowInputError, match=r"in \[0, 2\)"):
        enc(torch.randn(2, 30), torch.tensor([0, 2]))
    with pytest.raises(CortexflowInputError, match="need 30 voxels"):
        enc(torch.randn(2, 24), 0)
    # one subject: no index needed, a drop-in single-subject encoder
    single = CrossSubjectEncoder({"03": 10}, shared_dim=8, cond_dim=16, n_tokens=3)
    g, t = single(torch.randn(4, 10))
    assert g.shape == (4, 16) and t.shape == (4, 3, 16)


def _fit(model, z, X, idx, steps, lr=3e-3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = model.training_loss_latents(z, BrainData(voxels=X, subject_idx=idx), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_shared_training_on_two_subjects_lowers_the_loss():
    z, X = _toy_data()
    model = _decoder()
    model.set_latent_stats(torch.cat([z, z]))
    Xpad = torch.zeros(2 * len(z), 30)
    Xpad[:len(z)], Xpad[len(z):, :24] = X["01"], X["02"]
    idx = torch.cat([torch.zeros(len(z)), torch.ones(len(z))]).long()
    model.train()
    losses = _fit(model, torch.cat([z, z]), Xpad, idx, 60)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_adapt_to_subject_copies_shared_weights_and_round_trips(tmp_path):
    shared = _decoder()
    path = save_model(shared, tmp_path / "shared.pt")
    new = adapt_to_subject(load_model(path), "03", 12)
    assert new.brain_encoder.subjects == ["03"] and new.brain_encoder.adapters[0].linear.in_features == 12
    old_state, new_state = shared.state_dict(), new.state_dict()
    for key, value in new_state.items():
        if key.startswith(ADAPTER_PREFIX):
            assert key not in old_state or old_state[key].shape != value.shape or not torch.equal(old_state[key], value)
        else:
            torch.testing.assert_close(value, old_state[key], msg=key)
    # the adapted model saves and loads as an ordinary decoder, used without a subject index
    new_path = save_model(new, tmp_path / "new.pt")
    again = load_model(new_path)
    torch.manual_seed(1)
    out = again.reconstruct(BrainData(voxels=torch.randn(2, 12)), num_steps=2, cfg_scale=1.0)
    assert out.output.shape == (2, 1, 8, 8)
    with pytest.raises(CortexflowInputError, match="not a CrossSubjectEncoder"):
        adapt_to_subject(Brain2Image(12, 8, DiTConfig(hidden_dim=32, depth=1, num_heads=2, cond_dim=32),
                                     vae=LatentVAE(VAEConfig(in_channels=1, latent_channels=2, hidden_dims=(8,)))),
                         "04", 12)


@pytest.mark.parametrize("which", ["adapter", "all"])
def test_fine_tuning_changes_only_the_allowed_parameters(which):
    z, X = _toy_data()
    shared = _decoder({"01": 30})
    shared.set_latent_stats(z)
    shared.train()
    _fit(shared, z, X["01"], None, 20)  # a fresh DiT's zero-initialised outputs pass no gradient to the condition
    new = adapt_to_subject(shared, "02", 24)
    trainable = set_trainable(new, which)
    before = {k: v.clone() for k, v in new.state_dict().items()}
    new.train()
    losses = _fit(new, z, X["02"], None, 30)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    changed = {k for k, v in new.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "nothing trained"
    assert all(not k.startswith("vae.") for k in changed)
    if which == "adapter":
        assert trainable and all(k.startswith(ADAPTER_PREFIX) for k in trainable)
        assert changed <= set(trainable)
    else:
        assert any(k.startswith("dit.") for k in changed) and any(k.startswith(ADAPTER_PREFIX) for k in changed)


def test_first_runs_rows_counts_whole_runs():
    from cortexflow.stages.cross_subject import first_runs_rows

    train = pd.DataFrame({"run": [1, 1, 2, 2, 2, 3, 10, 10], "stimulus_id": list("abcdefgh")})
    assert first_runs_rows(train, 1).tolist() == [True, True] + [False] * 6
    assert first_runs_rows(train, 2).sum() == 5
    # runs are ordered as numbers stored as ints; run 10 comes last
    assert first_runs_rows(train, 3)[-2:].tolist() == [False, False]
    with pytest.raises(CortexflowInputError, match="has 4"):
        first_runs_rows(train, 5)


def test_roi_encoder_option_builds_one_token_group_per_region():
    from cortexflow.models.brain_encoder import BrainEncoder, ROIBrainEncoder
    from cortexflow.stages.decoder import build_brain_encoder, roi_sizes
    from cortexflow.stages.params import DecoderParams

    voxels = pd.DataFrame({"region": ["V_001"] * 3 + ["V_002"] * 5 + ["V_003"] * 2})
    assert roi_sizes(voxels) == {"V_001": 3, "V_002": 5, "V_003": 2}
    enc = build_brain_encoder(DecoderParams(hidden_dim=16, encoder="roi", tokens_per_roi=2, roi_hidden_dim=8), 10, voxels)
    assert isinstance(enc, ROIBrainEncoder) and enc.n_tokens == 6 and enc.n_voxels == 10
    assert isinstance(build_brain_encoder(DecoderParams(hidden_dim=16), 10, voxels), BrainEncoder)
    with pytest.raises(CortexflowInputError, match="not contiguous"):
        roi_sizes(pd.DataFrame({"region": ["a", "b", "a"]}))
    with pytest.raises(CortexflowInputError, match="'global' or 'roi'"):
        build_brain_encoder(DecoderParams(encoder="roy"), 10, voxels)
