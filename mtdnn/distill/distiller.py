"""The Distiller the training loop uses: teachers loaded from their run folders, soft targets attached to
the training data (cached on disk, or computed on the fly), the distillation loss, and the
student-vs-teachers table."""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from mtdnn import kinds
from mtdnn.core.artifacts import sha256_of
from mtdnn.core.config import DistillConfig
from mtdnn.core.errors import MtdnnError, raise_if
from mtdnn.core.paths import cache_dir
from mtdnn.data.loading import TaskData, encode_splits
from mtdnn.data.tasks import TaskSpec
from mtdnn.distill.layers import LayerTerms, layer_problems, watching
from mtdnn.distill.targets import SoftTargetFile, soft_targets, teacher_outputs, teacher_weights
from mtdnn.distill.transfer import transfer_problems
from mtdnn.evaluation.engine import collator_for, evaluate_split
from mtdnn.runs.folder import load_run_specs
from mtdnn.serving.loading import open_run

log = logging.getLogger("mtdnn")


def distill_problems(cfg: DistillConfig, specs: list[TaskSpec]) -> list[str]:
    if cfg.mode not in ("none", "ensemble"):
        return [f"distill.mode: must be none or ensemble, got '{cfg.mode}'"]
    if cfg.mode == "none":
        return [
            f"distill.{name}: {what} given but distill.mode is none; choose distill=ensemble"
            for name, what in (
                ("teachers", "teachers"),
                ("transfer", "transfer files"),
                ("augment", "copies"),
            )
            if getattr(cfg, name)
        ]
    if not cfg.teachers:
        return ["distill.teachers: required with distill=ensemble (distill.teachers=[run_a,run_b,...])"]
    problems = []
    if not 0 <= cfg.alpha <= 1:
        problems.append(f"distill.alpha: must be in [0, 1], got {cfg.alpha}")
    if cfg.temperature <= 0:
        problems.append(f"distill.temperature: must be > 0, got {cfg.temperature}")
    if cfg.soft_targets not in ("cache", "on_the_fly"):
        problems.append(f"distill.soft_targets: must be cache or on_the_fly, got '{cfg.soft_targets}'")
    if cfg.keep_every < 1:
        problems.append(f"distill.keep_every: must be >= 1, got {cfg.keep_every}")
    if not 0 < cfg.keep_ffn <= 1:
        problems.append(f"distill.keep_ffn: must be in (0, 1], got {cfg.keep_ffn}")
    problems += layer_setting_problems(cfg) + transfer_problems(cfg, specs)
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
                problems.append(
                    f"distill.teachers[{i}]: task {spec.name} has labels {trained[spec.name].labels} "
                    f"there but {spec.labels} here"
                )
            elif runs_on_batches(cfg) and trained[spec.name].pair_encoding != spec.pair_encoding:
                setting, who, fix = (
                    ("distill.soft_targets", "on_the_fly", "use soft_targets=cache")
                    if cfg.soft_targets == "on_the_fly"
                    else (
                        "distill.hidden_weight/attention_weight/value_weight",
                        "the layer-wise terms",
                        "encode the pairs alike",
                    )
                )
                problems.append(
                    f"{setting}: {who} feeds the student's batches to the teachers, but "
                    f"task {spec.name} is pair_encoding {trained[spec.name].pair_encoding} in "
                    f"{folder} and {spec.pair_encoding} here; {fix}"
                )
    return problems


def layer_setting_problems(cfg: DistillConfig) -> list[str]:
    problems = [
        f"distill.{name}: must be >= 0, got {getattr(cfg, name)}"
        for name in ("hidden_weight", "attention_weight", "value_weight")
        if getattr(cfg, name) < 0
    ]
    if cfg.hidden_loss not in ("mse", "cosine"):
        problems.append(f"distill.hidden_loss: must be mse or cosine, got '{cfg.hidden_loss}'")
    if cfg.relation_heads is not None and cfg.relation_heads < 1:
        problems.append(f"distill.relation_heads: must be >= 1, got {cfg.relation_heads}")
    if cfg.layers_from != "mean" and not (
        str(cfg.layers_from).isdigit() and int(cfg.layers_from) < len(cfg.teachers)
    ):
        problems.append(
            f"distill.layers_from: must be mean or a teacher's index 0..{len(cfg.teachers) - 1}, "
            f"got '{cfg.layers_from}'"
        )
    return problems


