"""Plug-in families found without a central list: a member of a family is a public module of the family's
package that defines the family's marker name at its top level (a head kind's `KIND`, a regularizer's
`build`, ...).

Every family (kinds, regularizers, balancers, adapters, export formats) is discovered here, one way.
Modules are recognised from their source, so listing a family imports none of them (the CLI's config checks
stay fast, and a family's helper modules beside its members cost nothing); `load` imports one member when
it is used."""

from __future__ import annotations

import ast
import functools
import importlib
import pkgutil
from pathlib import Path
from types import ModuleType


def _defines(path: Path, marker: str) -> bool:
    """Whether the module's source binds `marker` at its top level (an assignment, a def or a class)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == marker:
            return True
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == marker for t in targets):
            return True
    return False


@functools.cache
def names(package: str, marker: str) -> tuple[str, ...]:
    """The family's member names, sorted: the public modules of `package` that define `marker`."""
    folder = Path(importlib.import_module(package).__file__).parent
    return tuple(
        sorted(
            m.name
            for m in pkgutil.iter_modules([str(folder)])
            if not m.name.startswith("_") and not m.ispkg and _defines(folder / f"{m.name}.py", marker)
        )
    )


def load(package: str, marker: str, name: str) -> ModuleType:
    """The member module `name`; KeyError when the family has no such member."""
    if name not in names(package, marker):
        raise KeyError(name)
    return importlib.import_module(f"{package}.{name}")
