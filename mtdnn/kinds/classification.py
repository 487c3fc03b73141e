"""classification: one label per text (or text pair) from a fixed list; softmax + cross-entropy.

YAML: columns.text (+ text_pair), columns.label (label names, or ids into `labels` / the data set's
ClassLabel names), labels (>= 2, order = ids), metrics from accuracy, f1 (binary: of the second label; else
macro), f1_macro, mcc, auc (2 labels). Own field: label_smoothing (cross-entropy with smoothed targets).
pair_encoding: bi encodes the two texts apart; SBERT's softmax head on (u, v, |u - v|)
(mtdnn/kinds/_bi.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from mtdnn.kinds import BadRows, Kind, metrics
from mtdnn.kinds._bi import BiClassificationHead, is_bi
from mtdnn.kinds._labels import gold_labels, label_list_problems, smoothing_problems
from mtdnn.kinds._sentence import (
    column,
    encode_texts,
    label_lookup,
    nested_label_rows,
    record,
    records,
    text_bad_rows,
)
from mtdnn.kinds.collate import UNLABELED
from mtdnn.kinds.heads import PooledLinear, symmetric_kl

if TYPE_CHECKING:
    from mtdnn.kinds.spec import TaskSpec


class ClassificationHead(PooledLinear):
    """pooled -> dropout -> linear -> cross-entropy over the task's labels."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        dropout: float,
        pooling: str = "cls",
        label_smoothing: float = 0.0,
    ):
        super().__init__(hidden_size, num_labels, dropout, pooling)
        self.label_smoothing = label_smoothing

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.label_smoothing)

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per-example symmetric KL between the two predicted label distributions."""
        return symmetric_kl(logits_a, logits_b)

    @staticmethod
    def predict(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = logits.float().softmax(-1)
        return {"prediction": probs.argmax(-1), "scores": probs}


@dataclass
class Options:
    label_smoothing: float = 0.0  # cross-entropy against (1 - s) * one-hot + s / labels


class Classification(Kind):
    plain_rows = True
    name = "classification"
    bi_encoding = True
    summary = "one label per text or text pair (softmax, cross-entropy)"
    metrics = ("accuracy", "f1", "f1_macro", "mcc", "auc")
    default_metrics = ("accuracy",)
    required_columns = ("text", "label")
    Options = Options

    def num_labels(self, spec: TaskSpec) -> int:
        return len(spec.labels)

    def spec_problems(self, spec: TaskSpec, where: str) -> list[str]:
        problems = label_list_problems(spec, where) + smoothing_problems(spec, where)
        if "auc" in (spec.metrics or []) and isinstance(spec.labels, list) and len(spec.labels) != 2:
            problems.append(f"{where}metrics: 'auc' needs exactly 2 labels")
        return problems

    def bad_rows(self, spec: TaskSpec, split: str, ds) -> BadRows:
        bad = text_bad_rows(spec, ds)
        if spec.columns.label and spec.columns.label in ds.column_names:
            if nested := nested_label_rows(spec, ds):
                return {**bad, **nested}
            values = column(ds, spec.columns.label)
            to_id = label_lookup(spec, ds)
            unlabeled_ok = split == "test"
            # .item(): numpy scalars would print as np.int64(-1) in the message
            ids = {getattr(v, "item", lambda v=v: v)(): to_id(v) for v in values.dropna().unique()}
            unknown = [v for v, i in ids.items() if i is None or (i == UNLABELED and not unlabeled_ok)]
            for value in unknown[:5]:
                record(bad, "label", f"label {value!r} is not in labels {spec.labels}", values == value)
            if len(unknown) > 5:
                record(
                    bad,
                    "label",
                    f"{len(unknown) - 5} more label values are not in labels {spec.labels}",
                    values.isin(unknown[5:]),
                )
            if not unlabeled_ok:
                record(bad, "label", "label is missing", values.isna())
        return bad

    def encode(self, spec: TaskSpec, tokenizer, ds, hidden: bool):
        to_id = label_lookup(spec, ds)

        def labels_of(values: list) -> list[int]:
            return [UNLABELED if hidden or to_id(v) is None else to_id(v) for v in values]

        return encode_texts(spec, tokenizer, ds, labels_of)

    def submission_value(self, spec: TaskSpec, record: dict) -> Any:
        """The server's string for the predicted label (submission.labels, in label order; default its
        name)."""
        names = [str(label) for label in spec.labels]
        strings = spec.submission.labels or names
        return strings[names.index(str(record["label"]))]

    def head(
        self, hidden_size: int, spec: TaskSpec, pooling: str
    ) -> ClassificationHead | BiClassificationHead:
        if is_bi(spec):
            return BiClassificationHead(
                hidden_size, len(spec.labels), spec.dropout, spec.options.label_smoothing
            )
        return ClassificationHead(
            hidden_size, len(spec.labels), spec.dropout, pooling, spec.options.label_smoothing
        )

    def evaluate(
        self, spec: TaskSpec, raw, encoded, outputs: list[torch.Tensor]
    ) -> tuple[list[dict], dict | None]:
        pred = ClassificationHead.predict(torch.stack(outputs))
        gold = gold_labels(encoded, torch.long)

        def fill(i: int, rec: dict) -> None:
            rec["label"] = spec.labels[int(pred["prediction"][i])]
            rec["scores"] = {name: round(s, 6) for name, s in zip(spec.labels, pred["scores"][i].tolist())}

        mask = gold != UNLABELED
        scores = (
            metrics.compute(spec.metrics, {k: v[mask] for k, v in pred.items()}, gold[mask], len(spec.labels))
            if bool(mask.any())
            else None
        )
        return records(spec, raw, fill), scores

    def export_model(self, spec: TaskSpec, config, head, encoder, pooling: str):
        from mtdnn.kinds.hf_mapping import sequence_model

        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {label: i for i, label in enumerate(spec.labels)}
        config.problem_type = "single_label_classification"
        return sequence_model(config, head, encoder, pooling)


KIND = Classification()
