"""Brain2Text: byte encoding, the KV cache against full recomputation, the
masked loss, sampling filters, and that a tiny model learns brain -> sentence."""

from __future__ import annotations

import pytest
import torch

from cortexflow.errors import CortexflowInputError
from cortexflow.models.brain2text import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    Brain2Text,
    Brain2TextConfig,
    _choose,
    build_brain2text,
    decode_bytes,
    encode_texts,
)
from cortexflow.models.types import BrainData



def _tiny(**kwargs) -> Brain2Text:
    torch.manual_seed(0)
    args = dict(n_voxels=24, max_len=20, hidden_dim=32, depth=2, n_heads=4)
    args.update(kwargs)
    return build_brain2text(**args)


# ----------------------------------------------------------------------------- bytes


def test_encode_decode_round_trip_unicode_and_padding():
    texts = ["hi", "", "naïve café ☕", "x"]
    tokens, mask = encode_texts(texts, max_len=64)
    assert tokens.shape == (4, len("naïve café ☕".encode()))
    assert tokens[0, :2].tolist() == [ord("h"), ord("i")]
    assert (tokens[0, 2:] == PAD_ID).all() and (tokens[1] == PAD_ID).all()
    assert mask.sum(1).tolist() == [2, 0, len("naïve café ☕".encode()), 1]
    assert decode_bytes(tokens) == texts


def test_encode_truncates_and_decode_replaces_invalid_utf8(caplog):
    tokens, _ = encode_texts(["é" * 10], max_len=5)  # 20 bytes -> 5: the last 'é' is cut in half
    assert tokens.shape == (1, 5)
    assert decode_bytes(tokens) == ["éé\ufffd"]
    assert "truncated" in caplog.text
    # Model output can be any byte sequence: never raise, stop at EOS, skip BOS.
    assert decode_bytes(torch.tensor([[BOS_ID, 0xFF, ord("a"), 0xC3, EOS_ID, ord("z")]])) == ["\ufffda\ufffd"]
    assert decode_bytes([[ord("o"), ord("k"), PAD_ID, ord("x")]]) == ["ok"]


def test_encode_rejects_non_lists():
    with pytest.raises(CortexflowInputError, match="list of str"):
        encode_texts("just a string", max_len=8)
    with pytest.raises(CortexflowInputError, match=r"texts\[1\] is int"):
        encode_texts(["a", 3], max_len=8)


# ----------------------------------------------------------------------------- decoder


def test_kv_cache_logits_equal_full_recomputation():
    model = _tiny().eval()
    brain = BrainData(voxels=torch.randn(3, 24))
    seq = torch.cat([torch.full((3, 1), BOS_ID), torch.randint(0, 256, (3, 9))], dim=1)
    with torch.no_grad():
        _, memory = model.encode_brain(brain)
        full = model(seq, memory)
        # Prefill 4 positions, then a chunk of 3 after them (the causal mask
        # shifted by the cached length), then one position at a time.
        cache = model.init_cache(memory, max_positions=10)
        pieces = [model.forward_cached(seq[:, :4], cache), model.forward_cached(seq[:, 4:7], cache)]
        pieces += [model.forward_cached(seq[:, i : i + 1], cache) for i in range(7, 10)]
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_decoder_is_causal():
    model = _tiny().eval()
    with torch.no_grad():
        _, memory = model.encode_brain(BrainData(voxels=torch.randn(1, 24)))
        seq = torch.tensor([[BOS_ID, 10, 20, 30, 40]])
        changed = seq.clone()
        changed[0, 3] = 99
        a, b = model(seq, memory), model(changed, memory)
    torch.testing.assert_close(a[:, :3], b[:, :3])
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-4


def test_greedy_decoding_with_cache_equals_decoding_without():
    model = _tiny(max_len=24).eval()
    # Larger random weights than the init's, so that greedy paths vary along the
    # sequence and between rows instead of repeating one byte.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, p.shape[-1] ** -0.5)
    brain = BrainData(voxels=torch.randn(4, 24))
    result = model.reconstruct(brain, greedy=True)
    assert len(set(result.output.flatten().tolist())) > 8
    # Reference: recompute the whole prefix for every byte, no cache.
    with torch.no_grad():
        _, memory = model.encode_brain(brain)
        seq = torch.full((4, 1), BOS_ID)
        for _ in range(24):
            logits = model(seq, memory)[:, -1].clone()
            logits[:, [BOS_ID, PAD_ID]] = float("-inf")
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    for row, ref, length in zip(result.output, seq[:, 1:], result.metadata["lengths"]):
        assert torch.equal(row[:length], ref[:length])
        if length < 24:
            assert ref[length] == EOS_ID and (row[length:] == PAD_ID).all()


