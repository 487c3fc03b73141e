"""Mixout (Lee et al. 2020, "Mixout: Effective Regularization to Finetune Large-scale Pretrained Language
Models"): during training, each weight of the encoder's linear layers is swapped for its pretrained value u
with probability p, and the result rescaled so its expectation is the current weight w:

  W = ((1 - M) * w + M * u - p * u) / (1 - p),   M ~ Bernoulli(p) per weight, a fresh M every forward
  (E[W] = w; at evaluation W = w)

Implemented as a torch parametrization of every nn.Linear weight in the encoder (attention, feed-forward,
pooler); the heads have no pretrained weights and keep their dropout. The encoder's own dropout stays as
configured (set encoder dropout to 0 to follow the paper's "mixout instead of dropout" setting). Masks are
drawn like dropout masks, so perturbed passes of other regularizers (SMART, R3F...) reuse the clean pass's.
Checkpoints hold the plain weights w (the inference value); the pretrained anchors are in the regularizer's
state, so a resumed run mixes towards the same u.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from mtdnn.regularizers import Base

log = logging.getLogger(__name__)
CHANGES_MODEL = True  # built before the others: SMART's teacher copies the mixout layers


@dataclass
class Config:
    p: float = 0.9  # mixout probability (the paper's best setting for BERT-large on GLUE: mixout(w_pre, 0.9))


def problems(cfg: Config, specs: list) -> list[str]:
    if not 0 <= cfg.p < 1:
        return [f"regularizer.mixout.p: must be in [0, 1), got {cfg.p}"]
    return []


class MixoutWeight(nn.Module):
    """The parametrization: w -> mixout(w, anchor, p) in training, w itself in evaluation."""

    def __init__(self, anchor: torch.Tensor, p: float):
        super().__init__()
        self.p = p
        self.register_buffer("anchor", anchor.detach().clone(), persistent=False)  # saved by the regularizer

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return weight
        swap = torch.empty_like(weight).bernoulli_(self.p).bool()
        return (torch.where(swap, self.anchor.to(weight.dtype), weight) - self.p * self.anchor) / (1 - self.p)


def linear_layers(encoder: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in encoder.named_modules() if isinstance(m, nn.Linear)}


class Mixout(Base):
    def __init__(self, cfg: Config, model: nn.Module):
        self.mixers: dict[str, MixoutWeight] = {}
        layers = {n: m for n, m in linear_layers(model.encoder).items() if m.weight.requires_grad}
        self.layers = layers
        if not layers:  # e.g. adapter=... freezes the encoder: every weight already equals its anchor
            log.warning(
                "regularizer.mixout: the encoder's linear layers are frozen; mixout has nothing to do"
            )
        for name, layer in layers.items():
            self.mixers[name] = MixoutWeight(layer.weight, cfg.p).eval()  # eval: registering draws no mask
            parametrize.register_parametrization(layer, "weight", self.mixers[name])

    def stats(self) -> dict[str, float]:
        """How many of the encoder's linear layers mix with their pretrained weights (0: mixout does
        nothing)."""
        mixing = [
            name
            for name, layer in self.layers.items()
            if parametrize.is_parametrized(layer, "weight")
            and any(isinstance(p, MixoutWeight) for p in layer.parametrizations["weight"])
        ]
        return {"mixout_layers": float(len(mixing))}

    def state_dict(self) -> dict:
        return {"anchors": {name: mixer.anchor for name, mixer in self.mixers.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, anchor in state.get("anchors", {}).items():
            self.mixers[name].anchor.copy_(anchor)


def build(cfg: Config, model: nn.Module, specs: list) -> Mixout:
    return Mixout(cfg, model)
