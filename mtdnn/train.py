"""`python -m mtdnn.train task=[...] encoder=... sampler=...`: compose -> validate -> build -> loop -> report."""

from __future__ import annotations

import gc
import json
import logging
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mtdnn import config as _config  # noqa: F401  (registers the typed schemas with Hydra)
from mtdnn import kinds
from mtdnn.adapters import adapter_problems, trainable_parameters
from mtdnn.data import TaskBatches, TaskData, check_columns, check_rows, encode_splits, load_raw, task_seed
from mtdnn.encoders import build_encoder, build_tokenizer, encoder_problems, pretrained_source, \
    saved_tokenizer_and_encoder
from mtdnn.errors import MtdnnError, cli_errors, config_error_line, raise_if
from mtdnn.inference import collator_for, evaluate_split, write_records
from mtdnn.loop import Plan, TrainState, make_plan, train
from mtdnn.model import MultiTaskModel, bake_parametrizations
from mtdnn.optim import build_optimizer, build_scheduler
from mtdnn.paths import conf_dir
from mtdnn.distributed import Distributed
from mtdnn.distill import Distiller, distill_problems, shallow_student
from mtdnn.regularizers import build_regularizers, regularizer_problems
from mtdnn.rundir import (best_checkpoint, list_checkpoints, load_trainer_state, load_weights, remove_staging,
                          resolve_resume, save_run_files, seed_everything, set_rng_state, write_json)
from mtdnn.sampler import TaskSampler, sampler_problems, task_probabilities
from mtdnn.schema import suggest
from mtdnn.tasks import TaskSpec, load_tasks
from mtdnn.tracking import SilentTracker, Tracker

log = logging.getLogger("mtdnn")


def task_names(task) -> list[str]:
    names = [task] if isinstance(task, str) else list(task)
    return [str(n) for n in names]


def unknown_key_problems(cfg: DictConfig) -> list[str]:
    """Keys added with '+' that no code reads: a typo there would otherwise silently do nothing."""
    import dataclasses

    from mtdnn.config import EncoderConfig, SamplerConfig, TrainConfig, TrainerConfig

    problems = []
    for prefix, node, schema in (("", cfg, TrainConfig), ("trainer.", cfg.trainer, TrainerConfig),
                                 ("encoder.", cfg.encoder, EncoderConfig), ("sampler.", cfg.sampler, SamplerConfig)):
        fields = {f.name for f in dataclasses.fields(schema)}
        problems += [f"{prefix}{key}: unknown setting{suggest(str(key), fields)}" for key in node
                     if key not in fields and key != "hydra"]
    return problems


