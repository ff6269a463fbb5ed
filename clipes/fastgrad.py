"""Grad-CAM channel weights of the last ViT block without a generic backward pass.

Grad-CAM only needs the patch-MEAN of d target / d A (A: the last block's ln_1 output),
never the per-token gradient. Writing the block's backward by hand for that quantity
removes, per class, the three input projections of q, k, v (3 C^2 N flops) and three of
the four N x N attention products; what is left is the MLP and output-projection
backward. All classes (and images) go through it as one batch. The result equals
autograd's up to float rounding; tests/test_model_cam.py checks both against each other,
and the parity suite checks the batched mode against the authors' outputs.

Shapes: B images, N = 1 + P tokens (CLS first), C width, H heads of width d, K classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def supported(blk) -> bool:
    """Standard pre-LN CLIP block: LayerScale off, QuickGELU or GELU, no extra norms."""
    act = getattr(blk.mlp, "gelu", None)
    act_ok = type(act).__name__ == "QuickGELU" or (isinstance(act, nn.GELU) and act.approximate == "none")
    return (isinstance(blk.ls_1, nn.Identity) and isinstance(blk.ls_2, nn.Identity)
            and act_ok and isinstance(getattr(blk.mlp, "c_fc", None), nn.Linear)
            and isinstance(getattr(blk, "ln_attn", nn.Identity()), nn.Identity)
            and not hasattr(blk, "ln_1_kv"))


def _act_and_grad(act, m):
    if type(act).__name__ == "QuickGELU":
        s = torch.sigmoid(1.702 * m)
        return m * s, s + 1.702 * m * s * (1 - s)
    cdf = 0.5 * (1 + torch.erf(m / math.sqrt(2)))
    pdf = torch.exp(-0.5 * m * m) / math.sqrt(2 * math.pi)
    return m * cdf, cdf + m * pdf


def _ln_backward(xhat, rstd, weight, dy):
    """LayerNorm input gradient. xhat, dy (..., C); rstd (..., 1)."""
    g = dy * weight
    return rstd * (g - g.mean(-1, keepdim=True) - xhat * (g * xhat).mean(-1, keepdim=True))


def _ln_stats(ln, x):
    mu = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    rstd = torch.rsqrt(var + ln.eps)
    return (x - mu) * rstd, rstd


@torch.no_grad()
def last_block_forward(blk, x, a):
    """Forward of the last block from its residual input x and ln_1 output a (B, N, C),
    keeping what the Grad-CAM backward needs. Returns (block output, attention probs
    averaged over heads (B, N, N), cache)."""
    b, n, c = a.shape
    h = blk.attn.num_heads
    d = c // h
    qkv = F.linear(a, blk.attn.in_proj_weight, blk.attn.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4)  # (B, H, N, d)
    scale = math.sqrt(1.0 / d)
    probs = torch.matmul(q * scale, k.transpose(-2, -1)).softmax(-1)  # (B, H, N, N)
    o = torch.matmul(probs, v)  # (B, H, N, d)
    attn_out = blk.attn.out_proj(o.transpose(1, 2).reshape(b, n, c))
    hid = x + attn_out
    z_hat, z_rstd = _ln_stats(blk.ln_2, hid)
    z = z_hat * blk.ln_2.weight + blk.ln_2.bias
    m = blk.mlp.c_fc(z)
    g, dg_dm = _act_and_grad(blk.mlp.gelu, m)
    y = hid + blk.mlp.c_proj(g)
    cache = {"q": q, "k": k, "v": v, "probs": probs, "o": o, "z_hat": z_hat,
             "z_rstd": z_rstd, "act_grad": dg_dm, "scale": scale}
    return y, probs.mean(1), cache


@torch.no_grad()
def gradcam_weights(blk, ln_post, proj, y, cache, dfeat):
    """Patch-mean of d target / d A for every upstream feature gradient.

    y: block output (B, N, C); dfeat: (K, B, D) d target_k / d feature_b, where the
    feature is mean_patches(ln_post(y)) @ proj. Returns (K, B, C) channel weights.
    """
    kk, b, _ = dfeat.shape
    n, c = y.shape[1], y.shape[2]
    p = n - 1
    heads = blk.attn.num_heads
    d = c // heads
    # feature -> ln_post output (patch tokens only, mean over P) -> block output
    du = (dfeat @ proj.T) / p  # (K, B, C), the same for every patch token
    y_hat, y_rstd = _ln_stats(ln_post, y)  # (B, N, C), (B, N, 1)
    dy = _ln_backward(y_hat[None, :, 1:], y_rstd[None, :, 1:], ln_post.weight, du[:, :, None, :])
    dy = F.pad(dy, (0, 0, 1, 0))  # CLS output unused: zero gradient. (K, B, N, C)
    # MLP branch: hid -> ln_2 -> c_fc -> act -> c_proj, plus the residual
    dg = dy @ blk.mlp.c_proj.weight  # (K, B, N, 4C)
    dz = (dg * cache["act_grad"]) @ blk.mlp.c_fc.weight  # (K, B, N, C)
    dhid = dy + _ln_backward(cache["z_hat"], cache["z_rstd"], blk.ln_2.weight, dz)
    # attention output projection
    do = (dhid @ blk.attn.out_proj.weight).view(kk, b, n, heads, d).transpose(2, 3)  # (K,B,H,N,d)
    # Softmax backward, summed over patch tokens only (per head; t runs over patches):
    #   dL_ij = S_ij (do_i . v_j - delta_i),  delta_i = do_i . o_i
    #   sum_t dq_t = scale * sum_j colP_j k_j,  colP_j = sum_t dL_tj
    #   sum_t dk_t = scale * sum_i rowP_i q_i,  rowP_i = sum_t dL_it
    #   sum_t dv_t = sum_i (1 - S_i0) do_i
    q, k, v, sm, o = cache["q"], cache["k"], cache["v"], cache["probs"], cache["o"]
    scale = cache["scale"]
    delta = (do * o).sum(-1)  # (K, B, H, N)
    # one product S_P^T [do_P | delta_P] for all K: the classes ride along the columns
    s_pt = sm[:, :, 1:].transpose(-2, -1).contiguous()  # S_P^T: (B, H, N, P)
    rhs = torch.cat([do[..., 1:, :], delta[..., 1:, None]], dim=-1)  # (K, B, H, P, d + 1)
    rhs = rhs.permute(1, 2, 3, 0, 4).reshape(b, heads, p, kk * (d + 1))
    prod = torch.matmul(s_pt, rhs).view(b, heads, n, kk, d + 1).permute(3, 0, 1, 2, 4)
    col = (v * prod[..., :d]).sum(-1) - prod[..., d]  # (K, B, H, N)
    s_cls = sm[..., 0]  # attention of every query to CLS (B, H, N)
    row = (do * (o - s_cls[..., None] * v[:, :, :1])).sum(-1) - delta * (1 - s_cls)  # (K,B,H,N)
    sum_dq = scale * (col[..., None] * k).sum(-2)  # (K, B, H, d)
    sum_dk = scale * (row[..., None] * q).sum(-2)
    sum_dv = ((1 - s_cls)[..., None] * do).sum(-2)
    w_qkv = blk.attn.in_proj_weight  # (3C, C): rows of q, k, v
    grads = torch.cat([t.reshape(kk, b, c) for t in (sum_dq, sum_dk, sum_dv)], dim=-1)  # (K,B,3C)
    return (grads @ w_qkv) / p  # (K, B, C)
