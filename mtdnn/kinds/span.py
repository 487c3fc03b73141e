"""span: extractive QA (SQuAD v1.1 / v2). Long contexts are split into overlapping windows, answers mapped
to tokens through character offsets, n-best decoding over every window of an example, SQuAD answer
normalisation.

YAML: columns.question, columns.context, columns.answers ({text: [...], answer_start: [...]}, SQuAD
layout); metrics from f1, exact_match (and, for v2, has_answer_/no_answer_ variants). Own fields:
doc_stride, max_answer_length, n_best, allow_no_answer (SQuAD v2), no_answer_threshold. Rows without gold
answers count in the metrics only in v2 data (where "no answer" is the gold); elsewhere they are
unlabelled."""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from mtdnn.core.atomic import write_atomic
from mtdnn.kinds import BadRows, Kind, map_rows
from mtdnn.kinds.heads import NEG, TokenLinear, symmetric_kl

if TYPE_CHECKING:
    from mtdnn.kinds.spec import TaskSpec

NO_OFFSET = (-1, -1)  # tokens outside the context (question, special tokens, padding)


# ---------------------------------------------------------------- row checks


def answer_list(value: Any) -> list[tuple[str, int]]:
    """SQuAD layout {text: [...], answer_start: [...]} (a single text/start is accepted too)."""
    if not value:
        return []
    texts, starts = value.get("text"), value.get("answer_start")
    if isinstance(texts, str):
        texts, starts = [texts], [starts]
    return list(zip(texts or [], starts or []))


def bad_rows(spec: TaskSpec, split: str, ds) -> BadRows:
    cols = spec.columns
    bad: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    questions, contexts = ds[cols.question], ds[cols.context]
    answers = ds[cols.answers] if cols.answers in ds.column_names else [None] * len(ds)
    for row, (question, context, value) in enumerate(zip(questions, contexts, answers)):
        if not question or not str(question).strip():
            bad[("question", "text is empty")].append(row)
        if not context or not str(context).strip():
            bad[("context", "text is empty")].append(row)
            continue
        if (
            isinstance(value, dict)
            and not isinstance(value.get("text"), str)
            and len(value.get("text") or []) != len(value.get("answer_start") or [])
        ):
            bad[
                (
                    "answers",
                    f"{len(value.get('text') or [])} answer texts but "
                    f"{len(value.get('answer_start') or [])} answer_start offsets",
                )
            ].append(row)
            continue
        pairs = answer_list(value)
        if not pairs and split != "test" and not spec.options.allow_no_answer:
            bad[("answers", "no answer given (set allow_no_answer: true for SQuAD v2 data)")].append(row)
        for text, start in pairs:
            found = context[start : start + len(text)] if isinstance(start, int) and start >= 0 else None
            if found != text:
                bad[
                    (
                        "answers",
                        f"answer {text!r} does not match the context at offset {start} (found {found!r})",
                    )
                ].append(row)
    return dict(bad)


# ---------------------------------------------------------------- windows


def encode(spec: TaskSpec, tokenizer, ds, hidden: bool):
    """One row per window: tokens, the context offsets of each token, the answer's (start, end) token (0, 0
    = the [CLS] slot when the window does not contain it), and the index of its example."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("span tasks need a fast tokenizer (offset mapping)")
    cols = spec.columns

    def windows(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        enc = tokenizer(
            batch[cols.question],
            batch[cols.context],
            truncation="only_second",
            max_length=spec.max_length,
            stride=spec.options.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        out = {
            k: [] for k in ("input_ids", "attention_mask", "token_type_ids", "offsets", "labels", "example")
        }
        for i, sample in enumerate(enc["overflow_to_sample_mapping"]):
            sequence = enc.sequence_ids(i)
            offsets = [
                tuple(o) if sequence[k] == 1 else NO_OFFSET for k, o in enumerate(enc["offset_mapping"][i])
            ]
            pairs = (
                [] if hidden else answer_list(batch[cols.answers][sample]) if cols.answers in batch else []
            )
            out["labels"].append(list(answer_tokens(offsets, pairs[0])) if pairs else [0, 0])
            out["offsets"].append([list(o) for o in offsets])
            out["example"].append(indices[sample])
            for key in ("input_ids", "attention_mask", "token_type_ids"):
                if key in enc:
                    out[key].append(enc[key][i])
        return {k: v for k, v in out.items() if v or k in ("labels", "offsets", "example")}

    return map_rows(ds, windows, f"windowing {spec.name}", with_indices=True)


def answer_tokens(offsets: list[tuple[int, int]], answer: tuple[str, int]) -> tuple[int, int]:
    """First and last token covering the answer's characters, or (0, 0) when this window misses it."""
    text, start_char = answer
    end_char = start_char + len(text)
    context = [k for k, o in enumerate(offsets) if o != NO_OFFSET]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = next(k for k in context if offsets[k][1] > start_char)
    end = next(k for k in reversed(context) if offsets[k][0] < end_char)
    return start, end


