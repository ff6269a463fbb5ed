# Label-free mode (labels.source: predicted): TagCLIP's tags from the frozen CLIP replace the
# dataset's labels for every stage that reads them; the dataset's own labels, where there
# are any, only score the tags (eval/tags.json).


rule tag_images:
    input:
        code=code("tag_images"),
        dataset=dataset_json(),
        model=lambda w: model_input(w.variant),
    output:
        tags="results/{dataset}/{variant}/tags/tags.txt",
        scores="results/{dataset}/{variant}/tags/scores.npz",
        metrics=report(
            "results/{dataset}/{variant}/eval/tags.json",
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="tags (label-free mode)",
            labels={"variant": "{variant}", "stage": "tags"},
        ),
    log:
        log_path("tag_images"),
    benchmark:
        bench_path("tag_images")
    conda:
        "../envs/clipes.yaml"
    threads: 2
    resources:
        gpu=lambda w: wants_gpu(vcfg(w.variant)["labels"]["device"]),
        mem_mb=res("tag_images", "mem_mb"),
        runtime=res("tag_images", "runtime"),
    params:
        digest=lambda w: data_digest("train"),
        script=script("tag_images"),
        data=dataset_args("train"),
        model=lambda w: model_args(w.variant),
        mode=lambda w: vcfg(w.variant)["labels"]["mode"],
        background=lambda w: (
            f"--tag-background {vcfg(w.variant)['labels']['background']}"
            if vcfg(w.variant)["labels"]["background"]
            else ""
        ),
        device=lambda w: vcfg(w.variant)["labels"]["device"],
    shell:
        "{params.script} {params.data} {params.model} --tag-mode {params.mode} "
        "{params.background} --device {params.device} --out {output.tags} "
        "--scores {output.scores} --metrics {output.metrics} > {log} 2>&1"
