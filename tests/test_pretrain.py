"""The demo CLIP's training (clipes.pretrain): the auxiliary grouping loss on the vision
tower's attention, and the shaded world it is trained on (clipes.synthetic)."""

import numpy as np
import torch

from clipes import pretrain, synthetic


def test_appearance_target_links_patches_of_similar_colour():
    rgb = torch.zeros(1, 3, 24, 24)
    rgb[0, 0, :12, :] = 1.0  # top row of patches red, bottom row black
    rgb[0, :, 12:, 12:] = 0.02  # bottom-right patch almost black
    t = pretrain.appearance_target(rgb, patch=12, sigma=0.05)[0]  # (4, 4), patches in row order
    assert torch.allclose(t.sum(-1), torch.ones(4))
    assert torch.allclose(t[0, :2], torch.full((2,), 0.5), atol=1e-6)  # red links red only
    assert t[0, 2:].max() < 1e-6
    assert 0.1 < t[2, 3] < t[2, 2]  # near colours link, less than equal ones
    assert t[2, :2].max() < 1e-6


def test_attention_probe_gives_the_towers_own_attention_weights():
    """The probe recomputes each block's attention from its input; it must equal what
    nn.MultiheadAttention returns with need_weights (heads averaged), averaged over the
    blocks, without the CLS column, renormalised."""
    torch.manual_seed(0)
    net = pretrain.build_tiny_clip(pretrain.TinyClipConfig(vision_layers=3)).eval()
    probe = pretrain.AttentionProbe(net.visual)
    x = torch.randn(2, 3, 96, 96)
    weights = []

    def keep(block, args):
        y = block.ln_1(args[0])
        weights.append(block.attn(y, y, y, need_weights=True)[1])

    hooks = [b.register_forward_pre_hook(keep) for b in net.visual.transformer.resblocks]
    with torch.no_grad():
        net.encode_image(x)
        got = probe.pop()
    for h in hooks:
        h.remove()
    probe.remove()
    want = torch.stack(weights).mean(0)[:, 1:, 1:]
    want = want / want.sum(-1, keepdim=True)
    assert got.shape == (2, 64, 64)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert probe.inputs == []


def test_grouping_loss_scopes_constrain_the_blocks_they_name():
    """Each scope's loss is the cross-entropy of the maps it names, computed here from the
    blocks' own attention weights (nn.MultiheadAttention, heads averaged, CLS dropped):
    "early" leaves the last block out, so changing only that block's weights moves
    "block" and "mean" but not "early"."""
    import pytest

    torch.manual_seed(0)
    net = pretrain.build_tiny_clip(pretrain.TinyClipConfig(vision_layers=3)).eval()
    probe = pretrain.AttentionProbe(net.visual)
    blocks = list(net.visual.transformer.resblocks)
    x = torch.randn(2, 3, 96, 96)
    want = pretrain.appearance_target(torch.rand(2, 3, 96, 96), 12, 0.05)

    def ce(got):
        return float(-(want * got.clamp_min(1e-8).log()).sum(-1).mean())

    def losses():
        weights = []

        def keep(block, args):
            y = block.ln_1(args[0])
            a = block.attn(y, y, y, need_weights=True)[1][:, 1:, 1:]
            weights.append(a / a.sum(-1, keepdim=True))

        hooks = [b.register_forward_pre_hook(keep) for b in blocks]
        got = {}
        with torch.no_grad():
            for scope in pretrain.GROUP_SCOPES:
                net.encode_image(x)
                got[scope] = float(pretrain.grouping_loss(want, probe, scope))
        for h in hooks:
            h.remove()
        per = [ce(w) for w in weights[:3]]  # one forward pass's three blocks
        mean_of_normalised = torch.stack(weights[:3]).mean(0)
        assert got["block"] == pytest.approx(np.mean(per), rel=1e-5)
        assert got["early"] == pytest.approx(np.mean(per[:2]), rel=1e-5)
        assert got["early+mean"] == pytest.approx(np.mean(per[:2]) + ce(mean_of_normalised),
                                                  rel=1e-5)
        return got

    before = losses()
    with torch.no_grad():
        blocks[-1].attn.in_proj_weight.mul_(3.0)  # the last block's attention only
    after = losses()
    assert after["early"] == pytest.approx(before["early"], rel=1e-6)
    for scope in ("mean", "block", "early+mean"):
        assert abs(after[scope] - before[scope]) > 1e-3, (scope, before, after)
    with pytest.raises(ValueError, match="grouping scope 'last'"):
        pretrain.grouping_loss(want, probe, "last")
    probe.remove()


