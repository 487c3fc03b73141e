"""R3F (Aghajanyan et al. 2020, "Better Fine-Tuning by Reducing Representational Collapse"): one random
perturbation of the word embeddings, noise ~ U(-eps, eps) or N(0, eps^2) on non-padding positions, and
lambda * D(f(x), f(x + noise)) added to the loss, with D the head's own divergence (symmetric KL for
classification, ranking, span and tagging; squared error for regression, which fairseq's version skips).
The noisy pass reuses the clean pass's dropout masks, so D measures the noise alone.
R4F (r4f.py) is this plus spectral normalisation of the heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtdnn.regularizers import Base, StepContext

NOISES = ("uniform", "normal")


@dataclass
class Config:
    weight: float = 1.0  # lambda (fairseq's --r3f-lambda default)
    eps: float = 1e-5  # noise scale (the paper's)
    noise: str = "uniform"  # uniform: U(-eps, eps) | normal: N(0, eps^2)


def problems(cfg: Config, specs: list, where: str = "regularizer.r3f") -> list[str]:
    found = []
    if cfg.weight < 0:
        found.append(f"{where}.weight: must be >= 0, got {cfg.weight}")
    if cfg.eps <= 0:
        found.append(f"{where}.eps: must be > 0, got {cfg.eps}")
    if cfg.noise not in NOISES:
        found.append(f"{where}.noise: must be uniform or normal, got '{cfg.noise}'")
    return found


def sample_noise(like: torch.Tensor, mask: torch.Tensor, cfg: Config) -> torch.Tensor:
    if cfg.noise == "uniform":
        noise = (torch.rand_like(like) * 2 - 1) * cfg.eps
    else:
        noise = torch.randn_like(like) * cfg.eps
    return noise * mask.unsqueeze(-1).to(like.dtype)  # padding never gets noise


class R3F(Base):
    def __init__(self, cfg: Config, name: str = "r3f"):
        self.cfg = cfg
        self.name = name  # the logged term's name (R4F reuses this class)

    def penalty(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        noise = sample_noise(ctx.embeds, ctx.batch["attention_mask"], self.cfg)
        with ctx.dropout.replay():
            noisy = ctx.model(ctx.task, **{**ctx.batch, "inputs_embeds": ctx.embeds + noise})
        term = ctx.model.head(ctx.task).divergence(ctx.logits, noisy, ctx.batch).mean()
        return {self.name: self.cfg.weight * term}


def build(cfg: Config, model: torch.nn.Module, specs: list) -> R3F:
    return R3F(cfg)
