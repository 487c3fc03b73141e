"""`python -m mtdnn.train task=[...] encoder=... sampler=...`: compose -> validate -> build -> loop ->
report."""

from __future__ import annotations

import gc
import logging
import time
from contextlib import ExitStack
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from mtdnn.balancers import Setup, build_balancer
from mtdnn.core import config as _config  # noqa: F401  (registers the typed schemas with Hydra)
from mtdnn.core.commands import cli_errors
from mtdnn.core.distributed import Distributed, pick_device
from mtdnn.core.errors import MtdnnError, first_line, raise_if
from mtdnn.core.interrupts import interrupts_at_safe_points
from mtdnn.core.paths import conf_dir
from mtdnn.data.loading import TaskBatches, encode_splits, length_problems, one_pass_in_turn, task_seed
from mtdnn.data.sampler import TaskSampler
from mtdnn.data.tasks import load_tasks
from mtdnn.distill import Distiller
from mtdnn.evaluation.engine import collator_for
from mtdnn.model.encoders import max_length_problems
from mtdnn.model.multitask import MultiTaskModel, bake_parametrizations
from mtdnn.regularizers import build_regularizers
from mtdnn.runs.checkpoints import remove_staging
from mtdnn.runs.folder import record_resume, resolve_resume, run_lock, save_run_files
from mtdnn.runs.rng import seed_everything
from mtdnn.training.build import (
    prepare_data,
    prepare_output_dir,
    quiet_library_progress_bars,
    tokenizer_and_encoder,
)
from mtdnn.training.checks import run_problems
from mtdnn.training.command_line import check_overrides, check_sweep
from mtdnn.training.loop import make_plan, train
from mtdnn.training.optim import build_optimizer, build_scheduler
from mtdnn.training.resume import Resumable, TrainState, check_resume_config
from mtdnn.training.stages import init_from_run, run_stages
from mtdnn.training.summary import log_plan, record_zero_shot, write_summary
from mtdnn.training.sweeps import in_sweep, run_job, score
from mtdnn.training.tracking import SilentTracker, Tracker

log = logging.getLogger("mtdnn")


def task_names(task) -> list[str]:
    """task=mnli, task=[mnli,rte] or a path; a number or a mapping is still named in the error it gets."""
    if isinstance(task, (dict, DictConfig)) or task is None:
        raise MtdnnError(f"task: give a task name or a list of them, got {task!r}")
    names = list(task) if isinstance(task, (list, tuple, ListConfig)) else [task]
    return [str(n) for n in names]


