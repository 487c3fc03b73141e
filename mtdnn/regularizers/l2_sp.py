"""L2-SP (Li et al. 2018, "Explicit Inductive Bias for Transfer Learning with Convolutional Networks"):
keep the encoder near its pretrained weights theta_0, in the decoupled form (as AdamW decouples weight
decay): after every optimizer step,

  theta <- theta - lr * weight * (theta - theta_0)     for every encoder parameter; the heads are excluded

(the coupled form, a loss term weight/2 * ||theta - theta_0||^2, would be rescaled by Adam's preconditioner).
`lr` is the encoder's scheduled learning rate of that step. AdamW's own weight decay (towards 0) still
applies as configured by trainer.weight_decay; set it to 0 for pure L2-SP. Logged: `l2_sp` = weight/2 *
||theta - theta_0||^2 (the penalty the update descends), at logging steps only. theta_0 is kept in the
regularizer's checkpointed state, so a resumed run pulls towards the same weights.

The pull is small unless weight is of the order of 1 / (lr x steps): over a whole run at most weight x
peak_lr x steps of the drift is pulled back. The paper's alpha 0.01 (SGD, coupled) at lr 5e-5 and a few
hundred steps pulls back ~1e-4 of it, which measured as *exactly* `none` (docs/guide/regularizers.md). So
the method says once, a tenth into the run, when that bound is below 1e-2: a knob that cannot change
training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mtdnn.regularizers import Base

log = logging.getLogger(__name__)
NEGLIGIBLE_PULL = 1e-2  # below this fraction of the drift pulled back over the run, L2-SP cannot matter


@dataclass
class Config:
    weight: float = 0.01  # alpha (the paper's value)


def problems(cfg: Config, specs: list) -> list[str]:
    return [f"regularizer.l2_sp.weight: must be >= 0, got {cfg.weight}"] if cfg.weight < 0 else []


class L2SP(Base):
    def __init__(self, cfg: Config, model: torch.nn.Module):
        self.cfg = cfg
        self.params = {
            n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("heads.")
        }
        self.anchors = {n: p.detach().clone() for n, p in self.params.items()}
        self.peak_lr, self.judged = 0.0, False

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, step: int, total_steps: int, lr: float) -> None:
        # lerp(theta, theta_0, w) = theta + w * (theta_0 - theta): the decoupled step, one fused call
        torch._foreach_lerp_(list(self.params.values()), list(self.anchors.values()), lr * self.cfg.weight)
        self.peak_lr = max(self.peak_lr, lr)
        if not self.judged and step >= 0.1 * total_steps:  # past a usual warmup, so the peak lr is known
            self.judged = True
            self._warn_if_negligible(total_steps)

    def _warn_if_negligible(self, total_steps: int) -> None:
        bound = self.cfg.weight * self.peak_lr * total_steps
        if 0 < bound < NEGLIGIBLE_PULL:
            log.warning(
                "regularizer.l2_sp: weight=%g pulls back at most %.1e of the encoder's drift over this run "
                "(weight x lr %.1e x %d steps): too small to change training; weight of the order of "
                "1/(lr x steps) = %.3g acts",
                self.cfg.weight,
                bound,
                self.peak_lr,
                total_steps,
                1 / (self.peak_lr * total_steps),
            )

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        squared = sum(float((p - self.anchors[n]).pow(2).sum()) for n, p in self.params.items())
        return {"l2_sp": self.cfg.weight / 2 * squared}

    def state_dict(self) -> dict:
        return {"anchors": self.anchors}

    def load_state_dict(self, state: dict) -> None:
        for name, anchor in state.get("anchors", {}).items():
            self.anchors[name].copy_(anchor)


def build(cfg: Config, model: torch.nn.Module, specs: list) -> L2SP:
    return L2SP(cfg, model)
