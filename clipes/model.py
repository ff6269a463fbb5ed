"""Loading CLIP with open_clip and running its vision tower the way CLIP-ES needs it.

:func:`load_clip` returns a :class:`Clip` bundle for
- an open_clip model name and pretrained tag (``ViT-B-16`` + ``openai`` is the paper's
  model; OpenAI weights need QuickGELU, which is switched on for them), or
- an OpenAI-format checkpoint on disk (plain state dict or TorchScript archive); a ViT
  is built by :mod:`clipes.openai_clip`, without importing open_clip.

:class:`VisionTower` runs the ViT at any input size: positional embeddings resized to the
token grid, head-averaged attention kept for the blocks CAA needs, all blocks but the
last without autograd, and the last block split at its first LayerNorm, where Grad-CAM
takes activations and gradients.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import ClipLoadError, DatasetError  # noqa: F401 (ClipLoadError: re-exported)

PAPER_MODEL = "ViT-B-16"
PAPER_PRETRAINED = "openai"


@dataclass
class Clip:
    model: torch.nn.Module  # open_clip CLIP, eval mode, frozen
    tokenizer: Callable  # list[str] -> (N, context_length) int64
    name: str  # how it was loaded (model name / checkpoint path)

    @property
    def visual(self):
        return self.model.visual

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale


def _freeze(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_clip(
    model: str = PAPER_MODEL,
    pretrained: str | None = PAPER_PRETRAINED,
    checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    seed: int = 0,
) -> Clip:
    """Load a frozen fp32 CLIP.

    With ``checkpoint`` (a path), the OpenAI-format file is loaded and ``model`` /
    ``pretrained`` are ignored. Otherwise ``model`` is an open_clip architecture name and
    ``pretrained`` a tag (``None`` or ``"none"``: random initialisation from ``seed``, for
    tests and benchmarks). A tower CLIP-ES cannot run on is refused here, in one line.
    Weights are fetched into open_clip's own cache (``cache_dir`` overrides it).
    An OpenAI-format ViT checkpoint is built without importing open_clip
    (:mod:`clipes.openai_clip`; 2.3 s sooner on a CPU), with the same weights and outputs.
    """
    if checkpoint is not None:
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise ClipLoadError(
                f"CLIP checkpoint not found: {path}. Give the path of an OpenAI-format "
                f"checkpoint (e.g. ViT-B-16.pt from the OpenAI CLIP release), or leave the "
                f"checkpoint unset to download '{model}' weights through open_clip.")
        try:
            net = _load_openai_state_dict(path, device)
            if net is None:  # another layout (a ResNet tower): open_clip's loader
                import open_clip

                from .openai_clip import no_weight_init

                with warnings.catch_warnings(), no_weight_init():  # every weight is the file's
                    warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's notice
                    net = open_clip.load_openai_model(path, precision="fp32", device=device)
        except Exception as e:  # corrupt file, wrong format
            raise ClipLoadError(
                f"could not load {path} as an OpenAI-format CLIP checkpoint (state dict or "
                f"TorchScript archive): {e}") from e
        check_supported(net, path)
        # the tokenizer is the same BPE for every OpenAI-format CLIP (clipes.tokenizer)
        from .tokenizer import openai_tokenizer

        try:
            tokenizer = openai_tokenizer()
        except OSError as e:  # open_clip (which ships the vocabulary) missing or damaged
            raise ClipLoadError(f"CLIP's tokenizer could not be built: {e}") from e
        ctx = net.context_length
        return Clip(_freeze(net), lambda texts: tokenizer(texts, context_length=ctx), path)

    import open_clip

    random_init = pretrained is None or str(pretrained).lower() in RANDOM_TAGS
    kwargs = {}
    if pretrained == "openai" and not model.endswith("-quickgelu"):
        kwargs["force_quick_gelu"] = True  # OpenAI weights were trained with QuickGELU
    if random_init:
        kwargs["force_quick_gelu"] = True
        torch.manual_seed(seed)  # the same random weights in every process
    offline = False if random_init else _go_offline_if_hub_unreachable()
    try:
        net = open_clip.create_model(
            model, pretrained=None if random_init else pretrained, precision="fp32",
            device=device, cache_dir=cache_dir, **kwargs)
        tokenizer = open_clip.get_tokenizer(model)
    except ImportError as e:  # timm trunks, Hugging Face tokenizers
        raise ClipLoadError(_missing_package(model, e)) from e
    except RuntimeError as e:
        if "Unknown model" in str(e) or "not found" in str(e):
            raise ClipLoadError(
                f"unknown open_clip model {model!r} / pretrained tag {pretrained!r}: see "
                f"open_clip.list_pretrained() for the valid pairs") from e
        raise ClipLoadError(_hub_hint(model, pretrained, e, offline)) from e
    except Exception as e:  # network errors surface as many types (OSError, HTTPError, ...)
        if isinstance(getattr(e, "__cause__", None), ImportError):
            raise ClipLoadError(_missing_package(model, e.__cause__)) from e
        raise ClipLoadError(_hub_hint(model, pretrained, e, offline)) from e
    check_supported(net, model)
    name = f"{model}:random(seed {seed})" if random_init else f"{model}:{pretrained}"
    return Clip(_freeze(net), tokenizer, name)


def _load_openai_state_dict(path: str, device):
    """An OpenAI-format ViT checkpoint (plain state dict, TorchScript archive such as
    OpenAI's own releases, or this project's .npz) built by :mod:`clipes.openai_clip`:
    the model ``open_clip.load_openai_model(path, precision="fp32")`` gives, bit for bit,
    without importing open_clip. None for any other layout (then open_clip's loader is
    used). fp32 weights are rounded to fp16 where open_clip (and the authors' code) round
    them; an all-fp16 file, as OpenAI's, is only widened."""
    from . import openai_clip

    if str(path).endswith(".npz"):  # the same state dict as NumPy arrays (save_npz_state_dict)
        sd = load_npz_state_dict(path)
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a TorchScript archive: torch.load says so
                sd = torch.load(path, map_location="cpu", weights_only=True)  # data only
        except Exception:
            sd = _torchscript_state_dict(path)
    if not isinstance(sd, dict) or not openai_clip.is_openai_vit(sd):
        return None
    net = openai_clip.build_from_state_dict(sd)
    return net.to(device)


def _torchscript_state_dict(path: str):
    """The weights of a TorchScript archive (OpenAI's CLIP releases are), or None."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            return dict(torch.jit.load(path, map_location="cpu").state_dict())
    except Exception:
        return None


def save_npz_state_dict(state: dict, path) -> None:
    """An OpenAI-format state dict as a compressed NumPy archive: data only, and rows of
    zeros (an embedding's unused tokens) take almost no space. The weights open_clip
    rounds to fp16 when it loads an OpenAI-format file are stored rounded (fp16), the
    others (layer norms, embeddings) in fp32, so ``load_clip`` builds the same model from
    this file as from the .pt, bit for bit."""
    import numpy as np

    from .io import atomic_path
    from .openai_clip import round_like_openai

    stored = round_like_openai(state, widen=False)
    arrays = {k: v.detach().cpu().numpy() for k, v in stored.items()}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_npz_state_dict(path) -> dict:
    """The state dict of :func:`save_npz_state_dict` (no pickle: object arrays refused)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: torch.from_numpy(z[k].copy()) for k in z.files}


RANDOM_TAGS = ("", "none", "null", "random")
SUPPORTED = ("open_clip ViTs with a conv1 patch embedding, a class token and plain "
             "attention blocks, e.g. ViT-B-16 (the paper's), ViT-B-32, ViT-L-14, "
             "ViT-L-14-336, ViT-H-14, ViT-B-16-plus-240")


def check_supported(net, model: str) -> None:
    """Refuse, at load time and in one line, a tower CLIP-ES cannot run on."""
    v = getattr(net, "visual", None)
    why = None
    if v is None:
        why = "it has no vision tower"
    elif getattr(v, "trunk", None) is not None:
        why = f"its vision tower is a timm trunk ({type(v.trunk).__name__})"
    elif not isinstance(getattr(v, "conv1", None), torch.nn.Conv2d) or not hasattr(v, "transformer"):
        why = f"its vision tower is a {type(v).__name__}, not a ViT"
    elif getattr(v, "class_embedding", None) is None:
        why = "its ViT has no class token"
    elif getattr(v, "attn_pool", None) is not None:
        why = "its ViT pools with an attention pooler (CoCa-style)"
    elif getattr(v, "proj", None) is None:
        why = "its ViT has no output projection"
    elif not all(isinstance(getattr(b, "attn", None), torch.nn.MultiheadAttention)
                 for b in v.transformer.resblocks):
        why = "its blocks do not use standard multi-head attention"
    if why:
        raise ClipLoadError(f"model {model!r} is not supported: {why}. CLIP-ES runs on {SUPPORTED}.")


def _missing_package(model: str, err: ImportError) -> str:
    pkg = getattr(err, "name", None) or str(err)
    return (f"model {model!r} needs the optional package {pkg!r}, which is not installed: "
            f"pip install {pkg} (or choose a model without it, e.g. ViT-B-16)")


HUB_HOST = "huggingface.co"


def _go_offline_if_hub_unreachable(timeout: float = 5.0) -> bool:
    """Whether the Hugging Face hub (where open_clip keeps its weights) is out of reach;
    then the hub is switched to offline mode, so cached weights still load and missing
    ones fail at once instead of after a minute of retries. Behind a proxy (HTTPS_PROXY)
    nothing is probed: the proxy decides."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") == "1" or any(
            os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
        return os.environ.get("HF_HUB_OFFLINE") == "1"
    host = urlparse(os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}")).hostname or HUB_HOST
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return False
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import huggingface_hub.constants as hc

            hc.HF_HUB_OFFLINE = True
        except ImportError:
            pass
        return True


def _hub_hint(model, pretrained, err, offline: bool = False) -> str:
    if offline:
        return (f"the weights of {model!r} (pretrained={pretrained!r}) are not in open_clip's "
                f"cache and {HUB_HOST} cannot be reached (no internet here?). Download them "
                f"on a machine with internet (for the paper's model: ViT-B-16.pt of the "
                f"OpenAI CLIP release) and give the file with --checkpoint PATH (config: "
                f"model.checkpoint), or point model.cache_dir at a cache holding them.")
    return (f"could not get the weights of {model!r} (pretrained={pretrained!r}) through "
            f"open_clip: {err}. Without internet, download them elsewhere (for the paper's "
            f"model: ViT-B-16.pt of the OpenAI CLIP release) and give the file with "
            f"--checkpoint PATH (config: model.checkpoint).")


def build_random_clip(model: str = PAPER_MODEL, device="cpu", seed: int = 0) -> Clip:
    """The architecture of ``model`` with random weights and QuickGELU (no download)."""
    import open_clip

    torch.manual_seed(seed)
    net = open_clip.create_model(model, pretrained=None, force_quick_gelu=True, device=device)
    return Clip(_freeze(net), open_clip.get_tokenizer(model), f"{model}:random")


def resize_pos_embed(
    pos_embed: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int],
    round_fp16: bool = True,
) -> torch.Tensor:
    """Resize a ViT positional table (1 + gh0*gw0, C) to a (gh, gw) token grid.

    Bilinear, align_corners=False, no antialias; the CLS row is kept unchanged.
    ``round_fp16`` reproduces the reference, which rounds the whole table to float16
    and back at every input size (it stores it as a half Parameter).
    """
    cls_row, grid = pos_embed[:1], pos_embed[1:]  # (1, C), (P0, C)
    c = grid.shape[1]
    grid = grid.T.reshape(1, c, *src_grid)
    if tuple(dst_grid) != tuple(src_grid):
        grid = F.interpolate(grid, size=dst_grid, mode="bilinear", align_corners=False)
    table = torch.cat([cls_row, grid.reshape(c, -1).T], dim=0)  # (1 + gh*gw, C)
    if round_fp16:
        table = table.half().float()
    return table


def _mha_with_weights(attn: torch.nn.MultiheadAttention, x: torch.Tensor, need_weights: bool):
    """Self-attention of ``x`` (B, N, C) as torch's MHA computes it with need_weights=True.

    Returns (out (B, N, C), head-averaged attention probabilities (B, N, N) or None).
    Without ``need_weights`` the fused scaled-dot-product kernel is used.
    """
    b, n, c = x.shape
    h = attn.num_heads
    d = c // h
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)  # (B, N, 3C)
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
    if need_weights:
        q = q * math.sqrt(1.0 / float(d))
        probs = torch.matmul(q, k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        out = torch.matmul(probs, v)
        weights = probs.mean(dim=1)  # (B, N, N)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
        weights = None
    out = out.transpose(1, 2).reshape(b, n, c)
    return attn.out_proj(out), weights


class VisionTower:
    """The CLIP ViT of an open_clip model, run at any size with attention maps kept.

    Shapes: images (B, 3, h, w) with h, w multiples of the patch size; grid (gh, gw);
    P = gh * gw patch tokens; tokens (B, 1 + P, C) with CLS first.
    """

    def __init__(self, clip: Clip, round_pos_embed_fp16: bool = True):
        v = clip.visual
        for attr in ("conv1", "class_embedding", "positional_embedding", "ln_pre",
                     "transformer", "ln_post", "proj"):
            if getattr(v, attr, None) is None:
                raise DatasetError(f"{clip.name}: CLIP-ES needs a ViT vision tower with "
                                 f"'{attr}'; this model has none")
        self.v = v
        self.blocks = list(v.transformer.resblocks)
        self.patch = v.conv1.kernel_size[0]
        self.src_grid = tuple(v.grid_size)
        self.round_pos_embed_fp16 = round_pos_embed_fp16
        self._pos_cache: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        if grid not in self._pos_cache:
            self._pos_cache[grid] = resize_pos_embed(
                self.v.positional_embedding.detach().float(), self.src_grid, grid,
                self.round_pos_embed_fp16)
        return self._pos_cache[grid]

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) -> tokens after ln_pre (B, 1 + P, C)."""
        x = self.v.conv1(images)  # (B, C, gh, gw)
        b, c, gh, gw = x.shape
        x = x.reshape(b, c, gh * gw).transpose(1, 2)  # (B, P, C)
        cls = self.v.class_embedding.to(x.dtype).expand(b, 1, c)
        x = torch.cat([cls, x], dim=1) + self.pos_embed((gh, gw)).to(x.dtype)
        return self.v.ln_pre(x)

    @torch.no_grad()
    def trunk(self, tokens: torch.Tensor, keep_attn_from: int) -> tuple[torch.Tensor, list]:
        """Run blocks 0 .. L-2 without autograd.

        Returns the input of the last block (B, 1 + P, C) and the head-averaged attention
        (B, 1 + P, 1 + P) of every block with index >= keep_attn_from.
        """
        attn = []
        x = tokens
        for i, blk in enumerate(self.blocks[:-1]):
            a, w = _mha_with_weights(blk.attn, blk.ln_1(x), need_weights=i >= keep_attn_from)
            x = x + blk.ls_1(a)
            x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
            if w is not None:
                attn.append(w)
        return x, attn

    def last_block_input_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The Grad-CAM activation: the last block's ln_1 output (B, 1 + P, C), a fresh
        autograd leaf (the residual input itself is not differentiated)."""
        with torch.no_grad():
            a = self.blocks[-1].ln_1(x)
        return a.requires_grad_(True)

    def last_block(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Finish the last block from its residual input x and ln_1 output a.

        Returns the block output (B, 1 + P, C) and its attention (B, 1 + P, 1 + P).
        """
        blk = self.blocks[-1]
        out, w = _mha_with_weights(blk.attn, a, need_weights=True)
        h = x + blk.ls_1(out)
        return h + blk.ls_2(blk.mlp(blk.ln_2(h))), w

    def pool_patches(self, out: torch.Tensor) -> torch.Tensor:
        """CLIP-ES image feature: ln_post, MEAN of the patch tokens (no CLS), proj. (B, D)"""
        pooled = self.v.ln_post(out)[:, 1:].mean(dim=1)
        return pooled.to(self.v.proj.dtype) @ self.v.proj  # one dtype: CPU autocast mixes them
