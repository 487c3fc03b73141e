"""Head kinds: one module per kind in this package, found without a central list (like the regularizers).

A module `mtdnn/kinds/<name>.py` defines `KIND`, an instance of a `Kind` subclass that owns everything
about the kind, so nothing else in the package branches on kind names:

  task YAML   Options (the kind's own top-level fields), required/gold columns, metrics, spec_problems()
  rows        regroup() (bring a split to the kind's row layout), bad_rows(), has_gold()
  encoding    encode() (windows for span, groups for ranking, word alignment for tagging), collator()
  model       head() -> a module with forward(hidden, mask, pooler_output), loss(logits, batch) and
              divergence(a, b, batch) (per example: what SMART and the other regularizers compare)
  results     row_output(), evaluate() -> (prediction records, metrics or None), write_extra()
  distillation token_level, soft_target() (one teacher's output -> target), teacher_soft() (on the fly),
              soft_column(), kd_term()
  export      export_model() (the HuggingFace class and how the head maps onto it)

`Kind` holds the defaults most kinds share (sentence-level, distributions over the last axis); a kind module
overrides what differs. Private modules (`_sentence.py`) hold helpers several kinds compose.

May import: core only (the task registry reads the kinds; the kinds read a task through spec.py's Protocol).
"""

from __future__ import annotations

import contextvars
import functools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtdnn.core import plugins
from mtdnn.core.errors import MtdnnError
from mtdnn.kinds.collate import Collator

if TYPE_CHECKING:
    from mtdnn.kinds.spec import TaskSpec

BadRows = dict[tuple[str, str], list[int]]  # (column role, reason) -> row indices


@dataclass
class NoOptions:
    """A kind without fields of its own in the task YAML."""