def test_generation_under_bf16_autocast():
    """The Trainer's CUDA path runs under bf16 autocast: projections come out
    in bf16 while the cache is allocated from the fp32 memory."""
    model = _tiny().eval()
    brain = BrainData(voxels=torch.randn(2, 24))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = model.reconstruct(brain, greedy=True, max_len=6)
        loss = model.training_loss(["ab", "cd"], brain)
    assert result.output.shape == (2, 6) and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_loss_masks_padding_and_weights_every_byte_equally():
    model = _tiny().eval()
    voxels = torch.randn(2, 24)
    texts = ["ab", "abcdefg"]
    with torch.no_grad():
        both = model.training_loss(texts, BrainData(voxels=voxels))
        first = model.training_loss(texts[:1], BrainData(voxels=voxels[:1]))
        second = model.training_loss(texts[1:], BrainData(voxels=voxels[1:]))
        tokens, _ = encode_texts(texts, max_len=20)
        padded = torch.cat([tokens, torch.full((2, 5), PAD_ID)], dim=1)
        more_padding = model.training_loss(padded, BrainData(voxels=voxels))
    # Mean over real targets (bytes + EOS): 3 for "ab", 8 for "abcdefg".
    torch.testing.assert_close(both, (3 * first + 8 * second) / 11)
    torch.testing.assert_close(more_padding, both)
    assert abs(float(first) - torch.log(torch.tensor(259.0))) < 0.5  # near uniform at init


def test_tiny_model_learns_to_decode_sentences_from_brain_patterns():
    """Four brain patterns -> four sentences that share no prefix structure the
    decoder could use alone: greedy decoding is exact only if cross-attention
    to the brain works, the loss targets are right and EOS is learnt."""
    texts = ["the cat sat", "a dog ran", "é bird sang", "rain fell"]
    model = _tiny(max_len=16, dropout=0.0, encoder_dropout=0.0)
    brain = BrainData(voxels=torch.randn(4, 24))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(90):
        loss = model.training_loss(texts, brain)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05
    result = model.reconstruct(brain, greedy=True)
    assert result.metadata["texts"] == texts
    assert result.metadata["lengths"] == [len(t.encode()) for t in texts]
    assert result.modality == "text" and result.brain_global.shape == (4, 32)
    # Low-temperature sampling with filters agrees with greedy on a confident model.
    sampled = model.reconstruct(brain, temperature=0.3, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(1))
    assert sampled.metadata["texts"] == texts


def test_reconstruct_restores_mode_and_is_reproducible_with_a_generator():
    model = _tiny().train()
    brain = BrainData(voxels=torch.randn(2, 24))
    a = model.reconstruct(brain, temperature=1.0, top_k=0, generator=torch.Generator().manual_seed(3))
    b = model.reconstruct(brain, temperature=1.0, top_k=0, generator=torch.Generator().manual_seed(3))
    assert model.training
    assert torch.equal(a.output, b.output)
    assert a.metadata["texts"] == decode_bytes(a.output)
    assert a.output.shape == (2, 20) and a.output.dtype == torch.long
    assert not ((a.output == BOS_ID).any())
    greedy = model.reconstruct(brain, greedy=True)
    for alias in (dict(temperature=0.0), dict(top_k=1), dict(top_p=1e-6)):
        out = model.reconstruct(brain, generator=torch.Generator().manual_seed(0), **alias)
        assert torch.equal(out.output, greedy.output), alias


def test_top_k_and_top_p_sample_only_from_the_kept_tokens():
    probs = torch.zeros(259)
    probs[[65, 66, 67, 68]] = torch.tensor([0.5, 0.3, 0.15, 0.05])
    probs[BOS_ID] = 0.0
    logits = torch.log(probs.clamp_min(1e-12)).expand(4000, -1).clone()
    logits[:, BOS_ID] = 50.0  # must never be sampled even when most likely
    gen = torch.Generator().manual_seed(0)

    top_k = _choose(logits, False, 1.0, 2, 1.0, gen)
    assert set(top_k.unique().tolist()) == {65, 66}
    assert abs(float((top_k == 65).float().mean()) - 0.5 / 0.8) < 0.03

    # top_p = 0.7: 0.5 alone is short of it, 0.5 + 0.3 reaches it -> {65, 66}.
    top_p = _choose(logits, False, 1.0, None, 0.7, gen)
    assert set(top_p.unique().tolist()) == {65, 66}
    # top_p = 0.9 keeps the third token too.
    assert set(_choose(logits, False, 1.0, None, 0.9, gen).unique().tolist()) == {65, 66, 67}
    # Temperature sharpens: T = 0.25 makes the top token far more frequent.
    cold = _choose(logits, False, 0.25, None, 1.0, gen)
    assert float((cold == 65).float().mean()) > 0.85


