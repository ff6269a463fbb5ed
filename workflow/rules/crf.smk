# Stage 4: dense CRF and confidence-masked pseudo masks (sharded), then their evaluation.


rule crf:
    input:
        code=code("crf"),
        tags=lambda w: tags_input(w.variant),
        dataset=dataset_json(),
        cams=lambda w: cam_shards(w.variant),
    output:
        masks=directory("results/{dataset}/{variant}/pseudo_masks/shard{shard}"),
        labels=directory("results/{dataset}/{variant}/crf_labels/shard{shard}"),
        conf=directory("results/{dataset}/{variant}/crf_conf/shard{shard}"),
    log:
        log_path("crf", shard=True),
    benchmark:
        bench_path("crf", shard=True)
    conda:
        "../envs/clipes.yaml"
    threads: lambda w: vcfg(w.variant)["crf"]["threads"]
    resources:
        mem_mb=res("crf", "mem_mb"),
        runtime=res("crf", "runtime"),
    params:
        digest=lambda w: data_digest(
            "train", shard=(int(w.shard), vcfg(w.variant)["crf"]["shards"])
        ),
        script=script("crf"),
        data=lambda w: dataset_args("train", w.variant),
        method=lambda w: crf_args(w.variant),
        n=lambda w: vcfg(w.variant)["crf"]["shards"],
    shell:
        "{params.script} {params.data} --cams {input.cams} {params.method} "
        "--shard {wildcards.shard}/{params.n} --jobs {threads} --out {output.masks} "
        "--labels-out {output.labels} --conf-out {output.conf} > {log} 2>&1"


rule eval_pseudo_masks:
    input:
        code=code("evaluate"),
        tags=lambda w: tags_input(w.variant),
        dataset=dataset_json(),
        masks=lambda w: crf_shards(w.variant),
    output:
        report(
            "results/{dataset}/{variant}/eval/pseudo_masks.json",
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="pseudo masks",
            labels={"variant": "{variant}", "stage": "pseudo masks"},
        ),
    log:
        log_path("eval_pseudo_masks"),
    benchmark:
        bench_path("eval_pseudo_masks")
    conda:
        "../envs/clipes.yaml"
    resources:
        mem_mb=res("eval_pseudo_masks", "mem_mb"),
        runtime=res("eval_pseudo_masks", "runtime"),
    params:
        digest=lambda w: data_digest("train", gt=True),
        script=script("evaluate"),
        data=lambda w: dataset_args("train", w.variant),
    shell:
        "{params.script} {params.data} --masks {input.masks} --out {output} > {log} 2>&1"


rule eval_crf_labels:
    input:
        code=code("evaluate"),
        tags=lambda w: tags_input(w.variant),
        dataset=dataset_json(),
        labels=lambda w: crf_shards(w.variant, "crf_labels"),
    output:
        report(
            "results/{dataset}/{variant}/eval/crf_labels.json",
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="CRF labels",
            labels={"variant": "{variant}", "stage": "CRF labels"},
        ),
    log:
        log_path("eval_crf_labels"),
    benchmark:
        bench_path("eval_crf_labels")
    conda:
        "../envs/clipes.yaml"
    resources:
        mem_mb=res("eval_crf_labels", "mem_mb"),
        runtime=res("eval_crf_labels", "runtime"),
    params:
        digest=lambda w: data_digest("train", gt=True),
        script=script("evaluate"),
        data=lambda w: dataset_args("train", w.variant),
    shell:
        "{params.script} {params.data} --masks {input.labels} --out {output} > {log} 2>&1"
