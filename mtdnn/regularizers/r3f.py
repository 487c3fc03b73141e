"""R3F (Aghajanyan et al. 2020, "Better Fine-Tuning by Reducing Representational Collapse"): one random
perturbation of the word embeddings, noise ~ U(-eps, eps) or N(0, eps^2) on non-padding positions, and lambda
* D(f(x), f(x + noise)) added to the loss, with D the head's own divergence (symmetric KL for classification,
ranking, span and tagging; squared error for regression, which fairseq's version skips). The noisy pass reuses
the clean pass's dropout masks, so D measures the noise alone. R4F (r4f.py) is this plus spectral
normalisation of the heads.

scale: token (default) measures eps in units of each token's embedding RMS, so the noise is a fixed
fraction of what it perturbs; scale: absolute is the paper's literal reading (fairseq adds U(-1e-5, 1e-5)
to the embeddings), which on a BERT-style word embedding (MiniLM: element std 0.056) changes the output by
~1e-10 of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtdnn.regularizers import Base, StepContext, TermActivity

NOISES = ("uniform", "normal")
SCALES = ("token", "absolute")


@dataclass
class Config:
    weight: float = 1.0  # lambda (fairseq's --r3f-lambda default)
    eps: float = 0.1  # noise scale: a fraction of each token's embedding RMS (scale: token), or absolute
    noise: str = "uniform"  # uniform: U(-eps, eps) | normal: N(0, eps^2)
    scale: str = "token"  # token | absolute (the paper's eps = 1e-5 read literally)


def problems(cfg: Config, specs: list, where: str = "regularizer.r3f") -> list[str]:
    found = []
    if cfg.weight < 0:
        found.append(f"{where}.weight: must be >= 0, got {cfg.weight}")
    if cfg.eps <= 0:
        found.append(f"{where}.eps: must be > 0, got {cfg.eps}")
    if cfg.noise not in NOISES:
        found.append(f"{where}.noise: must be uniform or normal, got '{cfg.noise}'")
    if cfg.scale not in SCALES:
        found.append(f"{where}.scale: must be token or absolute, got '{cfg.scale}'")
    return found


def sample_noise(like: torch.Tensor, mask: torch.Tensor, cfg: Config) -> torch.Tensor:
    if cfg.noise == "uniform":
        noise = (torch.rand_like(like) * 2 - 1) * cfg.eps
    else:
        noise = torch.randn_like(like) * cfg.eps
    if cfg.scale == "token":
        noise = noise * like.detach().pow(2).mean(-1, keepdim=True).sqrt()
    return noise * mask.unsqueeze(-1).to(like.dtype)  # padding never gets noise


class R3F(Base):
    replays_dropout = True

    def __init__(self, cfg: Config, name: str = "r3f"):
        self.cfg = cfg
        self.name = name  # the logged term's name (R4F reuses this class)
        self.activity = TermActivity(f"regularizer.{name}", name)

    def penalty(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        noise = sample_noise(ctx.embeds, ctx.batch["attention_mask"], self.cfg)
        with ctx.dropout.replay():
            noisy = ctx.model(ctx.task, **{**ctx.batch, "inputs_embeds": ctx.embeds + noise})
        term = self.cfg.weight * ctx.model.head(ctx.task).divergence(ctx.logits, noisy, ctx.batch).mean()
        self.activity.add(term, ctx)
        return {self.name: term}

    def stats(self) -> dict[str, float]:
        return self.activity.stats()


def build(cfg: Config, model: torch.nn.Module, specs: list) -> R3F:
    return R3F(cfg)
