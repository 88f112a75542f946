"""The SLURM profile, run for real against stand-in SLURM commands.

snakemake-executor-plugin-slurm submits the workflow's jobs with `sbatch` and
polls them with `sacct`; here those commands (and `sinfo`, `squeue`, `scontrol`,
`sacctmgr`, `srun`) are small scripts on PATH that record what they are given,
run the job in place and report it COMPLETED (see docs/slurm-testing.md).
The rules' `cortexflow` command is a stand-in too: it records its arguments and
creates the files it is asked to write, so the test exercises submission, not
the stages.

The tiny study is made to look complete, and four jobs are rerun through the
profile: train_decoder with two GPUs (torchrun), a one-GPU job (sample), a CPU
job (glm_betas) and evaluate, which is a cluster job too. The targets are chosen so that no job
reruns another's input. A dry run of docs/nsd-scale.yaml
(`device: cuda`) with the profile checks that every job given `--device cuda`
is given a GPU.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow_dag import TINY, copy_repo, finished_copy, snakemake, workflow_env

ACCOUNT = "testacct"

_RECORD = """
import json, os, sys, time
log = os.environ["STANDIN_LOG"]
def record(name, **extra):
    os.makedirs(log, exist_ok=True)
    path = os.path.join(log, f"{name}-{time.time_ns()}-{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump({"argv": sys.argv[1:], **extra}, f)
"""

STANDINS = {
    # runs the wrapped job in place (as SLURM would, later), then prints its id
    "sbatch": _RECORD + """
import subprocess
args = sys.argv[1:]
wrap = next((a[len("--wrap="):] for a in args if a.startswith("--wrap=")), None)
script = sys.stdin.read() if wrap is None else wrap
# a fresh id even when the plugin submits several jobs at once
os.makedirs(log, exist_ok=True)
number = 1000
while True:
    try:
        os.close(os.open(os.path.join(log, f"jobid-{number}"), os.O_CREAT | os.O_EXCL))
        break
    except FileExistsError:
        number += 1
job_id = str(number)
env = {**os.environ, "SLURM_JOB_ID": job_id, "SLURM_JOBID": job_id, "SLURM_CPUS_PER_TASK": "1",
       "SLURM_JOB_NAME": args[args.index("--job-name") + 1] if "--job-name" in args else "job"}
proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True)
state = "COMPLETED" if proc.returncode == 0 else "FAILED"
record("sbatch", job_id=job_id, state=state, stdout=proc.stdout[-3000:], stderr=proc.stderr[-3000:])
with open(os.path.join(log, f"state-{job_id}"), "w") as f:
    f.write(state)
print(job_id)
""",
    "sacct": _RECORD + """
record("sacct")
args = sys.argv[1:]
if "Account%256" in " ".join(args):
    print(os.environ["STANDIN_ACCOUNT"])
else:
    for name in sorted(os.listdir(log)):
        if name.startswith("state-"):
            print(f"{name[6:]}|{open(os.path.join(log, name)).read()}")
""",
    "squeue": _RECORD + "record('squeue')\n",
    "sinfo": _RECORD + "record('sinfo')\nprint('PARTITION')\nprint('cpu*')\nprint('gpu')\n",
    "scontrol": _RECORD + "record('scontrol')\nprint('MinJobAge               = 300 sec')\n",
    "sacctmgr": _RECORD + "record('sacctmgr')\nprint(os.environ['STANDIN_ACCOUNT'])\n",
    "sshare": _RECORD + "record('sshare')\nprint(os.environ['STANDIN_ACCOUNT'])\n",
    # inside the job: drop srun's options, run the command
    "srun": _RECORD + """
record("srun")
args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
os.execvp(args[0], args)
""",
    # torchrun: records its options, runs the command after --no-python once (the stand-in
    # stage does no training, so one copy stands for the N processes)
    "torchrun": _RECORD + """
record("torchrun")
args = sys.argv[1:]
command = args[args.index("--no-python") + 1:]
command = command[1:] if command[0] == "--" else command
os.execvp(command[0], command)
""",
    # the stage command: creates what it is asked to write
    "cortexflow": _RECORD + """
record("cortexflow")
args = sys.argv[1:]
# a job killed by its time limit: the first training job fails once
fail_once = os.environ.get("STANDIN_FAIL_ONCE")
if fail_once and args[0] == fail_once and not os.path.exists(os.path.join(log, "failed-once")):
    open(os.path.join(log, "failed-once"), "w").close()
    sys.exit(1)
for flag, value in zip(args, args[1:]):
    if flag in ("--out-dir", "--out-figures"):
        os.makedirs(value, exist_ok=True)
    elif flag == "--out" or flag.startswith("--out-"):
        os.makedirs(os.path.dirname(value) or ".", exist_ok=True)
        open(value, "w").close()
