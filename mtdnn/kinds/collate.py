"""Padding encoded rows into batches: shared by every head kind (a kind's collator pads its own extras)."""

from __future__ import annotations

import math

import numpy as np
import torch

UNLABELED = -1  # label id of rows that carry no gold label (e.g. GLUE test sets)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the encoded columns the encoder reads
SECOND = "_b"  # suffix of a bi-encoded pair's second-text columns (input_ids_b, ...; mtdnn/kinds/_bi.py)


def pad(seqs: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = seq
    return torch.from_numpy(out)


class Collator:
    """Pad a list of encoded rows to the longest in the batch, rounded up to a multiple (tensor-core
    friendly). Labels are one value per row (`label_dtype`), a vector per row (multi-label), or, with
    `label_pad`, one per token padded with that value."""

    def __init__(
        self,
        pad_id: int,
        multiple_of: int = 8,
        label_dtype: torch.dtype = torch.long,
        label_pad: int | None = None,
    ):
        self.pad_id = pad_id
        self.multiple_of = max(1, multiple_of)
        self.label_dtype = label_dtype
        self.label_pad = label_pad

    def width(self, rows: dict[str, list]) -> int:
        sides = ("input_ids", "input_ids" + SECOND) if "input_ids" + SECOND in rows else ("input_ids",)
        longest = max(len(ids) for side in sides for ids in rows[side])
        return int(math.ceil(longest / self.multiple_of) * self.multiple_of)

    def __call__(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        """A bi-encoded pair's two texts are padded to one width and stacked, [first texts; second texts]
        (2B rows, one label per pair): encoder, regularizers and data parallel see an ordinary batch."""
        width = self.width(rows)
        batch = {}
        for name in (n for n in MODEL_INPUTS if n in rows):
            value = self.pad_id if name == "input_ids" else 0
            sides = [rows[name], rows[name + SECOND]] if name + SECOND in rows else [rows[name]]
            batch[name] = torch.cat([pad(side, width, value) for side in sides])
        if self.label_pad is not None:
            batch["labels"] = pad(rows["labels"], width, self.label_pad)
        else:
            batch["labels"] = torch.tensor(rows["labels"], dtype=self.label_dtype)
        if "labelled" in rows:  # distillation's transfer set: 0 marks a row only the teachers label
            batch["labelled"] = torch.tensor(rows["labelled"], dtype=torch.bool)
        if "soft" in rows:  # distillation targets: one per row, or one per token (padded with 0)
            batch["soft"] = soft_tensor(rows["soft"], width)
        return batch


def soft_tensor(soft: list, width: int) -> torch.Tensor:
    """Soft targets of a batch: per-row values/vectors as they are, per-token rows padded with 0 to
    `width`."""
    if soft and isinstance(soft[0], list) and soft[0] and isinstance(soft[0][0], list):
        padded = torch.zeros(len(soft), width, len(soft[0][0]))
        for i, row in enumerate(soft):
            padded[i, : len(row)] = torch.tensor(row)
        return padded
    return torch.tensor(soft, dtype=torch.float32)