# ---------------------------------------------------------------- decoding


def best_spans(start: np.ndarray, end: np.ndarray, offsets: list, n_best: int, max_len: int):
    """The n_best x n_best (start, end) pairs of one window that are valid context spans, with scores."""
    found = []
    for s in np.argsort(start)[::-1][:n_best]:
        for e in np.argsort(end)[::-1][:n_best]:
            if offsets[s][0] < 0 or offsets[e][0] < 0 or e < s or e - s + 1 > max_len:
                continue
            found.append((float(start[s] + end[e]), offsets[s][0], offsets[e][1]))
    return found


def decode(spec: TaskSpec, raw, encoded, window_logits: Iterable[np.ndarray]) -> list[dict]:
    """Best answer per example over all its windows; for v2, answer only if it beats the no-answer score
    (the smallest [CLS] score over the windows) by more than no_answer_threshold."""
    cols = spec.columns
    best: dict[int, tuple[float, int, int]] = {}
    null: dict[int, float] = {}
    for row, logits in enumerate(window_logits):
        example = encoded[row]["example"]
        offsets = encoded[row]["offsets"]
        start, end = logits[: len(offsets), 0], logits[: len(offsets), 1]
        null[example] = min(null.get(example, np.inf), float(start[0] + end[0]))
        for candidate in best_spans(start, end, offsets, spec.options.n_best, spec.options.max_answer_length):
            if example not in best or candidate[0] > best[example][0]:
                best[example] = candidate
    records = []
    for example in range(len(raw)):
        row = raw[example]
        score, a, b = best.get(example, (-np.inf, 0, 0))
        answer = row[cols.context][a:b] if example in best else ""
        if (
            spec.options.allow_no_answer
            and not score - null.get(example, -np.inf) > spec.options.no_answer_threshold
        ):
            answer = ""
        records.append(
            {
                "id": row[cols.id] if cols.id else example,
                "question": row[cols.question],
                "answer": answer,
                "score": round(score, 4) if np.isfinite(score) else None,
                "no_answer_score": round(null.get(example, np.nan), 4),
            }
        )
    return records


# ---------------------------------------------------------------- metrics (official SQuAD normalisation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def span_metrics(spec: TaskSpec, raw, records: list[dict]) -> dict[str, float] | None:
    """EM and F1 as fractions, each the max over the gold answers; v2 adds HasAns/NoAns splits."""
    if spec.columns.answers not in raw.column_names:
        return None
    scores = {"exact_match": [], "f1": []}
    has_answer = []
    for record, value in zip(records, raw[spec.columns.answers]):
        golds = [text for text, _ in answer_list(value)] or [""]
        if golds == [""] and not spec.options.allow_no_answer:
            continue  # no gold answer outside v2 data: an unlabelled row, not a gold ""
        scores["exact_match"].append(max(exact_match(record["answer"], g) for g in golds))
        scores["f1"].append(max(token_f1(record["answer"], g) for g in golds))
        has_answer.append(golds != [""])
    if not has_answer:
        return None
    result = {name: float(np.mean(values)) for name, values in scores.items()}
    if spec.options.allow_no_answer:
        mask = np.array(has_answer)
        for prefix, subset in (("has_answer_", mask), ("no_answer_", ~mask)):
            for name, values in scores.items():
                result[prefix + name] = (
                    float(np.mean(np.array(values)[subset])) if subset.any() else float("nan")
                )
    return {m: result[m] for m in spec.metrics if m in result} | {
        m: v for m, v in result.items() if m not in spec.metrics
    }


def official_predictions(records: list[dict]) -> dict[str, str]:
    """The layout the official SQuAD evaluation script reads: {id: answer text}."""
    return {str(r["id"]): r["answer"] for r in records}


# ---------------------------------------------------------------- the kind


class SpanHead(TokenLinear):
    """token states -> linear -> (start, end) logits per token; loss = mean of start and end cross-entropy.
    Padding positions are masked out of both distributions."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float, pooling: str = "cls"):
        super().__init__(hidden_size, 2, dropout)

    def forward(
        self, hidden: torch.Tensor, mask: torch.Tensor, pooler_output: torch.Tensor | None
    ) -> torch.Tensor:
        logits = super().forward(hidden, mask, pooler_output)  # (B, L, 2)
        return logits.masked_fill(~mask.bool().unsqueeze(-1), NEG)

    @staticmethod
    def loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        positions = batch["labels"]  # (B, 2): start and end token of the answer (0 = [CLS] when absent)
        return (
            F.cross_entropy(logits[..., 0], positions[:, 0])
            + F.cross_entropy(logits[..., 1], positions[:, 1])
        ) / 2

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per window: symmetric KL of the start distributions plus that of the end distributions."""
        return symmetric_kl(logits_a[..., 0], logits_b[..., 0]) + symmetric_kl(
            logits_a[..., 1], logits_b[..., 1]
        )


