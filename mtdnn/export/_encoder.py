"""The run's encoder as a plain transformers model for one task: what the model formats (hf, onnx's sibling
formats, sentence-transformers) write. LoRA / IA3 merge into the weights; other adapters have no place
there."""

from __future__ import annotations

from torch import nn

from mtdnn.core.errors import MtdnnError
from mtdnn.data.tasks import TaskSpec


def plain_encoder(run, spec: TaskSpec) -> nn.Module:
    adapters = run.model.adapters
    if adapters is None:
        return run.model.encoder
    if hasattr(adapters, "merged_encoder"):  # LoRA / IA3: merged into the weights, a plain model again
        return adapters.merged_encoder(run.model.encoder, spec.name)
    raise MtdnnError(
        "export: this run trained adapters (adapter.kind="
        f"{run.config.adapter.kind}); standard HuggingFace classes have no place for them "
        "(format=onnx exports them)"
    )
