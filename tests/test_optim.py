"""Optimizer groups, the learning-rate schedule, per-task loss weights and epoch-based plans, against
values written out by hand."""

from __future__ import annotations

import pytest
import torch
from test_smart import _batch, _spec, _tiny_model

from mtdnn.core.config import TrainerConfig
from mtdnn.training.loop import forward_backward
from mtdnn.training.optim import build_optimizer, build_scheduler, param_groups
from mtdnn.training.run import make_plan


def test_no_decay_for_1d_parameters_and_head_lr_for_heads_and_adapters():
    model = _tiny_model(_spec("t"))
    groups = param_groups(model, TrainerConfig(lr=1e-4, head_lr=1e-3, weight_decay=0.01))
    by_param = {id(p): g for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        g = by_param[id(p)]
        assert g["weight_decay"] == (0.01 if p.ndim >= 2 else 0.0), name  # biases and LayerNorms: no decay
        assert g["lr"] == (1e-3 if name.startswith("heads.") else 1e-4), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_a_tasks_head_lr_applies_to_its_head_only():
    model = _tiny_model(_spec("a"), _spec("b"))
    groups = param_groups(model, TrainerConfig(lr=1e-4, head_lr=1e-3), {"a": 3e-3, "b": None})
    by_param = {id(p): g["lr"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 3e-3 if name.startswith("heads.a.") else 1e-3 if name.startswith("heads.") else 1e-4
        assert by_param[id(p)] == expected, name
    assert [g["lr"] for g in groups][:2] == [1e-4, 1e-4]  # encoder groups first, as checkpoints expect


def test_warmup_then_linear_decay_at_given_steps():
    model = _tiny_model(_spec("t"))
    cfg = TrainerConfig(lr=1e-3, head_lr=None, warmup_ratio=0.1)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=100)  # warmup = ceil(0.1 * 100) = 10 steps
    seen = []
    for _ in range(100):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    expected = [1e-3 * (s + 1) / 11 for s in range(10)] + [1e-3 * (100 - s) / 90 for s in range(10, 100)]
    assert seen == pytest.approx(expected, rel=1e-9)
    assert seen[9] < seen[10] == pytest.approx(1e-3) and seen[-1] == pytest.approx(1e-3 / 90)


def test_the_micro_batch_scale_multiplies_the_gradient():
    """The loop passes loss_weight / grad_accum (x the rank's share) as this scale."""
    grads = {}
    for weight in (1.0, 3.0):
        model = _tiny_model(_spec("t")).eval()
        forward_backward(model, "t", _batch(), {}, weight, False)
        grads[weight] = model.heads["t"].out.weight.grad.clone()
    torch.testing.assert_close(grads[3.0], 3 * grads[1.0])


def test_epoch_based_plan_counts_every_tasks_batches():
    class Batches:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    batches = {"a": Batches(10), "b": Batches(5)}
    plan = make_plan(TrainerConfig(epochs=2.5, grad_accum=2, evals_per_epoch=3, max_steps=None), batches)
    assert plan.batches_per_epoch == 15 and plan.total_steps == 19  # ceil(2.5 * 15 / 2)
    assert plan.eval_every == 10  # ceil(15 / 2 / 3) = 3 steps apart is raised to the floor of 10
    big = {"a": Batches(1000), "b": Batches(500)}
    assert make_plan(TrainerConfig(epochs=1, evals_per_epoch=3), big).eval_every == 500  # ceil(1500 / 3)
    assert make_plan(TrainerConfig(max_steps=7), batches).total_steps == 7
    assert make_plan(TrainerConfig(max_steps=7), batches).eval_every == 7  # a run shorter than the floor


def test_the_loop_scales_each_tasks_loss_by_its_weight_over_grad_accum(tmp_path, toy_tasks, monkeypatch):
    from conftest import compose_train, tiny_overrides

    import mtdnn.training.loop as loop
    from mtdnn.train import run

    seen: dict[str, set] = {}
    real = loop.forward_backward

    def spy(model, task, batch, regularizers, scale, *args, **kwargs):
        seen.setdefault(task, set()).add(scale)
        return real(model, task, batch, regularizers, scale, *args, **kwargs)

    monkeypatch.setattr(loop, "forward_backward", spy)
    run(
        compose_train(
            tiny_overrides(
                toy_tasks,
                "task=[toy_sent,toy_count]",
                "trainer.max_steps=6",
                "trainer.grad_accum=2",
                "+task_overrides.toy_count.loss_weight=0.25",
                "sampler=uniform",
                "predict_test=false",
            )
        ),
        tmp_path / "run",
    )
    assert seen == {"toy_sent": {0.5}, "toy_count": {0.125}}
