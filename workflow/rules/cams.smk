# Stages 2+3: softmax-GradCAM and CAA, sharded over images; then CAM evaluation.


rule cams:
    input:
        code=code("cams"),
        tags=lambda w: tags_input(w.variant),
        dataset=dataset_json(),
        model=lambda w: model_input(w.variant),
        prompts=lambda w: prompt_table(w.variant),
    output:
        directory("results/{dataset}/{variant}/cams/shard{shard}"),
    log:
        log_path("cams", shard=True),
    benchmark:
        bench_path("cams", shard=True)
    conda:
        "../envs/clipes.yaml"
    threads: 2
    resources:
        gpu=lambda w: wants_gpu(cam_device(w.variant)),
        mem_mb=res("cams", "mem_mb"),
        runtime=res("cams", "runtime"),
    params:
        digest=lambda w: data_digest(
            "train", shard=(int(w.shard), vcfg(w.variant)["cam"]["shards"])
        ),
        script=script("cams"),
        data=lambda w: dataset_args("train", w.variant),
        model=lambda w: model_args(w.variant),
        method=lambda w: cam_args(w.variant),
        n=lambda w: vcfg(w.variant)["cam"]["shards"],
    shell:
        "{params.script} {params.data} {params.model} {params.method} "
        "--shard {wildcards.shard}/{params.n} --memory-mb {resources.mem_mb} --out {output} "
        "--records {output}/records.tsv --skips {output}/skipped.json > {log} 2>&1"


rule eval_cams:
    input:
        code=code("evaluate"),
        tags=lambda w: tags_input(w.variant),
        dataset=dataset_json(),
        cams=lambda w: cam_shards(w.variant),
    output:
        refined=report(
            "results/{dataset}/{variant}/eval/cams.json",
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="CAM + CAA",
            labels={"variant": "{variant}", "stage": "CAM + CAA"},
        ),
        plain=report(
            "results/{dataset}/{variant}/eval/cams_plain.json",
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="initial CAM",
            labels={"variant": "{variant}", "stage": "initial CAM"},
        ),
    log:
        log_path("eval_cams"),
    benchmark:
        bench_path("eval_cams")
    conda:
        "../envs/clipes.yaml"
    resources:
        mem_mb=res("eval_cams", "mem_mb"),
        runtime=res("eval_cams", "runtime"),
    params:
        digest=lambda w: data_digest("train", gt=True),
        script=script("evaluate"),
        data=lambda w: dataset_args("train", w.variant),
        powers=lambda w: " ".join(map(str, vcfg(w.variant)["cam"]["bg_powers"])),
    shell:
        "({params.script} {params.data} --cams {input.cams} --powers {params.powers} "
        "--out {output.refined} && "
        "{params.script} {params.data} --cams {input.cams} --cam-key cams_plain "
        "--powers {params.powers} --out {output.plain}) > {log} 2>&1"
