"""The workflow's DAG: lint, config validation, and what reruns after an edit.

docs/design-notes.md, "Reruns after edits": a change to a stage's parameters, or to the
cortexflow source files it depends on, reruns that stage and what follows, and
nothing upstream. These tests check it with Snakemake's dry run on the tiny
config, in a temporary copy of the repository whose outputs are made to look
like those of a complete run (empty files, then ``snakemake --touch`` so that
Snakemake records its provenance metadata), so no stage has to run.

``copy_repo``, ``snakemake`` and ``scheduled`` are also used by
test_workflow_slurm.py and test_workflow_e2e.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import cortexflow
from cortexflow.config import default_config, load_config, validate_config
from cortexflow.errors import CortexflowInputError
from cortexflow.fingerprint import source_fingerprint, stage_fingerprint, stage_sources
from cortexflow.stages.params import training_seeds

REPO = Path(__file__).resolve().parents[1]
TINY = "tests/configs/tiny.yaml"
# generated or environment folders never copied (top level only for data/results)
_SKIP_TOP = {".git", ".venv", "results", "data", ".snakemake", ".pytest_cache", "report.html"}
_SKIP_ANY = {"__pycache__", ".cache", ".snakemake"}


def copy_repo(dest: Path) -> Path:
    """Copy the repository's sources (no venv, results, data or git state) to ``dest``."""

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in _SKIP_ANY or n.endswith(".egg-info")}
        if Path(folder).resolve() == REPO:
            skip |= {n for n in names if n in _SKIP_TOP}
        return skip

    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def workflow_env(repo: Path, path_prefix: list[Path] | None = None) -> dict[str, str]:
    """Environment in which Snakemake and the rules import the copy's cortexflow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(repo), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    path = [str(p) for p in (path_prefix or [])] + [str(Path(sys.executable).parent), env.get("PATH", "")]
    env["PATH"] = os.pathsep.join(path)
    env.setdefault("HOME", str(repo))
    return env


def snakemake(repo: Path, *args: str, env: dict | None = None, timeout: float = 120, check: bool = True):
    """Run ``python -m snakemake ARGS`` in ``repo``; return the completed process.

    Snakemake runs in a session of its own: on a timeout the whole group is killed, its jobs too
    (``subprocess.run`` would kill Snakemake alone and leave its trainings running into later tests).
    """
    with subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=repo, env=env or workflow_env(repo),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.communicate()
            raise
    proc = subprocess.CompletedProcess(popen.args, popen.returncode, stdout, stderr)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def scheduled(output: str) -> dict[str, int]:
    """Rule -> number of jobs from the 'Job stats' table of a (dry) run's output."""
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def fake_complete_run(repo: Path, *configs: str) -> list[str]:
    """Make every output of the workflow exist, with provenance as after a real run.

    Returns the outputs, relative to ``repo``.
    """
    args = ["--configfile", *configs]
    summary = snakemake(repo, "--cores", "1", "--summary", *args, timeout=600).stdout
    lines = [line for line in summary.splitlines() if "\t" in line][1:]
    for line in lines:
        path = repo / line.split("\t", 1)[0]
        if path.suffix:  # the only extension-less outputs are make_dataset's folders
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
    assert lines, summary
    snakemake(repo, "--cores", "1", "--touch", "--forceall", *args, timeout=600)
    return [line.split("\t", 1)[0] for line in lines]


def shared_build(tmp_path_factory, name: str, build) -> Path:
    """The folder ``build(folder)`` fills, built once per test session and shared.

    Under pytest-xdist the workers share the session's temporary folder (the parent
    of each worker's own), so a file lock lets the first worker build it and the others
    wait for it; without xdist it is built in the session's folder. Callers that change
    what they get copy it first (:func:`finished_copy`), so tests stay independent.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def finished_copy(tmp_path_factory, dest: Path, per_seed: bool = False) -> tuple[Path, list[str]]:
    """A copy at ``dest`` of the repository where the tiny study's workflow looks complete
    (:func:`fake_complete_run`), and the outputs made to look complete (relative to it).

    The complete-looking repository is made once per test session (two Snakemake runs
    over the whole DAG) and copied with its timestamps and Snakemake's metadata, so
    each copy looks complete to Snakemake as the original does. ``per_seed``: as a run
    that trains one train_decoder job per image seed left it (config seed_ensemble off,
    as under a profile that gives train_decoder GPUs), not one train_decoder_seeds job.
    """

    def build(folder: Path) -> None:
        repo = copy_repo(folder / "repo")
        configs = [TINY]
        if per_seed:
            configs.append(overlay(repo, "per_seed.yaml", {"seed_ensemble": False}))
        outputs = fake_complete_run(repo, *configs)
        (folder / "outputs.json").write_text(json.dumps(outputs))

    shared = shared_build(tmp_path_factory, "tiny-complete-per-seed" if per_seed else "tiny-complete", build)
    shutil.copytree(shared / "repo", dest, symlinks=True)  # copy2: modification times kept
    return dest, json.loads((shared / "outputs.json").read_text())


def dry_run(repo: Path, *configs: str) -> dict[str, int]:
    args = ["--configfile", *configs]
    return scheduled(snakemake(repo, "--cores", "1", "--dry-run", *args).stdout)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A copy of the repository where the tiny study's workflow looks complete."""
    return finished_copy(tmp_path_factory, tmp_path_factory.mktemp("dag") / "repo")[0]


