"""Every bad input: exit code != 0, one clear line naming the file and field (and row for data), no
traceback, and no existing output touched. Each case runs the real command line in a subprocess."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import compose_train, count_rows, sentiment_rows, tiny_overrides, write_task

from mtdnn.train import run

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)
ENV.pop("MTDNN_DEBUG", None)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A folder of good toy tasks and one finished run whose files must never change."""
    root = tmp_path_factory.mktemp("bad_input")
    good = root / "good"
    write_task(
        good,
        "toy_sent",
        "classification",
        {"train": sentiment_rows(60, 1), "validation": sentiment_rows(20, 2)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    run(
        compose_train(tiny_overrides(good, "task=toy_sent", "trainer.max_steps=6", "trainer.eval_every=3")),
        root / "precious",
    )
    return {"root": root, "good": good, "precious": root / "precious", "digest": _digest(root / "precious")}


def _variant(
    case: Path,
    edit: dict | None = None,
    rows: list[dict] | None = None,
    head: str = "classification",
    validation: bool = False,
    **kwargs,
) -> list[str]:
    """A one-task folder `case/tasks` with task `t` (a train split, and a clean validation split if asked),
    optionally with edited YAML fields or rows: each case then has exactly one problem."""
    folder = case / "tasks"
    rows = rows if rows is not None else sentiment_rows(30, 3)
    columns = (
        {"text": "sentence", "label": "label"}
        if head == "classification"
        else {"text": "a", "text_pair": "b", "label": "score"}
    )
    extra = {"labels": ["neg", "pos"]} if head == "classification" else {}
    splits = {"train": rows, **({"validation": sentiment_rows(10, 9)} if validation else {})}
    path = write_task(folder, "t", head, splits, columns, **extra, **kwargs)
    spec = yaml.safe_load(path.read_text())
    for dotted, value in (edit or {}).items():
        node = spec
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(spec))
    return ["task=t", f"task_dirs=[{folder}]"]


def _rows_with(index: int, **changes) -> list[dict]:
    rows = sentiment_rows(30, 3)
    rows[index].update(changes)
    return rows


def _malformed(case: Path, world) -> list[str]:
    (case / "tasks").mkdir(parents=True)
    (case / "tasks" / "t.yaml").write_text("name: t\nhead: [classification\ncolumns: {}\n")
    return ["task=t", f"task_dirs=[{case / 'tasks'}]"]


def _empty_file(case: Path, world) -> list[str]:
    args = _variant(case, validation=True)
    (case / "tasks" / "t_validation.csv").write_text("")
    return args


def _regression(rows_change: Callable[[list[dict]], None]):
    def make(case: Path, world) -> list[str]:
        rows = count_rows(30, 4)
        rows_change(rows)
        return _variant(case, rows=rows, head="regression")

    return make


def _not_writable(case: Path, world) -> list[str]:
    case.mkdir(parents=True)
    (case / "a_file").write_text("not a folder")
    return ["task=toy_sent", f"task_dirs=[{world['good']}]", f"output_dir={case / 'a_file' / 'run'}"]


def _corrupted_checkpoint(case: Path, world) -> list[str]:
    copy = case / "run"
    shutil.copytree(world["precious"], copy)
    newest = sorted((copy / "checkpoints").iterdir())[-1]
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return ["task=toy_sent", f"task_dirs=[{world['good']}]", f"resume={newest}"]


def _artifact_sha(case: Path, world) -> list[str]:
    import zipfile

    folder = case / "tasks"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "pkg-1.0-py3-none-any.whl", "w") as zf:
        zf.writestr("pkg/data.csv", "text,label\na,neg\nb,pos\n")
    spec = {
        "name": "t",
        "head": "classification",
        "labels": ["neg", "pos"],
        "columns": {"text": "text", "label": "label"},
        "source": {
            "kind": "artifact",
            "archive": "pkg-1.0-py3-none-any.whl",
            "sha256": "ab" * 32,
            "file": "pkg/data.csv",
            "split_fractions": {"train": 0.5, "validation": 0.5},
        },
    }
    (folder / "t.yaml").write_text(yaml.safe_dump(spec))
    return ["task=t", f"task_dirs=[{folder}]"]


def _span_mismatch(case: Path, world) -> list[str]:
    rows = [
        {"q": "what", "c": "a film about paris", "a": {"text": ["paris"], "answer_start": [13]}},
        {"q": "what", "c": "a film about rome", "a": {"text": ["zebra"], "answer_start": [0]}},
    ]
    folder = case / "tasks"
    write_task(
        folder,
        "t",
        "span",
        {"train": rows},
        {"question": "q", "context": "c", "answers": "a"},
        fmt="jsonl",
        doc_stride=8,
    )
    return ["task=t", f"task_dirs=[{folder}]"]


