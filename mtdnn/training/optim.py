"""AdamW with decay only on weight matrices, and linear warmup then linear decay."""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from mtdnn.core.config import TrainerConfig


def param_groups(
    model: nn.Module, cfg: TrainerConfig, task_head_lrs: dict[str, float] | None = None
) -> list[dict]:
    """Biases and LayerNorm weights (every 1-d parameter) get no weight decay; heads and adapters (new
    weights) may get their own lr, and a task's head its own (task YAML or task_overrides.<task>.head_lr)."""
    head_lr = cfg.lr if cfg.head_lr is None else cfg.head_lr  # 0 is a rate (frozen heads), not "unset"
    task_head_lrs = {t: lr for t, lr in (task_head_lrs or {}).items() if lr is not None}
    groups: dict[tuple[float, bool, bool], list] = {}  # (lr, decays, new) -> params; encoder groups first
    owned_by_adapter = getattr(getattr(model, "adapters", None), "owns", lambda param: False)  # peft's layers
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        new = name.startswith(("heads.", "adapters.")) or owned_by_adapter(param)  # new weights: head_lr
        task = name.split(".")[1] if name.startswith("heads.") else None
        lr = task_head_lrs.get(task, head_lr) if new else cfg.lr
        groups.setdefault((lr, param.ndim >= 2, new), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": cfg.weight_decay if decays else 0.0}
        for (lr, decays, _), params in sorted(
            groups.items(), key=lambda item: (item[0][2], item[0][1], item[0][0])
        )
    ]


def build_optimizer(
    model: nn.Module,
    cfg: TrainerConfig,
    task_head_lrs: dict[str, float] | None = None,
    learned: list[nn.Parameter] | None = None,
) -> torch.optim.Optimizer:
    """`learned`: new weights trained beside the model but not part of it (a distillation projection), last,
    at the heads' rate."""
    extra = {}
    # the fused kernel is fastest where it exists (CUDA, and CPU in recent torch); fall back quietly
    if "fused" in inspect.signature(torch.optim.AdamW).parameters:
        device = next(model.parameters()).device
        extra["fused"] = device.type in ("cuda", "cpu")
    groups = param_groups(model, cfg, task_head_lrs)
    if learned:
        head_lr = cfg.lr if cfg.head_lr is None else cfg.head_lr
        groups.append({"params": learned, "lr": head_lr, "weight_decay": 0.0})
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.adam_betas),
        eps=cfg.adam_eps,
        **extra,
    )


def lr_multiplier(step: int, warmup: int, total: int) -> float:
    """1) linear warmup from 0 over `warmup` steps, 2) linear decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig, total_steps: int):
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s, warmup, total_steps))
