# Quality-control figures for `snakemake --report` (cortexflow.stages.qc): the
# regions over the MNI template, ncsnr per region, head motion per run, one
# run's design matrix, and the training loss curves. Cheap: seconds each.


rule qc_rois:
    """A subject's regions of interest of every task over the MNI152 template."""
    input:
        unpack(qc_rois_inputs),
    output:
        report(
            qc_figure("{subject}", "rois"),
            caption="../report/qc_rois.rst",
            category="Quality control",
            subcategory="Regions of interest",
        ),
    params:
        code=stage_fingerprint("qc_rois"),
    log:
        f"{LOGS}/qc/sub-{{subject}}_rois.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        RULE_ENV
    shell:
        "cortexflow qc-rois --voxels {input.voxels} --betas {input.betas} --out {output} --log {log}"


rule qc_ncsnr:
    """A subject's noise-ceiling SNR per region, one panel per modality."""
    input:
        datasets=qc_datasets,
    output:
        report(
            qc_figure("{subject}", "ncsnr"),
            caption="../report/qc_ncsnr.rst",
            category="Quality control",
            subcategory="Noise ceiling",
        ),
    params:
        code=stage_fingerprint("qc_ncsnr"),
    log:
        f"{LOGS}/qc/sub-{{subject}}_ncsnr.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        RULE_ENV
    shell:
        "cortexflow qc-ncsnr --datasets {input.datasets} --out {output} --log {log}"


rule qc_motion:
    """A subject's framewise displacement per run (fMRIPrep confounds)."""
    input:
        unpack(qc_motion_inputs),
    output:
        report(
            qc_figure("{subject}", "motion"),
            caption="../report/qc_motion.rst",
            category="Quality control",
            subcategory="Head motion",
        ),
    params:
        sidecars=qc_sidecars_arg,
        code=stage_fingerprint("qc_motion"),
    log:
        f"{LOGS}/qc/sub-{{subject}}_motion.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        RULE_ENV
    shell:
        "cortexflow qc-motion --confounds {input.confounds} {params.sidecars} --out {output} --log {log}"


rule qc_design:
    """The single-trial design matrix of one run, as glm_betas builds it."""
    input:
        unpack(qc_design_inputs),
    output:
        report(
            design_figure("{subject}", "{ses}", "{task}", "{run}"),
            caption="../report/qc_design.rst",
            category="Quality control",
            subcategory="Design matrix",
        ),
    params:
        section=section_params("glm"),
        sidecar=sidecar_arg,
        code=stage_fingerprint("qc_design"),
    log:
        f"{LOGS}/qc/sub-{{subject}}{{ses}}_task-{{task}}_run-{{run}}_design.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        RULE_ENV
    shell:
        "cortexflow qc-design --bold {input.bold} --events {input.events} --confounds {input.confounds}"
        " --mask {input.mask} {params.sidecar} --stimuli {input.stimuli} --out {output}"
        " --params {params.section:q} --log {log}"


rule training_curves:
    """The loss curves of every autoencoder and decoder in one figure."""
    input:
        curves=training_curve_files(),
    output:
        report(
            TRAINING_CURVES_FIGURE,
            caption="../report/training_curves.rst",
            category="Training",
        ),
    params:
        code=stage_fingerprint("training_curves"),
    log:
        f"{LOGS}/qc/training_curves.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        RULE_ENV
    shell:
        "cortexflow training-curves --curves {input.curves} --out {output} --log {log}"
