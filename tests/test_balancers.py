"""Balancers: each method's weights or combined gradient against a hand computation, every balancer
training a toy two-task rule, exact resume, and the settings' checks."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import compose_train, sentiment_rows, straight_and_resumed, tiny_overrides, write_task
from safetensors.torch import load_file

from mtdnn.balancers import Setup, TaskGradients, available, balancer_problems, build_balancer
from mtdnn.balancers.famo import famo_coefficients, logit_direction
from mtdnn.balancers.gradnorm import gradnorm_direction
from mtdnn.balancers.uncertainty import objective as uncertainty_objective
from mtdnn.core.errors import MtdnnError
from mtdnn.data.tasks import TaskSpec
from mtdnn.train import run


def _setup(*heads: str, steps_per_epoch: float = 10) -> Setup:
    specs = {f"t{i}": TaskSpec(name=f"t{i}", head=h, source=None, columns=None) for i, h in enumerate(heads)}
    return Setup(specs, steps_per_epoch, 100, seed=0)


def _combined(name: str, task_grads: list[list[float]], losses: dict[str, float] | None = None, **settings):
    """Run one multi-task step's gradient combination on a single shared parameter: returns (its new .grad,
    the balancer)."""
    tasks = [f"t{i}" for i in range(len(task_grads))]
    balancer = build_balancer({"name": name, **settings}, _setup(*["classification"] * len(tasks)))
    param = torch.nn.Parameter(torch.zeros(len(task_grads[0]), dtype=torch.float64))
    grads = TaskGradients([("encoder.w", param)], [])
    for g in task_grads:
        param.grad = torch.tensor(g, dtype=torch.float64)
        grads.take()
    grads.combine(balancer, tasks, losses or {t: 1.0 for t in tasks})
    return param.grad, balancer


def test_every_balancer_has_a_yaml_and_none_is_the_default():
    from pathlib import Path

    from mtdnn.core.paths import conf_dir

    assert set(available()) == {
        "none",
        "static",
        "uncertainty",
        "dwa",
        "rlw",
        "gradnorm",
        "pcgrad",
        "cagrad",
        "famo",
    }
    assert {p.stem for p in (Path(conf_dir()) / "balancer").glob("*.yaml")} == set(available())
    assert compose_train(["task=rt_polarity"]).balancer.name == "none"


def test_pcgrad_projects_conflicting_gradients_and_leaves_agreeing_ones():
    # g1 . g2 = -1 < 0: g1 -> g1 - (-1/2) g2 = (0.5, 0.5); g2 -> g2 - (-1/1) g1 = (0, 1); sum (0.5, 1.5)
    grad, balancer = _combined("pcgrad", [[1.0, 0.0], [-1.0, 1.0]])
    assert grad.tolist() == pytest.approx([0.5, 1.5])
    assert balancer.stats()["pcgrad_conflicts"] == 1.0
    grad, _ = _combined("pcgrad", [[1.0, 0.0], [1.0, 1.0]])  # no conflict: the plain sum
    assert grad.tolist() == pytest.approx([2.0, 1.0])


def _pcgrad_by_hand(g: np.ndarray, orders: list[list[int]], sequential: bool = True) -> np.ndarray:
    """Algorithm 1 on the vectors themselves; sequential=False is the planted bug (each projection measured
    against the task's original gradient instead of the already-projected one)."""
    total = np.zeros(g.shape[1])
    for i, order in enumerate(orders):
        projected = g[i].copy()
        for j in order:
            dot = (projected if sequential else g[i]) @ g[j]
            if dot < 0:
                projected -= dot / (g[j] @ g[j]) * g[j]
        total += projected
    return total


def test_pcgrad_with_three_tasks_projects_each_gradient_in_turn():
    # every pair conflicts, so each task's second projection depends on its first
    g = np.array([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [-0.5, -1.0, 1.0]])
    grad, _ = _combined("pcgrad", g.tolist())
    generator = torch.Generator().manual_seed(0)  # the same orders the balancer drew
    orders = [[j for j in torch.randperm(3, generator=generator).tolist() if j != i] for i in range(3)]
    expected = _pcgrad_by_hand(g, orders)
    assert np.abs(expected - _pcgrad_by_hand(g, orders, sequential=False)).max() > 0.1  # the data can tell
    assert grad.numpy() == pytest.approx(expected, rel=1e-10)
    rng = np.random.default_rng(3)  # and on random gradients
    g = rng.normal(size=(4, 9))
    grad, _ = _combined("pcgrad", g.tolist())
    generator = torch.Generator().manual_seed(0)
    orders = [[j for j in torch.randperm(4, generator=generator).tolist() if j != i] for i in range(4)]
    assert grad.numpy() == pytest.approx(_pcgrad_by_hand(g, orders), rel=1e-10)


def _cagrad_by_hand(g: np.ndarray, c: float) -> np.ndarray:
    """CAGrad from the paper on the vectors, with its dual minimised by grid search over the 3-task simplex:
    min_w g_w . g0 + c ||g0|| ||g_w||, then d = (g0 + c ||g0|| / ||g_w|| g_w) / (1 + c^2), times K."""
    g0 = g.mean(0)
    best, best_w = np.inf, None
    steps = 400
    for a in range(steps + 1):
        for b in range(steps + 1 - a):
            w = np.array([a, b, steps - a - b]) / steps
            gw = w @ g
            value = gw @ g0 + c * np.linalg.norm(g0) * np.linalg.norm(gw)
            if value < best:
                best, best_w = value, w
    gw = best_w @ g
    return len(g) * (g0 + c * np.linalg.norm(g0) / np.linalg.norm(gw) * gw) / (1 + c**2)


def test_cagrad_matches_the_paper_s_update_computed_independently():
    g = np.array([[1.0, 0.2, -0.3, 0.5], [-0.6, 0.9, 0.4, -0.2], [0.1, -0.8, 0.7, 0.3]])
    for c in (0.5, 0.2):
        grad, _ = _combined("cagrad", g.tolist(), c=c)
        assert grad.numpy() == pytest.approx(_cagrad_by_hand(g, c), abs=5e-3)
    grad, _ = _combined("cagrad", g.tolist(), c=0.0)  # c = 0: the mean gradient, times K
    assert grad.numpy() == pytest.approx(g.sum(0), abs=1e-9)


def test_uncertainty_weighting_follows_kendalls_loss_and_settles_where_its_gradient_is_zero():
    s, losses = torch.tensor([0.3, -0.2]), torch.tensor([0.8, 2.0])
    factors = torch.tensor([1.0, 0.5])  # classification, regression
    expected = 1.0 * math.exp(-0.3) * 0.8 + 0.15 + 0.5 * math.exp(0.2) * 2.0 - 0.1
    assert float(uncertainty_objective(s, losses, factors)) == pytest.approx(expected)
    balancer = build_balancer({"name": "uncertainty", "lr": 0.05}, _setup("classification", "regression"))
    assert balancer.weight("t0") == 1.0 and balancer.weight("t1") == 0.5  # s = 0: 1/sigma^2, 1/(2 sigma^2)
    for _ in range(3000):
        balancer.end_step({"t0": 0.8, "t1": 2.0})
    # the minimum of c exp(-s) L + s/2 is at exp(s) = 2 c L: 1.6 (classification), 2.0 (regression)
    log_vars = balancer.stats()
    assert math.exp(log_vars["balancer_log_var/t0"]) == pytest.approx(1.6, rel=1e-2)
    assert math.exp(log_vars["balancer_log_var/t1"]) == pytest.approx(2.0, rel=1e-2)
    assert balancer.weight("t0") == pytest.approx(1 / 1.6, rel=1e-2)


def test_gradnorm_targets_follow_the_relative_training_rates():
    norms, weights = torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])
    direction, targets = gradnorm_direction(norms, weights, torch.tensor([1.0, 0.5]), alpha=1.5)
    rates = np.array([1 / 0.75, 0.5 / 0.75])  # (L_i / L_i(0)) / mean
    assert targets.numpy() == pytest.approx(2.0 * rates**1.5)
    # task 0 trains slowest: its norm (1) is below its target (3.08), so its weight must grow; task 1's shrink
    assert direction.tolist() == pytest.approx([-1.0, 3.0])
    balancer = build_balancer({"name": "gradnorm"}, _setup("classification", "classification"))
    tasks = ["t0", "t1"]
    grads = TaskGradients([("encoder.w", torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)))], [])
    for losses in ({"t0": 1.0, "t1": 1.0}, {"t0": 1.0, "t1": 0.5}):
        for g in ([1.0, 0.0], [0.0, 3.0]):
            grads.params[0].grad = torch.tensor(g, dtype=torch.float64)
            grads.take()
        grads.combine(balancer, tasks, losses)
        balancer.end_step(losses)
    weights = [balancer.weight(t) for t in tasks]
    assert weights[0] > 1 > weights[1] and sum(weights) == pytest.approx(2.0)


