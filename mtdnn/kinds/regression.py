"""regression: one real number per text (or text pair); linear output + mean squared error.

YAML: columns.text (+ text_pair), columns.label (a number; missing only in a test split), no label list,
metrics from pearson, spearman, mse, mae. Distillation averages the teachers' values (MSE to them).
pair_encoding: bi encodes the two texts apart (mtdnn/kinds/_bi.py); own fields `bi_score: cosine` (default:
lo + (hi - lo) * cos(u, v) with `label_range: [lo, hi]`, default [0, 1]; no weights, so the untrained
encoder's zero-shot score is reported) or `bi_score: features` (a linear map of (u, v, |u - v|, u * v)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from mtdnn.kinds import BadRows, Kind, metrics
from mtdnn.kinds._bi import CosineHead, halves, is_bi
from mtdnn.kinds._labels import gold_labels
from mtdnn.kinds._sentence import column, encode_texts, nested_label_rows, record, records, text_bad_rows
from mtdnn.kinds.collate import Collator
from mtdnn.kinds.heads import PooledLinear

if TYPE_CHECKING:
    from mtdnn.kinds.spec import TaskSpec


class RegressionHead(PooledLinear):
    """pooled -> dropout -> linear to one real number -> mean squared error."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__(hidden_size, 1, dropout, pooling)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None
    ) -> torch.Tensor:
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


class FeatureRegressionHead(RegressionHead):
    """pair_encoding: bi, bi_score: features: dropout -> linear on the pair's (u, v, |u - v|, u * v) -> one
    number; loss, divergence and predictions as RegressionHead's."""

    def __init__(self, hidden_size: int, dropout: float):
        super().__init__(4 * hidden_size, 1, dropout, "mean")

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None
    ) -> torch.Tensor:
        u, v = halves(hidden, mask)
        return self.out(self.dropout(torch.cat([u, v, (u - v).abs(), u * v], -1))).squeeze(-1)


@dataclass
class Options:
    bi_score: str = "cosine"  # pair_encoding: bi only: cosine | features
    # bi_score: cosine maps [0, 1] onto it
    label_range: list[float] = field(default_factory=lambda: [0.0, 1.0])


class Regression(Kind):
    plain_rows = True
    name = "regression"
    bi_encoding = True
    Options = Options
    gaussian_likelihood = True
    summary = "one real number per text or text pair (mean squared error)"
    metrics = ("pearson", "spearman", "mse", "mae")
    default_metrics = ("pearson", "spearman")
    lower_is_better = ("mse", "mae")
    required_columns = ("text", "label")

    def spec_problems(self, spec: TaskSpec, where: str) -> list[str]:
        problems = [f"{where}labels: a regression task has no label list; remove it"] if spec.labels else []
        options = spec.options
        if options.bi_score not in ("cosine", "features"):
            problems.append(f"{where}bi_score: must be cosine or features, got '{options.bi_score}'")
        bounds = options.label_range
        if not (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, (int, float)) for b in bounds)
            and bounds[0] < bounds[1]
        ):
            problems.append(f"{where}label_range: must be [low, high] with low < high, got {bounds}")
        return problems

    def scores_untrained(self, spec: TaskSpec) -> bool:
        return is_bi(spec) and spec.options.bi_score == "cosine"

    def bad_rows(self, spec: TaskSpec, split: str, ds) -> BadRows:
        bad = text_bad_rows(spec, ds)
        if spec.columns.label and spec.columns.label in ds.column_names:
            if nested := nested_label_rows(spec, ds):
                return {**bad, **nested}
            values = column(ds, spec.columns.label)
            numbers = pd.to_numeric(values, errors="coerce")
            missing_ok = values.isna() & (split == "test")
            record(
                bad,
                "label",
                "regression target is not a finite number",
                ~np.isfinite(numbers.astype(float)) & ~missing_ok,
            )
        return bad

    def encode(self, spec: TaskSpec, tokenizer, ds, hidden: bool):
        def labels_of(values: list) -> list[float]:
            return [float("nan") if hidden or v is None else float(v) for v in values]

        return encode_texts(spec, tokenizer, ds, labels_of)

    def collator(self, spec: TaskSpec, pad_id: int, multiple_of: int):
        return Collator(pad_id, multiple_of, label_dtype=torch.float32)

    def submission_value(self, spec: TaskSpec, record: dict) -> Any:
        return record["prediction"]

    def head(self, hidden_size: int, spec: TaskSpec, pooling: str) -> RegressionHead | CosineHead:
        if is_bi(spec) and spec.options.bi_score == "cosine":
            return CosineHead(spec.options.label_range)
        if is_bi(spec):
            return FeatureRegressionHead(hidden_size, spec.dropout)
        return RegressionHead(hidden_size, 1, spec.dropout, pooling)

    def evaluate(
        self, spec: TaskSpec, raw, encoded, outputs: list[torch.Tensor]
    ) -> tuple[list[dict], dict | None]:
        pred = RegressionHead.predict(torch.stack(outputs))
        gold = gold_labels(encoded, torch.float32)

        def fill(i: int, rec: dict) -> None:
            rec["prediction"] = float(pred["prediction"][i])

        mask = ~torch.isnan(gold)
        scores = (
            metrics.compute(spec.metrics, {k: v[mask] for k, v in pred.items()}, gold[mask], 1)
            if bool(mask.any())
            else None
        )
        return records(spec, raw, fill), scores

    # distillation: the teachers' values are averaged as they are, and the student matches them by MSE
    def soft_target(self, output: np.ndarray, temperature: float) -> np.ndarray:
        return np.asarray(output, dtype=np.float64)

    def teacher_soft(self, logits: torch.Tensor, batch: dict, temperature: float) -> torch.Tensor:
        return logits.float()

    def soft_column(self, target: np.ndarray) -> float:
        return float(np.ravel(target)[0])

    def kd_term(
        self, logits: torch.Tensor, soft: torch.Tensor, batch: dict, temperature: float
    ) -> torch.Tensor:
        return F.mse_loss(logits.float(), soft.float().view_as(logits))

    def export_model(self, spec: TaskSpec, config, head, encoder, pooling: str):
        from mtdnn.kinds.hf_mapping import sequence_model

        config.num_labels = 1
        config.problem_type = "regression"
        return sequence_model(config, head, encoder, pooling)


KIND = Regression()
