# BOLD runs -> single-trial betas -> ROI voxels -> train/test dataset
# (cortexflow.preprocess).


rule glm_betas:
    """One run: confound and drift regression, one beta per trial (or GLMsingle's, with data.glmsingle)."""
    input:
        unpack(glm_inputs),
        stimuli=STIMULI_TSV,
    output:
        betas=betas_prefix("{subject}", "{ses}", "{task}", "{run}") + "_betas.nii.gz",
        trials=betas_prefix("{subject}", "{ses}", "{task}", "{run}") + "_trials.parquet",
    params:
        section=section_params("glm"),
        sidecar=sidecar_arg,
        glmsingle=glmsingle_arg,
        code=stage_fingerprint("glm_betas"),
    log:
        f"{LOGS}/glm_betas/sub-{{subject}}{{ses}}_task-{{task}}_run-{{run}}.log",
    priority: modality_priority
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        RULE_ENV
    shell:
        "cortexflow glm-betas --bold {input.bold} --events {input.events} --confounds {input.confounds}"
        " --mask {input.mask} {params.sidecar} --stimuli {input.stimuli} {params.glmsingle}"
        " --out-betas {output.betas} --out-trials {output.trials}"
        " --params {params.section:q} --log {log}"


rule extract_rois:
    """One subject and task: the voxels of each ROI, all runs stacked in run order."""
    input:
        unpack(roi_inputs),
        betas=run_betas,
        trials=run_trials,
    output:
        betas=f"{RESULTS}/rois/sub-{{subject}}/sub-{{subject}}_task-{{task}}_roi-betas.npy",
        trials=f"{RESULTS}/rois/sub-{{subject}}/sub-{{subject}}_task-{{task}}_trials.parquet",
        voxels=f"{RESULTS}/rois/sub-{{subject}}/sub-{{subject}}_task-{{task}}_voxels.parquet",
    params:
        section=section_params("rois"),
        code=stage_fingerprint("extract_rois"),
    log:
        f"{LOGS}/extract_rois/sub-{{subject}}_task-{{task}}.log",
    priority: modality_priority
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    conda:
        RULE_ENV
    shell:
        "cortexflow extract-rois --betas {input.betas} --trials {input.trials}"
        " --out-betas {output.betas} --out-trials {output.trials} --out-voxels {output.voxels}"
        " --params {params.section:q} --log {log}"


rule make_dataset:
    """One subject and modality: split by stimulus, z-score, average test repeats."""
    input:
        unpack(dataset_inputs),
    output:
        directory(dataset_dir("{subject}", "{modality}")),
    params:
        section=section_params("dataset"),
        seed=config["seed"],
        code=stage_fingerprint("make_dataset"),
    log:
        f"{LOGS}/make_dataset/sub-{{subject}}_{{modality}}.log",
    priority: modality_priority
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        RULE_ENV
    shell:
        "cortexflow make-dataset --roi-betas {input.roi_betas} --trials {input.trials}"
        " --voxels {input.voxels} --stimuli {input.stimuli} --out-dir {output}"
        " --params {params.section:q} --seed {params.seed} --log {log}"
