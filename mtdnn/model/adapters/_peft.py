"""Adapters from the `peft` library on the frozen encoder:

  adapter=lora   LoRA (Hu et al. 2021): low-rank updates W + (alpha / r) B A on the attention projections
  adapter=ia3    (IA)^3 (Liu et al. 2022): learned per-channel scales of keys, values and the feed-forward
  output

Either one shared by every task, or with `adapter.per_task=true` each task its own on the shared frozen
encoder (the idea of MTL-LoRA), chosen per batch by the task as the bottleneck adapters are. peft does the
layers (`inject_adapter_in_model`, one named adapter per task); this module only chooses the adapter per
forward pass and merges it for export. Target modules default to peft's per-architecture maps (BERT/RoBERTa
LoRA: query, value; IA3: key, value, output.dense). The adapter weights train with trainer.head_lr, like
the heads: new weights that start as the identity (LoRA's B = 0, IA3's scales = 1), so training starts from
the unchanged encoder. `write_peft_folder` saves one task's adapter as peft saves its own
(`PeftModel.from_pretrained(base, folder)`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

from torch import nn

from mtdnn.core.errors import MtdnnError, first_line

SHARED = "shared"  # the adapter name when all tasks share one adapter


class PeftAdapters(nn.Module):
    """peft's adapter layers inside the encoder (they are the encoder's modules, saved with its weights);
    this object selects the current task's adapter before each forward pass."""

    def __init__(
        self, encoder: nn.Module, tasks: list[str], per_task: bool, make_config: Callable[[str], object]
    ):
        """`make_config(model_type)`: the method's peft config (LoraConfig, IA3Config, ...) for this
        encoder."""
        super().__init__()
        from peft import inject_adapter_in_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.per_task = per_task
        self.make_config = make_config
        self.model_type = getattr(encoder.config, "model_type", "")
        config = make_config(self.model_type)
        for name in tasks if per_task else [SHARED]:
            try:
                inject_adapter_in_model(config, encoder, adapter_name=name)
            except (
                ValueError
            ) as err:  # peft's own errors (no matching module, unsupported layer) are ValueErrors
                raise MtdnnError(f"adapter.target_modules: {first_line(err)}") from None
        self.layers = [m for m in encoder.modules() if isinstance(m, BaseTunerLayer)]
        # the adapters' own weights (peft names them after its layer attributes: lora_A, ia3_l, hada_w1_a,
        # ...)
        self.own = {
            id(param)
            for layer in self.layers
            for attribute in layer.adapter_layer_names
            for param in getattr(layer, attribute).parameters()
        }
        self._task: str | None = None

    def owns(self, param: nn.Parameter) -> bool:
        """A parameter of a peft adapter (a new weight: head_lr, trainable) rather than of the frozen
        encoder."""
        return id(param) in self.own

    @property
    def task(self) -> str | None:
        return self._task

    @task.setter
    def task(self, task: str) -> None:
        if self.per_task and task != self._task:
            for layer in self.layers:
                layer.set_adapter(task)
                for attribute in layer.adapter_layer_names:  # set_adapter froze the other tasks' weights
                    getattr(layer, attribute).requires_grad_(True)
        self._task = task

    def adapter_name(self, task: str) -> str:
        """The name of `task`'s adapter in the encoder."""
        return task if self.per_task else SHARED

    def merged_encoder(self, encoder: nn.Module, task: str) -> nn.Module:
        return merged_encoder(encoder, self.adapter_name(task))

    def write_peft_folder(self, encoder: nn.Module, task: str, base_model: str, out: Path) -> None:
        write_peft_folder(
            encoder, self.adapter_name(task), self.make_config(self.model_type), base_model, out
        )

    def task_parameters(self, task: str) -> int:
        if not self.per_task:
            return 0
        # peft names a task's weights lora_A.<task>.weight (LoRA) or ia3_l.<task> (IA3)
        return sum(
            p.numel() for layer in self.layers for n, p in layer.named_parameters() if task in n.split(".")
        )


def merged_encoder(encoder: nn.Module, adapter_name: str) -> nn.Module:
    """A copy of the encoder with one adapter merged into its weights and the adapter layers removed: a
    plain transformers model."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    plain = copy.deepcopy(encoder)
    for name, module in list(plain.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[adapter_name])
            parent_name, _, child = name.rpartition(".")
            setattr(
                plain.get_submodule(parent_name) if parent_name else plain, child, module.get_base_layer()
            )
    return plain


def write_peft_folder(encoder: nn.Module, adapter_name: str, config, base_model: str, out: Path) -> None:
    """`adapter_name`'s adapter as peft writes it (adapter_config.json, adapter_model.safetensors), so that
    `PeftModel.from_pretrained(AutoModel.from_pretrained(base_model), out)` is the task's adapted encoder."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    config.base_model_name_or_path = base_model
    config.save_pretrained(str(out))
    state = get_peft_model_state_dict(encoder, adapter_name=adapter_name, save_embedding_layers=False)
    # a PeftModel holds the encoder as base_model.model, and peft's files name the weights from there
    save_file(
        {f"base_model.model.{k}": v.contiguous() for k, v in state.items()},
        str(out / "adapter_model.safetensors"),
        metadata={"format": "pt"},
    )
