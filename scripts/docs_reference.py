"""The reference pages of the docs site, generated from the typed schemas (never typed by hand):

    docs/reference/configuration.md   every run setting: conf/train.yaml's schema, each regularizer, balancer
                                      and adapter's own settings
    docs/reference/task-yaml.md       every task-YAML key, and each head kind's own keys
    docs/reference/commands.md        every command's arguments (what `--help` prints)
    docs/reference/run-folder.md      the files of a run folder and of an ONNX export folder (the docstrings
                                      of the modules that write them)
    docs/reference/errors.md          every error message the package can give, as written in its source

    python scripts/docs_reference.py            # write the pages
    python scripts/docs_reference.py --check    # exit 1 if a page is not what the schemas give

Each line is a field's name, type, default and the comment beside it in its dataclass (mtdnn.core.typed's
field_notes); tests/test_docs.py fails when a page is stale or a field has no meaning written.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing
from pathlib import Path

from mtdnn.core import plugins
from mtdnn.core.typed import field_notes

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "reference"
FAMILIES = (  # (package, marker, what the user writes to pick a member, where its settings go)
    ("mtdnn.regularizers", "build", "regularizer={name}", "regularizer.{name}."),
    ("mtdnn.balancers", "build", "balancer={name}", "balancer."),
    ("mtdnn.model.adapters", "build", "adapter={name}", "adapter."),
)
COMMANDS = (  # module whose main() reads this schema, the schema's module and name
    ("mtdnn.evaluate", "mtdnn.evaluate", "EvaluateConfig"),
    ("mtdnn.predict", "mtdnn.predict", "PredictConfig"),
    ("mtdnn.export", "mtdnn.export", "ExportConfig"),
    ("mtdnn.report", "mtdnn.report", "ReportConfig"),
)


def type_name(tp: typing.Any) -> str:
    """`Optional[int]` as `int or null`, `list[str]` as is."""
    text = (tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))).replace("typing.", "")
    if text.startswith("Optional[") and text.endswith("]"):
        return f"{text[len('Optional[') : -1]} or null"
    return text


def default_of(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return "required" if repr(field.default) == "'???'" else f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def rows(schema: type, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    notes = field_notes(schema)
    return [
        f"| `{prefix}{f.name}` | {type_name(f.type)} | {default_of(f)} | {notes.get(f.name, '')} |"
        for f in dataclasses.fields(schema)
        if f.name not in skip and f.init
    ]


def table(schema: type, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    return ["| key | type | default | meaning |", "|---|---|---|---|", *rows(schema, prefix, skip), ""]


def first_line(module) -> str:
    return (module.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def configuration() -> str:
    from mtdnn.core import config

    nested = ("encoder", "sampler", "trainer", "distill", "stages")
    lines = [
        "# Run configuration",
        "",
        "Generated from the typed schemas (`python scripts/docs_reference.py`). A setting is given on the "
        "command line as `key=value` (`trainer.lr=3e-5`), or in a YAML group chosen with `group=option` "
        "(`encoder=roberta-base`). A mistyped value or an unknown key is refused before any work.",
        "",
        "## Top level (`conf/train.yaml`)",
        "",
        *table(config.TrainConfig, skip=nested),
        "## `encoder.*`",
        "",
        "Options: `encoder=minilm` (default), `bert-base-uncased`, `roberta-base`, `deberta-v3-base`, and "
        "`tiny`: a random, untrained 2-layer BERT (hidden size 32) with a tokenizer learned from the task "
        "texts, for tests and smoke runs only.",
        "",
        *table(config.EncoderConfig, "encoder."),
        "### `encoder.artifact.*`",
        "",
        *table(config.ArtifactConfig, "encoder.artifact."),
        "## `sampler.*`",
        "",
        *table(config.SamplerConfig, "sampler."),
        "## `trainer.*`",
        "",
        *table(config.TrainerConfig, "trainer."),
        "## `distill.*`",
        "",
        *table(config.DistillConfig, "distill."),
        "## `stages[]`",
        "",
        *table(config.StageConfig, "stages[]."),
    ]
    for package, marker, pick, prefix in FAMILIES:
        lines += [f"## `{pick.split('=')[0]}=`: {package.rsplit('.', 1)[-1]}", ""]
        for name in plugins.names(package, marker):
            module = plugins.load(package, marker, name)
            lines += [f"### `{pick.format(name=name)}`", "", first_line(module), ""]
            schema = getattr(module, "Config", None)
            if schema is not None and dataclasses.fields(schema):
                lines += table(schema, prefix.format(name=name))
            else:
                lines += ["No settings of its own.", ""]
    return "\n".join(lines).rstrip() + "\n"


def task_yaml() -> str:
    from mtdnn import kinds
    from mtdnn.data import tasks

    lines = [
        "# Task YAML",
        "",
        "Generated from the typed schemas (`python scripts/docs_reference.py`). One YAML file per task, "
        "named after it, in `tasks/` or a folder given with `task_dirs=[...]`; paths inside are relative to "
        "the file. See [Adding a task](../guide/tasks.md) for examples.",
        "",
        "## Every task",
        "",
        *table(tasks.TaskSpec, skip=("file",)),
        "## `source.*`",
        "",
        *table(tasks.SourceSpec, "source."),
        "## `columns.*`",
        "",
        *table(tasks.ColumnsSpec, "columns."),
        "## `submission.*`",
        "",
        *table(tasks.SubmissionSpec, "submission."),
        "## Each head kind's own keys",
        "",
    ]
    for name in kinds.available():
        kind = kinds.get(name)
        lines += [f"### `head: {name}`", "", f"{kind.summary[0].upper()}{kind.summary[1:]}.", ""]
        if dataclasses.fields(kind.Options):
            lines += table(kind.Options)
        else:
            lines += ["No keys of its own.", ""]
    return "\n".join(lines).rstrip() + "\n"


def commands() -> str:
    from mtdnn.core.commands import command_help

    lines = [
        "# Commands",
        "",
        "Generated from the commands' schemas (`python scripts/docs_reference.py`); `python -m <command> "
        "--help` prints the same. Training (`python -m mtdnn.train`, `python -m mtdnn.distill`, `python -m "
        "mtdnn.affinity`) takes the [run configuration](configuration.md) as Hydra overrides.",
        "",
    ]
    for command, module, schema in COMMANDS:
        help_text = command_help(getattr(importlib.import_module(module), schema))
        lines += [f"## `python -m {command}`", "", "```text", help_text, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def run_folder() -> str:
    import inspect

    from mtdnn.runs import folder
    from mtdnn.serving import onnx

    return "\n".join(
        [
            "# Run folder",
            "",
            "Generated from the modules that write these folders (`python scripts/docs_reference.py`). A run "
            "folder is all that evaluate, predict, export, resume and `load_run` need.",
            "",
            "## A training run (`output_dir=...`)",
            "",
            "```text",
            inspect.getdoc(folder),
            "```",
            "",
            "## An ONNX export (`python -m mtdnn.export ... format=onnx`)",
            "",
            "```text",
            inspect.getdoc(onnx),
            "```",
            "",
        ]
    )


def message_template(node) -> str | None:
    """A message argument as its reader sees it: literal text, each interpolated value as {expression}."""
    import ast

    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = [
            v.value if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}" for v in node.values
        ]
        return "".join(parts)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # "..." + f"..."
        left, right = message_template(node.left), message_template(node.right)
        return left + right if left is not None and right is not None else None
    return None


def error_messages() -> list[tuple[str, int, str]]:
    """(module, line, message) of every MtdnnError raised and every problem collected (problems.append)."""
    import ast

    found = []
    for path in sorted((ROOT / "mtdnn").rglob("*.py")):
        module = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            raised = isinstance(func, ast.Name) and func.id == "MtdnnError"
            collected = (
                isinstance(func, ast.Attribute)
                and func.attr == "append"
                and isinstance(func.value, ast.Name)
                and func.value.id == "problems"
            )
            if (raised or collected) and (text := message_template(node.args[0])) is not None:
                found.append((module, node.lineno, text))
    return found


def errors() -> str:
    lines = [
        "# Error messages",
        "",
        "Generated from the source (`python scripts/docs_reference.py`): every message the toolkit gives "
        "for a bad input, as written where it is raised, `{...}` standing for the value filled in. Each ends "
        "a command with one `error:` line and exit code 2 (several problems found together are listed under "
        "one headline); `MTDNN_DEBUG=1` shows the traceback. What to do about the common ones: "
        "[Troubleshooting](../troubleshooting.md).",
        "",
    ]
    by_module: dict[str, list[tuple[int, str]]] = {}
    for module, line, text in error_messages():
        by_module.setdefault(module, []).append((line, text))
    for module, entries in by_module.items():
        lines += [f"## `{module}`", "", "| message |", "|---|"]  # no line numbers: every edit would move them
        for _, text in sorted(entries):
            shown = " ".join(text.split()).replace("|", "\\|").replace("`", "'")
            lines.append(f"| `{shown}` |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def pages() -> dict[Path, str]:
    return {
        OUT / "configuration.md": configuration(),
        OUT / "task-yaml.md": task_yaml(),
        OUT / "commands.md": commands(),
        OUT / "run-folder.md": run_folder(),
        OUT / "errors.md": errors(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for path, text in pages().items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(f"stale: {', '.join(stale)}; run python scripts/docs_reference.py", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
