"""The dataset's files as a manifest: which files each image of a split consists of, their
sizes and content hashes, and digests of any part of a split.

The workflow puts a digest of exactly the files a job reads into that job's parameters, so
an edited image, label or mask reruns the jobs that read it (its CAM shard, its CRF shard,
the evaluations, the training) and nothing else, and a file touched without a change reruns
nothing. The preparation rule writes the same entries to ``manifest.tsv`` beside
``dataset.json``, for the record.

An *entry* is one row of a split, in the order shards are cut from (see
:func:`clipes.datasets.shard`): row ``r`` of ``n`` shards belongs to shard ``r % n``.
Files that do not exist are digested as missing; the preparation rule reports them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError

CHUNK = 1 << 20
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def read_split(path) -> list[list[str]]:
    """Non-empty, non-comment lines of a split file, split on white space."""
    return [row for _, row in read_split_lines(path)]


def read_split_lines(path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each id line of a split file: UTF-8 with or without a BOM,
    any line ending, surrounding spaces ignored. The first field must be an id (a file
    name without its extension, no folder); anything else is a one-line error naming the
    file, the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        check_id(fields[0], f"{path}:{n}")
        rows.append((n, fields))
    if not rows:
        raise DatasetError(f"split file {path} lists no images")
    return rows


def check_id(iid: str, where: str) -> None:
    """An id names files inside the dataset's folders: no folder part, no extension."""
    if "/" in iid or "\\" in iid:
        if iid.lower().endswith(IMAGE_EXTS):
            raise DatasetError(
                f"{where}: {iid!r} is an image path, as DeepLab's list files have them "
                f"('/JPEGImages/x.jpg /SegmentationClassAug/x.png'); a split file lists ids, one "
                f"per line (x): keep the file name of the first column without its extension")
        raise DatasetError(f"{where}: {iid!r} is not an id (a file name without folder and "
                           f"extension); ids name files inside the dataset's folders")
    if iid in (".", "..") or iid.startswith(".") or any(ord(c) < 32 for c in iid):
        raise DatasetError(f"{where}: {iid!r} is not an id (a file name without folder and "
                           f"extension)")
    if iid.lower().endswith(IMAGE_EXTS):
        stem = iid.rsplit(".", 1)[0]
        raise DatasetError(f"{where}: {iid!r} has an image extension; ids are written "
                           f"without it ({stem})")


def coco_file(root: Path, sub: str, iid: str, ext: str) -> Path:
    """ROOT/SUB/<id>.ext, or ROOT/SUB/{train2014,val2014}/<id>.ext as COCO ships it."""
    flat = root / sub / f"{iid}{ext}"
    if flat.is_file():
        return flat
    for part in ("train2014", "val2014"):
        if part in iid:
            nested = root / sub / part / f"{iid}{ext}"
            if nested.is_file():
                return nested
    return flat


def find_image(folder: Path, name: str) -> Path:
    """FOLDER/NAME, or FOLDER/<stem of NAME>.<ext> for the usual image extensions."""
    p = folder / name
    if p.is_file():
        return p
    for ext in IMAGE_EXTS:
        q = folder / f"{Path(name).stem}{ext}"
        if q.is_file():
            return q
    raise DatasetError(f"image {name!r} not found in {folder} (tried {IMAGE_EXTS})")


@dataclass(frozen=True)
class Entry:
    id: str
    row: int  # position among the split's rows (shard membership: row % n)
    image: Path | None
    label_file: Path | None  # VOC: the XML; others: labels are in `label`
    label: str  # label text of the row (COCO split line, custom CSV cell)
    gt: Path | None


def _voc_entries(root: Path, split: Path) -> list[Entry]:
    return [Entry(r[0], i, root / "JPEGImages" / f"{r[0]}.jpg",
                  root / "Annotations" / f"{r[0]}.xml", "",
                  root / "SegmentationClassAug" / f"{r[0]}.png")
            for i, r in enumerate(read_split(split))]


def _coco_entries(root: Path, split: Path) -> list[Entry]:
    f = coco_file
    return [Entry(r[0], i, f(root, "JPEGImages", r[0], ".jpg"), None, " ".join(r[1:]),
                  f(root, "SegmentationClass", r[0], ".png"))
            for i, r in enumerate(read_split(split))]


def _image_entries(root: Path, split: Path | None) -> list[Entry]:
    """A custom dataset without a label table: its images (those of the split)."""
    folder = root / "images"
    try:
        files = {p.stem: p for p in sorted(folder.iterdir())
                 if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS}
    except OSError:
        files = {}
    ids = [r[0] for r in read_split(split)] if split else list(files)
    return [Entry(i, n, files.get(i), None, "", root / "masks" / f"{i}.png")
            for n, i in enumerate(ids)]


def _custom_entries(root: Path, labels_csv: Path | None, split: Path | None) -> list[Entry]:
    if labels_csv is None:
        return _image_entries(root, split)
    keep = {r[0] for r in read_split(split)} if split else None
    out = []
    with Path(labels_csv).open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        for row in csv.DictReader(fh):
            name = (row.get("image") or "").strip()
            iid = Path(name).stem
            if keep is not None and iid not in keep:
                continue
            if not inside(name):
                img = None  # never read: the preparation refuses the row, naming it
            else:
                try:
                    img = find_image(root / "images", name)
                except DatasetError:
                    img = root / "images" / name
            out.append(Entry(iid, len(out), img, None, row.get("labels") or "",
                             root / "masks" / f"{iid}.png"))
    return out


