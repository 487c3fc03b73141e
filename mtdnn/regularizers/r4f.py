"""R4F (Aghajanyan et al. 2020): R3F's random-perturbation term plus spectral normalisation of every linear
layer of every head (torch's spectral_norm parametrization: W / sigma_max(W), sigma estimated by power
iteration, one iteration per training forward). The encoder is left as is, as in the paper.

Checkpoints hold plain weights (each head weight at W / sigma, its inference value), so evaluate, predict
and export load them into an ordinary model; the power-iteration vectors and the unnormalised W live in the
regularizer's state, so a resumed run continues exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from mtdnn.regularizers import r3f

CHANGES_MODEL = True  # built before the others: SMART's teacher copies the normalised heads


@dataclass
class Config(r3f.Config):
    power_iterations: int = 1  # per training forward (torch's default, and the paper's)


def problems(cfg: Config, specs: list) -> list[str]:
    found = r3f.problems(cfg, specs, "regularizer.r4f")
    if cfg.power_iterations < 1:
        found.append(f"regularizer.r4f.power_iterations: must be >= 1, got {cfg.power_iterations}")
    return found


class R4F(r3f.R3F):
    def __init__(self, cfg: Config, model: nn.Module):
        super().__init__(cfg, name="r4f")
        self.heads = model.heads
        for head in self.heads.values():
            for layer in [m for m in head.modules() if isinstance(m, nn.Linear)]:
                spectral_norm(layer, n_power_iterations=cfg.power_iterations)

    def state_dict(self) -> dict:
        return {k: v.clone() for k, v in self.heads.state_dict().items() if ".parametrizations." in k}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.heads.load_state_dict(state, strict=False)


def build(cfg: Config, model: nn.Module, specs: list) -> R4F:
    return R4F(cfg, model)
