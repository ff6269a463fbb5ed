"""File I/O: atomic writes, JSON and palette PNG masks (CAM archives: clipes.camstore).

Every output is written to a temporary file in the destination folder and renamed into
place, so an interrupted run never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DatasetError

IGNORE = 255  # label value ignored by metrics and by the segmentation loss

# CAM archives (their two layouts and the one reader): clipes.camstore


def _file_mode() -> int:
    """The mode a plain new file gets here (0o666 less the umask): what open() would give."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    The file ends with the mode any file written by the user gets (the umask applies), not
    the private 0600 of a temporary file, so colleagues on a shared file system can read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=suffix if suffix is not None else path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a full disk names the file it was writing
        raise


_LIBC = None


def release_memory() -> None:
    """Hand freed heap memory back to the system (glibc's malloc_trim; a no-op elsewhere).

    Loops that decode and write thousands of images otherwise grow their resident size
    by about 0.2 MB per image: glibc keeps freed native buffers (PNG/zlib, numpy) in the
    heap instead of returning them, though nothing holds them.
    """
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path, obj) -> None:
    """Strict JSON (a number that is not finite is written as null, not as NaN, which is
    not JSON), atomically."""
    write_text(path, json.dumps(finite(obj), indent=1, sort_keys=False, allow_nan=False,
                                default=_json_default) + "\n")


def finite(obj):
    """obj with every NaN or infinite float (numpy's included) replaced by None."""
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    return obj


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (256 entries, flattened RGB)."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def save_mask(path, mask: np.ndarray, palette: bool = True) -> None:
    """Write a label map (H, W) uint8 as a PNG (palette by default; 255 = ignore)."""
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))  # mode L
    if palette:
        img.putpalette(voc_palette())  # L -> P, indices unchanged
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def load_mask(path) -> np.ndarray:
    """A label PNG (palette or grey) as its index values (H, W) uint8."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L", "I", "I;16"):
                raise DatasetError(f"mode {im.mode}: expected a palette or grey label PNG")
            return np.asarray(im).astype(np.uint8)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable label mask ({e})") from e
