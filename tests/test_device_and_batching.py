"""Device correctness and batched inference of the decoders.

There is no GPU here, so the device tests put the model on a *simulated* CUDA
device: under torch's FakeTensorMode, tensors carry a device and shapes but no
data, and every operator raises ``FakeTensorDeviceMismatchError`` when its
inputs sit on two devices -- what a real GPU run does with CPU voxels and CUDA
weights. Inputs stay real CPU tensors, as the ``sample`` stage makes them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from cortexflow import BrainData
from cortexflow.errors import CortexflowInputError
from cortexflow.models import flow
from cortexflow.models.brain2audio import build_brain2audio
from cortexflow.models.brain2img import build_brain2img
from cortexflow.models.inference import decode_in_batches, reconstruct_in_batches, texts_in_batches, trial_noise


def _image_model(prior: bool = False):
    torch.manual_seed(0)
    model = build_brain2img(n_voxels=20, img_size=16, hidden_dim=32, depth=1, num_heads=2, in_channels=1,
                            vae_hidden_dims=(8, 8), prior_conditioning=prior)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.dit.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _audio_model():
    torch.manual_seed(0)
    return build_brain2audio(n_voxels=20, n_mels=8, audio_len=16, hidden_dim=32, depth=1, num_heads=2)


@pytest.fixture
def fake_cuda(monkeypatch):
    """A FakeTensorMode in which the model can live on 'cuda' without a GPU.

    The time grid of the ODE solver is read back with ``.tolist()``, which fake
    tensors (no data) cannot do; it is pure arithmetic on the step count, so it
    is computed with numpy. bf16 support is asked of the CUDA runtime, so
    tests pass precision="fp32".
    """

    def time_grid(num_steps, shift=1.0, device=None):
        return flow.shift_time(np.linspace(0.0, 1.0, num_steps + 1), shift)  # numpy: same arithmetic, real data

    monkeypatch.setattr(flow, "time_grid", time_grid)
    return FakeTensorMode(allow_non_fake_inputs=True)


def test_fake_cuda_catches_a_device_mismatch(fake_cuda):
    # the premise of the tests below: mixing devices raises here as on a GPU
    layer = torch.nn.Linear(4, 2)
    with fake_cuda, pytest.raises(Exception, match="two devices|same device"):
        layer.to("cuda")(torch.randn(3, 4))


@pytest.mark.parametrize("build", [_image_model, _audio_model], ids=["image", "audio"])
def test_reconstruct_moves_cpu_inputs_to_a_cuda_model_and_returns_cpu(build, fake_cuda):
    model = build()
    voxels = torch.randn(3, 20)  # a real CPU tensor, as the sample stage loads it
    with fake_cuda:
        _check_reconstruct_on_cuda(model.to("cuda"), voxels)


def _check_reconstruct_on_cuda(model, voxels):
    assert model.device.type == "cuda"
    result = model.reconstruct(BrainData(voxels=voxels), num_steps=2, num_samples=2, precision="fp32",
                               generator=torch.Generator().manual_seed(0))
    assert result.output.device.type == "cpu" and result.output.shape[:2] == (3, 2)
    assert result.brain_global.device.type == "cpu"
    z = model.sample_latents(BrainData(voxels=voxels), num_steps=1, precision="fp32")
    assert z.device.type == "cpu"


def test_batched_inference_and_decoding_on_a_cuda_model(fake_cuda):
    model = _image_model(prior=True)
    voxels, prior = torch.randn(5, 20), torch.randn(5, 4, 4, 4)
    with fake_cuda:
        model = model.to("cuda")
        out = reconstruct_in_batches(model, voxels, prior, batch_size=2, num_samples=3, num_steps=2,
                                     precision="fp32", progress=False)
        assert out.device.type == "cpu" and out.shape == (5, 3, 1, 16, 16)
        decoded = decode_in_batches(model, prior, batch_size=2)
        assert decoded.device.type == "cpu" and decoded.shape == (5, 1, 16, 16)


def test_trial_noise_depends_only_on_seed_and_trial():
    a = trial_noise(7, range(0, 5), 3, (2, 4))
    b = torch.cat([trial_noise(7, [i], 3, (2, 4)) for i in range(5)])
    assert a.shape == (5, 3, 2, 4) and torch.equal(a, b)
    assert not torch.equal(trial_noise(8, [0], 3, (2, 4)), a[:1])
    assert not torch.equal(a[0], a[1])


@pytest.mark.parametrize("prior", [False, True])
def test_batched_samples_do_not_depend_on_the_batch_size(prior):
    model = _image_model(prior=prior)
    n = 9
    voxels = torch.randn(n, 20, generator=torch.Generator().manual_seed(1))
    z = torch.randn(n, 4, 4, 4, generator=torch.Generator().manual_seed(2)) if prior else None
    runs = {bs: reconstruct_in_batches(model, voxels, z, batch_size=bs, seed=5, num_samples=3, num_steps=3,
                                       precision="fp32", progress=False) for bs in (1, 7, n)}
    assert runs[n].shape == (n, 3, 1, 16, 16)
    for bs in (1, 7):
        torch.testing.assert_close(runs[bs], runs[n], rtol=0, atol=1e-5)
    assert not torch.allclose(runs[n][:, 0], runs[n][:, 1])  # each sample its own noise
    other_seed = reconstruct_in_batches(model, voxels, z, batch_size=n, seed=6, num_samples=3, num_steps=3,
                                        precision="fp32", progress=False)
    assert not torch.allclose(other_seed, runs[n])
    # one trial sampled on its own gets the samples it gets among the others
    alone = model.reconstruct(BrainData(voxels=voxels[4:5], prior=None if z is None else z[4:5]), num_steps=3,
                              num_samples=3, precision="fp32", noise=trial_noise(5, [4], 3, model.latent_shape))
    torch.testing.assert_close(alone.output[0], runs[n][4], rtol=0, atol=1e-5)


def test_noise_scale_shrinks_the_spread_of_samples_and_zero_makes_them_one():
    model = _image_model(prior=True)
    voxels = torch.randn(4, 20, generator=torch.Generator().manual_seed(1))
    z = torch.randn(4, 4, 4, 4, generator=torch.Generator().manual_seed(2))
    runs = {s: reconstruct_in_batches(model, voxels, z, batch_size=4, seed=5, num_samples=6, num_steps=3,
                                      precision="fp32", progress=False, noise_scale=s) for s in (0.0, 0.5, 1.0)}
    spread = {s: x.std(dim=1).mean().item() for s, x in runs.items()}
    assert spread[0.0] < 1e-6 < spread[0.5] < spread[1.0]  # noise 0: every sample the same
    torch.testing.assert_close(runs[1.0], reconstruct_in_batches(model, voxels, z, batch_size=4, seed=5, num_samples=6,
                                                                 num_steps=3, precision="fp32", progress=False))
    # scaled noise stays per trial: batch size 1 gives the same samples
    one_by_one = reconstruct_in_batches(model, voxels, z, batch_size=1, seed=5, num_samples=6, num_steps=3,
                                        precision="fp32", progress=False, noise_scale=0.5)
    torch.testing.assert_close(one_by_one, runs[0.5], rtol=0, atol=1e-5)
    with pytest.raises(CortexflowInputError, match="noise_scale"):
        reconstruct_in_batches(model, voxels, z, noise_scale=-0.5)


def test_batched_decoding_matches_one_pass():
    model = _image_model()
    z = torch.randn(7, 4, 4, 4)
    torch.testing.assert_close(decode_in_batches(model, z, batch_size=3), model.decode_latents(z).detach(),
                               rtol=0, atol=1e-6)


def test_greedy_texts_do_not_depend_on_the_batch_size():
    from cortexflow.models.brain2text import build_brain2text

    torch.manual_seed(0)
    model = build_brain2text(n_voxels=20, max_len=8, hidden_dim=32, depth=1, n_heads=2, n_brain_tokens=2)
    voxels = torch.randn(5, 20)
    texts = {bs: texts_in_batches(model, voxels, batch_size=bs, greedy=True, progress=False) for bs in (1, 2, 5)}
    assert len(texts[5]) == 5 and texts[1] == texts[5] and texts[2] == texts[5]


def test_bad_batch_size_and_noise_shape_are_input_errors():
    model = _image_model()
    with pytest.raises(CortexflowInputError, match="batch_size"):
        reconstruct_in_batches(model, torch.randn(2, 20), batch_size=0)
    with pytest.raises(CortexflowInputError, match="noise has shape"):
        model.reconstruct(BrainData(voxels=torch.randn(2, 20)), num_steps=1, noise=torch.randn(3, 4, 4, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
def test_reconstruct_on_a_real_gpu_matches_the_cpu():
    model = _image_model()
    voxels = torch.randn(4, 20)
    cpu = reconstruct_in_batches(model, voxels, batch_size=2, seed=1, num_samples=2, num_steps=3, precision="fp32",
                                 progress=False)
    gpu = reconstruct_in_batches(model.to("cuda"), voxels, batch_size=2, seed=1, num_samples=2, num_steps=3,
                                 precision="fp32", progress=False)
    assert gpu.device.type == "cpu"
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-3)


# ---------------------------------------------------------------------- GPUs given to a job that cannot use them


@pytest.fixture
def no_usable_cuda(monkeypatch):
    """A GPU node whose driver the CUDA build of torch cannot use: torch.cuda.is_available() is False
    (and says why, as torch does); every scheduler variable cleared, for each test to set."""
    import warnings

    from cortexflow import devices

    def unavailable():
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old (found version 12020).")
        return False

    monkeypatch.setattr(torch.cuda, "is_available", unavailable)
    for name in devices.GPU_ENV:
        monkeypatch.delenv(name, raising=False)
    devices._said.clear()
    return monkeypatch


@pytest.mark.parametrize("env", [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"SLURM_JOB_GPUS": "3"},
                                 {"SLURM_GPUS_ON_NODE": "4"}, {"SLURM_STEP_GPUS": "0"}])
def test_cuda_on_a_job_given_unusable_gpus_names_the_cause_and_the_fix(no_usable_cuda, env):
    from cortexflow.devices import resolve_device

    for k, v in env.items():
        no_usable_cuda.setenv(k, v)
    with pytest.raises(CortexflowInputError) as err:
        resolve_device("cuda")
    text = str(err.value)
    name, value = next(iter(env.items()))
    assert f"given GPUs ({name}={value})" in text
    assert f"torch {torch.__version__}" in text and "driver on your system is too old" in text
    if torch.version.cuda:
        assert f"built for CUDA {torch.version.cuda}" in text
    base = torch.__version__.split("+")[0]
    assert f"pip install torch=={base} --index-url https://download.pytorch.org/whl/cu" in text


def test_auto_on_a_job_given_unusable_gpus_warns_once_and_uses_the_cpu(no_usable_cuda, caplog):
    from cortexflow.devices import resolve_device

    no_usable_cuda.setenv("CUDA_VISIBLE_DEVICES", "0")
    with caplog.at_level("WARNING", logger="cortexflow.devices"):
        assert resolve_device("auto").type == "cpu"
        assert resolve_device("auto").type == "cpu"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1  # once per process, not once per stage call
    assert "TRAINING ON THE CPU although this job was given GPUs (CUDA_VISIBLE_DEVICES=0)" in warnings[0].message
    assert "pip install torch==" in warnings[0].message


@pytest.mark.parametrize("env", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"},
                                 {"CUDA_VISIBLE_DEVICES": "-1", "SLURM_JOB_GPUS": "0"},
                                 {"SLURM_GPUS_ON_NODE": "0"}])
def test_a_job_given_no_gpus_falls_back_to_the_cpu_quietly(no_usable_cuda, caplog, env):
    from cortexflow.devices import assigned_gpus, resolve_device

    for k, v in env.items():
        no_usable_cuda.setenv(k, v)
    assert assigned_gpus() is None
    with caplog.at_level("WARNING", logger="cortexflow.devices"):
        assert resolve_device("auto").type == "cpu"
    assert not caplog.records
    with pytest.raises(CortexflowInputError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("value, expected", [(None, True), ("1", True), ("0", False), ("false", False)])
def test_tf32_follows_the_config_key_on_cuda_only(monkeypatch, caplog, value, expected):
    from cortexflow import devices

    if value is None:
        monkeypatch.delenv("CORTEXFLOW_CUDA_TF32", raising=False)
    else:
        monkeypatch.setenv("CORTEXFLOW_CUDA_TF32", value)
    devices._said.clear()
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not expected
        devices.configure_cuda(torch.device("cpu"))
        assert torch.backends.cuda.matmul.allow_tf32 is (not expected)  # nothing on the CPU
        with caplog.at_level("INFO", logger="cortexflow.devices"):
            devices.configure_cuda(torch.device("cuda", 0))
        assert torch.backends.cuda.matmul.allow_tf32 is expected and torch.backends.cudnn.allow_tf32 is expected
        assert f"TF32 matrix products {'on' if expected else 'off'}" in caplog.text
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
