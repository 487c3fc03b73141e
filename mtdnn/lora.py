"""LoRA through `peft` (Hu et al. 2021): low-rank updates W + (alpha / r) B A on the encoder's attention
projections, the encoder itself frozen.

  adapter=lora                       one LoRA shared by every task
  adapter=lora adapter.per_task=true each task its own LoRA on the shared frozen encoder (the idea of MTL-LoRA),
                                     chosen per batch by the task, as the bottleneck adapters are

peft does the layers (`inject_adapter_in_model`, one named adapter per task); this module only chooses the
adapter per forward pass and merges it for export. Target modules default to peft's per-architecture map
(BERT/RoBERTa: query, value). LoRA weights train with trainer.head_lr, like the heads and other adapters: new
weights, with B starting at zero so training starts from the unchanged encoder.
"""

from __future__ import annotations

import copy

from torch import nn

from mtdnn.config import AdapterConfig

SHARED = "shared"  # the adapter name when all tasks share one LoRA


def lora_problems(cfg: AdapterConfig) -> list[str]:
    problems = []
    if cfg.rank < 1:
        problems.append(f"adapter.rank: must be >= 1, got {cfg.rank}")
    if cfg.alpha <= 0:
        problems.append(f"adapter.alpha: must be > 0, got {cfg.alpha}")
    if not 0 <= cfg.dropout < 1:
        problems.append(f"adapter.dropout: must be in [0, 1), got {cfg.dropout}")
    return problems


class LoraAdapters(nn.Module):
    """peft's LoRA layers inside the encoder (they are the encoder's modules, saved with its weights); this object
    selects the current task's adapter before each forward pass."""

    def __init__(self, encoder: nn.Module, tasks: list[str], cfg: AdapterConfig):
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer

        self.per_task = cfg.per_task
        names = tasks if cfg.per_task else [SHARED]
        config = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                            target_modules=list(cfg.target_modules) if cfg.target_modules else None)
        for name in names:
            inject_adapter_in_model(config, encoder, adapter_name=name)
        self.layers = [m for m in encoder.modules() if isinstance(m, LoraLayer)]
        for name, param in encoder.named_parameters():  # every task's LoRA is in the optimizer from the start
            param.requires_grad_(".lora_" in name)
        if cfg.train_layer_norms:
            for module in encoder.modules():
                if isinstance(module, nn.LayerNorm):
                    module.requires_grad_(True)
        self._task: str | None = None

    @property
    def task(self) -> str | None:
        return self._task

    @task.setter
    def task(self, task: str) -> None:
        if self.per_task and task != self._task:
            for layer in self.layers:
                layer.set_adapter(task)
                for weights in (layer.lora_A, layer.lora_B):  # set_adapter froze the other tasks' LoRA
                    weights.requires_grad_(True)
        self._task = task

    def task_parameters(self, task: str) -> int:
        if not self.per_task:
            return 0
        return sum(p.numel() for layer in self.layers for n, p in layer.named_parameters() if f".{task}." in f".{n}")


def merged_encoder(encoder: nn.Module, adapter_name: str) -> nn.Module:
    """A copy of the encoder with one adapter's LoRA update added into its weights and the LoRA layers removed:
    a plain transformers model."""
    from peft.tuners.lora import LoraLayer

    plain = copy.deepcopy(encoder)
    for name, module in list(plain.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(adapter_names=[adapter_name])
            parent_name, _, child = name.rpartition(".")
            setattr(plain.get_submodule(parent_name) if parent_name else plain, child, module.get_base_layer())
    return plain