def test_grouping_loss_teaches_the_attention_the_target(tmp_path):
    """A few steps with a heavy grouping loss bring the tower's attention closer to the
    appearance target on images it has not seen (cross-entropy falls), and the summary
    reports the loss; without the loss no grouping term is logged."""
    cfg = pretrain.TinyClipConfig(steps=30, batch_size=16, vision_layers=2, text_layers=1,
                                  group_loss=5.0, lr=3e-3)
    images, _ = synthetic.stream_pairs(np.random.default_rng(123), 16)
    x = pretrain.load_images(images, cfg.image_size)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (pretrain.CLIP_MEAN, pretrain.CLIP_STD))
    want = pretrain.appearance_target(x * std + mean, cfg.patch_size, cfg.group_sigma)

    def grouping_ce(state):
        torch.manual_seed(0)
        net = pretrain.build_tiny_clip(cfg)
        if state is not None:
            net.load_state_dict(state)
        probe = pretrain.AttentionProbe(net.visual)
        with torch.no_grad():
            net.encode_image(x)
            return float(-(want * probe.pop().clamp_min(1e-8).log()).sum(-1).mean())

    logs = []
    summary = pretrain.train_tiny_clip(None, None, tmp_path / "clip.pt", cfg, log=logs.append,
                                       stream=synthetic.stream_pairs)
    trained = torch.load(tmp_path / "clip.pt", weights_only=True)
    before, after = grouping_ce(None), grouping_ce(trained)
    assert after < before - 0.1, (before, after)
    assert "grouping" in logs[0] and summary["final_grouping_loss"] > 0

    plain = pretrain.train_tiny_clip(None, None, tmp_path / "plain.pt",
                                     pretrain.TinyClipConfig(steps=2, batch_size=4, vision_layers=1,
                                                             text_layers=1),
                                     log=logs.append, stream=synthetic.stream_pairs)
    assert "final_grouping_loss" not in plain and "grouping" not in logs[-1]


def test_objects_are_shaded_from_a_saturated_centre_to_a_pale_rim():
    red = synthetic.COLOURS["red"]
    ramp = synthetic.shade(red, np.array([[0.0, 0.5, 1.0, 2.0]]))[0]
    np.testing.assert_allclose(ramp[0], red)
    np.testing.assert_allclose(ramp[2], np.asarray(red) + (255 - np.asarray(red)) * synthetic.FADE)
    np.testing.assert_allclose(ramp[3], ramp[2])  # beyond the rim: the rim's tint
    assert (np.diff(ramp, axis=0) >= 0).all()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(40):
        img, mask, present, _, _ = synthetic.make_sample(rng, (144, 180))
        for name in present:
            c = np.asarray(synthetic.COLOURS[synthetic.TYPICAL_COLOUR[name]], np.float64)
            px = img[mask == synthetic.CLASSES.index(name) + 1].astype(np.float64)
            k = np.argmax(255 - c)  # every pixel on the way from the class colour to white:
            t = (px[:, k] - c[k]) / (255 - c[k])  # c + t (255 - c), to the nearest level
            assert np.abs(c + t[:, None] * (255 - c) - px).max() <= 1, name
            assert t.min() >= 0 and t.max() <= synthetic.FADE + 0.01, name
            if len(present) == 1:  # nothing hides it: from the centre to the rim
                seen.add(name)
                assert t.max() > synthetic.FADE - 0.1, name
                assert t.min() < (0.1 if name != "ring" else 0.7 * synthetic.FADE), name
    assert seen == set(synthetic.CLASSES)