def test_famo_weights_and_logit_update_match_the_papers_formulas():
    coefficients = famo_coefficients(torch.zeros(2), torch.tensor([1.0, 2.0]))
    assert coefficients.tolist() == pytest.approx([4 / 3, 2 / 3])  # 2 * (z/L) / sum(z/L), z = (1/2, 1/2)
    logits = torch.tensor([0.2, -0.1], requires_grad=True)
    before, after = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 1.8])
    delta = torch.log(before) - torch.log(after)
    (torch.softmax(logits, 0) @ delta).backward()  # what the direction is the gradient of
    assert logit_direction(logits.detach(), before, after).tolist() == pytest.approx(
        logits.grad.tolist(), abs=1e-6
    )
    grad, balancer = _combined("famo", [[1.0, 0.0], [0.0, 1.0]], {"t0": 1.0, "t1": 2.0})
    assert grad.tolist() == pytest.approx([4 / 3, 2 / 3])
    balancer.after_step_losses({"t0": 0.5, "t1": 1.8})  # task 0 improved more: it loses weight
    logit = balancer.stats()
    assert logit["balancer_logit/t0"] == pytest.approx(-0.025, abs=1e-6)  # Adam's first step: lr * sign
    assert logit["balancer_logit/t1"] == pytest.approx(0.025, abs=1e-6)


