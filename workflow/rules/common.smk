# Paths, the runs of the study, and the input/params functions of every rule.
# Layout: docs/contracts.md, "Files between stages".

import json
import os
import sys

from snakemake.exceptions import WorkflowError

from cortexflow.errors import CortexflowInputError
from cortexflow.fingerprint import stage_fingerprint
from cortexflow.stages.params import training_seeds
from cortexflow.training.history import curve_path
from cortexflow.sections import PER_MODALITY

STUDY = config["study"]
RESULTS = f"results/{STUDY}"
LOGS = f"{RESULTS}/logs"
DATA = config["data"]
# data.source nsd: NSD's own betas and design (workflow/rules/nsd.smk), no BOLD runs; its
# stimuli.tsv and images are written under data/<study>/nsd/stimuli/.
NSD = DATA["source"] == "nsd"
BIDS_ROOT = f"data/{STUDY}/nsd" if NSD else DATA["bids_root"] or f"data/{STUDY}/bids"
FMRIPREP_DIR = DATA["fmriprep_dir"] or f"{BIDS_ROOT}/derivatives/fmriprep"
STIMULI_TSV = f"{BIDS_ROOT}/stimuli/stimuli.tsv"
STUDY_CHECK = (
    f"{RESULTS}/study_check.txt"  # rule check_study's report (simulated study)
)
SIMULATED = DATA["source"] == "simulate"

MODALITIES = list(DATA["modalities"])
TASK_OF = {modality: DATA["tasks"][modality] for modality in MODALITIES}
# Continuous modalities go through a pretrained VAE and a DiT; text has neither.
LATENT_MODALITIES = [m for m in MODALITIES if m in ("image", "audio")]


wildcard_constraints:
    subject="[A-Za-z0-9]+",
    ses="(_ses-[A-Za-z0-9]+)?",
    task="[A-Za-z0-9]+",
    run="[A-Za-z0-9]+",
    modality="image|audio|text",
    train_seed="[0-9]+",


def run_label(run):
    """The run- label in cortexflow's file names: "01"; a run without a run- entity is run 1."""
    return f"{int(run if run is not None else 1):02d}"


def session_part(session):
    """The ses- entity of a run's derived file names, with its leading "_" ("_ses-02"),
    or "" for a study without sessions, whose names stay sub-01_task-x_run-01."""
    return f"_ses-{session}" if session else ""


def bids_run_files(subject, task, run):
    """Paths of one run in the BIDS / fMRIPrep naming (docs/contracts.md, "Study layout")."""
    stem = f"sub-{subject}_task-{task}_run-{run}"
    func = f"{FMRIPREP_DIR}/sub-{subject}/func"
    return {
        "bold": f"{func}/{stem}_space-{DATA['space']}_desc-preproc_bold.nii.gz",
        "mask": f"{func}/{stem}_space-{DATA['space']}_desc-brain_mask.nii.gz",
        "confounds": f"{func}/{stem}_desc-confounds_timeseries.tsv",
        "sidecar": f"{func}/{stem}_space-{DATA['space']}_desc-preproc_bold.json",
        "events": f"{BIDS_ROOT}/sub-{subject}/func/{stem}_events.tsv",
    }


def find_study_runs():
    """{(subject, ses, task, run label): {bold, mask, confounds, sidecar, events}} for the study,
    ``ses`` being session_part(session): derived files keep the BIDS entities
    (sub-01_ses-02_task-images_run-01_betas.nii.gz).

    The simulated study's runs are known before it is written (the simulator's
    plan), so the whole DAG exists from the start; a real dataset is read from
    disk with the BIDS reader's own naming rules.
    """
    tasks = set(TASK_OF.values())
    runs = {}  # in the order of the plan / of find_runs: subject, session, task, run
    if NSD:  # single-trial betas already: no runs
        return runs
    if SIMULATED:
        from cortexflow.data.simulate import SPACE, planned_runs

        if DATA["space"] != SPACE:
            raise CortexflowInputError(
                f"the simulated study is written in space {SPACE}, but data.space is {DATA['space']}",
                fix=f"set data.space: {SPACE} (or data.source: bids for your own data)",
            )

        for subject, task, run in planned_runs(config["simulate"]):
            if task in tasks:
                runs[(subject, "", task, run_label(run))] = bids_run_files(
                    subject, task, run_label(run)
                )
    else:
        from cortexflow.data.bids import find_runs

        for task in sorted(tasks):
            for found in find_runs(
                BIDS_ROOT, task=task, fmriprep_dir=FMRIPREP_DIR, space=DATA["space"]
            ):
                files = {
                    key: getattr(found, key)
                    for key in ("bold", "mask", "confounds", "sidecar", "events")
                }
                runs[
                    (
                        found.subject,
                        session_part(found.session),
                        found.task,
                        run_label(found.run),
                    )
                ] = {
                    key: None if value is None else str(value)
                    for key, value in files.items()
                }
    if DATA["subjects"]:
        runs = {key: files for key, files in runs.items() if key[0] in DATA["subjects"]}
    return runs


