"""Pair tasks as bi-encoders (`pair_encoding: bi`), the sentence-transformers way: each text of a pair is
encoded apart by the shared encoder and mean-pooled (u, v), and a small head compares u and v.

How a bi pair travels: `encode_pair_texts` tokenises the two texts apart (columns `input_ids` ... and
`input_ids_b` ...; each text up to max_length), the collator pads both sides to one width and stacks them
(rows [first texts; second texts], 2B x width), so the encoder, the regularizers' embedding perturbations
(SMART's ball per encoded text) and data parallel see an ordinary batch; only the head knows that row i and
row B + i are one pair, and it returns one output per pair.

Heads (Reimers & Gurevych 2019, Sentence-BERT):
  BiClassificationHead  softmax over a linear map of (u, v, |u - v|)      (SBERT's classification objective)
  CosineHead            lo + (hi - lo) * cos(u, v), MSE on the [0, 1] scale   (CosineSimilarityLoss)
  FeatureRegressionHead linear map of (u, v, |u - v|, u * v) to one number   (regression.py: a RegressionHead)
  BiRankingHead         scale * cos(query, candidate) over the batch's candidates (ranking.py: MNRL)
Mean pooling always (what sentence-transformers' MiniLM/MPNet models use, and what the export's Pooling module
says); the cosine head has no weights, so an untrained encoder already scores pairs: the zero-shot baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from mtdnn.kinds.collate import MODEL_INPUTS, SECOND
from mtdnn.kinds.heads import pool, symmetric_kl

if TYPE_CHECKING:
    from mtdnn.kinds.spec import TaskSpec


def is_bi(spec: TaskSpec) -> bool:
    return getattr(spec, "pair_encoding", "cross") == "bi"


def encode_pair_texts(spec: TaskSpec, tokenizer, batch: dict[str, list]) -> dict[str, list]:
    """Both texts of each pair tokenised apart, each truncated to max_length; `length` is the longer side."""
    cols = spec.columns
    first = tokenizer(batch[cols.text], truncation=True, max_length=spec.max_length)
    second = tokenizer(batch[cols.text_pair], truncation=True, max_length=spec.max_length)
    out = {k: v for k, v in first.items() if k in MODEL_INPUTS}
    out.update({k + SECOND: v for k, v in second.items() if k in MODEL_INPUTS})
    out["length"] = [max(len(a), len(b)) for a, b in zip(first["input_ids"], second["input_ids"])]
    return out


def halves(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v): the mean-pooled embedding of each pair's first and second text."""
    pooled = pool(hidden, mask, "mean", None)
    return pooled.chunk(2)


class BiClassificationHead(nn.Module):
    """SBERT's classification objective: dropout -> linear on (u, v, |u - v|) -> cross-entropy."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, label_smoothing: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(3 * hidden_size, num_labels)
        self.label_smoothing = label_smoothing

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None
    ) -> torch.Tensor:
        u, v = halves(hidden, mask)
        return self.out(self.dropout(torch.cat([u, v, (u - v).abs()], -1)))

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.label_smoothing)

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        return symmetric_kl(logits_a, logits_b)


class CosineHead(nn.Module):
    """prediction = lo + (hi - lo) * cos(u, v); loss: MSE between cos(u, v) and the label mapped to [0, 1]
    (sentence-transformers' CosineSimilarityLoss). No weights: the encoder alone scores pairs."""

    def __init__(self, label_range: tuple[float, float]):
        super().__init__()
        self.lo, self.hi = float(label_range[0]), float(label_range[1])

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None
    ) -> torch.Tensor:
        u, v = halves(hidden.float(), mask)
        return self.lo + (self.hi - self.lo) * F.cosine_similarity(u, v, dim=-1)

    def loss(self, prediction: torch.Tensor, batch: dict) -> torch.Tensor:
        scale = self.hi - self.lo
        return F.mse_loss((prediction.float() - self.lo) / scale, (batch["labels"].float() - self.lo) / scale)

    def divergence(self, a: torch.Tensor, b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per pair: squared difference of the two cosines."""
        return ((a.float() - b.float()) / (self.hi - self.lo)).pow(2)
