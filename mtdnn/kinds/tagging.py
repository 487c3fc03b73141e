"""tagging (NER style): words with one tag each; the tag is learned and predicted on the first sub-token of
every word; entity-level precision/recall/F1 as conlleval/seqeval count them.

YAML: columns.tokens (a list of words), columns.tags (one tag per word: names or ids into `labels`), labels
(the tag set, >= 2); metrics from entity_f1, entity_precision, entity_recall, token_accuracy. Own field:
label_smoothing.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from mtdnn.kinds import BadRows, Kind, map_rows
from mtdnn.kinds._labels import label_list_problems, smoothing_problems
from mtdnn.kinds.collate import Collator
from mtdnn.kinds.heads import IGNORE, TokenLinear, symmetric_kl

if TYPE_CHECKING:
    from mtdnn.kinds.spec import TaskSpec


def bad_rows(spec: TaskSpec, split: str, ds) -> BadRows:
    cols = spec.columns
    bad: dict[tuple[str, str], list[int]] = collections.defaultdict(list)
    tags_present = cols.tags in ds.column_names
    for row, words in enumerate(ds[cols.tokens]):
        if not words or any(w is None or not str(w).strip() for w in words):
            bad[("tokens", "a sentence or one of its words is empty")].append(row)
            continue
        if not tags_present:
            continue
        tags = ds[row][cols.tags]
        if tags is None or len(tags) != len(words):
            bad[("tags", f"{len(words)} words but {0 if tags is None else len(tags)} tags")].append(row)
            continue
        unknown = [t for t in tags if _tag_name(spec, t) is None]
        if unknown:
            bad[("tags", f"tag {unknown[0]!r} is not in labels {spec.labels}")].append(row)
    return dict(bad)


def _tag_name(spec: TaskSpec, tag) -> str | None:
    """Tags may be names or ids into the label list."""
    if str(tag) in spec.labels:
        return str(tag)
    if isinstance(tag, int) and 0 <= tag < len(spec.labels):
        return spec.labels[tag]
    return None


def encode(spec: TaskSpec, tokenizer, ds, hidden: bool):
    cols = spec.columns

    def words_to_tokens(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(
            batch[cols.tokens], is_split_into_words=True, truncation=True, max_length=spec.max_length
        )
        out = {k: v for k, v in enc.items()}
        out["labels"], out["first"] = [], []
        for i in range(len(batch[cols.tokens])):
            word_ids = enc.word_ids(i)
            first = [
                w if w is not None and (k == 0 or word_ids[k - 1] != w) else -1
                for k, w in enumerate(word_ids)
            ]
            tags = None if hidden or cols.tags not in batch else batch[cols.tags][i]
            out["labels"].append(
                [spec.labels.index(_tag_name(spec, tags[w])) if w >= 0 and tags else IGNORE for w in first]
            )
            out["first"].append(first)
        return out

    return map_rows(ds, words_to_tokens, f"tokenising {spec.name}")


def entities(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, first word, last word) chunks: a chunk starts at B-X, or at I-X after O or another type."""
    found, current = set(), None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, kind = tag.partition("-") if tag != "O" else ("O", "", "")
        continues = current is not None and prefix == "I" and kind == current[0]
        if current is not None and not continues:
            found.add((current[0], current[1], i - 1))
            current = None
        if prefix in ("B", "I") and not continues:
            current = (kind, i)
    return found


def tag_metrics(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    true_pos = n_pred = n_gold = correct_words = n_words = 0
    for p, g in zip(predicted, gold):
        pe, ge = entities(p), entities(g)
        true_pos += len(pe & ge)
        n_pred, n_gold = n_pred + len(pe), n_gold + len(ge)
        correct_words += sum(a == b for a, b in zip(p, g))
        n_words += len(g)
    precision = true_pos / n_pred if n_pred else 0.0
    recall = true_pos / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "entity_f1": f1,
        "entity_precision": precision,
        "entity_recall": recall,
        "token_accuracy": correct_words / n_words if n_words else 0.0,
    }


