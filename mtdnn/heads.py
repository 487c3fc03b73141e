"""Per-task heads. Each takes the encoder's token states (and the attention mask), returns logits, and knows
its loss and its divergence (what SMART and other regularizers compare between two passes)."""

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


NEG = -1e4  # masks logits of padding/absent positions: finite, so divergences never see inf - inf


class PooledLinear(nn.Module):
    """Sentence representation (see `pool`) -> dropout -> linear: the body of every sentence-level head."""

    def __init__(self, hidden_size: int, outputs: int, dropout: float, pooling: str):
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, outputs)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None) -> torch.Tensor:
        return self.out(self.dropout(pool(hidden, mask, self.pooling, pooler_output)))


class ClassificationHead(PooledLinear):
    """pooled -> dropout -> linear -> cross-entropy over the task's labels."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__(hidden_size, num_labels, dropout, pooling)

    @staticmethod
    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"])

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per-example symmetric KL between the two predicted label distributions."""
        return symmetric_kl(logits_a, logits_b)

    @staticmethod
    def predict(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = logits.float().softmax(-1)
        return {"prediction": probs.argmax(-1), "scores": probs}


class RegressionHead(PooledLinear):
    """pooled -> dropout -> linear to one real number -> mean squared error."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__(hidden_size, 1, dropout, pooling)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None) -> torch.Tensor:
        return super().forward(hidden, mask, pooler_output).squeeze(-1)

    @staticmethod
    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.mse_loss(logits.float(), batch["labels"].float())

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per-example squared difference of the two predicted values (shape B, never B x B)."""
        return (logits_a.float() - logits_b.float()).pow(2)

    @staticmethod
    def predict(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"prediction": logits.float(), "scores": logits.float().unsqueeze(-1)}


class SpanHead(nn.Module):
    """token states -> linear -> (start, end) logits per token; loss = mean of start and end cross-entropy.
    Padding positions are masked out of both distributions."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 2)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None) -> torch.Tensor:
        logits = self.out(self.dropout(hidden)).float()  # (B, L, 2)
        return logits.masked_fill(~mask.bool().unsqueeze(-1), NEG)

    @staticmethod
    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        positions = batch["labels"]  # (B, 2): start and end token of the answer (0 = [CLS] when absent)
        return (F.cross_entropy(logits[..., 0], positions[:, 0]) + F.cross_entropy(logits[..., 1], positions[:, 1])) / 2

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per window: symmetric KL of the start distributions plus that of the end distributions."""
        return symmetric_kl(logits_a[..., 0], logits_b[..., 0]) + symmetric_kl(logits_a[..., 1], logits_b[..., 1])


def group_matrix(scores: torch.Tensor, batch: dict) -> torch.Tensor:
    """Candidate scores (N,) -> (groups, most candidates) with absent slots masked."""
    groups, slots = batch["group"], batch["slot"]
    matrix = scores.new_full((int(batch["labels"].shape[0]), int(slots.max()) + 1), NEG)
    return matrix.index_put((groups, slots), scores)


class RankingHead(PooledLinear):
    """pooled (query, candidate) -> dropout -> linear score; softmax over the candidates of one group;
    loss = -log of the probability mass on the correct candidate(s)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__(hidden_size, 1, dropout, pooling)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None) -> torch.Tensor:
        return super().forward(hidden, mask, pooler_output).squeeze(-1).float()

    @staticmethod
    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        log_p = F.log_softmax(group_matrix(logits, batch), -1)
        relevant = batch["labels"] > 0  # (groups, most candidates): 1 for every correct candidate
        return -(log_p.masked_fill(~relevant, NEG).logsumexp(-1)).mean()

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per group: symmetric KL between the two distributions over its candidates."""
        return symmetric_kl(group_matrix(logits_a, batch), group_matrix(logits_b, batch))


class TaggingHead(nn.Module):
    """token states -> dropout -> linear over the tag set; cross-entropy on the first sub-token of each word."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None) -> torch.Tensor:
        return self.out(self.dropout(hidden)).float()

    @staticmethod
    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per sentence: mean over its real tokens of the per-token symmetric KL (padding never counts)."""
        mask = batch["attention_mask"].float()
        return (symmetric_kl(logits_a, logits_b) * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


IGNORE = -100  # label of sub-tokens and special tokens that tagging ignores
HEADS: dict[str, type[nn.Module]] = {"classification": ClassificationHead, "regression": RegressionHead,
                                     "span": SpanHead, "ranking": RankingHead, "tagging": TaggingHead}
