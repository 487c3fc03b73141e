"""Helpers the sentence-level kinds compose (one text or text pair per row, one output per row)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mtdnn.kinds import map_rows
from mtdnn.kinds._bi import encode_pair_texts, is_bi
from mtdnn.kinds.collate import UNLABELED

if TYPE_CHECKING:
    from mtdnn.kinds import BadRows
    from mtdnn.kinds.spec import TaskSpec


def record(bad: BadRows, role: str, reason: str, mask: pd.Series) -> None:
    rows = np.flatnonzero(mask.to_numpy())
    if len(rows):
        bad[(role, reason)] = rows.tolist()


def column(ds, name: str) -> pd.Series:
    return ds.select_columns([name]).to_pandas()[name]


def text_bad_rows(spec: TaskSpec, ds) -> BadRows:
    """Empty texts and values that are not text (numbers, lists, structs: usually the wrong column),
    checked with pandas so million-row sets check in seconds."""
    bad: BadRows = {}
    for role in ("text", "text_pair"):
        name = getattr(spec.columns, role)
        if name:
            values = column(ds, name)
            record(bad, role, "text is empty", values.isna() | (values.astype(str).str.strip() == ""))
            holds = feature_kind(ds.features.get(name))
            if holds == "mixed values":  # the rows that are not text
                not_text = values.notna() & ~values.map(lambda v: isinstance(v, str))
                record(
                    bad,
                    role,
                    f"text must be a string; column '{name}' mixes texts and other values",
                    not_text,
                )
            elif holds != "string":
                record(bad, role, f"text must be a string; column '{name}' holds {holds}", values.notna())
    return bad


def nested_label_rows(spec: TaskSpec, ds) -> BadRows:
    """A label column of lists or structs (usually the wrong column, or multi-label data under a
    single-label head): every filled row is bad, and nothing else about the labels can be checked."""
    name = spec.columns.label
    holds = feature_kind(ds.features.get(name))
    if holds == "mixed values":
        return mixed_type_rows(name, column(ds, name))
    if holds not in ("lists", "structs"):
        return {}
    values = column(ds, name)
    hint = " (several labels per row: use head: multilabel)" if holds == "lists" else ""
    return {
        ("label", f"label must be one value; column '{name}' holds {holds}{hint}"): np.flatnonzero(
            values.notna().to_numpy()
        ).tolist()
        or list(range(len(ds)))
    }


def mixed_type_rows(name: str, values: pd.Series) -> BadRows:
    """A column whose rows hold different types (datasets 5 reads it as `Json`): the rows not of the column's
    most common type are bad."""
    kinds = values.map(lambda v: type(v).__name__)
    usual = kinds[values.notna()].mode().iloc[0] if values.notna().any() else "str"
    mixes = " and ".join(sorted(set(kinds[values.notna()])))
    message = (
        f"label must be of one type in the whole column; column '{name}' mixes {mixes}, most rows {usual}"
    )
    bad = values.notna() & (kinds != usual)
    if not bad.any():  # one Python type whose contents Arrow cannot type alike (lists, dicts): all filled
        bad = values.notna()
        message = f"label must be a single value; column '{name}' holds {usual} values of mixed contents"
    return {("label", message): np.flatnonzero(bad.to_numpy()).tolist()}


def feature_kind(feature) -> str:
    """What a `datasets` column holds, in words: string, int64, float64, lists, structs, mixed values."""
    if isinstance(feature, dict):
        return "structs"
    if type(feature).__name__ == "Json":  # datasets 5: rows of different types in one JSON column
        return "mixed values"
    dtype = getattr(feature, "dtype", None)
    if dtype in ("string", "large_string"):
        return "string"
    return dtype if isinstance(dtype, str) and dtype != "list" else "lists"


def label_lookup(spec: TaskSpec, ds) -> Callable[[Any], int | None]:
    """Raw label value -> id; None when the value names no label. Integer values are ids into the dataset's
    own ClassLabel names when it has them, else positions in the task's label list."""
    names = spec.labels
    feature = ds.features.get(spec.columns.label) if spec.columns.label else None
    # a list-of-ClassLabel column (multi-label) names its inner labels
    inner = getattr(feature, "feature", feature)
    class_names = getattr(inner, "names", None)

    def to_id(value: Any) -> int | None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, (bool, np.bool_)):
            value = str(value).lower()
        if str(value) in names:
            return names.index(str(value))
        if isinstance(value, (int, np.integer)) and value == UNLABELED:
            return UNLABELED
        if isinstance(value, (int, np.integer)):
            if class_names is not None:
                return (
                    names.index(class_names[value])
                    if 0 <= value < len(class_names) and class_names[value] in names
                    else None
                )
            return int(value) if 0 <= value < len(names) else None
        return None

    return to_id


def encode_texts(spec: TaskSpec, tokenizer, ds, labels_of: Callable[[list | None], list]):
    """Tokenise text (and text_pair: jointly, or apart for pair_encoding: bi) once, with `labels_of(raw
    label values or None)` as the labels column."""
    cols = spec.columns

    def encode(batch: dict[str, list]) -> dict[str, list]:
        if is_bi(spec):
            out = encode_pair_texts(spec, tokenizer, batch)
        else:
            pair = batch[cols.text_pair] if cols.text_pair else None
            out = dict(tokenizer(batch[cols.text], pair, truncation=True, max_length=spec.max_length))
            out["length"] = [len(ids) for ids in out["input_ids"]]
        raw = batch.get(cols.label) if cols.label else None
        out["labels"] = labels_of(raw if raw is not None else [None] * len(out["input_ids"]))
        return out

    return map_rows(ds, encode, f"tokenising {spec.name}")


def records(spec: TaskSpec, raw, fill: Callable[[int, dict], None]) -> list[dict]:
    """Per row: its id (or row number) and inputs, then what `fill(row, record)` adds (the prediction)."""
    cols = spec.columns
    out = []
    for i in range(len(raw)):
        row = raw[i]
        rec = {"id": row[cols.id] if cols.id else i, "text": row[cols.text]}
        if cols.text_pair:
            rec["text_pair"] = row[cols.text_pair]
        fill(i, rec)
        out.append(rec)
    return out