def check_study_before_the_dag():
    """data.source bids: `cortexflow check --headers-only` while the DAG is built, so a problem
    in any run, the atlas or the split stops the dry run, all listed at once, before any
    job. Only in the main Snakemake process (not again in each cluster job), and not for
    the simulated study: its files do not exist before rule simulate_study writes them,
    so rule check_study checks them after it (workflow/rules/simulate.smk)."""
    if DATA["source"] != "bids" or not DATA["check"] or not workflow.is_main_process:
        return
    from cortexflow.data.study_check import check_study

    result = check_study(config, read_data=False)
    if result.problems:
        print(result.problems_text(), file=sys.stderr)
    if result.errors:
        raise CortexflowInputError(
            f"the study has {len(result.errors)} error(s), listed above ({len(result.runs)} runs checked "
            f"in {result.seconds:.1f} s)",
            fix="correct each file named; `cortexflow check --configfile <your config>` prints the whole report",
        )
    print(
        f"cortexflow check: {len(result.runs)} runs of the study checked in {result.seconds:.1f} s, "
        f"{len(result.warnings)} warning(s)",
        file=sys.stderr,
    )


check_study_before_the_dag()
RUNS = find_study_runs()
SUBJECTS = (
    sorted({subject for subject, _, _, _ in RUNS})
    if not DATA["subjects"]
    else list(DATA["subjects"])
)
if NSD:  # every file the nsd rules read, checked now: a missing one fails the dry run
    from cortexflow.data.nsd import workflow_inputs

    NSD_INPUTS = workflow_inputs(DATA)
    SUBJECTS = NSD_INPUTS["subjects"]


def _check_runs():
    where = "the simulator's plan (config simulate:)" if SIMULATED else FMRIPREP_DIR
    for subject in SUBJECTS:
        for modality, task in TASK_OF.items():
            if not runs_of(subject, task):
                raise CortexflowInputError(
                    f"no runs of task '{task}' ({modality}) for sub-{subject} in {where}",
                    fix="list only subjects that have every modality in data.subjects, drop the modality "
                    "from data.modalities, or set data.tasks to the right task label",
                )


def runs_of(subject, task):
    """(ses, run label) of each run of one subject and task, in run order (sessions first, then runs)."""
    return [(ses, run) for s, ses, t, run in RUNS if s == subject and t == task]


def betas_prefix(subject, ses, task, run):
    """glm_betas' outputs of one run, without their suffix (rule glm_betas's output pattern)."""
    return f"{RESULTS}/betas/sub-{subject}/sub-{subject}{ses}_task-{task}_run-{run}"


if not NSD:
    _check_runs()


# ---------------------------------------------------------------- parameters
def section(name):
    """One config section as the JSON that the stage's --params takes.

    Each rule gets only its own section, so editing one section reruns only the
    stages that read it (and what follows them).
    """
    return json.dumps(config[name], sort_keys=True)


def modality_section(name, modality):
    """The section reduced to one modality's entry, e.g. {"image": {...}}.

    The stage reads params[modality]; the other modalities' entries are left
    out so that editing the audio VAE or decoder leaves the image path alone.
    """
    return json.dumps({modality: config[name][modality]}, sort_keys=True)


def sampling_of_every_modality(wildcards):
    """The sampling section of the study's modalities (summary.md says how each was sampled)."""
    return json.dumps({m: config["sampling"][m] for m in MODALITIES}, sort_keys=True)