def inside(name: str) -> bool:
    """A relative path that stays inside its folder (no absolute path, no '..')."""
    p = Path(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def entries(kind: str, root, split=None, labels=None) -> list[Entry]:
    """The rows of one split of a dataset in the converted layout (or a custom one)."""
    root = Path(root)
    if kind == "voc12":
        return _voc_entries(root, Path(split))
    if kind == "coco14":
        return _coco_entries(root, Path(split))
    if kind in ("custom", "synthetic"):
        return _custom_entries(root, Path(labels) if labels else None,
                               Path(split) if split else None)
    raise DatasetError(f"unknown dataset kind {kind!r}")


def sha1_file(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class HashCache:
    """Content hashes keyed by (path, size, mtime, ctime): a file is read again only when
    one of them changed (git's index does the same). Kept in one JSON file."""

    path: Path | None = None
    table: dict = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def load(cls, path) -> "HashCache":
        path = Path(path) if path else None
        table = {}
        if path is not None and path.is_file():
            try:
                table = json.loads(path.read_text())
            except (OSError, ValueError):
                table = {}  # a damaged cache is rebuilt
        return cls(path, table)

    def digest(self, path: Path | None) -> str:
        """sha1 of the file's bytes, or 'missing'."""
        if path is None:
            return "none"
        key = os.path.abspath(path)
        try:
            st = os.stat(key)
        except OSError:
            return "missing"
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        hit = self.table.get(key)
        if hit is not None and hit[:3] == stamp:
            return hit[3]
        value = sha1_file(Path(key))
        self.table[key] = stamp + [value]
        self.dirty = True
        return value

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.table))
        os.replace(tmp, self.path)  # atomic: a reader sees the old table or the new one
        self.dirty = False


def entry_record(e: Entry, cache: HashCache, gt: bool = False) -> list[str]:
    """What a job reading this row depends on: id, row, image bytes, label (and mask)."""
    rec = [e.id, str(e.row), cache.digest(e.image), e.label,
           cache.digest(e.label_file) if e.label_file else ""]
    if gt:
        rec.append(cache.digest(e.gt) if e.gt is not None else "none")
    return rec


def digest(rows: list[Entry], cache: HashCache, gt: bool = False,
           shard: tuple[int, int] | None = None, extra: str = "") -> str:
    """One sha1 over the records of ``rows`` (those of shard (i, n) when given)."""
    h = hashlib.sha1(extra.encode())
    for e in rows:
        if shard is not None and e.row % shard[1] != shard[0]:
            continue
        h.update("\t".join(entry_record(e, cache, gt)).encode() + b"\n")
    return h.hexdigest()


# What of the official downloads the conversion reads (and, through its links, the
# stages): (folder under the download's root, file suffix). Other files (ImageSets/Main,
# SegmentationObject, captions, a .DS_Store, macOS's ._* files) change nothing.
DOWNLOAD_FILES = {
    "voc12": [("JPEGImages", ".jpg"), ("Annotations", ".xml"),
              ("ImageSets/Segmentation", ".txt"), ("SegmentationClass", ".png")],
    "sbd": [("dataset/cls", ".mat"), ("dataset", ".txt")],
    "aug_masks": [(".", ".png")],
    "coco14": [("train2014", ".jpg"), ("val2014", ".jpg"), ("annotations", ".json")],
    "voc_test": [("JPEGImages", ".jpg"), ("ImageSets/Segmentation", ".txt")],
}
COCO_ANNOTATIONS = ("instances_train2014.json", "instances_val2014.json")


def download_files(kind: str, root) -> list[Path]:
    """The files of one official download (DOWNLOAD_FILES) in a stable order."""
    root = Path(root)
    out = []
    for sub, suffix in DOWNLOAD_FILES[kind]:
        folder = root / sub
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.is_file())
        except OSError:
            continue
        for name in names:
            if name.startswith(".") or not name.endswith(suffix):
                continue
            if kind == "coco14" and sub == "annotations" and name not in COCO_ANNOTATIONS:
                continue
            out.append(folder / name)
    return out


def downloads_digest(parts: dict, cache: "HashCache") -> str:
    """One sha1 over the content of the downloads' files: parts maps a DOWNLOAD_FILES kind
    to its folder. A file touched, copied or extracted again without a change leaves it
    as it is (the content hashes are cached by size and file times)."""
    h = hashlib.sha1()
    for kind, root in sorted(parts.items()):
        if root is None or not Path(root).is_dir():
            continue
        for p in download_files(kind, root):
            h.update(f"{kind}\t{p.relative_to(root)}\t{cache.digest(p)}\n".encode())
    return h.hexdigest()


def write_manifest(path, splits: dict[str, list[Entry]], cache: HashCache, root) -> None:
    """manifest.tsv: split, row, id, then each file relative to the root with its size and
    sha1, and the row's label text."""
    root = Path(root)
    lines = ["split\trow\tid\tfile\trole\tbytes\tsha1\tlabel"]

    def rel(p: Path) -> str:
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            return str(p)

    for name, rows in splits.items():
        for e in rows:
            for role, p in (("image", e.image), ("labels", e.label_file), ("mask", e.gt)):
                if p is None or not Path(p).is_file():
                    continue
                lines.append("\t".join([name, str(e.row), e.id, rel(p), role,
                                        str(Path(p).stat().st_size), cache.digest(p),
                                        e.label if role == "image" else ""]))
    from .io import write_text

    write_text(path, "\n".join(lines) + "\n")
