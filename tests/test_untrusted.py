"""Files, names and tables from other people, loaded as data: nothing they hold runs, no
name leads out of its folder, nothing silently wrong, and every refusal is one line
naming the file and the fix."""

import errno
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from clipes import cli, datasets, text
from clipes.errors import DatasetError
from conftest import run_script
from faults_helpers import CLASSES, make_custom

pytestmark = pytest.mark.faults  # part of the fault-injection suite (see tests/test_faults.py)


class _Payload:
    """Unpickling this runs a command: the file it is in must never be unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _one_line(proc, *parts):
    err = proc.stderr.strip()
    assert proc.returncode == 2 and err.count("\n") == 0 and err.startswith("error: "), proc.stderr
    for p in parts:
        assert p in err, (p, err)
    return err


# ------------------------------------------------------------------ results/ holds no code
def _train_args(root, out):
    return ["--dataset", "custom", "--root", root, "--labels", root / "labels.csv",
            "--classes", json.dumps(CLASSES), "--masks", root / "masks", "--out", out,
            "--backbone", "tiny", "--init", "none", "--iterations", "4", "--batch-size", "2",
            "--crop", "32", "--checkpoint-every", "2", "--device", "cpu", "--workers", "0",
            "--protocol", "torchvision"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seg")
    root = make_custom(tmp / "data", n_train=4, n_val=0)
    run_script("train_seg", *_train_args(root, tmp / "whole"))
    return tmp, root


def test_a_checkpoint_holding_code_is_set_aside_not_run(trained, tmp_path):
    tmp, root = trained
    out = tmp_path / "seg"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "iteration": 2, "fingerprint": _Payload(marker)}, out / "checkpoint.pt")
    proc = run_script("train_seg", *_train_args(root, out))
    assert not marker.exists()
    assert "set aside as checkpoint.pt.damaged-0, training starts afresh" in proc.stderr
    assert (out / "checkpoint.pt.damaged-0").is_file() and (out / "model.pt").is_file()
    from clipes.segmentation import load_trained

    a = load_trained(tmp / "whole" / "model.pt").state_dict()
    b = load_trained(out / "model.pt").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # afresh: the uninterrupted result


def test_a_truncated_checkpoint_is_set_aside_and_training_starts_afresh(trained, tmp_path):
    tmp, root = trained
    out = tmp_path / "seg"
    out.mkdir()
    good = (tmp / "whole" / "model.pt").read_bytes()
    (out / "checkpoint.pt").write_bytes(good[: len(good) // 3])  # a copy cut short
    proc = run_script("train_seg", *_train_args(root, out))
    assert "set aside as checkpoint.pt.damaged-0" in proc.stderr
    assert (out / "model.pt").is_file() and (out / "checkpoint.pt.damaged-0").is_file()


def test_a_model_holding_code_is_refused_in_one_line(trained, tmp_path):
    tmp, root = trained
    marker = tmp_path / "pwned"
    (tmp_path / "model.pt").write_bytes(pickle.dumps({"model": _Payload(marker), "config": {}}))
    proc = run_script("predict_seg", "--dataset", "custom", "--root", root, "--labels",
                      root / "labels.csv", "--classes", json.dumps(CLASSES), "--model",
                      tmp_path / "model.pt", "--out", tmp_path / "pred", "--device", "cpu",
                      check=False)
    _one_line(proc, "model.pt", "cannot be loaded as plain tensors")
    assert not marker.exists()


# ------------------------------------------------------------------ names stay in their folders
def _images(root, names=("a", "b")):
    (root / "images").mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "images" / f"{n}.png")


@pytest.mark.parametrize("row", ["../../outside.png", "/etc/outside.png", "sub/../../x.png"])
def test_label_rows_outside_the_images_folder_are_refused(tmp_path, row):
    _images(tmp_path / "d")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "outside.png")
    (tmp_path / "d" / "labels.csv").write_text(f"image,labels\na.png,cat\n{row},dog\n")
    with pytest.raises(DatasetError, match=r"labels.csv:3: image .* is not a file inside"):
        datasets.load_custom(tmp_path / "d", CLASSES, tmp_path / "d" / "labels.csv")


def test_split_files_are_read_as_people_write_them(tmp_path):
    """A BOM, Windows line ends, trailing spaces and blank lines are read; unknown ids, ids
    with an extension and DeepLab-style lines are one-line errors naming file and line."""
    _images(tmp_path, ("a", "b", "c"))
    (tmp_path / "labels.csv").write_text("image,labels\na.png,cat\nb.png,dog\nc.png,cat\n")
    split = tmp_path / "train.txt"
    split.write_bytes(b"\xef\xbb\xbfa  \r\n\r\nc\t\r\n")
    ds = datasets.load_custom(tmp_path, CLASSES, tmp_path / "labels.csv", split=split)
    assert [s.id for s in ds.samples] == ["a", "c"]
    for content, message in (
        ("a\nbb\n", r"train.txt:2: id 'bb' has no row in .*labels.csv"),
        ("a\nc.jpg\n", r"train.txt:2: 'c.jpg' has an image extension; ids are written without it \(c\)"),
        ("/JPEGImages/a.jpg /SegmentationClassAug/a.png\n", r"train.txt:1: .* is an image path, as DeepLab"),
        ("../a\n", r"train.txt:1: '../a' is not an id"),
    ):
        split.write_text(content)
        with pytest.raises(DatasetError, match=message):
            datasets.load_custom(tmp_path, CLASSES, tmp_path / "labels.csv", split=split)


def test_a_voc_split_with_an_unknown_id_names_the_line(tmp_path):
    for sub in ("JPEGImages", "Annotations"):
        (tmp_path / sub).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "JPEGImages" / "2007_000001.jpg")
    (tmp_path / "Annotations" / "2007_000001.xml").write_text(
        "<annotation><size><width>8</width><height>8</height></size>"
        "<object><name>cat</name></object></annotation>")
    (tmp_path / "s.txt").write_text("2007_000001\n2007_00002\n")
    with pytest.raises(DatasetError, match=r"s.txt:2: id '2007_00002' has no image .*fix the id"):
        datasets.load_voc12(tmp_path, tmp_path / "s.txt")


# ------------------------------------------------------------------ class lists
def test_a_class_named_like_a_background_word_leaves_the_background_set(tmp_path):
    _images(tmp_path)
    (tmp_path / "labels.csv").write_text("image,labels\na.png,tree\nb.png,Sky\n")
    ds = datasets.load_custom(tmp_path, ["tree", {"name": "Sky", "synonyms": ["heaven"]}],
                              tmp_path / "labels.csv", background=["ground", "tree", "sky", "wall"])
    assert ds.background == ("ground", "wall") and ds.background_removed == ["tree", "sky"]
    default = datasets.load_custom(tmp_path, ["tree", "Sky"], tmp_path / "labels.csv")
    assert "tree" in text.VOC12_BACKGROUND and "tree" not in default.background
    assert default.background_removed == ["tree", "sky"]


def test_class_lists_clip_cannot_represent_are_refused():
    with pytest.raises(DatasetError, match=r"'circle' and 'Circle' are the same to CLIP's tokenizer"):
        text.class_specs_from_config(["circle", "square", "Circle"])
    with pytest.raises(DatasetError, match=r"'big  cat' and 'big cat' are the same"):
        text.class_specs_from_config(["big  cat", "big cat"])
    with pytest.raises(DatasetError, match=r"255 classes: at most 254 fit the 8-bit masks"):
        text.class_specs_from_config([f"class{i}" for i in range(255)])
    assert len(text.class_specs_from_config([f"class{i}" for i in range(254)])) == 254


def test_class_and_label_files_in_other_encodings_or_with_code_are_one_line(tmp_path, golden):
    root = make_custom(tmp_path / "d", n_train=2, n_val=0)
    args = ["--dataset", "custom", "--root", root, "--labels", root / "labels.csv",
            "--checkpoint", golden / "clip_tiny.pt", "--out", tmp_path / "cams", "--device", "cpu"]
    # a class file with a BOM is read; one with a YAML tag that builds an object is refused
    (tmp_path / "classes.txt").write_bytes("\ufeffcat\ndog\n".encode("utf-8"))
    assert run_script("cams", *args, "--classes", tmp_path / "classes.txt").returncode == 0
    (tmp_path / "classes.yaml").write_text("- cat\n- !!python/object/apply:os.system ['true']\n")
    _one_line(run_script("cams", *args, "--classes", tmp_path / "classes.yaml", check=False),
              "classes.yaml", "not a plain YAML/JSON list of classes")
    # an inline class list longer than a file name can be
    long = json.dumps(["cat", "dog"] + [f"other class number {i}" for i in range(20)])
    assert len(long) > 255
    assert run_script("cams", *args, "--classes", long).returncode == 0
    # a label table saved by Excel in its Windows encoding
    (root / "labels.csv").write_bytes("image,labels\nim00.jpg,cat\nim01.jpg,dog\nim02.jpg,caf\xe9\n"
                                      .encode("cp1252"))
    _one_line(run_script("cams", *args, "--classes", json.dumps(CLASSES), check=False),
              "labels.csv:4: not UTF-8", "save it as UTF-8")


# ------------------------------------------------------------------ a full disk
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys):
    from clipes.io import atomic_path

    def main():
        with atomic_path(tmp_path / "out.npz") as tmp:
            tmp.write_bytes(b"x")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(SystemExit) as e:
        cli.run(main)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.count("\n") == 0
    assert err == f"error: No space left on device writing {tmp_path / 'out.npz'}: free space " \
                  f"there or point the outputs elsewhere"
    assert not list(tmp_path.iterdir())  # no half-written file left


# ------------------------------------------------------------------ change tracking
@pytest.mark.slow
def test_a_custom_dataset_without_a_split_file_reruns_what_an_edit_touches(tmp_path, golden):
    """train_split: null (every row of the label table, as the README's example): an edited
    label reruns the CAM stage, a touched file nothing."""
    from faults_helpers import custom_config
    from workflow_helpers import planned_rules, smk

    root = make_custom(tmp_path / "data", n_train=4, n_val=0)
    cfg = custom_config(root, seg=False, shards=1)
    cfg["dataset"]["train_split"] = None
    cfg["dataset"]["val_split"] = None
    smk(tmp_path, cfg)
    assert not planned_rules(tmp_path, cfg)
    for p in root.rglob("*"):
        os.utime(p)
    assert not planned_rules(tmp_path, cfg)
    rows = (root / "labels.csv").read_text().splitlines()
    rows[1] = "im00.jpg,cat;dog" if rows[1] != "im00.jpg,cat;dog" else "im00.jpg,cat"
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    assert "cams" in planned_rules(tmp_path, cfg)
