"""multilabel: any number of labels per text (or text pair) from a fixed list; one sigmoid per label +
binary cross-entropy (GoEmotions, topic tagging, toxicity types).

YAML: columns.text (+ text_pair), columns.label (a list per row of label names or ids into `labels`, or a
string cut by `label_separator`; an empty list is a row with no label, a missing value an unlabelled row),
labels (>= 2). Own fields:
  thresholds        a label is predicted when its probability reaches this: one number, or a mapping from
                    label name to number (labels not named use 0.5)
  label_separator   cut string label values ("joy,love") into labels
  label_smoothing   targets y * (1 - s) + s / 2
Metrics: f1_micro, f1_macro (torchmetrics, over the thresholded predictions), exact_match (every label right),
hamming_loss (share of wrong label decisions; lower is better).
Regularizers compare two passes by the symmetric KL of each label's Bernoulli distribution, summed over
labels: (p - q) * (logit p - logit q). Distillation averages the teachers' per-label sigmoid(z / T); the
student learns T^2 * binary cross-entropy to them. Export: AutoModelForSequenceClassification with
problem_type=multi_label_classification (transformers' pipeline then applies sigmoids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from mtdnn.kinds import BadRows, Kind
from mtdnn.kinds._labels import gold_labels, label_list_problems, smoothing_problems
from mtdnn.kinds._sentence import encode_texts, label_lookup, records, text_bad_rows
from mtdnn.kinds.collate import Collator
from mtdnn.kinds.heads import PooledLinear
from mtdnn.kinds.metrics import torchmetrics_functional

if TYPE_CHECKING:
    from mtdnn.kinds.spec import TaskSpec


class MultilabelHead(PooledLinear):
    """pooled -> dropout -> linear to one logit per label -> binary cross-entropy per label."""

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
        targets = batch["labels"].float() * (1 - self.label_smoothing) + self.label_smoothing / 2
        return F.binary_cross_entropy_with_logits(logits.float(), targets)

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per example: sum over labels of KL(p||q) + KL(q||p) between Bernoullis = (p - q) (logit p -
        logit q)."""
        a, b = logits_a.float(), logits_b.float()
        return ((a.sigmoid() - b.sigmoid()) * (a - b)).sum(-1)


@dataclass
class Options:
    thresholds: Union[float, dict[str, float]] = 0.5  # a label is predicted above this; or per label
    label_separator: Optional[str] = None  # labels given as one string per row, split on this (e.g. ",")
    label_smoothing: float = 0.0  # binary targets pulled towards 0.5 by this much


def thresholds(spec: TaskSpec) -> torch.Tensor:
    given = spec.options.thresholds
    if isinstance(given, dict):
        return torch.tensor([float(given.get(name, 0.5)) for name in spec.labels])
    return torch.full((len(spec.labels),), float(given))