def layered(cfg: DistillConfig) -> bool:
    """Whether any layer-wise term is on."""
    return cfg.mode == "ensemble" and max(cfg.hidden_weight, cfg.attention_weight, cfg.value_weight) > 0


def runs_on_batches(cfg: DistillConfig) -> bool:
    """Whether the teachers run on the student's own batches (so must tokenise and encode pairs alike)."""
    return cfg.soft_targets == "on_the_fly" or layered(cfg)


class Distiller:
    def __init__(self, cfg: DistillConfig, specs: list[TaskSpec], device: torch.device, student_config=None):
        """`student_config`: the student encoder's config (needed by the layer-wise terms)."""
        self.cfg = cfg
        self.device = device
        self.kinds = {spec.name: kinds.of(spec) for spec in specs}
        # cached targets need the teachers only now and then: they wait on the CPU, off the student's device
        self.home = device if runs_on_batches(cfg) else torch.device("cpu")
        with _own_rng(device):  # building the teachers must not shift the student's random stream
            self.teachers = [open_run(t, cfg.teacher_checkpoint, self.home) for t in cfg.teachers]
        self.layers = self._layer_terms(student_config) if layered(cfg) else None
        self.identity = [
            {
                "run_dir": str(Path(os.path.expanduser(t)).resolve()),
                "checkpoint": cfg.teacher_checkpoint,
                "sha256": sha256_of(teacher_weights(t, cfg.teacher_checkpoint)),
            }
            for t in cfg.teachers
        ]

    def _layer_terms(self, student_config) -> LayerTerms:
        chosen = self.layer_teachers
        configs = [run.model.encoder.config for run in chosen]
        raise_if(
            layer_problems(self.cfg, student_config, configs, [str(run.run_dir) for run in chosen]),
            "the layer-wise distillation settings have problems",
        )
        return LayerTerms(self.cfg, student_config, configs, self.device)

    @property
    def layer_teachers(self) -> list:
        """The teachers whose layers the student learns from: all (averaged), or the one `layers_from`
        names."""
        if self.cfg.layers_from == "mean":
            return self.teachers
        return [self.teachers[int(self.cfg.layers_from)]]

    def parameters(self) -> list[torch.nn.Parameter]:
        """What the distillation itself learns (the hidden-state projection): trained beside the student."""
        return self.layers.parameters() if self.layers is not None else []

    def state_dict(self) -> dict:
        return self.layers.state_dict() if self.layers is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.layers is not None:
            self.layers.load_state_dict(state)

    def watching(self, model):
        """Around the student's clean pass: its last layer's Q, K and V, when a relation term needs them."""
        relations = self.layers is not None and self.layers.relations
        return watching(model.encoder) if relations else nullcontext({})

    def layer_terms(self, task: str, batch: dict, hidden: tuple, seen: dict) -> dict[str, torch.Tensor]:
        """The weighted layer-wise terms of the student's clean pass against the teachers on the same
        batch."""
        if self.layers is None:
            return {}
        teacher = self.layers.of_teachers(self.layer_teachers, task, batch)
        return self.layers.terms(teacher, hidden, seen, batch["attention_mask"])

    def _check_tokenizer(self, spec: TaskSpec, tokenizer) -> None:
        token_level = kinds.of(spec).token_level
        if not token_level and not runs_on_batches(self.cfg):
            return
        for teacher in self.teachers:
            if teacher.tokenizer.get_vocab() != tokenizer.get_vocab():
                why = (
                    f"{spec.head} targets are per token"
                    if token_level
                    else "on_the_fly runs the teachers on the student's batches"
                    if self.cfg.soft_targets == "on_the_fly"
                    else "the layer-wise terms run the teachers on the student's batches"
                )
                raise MtdnnError(
                    f"distill.teachers: {teacher.run_dir} tokenises differently from the student, but "
                    f"{why}; use distill.student_from_teacher=true or the teachers' encoder"
                )

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
            kind = kinds.of(data.spec)
            split = data.encoded["train"] if kind.token_level else data.raw["train"]
            store = SoftTargetFile(folder, data.spec, self.cfg, self.identity, split._fingerprint)
            targets, origin[name] = self._targets_for(store, data, batch_size)
            column = [kind.soft_column(t) for t in targets]
            if len(column) != len(data.encoded["train"]):
                raise MtdnnError(
                    f"{store.path}: {len(column)} soft targets for {len(data.encoded['train'])} rows"
                )
            data.encoded["train"] = data.encoded["train"].add_column("soft", column)
        return origin

    def _targets_for(self, store: SoftTargetFile, data, batch_size: int) -> tuple[list[np.ndarray], str]:
        if store.path.is_file():
            reason = store.stale_reason()
            if reason is None:
                return store.load(), f"reused {store.path}"
            if not self.cfg.rebuild_stale:
                raise MtdnnError(
                    f"{store.path}: stale soft targets: {reason}; delete it or set distill.rebuild_stale=true"
                )
            log.warning("%s: stale soft targets (%s); rebuilding", store.path, reason)
        started = time.time()
        outputs = []
        for teacher in self.teachers:
            with self.on_device(teacher):
                outputs.append(teacher_outputs(teacher, data.spec, data, self.device, batch_size))
        targets = soft_targets(kinds.of(data.spec), outputs, self.cfg.temperature)
        store.save(targets)
        return targets, f"computed in {time.time() - started:.1f}s, saved to {store.path}"

    @contextmanager
    def on_device(self, teacher):
        """The teacher on the training device for a while (cached targets keep it on the CPU otherwise)."""
        teacher.model.to(self.device)
        try:
            yield
        finally:
            teacher.model.to(self.home)

    @torch.no_grad()
    def _on_the_fly(self, task: str, batch: dict) -> torch.Tensor:
        """Teachers on this very batch (same tokenizer), averaged as the kind averages targets."""
        outs = []
        for teacher in self.teachers:
            teacher.model.eval()
            outs.append(
                self.kinds[task].teacher_soft(teacher.model(task, **batch), batch, self.cfg.temperature)
            )
        return torch.stack(outs).mean(0)

    def loss(self, model, task: str, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """alpha * hard + (1 - alpha) * the kind's KD term (T^2 * KL(teacher || student / T), or MSE for
        values). Transfer-set rows (labelled = 0) have no hard term: it is averaged over the labelled rows and
        weighted by their share of the batch, so each labelled row weighs what it weighs without them."""
        hard = self._hard(model, task, logits, batch)
        if self.cfg.alpha == 1.0:
            return hard
        soft = batch["soft"] if "soft" in batch else self._on_the_fly(task, batch)
        return self.cfg.alpha * hard + (1 - self.cfg.alpha) * self.kinds[task].kd_term(
            logits, soft, batch, self.cfg.temperature
        )

    @staticmethod
    def _hard(model, task: str, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        labelled = batch.get("labelled")
        if labelled is None or bool(labelled.all()):
            return model.head(task).loss(logits, batch)
        if not bool(labelled.any()):
            return logits.sum() * 0.0  # keeps the graph (and DDP's view of the head) intact
        rows = len(labelled)  # per-row tensors (not a bi pair's stacked 2B texts) keep the labelled rows
        mine = {k: v[labelled] if torch.is_tensor(v) and len(v) == rows else v for k, v in batch.items()}
        share = labelled.float().mean()
        return model.head(task).loss(logits[labelled], mine) * share

    def compare(self, student, tasks: dict, collators: dict, batch_size: int) -> list[dict]:
        """Student and every teacher on every validation set: metric, parameters, inference examples/s."""
        rows = []
        for label, model, teacher in [("student", student, None)] + [
            (f"teacher {t.run_dir.name}", t.model, t) for t in self.teachers
        ]:
            with self.on_device(teacher) if teacher is not None else nullcontext():
                for name, data in tasks.items():
                    if "validation" in data.encoded:
                        rows.append(
                            {
                                "model": label,
                                "task": name,
                                **_measure(model, data, collators[name], batch_size, self.device, teacher),
                            }
                        )
        return rows


def _own_rng(device: torch.device):
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _measure(model, data, collate, batch_size: int, device: torch.device, teacher=None) -> dict:

    spec = data.spec
    encoded, raw = data.encoded["validation"], data.raw["validation"]
    if teacher is not None:  # a teacher reads the data through its own tokenizer and pair encoding
        spec = teacher.specs[spec.name]
        mine = TaskData(spec, {"validation": raw})
        encode_splits(mine, teacher.tokenizer)
        encoded, collate = mine.encoded["validation"], collator_for(spec, teacher.tokenizer, 8)
    started = time.perf_counter()
    _, scores = evaluate_split(model, spec, raw, encoded, collate, batch_size, device)
    seconds = time.perf_counter() - started
    return {
        "metric": spec.metrics[0],
        "value": (scores or {}).get(spec.metrics[0], float("nan")),
        "parameters": sum(p.numel() for p in model.parameters()),
        "examples_per_s": len(raw) / seconds,
    }
