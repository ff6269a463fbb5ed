# Stages 2+3: softmax-GradCAM and CAA, sharded over images; then CAM evaluation.


def cam_args(variant):
    c = vcfg(variant)["cam"]
    t = vcfg(variant)["text"]
    args = [f"--mode {c['mode']}", f"--batch-size {c['batch_size']}", f"--device {c['device']}",
            f"--synonym-fusion {t['synonym_fusion']}", "--keep-plain"]
    if t["select_prompt"]["enabled"] and t["select_prompt"]["use_selected"]:
        args.append(f"--template-table {stage_dir(variant, 'prompts')}/prompts/scores.tsv")
    else:
        args.append(f"--template {shlex.quote(t['template'])}")
    if c["autocast"]:
        args.append(f"--autocast {c['autocast']}")
    if c["box_threshold"] is not None:
        args.append(f"--box-threshold {c['box_threshold']}")
    for key, flag in (("caa", "--no-caa"), ("background", "--no-background"),
                      ("softmax", "--no-softmax"), ("clip_box_border", "--no-box-border-clip")):
        if not c[key]:
            args.append(flag)
    return " ".join(args)


def prompt_table(variant):
    sp = vcfg(variant)["text"]["select_prompt"]
    if sp["enabled"] and sp["use_selected"]:
        return [f"{stage_dir(variant, 'prompts')}/prompts/scores.tsv"]
    return []


rule cams:
    input:
        dataset=f"{DATA}/dataset.json",
        model=lambda w: model_input(w.variant),
        prompts=lambda w: prompt_table(w.variant),
    output:
        directory("results/{dataset}/{variant}/cams/shard{shard}"),
    log:
        log_path("cams", shard=True),
    benchmark:
        bench_path("cams", shard=True)
    params:
        data=dataset_args("train"),
        model=lambda w: model_args(w.variant),
        method=lambda w: cam_args(w.variant),
        n=lambda w: vcfg(w.variant)["cam"]["shards"],
    threads: 2
    resources:
        gpu=lambda w: wants_gpu(cam_device(w.variant)),
        mem_mb=16000,
        runtime=240,
    shell:
        "{PY} {SCRIPTS}/cams.py {params.data} {params.model} {params.method} "
        "--shard {wildcards.shard}/{params.n} --out {output} "
        "--records {output}/records.tsv --skips {output}/skipped.json > {log} 2>&1"


rule eval_cams:
    input:
        dataset=f"{DATA}/dataset.json",
        cams=lambda w: cam_shards(w.variant),
    output:
        refined="results/{dataset}/{variant}/eval/cams.json",
        plain="results/{dataset}/{variant}/eval/cams_plain.json",
    log:
        log_path("eval_cams"),
    benchmark:
        bench_path("eval_cams")
    params:
        data=dataset_args("train"),
        powers=lambda w: " ".join(map(str, vcfg(w.variant)["cam"]["bg_powers"])),
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "({PY} {SCRIPTS}/evaluate.py {params.data} --cams {input.cams} --powers {params.powers} "
        "--out {output.refined} && "
        "{PY} {SCRIPTS}/evaluate.py {params.data} --cams {input.cams} --cam-key cams_plain "
        "--powers {params.powers} --out {output.plain}) > {log} 2>&1"
