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
