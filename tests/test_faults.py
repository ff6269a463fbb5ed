"""Fault injection: one bad input (or one interruption) at a time, each with the outcome a
user must get: a one-line error naming the file and the fix, a recorded skip, or outputs
identical to an uninterrupted run. The README's "What bad input gets" table lists the same
kinds; the ids below are its rows.

Run alone with `python3 -m pytest -q -m faults tests`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipes import cam, datasets, manifest
from conftest import REPO, golden_dir, run_script
from faults_helpers import CLASSES, custom_config, make_custom
from workflow_helpers import SNAKEMAKE, smk

pytestmark = pytest.mark.faults

needs_clip = pytest.mark.skipif(not (golden_dir() / "clip_tiny.pt").is_file(),
                                reason="tiny CLIP checkpoint of the golden set not found")


def one_line_error(proc, *fragments):
    """Exit code 2, no traceback, one 'error:' line holding every fragment."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def prepare(root, *extra, labels=None):
    return run_script("prepare_dataset", "--kind", "custom", "--root", root,
                      "--labels", labels or root / "labels.csv", "--classes", json.dumps(CLASSES),
                      "--out", root / "prepared", *extra, check=False)


@pytest.fixture
def data(tmp_path):
    return make_custom(tmp_path / "data", n_train=4, n_val=0)


def load(root, **kw):
    return datasets.load_custom(root, CLASSES, root / "labels.csv", **kw)


# ------------------------------------------------------------------ damaged image files
def test_truncated_jpeg_is_named_at_preparation(data):
    p = data / "images" / "im01.jpg"
    p.write_bytes(p.read_bytes()[:-200])
    one_line_error(prepare(data), "1 damaged image file(s)", str(p), "truncated JPEG",
                   "download them again")


