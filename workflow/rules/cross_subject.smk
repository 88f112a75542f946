# Cross-subject training (cortexflow.stages.cross_subject): its own target,
# `snakemake cross_subject`, never part of `rule all`. For each held-out
# subject, a decoder shared by the other subjects (one voxel adapter each) is
# fine-tuned on the held-out subject's first k runs and compared with the same
# decoder trained on those trials alone; the curve goes to
# results/<study>/cross_subject/. Its inputs are the default rules' datasets,
# latents and VAE. Its paths and input functions are at the end of common.smk.


rule cross_subject:
    """The cross-subject target: the data-efficiency curve, its table and figure."""
    input:
        f"{XSUB_DIR}/curve.parquet",
        f"{XSUB_DIR}/comparisons.parquet",
        f"{XSUB_DIR}/curve.md",
        f"{XSUB_DIR}/curve.png",


rule train_shared_decoder:
    """One decoder trained on every subject but the held-out one, a voxel adapter per subject."""
    input:
        unpack(xsub_shared_inputs),
    output:
        f"{XSUB_DIR}/models/shared_without-sub-{{held}}_{XSUB_MODALITY}.pt",
    params:
        subjects=xsub_shared_subjects,
        section=xsub_section,
        checkpoints=xsub_checkpoints,
        seed=config["seed"],
        device=config["device"],
        code=stage_fingerprint("train_shared_decoder"),
    log:
        f"{LOGS}/cross_subject/shared_without-sub-{{held}}.log",
    # first, and one thread each: the longest jobs, and half the fits wait for them
    priority: 10
    threads: 1
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        RULE_ENV
    shell:
        "cortexflow train-shared-decoder --datasets {input.datasets} --subjects {params.subjects}"
        " --latents {input.latents} --vae {input.vae} --out {output} --checkpoint-dir {params.checkpoints}"
        " --params {params.section:q} --seed {params.seed} --threads {threads} --device {params.device} --log {log}"


rule cross_subject_fit:
    """The held-out subject's first k runs: fine-tune the shared decoder, or train from scratch; reconstruct its test set."""
    input:
        unpack(xsub_fit_inputs),
    output:
        recon=f"{XSUB_DIR}/recon/sub-{{held}}_{XSUB_MODALITY}_{{init}}_runs-{{runs}}.npz",
        meta=f"{XSUB_DIR}/recon/sub-{{held}}_{XSUB_MODALITY}_{{init}}_runs-{{runs}}.json",
    wildcard_constraints:
        init="shared|scratch",
        runs="[0-9]+",
    params:
        shared=xsub_shared_arg,
        section=xsub_section,
        checkpoints=xsub_checkpoints,
        seed=config["seed"],
        device=config["device"],
        code=stage_fingerprint("cross_subject_fit"),
    log:
        f"{LOGS}/cross_subject/sub-{{held}}_{{init}}_runs-{{runs}}.log",
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        RULE_ENV
    shell:
        "cortexflow cross-subject-fit --dataset {input.dataset} --subject {wildcards.held} --runs {wildcards.runs}"
        " --init {wildcards.init} {params.shared} --latents {input.latents} --vae {input.vae} --out {output.recon}"
        " --checkpoint-dir {params.checkpoints} --params {params.section:q} --seed {params.seed}"
        " --threads {threads} --device {params.device} --log {log}"


rule cross_subject_curve:
    """Quality vs the held-out subject's trials, fine-tuned vs subject-alone, with paired intervals."""
    input:
        recons=xsub_recons,
    output:
        curve=f"{XSUB_DIR}/curve.parquet",
        comparisons=f"{XSUB_DIR}/comparisons.parquet",
        markdown=report(f"{XSUB_DIR}/curve.md", category="Cross-subject"),
        figure=report(f"{XSUB_DIR}/curve.png", category="Cross-subject"),
    params:
        section=xsub_section,
        evaluation=section_params("evaluation"),
        seed=config["seed"],
        code=stage_fingerprint("cross_subject_curve"),
    log:
        f"{LOGS}/cross_subject/curve.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        RULE_ENV
    shell:
        "cortexflow cross-subject-curve --recons {input.recons} --out-curve {output.curve}"
        " --out-comparisons {output.comparisons} --out-markdown {output.markdown} --out-figure {output.figure}"
        " --params {params.section:q} --evaluation {params.evaluation:q} --seed {params.seed} --log {log}"