def label_values(spec: TaskSpec, value: Any) -> list | None:
    """A row's raw label value as a list of values; None when missing (an unlabelled row)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str) and spec.options.label_separator is not None:
        return [v.strip() for v in value.split(spec.options.label_separator) if v.strip()]
    return list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]


class Multilabel(Kind):
    plain_rows = True
    name = "multilabel"
    summary = "any number of labels per text or text pair (a sigmoid per label, binary cross-entropy)"
    metrics = ("f1_micro", "f1_macro", "exact_match", "hamming_loss")
    default_metrics = ("f1_micro", "f1_macro", "exact_match")
    lower_is_better = ("hamming_loss",)
    required_columns = ("text", "label")
    Options = Options

    def num_labels(self, spec: TaskSpec) -> int:
        return len(spec.labels)

    def spec_problems(self, spec: TaskSpec, where: str) -> list[str]:
        labels = spec.labels if isinstance(spec.labels, list) else []
        problems = label_list_problems(spec, where) + smoothing_problems(spec, where)
        given = spec.options.thresholds
        values = given.values() if isinstance(given, dict) else [given] if given is not None else []
        if any(not 0 < v < 1 for v in values):
            problems.append(f"{where}thresholds: every threshold must be in (0, 1), got {given}")
        if isinstance(given, dict):
            problems += [
                f"{where}thresholds.{name}: not among the labels" for name in given if name not in labels
            ]
        return problems

    def bad_rows(self, spec: TaskSpec, split: str, ds) -> BadRows:
        bad = text_bad_rows(spec, ds)
        column = spec.columns.label
        if not column or column not in ds.column_names:
            return bad
        to_id = label_lookup(spec, ds)
        for row, value in enumerate(ds[column]):
            values = label_values(spec, value)
            if values is None:
                if split != "test":
                    bad.setdefault(
                        ("label", "labels are missing (use an empty list for a row with none)"), []
                    ).append(row)
                continue
            unknown = [v for v in values if to_id(v) is None or to_id(v) < 0]
            if unknown:
                bad.setdefault(("label", f"label {unknown[0]!r} is not in labels {spec.labels}"), []).append(
                    row
                )
        return bad

    def has_gold(self, spec: TaskSpec, split: str, ds) -> bool:
        column = spec.columns.label
        if split != "test":
            return True
        return bool(
            column
            and column in ds.column_names
            and any(label_values(spec, v) is not None for v in ds[column])
        )

    def encode(self, spec: TaskSpec, tokenizer, ds, hidden: bool):
        to_id = label_lookup(spec, ds)
        width = len(spec.labels)

        def multi_hot(value: Any) -> list[float]:
            values = None if hidden else label_values(spec, value)
            if values is None:
                return [float("nan")] * width  # unlabelled: never scored
            hot = [0.0] * width
            for v in values:
                hot[to_id(v)] = 1.0
            return hot

        return encode_texts(spec, tokenizer, ds, lambda values: [multi_hot(v) for v in values])

    def collator(self, spec: TaskSpec, pad_id: int, multiple_of: int):
        return Collator(pad_id, multiple_of, label_dtype=torch.float32)

    def head(self, hidden_size: int, spec: TaskSpec, pooling: str) -> MultilabelHead:
        return MultilabelHead(
            hidden_size, len(spec.labels), spec.dropout, pooling, spec.options.label_smoothing
        )

    def evaluate(
        self, spec: TaskSpec, raw, encoded, outputs: list[torch.Tensor]
    ) -> tuple[list[dict], dict | None]:
        probs = torch.stack(outputs).float().sigmoid()
        predicted = (probs >= thresholds(spec)).long()
        gold = gold_labels(encoded, torch.float32)

        def fill(i: int, rec: dict) -> None:
            rec["labels"] = [name for name, on in zip(spec.labels, predicted[i].tolist()) if on]
            rec["scores"] = {name: round(p, 6) for name, p in zip(spec.labels, probs[i].tolist())}

        labelled = ~torch.isnan(gold).any(-1)
        scores = (
            self._metrics(spec, predicted[labelled], gold[labelled].long()) if bool(labelled.any()) else None
        )
        return records(spec, raw, fill), scores

    @staticmethod
    def _metrics(spec: TaskSpec, predicted: torch.Tensor, gold: torch.Tensor) -> dict[str, float]:
        k, tmf = len(spec.labels), torchmetrics_functional()
        found = {
            "f1_micro": lambda: tmf.f1_score(
                predicted, gold, task="multilabel", num_labels=k, average="micro"
            ),
            "f1_macro": lambda: tmf.f1_score(
                predicted, gold, task="multilabel", num_labels=k, average="macro"
            ),
            "exact_match": lambda: tmf.exact_match(predicted, gold, task="multilabel", num_labels=k),
            "hamming_loss": lambda: tmf.hamming_distance(predicted, gold, task="multilabel", num_labels=k),
        }
        return {name: float(found[name]()) for name in spec.metrics}

    # distillation: per-label probabilities, averaged over the teachers
    def soft_target(self, output: np.ndarray, temperature: float) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-np.asarray(output, dtype=np.float64) / temperature))

    def teacher_soft(self, logits: torch.Tensor, batch: dict, temperature: float) -> torch.Tensor:
        return (logits.float() / temperature).sigmoid()

    def kd_term(
        self, logits: torch.Tensor, soft: torch.Tensor, batch: dict, temperature: float
    ) -> torch.Tensor:
        """T^2 * binary cross-entropy of sigmoid(student / T) to the teachers' probabilities (per label,
        mean): KL up to the teachers' entropy, which does not depend on the student."""
        return F.binary_cross_entropy_with_logits(logits.float() / temperature, soft.float()) * temperature**2

    def export_model(self, spec: TaskSpec, config, head, encoder, pooling: str):
        from mtdnn.kinds.hf_mapping import sequence_model

        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {label: i for i, label in enumerate(spec.labels)}
        config.problem_type = "multi_label_classification"
        return sequence_model(config, head, encoder, pooling)


KIND = Multilabel()
