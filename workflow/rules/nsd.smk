# The Natural Scenes Dataset from its own files (data.source: nsd; docs/nsd.md,
# cortexflow.data.nsd). NSD ships single-trial betas, so no simulate_study,
# glm_betas or extract_rois job runs: nsd_betas writes what extract_rois writes,
# nsd_stimuli the study's stimuli.tsv and images, and make_dataset goes on as
# for any study.

if NSD:

    ruleorder: nsd_betas > extract_rois

    rule nsd_betas:
        """One subject: NSD's single-trial betas at the ROI's voxels, session by session."""
        input:
            unpack(nsd_betas_inputs),
        output:
            betas=f"{roi_prefix('{subject}', 'image')}_roi-betas.npy",
            trials=f"{roi_prefix('{subject}', 'image')}_trials.parquet",
            voxels=f"{roi_prefix('{subject}', 'image')}_voxels.parquet",
        params:
            section=nsd_section(
                "betas",
                "beta_scale",
                "format",
                "regions",
                "resolution",
                "roi",
                "root",
                "sessions",
                "trials_per_session",
            ),
            regions=nsd_region_args,
            code=stage_fingerprint("nsd_betas"),
        log:
            f"{LOGS}/nsd_betas/sub-{{subject}}.log",
        threads: 1
        resources:
            mem_mb=8000,
            runtime=60,
        conda:
            "../envs/cortexflow.yml"
        shell:
            "cortexflow nsd-betas --subject {wildcards.subject} --expdesign {input.expdesign}"
            " --betas {input.betas} --roi {input.roi} {params.regions}"
            " --out-betas {output.betas} --out-trials {output.trials} --out-voxels {output.voxels}"
            " --params {params.section:q} --log {log}"

    rule nsd_stimuli:
        """Every NSD image the subjects saw, resized; the shared 1,000 are the test split."""
        input:
            unpack(nsd_stimuli_inputs),
        output:
            table=STIMULI_TSV,
            images=directory(f"{BIDS_ROOT}/stimuli/images"),
        params:
            section=nsd_section("image_size"),
            stim_info=nsd_stim_info_arg,
            code=stage_fingerprint("nsd_stimuli"),
        log:
            f"{LOGS}/nsd_stimuli.log",
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        conda:
            "../envs/cortexflow.yml"
        shell:
            "cortexflow nsd-stimuli --trials {input.trials} --expdesign {input.expdesign}"
            " --stimuli {input.stimuli} {params.stim_info} --out {output.table}"
            " --params {params.section:q} --log {log}"
