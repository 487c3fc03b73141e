"""The training loop, read top to bottom: `train` is the step's four parts in order (accumulate, optimizer
step, log, evaluate and checkpoint), each a function below it."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext

import torch

from mtdnn.balancers import TaskGradients
from mtdnn.core.config import TrainerConfig
from mtdnn.core.errors import MtdnnError
from mtdnn.core.interrupts import stop_if_interrupted
from mtdnn.evaluation.engine import autocast, evaluate_tasks, main_score
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.regularizers import Regularizer, StepContext
from mtdnn.regularizers.dropout import DropoutReplay
from mtdnn.runs.checkpoints import rotate_checkpoints, save_best, save_checkpoint
from mtdnn.training.resume import TrainState
from mtdnn.training.run import Run
from mtdnn.training.tracking import LossMeter, Tracker

log = logging.getLogger(__name__)


def forward_backward(
    model: MultiTaskModel,
    task: str,
    batch: dict[str, torch.Tensor],
    regularizers: dict[str, Regularizer],
    scale: float,
    bf16: bool,
    distiller=None,
    timed: bool = False,
) -> dict[str, torch.Tensor]:
    """One micro-batch: clean forward, task loss (or the distillation loss), regularizer terms, backward.
    Returns the detached terms and, when `timed`, per regularizer the seconds its penalty took (its extra
    forward cost; timing waits for the GPU, so the loop asks for it on logged steps only)."""

    device = batch["input_ids"].device

    def loss_of(out: torch.Tensor) -> torch.Tensor:  # the task loss, or the distillation loss when distilling
        return distiller.loss(model, task, out, batch) if distiller else model.head(task).loss(out, batch)

    # record the clean pass's dropout masks only for regularizers that replay them in later passes
    dropout = DropoutReplay(device) if any(reg.replays_dropout for reg in regularizers.values()) else None
    layered = distiller is not None and distiller.layers is not None  # layer-wise distillation terms
    with_hidden = layered or any(reg.needs_hidden_states for reg in regularizers.values())
    with autocast(device, bf16):
        embeds = model.embed(batch["input_ids"])
        watch = distiller.watching(model) if layered else nullcontext({})  # the last layer's Q, K, V
        with dropout.record() if dropout else nullcontext(), watch as seen:
            out = model(task, **batch, inputs_embeds=embeds, hidden_states=with_hidden)
        logits, hidden = out if with_hidden else (out, None)
        loss = loss_of(logits)
        ctx = StepContext(model, task, batch, embeds, logits, dropout, loss_of, scale, hidden, loss)
        terms = distiller.layer_terms(task, batch, hidden, seen) if layered else {}
        costs = {}
        for name, reg in regularizers.items():
            started = time.perf_counter()
            terms.update(reg.penalty(ctx))
            if timed:
                costs[f"cost_s/{name}"] = torch.tensor(elapsed_since(started, device))
    # FreeLB without the clean loss: its own passes replace it (weight 0); detached terms are only logged
    weight = min((reg.task_loss_weight for reg in regularizers.values()), default=1.0)
    parts = [t for t in terms.values() if t.requires_grad] + ([weight * loss] if weight else [])
    if parts:
        (sum(parts) * scale).backward()
    return {"loss": loss.detach(), **{name: value.detach() for name, value in terms.items()}, **costs}


def step_tasks(sampler, cfg: TrainerConfig) -> list[list[str]]:
    """The micro-batches of one optimizer step, by task, in groups whose gradients a balancer sees apart:
    one group of grad_accum independently drawn tasks, or tasks_per_step groups of one task each."""
    if cfg.tasks_per_step == 1:
        return [[sampler.next() for _ in range(cfg.grad_accum)]]
    return [[task] * cfg.grad_accum for task in sampler.next_distinct(cfg.tasks_per_step)]


class StepLosses:
    """Each task's mean training loss over the micro-batches of one step (kept on the device until asked)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, task: str, loss: torch.Tensor, share: float) -> None:
        self.sums[task] = self.sums.get(task, 0.0) + loss.float() * share
        self.counts[task] = self.counts.get(task, 0) + 1

    def means(self) -> dict[str, float]:
        return {task: float(total) / self.counts[task] for task, total in self.sums.items()}


@torch.no_grad()
def rescored_losses(
    model: MultiTaskModel,
    drawn: list[tuple[str, dict, float]],
    device: torch.device,
    bf16: bool,
    distiller=None,
) -> dict[str, float]:
    """The training loss of this step's batches again, after the update (no gradient; train mode, as the
    step)."""
    losses = StepLosses()
    for task, batch, share in drawn:
        with autocast(device, bf16):
            out = model(task, **batch)
            loss = distiller.loss(model, task, out, batch) if distiller else model.head(task).loss(out, batch)
        losses.add(task, loss, share)
    return losses.means()


