"""EMAModel: the update formula and its warmup, swapping weights in and out,
and state round trips."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cortexflow.errors import CortexflowInputError
from cortexflow.models.ema import EMAModel


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2))


def _set_all(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_update_is_the_exponential_moving_average():
    model = _model()
    _set_all(model, 1.0)
    ema = EMAModel(model, decay=0.9, warmup=False)
    _set_all(model, 3.0)
    ema.update(model)  # 0.9 * 1 + 0.1 * 3 = 1.2
    _set_all(model, -1.0)
    ema.update(model)  # 0.9 * 1.2 + 0.1 * -1 = 0.98
    for shadow in ema.shadow.values():
        torch.testing.assert_close(shadow, torch.full_like(shadow, 0.98))
    assert ema.num_updates == 2


def test_decay_warmup_schedule():
    ema = EMAModel(_model(), decay=0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.num_updates += 1
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    ema.num_updates = 100_000
    assert ema.current_decay() == 0.999
    assert EMAModel(_model(), decay=0.5, warmup=False).current_decay() == 0.5


def test_warmed_up_average_tracks_a_moving_target():
    """With warmup the average follows the weights early on; without it, decay
    0.9999 would stay near the initial weights for thousands of steps."""
    model = _model()
    _set_all(model, 0.0)
    warm, cold = EMAModel(model, decay=0.9999, warmup=True), EMAModel(model, decay=0.9999)
    _set_all(model, 1.0)
    for _ in range(200):
        warm.update(model)
        cold.update(model)
    w = next(iter(warm.shadow.values()))
    c = next(iter(cold.shadow.values()))
    assert float(w.mean()) > 0.95 and float(c.mean()) < 0.05


def test_apply_to_and_restore_swap_weights_exactly():
    model = _model()
    ema = EMAModel(model, decay=0.5, warmup=False)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    _set_all(model, 2.0)
    ema.update(model)
    current = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 3)
    originals = ema.apply_to(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, 0.5 * trained[name] + 0.5 * current[name])
    averaged_out = model(x)
    ema.restore(model, originals)
    for name, value in model.state_dict().items():
        assert torch.equal(value, current[name])
    with ema.average_parameters(model):
        torch.testing.assert_close(model(x), averaged_out)
    assert torch.equal(model[0].weight, current["0.weight"])


def test_average_parameters_restores_on_error():
    model = _model()
    ema = EMAModel(model, decay=0.0, warmup=False)
    before = model[0].weight.clone()
    _set_all(model, 5.0)
    ema.update(model)  # decay 0: shadow = current = 5
    _set_all(model, 1.0)
    with pytest.raises(RuntimeError):
        with ema.average_parameters(model):
            assert float(model[0].weight.detach().mean()) == 5.0
            raise RuntimeError("sampling failed")
    assert float(model[0].weight.detach().mean()) == 1.0 and not torch.equal(before, model[0].weight)


def test_state_dict_round_trip_and_mismatch():
    model = _model()
    ema = EMAModel(model, decay=0.99, warmup=True)
    _set_all(model, 0.3)
    for _ in range(4):
        ema.update(model)
    other = EMAModel(_model(), decay=0.5, warmup=False)
    other.load_state_dict(ema.state_dict())
    assert (other.decay, other.warmup, other.num_updates) == (0.99, True, 4)
    for k in ema.shadow:
        assert torch.equal(other.shadow[k], ema.shadow[k])
    # The state is a copy, not a view of the live shadow.
    state = ema.state_dict()
    _set_all(model, 9.0)
    ema.update(model)
    assert not torch.equal(state["shadow"]["0.weight"], ema.shadow["0.weight"])

    wrong = EMAModel(nn.Linear(3, 4))
    with pytest.raises(CortexflowInputError, match="does not match the model"):
        wrong.load_state_dict(ema.state_dict())
    with pytest.raises(CortexflowInputError, match="not the ones this EMA was created for"):
        ema.update(nn.Linear(3, 4))
    with pytest.raises(CortexflowInputError, match="decay must be in"):
        EMAModel(model, decay=1.5)