def sentence_records(
    spec: TaskSpec, raw, encoded, token_logits: list[np.ndarray]
) -> tuple[list[dict], dict | None]:
    """Per sentence: the tag of each word from its first sub-token (words cut off by max_length get
    labels[0], usually 'O')."""
    cols = spec.columns
    records, predicted, gold = [], [], []
    for row, logits in enumerate(token_logits):
        words = raw[row][cols.tokens]
        tags = [spec.labels[0]] * len(words)
        for position, word in enumerate(encoded[row]["first"]):
            if word >= 0:
                tags[word] = spec.labels[int(np.argmax(logits[position]))]
        records.append({"id": raw[row][cols.id] if cols.id else row, "tokens": list(words), "tags": tags})
        if cols.tags in raw.column_names and raw[row][cols.tags] is not None:
            predicted.append(tags)
            gold.append([_tag_name(spec, t) for t in raw[row][cols.tags]])
    if not gold:
        return records, None
    scores = tag_metrics(predicted, gold)
    return records, {m: scores[m] for m in spec.metrics}


# ---------------------------------------------------------------- the kind


class TaggingHead(TokenLinear):
    """token states -> dropout -> linear over the tag set; cross-entropy on the first sub-token of each
    word."""

    def __init__(
        self,
        hidden_size: int,
        num_labels: int,
        dropout: float,
        pooling: str = "cls",
        label_smoothing: float = 0.0,
    ):
        super().__init__(hidden_size, num_labels, dropout)
        self.label_smoothing = label_smoothing

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(
            logits.flatten(0, 1),
            batch["labels"].flatten(),
            ignore_index=IGNORE,
            label_smoothing=self.label_smoothing,
        )

    @staticmethod
    def divergence(logits_a: torch.Tensor, logits_b: torch.Tensor, batch: dict) -> torch.Tensor:
        """Per sentence: mean over its real tokens of the per-token symmetric KL (padding never counts)."""
        mask = batch["attention_mask"].float()
        return (symmetric_kl(logits_a, logits_b) * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


@dataclass
class Options:
    label_smoothing: float = 0.0  # cross-entropy against (1 - s) * one-hot + s / tags


class Tagging(Kind):
    name = "tagging"
    summary = "one tag per word (NER style), learned on each word's first sub-token"
    metrics = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")
    default_metrics = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")
    required_columns = ("tokens", "tags")
    pipeline_tag = "token-classification"
    gold_columns = ("tags",)
    token_level = True
    Options = Options

    def num_labels(self, spec: TaskSpec) -> int:
        return len(spec.labels)

    def spec_problems(self, spec: TaskSpec, where: str) -> list[str]:
        return label_list_problems(spec, where) + smoothing_problems(spec, where)

    def bad_rows(self, spec: TaskSpec, split: str, ds) -> BadRows:
        return bad_rows(spec, split, ds)

    def has_gold(self, spec: TaskSpec, split: str, ds) -> bool:
        column = spec.columns.tags
        return split != "test" or bool(column and column in ds.column_names and any(ds[column]))

    def train_texts(self, spec: TaskSpec, ds) -> Iterable[str]:
        yield from (" ".join(map(str, words)) for words in ds[spec.columns.tokens])

    def encode(self, spec: TaskSpec, tokenizer, ds, hidden: bool):
        return encode(spec, tokenizer, ds, hidden)

    def collator(self, spec: TaskSpec, pad_id: int, multiple_of: int):
        return Collator(pad_id, multiple_of, label_pad=IGNORE)

    def head(self, hidden_size: int, spec: TaskSpec, pooling: str) -> TaggingHead:
        return TaggingHead(hidden_size, len(spec.labels), spec.dropout, pooling, spec.options.label_smoothing)

    def row_output(self, batch: dict, logits: torch.Tensor, j: int) -> torch.Tensor:
        return logits[j, : int(batch["attention_mask"][j].sum())]

    def evaluate(
        self, spec: TaskSpec, raw, encoded, outputs: list[torch.Tensor]
    ) -> tuple[list[dict], dict | None]:
        return sentence_records(spec, raw, encoded, [o.numpy() for o in outputs])

    def kd_term(
        self, logits: torch.Tensor, soft: torch.Tensor, batch: dict, temperature: float
    ) -> torch.Tensor:
        mask = batch["attention_mask"].bool()  # per real token, over the tags
        log_p = F.log_softmax(logits.float()[mask] / temperature, -1)
        return F.kl_div(log_p, soft.float()[mask], reduction="batchmean") * temperature**2

    def export_model(self, spec: TaskSpec, config, head, encoder, pooling: str):
        from transformers import AutoModelForTokenClassification

        from mtdnn.kinds.hf_mapping import token_model

        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {label: i for i, label in enumerate(spec.labels)}
        return token_model(AutoModelForTokenClassification, config, head.out, encoder, "classifier")


KIND = Tagging()