@dataclass
class Options:
    doc_stride: int = 128  # tokens shared by consecutive windows of a long context
    max_answer_length: int = 30  # longest answer (in tokens) the decoder may return
    n_best: int = 20  # start and end candidates considered per window
    allow_no_answer: bool = False  # SQuAD v2 (unanswerable questions exist)
    no_answer_threshold: float = 0.0  # v2: answer only when best span score - no-answer score exceeds this


class Span(Kind):
    name = "span"
    summary = "extractive QA: the answer's start and end token in a (windowed) context"
    metrics = (
        "f1",
        "exact_match",
        "has_answer_f1",
        "has_answer_exact_match",
        "no_answer_f1",
        "no_answer_exact_match",
    )
    default_metrics = ("f1", "exact_match")
    required_columns = ("question", "context", "answers")
    pipeline_tag = "question-answering"
    gold_columns = ("answers",)
    token_level = True
    Options = Options

    def spec_problems(self, spec: TaskSpec, where: str) -> list[str]:
        problems = [f"{where}labels: a span task has no label list; remove it"] if spec.labels else []
        stride = spec.options.doc_stride
        if stride is not None and spec.max_length is not None and stride >= spec.max_length - 8:
            problems.append(
                f"{where}doc_stride: must be well below max_length ({spec.max_length}), got {stride}"
            )
        return problems

    def bad_rows(self, spec: TaskSpec, split: str, ds) -> BadRows:
        return bad_rows(spec, split, ds)

    def length_problems(self, spec: TaskSpec, tokenizer, split: str, ds) -> list[str]:
        """A question that fills max_length leaves no room for any context window (the tokenizer would
        fail)."""
        questions = ds[spec.columns.question]
        lengths = [
            len(ids) for ids in tokenizer([str(q) for q in questions], add_special_tokens=False)["input_ids"]
        ]
        # 8: a little of the context
        room = spec.max_length - tokenizer.num_special_tokens_to_add(pair=True) - 8
        rows = [i for i, n in enumerate(lengths) if n > room]
        if not rows:
            return []
        more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
        return [
            f"{spec.file}: columns.question: split '{split}' row {rows[0] + 1}: the question is "
            f"{lengths[rows[0]]} tokens, leaving no room for the context within max_length {spec.max_length}"
            f"{more}; raise max_length or shorten the question"
        ]

    def has_gold(self, spec: TaskSpec, split: str, ds) -> bool:
        column = spec.columns.answers
        return split != "test" or bool(column and column in ds.column_names and any(ds[column]))

    def train_texts(self, spec: TaskSpec, ds) -> Iterable[str]:
        for column in (spec.columns.question, spec.columns.context):
            yield from (str(t) for t in ds[column])

    def encode(self, spec: TaskSpec, tokenizer, ds, hidden: bool):
        return encode(spec, tokenizer, ds, hidden)

    def head(self, hidden_size: int, spec: TaskSpec, pooling: str) -> SpanHead:
        return SpanHead(hidden_size, 1, spec.dropout, pooling)

    def row_output(self, batch: dict, logits: torch.Tensor, j: int) -> torch.Tensor:
        return logits[j, : int(batch["attention_mask"][j].sum())]

    def evaluate(
        self, spec: TaskSpec, raw, encoded, outputs: list[torch.Tensor]
    ) -> tuple[list[dict], dict | None]:
        records = decode(spec, raw, encoded, [o.numpy() for o in outputs])
        return records, span_metrics(spec, raw, records)

    def write_extra(self, path: Path, spec: TaskSpec, records: list[dict]) -> None:
        write_atomic(path.with_suffix(".json"), json.dumps(official_predictions(records), ensure_ascii=False))

    # distillation: the start and the end distributions over a window's tokens (axis 0 of a (tokens, 2) row)
    def soft_target(self, output: np.ndarray, temperature: float) -> np.ndarray:
        z = np.asarray(output, dtype=np.float64) / temperature
        z = np.exp(z - z.max(0, keepdims=True))
        return z / z.sum(0, keepdims=True)

    def teacher_soft(self, logits: torch.Tensor, batch: dict, temperature: float) -> torch.Tensor:
        return F.softmax(logits.float() / temperature, 1)

    def kd_term(
        self, logits: torch.Tensor, soft: torch.Tensor, batch: dict, temperature: float
    ) -> torch.Tensor:
        log_p = F.log_softmax(logits.float() / temperature, 1)  # padding has target 0
        return F.kl_div(log_p, soft.float(), reduction="sum") / (2 * len(logits)) * temperature**2

    def export_model(self, spec: TaskSpec, config, head, encoder, pooling: str):
        from transformers import AutoModelForQuestionAnswering

        from mtdnn.kinds.hf_mapping import token_model

        return token_model(AutoModelForQuestionAnswering, config, head.out, encoder, "qa_outputs")


KIND = Span()
