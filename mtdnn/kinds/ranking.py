"""ranking (answer selection, multiple choice): each (query, candidate) pair is scored by a cross-encoder,
softmax runs over the candidates of one query. A group is one dataset row, so shuffled batches keep groups
whole.

YAML: columns.query and either columns.candidates (a list of texts per row, or a list of columns, one
candidate each: multiple-choice sets such as SWAG or COPA) with columns.label (the correct index or
indices), or one row per candidate with columns.group + columns.text + columns.label (0/1). columns.query
may also be a list of columns, joined with a space (e.g. CosmosQA's context and question). Metrics from
accuracy, mrr, map.

pair_encoding: bi encodes the query and each candidate apart (a retrieval bi-encoder,
sentence-transformers' MultipleNegativesRankingLoss): mean pooling, score = bi_scale * cosine (bi_score:
cosine, the default) or the dot product (bi_score: dot); with in_batch_negatives (default true) every other
candidate in the batch is a negative too. At inference each distinct text is encoded once, so a candidate
pool shared by many queries costs its size.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtdnn.kinds import BadRows, Kind, map_rows
from mtdnn.kinds._bi import is_bi
from mtdnn.kinds.collate import MODEL_INPUTS, SECOND, Collator
from mtdnn.kinds.heads import NEG, PooledLinear, pool, symmetric_kl

if TYPE_CHECKING:
    from mtdnn.kinds.spec import TaskSpec

GROUPED = ("query", "candidates", "relevance", "id")  # the internal layout, one row per group


def as_list(column: str | list[str] | None) -> list[str]:
    return [] if column is None else [column] if isinstance(column, str) else list(column)


def regroup(spec: TaskSpec, ds):
    """Bring any layout to one row per group: query, candidates [..], relevance [1/0/-1 ..], id."""
    import datasets

    cols = spec.columns
    queries = [
        " ".join(str(p) for p in parts if p is not None)
        for parts in zip(*(ds[c] for c in as_list(cols.query)))
    ]
    if cols.group:  # one row per candidate: gather rows by group id, keeping their order
        labels = ds[cols.label] if cols.label in ds.column_names else [None] * len(ds)
        groups = collections.OrderedDict()
        for query, group, text, label in zip(queries, ds[cols.group], ds[cols.text], labels):
            entry = groups.setdefault(group, {"query": query, "candidates": [], "relevance": []})
            entry["candidates"].append(text)
            entry["relevance"].append(_flag(label))
        return datasets.Dataset.from_dict(
            {
                "query": [g["query"] for g in groups.values()],
                "candidates": [g["candidates"] for g in groups.values()],
                "relevance": [g["relevance"] for g in groups.values()],
                "id": list(groups),  # the group column's own values (ints stay ints, as other kinds' ids)
            }
        )
    labels = ds[cols.label] if cols.label in ds.column_names else [None] * len(ds)
    ids = ds[cols.id] if cols.id else list(range(len(ds)))
    if isinstance(cols.candidates, str):  # a list of candidate texts per row
        candidates = [list(c) if c is not None else [] for c in ds[cols.candidates]]
    else:  # one column per candidate (multiple choice: ending0..ending3, choice1/choice2)
        candidates = [list(c) for c in zip(*(ds[c] for c in cols.candidates))]
    return datasets.Dataset.from_dict(
        {
            "query": queries,
            "candidates": candidates,
            "relevance": [_relevance(label, len(c)) for label, c in zip(labels, candidates)],
            "id": list(ids),  # the id column's values, or the row number
        }
    )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value in (-1, "", "-1")


def _flag(value: Any) -> int:
    """One row per candidate: 1 correct, 0 not, -1 unlabelled (missing, NaN, -1)."""
    return -1 if _missing(value) else int(value in (1, True, "1", "true", "True"))


def _relevance(label: Any, size: int) -> list[int]:
    """Index (or list of indices) of the correct candidate(s) -> 0/1 per candidate; -1s when unknown, -2s
    when the label is not an index. Digit strings count as indices (HellaSwag stores "0".."3")."""
    if _missing(label):
        return [-1] * size
    chosen = list(label) if isinstance(label, (list, tuple)) else [label]
    chosen = [int(i) if isinstance(i, str) and i.strip().isdigit() else i for i in chosen]
    if not all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) and 0 <= i < size for i in chosen
    ):
        return [-2] * size
    return [int(i in chosen) for i in range(size)]


def bad_rows(spec: TaskSpec, split: str, ds) -> BadRows:
    bad: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    for row, (query, candidates, relevance, group) in enumerate(
        zip(ds["query"], ds["candidates"], ds["relevance"], ds["id"])
    ):
        if not query or not str(query).strip():
            bad[("query", "text is empty")].append(row)
        if not candidates:
            bad[("candidates", "group has no candidates")].append(row)
        elif any(not c or not str(c).strip() for c in candidates):
            bad[("candidates", "a candidate text is empty")].append(row)
        if -2 in relevance:
            bad[
                ("label", "label must be a candidate index (or a list of them) within the candidates")
            ].append(row)
        elif split != "test" and -1 in relevance and any(r >= 0 for r in relevance):
            bad[("label", f"group '{group}' has candidates without a label")].append(row)
        elif split != "test" and candidates and not any(r == 1 for r in relevance):
            bad[("label", f"group '{group}' has no correct candidate")].append(row)
    if split == "train" and len(ds) and all(len(c) < 2 for c in ds["candidates"]):
        bad[
            (
                "candidates",
                "every group has a single candidate, so there is nothing to rank (one row per "
                "candidate needs columns.group to gather a query's candidates)",
            )
        ] = list(range(len(ds)))
    return dict(bad)


def encode(spec: TaskSpec, tokenizer, ds, hidden: bool):
    def pairs(batch: dict[str, list]) -> dict[str, list]:
        out = collections.defaultdict(list)
        for query, candidates, relevance in zip(batch["query"], batch["candidates"], batch["relevance"]):
            enc = tokenizer(
                [query] * len(candidates), candidates, truncation=True, max_length=spec.max_length
            )
            for key, value in enc.items():
                out[key].append(value)
            out["labels"].append([0] * len(candidates) if hidden else [max(r, 0) for r in relevance])
        return dict(out)

    def apart(batch: dict[str, list]) -> dict[str, list]:
        """pair_encoding: bi: the query (input_ids ...) and its candidates (input_ids_b ...) tokenised
        apart."""
        out = collections.defaultdict(list)
        for query, candidates, relevance in zip(batch["query"], batch["candidates"], batch["relevance"]):
            first = tokenizer(query, truncation=True, max_length=spec.max_length)
            second = tokenizer(candidates, truncation=True, max_length=spec.max_length)
            for key in (k for k in MODEL_INPUTS if k in first):
                out[key].append(first[key])
                out[key + SECOND].append(second[key])
            out["length"].append(max(map(len, [first["input_ids"], *second["input_ids"]])))
            out["labels"].append([0] * len(candidates) if hidden else [max(r, 0) for r in relevance])
        return dict(out)

    return map_rows(ds, apart if is_bi(spec) else pairs, f"tokenising {spec.name}")


class GroupCollator:
    """A batch of groups -> the candidates stacked (N, L), with each candidate's group and slot in the
    group. Bi-encoded groups: the queries first, then the candidates ([G queries; N candidates], L);
    `group` and `slot` still describe the N candidates (the head takes the last N rows as candidates)."""

    def __init__(self, pad_id: int, multiple_of: int = 8):
        self.flat = Collator(pad_id, multiple_of)

    def __call__(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        apart = "input_ids" + SECOND in rows
        candidates = rows["input_ids" + SECOND] if apart else rows["input_ids"]
        sizes = [len(group) for group in candidates]
        keys = [k for k in MODEL_INPUTS if k in rows]
        if apart:
            flat = {k: list(rows[k]) + [seq for group in rows[k + SECOND] for seq in group] for k in keys}
        else:
            flat = {k: [seq for group in rows[k] for seq in group] for k in keys}
        batch = self.flat({**flat, "labels": [0] * len(flat["input_ids"])})
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


def group_records(
    spec: TaskSpec, raw, scores: list[np.ndarray]
) -> tuple[list[dict], dict[str, float] | None]:
    records, per_group = [], []
    for row, group_scores in enumerate(scores):
        relevance = raw[row]["relevance"]
        order = ranked(group_scores)
        records.append(
            {
                "id": raw[row]["id"],
                "query": raw[row]["query"],
                "ranking": [int(i) for i in order],
                "scores": [round(float(group_scores[i]), 6) for i in order],
            }
        )
        if any(r == 1 for r in relevance) and -1 not in relevance:  # only fully labelled groups are scored
            per_group.append(group_metrics(group_scores, relevance))
    if not per_group:
        return records, None
    return records, {m: float(np.mean([g[m] for g in per_group])) for m in spec.metrics}


# ---------------------------------------------------------------- the kind


def group_matrix(scores: torch.Tensor, batch: dict) -> torch.Tensor:
    """Candidate scores (N,) -> (groups, most candidates) with absent slots masked."""
    groups, slots = batch["group"], batch["slot"]
    matrix = scores.new_full((int(batch["labels"].shape[0]), int(slots.max()) + 1), NEG)
    return matrix.index_put((groups, slots), scores)


class RankingHead(PooledLinear):
    """pooled (query, candidate) -> dropout -> linear score; softmax over the candidates of one group; loss =
    -log of the probability mass on the correct candidate(s)."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__(hidden_size, 1, dropout, pooling)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None
    ) -> torch.Tensor:
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