def test_dwa_weighs_the_slower_task_up_after_two_periods():
    balancer = build_balancer({"name": "dwa", "period_steps": 1}, _setup("classification", "classification"))
    balancer.end_step({"t0": 1.0, "t1": 1.0})
    assert balancer.weight("t0") == balancer.weight("t1") == 1.0  # the first two periods: weight 1
    balancer.end_step({"t0": 0.5, "t1": 0.9})
    expected = 2 * torch.softmax(torch.tensor([0.5 / 2, 0.9 / 2], dtype=torch.float64), 0)
    assert [balancer.weight("t0"), balancer.weight("t1")] == pytest.approx(expected.tolist())


def test_rlw_weights_average_one_and_resume_with_the_same_draws():
    balancer = build_balancer({"name": "rlw"}, _setup("classification", "classification", "regression"))
    draws = []
    for _ in range(2000):
        balancer.start_step(["t0", "t1", "t2"])
        draws.append([balancer.weight(t) for t in ("t0", "t1", "t2")])
    draws = np.array(draws)
    assert draws.sum(1) == pytest.approx(3.0)
    assert draws.mean(0) == pytest.approx([1.0, 1.0, 1.0], abs=0.05)
    # the mean is 1 for any symmetric draw: the spread is what the paper's K softmax(z), z ~ N(0, I), fixes
    z = np.random.default_rng(0).normal(size=(200_000, 3))
    reference = 3 * np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert draws.std() == pytest.approx(reference.std(), rel=0.06)
    for q in (0.1, 0.5, 0.9):
        assert np.quantile(draws, q) == pytest.approx(np.quantile(reference, q), rel=0.06)
    saved = balancer.state_dict()
    balancer.start_step(["t0"])
    expected = balancer.weight("t0")
    twin = build_balancer({"name": "rlw"}, _setup("classification", "classification", "regression"))
    twin.load_state_dict(saved)
    twin.start_step(["t0"])
    assert twin.weight("t0") == expected


