"""A synthetic WSSS dataset generated from a seed: shapes on textured backgrounds.

Each image shows one to three shapes of distinct classes on a named background texture.
Every class has its own colour and shape (a red circle, a blue square, ...), shaded as if
lit from the front: saturated at the centre, paler towards the rim, so a CAM finds an
object's centre first and CAA has the rest to complete; backgrounds are textures in greys
and earth tones that no class uses, so a tiny CLIP trained for a few minutes recognises
the classes and its CAMs can find them: the demo shows what each stage of the method
does, not how hard recognition is. The folder is laid out as a custom
dataset (see :func:`clipes.datasets.load_custom`) plus captions for training a tiny CLIP:

    ROOT/images/<id>.png      RGB image
    ROOT/masks/<id>.png       ground truth: 0 background, k + 1 shape class k
    ROOT/labels.csv           image,labels (';'-separated class names)
    ROOT/captions.csv         image,caption (for CLIP pre-training on the train split)
    ROOT/classes.yaml         the class list;  ROOT/background.txt  the texture words
    ROOT/train.txt, ROOT/val.txt   ids
"""

from __future__ import annotations

import csv
import io as _io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .io import atomic_path, save_mask, write_text

CLASSES = ("circle", "square", "triangle", "cross", "ring")
BACKGROUNDS = ("stripes", "dots", "checkerboard", "noise", "plain")
# Each class has its colour; TYPICAL_COLOUR_RATE is the share of instances drawn in it
# (the others take a random colour of COLOURS, which makes recognition a matter of shape).
TYPICAL_COLOUR = {"circle": "red", "square": "blue", "triangle": "green", "cross": "yellow",
                  "ring": "purple"}
TYPICAL_COLOUR_RATE = 1.0
# objects are shaded as if lit from the front: the class colour is saturated at the centre
# and fades FADE of the way to white at the rim, so a CAM finds the centre before the rim
# (as Grad-CAM finds an object's most discriminative parts first) and CAA has an object
# to complete
FADE = 0.5
COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 220),
    "yellow": (235, 210, 40), "purple": (150, 60, 190), "orange": (240, 140, 30),
    "white": (240, 240, 240), "black": (20, 20, 20),
}


# background textures: greys and earth tones, none of them a class colour
BG_COLOURS = ((120, 120, 120), (90, 90, 90), (150, 140, 120), (110, 100, 80), (70, 80, 90),
              (160, 160, 150), (130, 115, 100), (95, 105, 100))
# image sizes: the WSSS images (each stage runs at the image's own size, as on VOC) and the
# tiny CLIP's training pairs (resized to its 96-pixel input)
IMAGE_SIZES = ((144, 144), (144, 180))
CAPTION_SIZES = ((96, 96), (96, 120))


def _background(rng, kind: str, h: int, w: int) -> Image.Image:
    c1, c2 = (np.array(BG_COLOURS[i], np.uint8)
              for i in rng.choice(len(BG_COLOURS), 2, replace=False))
    yy, xx = np.mgrid[0:h, 0:w]
    period = int(rng.integers(6, 14))
    if kind == "stripes":
        sel = ((xx + yy * (rng.random() < 0.5)) // period) % 2 == 0
    elif kind == "checkerboard":
        sel = ((xx // period) + (yy // period)) % 2 == 0
    elif kind == "dots":
        sel = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period / 4) ** 2
    elif kind == "noise":
        sel = rng.random((h, w)) < 0.5
    else:
        sel = np.zeros((h, w), bool)
    img = np.where(sel[..., None], c1, c2).astype(np.uint8)
    return Image.fromarray(img)


def _shape_polygon(kind: str, cx: float, cy: float, r: float, angle: float):
    if kind == "square":
        pts = [(cx + r * math.cos(angle + k * math.pi / 2), cy + r * math.sin(angle + k * math.pi / 2))
               for k in range(4)]
        return pts
    if kind == "triangle":
        return [(cx + r * math.cos(angle + k * 2 * math.pi / 3), cy + r * math.sin(angle + k * 2 * math.pi / 3))
                for k in range(3)]
    if kind == "cross":
        a, b = r, r / 3
        base = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a),
                (-b, b), (-a, b), (-a, -b), (-b, -b)]
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in base]
    raise ValueError(kind)


def draw_shape(img: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw, kind: str, cx, cy, r,
               angle, colour, label: int) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if kind == "circle":
        img.ellipse(box, fill=colour)
        mask.ellipse(box, fill=label)
    elif kind == "ring":
        width = max(3, int(r / 2.5))
        img.ellipse(box, outline=colour, width=width)
        mask.ellipse(box, outline=label, width=width)
    else:
        pts = _shape_polygon(kind, cx, cy, r, angle)
        img.polygon(pts, fill=colour)
        mask.polygon(pts, fill=label)


