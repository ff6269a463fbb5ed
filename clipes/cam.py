"""Softmax-GradCAM with CLIP (CLIP-ES Stage 2) and the per-image CAM pipeline.

Two modes compute the same numbers:

- ``reference``: as the authors' code, per class one forward of the last block, one
  backward, and the CAA affinity rebuilt for every class;
- ``batched``: one forward of the last block for all classes of an image, all classes'
  gradients in one vectorised backward, the affinity built once per image, and several
  images of one size in one pass.

The mechanism (hooks-free split of the last block, Grad-CAM weights, normalisation) is
written once; the modes differ only in how the work is scheduled.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from . import affinity, camstore, fastgrad
from .model import VisionTower
from .sizes import check_memory, input_size, memory_estimate_mb  # noqa: F401 (re-exported)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ("reference", "batched")
AUTOCAST_SCOPES = ("all", "trunk")
NORM_EPS = 1e-7  # absolute epsilon of the reference's min-max normalisation
CAA_LAYERS = 8  # attention of the last 8 blocks feeds the affinity


RESIZES = ("pil", "torch")


def _norm_table() -> np.ndarray:
    """(3, 256) float32: the CLIP-normalised value of every 8-bit level of each channel,
    computed with the reference's operations in its order and dtypes (numpy float32 / 255,
    then torch (x - mean) / std in float32). Looking a pixel up in it gives the same bits
    as computing it (every operation is elementwise and correctly rounded), in one pass
    over the image instead of four."""
    levels = np.arange(256, dtype=np.float32)[None, :] / 255.0  # (1, 256) float32
    mean = torch.tensor(CLIP_MEAN).view(3, 1)
    std = torch.tensor(CLIP_STD).view(3, 1)
    return ((torch.from_numpy(levels) - mean) / std).numpy()


_NORM = _norm_table()


def resize_rgb(image: Image.Image, size_hw: tuple[int, int], resize: str = "pil") -> np.ndarray:
    """The image resized to size_hw, as (h, w, 3) uint8 RGB.

    ``pil`` (the reference): PIL's bicubic resize in the file's own mode, then RGB.
    ``torch``: RGB first, then torch's antialiased bicubic on uint8, about 4x faster on a
    CPU core; it follows PIL's kernel but rounds differently: a level or two apart on about
    1% of the values (tests/test_model_cam.py bounds it; benchmarks/gpu.py compares the
    labels of both on a GPU).
    """
    h, w = size_hw
    if resize == "pil":
        return np.asarray(image.resize((w, h), Image.BICUBIC).convert("RGB"))
    if resize != "torch":
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    rgb = np.array(image.convert("RGB"))  # writable, as torch.from_numpy wants
    if rgb.shape[:2] == (h, w):
        return rgb
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # (1, 3, H, W), channels-last strides
    y = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", antialias=True)
    return y[0].permute(1, 2, 0).numpy()


def preprocess(image: Image.Image, size_hw: tuple[int, int], resize: str = "pil") -> torch.Tensor:
    """Resize (:func:`resize_rgb`), then RGB, /255, CLIP normalisation.

    Returns (3, h, w) float32. With ``resize="pil"`` this is bit-exact with the
    reference's uint8 input.
    """
    return normalise(resize_rgb(image, size_hw, resize))


def normalise(rgb: np.ndarray) -> torch.Tensor:
    """(h, w, 3) uint8 RGB -> (3, h, w) float32, CLIP-normalised through the table of the
    256 levels (:func:`_norm_table`: the reference's bits)."""
    out = np.empty((3,) + rgb.shape[:2], dtype=np.float32)
    for c in range(3):
        np.take(_NORM[c], rgb[..., c], out=out[c])
    return torch.from_numpy(out)


def minmax_norm(x: torch.Tensor) -> torch.Tensor:
    """Reference normalisation over the last two dims: (x - min) / (1e-7 + max(x - min))."""
    flat = x.flatten(-2)
    flat = flat - flat.min(dim=-1, keepdim=True).values
    flat = flat / (NORM_EPS + flat.max(dim=-1, keepdim=True).values)
    return flat.view_as(x)


def gradcam_from_grads(acts: torch.Tensor, grads: torch.Tensor):
    """Grad-CAM from activations and gradients on the token grid.

    acts: (..., P, C) patch activations; grads: (..., P, C) d target / d acts.
    Returns weights (..., C), raw map (..., P) and the normalised map (..., P):
    ReLU, norm, ReLU, norm (the reference normalises twice).
    """
    return gradcam_from_weights(acts, grads.mean(dim=-2))


def gradcam_from_weights(acts: torch.Tensor, weights: torch.Tensor):
    """As :func:`gradcam_from_grads`, from the channel weights (..., C) directly."""
    raw = (acts * weights.unsqueeze(-2)).sum(dim=-1)  # (..., P)
    cam = minmax_norm(raw.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    cam = minmax_norm(cam.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return weights, raw, cam


@dataclass
class CamConfig:
    """Options of the CAM stage. Defaults are the reference behaviour."""

    mode: str = "reference"  # "reference" | "batched"
    box_threshold: float = 0.4  # 0.4 VOC, 0.7 COCO
    use_caa: bool = True  # False: the ablation without attention affinity
    use_background: bool = True  # False: softmax without the background texts (ablation)
    use_softmax: bool = True  # False: Grad-CAM of the raw logit (the "no softmax" ablation)
    clip_box_border: bool = True  # reference quirk: boxes lose the last row/column
    sinkhorn_rounds: int = 3
    batch_size: int = 1  # images of one size per pass (batched mode; >1 pays off on GPUs)
    fast_grad: bool = True  # batched: hand-written Grad-CAM backward (clipes.fastgrad)
    autocast: str | None = None  # None | "fp16" | "bf16": batched mode, meant for GPUs
    # what autocast covers: "all" (every block, and the Grad-CAM backward through the last
    # one) or "trunk" (blocks 1 .. L-1; the last block, whose activations and gradients
    # Grad-CAM reads, runs in fp32: 1/L of the forward, and the hand-written backward)
    autocast_scope: str = "all"
    # reference mode: the authors' script leaves CLIP trainable, so each per-class backward
    # also computes the gradients of the last block's weights (then discarded). Same
    # numbers either way; False gives the reference schedule with frozen weights.
    param_grads: bool = True
    dump: bool = False  # keep intermediate arrays (for parity checks and debugging)
    dump_deep: bool = False  # reference mode: also tokens, activations, gradients, all attention
    keep_plain: bool = False  # also return the Grad-CAM before CAA at the original size
    max_side: int | None = None  # None: images at their own size (reference); else the
    # long side the model sees at most (see input_size)


def scaled_backward(out: torch.Tensor, inp: torch.Tensor, grad_out: torch.Tensor,
                    retain_graph: bool = False) -> torch.Tensor:
    """d out / d inp in fp32, for out (B, D) computed in reduced precision from inp (B, ...)
    and the upstream gradient grad_out (B, D) in fp32.

    Softmax probabilities near 0 or 1 give upstream gradients far below fp16's smallest
    number (6e-8): a plain fp16 backward returns zeros and the CAM is noise (measured on the
    tiny golden CLIP: a mean difference of 0.09 from the fp32 maps, 0.95 at worst). Each
    row is scaled by a power of two to a maximum in [1, 2) before the backward and scaled
    back after it, as a loss scaler does; the maps then stay within 4e-4 (fp16) and 5e-3
    (bf16) of fp32 on average."""
    amax = grad_out.abs().amax(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)  # (B,)
    scale = torch.exp2(-torch.floor(torch.log2(amax)))  # (B,)
    (g,) = torch.autograd.grad(out, inp, grad_outputs=(grad_out * scale[:, None]).to(out.dtype),
                               retain_graph=retain_graph)
    return g.float() / scale.view(-1, *[1] * (g.dim() - 1))


@dataclass
class CamResult:
    """One image's maps on the patch grid, and (lazily) at the image size."""

    keys: np.ndarray  # (K,) int64 class indices, in label order
    grid: np.ndarray  # (K, gh, gw) float32: refined (or, without CAA, plain) normalised maps
    image_hw: tuple[int, int]  # the original image's (H, W)
    plain_grid: np.ndarray | None = None  # (K, gh, gw) float32 Grad-CAM before CAA (keep_plain)
    extras: dict = field(default_factory=dict)  # intermediates when CamConfig.dump

    @property
    def cams(self) -> np.ndarray:
        """(K, H, W) float32 at the image size (camstore.upsample, the archives' resize)."""
        return camstore.upsample(self.grid, self.image_hw)

    @property
    def plain(self) -> np.ndarray | None:
        return None if self.plain_grid is None else camstore.upsample(self.plain_grid, self.image_hw)


class CamEngine:
    """Computes CLIP-ES CAMs for images with known labels.

    text_fg: (N_fg, D) normalised class embeddings; text_bg: (N_bg, D) background ones.
    """

    def __init__(self, clip, text_fg: torch.Tensor, text_bg: torch.Tensor | None,
                 config: CamConfig = CamConfig(), device: str | torch.device = "cpu"):
        if config.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {config.mode!r}")
        self.cfg = config
        self.device = torch.device(device)
        self.tower = VisionTower(clip)
        self.text_fg = text_fg.float().to(self.device)
        use_bg = config.use_background and text_bg is not None and len(text_bg) > 0
        self.text_bg = text_bg.float().to(self.device) if use_bg else self.text_fg[:0]
        self.scale = clip.logit_scale.detach().float().exp().to(self.device)
        if config.autocast_scope not in AUTOCAST_SCOPES:
            raise ValueError(f"autocast_scope must be one of {AUTOCAST_SCOPES}, got "
                             f"{config.autocast_scope!r}")
        if config.autocast and config.mode == "reference":
            raise ValueError("autocast applies to batched mode: reference mode reproduces "
                             "the authors' fp32 computation (use mode 'batched')")

    # ---------------------------------------------------------------- shared pieces
    def _autocast(self):
        if not self.cfg.autocast:
            return torch.autocast(self.device.type, enabled=False)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[self.cfg.autocast]
        return torch.autocast(self.device.type, dtype=dtype)

    def _candidates(self, keys: np.ndarray) -> torch.Tensor:
        """Softmax candidates of one image: its classes, then the background set. (M, D)"""
        fg = self.text_fg[torch.as_tensor(keys, dtype=torch.long, device=self.device)]
        t = torch.cat([fg, self.text_bg])
        return t / t.norm(dim=-1, keepdim=True)

    def _scores(self, feat: torch.Tensor, cand: torch.Tensor) -> tuple:
        """feat (D,) -> logits (M,), and the Grad-CAM targets (probs or logits) (M,)."""
        f = feat.float()
        f = f / f.norm(dim=-1, keepdim=True)
        logits = self.scale * (f @ cand.T)
        probs = logits.softmax(dim=-1)
        return logits, probs, (probs if self.cfg.use_softmax else logits)

    @contextlib.contextmanager
    def _trainable_head(self):
        """The last block's, ln_post's and proj's weights with requires_grad on, for the
        authors' schedule (their backward computes these gradients too); reset on exit."""
        if not self.cfg.param_grads:
            yield []
            return
        tw = self.tower
        params = [p for m in (tw.blocks[-1], tw.v.ln_post) for p in m.parameters()] + [tw.v.proj]
        for p in params:
            p.requires_grad_(True)
        try:
            yield params
        finally:
            for p in params:
                p.requires_grad_(False)

    def _caa_layers(self):
        return self.tower.num_layers - CAA_LAYERS

    # ---------------------------------------------------------------- entry points
    def run(self, images: list[torch.Tensor], keys: list[np.ndarray],
            orig_hw: list[tuple[int, int]]) -> list[CamResult]:
        """CAMs for images of ONE input size: images[b] is (3, h, w), keys[b] (K_b,)."""
        if self.cfg.mode == "reference":
            return [self._run_reference(im, k, hw) for im, k, hw in zip(images, keys, orig_hw)]
        out = []
        for i in range(0, len(images), max(1, self.cfg.batch_size)):
            sl = slice(i, i + self.cfg.batch_size)
            out.extend(self._run_batched(images[sl], keys[sl], orig_hw[sl]))
        return out

    # ---------------------------------------------------------------- reference mode
    def _run_reference(self, image, keys, orig_hw) -> CamResult:
        keys = np.asarray(keys, dtype=np.int64)
        tw = self.tower
        grid = (image.shape[1] // tw.patch, image.shape[2] // tw.patch)
        cand = self._candidates(keys)
        with self._autocast():
            tokens = tw.embed(image[None].to(self.device))
            x, attn = tw.trunk(tokens, keep_attn_from=0)  # all blocks' weights, as the authors
        extras = _Dump(self.cfg.dump)
        deep = _Dump(self.cfg.dump and self.cfg.dump_deep)
        refined, plain = [], []
        attn8 = None
        for k in range(len(keys)):
            with torch.enable_grad(), self._autocast(), self._trainable_head() as params:
                a = tw.last_block_input_norm(x)
                out, w_last = tw.last_block(x, a)
                logits, probs, target = self._scores(tw.pool_patches(out)[0], cand)
                grad = torch.autograd.grad(target[k], [a, *params], allow_unused=True)[0]
            weights, raw, cam = gradcam_from_grads(a[0, 1:].detach().float(), grad[0, 1:].float())
            cam_grid = cam.view(grid)
            if deep.enabled:
                deep.add_class(gradients=grad[0, 1:].T.reshape(-1, *grid))
            if attn8 is None:  # the authors average the attention once, at the first class
                attn8 = torch.stack([*attn, w_last.detach()][-CAA_LAYERS:]).float().mean(0)[0, 1:, 1:]
            if self.cfg.use_caa:
                # rebuilt for every class, as in the reference loop
                trans = affinity.transition_matrix(attn8, self.cfg.sinkhorn_rounds)
                if k == 0:
                    deep.add_image(trans_mat=trans)
                mask, boxes = affinity.box_mask(cam_grid.cpu().numpy(), self.cfg.box_threshold,
                                                self.cfg.clip_box_border)
                ref_raw = affinity.refine(trans, torch.from_numpy(mask).to(trans), cam_grid[None])[0]
                out_map = minmax_norm(ref_raw)
                extras.add_class(mask=mask, boxes=boxes, k=k, cam_refined_raw=ref_raw,
                                 cam_refined_norm=out_map)
            else:
                out_map = cam_grid
            refined.append(out_map)
            plain.append(cam_grid)
            extras.add_class(gradcam_weights=weights, gradcam_raw=raw.view(grid),
                             grayscale_cam=cam_grid)
        if extras.enabled:  # intermediates are computed only when they are kept
            extras.add_image(probs=probs, logits=logits, text_features_used=cand,
                             image_feature=tw.pool_patches(out.detach())[0], attn_mean8=attn8,
                             grid_hw=grid)
        if deep.enabled:
            deep.add_image(pos_embed_used=tw.pos_embed(grid), tokens_in_last_block=x[0],
                           ln1_last_out=a[0, 1:].detach().T.reshape(-1, *grid),
                           attn_layers=torch.stack([*attn, w_last.detach()])[:, 0])
            extras.merge(deep)
        return self._finish(keys, torch.stack(refined), orig_hw, extras, torch.stack(plain))

    # ---------------------------------------------------------------- batched mode
    def _run_batched(self, images, keys_list, orig_hws) -> list[CamResult]:
        tw = self.tower
        b = len(images)
        grid = (images[0].shape[1] // tw.patch, images[0].shape[2] // tw.patch)
        keys_list = [np.asarray(k, dtype=np.int64) for k in keys_list]
        kmax = max(len(k) for k in keys_list)
        head_amp = bool(self.cfg.autocast) and self.cfg.autocast_scope == "all"
        fast = self.cfg.fast_grad and not head_amp and fastgrad.supported(tw.blocks[-1])
        with self._autocast():
            tokens = tw.embed(torch.stack(images).to(self.device))
            x, attn = tw.trunk(tokens, keep_attn_from=self._caa_layers())
        if not head_amp:
            x = x.float()  # (B, 1 + P, C): the last block in fp32
        with self._autocast() if head_amp else contextlib.nullcontext():
            if fast:
                a = tw.last_block_input_norm(x).detach()
                out, w_last, cache = fastgrad.last_block_forward(tw.blocks[-1], x, a)
                feats = tw.pool_patches(out)  # (B, D)
            else:
                with torch.enable_grad():
                    a = tw.last_block_input_norm(x)
                    out, w_last = tw.last_block(x, a)
                    feats = tw.pool_patches(out)  # (B, D), graph to a
        # d target_k / d feature, per image, on a detached copy (cheap, D-dimensional)
        cands = [self._candidates(k) for k in keys_list]
        feat_leaf = feats.detach().float().requires_grad_(True)
        dfeat = torch.zeros(kmax, b, feats.shape[1], device=self.device)  # (Kmax, B, D)
        scores = []
        with torch.enable_grad():
            for i in range(b):
                logits, probs, target = self._scores(feat_leaf[i], cands[i])
                scores.append((logits.detach(), probs.detach()))
                for k in range(len(keys_list[i])):
                    (g,) = torch.autograd.grad(target[k], feat_leaf, retain_graph=True)
                    dfeat[k, i] = g[i]
        acts = a.detach()[:, 1:].float()  # (B, P, C)
        if fast:  # all class slots and images at once, patch-mean gradients only
            chan = fastgrad.gradcam_weights(tw.blocks[-1], tw.v.ln_post, tw.v.proj, out, cache,
                                            dfeat)  # (Kmax, B, C)
            weights, raw, cam = gradcam_from_weights(acts[None], chan.float())
        else:  # one backward per class slot, each for all images of the batch (a vmapped
            # backward, is_grads_batched, measured slower on CPU)
            grads = torch.stack([
                scaled_backward(feats, a, dfeat[k], retain_graph=k < kmax - 1)
                for k in range(kmax)])  # (Kmax, B, 1 + P, C)
            weights, raw, cam = gradcam_from_grads(acts[None], grads[:, :, 1:].float())
        attn8 = torch.stack([*attn, w_last.detach()][-CAA_LAYERS:]).float().mean(0)[:, 1:, 1:]
        cams = cam.transpose(0, 1).reshape(b, kmax, *grid)  # (B, Kmax, gh, gw); empty slots 0
        if self.cfg.use_caa:  # the whole batch on the device: no host copy, no patch loop
            trans = affinity.transition_matrices(attn8, self.cfg.sinkhorn_rounds)  # (B, P, P)
            masks = affinity.box_masks(cams.flatten(0, 1), self.cfg.box_threshold,
                                       self.cfg.clip_box_border).view(b, kmax, *grid)
        results = []
        for i in range(b):
            keys, n_k = keys_list[i], len(keys_list[i])
            cam_i = cams[i, :n_k]  # (K, gh, gw)
            extras = _Dump(self.cfg.dump)
            if self.cfg.use_caa:
                # one product per image: its K columns alone, as the per-image schedule
                ref_raw = affinity.refine(trans[i], masks[i, :n_k], cam_i)
                out_maps = minmax_norm(ref_raw)
                if extras.enabled:
                    for k in range(n_k):
                        _, boxes = affinity.box_mask(cam_i[k].cpu().numpy(), self.cfg.box_threshold,
                                                     self.cfg.clip_box_border)
                        extras.add_class(mask=masks[i, k].cpu().numpy(), boxes=boxes, k=k,
                                         cam_refined_raw=ref_raw[k], cam_refined_norm=out_maps[k])
            else:
                out_maps = cam_i
            for k in range(n_k):
                extras.add_class(gradcam_weights=weights[k, i], gradcam_raw=raw[k, i].view(grid),
                                 grayscale_cam=cam_i[k])
            logits, probs = scores[i]
            extras.add_image(probs=probs, logits=logits, text_features_used=cands[i],
                             image_feature=feats[i].detach(), attn_mean8=attn8[i], grid_hw=grid)
            results.append(self._finish(keys, out_maps, orig_hws[i], extras, cam_i))
        return results

    # ---------------------------------------------------------------- output
    def _finish(self, keys, maps_grid: torch.Tensor, orig_hw, extras, plain_grid=None) -> CamResult:
        """maps_grid (K, gh, gw) to the host; the resize to the original (H, W), bilinear as
        cv2.resize, is camstore.upsample's, wherever the maps are read."""
        grid = maps_grid.detach().float().cpu().numpy()
        plain = plain_grid.detach().float().cpu().numpy() if self.cfg.keep_plain else None
        res = CamResult(keys=keys, grid=grid, image_hw=tuple(int(v) for v in orig_hw),
                        plain_grid=plain)
        if extras.enabled:
            extras.add_image(attn_highres_f32=res.cams)
        res.extras = extras.arrays()
        return res


class _Dump:
    """Collects intermediate arrays under the golden set's names when enabled."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.per_class: dict[str, list] = {}
        self.image: dict[str, np.ndarray] = {}
        self.boxes: list = []

    @staticmethod
    def _np(v):
        return v.detach().float().cpu().numpy() if torch.is_tensor(v) else np.asarray(v)

    def add_class(self, mask=None, boxes=None, k=None, **arrays):
        if not self.enabled:
            return
        if mask is not None:
            self.per_class.setdefault("box_mask", []).append(mask.astype(np.uint8))
            rows = boxes if len(boxes) else np.zeros((1, 4), np.int64)
            self.boxes.extend([[k, *r] for r in rows])
        for name, v in arrays.items():
            self.per_class.setdefault(name, []).append(self._np(v))

    def add_image(self, **arrays):
        if self.enabled:
            self.image.update({n: self._np(v) for n, v in arrays.items()})

    def merge(self, other: "_Dump") -> None:
        if other.enabled:
            self.per_class.update(other.per_class)
            self.image.update(other.image)

    def arrays(self) -> dict:
        if not self.enabled:
            return {}
        out = {n: np.stack(v) for n, v in self.per_class.items()}
        out.update(self.image)
        if self.boxes:
            out["boxes"] = np.asarray(self.boxes, dtype=np.int64)
        return out


class _Chunks:
    """The image chunks of a CAM run as a map-style dataset: item i is the preprocessed
    (3, h, w) inputs of chunk i, decoded where it is asked for (a DataLoader worker, or
    this process). A bad file comes back as its DatasetError, raised by the consumer, so
    it stays one line."""

    def __init__(self, chunks, resize: str = "pil"):
        self.chunks = chunks  # [(input size (h, w), [Sample, ...]), ...]
        self.resize = resize

    def __len__(self):
        return len(self.chunks)

    def __getitem__(self, i):
        from .datasets import open_image
        from .errors import DatasetError

        size, group = self.chunks[i]
        try:
            images = []
            for s in group:
                with open_image(s.image) as im:
                    images.append(preprocess(im, size, self.resize))
            return images
        except DatasetError as e:
            return e


def _as_is(item):
    return item


def _loaded(chunks, loaders: int, resize: str = "pil"):
    """Preprocessed inputs of each chunk, in order; with loaders > 0 decoded ahead by that
    many DataLoader worker processes (the model's work is not waiting on decoding)."""
    data = _Chunks(chunks, resize)
    if loaders <= 0 or len(chunks) < 2:
        return (data[i] for i in range(len(data)))
    from torch.utils.data import DataLoader

    return iter(DataLoader(data, batch_size=None, shuffle=False, num_workers=loaders,
                           collate_fn=_as_is, prefetch_factor=2, persistent_workers=False))


def run_dataset(engine: CamEngine, samples, out_dir, resume: bool = False,
                dump: bool = False, progress: bool = True, loaders: int = 0,
                store: str = camstore.STORE_GRID, compress: bool = True,
                progress_every: int | None = None, resize: str = "pil") -> list[dict]:
    """CAMs for dataset samples, written as ``out_dir/<id>.npz`` in the ``store`` layout
    (see :mod:`clipes.camstore`).

    Images are grouped by model input size so batched mode can stack them. With
    ``resume``, images whose archive exists are left as they are (archives are written
    atomically, so an existing one is complete). Returns one record per image: id,
    seconds (the model's time, per image of its chunk), the time to decode it and to write
    its archive, number of classes, and whether it was computed or reused.

    ``loaders`` DataLoader workers decode and resize the next chunks while the model runs
    (the outputs are the same bytes either way); ``compress=False`` writes plain .npz files;
    ``resize`` picks the input resize (:func:`resize_rgb`: ``pil`` is the reference).
    Progress goes to stderr every ``progress_every`` images (default: about 20 lines a run).
    """
    from pathlib import Path

    from .datasets import group_by_input_size
    from .errors import DatasetError

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    todo = []
    for s in samples:
        if resume and (out_dir / f"{s.id}.npz").is_file():
            records.append({"id": s.id, "seconds": 0.0, "decode_s": 0.0, "write_s": 0.0,
                            "n_classes": len(s.keys), "reused": True})
        else:
            todo.append(s)
    patch = engine.tower.patch
    step = engine.cfg.batch_size if engine.cfg.mode == "batched" else 1
    chunks = [(size, group[i:i + step])
              for size, group in group_by_input_size(todo, patch, engine.cfg.max_side).items()
              for i in range(0, len(group), step)]
    every = progress_every or max(1, len(todo) // 20)
    done, t_start, shown = 0, time.perf_counter(), 0
    loaded = _loaded(chunks, loaders, resize)
    for size, chunk in chunks:
        t0 = time.perf_counter()
        images = next(loaded)  # decoded here, or waited for from the loader workers
        if isinstance(images, DatasetError):
            raise images
        t1 = time.perf_counter()
        results = engine.run(images, [np.asarray(s.keys) for s in chunk],
                             [s.orig_hw for s in chunk])
        t2 = time.perf_counter()
        for s, r in zip(chunk, results):
            extra = {f"dbg_{k}": v for k, v in r.extras.items()} if dump else {}
            camstore.save_cams(out_dir / f"{s.id}.npz", r.keys, r.grid, r.image_hw,
                               r.plain_grid, store=store, compress=compress, **extra)
        t3 = time.perf_counter()
        n = len(chunk)
        records += [{"id": s.id, "seconds": (t2 - t1) / n, "decode_s": (t1 - t0) / n,
                     "write_s": (t3 - t2) / n, "n_classes": len(s.keys), "reused": False}
                    for s in chunk]
        done += n
        if progress and (done - shown >= every or done == len(todo)):
            shown = done
            rate = done / (t3 - t_start)
            print(f"cams {done}/{len(todo)}: {rate:.2f} images/s, eta "
                  f"{(len(todo) - done) / rate:.0f} s (last chunk: input {size[1]}x{size[0]}, "
                  f"model {(t2 - t1) / n:.3f} s/image)", file=sys.stderr, flush=True)
    del loaded  # loader workers, if any, are shut down here, not at the process's exit
    return records
