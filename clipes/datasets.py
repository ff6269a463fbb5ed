"""Datasets: VOC12 (with SegmentationClassAug), COCO14, and a user's own images.

Every dataset yields :class:`Sample` records: the image path, the ordered class indices
(``keys``, 0-based into the dataset's class list, in the reference order), the original
size the reference uses, and the ground-truth mask path where one exists.

Bad input fails with a :class:`DatasetError` naming the file and the fix; an image with
an empty label list is not an error but a recorded skip (see :func:`split_skips`).
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from . import text
from .errors import DatasetError
from .manifest import IMAGE_EXTS, check_id, inside, coco_file as _coco_file, find_image as _find_image, read_split, read_split_lines  # noqa: F401

VOC12_DOWNLOAD = (
    "Download VOCtrainval_11-May-2012.tar from the PASCAL VOC 2012 site and "
    "SegmentationClassAug.zip (the SBD-augmented masks used by WSSS papers), and lay them "
    "out as ROOT/JPEGImages, ROOT/Annotations, ROOT/SegmentationClassAug, "
    "ROOT/ImageSets/Segmentation (see README, 'Reproducing VOC12')")
COCO14_DOWNLOAD = (
    "Download train2014.zip and val2014.zip from cocodataset.org and the semantic masks "
    "(0 = background, 1..80), and lay them out as ROOT/JPEGImages and "
    "ROOT/SegmentationClass (see README, 'Reproducing COCO14')")


@dataclass(frozen=True)
class Sample:
    id: str
    image: Path
    keys: tuple[int, ...]  # class indices (0-based, no background), reference order
    orig_hw: tuple[int, int]  # size used for the outputs (H, W)
    gt: Path | None = None  # label PNG: 0 = background, k + 1 = class k, 255 = ignore
    row: int = -1  # position among the split's rows, skipped ones included (shards)


@dataclass
class Dataset:
    name: str  # "voc12" | "coco14" | "custom" | "synthetic"
    root: Path
    classes: list[text.ClassSpec]
    background: tuple[str, ...]
    samples: list[Sample]
    skipped: list[dict]  # images left out, with the reason
    # background words left out because they name a class (text.split_background)
    background_removed: list[str] = field(default_factory=list)

    @property
    def n_classes(self) -> int:
        """Label values including background (0)."""
        return len(self.classes) + 1

    @property
    def class_names(self) -> list[str]:
        return ["background"] + [c.name for c in self.classes]


HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def to_8bit(im: Image.Image, path) -> Image.Image:
    """A 16-bit (or 32-bit integer) grey image scaled to 8 bits ('L'); other modes as they are.

    PIL's own conversion clips such values at 255, so a 16-bit photo would reach the model
    nearly white. Values are scaled by 255/65535 (or by the image's maximum for 32-bit
    integers above 65535); floating-point images are refused (no known range)."""
    if im.mode == "F":
        raise DatasetError(f"{path}: a floating-point image (mode F) has no known value range; "
                           f"save it as an 8- or 16-bit PNG or a JPEG")
    if im.mode not in HIGH_DEPTH_MODES:
        return im
    a = np.asarray(im, dtype=np.float64)
    top = 65535.0 if a.max(initial=0) <= 65535 else float(a.max())
    return Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")


# EXIF orientation: 'ignore' (the reference: pixels as stored, as PIL and the authors'
# code read them) or 'apply' (rotated as viewers show them). One policy per process, set
# from the command line (cli.dataset_from_args, --exif).
EXIF_POLICIES = ("ignore", "apply")
_EXIF = {"policy": "ignore"}
ORIENTATION_TAG = 0x0112
SWAPS_AXES = (5, 6, 7, 8)  # orientations that turn the image by 90 degrees


def set_exif_policy(policy: str) -> None:
    if policy not in EXIF_POLICIES:
        raise DatasetError(f"EXIF policy {policy!r}: expected one of {EXIF_POLICIES}")
    _EXIF["policy"] = policy


def exif_orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored) of an opened image."""
    try:
        return int(im.getexif().get(ORIENTATION_TAG, 1) or 1)
    except Exception:  # a damaged EXIF block is no orientation
        return 1


