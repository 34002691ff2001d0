"""Plain PyTorch reference of XQuant (arXiv 2508.10395), written from the paper's description
and independent of xquant.py: it starts from the layer input X itself (after the RMS norm),
not from K and V, and shares no code with the codec (its own SVD, quantizer and RoPE).

GQA variant: W = [W_k W_v] = U S V^T; cache Q(X U); at attention time
[K_pre, V] = Q(X U) S V^T (+ bias), K = RoPE(K_pre, position).
Plain variant: cache Q(X); [K_pre, V] = Q(X) W (+ bias).
Q: per row, groups of `group` consecutive channels, asymmetric, `bits` bits:
scale = (max - min) / (2^bits - 1), x' = round((x - min) / scale) * scale + min.
"""

from __future__ import annotations

import torch


def svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W [hidden, n] -> U [hidden, r], S [r], V^T [r, n] (float64)."""
    return torch.linalg.svd(w.double(), full_matrices=False)


def fake_quant(x: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    """x [..., C] quantized and dequantized per row and group of channels (float64 math)."""
    shape = x.shape
    g = x.double().reshape(*shape[:-1], shape[-1] // group, group)
    lo, hi = g.min(-1, keepdim=True).values, g.max(-1, keepdim=True).values
    scale = (hi - lo) / (2 ** bits - 1)
    q = torch.where(scale > 0, torch.round((g - lo) / torch.where(scale > 0, scale, 1.0)), 0.0)
    return (q.clamp(0, 2 ** bits - 1) * scale + lo).reshape(shape)


def rope(k: torch.Tensor, positions: torch.Tensor, theta_inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE of k [T, H, D] at integer positions [T], from the inverse frequencies [D/2]."""
    ang = positions.double()[:, None] * theta_inv_freq.double()[None, :]  # [T, D/2]
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
    half = k.shape[-1] // 2
    a, b = k[..., :half].double(), k[..., half:].double()
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)


def kv_from_latent(latent: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, bias: torch.Tensor,
                   positions: torch.Tensor, inv_freq: torch.Tensor, num_kv_heads: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    kv = latent.double() @ (s[:, None] * vh) + bias.double()
    half = kv.shape[-1] // 2
    k_pre = kv[:, :half].reshape(kv.shape[0], num_kv_heads, -1)
    v = kv[:, half:].reshape(kv.shape[0], num_kv_heads, -1)
    return rope(k_pre, positions, inv_freq), v


def xquant_gqa(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, positions: torch.Tensor,
               inv_freq: torch.Tensor, num_kv_heads: int, bits: int, group: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X [T, hidden] -> (cached latent Q(X U) [T, r], K [T, Hkv, D], V [T, Hkv, D]) in float64."""
    u, s, vh = svd(w)
    latent = fake_quant(x.double() @ u, bits, group)
    k, v = kv_from_latent(latent, s, vh, bias, positions, inv_freq, num_kv_heads)
    return latent, k, v


def xquant_plain(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor, positions: torch.Tensor,
                 inv_freq: torch.Tensor, num_kv_heads: int, bits: int, group: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain XQuant: K, V from Q(X) [T, hidden] (float64)."""
    kv = fake_quant(x, bits, group) @ w.double() + bias.double()
    half = kv.shape[-1] // 2
    k_pre = kv[:, :half].reshape(kv.shape[0], num_kv_heads, -1)
    return rope(k_pre, positions, inv_freq), kv[:, half:].reshape(kv.shape[0], num_kv_heads, -1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal softmax attention of the last q.shape[0] entries: q [A, H, D] over k, v [E, Hkv, D]."""
    a, h, _ = q.shape
    e, hkv, _ = k.shape
    kk = k.double().repeat_interleave(h // hkv, dim=1)
    vv = v.double().repeat_interleave(h // hkv, dim=1)
    scores = torch.einsum("ahd,ehd->hae", q.double(), kk) * scale
    mask = torch.arange(e)[None, :] > (torch.arange(a) + e - a)[:, None]
    scores = scores.masked_fill(mask, float("-inf"))
    return torch.einsum("hae,ehd->ahd", scores.softmax(-1), vv)
