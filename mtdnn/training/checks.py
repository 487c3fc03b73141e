"""Checks of the run configuration that need the selected task specs, all reported together before anything
heavy is loaded."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from mtdnn.balancers import balancer_problems
from mtdnn.core.errors import MtdnnError, raise_if
from mtdnn.core.typed import suggest
from mtdnn.data.sampler import sampler_problems
from mtdnn.data.tasks import TaskSpec, load_tasks
from mtdnn.distill import distill_problems
from mtdnn.model.adapters import adapter_problems
from mtdnn.model.encoders import encoder_problems
from mtdnn.regularizers import regularizer_problems
from mtdnn.runs.folder import resolve_resume
from mtdnn.training.resume import check_resume_config


def unknown_key_problems(cfg: DictConfig) -> list[str]:
    """Keys added with '+' that no code reads: a typo there would otherwise silently do nothing."""
    import dataclasses

    from mtdnn.core.config import EncoderConfig, SamplerConfig, TrainConfig, TrainerConfig

    problems = []
    for prefix, node, schema in (
        ("", cfg, TrainConfig),
        ("trainer.", cfg.trainer, TrainerConfig),
        ("encoder.", cfg.encoder, EncoderConfig),
        ("sampler.", cfg.sampler, SamplerConfig),
    ):
        fields = {f.name for f in dataclasses.fields(schema)}
        problems += [
            f"{prefix}{key}: unknown setting{suggest(str(key), fields)}"
            for key in node
            if key not in fields and key != "hydra"
        ]
    return problems


def non_finite_problems(node: Any, where: str = "") -> list[str]:
    """NaN or infinity in any numeric setting (trainer.lr=nan) would reach the optimizer or a regularizer
    and fail there, or silently train nothing."""
    if isinstance(node, dict):
        return [
            p
            for key, value in node.items()
            if key != "hydra"
            for p in non_finite_problems(value, f"{where}{key}.")
        ]
    if isinstance(node, list):
        return [
            p
            for i, value in enumerate(node)
            for p in non_finite_problems(value, f"{where.rstrip('.')}[{i}].")
        ]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{where.rstrip('.')}: must be a finite number, got {node}"]
    return []


def trainer_problems(t, tasks: int) -> list[str]:
    """The trainer's settings, each against its range."""
    problems = []
    for name in (
        "batch_size",
        "eval_batch_size",
        "grad_accum",
        "log_every",
        "pad_to_multiple_of",
        "evals_per_epoch",
        "max_consecutive_skips",
        "bucket_batches",
    ):
        if t[name] < 1:
            problems.append(f"trainer.{name}: must be >= 1, got {t[name]}")
    if not 1 <= t.tasks_per_step <= max(1, tasks):
        problems.append(
            f"trainer.tasks_per_step: must be between 1 and the number of tasks ({tasks}), "
            f"got {t.tasks_per_step}"
        )
    if t.early_stopping < 0:
        problems.append(
            f"trainer.early_stopping: must be >= 0 (evaluations without improvement; 0 = off), "
            f"got {t.early_stopping}"
        )
    if t.lr <= 0:
        problems.append(f"trainer.lr: must be > 0, got {t.lr}")
    if t.affinity_every is not None and t.affinity_every < 0:
        problems.append(
            f"trainer.affinity_every: must be >= 0 (0 = off; null: automatic), got {t.affinity_every}"
        )
    if t.head_lr is not None and t.head_lr < 0:
        problems.append(f"trainer.head_lr: must be >= 0 (0 freezes the heads), got {t.head_lr}")
    if t.max_grad_norm < 0:
        problems.append(f"trainer.max_grad_norm: must be >= 0 (0 = no clipping), got {t.max_grad_norm}")
    if not 0 <= t.warmup_ratio < 1:
        problems.append(f"trainer.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    if t.max_steps is None and t.epochs <= 0:
        problems.append(f"trainer.epochs: must be > 0, got {t.epochs}")
    if t.max_steps is not None and t.max_steps < 1:
        problems.append(f"trainer.max_steps: must be >= 1, got {t.max_steps}")
    return problems


def run_problems(cfg: DictConfig, specs: list[TaskSpec]) -> list[str]:
    """Checks of the run config that need the task specs; all reported together with encoder problems."""
    t = cfg.trainer
    problems = unknown_key_problems(cfg) + non_finite_problems(OmegaConf.to_container(cfg, resolve=True))
    problems += encoder_problems(cfg.encoder) + sampler_problems(cfg.sampler, [s.name for s in specs])
    problems += regularizer_problems(OmegaConf.to_container(cfg.regularizer, resolve=True), specs)
    problems += balancer_problems(
        OmegaConf.to_container(cfg.balancer, resolve=True), [s.name for s in specs], t.tasks_per_step
    )
    problems += distill_problems(cfg.distill, specs) + adapter_problems(
        OmegaConf.to_container(cfg.adapter, resolve=True)
    )
    problems += trainer_problems(t, len(specs))
    if cfg.init_from and not (Path(cfg.init_from).expanduser() / "best.json").is_file():
        problems.append(f"init_from: {cfg.init_from} is not a finished mtdnn run (no best.json)")
    if t.best_metric != "mean":
        by_name = {s.name: s for s in specs}
        task, _, metric = t.best_metric.partition("/")
        if task not in by_name or metric not in by_name[task].metrics:
            problems.append(
                f"trainer.best_metric: '{t.best_metric}' is neither 'mean' nor <task>/<metric> "
                "of a selected task"
            )
    if t.bf16 and t.device == "cpu" and not torch.backends.mkldnn.is_available():
        problems.append("trainer.bf16: this CPU build has no bfloat16 support")
    return problems


def task_names(task) -> list[str]:
    """task=mnli, task=[mnli,rte] or a path; a number or a mapping is still named in the error it gets."""
    if isinstance(task, (dict, DictConfig)) or task is None:
        raise MtdnnError(f"task: give a task name or a list of them, got {task!r}")
    names = list(task) if isinstance(task, (list, tuple, ListConfig)) else [task]
    return [str(n) for n in names]


def checked_config(cfg: DictConfig, output_dir: Path) -> tuple[list[TaskSpec], Path | None, list[str]]:
    """The task specs, the checkpoint a resumed run continues from (or None) and the settings it changes
    (resume_allow_changes=true): every problem of the configuration reported at once, before any data."""
    raise_if(
        [f"{key}: required, but not given (e.g. {key}=...)" for key in sorted(OmegaConf.missing_keys(cfg))],
        "the run configuration is incomplete",
    )
    overrides = OmegaConf.to_container(cfg.task_overrides, resolve=True)
    specs = load_tasks(task_names(cfg.task), list(cfg.task_dirs), overrides)
    raise_if(run_problems(cfg, specs), "the run configuration has problems")
    checkpoint = resolve_resume(cfg.resume, output_dir) if cfg.resume else None
    if checkpoint is None:
        return specs, None, []
    now = OmegaConf.to_container(cfg, resolve=True)
    return specs, checkpoint, check_resume_config(checkpoint.parent.parent, now, cfg.resume_allow_changes)