@pytest.fixture(scope="module")
def forceall_plan(finished) -> dict[str, int]:
    """The jobs of a dry run with --forceall on the tiny config: the whole DAG (one Snakemake run,
    read by two tests)."""
    return scheduled(snakemake(finished, "--cores", "1", "--dry-run", "--forceall", "--configfile", TINY).stdout)


@pytest.fixture(scope="module")
def tiny() -> dict:
    return load_config(REPO / TINY)


def overlay(repo: Path, name: str, content: dict) -> str:
    path = repo / name
    path.write_text(yaml.safe_dump(content))
    return name


# ------------------------------------------------------------------ the DAG


def test_lint_is_clean(finished):
    proc = snakemake(finished, "--lint", check=False)
    assert proc.returncode == 0 and "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_complete_run_schedules_nothing(finished, tiny):
    assert dry_run(finished, TINY) == {}


def test_tiny_dag_has_every_rule_once_per_unit(forceall_plan, tiny):
    """Removing the final summary shows the expected fan-out of the DAG."""
    jobs = dict(forceall_plan)
    modalities = tiny["data"]["modalities"]
    continuous = [m for m in modalities if m != "text"]
    n_subjects = jobs["make_dataset"] // len(modalities)
    assert n_subjects >= 1
    assert jobs["simulate_study"] == 1
    assert jobs["extract_rois"] == n_subjects * len(modalities)
    assert jobs["pretrain_vae"] == jobs["encode_latents"] == len(continuous)
    for rule in ("fit_baseline", "evaluate"):
        assert jobs[rule] == n_subjects * len(modalities), rule
    # one decoder (and one recon file) per training seed: decoder.<modality>.seeds; the image decoder's
    # two seeds train in one job (train_decoder_seeds: seed_ensemble auto on the CPU), the others one each
    runs = sum(training_seeds(tiny["decoder"], m) for m in modalities)
    assert training_seeds(tiny["decoder"], "image") == 2
    assert jobs["sample"] == n_subjects * runs
    assert jobs["train_decoder_seeds"] == n_subjects
    assert jobs["train_decoder"] == n_subjects * (runs - training_seeds(tiny["decoder"], "image"))
    assert jobs["summarize"] == jobs["all"] == 1
    assert jobs["glm_betas"] >= jobs["extract_rois"]
    # the report's QC figures: three per subject, one design matrix, one figure of every loss curve
    assert jobs["qc_rois"] == jobs["qc_ncsnr"] == jobs["qc_motion"] == n_subjects
    assert jobs["qc_design"] == jobs["training_curves"] == 1


def test_decoder_param_change_reruns_decoder_and_downstream_only(finished, tiny):
    image = dict(tiny["decoder"]["image"])
    image["cond_drop_prob"] = 0.2  # a real key: unknown keys are refused while the DAG is built
    changed = overlay(finished, "decoder_change.yaml", {"decoder": {"image": image}})
    jobs = dry_run(finished, TINY, changed)
    n_seeds = training_seeds(tiny["decoder"], "image")
    n_subjects = jobs["train_decoder_seeds"]
    assert set(jobs) == {"train_decoder_seeds", "sample", "evaluate", "summarize", "training_curves", "all"}, jobs
    # only the image decoders: their seeds in one job per subject, one sample per subject and training seed,
    # one evaluation per subject
    assert jobs["sample"] == n_subjects * n_seeds and jobs["evaluate"] == n_subjects
    assert "glm_betas" not in jobs and "pretrain_vae" not in jobs and "fit_baseline" not in jobs


