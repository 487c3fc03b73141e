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


def bash_lines(path: Path) -> list[tuple[str, list[str]]]:
    """(line, words) of each line of the page's bash blocks, in order (continuations joined, no comments)."""
    import re
    import shlex

    found = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", path.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if words := shlex.split(line, comments=True):
                found.append((line.strip(), words))
    return found


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def documented_commands(program: str) -> list[tuple[str, list[str]]]:
    """(where, arguments) of every `python -m <program> ...` line (and `torchrun ... -m <program> ...`) in a
    bash block of README.md and docs/."""
    found = []
    for path in pages():
        for line, words in bash_lines(path):
            if f"-m {program}" in " ".join(words[:8]) and words[0] in ("python", "torchrun"):
                start = next(i for i, w in enumerate(words) if w == program) + 1
                found.append((f"{path.relative_to(ROOT)}: {line[:80]}", words[start:]))
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


def named_tasks(args: list[str]) -> list[str]:
    """The tasks a training command trains: `task=`, its stages' `task=` overrides (inline or an experiment's
    YAML); the default task when none is named."""
    import yaml

    stages = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "stages":
            stages += yaml.safe_load(value)
        elif key == "+experiment":
            stages += yaml.safe_load((ROOT / "conf" / "experiment" / f"{value}.yaml").read_text())["stages"]
    words = [*args, *(o for stage in stages for o in stage.get("overrides", []))]
    named = [w.split("=", 1)[1].strip("[]").split(",") for w in words if w.startswith("task=")]
    return [name for names in named for name in names] or ["rt_polarity"]


def why_not_run(args: list[str]) -> str | None:
    """Why a documented training command is only composed (test above), not run offline; None: it runs."""
    import yaml

    if "..." in args:
        return "an elided command line"
    if any(a.startswith("-") for a in args):
        return "a sweep or search (its jobs are composed one by one above)"
    folders = [ROOT / "tasks", *(ROOT / d for a in args if a.startswith("task_dirs=") for d in [a[11:-1]])]
    for name in named_tasks(args):
        found = [f / f"{name}.yaml" for f in folders if (f / f"{name}.yaml").is_file()]
        if not found:
            return f"names a placeholder task ({name})"
        if yaml.safe_load(found[0].read_text())["source"]["kind"] == "hub":
            return f"needs the Hugging Face hub ({name})"
    if any(a.split("=")[0].lstrip("+") in ("resume", "init_from") for a in args):
        return "continues an earlier run"
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
        "continues an earlier run",
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


HUB_STANDINS = {"mnli": "example_sentiment", "rte": "example_similarity"}  # offline tasks in the hub's place


def inline_stage_commands() -> list[tuple[str, list[str]]]:
    return [(w, a) for w, a in documented_commands("mtdnn.train") if any(x.startswith("stages=") for x in a)]


@pytest.mark.slow  # the STILTs lines as written (quoting, stages, heads), offline tasks for the hub's
@pytest.mark.parametrize("where, args", inline_stage_commands(), ids=[w for w, _ in inline_stage_commands()])
def test_each_inline_stilts_line_runs_with_offline_tasks_for_the_hubs(tmp_path, where, args):
    import json
    import re

    from conftest import run_as_a_user

    standins = [re.sub(r"\btask=(\w+)", lambda m: f"task={HUB_STANDINS.get(m[1], m[1])}", a) for a in args]
    assert standins != args, where
    quick = ["encoder=tiny", "task_dirs=[examples/tasks]", "trainer.max_steps=2", "predict_test=false"]
    done = run_as_a_user(tmp_path, ["python", "-m", "mtdnn.train", *standins, *quick, "output_dir=run"])
    assert done.returncode == 0, f"{where}\n{done.stderr[-2000:]}"
    stages = sorted(p.name for p in (tmp_path / "run" / "stages").iterdir())
    assert len(stages) == len(re.findall(r"\bname:", args[0])) >= 2, stages
    for stage in stages:
        assert json.loads((tmp_path / "run" / "stages" / stage / "summary.json").read_text())["steps"] == 2


# --------------------------------------------------------------- each page's commands, in order, as a session

