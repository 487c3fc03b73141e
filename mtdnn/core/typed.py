"""Build typed dataclasses from plain YAML dicts, collecting every problem instead of stopping at the
first.

OmegaConf's structured configs stop at the first bad field; a user who wrote five typos in a task file
should learn about all five at once, each with the file and the dotted field name.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Union

_MISSING = dataclasses.MISSING


def suggest(word: Any, choices: typing.Iterable[Any]) -> str:
    """' (did you mean ...?)' for near misses; any value may come in (a YAML list can hold numbers or
    nulls)."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str, problems: list[str]) -> Any:
    """Check `value` against the annotation `tp`; return it (converted where lossless) or record a problem."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], where, problems)
        for candidate in inner:  # first alternative that accepts the value without complaint
            trial: list[str] = []
            out = _coerce(value, candidate, where, trial)
            if not trial:
                return out
        problems.append(f"{where}: expected {' or '.join(_type_name(a) for a in inner)}, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where, problems)
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {value!r}")
            return []
        return (
            [_coerce(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value)] if args else value
        )
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return {}
        key_tp, val_tp = args or (Any, Any)
        return {
            _coerce(k, key_tp, f"{where}", problems): _coerce(v, val_tp, f"{where}.{k}", problems)
            for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        problems.append(f"{where}: expected float, got {value!r}")
        return None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads labels such as 0/1 as numbers; they are names here
    if tp in (int, bool, str) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        problems.append(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return None
    return value


def build(cls: type, data: Any, where: str, problems: list[str]):
    """Instantiate dataclass `cls` from `data`; every problem is appended to `problems` as 'where.field:
    ...'."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {data!r}")
        data = {}
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{where}." if where and not where.endswith(": ") else where
    for key in data:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown field{suggest(str(key), fields)}")
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{prefix}{name}", problems)
        elif field.default is _MISSING and field.default_factory is _MISSING:
            problems.append(f"{prefix}{name}: required field is missing")
            kwargs[name] = None
    return cls(**kwargs)


def field_notes(schema: type) -> dict[str, str]:
    """Each field's one-line meaning, from the comment beside it in the dataclass's source (or the comment
    lines just above it): what `--help` and the generated reference print."""
    import inspect

    notes, above = {}, []
    for base in reversed(schema.__mro__):  # a subclass's comment wins over its base's
        if dataclasses.is_dataclass(base) and base is not schema:
            notes.update({k: v for k, v in field_notes(base).items() if v})
    for line in inspect.getsource(schema).splitlines()[1:]:
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# ").strip())
            continue
        name, colon, rest = text.partition(":")
        if colon and name.isidentifier() and not text.startswith(("def ", "class ", "@")):
            beside = rest.split("#", 1)[1].strip() if "#" in rest else ""
            notes[name] = " ".join([*above, beside]).strip() or notes.get(name, "")
        above = []
    return notes
