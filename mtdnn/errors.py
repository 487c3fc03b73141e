"""One error type for everything a user can get wrong, and the CLI wrapper that prints it cleanly."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterable, Iterator, TypeVar

from mtdnn.paths import cache_dir

T = TypeVar("T")


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
def quiet_logger(name: str) -> Iterator[None]:
    """Silence a library's logger for a block whose failures we report ourselves."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


_ENVIRONMENT = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
                errno.EDQUOT: "disk quota exceeded", errno.ENOTDIR: "a path component is a file, not a folder"}


def environment_fault(err: BaseException) -> str | None:
    """'cannot write <file>: <cause>' when `err` (or an exception it wraps) is a file system refusing a write
    (permissions, read-only, full disk): a fault of the machine, not of the code, so one line, not a traceback."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _ENVIRONMENT:
            where = f" {err.filename}" if err.filename else ""
            hint = "; set MTDNN_CACHE to a writable folder with free space" if err.filename and \
                str(err.filename).startswith(str(cache_dir())) else ""
            return f"cannot write{where}: {_ENVIRONMENT[err.errno]}{hint}"
        err = err.__cause__ or err.__context__
    return None


def want_traceback() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("MTDNN_DEBUG") == "1"


class _Interrupts:
    # set by our SIGINT handler (plain flags: a handler must take no lock)
    seen = False  # a Ctrl-C came: read at safe points and when an error surfaces (it may be that Ctrl-C, swallowed)
    held = False  # inside `interrupts_at_safe_points`: the first Ctrl-C waits for the next `stop_if_interrupted`


def interrupted() -> bool:
    """Whether a Ctrl-C came since the CLI started (only the CLI installs the handler that notes it)."""
    return _Interrupts.seen


def _note_interrupt(signum: int, frame) -> None:
    again = _Interrupts.seen
    _Interrupts.seen = True
    if _Interrupts.held and not again:
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def _noting_interrupts() -> Iterator[None]:
    """Remember each Ctrl-C: code that catches the KeyboardInterrupt mid-call (torch reading a sequence, a worker
    pool) hands back some other error, which must still read as an interrupt. Leaves others' handlers alone."""
    ours = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours:
        _Interrupts.seen = False
        signal.signal(signal.SIGINT, _note_interrupt)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def interrupts_at_safe_points() -> Iterator[None]:
    """Inside the block (the training loop) a first Ctrl-C stops the run at the next `stop_if_interrupted()`, a
    second one at once. Raised anywhere, a KeyboardInterrupt lands in library code that it can leave inconsistent:
    one inside `Condition.notify` lost TensorBoard's writer thread a wake-up (closing it then waited out a 120 s
    timer), torch answered one with a ValueError, and Python ignores one raised in a `__del__` and runs on."""
    before = _Interrupts.held
    _Interrupts.held = True
    try:
        yield
    finally:
        _Interrupts.held = before
    stop_if_interrupted()  # one that came after the block's last safe point


def stop_if_interrupted() -> None:
    """A safe point: raise the Ctrl-C held since the last one."""
    if _Interrupts.seen:
        raise KeyboardInterrupt


def _exit_interrupted() -> None:
    print("error: interrupted; every checkpoint written so far is intact: run the same command with "
          "resume=auto to continue", file=sys.stderr)
    sys.exit(130)


def cli_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn MtdnnError into 'error: ...' on stderr and exit code 2, Ctrl-C into one line and exit code 130
    (tracebacks only when debugging)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            with _noting_interrupts():
                return fn(*args, **kwargs)
        except KeyboardInterrupt:
            if want_traceback():
                raise
            _exit_interrupted()
        except Exception as err:  # noqa: BLE001  (a full disk or read-only folder is one line; bugs re-raise)
            if want_traceback():
                raise
            if interrupted():  # a Ctrl-C that came back as another error
                _exit_interrupted()
            line = str(err) if isinstance(err, MtdnnError) else environment_fault(err)
            if line is None:
                raise
            print(f"error: {line}", file=sys.stderr)
            sys.exit(2)

    return wrapper