def open_image(path: Path) -> Image.Image:
    """Open and fully decode an image; unreadable or truncated files raise DatasetError.
    High bit-depth grey images are scaled to 8 bits (:func:`to_8bit`); with the 'apply'
    EXIF policy the image is turned the way its orientation tag says."""
    try:
        im = Image.open(path)
        im.load()
        if _EXIF["policy"] == "apply" and exif_orientation(im) != 1:
            im = ImageOps.exif_transpose(im)
        return to_8bit(im, path)
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"cannot read image {path}: {e}. The file is corrupt or "
                           f"truncated: download it again or remove its id from the split") from e


def image_size_hw(path: Path) -> tuple[int, int]:
    """(H, W) from the image header, without decoding (turned by the EXIF policy)."""
    try:
        with Image.open(path) as im:
            if _EXIF["policy"] == "apply" and exif_orientation(im) in SWAPS_AXES:
                return im.width, im.height
            return im.height, im.width
    except FileNotFoundError:
        raise DatasetError(f"image not found: {path}") from None
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"cannot read image {path}: {e}") from e


def _require_dir(path: Path, what: str, hint: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"missing folder {path} ({what}). {hint}")


def _ground_truth(path: Path, required: bool) -> Path | None:
    """The mask path if the file exists; a missing one is an error only when required."""
    if path.is_file():
        return path
    if required:
        raise DatasetError(f"ground-truth mask not found: {path}")
    return None


# ------------------------------------------------------------------------------- VOC12
def read_voc_xml(xml_path: Path, fix: str = "") -> ET.Element:
    """The root of a VOC XML; a missing or unparsable file is a DatasetError (``fix`` is
    appended to the message)."""
    try:
        return ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"annotation not found: {xml_path}{fix}") from None
    except ET.ParseError as e:
        raise DatasetError(f"cannot parse VOC annotation {xml_path}: {e}{fix}") from e


def voc_xml_labels(xml_path: Path, class_index: dict[str, int]):
    """(keys in document order without repeats, (H, W) from <size>) of a VOC XML."""
    root = read_voc_xml(xml_path)
    keys: list[int] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_index:
            raise DatasetError(f"{xml_path}: unknown class name {name!r}; expected one of "
                               f"{sorted(class_index)}")
        if class_index[name] not in keys:
            keys.append(class_index[name])
    size = root.find("size")
    try:
        hw = (int(size.findtext("height")), int(size.findtext("width")))
    except (AttributeError, TypeError, ValueError):
        raise DatasetError(f"{xml_path}: missing or invalid <size><height>/<width>") from None
    return keys, hw


def load_voc12(root, split, check_sizes: bool = True, need_gt: bool = False,
               reference: bool = True) -> Dataset:
    root = Path(root)
    for sub, what in (("JPEGImages", "images"), ("Annotations", "XML labels")):
        _require_dir(root / sub, what, VOC12_DOWNLOAD)
    if need_gt:
        _require_dir(root / "SegmentationClassAug", "ground-truth masks", VOC12_DOWNLOAD)
    classes = text.dataset_classes("voc12", reference)
    index = {c.name: i for i, c in enumerate(classes)}
    samples, skipped = [], []
    for r, (line, row) in enumerate(read_split_lines(split)):
        iid = row[0]
        xml = root / "Annotations" / f"{iid}.xml"
        img = root / "JPEGImages" / f"{iid}.jpg"
        if not img.is_file():
            raise DatasetError(_unknown_id(split, line, iid, img))
        if not xml.is_file():
            raise DatasetError(f"{split}:{line}: {iid!r} has no annotation {xml}; re-extract "
                               f"the VOC tar or remove the id from the split file")
        keys, hw = voc_xml_labels(xml, index)
        if check_sizes:
            real = image_size_hw(img)
            if real != hw:
                raise DatasetError(f"{xml}: <size> says {hw[1]}x{hw[0]} but {img} is "
                                   f"{real[1]}x{real[0]}; fix the annotation or the image")
        gt = _ground_truth(root / "SegmentationClassAug" / f"{iid}.png", need_gt)
        if not keys:
            skipped.append({"id": iid, "reason": f"no object in {xml}"})
            continue
        samples.append(Sample(iid, img, tuple(keys), hw, gt, r))
    return Dataset("voc12", root, classes, text.VOC12_BACKGROUND, samples, skipped)


