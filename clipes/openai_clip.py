"""CLIP's architecture built from an OpenAI-format state dict, without importing open_clip.

Importing open_clip costs a CAM, tagging or prompt-scoring job 2.3-2.4 s of its start on
a CPU (it imports torchvision, which imports ``torch._dynamo``, and timm), more than the
model loop takes for a VOC image on a GPU. An OpenAI-format checkpoint (a ViT with a class
token, QuickGELU, a causal text tower) needs none of it: this module builds the same
modules open_clip builds for such a file (``open_clip.build_model_from_openai_state_dict``
with ``cast_dtype=None``, then ``.float()``), with the same parameter names, module types
and operations, so every forward gives the same bits (tests compare both on random
weights, text and images). Checkpoints of other layouts (ResNet towers, model names to
download) still go through open_clip.

Shapes: images (B, 3, H, W); tokens (B, 1 + P, C) with the class token first; text
(N, L) token ids; features (B, D).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# OpenAI's CLIP normalises pixels with these (RGB) statistics
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HEAD_WIDTH = 64  # every OpenAI CLIP tower has 64 channels per attention head
# metadata in OpenAI's files, and the causal mask (rebuilt from the context length) that
# archives traced from an open_clip-style model carry: none of them is a weight
DROPPED_KEYS = ("input_resolution", "context_length", "vocab_size", "attn_mask")


class LayerNorm(nn.LayerNorm):
    """torch's LayerNorm, cast back to the input's dtype (open_clip's, in fp32 models)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig = x.dtype
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(orig)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: x + attn(ln_1(x)), then + mlp(ln_2(x)). Batch first (B, N, C).

    ``ls_1`` / ``ls_2`` are identities: the names open_clip gives its (unused for OpenAI
    weights) layer scales, which :class:`clipes.model.VisionTower` calls."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = nn.Identity()
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))
        self.ls_2 = nn.Identity()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = attn_mask.to(x.dtype) if attn_mask is not None else None
        a = self.ln_1(x)
        x = x + self.ls_1(self.attn(a, a, a, need_weights=False, attn_mask=mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].mlp.c_fc.weight.dtype

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        for blk in self.resblocks:
            x = blk(x, attn_mask=attn_mask)
        return x


class VisionTransformer(nn.Module):
    """ViT image tower: patch embedding, class token, ln_pre, blocks, ln_post, projection."""

    attn_pool = None  # the attributes clipes.model.check_supported looks at
    trunk = None

    def __init__(self, image_size: int, patch: int, width: int, layers: int, output_dim: int):
        super().__init__()
        self.image_size = (image_size, image_size)
        self.patch_size = (patch, patch)
        self.grid_size = (image_size // patch, image_size // patch)
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(
            torch.empty(self.grid_size[0] * self.grid_size[1] + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, width // HEAD_WIDTH)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))
        self.image_mean, self.image_std = OPENAI_MEAN, OPENAI_STD

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) at the training size -> pooled class-token features (B, D)."""
        x = self.conv1(x)  # (B, C, gh, gw)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, P, C)
        cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x)[:, 0] @ self.proj


class CLIP(nn.Module):
    """The two towers and the logit scale, under open_clip's CLIP parameter names."""

    text_pool_type = "argmax"  # the end token has the largest id: its position is pooled
    text_eos_id = None

    def __init__(self, embed_dim: int, vision: dict, context_length: int, vocab_size: int,
                 text_width: int, text_layers: int):
        super().__init__()
        self.visual = VisionTransformer(output_dim=embed_dim, **vision)
        self.transformer = Transformer(text_width, text_layers, text_width // HEAD_WIDTH)
        self.context_length, self.vocab_size = context_length, vocab_size
        self.token_embedding = nn.Embedding(vocab_size, text_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, text_width))
        self.ln_final = LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.empty(text_width, embed_dim))
        self.register_buffer("attn_mask", causal_mask(context_length), persistent=False)
        self.logit_scale = nn.Parameter(torch.ones([]))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """(N, L) token ids -> (N, D): the end token's output, projected."""
        cast = self.transformer.get_cast_dtype()
        x = self.token_embedding(text).to(cast) + self.positional_embedding.to(cast)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        return x @ self.text_projection


@contextlib.contextmanager
def no_weight_init():
    """Skip the random initialisation of modules built only to be overwritten by a
    checkpoint (for ViT-B/16 on a CPU: about 1.5 s of a CAM job's start). open_clip loads
    OpenAI-format files with a strict load_state_dict, so every parameter and persistent
    buffer is replaced: the loaded weights are the same bits as with the initialisation."""
    import torch.nn.init as init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_")
             and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}

    def keep(tensor, *args, **kwargs):
        return tensor

    try:
        for n in names:
            setattr(init, n, keep)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def causal_mask(n: int) -> torch.Tensor:
    """(n, n) additive mask: -inf above the diagonal (a token sees itself and before).
    Built on the CPU even under a meta-device context (whose kernels would pull in
    torch._dynamo, 0.9 s)."""
    return torch.full((n, n), float("-inf"), device="cpu").triu_(1)


def is_openai_vit(state: dict) -> bool:
    """Whether ``state`` is an OpenAI-format ViT CLIP this module builds."""
    need = ("visual.proj", "visual.conv1.weight", "visual.class_embedding",
            "visual.positional_embedding", "text_projection", "token_embedding.weight",
            "positional_embedding", "ln_final.weight")
    return all(k in state and torch.is_tensor(state[k]) for k in need)


def fp16_keys(state: dict) -> set[str]:
    """The weights OpenAI (and open_clip, loading their files) keep in fp16: those of every
    convolution, linear layer and attention projection, and the two output projections.
    Layer norms and embeddings stay fp32."""
    keys = {"visual.proj", "text_projection"}
    for k in state:
        head, _, leaf = k.rpartition(".")
        if head == "visual.conv1" or k in keys:
            keys.add(k)
        elif leaf in ("in_proj_weight", "in_proj_bias"):
            keys.add(k)
        elif head.endswith((".out_proj", ".c_fc", ".c_proj")) and leaf in ("weight", "bias"):
            keys.add(k)
    return keys


def round_like_openai(state: dict, widen: bool = True) -> dict:
    """The state dict as open_clip's loader leaves it in an fp32 model: the fp16 weights
    (:func:`fp16_keys`) rounded to fp16, everything as fp32. An all-fp16 file (OpenAI's
    releases) is only widened; an fp32 file is rounded as the authors' code rounds it.
    ``widen=False`` keeps the rounded weights in fp16 (as a file stores them)."""
    half = fp16_keys(state)
    out = {}
    for k, v in state.items():
        if k in DROPPED_KEYS or not torch.is_tensor(v):
            continue
        if v.is_floating_point():
            v = v.half() if k in half else v.float()
            v = v.float() if widen else v
        out[k] = v
    return out


def build_from_state_dict(state: dict) -> CLIP:
    """An fp32, eval-mode :class:`CLIP` holding ``state``'s weights (rounded as open_clip
    rounds them). Raises KeyError/RuntimeError for a state dict of another layout."""
    sd = round_like_openai(state)
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    vision = dict(
        image_size=patch * round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5),
        patch=patch, width=width,
        layers=len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}))
    text_width = sd["ln_final.weight"].shape[0]
    # no memory and no initialisation for weights the file replaces (meta tensors' init
    # kernels would also import torch._dynamo, 0.9 s)
    with torch.device("meta"), no_weight_init():
        net = CLIP(
            embed_dim=sd["text_projection"].shape[1], vision=vision,
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0], text_width=text_width,
            text_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}))
    net.load_state_dict(sd, strict=True, assign=True)  # every parameter: no buffer left on meta
    return net.eval()