@pytest.mark.parametrize("overrides, args, stacked", [
    ({"seed_ensemble": False}, [], False),
    ({"device": "cuda"}, [], False),  # auto, with the decoders meant for a GPU
    ({}, ["--set-resources", "train_decoder:gpu=1"], False),  # auto under a profile that gives train_decoder GPUs
    ({"seed_ensemble": True}, [], True),
])
def test_seed_ensemble_setting_decides_how_the_image_seeds_train(finished, tiny, overrides, args, stacked):
    """config seed_ensemble: false, or auto with the decoders meant for a GPU, trains one train_decoder job
    per image seed; true (as auto on the CPU) one train_decoder_seeds job per subject. Same decoder files."""
    name = "ensemble_" + "_".join(f"{k}-{v}" for k, v in overrides.items()) + ("_gpu" if args else "") + ".yaml"
    jobs = scheduled(snakemake(finished, "--cores", "1", "--dry-run", "--forcerun", "train_decoder",
                               "train_decoder_seeds", *args, "--configfile", TINY,
                               overlay(finished, name, overrides)).stdout)
    n_seeds = training_seeds(tiny["decoder"], "image")
    n_subjects = jobs["evaluate"] // len(tiny["data"]["modalities"])
    singles = sum(training_seeds(tiny["decoder"], m) for m in tiny["data"]["modalities"] if m != "image")
    if stacked:
        assert jobs["train_decoder_seeds"] == n_subjects and jobs["train_decoder"] == n_subjects * singles, jobs
    else:
        assert "train_decoder_seeds" not in jobs and jobs["train_decoder"] == n_subjects * (singles + n_seeds), jobs


