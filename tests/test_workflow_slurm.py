"""The SLURM profile, run for real against stand-in SLURM commands.

snakemake-executor-plugin-slurm submits the workflow's jobs with `sbatch` and
polls them with `sacct`; here those commands (and `sinfo`, `squeue`, `scontrol`,
`sacctmgr`, `srun`) are small scripts on PATH that record what they are given,
run the job in place and report it COMPLETED (see docs/slurm-testing.md).
The rules' `cortexflow` command is a stand-in too: it records its arguments and
creates the files it is asked to write, so the test exercises submission, not
the stages.

Three outputs of an otherwise complete tiny study are removed, so exactly three
jobs run: a GPU training job (train_decoder), a CPU job (glm_betas) and a local
rule (evaluate), which must not be submitted.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow_dag import TINY, copy_repo, fake_complete_run, snakemake, workflow_env

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
job_id = str(len([n for n in os.listdir(log) if n.startswith("sbatch")]) + 1000) if os.path.isdir(log) else "1000"
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
                    "latency-wait": 5, "retries": retries, "jobs": 3})
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


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    repo = copy_repo(root / "repo")
    outputs = fake_complete_run(repo, TINY)
    shipped = yaml.safe_load((repo / "workflow/profiles/slurm/config.yaml").read_text())
    profile = _test_profile(repo, root / "profile")
    bin_dir, log = root / "bin", root / "log"
    _write_standins(bin_dir)
    log.mkdir()

    decoder = next(p for p in outputs if p.endswith("_image_decoder_seed0.pt"))
    subject = decoder.split("/")[-1].split("_")[0]
    betas = next(p for p in outputs if "_task-text_" in p and p.endswith("_betas.nii.gz"))
    metrics = next(p for p in outputs if p.endswith(f"{subject}_audio_summary.parquet"))
    targets = [decoder, betas, metrics]
    for target in targets:
        path = repo / target
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    env = workflow_env(repo, path_prefix=[bin_dir])
    env.update(STANDIN_LOG=str(log), STANDIN_ACCOUNT=ACCOUNT)
    proc = snakemake(repo, *targets, "--workflow-profile", str(profile), "--configfile", TINY,
                     env=env, timeout=90, check=False)
    return {"proc": proc, "repo": repo, "log": log, "targets": targets, "shipped": shipped}


def test_slurm_run_completes_and_writes_the_targets(slurm_run):
    proc = slurm_run["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for target in slurm_run["targets"]:
        assert (slurm_run["repo"] / target).exists(), target


def test_training_job_gets_the_gpu_memory_time_and_cpus_the_profile_promises(slurm_run):
    shipped = slurm_run["shipped"]
    submitted = _submitted_by_rule(slurm_run["log"])
    assert set(submitted) == {"train_decoder", "glm_betas"}, list(submitted)

    train = submitted["train_decoder"]
    promised = shipped["set-resources"]["train_decoder"]
    argv = train["argv"]
    assert promised["gpu"] == 1 and f"--gpus={TRAIN_GPUS}" in argv
    assert _option(argv, "--mem") == str(promised["mem_mb"])
    assert _option(argv, "-t") == str(_runtime(promised["runtime"], attempt=1))
    assert _option(argv, "--cpus-per-task") == str(shipped["set-threads"]["train_decoder"])
    assert _option(argv, "-p") == promised["slurm_partition"] == "gpu"
    assert _option(argv, "-A") == ACCOUNT
    assert train["state"] == "COMPLETED", train["stderr"]


def test_cpu_job_gets_no_gpu_and_the_default_partition(slurm_run):
    shipped = slurm_run["shipped"]
    submitted = _submitted_by_rule(slurm_run["log"])
    glm = submitted["glm_betas"]["argv"]
    assert not any(a.startswith("--gpus") or a.startswith("--gres") for a in glm)
    assert _option(glm, "-p") == shipped["default-resources"]["slurm_partition"]
    assert _option(glm, "--mem") == str(shipped["set-resources"]["glm_betas"]["mem_mb"])
    assert _option(glm, "-t") == str(_runtime(shipped["set-resources"]["glm_betas"]["runtime"], attempt=1))
    assert _option(glm, "--cpus-per-task") == "1"


def test_local_rule_runs_without_sbatch_and_jobs_run_the_cortexflow_command(slurm_run):
    calls = [r["argv"] for r in _records(slurm_run["log"], "cortexflow")]
    stages = sorted(argv[0] for argv in calls)
    assert stages == ["evaluate", "glm-betas", "train-decoder"], stages
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
    assert len(launches) == 1, launches  # train_decoder only; the CPU job and the local rule run cortexflow
    argv = launches[0]
    assert _option(argv, "--nproc-per-node") == str(TRAIN_GPUS) and "--standalone" in argv
    # `--` ends torchrun's options (its parser refuses the stage's `--log` otherwise)
    assert argv[argv.index("--no-python") + 1:][:3] == ["--", "cortexflow", "train-decoder"]


def test_a_retried_job_gets_a_longer_time_limit(tmp_path):
    """A job that fails (e.g. killed at its time limit) is resubmitted with runtime x attempt."""
    repo = copy_repo(tmp_path / "repo")
    outputs = fake_complete_run(repo, TINY)
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
    proc = snakemake(repo, decoder, "--workflow-profile", str(profile), "--configfile", TINY,
                     env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    submissions = [r for r in _records(log, "sbatch") if "rule_train_decoder" in (_option(r["argv"], "--comment") or "")]
    assert [r["state"] for r in submissions] == ["FAILED", "COMPLETED"]
    promised = shipped["set-resources"]["train_decoder"]["runtime"]
    limits = [int(_option(r["argv"], "-t")) for r in submissions]
    assert limits == [_runtime(promised, 1), _runtime(promised, 2)] and limits[1] == 2 * limits[0], limits