# ------------------------------------------------------------------------------ COCO14
def load_coco14(root, split, need_gt: bool = False, reference: bool = True) -> Dataset:
    root = Path(root)
    _require_dir(root / "JPEGImages", "images", COCO14_DOWNLOAD)
    if need_gt:
        _require_dir(root / "SegmentationClass", "ground-truth masks", COCO14_DOWNLOAD)
    classes = text.dataset_classes("coco14", reference)
    samples, skipped = [], []
    for r, (line, row) in enumerate(read_split_lines(split)):
        iid = row[0]
        try:
            labels = [int(v) for v in row[1:]]
        except ValueError:
            raise DatasetError(f"{split}: line for {iid} has a non-integer label: "
                               f"{' '.join(row[1:])}") from None
        bad = [v for v in labels if not 0 <= v < len(classes)]
        if bad:
            raise DatasetError(f"{split}: {iid} has labels {bad} outside 0..{len(classes) - 1}")
        if not reference:
            labels = list(dict.fromkeys(labels))  # the reference keeps repeats as written
        img = _coco_file(root, "JPEGImages", iid, ".jpg")
        if not img.is_file():
            raise DatasetError(_unknown_id(split, line, iid, img))
        gt = _ground_truth(_coco_file(root, "SegmentationClass", iid, ".png"), need_gt)
        if not labels:
            skipped.append({"id": iid, "reason": f"no label on its line in {split}"})
            continue
        samples.append(Sample(iid, img, tuple(labels), image_size_hw(img), gt, r))
    return Dataset("coco14", root, classes, text.COCO14_BACKGROUND, samples, skipped)


# ------------------------------------------------------------------------------ custom
def load_custom(root, classes: list, labels_csv, split=None, images_dir="images",
                masks_dir: str | None = "masks", background: list[str] | None = None) -> Dataset:
    """A user's dataset: ROOT/images/<id>.<ext>, a class list (names, or {name, synonyms}),
    a CSV with columns ``image,labels`` (labels separated by ';'), optional
    ROOT/masks/<id>.png ground truth. ``split``: a file of ids to keep (default: all rows).
    """
    root = Path(root)
    _require_dir(root / images_dir, "images", "Put your images there, one file per image.")
    specs = text.class_specs_from_config(classes)
    index = {c.name: i for i, c in enumerate(specs)}
    labels_csv = Path(labels_csv)
    if not labels_csv.is_file():
        raise DatasetError(f"label table not found: {labels_csv} (a CSV with columns "
                           f"'image,labels', labels separated by ';')")
    keep = {r[0]: n for n, r in read_split_lines(split)} if split else None
    samples, skipped = [], []
    seen: dict[str, int] = {}
    n_rows = 0
    images = root / images_dir
    try:
        table = labels_csv.read_bytes().decode("utf-8-sig")  # a BOM (Excel) is dropped
    except UnicodeDecodeError as e:
        line = labels_csv.read_bytes()[:e.start].count(b"\n") + 1
        raise DatasetError(f"{labels_csv}:{line}: not UTF-8 text (byte {e.start}, a "
                           f"{'Windows/Excel ' if e.object[e.start] >= 0x80 else ''}encoding?); "
                           f"save it as UTF-8 (Excel: 'CSV UTF-8')") from None
    import io

    with io.StringIO(table, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"image", "labels"} <= set(reader.fieldnames):
            raise DatasetError(f"{labels_csv}: needs the columns 'image' and 'labels', found "
                               f"{reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            name = (row["image"] or "").strip()
            where = f"{labels_csv}:{line}"
            if not inside(name):
                raise DatasetError(f"{where}: image {name!r} is not a file inside {images}; give "
                                   f"its name in that folder (no absolute path, no '..')")
            iid = Path(name).stem
            check_id(iid, where)
            if iid in seen:
                raise DatasetError(f"{labels_csv}:{line}: image {iid!r} is listed again (first on "
                                   f"line {seen[iid]}); give each image one row, its labels "
                                   f"separated by ';'")
            seen[iid] = line
            if keep is not None and iid not in keep:
                continue
            r = n_rows
            n_rows += 1
            names = [n.strip() for n in (row["labels"] or "").split(";") if n.strip()]
            unknown = [n for n in names if n not in index]
            if unknown:
                raise DatasetError(f"{labels_csv}:{line}: unknown class names {unknown} for "
                                   f"{iid}; the class list has {sorted(index)}")
            img = _find_image(images, name)
            keys = list(dict.fromkeys(index[n] for n in names))
            gt = root / masks_dir / f"{iid}.png" if masks_dir else None
            gt = gt if gt is not None and gt.is_file() else None
            if not keys:
                skipped.append({"id": iid, "reason": f"empty label list in {labels_csv}:{line}"})
                continue
            samples.append(Sample(iid, img, tuple(keys), image_size_hw(img), gt, r))
    if keep is not None:
        missing = [i for i in keep if i not in seen]
        if missing:
            i = missing[0]
            raise DatasetError(f"{split}:{keep[i]}: id {i!r} has no row in {labels_csv}"
                               f"{f' ({len(missing)} ids in all)' if len(missing) > 1 else ''}; "
                               f"fix the id (a typo?) or add the image's row")
    if not samples and not skipped:
        raise DatasetError(f"{labels_csv}: no image rows")
    bg = tuple(background) if background is not None else text.VOC12_BACKGROUND
    bg, removed = text.split_background(specs, bg)
    return Dataset("custom", root, specs, bg, samples, skipped, removed)


def load_images(root, classes: list, split=None, images_dir="images", masks_dir="masks",
                background: list[str] | None = None) -> Dataset:
    """A dataset of your own without a label table: every image of ROOT/images (or the ids
    of ``split``), without labels (keys empty): the label-free mode tags them
    (:func:`with_tags`)."""
    root = Path(root)
    folder = root / images_dir
    _require_dir(folder, "images", "Put your images there, one file per image.")
    specs = text.class_specs_from_config(classes)
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS:
            if p.stem in files:
                raise DatasetError(f"{folder}: {files[p.stem].name} and {p.name} have the same id "
                                   f"{p.stem!r}; rename one")
            files[p.stem] = p
    if split:
        rows = read_split_lines(split)
        for line, row in rows:
            if row[0] not in files:
                raise DatasetError(_unknown_id(split, line, row[0], folder / f"{row[0]}.*"))
        ids = [row[0] for _, row in rows]
    else:
        ids = list(files)
    if not ids:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_EXTS)})")
    samples = []
    for r, iid in enumerate(ids):
        gt = root / masks_dir / f"{iid}.png" if masks_dir else None
        samples.append(Sample(iid, files[iid], (), image_size_hw(files[iid]),
                              gt if gt is not None and gt.is_file() else None, r))
    bg = tuple(background) if background is not None else text.VOC12_BACKGROUND
    bg, removed = text.split_background(specs, bg)
    return Dataset("custom", root, specs, bg, samples, [], removed)


