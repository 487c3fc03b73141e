"""adapter=lora: LoRA through peft (Hu et al. 2021): low-rank updates W + (alpha / r) B A on the encoder's
attention projections (peft's default targets for the architecture: BERT/RoBERTa query, value), the encoder
frozen. `per_task: true` gives each task its own LoRA on the shared frozen encoder (MTL-LoRA's idea). B
starts at 0, so training starts from the unchanged encoder; the LoRA weights train at trainer.head_lr."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

from mtdnn.model.adapters._peft import PeftAdapters


@dataclass
class Config:
    kind: str = "lora"  # the method (set by adapter=<kind>)
    rank: int = 8  # r
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA branch's input
    target_modules: Optional[list[str]] = None  # module names; null: peft's default for the architecture
    per_task: bool = False  # each task its own LoRA (true) or one shared by all tasks
    train_layer_norms: bool = False  # the encoder's LayerNorms frozen too, as in the paper


def problems(cfg: Config) -> list[str]:
    found = []
    if cfg.rank < 1:
        found.append(f"adapter.rank: must be >= 1, got {cfg.rank}")
    if cfg.alpha <= 0:
        found.append(f"adapter.alpha: must be > 0, got {cfg.alpha}")
    if not 0 <= cfg.dropout < 1:
        found.append(f"adapter.dropout: must be in [0, 1), got {cfg.dropout}")
    return found


def peft_config(cfg: Config, model_type: str):
    from peft import LoraConfig

    targets = list(cfg.target_modules) if cfg.target_modules else None
    return LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets)


def build(encoder: nn.Module, tasks: list[str], cfg: Config) -> PeftAdapters:
    return PeftAdapters(encoder, tasks, cfg.per_task, lambda model_type: peft_config(cfg, model_type))
