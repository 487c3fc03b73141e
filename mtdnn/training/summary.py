"""The run's report: the plan logged before training, and after it the best checkpoint's test predictions,
summary.json and the summary table."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from mtdnn import kinds
from mtdnn.core.atomic import write_json
from mtdnn.data.sampler import task_probabilities
from mtdnn.distill import Distiller
from mtdnn.evaluation.engine import evaluate_split, evaluate_tasks, write_records
from mtdnn.kinds.metrics import show
from mtdnn.model.adapters import trainable_parameters
from mtdnn.runs.checkpoints import best_checkpoint, load_weights
from mtdnn.training.loop import Plan
from mtdnn.training.resume import TrainState

log = logging.getLogger("mtdnn")
# validation scores of the untrained model, for tasks whose head needs no training
ZERO_SHOT = "zero_shot.json"


def record_zero_shot(model, tasks, collators, cfg, output_dir: Path, device, is_main: bool) -> None:
    """Score the tasks whose head scores untrained (a bi-encoder's cosine) before the first step: the
    baseline fine-tuning has to beat, shown beside the fine-tuned scores in the summary."""
    untrained = {n: d for n, d in tasks.items() if kinds.of(d.spec).scores_untrained(d.spec)}
    if not untrained:
        return
    scores = evaluate_tasks(
        model, untrained, collators, "validation", cfg.trainer.eval_batch_size, device, cfg.trainer.bf16
    )
    for task, metrics in scores.items():
        log.info(
            "zero-shot %s (untrained encoder): %s",
            task,
            "  ".join(f"{m}={show(v)}" for m, v in metrics.items()),
        )
    if is_main:
        write_json(output_dir / ZERO_SHOT, scores)


def log_plan(specs, sizes, plan: Plan, cfg, model, output_dir: Path, state: TrainState) -> None:
    probs = task_probabilities(cfg.sampler, sizes)
    counts = trainable_parameters(model)
    lines = [
        f"run dir: {output_dir}",
        f"parameters: {(counts['total'] + counts['frozen']) / 1e6:.1f}M, trainable {counts['total']:,} "
        f"(shared {counts['shared']:,}; per task "
        + ", ".join(f"{t} {n:,}" for t, n in counts["per_task"].items())
        + ")",
        f"steps: {plan.total_steps} optimizer steps (batch {cfg.trainer.batch_size} x accum "
        f"{cfg.trainer.grad_accum}); one epoch = {plan.batches_per_epoch} batches; "
        f"evaluate every {plan.eval_every} steps; starting at step {state.step}",
    ]
    lines += [
        f"  task {s.name} ({s.head}): {sizes[s.name]} train rows, sampled with p={probs[s.name]:.3f}"
        for s in specs
    ]
    log.info("\n".join(lines))


def write_summary(
    cfg,
    model,
    tasks,
    collators,
    plan: Plan,
    state: TrainState,
    output_dir: Path,
    device,
    sizes,
    started: float,
    resumed_at_step: int | None,
    distiller: Distiller | None,
) -> dict:
    """Reload the best weights, predict the test splits, and write summary.json."""
    load_weights(model, best_checkpoint(output_dir) / "model.safetensors")
    test_results = {}
    for name, data in tasks.items():
        if "test" not in data.encoded or not cfg.predict_test:
            continue
        records, scores = evaluate_split(
            model,
            data.spec,
            data.raw["test"],
            data.encoded["test"],
            collators[name],
            cfg.trainer.eval_batch_size,
            device,
            cfg.trainer.bf16,
        )
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
        "stopped_early": state.stopped_early,
        "task_best": state.task_best,  # with several tasks: each task's best step (best_<task>.json)
        "best_score": state.best_score,
        "validation": state.best_results,
        "test": test_results,
        "tasks": {
            name: {
                "train_rows": sizes[name],
                "examples_seen": state.examples_seen.get(name, 0),
                "epochs_seen": round(state.examples_seen.get(name, 0) / sizes[name], 4),
                "skipped_rows": tasks[name].skipped_rows,
            }
            for name in tasks
        },
        "trainable_parameters": trainable_parameters(model),
        "seconds": round(time.time() - started, 1),
        "train_seconds": round(state.train_seconds, 2),  # in training steps only (no evaluation, no setup)
        "peak_memory_mb": peak_memory_mb(device),
    }
    if (output_dir / ZERO_SHOT).is_file():  # bi-encoder tasks scored before training, beside the fine-tuned
        summary["zero_shot"] = json.loads((output_dir / ZERO_SHOT).read_text())
    if distiller is not None:
        summary["distillation"] = distiller.compare(model, tasks, collators, cfg.trainer.eval_batch_size)
    write_json(output_dir / "summary.json", summary)
    log.info(format_summary(summary))
    if distiller is not None:
        log.info(format_distillation(summary["distillation"]))
    return summary


def format_distillation(rows: list[dict]) -> str:
    lines = [
        "student vs teachers on the validation sets:",
        f"  {'model':<28} {'task':<14} {'metric':<12} {'value':>8} {'params':>9} {'examples/s':>11}",
    ]
    lines += [
        f"  {r['model']:<28} {r['task']:<14} {r['metric']:<12} {r['value']:>8.4f} "
        f"{r['parameters'] / 1e6:>8.1f}M {r['examples_per_s']:>11.1f}"
        for r in rows
    ]
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    lines = [
        f"summary (best step {summary['best_step']} of {summary['steps']}, {summary['seconds']}s):",
        f"  {'task':<16} {'split':<11} metrics",
    ]
    for split in ("zero_shot", "validation", "test"):
        for task, scores in summary.get(split, {}).items():
            lines.append(
                f"  {task:<16} {split:<11} " + "  ".join(f"{m}={show(v)}" for m, v in scores.items())
            )
    for task, info in summary["tasks"].items():
        if info["skipped_rows"]:
            lines.append(f"  {task}: skipped bad rows {info['skipped_rows']} (on_bad_row: skip)")
    lines.append(f"  written to {summary['run_dir']}/summary.json")
    return "\n".join(lines)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """The run's memory high-water mark: the accelerator's allocated peak, and the process's resident set."""
    import resource

    peak = {"process_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # Linux: KiB
    if device.type == "cuda":
        peak["cuda_allocated"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak
