"""adapter=bottleneck: plain residual bottleneck adapters after every Transformer layer, one set per task
(Houlsby et al. 2019 / Pfeiffer et al. 2020 style), h <- h + W_up act(W_down h + b_down) + b_up, with the
encoder frozen except its LayerNorms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtdnn.model.adapters._hooks import Adapters, bottleneck


@dataclass
class Config:
    kind: str = "bottleneck"  # the method (set by adapter=<kind>)
    bottleneck: int = 64  # r: the adapter's inner size
    train_layer_norms: bool = True  # the encoder's LayerNorms stay trainable (as in both papers)


def problems(cfg: Config) -> list[str]:
    return [f"adapter.bottleneck: must be >= 1, got {cfg.bottleneck}"] if cfg.bottleneck < 1 else []


class TaskAdapters(nn.Module):
    """Plain adapters: for each task and layer its own down/up projections."""

    def __init__(self, tasks: list[str], layers: int, hidden: int, cfg: Config):
        super().__init__()
        r = cfg.bottleneck
        self.down_w = nn.ParameterDict(
            {t: nn.Parameter(torch.randn(layers, r, hidden) * 0.02) for t in tasks}
        )
        self.down_b = nn.ParameterDict({t: nn.Parameter(torch.zeros(layers, r)) for t in tasks})
        self.up_w = nn.ParameterDict({t: nn.Parameter(torch.zeros(layers, hidden, r)) for t in tasks})
        self.up_b = nn.ParameterDict({t: nn.Parameter(torch.zeros(layers, hidden)) for t in tasks})

    def apply(self, hidden: torch.Tensor, task: str, layer: int) -> torch.Tensor:
        return bottleneck(
            hidden,
            self.down_w[task][layer],
            self.down_b[task][layer],
            self.up_w[task][layer],
            self.up_b[task][layer],
        )

    def task_parameters(self, task: str) -> int:
        return sum(p[task].numel() for p in (self.down_w, self.down_b, self.up_w, self.up_b))


def build(encoder: nn.Module, tasks: list[str], cfg: Config) -> Adapters:
    return Adapters(encoder, lambda layers, hidden: TaskAdapters(tasks, layers, hidden, cfg))
