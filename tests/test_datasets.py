"""Dataset readers and bad input: clear errors naming the file, recorded skips."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from clipes import datasets
from conftest import run_script

XML = """<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>
{objects}</annotation>"""


def make_voc(root, items):
    """items: id -> (list of object names, (W, H) of the image, (W, H) in the XML)."""
    for sub in ("JPEGImages", "Annotations", "SegmentationClassAug"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for iid, (names, (w, h), (xw, xh)) in items.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{iid}.jpg")
        objs = "".join(f"<object><name>{n}</name></object>" for n in names)
        (root / "Annotations" / f"{iid}.xml").write_text(XML.format(w=xw, h=xh, objects=objs))
        Image.fromarray(np.zeros((h, w), np.uint8)).save(root / "SegmentationClassAug" / f"{iid}.png")
    (root / "train.txt").write_text("\n".join(items) + "\n")
    return root / "train.txt"


def test_voc_labels_in_document_order_without_repeats(tmp_path):
    split = make_voc(tmp_path, {"a": (["person", "dog", "person"], (40, 30), (40, 30))})
    ds = datasets.load_voc12(tmp_path, split)
    assert ds.samples[0].keys == (14, 11) and ds.samples[0].orig_hw == (30, 40)
    assert ds.n_classes == 21 and ds.class_names[15] == "person"


def test_empty_label_list_is_skipped_and_recorded(tmp_path, golden):
    split = make_voc(tmp_path, {"a": (["cat"], (40, 30), (40, 30)),
                                "b": ([], (40, 30), (40, 30)),
                                "c": (["dog"], (40, 30), (40, 30))})
    out = tmp_path / "out"
    run_script("cams", "--dataset", "voc12", "--root", tmp_path, "--split", split,
               "--checkpoint", golden / "clip_tiny.pt", "--out", out, "--device", "cpu",
               "--skips", tmp_path / "skips.json")
    # unlike the reference, the images after the empty one are still processed
    assert sorted(p.stem for p in out.glob("*.npz")) == ["a", "c"]
    skips = json.loads((tmp_path / "skips.json").read_text())
    assert skips["count"] == 1 and skips["skipped"][0]["id"] == "b"


@pytest.mark.parametrize("case,expect", [
    ("unknown", "unknown class name 'unicorn'"),
    ("size", "<size> says"),
    ("truncated", "cannot read image"),
])
def test_bad_input_names_the_file(tmp_path, golden, case, expect):
    names = ["unicorn"] if case == "unknown" else ["cat"]
    xml_size = (50, 30) if case == "size" else (40, 30)
    split = make_voc(tmp_path, {"x": (names, (40, 30), xml_size)})
    if case == "truncated":
        p = tmp_path / "JPEGImages" / "x.jpg"
        p.write_bytes(p.read_bytes()[:200])
    proc = run_script("cams", "--dataset", "voc12", "--root", tmp_path, "--split", split,
                      "--checkpoint", golden / "clip_tiny.pt", "--out", tmp_path / "o",
                      "--device", "cpu", check=False)
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr and "x." in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_dataset_folder_says_what_to_download(tmp_path):
    with pytest.raises(datasets.DatasetError, match="VOCtrainval_11-May-2012"):
        datasets.load_voc12(tmp_path / "nothing", tmp_path / "train.txt")
    with pytest.raises(datasets.DatasetError, match="train2014"):
        datasets.load_coco14(tmp_path / "nothing", tmp_path / "train.txt")


def test_gt_size_mismatch_is_an_error(tmp_path):
    split = make_voc(tmp_path, {"a": (["cat"], (40, 30), (40, 30))})
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "SegmentationClassAug" / "a.png")
    s = datasets.load_voc12(tmp_path, split).samples[0]
    with pytest.raises(datasets.DatasetError, match="a.png is 10x10"):
        datasets.load_gt(s)


def test_coco_split_labels_and_nested_layout(tmp_path):
    (tmp_path / "JPEGImages" / "val2014").mkdir(parents=True)
    iid = "COCO_val2014_000000000042"
    Image.new("RGB", (20, 10)).save(tmp_path / "JPEGImages" / "val2014" / f"{iid}.jpg")
    (tmp_path / "s.txt").write_text(f"{iid} 0 24 0\n")
    ds = datasets.load_coco14(tmp_path, tmp_path / "s.txt")
    assert ds.samples[0].keys == (0, 24, 0)  # the reference keeps repeats
    assert datasets.load_coco14(tmp_path, tmp_path / "s.txt", reference=False).samples[0].keys == (0, 24)
    (tmp_path / "s.txt").write_text(f"{iid} 80\n")
    with pytest.raises(datasets.DatasetError, match="outside 0..79"):
        datasets.load_coco14(tmp_path, tmp_path / "s.txt")


def test_custom_dataset_through_the_scripts(tmp_path, golden):
    img = tmp_path / "images"
    img.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (33, 47, 3), dtype=np.uint8)).save(img / f"im{i}.png")
    (tmp_path / "masks").mkdir()
    for i in range(3):
        m = np.zeros((33, 47), np.uint8)
        m[5:20, 5:30] = 1 + i % 2
        Image.fromarray(m).save(tmp_path / "masks" / f"im{i}.png")
    (tmp_path / "classes.txt").write_text("widget: gadget, device\nsprocket\n")
    (tmp_path / "labels.csv").write_text("image,labels\nim0.png,widget\nim1.png,sprocket;widget\nim2.png,\n")
    common = ["--dataset", "custom", "--root", tmp_path, "--classes", tmp_path / "classes.txt",
              "--labels", tmp_path / "labels.csv"]
    proc = run_script("cams", *common, "--checkpoint", golden / "clip_tiny.pt", "--out",
                      tmp_path / "cams", "--device", "cpu", "--mode", "batched", "--skips",
                      tmp_path / "skips.json")
    # progress a person can follow in the log: count, rate and time left
    assert re.search(r"^cams 2/2: [0-9.]+ images/s, eta \d+ s", proc.stderr, re.M), proc.stderr
    assert sorted(p.stem for p in (tmp_path / "cams").glob("*.npz")) == ["im0", "im1"]
    from clipes import camstore

    keys, cams = camstore.load_cams(tmp_path / "cams" / "im1.npz")
    assert list(keys) == [1, 0] and cams.shape == (2, 33, 47) and cams.dtype == np.float16
    proc = run_script("crf", *common, "--cams", tmp_path / "cams", "--out", tmp_path / "pm")
    assert re.findall(r"^crf (\d)/2: [0-9.]+ images/s, eta \d+ s", proc.stderr, re.M) == ["1", "2"]
    run_script("evaluate", *common, "--masks", tmp_path / "pm", "--out", tmp_path / "e.json")
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["class_names"] == ["background", "widget", "sprocket"] and 0 <= res["mIoU"] <= 1
    (tmp_path / "labels.csv").write_text("image,labels\nim0.png,gizmo\n")
    proc = run_script("cams", *common, "--checkpoint", golden / "clip_tiny.pt",
                      "--out", tmp_path / "c2", "--device", "cpu", check=False)
    assert proc.returncode == 2 and "labels.csv:2" in proc.stderr and "gizmo" in proc.stderr
