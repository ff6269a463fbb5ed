# Reports: one per variant (HTML + Markdown), and the comparison of all variants.


rule variant_config:
    output:
        "results/{dataset}/{variant}/config.yaml",
    log:
        log_path("variant_config"),
    params:
        text=lambda w: yaml.safe_dump(result_config(w.variant), sort_keys=False),
    run:
        Path(output[0]).write_text(params.text)
        Path(log[0]).write_text(
            f"effective config of variant {wildcards.variant}\n"
        )


rule report:
    input:
        unpack(lambda w: report_inputs(w.variant)),
        code=code("report"),
        tags=lambda w: tags_input(w.variant),
        config="results/{dataset}/{variant}/config.yaml",
    output:
        html=report(
            "reports/{dataset}/{variant}.html",
            caption="../report/run_report.rst",
            category="Reports",
            labels={"variant": "{variant}", "type": "run report"},
        ),
        md="reports/{dataset}/{variant}.md",
        summary="reports/{dataset}/{variant}.json",
    log:
        log_path("report"),
    conda:
        "../envs/clipes.yaml"
    resources:
        mem_mb=res("report", "mem_mb"),
        runtime=res("report", "runtime"),
    params:
        script=script("report"),
        data=lambda w: dataset_args("train", w.variant),
        args=lambda w, input: report_args(w.variant, input),
    shell:
        "{params.script} run {params.data} --variant {wildcards.variant} "
        "--dataset-json {input.dataset} --config {input.config} {params.args} "
        "--html {output.html} --md {output.md} --summary {output.summary} > {log} 2>&1"


rule comparison_report:
    input:
        code=code("report"),
        summaries=expand("reports/{{dataset}}/{variant}.json", variant=list(VARIANTS)),
        train_logs=lambda w: list(train_logs().values()),
    output:
        html=report(
            "reports/{dataset}/comparison.html",
            caption="../report/comparison.rst",
            category="Reports",
            labels={"variant": "all", "type": "comparison"},
        ),
        md="reports/{dataset}/comparison.md",
        metrics="reports/metrics/{dataset}.json",
        curves=directory("reports/plots/{dataset}"),
    log:
        "results/{dataset}/logs/comparison_report.log",
    conda:
        "../envs/clipes.yaml"
    resources:
        mem_mb=res("comparison_report", "mem_mb"),
        runtime=res("comparison_report", "runtime"),
    params:
        script=script("report"),
        base=config["report"]["baseline_variant"] or BASE,
        variants=comparison_variants(),
        logs=lambda w: " ".join(f"{v}={p}" for v, p in train_logs().items()),
    shell:
        "{params.script} compare --summary {input.summaries} --base {params.base} "
        "--variants {params.variants} --title {wildcards.dataset} --html {output.html} "
        "--md {output.md} --metrics {output.metrics} --curves {output.curves} "
        "--train-log {params.logs} > {log} 2>&1"
