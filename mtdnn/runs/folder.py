"""A run directory holds everything needed to evaluate, predict or resume without the original inputs:

    config.yaml            resolved run config
    overrides.yaml         the command-line overrides that made the run (a plain `resume=auto` reuses them)
    tasks/<name>.yaml      resolved task specs (label maps included)
    tokenizer/             the tokenizer, saved
    encoder/config.json    the encoder architecture (weights live in checkpoints)
    encoder/frozen.safetensors  adapter runs: the frozen encoder weights, written once; their checkpoints then
                           hold only what trains (adapters, heads, LayerNorms) and name this file in their
                           metadata
    checkpoints/step_N/    model.safetensors + trainer_state.pt (optimizer, scheduler, sampler, RNG,
                           regularizer state such as SMART's teacher); the last `keep_last` plus the best
    best.json              which checkpoint scored best, and its validation metrics
    best_<task>.json       with several tasks: the checkpoint where that task's main metric was best
    metrics.json           every evaluation, appended
    train_log.jsonl        per logging step: losses, learning rate, gradient norm
    summary.json           the final report
    affinity.png           multi-task runs: gradient cosine and lookahead affinity per pair of tasks
    predictions/           <task>_<split>.jsonl
    tb/                    TensorBoard scalars
    failed.json            a sweep's job that failed: its error (removed when the job later succeeds)
    .lock                  held while a run writes the folder (an OS lock: a second run is refused)

Every file is written to a temporary name, fsynced and renamed, so a crash never leaves half a file, and
`best.json` is replaced in one rename: at every moment it names a complete checkpoint.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import yaml

from mtdnn.core.atomic import write_atomic
from mtdnn.core.errors import MtdnnError, reading_saved
from mtdnn.data.tasks import TaskSpec, spec_from_dict, spec_to_dict
from mtdnn.runs.checkpoints import CHECKPOINTS, checkpoint_problem, list_checkpoints

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- atomic files


# ---------------------------------------------------------------- RNG


# ---------------------------------------------------------------- checkpoints


def resolve_resume(resume: str, default_run_dir: Path) -> Path:
    """`auto` or a run dir: its newest good checkpoint (damaged ones are skipped with a warning);
    a checkpoint folder: itself, which must be good."""
    target = default_run_dir if resume == "auto" else Path(os.path.expanduser(resume)).resolve()
    if not target.exists():
        raise MtdnnError(f"resume: no such checkpoint or run folder: {target}")
    if target.parent.name == CHECKPOINTS:
        problem = checkpoint_problem(target)
        if problem:
            raise MtdnnError(f"resume: {problem}")
        return target
    for candidate in reversed(list_checkpoints(target)):
        problem = checkpoint_problem(candidate)
        if problem is None:
            return candidate
        log.warning("resume: skipping damaged checkpoint: %s", problem)
    raise MtdnnError(f"resume: no good checkpoint under {target / CHECKPOINTS}")


# ---------------------------------------------------------------- one run per folder


@contextmanager
def run_lock(run_dir: Path):
    """An exclusive OS lock on <run_dir>/.lock while a run writes the folder: a second run into the same
    folder stops at once instead of interleaving its logs and checkpoints with the first. The OS drops the
    lock when the holder's process ends, however it ends, so a killed run never leaves a stale lock behind."""
    import fcntl

    handle = open(run_dir / ".lock", "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise MtdnnError(
            f"output_dir: {run_dir} is in use by another run ({holder}); wait for it to finish or "
            "choose another output_dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# ---------------------------------------------------------------- run files


def save_run_files(run_dir: Path, config_yaml: str, specs: list[TaskSpec], tokenizer, encoder_config) -> None:
    write_atomic(run_dir / "config.yaml", config_yaml)
    for spec in specs:
        write_atomic(
            run_dir / "tasks" / f"{spec.name}.yaml", yaml.safe_dump(spec_to_dict(spec), sort_keys=False)
        )
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    encoder_config.save_pretrained(str(run_dir / "encoder"))


OVERRIDES = "overrides.yaml"
# where a run lives and how it continues: never part of the command a resume reuses
LOCATION_KEYS = ("output_dir", "resume", "resume_allow_changes", "hydra.run.dir", "hydra.sweep.dir")


def save_overrides(run_dir: Path, overrides: list[str]) -> None:
    kept = [o for o in overrides if override_key(o) not in LOCATION_KEYS]
    write_atomic(run_dir / OVERRIDES, yaml.safe_dump(kept, sort_keys=False))


def saved_overrides(run_dir: Path) -> list[str]:
    """The overrides that made the run in `run_dir` (none for runs from before they were saved)."""
    path = run_dir / OVERRIDES
    if not path.is_file():
        return []
    with reading_saved(path, "resume"):
        return [str(o) for o in yaml.safe_load(path.read_text()) or []]


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def record_resume(run_dir: Path, config_yaml: str, checkpoint: Path, changes: list[str]) -> None:
    """config.yaml becomes the resumed command's settings, headed by what changed (older headers are kept)."""
    path = run_dir / "config.yaml"
    history = (
        [line for line in path.read_text().splitlines() if line.startswith("# ")] if path.is_file() else []
    )
    if changes:
        history.append(f"# resumed from {checkpoint.name} with resume_allow_changes: {'; '.join(changes)}")
    write_atomic(path, "".join(f"{line}\n" for line in history) + config_yaml)


def load_run_specs(run_dir: Path) -> list[TaskSpec]:
    folder = run_dir / "tasks"
    if not folder.is_dir():
        raise MtdnnError(f"run_dir: {run_dir} is not an mtdnn run folder (no tasks/ inside)")
    return [saved_spec(p) for p in sorted(folder.glob("*.yaml"))]


# every version wrote these: one missing means the file was cut short, not that it is old
SAVED_FIELDS = ("name", "head", "source", "columns", "labels", "metrics", "max_length")


def saved_spec(path: Path) -> TaskSpec:
    """A run's saved task spec; one cut short (a partial copy) is refused, not read with defaults instead."""
    with reading_saved(path):
        data = yaml.safe_load(path.read_text())
        lost = [field for field in SAVED_FIELDS if field not in data]
        if lost or data["name"] != path.stem:
            raise ValueError(f"the saved spec lacks {', '.join(lost) or 'its own name'}")
        return spec_from_dict(data)