class Kind:
    name = ""
    metrics: tuple[str, ...] = ()  # the metrics a task of this kind may ask for
    default_metrics: tuple[str, ...] = ()  # when the task YAML names none (the first is the main one)
    lower_is_better: tuple[
        str, ...
    ] = ()  # metrics that are errors (their sign is flipped when picking 'best')
    required_columns: tuple[str, ...] = ()  # column roles every task of this kind must map
    gold_columns: tuple[str, ...] = ("label",)  # roles a test split may lack (hidden gold labels)
    # the loss is a squared error (balancer=uncertainty weighs it by 1/(2 sigma^2))
    gaussian_likelihood = False
    bi_encoding = False  # takes pair_encoding: bi (mtdnn/kinds/_bi.py)
    token_level = False  # soft targets per token: teachers must tokenise exactly like the student
    # one text (or pair) per row, encoded by `map` alone: predict() may serve clean texts without `datasets`
    plain_rows = False
    Options: type = NoOptions  # the kind's own top-level task-YAML fields, as a dataclass
    summary = ""  # one line for the task guide
    pipeline_tag = "text-classification"  # the Hub's task for an exported model (its model card)

    # ---------------------------------------------------------------- task YAML
    def num_labels(self, spec: TaskSpec) -> int:
        return 1

    def spec_problems(self, spec: TaskSpec, where: str) -> list[str]:
        """Checks of the task YAML beyond types and required columns (each a 'file: field: reason' line)."""
        return []

    # ---------------------------------------------------------------- rows
    def regroup(self, spec: TaskSpec, ds):
        """The split in the row layout this kind checks and encodes (default: as read)."""
        return ds

    def bad_rows(self, spec: TaskSpec, split: str, ds) -> BadRows:
        raise NotImplementedError

    def length_problems(self, spec: TaskSpec, tokenizer, split: str, ds) -> list[str]:
        """Rows the tokenizer cannot encode within max_length (checked before the first step)."""
        return []

    def has_gold(self, spec: TaskSpec, split: str, ds) -> bool:
        """False for a test split that carries no gold labels (all missing, or -1 as in GLUE)."""
        if split != "test":
            return True
        column = spec.columns.label
        if not column or column not in ds.column_names:
            return False
        values = ds.select_columns([column]).to_pandas()[column]
        return not bool((values.isna() | (values.astype(str).isin(["-1", "-1.0"]))).all())

    def train_texts(self, spec: TaskSpec, ds) -> Iterable[str]:
        """Every text of a train split (for learning a tiny tokenizer in tests)."""
        for column in (spec.columns.text, spec.columns.text_pair):
            if column:
                yield from (str(t) for t in ds[column])

    # ---------------------------------------------------------------- encoding and batching
    def encode(self, spec: TaskSpec, tokenizer, ds, hidden: bool):
        raise NotImplementedError

    def collator(self, spec: TaskSpec, pad_id: int, multiple_of: int):
        return Collator(pad_id, multiple_of)

    # ---------------------------------------------------------------- model
    def head(self, hidden_size: int, spec: TaskSpec, pooling: str) -> nn.Module:
        raise NotImplementedError

    def scores_untrained(self, spec: TaskSpec) -> bool:
        """The head needs no training to score (a bi-encoder's cosine): the run reports the zero-shot
        score."""
        return False

    # ---------------------------------------------------------------- results
    def forward_split(
        self,
        spec: TaskSpec,
        model: nn.Module,
        encoded,
        collate,
        batch_size: int,
        device: torch.device,
        bf16: bool,
    ) -> list[torch.Tensor] | None:
        """Every row's output computed the kind's own way (bi ranking: each distinct text encoded once), or
        None for mtdnn.evaluation.engine's batched path."""
        return None

    def row_output(self, batch: dict, logits: torch.Tensor, j: int) -> torch.Tensor:
        """Row j's own output in a batch (a row, a group's candidate scores, a window's tokens)."""
        return logits[j]

    def evaluate(
        self, spec: TaskSpec, raw, encoded, outputs: list[torch.Tensor]
    ) -> tuple[list[dict], dict | None]:
        """Prediction records (one per input example) and metrics (None when the split has no gold labels)."""
        raise NotImplementedError

    def submission_value(self, spec: TaskSpec, record: dict) -> Any:
        """One prediction record as a benchmark server expects it (mtdnn/serving/submission.py)."""
        raise MtdnnError(f"format: {spec.head} tasks have no benchmark submission format")

    def write_extra(self, path: Path, spec: TaskSpec, records: list[dict]) -> None:
        """Files written beside <task>_<split>.jsonl (span: the official SQuAD {id: answer} layout)."""
        return None

    # ---------------------------------------------------------------- distillation
    def soft_target(self, output: np.ndarray, temperature: float) -> np.ndarray:
        """One teacher's raw output for one example -> its target (averaged over the teachers)."""
        z = np.asarray(output, dtype=np.float64) / temperature
        z = np.exp(z - z.max(-1, keepdims=True))
        return z / z.sum(-1, keepdims=True)

    def teacher_soft(self, logits: torch.Tensor, batch: dict, temperature: float) -> torch.Tensor:
        """The same target computed from a teacher's logits on the student's batch
        (soft_targets=on_the_fly)."""
        return F.softmax(logits.float() / temperature, -1)

    def soft_column(self, target: np.ndarray) -> Any:
        """How one example's target is stored in the encoded dataset's `soft` column."""
        return target.tolist()

    def kd_term(
        self, logits: torch.Tensor, soft: torch.Tensor, batch: dict, temperature: float
    ) -> torch.Tensor:
        """T^2 * KL(teacher || softmax(student / T)), averaged over the batch's examples."""
        log_p = F.log_softmax(logits.float() / temperature, -1)
        return F.kl_div(log_p, soft.float(), reduction="batchmean") * temperature**2

    def serves_from_memory(self, spec: TaskSpec) -> bool:
        """Whether predict() may serve this task's clean texts without `datasets` (plain rows, not a bi
        pair encoding, whose two texts travel apart)."""
        from mtdnn.kinds._bi import is_bi

        return self.plain_rows and not is_bi(spec)

    # ---------------------------------------------------------------- export
    def export_formats(self, spec: TaskSpec) -> tuple[str, ...]:
        """The export formats (modules of mtdnn/export/) that can hold this task's model, the natural one
        first: a bi-encoder task is an embedding model (sentence-transformers), others a transformers
        model."""
        from mtdnn.kinds._bi import is_bi

        return ("sentence-transformers",) if is_bi(spec) else ("hf", "onnx")

    def export_model(
        self, spec: TaskSpec, config, head: nn.Module, encoder: nn.Module, pooling: str
    ) -> nn.Module:
        """A transformers model holding this task's encoder and head (see mtdnn/kinds/hf_mapping.py)."""
        raise MtdnnError(f"export: {self.name} tasks have no standard HuggingFace class to export to")


def available() -> list[str]:
    return list(plugins.names(__name__, "KIND"))


@functools.cache
def get(name: str) -> Kind:
    """The kind called `name` (a module of this package); raises KeyError for an unknown name."""
    return plugins.load(__name__, "KIND", name).KIND


def of(spec: TaskSpec) -> Kind:
    return get(spec.head)


# set by predict(): its rows are in memory and used once, so no fingerprint has to identify them later
ONE_OFF_ROWS: contextvars.ContextVar[bool] = contextvars.ContextVar("one_off_rows", default=False)


def map_rows(ds, fn: Callable[..., dict], desc: str, **kwargs: Any):
    """`ds.map(fn)` batched, the input columns dropped. One-off in-memory rows (ONE_OFF_ROWS) get a random
    fingerprint: datasets would otherwise hash `fn` (the tokenizer with it) by pickling it, ~80 ms a call, for
    a key only cache files and soft-target stores use (training keeps the content fingerprint for them)."""
    fingerprint = uuid.uuid4().hex if ONE_OFF_ROWS.get() and not ds.cache_files else None
    return ds.map(
        fn, batched=True, remove_columns=ds.column_names, desc=desc, new_fingerprint=fingerprint, **kwargs
    )
