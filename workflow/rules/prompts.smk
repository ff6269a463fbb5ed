# Stage 1: sharpness-based prompt selection over candidate templates.


rule score_prompts:
    input:
        code=code("score_prompts"),
        tags=lambda w: tags_input(w.variant),
        dataset=dataset_json(),
        model=lambda w: model_input(w.variant),
    output:
        "results/{dataset}/{variant}/prompts/scores.tsv",
    log:
        log_path("score_prompts"),
    benchmark:
        bench_path("score_prompts")
    conda:
        "../envs/clipes.yaml"
    resources:
        gpu=lambda w: wants_gpu(cam_device(w.variant)),
        mem_mb=res("score_prompts", "mem_mb"),
        runtime=res("score_prompts", "runtime"),
    params:
        digest=lambda w: data_digest("train"),
        script=script("score_prompts"),
        data=lambda w: dataset_args("train", w.variant),
        model=lambda w: model_args(w.variant),
        candidates=lambda w: candidate_args(w.variant),
        fusion=lambda w: vcfg(w.variant)["text"]["synonym_fusion"],
        max_images=lambda w: vcfg(w.variant)["text"]["select_prompt"]["max_images"],
        device=lambda w: cam_device(w.variant),
    shell:
        "{params.script} {params.data} {params.model} --device {params.device} "
        "--candidates {params.candidates} --synonym-fusion {params.fusion} "
        "--max-images {params.max_images} --out {output} > {log} 2>&1"
