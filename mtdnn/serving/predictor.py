"""The Python API: a trained run as an object that predicts from raw inputs, without Hydra or files.

    from mtdnn import load_run

    run = load_run("outputs/my_run")                                   # best checkpoint; GPU if there is one
    run.predict("rt_polarity", ["a gripping film", "dull and long"])  # texts
    run.predict("stsb", [("a man plays", "someone is playing")])      # text pairs
    run.predict("squad", [{"question": "who?", "context": "..."}])    # rows with the task's own columns
    run.predict("conll2003", ["EU rejects German call"])              # tagging: words split on spaces

Each call returns the records `python -m mtdnn.predict` writes (one dict per input, in input order), with
the same checks of every row first; rows are batched shortest first so batches pad little.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtdnn import kinds
from mtdnn.core.distributed import pick_device
from mtdnn.core.errors import MtdnnError, first_line
from mtdnn.data.loading import TaskData, check_columns, check_rows, encode_splits
from mtdnn.evaluation.engine import collator_for, evaluate_split, model_device
from mtdnn.kinds import ONE_OFF_ROWS
from mtdnn.serving.loading import LoadedRun, open_run

SPLIT = "test"  # inputs are read as a test split: gold columns are optional


class Predictor:
    """A trained run ready to predict: its model in eval mode on a device, its tokenizer and task specs.

    Made by [`load_run`][mtdnn.serving.predictor.load_run]; one object serves every task of the run.
    """

    def __init__(self, loaded: LoadedRun):
        self.loaded = loaded
        self.device = model_device(loaded.model)

    @property
    def tasks(self) -> list[str]:
        """The run's task names, in training order."""
        return list(self.loaded.specs)

    @property
    def run_dir(self) -> Path:
        """The run folder (or ONNX export folder) the model was loaded from."""
        return self.loaded.run_dir

    def predict(
        self, task: str, inputs: Iterable[Any], batch_size: int = 64, bf16: bool = False
    ) -> list[dict]:
        """Predict one task for a list of inputs.

        Args:
            task: a task the run trained.
            inputs: a list of texts (`"a gripping film"`), text pairs (`("a", "b")`) or rows (dicts with
                the task's columns, e.g. `{"question": ..., "context": ...}` for a span task); for a
                tagging task a text is split into words on spaces.
            batch_size: inputs per forward pass (they are batched shortest first).
            bf16: run the forward pass under bf16 autocast.

        Returns:
            One record per input, in input order: the records `python -m mtdnn.predict` writes (an `id`,
            the input, and the kind's prediction: `label` and `scores`, `prediction`, `labels`, `answer`,
            `ranking` or `tags`).

        Raises:
            MtdnnError: an unknown task, one input given instead of a list, or inputs that fail the
                task's row checks (the message names the row and the column).
        """
        if task not in self.loaded.specs:
            raise MtdnnError(
                f"task: '{task}' was not trained in {self.run_dir}; it has {', '.join(self.tasks)}"
            )
        # iterating a str, bytes or dict would predict per character / per key
        if isinstance(inputs, (str, bytes, dict)) or not isinstance(inputs, Iterable):
            raise MtdnnError(
                f"inputs: give a list of inputs, not one {type(inputs).__name__}: predict(task, [x])"
            )
        spec = self.loaded.specs[task].with_changes(file="predict() input", on_bad_row="error")
        rows = [with_id(spec, as_row(spec, item, i), i) for i, item in enumerate(inputs)]
        if not rows:
            return []
        if clean_texts(spec, rows):  # the common request: served without building a `datasets` table
            return plain_records(self.loaded, spec, InMemoryRows.of(rows), batch_size, bf16)
        if problems := text_type_problems(spec, rows):
            raise MtdnnError(f"the input has problems: {'; '.join(problems)}")
        with one_off_rows():
            return records_of(self.loaded, spec, SPLIT, as_table(rows), batch_size, bf16)


def text_type_problems(spec, rows: list[dict]) -> list[str]:
    """Texts that are not strings, per text column (Arrow would refuse a column mixing them, or turn numbers
    into text)."""
    problems = []
    for role in ("text", "text_pair"):
        name = getattr(spec.columns, role, None)
        bad = [
            i
            for i, row in enumerate(rows)
            if name and row.get(name) is not None and not isinstance(row[name], str)
        ]
        if bad:
            more = f" (and {len(bad) - 1} more rows)" if len(bad) > 1 else ""
            got = type(rows[bad[0]][name]).__name__
            problems.append(
                f"{spec.file}: columns.{role}: row {bad[0] + 1}: text must be a string, got {got}{more}"
            )
    return problems


