"""Padding encoded rows into batches: shared by every head kind (a kind's collator pads its own extras)."""

from __future__ import annotations

import math

import numpy as np
import torch

UNLABELED = -1  # label id of rows that carry no gold label (e.g. GLUE test sets)


def pad(seqs: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = seq
    return torch.from_numpy(out)


class Collator:
    """Pad a list of encoded rows to the longest in the batch, rounded up to a multiple (tensor-core friendly).
    Labels are one value per row (`label_dtype`), a vector per row (multi-label), or, with `label_pad`,
    one per token padded with that value."""

    def __init__(self, pad_id: int, multiple_of: int = 8, label_dtype: torch.dtype = torch.long,
                 label_pad: int | None = None):
        self.pad_id = pad_id
        self.multiple_of = max(1, multiple_of)
        self.label_dtype = label_dtype
        self.label_pad = label_pad

    def width(self, rows: dict[str, list]) -> int:
        longest = max(len(ids) for ids in rows["input_ids"])
        return int(math.ceil(longest / self.multiple_of) * self.multiple_of)

    def __call__(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        width = self.width(rows)
        batch = {"input_ids": pad(rows["input_ids"], width, self.pad_id),
                 "attention_mask": pad(rows["attention_mask"], width, 0)}
        if "token_type_ids" in rows:
            batch["token_type_ids"] = pad(rows["token_type_ids"], width, 0)
        if self.label_pad is not None:
            batch["labels"] = pad(rows["labels"], width, self.label_pad)
        else:
            batch["labels"] = torch.tensor(rows["labels"], dtype=self.label_dtype)
        if "soft" in rows:  # distillation targets: one per row, or one per token (padded with 0)
            batch["soft"] = soft_tensor(rows["soft"], width)
        return batch


def soft_tensor(soft: list, width: int) -> torch.Tensor:
    """Soft targets of a batch: per-row values/vectors as they are, per-token rows padded with 0 to `width`."""
    if soft and isinstance(soft[0], list) and soft[0] and isinstance(soft[0][0], list):
        padded = torch.zeros(len(soft), width, len(soft[0][0]))
        for i, row in enumerate(soft):
            padded[i, : len(row)] = torch.tensor(row)
        return padded
    return torch.tensor(soft, dtype=torch.float32)
