"""The shared encoder with one head per task."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from mtdnn import kinds
from mtdnn.data.tasks import TaskSpec
from mtdnn.model.adapters import build_adapters, config_of


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, specs: list[TaskSpec], pooling: str, adapter: Any = None):
        """`adapter`: the run's `adapter:` node (a dict, as composed or as a run folder saved it), a method's
        Config, or None (full fine-tuning)."""
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict({s.name: kinds.of(s).head(hidden, s, pooling) for s in specs})
        self.adapters = None  # parameter-efficient mode: frozen encoder + adapters (mtdnn/model/adapters/)
        config = config_of(adapter, saved=True) if isinstance(adapter, dict) else adapter
        if config is not None:
            self.adapters = build_adapters(encoder, [s.name for s in specs], config)

    def forward(
        self,
        task: str,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        hidden_states: bool = False,
        **_unused,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple]:
        """Logits of `task`'s head. `inputs_embeds` lets regularizers feed perturbed embeddings;
        `hidden_states=True` returns (logits, the embeddings output and every layer's output). A head that
        needs batch fields besides the encoder's inputs names them in `reads` (a bi ranking head: `group`)."""
        out = self.encode(task, input_ids, attention_mask, token_type_ids, inputs_embeds, hidden_states)
        head = self.heads[task]
        extra = {name: _unused[name] for name in getattr(head, "reads", ())}
        logits = head(out.last_hidden_state, attention_mask, getattr(out, "pooler_output", None), **extra)
        return (logits, out.hidden_states) if hidden_states else logits

    def encode(
        self,
        task: str,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        hidden_states: bool = False,
    ):
        """The encoder's output for `task` (its adapters applied), before any head."""
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if self.adapters is not None:
            self.adapters.task = task  # the layer hooks apply this task's adapters
        return self.encoder(
            input_ids=None if inputs_embeds is not None else input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            output_hidden_states=hidden_states,
            **extra,
        )

    def head(self, task: str) -> nn.Module:
        return self.heads[task]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings only (before position/type embeddings and LayerNorm): what regularizers perturb."""
        return self.encoder.get_input_embeddings()(input_ids)


def parametrized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules whose weights a regularizer reparametrized (R4F's spectral norm, Mixout), by name."""
    return {name: module for name, module in model.named_modules() if parametrize.is_parametrized(module)}


@torch.no_grad()
def inference_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights as a plain model would hold them: each parametrized weight at its inference (eval)
    value, under its usual name. Checkpoints store this, so evaluate/predict/export never see a
    parametrization."""
    state = model.state_dict()
    modules = parametrized_modules(model)
    was_training = model.training
    model.eval()
    for name, module in modules.items():
        prefix = f"{name}." if name else ""
        for key in [k for k in state if k.startswith(f"{prefix}parametrizations.")]:
            del state[key]
        for tensor_name in module.parametrizations:
            state[prefix + tensor_name] = getattr(module, tensor_name).detach().clone()
    model.train(was_training)
    return state


@torch.no_grad()
def bake_parametrizations(model: nn.Module) -> None:
    """Replace every parametrization by its inference value: the model becomes plain (used after training)."""
    was_training = model.training
    model.eval()
    for module in parametrized_modules(model).values():
        for tensor_name in list(module.parametrizations):
            parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=True)
    model.train(was_training)
