"""adapter=ia3: (IA)^3 through peft (Liu et al. 2022): learned per-channel scales of the attention keys and
values and of the feed-forward output (peft's defaults for the architecture), starting at 1, the encoder
frozen. `per_task: true` gives each task its own scales on the shared frozen encoder; they train at
trainer.head_lr."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from mtdnn.model.adapters._peft import PeftAdapters


@dataclass
class Config:
    kind: str = "ia3"  # the method (set by adapter=<kind>)
    target_modules: Optional[list[str]] = None  # module names; null: peft's default for the architecture
    per_task: bool = False  # each task its own scales (true) or one set shared by all tasks
    train_layer_norms: bool = False  # the encoder's LayerNorms stay trainable


def peft_config(cfg: Config, model_type: str):
    from peft import IA3Config
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as IA3_FEEDFORWARD
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as IA3_TARGETS

    targets = list(cfg.target_modules) if cfg.target_modules else None
    return IA3Config(
        target_modules=targets or IA3_TARGETS.get(model_type),
        feedforward_modules=IA3_FEEDFORWARD.get(model_type) if targets is None else [],
    )


def build(encoder: nn.Module, tasks: list[str], cfg: Config) -> PeftAdapters:
    return PeftAdapters(encoder, tasks, cfg.per_task, lambda model_type: peft_config(cfg, model_type))
