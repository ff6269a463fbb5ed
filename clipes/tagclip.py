"""TagCLIP (Lin et al., AAAI 2024): image-level tags from a frozen CLIP, without training.

The authors' classifier (``classify.py`` of ``linyq2117/TagCLIP``) as it computes, quirks
included, for the label-free mode: its tags replace the image-level labels CLIP-ES needs.
Per image (shapes: P = gh * gw patches, N = foreground + background classes, NC =
foreground classes, D = embedding width):

1. local pass: the whole image at its own size (patch multiples, the CLIP-ES
   preprocessing); the last block attends only to each token itself (an additive -100 off
   the diagonal); patch tokens through ln_post and proj, normalised; ``logits_coarse``
   (P, N) = softmax over the classes of scale * token . text;
2. DMAR: every block votes where its head-averaged attention (without CLS) exceeds its own
   mean, the last block with its unmasked map; ``attn_weight`` = mean attention of blocks
   8-10 (0-based) where at least 4 of 12 blocks vote; ``logits_dmar`` = attn_weight @
   logits_coarse; per class, the boxes around the hot patches of its DMAR map (above the
   map's mean, on the uint8 scale, ends exclusive and never the last row or column) mask
   the attention's source patches: ``logits_refined`` = (attn_weight * box) @
   logits_coarse; ``local_score`` = the refined maximum over patches;
3. CWR: the foreground classes whose local score passes the middle of the refined
   matrix's range are candidates, in ascending order; each is cropped around its refined
   map's half-maximum region, resized to 224 and classified with the crop's CLS token
   attending only to that region (-1000 elsewhere, every block); the final score is the
   mean of local and crop scores. A candidate whose region is empty once the border is
   clipped ends the loop (the original returns there): it and the later ones keep their
   local score;
4. tags: the classes above the middle of the final scores' range (the first maximum if
   none passes).

mAP and F1 are TagCLIP's: per-class AP averaged over ALL foreground classes (a class
without a positive image counts 0), and F1 over all (image, class) pairs at the same
relative threshold (no fallback).

The original hard-codes patch 16, a 14x14 grid at 224 px and 12 vision blocks: other
models are refused in one line. ``mode="batched"`` computes the crops of an image in one
pass instead of one by one (the same numbers to float rounding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .affinity import _components_bboxes, hot_patches
from .errors import ClipLoadError
from .sizes import input_size  # noqa: F401 (the model input size: CLIP-ES's preprocessing)
from .text import IMAGENET_TEMPLATES, REFERENCE_TEMPLATE

# ImageNet's 80 templates (the prompt-selection candidates less CLIP-ES's own) and TagCLIP's
# 5 scene forms, in the original's order
TAG_TEMPLATES = tuple(t for t in IMAGENET_TEMPLATES if t != REFERENCE_TEMPLATE) + (
    "there is a {} in the scene.", "there is the {} in the scene.",
    "this is a {} in the scene.", "this is the {} in the scene.", "this is one {} in the scene.",
)
# TagCLIP's background words (its clip_text.py): for VOC, and for COCO and other datasets
BACKGROUND = {
    "voc": ("ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water",
            "river", "sea", "railway", "railroad", "keyboard", "helmet", "cloud", "house",
            "mountain", "ocean", "road", "rock", "street", "valley", "bridge", "sign"),
    "coco": ("ground", "land", "grass", "tree", "building", "wall", "sky", "lake", "water",
             "river", "sea", "railway", "railroad", "helmet", "cloud", "house", "mountain",
             "ocean", "road", "rock", "street", "valley", "bridge"),
}
MODES = ("reference", "batched")
PATCH, CROP, CROP_GRID, BLOCKS = 16, 224, 14, 12
DIAG_MASK, CROP_MASK = -100.0, -1000.0
DMAR_BLOCKS = (8, 9, 10)  # 0-based: the attention averaged for DMAR
VOTE_MIN = 4  # of the 12 blocks
REL_THRESHOLD = 0.5  # candidates, crop regions and tags: the middle of the range


def check_model(clip) -> None:
    """The original hard-codes a ViT with patch 16, 12 blocks and a 14x14 grid at 224 px."""
    v = getattr(clip, "visual", None)
    blocks = len(getattr(getattr(v, "transformer", None), "resblocks", []) or [])
    patch = getattr(getattr(v, "conv1", None), "kernel_size", (None,))[0]
    rows = getattr(getattr(v, "positional_embedding", None), "shape", (None,))[0]
    if blocks != BLOCKS or patch != PATCH or rows != CROP_GRID * CROP_GRID + 1:
        raise ClipLoadError(
            f"{clip.name}: TagCLIP needs a ViT with patch 16, 12 blocks and a 14x14 grid at 224 "
            f"px (the original hard-codes them, e.g. ViT-B-16); this one has patch {patch}, "
            f"{blocks} blocks and {rows} positional rows")


@torch.no_grad()
def text_features(clip, names, templates=TAG_TEMPLATES, device="cpu",
                  batch_size: int = 256) -> torch.Tensor:
    """(N, D): per name, the 85 prompts' normalised embeddings averaged and normalised
    (the original's prompt ensemble), normalised once more as classify.py does."""
    out = []
    for name in names:
        sentences = [t.format(name) for t in templates]
        feats = []
        for i in range(0, len(sentences), batch_size):
            f = clip.model.encode_text(clip.tokenizer(sentences[i:i + batch_size]).to(device)).float()
            feats.append(f / f.norm(dim=-1, keepdim=True))
        f = torch.cat(feats).mean(0)
        out.append(f / f.norm())
    t = torch.stack(out)
    return t / t.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- the ViT
def _block(blk, x: torch.Tensor, mask: torch.Tensor | None):
    """One pre-LN block with an additive attention mask (T, T); returns the output
    (B, T, C) and the head-averaged attention of the UNMASKED scores (B, T, T)."""
    h = blk.ln_1(x)
    b, n, c = h.shape
    heads = blk.attn.num_heads
    d = c // heads
    qkv = F.linear(h, blk.attn.in_proj_weight, blk.attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)  # each (B, H, T, d)
    scores = torch.matmul(q * math.sqrt(1.0 / float(d)), k.transpose(-2, -1))  # (B, H, T, T)
    plain = scores.softmax(dim=-1)
    probs = plain if mask is None else (scores + mask).softmax(dim=-1)
    out = torch.matmul(probs, v).transpose(1, 2).reshape(b, n, c)
    x = x + blk.ls_1(blk.attn.out_proj(out))
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, plain.mean(dim=1)


def _tokens(v, images: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    x = v.conv1(images)  # (B, C, gh, gw)
    b, c, gh, gw = x.shape
    x = x.reshape(b, c, gh * gw).transpose(1, 2)
    x = torch.cat([v.class_embedding.to(x.dtype).expand(b, 1, c), x], dim=1) + pos.to(x.dtype)
    return v.ln_pre(x)


def _project(v, x: torch.Tensor) -> torch.Tensor:
    """ln_post, proj, L2-normalised per token."""
    t = v.ln_post(x) @ v.proj
    return t / t.norm(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------- the steps
def normalise01(col: np.ndarray) -> np.ndarray:
    """(x - min) / max(x - min), float32, no epsilon (the original's)."""
    col = np.asarray(col, dtype=np.float32)
    col = col - col.min()
    return col / col.max()


def mask_attn(logits_coarse: torch.Tensor, logits_dmar: torch.Tensor, attn_weight: torch.Tensor,
              grid: tuple[int, int], dump: dict | None = None) -> torch.Tensor:
    """Refined logits (P, N): per class, the attention's source patches restricted to the
    union of the boxes around the hot patches of its DMAR map (see the module text)."""
    gh, gw = grid
    dmar = logits_dmar.cpu().numpy()
    n = dmar.shape[1]
    masks = np.zeros((n, gh * gw), np.float32)
    rec = {"ccls": [], "boxes": [], "aff_mask": np.zeros((n, gh, gw), np.uint8),
           "thresh_int": np.zeros(n), "hot": np.zeros((n, gh, gw), np.uint8)}
    for c in range(n):
        if not dmar[:, c].max() > 0:
            continue
        norm = normalise01(dmar[:, c]).reshape(gh, gw)
        thr = norm.mean()  # float32, as numpy's mean of a float32 map
        hot = hot_patches(norm, thr)
        rec["ccls"].append(c)
        rec["thresh_int"][c] = int(thr * (norm * np.float32(255)).astype(np.uint8).max())
        rec["hot"][c] = hot
        boxes = _components_bboxes(hot)
        aff = np.zeros((gh, gw), np.uint8)
        for x, y, bw, bh in boxes:
            x1, y1 = min(x + bw, gw - 1), min(y + bh, gh - 1)
            aff[y:y1, x:x1] = 1
            rec["boxes"].append([c, x, y, x1, y1])
        if not boxes:
            rec["boxes"].append([c, 0, 0, 0, 0])
        rec["aff_mask"][c] = aff
        masks[c] = aff.reshape(-1)
    if dump is not None:
        dump.update({f"ma_{k}": np.asarray(v) for k, v in rec.items()})
    m = torch.from_numpy(masks).to(logits_coarse)  # (N, P) source patches kept per class
    refined = [(attn_weight * m[c][None, :]) @ logits_coarse[:, c] for c in range(n)]
    return torch.stack(refined, dim=1)  # (P, N)


def crop_region(refined_col: np.ndarray, grid: tuple[int, int]):
    """The crop of a candidate on the patch grid: (mask (gh, gw) bool, raw box, clipped
    box [x1, y1, x2, y2], ends exclusive, the last row and column never included)."""
    gh, gw = grid
    mask = normalise01(refined_col).reshape(gh, gw) > REL_THRESHOLD
    cols, rows = np.nonzero(mask.any(axis=0))[0], np.nonzero(mask.any(axis=1))[0]
    if len(cols):
        raw = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
    else:
        raw = [0, 0, 0, 0]
    box = [raw[0], raw[1], min(raw[2], gw - 1), min(raw[3], gh - 1)]
    return mask, raw, box


def tag_threshold(scores: np.ndarray) -> np.float32:
    """The middle of the scores' range (float32, as the original)."""
    s = np.asarray(scores, dtype=np.float32)
    return s.min() + np.float32(REL_THRESHOLD) * (s.max() - s.min())


def tags_of(scores: np.ndarray) -> list[int]:
    """Classes above the middle of the scores' range; the first maximum if none is."""
    s = np.asarray(scores, dtype=np.float32)
    tags = [int(i) for i in np.nonzero(s > tag_threshold(s))[0]]
    return tags or [int(np.argmax(s))]


@dataclass
class TagResult:
    local_score: np.ndarray  # (NC,) float32
    final_score: np.ndarray  # (NC,) float32
    candidates: list[int]
    crops: list[dict]  # {"class", "box", "global"} per crop classified
    early_return_at: int  # the candidate that ended CWR, -1 if none
    tags: list[int]
    extras: dict = field(default_factory=dict)  # intermediates (dump)


class TagEngine:
    """TagCLIP's classifier for one model and class list. text: (N, D) features of the
    foreground names followed by the background words; n_fg: how many are foreground."""

    def __init__(self, clip, text: torch.Tensor, n_fg: int, device="cpu", mode: str = "reference",
                 dump: bool = False):
        check_model(clip)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.v, self.device, self.mode, self.dump = clip.visual, torch.device(device), mode, dump
        self.text = text.float().to(self.device)
        self.n_fg = n_fg
        self.scale = clip.model.logit_scale.detach().float().exp().to(self.device)
        self.blocks = list(self.v.transformer.resblocks)
        self.raw_pos = self.v.positional_embedding.detach().float()

    def _pos(self, grid):
        from .model import resize_pos_embed

        if tuple(grid) == (CROP_GRID, CROP_GRID):  # the table as it is
            return self.raw_pos
        return resize_pos_embed(self.raw_pos, (CROP_GRID, CROP_GRID), grid, round_fp16=True)

    @torch.no_grad()
    def local_pass(self, image: torch.Tensor):
        """(3, h, w) -> image tokens (1 + P, D) and the 12 unmasked maps (12, 1 + P, 1 + P)."""
        grid = (image.shape[1] // PATCH, image.shape[2] // PATCH)
        x = _tokens(self.v, image[None].to(self.device), self._pos(grid).to(self.device))
        t = x.shape[1]
        diag = torch.full((t, t), DIAG_MASK, device=self.device)
        diag.fill_diagonal_(0.0)
        maps = []
        for i, blk in enumerate(self.blocks):
            x, w = _block(blk, x, diag if i == len(self.blocks) - 1 else None)
            maps.append(w[0])
        return _project(self.v, x)[0], torch.stack(maps)

    @torch.no_grad()
    def crop_pass(self, crops: torch.Tensor, masks14: torch.Tensor) -> torch.Tensor:
        """crops (K, 3, 224, 224), masks14 (K, 14, 14) bool -> class probabilities (K, N)
        of each crop's CLS token, which attends only to its region."""
        k = crops.shape[0]
        t = CROP_GRID * CROP_GRID + 1
        masks = torch.zeros((k, 1, t, t), device=self.device)
        masks[:, 0, 0, 1:] = torch.where(masks14.reshape(k, -1).to(self.device), 0.0, CROP_MASK)
        x = _tokens(self.v, crops.to(self.device), self.raw_pos.to(self.device))
        for blk in self.blocks:
            x, _ = _block(blk, x, masks)
        cls = _project(self.v, x[:, :1])[:, 0]  # (K, D)
        return (self.scale * cls @ self.text.T).softmax(dim=-1), cls

    @torch.no_grad()
    def cwr(self, image: torch.Tensor, refined: np.ndarray, local: np.ndarray, grid) -> dict:
        """Class-wise re-identification: image (3, h, w), refined logits (P, N), local scores
        (NC,). Returns the final scores and what was decided on the way: candidates, the
        crop box of every candidate up to the one that ended the loop ("boxes"), the crops
        classified (class, box, global score), the early return (-1: none)."""
        ma, mi = refined.max(), refined.min()
        thres = mi + np.float32(REL_THRESHOLD) * (ma - mi)
        candidates = [int(c) for c in np.nonzero(local > thres)[0]]
        final = np.array(local, dtype=np.float32, copy=True)
        todo, boxes, early = [], [], -1
        for c in candidates:
            mask, raw, box = crop_region(refined[:, c], grid)
            boxes.append([c, *box])
            x1, y1, x2, y2 = box
            if x1 == x2 or y1 == y2:
                early = c
                break
            todo.append((c, mask, raw, box))
        crops, m14, probs, cls = [], [], None, None
        if todo:
            imgs = []
            for c, mask, raw, (x1, y1, x2, y2) in todo:
                piece = image[None, :, PATCH * y1:PATCH * y2, PATCH * x1:PATCH * x2].to(self.device)
                imgs.append(F.interpolate(piece, size=(CROP, CROP), mode="bilinear",
                                          align_corners=False)[0])
                m = torch.from_numpy(mask[y1:y2, x1:x2].astype(np.float32))[None, None]
                m14.append(F.interpolate(m, size=(CROP_GRID, CROP_GRID), mode="nearest")[0, 0] > 0)
            if self.mode == "batched":
                p, t = self.crop_pass(torch.stack(imgs), torch.stack(m14))
            else:  # one crop at a time, as the original
                outs = [self.crop_pass(i[None], m[None]) for i, m in zip(imgs, m14)]
                p, t = torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
            probs, cls = p.cpu().numpy(), t.cpu().numpy()
            for j, (c, mask, raw, box) in enumerate(todo):
                g = np.float32(probs[j, c])
                crops.append({"class": c, "box": box, "raw_box": raw, "global": float(g),
                              "local": float(local[c])})
                final[c] = np.float32(0.5) * local[c] + np.float32(0.5) * g
        return {"final": final, "candidates": candidates, "crops": crops, "early": early,
                "boxes": np.asarray(boxes, np.int64).reshape(-1, 5), "ma": ma, "mi": mi,
                "thres": thres, "probs": probs,
                "mask14": np.stack([m.numpy() for m in m14]).astype(np.uint8) if m14 else
                np.zeros((0, CROP_GRID, CROP_GRID), np.uint8), "cls": cls}

    @torch.no_grad()
    def classify(self, image: torch.Tensor) -> TagResult:
        """image: (3, h, w), normalised, h and w multiples of 16."""
        grid = (image.shape[1] // PATCH, image.shape[2] // PATCH)
        p = grid[0] * grid[1]
        tokens, maps = self.local_pass(image)
        logits_coarse = (self.scale * tokens[1:] @ self.text.T).softmax(dim=-1)  # (P, N)
        a = maps[:, 1:, 1:]  # (12, P, P)
        means = a.mean(dim=(1, 2))
        cnt = (a > means[:, None, None]).sum(dim=0) >= VOTE_MIN  # (P, P)
        attn_weight = a[list(DMAR_BLOCKS)].mean(dim=0) * cnt
        logits_dmar = attn_weight @ logits_coarse
        dump = {} if self.dump else None
        refined = mask_attn(logits_coarse, logits_dmar, attn_weight, grid, dump)  # (P, N)
        local = refined[:, :self.n_fg].max(dim=0).values.cpu().numpy().astype(np.float32)
        ref = refined.cpu().numpy()
        cw = self.cwr(image, ref, local, grid)
        final, candidates, crops, early = cw["final"], cw["candidates"], cw["crops"], cw["early"]
        result = TagResult(local, final, candidates, crops, early, tags_of(final))
        if self.dump:
            ma, mi, thres = cw["ma"], cw["mi"], cw["thres"]
            m14, probs, cls = cw["mask14"], cw["probs"], cw["cls"]
            result.extras = {
                "grid_hw": np.asarray(grid), "image_tokens": tokens.cpu().numpy(),
                "attn_diag": torch.diagonal(maps, dim1=1, dim2=2).cpu().numpy(),
                "attn_layer_means": means.cpu().numpy(), "attn_cnt": cnt.cpu().numpy(),
                "attn_mean_8_10": a[list(DMAR_BLOCKS)].mean(dim=0).cpu().numpy(),
                "attn_weight": attn_weight.cpu().numpy(),
                "logits_coarse": logits_coarse.cpu().numpy(),
                "logits_dmar": logits_dmar.cpu().numpy(), "logits_refined": ref,
                "cwr_ma": ma, "cwr_mi": mi, "cwr_thres": thres, "P": p,
                "cwr_crop_mask14": m14, "cwr_crop_probs": probs, "cwr_crop_cls_token": cls,
                "cwr_crop_box": cw["boxes"],
                **(dump or {}),
            }
        return result


# ----------------------------------------------------------------------------- metrics
def average_precision(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """TagCLIP's compute_AP: per class, scores of all images sorted descending, the mean
    of precision@k over the positives; a class without a positive gets 0. scores, labels:
    (images, NC). Returns (NC,)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    ap = np.zeros(scores.shape[1])
    for c in range(scores.shape[1]):
        order = np.argsort(-scores[:, c], kind="stable")
        hits = labels[order, c]
        if hits.sum() == 0:
            continue
        precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
        ap[c] = precision[hits].sum() / hits.sum()
    return ap


def f1_overall(scores: np.ndarray, labels: np.ndarray) -> dict:
    """TagCLIP's compute_F1 ('overall', relative threshold 0.5 per image, no fallback)."""
    scores, labels = np.asarray(scores, np.float32), np.asarray(labels, bool)
    lo, hi = scores.min(axis=1, keepdims=True), scores.max(axis=1, keepdims=True)
    pred = scores > lo + np.float32(REL_THRESHOLD) * (hi - lo)
    tp = float((pred & labels).sum())
    fp = float((pred & ~labels).sum())
    fn = float((~pred & labels).sum())
    p, r = tp / (tp + fp + 1e-9), tp / (tp + fn + 1e-9)
    return {"P": p, "R": r, "F1": 2 * p * r / (p + r) if p + r else 0.0}


def tag_metrics(scores: np.ndarray, labels: np.ndarray, tags: list[list[int]]) -> dict:
    """mAP, F1, P, R (TagCLIP's), per-class AP, and the images whose tags differ."""
    ap = average_precision(scores, labels)
    out = {"mAP": float(ap.mean()), "ap_per_class": ap.tolist(), **f1_overall(scores, labels)}
    gt = [sorted(np.nonzero(row)[0].tolist()) for row in np.asarray(labels, bool)]
    out["n_images"] = len(gt)
    out["n_differ"] = sum(sorted(t) != g for t, g in zip(tags, gt))
    return out


from .datasets import read_tags, write_tags  # noqa: E402,F401 (the label file format)
