# Metrics with bootstrap intervals, paired comparisons, the summary and its
# figures (cortexflow.evaluation).


rule evaluate:
    """One subject and modality: every metric for every method (the decoder over its training seeds),
    with chance and ceiling."""
    input:
        recon=recon_files,
    output:
        summary=f"{RESULTS}/metrics/sub-{{subject}}_{{modality}}_summary.parquet",
        per_item=f"{RESULTS}/metrics/sub-{{subject}}_{{modality}}_items.parquet",
        comparisons=f"{RESULTS}/metrics/sub-{{subject}}_{{modality}}_comparisons.parquet",
    params:
        section=section_params("evaluation"),
        seed=config["seed"],
        code=stage_fingerprint("evaluate"),
    log:
        f"{LOGS}/evaluate/sub-{{subject}}_{{modality}}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    conda:
        RULE_ENV
    shell:
        "cortexflow evaluate --recon {input.recon} --out-summary {output.summary} --out-items {output.per_item}"
        " --out-comparisons {output.comparisons} --subject {wildcards.subject} --modality {wildcards.modality}"
        " --params {params.section:q} --seed {params.seed} --log {log}"


rule summarize:
    """The study's tables, readable summary and figures."""
    input:
        unpack(summary_inputs),
    output:
        summary=f"{RESULTS}/summary.parquet",
        comparisons=f"{RESULTS}/comparisons.parquet",
        markdown=report(
            f"{RESULTS}/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        metrics_figure=report(
            f"{RESULTS}/figures/metrics.png",
            caption="../report/metrics.rst",
            category="Metrics",
        ),
        by_category=f"{RESULTS}/summary_by_category.parquet",
        category_figure=report(
            f"{RESULTS}/figures/by_category.png",
            caption="../report/by_category.rst",
            category="Metrics",
        ),
        recon_figures=report_figures(recon_figures()),
    params:
        figures=folder_of_metrics_figure,
        section=section_params("evaluation"),
        sampling=sampling_of_every_modality,
        seed=config["seed"],
        code=stage_fingerprint("summarize"),
    log:
        f"{LOGS}/summarize.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    conda:
        RULE_ENV
    shell:
        "cortexflow summarize --summaries {input.summaries} --comparisons {input.comparisons}"
        " --recons {input.recons} --items {input.item_scores} --datasets {input.datasets} --stimuli {input.stimuli}"
        " --out-summary {output.summary} --out-comparisons {output.comparisons}"
        " --out-by-category {output.by_category} --out-markdown {output.markdown} --out-figures {params.figures}"
        " --params {params.section:q} --sampling {params.sampling:q} --seed {params.seed} --log {log}"
