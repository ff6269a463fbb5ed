"""Train a tiny CLIP on image captions (the offline demo's stand-in for OpenAI's CLIP).

The model is an ordinary open_clip CLIP (ViT vision tower, QuickGELU) trained with the
symmetric contrastive loss on (image, caption) pairs, and saved as an OpenAI-format state
dict, so the CAM stage loads it exactly as it loads ViT-B-16.pt.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .cam import CLIP_MEAN, CLIP_STD
from .io import atomic_path


@dataclass
class TinyClipConfig:
    image_size: int = 96
    patch_size: int = 12
    vision_width: int = 128
    vision_layers: int = 4
    text_width: int = 128
    text_layers: int = 3
    context_length: int = 32
    embed_dim: int = 64
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0
    max_seconds: float | None = None  # stop early after this long (the step count is logged)
    # image embedding used in training: "tok" (CLS, as OpenAI CLIP) or "avg" (mean of the
    # patch tokens: the pooling CLIP-ES scores with)
    pool: str = "tok"
    # weight of the auxiliary appearance-grouping loss on the vision tower's attention
    # (0: plain CLIP training), and the colour distance its target links patches within
    group_loss: float = 0.0
    group_sigma: float = 0.05
    # which attention the grouping loss constrains (GROUP_SCOPES; see grouping_loss)
    group_scope: str = "mean"


GROUP_SCOPES = ("mean", "block", "early", "early+mean")


def build_tiny_clip(cfg: TinyClipConfig):
    import open_clip

    vision = open_clip.CLIPVisionCfg(layers=cfg.vision_layers, width=cfg.vision_width,
                                     patch_size=cfg.patch_size, image_size=cfg.image_size,
                                     head_width=64, pool_type=cfg.pool)
    text = open_clip.CLIPTextCfg(context_length=cfg.context_length, vocab_size=49408,
                                 width=cfg.text_width, heads=max(1, cfg.text_width // 64),
                                 layers=cfg.text_layers)
    return open_clip.CLIP(cfg.embed_dim, vision, text, quick_gelu=True)


def load_images(images, size: int) -> torch.Tensor:
    """Image paths or RGB arrays, resized (bicubic) to size x size and CLIP-normalised:
    (N, 3, size, size)."""
    def rgb(im):
        im = Image.open(im).convert("RGB") if not isinstance(im, np.ndarray) else Image.fromarray(im)
        return np.asarray(im.resize((size, size), Image.BICUBIC))

    arr = np.stack([rgb(im) for im in images]).astype(np.float32) / 255
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def appearance_target(rgb: torch.Tensor, patch: int, sigma: float) -> torch.Tensor:
    """The attention the grouping loss asks for, from the pixels alone: rgb (B, 3, H, W)
    in [0, 1] -> row-stochastic (B, P, P) over the patch grid, patch i linked to patch j
    with weight exp(-|c_i - c_j|^2 / sigma^2), c the patches' mean colours."""
    c = F.avg_pool2d(rgb, patch).flatten(2).transpose(1, 2)  # (B, P, 3)
    w = torch.exp(-torch.cdist(c, c).square() / sigma ** 2)
    return w / w.sum(-1, keepdim=True)


