"""Knowledge distillation: an ensemble of trained runs (teachers) -> soft targets -> a smaller student.

`python -m mtdnn.distill distill.teachers=[RUN_A,RUN_B] encoder=... task=[...]` is `python -m mtdnn.train` with
`distill=ensemble`. Per training example the teachers' outputs are averaged:

  classification, ranking   mean of softmax(logits / T) (over labels, or over the candidates of a group)
  regression                mean of the predicted values
  span                      mean of the start and of the end distributions over a window's tokens
  tagging                   mean of each token's distribution over the tags

Span and tagging targets are per token, so their teachers must share the student's tokenizer (checked).

and the student learns  alpha * hard-label loss + (1 - alpha) * T^2 * KL(teacher || softmax(student / T))
(for regression  alpha * MSE(y) + (1 - alpha) * MSE(teacher)).

Soft targets are computed once with each teacher's own tokenizer and head (so teachers may tokenise differently
from the student: targets are per example) and stored as `<soft_targets_dir>/<task>-<key>.safetensors`:

  tensors   targets (rows x width, float32; ranking rows padded with 0) and sizes (candidates per group)
  metadata  format "mtdnn-soft-targets/1", task, head, temperature, rows, data (fingerprint of the train split),
            teachers (JSON: run dir, checkpoint, sha256 of its weights)

A file whose teachers' weights or data no longer match is stale: it is rebuilt (distill.rebuild_stale=true) or
refused with a message naming it. `distill.soft_targets=on_the_fly` instead runs the teachers on every training
batch (they must then share the student's tokenizer).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mtdnn.artifacts import sha256_of
from mtdnn.config import DistillConfig
from mtdnn.errors import MtdnnError
from mtdnn.heads import group_matrix
from mtdnn.paths import cache_dir
from mtdnn.rundir import best_checkpoint, list_checkpoints
from mtdnn.tasks import TaskSpec

log = logging.getLogger("mtdnn")
FORMAT = "mtdnn-soft-targets/1"
TOKEN_LEVEL = ("span", "tagging")  # per-token targets: teachers must tokenise exactly like the student


# ---------------------------------------------------------------- validation

def distill_problems(cfg: DistillConfig, specs: list[TaskSpec]) -> list[str]:
    if cfg.mode not in ("none", "ensemble"):
        return [f"distill.mode: must be none or ensemble, got '{cfg.mode}'"]
    if cfg.mode == "none":
        return ["distill.teachers: teachers given but distill.mode is none; choose distill=ensemble"] \
            if cfg.teachers else []
    if not cfg.teachers:
        return ["distill.teachers: required with distill=ensemble (distill.teachers=[run_a,run_b,...])"]
    from mtdnn.rundir import load_run_specs

    problems = []
    if not 0 <= cfg.alpha <= 1:
        problems.append(f"distill.alpha: must be in [0, 1], got {cfg.alpha}")
    if cfg.temperature <= 0:
        problems.append(f"distill.temperature: must be > 0, got {cfg.temperature}")
    if cfg.soft_targets not in ("cache", "on_the_fly"):
        problems.append(f"distill.soft_targets: must be cache or on_the_fly, got '{cfg.soft_targets}'")
    if cfg.keep_every < 1:
        problems.append(f"distill.keep_every: must be >= 1, got {cfg.keep_every}")
    for i, teacher in enumerate(cfg.teachers):
        folder = Path(os.path.expanduser(teacher))
        if not (folder / "config.yaml").is_file():
            problems.append(f"distill.teachers[{i}]: {folder} is not an mtdnn run folder (no config.yaml)")
            continue
        trained = {s.name: s for s in load_run_specs(folder)}
        for spec in specs:
            if spec.name not in trained:
                problems.append(f"distill.teachers[{i}]: {folder} did not train task {spec.name}")
            elif trained[spec.name].labels != spec.labels:
                problems.append(f"distill.teachers[{i}]: task {spec.name} has labels {trained[spec.name].labels} "
                                f"there but {spec.labels} here")
    return problems


# ---------------------------------------------------------------- soft targets

def soft_targets(head: str, outputs: list[list[np.ndarray]], temperature: float) -> list[np.ndarray]:
    """Average over teachers, per example: probabilities after temperature, or values for regression.
    `outputs[t][i]` is teacher t's raw output for example i."""
    axis = 0 if head == "span" else -1  # span: a distribution over the window's tokens, for start and end

    def one(x: np.ndarray) -> np.ndarray:
        if head == "regression":
            return np.asarray(x, dtype=np.float64)
        z = np.asarray(x, dtype=np.float64) / temperature
        z = np.exp(z - z.max(axis, keepdims=True))
        return z / z.sum(axis, keepdims=True)

    return [np.mean([one(teacher[i]) for teacher in outputs], axis=0).astype(np.float32)
            for i in range(len(outputs[0]))]


