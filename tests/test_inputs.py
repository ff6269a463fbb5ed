"""What real folders hold: Excel CSVs, repeated rows, 16-bit images, masks of another
dataset, shared file systems, bad shard specs."""

import os
import stat

import numpy as np
import pytest
from PIL import Image

from clipes import datasets, io
from conftest import run_script

pytestmark = pytest.mark.faults  # part of the fault-injection suite (see tests/test_faults.py)


def _custom(tmp_path, csv_text, encoding="utf-8"):
    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "images" / f"{name}.png")
    (tmp_path / "labels.csv").write_text(csv_text, encoding=encoding)
    return tmp_path / "labels.csv"


def test_a_csv_saved_by_excel_with_a_bom_is_read(tmp_path):
    csv = _custom(tmp_path, "image,labels\na.png,cat\nb.png,dog\n", encoding="utf-8-sig")
    assert csv.read_bytes().startswith(b"\xef\xbb\xbf")
    ds = datasets.load_custom(tmp_path, ["cat", "dog"], csv)
    assert [s.id for s in ds.samples] == ["a", "b"]


def test_a_repeated_image_row_is_an_error_naming_both_lines(tmp_path):
    csv = _custom(tmp_path, "image,labels\na.png,cat\nb.png,dog\na.png,dog\n")
    with pytest.raises(datasets.DatasetError, match=r"labels.csv:4: image 'a' is listed again \(first on line 2\)"):
        datasets.load_custom(tmp_path, ["cat", "dog"], csv)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    a = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    with datasets.open_image(tmp_path / "deep.png") as im:
        assert im.mode == "L"
        got = np.asarray(im)
    assert got.min() == 0 and got.max() == 255 and abs(got.mean() - 127.5) < 1
    Image.fromarray(np.zeros((4, 4), np.float32), "F").save(tmp_path / "float.tif")
    with pytest.raises(datasets.DatasetError, match="floating-point"):
        datasets.open_image(tmp_path / "float.tif")


def test_ground_truth_beyond_the_class_count_is_refused(tmp_path):
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0], mask[1, 1] = 255, 40
    Image.fromarray(mask).save(tmp_path / "m.png")
    s = datasets.Sample("m", tmp_path / "x.jpg", (0,), (4, 4), tmp_path / "m.png")
    with pytest.raises(datasets.DatasetError, match=r"label values \[40\] beyond the 21 classes"):
        datasets.load_gt(s, n_classes=21)
    assert datasets.load_gt(s, n_classes=41)[1, 1] == 40


def test_outputs_are_readable_by_the_group_as_the_umask_says(tmp_path):
    old = os.umask(0o022)
    try:
        io.write_text(tmp_path / "a.txt", "x")
        io.save_mask(tmp_path / "m.png", np.zeros((2, 2), np.uint8))
    finally:
        os.umask(old)
    for name in ("a.txt", "m.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("spec", ["0/0", "3/2", "x/4", "-1/2"])
def test_bad_shard_specs_are_one_line_errors(golden, tmp_path, spec):
    voc = golden / "voc"
    p = run_script("crf", "--dataset", "voc12", "--root", voc, "--split",
                   voc / "ImageSets/Segmentation/train.txt", "--cams", tmp_path, "--out",
                   tmp_path / "o", "--shard", spec, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "--shard" in p.stderr.strip().splitlines()[-1]
