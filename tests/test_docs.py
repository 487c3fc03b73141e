"""The docs site's reference pages are generated from the schemas: stale pages, and settings without a written
meaning, fail here."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

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
