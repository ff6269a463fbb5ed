# Stages 5-6: DeepLabV2 trained on the pseudo masks (CGL), predicted and evaluated on val.


def seg_cfg(variant):
    return vcfg(variant)["segmentation"]


def seg_label_dirs(variant):
    """cgl: the confidence-masked pseudo masks; plain/soft: CRF labels without the ignore
    region (soft also reads the confidence maps)."""
    loss = seg_cfg(variant)["loss"]
    return crf_shards(variant, "pseudo_masks" if loss == "cgl" else "crf_labels")


def seg_conf_dirs(variant):
    return crf_shards(variant, "crf_conf") if seg_cfg(variant)["loss"] == "soft" else []


def seg_train_args(variant):
    s = seg_cfg(variant)
    args = [f"--backbone {s['backbone']}", f"--init {shlex.quote(str(s['init'] or 'none'))}",
            f"--loss {s['loss']}", f"--iterations {s['iterations']}",
            f"--batch-size {s['batch_size']}", f"--crop {s['crop']}", f"--lr {s['lr']}",
            f"--momentum {s['momentum']}", f"--weight-decay {s['weight_decay']}",
            f"--poly-power {s['poly_power']}",
            f"--scale-range {s['scale_range'][0]} {s['scale_range'][1]}",
            f"--checkpoint-every {s['checkpoint_every']}", f"--seed {s['seed']}",
            f"--device {s['device']}"]
    return " ".join(args)


def seg_init_input(variant):
    init = seg_cfg(variant)["init"]
    return [init] if init and init != "imagenet" else []


rule train_segmentation:
    input:
        dataset=f"{DATA}/dataset.json",
        masks=lambda w: seg_label_dirs(w.variant),
        conf=lambda w: seg_conf_dirs(w.variant),
        init=lambda w: seg_init_input(w.variant),
    output:
        model="results/{dataset}/{variant}/segmentation/model.pt",
        log_csv="results/{dataset}/{variant}/segmentation/train_log.csv",
        plot="results/{dataset}/{variant}/segmentation/train_log.png",
    log:
        log_path("train_segmentation"),
    benchmark:
        bench_path("train_segmentation")
    params:
        data=dataset_args("train"),
        args=lambda w: seg_train_args(w.variant),
        conf=lambda w, input: f"--conf {' '.join(input.conf)}" if input.conf else "",
        out=lambda w, output: str(Path(output.model).parent),
    threads: 2
    resources:
        gpu=lambda w: wants_gpu(seg_cfg(w.variant)["device"]),
        mem_mb=32000,
        runtime=720,
    shell:
        "{PY} {SCRIPTS}/train_seg.py {params.data} --masks {input.masks} {params.conf} "
        "{params.args} --threads {threads} --out {params.out} > {log} 2>&1"


rule predict_segmentation:
    input:
        dataset=f"{DATA}/dataset.json",
        model="results/{dataset}/{variant}/segmentation/model.pt",
    output:
        directory("results/{dataset}/{variant}/segmentation/pred_val"),
    log:
        log_path("predict_segmentation"),
    benchmark:
        bench_path("predict_segmentation")
    params:
        data=dataset_args("val"),
        scales=lambda w: " ".join(map(str, seg_cfg(w.variant)["test_scales"])),
        flip=lambda w: "" if seg_cfg(w.variant)["test_flip"] else "--no-flip",
        crf=lambda w: "--crf" if seg_cfg(w.variant)["test_crf"] else "",
        device=lambda w: seg_cfg(w.variant)["device"],
    threads: 2
    resources:
        gpu=lambda w: wants_gpu(seg_cfg(w.variant)["device"]),
        mem_mb=8000,
        runtime=120,
    shell:
        "{PY} {SCRIPTS}/predict_seg.py {params.data} --model {input.model} --out {output} "
        "--scales {params.scales} {params.flip} {params.crf} --device {params.device} > {log} 2>&1"


rule eval_segmentation:
    input:
        dataset=f"{DATA}/dataset.json",
        pred="results/{dataset}/{variant}/segmentation/pred_val",
    output:
        "results/{dataset}/{variant}/eval/segmentation_val.json",
    log:
        log_path("eval_segmentation"),
    benchmark:
        bench_path("eval_segmentation")
    params:
        data=dataset_args("val"),
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{PY} {SCRIPTS}/evaluate.py {params.data} --masks {input.pred} --out {output} > {log} 2>&1"
