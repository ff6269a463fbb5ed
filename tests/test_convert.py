"""Preparation from the official downloads (clipes.convert) on stand-ins laid out as the
archives unpack, checked against conversions done here by other means."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipes import convert, standins
from clipes.io import load_mask
from conftest import run_script


@pytest.fixture(scope="module")
def downloads(tmp_path_factory):
    data = tmp_path_factory.mktemp("downloads")
    voc = standins.write_voc(data, n=30, seed=1)
    coco = standins.write_coco(data, n_train=8, n_val=4, seed=2)
    return data, voc, coco


def copy_of(data: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(data, dst, symlinks=True)
    return dst


# ------------------------------------------------------------------------------- VOC12
def expected_train_aug(plan):
    union = set(plan["sbd_train"]) | set(plan["sbd_val"]) | set(plan["voc_train"])
    return sorted(union - set(plan["voc_val"]))


def test_voc_train_aug_is_the_standard_union_with_counts(downloads, tmp_path):
    data, voc, _ = downloads
    plan = voc["splits"]
    assert set(plan["sbd_train"]) & set(plan["voc_val"])  # the stand-in exercises the minus
    out = tmp_path / "sbd"
    s = convert.convert_voc12(data / "VOCdevkit/VOC2012", out, sbd=data / "benchmark_RELEASE")
    got = (out / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert got == expected_train_aug(plan)
    assert s["mask_source"] == "SBD" and s["train_aug"] == len(got)
    f = s["train_aug_from"]
    assert (f["sbd_train"], f["sbd_val"], f["voc_train"]) == (
        len(plan["sbd_train"]), len(plan["sbd_val"]), len(plan["voc_train"]))
    assert f["new_from_sbd_train"] + f["new_from_sbd_val"] + f["new_from_voc_train"] == len(got)
    assert f["minus_voc_val"] == len(set(plan["sbd_train"]) & set(plan["voc_val"]))
    assert (out / "ImageSets/Segmentation/val.txt").read_text().split() == plan["voc_val"]
    assert (out / "JPEGImages").resolve() == (data / "VOCdevkit/VOC2012/JPEGImages").resolve()
    # the SegmentationClassAug route gives the same list and the same pixels
    out2 = tmp_path / "aug"
    s2 = convert.convert_voc12(data / "VOCdevkit/VOC2012", out2, aug_masks=data / "SegmentationClassAug")
    assert (out2 / "ImageSets/Segmentation/train_aug.txt").read_text().split() == got
    assert s2["mask_source"] == "SegmentationClassAug"
    for iid in got + plan["voc_val"]:
        a = load_mask(out / "SegmentationClassAug" / f"{iid}.png")
        b = load_mask(out2 / "SegmentationClassAug" / f"{iid}.png")
        assert np.array_equal(a, b), iid


def test_voc_masks_equal_the_drawn_masks_pixel_for_pixel(downloads, tmp_path):
    """SBD .mat -> PNG equals the mask the stand-in drew (read back here without the
    conversion code: PIL on the written PNG, the generator's own array); VOC's own masks
    win where VOC has one, their 255 band kept."""
    data, voc, _ = downloads
    out = tmp_path / "c"
    convert.convert_voc12(data / "VOCdevkit/VOC2012", out, sbd=data / "benchmark_RELEASE", workers=2)
    sbd_only = [i for i in voc["sbd_masks"] if i not in voc["voc_masks"]]
    assert sbd_only
    for iid in sbd_only:
        with Image.open(out / "SegmentationClassAug" / f"{iid}.png") as im:
            assert im.mode == "P"  # a palette PNG like SegmentationClassAug's
            png = np.array(im)
        assert np.array_equal(png, voc["sbd_masks"][iid]), iid
    for iid, m in voc["voc_masks"].items():
        png = np.array(Image.open(out / "SegmentationClassAug" / f"{iid}.png"))
        assert np.array_equal(png, m) and (png == 255).any(), iid


def test_voc_conversion_resumes_and_keeps_finished_files(downloads, tmp_path):
    data, _, _ = downloads
    out = tmp_path / "c"
    args = (data / "VOCdevkit/VOC2012", out)
    convert.convert_voc12(*args, sbd=data / "benchmark_RELEASE")
    masks = sorted((out / "SegmentationClassAug").glob("*.png"))
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in masks}
    masks[0].unlink()  # as if interrupted before the last file
    convert.convert_voc12(*args, sbd=data / "benchmark_RELEASE")
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in
             sorted((out / "SegmentationClassAug").glob("*.png"))}
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert all(after[k][1] == before[k][1] for k in after if k != masks[0].name)
    assert not list(out.rglob(".*.png"))  # no temporary files left
    # other settings (another mask source) start afresh
    convert.convert_voc12(*args, aug_masks=data / "SegmentationClassAug")
    assert json.loads((out / "convert.json").read_text())["mask_source"] == "SegmentationClassAug"


# ------------------------------------------------------------------------------ COCO14
def decode_compressed_rle(counts: str, h: int, w: int) -> np.ndarray:
    """COCO's compressed RLE string, decoded here without pycocotools."""
    runs, i = [], 0
    while i < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[i]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs_to_mask(runs, h, w)


def runs_to_mask(runs, h, w) -> np.ndarray:
    flat = np.zeros(h * w, np.uint8)
    pos, val = 0, 0
    for r in runs:
        flat[pos:pos + r] = val
        pos += r
        val ^= 1
    return flat.reshape((w, h)).T  # column-major


def rasterise(ann, h, w) -> tuple[np.ndarray, bool]:
    """(mask, exact): polygons with PIL (may differ from pycocotools on the outline)."""
    segm = ann["segmentation"]
    if isinstance(segm, list):
        im = Image.new("L", (w, h), 0)
        for poly in segm:
            ImageDraw.Draw(im).polygon([(poly[i], poly[i + 1]) for i in range(0, len(poly), 2)], fill=1)
        return np.asarray(im), False
    if isinstance(segm["counts"], list):
        return runs_to_mask(segm["counts"], h, w), True
    return decode_compressed_rle(segm["counts"], h, w), True


def expected_coco_mask(instances, image, crowd="class"):
    cats = sorted(c["id"] for c in instances["categories"])
    h, w = image["height"], image["width"]
    label = np.zeros((h, w), np.uint8)
    outline = np.zeros((h, w), bool)
    anns = sorted((a for a in instances["annotations"] if a["image_id"] == image["id"]),
                  key=lambda a: a["id"])
    for a in anns:
        m, exact = rasterise(a, h, w)
        value = 255 if a["iscrowd"] and crowd == "ignore" else cats.index(a["category_id"]) + 1
        label[m > 0] = value
        if not exact:
            from scipy.ndimage import binary_dilation, binary_erosion

            outline |= binary_dilation(m > 0, iterations=2) & ~binary_erosion(m > 0, iterations=2)
    return label, outline, anns


@pytest.mark.parametrize("crowd", ["class", "ignore"])
def test_coco_masks_match_masks_rasterised_here(downloads, tmp_path, crowd):
    data, _, coco = downloads
    out = tmp_path / "c"
    s = convert.convert_coco14(data / "COCO2014", out, crowd=crowd, workers=2)
    kinds = {k for im in coco["images"].values() for _, k, _ in im["objects"]}
    assert kinds == {"polygon", "rle", "crowd-rle"}  # every annotation form is exercised
    lines = {}
    for split in ("train", "val"):
        for ln in (out / f"{split}.txt").read_text().splitlines():
            stem, *labels = ln.split()
            lines[stem] = [int(v) for v in labels]
    seen_overlap = seen_crowd = False
    for part in ("train2014", "val2014"):
        inst = json.loads((data / "COCO2014/annotations" / f"instances_{part}.json").read_text())
        for image in inst["images"]:
            stem = Path(image["file_name"]).stem
            want, outline, anns = expected_coco_mask(inst, image, crowd)
            png = out / "SegmentationClass" / f"{stem}.png"
            if not anns:
                assert not png.exists() and stem not in lines
                continue
            got = np.array(Image.open(png))
            assert got.shape == want.shape
            differ = got != want
            assert not (differ & ~outline).any(), stem  # only within 2 px of polygon outlines
            assert differ.mean() < 0.02, stem
            cats = sorted(c["id"] for c in inst["categories"])
            assert lines[stem] == sorted({cats.index(a["category_id"]) for a in anns})
            seen_crowd |= any(a["iscrowd"] for a in anns)
            seen_overlap |= len(anns) > 2
            if crowd == "ignore" and any(a["iscrowd"] for a in anns):
                assert (got == 255).any()
    assert seen_crowd and seen_overlap
    assert s["splits"]["train"]["no_annotation"] == coco["empty"]


def test_coco_category_order_is_the_reference_order():
    from clipes.text import COCO14_CLASSES

    index = convert.coco_category_index([{"id": i} for i, _, _ in standins.COCO_CATEGORIES], Path("x"))
    names = {i: n for i, n, _ in standins.COCO_CATEGORIES}
    renamed = {"motorcycle": "motorbike", "airplane": "aeroplane", "couch": "sofa",
               "potted plant": "pottedplant", "dining table": "diningtable", "tv": "tvmonitor"}
    for cid, k in index.items():
        assert renamed.get(names[cid], names[cid]) == COCO14_CLASSES[k]


# --------------------------------------------------------------------------- bad input
def one_line_error(proc, *words):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_missing_archive_folders_are_named(downloads, tmp_path):
    data = copy_of(downloads[0], tmp_path)
    p = run_script("convert_voc12", "--voc", data / "VOCdevkit/VOC2012", "--sbd",
                   tmp_path / "nowhere", "--out", tmp_path / "o", check=False)
    one_line_error(p, "SBD", "benchmark.tgz", "SegmentationClassAug.zip")
    shutil.rmtree(data / "VOCdevkit/VOC2012/SegmentationClass")
    p = run_script("convert_voc12", "--voc", data / "VOCdevkit/VOC2012", "--sbd",
                   data / "benchmark_RELEASE", "--out", tmp_path / "o", check=False)
    one_line_error(p, "SegmentationClass", "VOCtrainval_11-May-2012.tar")
    shutil.rmtree(data / "COCO2014/val2014")
    p = run_script("convert_coco14", "--root", data / "COCO2014", "--out", tmp_path / "o", check=False)
    one_line_error(p, "val2014", "val2014.zip")


def test_instances_json_that_does_not_parse(downloads, tmp_path):
    data = copy_of(downloads[0], tmp_path)
    path = data / "COCO2014/annotations/instances_train2014.json"
    path.write_text(path.read_text()[:500])  # a truncated download
    p = run_script("convert_coco14", "--root", data / "COCO2014", "--out", tmp_path / "o", check=False)
    one_line_error(p, "instances_train2014.json", "cannot parse", "download")


def test_xml_without_objects(downloads, tmp_path):
    data = copy_of(downloads[0], tmp_path)
    iid = downloads[1]["splits"]["voc_train"][0]
    xml = data / f"VOCdevkit/VOC2012/Annotations/{iid}.xml"
    text = xml.read_text()
    xml.write_text(text[:text.index("\t<object>")] + "</annotation>\n")
    p = run_script("convert_voc12", "--voc", data / "VOCdevkit/VOC2012", "--sbd",
                   data / "benchmark_RELEASE", "--out", tmp_path / "o", check=False)
    one_line_error(p, f"{iid}.xml", "no <object>", "re-extract")


def test_mat_of_the_wrong_shape(downloads, tmp_path):
    from scipy.io import savemat

    data = copy_of(downloads[0], tmp_path)
    voc = downloads[1]
    iid = next(i for i in voc["sbd_masks"] if i not in voc["voc_masks"])
    mat = data / f"benchmark_RELEASE/dataset/cls/{iid}.mat"
    savemat(mat, {"GTcls": {"Segmentation": np.zeros((2, 8, 8), np.uint8)}})
    p = run_script("convert_voc12", "--voc", data / "VOCdevkit/VOC2012", "--sbd",
                   data / "benchmark_RELEASE", "--out", tmp_path / "o", check=False)
    one_line_error(p, f"{iid}.mat", "shape (2, 8, 8)")
    h, w = voc["sbd_masks"][iid].shape
    savemat(mat, {"GTcls": {"Segmentation": np.zeros((h + 1, w), np.uint8)}})
    p = run_script("convert_voc12", "--voc", data / "VOCdevkit/VOC2012", "--sbd",
                   data / "benchmark_RELEASE", "--out", tmp_path / "o2", check=False)
    one_line_error(p, f"{iid}.mat", "does not belong")
    savemat(mat, {"something": np.zeros((h, w), np.uint8)})
    p = run_script("convert_voc12", "--voc", data / "VOCdevkit/VOC2012", "--sbd",
                   data / "benchmark_RELEASE", "--out", tmp_path / "o3", check=False)
    one_line_error(p, f"{iid}.mat", "GTcls")


def test_coco_overlaps_follow_annotation_ids_not_the_order_of_the_json(downloads, tmp_path):
    """The official JSONs are not sorted by id: the masks do not depend on the file's order
    (the larger annotation id wins where instances overlap, as the README states)."""
    import shutil

    data, _, _ = downloads
    shuffled = tmp_path / "COCO2014"
    shutil.copytree(data / "COCO2014", shuffled)
    for part in ("train2014", "val2014"):
        path = shuffled / "annotations" / f"instances_{part}.json"
        inst = json.loads(path.read_text())
        inst["annotations"] = inst["annotations"][::-1]
        path.write_text(json.dumps(inst))
    a = convert.convert_coco14(data / "COCO2014", tmp_path / "a", workers=1)
    convert.convert_coco14(shuffled, tmp_path / "b", workers=1)
    assert "larger id wins" in a["overlaps"]
    pngs = sorted((tmp_path / "a" / "SegmentationClass").glob("*.png"))
    assert pngs
    for p in pngs:
        assert p.read_bytes() == (tmp_path / "b" / "SegmentationClass" / p.name).read_bytes()