def test_seed_ensemble_true_refuses_a_decoder_it_cannot_stack(finished, tiny):
    """seed_ensemble: true with the ROI encoder stops the dry run, naming the reason and the fix."""
    image = {**tiny["decoder"]["image"], "encoder": "roi"}
    changed = overlay(finished, "ensemble_roi.yaml", {"seed_ensemble": True, "decoder": {"image": image}})
    proc = snakemake(finished, "--cores", "1", "--dry-run", "--configfile", TINY, changed, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "encoder is 'roi'" in out and "seed_ensemble: auto or false" in out, out


def test_sampling_change_reruns_sampling_not_training(finished, tiny):
    image = {**tiny["sampling"]["image"], "num_steps": tiny["sampling"]["image"]["num_steps"] + 3}
    jobs = dry_run(finished, TINY, overlay(finished, "sampling_change.yaml", {"sampling": {"image": image}}))
    assert set(jobs) == {"sample", "evaluate", "summarize", "all"}, jobs
    assert jobs["sample"] == jobs["evaluate"] * training_seeds(tiny["decoder"], "image") >= 1


def test_glm_param_change_reruns_from_glm_but_not_the_simulation(finished, tiny):
    changed = overlay(finished, "glm_change.yaml", {"glm": {**tiny["glm"], "high_pass": tiny["glm"].get("high_pass", 0.01) * 1.5}})
    jobs = dry_run(finished, TINY, changed)
    assert "simulate_study" not in jobs and "pretrain_vae" not in jobs and "encode_latents" not in jobs
    for rule in ("glm_betas", "extract_rois", "make_dataset", "fit_baseline", "train_decoder", "sample",
                 "evaluate", "summarize"):
        assert rule in jobs, (rule, jobs)


def test_audio_vae_change_leaves_the_image_path_alone(finished, tiny):
    audio = {**tiny["vae"]["audio"], "kl_weight": 2e-4}  # a real key (unknown ones are refused)
    jobs = dry_run(finished, TINY, overlay(finished, "vae_change.yaml", {"vae": {"audio": audio}}))
    assert jobs["pretrain_vae"] == jobs["encode_latents"] == 1
    n_subjects = jobs["train_decoder"]
    assert jobs["sample"] == jobs["evaluate"] == jobs["fit_baseline"] == n_subjects  # audio only
    assert "glm_betas" not in jobs and "make_dataset" not in jobs


def test_editing_the_dit_source_reruns_decoders_and_downstream_only(finished):
    dit = finished / "cortexflow" / "models" / "dit.py"
    original = dit.read_bytes() if dit.exists() else None
    try:
        with open(dit, "a") as f:
            f.write("\n_AN_EDIT_OF_THE_CODE = 1\n")
        jobs = dry_run(finished, TINY)
    finally:
        if original is None:
            dit.unlink()
        else:
            dit.write_bytes(original)
    assert set(jobs) == {"train_decoder", "train_decoder_seeds", "sample", "evaluate", "summarize", "training_curves",
                         "all"}, jobs
    # every subject × modality × training seed (the image seeds two to a train_decoder_seeds job)
    assert jobs["sample"] == jobs["train_decoder"] + 2 * jobs["train_decoder_seeds"] > jobs["evaluate"]
    assert dry_run(finished, TINY) == {}  # restoring the file restores the fingerprint


def test_bids_source_finds_on_disk_the_runs_the_simulator_planned(finished, forceall_plan):
    """data.source: bids reads the runs from an fMRIPrep folder (here: the simulated one's files)."""
    planned = forceall_plan
    # the files here are empty stand-ins: no study check while the DAG is built (data.check)
    real = overlay(finished, "bids_source.yaml", {"data": {"source": "bids", "bids_root": "data/tiny/bids", "check": False}})
    found = scheduled(snakemake(finished, "--cores", "1", "--dry-run", "--forceall", "--configfile", TINY, real).stdout)
    assert "simulate_study" not in found and "check_study" not in found  # a real study is checked at DAG time
    assert {rule: n for rule, n in planned.items() if rule not in ("simulate_study", "check_study")} == found


def test_glmsingle_option_feeds_glm_betas_its_file_and_the_runs_in_order(finished):
    """data.glmsingle: glm_betas reads GLMsingle's betas (one file per subject and task) and gets
    every run's events in run order; the stimulus table is an input of every glm_betas job."""
    pattern = "glmsingle/sub-{subject}/task-{task}/TYPED_FITHRF_GLMDENOISE_RR.npy"
    for path in (finished / "data" / "tiny" / "bids" / "derivatives" / "fmriprep").glob("sub-*"):
        for task in ("images", "audio", "text"):
            target = finished / pattern.format(subject=path.name.removeprefix("sub-"), task=task)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    real = overlay(finished, "glmsingle.yaml", {"data": {"source": "bids", "bids_root": "data/tiny/bids",
                                                         "glmsingle": pattern, "check": False}})
    out = snakemake(finished, "--cores", "1", "--dry-run", "--forceall", "--printshellcmds", "--configfile", TINY, real).stdout
    commands = [line[line.index("cortexflow glm-betas"):] for line in out.splitlines() if "cortexflow glm-betas" in line]
    assert commands
    runs: dict[tuple, list[str]] = {}
    for command in commands:
        own = command.split("--events ")[1].split()[0]
        subject, task = re.search(r"sub-(\w+?)_task-(\w+?)_run-", own).groups()
        runs.setdefault((subject, task), []).append(own)
    for command in commands:
        own = command.split("--events ")[1].split()[0]
        subject, task = re.search(r"sub-(\w+?)_task-(\w+?)_run-", own).groups()
        events = re.search(r"--glmsingle-events (.*?) --out-betas", command).group(1).split()
        assert f"--glmsingle {pattern.format(subject=subject, task=task)}" in command
        assert events == sorted(runs[(subject, task)])  # every run of the subject and task, in run order
        assert "--stimuli data/tiny/bids/stimuli/stimuli.tsv" in command


def test_invalid_config_stops_the_workflow_naming_the_key(finished):
    proc = snakemake(finished, "--cores", "1", "--dry-run", "--config", "device=gpu", check=False)
    assert proc.returncode != 0
    assert "device" in proc.stdout + proc.stderr and "cuda" in proc.stdout + proc.stderr


# ------------------------------------------------------------------ config.py


def test_default_config_matches_schema_defaults():
    cfg = default_config()
    assert cfg["study"] == "sim" and cfg["device"] in ("auto", "cpu", "cuda")
    assert cfg["data"]["source"] == "simulate"
    assert cfg["data"]["tasks"] == {"image": "images", "audio": "audio", "text": "text"}
    assert set(cfg["decoder"]) == {"image", "audio", "text"} and set(cfg["vae"]) == {"image", "audio"}


def test_load_config_overrides_the_default_like_snakemake(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("study: mine\ndata:\n  subjects: ['01']\n")
    cfg = load_config(path)
    assert cfg["study"] == "mine" and cfg["data"]["subjects"] == ["01"]
    assert cfg["data"]["modalities"] == default_config()["data"]["modalities"]  # merged, not replaced


def test_schema_fills_nested_defaults_without_sharing_them():
    a = validate_config({})
    b = validate_config({})
    assert a["data"]["space"] == "MNI152NLin2009cAsym" and a["decoder"]["text"]["steps"] == 1500
    a["vae"]["image"]["hidden_dims"].append(1)
    a["glm"]["confounds"].append("x")
    assert b["vae"]["image"]["hidden_dims"] == [32, 64] and "x" not in b["glm"]["confounds"]


@pytest.mark.parametrize(
    ("config", "key", "fix"),
    [
        ({"device": "gpu"}, "device", "cpu"),
        ({"data": {"modalities": ["video"]}}, "data.modalities.0", "image"),
        ({"data": {"sorce": "bids"}}, "data.sorce", "remove or rename"),
        ({"seed": -1}, "seed", "config.schema.yaml"),
    ],
)
def test_invalid_config_names_key_and_fix(tmp_path, config, key, fix):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CortexflowInputError) as info:
        load_config(path)
    message = str(info.value)
    assert f"'{key}'" in message and fix in message and str(path) in message


# ------------------------------------------------------------------ fingerprint.py


def test_fingerprint_follows_content_not_timestamps(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "models" / "dit.py").write_text("x = 1\n")
    (pkg / "models" / "vae.py").write_text("y = 1\n")
    before = source_fingerprint("models/", root=pkg)
    os.utime(pkg / "models" / "dit.py", (0, 0))
    assert source_fingerprint("models/", root=pkg) == before
    vae_only = source_fingerprint("models/vae.py", root=pkg)
    (pkg / "models" / "dit.py").write_text("x = 2\n")
    assert source_fingerprint("models/", root=pkg) != before
    assert source_fingerprint("models/vae.py", root=pkg) == vae_only
    absent = source_fingerprint("models/audio.py", root=pkg)
    (pkg / "models" / "audio.py").write_text("")
    assert source_fingerprint("models/audio.py", root=pkg) != absent


def test_comments_docstrings_and_layout_do_not_change_the_fingerprint(tmp_path):
    """A docstring edit cannot change a stage's numbers; it must not rerun the study from its first rule."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    code = pkg / "m.py"
    code.write_text('"""Module."""\n\ndef f(x):\n    """Doubles."""\n    return 2 * x\n')
    before = source_fingerprint("m.py", root=pkg)
    code.write_text('"""Module, reworded."""\n# a comment\n\ndef f(x):  # why\n    """Twice x."""\n\n'
                    '    return 2*x\n')
    assert source_fingerprint("m.py", root=pkg) == before
    code.write_text('"""Module."""\n\ndef f(x):\n    """Doubles."""\n    return 3 * x\n')
    assert source_fingerprint("m.py", root=pkg) != before
    code.write_text('"""Module."""\n\ndef f(x):\n    return 2 * x\n')  # a docstring-only body stays valid
    assert source_fingerprint("m.py", root=pkg) == before
    code.write_text("def f(x:\n")  # not Python: its bytes count, and every edit shows
    broken = source_fingerprint("m.py", root=pkg)
    code.write_text("def f(x:  \n")
    assert source_fingerprint("m.py", root=pkg) != broken


def test_every_rule_has_a_source_list_and_dit_is_only_downstream():
    from cortexflow.stages import STAGES

    sources = {rule: stage_sources(rule) for rule in STAGES}
    upstream = ("simulate_study", "glm_betas", "extract_rois", "make_dataset", "pretrain_vae", "encode_latents",
                "fit_baseline")
    for rule in upstream:
        assert "models/dit.py" not in sources[rule], rule
    assert "models/dit.py" in sources["train_decoder"] and "models/flow.py" in sources["train_decoder"]
    # found from the imports: the module defining the stage and the library it calls, not its neighbours
    assert "preprocess/glm.py" in sources["glm_betas"] and "preprocess/rois.py" not in sources["glm_betas"]
    assert "models/ridge.py" in sources["fit_baseline"] and "evaluation/noise_free_linear.py" in sources["sample"]
    assert not any(s in ("_io.py", "errors.py", "cli.py") for files in sources.values() for s in files)
    assert len({stage_fingerprint(rule) for rule in STAGES}) >= 8
    root = Path(cortexflow.__file__).parent
    for rule, files in sources.items():
        for source in files:
            assert (root / source).is_file(), (rule, source)


def test_a_new_import_joins_the_fingerprint(tmp_path):
    pkg = tmp_path / "cortexflow"
    shutil.copytree(Path(cortexflow.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    before = stage_sources("extract_rois", root=pkg)
    assert "models/dit.py" not in before
    rois = pkg / "preprocess" / "rois.py"
    rois.write_text(rois.read_text() + "\n\ndef _lazy():\n    from cortexflow.models import dit\n")
    from cortexflow import fingerprint

    fingerprint._stage_module_files.cache_clear()
    assert "models/dit.py" in stage_sources("extract_rois", root=pkg)
