# Stimulus autoencoders, brain -> stimulus decoders and the ridge baseline
# (cortexflow.stages: vae, baseline, decoder, sample). Training rules declare
# threads and CPU-sized resources here; profiles add GPUs and cluster limits.


rule pretrain_vae:
    """One autoencoder per continuous modality, trained on the training stimuli.

    Resumable like train_decoder: its checkpoints live beside the declared output.
    """
    input:
        stimuli=STIMULI_TSV,
    output:
        model=vae_file("{modality}"),
        curve=vae_curve_file("{modality}"),
    wildcard_constraints:
        modality="image|audio",
    params:
        section=section_params("vae"),
        seed=config["seed"],
        device=config["device"],
        checkpoints=vae_checkpoint_dir,
        code=stage_fingerprint("pretrain_vae"),
    log:
        f"{LOGS}/pretrain_vae/{{modality}}.log",
    priority: modality_priority
    threads: 4
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        RULE_ENV
    shell:
        "cortexflow pretrain-vae --stimuli {input.stimuli} --modality {wildcards.modality} --out {output.model}"
        " --out-curve {output.curve} --params {params.section:q} --seed {params.seed} --threads {threads}"
        " --device {params.device} --checkpoint-dir {params.checkpoints} --log {log}"


rule encode_latents:
    """Every stimulus -> its latent, computed once and cached."""
    input:
        stimuli=STIMULI_TSV,
        vae=vae_file("{modality}"),
    output:
        latents_file("{modality}"),
    wildcard_constraints:
        modality="image|audio",
    params:
        section=section_params("vae"),
        device=config["device"],
        code=stage_fingerprint("encode_latents"),
    log:
        f"{LOGS}/encode_latents/{{modality}}.log",
    priority: modality_priority
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    conda:
        RULE_ENV
    shell:
        "cortexflow encode-latents --stimuli {input.stimuli} --modality {wildcards.modality}"
        " --vae {input.vae} --out {output} --params {params.section:q} --threads {threads}"
        " --device {params.device} --log {log}"


rule fit_baseline:
    """Ridge regression from voxels to the decoder's targets: the linear anchor, with its out-of-fold
    predictions of the training trials (the prior train_decoder conditions on); and the other
    baselines (per-target ridge, ridge to pixels, nearest-neighbour retrieval, n-gram LM)."""
    input:
        unpack(baseline_inputs),
    output:
        ridge=ridge_file("{subject}", "{modality}"),
        baselines=baselines_file("{subject}", "{modality}"),
    params:
        section=section_params("baseline"),
        latents=latent_args,
        seed=config["seed"],
        code=stage_fingerprint("fit_baseline"),
    log:
        f"{LOGS}/fit_baseline/sub-{{subject}}_{{modality}}.log",
    priority: modality_priority
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        RULE_ENV
    shell:
        "cortexflow fit-baseline --dataset {input.dataset} --stimuli {input.stimuli} {params.latents}"
        " --out {output.ridge} --out-baselines {output.baselines} --params {params.section:q}"
        " --seed {params.seed} --log {log}"


rule train_decoder:
    """Brain -> DiT with rectified flow (image, audio) or byte decoder (text), with EMA.

    Resumable: checkpoints live beside the declared output, so a killed or
    time-limited job continues where it stopped when it is run again. Given
    several GPUs by the profile (`gpu: N`), torchrun starts one process per GPU
    and they train data-parallel (decoder_launcher).
    """
    input:
        unpack(decoder_inputs),
    output:
        model=decoder_file("{subject}", "{modality}", "{train_seed}"),
        curve=decoder_curve_file("{subject}", "{modality}", "{train_seed}"),
    params:
        section=decoder_params,
        latents=latent_args,
        checkpoints=checkpoint_dir,
        launcher=decoder_launcher,
        seed=train_seed,
        device=config["device"],
        code=stage_fingerprint("train_decoder"),
    log:
        f"{LOGS}/train_decoder/sub-{{subject}}_{{modality}}_seed{{train_seed}}.log",
    priority: modality_priority
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        RULE_ENV
    shell:
        "{params.launcher} train-decoder --dataset {input.dataset} --modality {wildcards.modality}"
        " --stimuli {input.stimuli} {params.latents}"
        " --out {output.model} --out-curve {output.curve} --checkpoint-dir {params.checkpoints} --params {params.section:q}"
        " --seed {params.seed} --threads {threads} --device {params.device} --log {log}"


# The seeds of one subject's image decoder (config seed_ensemble; common.smk) in one job, trained
# on the CPU as one stacked model: each member is the run train_decoder gives its seed, to float
# rounding (cortexflow.stages.decoder_seeds); 3.4% fewer core-minutes in the default run (docs/speed.md).
ruleorder: train_decoder_seeds > train_decoder


rule train_decoder_seeds:
    """Every training seed of one subject's decoder at once, as one stacked model on the CPU.

    Where config seed_ensemble selects it (auto: the CPU runs of image and audio decoders with
    several seeds); writes the same files as train_decoder's jobs, one model and curve per seed.
    Resumable: the ensemble's checkpoints live beside the outputs.
    """
    input:
        unpack(decoder_inputs),
    output:
        models=[
            decoder_file("{subject}", "{modality}", k) for k in range(ENSEMBLE_SEEDS)
        ],
        curves=[
            decoder_curve_file("{subject}", "{modality}", k)
            for k in range(ENSEMBLE_SEEDS)
        ],
    wildcard_constraints:
        # no modality when the ensemble is off: the rule then never matches
        modality="|".join(ENSEMBLE_MODALITIES) or "(?!)",
    params:
        section=decoder_params,
        latents=latent_args,
        checkpoints=ensemble_checkpoint_dir,
        seeds=ensemble_seeds,
        device=config["device"],
        code=stage_fingerprint("train_decoder_seeds"),
    log:
        f"{LOGS}/train_decoder/sub-{{subject}}_{{modality}}_seeds.log",
    priority: modality_priority
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240 * max(ENSEMBLE_SEEDS, 1),
    conda:
        RULE_ENV
    shell:
        "cortexflow train-decoder-seeds --dataset {input.dataset} --modality {wildcards.modality}"
        " --stimuli {input.stimuli} {params.latents}"
        " --outs {output.models} --out-curves {output.curves} --checkpoint-dir {params.checkpoints}"
        " --params {params.section:q} --seeds {params.seeds} --threads {threads} --device {params.device} --log {log}"


rule sample:
    """Every held-out trial -> reconstructions by one training seed's decoder and by every baseline
    (and noise_free_linear when simulated)."""
    input:
        unpack(sample_inputs),
    output:
        recon_file("{subject}", "{modality}", "{train_seed}"),
    params:
        section=section_params("sampling"),
        latents=latent_args,
        ground_truth=ground_truth_arg,
        seed=train_seed,
        device=config["device"],
        code=stage_fingerprint("sample"),
    log:
        f"{LOGS}/sample/sub-{{subject}}_{{modality}}_seed{{train_seed}}.log",
    priority: modality_priority
    threads: 4
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        RULE_ENV
    shell:
        "cortexflow sample --dataset {input.dataset} --modality {wildcards.modality}"
        " --decoder {input.decoder} --stimuli {input.stimuli} {params.latents} {params.ground_truth} --out {output}"
        " --params {params.section:q} --seed {params.seed} --threads {threads}"
        " --device {params.device} --log {log}"
