"""One error type for everything a user can get wrong, and the CLI wrapper that prints it cleanly."""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from mtdnn.core.paths import cache_dir


class MtdnnError(Exception):
    """A problem with the user's input: printed as plain lines, never as a traceback."""

    def __init__(self, problems: str | Iterable[str]):
        given = [problems] if isinstance(problems, str) else list(problems)
        self.problems = [_one_line(p) for p in given]
        super().__init__("\n".join(self.problems))


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines (and a terminal) breaks on


def _one_line(problem: str) -> str:
    """A problem quotes the user's values, which may hold line breaks: escape them, so it stays one line."""
    return "".join(c.encode("unicode_escape").decode() if c in _LINE_BREAKS else c for c in problem)


def raise_if(problems: list[str], headline: str) -> None:
    """Report every collected problem at once, so the user fixes them in one pass."""
    if len(problems) == 1:
        raise MtdnnError(problems)
    if problems:
        raise MtdnnError([f"{headline} ({len(problems)} problems):"] + [f"  - {p}" for p in problems])


def first_line(err: BaseException) -> str:
    """The headline of a library's exception (their messages often run to many lines)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def config_error_line(err: BaseException) -> str:
    """An OmegaConf error as 'dotted.key: first line of the message'."""
    key = getattr(err, "full_key", None)
    return f"{key + ': ' if key else ''}{first_line(err)}"


@contextlib.contextmanager
def reading_saved(path: Path, setting: str = "run_dir") -> Iterator[None]:
    """A saved file or folder (a run's, an export's) read through a library: missing or damaged, it is one
    line naming it, whatever the library raised (yaml, json, tokenizers, transformers, safetensors, onnx)."""
    try:
        yield
    except (MtdnnError, KeyboardInterrupt):
        raise
    except Exception as err:  # noqa: BLE001  (each reader has its own error types; the file is what matters)
        raise damaged(path, setting, f"{type(err).__name__}: {first_line(err)}") from None


def damaged(path: Path, setting: str, cause: str) -> MtdnnError:
    state = "is missing" if not path.exists() else "cannot be read"
    return MtdnnError(
        f"{setting}: {path} {state} ({cause}); the folder is damaged: restore it from a copy, or train or "
        "export it again"
    )


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Silence a library's logger for a block whose failures we report ourselves."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


_ENVIRONMENT = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a path component is a file, not a folder",
}


def environment_fault(err: BaseException) -> str | None:
    """'cannot write <file>: <cause>' when `err` (or an exception it wraps) is a file system refusing a
    write (permissions, read-only, full disk): a fault of the machine, not of the code, so one line, not a
    traceback."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _ENVIRONMENT:
            where = f" {err.filename}" if err.filename else ""
            hint = (
                "; set MTDNN_CACHE to a writable folder with free space"
                if err.filename and str(err.filename).startswith(str(cache_dir()))
                else ""
            )
            return f"cannot write{where}: {_ENVIRONMENT[err.errno]}{hint}"
        err = err.__cause__ or err.__context__
    return None