def object_mask(kind: str, cx, cy, r, angle, size_hw: tuple[int, int]) -> np.ndarray:
    """Where one shape lies: (H, W) bool."""
    h, w = size_hw
    one = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(one)
    draw_shape(draw, draw, kind, cx, cy, r, angle, 1, 1)
    return np.asarray(one) > 0


def shade(colour, dist: np.ndarray, fade: float = FADE) -> np.ndarray:
    """The class colour lit from the front: saturated at the centre (dist 0), ``fade`` of
    the way to white at the rim (dist 1). dist (...) -> (..., 3) float32."""
    c = np.asarray(colour, np.float32)
    return c + (255 - c) * fade * np.clip(dist, 0, 1)[..., None].astype(np.float32)


def make_sample(rng, size_hw: tuple[int, int]):
    """One image: (RGB uint8 (H, W, 3), mask (H, W) uint8, class names, background, caption)."""
    h, w = size_hw
    bg = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    img = np.asarray(_background(rng, bg, h, w), np.float32).copy()
    mask = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    n = int(rng.choice([1, 1, 2, 2, 3]))
    kinds = [CLASSES[i] for i in rng.choice(len(CLASSES), n, replace=False)]
    for kind in kinds:
        r = float(rng.uniform(0.14, 0.26) * min(h, w))
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        if rng.random() < TYPICAL_COLOUR_RATE:
            cname = TYPICAL_COLOUR[kind]
        else:
            cname = list(COLOURS)[rng.integers(len(COLOURS))]
        inside = object_mask(kind, cx, cy, r, float(rng.uniform(0, math.pi)), (h, w))
        img[inside] = shade(COLOURS[cname], np.hypot(xx[inside] - cx, yy[inside] - cy) / r)
        mask[inside] = CLASSES.index(kind) + 1
    present = [k for k in kinds if (mask == CLASSES.index(k) + 1).sum() >= 12]  # not fully hidden
    # colours are left out of the caption: a CLIP trained on colour words learns them
    # instead of the class words the CAM stage asks about
    caption = "a photo of " + " and ".join(f"a {k}" for k in kinds if k in present) + f" on {bg}."
    return img.round().astype(np.uint8), mask, present, bg, caption


def generate(root, seed: int = 0, n_train: int = 200, n_val: int = 60,
             sizes: tuple[tuple[int, int], ...] = IMAGE_SIZES) -> Path:
    """Write the dataset under ``root``; the same seed gives the same bytes."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows, caps, ids = [], [], {"train": [], "val": []}
    for split, count in (("train", n_train), ("val", n_val)):
        for i in range(count):
            iid = f"{split}_{i:05d}"
            hw = sizes[int(rng.integers(len(sizes)))]
            img, mask, present, _, caption = make_sample(rng, hw)
            with atomic_path(root / "images" / f"{iid}.png") as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
            save_mask(root / "masks" / f"{iid}.png", mask)
            rows.append((f"{iid}.png", ";".join(present)))
            caps.append((f"{iid}.png", caption))
            ids[split].append(iid)
    write_text(root / "labels.csv", _csv(["image", "labels"], rows))
    write_text(root / "captions.csv", _csv(["image", "caption"], caps))
    write_text(root / "classes.yaml", "".join(f"- {c}\n" for c in CLASSES))
    write_text(root / "background.txt", "".join(f"{b}\n" for b in BACKGROUNDS))
    for split, lst in ids.items():
        write_text(root / f"{split}.txt", "".join(f"{i}\n" for i in lst))
    return root


def _csv(header, rows) -> str:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def read_captions(root) -> dict[str, str]:
    with open(Path(root) / "captions.csv", newline="") as f:
        return {Path(r["image"]).stem: r["caption"] for r in csv.DictReader(f)}


def caption_corpus(seed: int, n: int, sizes=CAPTION_SIZES):
    """An in-memory image-caption corpus from the same generator (another seed): the
    demo CLIP's 'web data', disjoint from the WSSS images. Returns (RGB arrays, captions)."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(n):
        img, _, present, _, caption = make_sample(rng, sizes[int(rng.integers(len(sizes)))])
        if present:
            images.append(img)
            captions.append(caption)
    return images, captions


def stream_pairs(rng, n: int, sizes=CAPTION_SIZES):
    """n fresh image-caption pairs drawn from ``rng`` (the streamed pre-training data of
    the demo CLIP: every step sees new images). Returns (RGB arrays, captions)."""
    images, captions = [], []
    while len(images) < n:
        img, _, present, _, caption = make_sample(rng, sizes[int(rng.integers(len(sizes)))])
        if present:
            images.append(img)
            captions.append(caption)
    return images, captions
