"""The training loop: one function, read top to bottom."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from mtdnn.balancers import TaskGradients
from mtdnn.core.config import TrainerConfig
from mtdnn.core.distributed import Distributed
from mtdnn.core.errors import MtdnnError
from mtdnn.core.interrupts import stop_if_interrupted
from mtdnn.data.loading import TaskBatches, TaskData
from mtdnn.evaluation.engine import autocast, evaluate_tasks, main_score
from mtdnn.kinds.collate import Collator
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.regularizers import Regularizer, StepContext
from mtdnn.regularizers.dropout import DropoutReplay
from mtdnn.runs.checkpoints import rotate_checkpoints, save_best, save_checkpoint
from mtdnn.training.resume import Resumable, TrainState
from mtdnn.training.tracking import LossMeter, Tracker

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """How long and how often, fixed before the first step."""

    total_steps: int
    batches_per_epoch: int  # one pass over every task's train split
    eval_every: int
    steps_per_epoch: float = 1.0


def make_plan(cfg: TrainerConfig, batches: dict[str, TaskBatches]) -> Plan:
    per_epoch = sum(len(b) for b in batches.values())
    per_step = cfg.grad_accum * min(cfg.tasks_per_step, len(batches))  # micro-batches in one optimizer step
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * per_epoch / per_step))
    eval_every = cfg.eval_every or max(1, math.ceil(per_epoch / per_step / cfg.evals_per_epoch))
    return Plan(
        total_steps=total,
        batches_per_epoch=per_epoch,
        eval_every=eval_every,
        steps_per_epoch=per_epoch / per_step,
    )


def forward_backward(
    model: MultiTaskModel,
    task: str,
    batch: dict[str, torch.Tensor],
    regularizers: dict[str, Regularizer],
    scale: float,
    device: torch.device,
    bf16: bool,
    distiller=None,
    timed: bool = False,
) -> dict[str, torch.Tensor]:
    """One micro-batch: clean forward, task loss (or the distillation loss), regularizer terms, backward.
    Returns the detached terms and, when `timed`, per regularizer the seconds its penalty took (its extra
    forward cost; timing waits for the GPU, so the loop asks for it on logged steps only)."""

    def loss_of(out: torch.Tensor) -> torch.Tensor:  # the task loss, or the distillation loss when distilling
        return distiller.loss(model, task, out, batch) if distiller else model.head(task).loss(out, batch)

    # record the clean pass's dropout masks only for regularizers that replay them in later passes
    dropout = DropoutReplay(device) if any(reg.replays_dropout for reg in regularizers.values()) else None
    with_hidden = any(reg.needs_hidden_states for reg in regularizers.values())
    with autocast(device, bf16):
        embeds = model.embed(batch["input_ids"])
        with dropout.record() if dropout else nullcontext():
            out = model(task, **batch, inputs_embeds=embeds, hidden_states=with_hidden)
        logits, hidden = out if with_hidden else (out, None)
        loss = loss_of(logits)
        ctx = StepContext(model, task, batch, embeds, logits, dropout, loss_of, scale, hidden, loss)
        terms, costs = {}, {}
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


def train(
    model: MultiTaskModel,
    tasks: dict[str, TaskData],
    collators: dict[str, Collator],
    run: Resumable,
    cfg: TrainerConfig,
    plan: Plan,
    tracker: Tracker,
    device: torch.device,
    distiller=None,
    dist: Distributed | None = None,
) -> TrainState:
    optimizer, scheduler, sampler, batches = run.optimizer, run.scheduler, run.sampler, run.batches
    regularizers, state = run.regularizers, run.state
    specs = {name: data.spec for name, data in tasks.items()}
    dist = dist or Distributed()
    meter = LossMeter()
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    balancer = run.balancer
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    task_grads = TaskGradients(named, balancer.patterns) if balancer.combines else None
    for step in range(state.step + 1, plan.total_steps + 1):
        stop_if_interrupted()
        step_started = time.perf_counter()
        # 1. forward and backward over grad_accum micro-batches, each from one sampled task; with
        # tasks_per_step >= 2
        #    several different tasks, grad_accum micro-batches each, whose gradients the balancer may combine
        # (data parallel: every rank the same tasks, its own share of the batch, its loss weighted by that
        # share;
        #    a combining balancer sees each task's gradient averaged over the ranks)
        timed = step % cfg.log_every == 0 or step == plan.total_steps  # regularizer timing syncs the GPU
        groups = step_tasks(sampler, cfg)
        balancer.start_step(list(dict.fromkeys(t for group in groups for t in group)))
        losses, drawn = StepLosses(), []
        for group in groups:
            for task in group:
                batch, share, rows = batches[task].next_shard()
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                scale = specs[task].loss_weight * balancer.weight(task) / cfg.grad_accum * share
                terms = forward_backward(
                    model, task, batch, regularizers, scale, device, cfg.bf16, distiller, timed
                )
                for name, value in terms.items():
                    meter.add(f"{name}/{task}", value * share)
                losses.add(task, terms["loss"], share)
                if balancer.needs_losses_after_step:
                    drawn.append((task, batch, share))
                state.micro_batches += 1
                state.examples_seen[task] = state.examples_seen.get(task, 0) + rows
            if task_grads is not None:
                dist.average_gradients(task_grads.params)
                task_grads.take()
        dist.average_gradients(task_grads.others if task_grads is not None else params)
        step_losses = dist.average(losses.means()) if balancer.needs_losses else {}
        if task_grads is not None:
            task_grads.combine(balancer, [group[0] for group in groups], step_losses)

        # 2. clip, let regularizers edit the gradient (Child-Tuning's mask), step (unless the gradient is
        # NaN/inf:
        # one host sync per step keeps NaN out of the weights), then let them follow the new weights (SMART's
        #    teacher, L2-SP's pull towards the pretrained weights), schedule
        grad_norm = torch.nn.utils.clip_grad_norm_(
            params, cfg.max_grad_norm or math.inf
        )  # 0: measure, never clip
        if torch.isfinite(grad_norm):
            for reg in regularizers.values():
                reg.before_step(model)
            optimizer.step()
            for reg in regularizers.values():
                reg.after_step(model, step, plan.total_steps, scheduler.get_last_lr()[0])
            if balancer.needs_losses_after_step:  # FAMO: how much the update lowered each task's loss
                balancer.after_step_losses(
                    dist.average(rescored_losses(model, drawn, device, cfg.bf16, distiller))
                )
            balancer.end_step(step_losses)
            state.consecutive_skips = 0
        else:
            state.skipped_steps += 1
            state.consecutive_skips += 1
            if state.consecutive_skips >= cfg.max_consecutive_skips:
                raise MtdnnError(
                    f"training stopped at step {step}: {state.consecutive_skips} steps in a row had a "
                    f"NaN/inf loss or gradient; the last checkpoint is intact (try a lower trainer.lr)"
                )
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step = step
        state.train_seconds += elapsed_since(step_started, device)
        tracker.step()

        # 3. log (the only place losses leave the device, besides balancers that read them every step)
        if step % cfg.log_every == 0 or step == plan.total_steps:
            stats = {k: v for reg in [*regularizers.values(), balancer] for k, v in reg.stats().items()}
            stats["skipped_steps"] = float(state.skipped_steps)
            terms = dist.average(meter.flush())  # the whole job's means (every rank takes part)
            if dist.is_main:
                tracker.train_scalars(step, terms, scheduler.get_last_lr()[0], float(grad_norm), stats)

        # 4. evaluate (rows shared out across ranks, all ranks get the metrics), keep the best (overall and,
        # with
        # several tasks, each task's), checkpoint (rank 0 alone writes: the weights are the same on every
        # rank),
        #    stop early when the score has not improved for trainer.early_stopping evaluations
        if step % plan.eval_every == 0 or step == plan.total_steps:
            with dist.sharded_inference():
                results = evaluate_tasks(
                    model, tasks, collators, "validation", cfg.eval_batch_size, device, cfg.bf16
                )
            score = main_score(results, specs, cfg.best_metric)
            improved = is_better(score, state, last=step == plan.total_steps)
            state.evals_since_best = 0 if improved else state.evals_since_best + 1
            stop = 0 < cfg.early_stopping <= state.evals_since_best
            if stop and not state.best_results:  # no defined score so far: the last checkpoint is named best
                improved = is_better(score, state, last=True)
            if improved:
                state.best_score, state.best_step, state.best_results = score, step, results
            task_bests = improved_tasks(state, results, specs, step) if len(specs) > 1 else []
            model.train()
            if dist.is_main:
                tracker.evaluation(step, state.micro_batches / plan.batches_per_epoch, "validation", results)
                save_checkpoint(tracker.run_dir, step, model, run.state_dict())
                if improved:  # only after the checkpoint it names is complete
                    save_best(tracker.run_dir, step, {"score": score, "validation": results})
                for task in task_bests:
                    save_best(
                        tracker.run_dir,
                        step,
                        {"score": state.task_best[task]["score"], "validation": {task: results[task]}},
                        f"best_{task}.json",
                    )
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
                break
    return state


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