def section_params(name):
    """The params function for config section ``name``: the
    section as JSON, reduced to the job's modality for per-modality sections
    (cortexflow.sections.PER_MODALITY: vae, decoder, sampling)."""
    if name in PER_MODALITY:
        return lambda wildcards: modality_section(name, wildcards.modality)
    return lambda wildcards: section(name)


def decoder_params(wildcards):
    """Model and training settings of the modality's decoder (without `seeds`: how many runs the
    workflow trains is not a setting of one run, so changing it retrains none of the others).
    """
    entry = {
        k: v
        for k, v in (config["decoder"][wildcards.modality] or {}).items()
        if k != "seeds"
    }
    return json.dumps({wildcards.modality: entry}, sort_keys=True)


def seeds_of(modality):
    """Training-seed indices 0..n-1 of the modality's decoder (config decoder.<modality>.seeds)."""
    return list(range(training_seeds(config["decoder"], modality)))


def train_seed(wildcards):
    """The integer seed of training run `train_seed`: config.seed + its index."""
    return int(config["seed"]) + int(wildcards.train_seed)


def decoder_launcher(wildcards, resources):
    """The command that starts train_decoder: cortexflow itself, or torchrun with
    one process per GPU when the profile gives the job several (resource gpu);
    the processes train one model data-parallel (cortexflow.training.distributed)."""
    if "gpu" in str(getattr(resources, "gres", "") or ""):
        raise WorkflowError(
            f"train_decoder asks for GPUs with gres={resources.gres!r}: one process would get them all. "
            "Fix: in the profile's set-resources, give train_decoder `gpu: N` (and `gpu_model: <model>` if your "
            "cluster needs one) instead of `gres`; it then runs one process per GPU."
        )
    n_gpus = int(getattr(resources, "gpu", 0) or 0)
    if n_gpus <= 1:
        return "cortexflow"
    # `--` ends torchrun's options: without it, torchrun's parser also reads the stage's options
    # after the command and stops at `--log` ("ambiguous option: --log could match --log-dir, ...")
    return f"torchrun --standalone --nnodes 1 --nproc-per-node {n_gpus} --no-python -- cortexflow"


def checkpoint_dir(wildcards):
    """Where train_decoder keeps its resumable checkpoints (not a declared output).

    Keyed by the decoder's settings and code, so a rerun after an edit starts
    afresh while a killed or time-limited job with the same settings resumes.
    """
    import hashlib

    key = hashlib.sha256(
        f"{decoder_params(wildcards)}|{train_seed(wildcards)}|{stage_fingerprint('train_decoder')}".encode()
    ).hexdigest()[:12]
    return f"{RESULTS}/checkpoints/sub-{wildcards.subject}_{wildcards.modality}_seed{wildcards.train_seed}/{key}"


def _profile_gives_gpus(rule):
    """Whether the profile (or --set-resources) gives `rule` GPUs: `gpu: N` with N > 0, or a gres naming a GPU."""
    given = workflow.resource_settings.overwrite_resources.get(rule) or {}
    # each value a parsed Resource (its `raw` value) or the profile's plain value
    given = {name: getattr(value, "raw", value) for name, value in dict(given).items()}
    try:
        gpus = int(given.get("gpu") or 0)
    except (TypeError, ValueError):
        gpus = 1  # an expression: whatever it evaluates to, GPUs were asked for
    return gpus > 0 or "gpu" in str(given.get("gres") or "")


