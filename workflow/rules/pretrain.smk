# Demo only: a tiny CLIP trained on the synthetic captions, cached like any output.


rule train_clip:
    input:
        code=code("train_clip"),
        dataset=f"{DATA}/dataset.json",
    output:
        ckpt="results/{dataset}/{variant}/clip/clip.pt",
        summary="results/{dataset}/{variant}/clip/summary.json",
    log:
        log_path("train_clip"),
    benchmark:
        bench_path("train_clip")
    conda:
        "../envs/clipes.yaml"
    threads: 2
    resources:
        mem_mb=res("train_clip", "mem_mb"),
        runtime=res("train_clip", "runtime"),
    params:
        script=script("train_clip"),
        data=f"{DATA}/synthetic",
        p=lambda w: vcfg(w.variant)["model"]["pretrain"],
        stream=lambda w: (
            "--stream " if vcfg(w.variant)["model"]["pretrain"]["stream"] else ""
        ),
    shell:
        "{params.script} --data {params.data} --out {output.ckpt} "
        "--summary {output.summary} --steps {params.p[steps]} --batch-size {params.p[batch_size]} "
        "--seed {params.p[seed]} --image-size {params.p[image_size]} "
        "--patch-size {params.p[patch_size]} --vision-layers {params.p[vision_layers]} "
        "--vision-width {params.p[vision_width]} --corpus {params.p[corpus]} --pool {params.p[pool]} "
        "--group-loss {params.p[group_loss]} --group-sigma {params.p[group_sigma]} "
        "--group-scope {params.p[group_scope]} "
        "{params.stream}"
        "--threads {threads} > {log} 2>&1"
