"""Property-based fuzzing (Hypothesis) of what a user hands the training CLI: data files, task YAMLs and
command-line overrides, run through the real entry point (`mtdnn.train.main`, in-process).

The property, for every generated input: the command either trains (exit 0, summary.json written) or fails
with exit code 2 and exactly one `error:` line, the last line of stderr (or a headline and its "  - " list of
every problem found), naming the file or setting at fault;
never a traceback; and an existing run folder keeps every byte.

Profiles: the default run draws a fixed, derandomized set (the same cases on every CI run); `pytest -m
slow` draws many more at random (set MTDNN_FUZZ_EXAMPLES to change how many). Each test reports how many
cases ran.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma
import os
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import sentiment_rows, write_task
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bad_input import _digest, world  # noqa: F401  (the module fixture: a finished run no case may change)

FAST = settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
LONG = settings(
    max_examples=int(os.environ.get("MTDNN_FUZZ_EXAMPLES", "150")),
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=list(HealthCheck),
)
PROFILES = [pytest.param(FAST, id="fast"), pytest.param(LONG, id="long", marks=pytest.mark.slow)]
COUNTS: dict[str, int] = {}  # 'kind of input, outcome' -> cases; conftest prints it after the run

WORDS = [
    "good",
    "bad",
    "fine",
    "awful",
    "film",
    "plot",
    "é",
    "日本",
    "🙂",
    "a\tb",
    'say "hi"',
    "x,y",
    "line\nbreak",
]
ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def explore(profile: settings, strategy: st.SearchStrategy, check) -> None:
    """Run `check` on the cases `strategy` generates, as many as the profile says."""

    @profile
    @given(case=strategy)
    def each(case):
        check(case)

    each()


# ---------------------------------------------------------------- running the CLI in-process


def _run_cli(args: list[str], capsys, cwd: Path) -> tuple[int, str]:
    from hydra.core.global_hydra import GlobalHydra

    from mtdnn.train import main

    capsys.readouterr()
    argv, here = sys.argv, os.getcwd()
    sys.argv = ["mtdnn.train", *args]
    os.chdir(cwd)  # relative paths a fuzzed override names land in the case's folder
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
        os.chdir(here)
        GlobalHydra.instance().clear()
    return code, capsys.readouterr().err


def _check(case: str, code: int, stderr: str, out: Path, names: list[str], world) -> None:
    """The property. `names`: what a clear error must mention (any one of them)."""
    outcome = f"{case}, {'trained' if code == 0 else 'refused'}"
    COUNTS[outcome] = COUNTS.get(outcome, 0) + 1
    assert "Traceback" not in stderr, stderr[-3000:]
    if code == 0:
        assert (out / "summary.json").is_file(), stderr[-2000:]
    else:
        lines = [line for line in stderr.splitlines() if line.strip()]
        errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
        assert code == 2 and len(errors) == 1, f"exit {code}:\n{stderr[-3000:]}"
        report = lines[
            errors[0] :
        ]  # one line, or a headline and its "  - " list when several problems were found
        assert all(line.startswith("  - ") for line in report[1:]), stderr[-3000:]
        assert any(name in "\n".join(report) for name in names), f"{report!r} names none of {names}"
    assert _digest(world["precious"]) == world["digest"], "an existing run folder was changed"


def _command(tasks: Path, out: Path, *extra: str) -> list[str]:
    return [
        "encoder=tiny",
        f"task_dirs=[{tasks}]",
        "task=t",
        "trainer.progress_bar=false",
        "trainer.max_steps=2",
        "trainer.eval_every=2",
        "trainer.batch_size=8",
        "predict_test=false",
        f"output_dir={out}",
        f"hydra.run.dir={out.parent / 'hydra'}",
        *extra,
    ]


def _fresh(world, name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{name}_", dir=world["root"]))


# ---------------------------------------------------------------- data files

FORMATS = ["csv", "tsv", "jsonl", "json", "parquet"]
COMPRESSIONS = {"": lambda b: b, ".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}


@st.composite
def data_files(draw) -> dict:
    text = st.sampled_from(WORDS).map(lambda w: f"{w} {w} film")
    label = st.sampled_from(["neg", "pos"])
    # half the cases hold odd values somewhere, half only good rows (then the run trains)
    odd = draw(st.booleans())
    if odd:
        text = st.one_of(text, ODD)
        label = st.one_of(label, st.sampled_from([0, 1, 2, -1, "", "POS", None]), ODD)
    row = st.fixed_dictionaries({"sentence": text, "label": label})
    fmt = draw(st.sampled_from(FORMATS))
    case = {
        "rows": draw(st.lists(row, min_size=0, max_size=24)),
        "format": fmt,
        "compression": "" if fmt == "parquet" else draw(st.sampled_from(list(COMPRESSIONS))),
        "encoding": draw(st.sampled_from(["utf-8", "utf-8", "latin-1", "utf-16"])),
        "damage": draw(st.sampled_from(["none"] * 6 + ["truncate", "garbage"])),
        "cut": draw(st.floats(0.05, 0.95)),
    }
    # good rows, intact, in the encoding the task reads: such a file must train
    case["valid"] = (
        not odd and case["rows"] != [] and case["damage"] == "none" and case["encoding"] == "utf-8"
    )
    return case


def _serialise(rows: list[dict], fmt: str, encoding: str) -> bytes:
    if fmt in ("csv", "tsv"):
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="," if fmt == "csv" else "\t")
        writer.writerow(["sentence", "label"])
        writer.writerows([[row["sentence"], row["label"]] for row in rows])
        return buffer.getvalue().encode(encoding, errors="replace")
    if fmt == "jsonl":
        return "".join(json.dumps(row, default=str) + "\n" for row in rows).encode(encoding, errors="replace")
    if fmt == "json":
        return json.dumps(rows, default=str).encode(encoding, errors="replace")
    import pandas as pd

    buffer = io.BytesIO()
    frame = pd.DataFrame(rows, columns=["sentence", "label"])
    try:
        frame.to_parquet(buffer)
    except Exception:  # noqa: BLE001  (pyarrow refuses mixed columns: store them as text, as a user's tool would)
        buffer = io.BytesIO()
        frame.astype(str).to_parquet(buffer)
    return buffer.getvalue()


def _damage(data: bytes, how: str, cut: float) -> bytes:
    if how == "truncate":
        return data[: int(len(data) * cut)]
    if how == "garbage":
        at = int(len(data) * cut)
        return data[:at] + bytes(range(128, 256))[:40] + data[at:]
    return data


def _data_case(world, case: dict, capsys) -> None:
    folder = _fresh(world, "data")
    write_task(
        folder,
        "t",
        "classification",
        {"validation": sentiment_rows(16, 2)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    name = f"t_train.{case['format']}{case['compression']}"
    payload = _serialise(case["rows"], case["format"], case["encoding"])
    (folder / name).write_bytes(
        _damage(COMPRESSIONS[case["compression"]](payload), case["damage"], case["cut"])
    )
    spec = yaml.safe_load((folder / "t.yaml").read_text())
    spec["source"]["splits"]["train"] = name
    (folder / "t.yaml").write_text(yaml.safe_dump(spec))
    out = folder / "out"
    code, stderr = _run_cli(_command(folder, out), capsys, folder)
    _check("data files", code, stderr, out, [str(folder / "t.yaml")], world)
    assert code == 0 or not case["valid"], f"a valid data file was refused: {stderr[-1500:]}"


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_data_files(world, capsys, profile):
    explore(profile, data_files(), lambda case: _data_case(world, case, capsys))


# ---------------------------------------------------------------- task YAMLs

BASE_SPEC = {
    "name": "t",
    "head": "classification",
    "labels": ["neg", "pos"],
    "metrics": ["accuracy", "f1"],
    "columns": {"text": "sentence", "label": "label"},
    "max_length": 32,
    "source": {"kind": "files", "splits": {"train": "train.csv", "validation": "validation.csv"}},
}
PATHS = [
    "name",
    "head",
    "labels",
    "metrics",
    "columns",
    "columns.text",
    "columns.label",
    "columns.text_pair",
    "max_length",
    "source",
    "source.kind",
    "source.splits",
    "source.splits.train",
    "source.splits.validation",
    "source.format",
    "source.file",
    "source.split_fractions",
    "dropout",
    "loss_weight",
    "on_bad_row",
    "train_rows",
    "label_smoothing",
    "thresholds",
    "doc_stride",
    "unknown_field",
]
HEADS = ["classification", "regression", "multilabel", "span", "ranking", "tagging"]


@st.composite
def task_yamls(draw) -> dict:
    edits = draw(
        st.lists(
            st.tuples(
                st.sampled_from(PATHS),
                st.one_of(
                    st.just("<delete>"),
                    st.sampled_from(HEADS),
                    st.sampled_from(["sentence", "label", "train.csv", "nope.csv"]),
                    ODD,
                ),
            ),
            min_size=1,
            max_size=3,
        )
    )
    return {"edits": edits, "truncate": draw(st.one_of(st.none(), st.integers(1, 200)))}


def _edit(spec: dict, dotted: str, value) -> None:
    node = spec
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if value == "<delete>":
        node.pop(leaf, None)
    else:
        node[leaf] = value


def _yaml_case(world, case: dict, capsys) -> None:
    folder = _fresh(world, "yaml")
    write_task(
        folder,
        "data",
        "classification",
        {"train": sentiment_rows(30, 1), "validation": sentiment_rows(12, 2)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    for split in ("train", "validation"):
        (folder / f"data_{split}.csv").rename(folder / f"{split}.csv")
    (folder / "data.yaml").unlink()
    spec = json.loads(json.dumps(BASE_SPEC))
    for dotted, value in case["edits"]:
        _edit(spec, dotted, value)
    text = yaml.safe_dump(spec, allow_unicode=True)
    if case["truncate"] is not None:
        text = text[: case["truncate"]]
    (folder / "t.yaml").write_text(text)
    out = folder / "out"
    code, stderr = _run_cli(_command(folder, out), capsys, folder)
    _check("task YAMLs", code, stderr, out, [str(folder / "t.yaml"), "task=t"], world)


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_task_yamls(world, capsys, profile):
    explore(profile, task_yamls(), lambda case: _yaml_case(world, case, capsys))


# ---------------------------------------------------------------- command-line overrides

KEYS = [
    "trainer.lr",
    "trainer.head_lr",
    "trainer.batch_size",
    "trainer.grad_accum",
    "trainer.warmup_ratio",
    "trainer.eval_every",
    "trainer.max_grad_norm",
    "trainer.weight_decay",
    "trainer.keep_last",
    "trainer.device",
    "trainer.best_metric",
    "trainer.bucket_batches",
    "trainer.log_every",
    "seed",
    "encoder.pooling",
    "regularizer",
    "sampler",
    "adapter",
    "sampler.temperature",
    "+task_overrides.t.max_length",
    "+task_overrides.t.train_rows",
    "+task_overrides.t.dropout",
    "resume",
    "output_dir",
    "init_from",
    "+trainer.not_a_setting",
    "trainer",
    "task",
]
VALUES = [
    "0",
    "-1",
    "1",
    "3",
    "1e9",
    "0.5",
    "1e-3",
    "abc",
    "null",
    "[1,2]",
    "{a: 1}",
    "''",
    "nan",
    "inf",
    "true",
    "smart",
    "none",
    "auto",
    "cpu",
    "cuda",
    "t/accuracy",
    "mean",
    "temperature",
    "lora",
    "\u00e9",
    "<precious>",
    "<precious>/checkpoints",
]


# settings and values that are each valid for the fuzz run's task: a list of them must train
VALID_OVERRIDES = {
    "trainer.lr": ["1e-3", "5e-4"],
    "trainer.head_lr": ["null", "3e-3"],
    "trainer.batch_size": ["4", "8"],
    "trainer.warmup_ratio": ["0", "0.5"],
    "trainer.max_grad_norm": ["0", "1.0"],
    "seed": ["1", "7"],
    "sampler": ["uniform", "temperature"],
    "regularizer": ["none", "smart"],
    "encoder.pooling": ["cls", "mean"],
    "+task_overrides.t.max_length": ["16", "64"],
}


@st.composite
def valid_override_lists(draw) -> list[str]:
    keys = draw(st.lists(st.sampled_from(sorted(VALID_OVERRIDES)), min_size=1, max_size=3, unique=True))
    return [f"{key}={draw(st.sampled_from(VALID_OVERRIDES[key]))}" for key in keys]


def is_valid(overrides: list[str]) -> bool:
    return all(o.split("=", 1)[1] in VALID_OVERRIDES.get(o.split("=", 1)[0], []) for o in overrides)


@st.composite
def override_lists(draw) -> list[str]:
    if draw(st.integers(0, 3)) == 0:  # a quarter of the cases: valid settings only, which must train
        return draw(valid_override_lists())
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(KEYS), st.one_of(st.sampled_from(VALUES), st.text(max_size=6))),
            min_size=1,
            max_size=3,
            unique_by=lambda p: p[0],
        )
    )
    return [f"{key}={value}" for key, value in pairs]


def _override_case(world, overrides: list[str], capsys) -> None:
    folder = _fresh(world, "overrides")
    write_task(
        folder,
        "t",
        "classification",
        {"train": sentiment_rows(30, 1), "validation": sentiment_rows(12, 2)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    overrides = [o.replace("<precious>", str(world["precious"])) for o in overrides]
    out = folder / "out"
    code, stderr = _run_cli([*_command(folder, out), *overrides], capsys, folder)
    # Hydra may read 1e9 as 1000000000.0
    if code == 0 and any(o.startswith("output_dir=") for o in overrides):
        out = next(folder.rglob("summary.json"), out / "summary.json").parent
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    values = [o.split("=", 1)[1] for o in overrides if "=" in o]
    _check("overrides", code, stderr, out, [n for n in keys + values if n.strip()], world)
    assert code == 0 or not is_valid(overrides), f"valid overrides {overrides} were refused: {stderr[-1500:]}"


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_command_line_overrides(world, capsys, profile):
    explore(profile, override_lists(), lambda overrides: _override_case(world, overrides, capsys))
