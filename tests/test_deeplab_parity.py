"""segmentation.protocol 'deeplab-pytorch' against outputs of deeplab-pytorch's own code
(a golden set of the same layout: CLIPES_SEG_GOLDEN_DIR, default ../shared/reference_seg).
Block counts, image sizes and tolerances come from the set, so another set of the same
layout runs unchanged."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipes.segmentation import deeplab
from conftest import REPO

GOLDEN = Path(os.environ.get("CLIPES_SEG_GOLDEN_DIR", REPO.parent / "shared" / "reference_seg"))
pytestmark = pytest.mark.skipif(not (GOLDEN / "model_msc.pth").is_file(),
                                reason=f"segmentation golden set not found at {GOLDEN}")


def tol(name):
    return json.loads((GOLDEN / "tolerances.json").read_text())["tolerances"][name]


def arch():
    return json.loads((GOLDEN / "model.json").read_text())["architecture"]


@pytest.fixture(scope="module")
def model():
    a = arch()
    m = deeplab.MSC(deeplab.DeepLabV2Caffe(a["n_classes"], a["n_blocks"], a["atrous_rates"]),
                    a["msc_scales"])
    m.load_state_dict(torch.load(GOLDEN / "model_msc.pth", map_location="cpu", weights_only=True))
    return m.eval()


def ids():
    if not (GOLDEN / "images").is_dir():
        return []
    return sorted(p.stem for p in (GOLDEN / "images").glob("*.png"))


def close(mine, golden, t, what):
    mine, golden = np.asarray(mine, np.float64), np.asarray(golden, np.float64)
    assert mine.shape == golden.shape, (what, mine.shape, golden.shape)
    diff = np.abs(mine - golden).max()
    rel = np.linalg.norm(mine - golden) / max(np.linalg.norm(golden), 1e-30)
    assert diff <= t["max_abs"] and rel <= t["rel_l2"], (what, diff, rel)


def rgb(iid):
    return np.asarray(Image.open(GOLDEN / "images" / f"{iid}.png").convert("RGB"))


@pytest.mark.parametrize("iid", ids())
def test_preprocessing_is_bit_identical(iid):
    mine = deeplab.preprocess(rgb(iid)).numpy()
    assert np.array_equal(mine, np.load(GOLDEN / "preprocessed" / f"{iid}.npy"))
    assert np.array_equal(deeplab.crf_image(mine), np.load(GOLDEN / "eval" / f"{iid}_crf_image.npy"))


@pytest.mark.parametrize("iid", ids())
def test_eval_logits_base_pyramid_and_msc(model, iid):
    x = torch.from_numpy(np.load(GOLDEN / "preprocessed" / f"{iid}.npy"))[None]
    g = np.load(GOLDEN / "eval" / f"{iid}.npz")
    with torch.no_grad():
        base = model.base(x)
        close(base, g["logits_base"], tol("eval.logits_base"), "base")
        for s, key in zip(model.scales, ("logits_s050", "logits_s075")):
            xs = torch.nn.functional.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            close(model.base(xs), g[key], tol(f"eval.{key}"), key)
        close(model(x), g["logits_msc"], tol("eval.logits_msc"), "msc")
    assert tuple(g["logits_base"].shape[-2:]) == deeplab.output_size(*x.shape[-2:])


def margin(logits_msc, hw):
    up = torch.nn.functional.interpolate(torch.from_numpy(logits_msc), size=hw, mode="bilinear",
                                         align_corners=False)[0]
    top = up.topk(2, dim=0).values
    return (top[0] - top[1]).numpy()


@pytest.mark.parametrize("iid", ids())
def test_test_prediction_and_crf_labels(model, iid):
    image = rgb(iid)
    pred = deeplab.predict_mask(model, image)
    golden = np.asarray(Image.open(GOLDEN / "eval" / f"{iid}_pred.png"))
    t = tol("eval.pred")
    differ = pred != golden
    g = np.load(GOLDEN / "eval" / f"{iid}.npz")
    assert differ.sum() <= t["max_pixels"]
    assert (margin(g["logits_msc"], golden.shape)[differ] < t["only_where_margin_below"]).all()
    crf = deeplab.predict_mask(model, image, use_crf=True)
    golden_crf = np.asarray(Image.open(GOLDEN / "eval" / f"{iid}_crf.png"))
    tc = tol("eval.crf")
    allowed = max(tc["min_allowed_pixels"], tc["max_fraction"] * golden_crf.size)
    assert (crf != golden_crf).sum() <= allowed


@pytest.fixture(scope="module")
def train_step():
    a = arch()
    m = deeplab.MSC(deeplab.DeepLabV2Caffe(a["n_classes"], a["n_blocks"], a["atrous_rates"]),
                    a["msc_scales"])
    before = torch.load(GOLDEN / "model_msc.pth", map_location="cpu", weights_only=True)
    m.load_state_dict(before)
    step = json.loads((GOLDEN / "train" / "step.json").read_text())
    hp = step["hyperparameters"]
    opt = torch.optim.SGD(deeplab.param_groups(m, hp["lr"], hp["weight_decay"]), lr=hp["lr"],
                          momentum=0.9)
    m.train()
    m.base.freeze_bn()
    images = torch.from_numpy(np.load(GOLDEN / "train" / "images.npy"))
    labels = torch.from_numpy(np.stack([
        np.asarray(Image.open(GOLDEN / "train" / f"label_{k}.png")) for k in range(len(images))
    ]).astype(np.int64))
    opt.zero_grad()
    outputs = m(images)
    loss, terms = deeplab.msc_loss(outputs, labels)
    terms = [t.detach() for t in terms]
    loss.backward()
    opt.step()
    with torch.no_grad():
        after_loss, after_terms = deeplab.msc_loss(m(images), labels)
    return {"model": m, "before": before, "step": step, "outputs": outputs, "labels": labels,
            "loss": loss, "terms": terms, "after_loss": after_loss, "after_terms": after_terms,
            "opt": opt}


def test_training_outputs_labels_and_losses(train_step):
    g = np.load(GOLDEN / "train" / "outputs.npz")
    names = ("base", "s050", "s075", "max")
    for name, out in zip(names, train_step["outputs"]):  # (B, C, h, w) each
        close(out.detach(), g[f"logits_{name}"], tol(f"train.logits_{name}"), name)
        lab = deeplab.resize_labels(train_step["labels"], out.shape[-2:])
        assert np.array_equal(lab.numpy(), g[f"labels_{name}"]), name
    step = train_step["step"]
    before = list(step["loss_terms_before"].values())
    assert np.allclose([float(t) for t in train_step["terms"]], before,
                       atol=_abs(tol("train.loss_terms")), rtol=0)
    assert abs(float(train_step["loss"].detach()) - step["loss_before"]) <= _abs(tol("train.loss"))
    after = list(step["loss_terms_after"].values())
    assert np.allclose([float(t) for t in train_step["after_terms"]], after,
                       atol=_abs(tol("train.loss_terms_after")), rtol=0)
    assert abs(float(train_step["after_loss"]) - step["loss_after"]) <= _abs(tol("train.loss_after"))


def _abs(t):
    return t.get("max_abs", t.get("abs"))


def test_parameters_after_one_sgd_step(train_step):
    m, before, step = train_step["model"], train_step["before"], train_step["step"]
    state = m.state_dict()
    g = np.load(GOLDEN / "train" / "after_step.npz")
    for name in g.files:
        upd_mine = (state[name] - before[name]).numpy().astype(np.float64)
        upd_gold = g[name].astype(np.float64) - before[name].numpy().astype(np.float64)
        key = "train.param_update.head" if "aspp" in name else "train.param_update.backbone"
        rel = np.linalg.norm(upd_mine - upd_gold) / np.linalg.norm(upd_gold)
        assert rel <= tol(key)["rel_l2"], (name, rel)
        assert np.abs(state[name].numpy() - g[name]).max() <= _abs(tol("train.param_after"))
    for name, p in step["params"].items():
        t = state[name].double()
        assert abs(float(t.sum()) - p["after"]["sum"]) <= _abs(tol("train.param_sum_after")), name
        assert abs(float(t.abs().sum()) - p["after"]["abs_sum"]) <= _abs(tol("train.param_abs_sum_after")), name
    # groups as deeplab-pytorch's get_params; BN parameters in none
    names = {id(p): n for n, p in m.named_parameters()}
    groups = [[names[id(p)] for p in g["params"]] for g in train_step["opt"].param_groups]
    for mine, gold in zip(groups, step["hyperparameters"]["groups"]):
        assert sorted(mine) == sorted(gold["params"])
    for name in step["hyperparameters"]["not_in_any_group"]:
        assert torch.equal(state[name], before[name])
    # exactly-zero gradients: the update is the weight decay alone, bit for bit
    for name, z in step["zero_gradient_slices"].items():
        w0, w1 = before[name], state[name]
        lr, wd = np.float32(z["lr"]), np.float32(z["weight_decay"])
        expect = w0 + (-lr) * (w0 * wd)
        sel = [slice(None)] * w0.ndim
        for dim, key in ((0, "out_channels"), (1, "in_channels")):
            if z[key]:
                s = list(sel)
                s[dim] = z[key]
                assert torch.allclose(w1[tuple(s)], expect[tuple(s)], rtol=1.2e-7, atol=0), name


def test_poly_lr_at_the_listed_iterations():
    step = json.loads((GOLDEN / "train" / "step.json").read_text())
    hp = step["hyperparameters"]
    poly = hp["poly"]
    m = deeplab.MSC(deeplab.DeepLabV2Caffe(21, (1, 1, 1, 1)))
    opt = torch.optim.SGD(deeplab.param_groups(m, hp["lr"], hp["weight_decay"]), lr=hp["lr"], momentum=0.9)
    want = {int(k): v for k, v in step["lr_after_scheduler_step"].items()}
    for k in range(0, max(want) + 1):
        deeplab.poly_lr_step(opt, k, poly["iter_max"], poly["power"], poly["step_size"])
        if k in want:
            got = [g["lr"] for g in opt.param_groups]
            assert np.allclose(got, [want[k][n] for n in ("1x", "10x", "20x")], rtol=1e-12, atol=0), k


def test_coco_format_init_gives_the_same_backbone(model, tmp_path):
    a = arch()
    fresh = deeplab.MSC(deeplab.DeepLabV2Caffe(a["n_classes"], a["n_blocks"]))
    logs = []
    fmt = deeplab.load_init(fresh, GOLDEN / "init_coco_format.pth", log=logs.append)
    assert "converted init" in fmt and "converted init" in logs[0]
    mine, gold = fresh.base.state_dict(), model.base.state_dict()
    for k in gold:
        if k.startswith("layer"):
            assert torch.equal(mine[k], gold[k].to(mine[k].dtype)), k
    # a deeplab-pytorch checkpoint (base.*) loads too, head included
    fmt = deeplab.load_init(fresh, GOLDEN / "model_msc.pth", log=logs.append)
    assert fmt.startswith("deeplab-pytorch checkpoint")
    assert torch.equal(fresh.base.aspp.c0.weight, model.base.aspp.c0.weight)


def test_init_errors_name_the_file_and_format(tmp_path):
    a = arch()
    blocks = list(a["n_blocks"])
    blocks[2] += 1  # one res4 block more than the file holds
    deep = deeplab.MSC(deeplab.DeepLabV2Caffe(a["n_classes"], blocks))
    with pytest.raises(deeplab.InitError) as e:
        deeplab.load_init(deep, GOLDEN / "init_coco_format.pth")
    assert "init_coco_format.pth" in str(e.value) and "converted init" in str(e.value)
    assert f"layer4.block{blocks[2]}" in str(e.value)
    bad = tmp_path / "weird.pth"
    torch.save({"foo.weight": torch.zeros(2)}, bad)
    with pytest.raises(deeplab.InitError) as e:
        deeplab.load_init(deep, bad)
    assert "unknown init format" in str(e.value) and "weird.pth" in str(e.value)


def test_torchvision_resnet_state_dicts_map_key_for_key():
    import torchvision

    tv = torchvision.models.resnet50(weights=None).state_dict()
    net = deeplab.MSC(deeplab.DeepLabV2Caffe(21, deeplab.BLOCKS["resnet50"]))
    mapped = deeplab._torchvision_to_deeplab(tv)
    want = {k for k in net.base.state_dict() if k.startswith("layer")}
    assert set(mapped) == want
    for k in want:
        assert tuple(mapped[k].shape) == tuple(net.base.state_dict()[k].shape), k
