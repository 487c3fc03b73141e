"""Ranking (answer selection, multiple choice): each (query, candidate) pair is scored, softmax runs over the
candidates of one query. A group is one dataset row, so shuffled batches always keep groups whole."""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np
import torch

from mtdnn.tasks import TaskSpec

GROUPED = ("query", "candidates", "relevance", "id")  # the internal layout, one row per group


def regroup(spec: TaskSpec, ds):
    """Bring either layout to one row per group: query, candidates [..], relevance [0/1 ..], id."""
    import datasets

    cols = spec.columns
    if cols.group:  # one row per candidate: gather rows by group id, keeping their order
        frame = ds.to_pandas()
        groups = collections.OrderedDict()
        for _, row in frame.iterrows():
            entry = groups.setdefault(row[cols.group], {"query": row[cols.query], "candidates": [], "relevance": []})
            entry["candidates"].append(row[cols.text])
            entry["relevance"].append(_flag(row[cols.label]) if cols.label in frame else 0)
        return datasets.Dataset.from_dict({"query": [g["query"] for g in groups.values()],
                                           "candidates": [g["candidates"] for g in groups.values()],
                                           "relevance": [g["relevance"] for g in groups.values()],
                                           "id": [str(k) for k in groups]})
    labels = ds[cols.label] if cols.label in ds.column_names else [None] * len(ds)
    ids = ds[cols.id] if cols.id else list(range(len(ds)))
    candidates = ds[cols.candidates]
    return datasets.Dataset.from_dict({
        "query": list(ds[cols.query]), "candidates": [list(c) if c is not None else [] for c in candidates],
        "relevance": [_relevance(label, len(c or [])) for label, c in zip(labels, candidates)],
        "id": [str(i) for i in ids]})


def _flag(value: Any) -> int:
    return int(value in (1, True, "1", "true", "True")) if value is not None else -1


def _relevance(label: Any, size: int) -> list[int]:
    """Index (or list of indices) of the correct candidate(s) -> 0/1 per candidate; -1s when unknown."""
    if label is None or (isinstance(label, float) and math.isnan(label)) or label == -1:
        return [-1] * size
    chosen = label if isinstance(label, (list, tuple)) else [label]
    return [int(i in chosen) for i in range(size)] if all(isinstance(i, int) for i in chosen) else [-2] * size


def bad_rows(spec: TaskSpec, split: str, ds) -> dict[tuple[str, str], list[int]]:
    bad: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for row, (query, candidates, relevance, group) in enumerate(zip(ds["query"], ds["candidates"], ds["relevance"],
                                                                    ds["id"])):
        if not query or not str(query).strip():
            bad[("query", "text is empty")].append(row)
        if not candidates:
            bad[("candidates", "group has no candidates")].append(row)
        elif any(not c or not str(c).strip() for c in candidates):
            bad[("candidates", "a candidate text is empty")].append(row)
        if -2 in relevance:
            bad[("label", "label must be a candidate index or a list of indices")].append(row)
        elif split != "test" and candidates and not any(r == 1 for r in relevance):
            bad[("label", f"group '{group}' has no correct candidate")].append(row)
    return dict(bad)


def encode(spec: TaskSpec, tokenizer, ds, hidden: bool):
    def pairs(batch: dict[str, list]) -> dict[str, list]:
        out = collections.defaultdict(list)
        for query, candidates, relevance in zip(batch["query"], batch["candidates"], batch["relevance"]):
            enc = tokenizer([query] * len(candidates), candidates, truncation=True, max_length=spec.max_length)
            for key, value in enc.items():
                out[key].append(value)
            out["labels"].append([0] * len(candidates) if hidden else [max(r, 0) for r in relevance])
        return dict(out)

    return ds.map(pairs, batched=True, remove_columns=ds.column_names, desc=f"tokenising {spec.name}")


class GroupCollator:
    """A batch of groups -> the candidates stacked (N, L), with each candidate's group and slot in the group."""

    def __init__(self, pad_id: int, multiple_of: int = 8):
        from mtdnn.data import Collator

        self.flat = Collator(pad_id, multiple_of)

    def __call__(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        sizes = [len(group) for group in rows["input_ids"]]
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in rows]
        flat = {k: [seq for group in rows[k] for seq in group] for k in keys}
        batch = self.flat({**flat, "labels": [0] * sum(sizes)})
        batch["group"] = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
        batch["slot"] = torch.cat([torch.arange(n) for n in sizes])
        relevance = torch.zeros(len(sizes), max(sizes), dtype=torch.long)
        for g, labels in enumerate(rows["labels"]):
            relevance[g, : len(labels)] = torch.tensor(labels)
        batch["labels"] = relevance
        if "soft" in rows:  # distillation targets: the teachers' distribution over each group's candidates
            soft = torch.zeros(len(sizes), max(sizes))
            for g, probs in enumerate(rows["soft"]):
                soft[g, : len(probs)] = torch.tensor(probs)
            batch["soft"] = soft
        return batch


def ranked(scores: np.ndarray) -> np.ndarray:
    """Candidate indices best first; ties keep the candidates' own order (a stable sort)."""
    return np.argsort(-scores, kind="stable")


def group_metrics(scores: np.ndarray, relevance: list[int]) -> dict[str, float]:
    order = ranked(scores)
    hits = np.array([relevance[i] == 1 for i in order])
    ranks = np.flatnonzero(hits) + 1
    precision = np.cumsum(hits)[hits] / ranks
    return {"accuracy": float(hits[0]), "mrr": float(1.0 / ranks[0]), "map": float(precision.mean())}


def evaluate(spec: TaskSpec, raw, scores: list[np.ndarray]) -> tuple[list[dict], dict[str, float] | None]:
    records, per_group = [], []
    for row, group_scores in enumerate(scores):
        relevance = raw[row]["relevance"]
        order = ranked(group_scores)
        records.append({"id": raw[row]["id"], "query": raw[row]["query"],
                        "ranking": [int(i) for i in order],
                        "scores": [round(float(group_scores[i]), 6) for i in order]})
        if any(r == 1 for r in relevance):
            per_group.append(group_metrics(group_scores, relevance))
    if not per_group:
        return records, None
    return records, {m: float(np.mean([g[m] for g in per_group])) for m in spec.metrics}