def test_truncated_png_and_non_images_are_damaged(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    assert datasets.damaged(png) is None
    png.write_bytes(png.read_bytes()[:-20])
    assert "truncated PNG" in datasets.damaged(png)
    fake = tmp_path / "b.jpg"
    fake.write_bytes(b"not an image at all")
    assert "cannot read image" in datasets.damaged(fake)


def test_a_jpeg_with_a_thumbnail_is_not_taken_for_truncated(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 1
    thumb = tmp_path / "t.jpg"
    Image.fromarray(np.full((300, 400, 3), 90, np.uint8)).save(thumb, exif=exif.tobytes())
    assert datasets.damaged(thumb) is None


def test_cam_stage_checks_its_shard_before_loading_a_model(data):
    p = data / "images" / "im02.jpg"
    p.write_bytes(p.read_bytes()[:-300])
    proc = run_script("cams", "--dataset", "custom", "--root", data, "--labels",
                      data / "labels.csv", "--classes", json.dumps(CLASSES),
                      "--checkpoint", data / "missing.pt", "--out", data / "cams", check=False)
    one_line_error(proc, str(p), "shard 0/1")


# ------------------------------------------------------------------------ label tables
@pytest.mark.parametrize("kind, csv, expect", [
    ("unknown class", "image,labels\nim00.jpg,cat;zebra\n", "unknown class names ['zebra']"),
    ("missing image", "image,labels\nnope.jpg,cat\n", "image 'nope.jpg' not found"),
    ("missing columns", "file,classes\nim00.jpg,cat\n", "needs the columns 'image' and 'labels'"),
    ("repeated row", "image,labels\nim00.jpg,cat\nim00.jpg,dog\n", "listed again"),
    ("no rows", "image,labels\n", "no image rows"),
])
def test_label_table_faults_are_named(data, kind, csv, expect):
    (data / "labels.csv").write_text(csv)
    with pytest.raises(datasets.DatasetError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        load(data)


def test_an_empty_label_list_is_a_recorded_skip(data):
    (data / "labels.csv").write_text("image,labels\nim00.jpg,\nim01.jpg,cat\n")
    ds = load(data)
    assert [s.id for s in ds.samples] == ["im01"]
    assert ds.skipped[0]["id"] == "im00" and "empty label list" in ds.skipped[0]["reason"]


def test_every_label_list_empty_is_one_error(data):
    (data / "labels.csv").write_text("image,labels\nim00.jpg,\nim01.jpg,\n")
    one_line_error(prepare(data), "every label list is empty", "2 rows skipped")


def test_a_split_file_that_is_missing_or_lists_nothing(data):
    with pytest.raises(datasets.DatasetError, match="split file not found"):
        load(data, split=data / "nope.txt")
    (data / "empty.txt").write_text("\n# nothing\n")
    with pytest.raises(datasets.DatasetError, match="lists no images"):
        load(data, split=data / "empty.txt")


# ----------------------------------------------------------------------- image content
@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK", "P", "I;16"])
def test_image_modes_are_read_as_rgb(tmp_path, mode):
    a = np.random.default_rng(0).integers(0, 255, (16, 20, 4)).astype(np.uint8)
    base = Image.fromarray(a, "RGBA")
    im = base.convert("I").point(lambda v: v * 200).convert("I;16") if mode == "I;16" else base.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    im.save(path)
    with datasets.open_image(path) as got:
        rgb = np.asarray(got.convert("RGB"))
    assert rgb.shape == (16, 20, 3) and rgb.std() > 0


def test_floating_point_images_are_refused(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.ones((4, 4), np.float32)).save(path)
    with pytest.raises(datasets.DatasetError, match="floating-point image"):
        datasets.open_image(path)


def _exif_rotated(path, hw=(30, 50)):
    exif = Image.Exif()
    exif[0x0112] = 6  # turn by 90 degrees
    Image.fromarray(np.full((*hw, 3), 120, np.uint8)).save(path, exif=exif.tobytes())


def test_exif_orientation_is_a_named_policy(data):
    _exif_rotated(data / "images" / "im00.jpg")
    try:
        datasets.set_exif_policy("ignore")
        assert datasets.image_size_hw(data / "images" / "im00.jpg") == (30, 50)
        datasets.set_exif_policy("apply")
        assert datasets.image_size_hw(data / "images" / "im00.jpg") == (50, 30)
        with datasets.open_image(data / "images" / "im00.jpg") as im:
            assert (im.height, im.width) == (50, 30)
    finally:
        datasets.set_exif_policy("ignore")


def test_exif_turned_images_are_counted_and_a_turned_mask_explained(data):
    _exif_rotated(data / "images" / "im00.jpg")
    Image.fromarray(np.zeros((50, 30), np.uint8)).save(data / "masks" / "im00.png")
    proc = prepare(data)
    assert proc.returncode == 0, proc.stderr
    assert "1 image(s) carry an EXIF orientation" in proc.stderr
    info = json.loads((data / "prepared" / "dataset.json").read_text())
    assert info["splits"]["train"]["exif_turned"]["count"] == 1
    s = next(s for s in load(data).samples if s.id == "im00")
    with pytest.raises(datasets.DatasetError, match="EXIF orientation 6.*dataset.exif: apply"):
        datasets.load_gt(s)


def test_images_too_large_for_the_cam_stage_are_named_with_the_fix(data):
    Image.fromarray(np.zeros((4000, 6000, 3), np.uint8)).save(data / "images" / "im03.jpg")
    line = one_line_error(prepare(data, "--cam-memory-mb", "8000"), "im03 (6000x4000",
                          "cam.max_side")
    assert "1 image(s)" in line
    proc = prepare(data, "--cam-memory-mb", "8000", "--max-side", "1024")
    assert proc.returncode == 0, proc.stderr
    assert cam.input_size((4000, 6000), 16, 1024) == (688, 1024)
    assert cam.input_size((375, 500), 16, 1024) == cam.input_size((375, 500))  # reference


# ------------------------------------------------------------------- ground-truth masks
def test_masks_of_another_size_or_class_count_are_refused(data):
    s = load(data).samples[0]
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(s.gt)
    with pytest.raises(datasets.DatasetError, match="does not belong to"):
        datasets.load_gt(s)
    Image.fromarray(np.full((48, 64), 7, np.uint8)).save(s.gt)
    with pytest.raises(datasets.DatasetError, match=r"label values \[7\] beyond the 3 classes"):
        datasets.load_gt(s, n_classes=3)


def _cams_for(data, out):
    from clipes.camstore import save_full_cams

    ds = load(data)
    for s in ds.samples:
        save_full_cams(out / f"{s.id}.npz", np.asarray(s.keys),
                  np.random.default_rng(0).random((len(s.keys), *s.orig_hw)).astype(np.float16))


def test_images_without_masks_are_left_out_of_the_score_and_counted(data, tmp_path):
    _cams_for(data, tmp_path / "cams")
    (data / "masks" / "im01.png").unlink()
    out = tmp_path / "eval.json"
    proc = run_script("evaluate", "--dataset", "custom", "--root", data, "--labels",
                      data / "labels.csv", "--classes", json.dumps(CLASSES), "--cams",
                      tmp_path / "cams", "--out", out)
    assert "1 without a mask left out" in proc.stderr
    res = json.loads(out.read_text())
    assert res["n_images"] == 3 and res["n_without_gt"] == 1
    shutil.rmtree(data / "masks")
    run_script("evaluate", "--dataset", "custom", "--root", data, "--labels", data / "labels.csv",
               "--classes", json.dumps(CLASSES), "--cams", tmp_path / "cams", "--out", out)
    res = json.loads(out.read_text())
    assert res["mIoU"] is None and res["n_without_gt"] == 4
    from clipes.report import quality_table

    row = next(r for r in quality_table({"cams": res}) if r["key"] == "cams")
    assert not row["available"] and "no ground-truth masks" in row["note"]


# ---------------------------------------------------------------------- command lines
@pytest.mark.parametrize("spec", ["0/0", "3/2", "x"])
def test_bad_shard_specs_are_one_line(data, spec):
    proc = run_script("crf", "--dataset", "custom", "--root", data, "--labels",
                      data / "labels.csv", "--classes", json.dumps(CLASSES), "--cams", data,
                      "--shard", spec, "--out", data / "o", check=False)
    one_line_error(proc, f"--shard {spec!r}")


def test_a_missing_or_corrupt_checkpoint_is_one_line(data):
    args = ["--dataset", "custom", "--root", data, "--labels", data / "labels.csv",
            "--classes", json.dumps(CLASSES), "--out", data / "cams"]
    one_line_error(run_script("cams", *args, "--checkpoint", data / "nope.pt", check=False),
                   "CLIP checkpoint not found", "nope.pt")
    (data / "bad.pt").write_bytes(b"\0" * 100)
    one_line_error(run_script("cams", *args, "--checkpoint", data / "bad.pt", check=False),
                   "could not load", "bad.pt")


def test_a_bad_inline_class_list_is_one_line(data):
    proc = run_script("cams", "--dataset", "custom", "--root", data, "--labels",
                      data / "labels.csv", "--classes", "[cat, dog", "--out", data / "c", check=False)
    one_line_error(proc, "--classes", "not a valid JSON list")


# -------------------------------------------------------------------------- manifests
def test_shards_are_cut_by_split_row_so_a_skip_moves_nothing(data):
    (data / "labels.csv").write_text("image,labels\nim00.jpg,cat\nim01.jpg,\nim02.jpg,dog\n"
                                     "im03.jpg,cat\n")
    ds = load(data)
    assert [s.id for s in datasets.shard(ds.samples, 0, 2)] == ["im00", "im02"]
    assert [s.id for s in datasets.shard(ds.samples, 1, 2)] == ["im03"]
    rows = manifest.entries("custom", data, None, data / "labels.csv")
    assert [(e.id, e.row) for e in rows] == [(s, i) for i, s in enumerate(
        ["im00", "im01", "im02", "im03"])]


def test_content_digests_ignore_touches_and_see_edits(data, tmp_path):
    rows = manifest.entries("custom", data, None, data / "labels.csv")
    cache = manifest.HashCache.load(tmp_path / "h.json")
    before = [manifest.digest(rows, cache, shard=(i, 2)) for i in range(2)]
    cache.save()
    os.utime(data / "images" / "im01.jpg", ns=(1, 1))
    cache = manifest.HashCache.load(tmp_path / "h.json")
    assert [manifest.digest(rows, cache, shard=(i, 2)) for i in range(2)] == before
    im = data / "images" / "im01.jpg"
    Image.open(im).rotate(90).save(im)
    after = [manifest.digest(rows, cache, shard=(i, 2)) for i in range(2)]
    assert after[0] == before[0] and after[1] != before[1]


# ============================================================== the workflow, end to end
S = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--configfile", "config.yaml", "--cores", "2"]

# files whose content holds a time (or a path under the run folder) by design
TIMED = ("benchmarks/", "logs/", "records.tsv", "reports/", "train_info.json",
         "variant_config.json", "clip/summary.json")


MODEL = "results/faulty/base/segmentation/model.pt"
LOG = "results/faulty/base/segmentation/train_log.csv"


def data_files(run: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted((run / "results").rglob("*")):
        rel = str(p.relative_to(run))
        if p.is_file() and not any(t in rel for t in TIMED):
            out[rel] = p.read_bytes()
    return out


def report_without_times(run: Path) -> list[str]:
    """The Markdown reports without what holds a time: the date line, the Time section,
    the (s) columns of the comparison."""
    out = []
    for name in ("base.md", "comparison.md"):
        timed_cols, in_time = set(), False
        for line in (run / "reports" / "faulty" / name).read_text().splitlines():
            if line.startswith("## "):
                in_time = line == "## Time"
            if in_time or " · git " in line:
                continue
            if line.startswith("|"):
                cells = line.split("|")
                if "(s)" in line:
                    timed_cols = {i for i, c in enumerate(cells) if "(s)" in c}
                line = "|".join(c for i, c in enumerate(cells) if i not in timed_cols)
            out.append(line)
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted run of the tiny custom workflow."""
    if not (golden_dir() / "clip_tiny.pt").is_file():
        pytest.skip("tiny CLIP checkpoint of the golden set not found")
    run = tmp_path_factory.mktemp("finished")
    make_custom(run / "data")
    smk(run, custom_config(Path("data")))  # paths relative to the run: copies compare equal
    return run


def fresh_copy(finished: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(finished / "data", dst / "data")
    cfg = custom_config(Path("data"))
    import yaml

    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dst


def kill_when(cmd, cwd, ready, timeout=900):
    """Start cmd and kill -9 it as soon as ready() holds; False if it ended before."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.time()
    while proc.poll() is None and not ready() and time.time() - t0 < timeout:
        time.sleep(0.02)
    if proc.poll() is not None:
        return False
    proc.kill()
    proc.wait()
    return True


@needs_clip
def test_kill_9_of_snakemake_then_unlock_and_rerun_gives_identical_outputs(finished, tmp_path):
    """The README's words after an interrupted run, typed as they stand."""
    run = fresh_copy(finished, tmp_path / "killed")
    rng = np.random.default_rng(14)
    # a point of the run every machine passes, not a time: a fast machine may finish first
    points = {"a CAM archive written": "results/faulty/base/cams/shard*/*.npz",
              "a pseudo mask written": "results/faulty/base/pseudo_masks/shard*/*.png",
              "training started": "results/faulty/base/segmentation/train_log.csv"}
    point = sorted(points)[int(rng.integers(len(points)))]
    assert kill_when(S, run, lambda: any(run.glob(points[point]))), point
    time.sleep(3)  # orphaned jobs finish or die with their pipes
    plain = subprocess.run(S, cwd=run, capture_output=True, text=True)
    if plain.returncode != 0:  # the lock of the killed process: the hint says what to type
        assert "snakemake --unlock" in plain.stdout + plain.stderr
        subprocess.run([*S, "--unlock"], cwd=run, check=True, capture_output=True)
        plain = subprocess.run(S, cwd=run, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr[-4000:]
    assert data_files(run).keys() == data_files(finished).keys()
    a, b = data_files(run), data_files(finished)
    differ = [k for k in a if a[k] != b[k]]
    assert set(differ) <= {MODEL, LOG}, differ  # bytes equal for data
    import torch
    from clipes.segmentation import load_trained

    sa, sb = (load_trained(r / MODEL).state_dict() for r in (run, finished))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # tensors equal for checkpoints
    untimed = lambda p: [ln.rsplit(",", 1)[0] for ln in p.read_text().splitlines()]  # noqa: E731
    assert untimed(run / LOG) == untimed(finished / LOG)  # the log but its seconds column
    assert report_without_times(run) == report_without_times(finished)


def planned(run: Path) -> set[str]:
    """Rules (with the shard number) a dry run plans."""
    out = subprocess.run([*S, "-n"], cwd=run, capture_output=True, text=True, check=True).stdout
    jobs, rule = set(), None
    for line in out.splitlines():
        line = line.strip()
        if line.startswith(("rule ", "localrule ")):
            rule = line.split()[1].rstrip(":")
            jobs.add(rule)
        elif line.startswith("wildcards:") and "shard=" in line and rule:
            jobs.discard(rule)
            jobs.add(f"{rule}{line.split('shard=')[1].split(',')[0]}")
    return jobs


def edited_copy(finished: Path, dst: Path) -> Path:
    """The finished run with its records, file times kept (what a user's folder holds)."""
    run = fresh_copy(finished, dst)
    for sub in ("results", "reports", ".snakemake/metadata"):
        shutil.copytree(finished / sub, run / sub)
    return run


def _relabel(run):
    rows = (run / "data" / "labels.csv").read_text().splitlines()
    rows[4] = "im03.jpg,dog" if rows[4] != "im03.jpg,dog" else "im03.jpg,cat"  # row 3: shard 1
    (run / "data" / "labels.csv").write_text("\n".join(rows) + "\n")


def _turn(path):
    Image.open(path).rotate(180).save(path)


def _new_row(run):
    shutil.copy(run / "data" / "images" / "im00.jpg", run / "data" / "images" / "new.jpg")
    with open(run / "data" / "labels.csv", "a") as f:
        f.write("new.jpg,cat\n")
    with open(run / "data" / "train.txt", "a") as f:
        f.write("new\n")  # row 8: shard 0


EVAL_TRAIN = {"eval_cams", "eval_pseudo_masks", "eval_crf_labels"}
AFTER_CAMS = {"crf0", "crf1", *EVAL_TRAIN, "train_segmentation", "predict_segmentation",
              "eval_segmentation"}
REPORTS = {"prepare_dataset", "report", "comparison_report", "all"}


@needs_clip
@pytest.mark.parametrize("edit, expect", [
    ("touch", set()),
    ("label", {"cams1", *AFTER_CAMS, *REPORTS}),
    ("train image", {"cams0", *AFTER_CAMS, *REPORTS}),
    ("val image", {"predict_segmentation", "eval_segmentation", *REPORTS}),
    ("train mask", {*EVAL_TRAIN, *REPORTS}),
    ("new row", {"cams0", *AFTER_CAMS, *REPORTS}),
])
def test_dataset_edits_rerun_what_reads_them_and_nothing_else(finished, tmp_path, edit, expect):
    run = edited_copy(finished, tmp_path / "run")
    d = run / "data"
    {"touch": lambda: [os.utime(p) for p in (d / "labels.csv", d / "images" / "im01.jpg",
                                              d / "masks" / "im02.png")],
     "label": lambda: _relabel(run),
     "train image": lambda: _turn(d / "images" / "im02.jpg"),
     "val image": lambda: _turn(d / "images" / "im09.jpg"),
     "train mask": lambda: Image.fromarray(np.full((48, 64), 1, np.uint8)).save(d / "masks" / "im02.png"),
     "new row": lambda: _new_row(run)}[edit]()
    assert planned(run) == expect


def test_a_shard_without_images_still_writes_its_folders(tiny, tmp_path):
    _, root, data = tiny
    out = {k: tmp_path / k for k in ("masks", "labels", "conf")}
    run_script("crf", *data, "--cams", tmp_path, "--shard", "8/9", "--out", out["masks"],
               "--labels-out", out["labels"], "--conf-out", out["conf"])
    assert all(p.is_dir() and not any(p.iterdir()) for p in out.values())
    run_script("cams", *data, "--checkpoint", golden_dir() / "clip_tiny.pt", "--device", "cpu",
               "--shard", "8/9", "--out", tmp_path / "cams")
    assert (tmp_path / "cams").is_dir() and not list((tmp_path / "cams").glob("*.npz"))


# ----------------------------------------------------------- kill -9 of one stage
def _stage_kill(cmd_for, outputs, rng, points):
    """Kill the stage after `k` finished outputs (plus a seeded pause) for each k, resume
    with --resume, compare with an uninterrupted run byte for byte."""
    ref = outputs("ref")
    if not ref():
        subprocess.run(cmd_for("ref"), check=True, capture_output=True)
    want = {p.name: p.read_bytes() for p in ref()}
    for k in points:
        name = f"k{k}"
        proc = subprocess.Popen(cmd_for(name), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t0 = time.time()
        while proc.poll() is None and len(outputs(name)()) < k and time.time() - t0 < 120:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        subprocess.run([*cmd_for(name), "--resume"], check=True, capture_output=True)
        got = {p.name: p.read_bytes() for p in outputs(name)()}
        assert got == want, f"killed after {k} outputs"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A custom dataset of 8 images and the command line of its CAM stage."""
    if not (golden_dir() / "clip_tiny.pt").is_file():
        pytest.skip("tiny CLIP checkpoint of the golden set not found")
    tmp = tmp_path_factory.mktemp("stages")
    root = make_custom(tmp / "data", n_train=8, n_val=0)
    data = ["--dataset", "custom", "--root", str(root), "--labels", str(root / "labels.csv"),
            "--classes", json.dumps(CLASSES)]
    return tmp, root, data


def py(script):
    return [sys.executable, str(REPO / "scripts" / f"{script}.py")]


def test_kill_9_of_the_cam_and_crf_stages_resumes_to_identical_files(tiny):
    tmp, root, data = tiny
    cams = [*py("cams"), *data, "--checkpoint", str(golden_dir() / "clip_tiny.pt"),
            "--device", "cpu", "--mode", "batched", "--keep-plain"]
    _stage_kill(lambda n: [*cams, "--out", str(tmp / n)],
                lambda n: (lambda: sorted((tmp / n).glob("*.npz"))),
                np.random.default_rng(1), points=[2, 5])
    crf = [*py("crf"), *data, "--cams", str(tmp / "ref"), "--jobs", "1"]
    _stage_kill(lambda n: [*crf, "--out", str(tmp / f"crf_{n}")],
                lambda n: (lambda: sorted((tmp / f"crf_{n}").glob("*.png"))),
                np.random.default_rng(2), points=[1, 6])


def test_kill_9_of_training_resumes_to_identical_weights_and_log(tiny):
    import torch

    tmp, root, data = tiny
    train = [*py("train_seg"), *data, "--masks", str(root / "masks"), "--backbone", "tiny",
             "--init", "none", "--iterations", "8", "--batch-size", "2", "--crop", "32",
             "--checkpoint-every", "2", "--device", "cpu", "--workers", "0",
             "--protocol", "torchvision"]
    subprocess.run([*train, "--out", str(tmp / "whole")], check=True, capture_output=True)
    rng = np.random.default_rng(3)
    for point in range(2):
        out = tmp / f"cut{point}"
        proc = subprocess.Popen([*train, "--out", str(out)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        t0 = time.time()
        while proc.poll() is None and not (out / "checkpoint.pt").is_file() and time.time() - t0 < 120:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0, 1.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        subprocess.run([*train, "--out", str(out)], check=True, capture_output=True)
        from clipes.segmentation import load_trained

        sa = load_trained(tmp / "whole" / "model.pt").state_dict()
        sb = load_trained(out / "model.pt").state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
        untimed = lambda p: [ln.rsplit(",", 1)[0] for ln in p.read_text().splitlines()]  # noqa: E731
        assert untimed(out / "train_log.csv") == untimed(tmp / "whole" / "train_log.csv")


def test_an_unreadable_mask_is_one_line_and_debug_gives_the_traceback(data, tmp_path):
    _cams_for(data, tmp_path / "cams")
    (data / "masks" / "im01.png").write_bytes(b"garbage")
    args = ["--dataset", "custom", "--root", data, "--labels", data / "labels.csv",
            "--classes", json.dumps(CLASSES), "--cams", tmp_path / "cams", "--out", tmp_path / "e.json"]
    one_line_error(run_script("evaluate", *args, check=False), "im01.png", "unreadable label mask")
    proc = run_script("evaluate", *args, "--debug", check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_an_unreachable_hub_is_one_line_at_once(monkeypatch, tmp_path):
    """No internet and no cached weights: the hub is not retried for a minute."""
    import socket

    import huggingface_hub.constants as hc

    from clipes.model import ClipLoadError, load_clip

    def refuse(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # recorded, so the test's "1" is undone
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", hc.HF_HUB_OFFLINE)
    t0 = time.time()
    with pytest.raises(ClipLoadError, match="cannot be reached.*model.checkpoint"):
        load_clip("ViT-B-16", "openai", cache_dir=str(tmp_path))
    assert time.time() - t0 < 30
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # cached weights would still load
