"""What a training checkpoint holds besides the weights, written and read here only: the loop's counters
(TrainState), the optimizer, schedule, sampler, each task's batch position, each regularizer's and the
balancer's state and the RNG. Also the check that a resumed run's configuration is the one the checkpoint
was trained with."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtdnn.core.errors import MtdnnError
from mtdnn.model.adapters import saved_fields
from mtdnn.runs.checkpoints import load_trainer_state, load_weights
from mtdnn.runs.rng import rng_state, set_rng_state

log = logging.getLogger("mtdnn")

# settings a resumed run may change: how long it runs (and when it stops early), how often it reports, where
# and
# how it shows progress
RESUMABLE_CHANGES = (
    "resume",
    "resume_allow_changes",
    "output_dir",
    "predict_test",
    "trainer.max_steps",
    "trainer.epochs",
    "trainer.eval_every",
    "trainer.evals_per_epoch",
    "trainer.log_every",
    "trainer.affinity_every",
    "trainer.keep_last",
    "trainer.early_stopping",
    "trainer.progress_bar",
    "trainer.eval_batch_size",
    "trainer.device",
    "stages",
)


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    micro_batches: int = 0  # batches drawn (grad_accum per step)
    examples_seen: dict[str, int] = field(default_factory=dict)
    best_score: float = -math.inf
    best_step: int = 0
    best_results: dict = field(default_factory=dict)
    skipped_steps: int = 0  # optimizer steps dropped for a NaN/inf loss or gradient
    consecutive_skips: int = 0
    evals_since_best: int = 0  # evaluations in a row without a better score (trainer.early_stopping)
    stopped_early: bool = False
    # task -> {"score", "step"}: each task's own best (best_<task>.json)
    task_best: dict = field(default_factory=dict)
    # wall time in training steps (not evaluation or checkpoints): what methods cost
    train_seconds: float = 0.0

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


@dataclass
class Resumable:
    """The live objects a checkpoint restores, besides the model's weights."""

    optimizer: Any
    scheduler: Any
    sampler: Any
    batches: dict  # task -> TaskBatches
    regularizers: dict  # name -> Regularizer
    balancer: Any  # mtdnn.balancers.Balancer
    state: TrainState
    distiller: Any = None  # a Distiller (its learned projection), when distilling

    def state_dict(self) -> dict:
        return {
            "train": self.state.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "batches": {t: b.state_dict() for t, b in self.batches.items()},
            "rng": rng_state(),
            "regularizers": {name: reg.state_dict() for name, reg in self.regularizers.items()},
            "balancer": self.balancer.state_dict(),
            "distiller": self.distiller.state_dict() if self.distiller is not None else {},
        }

    def restore(self, checkpoint: Path, model) -> None:
        """Everything the checkpoint holds, except the optimizer's settings (lr, weight decay, betas),
        which come from this run's config: the same values on a plain resume, the new ones with
        resume_allow_changes."""
        saved = load_trainer_state(checkpoint)
        load_weights(model, checkpoint / "model.safetensors")
        settings = [
            {k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups
        ]
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        for group, fresh in zip(self.optimizer.param_groups, settings):
            group.update(fresh)
        self.scheduler.base_lrs = [fresh["initial_lr"] for fresh in settings]
        for group, base, factor in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas
        ):
            group["lr"] = base * factor(self.scheduler.last_epoch)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.sampler.load_state_dict(saved["sampler"])
        for task, batch_state in saved["batches"].items():
            self.batches[task].load_state_dict(batch_state)
        for name, reg in self.regularizers.items():
            reg.load_state_dict(saved.get("regularizers", {}).get(name, {}))
        self.balancer.load_state_dict(saved.get("balancer", {}))
        if self.distiller is not None:
            self.distiller.load_state_dict(saved.get("distiller", {}))
        self.state.load_state_dict(saved["train"])
        set_rng_state(saved["rng"])
        log.info("resumed from %s at step %d", checkpoint, self.state.step)


# what the checkpoint's weights were built from: a change here cannot be applied to them, only refused
WEIGHT_SHAPING = (
    "encoder.name",
    "encoder.artifact",
    "encoder.from_config",
    "encoder.tokenizer",
    "encoder.revision",
    "adapter",
    "task:",
)


def config_changes(saved: Any, now: Any, prefix: str = "") -> list[str]:
    """One line per setting that differs ('key: old -> new', or a whole group 'added'/'removed'), except
    those a resumed run may change."""
    if isinstance(saved, dict) and isinstance(now, dict):
        changes = []
        for key in sorted(set(saved) | set(now), key=str):
            where = f"{prefix}{key}"
            if where.startswith(RESUMABLE_CHANGES):
                continue
            if key not in now:
                changes.append(f"{where}: removed")
            elif key not in saved:
                changes.append(f"{where}: added")
            else:
                changes += config_changes(saved[key], now[key], f"{where}.")
        return changes
    return [] if saved == now else [f"{prefix.rstrip('.')}: {saved!r} -> {now!r}"]


def more_than(items: list, shown: int) -> str:
    return f" (and {len(items) - shown} more)" if len(items) > shown else ""


def as_task_list(config: dict) -> dict:
    """`task=a` and `task=[a]` name the same run."""
    task = config.get("task")
    return {**config, "task": [task] if isinstance(task, str) else task}


def check_resume_config(run_dir: Path, now: dict, allow_changes: bool = False) -> list[str]:
    """Refuse to resume with settings the checkpoint was not trained with (a regularizer added, another
    lr): they would be applied half (built from restored state) or not at all, and config.yaml would not
    say so. With `allow_changes` they are returned instead, to be applied and recorded."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return []
    saved = yaml.safe_load(path.read_text()) or {}
    if isinstance(saved.get("adapter"), dict):  # older folders saved every adapter method's fields
        saved["adapter"] = saved_fields(saved["adapter"])
    changes = config_changes(as_task_list(saved), as_task_list(now))
    fixed = [c for c in changes if c.startswith(WEIGHT_SHAPING)]
    if fixed and allow_changes:
        raise MtdnnError(
            f"resume_allow_changes: {'; '.join(fixed[:3])}{more_than(fixed, 3)}: the checkpoints' "
            "weights were built with the run's settings and cannot take these; to train with them, start a "
            "new run from this one: init_from=<this run> output_dir=<a new folder>"
        )
    if changes and not allow_changes:
        raise MtdnnError(
            f"resume: this command's settings differ from the run's ({path}): "
            f"{'; '.join(changes[:5])}{more_than(changes, 5)}; resume with the run's settings (only "
            "max_steps/epochs, evaluation and logging cadence may change), pass "
            "resume_allow_changes=true to apply them, or choose a new output_dir"
        )
    return changes
