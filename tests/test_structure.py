"""The package's shape: no import cycles (every import counts: inside functions and `if TYPE_CHECKING:`
blocks too), head kinds found without a central list, no private names or modules used outside their own
place."""

from __future__ import annotations

import ast
from pathlib import Path

import mtdnn
from mtdnn import kinds

PACKAGE = Path(mtdnn.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """mtdnn modules `path` imports (a `from pkg import name` of a submodule counts as importing it)."""
    tree = ast.parse(path.read_text())
    # a module's __getattr__ (PEP 562, `from mtdnn import load_run`) imports on first access, after loading
    skipped = {
        id(node)
        for block in tree.body
        if isinstance(block, ast.FunctionDef) and block.name == "__getattr__"
        for node in ast.walk(block)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} & known
            found |= {f"{node.module}.{a.name}" for a in node.names} & known
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert "mtdnn.kinds.span" in graph and "mtdnn.distill.distiller" in graph  # the walk sees subpackages
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = import_graph()
    # the type-only cycle the kinds' TaskSpec Protocol removed
    graph["mtdnn.kinds"] = graph["mtdnn.kinds"] | {"mtdnn.data.tasks"}
    assert find_cycle(graph) is not None


def test_every_kind_module_is_found_and_complete():
    names = kinds.available()
    assert {"classification", "regression", "span", "ranking", "tagging", "multilabel"} <= set(names)
    for name in names:
        kind = kinds.get(name)
        assert kind.name == name and kind.metrics and set(kind.default_metrics) <= set(kind.metrics)
        for method in ("bad_rows", "encode", "head", "evaluate"):  # what the base class cannot default
            assert getattr(type(kind), method) is not getattr(kinds.Kind, method), (name, method)


def test_nothing_outside_the_kinds_names_a_kind():
    """The rest of the package asks the kind; it never branches on a kind's name."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "kinds" in path.relative_to(PACKAGE).parts:
            continue
        # every string constant, however quoted (docstrings and f-string parts are prose, not branches)
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        constants = {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        }
        offenders += [f"{path.name}: {name}" for name in kinds.available() if name in constants]
    assert offenders == []


def test_commands_import_no_private_helpers():
    private = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mtdnn"):
                private += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                    and not a.name.startswith("__")
                    and not node.module.startswith("mtdnn.kinds")
                ]  # kinds share kinds/_sentence.py
    assert private == []


def test_no_private_module_is_imported_from_outside_its_package():
    """`_name.py` is its package's own helper (kinds/_bi.py, kinds/_sentence.py): others ask the package."""
    offenders = []
    for importer, imported in ((a, b) for a, targets in import_graph().items() for b in targets):
        package, _, leaf = imported.rpartition(".")
        inside = importer == package or importer.startswith(package + ".")
        if leaf.startswith("_") and not leaf.startswith("__") and not inside:
            offenders.append(f"{importer} -> {imported}")
    assert offenders == []


def test_every_script_imports():
    """Scripts use the library's API; a rename there must not leave a script broken until someone runs it."""
    import importlib.util
    import sys

    folder = PACKAGE.parent / "scripts"
    scripts = sorted(folder.glob("*.py"))
    assert scripts
    sys.path.insert(0, str(folder))  # as when a script runs: its folder is on the path
    try:
        for path in scripts:
            spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up there
            try:
                spec.loader.exec_module(module)
            finally:
                del sys.modules[spec.name]
    finally:
        sys.path.remove(str(folder))


def test_the_train_command_reaches_its_config_checks_without_the_heavy_libraries():
    """`python -m mtdnn.train task=typo` should answer in seconds: torchmetrics (which pulls in scipy,
    matplotlib and transformers), transformers, datasets and peft load on first use, not when the command
    starts."""
    import subprocess
    import sys

    probe = (
        "import sys, mtdnn.train; heavy = ('torchmetrics', 'transformers', 'datasets', 'peft', 'scipy', "
        "'matplotlib'); print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def _functions():
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path, node


def test_no_function_takes_more_than_eight_parameters():
    """State is owned (a Run, a Resumable), not passed around parameter by parameter."""
    too_many = []
    for path, fn in _functions():
        args = fn.args
        names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        count = len([n for n in names if n not in ("self", "cls")])
        if count > 8:
            too_many.append(f"{path.relative_to(PACKAGE)}:{fn.name} ({count})")
    assert too_many == []


def test_no_function_of_the_training_path_is_longer_than_sixty_lines():
    """The loop and what builds it read top to bottom in short, named steps."""
    training = [PACKAGE / "train.py", *(PACKAGE / "training").glob("*.py")]
    long = [
        f"{path.name}:{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for path, fn in _functions()
        if path in training and fn.end_lineno - fn.lineno + 1 > 60
    ]
    assert long == []


def test_every_console_script_names_a_function_that_exists():
    import importlib

    import tomllib

    scripts = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["scripts"]
    for name, target in scripts.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function, None)), f"{name} = {target}"
