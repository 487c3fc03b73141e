"""The shared encoder with one head per task."""

from __future__ import annotations

import torch
from torch import nn

from mtdnn.heads import HEADS
from mtdnn.tasks import TaskSpec


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, specs: list[TaskSpec], pooling: str):
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict(
            {s.name: HEADS[s.head](hidden, s.num_labels, s.dropout, pooling) for s in specs}
        )

    def forward(self, task: str, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                **_unused) -> torch.Tensor:
        """Logits of `task`'s head. `inputs_embeds` lets regularizers feed perturbed embeddings."""
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.encoder(input_ids=None if inputs_embeds is not None else input_ids,
                           inputs_embeds=inputs_embeds, attention_mask=attention_mask, **extra)
        return self.heads[task](out.last_hidden_state, attention_mask, getattr(out, "pooler_output", None))

    def head(self, task: str) -> nn.Module:
        return self.heads[task]

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings only (before position/type embeddings and LayerNorm): what regularizers perturb."""
        return self.encoder.get_input_embeddings()(input_ids)
