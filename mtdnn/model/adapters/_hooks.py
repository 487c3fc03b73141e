"""What the hook-based adapters (bottleneck, hyper) share: the residual bottleneck itself and the forward
hooks that apply the current task's adapter to each Transformer layer's output.

The adapter sits on each layer's output (after its final LayerNorm), which any encoder whose layers sit in
one ModuleList allows through a forward hook (hyperformer places it inside the feed-forward block; that
needs per-architecture surgery). The up-projection (or its generator) starts at zero, so training starts
from the unchanged pretrained encoder.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mtdnn.model.encoders import encoder_layers


def bottleneck(hidden: torch.Tensor, down_w, down_b, up_w, up_b) -> torch.Tensor:
    """The residual adapter itself, h + W_up gelu(W_down h + b_down) + b_up, the same for both kinds."""
    return hidden + F.linear(F.gelu(F.linear(hidden, down_w, down_b)), up_w, up_b)


class Adapters(nn.Module):
    """Owns the adapter weights and the hooks that apply them to each layer's output for the current task.
    `make_weights(layers, hidden)` builds the method's weights, a module with apply(hidden, task, layer)
    and task_parameters(task)."""

    def __init__(self, encoder: nn.Module, make_weights: Callable[[int, int], nn.Module]):
        super().__init__()
        layers = encoder_layers(encoder, "adapter")
        self.weights = make_weights(len(layers), encoder.config.hidden_size)
        self.task: str | None = None  # set by MultiTaskModel.forward before the encoder runs
        # a partial, not a closure: deepcopy (SMART's teacher) rebinds it
        for index, layer in enumerate(layers):
            layer.register_forward_hook(functools.partial(self._adapt, index))

    def task_parameters(self, task: str) -> int:
        return self.weights.task_parameters(task)

    def _adapt(self, index: int, module: nn.Module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        adapted = self.weights.apply(hidden, self.task, index)
        return (adapted, *output[1:]) if isinstance(output, tuple) else adapted