PROGRAMS = (
    "mtdnn.train",
    "mtdnn.evaluate",
    "mtdnn.predict",
    "mtdnn.export",
    "mtdnn.report",
    "mtdnn.distill",
    "mtdnn.affinity",
)
TEACHERS = "[outputs/teachers/0,outputs/teachers/1,outputs/teachers/2]"
PLACEHOLDERS = {  # words that stand for something the reader has by then: what the session has instead
    "distill.teachers=[...]": f"distill.teachers={TEACHERS}",
    "checkpoint=DIR": "checkpoint=outputs/my_run/checkpoints/step_0000002",
}
QUICK = {  # the real encoder and run lengths, replaced by the tiny encoder and a few steps
    "mtdnn.train": ["encoder=tiny", "trainer.max_steps=2", "trainer.eval_every=2", "predict_test=false"],
    "mtdnn.distill": ["encoder=tiny", "trainer.max_steps=2", "trainer.eval_every=2", "predict_test=false"],
    "mtdnn.affinity": ["encoder=tiny", "steps=4", "every=2"],
}
REPLACED = ("encoder=", "trainer.max_steps=", "trainer.epochs=", "steps=", "every=", "hydra.sweeper.n_trials")
PAGE_SETTINGS = {  # the distillation page's layer maps name MiniLM's 6 layers: a 6-layer tiny encoder there
    "docs/guide/distillation.md": ["encoder.from_config.num_hidden_layers=6"],
}


def page_commands(page: str) -> list[tuple[str, list[str]]]:
    """(program, arguments) of each `python -m mtdnn.*` line of a page's bash blocks, in the page's order."""
    lines = bash_lines(ROOT / page)
    return [(w[2], w[3:]) for _, w in lines if w[:2] == ["python", "-m"] and w[2] in PROGRAMS]


def session_pages() -> list[str]:
    """Pages whose bash blocks use a run folder (the head-kind pages run in tests/test_examples.py)."""
    named = [str(p.relative_to(ROOT)) for p in pages() if "kinds" not in p.parts]
    return [page for page in named if any(prog != "mtdnn.train" for prog, _ in page_commands(page))]


def usage_variants(args: list[str]) -> list[list[str]]:
    """A usage line as the commands a reader may type: the bare line, then each optional `[...]` argument
    alone, one line per alternative (`[split=test | input=F]`, `[checkpoint=best|last]`)."""
    bare, optional, group = [], [], None
    for word in args:
        if word.startswith("["):
            group = []
        (bare if group is None else group).append(word)
        if group is not None and word.endswith("]"):
            optional.append(" ".join(group)[1:-1])
            group = None
    variants = [bare]
    for text in optional:
        for choice in text.split(" | "):
            key, _, values = choice.partition("=")
            variants += [[*bare, f"{key}={value}"] for value in values.split("|")]
    return variants


def why_not_in_session(program: str, args: list[str]) -> str | None:
    if "..." in args:
        return "an elided command line"
    if any("<" in a for a in args):
        return "names the folder of a sweep on a hub task"
    if program == "mtdnn.train" and not any(a.startswith(("output_dir=", "hydra.sweep.dir=")) for a in args):
        return "makes no folder that a later line reads (run by test_each_offline_training_command...)"
    if program == "mtdnn.train" and why_not_run(args) and "hub" in why_not_run(args):
        return why_not_run(args)
    return None


def users_folder(folder: Path) -> None:
    """What a reader has made before the pages' run-folder commands: their own tasks in my_tasks/ (the
    README's my_task and other_task, the candidates a, b, c: the example classification task under their
    names), the files they predict, and a run outputs/my_run of rt_polarity, a and b."""
    import shutil

    from conftest import run_as_a_user

    (folder / "my_tasks").mkdir()
    shutil.copytree(ROOT / "examples" / "tasks" / "data", folder / "my_tasks" / "data")
    example = (ROOT / "examples" / "tasks" / "example_sentiment.yaml").read_text()
    for name in ("my_task", "other_task", "a", "b", "c"):
        (folder / "my_tasks" / f"{name}.yaml").write_text(example.replace("example_sentiment", name))
    (folder / "new_rows.csv").write_text("review\na gripping film\ndull and long\n")
    for name in ("reviews.csv", "my_file.csv", "unlabelled_reviews.csv"):
        (folder / name).write_text("text\na gripping film\ndull and long\nfine\n")
    train = ["python", "-m", "mtdnn.train", "task=[rt_polarity,a,b]", "task_dirs=[my_tasks]"]
    done = run_as_a_user(folder, [*train, *QUICK["mtdnn.train"], "output_dir=outputs/my_run"])
    assert done.returncode == 0, done.stderr[-2000:]