def teacher_outputs(teacher, spec: TaskSpec, data, device: torch.device, batch_size: int) -> list[np.ndarray]:
    """One teacher's raw output per training row: sentence-level heads read the data the teacher's own way;
    token-level heads read the student's rows (same tokenizer), one (tokens x width) array per row."""
    from mtdnn.data import TaskData, encode_splits
    from mtdnn.inference import collator_for, forward_rows

    if spec.head in TOKEN_LEVEL:
        encoded = data.encoded["train"]
    else:
        mine = TaskData(teacher.specs[spec.name], {"train": data.raw["train"]})
        encode_splits(mine, teacher.tokenizer)
        encoded = mine.encoded["train"]
    outputs, _ = forward_rows(teacher.model, spec, encoded, collator_for(spec, teacher.tokenizer, 8), batch_size,
                              device)
    return [row.numpy() for row in outputs]


def teacher_weights(run_dir: str, checkpoint: str) -> Path:
    folder = Path(os.path.expanduser(run_dir))
    if checkpoint == "best":
        return best_checkpoint(folder) / "model.safetensors"
    if checkpoint == "last":
        return list_checkpoints(folder)[-1] / "model.safetensors"
    return Path(checkpoint) / "model.safetensors"


class SoftTargetFile:
    """The versioned on-disk form of one task's soft targets (see the module docstring)."""

    def __init__(self, folder: Path, spec: TaskSpec, cfg: DistillConfig, identity: list[dict], data_key: str):
        key = hashlib.sha256(json.dumps([sorted(t["run_dir"] for t in identity), cfg.temperature,
                                         cfg.teacher_checkpoint]).encode()).hexdigest()[:16]
        self.path = folder / f"{spec.name}-{key}.safetensors"
        self.metadata = {"format": FORMAT, "task": spec.name, "head": spec.head, "temperature": str(cfg.temperature),
                         "data": data_key, "teachers": json.dumps(identity)}

    def stale_reason(self) -> str | None:
        from safetensors import safe_open

        with safe_open(str(self.path), "pt") as handle:
            found = handle.metadata() or {}
        for field in ("format", "task", "head", "temperature", "data", "teachers"):
            if found.get(field) != self.metadata[field]:
                return f"its {field} differs ({'teachers changed' if field == 'teachers' else 'data changed' if field == 'data' else 'other settings'})"
        return None

    def load(self) -> list[np.ndarray]:
        tensors = load_file(str(self.path))
        targets, sizes = tensors["targets"].numpy(), tensors["sizes"].numpy()
        if self.metadata["head"] in TOKEN_LEVEL:  # rows of (tokens x width), stacked
            return np.split(targets, np.cumsum(sizes)[:-1])
        return [row[:n] if self.metadata["head"] == "ranking" else row for row, n in zip(targets, sizes)]

    def save(self, targets: list[np.ndarray]) -> None:
        if self.metadata["head"] in TOKEN_LEVEL:
            sizes = np.array([len(t) for t in targets])
            matrix = np.concatenate(targets).astype(np.float32)
        else:
            sizes = np.array([np.size(t) for t in targets])
            width = int(sizes.max()) if self.metadata["head"] != "regression" else 1
            matrix = np.zeros((len(targets), width), dtype=np.float32)
            for i, t in enumerate(targets):
                matrix[i, : np.size(t)] = np.ravel(t)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        save_file({"targets": torch.from_numpy(matrix), "sizes": torch.from_numpy(sizes)}, str(tmp),
                  metadata={**self.metadata, "rows": str(len(targets))})
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- the distiller used by the loop

