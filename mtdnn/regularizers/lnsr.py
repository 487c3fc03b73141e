"""LNSR (Hua et al. 2021, "Noise Stability Regularization for Improving BERT Fine-tuning"): inject Gaussian
noise into the hidden states at one layer and penalise how much the following layers' outputs move.

  h_l' = h_l + eps,  eps ~ N(0, noise_std^2) on real tokens
  term = weight * mean over layers j > l of  [ mean over real tokens of ||h_j(x; h_l') - h_j(x)||_2^2 ]

No public code exists; the choices made here, from the paper's description:
- `layer` counts like HuggingFace's hidden_states: 0 is the embedding output (after positions/LayerNorm, the
  input of the first Transformer layer), k is the output of layer k. The default 0 regularises every layer.
- The noise is added by a forward hook on the module producing h_l, so any encoder whose layers sit in one
  ModuleList of num_hidden_layers modules (BERT, RoBERTa, DeBERTa, ELECTRA, DistilBERT...) works; the
  layers below l are recomputed in the noisy pass (a hook cannot skip them) under the clean pass's dropout
  masks, so the difference is the noise's alone.
- Squared l2 distance per token (summed over features), averaged over real tokens and then over the layers,
  each layer weighted equally; padding never gets noise and never counts. Gradients flow through both the
  clean and the noisy pass (like SMART's smoothness term).
- The encoder's representations are regularised, not the head's output, so every head type is supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mtdnn.core.errors import MtdnnError
from mtdnn.model.encoders import encoder_layers
from mtdnn.regularizers import Base, StepContext


@dataclass
class Config:
    weight: float = 1.0  # lambda
    # sigma of the Gaussian noise (hidden states are LayerNorm-scaled, ~unit per feature)
    noise_std: float = 1e-2
    layer: int = 0  # inject into hidden_states[layer]: 0 = embedding output, k = output of layer k


def problems(cfg: Config, specs: list) -> list[str]:
    found = []
    if cfg.weight < 0:
        found.append(f"regularizer.lnsr.weight: must be >= 0, got {cfg.weight}")
    if cfg.noise_std <= 0:
        found.append(f"regularizer.lnsr.noise_std: must be > 0, got {cfg.noise_std}")
    if cfg.layer < 0:
        found.append(f"regularizer.lnsr.layer: must be >= 0, got {cfg.layer}")
    return found


def hidden_state_modules(encoder: nn.Module) -> list[nn.Module]:
    """The modules whose outputs are hidden_states[0], [1], ...: the embeddings, then each layer."""
    layers, embeddings = encoder_layers(encoder, "regularizer.lnsr"), getattr(encoder, "embeddings", None)
    if embeddings is None:
        raise MtdnnError(
            f"regularizer.lnsr: {type(encoder).__name__} has no `embeddings` module to inject "
            "noise after; LNSR supports BERT-style encoders"
        )
    return [embeddings, *layers]


class NoiseAt:
    """While active, adds a given noise tensor to the output of one module."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.noise: torch.Tensor | None = None

    def _add(self, module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        noisy = hidden + self.noise.to(hidden.dtype)
        return (noisy, *output[1:]) if isinstance(output, tuple) else noisy

    def __call__(self, noise: torch.Tensor):
        self.noise = noise
        return self.module.register_forward_hook(self._add)


def layer_distances(noisy: tuple, clean: tuple, mask: torch.Tensor, after: int) -> torch.Tensor:
    """Per layer j > after: mean over real tokens of the squared l2 distance between the two passes."""
    weights = mask.to(clean[0].dtype)
    per_layer = [
        ((n.float() - c.float()).pow(2).sum(-1) * weights).sum() / weights.sum()
        for n, c in zip(noisy[after + 1 :], clean[after + 1 :])
    ]
    return torch.stack(per_layer)


class LNSR(Base):
    needs_hidden_states = True
    replays_dropout = True

    def __init__(self, cfg: Config, model: nn.Module):
        modules = hidden_state_modules(model.encoder)
        if cfg.layer >= len(modules) - 1:
            raise MtdnnError(
                f"regularizer.lnsr.layer: must be below {len(modules) - 1} (the encoder's layer "
                f"count): no layer follows layer {cfg.layer}"
            )
        self.cfg = cfg
        self.noise = NoiseAt(modules[cfg.layer])

    def penalty(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        # drawn from the main stream, before the replay: inside it the RNG replays the clean pass's draws
        clean = ctx.hidden_states[self.cfg.layer]
        mask = ctx.batch["attention_mask"].unsqueeze(-1).to(clean.dtype)  # padding stays clean
        hook = self.noise(torch.randn_like(clean) * self.cfg.noise_std * mask)
        try:
            with ctx.dropout.replay():
                _, noisy = ctx.model(
                    ctx.task, **{**ctx.batch, "inputs_embeds": ctx.embeds}, hidden_states=True
                )
        finally:
            hook.remove()
        distances = layer_distances(noisy, ctx.hidden_states, ctx.batch["attention_mask"], self.cfg.layer)
        return {"lnsr": self.cfg.weight * distances.mean()}


def build(cfg: Config, model: nn.Module, specs: list) -> LNSR:
    return LNSR(cfg, model)
