# Stage 0: generate (synthetic) or check and index the dataset.


def prepare_args():
    ds = config["dataset"]
    kind = ds["kind"]
    args = [f"--kind {kind}"]
    if kind == "synthetic":
        s = ds["synthetic"]
        return " ".join(args + [f"--seed {s['seed']} --n-train {s['n_train']} --n-val {s['n_val']}"])
    args.append(f"--root {shlex.quote(ds['root'])}")
    if split_path("train"):
        args.append(f"--train-split {shlex.quote(split_path('train'))}")
    if has_val():
        args.append(f"--val-split {shlex.quote(split_path('val'))}")
    if kind == "custom":
        for key in ("classes", "background"):
            value = ds[key]
            if value is not None:
                value = value if isinstance(value, str) else json.dumps(value)
                args.append(f"--{key} {shlex.quote(value)}")
        args.append(f"--labels {shlex.quote(ds['labels'])}")
    if not ds["reference_quirks"]:
        args.append("--no-reference-quirks")
    return " ".join(args)


rule prepare_dataset:
    output:
        "results/{dataset}/data/dataset.json",
    log:
        "results/{dataset}/logs/prepare_dataset.log",
    benchmark:
        "results/{dataset}/benchmarks/prepare_dataset.tsv"
    params:
        args=prepare_args(),
        out=DATA,
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{PY} {SCRIPTS}/prepare_dataset.py {params.args} --out {params.out} > {log} 2>&1"
