"""Sweeps (`python -m mtdnn.train -m ...`): Hydra's launcher runs the jobs; a job that fails is reported in
one line, marked in its folder (failed.json) and the sweep goes on; at the end a Hydra callback lists the
failed jobs and exits 2. `resume=auto` on a sweep continues each job: a finished job is kept as it is, a
job with a checkpoint resumes from it, and a job that failed or never ran starts."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mtdnn.core.atomic import write_json
from mtdnn.core.errors import MtdnnError, environment_fault
from mtdnn.core.interrupts import interrupted
from mtdnn.runs.checkpoints import checkpoint_problem, list_checkpoints

log = logging.getLogger(__name__)

FAILED = "failed.json"  # in a job's folder: why it failed (removed when the job later succeeds)
SUMMARY = "summary.json"
REFUSED_FINISHED: list[str] = []  # this sweep's jobs whose folders held a finished run (never marked failed)


def in_sweep() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_job(job: Callable[[DictConfig], dict], cfg: DictConfig) -> float:
    """One job of a sweep: its failure is reported and recorded, never raised, so Hydra's launcher goes on."""
    hydra_cfg = HydraConfig.get()
    job_dir = Path(cfg.output_dir or hydra_cfg.runtime.output_dir).resolve()
    name = f"job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task) or 'no overrides'})"
    if cfg.resume == "auto":
        if (job_dir / SUMMARY).is_file():
            log.info("%s: finished already, kept as it is (%s)", name, job_dir)
            return score(json.loads((job_dir / SUMMARY).read_text()))
        if not any(checkpoint_problem(c) is None for c in list_checkpoints(job_dir)):
            cfg.resume = None  # nothing to continue: the job starts
    try:
        summary = job(cfg)
    except Exception as err:  # noqa: BLE001  (only input and environment faults are reported; bugs re-raise)
        if interrupted():  # a Ctrl-C that came back as an error: the sweep stops (Hydra passes this through)
            raise KeyboardInterrupt from err
        message = str(err) if isinstance(err, MtdnnError) else environment_fault(err)
        if message is None:
            raise
        print(f"error: {name}: {message}", file=sys.stderr, flush=True)
        if (
            job_dir / SUMMARY
        ).is_file():  # a finished run refused to be overwritten: its folder stays as it is
            REFUSED_FINISHED.append(name)
            return math.nan
        job_dir.mkdir(parents=True, exist_ok=True)
        write_json(
            job_dir / FAILED,
            {"job": hydra_cfg.job.num, "overrides": list(hydra_cfg.overrides.task), "error": message},
        )
        return math.nan  # a search sweeper (Optuna) records the trial as failed and goes on
    (job_dir / FAILED).unlink(missing_ok=True)
    return score(summary)


def score(summary: dict) -> float:
    """The number a search sweeper optimises: the run's best validation score (NaN when undefined)."""
    value = summary.get("best_score")
    return math.nan if value is None else float(value)


def expand(command_line: list[str]) -> list[list[str]]:
    """Every job's overrides, in job order, by Hydra's own expansion of a sweep's command line."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides([str(o) for o in command_line])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def covering_jobs(jobs: list[list[str]]) -> list[list[str]]:
    """A few jobs that between them hold every override value of the sweep: checking these finds a bad
    value without composing every job of a large grid."""
    chosen, seen = [], set()
    for job in jobs:
        if not set(job) <= seen:
            chosen.append(job)
            seen |= set(job)
    return chosen


def planned_jobs(sweep_dir: Path) -> list[list[str]]:
    """Every job's overrides as the sweep planned them (multirun.yaml keeps its command line), in job
    order; empty when the folder has no multirun.yaml."""
    import yaml

    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        return []
    command_line = (
        (yaml.safe_load(saved.read_text()) or {}).get("hydra", {}).get("overrides", {}).get("task", [])
    )
    return expand(command_line)


def failed_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(sweep_dir.glob(f"*/{FAILED}"))]


class SweepOutcome(Callback):
    """After the last job: one line listing the jobs that failed, and exit code 2 if any did."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = failed_jobs(sweep_dir)
        if REFUSED_FINISHED:
            print(
                f"error: {len(REFUSED_FINISHED)} job(s) of the sweep in {sweep_dir} have finished runs "
                "already and were kept as they are; run the same command with resume=auto to finish the "
                "sweep, or choose another hydra.sweep.dir",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(2)
        if failed:
            jobs = ", ".join(f"{f['job']} ({' '.join(f['overrides'])})" for f in failed)
            print(
                f"error: {len(failed)} job(s) of the sweep in {sweep_dir} failed: {jobs}; fix the cause and "
                "run the "
                "same command with resume=auto to finish the sweep",
                file=sys.stderr,
                flush=True,
            )
            sys.exit(2)
