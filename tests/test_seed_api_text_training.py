"""The seed library's README code for text, training, ROI encoding, subject
adapters and EMA runs unchanged against cortexflow (sizes as in the README
where that stays fast)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    """Each test starts from the same torch seed (one thread: conftest's _one_thread)."""
    torch.manual_seed(0)


def test_readme_brain_to_text():
    from cortexflow import BrainData, build_brain2text

    model = build_brain2text(n_voxels=15000, max_len=128, hidden_dim=512, depth=8)
    fmri = torch.randn(1, 15000)

    result = model.reconstruct(BrainData(voxels=fmri), temperature=0.8, top_k=50)
    texts = result.metadata["texts"]

    assert isinstance(texts, list) and len(texts) == 1 and isinstance(texts[0], str)
    assert result.output.shape[0] == 1 and result.output.shape[1] <= 128
    assert len(texts[0].encode("utf-8", errors="replace")) <= 3 * 128  # U+FFFD is 3 bytes


def test_readme_training_loop_with_the_text_model():
    from cortexflow import BrainData, Trainer, TrainingConfig, build_brain2text

    model = build_brain2text(n_voxels=300, max_len=32, hidden_dim=64, depth=2)
    trainer = Trainer(model, TrainingConfig(learning_rate=1e-4, batch_size=16))

    sentences = ["the cat sat on the mat", "a bird sang", "rain on the roof", "hello"] * 4
    dataloader = [(sentences[:8], torch.randn(8, 300)), (sentences[8:], torch.randn(8, 300))]
    losses = []
    for texts, fmri in dataloader:
        brain = BrainData(voxels=fmri)
        loss = trainer.train_step(
            {"stimulus": texts, "fmri": fmri},
            loss_fn=lambda m, b: m.training_loss(b["stimulus"], BrainData(voxels=b["fmri"])),
        )
        losses.append(loss)
    assert all(isinstance(x, float) for x in losses)
    assert 4.5 < losses[0] < 6.5  # ~ ln(259) for an untrained byte model
    assert trainer.step == 2 and brain.batch_size == 8


def test_readme_roi_aware_brain_encoding():
    from cortexflow import ROIBrainEncoder

    encoder = ROIBrainEncoder(
        roi_sizes={"V1": 2000, "V2": 1500, "FFA": 800, "PPA": 600, "A1": 1000},
        cond_dim=768,
    )
    v1_voxels, v2_voxels = torch.randn(2, 2000), torch.randn(2, 1500)
    rest = {"FFA": torch.randn(2, 800), "PPA": torch.randn(2, 600), "A1": torch.randn(2, 1000)}
    brain_global, brain_tokens = encoder({"V1": v1_voxels, "V2": v2_voxels, **rest})
    assert brain_global.shape == (2, 768)
    assert brain_tokens.shape[0] == 2 and brain_tokens.shape[2] == 768 and brain_tokens.shape[1] % 5 == 0


def test_readme_per_subject_adaptation():
    from cortexflow import SubjectAdapter

    brain_global = torch.randn(1, 768)
    adapter = SubjectAdapter(cond_dim=768, rank=16, n_subjects=8)
    adapted = adapter(brain_global, subject_idx=torch.tensor([0]))
    assert torch.equal(adapted, brain_global)  # an untrained adapter is the identity


def test_readme_ema_for_stable_sampling():
    from cortexflow import BrainData, EMAModel, build_brain2text

    model = build_brain2text(n_voxels=50, max_len=8, hidden_dim=32, depth=1)
    brain_data = BrainData(voxels=torch.randn(1, 50))
    ema = EMAModel(model, decay=0.9999)
    # During training:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ema.update(model)
    trained = [p.clone() for p in model.parameters()]
    # For sampling:
    originals = ema.apply_to(model)
    result = model.reconstruct(brain_data)
    ema.restore(model, originals)

    assert len(result.metadata["texts"]) == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), trained))
