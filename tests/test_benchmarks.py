"""The benchmark scripts run as the README gives them, on sizes small enough for CI."""

import pytest

from conftest import golden_dir, run_script


@pytest.mark.skipif(not (golden_dir() / "clip_tiny.pt").is_file(), reason="no tiny CLIP")
def test_cam_scaling_benchmark_prints_one_row_per_size(tmp_path):
    proc = run_script("benchmark_cam_scaling", "--sizes", "2", "4", "--checkpoint",
                      golden_dir() / "clip_tiny.pt", "--workdir", tmp_path)
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["2", "4"]
    for r in rows:
        cells = [float(c) for c in r.strip("|").split("|")]
        assert all(c > 0 for c in cells)
    assert len(list((tmp_path / "data" / "cams_4").glob("*.npz"))) == 4
