"""Adapters: parameter-efficient training on a frozen encoder. One module per method in this package plus
one YAML in conf/adapter/, no central list (like the regularizers): `adapter=lora`, `adapter.rank=4`.

A module `mtdnn/model/adapters/<kind>.py` provides
    Config                  a dataclass of its knobs, `kind` and `train_layer_norms` among them (validated
    like
                            task files: every problem at once)
    problems(config)        extra checks (optional)
    build(encoder, tasks, config) -> the adapters (an nn.Module), attached to the encoder (forward hooks, or
                            peft's layers injected into it), with
        .task = name            set before each forward pass: that task's adapter applies
        task_parameters(task)   how many trainable weights that task alone owns
        owns(param)             optional: a parameter inside the encoder that is the adapter's (peft's
        layers),
                                so it trains, at trainer.head_lr (adapters are new weights, like the heads)
        merged_encoder(encoder, task), write_peft_folder(encoder, task, base, out)   optional: export hooks
and `conf/adapter/<kind>.yaml` holds `kind: <kind>` and the method's settings. `adapter=none` (no module)
trains every weight. Shipped: bottleneck and hyper (forward hooks, `_hooks.py`), lora and ia3 (peft,
`_peft.py`).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from torch import nn

from mtdnn.core import plugins
from mtdnn.core.typed import build as build_dataclass
from mtdnn.core.typed import suggest

NONE = "none"  # full fine-tuning: no adapter, every weight trains


def available() -> list[str]:
    return [NONE, *plugins.names(__name__, "build")]


def _method(kind: str):
    return plugins.load(__name__, "build", kind)


def config_of(node: dict[str, Any] | None, saved: bool = False, problems: list[str] | None = None):
    """The method's Config from an `adapter:` node (None for adapter=none). `saved`: a run folder's node,
    whose keys the method does not use are dropped (folders written before each method had its own Config
    saved every method's fields)."""
    node = dict(node or {})
    kind = node.get("kind", NONE)
    if kind == NONE:
        return None
    cls = _method(kind).Config
    if saved:
        node = {k: v for k, v in node.items() if k in {f.name for f in fields(cls)}}
    found: list[str] = [] if problems is None else problems
    return build_dataclass(cls, node, "adapter", found)


def saved_fields(node: dict[str, Any]) -> dict[str, Any]:
    """A run folder's `adapter:` node as the current version composes it (for comparing settings on
    resume)."""
    config = config_of(node, saved=True) if node.get("kind", NONE) in available() else None
    return asdict(config) if config is not None else {k: v for k, v in node.items() if k == "kind"}


def adapter_problems(node: dict[str, Any]) -> list[str]:
    kind = (node or {}).get("kind", NONE)
    if kind not in available():
        return [
            f"adapter.kind: must be one of {', '.join(available())}, got '{kind}'{suggest(kind, available())}"
        ]
    if kind == NONE:
        unused = sorted(set(node) - {"kind"})
        return (
            [f"adapter.{unused[0]}: adapter=none trains no adapter; choose one (adapter=lora)"]
            if unused
            else []
        )
    problems: list[str] = []
    config = config_of(node, problems=problems)
    method = _method(kind)
    if not problems and hasattr(method, "problems"):
        problems += method.problems(config)
    return problems


def build_adapters(encoder: nn.Module, tasks: list[str], config) -> nn.Module:
    """The adapters `config` asks for, with the encoder frozen around them (peft's layers sit inside the
    encoder, so the freezing comes after they are injected and keeps them trainable)."""
    adapters = _method(config.kind).build(encoder, tasks, config)
    freeze_encoder(encoder, adapters, config.train_layer_norms)
    return adapters


def freeze_encoder(encoder: nn.Module, adapters: nn.Module, train_layer_norms: bool) -> None:
    """Only the adapters (peft's inside the encoder too), the heads and (optionally) the encoder's
    LayerNorms train; every task's peft adapter is in the optimizer from the start."""
    norms = {id(p) for m in encoder.modules() if isinstance(m, nn.LayerNorm) for p in m.parameters()}
    owns = getattr(adapters, "owns", lambda param: False)
    for param in encoder.parameters():
        param.requires_grad_(owns(param) or (train_layer_norms and id(param) in norms))


def trainable_parameters(model) -> dict:
    """Trainable parameters: shared by all tasks (LayerNorms, hypernetwork) and owned by each task."""
    owned = {
        name: sum(p.numel() for p in head.parameters() if p.requires_grad)
        for name, head in model.heads.items()
    }
    adapters = getattr(model, "adapters", None)
    if adapters is not None:
        owned = {name: count + adapters.task_parameters(name) for name, count in owned.items()}
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "total": total,
        "shared": total - sum(owned.values()),
        "per_task": owned,
        "frozen": sum(p.numel() for p in model.parameters() if not p.requires_grad),
    }
