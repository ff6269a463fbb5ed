import numpy as np
import torch

from clipes import affinity


def test_sinkhorn_rounds_then_symmetric_square():
    torch.manual_seed(0)
    a = torch.rand(6, 6) + 0.1
    t = a.clone()
    for _ in range(3):
        t = t / t.sum(0, keepdim=True)
        t = t / t.sum(1, keepdim=True)
    want = ((t + t.T) / 2) @ ((t + t.T) / 2)
    got = affinity.transition_matrix(a)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got, got.T)
    # after the final row step rows sum to one; the symmetrised square stays near that
    assert torch.allclose(got.sum(1), torch.ones(6), atol=0.05)


def test_one_sinkhorn_round_differs():
    a = torch.rand(5, 5) + 0.1
    assert not torch.allclose(affinity.transition_matrix(a, 1), affinity.transition_matrix(a, 3))


def test_threshold_on_uint8_scale_is_strict():
    cam = np.zeros((4, 4), np.float32)
    cam[1, 1] = 0.9999999  # uint8 254, threshold int(0.4 * 254) = 101
    cam[2, 2] = 102 / 255 + 1e-4  # 102 > 101: hot
    cam[0, 0] = 101.5 / 255  # truncates to 101: not hot
    hot = affinity.hot_patches(cam, 0.4)
    assert hot[1, 1] and hot[2, 2] and not hot[0, 0]
    assert hot.sum() == 2


def test_box_mask_border_quirk():
    cam = np.zeros((5, 6), np.float32)
    cam[1:3, 1:3] = 1.0  # interior component
    cam[4, 5] = 1.0  # one hot patch in the last row and column
    mask, boxes = affinity.box_mask(cam, 0.4)
    want = np.zeros((5, 6), np.uint8)
    want[1:3, 1:3] = 1  # the corner box [5, 4, 5, 4] is empty after clipping
    np.testing.assert_array_equal(mask, want)
    assert sorted(map(tuple, boxes.tolist())) == [(1, 1, 3, 3), (5, 4, 5, 4)]
    mask_fixed, _ = affinity.box_mask(cam, 0.4, clip_border=False)
    assert mask_fixed[4, 5] == 1 and mask_fixed.sum() == 5


def test_box_mask_touching_border_loses_last_row_and_column():
    cam = np.zeros((4, 4), np.float32)
    cam[2:, 2:] = 1.0
    mask, _ = affinity.box_mask(cam, 0.4)
    assert mask.sum() == 1 and mask[2, 2] == 1


def test_components_are_8_connected_and_boxes_union():
    cam = np.zeros((6, 6), np.float32)
    cam[0, 0] = cam[1, 1] = cam[2, 2] = 1.0  # a diagonal: one 8-connected component
    cam[0, 4] = 1.0
    _, boxes = affinity.box_mask(cam, 0.4, clip_border=False)
    assert sorted(map(tuple, boxes.tolist())) == [(0, 0, 3, 3), (4, 0, 5, 1)]


def test_empty_cam_gives_empty_mask():
    mask, boxes = affinity.box_mask(np.zeros((3, 3), np.float32), 0.4)
    assert mask.sum() == 0 and len(boxes) == 0


def test_refine_masks_columns_not_rows():
    trans = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    mask = torch.tensor([[[1, 0], [0, 0]]], dtype=torch.uint8)  # keep source patch 0 only
    cam = torch.ones(1, 2, 2)
    out = affinity.refine(trans, mask, cam)
    torch.testing.assert_close(out.reshape(-1), trans[:, 0])  # column 0 of T


def _maps(rng, n, gh, gw):
    """Smooth maps (blobs, as CAMs), noisy maps (long winding components) and edge cases."""
    out = []
    for i in range(n):
        if i % 3 == 0:
            m = rng.random((gh, gw)).astype(np.float32)
        else:
            low = torch.from_numpy(rng.random((gh // 3 + 1, gw // 3 + 1)).astype(np.float32))
            m = torch.nn.functional.interpolate(low[None, None], size=(gh, gw), mode="bilinear",
                                                align_corners=False)[0, 0].numpy()
        m = (m - m.min()) / (1e-7 + (m - m.min()).max())
        out.append(m.astype(np.float32))
    out.append(np.zeros((gh, gw), np.float32))  # empty map
    spiral = np.zeros((gh, gw), np.float32)
    spiral[::2, :] = 1.0
    spiral[1::4, -1] = 1.0
    spiral[3::4, 0] = 1.0  # one snake through every other row: the longest path
    out.append(spiral)
    return np.stack(out)


def test_batched_box_masks_equal_the_per_map_masks():
    rng = np.random.default_rng(0)
    for gh, gw in ((24, 32), (11, 16), (3, 5), (32, 21)):
        maps = _maps(rng, 12, gh, gw)
        for threshold in (0.4, 0.7):
            for clip in (True, False):
                got = affinity.box_masks(torch.from_numpy(maps), threshold, clip).numpy()
                want = np.stack([affinity.box_mask(m, threshold, clip)[0] for m in maps])
                np.testing.assert_array_equal(got, want, err_msg=f"{gh}x{gw} {threshold} {clip}")


def test_batched_transition_matrices_equal_the_per_image_ones():
    torch.manual_seed(0)
    attn = torch.rand(3, 96, 96).softmax(-1)
    want = torch.stack([affinity.transition_matrix(a) for a in attn])
    assert torch.equal(affinity.transition_matrices(attn), want)
