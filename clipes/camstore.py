"""CAM archives: one ``<id>.npz`` per image, in one of two layouts, and the one reader.

The refined maps are made on the model's patch grid (h/16 x w/16 values per class) and
only then resized to the image. ``grid`` (the default) stores them before that resize and
the reader does it; ``full`` stores the resized maps. Both give the reader the same bits.

grid layout (``STORE_GRID``; about 7 KB for a VOC image, against 585 KB for ``full``)::

    format      str                  "clipes-cam-grid/1"
    keys        int64   (K,)         class indices (0-based into the dataset's class list),
                                     in label order
    grid        float32 (K, gh, gw)  refined CAMs, min-max normalised on the grid
    grid_plain  float32 (K, gh, gw)  optional: the Grad-CAM before CAA (--keep-plain)
    image_hw    int64   (2,)         the image's height and width
    resize      str                  how the full maps are made (RESIZE, below)

full layout (``STORE_FULL``; the authors' ``attn_highres``)::

    format      str                  "clipes-cam-full/1" (archives of earlier versions of
                                     this project have no format entry: read as full)
    keys        int64   (K,)
    cams        float16 (K, H, W)    refined CAMs at the image size
    cams_plain  float16 (K, H, W)    optional: the Grad-CAM before CAA

The resize (``upsample``) is bilinear with half-pixel centres (PyTorch's
``interpolate(mode="bilinear", align_corners=False)``, the reference's ``cv2.resize``),
source indices clamped at the edges, in float32 with each multiply-add rounded once
(computed in float64, then rounded), and the result rounded to float16. It is plain
numpy, so a file reads to the same bits on every machine; on x86-64 CPUs with FMA it
equals PyTorch's CPU kernel for image-sized outputs (tested), so the stored maps are what
the CAM stage wrote before the grid layout existed.

Every file is loaded without pickle (``allow_pickle=False``). Torch-free: the CRF,
evaluation and report stages read archives without importing it.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .io import atomic_path

STORE_GRID, STORE_FULL = "grid", "full"
STORES = (STORE_GRID, STORE_FULL)
FORMAT = {STORE_GRID: "clipes-cam-grid/1", STORE_FULL: "clipes-cam-full/1"}
RESIZE = "bilinear, half-pixel centres, edges clamped, float32 multiply-adds rounded once, float16"
CAM_DTYPE = np.float16
KEYS = ("cams", "cams_plain")  # what a reader asks for: the refined or the plain maps


# ----------------------------------------------------------------------------- resize
def _axis(n_in: int, n_out: int):
    """Source indices and weights of one axis: i0, i1 (n_out,) int64, w0, w1 (n_out,) float32."""
    scale = np.float32(n_in) / np.float32(n_out)
    centre = np.arange(n_out, dtype=np.float32) + np.float32(0.5)
    real = (np.float64(scale) * centre - 0.5).astype(np.float32)  # one rounding, as an FMA
    real = np.maximum(real, np.float32(0))
    i0 = np.minimum(np.floor(real).astype(np.int64), n_in - 1)
    w1 = np.clip(real - i0.astype(np.float32), 0, 1).astype(np.float32)
    w0 = np.float32(1) - w1
    return i0, np.minimum(i0 + 1, n_in - 1), w0, w1


def _fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * b + c for float32 arrays, the product exact and the sum rounded to float32."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def upsample(grid: np.ndarray, image_hw) -> np.ndarray:
    """grid (K, gh, gw) float32 -> (K, H, W) float32, bilinear (see the module's text)."""
    grid = np.asarray(grid, dtype=np.float32)
    h, w = (int(v) for v in image_hw)
    y0, y1, a0, a1 = _axis(grid.shape[1], h)
    x0, x1, b0, b1 = _axis(grid.shape[2], w)
    rows = _fma(grid[:, :, x0], b0, grid[:, :, x1] * b1)  # (K, gh, W)
    return _fma(rows[:, y0, :], a0[:, None], rows[:, y1, :] * a1[:, None])  # (K, H, W)


def full_maps(grid: np.ndarray, image_hw) -> np.ndarray:
    """What both layouts give a reader: (K, H, W) float16."""
    return upsample(grid, image_hw).astype(CAM_DTYPE)


# ----------------------------------------------------------------------------- write
def save_cams(path, keys: np.ndarray, grid: np.ndarray, image_hw, plain_grid=None,
              store: str = STORE_GRID, compress: bool = True, **extra: np.ndarray) -> None:
    """Write one image's archive in the ``store`` layout, atomically. grid, plain_grid:
    (K, gh, gw) maps on the patch grid; ``extra`` arrays are added as they are."""
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, got {store!r}")
    keys = np.asarray(keys, dtype=np.int64)
    arrays = {"format": np.array(FORMAT[store]), "keys": keys}
    if store == STORE_GRID:
        arrays["grid"] = np.asarray(grid, dtype=np.float32)
        if plain_grid is not None:
            arrays["grid_plain"] = np.asarray(plain_grid, dtype=np.float32)
        arrays["image_hw"] = np.asarray(image_hw, dtype=np.int64)
        arrays["resize"] = np.array(RESIZE)
    else:
        arrays["cams"] = full_maps(grid, image_hw)
        if plain_grid is not None:
            arrays["cams_plain"] = full_maps(plain_grid, image_hw)
    arrays.update(extra)
    _write_npz(path, arrays, compress)


def _write_npz(path, arrays: dict, compress: bool) -> None:
    """The archive made in memory and written in one piece (a few small writes instead of
    one per zip member), atomically."""
    import io

    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    with atomic_path(path, suffix=".npz") as tmp:
        tmp.write_bytes(buf.getbuffer())


def save_full_cams(path, keys: np.ndarray, cams: np.ndarray, compress: bool = True,
                   **extra: np.ndarray) -> None:
    """A full-layout archive from maps already at the image size (K, H, W)."""
    arrays = {"format": np.array(FORMAT[STORE_FULL]), "keys": np.asarray(keys, dtype=np.int64),
              "cams": np.asarray(cams).astype(CAM_DTYPE), **extra}
    _write_npz(path, arrays, compress)


# ----------------------------------------------------------------------------- read
def _refuse(path, why: str) -> DatasetError:
    return DatasetError(f"{path}: {why}; delete it and rerun the CAM stage "
                        f"(scripts/cams.py, or the workflow's cams rule)")


def archive_layout(z, path) -> str:
    """STORE_GRID or STORE_FULL for an open archive; other files are refused."""
    if "format" in z.files:
        fmt = str(z["format"])
        for store, name in FORMAT.items():
            if fmt == name:
                return store
        known = ", ".join(FORMAT.values())
        raise _refuse(path, f"a CAM archive of layout {fmt!r}, which this version does not "
                            f"read (it reads {known}; a newer version of clipes wrote it?)")
    if "cams" in z.files and "keys" in z.files:
        return STORE_FULL  # written before archives named their layout
    raise _refuse(path, f"not a CAM archive (it holds {', '.join(z.files) or 'nothing'})")


def load_cams(path, key: str = "cams") -> tuple[np.ndarray, np.ndarray]:
    """(keys (K,) int64, cams (K, H, W) float16) of a CAM archive of either layout;
    ``key="cams_plain"`` reads the Grad-CAM before CAA where the archive keeps it."""
    if key not in KEYS:
        raise ValueError(f"key must be one of {KEYS}, got {key!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            store = archive_layout(z, path)
            keys = z["keys"].astype(np.int64)
            if store == STORE_FULL:
                if key not in z.files:
                    raise _missing(path, key)
                return keys, z[key]
            name = "grid" if key == "cams" else "grid_plain"
            if name not in z.files:
                raise _missing(path, key)
            return keys, full_maps(z[name], z["image_hw"])
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _refuse(path, f"not a readable CAM archive ({e})") from e


def _missing(path, key) -> DatasetError:
    if key == "cams_plain":
        return _refuse(path, "this archive has no plain Grad-CAM (written without --keep-plain)")
    return _refuse(path, f"this archive has no {key!r}")


def describe(path) -> dict:
    """Layout, classes and sizes of an archive, without making the full maps."""
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise _refuse(path, f"not a readable CAM archive ({e})") from e
    with z:
        store = archive_layout(z, path)
        out = {"layout": store, "keys": z["keys"].astype(np.int64).tolist(),
               "plain": ("grid_plain" if store == STORE_GRID else "cams_plain") in z.files,
               "bytes": Path(path).stat().st_size}
        if store == STORE_GRID:
            out["grid_hw"] = list(z["grid"].shape[1:])
            out["image_hw"] = z["image_hw"].astype(int).tolist()
        else:
            out["image_hw"] = list(z["cams"].shape[1:])
    return out


# ----------------------------------------------------------------------------- the authors' files
class _ArraysOnly(pickle.Unpickler):
    """Unpickles numpy arrays, dtypes and plain containers, nothing that can run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name} (only arrays are read)")


def load_authors_npy(path) -> tuple[np.ndarray, np.ndarray]:
    """(keys (K,) int64, cams (K, H, W)) of the authors' ``<id>.npy`` (a dict with ``keys``
    and ``attn_highres`` saved by np.save), read without running pickle code."""
    try:
        with open(path, "rb") as f:
            fmt = np.lib.format
            major, _ = fmt.read_magic(f)
            read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
            _, _, dtype = read_header(f)
            d = _ArraysOnly(f).load() if dtype.hasobject else None
        if isinstance(d, np.ndarray) and d.dtype.hasobject and d.shape == ():
            d = d.item()
        if not isinstance(d, dict) or not {"keys", "attn_highres"} <= set(d):
            raise ValueError("not a dict with 'keys' and 'attn_highres'")
        return np.asarray(d["keys"], dtype=np.int64), np.asarray(d["attn_highres"])
    except (OSError, ValueError, EOFError, pickle.UnpicklingError, TypeError, AttributeError) as e:
        raise DatasetError(f"{path}: not a CAM file of the authors' code (a dict with 'keys' "
                           f"and 'attn_highres'): {e}") from e
