"""The label-free mode through the workflow: a dataset of your own with images and a class
list only, tagged by TagCLIP, runs to the report; bad input is one line."""

import json

import numpy as np
import pytest
from PIL import Image

from conftest import golden_dir, run_script
from faults_helpers import CLASSES, custom_config, make_custom
from workflow_helpers import smk

pytestmark = pytest.mark.skipif(not (golden_dir() / "clip_tiny.pt").is_file(),
                                reason="tiny CLIP checkpoint of the golden set not found")


@pytest.mark.slow
def test_a_dataset_without_labels_runs_end_to_end(tmp_path):
    root = make_custom(tmp_path / "data", n_train=6, n_val=2)
    (root / "labels.csv").unlink()
    (root / "train.txt").unlink()
    cfg = custom_config(root, name="nolabels", shards=1)
    cfg["dataset"].update(labels=None, train_split=None)
    cfg["labels"] = {"source": "predicted"}
    smk(tmp_path, cfg)
    r = tmp_path / "results" / "nolabels" / "base"
    lines = (r / "tags" / "tags.txt").read_text().splitlines()
    ids = sorted(p.stem for p in (root / "images").glob("*.jpg"))
    assert [ln.split()[0] for ln in lines] == ids  # every image, train and val
    assert all(0 <= int(k) < len(CLASSES) for ln in lines for k in ln.split()[1:])
    tags = json.loads((r / "eval" / "tags.json").read_text())
    assert tags["n_images"] == len(ids) and "no image-level labels" in tags["note"]
    # the CAMs were made for the tagged classes
    from clipes.camstore import load_cams

    want = {ln.split()[0]: [int(k) for k in ln.split()[1:]] for ln in lines}
    for f in (r / "cams" / "shard0").glob("*.npz"):
        assert list(load_cams(f)[0]) == want[f.stem]
    html = (tmp_path / "reports" / "nolabels" / "base.html").read_text()
    assert "Label-free run" in html and "no image-level labels to score the tags against" in html
    # a given-labels variant needs the label table: refused before any job, naming the fix
    cfg["variants"]["given"] = {"labels": {"source": "given"}}
    proc = smk(tmp_path, cfg, "-n", check=False)
    assert proc.returncode != 0 and "labels.source: predicted" in proc.stdout + proc.stderr


def test_one_class_or_a_model_tagclip_cannot_run_is_one_line(tmp_path, golden):
    root = make_custom(tmp_path / "d", n_train=2, n_val=0)
    args = ["--dataset", "custom", "--root", root, "--out", tmp_path / "tags.txt",
            "--checkpoint", golden / "clip_tiny.pt", "--device", "cpu"]
    proc = run_script("tag_images", *args, "--classes", json.dumps(["cat"]), check=False)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0 and "needs at least two classes" in err


def test_an_image_one_patch_high_gets_the_first_class_and_is_recorded(tmp_path, golden):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (12, 90, 3), dtype=np.uint8)).save(root / "images" / "thin.png")
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / "images" / "ok.png")
    proc = run_script("tag_images", "--dataset", "custom", "--root", root, "--classes",
                      json.dumps(CLASSES), "--checkpoint", golden / "clip_tiny.pt", "--device",
                      "cpu", "--out", tmp_path / "tags.txt", "--metrics", tmp_path / "m.json")
    assert "thin: an image one 16-pixel patch high" in proc.stderr
    tags = dict(ln.split(maxsplit=1) for ln in (tmp_path / "tags.txt").read_text().splitlines())
    assert tags["thin"] == "0"
    assert json.loads((tmp_path / "m.json").read_text())["fallback_ids"] == ["thin"]