def _ranking_no_answer(case: Path, world) -> list[str]:
    rows = [
        {"q": "which", "opts": ["x y", "z w"], "ans": []},
        {"q": "which", "opts": ["x y", "z w"], "ans": 1},
    ]
    folder = case / "tasks"
    write_task(
        folder,
        "t",
        "ranking",
        {"train": rows},
        {"query": "q", "candidates": "opts", "label": "ans"},
        fmt="jsonl",
    )
    return ["task=t", f"task_dirs=[{folder}]"]


def _span_rows(case: Path, rows: list[dict]) -> list[str]:
    folder = case / "tasks"
    write_task(
        folder,
        "t",
        "span",
        {"train": rows},
        {"question": "q", "context": "c", "answers": "a"},
        fmt="jsonl",
        doc_stride=8,
    )
    return ["task=t", f"task_dirs=[{folder}]"]


GOOD_SPAN = {"q": "what", "c": "a film about paris", "a": {"text": ["paris"], "answer_start": [13]}}


def _single_candidates(case: Path, world) -> list[str]:
    rows = [{"q": f"query {i}", "opts": [f"only {i}"], "ans": 0} for i in range(6)]
    folder = case / "tasks"
    write_task(
        folder,
        "t",
        "ranking",
        {"train": rows},
        {"query": "q", "candidates": "opts", "label": "ans"},
        fmt="jsonl",
    )
    return ["task=t", f"task_dirs=[{folder}]"]


GOOD = ["task=toy_sent"]  # with task_dirs added below


def _empty_transfer_text(case: Path, world) -> list[str]:
    case.mkdir(parents=True)
    (case / "texts.csv").write_text('sentence\ngood film\nbad film\n""\nfine film\n')
    return GOOD + [
        "distill=ensemble",
        f"distill.teachers=[{world['precious']}]",
        f"+distill.transfer.toy_sent={case / 'texts.csv'}",
    ]


