"""What every `python -m mtdnn.<command>` shares: `key=value` arguments read onto a typed dataclass, and
the wrapper that turns a user's mistake into one `error:` line (exit 2) and Ctrl-C into one line (exit
130)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtdnn.core.errors import MtdnnError, config_error_line, environment_fault
from mtdnn.core.interrupts import exit_interrupted, interrupted, noting_interrupts

T = TypeVar("T")


def want_traceback() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("MTDNN_DEBUG") == "1"


def cli_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn MtdnnError into 'error: ...' on stderr and exit code 2, Ctrl-C into one line and exit code 130
    (tracebacks only when debugging)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with noting_interrupts():
                return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if want_traceback():
                raise
            exit_interrupted()
        except Exception as err:  # noqa: BLE001  (a full disk or read-only folder is one line; bugs re-raise)
            if want_traceback():
                raise
            if interrupted():  # a Ctrl-C that came back as another error
                exit_interrupted()
            line = str(err) if isinstance(err, MtdnnError) else environment_fault(err)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            sys.exit(2)

    return wrapper


HELP = ("-h", "--help")
DOCS = "docs/guide/runs.md (and `mkdocs serve`)"


def parse_args(schema: type[T], argv: list[str]) -> T:
    """`key=value ...` onto a dataclass, with the same typed checking as the Hydra configs; `--help` prints
    the command's arguments and exits."""
    if any(a in HELP for a in argv):
        print(command_help(schema))
        sys.exit(0)
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise MtdnnError(f"arguments are key=value; cannot read: {' '.join(bad)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(argv))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise MtdnnError(f"{missing[0]}: required (pass {missing[0]}=...)")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise MtdnnError(config_error_line(err)) from None


def command_help(schema: type) -> str:
    """The command's docstring, then each argument: its default and the comment beside it in the schema."""
    import dataclasses

    from mtdnn.core.typed import field_notes

    module = sys.modules[schema.__module__]
    comments = {k: v for k, v in field_notes(schema).items() if v}
    lines = [(module.__doc__ or "").strip(), "", "arguments (key=value):"]
    for field in dataclasses.fields(schema):
        default = "required" if field.default is MISSING else f"default {field.default!r}"
        lines.append(
            f"  {field.name:<16} {default}{'; ' + comments[field.name] if field.name in comments else ''}"
        )
    lines += ["", f"docs: {DOCS}"]
    return "\n".join(lines)


def argv(positional: str | None = None) -> list[str]:
    """The command's key=value arguments; with `positional`, a first argument without '=' is that key's
    value (`python -m mtdnn.export RUN_DIR task=...`)."""
    args = sys.argv[1:]
    if any(a in HELP for a in args):
        return ["--help"]
    if positional and args and "=" not in args[0]:
        return [f"{positional}={args[0]}", *args[1:]]
    return args