def test_private_parameters_keep_their_tasks_gradient_and_unbalanced_ones_are_summed():
    shared = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    head0, head1 = (torch.nn.Parameter(torch.zeros(1, dtype=torch.float64)) for _ in range(2))
    other = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    named = [
        ("encoder.layer.0.w", shared),
        ("heads.t0.w", head0),
        ("heads.t1.w", head1),
        ("encoder.pooler.w", other),
    ]
    grads = TaskGradients(named, ["layer.0", "heads."])
    assert grads.others == [other]
    for g, head in (([1.0, 0.0], head0), ([-1.0, 1.0], head1)):
        shared.grad, head.grad = (
            torch.tensor(g, dtype=torch.float64),
            torch.tensor([5.0], dtype=torch.float64),
        )
        other.grad = (other.grad if other.grad is not None else 0) + torch.tensor([1.0], dtype=torch.float64)
        grads.take()
    balancer = build_balancer({"name": "pcgrad"}, _setup("classification", "classification"))
    grads.combine(balancer, ["t0", "t1"], {})
    assert shared.grad.tolist() == pytest.approx([0.5, 1.5])  # projected
    assert head0.grad.tolist() == head1.grad.tolist() == [5.0]  # each head: its own task's gradient
    assert other.grad.tolist() == [2.0]  # outside balancer.params: summed as usual
    with pytest.raises(MtdnnError, match=r"balancer.params: \['layer.99'\] names no trainable parameter"):
        # balancing nothing would silently be training without the balancer
        TaskGradients(named, ["layer.99"])


def test_settings_are_checked_before_anything_loads():
    tasks = ["a", "b"]
    assert "tasks_per_step=2" in balancer_problems({"name": "pcgrad"}, tasks, 1)[0]
    assert "did you mean 'famo'" in balancer_problems({"name": "famoo"}, tasks, 2)[0]
    assert balancer_problems({"name": "static", "weights": {"c": 1.0}}, tasks, 1) == [
        "balancer.weights.c: not a selected task"
    ]
    assert "balancer.alpha: must be >= 0" in balancer_problems({"name": "gradnorm", "alpha": -1}, tasks, 2)[0]
    assert (
        "balancer.temprature: unknown field"
        in balancer_problems({"name": "dwa", "temprature": 2}, tasks, 1)[0]
    )
    assert balancer_problems({"name": "cagrad", "c": 0.4, "params": ["layer.5"]}, tasks, 2) == []


def test_command_line_refuses_a_gradient_balancer_without_several_tasks_per_step(tmp_path, toy_tasks):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtdnn.train",
            *tiny_overrides(
                toy_tasks, "task=[toy_sent,toy_count]", "balancer=pcgrad", "trainer.tasks_per_step=3"
            ),
            f"output_dir={tmp_path / 'r'}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "trainer.tasks_per_step: must be between 1 and the number of tasks (2), got 3" in done.stderr


@pytest.mark.parametrize(
    "name", ["none", "static", "uncertainty", "dwa", "rlw", "gradnorm", "pcgrad", "cagrad", "famo"]
)
def test_every_balancer_trains_a_toy_two_task_rule(tmp_path, toy_tasks, name):
    summary = run(
        compose_train(
            tiny_overrides(
                toy_tasks,
                "task=[toy_sent,toy_count]",
                f"balancer={name}",
                "trainer.tasks_per_step=2",
                "trainer.max_steps=90",
                "trainer.eval_every=90",
                "trainer.log_every=10",
                "predict_test=false",
                "trainer.lr=2e-3",
                "trainer.head_lr=2e-3",
            )
        ),
        tmp_path / "run",
    )
    assert summary["validation"]["toy_sent"]["accuracy"] > 0.8
    assert summary["validation"]["toy_count"]["pearson"] > 0.7
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    if name != "none":  # the weights each task got are logged (TensorBoard and train_log.jsonl)
        assert {"balancer_weight/toy_sent", "balancer_weight/toy_count"} <= set(log[-1])
    assert {"best_toy_sent.json", "best_toy_count.json"} <= {p.name for p in (tmp_path / "run").iterdir()}