def elapsed_since(started: float, device: torch.device) -> float:
    if device.type == "cuda":  # kernels run asynchronously: wait for them, or the time means nothing
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def train(run: Run, tracker: Tracker) -> TrainState:
    """From the checkpoint's step (or 0) to the plan's last: each step accumulates its micro-batches, steps
    the optimizer, logs, and on the plan's cadence evaluates and checkpoints."""
    state, meter = run.state, LossMeter()
    # the distillation's projection trains beside the model: clipped, averaged over ranks, NaN-checked alike
    params = [p for p in run.model.parameters() if p.requires_grad] + learned_beside(run)
    run.model.train()
    balancer = run.resumable.balancer
    named = [(n, p) for n, p in run.model.named_parameters() if p.requires_grad]
    task_grads = TaskGradients(named, balancer.patterns) if balancer.combines else None
    for step in range(state.step + 1, run.plan.total_steps + 1):
        stop_if_interrupted()
        step_started = time.perf_counter()
        measured = run.affinity is not None and run.affinity.due(step)  # the same on every rank
        if measured and run.dist.is_main:  # which tasks help which, at the weights before this step's update
            run.affinity.measure(run.model, step, run.resumable.scheduler.get_last_lr()[0])
        last = step == run.plan.total_steps
        # regularizer timing syncs the GPU: logged steps only; a measurement is logged at its own step
        logged = step % run.trainer.log_every == 0 or last or measured
        # 1. forward and backward over the step's micro-batches (their gradients combined by the balancer)
        step_losses, drawn = accumulate(run, meter, params, task_grads, logged)
        # 2. clip, step (unless the gradient is NaN/inf), let the regularizers and balancer follow, schedule
        grad_norm = optimizer_step(run, step, params, step_losses, drawn)
        state.step = step
        state.train_seconds += elapsed_since(step_started, run.device)
        tracker.step()
        # 3. log (the only place losses leave the device, besides balancers that read them every step)
        if logged:
            log_step(run, tracker, step, meter, grad_norm)
        # 4. evaluate, keep the best, checkpoint; stop early when the score has stopped improving
        if (step % run.plan.eval_every == 0 or last) and evaluate_and_checkpoint(run, tracker, step):
            break
    return state


def learned_beside(run: Run) -> list[torch.nn.Parameter]:
    """Weights trained with the model but not part of it (layer-wise distillation's projection)."""
    return run.distiller.parameters() if run.distiller is not None else []


def accumulate(run: Run, meter: LossMeter, params: list, task_grads: TaskGradients | None, timed: bool):
    """Forward and backward over grad_accum micro-batches, each from one sampled task; with tasks_per_step
    >= 2 several different tasks, grad_accum micro-batches each, whose gradients the balancer may combine
    (data parallel: every rank the same tasks, its own share of the batch, its loss weighted by that
    share;
    a combining balancer sees each task's gradient averaged over the ranks). Returns each task's mean loss
    of the step (when the balancer reads them) and the batches a re-scoring balancer needs."""
    cfg, res, state, dist = run.trainer, run.resumable, run.state, run.dist
    specs = run.specs
    groups = step_tasks(res.sampler, cfg)
    res.balancer.start_step(list(dict.fromkeys(t for group in groups for t in group)))
    losses, drawn = StepLosses(), []
    for group in groups:
        for task in group:
            batch, share, rows = res.batches[task].next_shard()
            batch = {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}
            scale = specs[task].loss_weight * res.balancer.weight(task) / cfg.grad_accum * share
            terms = forward_backward(
                run.model, task, batch, res.regularizers, scale, cfg.bf16, run.distiller, timed
            )
            for name, value in terms.items():
                meter.add(f"{name}/{task}", value * share)
            losses.add(task, terms["loss"], share)
            if res.balancer.needs_losses_after_step:
                drawn.append((task, batch, share))
            state.micro_batches += 1
            state.examples_seen[task] = state.examples_seen.get(task, 0) + rows
        if task_grads is not None:
            dist.average_gradients(task_grads.params)
            task_grads.take()
    dist.average_gradients(task_grads.others + learned_beside(run) if task_grads is not None else params)
    step_losses = dist.average(losses.means()) if res.balancer.needs_losses else {}
    if task_grads is not None:
        task_grads.combine(res.balancer, [group[0] for group in groups], step_losses)
    return step_losses, drawn


