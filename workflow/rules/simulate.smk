# The embedded default study: a simulated experiment written in BIDS layout with
# fMRIPrep derivatives (cortexflow.data.simulate). Only when data.source is
# "simulate"; a real study's files already exist.

if SIMULATED:

    rule simulate_study:
        output:
            description=f"{BIDS_ROOT}/dataset_description.json",
            stimuli=STIMULI_TSV,
            runs=[path for files in RUNS.values() for path in files.values()],
            truth=[
                path
                for subject in SUBJECTS
                for path in ground_truth_files(subject).values()
            ],
        params:
            out=folder_of_description,
            section=section_params("simulate"),
            seed=config["seed"],
            code=stage_fingerprint("simulate_study"),
        log:
            f"{LOGS}/simulate_study.log",
        # one process per subject, side by side (the same files with any number); nothing else
        # can run until the study exists, so on a small machine this uses the idle cores
        threads: max(1, len(SUBJECTS))
        resources:
            # each further process holds one subject's model and runs (measured on the default
            # study: at most 0.9 GB resident in any one process)
            mem_mb=lambda wildcards, threads: 4000 + 1000 * (threads - 1),
            runtime=30,
        conda:
            RULE_ENV
        shell:
            "cortexflow simulate-study --out {params.out} --params {params.section:q}"
            " --seed {params.seed} --threads {threads} --log {log}"

    rule check_study:
        """The simulated study, read as a user's is (`cortexflow check`), once written."""
        input:
            rules.simulate_study.output,
        output:
            STUDY_CHECK,
        params:
            study=STUDY,
            seed=config["seed"],
            data=section("data"),
            glm=section("glm"),
            rois=section("rois"),
            dataset=section("dataset"),
            code=stage_fingerprint("check_study"),
        log:
            f"{LOGS}/check_study.log",
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            RULE_ENV
        shell:
            "cortexflow check --headers-only --out {output} --log {log} --config study={params.study}"
            " seed={params.seed} data={params.data:q} glm={params.glm:q} rois={params.rois:q}"
            " dataset={params.dataset:q} > /dev/null"