def _seed_ensemble_modalities():
    """The modalities whose training seeds rule train_decoder_seeds trains as one stacked model.

    config seed_ensemble: false never; true every modality with several seeds (an error where the
    ensemble cannot: cortexflow.stages.decoder_seeds.ensemble_unsupported); auto (the default) those it
    supports, unless the decoders are meant for a GPU: `device: cuda`, or the profile gives train_decoder
    GPUs (workflow/profiles/slurm). Decided from the config and the profile only, never from the host that
    parses the workflow, so a cluster job re-reading it on a GPU node sees the same rules. One stacked job
    holds one seed count: modalities whose count differs from the largest keep one job per seed.
    """
    from cortexflow.models.params import DecoderParams
    from cortexflow.sections import modality_params
    from cortexflow.stages.decoder_seeds import ensemble_unsupported

    mode = config["seed_ensemble"]  # "auto", True or False (the schema's enum)
    if mode is False:
        return [], 0
    wanted = {}
    for modality in MODALITIES:
        if len(seeds_of(modality)) < 2:
            continue
        params = modality_params(config["decoder"], modality, DecoderParams, "decoder")
        why = ensemble_unsupported(modality, params)
        for_gpus = config["device"] == "cuda" or _profile_gives_gpus("train_decoder")
        if why is None and mode == "auto" and for_gpus:
            why = "device: cuda or the profile gives train_decoder GPUs"
        if why is None:
            wanted[modality] = len(seeds_of(modality))
        elif mode is True:
            raise WorkflowError(
                f"seed_ensemble: true, but the seeds of the {modality} decoder cannot train as one stacked model: "
                f"{why}. Fix: set seed_ensemble: auto or false in the config."
            )
    if not wanted:
        return [], 0
    count = max(wanted.values())
    return [m for m, n in wanted.items() if n == count], count


ENSEMBLE_MODALITIES, ENSEMBLE_SEEDS = _seed_ensemble_modalities()


def ensemble_checkpoint_dir(wildcards):
    """Where train_decoder_seeds keeps the ensemble's resumable checkpoints, keyed like checkpoint_dir."""
    import hashlib

    seeds = [int(config["seed"]) + k for k in seeds_of(wildcards.modality)]
    key = hashlib.sha256(
        f"{decoder_params(wildcards)}|{seeds}|{stage_fingerprint('train_decoder_seeds')}".encode()
    ).hexdigest()[:12]
    return f"{RESULTS}/checkpoints/sub-{wildcards.subject}_{wildcards.modality}_seeds/{key}"


def ensemble_seeds(wildcards):
    """The seeds (config.seed + k) of the modality's training runs, space-separated."""
    return " ".join(str(int(config["seed"]) + k) for k in seeds_of(wildcards.modality))


def vae_checkpoint_dir(wildcards):
    """Where pretrain_vae keeps its resumable checkpoints (not a declared output),
    keyed like checkpoint_dir by the VAE's settings, seed and code."""
    import hashlib

    key = hashlib.sha256(
        f"{modality_section('vae', wildcards.modality)}|{config['seed']}|{stage_fingerprint('pretrain_vae')}".encode()
    ).hexdigest()[:12]
    return f"{RESULTS}/checkpoints/vae_{wildcards.modality}/{key}"


def folder_of_description(wildcards, output):
    """The BIDS root that simulate_study writes: the folder of its dataset_description.json."""
    return os.path.dirname(output.description)


def folder_of_metrics_figure(wildcards, output):
    """The figures folder that summarize writes into."""
    return os.path.dirname(output.metrics_figure)


# Scheduling. With a few cores the image decoders are the longest jobs (minutes
# each) at the end of the longest chain, so their chain starts first and text
# and audio work fills the other cores (longest job first). A heuristic: its
# gain alone was not measured; the default run's figures include it.
MODALITY_PRIORITY = {"image": 3, "text": 2, "audio": 1}


def modality_priority(wildcards):
    """Jobs of slower modalities first: by the modality wildcard, or the task's modality."""
    modality = wildcards.get("modality")
    if modality is None:
        modality = max(
            (m for m, task in TASK_OF.items() if task == wildcards.get("task")),
            key=lambda m: MODALITY_PRIORITY.get(m, 0),
            default=None,
        )
    return MODALITY_PRIORITY.get(modality, 0)


def optional_arg(flag, paths):
    """`--flag path` for inputs that only some modalities have."""
    return f"{flag} {paths}" if paths else ""


# ---------------------------------------------------------------- paths
def glm_inputs(wildcards):
    files = RUNS[(wildcards.subject, wildcards.ses, wildcards.task, wildcards.run)]
    inputs = {key: files[key] for key in ("bold", "events", "confounds", "mask")}
    if files.get("sidecar"):
        inputs["sidecar"] = files["sidecar"]
    if DATA[
        "glmsingle"
    ]:  # betas from GLMsingle: its file and every run's events, in run order
        inputs["glmsingle"] = existing_file(
            "data.glmsingle",
            DATA["glmsingle"].format(subject=wildcards.subject, task=wildcards.task),
        )
        inputs["glmsingle_events"] = [
            RUNS[(wildcards.subject, ses, wildcards.task, run)]["events"]
            for ses, run in runs_of(wildcards.subject, wildcards.task)
        ]
    return inputs


