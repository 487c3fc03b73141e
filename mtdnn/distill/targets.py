"""Soft targets: each teacher's output per training example, averaged and stored (see the package
docstring)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mtdnn import kinds
from mtdnn.core.config import DistillConfig
from mtdnn.data.tasks import TaskSpec
from mtdnn.runs.checkpoints import best_checkpoint, list_checkpoints

FORMAT = "mtdnn-soft-targets/1"


def soft_targets(kind: kinds.Kind, outputs: list[list[np.ndarray]], temperature: float) -> list[np.ndarray]:
    """Average over teachers, per example, of the kind's target. `outputs[t][i]` is teacher t's raw output
    for example i."""
    return [
        np.mean([kind.soft_target(teacher[i], temperature) for teacher in outputs], axis=0).astype(np.float32)
        for i in range(len(outputs[0]))
    ]


def teacher_outputs(teacher, spec: TaskSpec, data, device: torch.device, batch_size: int) -> list[np.ndarray]:
    """One teacher's raw output per training row: sentence-level kinds read the data the teacher's own way;
    token-level kinds read the student's rows (same tokenizer), one (tokens x width) array per row."""
    from mtdnn.data.loading import TaskData, encode_splits
    from mtdnn.evaluation.engine import collator_for, forward_rows

    if kinds.of(spec).token_level:
        encoded, own = data.encoded["train"], spec
    else:  # the teacher's own spec: a cross-encoder teacher reads the pairs jointly for a bi-encoder student
        own = teacher.specs[spec.name]
        mine = TaskData(own, {"train": data.raw["train"]})
        encode_splits(mine, teacher.tokenizer)
        encoded = mine.encoded["train"]
    outputs, _ = forward_rows(
        teacher.model, own, encoded, collator_for(own, teacher.tokenizer, 8), batch_size, device
    )
    return [row.numpy() for row in outputs]


def teacher_weights(run_dir: str, checkpoint: str) -> Path:
    folder = Path(os.path.expanduser(run_dir))
    if checkpoint == "best":
        return best_checkpoint(folder) / "model.safetensors"
    if checkpoint == "last":
        return list_checkpoints(folder)[-1] / "model.safetensors"
    return Path(checkpoint) / "model.safetensors"


class SoftTargetFile:
    """The versioned on-disk form of one task's soft targets (see the package docstring)."""

    def __init__(self, folder: Path, spec: TaskSpec, cfg: DistillConfig, identity: list[dict], data_key: str):
        named = [sorted(t["run_dir"] for t in identity), cfg.temperature, cfg.teacher_checkpoint]
        if cfg.transfer or cfg.augment:  # a transfer set's targets live beside the plain ones, not over them
            named += [dict(cfg.transfer), cfg.augment, cfg.augment_p]
        key = hashlib.sha256(json.dumps(named).encode()).hexdigest()[:16]
        self.path = folder / f"{spec.name}-{key}.safetensors"
        self.token_level = kinds.of(spec).token_level
        self.metadata = {
            "format": FORMAT,
            "task": spec.name,
            "head": spec.head,
            "temperature": str(cfg.temperature),
            "data": data_key,
            "teachers": json.dumps(identity),
        }

    def stale_reason(self) -> str | None:
        from safetensors import safe_open

        with safe_open(str(self.path), "pt") as handle:
            found = handle.metadata() or {}
        for field in ("format", "task", "head", "temperature", "data", "teachers"):
            if found.get(field) != self.metadata[field]:
                why = {"teachers": "teachers changed", "data": "data changed"}.get(field, "other settings")
                return f"its {field} differs ({why})"
        return None

    def load(self) -> list[np.ndarray]:
        tensors = load_file(str(self.path))
        targets, sizes = tensors["targets"].numpy(), tensors["sizes"].numpy()
        if self.token_level:  # rows of (tokens x width), stacked
            return np.split(targets, np.cumsum(sizes)[:-1])
        return [row[:n] for row, n in zip(targets, sizes)]  # each example's own width (ranking groups differ)

    def save(self, targets: list[np.ndarray]) -> None:
        if self.token_level:
            sizes = np.array([len(t) for t in targets])
            matrix = np.concatenate(targets).astype(np.float32)
        else:
            sizes = np.array([np.size(t) for t in targets])
            matrix = np.zeros((len(targets), int(sizes.max())), dtype=np.float32)
            for i, t in enumerate(targets):
                matrix[i, : np.size(t)] = np.ravel(t)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a name of this process's own: students distilled side by side may write the same targets at once
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        save_file(
            {"targets": torch.from_numpy(matrix), "sizes": torch.from_numpy(sizes)},
            str(tmp),
            metadata={**self.metadata, "rows": str(len(targets))},
        )
        os.replace(tmp, self.path)
