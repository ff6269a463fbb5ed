"""Segmentation stage: CGL, soft weighting, exact resume, odd sizes, evaluation."""

import numpy as np
import pytest
import torch
from PIL import Image

from clipes import metrics, segmentation as seg


def test_ignored_pixels_have_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (1, 4, 4))
    labels[0, :2] = 255  # top half ignored
    seg.cgl_loss(logits, labels).backward()
    assert torch.count_nonzero(logits.grad[0, :, :2]) == 0
    assert torch.count_nonzero(logits.grad[0, :, 2:]) > 0


def test_all_ignored_gives_no_signal_only_valid_pixels_count():
    logits = torch.randn(1, 2, 2, 2)
    labels = torch.tensor([[[0, 255], [255, 1]]])
    want = torch.nn.functional.cross_entropy(
        logits.permute(0, 2, 3, 1).reshape(-1, 2)[[0, 3]], torch.tensor([0, 1]))
    torch.testing.assert_close(seg.cgl_loss(logits, labels), want)


def test_soft_variant_weights_pixels_by_confidence():
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 1, 2)
    labels = torch.tensor([[[0, 2]]])
    per_px = torch.nn.functional.cross_entropy(logits, labels, reduction="none")[0, 0]
    w = torch.tensor([[[1.0, 0.25]]])
    want = (per_px[0] * 1.0 + per_px[1] * 0.25) / 1.25
    torch.testing.assert_close(seg.cgl_loss(logits, labels, w), want)
    zero = torch.tensor([[[1.0, 0.0]]])
    torch.testing.assert_close(seg.cgl_loss(logits, labels, zero), per_px[0])


@pytest.mark.parametrize("hw", [(37, 53), (64, 41), (17, 17)])
def test_model_accepts_odd_sizes(hw):
    model = seg.DeepLabV2(5, "tiny").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape[:2] == (2, 5) and out.shape[2] == -(-hw[0] // 8)
    rgb = np.random.default_rng(0).integers(0, 255, (*hw, 3), dtype=np.uint8)
    mask = seg.predict_mask(model, rgb, scales=(0.75, 1.0), flip=True)
    assert mask.shape == hw and mask.max() < 5


def test_resnet101_deeplabv2_structure():
    model = seg.DeepLabV2(21, "resnet101")
    assert [b.dilation[0] for b in model.head.branches] == [6, 12, 18, 24]
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 65, 65))
    assert out.shape == (1, 21, 9, 9)  # output stride 8
    groups = model.param_groups(1e-3, 5e-4)
    assert groups[1]["lr"] == pytest.approx(10 * groups[0]["lr"])


def _data(tmp_path, n=4, hw=(40, 52)):
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        img = rng.integers(0, 255, (*hw, 3), dtype=np.uint8)
        lab = np.zeros(hw, np.uint8)
        lab[10:30, 10:40] = 1 + i % 2
        lab[:3] = 255
        Image.fromarray(img).save(tmp_path / f"i{i}.png")
        Image.fromarray(lab).save(tmp_path / f"l{i}.png")
        items.append(seg.TrainItem(tmp_path / f"i{i}.png", tmp_path / f"l{i}.png"))
    return seg.TrainData(items)


def _cfg(**kw):
    base = dict(n_classes=3, backbone="tiny", init=None, iterations=6, batch_size=2, crop=32,
                lr=0.01, checkpoint_every=2, seed=5, device="cpu")
    base.update(kw)
    return seg.TrainConfig(**base)


def test_resume_after_interruption_gives_the_same_weights(tmp_path):
    data = _data(tmp_path)
    whole = seg.train(_cfg(), data, tmp_path / "whole", log=lambda m: None)
    seg.train(_cfg(), data, tmp_path / "cut", log=lambda m: None, stop_after=3)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    assert not (tmp_path / "cut" / "model.pt").exists()
    resumed = seg.train(_cfg(), data, tmp_path / "cut", log=lambda m: None)
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    log = (tmp_path / "cut" / "train_log.csv").read_text().splitlines()
    assert len(log) == 7 and log[-1].startswith("6,")
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()
    again = seg.load_trained(tmp_path / "cut" / "model.pt")
    assert again.head.branches[0].weight.shape[0] == 3


def test_poly_schedule():
    assert seg.poly_lr(1.0, 0, 100, 0.9) == 1.0
    assert seg.poly_lr(1.0, 50, 100, 0.9) == pytest.approx(0.5 ** 0.9)


def test_evaluation_on_known_masks(tmp_path):
    from clipes.datasets import Sample

    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 255]], np.uint8)
    Image.fromarray(gt).save(tmp_path / "gt.png")
    Image.fromarray(pred).save(tmp_path / "a.png")
    s = Sample("a", tmp_path / "x.jpg", (0,), (2, 4), tmp_path / "gt.png")
    res = metrics.evaluate_mask_dir([s], tmp_path, 2)
    # pixel (1, 3) predicted 255 is left out: bg TP 3, FN 1; class 1 TP 3, FP 1
    assert res["class_iou"][0] == pytest.approx(3 / 4)
    assert res["class_iou"][1] == pytest.approx(3 / 4)
    assert res["mIoU"] == pytest.approx(3 / 4) and res["pixel_acc"] == pytest.approx(6 / 7)
    assert res["coverage"] == pytest.approx(7 / 8)
