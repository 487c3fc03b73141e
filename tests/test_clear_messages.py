"""Messages that say what is wrong: each case once misled its user (a library's words, or advice naming a
setting the command does not take). Each runs the real command in-process and checks its one `error:` line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import sentiment_rows, tiny_overrides, write_task
from test_bad_input import _digest, world  # noqa: F401  (the module fixture: a finished run)
from test_fuzz import _run_cli
from test_fuzz_folders import _call


def _task_with_train_file(folder: Path, train_name: str, train_text: bytes) -> None:
    write_task(
        folder,
        "t",
        "classification",
        {"train": sentiment_rows(20, 1), "validation": sentiment_rows(10, 2)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    (folder / train_name).write_bytes(train_text)
    spec = (folder / "t.yaml").read_text().replace("t_train.csv", train_name)
    (folder / "t.yaml").write_text(spec)


MIXED = [
    {"sentence": "good film", "label": "pos"},
    {"sentence": "bad film", "label": 1},
    {"sentence": "fine", "label": "neg"},
    {"sentence": 3, "label": "neg"},
]


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        (
            "mixed_labels.jsonl",
            "".join(json.dumps(r) + "\n" for r in MIXED[:3]),
            "columns.label: split 'train' row 2: label must be of one type in the whole column; "
            "column 'label' mixes int and str, most rows str",
        ),
        (
            "mixed_texts.jsonl",
            "".join(json.dumps(r) + "\n" for r in [MIXED[0], MIXED[3], MIXED[2]]),
            "columns.text: split 'train' row 2: text must be a string; column 'sentence' mixes texts "
            "and other values",
        ),
        ("header_only.csv", "sentence,label\n", "source.splits.train: data file has no rows: "),
        ("blank_lines.jsonl", "\n\n", "source.splits.train: data file has no rows: "),
    ],
)
def test_a_data_file_gets_the_cause_not_a_library_s_words(tmp_path, capsys, name, content, expected):
    folder = tmp_path / "tasks"
    _task_with_train_file(folder, name, content.encode())
    args = [*tiny_overrides(folder), "task=t", "trainer.max_steps=2", f"output_dir={tmp_path / 'out'}"]
    code, stderr = _run_cli(args, capsys, tmp_path)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, stderr[-2000:]
    assert errors[0].startswith(f"error: {folder / 't.yaml'}: ") and expected in errors[0], errors[0]
    assert "multilabel" not in errors[0] and "Instruction" not in errors[0]


def test_predict_names_its_own_settings_for_an_input_file(world, tmp_path):  # noqa: F811
    run = world["precious"]
    odd = tmp_path / "inputs.txt"
    odd.write_text("sentence\ngood film\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("sentence\ncaf\u00e9\n".encode("latin-1"))
    base = [f"run_dir={run}", "task=toy_sent"]

    code, err = _call("mtdnn.predict", [*base, f"input={odd}"])
    assert code == 2 and err.strip().splitlines()[-1] == (
        f"error: {odd}: input: cannot tell the format of inputs.txt; set input_format to one of csv, tsv, "
        "json, jsonl, parquet"
    )
    code, err = _call("mtdnn.predict", [*base, f"input={latin}"])
    assert code == 2 and "set input_encoding (e.g. latin-1)" in err and "source." not in err

    out = tmp_path / "out.jsonl"
    assert _call("mtdnn.predict", [*base, f"input={odd}", "input_format=csv", f"out={out}"])[0] == 0
    assert _call("mtdnn.predict", [*base, f"input={latin}", "input_encoding=latin-1", f"out={out}2"])[0] == 0
    assert _digest(run) == world["digest"]
    assert json.loads(Path(f"{out}2").read_text())["text"] == "caf\u00e9"


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("mtdnn.evaluate", ["run_dir", "split", "checkpoint", "data"]),
        ("mtdnn.predict", ["run_dir", "input", "input_format", "out"]),
        ("mtdnn.export.__main__", ["run_dir", "task", "out", "format"]),
        ("mtdnn.report", ["sweep_dir", "out"]),
        ("mtdnn.affinity", ["target=", "candidates=", "steps"]),
    ],
)
def test_help_prints_the_command_s_own_arguments(module, names, capsys):
    import importlib

    argv, sys.argv = sys.argv, ["mtdnn", "--help"]
    try:
        with pytest.raises(SystemExit) as done:
            importlib.import_module(module).main()
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert done.value.code == 0 and "docs: docs/guide/" in out
    assert all(name in out for name in names), out