""",
}


def _write_standins(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True)
    for name, body in STANDINS.items():
        path = bin_dir / name
        path.write_text(f"#!{sys.executable}\n{body}")
        path.chmod(0o755)


TRAIN_GPUS = 2  # what a user with multi-GPU nodes sets for train_decoder


def _test_profile(repo: Path, dest: Path, retries: int = 0) -> Path:
    """The shipped SLURM profile, with what a user adds (an account, two GPUs for
    training, as the profile's comment says) and fast polling."""
    profile = yaml.safe_load((repo / "workflow/profiles/slurm/config.yaml").read_text())
    profile["default-resources"]["slurm_account"] = ACCOUNT
    profile["set-resources"]["train_decoder"]["gpu"] = TRAIN_GPUS
    profile.update({"slurm-init-seconds-before-status-checks": 1, "seconds-between-status-checks": 1,
                    "latency-wait": 5, "retries": retries, "jobs": 4})
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile))
    return dest


def _runtime(expression, attempt: int) -> int:
    """A profile's runtime (minutes): a number, or a Python expression of ``attempt``."""
    return int(eval(str(expression), {"attempt": attempt}))


def _records(log: Path, name: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(log.glob(f"{name}-*.json"))]


def _submitted_by_rule(log: Path) -> dict[str, dict]:
    """sbatch calls by rule name, from the plugin's `--comment rule_<name>_wildcards_...`."""
    calls = {}
    for record in _records(log, "sbatch"):
        comment = _option(record["argv"], "--comment")
        calls[comment.removeprefix("rule_").split("_wildcards")[0]] = record
    return calls


def _option(argv: list[str], flag: str) -> str | None:
    """The value of `flag V` or `flag=V` in an sbatch command line."""
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1:]
    return None


# two subjects, so that the cross-subject rules have jobs; on top of tiny.yaml
TWO_SUBJECTS = {
    "simulate": {"subjects": 2},
    "cross_subject": {"runs": [1]},
}
# the rules that run a torch model with --device; the profile must give each a GPU
TORCH_RULES = {"pretrain_vae", "encode_latents", "train_decoder", "sample", "train_shared_decoder",
               "cross_subject_fit"}


def _two_subject_config(repo: Path) -> str:
    (repo / "two_subjects.yaml").write_text(yaml.safe_dump(TWO_SUBJECTS))
    return "two_subjects.yaml"


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    # the tiny study made to look complete (made once per session), as a run that trained one job per
    # image seed left it: the profile gives train_decoder GPUs, so seed_ensemble (auto) is off here
    repo, outputs = finished_copy(tmp_path_factory, root / "repo", per_seed=True)
    configs = [TINY]
    shipped = yaml.safe_load((repo / "workflow/profiles/slurm/config.yaml").read_text())
    profile = _test_profile(repo, root / "profile")
    bin_dir, log = root / "bin", root / "log"
    _write_standins(bin_dir)
    log.mkdir()

    def one(suffix: str) -> str:
        return next(p for p in outputs if p.endswith(suffix))

    # a job of each kind of submission; none of these is an input of another (so nothing else
    # reruns). Four jobs keep the test short on a busy machine (each job is a Snakemake run of
    # its own); the dry run below checks the resources of every rule's jobs, cross-subject
    # included, and the plugin turns them into sbatch options the same way.
    # (encode_latents would rerun fit_baseline, train_decoder and sample of its modality: its GPU
    # request is checked by the dry run)
    rerun = {"sample": one("/recon/sub-01_image_seed1.npz")}
    removed = {
        "train_decoder": one("/sub-01_image_decoder_seed0.pt"),
        "glm_betas": next(p for p in outputs if "sub-01_task-text_" in p and p.endswith("_betas.nii.gz")),
        "evaluate": one("_audio_summary.parquet"),
    }
    for target in removed.values():
        path = repo / target
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    targets = [*rerun.values(), *removed.values()]

    env = workflow_env(repo, path_prefix=[bin_dir])
    env.update(STANDIN_LOG=str(log), STANDIN_ACCOUNT=ACCOUNT)
    proc = snakemake(repo, *targets, "--force", "--workflow-profile", str(profile), "--configfile", *configs,
                     env=env, timeout=900, check=False)
    return {"proc": proc, "repo": repo, "log": log, "targets": targets, "shipped": shipped,
            "rules": {**rerun, **removed}}


def test_slurm_run_completes_and_writes_the_targets(slurm_run):
    proc = slurm_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for target in slurm_run["targets"]:
        assert (slurm_run["repo"] / target).exists(), target