def sidecar_arg(wildcards, input):
    return optional_arg("--sidecar", input.get("sidecar"))


def glmsingle_arg(wildcards, input):
    if not input.get("glmsingle"):
        return ""
    return f"--glmsingle {input.glmsingle} --glmsingle-events {' '.join(input.glmsingle_events)}"


def run_betas(wildcards):
    return [
        betas_prefix(wildcards.subject, ses, wildcards.task, run) + "_betas.nii.gz"
        for ses, run in runs_of(wildcards.subject, wildcards.task)
    ]


def run_trials(wildcards):
    return [
        betas_prefix(wildcards.subject, ses, wildcards.task, run) + "_trials.parquet"
        for ses, run in runs_of(wildcards.subject, wildcards.task)
    ]


def existing_file(key, path):
    """``path`` (the value of config key ``key``), which must exist: files the study brings
    are rule inputs, so a missing one stops the dry run, named with its key."""
    if not os.path.isfile(path):
        raise CortexflowInputError(
            f"the file that config key {key} names does not exist",
            path=path,
            fix=f"correct {key} in your config file (docs/real-data.md)",
        )
    return path


def roi_inputs(wildcards):
    """The atlas (labels image and table) or the modality's mask that extract_rois reads:
    inputs, so that a missing file stops the dry run and an edited one reruns the
    ROI extraction and what follows. The coordinate atlas ships with nilearn."""
    rois = config["rois"]
    if rois["source"] == "labels":
        return {
            "labels_img": existing_file("rois.labels_img", rois["labels_img"]),
            "labels_table": existing_file("rois.labels_table", rois["labels_table"]),
        }
    if rois["source"] == "mask":
        modalities = [m for m, task in TASK_OF.items() if task == wildcards.task]
        return {
            f"mask_{m}": existing_file(f"rois.mask_img.{m}", rois["mask_img"][m])
            for m in modalities
            if m in (rois["mask_img"] or {})
        }
    return {}


def roi_prefix(subject, modality):
    return f"{RESULTS}/rois/sub-{subject}/sub-{subject}_task-{TASK_OF[modality]}"


def dataset_inputs(wildcards):
    prefix = roi_prefix(wildcards.subject, wildcards.modality)
    return {
        "roi_betas": f"{prefix}_roi-betas.npy",
        "trials": f"{prefix}_trials.parquet",
        "voxels": f"{prefix}_voxels.parquet",
        "stimuli": STIMULI_TSV,
    }


# ---------------------------------------------------------------- data.source nsd (nsd.smk)
def nsd_betas_inputs(wildcards):
    files = NSD_INPUTS["per_subject"][wildcards.subject]
    return {
        "expdesign": NSD_INPUTS["expdesign"],
        "betas": files["betas"],
        "roi": files["roi"],
        "regions": files["regions"],
        "region_tables": files["region_tables"],
    }


def nsd_region_args(wildcards, input):
    """`--regions ... --region-tables ...` when data.nsd.regions names label files."""
    return " ".join(
        optional_arg(f"--{key.replace('_', '-')}", " ".join(input[key]))
        for key in ("regions", "region_tables")
        if input[key]
    )


def nsd_section(*keys):
    """data.nsd reduced to the keys one rule reads, so that e.g. image_size reruns no betas."""
    return json.dumps({"nsd": {k: DATA["nsd"][k] for k in keys}}, sort_keys=True)


def nsd_stimuli_inputs(wildcards):
    inputs = {
        "trials": [
            f"{roi_prefix(subject, 'image')}_trials.parquet" for subject in SUBJECTS
        ],
        "expdesign": NSD_INPUTS["expdesign"],
        "stimuli": NSD_INPUTS["stimuli"],
    }
    if NSD_INPUTS["stim_info"]:
        inputs["stim_info"] = NSD_INPUTS["stim_info"]
    return inputs


def nsd_stim_info_arg(wildcards, input):
    return optional_arg("--stim-info", input.get("stim_info"))