def run(cfg: DictConfig, output_dir: Path, dist: Distributed | None = None) -> dict:
    """Train as configured; returns the summary (also written to summary.json). Under torchrun every rank
    calls this; rank 0 alone writes the run folder."""
    started = time.time()
    dist = dist or Distributed()
    # 1. validate the configuration (tasks, encoder, sampler, trainer, a resumed run's settings) before any
    # data
    raise_if(
        [f"{key}: required, but not given (e.g. {key}=...)" for key in sorted(OmegaConf.missing_keys(cfg))],
        "the run configuration is incomplete",
    )
    specs = load_tasks(
        task_names(cfg.task), list(cfg.task_dirs), OmegaConf.to_container(cfg.task_overrides, resolve=True)
    )
    raise_if(run_problems(cfg, specs), "the run configuration has problems")
    checkpoint = resolve_resume(cfg.resume, output_dir) if cfg.resume else None
    changes: list[str] = []  # settings a resumed run changes (resume_allow_changes=true)
    if checkpoint is not None:
        output_dir = checkpoint.parent.parent
        changes = check_resume_config(
            output_dir, OmegaConf.to_container(cfg, resolve=True), cfg.resume_allow_changes
        )
        for change in changes:
            log.warning("resume_allow_changes: %s", change)
    with ExitStack() as held:  # rank 0 holds the run folder's lock until the run ends, however it ends
        if dist.is_main:
            prepare_output_dir(output_dir, resuming=checkpoint is not None)
            held.enter_context(run_lock(output_dir))
            if checkpoint is not None:
                remove_staging(output_dir)
        dist.barrier()  # the other ranks read the folder only once rank 0 has checked and tidied it
        if not cfg.trainer.progress_bar:
            quiet_library_progress_bars()
        seed_everything(cfg.seed)
        device = dist.device(pick_device(cfg.trainer.device))

        # 2. data: load and check every row, then tokenise (cached); soft targets when distilling
        tasks = prepare_data(specs)
        saved_run = (
            output_dir
            if checkpoint is not None
            else Path(cfg.init_from).expanduser()
            if cfg.init_from
            else None
        )
        tokenizer, encoder, head_weights = tokenizer_and_encoder(cfg, tasks, saved_run)
        raise_if(
            max_length_problems(specs, encoder, tokenizer) + length_problems(tasks, tokenizer),
            "the task configuration has problems",
        )
        for data in tasks.values():
            encode_splits(data, tokenizer)
        distiller = Distiller(cfg.distill, specs, device) if cfg.distill.mode == "ensemble" else None
        if distiller is not None:
            for name, origin in distiller.attach_soft_targets(
                tasks, tokenizer, cfg.trainer.eval_batch_size
            ).items():
                log.info("soft targets for %s: %s", name, origin)

        # 3. model, optimizer, schedule, sampler, regularizers (or all of them as the checkpoint left them)
        model = MultiTaskModel(encoder, specs, cfg.encoder.pooling, cfg.adapter).to(device)
        if cfg.init_from and checkpoint is None:  # staged training: start from an earlier run's best weights
            head_weights = init_from_run(model, Path(cfg.init_from).expanduser(), cfg.init_heads)
        if head_weights:  # the student starts from the teacher's heads too (where they fit: a cross-encoder
            own = model.heads.state_dict()  # teacher's head does not fit a bi-encoder student's)
            model.heads.load_state_dict(
                {k: v for k, v in head_weights.items() if k in own and own[k].shape == v.shape}, strict=False
            )
        if checkpoint is None and dist.is_main:
            save_run_files(output_dir, OmegaConf.to_yaml(cfg, resolve=True), specs, tokenizer, encoder.config)
        elif dist.is_main:  # config.yaml says what the run continues with (max_steps, or the changes allowed)
            record_resume(output_dir, OmegaConf.to_yaml(cfg, resolve=True), checkpoint, changes)
        collators = {s.name: collator_for(s, tokenizer, cfg.trainer.pad_to_multiple_of) for s in specs}
        # data parallel: each task's batches are planned at the job's batch size; every rank takes its share
        batches = {
            s.name: TaskBatches(
                tasks[s.name].encoded["train"],
                cfg.trainer.batch_size * dist.world,
                task_seed(cfg.seed, s.name),
                collators[s.name],
                cfg.trainer.bucket_batches,
                dist.shard if dist.active else None,
            )
            for s in specs
        }
        plan = make_plan(cfg.trainer, batches)
        optimizer = build_optimizer(model, cfg.trainer, {s.name: s.head_lr for s in specs})
        sizes = {s.name: len(tasks[s.name].encoded["train"]) for s in specs}
        draws = plan.total_steps * cfg.trainer.grad_accum * min(cfg.trainer.tasks_per_step, len(specs))
        balancer = build_balancer(
            OmegaConf.to_container(cfg.balancer, resolve=True),
            Setup({s.name: s for s in specs}, plan.steps_per_epoch, plan.total_steps, cfg.seed),
        )
        resumable = Resumable(
            optimizer,
            build_scheduler(optimizer, cfg.trainer, plan.total_steps),
            TaskSampler(cfg.sampler, sizes, draws, cfg.seed),
            batches,
            build_regularizers(OmegaConf.to_container(cfg.regularizer, resolve=True), model, specs),
            balancer,
            TrainState(),
        )
        if checkpoint is None:  # e.g. Child-Tuning's Fisher pass (a resumed run restores its result instead)
            for reg in resumable.regularizers.values():
                reg.prepare(model, one_pass_in_turn(batches), device)
        else:
            restore(resumable, checkpoint, model, changes)
        log_plan(specs, sizes, plan, cfg, model, output_dir, resumable.state)
        if checkpoint is None:
            record_zero_shot(model, tasks, collators, cfg, output_dir, device, dist.is_main)
        first_step = resumable.state.step

        # 4. train
        tracker = (
            Tracker(output_dir, plan.total_steps, first_step, cfg.trainer.progress_bar)
            if dist.is_main
            else SilentTracker()
        )
        try:
            with interrupts_at_safe_points():  # Ctrl-C stops the run between steps (or evaluation batches)
                state = train(
                    model, tasks, collators, resumable, cfg.trainer, plan, tracker, device, distiller, dist
                )
        finally:
            tracker.close()

        dist.barrier()  # rank 0 has written the last checkpoint
        if not dist.is_main:
            return {"rank": dist.rank, "steps": state.step}

        # 5. report with the best checkpoint (reparametrized weights, e.g. R4F's, back to plain ones first)
        bake_parametrizations(model)
        summary = write_summary(
            cfg,
            model,
            tasks,
            collators,
            plan,
            state,
            output_dir,
            device,
            sizes,
            started,
            resumed_at_step=first_step if checkpoint is not None else None,
            distiller=distiller,
        )
        del model, optimizer, batches, resumable  # multirun jobs share one process: free memory between jobs
        gc.collect()
        return summary


