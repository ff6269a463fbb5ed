# Reports: one per variant (HTML + Markdown), and the comparison of all variants.


def report_inputs(variant):
    files = variant_outputs(variant)
    c = vcfg(variant)
    ins = dict(files)
    ins["cams"] = cam_shards(variant)
    ins["pseudo"] = crf_shards(variant)
    if "eval_seg" in files:
        ins["pred"] = f"{stage_dir(variant, 'segmentation')}/segmentation/pred_val"
        ins["train_plot"] = f"{stage_dir(variant, 'segmentation')}/segmentation/train_log.png"
    ins["cams_plain"] = f"{stage_dir(variant, 'cams')}/eval/cams_plain.json"
    return ins


def report_args(variant, input):
    evals = [f"cams_plain={input.cams_plain}", f"cams={input.eval_cams}",
             f"pseudo_masks={input.eval_pseudo}"]
    if "eval_crf_labels" in input.keys():
        evals.append(f"crf_labels={input.eval_crf_labels}")
    if "eval_seg" in input.keys():
        evals.append(f"segmentation={input.eval_seg}")
    stages = ["pretrain", "prompts", "cams", "crf", "segmentation"]
    bench = sorted({f"{stage_dir(variant, s)}/benchmarks" for s in stages})
    bench.append(f"results/{DATASET}/benchmarks")
    args = [f"--eval {' '.join(evals)}", f"--bench-dirs {' '.join(bench)}",
            f"--cams {' '.join(input.cams)}", f"--pseudo {' '.join(input.pseudo)}",
            f"--gallery {config['report']['gallery']}"]
    if "pred" in input.keys():
        args += [f"--pred {input.pred}", f"--train-log {input.train_plot}"]
    return " ".join(args)


rule variant_config:
    output:
        "results/{dataset}/{variant}/config.yaml",
    params:
        text=lambda w: yaml.safe_dump(vcfg(w.variant), sort_keys=False),
    run:
        Path(output[0]).write_text(params.text)


rule report:
    input:
        unpack(lambda w: report_inputs(w.variant)),
        config="results/{dataset}/{variant}/config.yaml",
    output:
        html="reports/{dataset}/{variant}.html",
        md="reports/{dataset}/{variant}.md",
        summary="reports/{dataset}/{variant}.json",
    log:
        log_path("report"),
    params:
        data=dataset_args("train"),
        args=lambda w, input: report_args(w.variant, input),
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{PY} {SCRIPTS}/report.py run {params.data} --variant {wildcards.variant} "
        "--dataset-json {input.dataset} --config {input.config} {params.args} "
        "--html {output.html} --md {output.md} --summary {output.summary} > {log} 2>&1"


rule comparison_report:
    input:
        expand("reports/{{dataset}}/{variant}.json", variant=list(VARIANTS)),
    output:
        html="reports/{dataset}/comparison.html",
        md="reports/{dataset}/comparison.md",
    log:
        "results/{dataset}/logs/comparison_report.log",
    params:
        base=config["report"]["baseline_variant"] or BASE,
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "{PY} {SCRIPTS}/report.py compare --summary {input} --base {params.base} "
        "--title {wildcards.dataset} --html {output.html} --md {output.md} > {log} 2>&1"
