"""Model loading, any input size, and the two Grad-CAM modes agreeing."""

import numpy as np
import pytest
import torch

from clipes import cam, model, text


def test_resize_pos_embed_identity_and_rounding():
    torch.manual_seed(0)
    table = torch.randn(1 + 4 * 4, 8)
    same = model.resize_pos_embed(table, (4, 4), (4, 4), round_fp16=False)
    torch.testing.assert_close(same, table)
    up = model.resize_pos_embed(table, (4, 4), (6, 3), round_fp16=True)
    assert up.shape == (1 + 18, 8)
    torch.testing.assert_close(up[0], table[0].half().float())  # CLS row unchanged (but rounded)
    assert torch.equal(up, up.half().float())


def test_missing_checkpoint_says_how_to_supply_weights(tmp_path):
    with pytest.raises(model.ClipLoadError, match="--checkpoint|checkpoint unset"):
        model.load_clip(checkpoint=tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(model.ClipLoadError, match="OpenAI-format"):
        model.load_clip(checkpoint=bad)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(model.ClipLoadError, match="list_pretrained"):
        model.load_clip("ViT-Nope-99", pretrained=None)


def test_tiny_checkpoint_loads_frozen_with_quickgelu(tiny_clip):
    assert all(not p.requires_grad for p in tiny_clip.model.parameters())
    assert float(tiny_clip.logit_scale.exp()) == pytest.approx(100.02986, abs=1e-4)
    assert len(model.VisionTower(tiny_clip).blocks) == 12


def _engine(clip, mode, **kw):
    specs = text.dataset_classes("voc12")
    fg, bg = text.dataset_text_features(clip, specs, text.VOC12_BACKGROUND)
    return cam.CamEngine(clip, fg, bg, cam.CamConfig(mode=mode, dump=True, **kw))


@pytest.mark.parametrize("hw", [(37, 53), (64, 304), (16, 16)])
def test_any_input_size_and_modes_agree(tiny_clip, hw):
    torch.manual_seed(1)
    size = cam.input_size(hw)
    images = [torch.randn(3, *size) for _ in range(3)]
    keys = [np.array([3, 1]), np.array([0]), np.array([5, 2, 9])]
    ref = _engine(tiny_clip, "reference").run(images, keys, [hw] * 3)
    bat = _engine(tiny_clip, "batched", batch_size=3).run(images, keys, [hw] * 3)
    for r, b, k in zip(ref, bat, keys):
        assert r.cams.shape == (len(k), *hw)
        np.testing.assert_array_equal(r.keys, k)
        np.testing.assert_allclose(r.cams, b.cams, atol=1e-4)
        np.testing.assert_array_equal(r.extras["box_mask"], b.extras["box_mask"])
        np.testing.assert_allclose(r.extras["grayscale_cam"], b.extras["grayscale_cam"], atol=2e-4)


def test_ablation_switches_change_the_maps(tiny_clip):
    torch.manual_seed(2)
    hw = (48, 64)
    images = [torch.randn(3, *hw)]
    keys = [np.array([4, 7])]
    base = _engine(tiny_clip, "batched").run(images, keys, [hw])[0]
    no_caa = _engine(tiny_clip, "batched", use_caa=False).run(images, keys, [hw])[0]
    np.testing.assert_allclose(no_caa.cams[:, ::16, ::16].shape, base.cams[:, ::16, ::16].shape)
    assert "box_mask" not in no_caa.extras
    assert not np.allclose(base.cams, no_caa.cams)
    no_bg = _engine(tiny_clip, "batched", use_background=False).run(images, keys, [hw])[0]
    assert no_bg.extras["probs"].shape == (2,)
    no_sm = _engine(tiny_clip, "reference", use_softmax=False).run(images, keys, [hw])[0]
    assert not np.allclose(no_sm.extras["grayscale_cam"], base.extras["grayscale_cam"])


def test_gradcam_normalisation_twice_with_absolute_eps():
    acts = torch.tensor([[[1.0], [2.0], [3.0]]])  # (1, P=3, C=1)
    grads = torch.ones(1, 3, 1)
    w, raw, c = cam.gradcam_from_grads(acts, grads)
    torch.testing.assert_close(w, torch.tensor([[1.0]]))
    once = (raw - raw.min()) / (1e-7 + (raw - raw.min()).max())
    twice = (once - once.min()) / (1e-7 + (once - once.min()).max())
    torch.testing.assert_close(c, twice)
    assert c.max() < 1.0  # 0.9999999..., not 1
    _, _, zero = cam.gradcam_from_grads(acts, -grads)
    assert torch.count_nonzero(zero) == 0  # all <= 0 gives all zeros


@pytest.mark.parametrize("dtype,bound,scope", [("fp16", 2e-3, "all"), ("bf16", 2e-2, "all"),
                                               ("fp16", 2e-3, "trunk")])
def test_mixed_precision_cams_follow_fp32(golden, tiny_clip, dtype, bound, scope):
    """Batched autocast (on the CPU here, as on CUDA) keeps the maps: the backward is
    loss-scaled. Unscaled, the fp16 gradients of these golden images' probabilities
    underflow, and the maps differ from fp32 by 0.09 on average, 0.95 at worst. With
    scope 'trunk' the last block runs in fp32 (through the hand-written backward)."""
    from PIL import Image

    from clipes import datasets

    ds = datasets.load_voc12(golden / "voc", golden / "voc/ImageSets/Segmentation/train.txt")
    samples = ds.samples[:2]
    images = [cam.preprocess(Image.open(s.image).convert("RGB"), cam.input_size(s.orig_hw))
              for s in samples]
    fp32 = _engine(tiny_clip, "batched")
    amp = _engine(tiny_clip, "batched", autocast=dtype, autocast_scope=scope)
    for im, s in zip(images, samples):
        args = ([im], [np.array(s.keys)], [s.orig_hw])
        full = fp32.run(*args)[0]
        mixed = amp.run(*args)[0]
        gray = np.abs(full.extras["grayscale_cam"] - mixed.extras["grayscale_cam"])
        assert gray.mean() < bound / 2 and gray.max() < bound * 10, (s.id, gray.mean(), gray.max())
        assert np.abs(full.cams - mixed.cams).mean() < bound / 4, s.id
    with pytest.raises(ValueError, match="batched"):
        _engine(tiny_clip, "reference", autocast=dtype)


def _small_clip(quick_gelu: bool):
    import open_clip

    from clipes.model import Clip, _freeze

    torch.manual_seed(0)
    net = open_clip.CLIP(32, open_clip.CLIPVisionCfg(layers=3, width=64, patch_size=8, image_size=32,
                                                     head_width=32),
                         open_clip.CLIPTextCfg(context_length=16, width=32, heads=1, layers=1),
                         quick_gelu=quick_gelu)
    return Clip(_freeze(net), None, "small")


@pytest.mark.parametrize("which", ["tiny-checkpoint", "gelu", "quickgelu"])
def test_fast_gradcam_backward_equals_autograd(tiny_clip, which):
    from clipes import fastgrad

    clip = tiny_clip if which == "tiny-checkpoint" else _small_clip(which == "quickgelu")
    tw = model.VisionTower(clip)
    blk = tw.blocks[-1]
    assert fastgrad.supported(blk)
    torch.manual_seed(3)
    x, _ = tw.trunk(tw.embed(torch.randn(2, 3, 48, 80)), 99)
    a = tw.last_block_input_norm(x)
    with torch.enable_grad():
        out, w = tw.last_block(x, a)
        f = tw.pool_patches(out)
    dfeat = torch.randn(3, 2, f.shape[1])
    want = torch.stack([torch.autograd.grad(f, a, grad_outputs=dfeat[k], retain_graph=True)[0][:, 1:].mean(1)
                        for k in range(3)])
    y, w_fast, cache = fastgrad.last_block_forward(blk, x, a.detach())
    torch.testing.assert_close(y, out.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w_fast, w.detach(), atol=1e-6, rtol=1e-5)
    got = fastgrad.gradcam_weights(blk, tw.v.ln_post, tw.v.proj, y, cache, dfeat)
    torch.testing.assert_close(got, want, atol=1e-6 * want.abs().max().item(), rtol=1e-4)


def test_batched_with_and_without_fast_backward_agree(tiny_clip):
    torch.manual_seed(4)
    hw = (40, 72)
    images = [torch.randn(3, *cam.input_size(hw)) for _ in range(2)]
    keys = [np.array([1, 6]), np.array([2])]
    fast = _engine(tiny_clip, "batched", batch_size=2).run(images, keys, [hw] * 2)
    slow = _engine(tiny_clip, "batched", batch_size=2, fast_grad=False).run(images, keys, [hw] * 2)
    for f, s in zip(fast, slow):
        np.testing.assert_allclose(f.extras["gradcam_weights"], s.extras["gradcam_weights"],
                                   atol=1e-7 + 1e-5 * np.abs(s.extras["gradcam_weights"]).max())
        np.testing.assert_allclose(f.cams, s.cams, atol=1e-4)


@pytest.mark.parametrize("mode", ["reference", "batched"])
def test_loaders_and_layouts_give_the_same_maps(tiny_clip, tmp_path, mode):
    """Loader workers change no byte of the archives; the full layout, plain archives and
    the grid layout read to the same float16 maps (refined and plain), which are the
    engine's maps at the image size."""
    from PIL import Image

    from clipes import camstore
    from clipes.datasets import Sample

    rng = np.random.default_rng(0)
    samples = []
    for i, hw in enumerate([(40, 56), (40, 56), (33, 47), (40, 56), (64, 48)]):
        p = tmp_path / f"i{i}.png"
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(p)
        samples.append(Sample(f"i{i}", p, (i % 3, (i + 1) % 3)[: 1 + i % 2], hw, None, i))
    engine = _engine(tiny_clip, mode, batch_size=2)
    engine.cfg.dump, engine.cfg.keep_plain = False, True
    serial = cam.run_dataset(engine, samples, tmp_path / "serial", loaders=0, progress=False)
    piped = cam.run_dataset(engine, samples, tmp_path / "piped", loaders=2, progress=False)
    assert [r["id"] for r in serial] == [r["id"] for r in piped]
    for s in samples:
        a = (tmp_path / "serial" / f"{s.id}.npz").read_bytes()
        assert a == (tmp_path / "piped" / f"{s.id}.npz").read_bytes(), s.id
    cam.run_dataset(engine, samples, tmp_path / "full", store="full", progress=False)
    cam.run_dataset(engine, samples, tmp_path / "plain", compress=False, progress=False)
    direct = {s.id: r for s, r in zip(samples, engine.run(
        [cam.preprocess(Image.open(s.image), cam.input_size(s.orig_hw)) for s in samples],
        [np.asarray(s.keys) for s in samples], [s.orig_hw for s in samples]))} \
        if mode == "reference" else {}
    for s in samples:
        for key in ("cams", "cams_plain"):
            k1, c1 = camstore.load_cams(tmp_path / "serial" / f"{s.id}.npz", key)
            for other in ("full", "plain"):
                k2, c2 = camstore.load_cams(tmp_path / other / f"{s.id}.npz", key)
                assert np.array_equal(k1, k2) and c1.tobytes() == c2.tobytes(), (s.id, key, other)
            assert c1.dtype == np.float16 and c1.shape == (len(s.keys), *s.orig_hw)
            if direct:  # what the engine made, resized and rounded
                want = direct[s.id].cams if key == "cams" else direct[s.id].plain
                assert c1.tobytes() == want.astype(np.float16).tobytes()
    with np.load(tmp_path / "full" / f"{samples[0].id}.npz") as z:
        assert str(z["format"]) == camstore.FORMAT["full"] and z["cams"].dtype == np.float16


@pytest.mark.parametrize("stored", ["fp16", "fp32"])
def test_checkpoint_loading_skips_the_random_init_and_gets_the_same_weights(golden, tmp_path, stored):
    """No random init, and for an all-fp16 file (OpenAI's releases) no fp16 round trip of
    the weights: the same bits as open_clip's loader. An fp32 file is rounded to fp16 as
    open_clip (and the authors' code) round it."""
    import open_clip
    import torch

    from clipes.model import load_clip

    path = golden / "clip_tiny.pt"
    if stored == "fp32":  # values fp16 cannot hold
        g = torch.Generator().manual_seed(0)
        sd = {k: v.float() + 1e-4 * torch.randn(v.shape, generator=g) if v.is_floating_point()
              else v for k, v in torch.load(path).items()}
        torch.save(sd, path := tmp_path / "clip_tiny_fp32.pt")
    fast = load_clip(checkpoint=path).model.state_dict()
    slow = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").state_dict()
    assert fast.keys() == slow.keys()
    assert all(torch.equal(fast[k], slow[k]) and fast[k].dtype == slow[k].dtype for k in fast)
    assert torch.nn.init.normal_.__name__ == "normal_"  # the init functions are restored


def test_npz_checkpoint_builds_the_same_model_as_the_pt(tmp_path):
    # the demo ships its tiny CLIP as a compressed data-only .npz: loading it gives the
    # model the .pt gives, bit for bit; zeroed token rows keep the file small
    from clipes import pretrain

    net = pretrain.build_tiny_clip(pretrain.TinyClipConfig())
    state = pretrain.compact_state({k: v.detach().clone() for k, v in net.state_dict().items()},
                                   keep_tokens=range(300))
    assert not state["token_embedding.weight"][300:].any() and state["token_embedding.weight"][:300].any()
    torch.save(state, tmp_path / "c.pt")
    model.save_npz_state_dict(state, tmp_path / "c.npz")
    a = model.load_clip(checkpoint=tmp_path / "c.pt").model.state_dict()
    b = model.load_clip(checkpoint=tmp_path / "c.npz").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "c.npz").stat().st_size < (tmp_path / "c.pt").stat().st_size / 4
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:  # plain arrays, nothing else
        assert {str(z[k].dtype) for k in z.files} <= {"float16", "float32", "int64"}


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "CMYK"])
def test_preprocessing_keeps_the_reference_arithmetic(mode):
    """preprocess normalises through a table of the 256 levels: the same bits as the
    reference's operations (float32 / 255, then (x - mean) / std in torch), in every image
    mode; the resize is PIL's bicubic in the file's own mode."""
    import torch
    from PIL import Image

    rng = np.random.default_rng(1)
    arr = rng.permutation(np.repeat(np.arange(256, dtype=np.uint8), 3 * 40)).reshape(60, 128, 4)[..., :3]
    im = Image.fromarray(np.ascontiguousarray(arr)).convert(mode)
    for h, w in [(64, 128), (80, 160), (60, 128)]:
        rgb = np.asarray(im.resize((w, h), Image.BICUBIC).convert("RGB"), dtype=np.float32)
        x = torch.from_numpy(rgb / 255.0).permute(2, 0, 1)
        want = (x - torch.tensor(cam.CLIP_MEAN).view(3, 1, 1)) / torch.tensor(cam.CLIP_STD).view(3, 1, 1)
        got = cam.preprocess(im, (h, w))
        assert got.dtype == torch.float32 and got.shape == (3, h, w)
        assert torch.equal(got, want), (mode, h, w)