# ----------------------------------------------------------------------------- config and errors


def test_config_round_trip_from_plain_dicts():
    model = _tiny(n_subjects=2, adapter_rank=4).eval()
    from dataclasses import asdict

    config = Brain2TextConfig(**asdict(model.config))  # as a loader reading JSON would
    clone = Brain2Text.from_config(config).eval()
    clone.load_state_dict(model.state_dict())
    brain = BrainData(voxels=torch.randn(2, 24), subject_idx=torch.tensor([0, 1]))
    with torch.no_grad():
        torch.testing.assert_close(clone.training_loss(["ab", "c"], brain), model.training_loss(["ab", "c"], brain))
    with pytest.raises(CortexflowInputError, match="subject_idx is None"):
        model.training_loss(["ab", "c"], BrainData(voxels=torch.randn(2, 24)))


def test_roi_text_model_trains():
    model = build_brain2text(roi_sizes={"V1": 10, "A1": 6}, max_len=8, hidden_dim=16, depth=1, n_heads=2)
    brain = BrainData(voxels={"V1": torch.randn(2, 10), "A1": torch.randn(2, 6)})
    loss = model.training_loss(["hi", "yo"], brain)
    loss.backward()
    assert model.brain_encoder.projectors[1].proj.weight.grad.abs().sum() > 0
    assert len(model.reconstruct(brain, max_len=4).metadata["texts"]) == 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.training_loss(["a"], BrainData(voxels=torch.randn(1, 23))), "23 voxels but the encoder was built for 24"),
        (lambda m: m.training_loss(["a", "b"], BrainData(voxels=torch.randn(1, 24))), "2 texts for 1 brain samples"),
        (lambda m: m.training_loss(torch.tensor([[PAD_ID, 65]]), BrainData(voxels=torch.randn(1, 24))), "padding before"),
        (lambda m: m.training_loss(torch.tensor([[300]]), BrainData(voxels=torch.randn(1, 24))), "byte values"),
        (lambda m: m.training_loss(torch.zeros(1, 21, dtype=torch.long), BrainData(voxels=torch.randn(1, 24))), "more than max_len=20"),
        (lambda m: m.reconstruct(torch.randn(1, 24)), "BrainData"),
        (lambda m: m.reconstruct(BrainData(voxels=torch.randn(1, 24)), max_len=21), "max_len must be in"),
        (lambda m: m.reconstruct(BrainData(voxels=torch.randn(1, 24)), top_p=1.5), "top_p"),
    ],
)
def test_brain2text_rejects_misuse(call, message):
    with pytest.raises(CortexflowInputError, match=message):
        call(_tiny())


def test_build_rejects_inconsistent_arguments():
    with pytest.raises(CortexflowInputError, match="exactly one of n_voxels and roi_sizes"):
        build_brain2text()
    with pytest.raises(CortexflowInputError, match="not divisible by n_heads"):
        build_brain2text(n_voxels=10, hidden_dim=30, n_heads=4)


def test_state_dicts_with_the_old_feed_forward_names_still_load():
    """The text decoder's gated MLP is the DiT's SwiGLU now; files saved with its
    own copy's names (gate_up/down) load into the same weights."""
    model = _tiny()
    state = model.state_dict()
    old = {k.replace(".mlp.w13.", ".mlp.gate_up.").replace(".mlp.w2.", ".mlp.down."): v for k, v in state.items()}
    assert any(".mlp.gate_up." in k for k in old) and not any(".mlp.w13." in k for k in old)
    fresh = _tiny()
    fresh.load_state_dict(old)  # strict: every key mapped
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_residual_output_projections_get_the_scaled_init():
    """GPT-2 init: attention's proj and the MLP's w2 write into the residual stream,
    so their weights are N(0, 0.02 / sqrt(2 depth)); the other linears N(0, 0.02)."""
    torch.manual_seed(0)
    model = build_brain2text(n_voxels=20, max_len=64, hidden_dim=128, depth=8, n_heads=4, n_brain_tokens=4)
    residual = 0.02 / (2 * 8) ** 0.5
    for block in model.blocks:
        assert abs(block.mlp.w2.weight.std().item() - residual) < 0.25 * residual
        assert abs(block.mlp.w13.weight.std().item() - 0.02) < 0.1 * 0.02