def files_and_times(folder: Path) -> set[tuple[Path, int]]:
    return {(p, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow  # every page's run-folder commands through the real CLI, in order (~15 min, ~5 the longest)
@pytest.mark.timeout(1500)  # a page is one test: the distillation page runs 10 commands
@pytest.mark.parametrize("page", session_pages())
def test_each_pages_commands_run_in_order_as_a_reader_types_them(tmp_path, page):
    """The page's lines from top to bottom in one folder, usage lines once per form; the lines that make a
    folder (a training run, a sweep) run too, with the tiny encoder and two steps, so the lines after them
    find what the page says they find. Each line must succeed and write what it says it writes."""
    from conftest import run_as_a_user

    users_folder(tmp_path)
    ran = 0
    for program, args in page_commands(page):
        if why_not_in_session(program, args):
            continue
        variants = usage_variants(args)
        for number, variant in enumerate(variants, 1):
            variant = [PLACEHOLDERS.get(a, a) for a in variant]
            if program in QUICK:
                variant = [
                    *(a for a in variant if not a.startswith(REPLACED)),
                    *QUICK[program],
                    *PAGE_SETTINGS.get(page, []),
                    *(["hydra.sweeper.n_trials=2"] if "hydra/sweeper=search" in variant else []),
                ]
            line = " ".join(["python -m", program, *variant])
            before = files_and_times(tmp_path)
            done = run_as_a_user(tmp_path, ["python", "-m", program, *variant])
            assert done.returncode == 0, f"{page}: {line}\n{done.stderr[-2000:]}"
            written = files_and_times(tmp_path) - before  # new files and rewritten ones
            assert written or "resume=auto" in variant, f"{page}: {line} wrote nothing"
            if number < len(variants):  # a usage line's forms are alternatives: the next starts as this did
                for path in {p for p, _ in written} - {p for p, _ in before}:
                    path.unlink()
            ran += 1
    assert ran, page


# ---------------------------------------------------------------- every other shell line: checked, or why not


def shell_lines() -> list[tuple[str, list[str]]]:
    """(where, words) of every line of every bash block in README.md and docs/."""
    return [(f"{p.relative_to(ROOT)}: {line[:80]}", words) for p in pages() for line, words in bash_lines(p)]


def not_a_toolkit_command(words: list[str]) -> str | None:
    """Why a shell line that is not `python -m mtdnn.*` is not run by the tests; None: a script line, whose
    arguments the test below parses."""
    if words[:2] == ["pip", "install"]:
        return "installs packages (CI installs the same extras)"
    if "pytest" in words[:3]:
        return "runs this test suite"
    if words[0] == "export":
        return "sets the environment (the tests run with it set)"
    if words[0] == "torchrun" and "--nnodes" in words:
        return "needs several machines (one-machine torchrun runs in tests/test_distributed.py)"
    return None


class Parsed(Exception):
    """Raised in place of running a benchmark script once its arguments are parsed."""


def test_every_shell_line_in_the_docs_is_run_checked_or_has_a_reason(monkeypatch, capsys):
    """`python -m mtdnn.*` and one-machine torchrun lines are the tests above; each `python scripts/X.py ...`
    line (hours of benchmarking) is parsed by X's own argument parser, which must accept it; every other line
    says why it is not run."""
    import argparse
    import runpy

    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(parse_args(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    scripts = 0
    for where, words in shell_lines():
        toolkit = words[:2] == ["python", "-m"] and words[2].startswith("mtdnn.")
        if toolkit or words[0] == "torchrun" and "--nnodes" not in words:
            continue  # the tests above
        if not_a_toolkit_command(words):
            continue
        assert words[0] == "python" and words[1].startswith("scripts/"), f"{where}: neither run nor explained"
        monkeypatch.setattr(sys, "argv", words[1:])
        with pytest.raises(Parsed):
            try:
                runpy.run_path(str(ROOT / words[1]), run_name="__main__")
            except SystemExit:
                raise AssertionError(f"{where}: {capsys.readouterr().err.strip()}") from None
        scripts += 1
    assert scripts >= 15
