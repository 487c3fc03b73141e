"""Ctrl-C: noted by our SIGINT handler and acted on at safe points (between training steps or evaluation
batches), so no KeyboardInterrupt lands inside library code (a writer queue, torch, a `__del__`) and leaves
it inconsistent."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator


class _Interrupts:
    # set by our SIGINT handler (plain flags: a handler must take no lock)
    # a Ctrl-C came: read at safe points and when an error surfaces (it may be that Ctrl-C, swallowed)
    seen = False
    # inside `interrupts_at_safe_points`: the first Ctrl-C waits for the next `stop_if_interrupted`
    held = False


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
def noting_interrupts() -> Iterator[None]:
    """Remember each Ctrl-C: code that catches the KeyboardInterrupt mid-call (torch reading a sequence, a
    worker pool) hands back some other error, which must still read as an interrupt. Leaves others'
    handlers alone."""
    ours = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
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
    """Inside the block (the training loop) a first Ctrl-C stops the run at the next
    `stop_if_interrupted()`, a second one at once. Raised anywhere, a KeyboardInterrupt lands in library
    code that it can leave inconsistent: one inside `Condition.notify` lost TensorBoard's writer thread a
    wake-up (closing it then waited out a 120 s timer), torch answered one with a ValueError, and Python
    ignores one raised in a `__del__` and runs on."""
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


def exit_interrupted() -> None:
    print(
        "error: interrupted; every checkpoint written so far is intact: run the same command with "
        "resume=auto to continue",
        file=sys.stderr,
    )
    sys.exit(130)