def test_training_job_gets_the_gpu_memory_time_and_cpus_the_profile_promises(slurm_run):
    shipped = slurm_run["shipped"]
    submitted = _submitted_by_rule(slurm_run["log"])
    assert set(submitted) == set(slurm_run["rules"]), list(submitted)

    train = submitted["train_decoder"]
    promised = shipped["set-resources"]["train_decoder"]
    argv = train["argv"]
    assert promised["gpu"] == 1 and f"--gpus={TRAIN_GPUS}" in argv
    assert _option(argv, "--nodes") == "1"  # the N GPUs on one node, where torchrun --standalone runs
    assert _option(argv, "--mem") == str(promised["mem_mb"])
    assert _option(argv, "-t") == str(_runtime(promised["runtime"], attempt=1))
    assert _option(argv, "--cpus-per-task") == str(shipped["set-threads"]["train_decoder"])
    assert _option(argv, "-p") == promised["slurm_partition"] == "gpu"
    assert _option(argv, "-A") == ACCOUNT
    assert train["state"] == "COMPLETED", train["stderr"]


def test_torch_jobs_get_one_gpu_on_one_node_in_the_gpu_partition(slurm_run):
    shipped = slurm_run["shipped"]
    submitted = _submitted_by_rule(slurm_run["log"])
    single = sorted(set(submitted) & TORCH_RULES - {"train_decoder"})
    assert single == ["sample"], single
    for rule in single:
        argv = submitted[rule]["argv"]
        assert "--gpus=1" in argv and not any(a.startswith("--gres") for a in argv), (rule, argv)
        assert _option(argv, "--nodes") == "1", (rule, argv)
        assert _option(argv, "-p") == shipped["set-resources"][rule]["slurm_partition"] == "gpu", rule
        assert _option(argv, "--mem") == str(shipped["set-resources"][rule]["mem_mb"]), rule
        assert submitted[rule]["state"] == "COMPLETED", submitted[rule]["stderr"]
    # inside each job, the step that runs it asks for the same GPUs on one node
    steps = [r["argv"] for r in _records(slurm_run["log"], "srun")]
    assert len(steps) == len(submitted), steps
    gpu_steps = [argv for argv in steps if any(a.startswith("--gpus") for a in argv)]
    assert all("--nodes=1" in argv for argv in steps), steps
    assert sorted(next(a for a in argv if a.startswith("--gpus")) for argv in gpu_steps) == \
        sorted([f"--gpus={TRAIN_GPUS}"] + ["--gpus=1"] * len(single)), steps


def test_cpu_jobs_get_no_gpu_and_the_default_partition(slurm_run):
    shipped = slurm_run["shipped"]
    submitted = _submitted_by_rule(slurm_run["log"])
    for rule in ("glm_betas", "evaluate"):
        argv = submitted[rule]["argv"]
        assert not any(a.startswith("--gpus") or a.startswith("--gres") for a in argv), (rule, argv)
        assert _option(argv, "-p") == shipped["default-resources"]["slurm_partition"]
        assert _option(argv, "--nodes") == "1"
        assert _option(argv, "--mem") == str(shipped["set-resources"][rule]["mem_mb"])
        assert _option(argv, "-t") == str(_runtime(shipped["set-resources"][rule]["runtime"], attempt=1))
        assert _option(argv, "--cpus-per-task") == "1"


def test_evaluate_is_a_cluster_job_and_jobs_run_the_cortexflow_command(slurm_run):
    calls = [r["argv"] for r in _records(slurm_run["log"], "cortexflow")]
    stages = sorted(argv[0] for argv in calls)
    assert stages == ["evaluate", "glm-betas", "sample", "train-decoder"], stages
    assert "evaluate" in _submitted_by_rule(slurm_run["log"])  # not run on the submitting host
    train = next(argv for argv in calls if argv[0] == "train-decoder")
    assert _option(train, "--modality") == "image" and _option(train, "--device") == "cpu"
    # the decoder section reduced to the job's modality (so editing audio leaves images alone)
    assert list(json.loads(_option(train, "--params"))) == ["image"]
    # the wrapped command is the workflow's own job, targeting that one job
    train_sbatch = _submitted_by_rule(slurm_run["log"])["train_decoder"]
    wrap = next(a for a in train_sbatch["argv"] if a.startswith("--wrap="))
    assert "--target-jobs" in wrap and "train_decoder:" in wrap


def test_a_multi_gpu_training_job_is_launched_by_torchrun_with_one_process_per_gpu(slurm_run):
    launches = [r["argv"] for r in _records(slurm_run["log"], "torchrun")]
    assert len(launches) == 1, launches  # train_decoder only; the other jobs run cortexflow
    argv = launches[0]
    assert _option(argv, "--nproc-per-node") == str(TRAIN_GPUS) and "--standalone" in argv
    # `--` ends torchrun's options (its parser refuses the stage's `--log` otherwise)
    assert argv[argv.index("--no-python") + 1:][:3] == ["--", "cortexflow", "train-decoder"]


