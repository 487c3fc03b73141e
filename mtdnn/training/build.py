"""Building a run from its configuration: the output folder, the checked data, the tokenizer and encoder
(fresh, from a saved run, or cut from a teacher), the model, and the `Run` the loop trains (batches, plan,
optimizer, schedule, sampler, regularizers, balancer)."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mtdnn import kinds
from mtdnn.balancers import Setup, build_balancer
from mtdnn.core.distributed import Distributed
from mtdnn.core.errors import MtdnnError, raise_if
from mtdnn.data.loading import (
    TaskBatches,
    TaskData,
    check_columns,
    check_rows,
    empty_split_problems,
    encode_splits,
    length_problems,
    load_raw,
    task_seed,
)
from mtdnn.data.sampler import TaskSampler
from mtdnn.data.tasks import TaskSpec
from mtdnn.distill import Distiller, add_transfer_rows, shallow_student
from mtdnn.evaluation.engine import collator_for
from mtdnn.model.encoders import (
    build_encoder,
    build_tokenizer,
    max_length_problems,
    pretrained_source,
    saved_tokenizer_and_encoder,
)
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.regularizers import build_regularizers
from mtdnn.runs.checkpoints import list_checkpoints, remove_staging
from mtdnn.runs.folder import run_lock
from mtdnn.training.affinity import AffinityMonitor, interval, probe_batches
from mtdnn.training.optim import build_optimizer, build_scheduler
from mtdnn.training.resume import Resumable, TrainState
from mtdnn.training.run import Run, make_plan
from mtdnn.training.stages import init_from_run

log = logging.getLogger("mtdnn")


def prepare_output_dir(output_dir: Path, resuming: bool) -> None:
    """Never write a new run over an existing one, nor into one's folders: that would lose or mix up its
    checkpoints and metrics."""
    if (
        output_dir.exists()
        and not resuming
        and (holds_run(output_dir) or (output_dir / "summary.json").exists())
    ):
        raise MtdnnError(
            f"output_dir: {output_dir} already holds a run; pass resume=auto to continue it "
            "or choose another output_dir"
        )
    # a staged run's folder holds its stages' runs, but no checkpoints or best.json of its own
    inside = next((folder for folder in output_dir.resolve().parents if holds_run(folder)), None)
    if inside is not None:
        raise MtdnnError(
            f"output_dir: {output_dir} is inside the run folder {inside}; choose a folder outside it"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise MtdnnError(f"output_dir: cannot write to {output_dir}: {err.strerror}") from None


def holds_run(folder: Path) -> bool:
    return bool(list_checkpoints(folder)) or (folder / "best.json").exists()


def prepare_data(specs: list[TaskSpec]) -> dict[str, TaskData]:
    """Load every split of every task and check all columns and rows; one error lists every problem."""
    tasks, problems = {}, []
    for spec in specs:
        try:
            data = TaskData(spec, load_raw(spec))
        except MtdnnError as err:
            problems += err.problems
            continue
        column_problems = empty_split_problems(spec, data.raw) or check_columns(spec, data.raw)
        problems += column_problems or check_rows(data)
        tasks[spec.name] = data
    raise_if(problems, "the data has problems")
    return tasks


def train_texts(tasks: dict[str, TaskData]):
    """Every training text, for learning a tiny tokenizer (rows are in each kind's layout by now)."""
    for data in tasks.values():
        yield from kinds.of(data.spec).train_texts(data.spec, data.raw["train"])


def tokenizer_and_encoder(cfg: DictConfig, tasks: dict[str, TaskData], saved_run: Path | None):
    """(tokenizer, encoder, head weights to start from): a saved run's architecture (resume, init_from;
    weights come later), a student cut from a teacher, or the configured pretrained encoder."""
    if saved_run is not None:
        return (*saved_tokenizer_and_encoder(saved_run), {})
    if cfg.distill.mode == "ensemble" and cfg.distill.student_from_teacher:
        return shallow_student(
            cfg.distill.teachers[0],
            cfg.distill.teacher_checkpoint,
            cfg.distill.keep_every,
            cfg.distill.keep_ffn,
        )
    source = pretrained_source(cfg.encoder)
    tokenizer = build_tokenizer(cfg.encoder, source, train_texts(tasks))
    return tokenizer, build_encoder(cfg.encoder, source, len(tokenizer)), {}


def quiet_library_progress_bars() -> None:
    """No "Generating train split" or "Loading weights" bars in a run's output, unless MTDNN_VERBOSE=1."""
    import os

    import datasets
    import transformers

    if os.environ.get("MTDNN_VERBOSE") == "1":
        return

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def claim_output_dir(output_dir: Path, checkpoint: Path | None, dist: Distributed, held: ExitStack) -> None:
    """Rank 0 checks and tidies the folder and holds its lock (in `held`) until the run ends, however it ends;
    the other ranks read the folder only once it has."""
    if dist.is_main:
        prepare_output_dir(output_dir, resuming=checkpoint is not None)
        held.enter_context(run_lock(output_dir))
        if checkpoint is not None:
            remove_staging(output_dir)
    dist.barrier()


def load_and_encode(cfg: DictConfig, specs: list[TaskSpec], saved_run: Path | None):
    """Every task's rows loaded and checked, then tokenised (cached); returns (tasks, tokenizer, encoder,
    head weights of a teacher the student starts from, or None)."""
    tasks = prepare_data(specs)
    tokenizer, encoder, head_weights = tokenizer_and_encoder(cfg, tasks, saved_run)
    raise_if(
        max_length_problems(specs, encoder, tokenizer) + length_problems(tasks, tokenizer),
        "the task configuration has problems",
    )
    for data in tasks.values():
        encode_splits(data, tokenizer)
    return tasks, tokenizer, encoder, head_weights


def build_distiller(cfg: DictConfig, specs: list[TaskSpec], tasks: dict, tokenizer, encoder, device):
    """The teachers and their soft targets when distilling (distill=ensemble)."""
    if cfg.distill.mode != "ensemble":
        return None
    distiller = Distiller(cfg.distill, specs, device, encoder.config)
    for name, rows in add_transfer_rows(cfg.distill, tasks, tokenizer).items():
        log.info("transfer set for %s: %d rows only the teachers label", name, rows)
    for name, origin in distiller.attach_soft_targets(tasks, tokenizer, cfg.trainer.eval_batch_size).items():
        log.info("soft targets for %s: %s", name, origin)
    return distiller


def build_model(cfg: DictConfig, specs: list[TaskSpec], encoder, head_weights, fresh: bool, device):
    """The shared encoder and a head per task; a staged run starts from an earlier run's best weights, a
    student from its teacher's heads (where they fit: a cross-encoder teacher's head does not fit a
    bi-encoder student's)."""
    adapter = OmegaConf.to_container(cfg.adapter, resolve=True)
    model = MultiTaskModel(encoder, specs, cfg.encoder.pooling, adapter).to(device)
    if cfg.init_from and fresh:
        head_weights = init_from_run(model, Path(cfg.init_from).expanduser(), cfg.init_heads)
    if head_weights:
        own = model.heads.state_dict()
        fitting = {k: v for k, v in head_weights.items() if k in own and own[k].shape == v.shape}
        model.heads.load_state_dict(fitting, strict=False)
    return model


def build_run(
    cfg: DictConfig,
    where: tuple[Path, Distributed, torch.device],
    tasks: dict,
    model,
    tokenizer,
    distiller: Distiller | None,
) -> Run:
    """Batches, plan, optimizer, schedule, sampler, regularizers and balancer for `model` on `tasks`: a fresh
    run's, which a resumed run then overwrites with its checkpoint's."""
    output_dir, dist, device = where
    specs = [data.spec for data in tasks.values()]
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
    learned = distiller.parameters() if distiller is not None else []  # the distillation's own projection
    optimizer = build_optimizer(model, cfg.trainer, {s.name: s.head_lr for s in specs}, learned)
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
        distiller,
    )
    monitor = None
    every = interval(cfg.trainer.affinity_every, len(specs))
    if len(specs) > 1 and every > 0:  # on every rank: a measured step is logged, and logging is collective
        monitor = AffinityMonitor(probe_batches(tasks, collators, cfg.trainer.batch_size, device), every)
    return Run(cfg, output_dir, device, dist, tasks, model, collators, plan, resumable, distiller, monitor)
