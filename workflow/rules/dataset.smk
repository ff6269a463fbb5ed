# Stage 0: generate (synthetic) or check and index the dataset.


rule prepare_dataset:
    input:
        code=code("prepare_dataset"),
        conversion=conversion_output(),
    output:
        json="results/{dataset}/data/dataset.json",
        manifest="results/{dataset}/data/manifest.tsv",
    log:
        "results/{dataset}/logs/prepare_dataset.log",
    benchmark:
        "results/{dataset}/benchmarks/prepare_dataset.tsv"
    conda:
        "../envs/clipes.yaml"
    resources:
        mem_mb=res("prepare_dataset", "mem_mb"),
        runtime=res("prepare_dataset", "runtime"),
    params:
        script=script("prepare_dataset"),
        args=prepare_args(),
        out=DATA,
        digest=lambda w: source_digest(),
    shell:
        "{params.script} {params.args} --out {params.out} > {log} 2>&1"


# Stage 0a: the official downloads converted into the layout the stages read (skipped
# where dataset.root already holds it: see dataset.layout).
if DATASET_KIND == "voc12" and LAYOUT == "official":

    rule convert_voc12:
        input:
            code=code("convert_voc12"),
        output:
            f"{CONVERTED}/convert.json",
        log:
            f"results/{DATASET}/logs/convert_voc12.log",
        benchmark:
            f"results/{DATASET}/benchmarks/convert_voc12.tsv"
        conda:
            "../envs/clipes.yaml"
        threads: config["dataset"]["convert_workers"]
        resources:
            mem_mb=res("convert_voc12", "mem_mb"),
            runtime=res("convert_voc12", "runtime"),
        params:
            script=script("convert_voc12"),
            args=voc_convert_args(),
            out=CONVERTED,
            downloads=lambda w: downloads_stamp(),
        shell:
            "{params.script} {params.args} --out {params.out} --workers {threads} > {log} 2>&1"


if DATASET_KIND == "coco14" and LAYOUT == "official":

    rule convert_coco14:
        input:
            code=code("convert_coco14"),
        output:
            f"{CONVERTED}/convert.json",
        log:
            f"results/{DATASET}/logs/convert_coco14.log",
        benchmark:
            f"results/{DATASET}/benchmarks/convert_coco14.tsv"
        conda:
            "../envs/clipes.yaml"
        threads: config["dataset"]["convert_workers"]
        resources:
            mem_mb=res("convert_coco14", "mem_mb"),
            runtime=res("convert_coco14", "runtime"),
        params:
            script=script("convert_coco14"),
            root=lambda w: shlex.quote(config["dataset"]["root"]),
            crowd=config["dataset"]["coco_crowd"],
            out=CONVERTED,
            downloads=lambda w: downloads_stamp(),
        shell:
            "{params.script} --root {params.root} --crowd {params.crowd} --out {params.out} "
            "--workers {threads} > {log} 2>&1"
