"""`format=state-dict`: one task of a run as a plain safetensors state dict, for code that builds its own
model (a serving stack, another framework) and wants the weights with nothing else to import:

    model.safetensors   encoder.* (adapters included), heads.<task>.* and nothing of the other tasks' heads;
                        metadata: format pt, task, head kind, pooling
    config.json         the encoder's transformers config
    task.yaml           the task spec (labels in id order, columns, max_length)
    tokenizer/          the tokenizer

Any head kind exports this way: it is the weights, not a transformers class.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import save_file

from mtdnn.data.tasks import TaskSpec
from mtdnn.model.multitask import inference_state_dict

SUMMARY = "one task's weights (encoder + its head) as a plain safetensors state dict with its config"
MODEL_OF_ANY_KIND = True  # the weights of any kind's model, not a transformers class


def task_weights(model, task: str) -> dict:
    """The model's inference weights without the other tasks' heads."""
    return {
        name: tensor.contiguous()
        for name, tensor in inference_state_dict(model).items()
        if not name.startswith("heads.") or name.startswith(f"heads.{task}.")
    }


def write(run, spec: TaskSpec, cfg, staging: Path) -> None:
    metadata = {"format": "pt", "task": spec.name, "head": spec.head, "pooling": run.config.encoder.pooling}
    save_file(task_weights(run.model, spec.name), str(staging / "model.safetensors"), metadata=metadata)
    shutil.copy(run.run_dir / "encoder" / "config.json", staging / "config.json")
    shutil.copy(run.run_dir / "tasks" / f"{spec.name}.yaml", staging / "task.yaml")
    run.tokenizer.save_pretrained(str(staging / "tokenizer"))
