"""CAA: class-aware attention-based affinity (CLIP-ES Stage 3).

- :func:`transition_matrix`: Sinkhorn-style normalisation of the mean attention,
  symmetrised and squared (``trans_mat``, the same for every class of an image);
- :func:`box_mask`: the class's box mask from its Grad-CAM, at patch resolution, with the
  reference's border quirk;
- :func:`refine`: masked affinity times the CAM.
"""

from __future__ import annotations

import numpy as np
import torch

BOX_THRESHOLD = {"voc12": 0.4, "coco14": 0.7}


def transition_matrix(attn_mean: torch.Tensor, sinkhorn_rounds: int = 3) -> torch.Tensor:
    """attn_mean (P, P), rows = queries -> trans_mat (P, P).

    Each round divides by the column sums, then by the row sums; then T = (T + T^T) / 2
    and T = T @ T.
    """
    t = attn_mean.float()
    for _ in range(sinkhorn_rounds):
        t = t / t.sum(dim=0, keepdim=True)
        t = t / t.sum(dim=1, keepdim=True)
    t = (t + t.transpose(0, 1)) / 2
    return t @ t


def _components_bboxes(hot: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x, y, bw, bh) of the 8-connected components of a boolean map.

    The union of these boxes equals the union of cv2.findContours(RETR_TREE) bounding
    rectangles: hole contours lie inside their component's box.
    """
    gh, gw = hot.shape
    label = np.zeros(hot.shape, dtype=np.int32)
    boxes = []
    ys, xs = np.nonzero(hot)
    n = 0
    for y0, x0 in zip(ys, xs):
        if label[y0, x0]:
            continue
        n += 1
        label[y0, x0] = n
        stack = [(y0, x0)]
        ymin = ymax = y0
        xmin = xmax = x0
        while stack:
            y, x = stack.pop()
            ymin, ymax, xmin, xmax = min(ymin, y), max(ymax, y), min(xmin, x), max(xmax, x)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < gh and 0 <= xx < gw and hot[yy, xx] and not label[yy, xx]:
                        label[yy, xx] = n
                        stack.append((yy, xx))
        boxes.append((int(xmin), int(ymin), int(xmax - xmin + 1), int(ymax - ymin + 1)))
    return boxes


def hot_patches(cam: np.ndarray, threshold: float) -> np.ndarray:
    """The reference's threshold on the uint8-scaled map: s = uint8(cam * 255) (float32,
    truncated), hot where s > int(threshold * max(s))."""
    s = (np.asarray(cam, dtype=np.float32) * np.float32(255)).astype(np.uint8)
    t = int(threshold * s.max())
    return s > t


def box_mask(cam: np.ndarray, threshold: float, clip_border: bool = True):
    """Union of the bounding boxes of the hot regions of ``cam`` (gh, gw).

    clip_border=True is the reference: x1 = min(x + bw, gw - 1), y1 = min(y + bh, gh - 1),
    so the last patch row and column never belong to a box. Returns the mask (gh, gw)
    uint8 and the boxes (n, 4) int64 [x0, y0, x1, y1], ends exclusive.
    """
    gh, gw = cam.shape
    mask = np.zeros((gh, gw), dtype=np.uint8)
    boxes = []
    for x, y, bw, bh in _components_bboxes(hot_patches(cam, threshold)):
        x1, y1 = x + bw, y + bh
        if clip_border:
            x1, y1 = min(x1, gw - 1), min(y1, gh - 1)
        mask[y:y1, x:x1] = 1
        boxes.append((x, y, x1, y1))
    return mask, np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def refine(trans_mat: torch.Tensor, masks: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """Refined CAMs before normalisation (``cam_refined_raw``).

    trans_mat (P, P); masks (K, gh, gw) multiply the COLUMNS (source patches) of
    trans_mat; cams (K, gh, gw). Returns (K, gh, gw): (T * mask_k[None, :]) @ vec(cam_k),
    computed as T @ (mask_k * cam_k), which is the same products.
    """
    k, gh, gw = cams.shape
    src = (masks.reshape(k, -1).to(cams.dtype) * cams.reshape(k, -1)).T  # (P, K)
    return (trans_mat @ src).T.reshape(k, gh, gw)


# ------------------------------------------------------------------ on the device, batched
# The same three steps for many maps at once, as tensor operations on the maps' device (no
# copy to the host, no Python loop over patches). Each gives the same bits as its
# per-map counterpart above; tests/test_affinity.py checks that on random and golden maps.

def transition_matrices(attn_mean: torch.Tensor, sinkhorn_rounds: int = 3) -> torch.Tensor:
    """attn_mean (B, P, P) -> trans_mat (B, P, P): :func:`transition_matrix` per image."""
    t = attn_mean.float()
    for _ in range(sinkhorn_rounds):
        t = t / t.sum(dim=-2, keepdim=True)
        t = t / t.sum(dim=-1, keepdim=True)
    t = (t + t.transpose(-2, -1)) / 2
    return torch.matmul(t, t)


def hot_patches_t(cams: torch.Tensor, threshold: float) -> torch.Tensor:
    """:func:`hot_patches` of maps (N, gh, gw) at once -> bool (N, gh, gw)."""
    s = (cams.float() * 255).to(torch.uint8)  # truncation, as numpy's astype
    smax = s.flatten(1).amax(dim=1).double()  # (N,)
    t = torch.floor(threshold * smax)  # int() of a positive float64
    return s.double() > t[:, None, None]


def component_labels(hot: torch.Tensor) -> torch.Tensor:
    """8-connected components of boolean maps (N, gh, gw): each hot patch gets the largest
    1 + row-major index of its component (0 off the maps).

    Labels spread by 3x3 max pooling, and each patch then takes the label held by the patch
    its label names (pointer jumping: a label is always the index of a patch of the same
    component, so this stays inside it and halves the remaining distance), until nothing
    changes: a few rounds even for a component winding through the whole map."""
    n, gh, gw = hot.shape
    hotf = hot.float().view(n, 1, gh, gw)
    idx = torch.arange(1, gh * gw + 1, device=hot.device, dtype=torch.float32)
    lab = idx.view(1, 1, gh, gw) * hotf  # float32 holds these integers exactly
    while True:
        nxt = torch.nn.functional.max_pool2d(lab, 3, stride=1, padding=1) * hotf
        flat = nxt.view(n, -1)
        for _ in range(2):
            held = flat.gather(1, (flat.long() - 1).clamp_min(0))  # label of the named patch
            flat = torch.maximum(flat, held) * hotf.view(n, -1)
        nxt = flat.view(n, 1, gh, gw)
        if torch.equal(nxt, lab):  # one host sync per round
            return lab.view(n, gh, gw).long()
        lab = nxt


def box_masks(cams: torch.Tensor, threshold: float, clip_border: bool = True) -> torch.Tensor:
    """:func:`box_mask` of maps (N, gh, gw) at once -> masks (N, gh, gw) uint8.

    Each component's bounding box comes from a scatter min/max over its patches; the union
    of the boxes is painted with a 2-D difference table (exact integer sums)."""
    n, gh, gw = cams.shape
    dev = cams.device
    lab = component_labels(hot_patches_t(cams, threshold))  # (N, gh, gw)
    slots = gh * gw + 1  # label 0 = no component
    flat = (lab + slots * torch.arange(n, device=dev).view(n, 1, 1)).flatten()
    ys = torch.arange(gh, device=dev).view(1, gh, 1).expand(n, gh, gw).flatten()
    xs = torch.arange(gw, device=dev).view(1, 1, gw).expand(n, gh, gw).flatten()
    big = gh + gw + 1
    y0 = torch.full((n * slots,), big, device=dev).scatter_reduce(0, flat, ys, "amin")
    x0 = torch.full((n * slots,), big, device=dev).scatter_reduce(0, flat, xs, "amin")
    y1 = torch.full((n * slots,), -1, device=dev).scatter_reduce(0, flat, ys, "amax") + 1
    x1 = torch.full((n * slots,), -1, device=dev).scatter_reduce(0, flat, xs, "amax") + 1
    if clip_border:  # the reference quirk: ends capped at the last row / column
        y1, x1 = y1.clamp(max=gh - 1), x1.clamp(max=gw - 1)
    img = torch.arange(n, device=dev).repeat_interleave(slots)
    keep = (torch.arange(n * slots, device=dev) % slots > 0) & (y1 > y0) & (x1 > x0)
    img, y0, x0, y1, x1 = (t[keep] for t in (img, y0, x0, y1, x1))
    diff = torch.zeros(n, gh + 1, gw + 1, dtype=torch.int32, device=dev)
    ones = torch.ones_like(y0, dtype=torch.int32)
    for yy, xx, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):
        diff.index_put_((img, yy, xx), sign * ones, accumulate=True)
    cover = diff.cumsum(1).cumsum(2)[:, :gh, :gw]
    return (cover > 0).to(torch.uint8)


def refine_batched(trans_mats: torch.Tensor, masks: torch.Tensor, cams: torch.Tensor) -> torch.Tensor:
    """:func:`refine` for B images at once: trans_mats (B, P, P); masks, cams (B, K, gh, gw).
    Returns (B, K, gh, gw)."""
    b, k, gh, gw = cams.shape
    src = (masks.reshape(b, k, -1).to(cams.dtype) * cams.reshape(b, k, -1)).transpose(1, 2)
    return torch.matmul(trans_mats, src).transpose(1, 2).reshape(b, k, gh, gw)