class Distiller:
    def __init__(self, cfg: DistillConfig, device: torch.device):
        from mtdnn.cli import load_run

        self.cfg = cfg
        self.device = device
        with _own_rng(device):  # building the teachers must not shift the student's random stream
            self.teachers = [load_run(t, cfg.teacher_checkpoint, device) for t in cfg.teachers]
        self.identity = [{"run_dir": str(Path(os.path.expanduser(t)).resolve()), "checkpoint": cfg.teacher_checkpoint,
                          "sha256": sha256_of(teacher_weights(t, cfg.teacher_checkpoint))}
                         for t in cfg.teachers]

    def _check_tokenizer(self, spec: TaskSpec, tokenizer) -> None:
        if spec.head not in TOKEN_LEVEL and self.cfg.soft_targets != "on_the_fly":
            return
        for teacher in self.teachers:
            if teacher.tokenizer.get_vocab() != tokenizer.get_vocab():
                why = f"{spec.head} targets are per token" if spec.head in TOKEN_LEVEL else "on_the_fly runs the teachers on the student's batches"
                raise MtdnnError(f"distill.teachers: {teacher.run_dir} tokenises differently from the student, but "
                                 f"{why}; use distill.student_from_teacher=true or the teachers' encoder")

    def attach_soft_targets(self, tasks: dict, tokenizer, batch_size: int) -> dict[str, str]:
        """Add a `soft` column to every task's encoded train split; returns where each came from."""
        if self.cfg.soft_targets == "on_the_fly":
            for data in tasks.values():
                self._check_tokenizer(data.spec, tokenizer)
            return {name: "on the fly" for name in tasks}
        folder = Path(self.cfg.soft_targets_dir or cache_dir() / "soft_targets").expanduser()
        origin = {}
        for name, data in tasks.items():
            self._check_tokenizer(data.spec, tokenizer)
            split = data.encoded["train"] if data.spec.head in TOKEN_LEVEL else data.raw["train"]
            store = SoftTargetFile(folder, data.spec, self.cfg, self.identity, split._fingerprint)
            targets, origin[name] = self._targets_for(store, data, batch_size)
            column = [t.tolist() if data.spec.head != "regression" else float(np.ravel(t)[0]) for t in targets]
            if len(column) != len(data.encoded["train"]):
                raise MtdnnError(f"{store.path}: {len(column)} soft targets for {len(data.encoded['train'])} rows")
            data.encoded["train"] = data.encoded["train"].add_column("soft", column)
        return origin

    def _targets_for(self, store: SoftTargetFile, data, batch_size: int) -> tuple[list[np.ndarray], str]:
        if store.path.is_file():
            reason = store.stale_reason()
            if reason is None:
                return store.load(), f"reused {store.path}"
            if not self.cfg.rebuild_stale:
                raise MtdnnError(f"{store.path}: stale soft targets: {reason}; delete it or set "
                                 "distill.rebuild_stale=true")
            log.warning("%s: stale soft targets (%s); rebuilding", store.path, reason)
        started = time.time()
        outputs = [teacher_outputs(t, data.spec, data, self.device, batch_size) for t in self.teachers]
        targets = soft_targets(data.spec.head, outputs, self.cfg.temperature)
        store.save(targets)
        return targets, f"computed in {time.time() - started:.1f}s, saved to {store.path}"

    @torch.no_grad()
    def _on_the_fly(self, task: str, head: str, batch: dict) -> torch.Tensor:
        """Teachers on this very batch (same tokenizer), averaged after temperature."""
        outs = []
        for teacher in self.teachers:
            teacher.model.eval()
            logits = teacher.model(task, **batch).float()
            if head == "ranking":
                logits = group_matrix(logits, batch)
            axis = 1 if head == "span" else -1
            outs.append(logits if head == "regression" else F.softmax(logits / self.cfg.temperature, axis))
        return torch.stack(outs).mean(0)

    def loss(self, model, task: str, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """alpha * hard + (1 - alpha) * T^2 * KL(teacher || student / T)   (MSE to the teachers for regression)."""
        head = model.head(task)
        kind = type(head).__name__.removesuffix("Head").lower()
        hard = head.loss(logits, batch)
        if self.cfg.alpha == 1.0:
            return hard
        soft = batch["soft"] if "soft" in batch else self._on_the_fly(task, kind, batch)
        return self.cfg.alpha * hard + (1 - self.cfg.alpha) * kd_term(kind, logits, soft, batch,
                                                                      self.cfg.temperature)

    def compare(self, student, tasks: dict, collators: dict, batch_size: int) -> list[dict]:
        """Student and every teacher on every validation set: metric, parameters, inference examples/s."""
        rows = []
        for label, model, teacher in [("student", student, None)] + [(f"teacher {t.run_dir.name}", t.model, t)
                                                                      for t in self.teachers]:
            for name, data in tasks.items():
                if "validation" in data.encoded:
                    rows.append({"model": label, "task": name, **_measure(model, data, collators[name], batch_size,
                                                                           self.device, teacher)})
        return rows


def _own_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def kd_term(kind: str, logits: torch.Tensor, soft: torch.Tensor, batch: dict, temperature: float) -> torch.Tensor:
    if kind == "regression":
        return F.mse_loss(logits.float(), soft.float().view_as(logits))
    if kind == "span":  # start and end: distributions over the window's tokens (padding has target 0)
        log_p = F.log_softmax(logits.float() / temperature, 1)
        return F.kl_div(log_p, soft.float(), reduction="sum") / (2 * len(logits)) * temperature**2
    if kind == "tagging":  # per real token, over the tags
        mask = batch["attention_mask"].bool()
        log_p = F.log_softmax(logits.float()[mask] / temperature, -1)
        return F.kl_div(log_p, soft.float()[mask], reduction="batchmean") * temperature**2
    student = logits.float() if kind != "ranking" else group_matrix(logits.float(), batch)
    log_p = F.log_softmax(student / temperature, -1)
    return F.kl_div(log_p, soft.float(), reduction="batchmean") * temperature**2


def _measure(model, data, collate, batch_size: int, device: torch.device, teacher=None) -> dict:
    from mtdnn.data import TaskData, encode_splits
    from mtdnn.inference import collator_for, evaluate_split

    spec = data.spec
    encoded, raw = data.encoded["validation"], data.raw["validation"]
    if teacher is not None:  # a teacher reads the data through its own tokenizer
        mine = TaskData(spec, {"validation": raw})
        encode_splits(mine, teacher.tokenizer)
        encoded, collate = mine.encoded["validation"], collator_for(spec, teacher.tokenizer, 8)
    started = time.perf_counter()
    _, scores = evaluate_split(model, spec, raw, encoded, collate, batch_size, device)
    seconds = time.perf_counter() - started
    return {"metric": spec.metrics[0], "value": (scores or {}).get(spec.metrics[0], float("nan")),
            "parameters": sum(p.numel() for p in model.parameters()), "examples_per_s": len(raw) / seconds}


# ---------------------------------------------------------------- a shallower student from a teacher

def shallow_student(teacher_dir: str, checkpoint: str, keep_every: int):
    """(tokenizer, encoder, head weights) of a teacher whose encoder keeps layers 0, k, 2k, ... (DistilBERT)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = Path(os.path.expanduser(teacher_dir))
    config = AutoConfig.from_pretrained(str(folder / "encoder"))
    kept = list(range(0, config.num_hidden_layers, keep_every))
    config.num_hidden_layers = len(kept)
    encoder = AutoModel.from_config(config)
    weights = load_file(str(teacher_weights(teacher_dir, checkpoint)))
    renumber = {old: new for new, old in enumerate(kept)}
    state, heads = {}, {}
    for key, tensor in weights.items():
        if key.startswith("heads."):
            heads[key.removeprefix("heads.")] = tensor
            continue
        key = key.removeprefix("encoder.")
        match = re.match(r"^(.*\blayer\.)(\d+)(\..*)$", key)
        if match:
            if int(match.group(2)) not in renumber:
                continue
            key = f"{match.group(1)}{renumber[int(match.group(2))]}{match.group(3)}"
        state[key] = tensor
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MtdnnError(f"distill.student_from_teacher: cannot map {folder}'s encoder weights "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    log.info("student: layers %s of %s's %d-layer encoder", kept, folder, len(kept) * keep_every)
    return AutoTokenizer.from_pretrained(str(folder / "tokenizer")), encoder, heads


def main() -> None:
    """`python -m mtdnn.distill ...` = `python -m mtdnn.train distill=ensemble ...`."""
    import sys

    from mtdnn import train

    if not any(a.startswith("distill=") for a in sys.argv[1:]):
        sys.argv.insert(1, "distill=ensemble")
    train.main()


if __name__ == "__main__":
    main()