def test_a_retried_job_gets_a_longer_time_limit(tmp_path, tmp_path_factory):
    """A job that fails (e.g. killed at its time limit) is resubmitted with runtime x attempt."""
    repo, outputs = finished_copy(tmp_path_factory, tmp_path / "repo", per_seed=True)
    shipped = yaml.safe_load((repo / "workflow/profiles/slurm/config.yaml").read_text())
    assert shipped["retries"] >= 1
    profile = _test_profile(repo, tmp_path / "profile", retries=1)
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    _write_standins(bin_dir)
    log.mkdir()
    decoder = next(p for p in outputs if p.endswith("_image_decoder_seed0.pt"))
    (repo / decoder).unlink()
    env = workflow_env(repo, path_prefix=[bin_dir])
    env.update(STANDIN_LOG=str(log), STANDIN_ACCOUNT=ACCOUNT, STANDIN_FAIL_ONCE="train-decoder")
    # two submissions of a tiny decoder's training (the first fails): minutes on a loaded 2-core machine
    proc = snakemake(repo, decoder, "--workflow-profile", str(profile), "--configfile", TINY,
                     env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    submissions = [r for r in _records(log, "sbatch") if "rule_train_decoder" in (_option(r["argv"], "--comment") or "")]
    assert [r["state"] for r in submissions] == ["FAILED", "COMPLETED"]
    promised = shipped["set-resources"]["train_decoder"]["runtime"]
    limits = [int(_option(r["argv"], "-t")) for r in submissions]
    assert limits == [_runtime(promised, 1), _runtime(promised, 2)] and limits[1] == 2 * limits[0], limits


def _dry_run_jobs(output: str) -> list[dict]:
    """Rule, resources and shell command of every job in a dry run's output (with --printshellcmds)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        if not rule:
            continue
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        jobs.append({"rule": rule.group(1), "shell": shell.group(1) if shell else "",
                     "resources": dict(kv.split("=", 1) for kv in resources.group(1).split(", "))
                     if resources else {}})
    return jobs


def test_the_nsd_config_with_the_profile_gives_a_gpu_to_every_job_that_uses_cuda(tmp_path):
    """docs/nsd-scale.yaml says `device: cuda`: every job handed --device cuda must get a GPU
    (and the GPU partition, on one node) from the shipped profile. The study's data paths are
    replaced by the simulated two-subject study, so the dry run has every rule's jobs."""
    repo = copy_repo(tmp_path / "repo")
    nsd = yaml.safe_load((repo / "docs/nsd-scale.yaml").read_text())
    assert nsd["device"] == "cuda"
    for key in ("study", "data", "rois", "glm", "dataset"):  # a user's files; the model, device, sampling stay
        nsd.pop(key, None)
    (repo / "nsd_on_simulated.yaml").write_text(yaml.safe_dump(nsd))
    shipped = yaml.safe_load((repo / "workflow/profiles/slurm/config.yaml").read_text())
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump({**shipped, "executor": "dryrun"}))
    proc = snakemake(repo, "all", "cross_subject", "--dry-run", "--workflow-profile", str(profile),
                     "--configfile", TINY, _two_subject_config(repo), "nsd_on_simulated.yaml", timeout=600)
    jobs = _dry_run_jobs(proc.stdout)
    on_cuda = [job for job in jobs if "--device cuda" in job["shell"]]
    assert {job["rule"] for job in on_cuda} == TORCH_RULES, sorted({job["rule"] for job in jobs})
    assert not [job for job in jobs if "--device" in job["shell"] and "--device cuda" not in job["shell"]]
    for job in on_cuda:
        res = job["resources"]
        assert int(res.get("gpu", 0)) >= 1, job
        assert res["slurm_partition"] == "gpu" and res["nodes"] == "1", job
    # and no GPU where no job uses one
    for job in jobs:
        if job["rule"] not in TORCH_RULES and job["rule"] not in ("all", "cross_subject"):
            assert "gpu" not in job["resources"], job


def test_gpus_asked_for_with_gres_are_refused_for_training(tmp_path):
    """With `gres: gpu:2` the job would get two GPUs and start one process: the dry run stops and says
    to use `gpu: N`."""
    repo = copy_repo(tmp_path / "repo")
    shipped = yaml.safe_load((repo / "workflow/profiles/slurm/config.yaml").read_text())
    train = shipped["set-resources"]["train_decoder"]
    train.pop("gpu")
    train["gres"] = "gpu:a100:2"
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump({**shipped, "executor": "dryrun"}))
    decoder = "results/tiny/models/sub-01_image_decoder_seed0.pt"
    proc = snakemake(repo, decoder, "--dry-run", "--workflow-profile", str(profile), "--configfile", TINY,
                     timeout=600, check=False)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "gres='gpu:a100:2'" in message and "`gpu: N`" in message, message[-3000:]