# Each file between stages is named once, here: rules declare their outputs by calling
# these with wildcard patterns (vae_file("{modality}")), input functions with values.
def dataset_dir(subject, modality):
    return f"{RESULTS}/dataset/sub-{subject}/{modality}"


def vae_file(modality):
    return f"{RESULTS}/models/vae_{modality}.pt"


def latents_file(modality):
    return f"{RESULTS}/latents/{modality}.npz"


def ridge_file(subject, modality):
    return f"{RESULTS}/models/sub-{subject}_{modality}_ridge.npz"


def baselines_file(subject, modality):
    return f"{RESULTS}/models/sub-{subject}_{modality}_baselines.npz"


def decoder_file(subject, modality, seed):
    return f"{RESULTS}/models/sub-{subject}_{modality}_decoder_seed{seed}.pt"


# Each training rule writes its model's loss curve beside it (cortexflow.training.history).
def vae_curve_file(modality):
    return str(curve_path(vae_file(modality)))


def decoder_curve_file(subject, modality, seed):
    return str(curve_path(decoder_file(subject, modality, seed)))


def recon_file(subject, modality, seed):
    return f"{RESULTS}/recon/sub-{subject}_{modality}_seed{seed}.npz"


def recon_files(wildcards):
    """Every training seed's recon file of one subject and modality, in seed order."""
    return [
        recon_file(wildcards.subject, wildcards.modality, k)
        for k in seeds_of(wildcards.modality)
    ]


def latent_inputs(modality):
    """Latents for image/audio; text decodes bytes and has none."""
    return {"latents": latents_file(modality)} if modality in LATENT_MODALITIES else {}


def baseline_inputs(wildcards):
    return {
        "dataset": dataset_dir(wildcards.subject, wildcards.modality),
        "stimuli": STIMULI_TSV,
        **latent_inputs(wildcards.modality),
    }


def decoder_inputs(wildcards):
    inputs = {
        "dataset": dataset_dir(wildcards.subject, wildcards.modality),
        "stimuli": STIMULI_TSV,
        **latent_inputs(wildcards.modality),
    }
    if wildcards.modality in LATENT_MODALITIES:
        inputs["vae"] = vae_file(wildcards.modality)
        # the ridge prediction conditions the DiT (a prior it refines)
        inputs["ridge"] = ridge_file(wildcards.subject, wildcards.modality)
    return inputs


def ground_truth_files(subject):
    """What the simulator knows of one subject: its tuned voxels and their noise-free responses."""
    folder = f"{BIDS_ROOT}/derivatives/ground_truth/sub-{subject}"
    return {
        "truth_voxels": f"{folder}/sub-{subject}_voxels.tsv",
        "truth_responses": f"{folder}/sub-{subject}_responses.npz",
    }


def sample_inputs(wildcards):
    inputs = {
        "dataset": dataset_dir(wildcards.subject, wildcards.modality),
        "decoder": decoder_file(
            wildcards.subject, wildcards.modality, wildcards.train_seed
        ),
        "ridge": ridge_file(wildcards.subject, wildcards.modality),
        "baselines": baselines_file(wildcards.subject, wildcards.modality),
        "stimuli": STIMULI_TSV,
        **latent_inputs(wildcards.modality),
    }
    if wildcards.modality in LATENT_MODALITIES:
        inputs["vae"] = vae_file(wildcards.modality)
    if (
        SIMULATED
    ):  # noise_free_linear: the ridge decoder on the simulator's noise-free responses
        inputs.update(ground_truth_files(wildcards.subject))
    return inputs


def ground_truth_arg(wildcards, input):
    """`--ground-truth <subject's ground-truth folder>` for the simulated study."""
    responses = input.get("truth_responses")
    return optional_arg(
        "--ground-truth", os.path.dirname(responses) if responses else None
    )


def latent_args(wildcards, input):
    """The optional --latents/--vae/--ridge/--baselines arguments of the model stages."""
    return " ".join(
        optional_arg(f"--{key}", input.get(key))
        for key in ("latents", "vae", "ridge", "baselines")
        if input.get(key)
    )


