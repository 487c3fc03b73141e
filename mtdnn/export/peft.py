"""`format=peft`: a LoRA / IA3 run's task adapter alone, as peft saves its own (adapter_config.json,
adapter_model.safetensors): `PeftModel.from_pretrained(AutoModel.from_pretrained(base), DIR)`; no head."""

from __future__ import annotations

from pathlib import Path

from mtdnn.data.tasks import TaskSpec

SUMMARY = "a LoRA / IA3 run's task adapter as a peft adapter folder (no head)"
MODEL_OF_ANY_KIND = True  # the adapter alone: any kind's task has one


def problems(run, spec: TaskSpec, cfg) -> list[str]:
    if hasattr(run.model.adapters, "write_peft_folder"):
        return []
    trained = "no adapter" if run.model.adapters is None else f"adapter.kind={run.config.adapter.kind}"
    return [f"format: peft exports a LoRA / IA3 adapter, and this run trained {trained}"]


def write(run, spec: TaskSpec, cfg, staging: Path) -> None:
    run.model.adapters.write_peft_folder(run.model.encoder, spec.name, run.config.encoder.name, staging)