def optimizer_step(run: Run, step: int, params: list, step_losses: dict, drawn: list) -> torch.Tensor:
    """Clip, let regularizers edit the gradient (Child-Tuning's mask), step (unless the gradient is
    NaN/inf: one host sync per step keeps NaN out of the weights), then let them follow the new weights
    (SMART's teacher, L2-SP's pull towards the pretrained weights), schedule. Returns the gradient norm."""
    cfg, res, state = run.trainer, run.resumable, run.state
    # max_grad_norm 0: measure, never clip
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
    if torch.isfinite(grad_norm):
        for reg in res.regularizers.values():
            reg.before_step(run.model)
        res.optimizer.step()
        for reg in res.regularizers.values():
            reg.after_step(run.model, step, run.plan.total_steps, res.scheduler.get_last_lr()[0])
        if res.balancer.needs_losses_after_step:  # FAMO: how much the update lowered each task's loss
            rescored = rescored_losses(run.model, drawn, run.device, cfg.bf16, run.distiller)
            res.balancer.after_step_losses(run.dist.average(rescored))
        res.balancer.end_step(step_losses)
        state.consecutive_skips = 0
    else:
        state.skipped_steps += 1
        state.consecutive_skips += 1
        if state.consecutive_skips >= cfg.max_consecutive_skips:
            raise MtdnnError(
                f"training stopped at step {step}: {state.consecutive_skips} steps in a row had a "
                f"NaN/inf loss or gradient; the last checkpoint is intact (try a lower trainer.lr)"
            )
    res.scheduler.step()
    res.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def log_step(run: Run, tracker: Tracker, step: int, meter: LossMeter, grad_norm: torch.Tensor) -> None:
    res = run.resumable
    stats = {k: v for reg in [*res.regularizers.values(), res.balancer] for k, v in reg.stats().items()}
    stats["skipped_steps"] = float(run.state.skipped_steps)
    stats.update(run.affinity.stats() if run.affinity is not None else {})
    terms = run.dist.average(meter.flush())  # the whole job's means (every rank takes part)
    if run.dist.is_main:
        tracker.train_scalars(step, terms, res.scheduler.get_last_lr()[0], float(grad_norm), stats)


def evaluate_and_checkpoint(run: Run, tracker: Tracker, step: int) -> bool:
    """Evaluate (rows shared out across ranks, all ranks get the metrics), keep the best (overall and, with
    several tasks, each task's), checkpoint (rank 0 alone writes: the weights are the same on every rank).
    Returns whether to stop early: no better score for trainer.early_stopping evaluations."""
    cfg, state, specs = run.trainer, run.state, run.specs
    with run.dist.sharded_inference():
        results = evaluate_tasks(
            run.model, run.tasks, run.collators, "validation", cfg.eval_batch_size, run.device, cfg.bf16
        )
    score = main_score(results, specs, cfg.best_metric)
    improved = is_better(score, state, last=step == run.plan.total_steps)
    state.evals_since_best = 0 if improved else state.evals_since_best + 1
    stop = 0 < cfg.early_stopping <= state.evals_since_best
    if stop and not state.best_results:  # no defined score so far: the last checkpoint is named best
        improved = is_better(score, state, last=True)
    if improved:
        state.best_score, state.best_step, state.best_results = score, step, results
    task_bests = improved_tasks(state, results, specs, step) if len(specs) > 1 else []
    run.model.train()
    if run.dist.is_main:
        epoch = state.micro_batches / run.plan.batches_per_epoch
        tracker.evaluation(step, epoch, "validation", results, state.train_seconds)
        save_checkpoint(tracker.run_dir, step, run.model, run.resumable.state_dict())
        if improved:  # only after the checkpoint it names is complete
            save_best(tracker.run_dir, step, {"score": score, "validation": results})
        for task in task_bests:
            record = {"score": state.task_best[task]["score"], "validation": {task: results[task]}}
            save_best(tracker.run_dir, step, record, f"best_{task}.json")
        rotate_checkpoints(tracker.run_dir, cfg.keep_last)
    if stop:
        log.info(
            "early stopping at step %d: no better %s in the last %d evaluations (best: step %d)",
            step,
            cfg.best_metric,
            state.evals_since_best,
            state.best_step,
        )
        state.stopped_early = True
    return stop


def improved_tasks(state: TrainState, results: dict[str, dict], specs: dict, step: int) -> list[str]:
    """Tasks whose own main metric is the best so far (recorded in state.task_best), as MT-DNN reports
    per-task bests; each gets a best_<task>.json naming this step's checkpoint."""
    improved = []
    for task, metrics in results.items():
        score = main_score({task: metrics}, specs, "mean")
        best = state.task_best.get(task)
        if not math.isnan(score) and (best is None or score > best["score"]):
            state.task_best[task] = {"score": score, "step": step}
            improved.append(task)
    return improved


def is_better(score: float, state: TrainState, last: bool) -> bool:
    """An undefined score (NaN: a metric the validation data cannot define) never becomes the best; if no
    evaluation of the run had a defined score, the last checkpoint is named best, with a warning."""
    if not math.isnan(score):
        return score > state.best_score or not state.best_results
    if last and not state.best_results:
        log.warning(
            "no evaluation had a defined main score (see metrics.json); best.json names the last checkpoint"
        )
        return True
    return False