@pytest.mark.parametrize("name", ["famo", "pcgrad"])
def test_resume_mid_run_with_a_balancer_is_exact(tmp_path, toy_tasks, name):
    """Three tasks: with two, PCGrad's random order of projections cannot matter, so a resume that lost it
    would pass."""
    write_task(
        toy_tasks,
        "toy_sent_b",
        "classification",
        {"train": sentiment_rows(200, 7), "validation": sentiment_rows(40, 8)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    base = tiny_overrides(
        toy_tasks,
        "task=[toy_sent,toy_count,toy_sent_b]",
        f"balancer={name}",
        "trainer.tasks_per_step=3",
        "trainer.max_steps=12",
        "trainer.eval_every=6",
        "trainer.keep_last=5",
        "trainer.log_every=1",
        "predict_test=false",
    )
    logs = straight_and_resumed(base, tmp_path, steps=12, cut=6)
    assert [r["balancer_weight/toy_count"] for r in logs[0]] == [
        r["balancer_weight/toy_count"] for r in logs[1]
    ]


def test_balancer_none_with_one_task_per_step_is_the_run_without_balancers(tmp_path, toy_tasks):
    """The default path multiplies each loss by exactly 1.0: the same weights as a static balancer of ones."""
    common = tiny_overrides(
        toy_tasks,
        "task=[toy_sent,toy_count]",
        "trainer.max_steps=8",
        "trainer.eval_every=8",
        "predict_test=false",
    )
    run(compose_train(common), tmp_path / "none")
    run(compose_train(common + ["balancer=static"]), tmp_path / "static")
    wa, wb = (
        load_file(str(tmp_path / d / "checkpoints" / "step_0000008" / "model.safetensors"))
        for d in ("none", "static")
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_two_tasks_per_step_with_none_sums_the_two_tasks_gradients(tmp_path, toy_tasks):
    """One step of tasks_per_step=2 equals, to rounding, one step whose gradient is both tasks' summed
    (what grad_accum=2 gives when the sampler happens to draw both tasks)."""
    from mtdnn.data.sampler import TaskSampler

    def draw_both(self) -> str:  # a sampler that alternates: toy_sent, toy_count, ...
        self.draws += 1
        return self.names[(self.draws - 1) % 2]

    common = tiny_overrides(
        toy_tasks,
        "task=[toy_sent,toy_count]",
        "trainer.max_steps=1",
        "trainer.eval_every=1",
        "predict_test=false",
        "trainer.warmup_ratio=0",
    )
    run(compose_train(common + ["trainer.tasks_per_step=2"]), tmp_path / "k2")
    original = TaskSampler.next
    TaskSampler.next = draw_both
    try:
        run(compose_train(common + ["trainer.grad_accum=2"]), tmp_path / "accum")
    finally:
        TaskSampler.next = original
    wa, wb = (
        load_file(str(tmp_path / d / "checkpoints" / "step_0000001" / "model.safetensors"))
        for d in ("k2", "accum")
    )
    # grad_accum=2 halves each loss; Adam's first step is scale-free (m / sqrt(v)), so the weights agree
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    # ... which a mean would pass too: the logged gradient norm (before clipping) tells a sum from a mean
    norms = [
        json.loads((tmp_path / d / "train_log.jsonl").read_text().splitlines()[0])["grad_norm"]
        for d in ("k2", "accum")
    ]
    assert norms[0] == pytest.approx(2 * norms[1], rel=1e-4), norms


def test_a_gradient_balancer_composes_with_a_regularizer_and_per_task_lora(tmp_path, toy_tasks):
    """SMART's terms are part of each task's gradient the balancer sees; each task's own LoRA weights are
    private parameters (one task reaches them) and keep that task's gradient."""
    summary = run(
        compose_train(
            tiny_overrides(
                toy_tasks,
                "task=[toy_sent,toy_count]",
                "balancer=cagrad",
                "trainer.tasks_per_step=2",
                "regularizer=smart",
                "adapter=lora",
                "adapter.per_task=true",
                "trainer.max_steps=30",
                "trainer.eval_every=30",
                "trainer.log_every=10",
                "predict_test=false",
                "trainer.lr=3e-3",
                "trainer.head_lr=3e-3",
            )
        ),
        tmp_path / "run",
    )
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all("smart_adv/toy_sent" in r and "balancer_weight/toy_count" in r for r in log)
    assert log[-1]["loss/toy_count"] < log[0]["loss/toy_count"]
    weights = load_file(str(tmp_path / "run" / "checkpoints" / "step_0000030" / "model.safetensors"))
    lora_b = [k for k in weights if "lora_B" in k]
    assert lora_b and any(weights[k].abs().sum() > 0 for k in lora_b)  # LoRA B starts at 0: it learned
    assert summary["steps"] == 30