CASES: dict[str, tuple[Callable[[Path, dict], list[str]], str]] = {
    "malformed yaml": (_malformed, "t.yaml: line 3: malformed YAML"),
    "unknown task": (
        lambda c, w: ["task=rt_polarty"],
        "task=rt_polarty: unknown task (did you mean 'rt_polarity'?)",
    ),
    "unknown head type": (
        lambda c, w: _variant(c, {"head": "clasification"}),
        "t.yaml: head: unknown head type 'clasification' (did you mean 'classification'?)",
    ),
    "unknown yaml field": (
        lambda c, w: _variant(c, {"max_lenght": 64}),
        "t.yaml: max_lenght: unknown field (did you mean 'max_length'",
    ),
    "missing column": (
        lambda c, w: _variant(c, {"columns.text": "sentense"}),
        "t.yaml: columns.text: column 'sentense' not found in split 'train' (did you mean 'sentence'?)",
    ),
    "label not in list": (
        lambda c, w: _variant(c, rows=_rows_with(4, label="neutral")),
        "t.yaml: columns.label: split 'train' row 5: label 'neutral' is not in labels ['neg', 'pos']",
    ),
    "empty data file": (_empty_file, "t.yaml: source.splits.validation: data file is empty"),
    "nan regression target": (
        _regression(lambda r: r[1].update(score=float("nan"))),
        "t.yaml: columns.label: split 'train' row 2: regression target is not a finite number",
    ),
    "non-numeric regression target": (
        _regression(lambda r: r[2].update(score="high")),
        "t.yaml: columns.label: split 'train' row 3: regression target is not a finite",
    ),
    "empty text in a row": (
        lambda c, w: _variant(c, rows=_rows_with(6, sentence="   ")),
        "t.yaml: columns.text: split 'train' row 7: text is empty",
    ),
    "span answer does not match its context": (
        _span_mismatch,
        "t.yaml: columns.answers: split 'train' row 2: answer 'zebra' "
        "does not match the context at offset 0 (found 'a fil')",
    ),
    "ranking group without a correct candidate": (
        _ranking_no_answer,
        "t.yaml: columns.label: split 'train' row 1: group '0' has no correct candidate",
    ),
    "span answers and starts of different lengths": (
        lambda c, w: _span_rows(
            c, [GOOD_SPAN, {**GOOD_SPAN, "a": {"text": ["paris", "film"], "answer_start": [13]}}]
        ),
        "t.yaml: columns.answers: split 'train' row 2: 2 answer texts but 1 answer_start offsets",
    ),
    "span question longer than max_length": (
        lambda c, w: _span_rows(c, [GOOD_SPAN, {**GOOD_SPAN, "q": " ".join(["why"] * 60)}]),
        "t.yaml: columns.question: split 'train' row 2: the question is 60 tokens, leaving no room for the "
        "context "
        "within max_length 32",
    ),
    "ranking with one candidate per group": (
        _single_candidates,
        "t.yaml: columns.candidates: split 'train' row 1: every group has a "
        "single candidate, so there is nothing to rank",
    ),
    "a fraction that leaves its split empty": (
        lambda c, w: _variant(
            c,
            {
                "source.splits": {},
                "source.file": "t_train.csv",
                "source.split_fractions": {"train": 0.99, "validation": 0.01},
            },
        ),
        "t.yaml: source.split_fractions.validation: split 'validation' gets no rows (0.01 of 30 rows)",
    ),
    "fractions do not sum to 1": (
        lambda c, w: _variant(
            c,
            {
                "source.splits": {},
                "source.file": "t_train.csv",
                "source.split_fractions": {"train": 0.8, "test": 0.1},
            },
        ),
        "t.yaml: source.split_fractions: fractions must be positive and sum to 1",
    ),
    "artifact checksum mismatch": (
        _artifact_sha,
        "t.yaml: source.sha256: pkg-1.0-py3-none-any.whl has sha256",
    ),
    "override of wrong type": (
        lambda c, w: GOOD + ["trainer.lr=fast"],
        "trainer.lr: Value 'fast' of type 'str' could not be converted to Float",
    ),
    "unknown added setting": (
        lambda c, w: GOOD + ["+trainer.learning_rate=1e-3"],
        "trainer.learning_rate: unknown setting",
    ),
    "unknown config option": (
        lambda c, w: GOOD + ["encoder=minlm"],
        "encoder=minlm: no such option (did you mean",
    ),
    "bad regularizer setting": (
        lambda c, w: GOOD + ["regularizer=smart", "regularizer.smart.norm=l3"],
        "regularizer.smart.norm: must be one of inf, l2, l1, got 'l3'",
    ),
    "encoder path does not exist": (
        lambda c, w: GOOD + ["encoder=bert-base-uncased", f"encoder.name={c}/nope"],
        "encoder.name: local path does not exist:",
    ),
    "output dir not writable": (_not_writable, "output_dir: cannot write to"),
    "output dir holds a run": (
        lambda c, w: GOOD + [f"output_dir={w['precious']}"],
        "already holds a run; pass resume=auto to continue it",
    ),
    "output dir inside a run": (  # found by the long override fuzz: it trained into <run>/checkpoints
        lambda c, w: GOOD + [f"output_dir={w['precious']}/checkpoints/new"],
        "is inside the run folder",
    ),
    "resume from nowhere": (
        lambda c, w: GOOD + [f"resume={c}/missing"],
        "resume: no such checkpoint or run folder",
    ),
    "corrupted checkpoint on resume": (_corrupted_checkpoint, "/model.safetensors: corrupted"),
    "transfer file with an empty text": (
        _empty_transfer_text,
        "texts.csv: row 3: column sentence: empty text",
    ),
}


def _command(args: list[str], world, case: Path) -> list[str]:
    if not any(a.startswith("task_dirs=") for a in args):
        args = args + [f"task_dirs=[{world['good']}]"]
    if not any(a.startswith("output_dir=") for a in args):
        args = args + [f"output_dir={case / 'out'}"]
    return [sys.executable, "-m", "mtdnn.train", "encoder=tiny", "trainer.progress_bar=false", *args]


