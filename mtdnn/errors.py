"""One error type for everything a user can get wrong, and the CLI wrapper that prints it cleanly."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


class MtdnnError(Exception):
    """A problem with the user's input: printed as plain lines, never as a traceback."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


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
def quiet_logger(name: str) -> Iterator[None]:
    """Silence a library's logger for a block whose failures we report ourselves."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def want_traceback() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("MTDNN_DEBUG") == "1"


def cli_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn MtdnnError into 'error: ...' on stderr and exit code 2, Ctrl-C into one line and exit code 130
    (tracebacks only when debugging)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MtdnnError as err:
            if want_traceback():
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            if want_traceback():
                raise
            print("error: interrupted; every checkpoint written so far is intact: run the same command with "
                  "resume=auto to continue", file=sys.stderr)
            sys.exit(130)

    return wrapper
