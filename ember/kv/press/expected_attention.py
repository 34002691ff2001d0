"""`expected-attention` (Devoto et al. 2025; kvpress's ExpectedAttentionPress): score each entry
by the attention that future queries are expected to pay it. The prompt's queries before RoPE
(all but the 4 sink entries) give a mean mu and covariance S per query head; the RoPE
rotation averaged over the next 512 positions, R, moves them to mu' = R mu, S' = R S R^T; then
E[exp(q.k / sqrt(d))] gives the logit mu'.k / sqrt(d) + k^T S' k / (2d), softmaxed over the
entries, averaged over each KV head's query heads and scaled by the value's norm. The sinks are
always kept."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ember.kv.press.attention_scores import per_kv_head
from ember.kv.press.base import KV_PRESSES, KVPress


def averaged_rotation(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The mean over positions of RoPE's rotation matrix (rotate-half convention) [D, D]:
    R = cos * I + sin * P with P x = (-x2, x1)."""
    d = cos.shape[-1]
    half = d // 2
    p = torch.zeros(d, d)
    p[half:, :half], p[:half, half:] = torch.eye(half), -torch.eye(half)
    return (cos[:, :, None] * torch.eye(d) + sin[:, :, None] * p).mean(dim=0)


@KV_PRESSES.register("expected-attention")
class ExpectedAttentionPress(KVPress):
    name = "expected-attention"
    n_future_positions = 512
    n_sink = 4

    def window(self, num_entries: int) -> int:
        return num_entries

    def score(self, layer, keys, values, window):
        total, sinks = keys.shape[0], min(self.n_sink, keys.shape[0] - 1)
        d = keys.shape[-1]
        q = window.prerope_queries(layer)[sinks:]  # [n, H, D]
        mu = q.mean(dim=0)  # [H, D]
        centered = q - mu
        cov = torch.einsum("nhi,nhj->hij", centered, centered) / q.shape[0]
        start = window.next_position  # past the entries' count once an earlier press dropped some
        future = torch.arange(start, start + self.n_future_positions).clamp_(max=window.cos.shape[0] - 1)
        rot = averaged_rotation(window.cos[future].float(), window.sin[future].float())
        mu, cov = mu @ rot.T, rot @ cov @ rot.T
        group = q.shape[1] // keys.shape[1]
        k = keys[sinks:].float().repeat_interleave(group, dim=1)  # [T', H, D]
        logits = torch.einsum("hd,thd->ht", mu, k) / d ** 0.5
        logits += torch.einsum("thi,hij,thj->ht", k, cov, k) / d / 2
        scores = per_kv_head(logits.softmax(dim=-1), keys.shape[1])
        scores = scores * values[sinks:].float().norm(dim=-1).T
        return F.pad(scores, (sinks, 0), value=float(scores.max()) + 1)
