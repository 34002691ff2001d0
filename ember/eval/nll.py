"""The scoring core shared by `eval/perplexity.py` (windows in one forward) and
`eval/decode_nll.py` (teacher-forced decode through the KV cache): the NLL of target ids under
the logits of hidden states, with the vocabulary-sized logits bounded in memory."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Rows of logits turned into log-probabilities at a time: 512 x 49152 fp32 is ~100 MB, and
# cross_entropy holds about two such buffers, so memory stays bounded whatever the batch.
LOGIT_CHUNK_ROWS = 512


@torch.inference_mode()
def token_nll(model, hidden: torch.Tensor, targets: torch.Tensor,
              chunk_rows: int = LOGIT_CHUNK_ROWS) -> torch.Tensor:
    """Negative log-likelihood (nats, fp32) of `targets[i]` under the logits of `hidden[i]`.

    hidden: [N, hidden_size] final hidden states; targets: [N] token ids. The vocabulary-sized
    logits exist only `chunk_rows` rows at a time.
    """
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden rows but {targets.shape[0]} targets")
    out = torch.empty(hidden.shape[0], dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_rows):
        end = start + chunk_rows
        logits = model.compute_logits(hidden[start:end]).float()
        out[start:end] = F.cross_entropy(logits, targets[start:end], reduction="none")
    return out
