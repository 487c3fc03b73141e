"""The examples and snippets the docs show, run: one example task per head kind in examples/tasks/, trained
with the command the docs give; every Python block of README.md and docs/ executed against that run; the
prediction records each kind's page shows have the keys predict() gives."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import compose_train, run_as_a_user

from mtdnn import kinds
from mtdnn.train import run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "tasks"
DOCS = ROOT / "docs"


def example_specs() -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))}


def blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), re.S)


def documented_all_kinds_command() -> list[str]:
    """The overrides of the one `python -m mtdnn.train` line of docs/kinds/index.md."""
    (line,) = [b.strip() for b in blocks(DOCS / "kinds" / "index.md", "bash")]
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "mtdnn.train"], line
    return words[3:]


@pytest.fixture(scope="module")
def examples_run(tmp_path_factory) -> Path:
    """The docs' all-six-kinds command, as written, except that the output folder is a temporary one."""
    out = tmp_path_factory.mktemp("docs") / "runs" / "examples"
    overrides = [
        w.replace("task_dirs=[examples/tasks]", f"task_dirs=[{EXAMPLES}]")
        for w in documented_all_kinds_command()
        if not w.startswith("output_dir=")
    ]
    run(compose_train([*overrides, "trainer.progress_bar=false"]), out)
    return out


def test_every_head_kind_has_an_example_task_and_a_page_that_shows_it():
    heads = {spec["head"]: name for name, spec in example_specs().items()}
    assert set(heads) == set(kinds.available())
    nav = (ROOT / "mkdocs.yml").read_text()
    for kind, task in heads.items():
        page = DOCS / "kinds" / f"{kind}.md"
        assert f'--8<-- "examples/tasks/{task}.yaml"' in page.read_text(), page
        assert f"kinds/{kind}.md" in nav
        assert f"task={task} " in page.read_text()  # its own training command


def test_the_documented_command_trains_every_example_and_scores_each_task(examples_run):
    summary = json.loads((examples_run / "summary.json").read_text())
    assert set(summary["validation"]) == set(example_specs())
    for task, scores in summary["validation"].items():
        spec = example_specs()[task]
        assert list(scores) == spec["metrics"], task
        assert all(math.isfinite(v) for v in scores.values()), (task, scores)


def test_each_kind_page_shows_the_record_keys_predict_gives(examples_run):
    from mtdnn import load_run

    model = load_run(examples_run)
    for name, spec in example_specs().items():
        (shown,) = [json.loads(b) for b in blocks(DOCS / "kinds" / f"{spec['head']}.md", "json")]
        rows = json.loads(json.dumps(first_validation_row(spec)))
        (record,) = model.predict(name, [rows])
        assert set(record) == set(shown), (name, sorted(record), sorted(shown))


def test_every_file_of_a_run_folder_is_in_the_reference(examples_run):
    """Each entry of the run folder matches an entry the reference lists (`best_<task>.json` stands for every
    task's file, `checkpoints/step_N/` for the checkpoints folder)."""
    page = (DOCS / "reference" / "run-folder.md").read_text()
    listed = [line.split()[0] for line in page.splitlines() if re.match(r"^    [\w.<]", line)]
    patterns = [re.sub(r"<\w+>|_N", ".+", entry.split("/")[0]) for entry in listed]
    for path in examples_run.iterdir():
        assert any(re.fullmatch(p, path.name) for p in patterns), (
            f"{path.name} is not in the run-folder reference"
        )


def first_validation_row(spec: dict) -> dict:
    path = EXAMPLES / spec["source"]["splits"]["validation"]
    if path.suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path).iloc[0].to_dict()
    return json.loads(path.read_text().splitlines()[0])


# The docs name their own run folders and tasks; here they are the examples' run and tasks.
SUBSTITUTE = {'"runs/mine"': "RUN", '"runs/examples"': "RUN", '"my_task"': '"example_sentiment"'}


def python_snippets() -> list[tuple[str, str]]:
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for i, code in enumerate(blocks(path, "python")):
            if code.lstrip().startswith("--8<--"):  # a shipped module included whole: tested as code
                continue
            found.append((f"{path.relative_to(ROOT)}#{i}", code))
    return found


@pytest.mark.parametrize("where, code", python_snippets(), ids=[w for w, _ in python_snippets()])
def test_every_python_snippet_in_the_docs_runs(examples_run, where, code):
    import ast

    for name, value in SUBSTITUTE.items():
        code = code.replace(name, value)
    tree = ast.parse(code)
    *body, last = tree.body
    namespace = {"RUN": str(examples_run)}
    exec(compile(ast.Module(body, []), where, "exec"), namespace)
    assert isinstance(last, ast.Expr), f"{where}: the last line shows a result"
    result = eval(compile(ast.Expression(last.value), where, "eval"), namespace)
    assert isinstance(result, list) and result and all(isinstance(r, dict) for r in result), (where, result)


def test_there_are_python_snippets_to_run():
    where = [w for w, _ in python_snippets()]
    assert any(w.startswith("README.md") for w in where) and len(where) >= 3, where


@pytest.mark.slow  # six trainings and predictions through the real commands (~2 min)
@pytest.mark.parametrize("kind", sorted(kinds.available()))
def test_each_kind_page_s_commands_run_as_written(tmp_path, kind):
    """The bash block of each head kind's page, line by line as a user pastes it, in a folder holding
    `examples/`: the training writes its run, predict writes the records the page names."""
    page = DOCS / "kinds" / f"{kind}.md"
    (block,) = blocks(page, "bash")
    for line in block.strip().splitlines():
        done = run_as_a_user(tmp_path, shlex.split(line))
        assert done.returncode == 0, f"{page.name}: {line}\n{done.stderr[-2000:]}"
    (written,) = re.findall(r"`(runs/[^`]+\.jsonl)`", page.read_text())
    records = [json.loads(x) for x in (tmp_path / written).read_text().splitlines()]
    assert len(records) == 20 and all(r["id"] is not None for r in records)