class AttentionProbe:
    """Collects the patch-to-patch attention of every block of an open_clip vision tower
    during its forward pass, differentiably: the mean over blocks and heads, as CAA
    averages it, renormalised over the patches (the CLS column dropped). (B, P, P), rows
    = queries."""

    def __init__(self, visual):
        self.inputs = []
        self.blocks = list(visual.transformer.resblocks)
        self.handles = [blk.register_forward_pre_hook(self._keep) for blk in self.blocks]

    def _keep(self, module, args):
        self.inputs.append(args[0])

    def remove(self):
        for h in self.handles:
            h.remove()

    def pop(self, per_block: bool = False) -> torch.Tensor:
        """(B, P, P); with ``per_block`` each block's map, (K, B, P, P)."""
        maps = []
        for blk, x in zip(self.blocks, self.inputs):  # x (B, L, D): open_clip is batch first
            mha = blk.attn
            d, heads = x.shape[-1], mha.num_heads
            y = blk.ln_1(x)
            q = F.linear(y, mha.in_proj_weight[:d], mha.in_proj_bias[:d])
            k = F.linear(y, mha.in_proj_weight[d:2 * d], mha.in_proj_bias[d:2 * d])
            q = q.unflatten(-1, (heads, d // heads)).transpose(1, 2)  # (B, heads, L, dh)
            k = k.unflatten(-1, (heads, d // heads)).transpose(1, 2)
            maps.append(torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5, -1).mean(1))
        self.inputs = []
        if per_block:
            a = torch.stack(maps)[..., 1:, 1:]  # (K, B, P, P)
        else:
            a = torch.stack(maps).mean(0)[:, 1:, 1:]
        return a / a.sum(-1, keepdim=True)


def _cross_entropy(want: torch.Tensor, got: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j want log got; want (B, P, P), got (..., B, P, P)."""
    return -(want * got.clamp_min(1e-8).log()).sum(-1).mean()


def grouping_loss(want: torch.Tensor, probe: AttentionProbe, scope: str = "mean") -> torch.Tensor:
    """The grouping loss of the attention the probe collected, against ``want`` (B, P, P)
    (:func:`appearance_target`). ``scope`` says which attention it constrains:

    - "mean": the mean over blocks and heads, as CAA averages it (the previous demo CLIP);
    - "block": each block's head-mean attention, the cross-entropies averaged;
    - "early": the same for every block but the last, which is left free;
    - "early+mean": "early" plus the cross-entropy of the blocks' mean (of their
      renormalised maps), so the last block may differ from the target only as far as
      the mean allows (the shipped demo CLIP, config/demo/README.md).
    """
    if scope not in GROUP_SCOPES:
        raise ValueError(f"grouping scope {scope!r}: expected one of {', '.join(GROUP_SCOPES)}")
    if scope == "mean":
        return _cross_entropy(want, probe.pop())
    blocks = probe.pop(per_block=True)  # (K, B, P, P)
    loss = _cross_entropy(want, blocks if scope == "block" else blocks[:-1])
    if scope == "early+mean":
        avg = blocks.mean(0)
        loss = loss + _cross_entropy(want, avg / avg.sum(-1, keepdim=True))
    return loss


def train_tiny_clip(images: list | None, captions: list[str] | None, out: Path,
                    cfg: TinyClipConfig = TinyClipConfig(), log=None, stream=None) -> dict:
    """Contrastive training on (image, caption) pairs (images: paths or RGB arrays);
    writes an OpenAI-format checkpoint to ``out``. With ``stream`` (a function of a numpy
    Generator and a count returning that many (RGB arrays, captions)), every step draws
    fresh pairs from it instead: no pair is seen twice, so the model cannot memorise its
    data (``images``/``captions`` are then unused).

    With ``cfg.group_loss`` > 0 the loss adds that weight times the cross-entropy between
    :func:`appearance_target` of the input and the tower's mean attention
    (:class:`AttentionProbe`): the attention learns to link patches that look alike, as
    web-scale pre-training teaches ViT-B/16's attention and minutes of contrastive
    training do not teach a tiny tower. CAA refines the CAM with that attention.

    Augmentation: random horizontal flips and 90-degree rotations (shape classes are
    invariant to both). Returns a summary (the recipe ``cfg``, whether it streamed, steps,
    seconds, final loss, the token ids the captions used).
    """
    import open_clip

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = build_tiny_clip(cfg)
    tok = open_clip.get_tokenizer("ViT-B-16")
    if stream is None:
        tokens = tok(captions, context_length=cfg.context_length)
        images = load_images(images, cfg.image_size)
        n = len(images)
        seen = set(tokens.unique().tolist())
    else:
        data_rng = np.random.default_rng([cfg.seed, 1])
        seen = set()
    probe = AttentionProbe(model.visual) if cfg.group_loss else None
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps,
                                                pct_start=0.1)
    t0 = time.time()
    losses, group_losses = [], []
    step = 0
    for step in range(1, cfg.steps + 1):
        if stream is None:
            idx = torch.from_numpy(rng.choice(n, min(cfg.batch_size, n), replace=False))
            x, t = images[idx], tokens[idx]
        else:
            batch_images, batch_captions = stream(data_rng, cfg.batch_size)
            x = load_images(batch_images, cfg.image_size)
            t = tok(batch_captions, context_length=cfg.context_length)
            seen.update(t.unique().tolist())
        if rng.random() < 0.5:
            x = x.flip(-1)
        x = torch.rot90(x, int(rng.integers(4)), dims=(-2, -1))
        img_f = F.normalize(model.encode_image(x), dim=-1)
        txt_f = F.normalize(model.encode_text(t), dim=-1)
        logits = model.logit_scale.exp() * img_f @ txt_f.T
        # captions can repeat: pairs with the same caption are all positives
        same = (t[:, None] == t[None]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        if probe is not None:
            want = appearance_target(x * std + mean, cfg.patch_size, cfg.group_sigma)
            group = grouping_loss(want, probe, cfg.group_scope)
            group_losses.append(group.item())
            loss = loss + cfg.group_loss * group
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append(loss.item())
        if log and (step % 50 == 0 or step == 1):
            grouping = f" (grouping {np.mean(group_losses[-50:]):.3f})" if group_losses else ""
            log(f"step {step}/{cfg.steps} loss {np.mean(losses[-50:]):.3f}{grouping} "
                f"({time.time() - t0:.0f} s)")
        if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
            break
    if probe is not None:
        probe.remove()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with atomic_path(out, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return {"recipe": asdict(cfg), "stream": stream is not None,
            "steps": step, "seconds": time.time() - t0, "final_loss": float(np.mean(losses[-50:])),
            "params": sum(p.numel() for p in model.parameters()), "tokens_seen": sorted(seen),
            **({"final_grouping_loss": float(np.mean(group_losses[-50:]))} if group_losses else {})}


def compact_state(state: dict, keep_tokens) -> dict:
    """The state dict with every token embedding row outside ``keep_tokens`` set to zero:
    rows of tokens no caption used never got a gradient (they hold the random init,
    shrunk by weight decay), and zeros make the shipped file small."""
    state = dict(state)
    emb = state["token_embedding.weight"].clone()
    keep = torch.zeros(len(emb), dtype=torch.bool)
    keep[torch.as_tensor(sorted(keep_tokens), dtype=torch.long)] = True
    emb[~keep] = 0
    state["token_embedding.weight"] = emb
    return state
