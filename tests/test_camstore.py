"""CAM archives: the grid and full layouts read to the same bits, archives of earlier
versions are read, anything else is refused in one line, the authors' files load as data."""

import os

import numpy as np
import pytest

from clipes import camstore
from clipes.errors import DatasetError

# (grid, image) sizes of VOC and COCO images, and odd small ones
SIZES = [((24, 32), (375, 500)), ((21, 32), (333, 500)), ((32, 24), (500, 375)),
         ((30, 40), (480, 640)), ((27, 40), (427, 640)), ((2, 3), (17, 33)), ((1, 1), (5, 7))]


def _grid(rng, k, gh, gw):
    g = rng.random((k, gh, gw), dtype=np.float32) ** 3  # CAM-like: mostly low, a few peaks
    return g / g.max(axis=(1, 2), keepdims=True)


@pytest.mark.parametrize("grid_hw,image_hw", SIZES)
def test_upsample_is_bilinear_with_half_pixel_centres(grid_hw, image_hw):
    """Against PyTorch's bilinear interpolation (align_corners=False) within float32
    rounding (its CPU kernel fuses multiply-adds where the CPU can: the bits depend on the
    machine; numpy's do not), and against a float64 formula of the same resize."""
    import torch
    import torch.nn.functional as F

    g = _grid(np.random.default_rng(sum(grid_hw)), 3, *grid_hw)
    mine = camstore.upsample(g, image_hw)
    assert mine.dtype == np.float32 and mine.shape == (3, *image_hw)
    ref = F.interpolate(torch.from_numpy(g)[None], size=image_hw, mode="bilinear",
                        align_corners=False)[0].numpy()
    assert np.abs(mine - ref).max() <= 2e-6

    def axis(n_in, n_out):
        x = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
        i0 = np.minimum(np.floor(x).astype(int), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), x - i0

    y0, y1, wy = axis(grid_hw[0], image_hw[0])
    x0, x1, wx = axis(grid_hw[1], image_hw[1])
    gd = g.astype(np.float64)
    rows = gd[:, :, x0] * (1 - wx) + gd[:, :, x1] * wx
    exact = rows[:, y0] * (1 - wy)[:, None] + rows[:, y1] * wy[:, None]
    assert np.abs(mine - exact).max() <= 1e-5  # float32 source coordinates
    # corners and edges take the grid's corner values (clamped indices)
    assert mine[0, 0, 0] == g[0, 0, 0] and mine[0, -1, -1] == g[0, -1, -1]


@pytest.mark.parametrize("compress", [True, False])
def test_both_layouts_read_to_the_same_bits(tmp_path, compress):
    rng = np.random.default_rng(1)
    for i, (grid_hw, image_hw) in enumerate(SIZES):
        keys = np.arange(1 + i % 3) * 2
        g, p = _grid(rng, len(keys), *grid_hw), _grid(rng, len(keys), *grid_hw)
        for store in camstore.STORES:
            camstore.save_cams(tmp_path / f"{store}{i}.npz", keys, g, image_hw, plain_grid=p,
                               store=store, compress=compress)
        for key, src in (("cams", g), ("cams_plain", p)):
            kg, cg = camstore.load_cams(tmp_path / f"grid{i}.npz", key)
            kf, cf = camstore.load_cams(tmp_path / f"full{i}.npz", key)
            assert kg.dtype == np.int64 and np.array_equal(kg, keys) and np.array_equal(kf, keys)
            assert cg.dtype == cf.dtype == np.float16 and cg.shape == (len(keys), *image_hw)
            assert cg.tobytes() == cf.tobytes()
            assert cg.tobytes() == camstore.upsample(src, image_hw).astype(np.float16).tobytes()
        d = camstore.describe(tmp_path / f"grid{i}.npz")
        assert d["layout"] == "grid" and d["grid_hw"] == list(grid_hw) and d["plain"]
        assert d["image_hw"] == list(image_hw)


def test_a_voc_image_takes_a_few_kilobytes(tmp_path):
    """The size target of the grid layout: at most 10 KB for a VOC image (2 labels, refined
    and plain maps), against more than 100 KB for the full layout."""
    rng = np.random.default_rng(2)
    g, p = _grid(rng, 2, 24, 32), _grid(rng, 2, 24, 32)
    for store in camstore.STORES:
        camstore.save_cams(tmp_path / f"{store}.npz", [3, 7], g, (375, 500), plain_grid=p, store=store)
    assert os.path.getsize(tmp_path / "grid.npz") <= 14_000  # random maps compress worse
    assert os.path.getsize(tmp_path / "full.npz") > 100_000


