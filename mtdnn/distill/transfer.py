"""The transfer set: rows without labels that only the teachers label, added to a task's train split
(Hinton et al.'s transfer set; TinyBERT's augmented data). A small labelled set teaches a student little of
what its teachers know; their outputs on many more texts teach it much more, and cost no labels.

Two sources, per task, both for kinds with one text (or pair) per row (`Kind.plain_rows`: classification,
regression, multilabel):

  distill.transfer.<task>=FILE   texts from a CSV, TSV, JSON Lines or Parquet file holding the task's text
                                 columns (columns.text, and columns.text_pair for pairs); any label is ignored
  distill.augment=N              N noisy copies of every labelled train row: each word, with probability
                                 distill.augment_p, is dropped, swapped with the next, or replaced by a word
                                 of the task's train texts (EDA's operations; the teachers label the result,
                                 so a copy may change meaning without teaching a wrong label)

Rows added here carry `labelled` = 0: the hard-label loss skips them and they learn from the teachers' KD
term alone (mtdnn/distill/distiller.py). Their label column holds the first train row's value, so the kind's
row checks and encoding take them unchanged. Augmentation draws from a fixed seed, so every student seed sees
the same rows and shares the cached soft targets.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from mtdnn import kinds
from mtdnn.core.config import DistillConfig
from mtdnn.core.errors import first_line, raise_if
from mtdnn.data.loading import TaskData, encode_splits
from mtdnn.data.tasks import TaskSpec

READERS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
AUGMENT_SEED = 0  # one transfer set for every student seed (paired runs, one soft-target cache)


def transfer_problems(cfg: DistillConfig, specs: list[TaskSpec]) -> list[str]:
    """Settings of the transfer set that cannot work, each a one-line message."""
    problems = []
    if cfg.augment < 0:
        problems.append(f"distill.augment: must be >= 0 copies per row, got {cfg.augment}")
    if not 0 < cfg.augment_p < 1:
        problems.append(f"distill.augment_p: must be in (0, 1), got {cfg.augment_p}")
    by_name = {spec.name: spec for spec in specs}
    for task, path in (cfg.transfer or {}).items():
        where = f"distill.transfer.{task}"
        if task not in by_name:
            problems.append(f"{where}: no such task in this run (tasks: {', '.join(by_name)})")
        elif not kinds.of(by_name[task]).plain_rows:
            problems.append(f"{where}: {by_name[task].head} tasks have no one-output-per-row transfer set")
        elif Path(os.path.expanduser(str(path))).suffix.lower() not in READERS:
            problems.append(f"{where}: {path}: use a .csv, .tsv, .json, .jsonl or .parquet file")
        elif not Path(os.path.expanduser(str(path))).is_file():
            problems.append(f"{where}: file not found: {path}")
        else:  # its rows are checked now, before any teacher or student is loaded
            problems += checked_texts(by_name[task], str(path))[1]
    if cfg.augment > 0:
        problems += [
            f"distill.augment: {spec.name} is a {spec.head} task; augmentation is for kinds with one text "
            "(or pair) per row"
            for spec in specs
            if not kinds.of(spec).plain_rows
        ]
    return problems


def read_texts(spec: TaskSpec, path: str) -> dict[str, list[str]]:
    """The task's text columns of a transfer file; every bad row is reported at once."""
    texts, problems = checked_texts(spec, path)
    raise_if(problems, f"distill.transfer.{spec.name}: {path} has problems")
    return texts


def checked_texts(spec: TaskSpec, path: str) -> tuple[dict[str, list[str]], list[str]]:
    """(column -> texts, problems): the file unreadable, a text column missing, no rows, empty texts or values
    that are not texts (the first 20 by row, then a count)."""
    import pandas as pd

    file = Path(os.path.expanduser(path))
    where = f"distill.transfer.{spec.name}: {path}"
    reader = READERS[file.suffix.lower()]
    try:
        frame = {
            "csv": lambda: pd.read_csv(file, dtype=str, keep_default_na=False),
            "tsv": lambda: pd.read_csv(file, sep="\t", dtype=str, keep_default_na=False, quoting=3),
            "json": lambda: pd.read_json(file, lines=file.suffix.lower() == ".jsonl", dtype=False),
            "parquet": lambda: pd.read_parquet(file),
        }[reader]()
    except Exception as err:  # pandas raises many types; all mean "this file cannot be read"
        return {}, [f"{where}: cannot read it: {type(err).__name__}: {first_line(err)}"]
    columns = [c for c in (spec.columns.text, spec.columns.text_pair) if c]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        return {}, [f"{where}: no column {', '.join(missing)} (the task's text columns)"]
    if frame.empty:
        return {}, [f"{where}: the file holds no rows"]
    bad = [
        f"{where}: row {row + 1}: column {c}: {problem}"
        for c in columns
        for row, value in enumerate(frame[c])
        if (problem := text_problem(value))
    ]
    more = [f"{where}: ... and {len(bad) - 20} more rows without a text"] if len(bad) > 20 else []
    return {c: [str(v) for v in frame[c]] for c in columns}, bad[:20] + more


