"""none: every task's loss counts once (times its task YAML `loss_weight`); with `trainer.tasks_per_step >=
2` the tasks' gradients are summed, as LibMTL's equal weighting (EW). The default: runs are what they were
without balancers, bit for bit."""

from __future__ import annotations

from dataclasses import dataclass

from mtdnn.balancers import Base, Setup


@dataclass
class Config:
    pass


def build(config: Config, setup: Setup) -> Base:
    return Base(config, setup)
