"""save_model / load_model: a trained model comes back with identical outputs,
nested configs round-trip, and bad files give errors that name the file."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cortexflow import BrainData, load_model, save_model
from cortexflow.errors import CortexflowInputError
from cortexflow.models.brain2audio import Brain2Audio
from cortexflow.models.brain2img import Brain2ImageConfig, build_brain2img
from cortexflow.models.brain_encoder import ROIBrainEncoder
from cortexflow.models.dit import DiffusionTransformer, DiTConfig
from cortexflow.models.io import config_from_dict, read_model_file
from cortexflow.models.vae import AudioVAE, LatentVAE, VAEConfig



def _train_a_little(model, latents, brain, steps=3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for s in range(steps):
        loss = model.training_loss_latents(latents, brain, generator=torch.Generator().manual_seed(s))
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_trained_image_model_round_trips_with_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = build_brain2img(n_voxels=40, img_size=16, hidden_dim=32, depth=1, num_heads=4, in_channels=1, vae_hidden_dims=(8, 8))
    latents = torch.randn(4, *model.latent_shape)
    brain = BrainData(voxels=torch.randn(4, 40))
    model.set_latent_stats(latents * 3 + 1)
    _train_a_little(model, latents, brain)
    path = save_model(model, tmp_path / "models" / "decoder.pt", extra={"step": 3, "ids": ["a", "b"]})
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["decoder.pt"]  # no temp files left

    loaded, extra = load_model(path, return_extra=True)
    assert extra == {"step": 3, "ids": ["a", "b"]}
    assert type(loaded) is type(model) and loaded.config == model.config
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    def sample(m):
        return m.reconstruct(brain, num_steps=3, generator=torch.Generator().manual_seed(7)).output

    assert torch.equal(sample(loaded), sample(model))


def test_nested_configs_round_trip_for_audio_with_roi_encoder_and_prior(tmp_path):
    torch.manual_seed(0)
    encoder = ROIBrainEncoder(roi_sizes={"A1": 12, "belt.L": 8}, cond_dim=32, tokens_per_roi=2)
    model = Brain2Audio(
        n_mels=16, audio_len=32, hidden_dim=32, depth=1, num_heads=4, brain_encoder=encoder,
        prior_conditioning=True, cond_drop_prob=0.2, n_fft=512, hop_length=128,
    )
    path = save_model(model, tmp_path / "audio.pt")
    loaded = load_model(path)
    assert loaded.config == model.config
    assert isinstance(loaded.brain_encoder, ROIBrainEncoder)
    assert loaded.brain_encoder.config.roi_sizes == {"A1": 12, "belt.L": 8}
    assert isinstance(loaded.config.dit, DiTConfig) and loaded.config.dit.input_size == (8,)
    assert loaded.mel_params == {"sample_rate": 16000, "n_fft": 512, "hop_length": 128}
    brain = BrainData(voxels=torch.randn(2, 20), prior=torch.randn(2, *model.latent_shape))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    model.eval()
    torch.testing.assert_close(loaded.sample_latents(brain, 2, generator=g()), model.sample_latents(brain, 2, generator=g()), rtol=0, atol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LatentVAE(VAEConfig(in_channels=1, hidden_dims=[8])),
        lambda: AudioVAE(n_mels=8, hidden_dim=8, n_downsample=1),
        lambda: DiffusionTransformer(DiTConfig(hidden_dim=16, depth=1, num_heads=2, cond_dim=8, input_size=(4,))),
    ],
)
def test_components_round_trip(tmp_path, make):
    torch.manual_seed(0)
    model = make()
    loaded = load_model(save_model(model, tmp_path / "m.pt"))
    assert loaded.config == model.config
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_file_contents(tmp_path):
    model = LatentVAE(VAEConfig(in_channels=1, hidden_dims=[8]))
    payload = read_model_file(save_model(model, tmp_path / "vae.pt"))
    assert payload["class"] == "cortexflow.models.vae.LatentVAE"
    assert payload["config_class"] == "cortexflow.models.vae.VAEConfig"
    assert payload["config"] == dataclasses.asdict(model.config)
    assert payload["cortexflow_version"]


def test_bad_files_give_errors_naming_the_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(CortexflowInputError, match=f"{missing}: model file does not exist"):
        load_model(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(CortexflowInputError, match=f"{corrupt}: cannot read the model file"):
        load_model(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CortexflowInputError, match="not a cortexflow model file"):
        load_model(foreign)

    good = save_model(LatentVAE(VAEConfig(in_channels=1, hidden_dims=[8])), tmp_path / "vae.pt")
    payload = torch.load(good, weights_only=True)
    tampered = tmp_path / "tampered.pt"
    torch.save({**payload, "class": "os.system"}, tampered)
    with pytest.raises(CortexflowInputError, match="only name classes of the cortexflow package"):
        load_model(tampered)
    wrong_weights = tmp_path / "wrong.pt"
    torch.save({**payload, "config": {**payload["config"], "latent_channels": 6}}, wrong_weights)
    with pytest.raises(CortexflowInputError, match=f"{wrong_weights}: the weights do not fit"):
        load_model(wrong_weights)
    newer = tmp_path / "newer.pt"
    torch.save({**payload, "config": {**payload["config"], "flux_capacitor": 1}}, newer)
    with pytest.raises(CortexflowInputError, match="fields this cortexflow does not know: \\['flux_capacitor'\\]"):
        load_model(newer)


def test_save_rejects_models_without_a_config(tmp_path):
    with pytest.raises(CortexflowInputError, match="no dataclass `config`"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_config_from_dict_rebuilds_nested_dataclasses():
    config = Brain2ImageConfig(dit=DiTConfig(input_size=(4, 4)), vae=VAEConfig(hidden_dims=[8]))
    rebuilt = config_from_dict(Brain2ImageConfig, dataclasses.asdict(config))
    assert rebuilt == config and isinstance(rebuilt.dit, DiTConfig) and isinstance(rebuilt.dit.input_size, tuple)