def summary_inputs(wildcards):
    pairs = [(subject, modality) for subject in SUBJECTS for modality in MODALITIES]
    return {
        "summaries": [
            f"{RESULTS}/metrics/sub-{s}_{m}_summary.parquet" for s, m in pairs
        ],
        "comparisons": [
            f"{RESULTS}/metrics/sub-{s}_{m}_comparisons.parquet" for s, m in pairs
        ],
        "item_scores": [
            f"{RESULTS}/metrics/sub-{s}_{m}_items.parquet" for s, m in pairs
        ],
        # the figures show the first training seed's reconstructions
        "recons": [recon_file(s, m, 0) for s, m in pairs],
        "datasets": [dataset_dir(s, m) for s, m in pairs],
        "baselines": [baselines_file(s, m) for s, m in pairs],
        "stimuli": STIMULI_TSV,
        # the simulator's noise-free responses: how close each image feature space is to its code
        "truth_responses": (
            [ground_truth_files(s)["truth_responses"] for s in SUBJECTS]
            if SIMULATED and "image" in MODALITIES
            else []
        ),
    }


def ground_truth_dirs_arg(wildcards, input):
    """`--ground-truth <each subject's ground-truth folder>` for the simulated study."""
    folders = [os.path.dirname(path) for path in input.get("truth_responses", [])]
    return f"--ground-truth {' '.join(folders)}" if folders else ""


def recon_figures():
    """One figure per reconstruction file, named after it (by summarize_stage)."""
    return [f"{RESULTS}/figures/sub-{s}_{m}.png" for s in SUBJECTS for m in MODALITIES]


def final_outputs():
    return [
        *(
            [STUDY_CHECK] if SIMULATED else []
        ),  # rule check_study's report of the simulated study
        f"{RESULTS}/summary.parquet",
        f"{RESULTS}/comparisons.parquet",
        f"{RESULTS}/summary.md",
        f"{RESULTS}/figures/metrics.png",
        f"{RESULTS}/summary_by_category.parquet",
        f"{RESULTS}/figures/by_category.png",
        *recon_figures(),
        *qc_figures(),
    ]


# ---------------------------------------------------------------- quality control (qc.smk)
QC_DIR = f"{RESULTS}/qc"  # not figures/: summarize replaces that folder whole
TRAINING_CURVES_FIGURE = f"{QC_DIR}/training_curves.png"


def qc_figure(subject, kind):
    """A subject's QC figure: kind rois, ncsnr or motion."""
    return f"{QC_DIR}/sub-{subject}_{kind}.png"


def design_figure(subject, ses, task, run):
    """One run's design matrix figure, named with the run's BIDS entities (ses: session_part)."""
    return f"{QC_DIR}/sub-{subject}{ses}_task-{task}_run-{run}_design.png"


def qc_figures():
    """Every QC figure: per subject, the design matrix of the study's first run, the loss curves."""
    if (
        not RUNS
    ):  # data.source nsd: betas without BOLD runs, so no motion, design or run grid to show
        return [*(qc_figure(s, "ncsnr") for s in SUBJECTS), TRAINING_CURVES_FIGURE]
    subject, ses, task, run = next(iter(RUNS))
    return [
        *(qc_figure(s, kind) for s in SUBJECTS for kind in ("rois", "ncsnr", "motion")),
        design_figure(subject, ses, task, run),
        TRAINING_CURVES_FIGURE,
    ]


def study_tasks():
    """The tasks of the study's modalities, once each, in modality order."""
    return list(dict.fromkeys(TASK_OF[m] for m in MODALITIES))


def qc_rois_inputs(wildcards):
    """Each task's extract_rois voxels table and its first run's betas (for the grid)."""
    from types import SimpleNamespace

    tasks = study_tasks()
    return {
        "voxels": [
            f"{RESULTS}/rois/sub-{wildcards.subject}/sub-{wildcards.subject}_task-{t}_voxels.parquet"
            for t in tasks
        ],
        "betas": [
            run_betas(SimpleNamespace(subject=wildcards.subject, task=t))[0]
            for t in tasks
        ],
    }


def qc_datasets(wildcards):
    return [dataset_dir(wildcards.subject, m) for m in MODALITIES]


def qc_runs(subject):
    """The files of a subject's runs of the study's tasks, in run order."""
    tasks = study_tasks()
    return [
        files for (s, _, t, _), files in RUNS.items() if s == subject and t in tasks
    ]


