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
