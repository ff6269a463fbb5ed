# Stage 0: generate (synthetic) or check and index the dataset.


rule prepare_dataset:
    input:
        code=code("prepare_dataset"),
    output:
        "results/{dataset}/data/dataset.json",
    log:
        "results/{dataset}/logs/prepare_dataset.log",
    benchmark:
        "results/{dataset}/benchmarks/prepare_dataset.tsv"
    params:
        script=script("prepare_dataset"),
        args=prepare_args(),
        out=DATA,
    resources:
        mem_mb=res("prepare_dataset", "mem_mb"),
        runtime=res("prepare_dataset", "runtime"),
    conda:
        "../envs/clipes.yaml"
    shell:
        "{params.script} {params.args} --out {params.out} > {log} 2>&1"