def write_tags(path, ids: list[str], tags: list[list[int]]) -> None:
    """The authors' label file: '<id> <class index> ...' per line (0-based)."""
    from .io import write_text

    write_text(path, "".join(f"{i} {' '.join(map(str, t))}\n" for i, t in zip(ids, tags)))


def read_tags(path) -> dict[str, list[int]]:
    """id -> class indices of a label file in the authors' format."""
    out = {}
    for line, row in read_split_lines(path):
        try:
            out[row[0]] = [int(v) for v in row[1:]]
        except ValueError:
            raise DatasetError(f"{path}:{line}: class indices must be integers (the format is "
                               f"'<id> <class index> ...')") from None
    return out


def with_tags(ds: Dataset, tags: dict[str, list[int]], path) -> Dataset:
    """The dataset with the predicted tags (scripts/tag_images.py's label file) as the
    images' labels. An image without a line in the tags file is an error."""
    samples = []
    n = len(ds.classes)
    for s in ds.samples:
        if s.id not in tags:
            raise DatasetError(f"{path}: no tags for image {s.id!r}; rerun the tagging stage "
                               f"(scripts/tag_images.py) on this split")
        keys = tags[s.id]
        bad = [k for k in keys if not 0 <= k < n]
        if bad:
            raise DatasetError(f"{path}: image {s.id!r} has class indices {bad} outside "
                               f"0..{n - 1}; the tags belong to another class list")
        samples.append(Sample(s.id, s.image, tuple(dict.fromkeys(keys)), s.orig_hw, s.gt, s.row))
    return Dataset(ds.name, ds.root, ds.classes, ds.background, samples, ds.skipped,
                   ds.background_removed)


