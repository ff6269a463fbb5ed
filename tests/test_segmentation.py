"""Segmentation stage: CGL, soft weighting, exact resume, odd sizes, evaluation."""

import json

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


@pytest.mark.faults
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


# ----------------------------------------------------------------- deeplab-pytorch protocol
def _dl_cfg(**kw):
    return _cfg(protocol="deeplab-pytorch", blocks=(1, 1, 1, 1), iter_size=2, crop=40,
                lr=2.5e-4, **kw)


def test_deeplab_protocol_resume_gives_the_same_weights_and_log(tmp_path):
    """Under the deeplab-pytorch protocol (MSC, iter_size sub-batches, poly every 10) and
    the DataLoader workers, an interrupted run resumes to the uninterrupted one."""
    data = _data(tmp_path)
    whole = seg.train(_dl_cfg(workers=2), data, tmp_path / "whole", log=lambda m: None)
    seg.train(_dl_cfg(workers=0), data, tmp_path / "cut", log=lambda m: None, stop_after=3)
    resumed = seg.train(_dl_cfg(workers=1), data, tmp_path / "cut", log=lambda m: None)
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    drop = lambda text: [ln.rsplit(",", 1)[0] for ln in text.splitlines()]  # noqa: E731 (timing)
    assert drop((tmp_path / "cut" / "train_log.csv").read_text()) == \
        drop((tmp_path / "whole" / "train_log.csv").read_text())
    model = seg.load_trained(tmp_path / "cut" / "model.pt")
    assert model.protocol == "deeplab-pytorch"
    info = json.loads((tmp_path / "cut" / "train_info.json").read_text())
    assert info == {"protocol": "deeplab-pytorch", "init": "random", "paper_init": False}
    mask = seg.predict_for_protocol(model, np.zeros((37, 45, 3), np.uint8), "msc-max")
    assert mask.shape == (37, 45)
    mask = seg.predict_for_protocol(model, np.zeros((37, 45, 3), np.uint8), "mean-softmax-flip",
                                    scales=(1.0, 0.5))
    assert mask.shape == (37, 45)


