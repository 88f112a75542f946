"""cortexflow: from BOLD runs to reconstructions of what was seen, heard or read.

    snakemake --cores all                                     # the simulated default study
    snakemake --cores all --configfile my_study.yaml          # your fMRIPrep dataset
    snakemake --workflow-profile workflow/profiles/slurm      # on a SLURM cluster

Each rule calls one stage of the cortexflow package through its command line
(`cortexflow <stage> ...`); see workflow/rules/ and docs/contracts.md.
"""

import os
import sys
from pathlib import Path

from snakemake.utils import min_version

from cortexflow.config import validate_config
from cortexflow.rule_env import render_rule_env

min_version("9.0")

# Rules run the `cortexflow` command on PATH: an activated .venv or conda env,
# which cluster jobs inherit. When none is on PATH (e.g. `.venv/bin/snakemake`
# run directly), the one beside the Python that runs Snakemake is used. A shell
# prefix, not part of any rule's command, so moving the environment reruns nothing.
shell.prefix(
    f'set -euo pipefail; export PATH="$PATH{os.pathsep}{Path(sys.executable).parent}"; '
)


# The rules' conda environment (--software-deployment-method conda): the pins of
# workflow/envs/cortexflow.yml and this checkout's package, installed from
# ${CORTEXFLOW_SOURCE} (Snakemake copies env files away from the repository, so
# only an absolute path finds it). Snakemake keys an environment by its file's
# content, so the rules get a copy of that file named and headed by this
# checkout's source fingerprint: an edit of the code gets its own environment,
# and checkouts sharing a --conda-prefix never run each other's code
# (cortexflow.rule_env, docs/environments.md).
os.environ.update(CORTEXFLOW_SOURCE=str(Path(workflow.basedir).resolve()))
RULE_ENV = str(
    render_rule_env(workflow.basedir, Path(".snakemake") / "cortexflow-envs")
)


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


# The schema (workflow/schemas/config.schema.yaml) with its defaults filled in,
# and every stage section parsed with its stage's dataclass (keys and types), so
# `snakemake -n` rejects a bad value before any job runs.
config.update(validate_config(config))

# TF32 matrix products on CUDA (config cuda_tf32), read by cortexflow.devices in
# every job; in the prefix, like PATH, so that switching it reruns nothing.
shell.prefix(
    f'set -euo pipefail; export PATH="$PATH{os.pathsep}{Path(sys.executable).parent}"; '
    f'export CORTEXFLOW_CUDA_TF32={int(bool(config["cuda_tf32"]))}; '
)


include: "workflow/rules/common.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/nsd.smk"
include: "workflow/rules/preprocess.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/cross_subject.smk"  # its own target, `snakemake cross_subject`; not in rule all
include: "workflow/rules/exit.smk"  # onsuccess / onerror: exit at once when done


# The target rules and the summary's tables run on the submitting host; evaluate
# reads every reconstruction whole (gigabytes at NSD scale), so it is a cluster
# job like the others.
localrules:
    all,
    summarize,
    cross_subject,
    qc_rois,
    qc_ncsnr,
    qc_motion,
    qc_design,
    training_curves,


rule all:
    input:
        final_outputs(),
    default_target: True