def own_scores(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Each candidate's score by its own query (N,): a cross-encoder's output as it is; from a bi-encoder's
    (queries, candidates) matrix, the entries of each candidate's own group."""
    if logits.dim() == 1:
        return logits
    return logits[batch["group"], torch.arange(logits.shape[1], device=logits.device)]


class BiRankingHead(nn.Module):
    """pair_encoding: bi. Rows [G queries; N candidates] are mean-pooled and every query scores every
    candidate of the batch: bi_scale * cosine, or the dot product. Output: the (G, N) score matrix. The
    loss is softmax cross-entropy over the batch's candidates (in_batch_negatives) or over the group's own
    only."""

    reads = ("group",)  # batch fields MultiTaskModel passes on: which rows are candidates, and whose

    def __init__(self, score: str, scale: float, in_batch_negatives: bool):
        super().__init__()
        self.cosine = score == "cosine"
        self.scale = float(scale) if self.cosine else 1.0
        self.in_batch_negatives = in_batch_negatives

    def embed(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = pool(hidden.float(), mask, "mean", None)
        return F.normalize(pooled, dim=-1) if self.cosine else pooled

    def score(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.scale * queries @ candidates.T

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        pooler_output: torch.Tensor | None,
        group: torch.Tensor,
    ) -> torch.Tensor:
        embedded = self.embed(hidden, mask)
        queries = len(embedded) - len(group)
        return self.score(embedded[:queries], embedded[queries:])

    def softmax_logits(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        """What the softmax runs over per query: every candidate of the batch, or its group's (masked).
        Another group's candidate with the very text of one of the query's answers is left out, not made a
        negative."""
        if not self.in_batch_negatives:
            return group_matrix(own_scores(scores, batch), batch)
        ids = batch["input_ids"][-scores.shape[1] :]  # the candidates' token ids
        same_text = (ids.unsqueeze(0) == ids.unsqueeze(1)).all(-1).float()  # (N, N)
        copies_of_answers = (self.positives(batch).float() @ same_text) > 0
        return scores.masked_fill(copies_of_answers & ~self.own(batch), NEG)

    @staticmethod
    def own(batch: dict) -> torch.Tensor:
        """(G, N): candidate n belongs to query g's group."""
        group = batch["group"]
        return group.unsqueeze(0) == torch.arange(len(batch["labels"]), device=group.device).unsqueeze(1)

    def positives(self, batch: dict) -> torch.Tensor:
        """(G, N): candidate n is a correct answer of query g."""
        return self.own(batch) & (batch["labels"] > 0)[batch["group"], batch["slot"]].unsqueeze(0)

    def loss(self, scores: torch.Tensor, batch: dict) -> torch.Tensor:
        log_p = F.log_softmax(self.softmax_logits(scores, batch), -1)
        relevant = self.positives(batch) if self.in_batch_negatives else batch["labels"] > 0
        return -(log_p.masked_fill(~relevant, NEG).logsumexp(-1)).mean()

    def divergence(self, scores_a: torch.Tensor, scores_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per query: symmetric KL between the two distributions the loss's softmax makes."""
        return symmetric_kl(self.softmax_logits(scores_a, batch), self.softmax_logits(scores_b, batch))


@torch.no_grad()
def bi_outputs(
    model, spec: TaskSpec, encoded, collate: GroupCollator, batch_size: int, device: torch.device, bf16: bool
) -> list[torch.Tensor]:
    """Each group's candidate scores, every distinct text (query or candidate) encoded once: a candidate
    pool shared by many queries is embedded once, not once per query."""
    keys = [k for k in MODEL_INPUTS if k in encoded.column_names]
    table: dict[tuple[int, ...], int] = {}  # token ids -> row of the embedding table
    texts: list[dict[str, list[int]]] = []

    def row_of(text: dict[str, list[int]]) -> int:
        key = tuple(text["input_ids"])
        if key not in table:
            table[key] = len(texts)
            texts.append(text)
        return table[key]

    groups = [
        (
            row_of({k: row[k] for k in keys}),
            [row_of({k: row[k + SECOND][j] for k in keys}) for j in range(len(row["input_ids" + SECOND]))],
        )
        for row in encoded
    ]
    embedded = embed_texts(model, spec.name, texts, collate.flat, batch_size, device, bf16)
    head = model.head(spec.name)
    return [
        head.score(embedded[query : query + 1], embedded[candidates]).squeeze(0)
        for query, candidates in groups
    ]


def embed_texts(
    model,
    task: str,
    texts: list[dict[str, list[int]]],
    collate: Collator,
    batch_size: int,
    device: torch.device,
    bf16: bool,
) -> torch.Tensor:
    """(texts, hidden) embeddings by the task's bi ranking head, shortest texts batched together."""
    head = model.head(task)
    order = np.argsort([len(text["input_ids"]) for text in texts], kind="stable")
    parts = []
    for start in range(0, len(order), batch_size):
        rows = [texts[i] for i in order[start : start + batch_size]]
        batch = collate({**{k: [r[k] for r in rows] for k in rows[0]}, "labels": [0] * len(rows)})
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden = model.encode(task, **inputs).last_hidden_state
        parts.append(head.embed(hidden, inputs["attention_mask"]).float().cpu())
    embedded = torch.cat(parts) if parts else torch.empty(0, 0)
    return embedded[torch.as_tensor(np.argsort(order, kind="stable"))]  # back to the texts' order


@dataclass
class Options:
    bi_score: str = "cosine"  # pair_encoding: bi only: cosine | dot
    bi_scale: float = 20.0  # bi_score: cosine: the similarity is multiplied by this before the softmax
    in_batch_negatives: bool = True  # pair_encoding: bi only: the batch's other candidates are negatives too


class Ranking(Kind):
    name = "ranking"
    bi_encoding = True
    Options = Options
    summary = (
        "scores (query, candidate) pairs; softmax over a group's candidates "
        "(answer selection, multiple choice)"
    )
    metrics = ("accuracy", "mrr", "map")
    default_metrics = ("accuracy", "mrr", "map")
    required_columns = ("query", "label")

    def spec_problems(self, spec: TaskSpec, where: str) -> list[str]:
        cols = spec.columns
        problems = [f"{where}labels: a ranking task has no label list; remove it"] if spec.labels else []
        if bool(cols.candidates) == bool(cols.group):
            problems.append(
                f"{where}columns.candidates: a ranking task needs either `candidates` (a list per row, or "
                "one column per candidate) or `group` + `text` (one row per candidate)"
            )
        if cols.group and not cols.text:
            problems.append(f"{where}columns.text: one row per candidate needs the candidate text column")
        if isinstance(cols.candidates, list) and len(cols.candidates) < 2:
            problems.append(f"{where}columns.candidates: one column per candidate needs at least 2 columns")
        options = spec.options
        if options.bi_score not in ("cosine", "dot"):
            problems.append(f"{where}bi_score: must be cosine or dot, got '{options.bi_score}'")
        # None: a type error, reported
        if options.bi_scale is not None and not 0 < options.bi_scale < math.inf:
            problems.append(f"{where}bi_scale: must be a positive number, got {options.bi_scale}")
        return problems

    def regroup(self, spec: TaskSpec, ds):
        return regroup(spec, ds)

    def bad_rows(self, spec: TaskSpec, split: str, ds) -> BadRows:
        return bad_rows(spec, split, ds)

    def has_gold(self, spec: TaskSpec, split: str, ds) -> bool:
        return split != "test" or any(r >= 0 for group in ds["relevance"] for r in group)

    def train_texts(self, spec: TaskSpec, ds) -> Iterable[str]:  # rows are regrouped by now
        yield from (str(q) for q in ds["query"])
        yield from (str(c) for group in ds["candidates"] for c in group)

    def encode(self, spec: TaskSpec, tokenizer, ds, hidden: bool):
        return encode(spec, tokenizer, ds, hidden)

    def collator(self, spec: TaskSpec, pad_id: int, multiple_of: int) -> GroupCollator:
        return GroupCollator(pad_id, multiple_of)

    def submission_value(self, spec: TaskSpec, record: dict) -> Any:
        return record["ranking"][0]  # the index of the top candidate (COPA's choice)

    def head(self, hidden_size: int, spec: TaskSpec, pooling: str) -> RankingHead | BiRankingHead:
        if is_bi(spec):
            return BiRankingHead(
                spec.options.bi_score, spec.options.bi_scale, spec.options.in_batch_negatives
            )
        return RankingHead(hidden_size, 1, spec.dropout, pooling)

    def scores_untrained(self, spec: TaskSpec) -> bool:
        return is_bi(spec)

    def row_output(self, batch: dict, logits: torch.Tensor, j: int) -> torch.Tensor:
        return own_scores(logits, batch)[batch["group"] == j]

    def forward_split(
        self, spec: TaskSpec, model, encoded, collate, batch_size: int, device: torch.device, bf16: bool
    ) -> list[torch.Tensor] | None:
        return bi_outputs(model, spec, encoded, collate, batch_size, device, bf16) if is_bi(spec) else None

    def evaluate(
        self, spec: TaskSpec, raw, encoded, outputs: list[torch.Tensor]
    ) -> tuple[list[dict], dict | None]:
        return group_records(spec, raw, [o.numpy() for o in outputs])

    # distillation: the teachers' distribution over each group's candidates
    def teacher_soft(self, logits: torch.Tensor, batch: dict, temperature: float) -> torch.Tensor:
        return F.softmax(group_matrix(own_scores(logits.float(), batch), batch) / temperature, -1)

    def kd_term(
        self, logits: torch.Tensor, soft: torch.Tensor, batch: dict, temperature: float
    ) -> torch.Tensor:
        log_p = F.log_softmax(group_matrix(own_scores(logits.float(), batch), batch) / temperature, -1)
        return F.kl_div(log_p, soft.float(), reduction="batchmean") * temperature**2

    def export_model(self, spec: TaskSpec, config, head, encoder, pooling: str):
        from mtdnn.kinds.hf_mapping import sequence_model  # one score per (query, candidate) pair

        config.num_labels = 1
        config.problem_type = "regression"
        return sequence_model(config, head, encoder, pooling)


KIND = Ranking()