def as_table(rows: list[dict]):
    """The rows as a `datasets` table; a column mixing types Arrow cannot hold together is one line."""
    import datasets
    import pyarrow as pa

    try:
        return datasets.Dataset.from_list(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise MtdnnError(
            f"inputs: a column holds values of different types ({first_line(err)}); give each column one type"
        ) from None


@contextmanager
def one_off_rows() -> Iterator[None]:
    """No 'tokenising' bar for each call (a notebook or a server calls predict() many times), and no
    hashing of the tokenizer to fingerprint rows used once (kinds.map_rows)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    one_off = ONE_OFF_ROWS.set(True)
    try:
        yield
    finally:
        ONE_OFF_ROWS.reset(one_off)
        if not was_disabled:
            datasets.enable_progress_bars()


def records_of(run: LoadedRun, spec, split: str, rows, batch_size: int, bf16: bool = False) -> list[dict]:
    """Check, tokenise and predict one split of raw rows (a `datasets.Dataset`): the records, in row order."""
    data = TaskData(spec, {split: rows})
    if problems := check_columns(spec, data.raw) or check_rows(data):  # one line: a caller logs it as one
        raise MtdnnError(
            problems[0] if len(problems) == 1 else f"the input has problems: {'; '.join(problems)}"
        )
    encode_splits(data, run.tokenizer)
    records, _ = evaluate_split(
        run.model,
        spec,
        data.raw[split],
        data.encoded[split],
        collator_for(spec, run.tokenizer, 8),
        batch_size,
        model_device(run.model),
        bf16,
    )
    return records


class InMemoryRows:
    """The part of a `datasets.Dataset` that a plain-rows kind's encoding and the evaluation read (length,
    columns, rows, batched `map`), over columns held in memory. Why not a Dataset: building and mapping one
    costs several milliseconds a call, more than a small model's whole forward pass on one text."""

    cache_files: list = []
    features: dict = {}  # no declared types: label_lookup then reads labels by name or position

    def __init__(self, columns: dict[str, list]):
        self.columns = columns

    @classmethod
    def of(cls, rows: list[dict]) -> InMemoryRows:
        return cls({name: [row[name] for row in rows] for name in rows[0]})

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def __getitem__(self, key):
        if isinstance(key, str):
            return self.columns[key]
        if isinstance(key, (int, np.integer)):
            return {name: values[key] for name, values in self.columns.items()}
        return {name: [values[i] for i in key] for name, values in self.columns.items()}

    def map(self, fn, batched: bool = True, remove_columns=None, **_ignored) -> InMemoryRows:
        assert batched, "only batched maps"
        kept = {k: v for k, v in self.columns.items() if k not in (remove_columns or ())}
        return InMemoryRows({**kept, **fn(dict(self.columns))})


def clean_texts(spec, rows: list[dict]) -> bool:
    """Whether the rows need none of the checks' messages: a plain-rows kind (not bi), the same columns in
    every row, no gold column, and every text a non-blank string. Anything else takes the checked path."""
    if not kinds.of(spec).serves_from_memory(spec):
        return False
    names = set(rows[0])
    text_columns = [c for c in (spec.columns.text, spec.columns.text_pair) if c]
    if (spec.columns.label and spec.columns.label in names) or not set(text_columns) <= names:
        return False
    return all(
        set(row) == names and all(isinstance(row[c], str) and row[c].strip() for c in text_columns)
        for row in rows
    )


def plain_records(run: LoadedRun, spec, rows: InMemoryRows, batch_size: int, bf16: bool) -> list[dict]:
    """Tokenise and predict clean text rows (see clean_texts): the records the checked path gives."""
    encoded = kinds.of(spec).encode(spec, run.tokenizer, rows, hidden=True)
    records, _ = evaluate_split(
        run.model,
        spec,
        rows,
        encoded,
        collator_for(spec, run.tokenizer, 8),
        batch_size,
        model_device(run.model),
        bf16,
    )
    return records


def with_id(spec, row: dict[str, Any], index: int) -> dict[str, Any]:
    """An input without the task's id column (columns.id) is numbered by its position."""
    column = getattr(spec.columns, "id", None)
    return {**row, column: index} if column and column not in row else row


def as_row(spec, item: Any, index: int) -> dict[str, Any]:
    """One input as a row with the task's column names: a dict as given, a text, or a (text, text_pair)
    pair."""
    cols = spec.columns
    if isinstance(item, dict):
        return item
    # tagging: a sentence of space-separated words
    if isinstance(item, str) and getattr(cols, "tokens", None):
        return {cols.tokens: item.split()}
    if isinstance(item, str) and cols.text and not cols.text_pair:
        return {cols.text: item}
    if isinstance(item, (tuple, list)) and len(item) == 2 and cols.text and cols.text_pair:
        return {cols.text: item[0], cols.text_pair: item[1]}
    wanted = (
        "a (text, text_pair) pair" if cols.text_pair else "a text" if cols.text else "a dict of its columns"
    )
    raise MtdnnError(
        f"inputs[{index}]: task {spec.name} ({spec.head}) takes {wanted} or a dict of its columns "
        f"per input, got {type(item).__name__}"
    )


def load_run(
    run_dir: str | Path, checkpoint: str = "best", device: str | torch.device = "auto", backend: str = "auto"
) -> Predictor:
    """Load a run folder (or an ONNX export folder) for prediction from Python.

    Args:
        run_dir: a folder written by `python -m mtdnn.train`, or by `python -m mtdnn.export format=onnx`.
        checkpoint: `"best"` (the step with the best main metric), `"last"`, or a checkpoint folder.
        device: `"auto"` (CUDA when available), `"cpu"`, `"cuda"`, `"cuda:1"` or a `torch.device`.
        backend: `"auto"` (ONNX Runtime for an export folder, PyTorch otherwise), `"torch"`, `"onnx"` or
            `"onnx-int8"` (the export's quantized graph).

    Returns:
        A [`Predictor`][mtdnn.serving.predictor.Predictor] serving every task of the run.

    Raises:
        MtdnnError: the folder is not a run, a checkpoint is missing or damaged (named in the message).

    Example:
        ```python
        from mtdnn import load_run

        model = load_run("runs/examples")
        model.predict("example_sentiment", ["a gripping film", "dull and long"])
        ```
    """
    target = device if isinstance(device, torch.device) else pick_device(str(device))
    return Predictor(open_run(str(run_dir), checkpoint, target, backend))
