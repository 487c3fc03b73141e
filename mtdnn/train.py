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
from omegaconf import DictConfig, OmegaConf

from mtdnn.core import config as _config  # noqa: F401  (registers the typed schemas with Hydra)
from mtdnn.core.commands import cli_errors
from mtdnn.core.distributed import Distributed, pick_device
from mtdnn.core.errors import MtdnnError, first_line
from mtdnn.core.interrupts import interrupts_at_safe_points
from mtdnn.core.paths import conf_dir
from mtdnn.data.loading import one_pass_in_turn
from mtdnn.model.compiled import compile_encoder, is_compiled, uncompile
from mtdnn.model.multitask import MultiTaskModel, bake_parametrizations
from mtdnn.runs.folder import record_resume, save_overrides, save_run_files
from mtdnn.runs.rng import seed_everything
from mtdnn.training.build import (
    build_distiller,
    build_model,
    build_run,
    claim_output_dir,
    load_and_encode,
    quiet_library_progress_bars,
)
from mtdnn.training.checks import checked_config
from mtdnn.training.command_line import (
    check_overrides,
    check_search,
    check_sweep,
    with_the_run_s_own_command,
)
from mtdnn.training.loop import train
from mtdnn.training.resume import Resumable
from mtdnn.training.run import Run
from mtdnn.training.stages import run_stages
from mtdnn.training.summary import log_plan, record_zero_shot, write_summary
from mtdnn.training.sweeps import in_sweep, run_job, score
from mtdnn.training.tracking import SilentTracker, Tracker

log = logging.getLogger("mtdnn")


def run(cfg: DictConfig, output_dir: Path, dist: Distributed | None = None) -> dict:
    """Train as configured; returns the summary (also written to summary.json). Under torchrun every rank
    calls this; rank 0 alone writes the run folder."""
    started = time.time()
    dist = dist or Distributed()
    # 1. validate the configuration (tasks, encoder, sampler, trainer, a resumed run's settings) before data
    specs, checkpoint, changes = checked_config(cfg, output_dir)
    for change in changes:
        log.warning("resume_allow_changes: %s", change)
    output_dir = checkpoint.parent.parent if checkpoint is not None else output_dir
    with ExitStack() as held:
        claim_output_dir(output_dir, checkpoint, dist, held)
        quiet_library_progress_bars()  # datasets' and transformers' own bars (MTDNN_VERBOSE=1 shows them)
        seed_everything(cfg.seed)
        device = dist.device(pick_device(cfg.trainer.device))

        # 2. data: load and check every row, then tokenise (cached); soft targets when distilling
        init_from = Path(cfg.init_from).expanduser() if cfg.init_from else None
        tasks, tokenizer, encoder, head_weights = load_and_encode(
            cfg, specs, output_dir if checkpoint is not None else init_from
        )
        distiller = build_distiller(cfg, specs, tasks, tokenizer, encoder, device)

        # 3. model, optimizer, schedule, sampler, regularizers (or all of them as the checkpoint left them)
        model = build_model(cfg, specs, encoder, head_weights, checkpoint is None, device)
        training = build_run(cfg, (output_dir, dist, device), tasks, model, tokenizer, distiller)
        training.started = started
        start_or_restore(training, checkpoint, changes)
        # config.yaml says what the run continues with: written once the checkpoint fits the changed run
        if dist.is_main:
            write_run_files(cfg, output_dir, specs, tokenizer, encoder.config, checkpoint, changes)

        # 4. train (with trainer.compile the encoder is compiled for the steps, eager again for the report)
        if cfg.trainer.compile:
            compile_steps(training)
        state = train_steps(training)
        training.compiled = is_compiled(model.encoder)
        uncompile(model.encoder)
        dist.barrier()  # rank 0 has written the last checkpoint
        if not dist.is_main:
            return {"rank": dist.rank, "steps": state.step}

        # 5. report with the best checkpoint (reparametrized weights, e.g. R4F's, back to plain ones first)
        bake_parametrizations(model)
        summary = write_summary(training)
        del model, training  # multirun jobs share one process: free memory between jobs
        gc.collect()
        return summary


def write_run_files(cfg, output_dir: Path, specs, tokenizer, encoder_config, checkpoint, changes) -> None:
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    if checkpoint is None:
        save_run_files(output_dir, config_yaml, specs, tokenizer, encoder_config)
        if HydraConfig.initialized() and not cfg.stages:  # the command a plain `resume=auto` continues with
            save_overrides(output_dir, list(HydraConfig.get().overrides.task))
    else:
        record_resume(output_dir, config_yaml, checkpoint, changes)


def start_or_restore(training: Run, checkpoint: Path | None, changes: list[str]) -> None:
    """A fresh run prepares its regularizers (e.g. Child-Tuning's Fisher pass) and scores untrained heads; a
    resumed one takes everything from its checkpoint instead."""
    res = training.resumable
    if checkpoint is None:
        for reg in res.regularizers.values():
            reg.prepare(training.model, one_pass_in_turn(res.batches), training.device)
    else:
        restore(res, checkpoint, training.model, changes)
        training.resumed_at_step = res.state.step
    log_plan(training)
    if checkpoint is None:
        record_zero_shot(training)


def compile_steps(training: Run) -> None:
    """Compile the encoder; say so once when a regularizer's passes cannot use it."""
    compile_encoder(training.model.encoder)
    replaying = [name for name, reg in training.resumable.regularizers.items() if reg.replays_dropout]
    if replaying:  # their dropout-mask replay is a TorchDispatchMode, which TorchDynamo does not trace
        log.warning(
            "trainer.compile: %s replays dropout masks, so training passes run eager (evaluation compiles)",
            ", ".join(replaying),
        )


def train_steps(training: Run):
    """The loop, with Ctrl-C stopping it between steps (or evaluation batches) and the tracker closed however
    it ends."""
    plan, cfg = training.plan, training.trainer
    tracker = (
        Tracker(training.output_dir, plan.total_steps, training.state.step, cfg.progress_bar)
        if training.dist.is_main
        else SilentTracker()
    )
    try:
        with interrupts_at_safe_points():
            return train(training, tracker)
    finally:
        tracker.close()


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
    if not flags:  # `resume=auto output_dir=RUN` continues the run as it was configured
        overrides = with_the_run_s_own_command(overrides)
        sys.argv = [sys.argv[0], *overrides]
    # other flags (--help, --cfg, ...) go to Hydra untouched
    if overrides and not want_traceback() and not flags:
        check_overrides(overrides)
    elif overrides and not want_traceback() and flags <= {"-m", "--multirun"}:
        searching = "hydra/sweeper=search" in overrides  # Optuna expands its search space its own way
        (check_search if searching else check_sweep)(overrides)
    hydra_main()


if __name__ == "__main__":
    main()
