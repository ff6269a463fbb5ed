# Stages 5-6: DeepLabV2 trained on the pseudo masks (CGL), predicted and evaluated on val.


rule train_segmentation:
    input:
        code=code("train_seg"),
        tags=lambda w: tags_input(w.variant),
        dataset=dataset_json(),
        masks=lambda w: seg_label_dirs(w.variant),
        conf=lambda w: seg_conf_dirs(w.variant),
        init=lambda w: seg_init_input(w.variant),
    output:
        model="results/{dataset}/{variant}/segmentation/model.pt",
        log_csv="results/{dataset}/{variant}/segmentation/train_log.csv",
        info="results/{dataset}/{variant}/segmentation/train_info.json",
        plot=report(
            "results/{dataset}/{variant}/segmentation/train_log.png",
            caption="../report/train_log.rst",
            category="Segmentation",
            labels={"variant": "{variant}", "figure": "training curve"},
        ),
    log:
        log_path("train_segmentation"),
    benchmark:
        bench_path("train_segmentation")
    conda:
        "../envs/clipes.yaml"
    threads: lambda w: 1 + seg_cfg(w.variant)["workers"]
    resources:
        gpu=lambda w: wants_gpu(seg_cfg(w.variant)["device"]),
        mem_mb=res("train_segmentation", "mem_mb"),
        runtime=res("train_segmentation", "runtime"),
    params:
        digest=lambda w: data_digest("train"),
        script=script("train_seg"),
        data=lambda w: dataset_args("train", w.variant),
        args=lambda w: seg_train_args(w.variant),
        conf=lambda w, input: f"--conf {' '.join(input.conf)}" if input.conf else "",
        out=lambda w, output: str(Path(output.model).parent),
    shell:
        "{params.script} {params.data} --masks {input.masks} {params.conf} "
        "{params.args} --threads {threads} --out {params.out} > {log} 2>&1"


rule predict_segmentation:
    input:
        code=code("predict_seg"),
        dataset=dataset_json(),
        model="results/{dataset}/{variant}/segmentation/model.pt",
    output:
        directory("results/{dataset}/{variant}/segmentation/pred_val"),
    log:
        log_path("predict_segmentation"),
    benchmark:
        bench_path("predict_segmentation")
    conda:
        "../envs/clipes.yaml"
    threads: 2
    resources:
        gpu=lambda w: wants_gpu(seg_cfg(w.variant)["device"]),
        mem_mb=res("predict_segmentation", "mem_mb"),
        runtime=res("predict_segmentation", "runtime"),
    params:
        digest=lambda w: data_digest("val"),
        script=script("predict_seg"),
        data=dataset_args("val"),
        scales=lambda w: " ".join(map(str, seg_cfg(w.variant)["test_scales"])),
        flip=lambda w: "" if seg_cfg(w.variant)["test_flip"] else "--no-flip",
        crf=lambda w: "--crf" if seg_cfg(w.variant)["test_crf"] else "",
        device=lambda w: seg_cfg(w.variant)["device"],
        test=lambda w: test_protocol(w.variant),
    shell:
        "{params.script} {params.data} --model {input.model} --out {output} "
        "--test-protocol {params.test} --scales {params.scales} {params.flip} {params.crf} "
        "--device {params.device} > {log} 2>&1"


rule eval_segmentation:
    input:
        code=code("evaluate"),
        dataset=dataset_json(),
        pred="results/{dataset}/{variant}/segmentation/pred_val",
    output:
        report(
            "results/{dataset}/{variant}/eval/segmentation_val.json",
            caption="../report/evaluation.rst",
            category="Evaluation",
            subcategory="segmentation (val)",
            labels={"variant": "{variant}", "stage": "segmentation (val)"},
        ),
    log:
        log_path("eval_segmentation"),
    benchmark:
        bench_path("eval_segmentation")
    conda:
        "../envs/clipes.yaml"
    resources:
        mem_mb=res("eval_segmentation", "mem_mb"),
        runtime=res("eval_segmentation", "runtime"),
    params:
        digest=lambda w: data_digest("val", gt=True),
        script=script("evaluate"),
        data=dataset_args("val"),
    shell:
        "{params.script} {params.data} --masks {input.pred} --out {output} > {log} 2>&1"