def run_problems(cfg: DictConfig, specs: list[TaskSpec]) -> list[str]:
    """Checks of the run config that need the task specs; all reported together with encoder problems."""
    t = cfg.trainer
    problems = unknown_key_problems(cfg)
    problems += encoder_problems(cfg.encoder) + sampler_problems(cfg.sampler, [s.name for s in specs])
    problems += regularizer_problems(OmegaConf.to_container(cfg.regularizer, resolve=True), specs)
    problems += distill_problems(cfg.distill, specs) + adapter_problems(cfg.adapter)
    for name in ("batch_size", "eval_batch_size", "grad_accum", "log_every", "pad_to_multiple_of", "evals_per_epoch",
                 "max_consecutive_skips", "bucket_batches"):
        if t[name] < 1:
            problems.append(f"trainer.{name}: must be >= 1, got {t[name]}")
    if t.lr <= 0:
        problems.append(f"trainer.lr: must be > 0, got {t.lr}")
    if not 0 <= t.warmup_ratio < 1:
        problems.append(f"trainer.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    if t.max_steps is None and t.epochs <= 0:
        problems.append(f"trainer.epochs: must be > 0, got {t.epochs}")
    if t.max_steps is not None and t.max_steps < 1:
        problems.append(f"trainer.max_steps: must be >= 1, got {t.max_steps}")
    if cfg.init_from and not (Path(cfg.init_from).expanduser() / "best.json").is_file():
        problems.append(f"init_from: {cfg.init_from} is not a finished mtdnn run (no best.json)")
    if t.best_metric != "mean":
        by_name = {s.name: s for s in specs}
        task, _, metric = t.best_metric.partition("/")
        if task not in by_name or metric not in by_name[task].metrics:
            problems.append(f"trainer.best_metric: '{t.best_metric}' is neither 'mean' nor <task>/<metric> "
                            "of a selected task")
    if t.bf16 and t.device == "cpu" and not torch.backends.mkldnn.is_available():
        problems.append("trainer.bf16: this CPU build has no bfloat16 support")
    return problems


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MtdnnError(f"trainer.device: '{name}' requested but CUDA is not available")
    return torch.device(name)


def prepare_data(specs: list[TaskSpec]) -> dict[str, TaskData]:
    """Load every split of every task and check all columns and rows; one error lists every problem."""
    tasks, problems = {}, []
    for spec in specs:
        try:
            data = TaskData(spec, load_raw(spec))
        except MtdnnError as err:
            problems += err.problems
            continue
        column_problems = check_columns(spec, data.raw)
        problems += column_problems or check_rows(data)
        tasks[spec.name] = data
    raise_if(problems, "the data has problems")
    return tasks


def quiet_library_progress_bars() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def prepare_output_dir(output_dir: Path, resuming: bool) -> None:
    """Never write a new run over an existing one: that would lose its checkpoints and metrics."""
    if output_dir.exists() and not resuming and (list_checkpoints(output_dir) or (output_dir / "best.json").exists()
                                                 or (output_dir / "summary.json").exists()):
        raise MtdnnError(f"output_dir: {output_dir} already holds a run; pass resume=auto to continue it "
                         "or choose another output_dir")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise MtdnnError(f"output_dir: cannot write to {output_dir}: {err.strerror}") from None


def run(cfg: DictConfig, output_dir: Path, dist: Distributed | None = None) -> dict:
    """Train as configured; returns the summary (also written to summary.json). Under torchrun every rank
    calls this; rank 0 alone writes the run folder."""
    started = time.time()
    dist = dist or Distributed()
    # 1. validate the configuration: tasks, encoder, sampler, trainer, before touching any data
    raise_if([f"{key}: required, but not given (e.g. {key}=...)" for key in sorted(OmegaConf.missing_keys(cfg))],
             "the run configuration is incomplete")
    specs = load_tasks(task_names(cfg.task), list(cfg.task_dirs),
                       OmegaConf.to_container(cfg.task_overrides, resolve=True))
    raise_if(run_problems(cfg, specs), "the run configuration has problems")
    checkpoint = resolve_resume(cfg.resume, output_dir) if cfg.resume else None
    if checkpoint is not None:
        output_dir = checkpoint.parent.parent
    if dist.is_main:
        prepare_output_dir(output_dir, resuming=checkpoint is not None)
        if checkpoint is not None:
            remove_staging(output_dir)
    dist.barrier()  # the other ranks read the folder only once rank 0 has checked and tidied it
    if not cfg.trainer.progress_bar:
        quiet_library_progress_bars()
    seed_everything(cfg.seed)
    device = dist.device(pick_device(cfg.trainer.device))

    # 2. data: load and check every row, then tokenise (cached)
    tasks = prepare_data(specs)
    head_weights = {}
    if checkpoint is not None or cfg.init_from:  # the saved run's tokenizer and architecture; weights come later
        tokenizer, encoder = saved_tokenizer_and_encoder(output_dir if checkpoint is not None else
                                                         Path(cfg.init_from).expanduser())
    elif cfg.distill.mode == "ensemble" and cfg.distill.student_from_teacher:
        tokenizer, encoder, head_weights = shallow_student(cfg.distill.teachers[0], cfg.distill.teacher_checkpoint,
                                                           cfg.distill.keep_every)
    else:
        source = pretrained_source(cfg.encoder)
        tokenizer = build_tokenizer(cfg.encoder, source, _train_texts(tasks))
        encoder = build_encoder(cfg.encoder, source, len(tokenizer))
    for data in tasks.values():
        encode_splits(data, tokenizer)
    distiller = Distiller(cfg.distill, specs, device) if cfg.distill.mode == "ensemble" else None
    if distiller is not None:
        for name, origin in distiller.attach_soft_targets(tasks, tokenizer, cfg.trainer.eval_batch_size).items():
            log.info("soft targets for %s: %s", name, origin)

    # 3. model, optimizer, schedule, sampler
    model = MultiTaskModel(encoder, specs, cfg.encoder.pooling, cfg.adapter).to(device)
    if cfg.init_from and checkpoint is None:  # staged training: start from an earlier run's best weights
        head_weights = init_from_run(model, Path(cfg.init_from).expanduser(), cfg.init_heads)
    if head_weights:  # the student starts from the teacher's heads too
        model.heads.load_state_dict({k: v for k, v in head_weights.items()
                                     if k.split(".")[0] in model.heads}, strict=False)
    if checkpoint is None and dist.is_main:
        save_run_files(output_dir, OmegaConf.to_yaml(cfg, resolve=True), specs, tokenizer, encoder.config)
    collators = {s.name: collator_for(s, tokenizer, cfg.trainer.pad_to_multiple_of) for s in specs}
    # data parallel: each task's batches are planned at the job's batch size; every rank takes its share
    batches = {s.name: TaskBatches(tasks[s.name].encoded["train"], cfg.trainer.batch_size * dist.world,
                                   task_seed(cfg.seed, s.name), collators[s.name], cfg.trainer.bucket_batches,
                                   dist.shard if dist.active else None)
               for s in specs}
    plan = make_plan(cfg.trainer, batches)
    optimizer = build_optimizer(model, cfg.trainer)
    scheduler = build_scheduler(optimizer, cfg.trainer, plan.total_steps)
    sizes = {s.name: len(tasks[s.name].encoded["train"]) for s in specs}
    sampler = TaskSampler(cfg.sampler, sizes, plan.total_steps * cfg.trainer.grad_accum, cfg.seed)
    regularizers = build_regularizers(OmegaConf.to_container(cfg.regularizer, resolve=True), model, specs)
    if checkpoint is None:  # e.g. Child-Tuning's Fisher pass (a resumed run restores its result instead)
        for reg in regularizers.values():
            reg.prepare(model, ((t, batch) for t, b in batches.items() for batch in b.one_pass()), device)
    state = TrainState()
    if checkpoint is not None:
        _restore(checkpoint, model, optimizer, scheduler, sampler, batches, regularizers, state)
    _log_plan(specs, sizes, plan, cfg, model, output_dir, state)
    first_step = state.step

    # 4. train
    tracker = Tracker(output_dir, plan.total_steps, state.step, cfg.trainer.progress_bar) if dist.is_main \
        else SilentTracker()
    try:
        state = train(model, tasks, batches, collators, sampler, optimizer, scheduler, regularizers, cfg.trainer,
                      plan, state, tracker, device, distiller, dist)
    finally:
        tracker.close()

    dist.barrier()  # rank 0 has written the last checkpoint
    if not dist.is_main:
        return {"rank": dist.rank, "steps": state.step}

    # 5. report with the best checkpoint (reparametrized weights, e.g. R4F's, back to plain ones first)
    bake_parametrizations(model)
    summary = _report(cfg, model, tasks, collators, plan, state, output_dir, device, sizes, started,
                      resumed_at_step=first_step if checkpoint is not None else None, distiller=distiller)
    del model, optimizer, batches, regularizers  # multirun jobs share one process: free memory between jobs
    gc.collect()
    return summary


def init_from_run(model: MultiTaskModel, run_dir: Path, keep_heads: bool) -> dict[str, torch.Tensor]:
    """Load an earlier run's best encoder weights into `model`; return its head weights to keep (or none)."""
    from safetensors.torch import load_file

    weights = load_file(str(best_checkpoint(run_dir) / "model.safetensors"))
    encoder = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
    missing, unexpected = model.encoder.load_state_dict(encoder, strict=False)
    if missing or unexpected:
        raise MtdnnError(f"init_from: {run_dir}'s encoder does not fit this run's (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    if not keep_heads:
        return {}
    heads = {k.removeprefix("heads."): v for k, v in weights.items() if k.startswith("heads.")}
    for key, value in heads.items():
        task = key.split(".")[0]
        mine = model.heads.state_dict().get(key) if task in model.heads else None
        if mine is not None and mine.shape != value.shape:
            raise MtdnnError(f"init_from: task {task}'s head in {run_dir} has shape {tuple(value.shape)} for {key}, "
                             f"this run's has {tuple(mine.shape)} (a different label set?); pass init_heads=false")
    return heads


def run_stages(cfg: DictConfig, output_dir: Path, compose_stage, dist: Distributed | None = None) -> dict:
    """Staged (STILTs) training: each stage is this run's config plus its own overrides (composed by
    `compose_stage(overrides)`), written to <output_dir>/stages/<n>_<name>, and starts from the previous stage's
    best checkpoint. Rerunning the command skips finished stages and resumes an interrupted one."""
    names = [stage.name for stage in cfg.stages]
    raise_if([f"stages[{i}].heads: must be keep or reset, got '{s.heads}'" for i, s in enumerate(cfg.stages)
              if s.heads not in ("keep", "reset")]
             + [f"stages: the name '{n}' is used twice" for n in sorted(set(names)) if names.count(n) > 1],
             "the stage configuration has problems")
    results, previous = [], None
    for number, stage in enumerate(cfg.stages, start=1):
        stage_dir = output_dir / "stages" / f"{number}_{stage.name}"
        chained = [f"init_from={previous}", f"init_heads={stage.heads == 'keep'}"] if previous else []
        resume = "auto" if list_checkpoints(stage_dir) else "null"  # an interrupted stage continues
        stage_cfg = compose_stage([*stage.overrides, *chained, f"output_dir={stage_dir}", f"resume={resume}",
                                   "stages=[]"])
        if (stage_dir / "summary.json").is_file():
            log.info("stage %s: already done (%s)", stage.name, stage_dir)
            summary = json.loads((stage_dir / "summary.json").read_text())
        else:
            log.info("stage %d/%d: %s", number, len(cfg.stages), stage.name)
            summary = run(stage_cfg, stage_dir, dist)
        results.append({"stage": stage.name, **summary})
        previous = stage_dir
    if dist is not None and not dist.is_main:
        return {}
    summary = {"run_dir": str(output_dir), "stages": results, "best_score": results[-1]["best_score"]}
    write_json(output_dir / "summary.json", summary)
    return summary


def _train_texts(tasks: dict[str, TaskData]):
    """Every training text, for learning a tiny tokenizer (rows are in each kind's layout by now)."""
    for data in tasks.values():
        yield from kinds.of(data.spec).train_texts(data.spec, data.raw["train"])


def _restore(checkpoint: Path, model, optimizer, scheduler, sampler, batches, regularizers,
             state: TrainState) -> None:
    trainer_state = load_trainer_state(checkpoint)
    load_weights(model, checkpoint / "model.safetensors")
    optimizer.load_state_dict(trainer_state["optimizer"])
    scheduler.load_state_dict(trainer_state["scheduler"])
    sampler.load_state_dict(trainer_state["sampler"])
    for task, batch_state in trainer_state["batches"].items():
        batches[task].load_state_dict(batch_state)
    for name, reg in regularizers.items():
        reg.load_state_dict(trainer_state.get("regularizers", {}).get(name, {}))
    state.load_state_dict(trainer_state["train"])
    set_rng_state(trainer_state["rng"])
    log.info("resumed from %s at step %d", checkpoint, state.step)


def _log_plan(specs, sizes, plan: Plan, cfg, model, output_dir: Path, state: TrainState) -> None:
    probs = task_probabilities(cfg.sampler, sizes)
    counts = trainable_parameters(model)
    lines = [f"run dir: {output_dir}",
             f"parameters: {(counts['total'] + counts['frozen']) / 1e6:.1f}M, trainable {counts['total']:,} "
             f"(shared {counts['shared']:,}; per task " + ", ".join(f"{t} {n:,}" for t, n in counts["per_task"].items())
             + ")",
             f"steps: {plan.total_steps} optimizer steps (batch {cfg.trainer.batch_size} x accum "
             f"{cfg.trainer.grad_accum}); one epoch = {plan.batches_per_epoch} batches; "
             f"evaluate every {plan.eval_every} steps; starting at step {state.step}"]
    lines += [f"  task {s.name} ({s.head}): {sizes[s.name]} train rows, sampled with p={probs[s.name]:.3f}"
              for s in specs]
    log.info("\n".join(lines))


def _report(cfg, model, tasks, collators, plan: Plan, state: TrainState, output_dir: Path, device, sizes,
            started: float, resumed_at_step: int | None, distiller: Distiller | None) -> dict:
    """Reload the best weights, predict the test splits, and write summary.json."""
    load_weights(model, best_checkpoint(output_dir) / "model.safetensors")
    test_results = {}
    for name, data in tasks.items():
        if "test" not in data.encoded or not cfg.predict_test:
            continue
        records, scores = evaluate_split(model, data.spec, data.raw["test"], data.encoded["test"], collators[name],
                                         cfg.trainer.eval_batch_size, device, cfg.trainer.bf16)
        write_records(output_dir / "predictions" / f"{name}_test.jsonl", data.spec, records)
        if scores is not None:
            test_results[name] = scores
    summary = {
        "run_dir": str(output_dir),
        "steps": state.step,
        "resumed_at_step": resumed_at_step,
        "epochs": round(state.micro_batches / plan.batches_per_epoch, 4),
        "best_step": state.best_step,
        "skipped_steps": state.skipped_steps,
        "best_score": state.best_score,
        "validation": state.best_results,
        "test": test_results,
        "tasks": {name: {"train_rows": sizes[name], "examples_seen": state.examples_seen.get(name, 0),
                         "epochs_seen": round(state.examples_seen.get(name, 0) / sizes[name], 4),
                         "skipped_rows": tasks[name].skipped_rows}
                  for name in tasks},
        "trainable_parameters": trainable_parameters(model),
        "seconds": round(time.time() - started, 1),
        "train_seconds": round(state.train_seconds, 2),  # in training steps only (no evaluation, no setup)
    }
    if distiller is not None:
        summary["distillation"] = distiller.compare(model, tasks, collators, cfg.trainer.eval_batch_size)
    write_json(output_dir / "summary.json", summary)
    log.info(format_summary(summary))
    if distiller is not None:
        log.info(format_distillation(summary["distillation"]))
    return summary


def format_distillation(rows: list[dict]) -> str:
    lines = ["student vs teachers on the validation sets:",
             f"  {'model':<28} {'task':<14} {'metric':<12} {'value':>8} {'params':>9} {'examples/s':>11}"]
    lines += [f"  {r['model']:<28} {r['task']:<14} {r['metric']:<12} {r['value']:>8.4f} "
              f"{r['parameters'] / 1e6:>8.1f}M {r['examples_per_s']:>11.1f}" for r in rows]
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    lines = [f"summary (best step {summary['best_step']} of {summary['steps']}, {summary['seconds']}s):",
             f"  {'task':<16} {'split':<11} metrics"]
    for split in ("validation", "test"):
        for task, scores in summary[split].items():
            lines.append(f"  {task:<16} {split:<11} " + "  ".join(f"{m}={v:.4f}" for m, v in scores.items()))
    for task, info in summary["tasks"].items():
        if info["skipped_rows"]:
            lines.append(f"  {task}: skipped bad rows {info['skipped_rows']} (on_bad_row: skip)")
    lines.append(f"  written to {summary['run_dir']}/summary.json")
    return "\n".join(lines)


@cli_errors
def _main(cfg: DictConfig) -> dict:
    dist = Distributed()  # torchrun: one process per rank; a plain run is rank 0 of 1
    if not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one rank tells the story
    try:  # Hydra may name the run folder differently in each process: rank 0's wins
        output_dir = dist.broadcast(Path(cfg.output_dir or HydraConfig.get().runtime.output_dir).resolve())
        if cfg.stages:
            command_line = list(HydraConfig.get().overrides.task)
            return run_stages(cfg, output_dir, lambda extra: hydra.compose("train", overrides=[*command_line, *extra]),
                              dist)
        return run(cfg, output_dir, dist)
    finally:
        dist.close()


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    summary = _main(cfg)
    return summary.get("best_score")  # sweepers optimise this


@cli_errors
def check_overrides(overrides: list[str]) -> None:
    """Compose once before Hydra does, so a bad override is one clear line instead of Hydra's report."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            compose("train", overrides=overrides, return_hydra_config=True)
    except Exception as err:  # Hydra and OmegaConf raise many types; all mean "this override is wrong"
        raise MtdnnError(one_line(err)) from None
    finally:
        GlobalHydra.instance().clear()


def one_line(err: Exception) -> str:
    from omegaconf.errors import OmegaConfBaseException

    from hydra.errors import MissingConfigException

    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options is not None:
        group, _, name = err.missing_cfg_file.rpartition("/")
        options = [o for o in err.options if not o.endswith("_schema")]
        return f"{group}={name}: no such option{suggest(name, options)}; available: {', '.join(options)}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        return config_error_line(cause)
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip())


def main() -> None:
    import sys

    from mtdnn.errors import want_traceback

    args = sys.argv[1:]
    # flags (--multirun, --help, --cfg, ...) and sweeps go to Hydra untouched
    if args and not any(a.startswith("-") for a in args) and not want_traceback():
        check_overrides(args)
    hydra_main()


if __name__ == "__main__":
    main()