def _assert_one_clear_line(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], done.stderr[-1500:]
    assert expected in errors[0], errors[0]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_clear_line_and_loses_nothing(name, world, tmp_path):
    make, expected = CASES[name]
    args = make(tmp_path / "case", world)
    done = subprocess.run(
        _command(args, world, tmp_path / "case"),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _assert_one_clear_line(done, expected)
    assert _digest(world["precious"]) == world["digest"]


def test_disk_full_during_a_checkpoint_write(world, tmp_path):
    """ENOSPC on the second checkpoint write, simulated in the training process itself."""
    out = tmp_path / "run"
    argv = [
        "mtdnn.train",
        *_command(
            ["task=toy_sent", "trainer.max_steps=10", "trainer.eval_every=5", f"output_dir={out}"],
            world,
            tmp_path,
        )[3:],
    ]
    harness = (
        "import errno, sys\n"
        "from mtdnn.runs import checkpoints as rundir\n"
        "real, calls = rundir.torch.save, [0]\n"
        "def save(*args, **kwargs):\n"
        "    calls[0] += 1\n"
        "    if calls[0] >= 2:\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return real(*args, **kwargs)\n"
        "rundir.torch.save = save\n"
        f"sys.argv = {argv!r}\n"
        "from mtdnn.train import main\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", harness], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    _assert_one_clear_line(
        done, "step_0000010: cannot write checkpoint: No space left on device; the previous checkpoint"
    )
    from mtdnn.runs.checkpoints import checkpoint_problem, list_checkpoints

    kept = list_checkpoints(out)
    assert [p.name for p in kept] == ["step_0000005"] and checkpoint_problem(kept[0]) is None
    assert _digest(world["precious"]) == world["digest"]


def test_full_traceback_only_when_asked(world, tmp_path):
    args = _command(_variant(tmp_path / "case", {"head": "clasification"}), world, tmp_path / "case")
    done = subprocess.run(
        args, cwd=tmp_path, env={**ENV, "HYDRA_FULL_ERROR": "1"}, capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0 and "Traceback" in done.stderr and "unknown head type" in done.stderr


@pytest.mark.parametrize(
    "value, holds",
    [(1999, "int64"), (3.5, "float64"), (["a", "list"], "lists"), ({"a": "struct"}, "structs")],
)
def test_a_text_column_that_is_not_text_names_column_and_row(tmp_path, value, holds):
    from conftest import write_task

    from mtdnn.core.errors import MtdnnError
    from mtdnn.data.tasks import load_tasks
    from mtdnn.training.build import prepare_data

    rows = [{"s": value, "p": "fine", "y": "pos"}] * 3 + [{"s": value, "p": "also fine", "y": "neg"}]
    write_task(
        tmp_path,
        "t",
        "classification",
        {"train": rows},
        {"text": "s", "text_pair": "p", "label": "y"},
        fmt="jsonl",
        labels=["neg", "pos"],
    )
    with pytest.raises(MtdnnError) as info:
        prepare_data(load_tasks(["t"], [str(tmp_path)]))
    assert (
        f"t.yaml: columns.text: split 'train' row 1: text must be a string; column 's' holds {holds} "
        "(and 3 more rows)" in str(info.value)
    )


def test_max_length_above_the_encoders_positions_is_refused_before_training(tmp_path, toy_tasks):
    from conftest import compose_train, tiny_overrides

    from mtdnn.core.errors import MtdnnError
    from mtdnn.train import run

    cfg = compose_train(
        tiny_overrides(
            toy_tasks,
            "task=[toy_sent,toy_count]",
            "+task_overrides.toy_sent.max_length=100000",
            "+task_overrides.toy_count.max_length=513",
            "trainer.max_steps=2",
        )
    )
    with pytest.raises(MtdnnError) as info:
        run(cfg, tmp_path / "run")
    text = str(info.value)  # the tiny encoder has 512 positions; both tasks are named at once
    assert "toy_sent.yaml: max_length: 100000 is above the encoder's limit of 512 positions" in text
    assert "toy_count.yaml: max_length: 513 is above" in text
    assert not (tmp_path / "run" / "checkpoints").exists()
    from transformers import RobertaConfig, RobertaModel

    from mtdnn.model.encoders import position_limit

    roberta = RobertaModel(
        RobertaConfig(
            vocab_size=20,
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            intermediate_size=8,
            max_position_embeddings=514,
            pad_token_id=1,
        )
    )
    assert position_limit(roberta, None) == 512  # RoBERTa's positions start after the padding id


def _artifact_task(folder: Path) -> list[str]:
    """A task read out of a local wheel (checksum right): running it must extract into MTDNN_CACHE."""
    import hashlib
    import zipfile

    folder.mkdir(parents=True)
    wheel = folder / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(
            "pkg/data.csv",
            "text,label\n" + "".join(f"row {i},{'neg' if i % 2 else 'pos'}\n" for i in range(20)),
        )
    spec = {
        "name": "t",
        "head": "classification",
        "labels": ["neg", "pos"],
        "columns": {"text": "text", "label": "label"},
        "source": {
            "kind": "artifact",
            "archive": wheel.name,
            "sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            "file": "pkg/data.csv",
            "split_fractions": {"train": 0.5, "validation": 0.5},
        },
    }
    (folder / "t.yaml").write_text(yaml.safe_dump(spec))
    return ["task=t", f"task_dirs=[{folder}]"]


def test_a_cache_that_cannot_be_written_is_one_line_naming_it(world, tmp_path):
    """MTDNN_CACHE under a file (the same class as read-only or full: the file system refuses the write)."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    args = _command(_artifact_task(tmp_path / "case" / "tasks"), world, tmp_path / "case")
    done = subprocess.run(
        args,
        cwd=tmp_path,
        env={**ENV, "MTDNN_CACHE": str(blocker / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    _assert_one_clear_line(done, f"error: cannot write {blocker / 'cache'}")
    assert done.returncode == 2
    assert (
        "a path component is a file, not a folder; set MTDNN_CACHE to a writable folder with free space"
        in done.stderr
    )
    assert _digest(world["precious"]) == world["digest"]
