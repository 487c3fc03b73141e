"""Data parallelism under torchrun: `torchrun --nproc_per_node N -m mtdnn.train ...` (gloo on CPU, NCCL on
GPUs).

Every rank builds the same model from the same seed and draws the same task at every step (the sampler is
seeded identically); each task's batch plan is the single-process plan with an N times larger batch, and
rank r takes its share of every batch (rows r, r+N, ...). After the micro-batches of a step, gradients are
averaged across ranks, with each rank's loss weighted by its share of the rows, so the update equals the
single-process update with the N times larger batch. This is what DistributedDataParallel computes; the DDP
wrapper itself is not used because regularizers run several forward passes per backward (SMART, ALICE,
FreeLB), which its reducer does not allow, and one all-reduce per optimizer step is what gradient
accumulation needs anyway. Evaluation is sharded too: each rank predicts every N-th row (of the rows sorted
by length) and the outputs are gathered back into row order, so every example is predicted exactly once and
every rank sees the same metrics. Only rank 0 writes the run folder, logs and checkpoints.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from mtdnn.core.errors import MtdnnError


class Distributed:
    """This process's place in the job; a single process is rank 0 of 1 and every method is a no-op."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            # rank 0 may be evaluating meanwhile
            dist.init_process_group(backend, timeout=timedelta(minutes=60))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per local rank; CPU stays CPU."""
        if self.active and requested.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return requested

    def broadcast(self, value):
        """Rank 0's value on every rank (e.g. the run folder, which Hydra may name differently per
        process)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def shard(self, rows: list) -> tuple[list, float]:
        """This rank's rows of a global batch and the weight that makes rank means average to the global
        mean."""
        if not self.active:
            return rows, 1.0
        if len(rows) < self.world:  # too few rows to split: every rank takes them all
            return rows, 1.0
        mine = rows[self.rank :: self.world]
        return mine, self.world * len(mine) / len(rows)

    @torch.no_grad()
    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """One all-reduce of every gradient, flattened (params unused this step, e.g. other tasks' heads,
        have no gradient on any rank: every rank trained the same task)."""
        if not self.active:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
            grad.copy_(chunk.view_as(grad))

    def average(self, values: dict[str, float]) -> dict[str, float]:
        """Logged numbers as the whole job's (rank means weighted by their rows; see shard)."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world for k, v in zip(keys, tensor)}

    @contextmanager
    def sharded_inference(self):
        """Within it, mtdnn.evaluation.engine.forward_rows splits its rows across the ranks and gathers the
        outputs."""
        global _INFERENCE
        _INFERENCE = self if self.active else None
        try:
            yield
        finally:
            _INFERENCE = None

    def gather_rows(self, mine: dict) -> dict:
        """{row: value} of every rank merged (each row was computed by exactly one rank)."""
        parts: list = [None] * self.world
        dist.all_gather_object(parts, mine)
        merged = {}
        for part in parts:
            merged.update(part)
        return merged

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


_INFERENCE: Distributed | None = None  # set only inside Distributed.sharded_inference()


def inference_shard() -> Distributed | None:
    return _INFERENCE


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise MtdnnError(f"trainer.device: '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MtdnnError(f"trainer.device: '{name}' requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise MtdnnError(
            f"trainer.device: '{name}' but this machine has {torch.cuda.device_count()} CUDA devices"
        )
    return device