def test_msc_loss_ignores_255_pixels():
    from clipes.segmentation import deeplab

    torch.manual_seed(0)
    model = deeplab.MSC(deeplab.DeepLabV2Caffe(3, (1, 1, 1, 1))).train()
    model.base.freeze_bn()
    x = torch.randn(1, 3, 33, 33, requires_grad=True)
    y = torch.full((1, 33, 33), 255, dtype=torch.long)
    y[0, :, :16] = 1
    loss, _ = deeplab.msc_loss(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    # changing the labels of ignored pixels changes nothing
    y2 = y.clone()
    y2[0, :, 17:] = 255
    loss2, _ = deeplab.msc_loss(model(x), y2)
    assert torch.allclose(loss, loss2)


def test_class_balanced_weights_are_median_frequency():
    from clipes.segmentation import deeplab

    w = deeplab.class_balanced_weights(np.array([80.0, 10.0, 10.0, 0.0]))
    assert w.tolist() == pytest.approx([10 / 80, 1.0, 1.0, 1.0])


def test_deeplab_augment_is_a_pure_function(tmp_path):
    data = _data(tmp_path)
    a = data.batch_deeplab(3, 7, 1, 2, 40, (0.5, 1.0, 1.5))
    b = data.batch_deeplab(3, 7, 1, 2, 40, (0.5, 1.0, 1.5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (2, 3, 40, 40) and a[1].shape == (2, 40, 40)
    # padding: the mean becomes (almost) 0, the label 255
    c = data.batch_deeplab(3, 8, 0, 1, 200, (0.5,))
    assert (c[1][0, -1] == 255).all() and c[0][0, :, -1].abs().max() < 1e-4


def test_resize_bilinear_matches_torch_half_pixel_bilinear():
    import torch.nn.functional as F

    a = np.random.default_rng(0).random((37, 53, 3)).astype(np.float32)
    for nh, nw in ((18, 26), (46, 66), (37, 53)):
        ref = F.interpolate(torch.from_numpy(a).permute(2, 0, 1)[None], size=(nh, nw),
                            mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        assert np.abs(seg.resize_bilinear(a, nh, nw) - ref).max() < 1e-5


def _one_line(proc, *words):
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in errors[0], errors[0]


@pytest.mark.faults
def test_bad_segmentation_inputs_get_one_line_errors(golden, tmp_path):
    import shutil

    from conftest import run_script

    voc = golden / "voc"
    split = voc / "ImageSets/Segmentation/train.txt"
    data = ["--dataset", "voc12", "--root", voc, "--split", split]
    masks = tmp_path / "masks"
    masks.mkdir()
    for p in sorted((voc / "SegmentationClassAug").glob("*.png"))[:3]:
        shutil.copy(p, masks / p.name)
    tiny = ["--backbone", "tiny", "--iterations", "1", "--batch-size", "1", "--crop", "32",
            "--device", "cpu", "--workers", "0", "--init", "none"]
    p = run_script("train_seg", *data, "--masks", masks, "--out", tmp_path / "o", *tiny, check=False)
    _one_line(p, "7 of the 10 training images have no pseudo mask", str(masks))
    for q in (voc / "SegmentationClassAug").glob("*.png"):
        shutil.copy(q, masks / q.name)
    weird = tmp_path / "weird.pth"
    torch.save({"foo.weight": torch.zeros(2)}, weird)
    tiny[-1] = str(weird)
    p = run_script("train_seg", *data, "--masks", masks, "--out", tmp_path / "o", *tiny,
                   "--protocol", "deeplab-pytorch", check=False)
    _one_line(p, "weird.pth", "unknown init format")
    # a model trained for another class count
    seg.train(_cfg(iterations=1), _data(tmp_path), tmp_path / "three", log=lambda m: None)
    p = run_script("predict_seg", *data, "--model", tmp_path / "three" / "model.pt",
                   "--out", tmp_path / "pred", "--device", "cpu", check=False)
    _one_line(p, "model.pt", "3 classes", "21")


@pytest.mark.faults
def test_a_checkpoint_of_another_config_is_not_resumed(tmp_path):
    """Interrupted at iteration 3 of 6, then rerun with 4 iterations: the old checkpoint is
    set aside (another config), the run starts afresh and equals a clean 4-iteration run."""
    data = _data(tmp_path)
    seg.train(_cfg(), data, tmp_path / "cut", log=lambda m: None, stop_after=3)
    logs = []
    again = seg.train(_cfg(iterations=4), data, tmp_path / "cut", log=logs.append)
    clean = seg.train(_cfg(iterations=4), data, tmp_path / "clean", log=lambda m: None)
    assert any("starting afresh" in m for m in logs)
    for (k, a), (_, b) in zip(again.state_dict().items(), clean.state_dict().items()):
        assert torch.equal(a, b), k
    assert len((tmp_path / "cut" / "train_log.csv").read_text().splitlines()) == 5


def test_own_checkpoint_initialises_a_deeplab_protocol_training(tmp_path):
    from clipes.segmentation import deeplab

    data = _data(tmp_path)
    seg.train(_dl_cfg(iterations=1, workers=0), data, tmp_path / "first", log=lambda m: None)
    net = deeplab.MSC(deeplab.DeepLabV2Caffe(3, (1, 1, 1, 1)))
    fmt = deeplab.load_init(net, tmp_path / "first" / "model.pt", log=lambda m: None)
    assert fmt.startswith("clipes checkpoint")
    trained = seg.load_trained(tmp_path / "first" / "model.pt")
    assert torch.equal(net.base.layer5.block1.reduce.conv.weight,
                       trained.base.layer5.block1.reduce.conv.weight)
