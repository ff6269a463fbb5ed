import numpy as np
import pytest

from clipes import metrics


def test_miou_on_known_confusion_matrix():
    hist = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # class 2 absent from gt and pred
    s = metrics.scores_from_hist(hist)
    iou0 = 8 / (10 + 9 - 8)
    iou1 = 3 / (4 + 5 - 3)
    assert s["mIoU"] == pytest.approx((iou0 + iou1) / 2)
    assert s["class_iou"][2] is None
    assert s["pixel_acc"] == pytest.approx(11 / 14)


def test_class_only_in_prediction_is_not_averaged():
    gt = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 2], [1, 1]])
    s = metrics.evaluate([(gt, pred)], 3)
    assert s["class_iou"][2] == 0.0
    assert s["mIoU"] == pytest.approx((0.5 + 1.0) / 2)


def test_ignore_label_is_skipped():
    gt = np.array([[0, 255], [1, 255]])
    pred = np.array([[0, 1], [1, 0]])
    s = metrics.evaluate([(gt, pred)], 2)
    assert s["mIoU"] == 1.0 and s["n_pixels"] == 2


def test_accumulates_over_images_not_mean_of_images():
    a = (np.zeros((1, 4), int), np.zeros((1, 4), int))
    b = (np.ones((1, 1), int), np.zeros((1, 1), int))
    s = metrics.evaluate([a, b], 2)
    assert s["class_iou"][0] == pytest.approx(4 / 5) and s["class_iou"][1] == 0.0


def test_bg_power_sweep_is_labelled_oracle_and_first_wins_ties():
    r = metrics.bg_power_sweep({1: {"mIoU": 0.5}, 2: {"mIoU": 0.5}})
    assert r["chosen_power"] == 1 and r["chosen_is_oracle"]
    r = metrics.bg_power_sweep({1: {"mIoU": 0.4}, 2: {"mIoU": 0.5}})
    assert r["chosen_power"] == 2


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        metrics.ConfusionMatrix(2).update(np.zeros(3), np.zeros(4))


def test_confusion_matrix_and_derived_scores_against_counting_by_hand():
    """Every score from the saved matrix equals the same quantity counted pixel by pixel."""
    rng = np.random.default_rng(7)
    n = 4
    gt = rng.integers(0, n, (3, 20, 30))
    gt[0, :2] = 255  # ignored
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, n, gt.shape))
    pred[gt == 255] = 1
    gt[gt == 3] = 1  # class 3 only ever predicted: no IoU average over it
    res = metrics.evaluate(zip(gt, pred), n)
    conf = np.asarray(res["confusion"])
    valid = gt != 255
    for g in range(n):
        for p in range(n):
            assert conf[g, p] == np.sum((gt == g) & (pred == p) & valid)
    present = []
    for c in range(n):
        tp = np.sum((gt == c) & (pred == c) & valid)
        fp = np.sum((gt != c) & (pred == c) & valid)
        fn = np.sum((gt == c) & (pred != c) & valid)
        union = tp + fp + fn
        assert res["class_iou"][c] == pytest.approx(tp / union)
        assert res["class_precision"][c] == pytest.approx(tp / (tp + fp))
        assert res["class_fp_ratio"][c] == pytest.approx(fp / union)
        assert res["class_fn_ratio"][c] == pytest.approx(fn / union)
        assert res["class_iou"][c] + res["class_fp_ratio"][c] + res["class_fn_ratio"][c] == pytest.approx(1)
        if np.sum((gt == c) & valid):
            assert res["class_recall"][c] == pytest.approx(tp / (tp + fn))
            present.append(c)
        else:
            assert res["class_recall"][c] is None
    assert present == [0, 1, 2]
    assert res["mIoU"] == pytest.approx(np.mean([res["class_iou"][c] for c in present]))
    assert res["mean_precision"] == pytest.approx(np.mean([res["class_precision"][c] for c in present]))
    assert res["fn_ratio"] == pytest.approx(np.mean([res["class_fn_ratio"][c] for c in present]))


def test_json_files_are_strict_json(tmp_path):
    """NaN and infinities are written as null: a strict parser reads every file."""
    import json

    from clipes import io

    io.write_json(tmp_path / "a.json", {"m": float("nan"), "v": [np.float32("inf"), 1.5],
                                        "n": {"x": np.float64("nan")}, "ok": np.int64(3)})

    def refuse(c):
        raise ValueError(c)

    got = json.loads((tmp_path / "a.json").read_text(), parse_constant=refuse)
    assert got == {"m": None, "v": [None, 1.5], "n": {"x": None}, "ok": 3}
