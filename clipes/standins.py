"""Small stand-ins for the official VOC12, SBD and COCO14 downloads, laid out exactly as
their archives unpack, for trying the preparation and every later stage offline.

    write_voc(DATA)   DATA/VOCdevkit/VOC2012/            (VOCtrainval_11-May-2012.tar)
                        JPEGImages/<id>.jpg, Annotations/<id>.xml,
                        SegmentationClass/<id>.png (palette, 255 boundary band),
                        ImageSets/Segmentation/{train,val,trainval}.txt, ImageSets/Main/
                      DATA/benchmark_RELEASE/dataset/     (SBD benchmark.tgz)
                        cls/<id>.mat (struct GTcls: Segmentation, Boundaries,
                        CategoriesPresent), inst/, img/<id>.jpg, train.txt, val.txt
                      DATA/SegmentationClassAug/<id>.png  (SegmentationClassAug.zip), optional
    write_voc_test(DATA)  DATA/VOC2012test/VOCdevkit/VOC2012/  (VOC2012test.tar)
                        JPEGImages/<id>.jpg, ImageSets/Segmentation/test.txt
    write_coco(DATA)  DATA/COCO2014/train2014/COCO_train2014_<12 digits>.jpg, val2014/...,
                        annotations/instances_{train,val}2014.json (polygons, compressed and
                        uncompressed RLE, crowd flags, an image without annotations)

The images are shapes in class colours on textured backgrounds; the split lists overlap
the way the official ones do (some SBD images are VOC val images, SBD train and val share
none, VOC train adds ids SBD lacks), so the train_aug union and its subtraction are
exercised. Each writer returns what it drew, for tests that check conversions by other
means.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import io
from .text import VOC12_CLASSES

# COCO 2014 instances categories: (id, name, supercategory), ids with the official gaps
COCO_CATEGORIES = [
    (1, "person", "person"), (2, "bicycle", "vehicle"), (3, "car", "vehicle"),
    (4, "motorcycle", "vehicle"), (5, "airplane", "vehicle"), (6, "bus", "vehicle"),
    (7, "train", "vehicle"), (8, "truck", "vehicle"), (9, "boat", "vehicle"),
    (10, "traffic light", "outdoor"), (11, "fire hydrant", "outdoor"), (13, "stop sign", "outdoor"),
    (14, "parking meter", "outdoor"), (15, "bench", "outdoor"), (16, "bird", "animal"),
    (17, "cat", "animal"), (18, "dog", "animal"), (19, "horse", "animal"), (20, "sheep", "animal"),
    (21, "cow", "animal"), (22, "elephant", "animal"), (23, "bear", "animal"),
    (24, "zebra", "animal"), (25, "giraffe", "animal"), (27, "backpack", "accessory"),
    (28, "umbrella", "accessory"), (31, "handbag", "accessory"), (32, "tie", "accessory"),
    (33, "suitcase", "accessory"), (34, "frisbee", "sports"), (35, "skis", "sports"),
    (36, "snowboard", "sports"), (37, "sports ball", "sports"), (38, "kite", "sports"),
    (39, "baseball bat", "sports"), (40, "baseball glove", "sports"), (41, "skateboard", "sports"),
    (42, "surfboard", "sports"), (43, "tennis racket", "sports"), (44, "bottle", "kitchen"),
    (46, "wine glass", "kitchen"), (47, "cup", "kitchen"), (48, "fork", "kitchen"),
    (49, "knife", "kitchen"), (50, "spoon", "kitchen"), (51, "bowl", "kitchen"),
    (52, "banana", "food"), (53, "apple", "food"), (54, "sandwich", "food"), (55, "orange", "food"),
    (56, "broccoli", "food"), (57, "carrot", "food"), (58, "hot dog", "food"), (59, "pizza", "food"),
    (60, "donut", "food"), (61, "cake", "food"), (62, "chair", "furniture"),
    (63, "couch", "furniture"), (64, "potted plant", "furniture"), (65, "bed", "furniture"),
    (67, "dining table", "furniture"), (70, "toilet", "furniture"), (72, "tv", "electronic"),
    (73, "laptop", "electronic"), (74, "mouse", "electronic"), (75, "remote", "electronic"),
    (76, "keyboard", "electronic"), (77, "cell phone", "electronic"), (78, "microwave", "appliance"),
    (79, "oven", "appliance"), (80, "toaster", "appliance"), (81, "sink", "appliance"),
    (82, "refrigerator", "appliance"), (84, "book", "indoor"), (85, "clock", "indoor"),
    (86, "vase", "indoor"), (87, "scissors", "indoor"), (88, "teddy bear", "indoor"),
    (89, "hair drier", "indoor"), (90, "toothbrush", "indoor"),
]


def _colour(k: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(1000 + k)
    return tuple(int(v) for v in rng.integers(40, 230, 3))


def _background(rng, h: int, w: int) -> np.ndarray:
    base = rng.integers(60, 200, 3)
    noise = rng.integers(-25, 25, (h, w, 1))
    period = int(rng.integers(5, 12))
    stripes = ((np.arange(w)[None, :] // period) % 2 * 30)[..., None]
    return np.clip(base + noise + stripes, 0, 255).astype(np.uint8)


def _random_box(rng, h: int, w: int) -> tuple[int, int, int, int]:
    bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
    x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
    return x0, y0, x0 + bw, y0 + bh


def _polygon(rng, box) -> list[tuple[int, int]]:
    """A convex polygon (triangle, quadrilateral or pentagon) inside the box."""
    x0, y0, x1, y1 = box
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    n = int(rng.integers(3, 6))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n)) + rng.uniform(0, 1)
    return [(int(round(cx + rx * np.cos(a))), int(round(cy + ry * np.sin(a)))) for a in angles]


def _jpeg(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=90)


# ------------------------------------------------------------------------------- VOC12
def voc_ids(n: int) -> list[str]:
    years = ("2007", "2008", "2009", "2010", "2011")
    return [f"{years[i % len(years)]}_{i + 1:06d}" for i in range(n)]


def voc_split_plan(ids: list[str]) -> dict[str, list[str]]:
    """Overlapping lists as in the official files (fractions of the ids).

    VOC train / val hold 30% / 20%; SBD train takes the rest of the first 70% plus some VOC
    val ids, SBD val the next block (disjoint from SBD train); the last 10% are in no list.
    """
    n = len(ids)
    a, b, c, d = round(0.3 * n), round(0.5 * n), round(0.75 * n), round(0.9 * n)
    return {
        "voc_train": ids[:a],
        "voc_val": ids[a:b],
        "sbd_train": ids[a // 2:a] + ids[a:a + 2] + ids[b:c],
        "sbd_val": ids[c:d],
    }


def write_voc(data: Path, n: int = 30, seed: int = 0, size=(160, 120),
              aug_masks: bool = True) -> dict:
    """Write the VOC2012 tar's tree, SBD's tree (and SegmentationClassAug/) under ``data``.

    Returns {"ids", "splits", "sbd_masks": {id: (H, W) uint8}, "voc_masks": {...}}.
    """
    data = Path(data)
    voc = data / "VOCdevkit" / "VOC2012"
    sbd = data / "benchmark_RELEASE" / "dataset"
    rng = np.random.default_rng(seed)
    ids = voc_ids(n)
    plan = voc_split_plan(ids)
    voc_gt_ids = set(plan["voc_train"] + plan["voc_val"])
    sbd_ids = set(plan["sbd_train"] + plan["sbd_val"])
    sbd_masks, voc_masks = {}, {}
    for k, iid in enumerate(ids):
        w, h = size if k % 4 else size[::-1]  # every fourth image in portrait
        rgb = _background(rng, h, w)
        img = Image.fromarray(rgb)
        label = Image.new("L", (w, h), 0)
        draw, ldraw = ImageDraw.Draw(img), ImageDraw.Draw(label)
        objects = []
        for _ in range(int(rng.integers(1, 3))):
            cls = int(rng.integers(0, len(VOC12_CLASSES)))
            box = _random_box(rng, h, w)
            poly = _polygon(rng, box)
            draw.polygon(poly, fill=_colour(cls))
            ldraw.polygon(poly, fill=cls + 1)
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            objects.append((VOC12_CLASSES[cls], (min(xs) + 1, min(ys) + 1, max(xs) + 1, max(ys) + 1)))
        rgb = np.asarray(img)
        seg = np.asarray(label).copy()
        _jpeg(voc / "JPEGImages" / f"{iid}.jpg", rgb)
        _write_xml(voc / "Annotations" / f"{iid}.xml", iid, w, h, objects)
        if iid in voc_gt_ids:  # VOC's masks carry a 255 band along object boundaries
            edges = np.zeros_like(seg, bool)
            edges[:, 1:] |= seg[:, 1:] != seg[:, :-1]
            edges[1:, :] |= seg[1:, :] != seg[:-1, :]
            voc_seg = seg.copy()
            voc_seg[edges] = io.IGNORE
            voc_masks[iid] = voc_seg
            io.save_mask(voc / "SegmentationClass" / f"{iid}.png", voc_seg)
        if iid in sbd_ids:
            sbd_masks[iid] = seg
            _write_sbd_mat(sbd / "cls" / f"{iid}.mat", seg)
            _jpeg(sbd / "img" / f"{iid}.jpg", rgb)
    segsets = voc / "ImageSets" / "Segmentation"
    _lines(segsets / "train.txt", plan["voc_train"])
    _lines(segsets / "val.txt", plan["voc_val"])
    _lines(segsets / "trainval.txt", plan["voc_train"] + plan["voc_val"])
    _lines(voc / "ImageSets" / "Main" / "trainval.txt", ids)
    (sbd / "inst").mkdir(parents=True, exist_ok=True)
    _lines(sbd / "train.txt", plan["sbd_train"])
    _lines(sbd / "val.txt", plan["sbd_val"])
    if aug_masks:  # the DeepLab zip: SBD masks with VOC's own over them
        aug = data / "SegmentationClassAug"
        for iid in sorted(sbd_ids | voc_gt_ids):
            io.save_mask(aug / f"{iid}.png", voc_masks.get(iid, sbd_masks.get(iid)), palette=False)
    return {"ids": ids, "splits": plan, "sbd_masks": sbd_masks, "voc_masks": voc_masks}


def write_voc_test(data: Path, n: int = 6, seed: int = 1, size=(160, 120)) -> list[str]:
    """VOC2012test.tar's tree under ``data``/VOC2012test: VOCdevkit/VOC2012/JPEGImages and
    ImageSets/Segmentation/test.txt (the test images have no masks). Returns the ids."""
    voc = Path(data) / "VOC2012test" / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(seed)
    ids = [f"2008_{900000 + i:06d}" for i in range(n)]
    for k, iid in enumerate(ids):
        w, h = size if k % 3 else size[::-1]
        img = Image.fromarray(_background(rng, h, w))
        draw = ImageDraw.Draw(img)
        cls = int(rng.integers(0, len(VOC12_CLASSES)))
        draw.polygon(_polygon(rng, _random_box(rng, h, w)), fill=_colour(cls))
        _jpeg(voc / "JPEGImages" / f"{iid}.jpg", np.asarray(img))
    _lines(voc / "ImageSets" / "Segmentation" / "test.txt", ids)
    return ids


def _lines(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def _write_xml(path: Path, iid: str, w: int, h: int, objects) -> None:
    objs = "".join(
        f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
        f"\t\t<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n\t\t<bndbox>\n"
        f"\t\t\t<xmin>{b[0]}</xmin>\n\t\t\t<ymin>{b[1]}</ymin>\n\t\t\t<xmax>{b[2]}</xmax>\n"
        f"\t\t\t<ymax>{b[3]}</ymax>\n\t\t</bndbox>\n\t</object>\n" for name, b in objects)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation>\n\t<folder>VOC2012</folder>\n\t<filename>{iid}.jpg</filename>\n"
        f"\t<source>\n\t\t<database>The VOC2008 Database</database>\n\t</source>\n"
        f"\t<size>\n\t\t<width>{w}</width>\n\t\t<height>{h}</height>\n\t\t<depth>3</depth>\n"
        f"\t</size>\n\t<segmented>1</segmented>\n{objs}</annotation>\n")


def _write_sbd_mat(path: Path, seg: np.ndarray) -> None:
    """SBD's cls/<id>.mat: struct GTcls with Boundaries (20x1 cell of sparse edge maps),
    Segmentation (H x W uint8, 0..20) and CategoriesPresent (the classes, 1-based)."""
    import scipy.sparse
    from scipy.io import savemat

    boundaries = np.empty((len(VOC12_CLASSES), 1), dtype=object)
    for k in range(len(VOC12_CLASSES)):
        m = seg == k + 1
        edge = np.zeros_like(m)
        edge[:, 1:] |= m[:, 1:] != m[:, :-1]
        edge[1:, :] |= m[1:, :] != m[:-1, :]
        boundaries[k, 0] = scipy.sparse.csc_matrix(edge & m)
    present = np.array([v for v in np.unique(seg) if v > 0], np.uint8).reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"GTcls": {"Boundaries": boundaries, "Segmentation": seg.astype(np.uint8),
                             "CategoriesPresent": present}}, do_compression=True)


# ------------------------------------------------------------------------------ COCO14
def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a binary mask (column-major runs, starting with zeros)."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    counts, prev, run = [], 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def write_coco(data: Path, n_train: int = 12, n_val: int = 6, seed: int = 0,
               size=(160, 120)) -> dict:
    """Write COCO2014's tree under ``data``/COCO2014 (module docstring).

    In each split: polygons for most objects, one object per split as compressed RLE, a
    crowd annotation (uncompressed RLE, ``iscrowd: 1``) on one image, overlapping objects on
    another; the train split's last image has no annotation. Returns {"images": {stem: {
    "split", "objects": [(category_id, kind, iscrowd)]}}, "empty": [stems]}.
    """
    from pycocotools import mask as mask_utils

    root = Path(data) / "COCO2014"
    rng = np.random.default_rng(seed)
    out = {"images": {}, "empty": []}
    ann_id = 1000
    for part, count, first_id in (("train2014", n_train, 9), ("val2014", n_val, 42)):
        images, anns = [], []
        for k in range(count):
            image_id = first_id + 7 * k
            stem = f"COCO_{part}_{image_id:012d}"
            w, h = size if k % 3 else size[::-1]
            rgb = _background(rng, h, w)
            img = Image.fromarray(rgb)
            draw = ImageDraw.Draw(img)
            images.append({"license": 1, "file_name": f"{stem}.jpg", "height": h, "width": w,
                           "id": image_id, "date_captured": "2013-11-14 16:28:13"})
            objects = []
            empty = part == "train2014" and k == count - 1
            n_obj = 0 if empty else (3 if k == 1 else int(rng.integers(1, 3)))
            for j in range(n_obj):
                cat = COCO_CATEGORIES[int(rng.integers(0, len(COCO_CATEGORIES)))][0]
                box = _random_box(rng, h, w)
                if k == 1 and j > 0:  # overlapping objects
                    box = (box[0] // 2, box[1] // 2, box[0] // 2 + w // 2, box[1] // 2 + h // 2)
                poly = _polygon(rng, box)
                draw.polygon(poly, fill=_colour(cat))
                crowd = k == 2 and j == 0
                kind = "crowd-rle" if crowd else ("rle" if k == 3 and j == 0 else "polygon")
                if kind == "polygon":
                    segm = [[float(v) for p in poly for v in p]]
                else:
                    m = Image.new("L", (w, h), 0)
                    ImageDraw.Draw(m).polygon(poly, fill=1)
                    m = np.asarray(m)
                    if kind == "rle":
                        segm = mask_utils.encode(np.asfortranarray(m))
                        segm["counts"] = segm["counts"].decode("ascii")
                    else:
                        segm = rle_encode(m)
                ann_id += int(rng.integers(1, 50))
                xs, ys = [p[0] for p in poly], [p[1] for p in poly]
                anns.append({"segmentation": segm, "area": float((max(xs) - min(xs)) * (max(ys) - min(ys)) / 2),
                             "iscrowd": int(crowd), "image_id": image_id,
                             "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                             "category_id": cat, "id": ann_id})
                objects.append((cat, kind, int(crowd)))
            _jpeg(root / part / f"{stem}.jpg", np.asarray(img))
            out["images"][stem] = {"split": part, "objects": objects}
            if empty:
                out["empty"].append(stem)
        rng.shuffle(anns)  # the official files are not sorted by annotation id either
        instances = {
            "info": {"description": "COCO 2014 Dataset (stand-in)", "version": "1.0", "year": 2014},
            "images": images, "licenses": [{"id": 1, "name": "stand-in", "url": ""}],
            "annotations": anns,
            "categories": [{"supercategory": s, "id": i, "name": nm} for i, nm, s in COCO_CATEGORIES],
        }
        path = root / "annotations" / f"instances_{part}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(instances))
    return out