def _unknown_id(split, line: int, iid: str, img: Path) -> str:
    return (f"{split}:{line}: id {iid!r} has no image {img} (a typo in the split file, or "
            f"the image is missing); fix the id or remove its line")


def load(name: str, root, split, **kw) -> Dataset:
    """Dispatch on the dataset kind (``voc12``, ``coco14``, ``custom``)."""
    if name == "voc12":
        return load_voc12(root, split, **kw)
    if name == "coco14":
        return load_coco14(root, split, **kw)
    if name in ("custom", "synthetic"):
        ds = load_custom(root, split=split, **kw)
        ds.name = name
        return ds
    raise DatasetError(f"unknown dataset kind {name!r}: expected voc12, coco14 or custom")


def group_by_input_size(samples: list[Sample], patch: int = 16,
                        max_side: int | None = None) -> dict:
    """Samples keyed by their model input size (h, w), in first-seen order."""
    from .sizes import input_size

    groups: dict[tuple[int, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault(input_size(s.orig_hw, patch, max_side), []).append(s)
    return groups


def shard(samples: list, index: int, count: int) -> list:
    """The samples of shard ``index`` of ``count``: those whose split row is index modulo
    count (skipped rows count too, so a change of one row's labels moves no other image
    between shards; :mod:`clipes.manifest` digests shards the same way). Samples without a
    row number: every count-th from index."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} outside 0..{count - 1}")
    if samples and all(getattr(s, "row", -1) >= 0 for s in samples):
        return [s for s in samples if s.row % count == index]
    return samples[index::count]


def load_gt(sample: Sample, expect_hw: tuple[int, int] | None = None,
            n_classes: int | None = None) -> np.ndarray:
    """The ground-truth label map of a sample (H, W) uint8; size checked when given."""
    from .io import load_mask

    if sample.gt is None:
        raise DatasetError(f"no ground-truth mask for {sample.id}")
    gt = load_mask(sample.gt)
    if n_classes is not None:
        bad = np.unique(gt[(gt >= n_classes) & (gt != 255)])
        if bad.size:
            raise DatasetError(f"{sample.gt} holds label values {bad[:5].tolist()} beyond the "
                               f"{n_classes} classes (0 background .. {n_classes - 1}, 255 "
                               f"ignore): a colour-palette or 16-bit mask, or another dataset's")
    hw = expect_hw or sample.orig_hw
    if gt.shape != tuple(hw):
        hint = f"the mask does not belong to {sample.image}"
        if gt.shape == tuple(hw)[::-1]:
            with Image.open(sample.image) as im:
                o = exif_orientation(im)
            if o in SWAPS_AXES:
                hint = (f"{sample.image} has EXIF orientation {o} (turned by 90 degrees) and "
                        f"the mask follows the turned image: set dataset.exif: apply "
                        f"(--exif apply)")
        raise DatasetError(f"{sample.gt} is {gt.shape[1]}x{gt.shape[0]} but the image is "
                           f"{hw[1]}x{hw[0]}; {hint}")
    return gt


def damaged(path: Path) -> str | None:
    """Why an image file is damaged (truncated JPEG or PNG, unreadable), or None. JPEG and
    PNG are checked by their structure without decoding: a JPEG's end-of-image marker
    must follow its last scan, a PNG must end with its IEND chunk; other formats are
    decoded."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"cannot read: {e.strerror}"
    if data[:2] == b"\xff\xd8":
        # 0xFF inside entropy-coded data is always stuffed, so FFD9 after the last scan
        # header (FFDA) is the real end of the image, not a thumbnail's
        return None if data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") >= 0 else (
            "truncated JPEG (no end-of-image marker after the last scan)")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return None if b"IEND" in data[-64:] else "truncated PNG (no IEND chunk)"
    try:
        with open_image(path):
            return None
    except DatasetError as e:
        return str(e)


def check_damaged(samples: list[Sample], where: str, source: str) -> None:
    """Every damaged image file of ``samples`` named in one error (see :func:`damaged`)."""
    bad = [(s.image, why) for s in samples if (why := damaged(s.image))]
    if bad:
        listed = "; ".join(f"{p}: {why}" for p, why in bad[:5])
        raise DatasetError(
            f"{len(bad)} damaged image file(s) in {where} ({listed}"
            f"{' ...' if len(bad) > 5 else ''}): download them again, or remove their rows "
            f"from {source}")
