"""The run's report: the plan logged before training, and after it the best checkpoint's test predictions,
summary.json and the summary table."""

from __future__ import annotations

import json
import logging
import time

import torch

from mtdnn import kinds
from mtdnn.core.atomic import write_json
from mtdnn.data.sampler import task_probabilities
from mtdnn.evaluation.engine import evaluate_split, evaluate_tasks, write_records
from mtdnn.kinds.metrics import show
from mtdnn.model.adapters import trainable_parameters
from mtdnn.model.encoders import attention_of
from mtdnn.runs.checkpoints import best_checkpoint, load_weights
from mtdnn.training.affinity import heatmap, summarise
from mtdnn.training.run import Run

log = logging.getLogger("mtdnn")
# validation scores of the untrained model, for tasks whose head needs no training
ZERO_SHOT = "zero_shot.json"


def record_zero_shot(run: Run) -> None:
    """Score the tasks whose head scores untrained (a bi-encoder's cosine) before the first step: the
    baseline fine-tuning has to beat, shown beside the fine-tuned scores in the summary."""
    untrained = {n: d for n, d in run.tasks.items() if kinds.of(d.spec).scores_untrained(d.spec)}
    if not untrained:
        return
    cfg = run.trainer
    scores = evaluate_tasks(
        run.model, untrained, run.collators, "validation", cfg.eval_batch_size, run.device, cfg.bf16
    )
    for task, metrics in scores.items():
        log.info(
            "zero-shot %s (untrained encoder): %s",
            task,
            "  ".join(f"{m}={show(v)}" for m, v in metrics.items()),
        )
    if run.dist.is_main:
        write_json(run.output_dir / ZERO_SHOT, scores)


def log_plan(run: Run) -> None:
    cfg, plan, sizes = run.cfg, run.plan, run.sizes
    probs = task_probabilities(cfg.sampler, sizes)
    counts = trainable_parameters(run.model)
    lines = [
        f"run dir: {run.output_dir}",
        f"parameters: {(counts['total'] + counts['frozen']) / 1e6:.1f}M, trainable {counts['total']:,} "
        f"(shared {counts['shared']:,}; per task "
        + ", ".join(f"{t} {n:,}" for t, n in counts["per_task"].items())
        + ")",
        f"encoder: {type(run.model.encoder).__name__}, attention {attention_of(run.model.encoder)}",
        f"steps: {plan.total_steps} optimizer steps (batch {cfg.trainer.batch_size} x accum "
        f"{cfg.trainer.grad_accum}); one epoch = {plan.batches_per_epoch} batches; "
        f"evaluate every {plan.eval_every} steps; starting at step {run.state.step}",
    ]
    lines += [
        f"  task {s.name} ({s.head}): {sizes[s.name]} train rows, sampled with p={probs[s.name]:.3f}"
        for s in run.specs.values()
    ]
    log.info("\n".join(lines))


def predict_test_splits(run: Run) -> dict:
    """Each task's test predictions from the loaded (best) weights, written to predictions/; returns the
    metrics of the tasks whose test split has gold labels."""
    results = {}
    for name, data in run.tasks.items():
        if "test" not in data.encoded or not run.cfg.predict_test:
            continue
        records, scores = evaluate_split(
            run.model,
            data.spec,
            data.raw["test"],
            data.encoded["test"],
            run.collators[name],
            run.trainer.eval_batch_size,
            run.device,
            run.trainer.bf16,
        )
        write_records(run.output_dir / "predictions" / f"{name}_test.jsonl", data.spec, records)
        if scores is not None:
            results[name] = scores
    return results


def task_counts(run: Run) -> dict:
    state, sizes = run.state, run.sizes
    return {
        name: {
            "train_rows": sizes[name],
            "examples_seen": state.examples_seen.get(name, 0),
            "epochs_seen": round(state.examples_seen.get(name, 0) / sizes[name], 4),
            "skipped_rows": data.skipped_rows,
        }
        for name, data in run.tasks.items()
    }


def write_summary(run: Run) -> dict:
    """Reload the best weights, predict the test splits, and write summary.json."""
    load_weights(run.model, best_checkpoint(run.output_dir) / "model.safetensors")
    state, output_dir = run.state, run.output_dir
    summary = {
        "run_dir": str(output_dir),
        "steps": state.step,
        "resumed_at_step": run.resumed_at_step,
        "epochs": round(state.micro_batches / run.plan.batches_per_epoch, 4),
        "best_step": state.best_step,
        "skipped_steps": state.skipped_steps,
        "stopped_early": state.stopped_early,
        "task_best": state.task_best,  # with several tasks: each task's best step (best_<task>.json)
        "best_score": state.best_score,
        "validation": state.best_results,
        "test": predict_test_splits(run),
        "tasks": task_counts(run),
        "trainable_parameters": trainable_parameters(run.model),
        "attention": attention_of(run.model.encoder),  # the implementation the encoder ran (eager, sdpa, ...)
        "compiled": run.compiled,  # trainer.compile, and no graph fell back to eager
        "seconds": round(time.time() - run.started, 1),
        "train_seconds": round(state.train_seconds, 2),  # in training steps only (no evaluation, no setup)
        "peak_memory_mb": peak_memory_mb(run.device),
    }
    affinity = summarise(output_dir / "train_log.jsonl")
    if affinity is not None:  # which tasks helped which while training, and a heatmap of it
        summary["task_affinity"] = affinity
        heatmap(affinity, list(run.tasks), output_dir / "affinity.png")
    if (output_dir / ZERO_SHOT).is_file():  # bi-encoder tasks scored before training, beside the fine-tuned
        summary["zero_shot"] = json.loads((output_dir / ZERO_SHOT).read_text())
    if run.distiller is not None:
        summary["distillation"] = run.distiller.compare(
            run.model, run.tasks, run.collators, run.trainer.eval_batch_size
        )
    write_json(output_dir / "summary.json", summary)
    log.info(format_summary(summary))
    if run.distiller is not None:
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
    width = max([16, *(len(task) for task in summary["tasks"])])  # long task names keep the columns aligned
    lines = [
        f"summary (best step {summary['best_step']} of {summary['steps']}, {summary['seconds']}s):",
        f"  {'task':<{width}} {'split':<11} metrics",
    ]
    for split in ("zero_shot", "validation", "test"):
        for task, scores in summary.get(split, {}).items():
            lines.append(
                f"  {task:<{width}} {split:<11} " + "  ".join(f"{m}={show(v)}" for m, v in scores.items())
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
