"""`trainer.compile`: the shared encoder runs through torch.compile (TorchInductor), in place.

Only the encoder is compiled: it holds nearly all of a step's FLOPs, every task and every extra pass
(regularizers' perturbed forwards, balancers' per-task backwards, evaluation) goes through it, and the
heads stay eager, so a new task never recompiles. `nn.Module.compile` keeps the module and its parameter
names, so checkpoints, resume, exports and adapters see the same model as without compile. A graph that
cannot compile falls back to eager with one warning instead of failing the run.

Passes run under a TorchDispatchMode (the dropout-mask recording and replay of SMART, R3F, ALICE, FreeLB
and LNSR) are not traced by TorchDynamo: they run eager, correct but without the speed-up.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from mtdnn.core.errors import first_line

log = logging.getLogger(__name__)


def compile_failures() -> tuple[type[BaseException], ...]:
    """What TorchDynamo and TorchInductor raise when a graph cannot be traced or built (not user errors:
    a wrong shape or a missing key fails the same way eager, and is raised from there)."""
    from torch._dynamo import exc as dynamo_exc

    failures: list[type[BaseException]] = [dynamo_exc.TorchDynamoException]
    inductor_error = getattr(torch._inductor.exc, "InductorError", None)
    if inductor_error is not None:
        failures.append(inductor_error)
    return tuple(failures)


class CompiledOrEager:
    """The encoder's call: compiled until a graph fails to compile, then eager for the rest of the run."""

    def __init__(self, module: nn.Module, dynamic: bool | None):
        self.module = module
        self.compiled: Any = torch.compile(module._call_impl, dynamic=dynamic)
        self.failures = compile_failures()

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except self.failures as err:  # nothing ran yet: the same call runs eager below
                log.warning(
                    "trainer.compile: the encoder cannot be compiled here (%s: %s); it runs eager",
                    type(err).__name__,
                    first_line(err),
                )
                self.compiled = None
        return self.module._call_impl(*args, **kwargs)


def compile_encoder(encoder: nn.Module, dynamic: bool | None = None) -> None:
    """Compile `encoder` in place (its next call traces); `dynamic` as torch.compile's (None: a second
    sequence length makes the length symbolic, so bucketed batches share one graph)."""
    encoder._compiled_call_impl = CompiledOrEager(encoder, dynamic)


def uncompile(encoder: nn.Module) -> None:
    """Back to eager (after training: the report's evaluation should not trace again)."""
    encoder._compiled_call_impl = None


def is_compiled(encoder: nn.Module) -> bool:
    guard = getattr(encoder, "_compiled_call_impl", None)
    return isinstance(guard, CompiledOrEager) and guard.compiled is not None