def qc_motion_inputs(wildcards):
    runs = qc_runs(wildcards.subject)
    inputs = {"confounds": [files["confounds"] for files in runs]}
    if all(files.get("sidecar") for files in runs):
        inputs["sidecars"] = [files["sidecar"] for files in runs]
    return inputs


def qc_sidecars_arg(wildcards, input):
    return optional_arg("--sidecars", " ".join(input.get("sidecars", [])))


def qc_design_inputs(wildcards):
    files = RUNS[(wildcards.subject, wildcards.ses, wildcards.task, wildcards.run)]
    inputs = {key: files[key] for key in ("bold", "events", "confounds", "mask")}
    if files.get("sidecar"):
        inputs["sidecar"] = files["sidecar"]
    inputs["stimuli"] = STIMULI_TSV
    return inputs


def training_curve_files():
    """Every autoencoder's and decoder's loss curve."""
    return [vae_curve_file(m) for m in LATENT_MODALITIES] + [
        decoder_curve_file(s, m, k)
        for s in SUBJECTS
        for m in MODALITIES
        for k in seeds_of(m)
    ]


def report_figures(paths):
    """Reconstruction figures, flagged for `snakemake --report`."""
    caption = "../report/reconstruction.rst"
    return [report(path, caption=caption, category="Reconstructions") for path in paths]


# ---------------------------------------------------------------- the cross_subject target
# (workflow/rules/cross_subject.smk; not part of rule all)
XSUB = config["cross_subject"]
XSUB_MODALITY = XSUB.get("modality", "image")
XSUB_RUNS = [int(k) for k in XSUB.get("runs", [1, 2, 5, 10])]
XSUB_DIR = f"{RESULTS}/cross_subject"


def xsub_held_out():
    """The held-out subjects: cross_subject.held_out, or every subject in turn."""
    held = [str(s) for s in XSUB.get("held_out") or SUBJECTS]
    unknown = sorted(set(held) - set(SUBJECTS))
    if unknown:
        raise CortexflowInputError(
            f"cross_subject.held_out names subjects {unknown} the study does not have "
            f"(it has {SUBJECTS})",
            fix="list subjects of the study, or leave it empty",
        )
    if len(SUBJECTS) < 2:
        raise CortexflowInputError(
            "cross-subject training needs at least 2 subjects",
            fix="use a study with several subjects (simulate.subjects: 2 or more)",
        )
    return held


def xsub_section(wildcards=None):
    return section("cross_subject")


def xsub_shared_subjects(wildcards):
    """Every subject but the held-out one: whom the shared decoder is trained on."""
    return [s for s in SUBJECTS if s != wildcards.held]


def xsub_shared_inputs(wildcards):
    return {
        "datasets": [
            dataset_dir(s, XSUB_MODALITY) for s in xsub_shared_subjects(wildcards)
        ],
        "latents": latents_file(XSUB_MODALITY),
        "vae": vae_file(XSUB_MODALITY),
    }


def xsub_fit_inputs(wildcards):
    inputs = {
        "dataset": dataset_dir(wildcards.held, XSUB_MODALITY),
        "latents": latents_file(XSUB_MODALITY),
        "vae": vae_file(XSUB_MODALITY),
    }
    if wildcards.init == "shared":
        inputs["shared"] = (
            f"{XSUB_DIR}/models/shared_without-sub-{wildcards.held}_{XSUB_MODALITY}.pt"
        )
    return inputs


def xsub_shared_arg(wildcards, input):
    return optional_arg("--shared", input.get("shared"))


def xsub_checkpoints(wildcards):
    import hashlib

    key = hashlib.sha256(
        f"{xsub_section()}|{config['seed']}|{stage_fingerprint('cross_subject_fit')}".encode()
    )
    name = "_".join(f"{k}-{v}" for k, v in wildcards.items())
    return f"{RESULTS}/checkpoints/cross_subject/{name}/{key.hexdigest()[:12]}"


def xsub_recons(wildcards):
    """Every fit of the curve; an input function, so that a one-subject study
    fails only when the cross_subject target is asked for."""
    return [
        f"{XSUB_DIR}/recon/sub-{held}_{XSUB_MODALITY}_{init}_runs-{k}.npz"
        for held in xsub_held_out()
        for k in XSUB_RUNS
        for init in ("shared", "scratch")
    ]
