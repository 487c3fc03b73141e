"""Checks and helpers shared by the kinds that score against gold labels (classification, multilabel,
regression, tagging)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mtdnn.kinds.spec import TaskSpec


def label_list_problems(spec: TaskSpec, where: str) -> list[str]:
    """At least two labels, no name twice."""
    labels = spec.labels if isinstance(spec.labels, list) else []
    problems = []
    if isinstance(spec.labels, list) and len(labels) < 2:
        problems.append(f"{where}labels: a {spec.head} task needs at least 2 labels, got {spec.labels}")
    if len(set(labels)) != len(labels):
        problems.append(f"{where}labels: duplicate names in {spec.labels}")
    return problems


def smoothing_problems(spec: TaskSpec, where: str) -> list[str]:
    smoothing = spec.options.label_smoothing
    if smoothing is not None and not 0 <= smoothing < 1:
        return [f"{where}label_smoothing: must be in [0, 1), got {smoothing}"]
    return []


def gold_labels(encoded, dtype: torch.dtype) -> torch.Tensor:
    """A split's gold labels as one tensor. Read out as a list first: torch walks datasets' lazy `Column`
    one row at a time (~250x slower), and a Ctrl-C that lands in that walk comes back as a ValueError, not
    an interrupt."""
    return torch.tensor(encoded["labels"][:], dtype=dtype)
