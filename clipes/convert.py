"""From the official downloads to the layout the stages read.

VOC12 (:func:`convert_voc12`): the VOC2012 trainval tar (``VOCdevkit/VOC2012``) plus the
SBD masks, either SBD's own release (``benchmark_RELEASE/dataset/cls/*.mat`` with its
``train.txt`` / ``val.txt``) or the ready ``SegmentationClassAug/`` PNGs. Writes

    OUT/SegmentationClassAug/<id>.png    palette PNG: 0 background, 1..20, 255 = ignore
    OUT/ImageSets/Segmentation/{train_aug,train,val,trainval}.txt
    OUT/JPEGImages, OUT/Annotations      links to the VOC folders (no copy)
    OUT/convert.json                     what came from where, how many ids

``train_aug`` is the standard union: SBD train + SBD val + VOC train, minus VOC val (10,582
ids with the official files). Masks: VOC's own ``SegmentationClass`` PNG where VOC has one
(its 255 boundary band kept), else SBD's ``GTcls.Segmentation`` (values 0..20). From a
``SegmentationClassAug/`` folder instead, the masks are copied and ``train_aug`` is every
id with a mask minus VOC val.

COCO14 (:func:`convert_coco14`): ``train2014/``, ``val2014/`` and
``annotations/instances_{train,val}2014.json``. Writes

    OUT/SegmentationClass/<id>.png   8-bit grey: 0 background, k + 1 = class k (80-class order)
    OUT/train.txt, OUT/val.txt       '<id> <label> <label> ...' (0-based, ascending, once each)
    OUT/JPEGImages/{train2014,val2014}  links to the image folders
    OUT/convert.json

Category ids map to the reference's 80-class order (ascending COCO id). Overlaps: the
annotations of an image are painted in ascending annotation id (not in the order of the
JSON, which the official files do not keep sorted), each over the ones before it, so where
instances overlap the annotation with the larger id wins; crowd
regions (``iscrowd: 1``) are painted with their class (``crowd="class"``, the common WSSS
conversion) or as 255 (``crowd="ignore"``). An image without any annotation gets no mask
and no split line: it is listed in ``convert.json`` under ``no_annotation``.

Every file is written atomically, and files already written by the same settings are
kept, so an interrupted conversion resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from . import io
from .datasets import DatasetError, image_size_hw, read_voc_xml
from .text import COCO14_CLASSES, VOC12_CLASSES

VOC_TAR = "VOCtrainval_11-May-2012.tar (unpack it into data/: it holds VOCdevkit/VOC2012)"
SBD_TGZ = ("benchmark.tgz of the Semantic Boundaries Dataset (unpack it into data/: it holds "
           "benchmark_RELEASE/dataset)")
AUG_ZIP = "SegmentationClassAug.zip (unpack it into data/: it holds SegmentationClassAug/)"
COCO_ZIPS = ("train2014.zip, val2014.zip and annotations_trainval2014.zip from the COCO site, "
             "unpacked into one folder (train2014/, val2014/, annotations/)")
SETTINGS = ".convert-settings.json"


# ------------------------------------------------------------------------ shared helpers
def _need_dir(path: Path, what: str, fix: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"missing folder {path} ({what}): download {fix}")


def _files(folder: Path, suffix: str) -> list[Path]:
    """The folder's files with the suffix, without hidden ones (macOS's ._* and .DS_Store
    files that archives made on a Mac carry)."""
    return [p for p in folder.glob(f"*{suffix}") if not p.name.startswith(".")]


def _ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    return [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip()]


def _link(target: Path, link: Path) -> None:
    """A symbolic link ``link`` -> absolute ``target``, replaced atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.resolve(), tmp, target_is_directory=True)
    os.replace(tmp, link)


