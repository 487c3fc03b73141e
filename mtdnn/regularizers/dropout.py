"""Dropout masks replayed across passes: a regularizer that compares a clean pass with a perturbed one
wants the difference to come from the perturbation, not from fresh dropout noise. `DropoutReplay` records
the masks the clean pass draws (a TorchDispatchMode over aten's bernoulli_ on CPU, native_dropout on GPU)
and hands them to later passes; `RngSnapshot` is the older way (replay the RNG state), kept for code that
wants it."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class RngSnapshot:
    """The RNG state before the clean forward. Replaying it makes a second forward draw the same dropout
    masks, so a divergence between two passes measures the input change, not dropout noise."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self):
        cpu_now = torch.get_rng_state()
        cuda_now = torch.cuda.get_rng_state(self.device) if self.cuda is not None else None
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)
        try:
            yield
        finally:  # the main stream continues as if the replayed pass never drew anything
            torch.set_rng_state(cpu_now)
            if cuda_now is not None:
                torch.cuda.set_rng_state(cuda_now, self.device)


_aten = torch.ops.aten


_BERNOULLI = _aten.bernoulli_.float  # what dropout draws on CPU


_FUSED_DROPOUT = _aten.native_dropout.default  # what dropout calls on GPU


class _MaskRecorder(TorchDispatchMode):
    """Keeps a copy of every dropout mask drawn under it (as bool: masks are exactly 0/1)."""

    def __init__(self, masks: list[torch.Tensor]):
        super().__init__()
        self.masks = masks

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is _BERNOULLI:
            self.masks.append(out.bool())  # copy now: dropout scales this tensor in place next
        elif func is _FUSED_DROPOUT:
            self.masks.append(out[1])
        return out


class _MaskReplayer(TorchDispatchMode):
    """Serves the recorded masks, in order, instead of drawing new ones (drawing is the slow part on CPU).
    On CUDA the fused dropout still runs (its mask discarded): it advances the generator's Philox offset
    exactly as the clean pass did, so kernels that draw inside themselves (SDPA's attention dropout) see
    the same offsets, hence the same masks, as in the clean pass."""

    def __init__(self, masks: list[torch.Tensor]):
        super().__init__()
        self.masks = masks
        self.next = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func not in (_BERNOULLI, _FUSED_DROPOUT) or self.next >= len(self.masks):
            return func(*args, **(kwargs or {}))
        mask = self.masks[self.next]
        self.next += 1
        if func is _BERNOULLI:
            return args[0].copy_(mask)
        if args[0].is_cuda:
            func(*args, **(kwargs or {}))  # the draw itself is discarded; its offset advance is what counts
        scale = 1.0 / (1.0 - args[1]) if args[1] < 1 else 0.0
        return args[0] * mask * scale, mask


class DropoutReplay:
    """Lets later forward passes reuse the dropout masks of the clean pass, so that the divergence between
    two passes measures the input (or weight) change and not two draws of dropout. Masks that surface as
    aten ops are recorded and served back (cheaper than drawing them again); fused kernels that draw
    internally (GPU attention) get the same masks because the RNG state is replayed as well."""

    def __init__(self, device: torch.device):
        self.rng = RngSnapshot(device)
        self.masks: list[torch.Tensor] = []

    @contextmanager
    def record(self):
        with _MaskRecorder(self.masks):
            yield

    @contextmanager
    def replay(self):
        with self.rng.replay(), _MaskReplayer(self.masks):
            yield