def test_archives_of_earlier_versions_are_read(tmp_path):
    """Before the layouts were named, archives held keys, cams and cams_plain (float16)."""
    cams = np.random.default_rng(3).random((2, 9, 11)).astype(np.float16)
    np.savez_compressed(tmp_path / "old.npz", keys=np.array([4, 1]), cams=cams, cams_plain=cams / 2)
    keys, got = camstore.load_cams(tmp_path / "old.npz")
    assert keys.tolist() == [4, 1] and got.tobytes() == cams.tobytes()
    assert camstore.load_cams(tmp_path / "old.npz", "cams_plain")[1].tobytes() == (cams / 2).tobytes()
    assert camstore.describe(tmp_path / "old.npz")["layout"] == "full"


def test_other_files_are_refused_in_one_line_naming_the_file_and_the_fix(tmp_path):
    np.savez(tmp_path / "newer.npz", format=np.array("clipes-cam-grid/9"), keys=np.array([1]))
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    np.savez(tmp_path / "pickled.npz", keys=np.array([1]), cams=np.array([object()], dtype=object))
    g = _grid(np.random.default_rng(4), 1, 3, 4)
    camstore.save_cams(tmp_path / "noplain.npz", [1], g, (30, 40))
    cases = {"newer.npz": "layout 'clipes-cam-grid/9'", "other.npz": "not a CAM archive",
             "broken.npz": "not a readable CAM archive", "pickled.npz": "not a readable CAM archive",
             "noplain.npz": "without --keep-plain", "missing.npz": "not a readable CAM archive"}
    for name, why in cases.items():
        with pytest.raises(DatasetError) as e:
            camstore.load_cams(tmp_path / name, "cams_plain" if name == "noplain.npz" else "cams")
        msg = str(e.value)
        assert name in msg and why in msg and "rerun the CAM stage" in msg and "\n" not in msg


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_the_authors_files_are_read_as_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cams = np.random.default_rng(5).random((2, 6, 7)).astype(np.float16)
    np.save(tmp_path / "a.npy", {"keys": np.array([3, 0]), "attn_highres": cams})
    keys, got = camstore.load_authors_npy(tmp_path / "a.npy")
    assert keys.tolist() == [3, 0] and got.tobytes() == cams.tobytes()
    np.save(tmp_path / "evil.npy", {"keys": np.array([1]), "attn_highres": _Payload()})
    with pytest.raises(DatasetError, match="refused to load"):
        camstore.load_authors_npy(tmp_path / "evil.npy")
    assert not (tmp_path / "pwned").exists()
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(DatasetError, match="a dict with 'keys'"):
        camstore.load_authors_npy(tmp_path / "plain.npy")


def test_export_writes_the_authors_format_and_the_full_layout(tmp_path):
    from conftest import run_script

    rng = np.random.default_rng(6)
    src = tmp_path / "cams"
    src.mkdir()
    for i in range(3):
        camstore.save_cams(src / f"im{i}.npz", [i, 5], _grid(rng, 2, 4, 6), (50, 70),
                           plain_grid=_grid(rng, 2, 4, 6))
    run_script("export_cams", "--cams", src, "--out", tmp_path / "npy", "--jobs", "2")
    run_script("export_cams", "--cams", src, "--out", tmp_path / "full", "--to", "full", "--plain")
    for i in range(3):
        want = camstore.load_cams(src / f"im{i}.npz")
        d = np.load(tmp_path / "npy" / f"im{i}.npy", allow_pickle=True).item()  # as their scripts
        assert set(d) == {"keys", "attn_highres"} and d["attn_highres"].dtype == np.float16
        assert d["keys"].tolist() == [i, 5] and d["attn_highres"].tobytes() == want[1].tobytes()
        plain = camstore.load_cams(tmp_path / "full" / f"im{i}.npz")[1]
        assert plain.tobytes() == camstore.load_cams(src / f"im{i}.npz", "cams_plain")[1].tobytes()
    proc = run_script("export_cams", "--cams", tmp_path / "npy", "--out", tmp_path / "x", check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no <id>.npz CAM archives")
