"""Adversarial perturbations of the input embeddings, shared by SMART and ALICE (and anyone who adds a
virtual adversarial method): the ball the perturbation lives in (per token or per example; l_inf, l2 or
l1), the projection onto it, one or more ascent steps on a divergence, and the model's logits on perturbed
embeddings. Sizes are relative to each token's embedding (`scale: token`), as literal (`absolute`) or as
mt-dnn renormalises (`reference`): see conf/regularizer/smart.yaml."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mtdnn.regularizers import StepContext

NORMS = ("inf", "l2", "l1")


SCALES = ("token", "absolute", "reference")


def per_example_norm(x: torch.Tensor, norm: str) -> torch.Tensor:
    """Norm of each example's whole perturbation (all positions and features), shaped to broadcast."""
    return row_norm(x.flatten(1), norm).view(-1, *([1] * (x.dim() - 1)))


def row_norm(rows: torch.Tensor, norm: str) -> torch.Tensor:
    """Norm of each row of a 2-d tensor, as a column."""
    if norm == "inf":
        return rows.abs().amax(1, keepdim=True)
    if norm == "l2":
        return rows.norm(dim=1, keepdim=True)
    return rows.abs().sum(1, keepdim=True)


def project(delta: torch.Tensor, epsilon: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Euclidean projection of each example's perturbation onto its epsilon ball in `norm`."""
    return project_rows(delta.flatten(1), epsilon, norm).view_as(delta)


def project_rows(rows: torch.Tensor, radius: float | torch.Tensor, norm: str) -> torch.Tensor:
    """Euclidean projection of each row onto the ball of its radius (a number, or a column of radii)."""
    radius = torch.as_tensor(radius, dtype=rows.dtype, device=rows.device).expand(rows.shape[0], 1)
    if norm == "inf":
        return torch.minimum(torch.maximum(rows, -radius), radius)
    if norm == "l2":
        return rows * (radius / row_norm(rows, "l2").clamp_min(1e-30)).clamp_max(1.0)
    return _project_l1(rows, radius)


def _project_l1(flat: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Duchi et al. 2008: soft-threshold |v| at the theta that lands exactly on the l1 sphere, row by row."""
    size = flat.abs()
    inside = size.sum(1, keepdim=True) <= radius
    ordered, _ = size.sort(1, descending=True)
    excess = ordered.cumsum(1) - radius
    ranks = torch.arange(1, flat.shape[1] + 1, device=flat.device, dtype=flat.dtype)
    # last positive rank
    rho = ((ordered - excess / ranks) > 0).to(flat.dtype).mul(ranks).amax(1, keepdim=True)
    theta = excess.gather(1, rho.long().clamp_min(1) - 1) / rho.clamp_min(1)
    shrunk = flat.sign() * (size - theta).clamp_min(0)
    return torch.where(inside, flat, shrunk)


class Ball:
    """Where the perturbation lives and how big it may be. `absolute`: one ball per example of radius
    epsilon (the paper read literally); `token`/`reference`: one ball per token, sizes relative to that
    token's embedding (its norm for epsilon and step_size, its RMS for noise_std)."""

    def __init__(self, embeds: torch.Tensor, mask: torch.Tensor, cfg: Any):
        self.shape, self.cfg = embeds.shape, cfg
        self.mode = cfg.scale
        self.mask = mask.unsqueeze(-1).to(embeds.dtype)
        if self.mode == "absolute":
            self.size = torch.ones(embeds.shape[0], 1, dtype=embeds.dtype, device=embeds.device)
            self.rms = torch.ones_like(self.mask)
        else:
            self.size = row_norm(self.rows(embeds), cfg.norm)
            self.rms = embeds.pow(2).mean(-1, keepdim=True).sqrt()

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if self.mode == "absolute" else x.reshape(-1, self.shape[-1])

    def start(self) -> torch.Tensor:
        """delta ~ N(0, (noise_std * scale)^2) on real tokens; padding gets nothing, ever."""
        return (
            torch.randn(self.shape, dtype=self.mask.dtype, device=self.mask.device)
            * self.cfg.noise_std
            * self.rms
            * self.mask
        )

    def ascent_step(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        cfg, radius = self.cfg, self.cfg.epsilon * self.size
        if self.mode == "reference":  # mt-dnn: the raw gradient's step, then back onto the sphere
            moved = self.rows(delta + cfg.step_size * grad)
            new = radius * moved / row_norm(moved, cfg.norm).clamp_min(1e-30)
        else:
            g = self.rows(grad)
            moved = self.rows(delta) + cfg.step_size * self.size * g / row_norm(g, cfg.norm).clamp_min(1e-30)
            new = project_rows(moved, radius, cfg.norm)
        return new.view(self.shape) * self.mask


def adversarial_perturbation(
    ctx: StepContext, objective: Callable[[torch.Tensor], torch.Tensor], cfg: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """K ascent steps on objective(f(x + delta)) from delta ~ N(0, noise_std^2) on non-padding positions;
    the gradient is taken w.r.t. delta alone (no weight gradients). `cfg` has steps, step_size, noise_std,
    epsilon, norm and scale (SMART's and ALICE's settings). Returns delta (zero if a gradient was NaN/inf)
    and that flag."""
    base = ctx.embeds.detach()
    ball = Ball(base, ctx.batch["attention_mask"], cfg)
    delta = ball.start()
    finite = torch.ones((), dtype=torch.bool, device=base.device)
    for _ in range(cfg.steps):
        delta.requires_grad_(True)
        with ctx.dropout.replay():
            perturbed = ctx.model(ctx.task, **{**ctx.batch, "inputs_embeds": base + delta})
        (grad,) = torch.autograd.grad(objective(perturbed), delta)
        finite = finite & torch.isfinite(grad).all()
        delta = torch.where(
            finite, ball.ascent_step(delta.detach(), grad * ball.mask), torch.zeros_like(base)
        )
    return delta, finite


def perturbed_logits(ctx: StepContext, delta: torch.Tensor) -> torch.Tensor:
    """f(x + delta) with gradients into the weights (and the embeddings), under the clean pass's dropout
    masks."""
    with ctx.dropout.replay():
        return ctx.model(ctx.task, **{**ctx.batch, "inputs_embeds": ctx.embeds + delta})
