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
        threads: 1
        resources:
            mem_mb=4000,
            runtime=30,
        conda:
            RULE_ENV
        shell:
            "cortexflow simulate-study --out {params.out} --params {params.section:q}"
            " --seed {params.seed} --log {log}"
