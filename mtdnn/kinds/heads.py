"""Building blocks shared by the head kinds (mtdnn/kinds/): pooling, the pooled linear body, the symmetric
KL every distribution-valued head uses as its divergence, and the mask values. No kind is named here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("cls", "mean", "pooler")
NEG = -1e4  # masks logits of padding/absent positions: finite, so divergences never see inf - inf
IGNORE = -100  # label of positions a per-token loss skips (sub-tokens, special tokens, padding)


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """KL(p||q) + KL(q||p) over the last dimension, per row: sum (p - q)(log p - log q)."""
    log_p, log_q = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def pool(
    hidden: torch.Tensor, mask: torch.Tensor, how: str, pooler_output: torch.Tensor | None
) -> torch.Tensor:
    """Sentence representation: first token, masked mean, or the encoder's own pooler (BERT's tanh layer)."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if pooler_output is None:
        raise ValueError("pooling 'pooler' needs an encoder with a pooler layer; use 'cls' or 'mean'")
    return pooler_output


class PooledLinear(nn.Module):
    """Sentence representation (see `pool`) -> dropout -> linear: the body of every sentence-level head."""

    def __init__(self, hidden_size: int, outputs: int, dropout: float, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, outputs)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None
    ) -> torch.Tensor:
        return self.out(self.dropout(pool(hidden, mask, self.pooling, pooler_output)))


class TokenLinear(nn.Module):
    """Token states -> dropout -> linear: the body of every token-level head (span, tagging)."""

    def __init__(self, hidden_size: int, outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, outputs)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None
    ) -> torch.Tensor:
        return self.out(self.dropout(hidden)).float()
