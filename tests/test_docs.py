"""The docs site's reference pages are generated from the schemas: stale pages, and settings without a written
meaning, fail here."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import docs_reference  # noqa: E402


def test_the_reference_pages_are_what_the_schemas_give():
    for path, text in docs_reference.pages().items():
        assert path.read_text() == text, f"{path} is stale: run python scripts/docs_reference.py"


def test_every_setting_has_a_line_with_its_meaning():
    from mtdnn.core import config
    from mtdnn.data import tasks

    pages = "".join(docs_reference.pages().values())
    lines = [line for line in pages.splitlines() if line.startswith("| `")]
    assert lines and all(not line.rstrip().endswith("|  |") for line in lines), [
        line for line in lines if line.rstrip().endswith("|  |")
    ]
    for schema, prefix in [(config.TrainerConfig, "trainer."), (tasks.SourceSpec, "source.")]:
        for field in dataclasses.fields(schema):
            assert f"| `{prefix}{field.name}` |" in pages, f"{prefix}{field.name} has no reference line"


def test_every_reference_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for path in docs_reference.pages():
        assert str(path.relative_to(ROOT / "docs")) in nav


def documented_commands(program: str) -> list[tuple[str, list[str]]]:
    """(where, arguments) of every `python -m <program> ...` line (and `torchrun ... -m <program> ...`) in a
    bash block of README.md and docs/: continuation lines joined, comments dropped."""
    import re
    import shlex

    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if f"-m {program}" in " ".join(words[:8]) and words[0] in ("python", "torchrun"):
                    start = next(i for i, w in enumerate(words) if w == program) + 1
                    found.append((f"{path.relative_to(ROOT)}: {line.strip()[:80]}", words[start:]))
    return found


def test_every_training_command_in_the_docs_composes(capsys):
    """Each documented `python -m mtdnn.train ...` is checked as the command checks it before Hydra runs:
    overrides composed, a sweep's every value, a search's every range (a quoting mistake fails here)."""
    from mtdnn.training.command_line import check_overrides, check_search, check_sweep

    commands = documented_commands("mtdnn.train")
    assert len(commands) >= 30
    for where, args in commands:
        if "..." in args:  # an elided command line, not an example
            continue
        flags = {a for a in args if a.startswith("-")}
        overrides = [a for a in args if not a.startswith("-")]
        check = (
            check_search if "hydra/sweeper=search" in overrides else check_sweep if flags else check_overrides
        )
        try:
            if overrides:
                check(overrides)
        except SystemExit:
            raise AssertionError(f"{where}: {capsys.readouterr().err.strip()}") from None


def test_every_run_folder_command_in_the_docs_parses(capsys):
    """Each documented evaluate / predict / export / report line reads onto its command's schema (usage
    brackets `[key=value]` and `a|b` alternatives taken as written)."""
    import importlib

    from mtdnn.core.commands import parse_args

    schemas = {
        "mtdnn.evaluate": ("mtdnn.evaluate", "EvaluateConfig", None),
        "mtdnn.predict": ("mtdnn.predict", "PredictConfig", None),
        "mtdnn.export": ("mtdnn.export", "ExportConfig", "run_dir"),
        "mtdnn.report": ("mtdnn.report", "ReportConfig", "sweep_dir"),
    }
    checked = 0
    for program, (module, name, positional) in schemas.items():
        schema = getattr(importlib.import_module(module), name)
        for where, args in documented_commands(program):
            args = [a.strip("[]") for a in args if a not in ("|", "...")]
            if positional and args and "=" not in args[0]:
                args = [f"{positional}={args[0]}", *args[1:]]
            try:
                parse_args(schema, args)
            except Exception as err:  # noqa: BLE001  (MtdnnError: the line does not read)
                raise AssertionError(f"{where}: {err}") from None
            checked += 1
    assert checked >= 10


def test_the_error_page_lists_every_message_raised_in_the_source():
    page = docs_reference.errors()
    entries = [line for line in page.splitlines() if line.startswith("| `")]
    assert len(entries) >= 150
    # a raised message, a collected problem, and one built from two strings, as their readers see them
    assert "| `task: '{task}' was not trained in {self.run_dir}; it has {', '.join(self.tasks)}` |" in page
    assert "inputs: give a list of inputs, not one {type(inputs).__name__}: predict(task, [x])" in page
    assert "## `mtdnn/serving/predictor.py`" in page and "## `mtdnn/kinds/span.py`" in page


SUBSTITUTED = ("encoder=", "output_dir=", "trainer.max_steps=", "trainer.epochs=")  # replaced when run


def why_not_run(args: list[str]) -> str | None:
    """Why a documented training command is only composed (test above), not run offline; None: it runs."""
    import yaml

    if "..." in args:
        return "an elided command line"
    if any(a.startswith("-") for a in args):
        return "a sweep or search (its jobs are composed one by one above)"
    if any(a.split("=")[0].lstrip("+") in ("resume", "init_from", "stages", "experiment") for a in args):
        return "continues or chains earlier runs"
    tasks = next((a.split("=", 1)[1] for a in args if a.startswith("task=")), "rt_polarity")
    folders = [ROOT / "tasks", *(ROOT / d for a in args if a.startswith("task_dirs=") for d in [a[11:-1]])]
    for name in tasks.strip("[]").split(","):
        found = [f / f"{name}.yaml" for f in folders if (f / f"{name}.yaml").is_file()]
        if not found:
            return f"names a placeholder task ({name})"
        if yaml.safe_load(found[0].read_text())["source"]["kind"] == "hub":
            return f"needs the Hugging Face hub ({name})"
    return None


def runnable_commands() -> list[tuple[str, list[str]]]:
    seen, runnable = set(), []
    for where, args in documented_commands("mtdnn.train"):
        if why_not_run(args) is None and tuple(args) not in seen:
            seen.add(tuple(args))
            runnable.append((where, args))
    return runnable


def test_every_training_command_in_the_docs_runs_or_has_a_reason_not_to():
    commands = documented_commands("mtdnn.train")
    reasons = [why_not_run(args) for _, args in commands]
    assert len(runnable_commands()) >= 10
    assert {r.split(" (")[0] for r in reasons if r} <= {
        "an elided command line",
        "a sweep or search",
        "continues or chains earlier runs",
        "names a placeholder task",
        "needs the Hugging Face hub",
    }


@pytest.mark.slow  # each documented command that can run offline, through the real CLI (~4 min)
@pytest.mark.parametrize("where, args", runnable_commands(), ids=[w for w, _ in runnable_commands()])
def test_each_offline_training_command_in_the_docs_runs(tmp_path, where, args):
    """As written, with the tiny encoder and two steps in place of the real encoder and the full run."""
    import json

    from conftest import run_as_a_user

    kept = [a for a in args if not a.startswith(SUBSTITUTED)]
    quick = ["encoder=tiny", "trainer.max_steps=2", "trainer.eval_every=2", "predict_test=false"]
    done = run_as_a_user(
        tmp_path, ["python", "-m", "mtdnn.train", *kept, *quick, f"output_dir={tmp_path / 'run'}"]
    )
    assert done.returncode == 0, f"{where}\n{done.stderr[-2000:]}"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["validation"], where