def _prepare_out(out: Path, settings: dict) -> None:
    """Keep earlier output only if it was written with the same settings."""
    stamp = out / SETTINGS
    if stamp.is_file() and json.loads(stamp.read_text()) != settings:
        for sub in ("SegmentationClassAug", "SegmentationClass"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(stamp, settings)


def _write_ids(path: Path, ids) -> None:
    io.write_text(path, "".join(f"{i}\n" for i in ids))


# ------------------------------------------------------------------------------- VOC12
def voc_objects(xml: Path) -> list[str]:
    """Object class names of a VOC XML; an unparsable or object-less file is an error."""
    root = read_voc_xml(xml, fix=f"; re-extract {VOC_TAR}")
    names = [(o.findtext("name") or "").strip() for o in root.iter("object")]
    if not names:
        raise DatasetError(f"{xml} has no <object>: every official VOC2012 annotation has one, "
                           f"so the file is damaged or not from the VOC tar; re-extract "
                           f"{VOC_TAR}, or remove the id from the split lists")
    return names


def read_sbd_mat(path: Path) -> np.ndarray:
    """The class mask (H, W) uint8 of an SBD ``cls/<id>.mat`` (``GTcls.Segmentation``)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path, squeeze_me=True, struct_as_record=False)
        seg = np.asarray(mat["GTcls"].Segmentation)
    except FileNotFoundError:
        raise DatasetError(f"SBD mask not found: {path}; re-extract {SBD_TGZ}") from None
    except (KeyError, AttributeError, ValueError, TypeError, OSError) as e:
        raise DatasetError(f"{path}: not an SBD class mask (expected a struct GTcls with a "
                           f"field Segmentation; {type(e).__name__}: {e}); re-extract "
                           f"{SBD_TGZ}") from None
    if seg.ndim != 2:
        raise DatasetError(f"{path}: GTcls.Segmentation has shape {seg.shape}, expected a 2-D "
                           f"(height, width) mask; re-extract {SBD_TGZ}")
    values = set(np.unique(seg).tolist()) - {io.IGNORE}
    if values and (min(values) < 0 or max(values) > len(VOC12_CLASSES)):
        raise DatasetError(f"{path}: mask values {sorted(values)} outside 0..20 (and 255)")
    return seg.astype(np.uint8)


def _voc_mask_job(job) -> str | None:
    """Write one mask; returns an error message instead of raising (worker processes)."""
    iid, src, kind, image, dst = job
    dst = Path(dst)
    if dst.is_file():
        return None
    try:
        if kind == "mat":
            mask = read_sbd_mat(Path(src))
        else:
            mask = io.load_mask(src)
        hw = image_size_hw(Path(image))
        if mask.shape != hw:
            raise DatasetError(f"{src}: mask is {mask.shape[1]}x{mask.shape[0]} (width x height) "
                               f"but {image} is {hw[1]}x{hw[0]}; the file does not belong to "
                               f"image {iid}")
        if kind == "copy":
            with io.atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
        else:
            io.save_mask(dst, mask)
    except (DatasetError, ValueError) as e:
        return str(e)
    return None


def convert_voc12(voc: Path, out: Path, sbd: Path | None = None,
                  aug_masks: Path | None = None, workers: int = 1) -> dict:
    """The VOC12 layout under ``out`` from the official downloads (module docstring)."""
    voc, out = Path(voc), Path(out)
    for sub, what in (("JPEGImages", "images"), ("Annotations", "XML labels"),
                      ("ImageSets/Segmentation", "split lists"),
                      ("SegmentationClass", "VOC ground truth")):
        _need_dir(voc / sub, f"VOC2012 {what}", VOC_TAR)
    sbd = Path(sbd) if sbd and Path(sbd).is_dir() else None
    aug_masks = Path(aug_masks) if aug_masks and Path(aug_masks).is_dir() else None
    if sbd is None and aug_masks is None:
        raise DatasetError(f"no SBD masks found: download {SBD_TGZ} (dataset.sbd) or {AUG_ZIP} "
                           f"(dataset.aug_masks)")
    source = "SegmentationClassAug" if aug_masks else "SBD"
    voc_train = _ids(voc / "ImageSets/Segmentation/train.txt")
    voc_val = _ids(voc / "ImageSets/Segmentation/val.txt")
    val_set = set(voc_val)
    voc_gt = {p.stem for p in _files(voc / "SegmentationClass", ".png")}
    summary: dict = {"kind": "voc12", "voc": str(voc), "mask_source": source,
                     "voc_train": len(voc_train), "voc_val": len(voc_val)}
    if aug_masks is not None:
        aug_ids = sorted(p.stem for p in _files(aug_masks, ".png"))
        if not aug_ids:
            raise DatasetError(f"{aug_masks} holds no PNG masks; re-extract {AUG_ZIP}")
        summary["aug_masks"] = str(aug_masks)
        train_aug = [i for i in aug_ids if i not in val_set]
        summary["train_aug_from"] = {"aug_mask_ids": len(aug_ids),
                                     "minus_voc_val": len(aug_ids) - len(train_aug)}
        mask_src = {i: (aug_masks / f"{i}.png", "copy") for i in aug_ids}
    else:
        root = sbd / "dataset"
        _need_dir(root / "cls", "SBD class masks", SBD_TGZ)
        sbd_train, sbd_val = _ids(root / "train.txt"), _ids(root / "val.txt")
        summary["sbd"] = str(sbd)
        union = list(dict.fromkeys(sbd_train + sbd_val + voc_train))
        train_aug = sorted(i for i in union if i not in val_set)
        st, sv = set(sbd_train), set(sbd_val)
        summary["train_aug_from"] = {
            "sbd_train": len(sbd_train), "sbd_val": len(sbd_val), "voc_train": len(voc_train),
            "new_from_sbd_train": len(st - val_set),
            "new_from_sbd_val": len(sv - st - val_set),
            "new_from_voc_train": len(set(voc_train) - st - sv - val_set),
            "minus_voc_val": len(set(union) & val_set)}
        mask_src = {i: (root / "cls" / f"{i}.mat", "mat") for i in sbd_train + sbd_val}
    # VOC's own masks (with their 255 boundary band) win over SBD's for the ids VOC has;
    # a SegmentationClassAug folder is used as it is, VOC filling only what it lacks
    for i in sorted(voc_gt):
        if source == "SBD" or i not in mask_src:
            mask_src[i] = (voc / "SegmentationClass" / f"{i}.png", "png")
    missing_val = [i for i in voc_val if i not in mask_src]
    if missing_val:
        raise DatasetError(f"no ground truth for VOC val image {missing_val[0]} (and "
                           f"{len(missing_val) - 1} more): expected "
                           f"{voc / 'SegmentationClass' / (missing_val[0] + '.png')}; "
                           f"re-extract {VOC_TAR}")
    summary["train_aug"] = len(train_aug)
    # every image needs its JPEG and an XML with objects (the labels)
    needed = list(dict.fromkeys(train_aug + voc_train + voc_val))
    for k, iid in enumerate(needed):
        if k % 500 == 499:
            io.release_memory()
        if not (voc / "JPEGImages" / f"{iid}.jpg").is_file():
            raise DatasetError(f"image not found: {voc / 'JPEGImages' / (iid + '.jpg')} "
                               f"(listed by the SBD/VOC splits); re-extract {VOC_TAR}")
        voc_objects(voc / "Annotations" / f"{iid}.xml")
    no_mask = [i for i in needed if i not in mask_src]
    if no_mask:
        raise DatasetError(f"no mask for {no_mask[0]} (and {len(no_mask) - 1} more) in "
                           f"{aug_masks or sbd}: re-extract the SBD masks")
    _prepare_out(out, {"kind": "voc12", "source": source,
                       "from": str(aug_masks or sbd)})
    masks = out / "SegmentationClassAug"
    masks.mkdir(exist_ok=True)
    jobs = [(i, str(mask_src[i][0]), mask_src[i][1], str(voc / "JPEGImages" / f"{i}.jpg"),
             str(masks / f"{i}.png")) for i in needed]
    _run_jobs(_voc_mask_job, jobs, workers)
    splits = out / "ImageSets" / "Segmentation"
    _write_ids(splits / "train_aug.txt", train_aug)
    _write_ids(splits / "train.txt", voc_train)
    _write_ids(splits / "val.txt", voc_val)
    _write_ids(splits / "trainval.txt", voc_train + voc_val)
    _link(voc / "JPEGImages", out / "JPEGImages")
    _link(voc / "Annotations", out / "Annotations")
    summary["masks_written"] = len(jobs)
    io.write_json(out / "convert.json", summary)
    return summary


_CALLS = [0]  # jobs run by this process (each worker process has its own)


class _Trimmed:
    """A job function that returns freed memory to the system every `every` jobs run in
    its process, so a long conversion keeps a flat resident size
    (:func:`clipes.io.release_memory`)."""

    def __init__(self, fn, every: int = 100):
        self.fn, self.every = fn, every

    def __call__(self, job):
        _CALLS[0] += 1
        if _CALLS[0] % self.every == 0:
            io.release_memory()
        return self.fn(job)


def _run_jobs(fn, jobs: list, workers: int) -> None:
    """Run ``fn`` over jobs (in worker processes when workers > 1); first error raised."""
    fn = _Trimmed(fn)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            errors = [e for e in pool.map(fn, jobs, chunksize=min(64, max(1, len(jobs) // (8 * workers))))
                      if e]
    else:
        errors = [e for e in map(fn, jobs) if e]
    if errors:
        more = f" ({len(errors) - 1} more files fail the same way)" if len(errors) > 1 else ""
        raise DatasetError(errors[0] + more)


# ------------------------------------------------------------------------------ COCO14
COCO_SPLITS = ("train2014", "val2014")


def load_instances(path: Path) -> dict:
    """An instances JSON, checked for the keys the conversion uses."""
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}; download {COCO_ZIPS}")
    try:
        with open(path) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot parse {path}: {e}. The file is truncated or damaged: "
                           f"download annotations_trainval2014.zip again") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetError(f"{path} has no '{missing[0]}' list: not a COCO instances file "
                           f"(expected instances_train2014.json / instances_val2014.json)")
    return data


def coco_category_index(categories: list[dict], path: Path) -> dict[int, int]:
    """COCO category id -> 0-based index in the reference's 80-class order."""
    ids = sorted(int(c["id"]) for c in categories)
    if len(ids) != len(COCO14_CLASSES):
        raise DatasetError(f"{path} has {len(ids)} categories, expected the "
                           f"{len(COCO14_CLASSES)} of COCO 2014 instances")
    return {cid: k for k, cid in enumerate(ids)}


def ann_mask(segm, h: int, w: int) -> np.ndarray:
    """One annotation's binary mask (H, W) uint8: polygons, RLE or uncompressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(segm, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    elif isinstance(segm.get("counts"), list):  # uncompressed RLE (crowd)
        rle = mask_utils.frPyObjects(segm, h, w)
    else:
        rle = segm
    return mask_utils.decode(rle)


def _coco_mask_job(job) -> str | None:
    stem, image, h, w, anns, crowd, dst = job
    dst = Path(dst)
    if dst.is_file():
        return None
    try:
        hw = image_size_hw(Path(image))
        if hw != (h, w):
            return (f"{image} is {hw[1]}x{hw[0]} but the instances JSON says {w}x{h}: the "
                    f"image does not belong to this annotation file; download it again")
        label = np.zeros((h, w), np.uint8)
        for value, is_crowd, segm in anns:
            m = ann_mask(segm, h, w).astype(bool)
            label[m] = io.IGNORE if (is_crowd and crowd == "ignore") else value
        _save_grey(dst, label)
    except DatasetError as e:
        return str(e)
    except (ValueError, TypeError, KeyError) as e:
        return f"{stem}: cannot rasterise its annotations ({type(e).__name__}: {e})"
    return None


def _save_grey(path: Path, label: np.ndarray) -> None:
    from PIL import Image

    with io.atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(label, mode="L").save(tmp, format="PNG")


def convert_coco14(root: Path, out: Path, crowd: str = "class", workers: int = 1) -> dict:
    """The COCO14 layout under ``out`` from the official downloads (module docstring)."""
    root, out = Path(root), Path(out)
    if crowd not in ("class", "ignore"):
        raise ValueError(f"crowd: 'class' or 'ignore', not {crowd!r}")
    for part in COCO_SPLITS:
        _need_dir(root / part, f"COCO {part} images", COCO_ZIPS)
    _need_dir(root / "annotations", "COCO instances JSONs", COCO_ZIPS)
    _prepare_out(out, {"kind": "coco14", "crowd": crowd})
    summary: dict = {"kind": "coco14", "root": str(root), "crowd": crowd,
                     "overlaps": "painted in ascending annotation id (the larger id wins)",
                     "splits": {}}
    masks = out / "SegmentationClass"
    masks.mkdir(exist_ok=True)
    for part in COCO_SPLITS:
        path = root / "annotations" / f"instances_{part}.json"
        data = load_instances(path)
        index = coco_category_index(data["categories"], path)
        by_image: dict[int, list] = {}
        for ann in sorted(data["annotations"], key=lambda a: a["id"]):
            if ann["category_id"] not in index:
                raise DatasetError(f"{path}: annotation {ann['id']} has category "
                                   f"{ann['category_id']}, not one of the file's categories")
            by_image.setdefault(ann["image_id"], []).append(
                (index[ann["category_id"]] + 1, bool(ann.get("iscrowd", 0)), ann["segmentation"]))
        images = sorted(data["images"], key=lambda im: im["file_name"])
        del data
        lines, jobs, empty = [], [], []
        for im in images:
            stem = Path(im["file_name"]).stem
            image = root / part / im["file_name"]
            if not image.is_file():
                raise DatasetError(f"image not found: {image} (listed in {path}); download "
                                   f"{part}.zip again")
            anns = by_image.get(im["id"], [])
            if not anns:
                empty.append(stem)
                continue
            labels = sorted({v - 1 for v, _, _ in anns})
            lines.append(" ".join([stem, *map(str, labels)]))
            jobs.append((stem, str(image), int(im["height"]), int(im["width"]), anns, crowd,
                         str(masks / f"{stem}.png")))
        _run_jobs(_coco_mask_job, jobs, workers)
        split = part[:-4]  # train / val
        io.write_text(out / f"{split}.txt", "".join(f"{ln}\n" for ln in lines))
        _link(root / part, out / "JPEGImages" / part)
        summary["splits"][split] = {"annotations": str(path), "images": len(images),
                                    "with_labels": len(lines), "no_annotation": empty}
    io.write_json(out / "convert.json", summary)
    return summary