def text_problem(value: object) -> str | None:
    """Why a cell is not a usable text (a JSON or Parquet file can hold numbers, lists or nulls), or None."""
    if isinstance(value, str):
        return None if value.strip() else "empty text"
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "empty text"
    return f"not a text but {type(value).__name__} {value!r:.40}"


def augmented(texts: list[str], copies: int, p: float, rng: np.random.Generator) -> list[list[str]]:
    """`copies` noisy versions of each text: every word, with probability p, is dropped, swapped with the
    next word, or replaced by a word drawn from all the texts (a one-word text is never emptied)."""
    vocabulary = [word for text in texts for word in text.split()]
    out = []
    for _ in range(copies):
        batch = []
        for text in texts:
            words = text.split()
            kept: list[str] = []
            i = 0
            while i < len(words):
                roll, op = rng.random(), rng.integers(3)
                if roll >= p:
                    kept.append(words[i])
                elif op == 0 and len(words) > 1:  # drop
                    pass
                elif op == 1 and i + 1 < len(words):  # swap with the next word
                    kept += [words[i + 1], words[i]]
                    i += 1
                else:  # replace
                    kept.append(vocabulary[rng.integers(len(vocabulary))])
                i += 1
            batch.append(" ".join(kept or words[:1]))
        out.append(batch)
    return out


def unlabelled_texts(cfg: DistillConfig, spec: TaskSpec, train) -> dict[str, list[str]]:
    """The task's transfer rows, column -> texts: the transfer file's, then the augmented copies."""
    columns = [c for c in (spec.columns.text, spec.columns.text_pair) if c]
    texts: dict[str, list[str]] = {c: [] for c in columns}
    path = (cfg.transfer or {}).get(spec.name)
    if path:
        for c, values in read_texts(spec, str(path)).items():
            texts[c] += values
    if cfg.augment > 0:
        for c in columns:
            rng = np.random.default_rng([AUGMENT_SEED, len(texts[c]), columns.index(c)])
            for copy in augmented([str(t) for t in train[c]], cfg.augment, cfg.augment_p, rng):
                texts[c] += copy
    return texts


def add_transfer_rows(cfg: DistillConfig, tasks: dict[str, TaskData], tokenizer) -> dict[str, int]:
    """Append every task's transfer rows (labelled = 0) to its raw and encoded train splits, the others
    marked labelled = 1; returns the rows added per task."""
    import datasets

    added = {}
    for name, data in tasks.items():
        train = data.raw["train"]
        texts = unlabelled_texts(cfg, data.spec, train)
        rows = len(next(iter(texts.values()), []))
        if rows == 0:
            continue
        template = train[0]  # a valid label (and any other column) for the kind's checks and encoding
        extra = datasets.Dataset.from_dict(
            {c: texts[c] if c in texts else [template[c]] * rows for c in train.column_names},
            features=train.features,
        )
        mine = TaskData(data.spec, {"train": extra})
        encode_splits(mine, tokenizer)
        whole = datasets.concatenate_datasets([train, extra])
        # a key from what the rows are, so cached soft targets are reused across student seeds
        whole._fingerprint = hashlib.sha256(json.dumps([train._fingerprint, texts]).encode()).hexdigest()[:16]
        data.raw["train"] = whole
        flags = [1] * len(data.encoded["train"]) + [0] * rows
        encoded = datasets.concatenate_datasets([data.encoded["train"], mine.encoded["train"]])
        data.encoded["train"] = encoded.add_column("labelled", flags)
        added[name] = rows
    return added
