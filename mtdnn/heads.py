"""Per-task heads. Each takes the encoder's token states and returns logits, and knows its loss and how
to turn logits into predictions. Span, ranking and tagging heads plug in beside these."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("cls", "mean", "pooler")


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """KL(p||q) + KL(q||p) over the last dimension, per row: sum (p - q)(log p - log q)."""
    log_p, log_q = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str, pooler_output: torch.Tensor | None) -> torch.Tensor:
    """Sentence representation: first token, masked mean, or the encoder's own pooler (BERT's tanh layer)."""
    if how == "cls":
        return hidden[:, 0]
    if how == "mean":
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if pooler_output is None:
        raise ValueError("pooling 'pooler' needs an encoder with a pooler layer; use 'cls' or 'mean'")
    return pooler_output


class ClassificationHead(nn.Module):
    """pooled -> dropout -> linear -> cross-entropy over the task's labels."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled))

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels)

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per-example symmetric KL between the two predicted label distributions."""
        return symmetric_kl(logits_a, logits_b)

    @staticmethod
    def predict(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = logits.float().softmax(-1)
        return {"prediction": probs.argmax(-1), "scores": probs}


class RegressionHead(nn.Module):
    """pooled -> dropout -> linear to one real number -> mean squared error."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(pooled)).squeeze(-1)

    @staticmethod
    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(logits.float(), labels.float())

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per-example squared difference of the two predicted values (shape B, never B x B)."""
        return (logits_a.float() - logits_b.float()).pow(2)

    @staticmethod
    def predict(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prediction": logits.float(), "scores": logits.float().unsqueeze(-1)}


HEADS: dict[str, type[nn.Module]] = {"classification": ClassificationHead, "regression": RegressionHead}