# VOC2012 test: predictions for the evaluation server (dataset.test_root set).
rule predict_voc_test:
    input:
        code=code("predict_seg"),
        model="results/{dataset}/{variant}/segmentation/model.pt",
    output:
        directory("results/{dataset}/{variant}/voc_test/pred"),
    log:
        log_path("predict_voc_test"),
    benchmark:
        bench_path("predict_voc_test")
    conda:
        "../envs/clipes.yaml"
    threads: 2
    resources:
        gpu=lambda w: wants_gpu(seg_cfg(w.variant)["device"]),
        mem_mb=res("predict_segmentation", "mem_mb"),
        runtime=res("predict_segmentation", "runtime"),
    params:
        digest=lambda w: voc_test_digest(),
        script=script("predict_seg"),
        root=lambda w: shlex.quote(config["dataset"]["test_root"]),
        split=lambda w: shlex.quote(voc_test_split()),
        scales=lambda w: " ".join(map(str, seg_cfg(w.variant)["test_scales"])),
        flip=lambda w: "" if seg_cfg(w.variant)["test_flip"] else "--no-flip",
        crf=lambda w: "--crf" if seg_cfg(w.variant)["test_crf"] else "",
        device=lambda w: seg_cfg(w.variant)["device"],
        test=lambda w: test_protocol(w.variant),
    shell:
        "{params.script} --dataset voc12 --root {params.root} --split {params.split} "
        "--images-only --model {input.model} --out {output} --test-protocol {params.test} "
        "--scales {params.scales} {params.flip} {params.crf} --device {params.device} "
        "> {log} 2>&1"


rule voc_test_submission:
    input:
        code=code("voc_test_submission"),
        pred="results/{dataset}/{variant}/voc_test/pred",
    output:
        "results/{dataset}/{variant}/voc_test/comp6_test_cls.tar.gz",
    log:
        log_path("voc_test_submission"),
    conda:
        "../envs/clipes.yaml"
    params:
        script=script("voc_test_submission"),
        split=lambda w: shlex.quote(voc_test_split()),
    shell:
        "{params.script} --pred {input.pred} --split {params.split} --out {output} "
        "> {log} 2>&1"


# segmentation.extra_seeds: the same training under more seeds, each predicted and evaluated
# on val (the reports give each seed's mIoU, their mean and standard deviation).
use rule train_segmentation as train_segmentation_seed with:
    output:
        model="results/{dataset}/{variant}/segmentation/seed{seed}/model.pt",
        log_csv="results/{dataset}/{variant}/segmentation/seed{seed}/train_log.csv",
        info="results/{dataset}/{variant}/segmentation/seed{seed}/train_info.json",
        plot="results/{dataset}/{variant}/segmentation/seed{seed}/train_log.png",
    log:
        "results/{dataset}/{variant}/logs/train_segmentation_seed{seed}.log",
    benchmark:
        "results/{dataset}/{variant}/benchmarks/train_segmentation_seed{seed}.tsv"
    params:
        digest=lambda w: data_digest("train"),
        script=script("train_seg"),
        data=lambda w: dataset_args("train", w.variant),
        args=lambda w: seg_train_args(w.variant, int(w.seed)),
        conf=lambda w, input: f"--conf {' '.join(input.conf)}" if input.conf else "",
        out=lambda w, output: str(Path(output.model).parent),


use rule predict_segmentation as predict_segmentation_seed with:
    input:
        code=code("predict_seg"),
        dataset=dataset_json(),
        model="results/{dataset}/{variant}/segmentation/seed{seed}/model.pt",
    output:
        directory("results/{dataset}/{variant}/segmentation/seed{seed}/pred_val"),
    log:
        "results/{dataset}/{variant}/logs/predict_segmentation_seed{seed}.log",
    benchmark:
        "results/{dataset}/{variant}/benchmarks/predict_segmentation_seed{seed}.tsv"


use rule eval_segmentation as eval_segmentation_seed with:
    input:
        code=code("evaluate"),
        dataset=dataset_json(),
        pred="results/{dataset}/{variant}/segmentation/seed{seed}/pred_val",
    output:
        "results/{dataset}/{variant}/eval/segmentation_val_seed{seed}.json",
    log:
        "results/{dataset}/{variant}/logs/eval_segmentation_seed{seed}.log",
    benchmark:
        "results/{dataset}/{variant}/benchmarks/eval_segmentation_seed{seed}.tsv"
