"""adapter=loha: LoHa through peft (Hyeon-Woo et al. 2022, FedPara): each update is the Hadamard product of
two low-rank products, (W1a W1b) * (W2a W2b) * alpha / r, so rank r reaches an effective rank up to r^2 at
the parameters of 2r. On the attention projections (peft's defaults for the architecture), the encoder
frozen; `per_task: true` gives each task its own. One factor starts at 0, so training starts from the
unchanged encoder; the LoHa weights train at trainer.head_lr."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from mtdnn.model.adapters._peft import PeftAdapters


@dataclass
class Config:
    kind: str = "loha"  # the method (set by adapter=<kind>)
    rank: int = 8  # r of each of the two low-rank products
    alpha: float = 8.0  # the update is scaled by alpha / r
    rank_dropout: float = 0.0  # dropout on the rank dimension while training
    module_dropout: float = 0.0  # probability of skipping the whole update for a batch while training
    target_modules: Optional[list[str]] = None  # module names; null: peft's default for the architecture
    per_task: bool = False  # each task its own LoHa (true) or one shared by all tasks
    train_layer_norms: bool = False  # the encoder's LayerNorms stay trainable


def problems(cfg: Config) -> list[str]:
    found = [f"adapter.rank: must be >= 1, got {cfg.rank}"] if cfg.rank < 1 else []
    found += [f"adapter.alpha: must be > 0, got {cfg.alpha}"] if cfg.alpha <= 0 else []
    for name in ("rank_dropout", "module_dropout"):
        if not 0 <= getattr(cfg, name) < 1:
            found.append(f"adapter.{name}: must be in [0, 1), got {getattr(cfg, name)}")
    return found


def peft_config(cfg: Config, model_type: str):
    from peft import LoHaConfig
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LOHA_TARGET_MODULES_MAPPING as LOHA_TARGETS

    targets = list(cfg.target_modules) if cfg.target_modules else LOHA_TARGETS.get(model_type)
    return LoHaConfig(
        r=cfg.rank,
        alpha=cfg.alpha,
        rank_dropout=cfg.rank_dropout,
        module_dropout=cfg.module_dropout,
        target_modules=targets,
    )


def build(encoder: nn.Module, tasks: list[str], cfg: Config) -> PeftAdapters:
    return PeftAdapters(encoder, tasks, cfg.per_task, lambda model_type: peft_config(cfg, model_type))