def restore(resumable: Resumable, checkpoint: Path, model: MultiTaskModel, changes: list[str]) -> None:
    """A change allowed on resume that alters what the checkpoint must fit (another regularizer, adapter,
    head) is one clear error; without changes a failure here is a bug and raises as one."""
    try:
        resumable.restore(checkpoint, model)
    except (ValueError, KeyError, RuntimeError) as err:
        if not changes:
            raise
        raise MtdnnError(
            f"resume: {checkpoint} cannot continue with the changed settings "
            f"({'; '.join(changes)}): {type(err).__name__}: {first_line(err)}"
        ) from None


def _main(cfg: DictConfig) -> dict:
    dist = Distributed()  # torchrun: one process per rank; a plain run is rank 0 of 1
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank tells the story
    try:  # Hydra may name the run folder differently in each process: rank 0's wins
        output_dir = dist.broadcast(Path(cfg.output_dir or HydraConfig.get().runtime.output_dir).resolve())
        if cfg.stages:
            command_line = list(HydraConfig.get().overrides.task)
            return run_stages(
                cfg,
                output_dir,
                lambda extra: hydra.compose("train", overrides=[*command_line, *extra]),
                run,
                dist,
            )
        return run(cfg, output_dir, dist)
    finally:
        dist.close()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    if in_sweep():  # a failed job is reported and the sweep goes on
        return run_job(_main, cfg)
    return score(cli_errors(_main)(cfg))  # search sweepers optimise this


@cli_errors
def main() -> None:
    import sys

    from mtdnn.core.commands import want_traceback

    args = sys.argv[1:]
    flags = {a for a in args if a.startswith("-")}
    overrides = [a for a in args if not a.startswith("-")]
    # other flags (--help, --cfg, ...) go to Hydra untouched
    if overrides and not want_traceback() and not flags:
        check_overrides(overrides)
    elif (
        overrides
        and not want_traceback()
        and flags <= {"-m", "--multirun"}
        and not any(o.startswith("hydra/sweeper=") for o in overrides)
    ):  # a search sweeper expands its own way
        check_sweep(overrides)
    hydra_main()


if __name__ == "__main__":
    main()