def test_torch_resize_stays_near_pil_and_reaches_the_archives(tiny_clip, tmp_path):
    """resize='torch' (a named option, not the reference): within a few levels of PIL's
    bicubic, and the CAM stage writes its archives with it."""
    from PIL import Image

    from clipes import camstore
    from clipes.datasets import Sample

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:75, 0:100]
    smooth = np.stack([128 + 90 * np.sin(xx / (7 + c) + yy / 11) for c in range(3)], -1)
    img = (smooth + rng.normal(0, 12, smooth.shape)).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    pil = cam.resize_rgb(im, (80, 112), "pil").astype(int)
    fast = cam.resize_rgb(im, (80, 112), "torch").astype(int)
    assert fast.shape == pil.shape == (80, 112, 3)
    diff = np.abs(fast - pil)
    assert diff.max() <= 3 and (diff > 0).mean() < 0.05, (diff.max(), (diff > 0).mean())
    assert np.array_equal(cam.resize_rgb(im, (75, 100), "torch"), img)  # same size: as is
    with pytest.raises(ValueError, match="resize must be one of"):
        cam.resize_rgb(im, (80, 112), "cv2")
    p = tmp_path / "a.png"
    im.save(p)
    s = Sample("a", p, (0, 2), (75, 100), None, 0)
    engine = _engine(tiny_clip, "batched", batch_size=1)
    cam.run_dataset(engine, [s], tmp_path / "pil", progress=False)
    cam.run_dataset(engine, [s], tmp_path / "torch", progress=False, resize="torch")
    k1, c1 = camstore.load_cams(tmp_path / "pil" / "a.npz")
    k2, c2 = camstore.load_cams(tmp_path / "torch" / "a.npz")
    assert np.array_equal(k1, k2) and c1.shape == c2.shape == (2, 75, 100)
