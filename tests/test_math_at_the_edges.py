"""The balancers' and layer-wise distillation's arithmetic at its edges, each against a hand computation: the
settings' boundaries, DWA's periods (an unseen task, a zero loss, a resume mid-period), GradNorm's step
with weights away from 1, PCGrad's conflict share, the l1 projection row by row, the last layer of a
12-layer encoder. Written for the mutants scripts/mutation.py found surviving."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mtdnn.balancers import Setup, TaskGradients, balancer_problems, build_balancer
from mtdnn.balancers.gradnorm import gradnorm_direction
from mtdnn.data.tasks import TaskSpec
from mtdnn.distill.layers import LayerTerms, last_layer_projections
from mtdnn.regularizers.perturbation import _project_l1


def _setup(k: int, steps_per_epoch: float = 10) -> Setup:
    names = [f"t{i}" for i in range(k)]
    specs = {n: TaskSpec(name=n, head="classification", source=None, columns=None) for n in names}
    return Setup(specs, steps_per_epoch, 100, seed=0)


# ---------------------------------------------------------------- settings: the boundary and just past it

BOUNDARIES = [  # (settings, tasks_per_step, the field refused or None)
    ({"name": "cagrad", "c": 0.0}, 2, None),
    ({"name": "cagrad", "c": -0.01}, 2, "balancer.c"),
    ({"name": "dwa", "temperature": 0.5}, 1, None),
    ({"name": "dwa", "temperature": 0.0}, 1, "balancer.temperature"),
    ({"name": "dwa", "period_steps": 1}, 1, None),
    ({"name": "dwa", "period_steps": 0}, 1, "balancer.period_steps"),
    ({"name": "gradnorm", "alpha": 0.0}, 2, None),
    ({"name": "gradnorm", "alpha": 0.5}, 2, None),
    ({"name": "gradnorm", "alpha": -0.1}, 2, "balancer.alpha"),
    ({"name": "gradnorm", "lr": 0.0}, 2, "balancer.lr"),
    ({"name": "famo", "lr": 0.0}, 2, "balancer.lr"),
    ({"name": "famo", "weight_decay": 0.0}, 2, None),
    ({"name": "famo", "weight_decay": -0.1}, 2, "balancer.weight_decay"),
    ({"name": "rlw", "std": 0.0}, 1, "balancer.std"),
    ({"name": "uncertainty", "lr": 0.0}, 1, "balancer.lr"),
    ({"name": "static", "weights": {"t0": 0.0}}, 1, None),  # one task off, the other at its default 1
    ({"name": "static", "weights": {"t0": 0.5}}, 1, None),
    ({"name": "static", "weights": {"t0": -0.5}}, 1, "balancer.weights.t0"),
    ({"name": "static", "weights": {"t0": 0.0, "t1": 0.0}}, 1, "balancer.weights"),
]


@pytest.mark.parametrize("settings,per_step,refused", BOUNDARIES)
def test_each_setting_is_accepted_at_its_bound_and_refused_past_it(settings, per_step, refused):
    found = balancer_problems(settings, ["t0", "t1"], per_step)
    if refused is None:
        assert found == []
    else:
        assert len(found) == 1 and found[0].startswith(f"{refused}: "), found


def test_static_weights_default_to_one_and_a_misspelt_task_is_suggested():
    balancer = build_balancer({"name": "static", "weights": {"t0": 2.0}}, _setup(2))
    assert [balancer.weight("t0"), balancer.weight("t1")] == [2.0, 1.0]
    assert balancer_problems({"name": "static", "weights": {"t00": 1.0}}, ["t0", "t1"], 1) == [
        "balancer.weights.t00: not a selected task (did you mean 't0'?)"
    ]


# ---------------------------------------------------------------- DWA's periods by hand


def _dwa_by_hand(periods: list[dict[str, list[float]]], tasks: list[str], temperature: float) -> list[float]:
    """The paper's eq. 7 from the last two periods' mean losses; an unseen task or a 0 loss has ratio 1."""
    means = [[np.mean(p[t]) if p.get(t) else np.nan for t in tasks] for p in periods[-2:]]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.array(means[1]) / np.array(means[0])
    ratio = np.where(np.isfinite(ratio), ratio, 1.0)
    e = np.exp(ratio / temperature)
    return list(len(tasks) * e / e.sum())


def test_dwa_averages_each_period_and_weighs_by_the_last_two():
    tasks = ["t0", "t1", "t2"]
    # three periods of two steps; t2 unseen in period 2 (ratio 1), t1's loss 0 in period 2, then back
    steps = [
        {"t0": 1.0, "t1": 2.0, "t2": 4.0},
        {"t0": 3.0, "t2": 2.0},
        {"t0": 1.0, "t1": 0.0},
        {"t0": 0.6, "t1": 0.0},
        {"t0": 0.4, "t1": 1.0, "t2": 1.0},
        {"t0": 0.5, "t1": 3.0, "t2": 2.0},
    ]
    balancer = build_balancer({"name": "dwa", "period_steps": 2, "temperature": 1.5}, _setup(3))
    periods: list[dict[str, list[float]]] = []
    for n, losses in enumerate(steps, start=1):
        if n % 2 == 1:
            periods.append({})
        for task, loss in losses.items():
            periods[-1].setdefault(task, []).append(loss)
        balancer.end_step(losses)
        shown = [balancer.weight(t) for t in tasks]
        if n < 4:  # two full periods are needed: weight 1 until then
            assert shown == [1.0, 1.0, 1.0], n
        elif n % 2 == 0:
            assert shown == pytest.approx(_dwa_by_hand(periods, tasks, 1.5), rel=1e-9), n
    assert balancer.weight("t1") != pytest.approx(1.0)  # the last weights moved


def test_dwa_resumes_mid_period_exactly():
    steps = [{"t0": 1.0 + i, "t1": 2.0 / (i + 1)} for i in range(7)]
    straight = build_balancer({"name": "dwa", "period_steps": 2}, _setup(2))
    for losses in steps[:3]:
        straight.end_step(losses)
    resumed = build_balancer({"name": "dwa", "period_steps": 2}, _setup(2))
    resumed.load_state_dict(copy.deepcopy(straight.state_dict()))
    for losses in steps[3:]:
        straight.end_step(losses)
        resumed.end_step(losses)
        assert resumed.weight("t0") == straight.weight("t0") and resumed.weight("t1") == straight.weight("t1")
    assert straight.weight("t0") != 1.0


def test_dwa_period_defaults_to_one_epoch():
    balancer = build_balancer({"name": "dwa"}, _setup(2, steps_per_epoch=3.4))
    for losses in ({"t0": 1.0, "t1": 1.0},) * 3 + ({"t0": 0.5, "t1": 1.0},) * 2:
        balancer.end_step(losses)
    assert balancer.weight("t0") == 1.0  # five steps: one period of 3 and part of the next
    balancer.end_step({"t0": 0.5, "t1": 1.0})
    assert balancer.weight("t0") < 1.0 < balancer.weight("t1")


# ---------------------------------------------------------------- GradNorm


def test_gradnorm_direction_divides_by_the_weights():
    norms, weights = torch.tensor([2.0, 1.0]), torch.tensor([0.5, 1.5])
    direction, targets = gradnorm_direction(norms, weights, torch.tensor([1.0, 1.0]), 1.0)
    assert targets.tolist() == [1.5, 1.5]
    assert direction.tolist() == pytest.approx([2.0 / 0.5, -1.0 / 1.5])


def _one_gradnorm_step(balancer, grads: list[list[float]], tasks: list[str], losses: dict[str, float]):
    param = torch.nn.Parameter(torch.zeros(len(grads[0]), dtype=torch.float64))
    task_grads = TaskGradients([("encoder.w", param)], [])
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float64)
        task_grads.take()
    task_grads.combine(balancer, tasks, losses)
    balancer.end_step(losses)


def test_gradnorm_steps_the_weights_of_the_tasks_drawn_and_resumes_its_first_losses():
    """Three tasks, two drawn; first losses below 1, norms below 1: one step of the weights by hand (plain
    gradient descent at balancer.lr on sign(G - target) G / w, then renormalised to sum K)."""
    balancer = build_balancer({"name": "gradnorm", "alpha": 1.0, "lr": 0.1}, _setup(3))
    assert [balancer.weight(t) for t in ("t0", "t1", "t2")] == [1.0, 1.0, 1.0]
    _one_gradnorm_step(balancer, [[0.3, 0.0], [0.0, 0.1]], ["t0", "t2"], {"t0": 0.5, "t2": 0.25})
    _one_gradnorm_step(balancer, [[0.3, 0.0], [0.0, 0.1]], ["t0", "t2"], {"t0": 0.4, "t2": 0.25})
    saved = copy.deepcopy(balancer.state_dict())  # as a checkpoint on disk: Adam's moments not shared
    twin = build_balancer({"name": "gradnorm", "alpha": 1.0, "lr": 0.1}, _setup(3))
    twin.load_state_dict(saved)
    assert [twin.weight(t) for t in ("t0", "t1", "t2")] == [balancer.weight(t) for t in ("t0", "t1", "t2")]
    for b in (balancer, twin):  # the resumed twin knows the first losses: the same next step
        _one_gradnorm_step(b, [[0.2, 0.0], [0.0, 0.3]], ["t0", "t2"], {"t0": 0.2, "t2": 0.5})
    assert [twin.weight(t) for t in ("t0", "t1", "t2")] == [balancer.weight(t) for t in ("t0", "t1", "t2")]
    assert sum(balancer.weight(t) for t in ("t0", "t1", "t2")) == pytest.approx(3.0)
    assert balancer.weight("t1") != balancer.weight("t0")  # t1 was not drawn, yet renormalised with them


# ---------------------------------------------------------------- PCGrad


def test_pcgrad_counts_conflicts_only_and_leaves_small_agreement_and_zero_gradients_alone():
    balancer = build_balancer({"name": "pcgrad"}, _setup(3))
    assert balancer.stats()["pcgrad_conflicts"] == 0.0  # before any step
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    grads = TaskGradients([("encoder.w", param)], [])
    # t0 . t1 = 0.5 (agree a little: untouched), t2 = 0 (a task whose gradient vanished: no division by 0)
    for g in ([1.0, 0.0], [0.5, 1.0], [0.0, 0.0]):
        param.grad = torch.tensor(g, dtype=torch.float64)
        grads.take()
    grads.combine(balancer, ["t0", "t1", "t2"], {})
    assert param.grad.tolist() == [1.5, 1.0]
    assert balancer.stats()["pcgrad_conflicts"] == 0.0  # no pair points against another
    for g in ([1.0, 0.0], [-1.0, 1.0], [0.0, 1.0]):  # one conflicting pair of three
        param.grad = torch.tensor(g, dtype=torch.float64)
        grads.take()
    grads.combine(balancer, ["t0", "t1", "t2"], {})
    assert balancer.stats()["pcgrad_conflicts"] == pytest.approx(1 / 3)


# ---------------------------------------------------------------- SMART's l1 ball


def test_l1_projection_is_row_by_row():
    """Duchi et al.'s projection by hand: row 0 lies inside its ball (unchanged), row 1 is shrunk onto it."""
    flat = torch.tensor([[0.2, -0.1, 0.3], [3.0, -1.0, 0.5]], dtype=torch.float64)
    radius = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    # row 1: soft-threshold at theta with (3 - t) + (1 - t) = 2 -> t = 1: [2, 0, 0]
    expected = [[0.2, -0.1, 0.3], [2.0, 0.0, 0.0]]
    assert _project_l1(flat, radius).numpy() == pytest.approx(np.array(expected))


# ---------------------------------------------------------------- layer-wise distillation


class _Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attention = nn.Module()
        self.attention.self = nn.Module()
        for name in ("query", "key", "value"):
            setattr(self.attention.self, name, nn.Linear(2, 2))


def test_the_last_of_twelve_layers_is_layer_eleven_not_nine():
    """Layer indices compare as numbers ('encoder.layer.9' sorts after 'encoder.layer.11' as text)."""
    encoder = nn.Module()
    encoder.layer = nn.ModuleList([_Layer() for _ in range(12)])
    q, k, v = last_layer_projections(encoder)
    last = encoder.layer[11].attention.self
    assert (q, k, v) == (last.query, last.key, last.value)


class _Cfg:
    def __init__(self, hidden_weight: float):
        self.hidden_weight, self.attention_weight, self.value_weight = hidden_weight, 0.0, 0.0
        self.layer_map, self.relation_heads = None, None


def test_a_projection_is_learned_only_when_the_hidden_term_is_on_and_widths_differ():
    from transformers import BertConfig

    student = BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2)
    teacher = BertConfig(hidden_size=12, num_hidden_layers=4, num_attention_heads=2)
    cpu = torch.device("cpu")
    assert LayerTerms(_Cfg(0.0), student, [teacher], cpu).parameters() == []
    assert LayerTerms(_Cfg(1.0), student, [student], cpu).parameters() == []
    weight, bias = LayerTerms(_Cfg(1.0), student, [teacher], cpu).parameters()
    assert weight.shape == (12, 8) and bias.shape == (12,)


def test_rlw_scales_its_normal_draws_by_std():
    """K softmax(std z), z ~ N(0, I) from the run's seed: the weights by hand from the same generator."""
    balancer = build_balancer({"name": "rlw", "std": 2.0}, _setup(3))
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        balancer.start_step(["t0", "t1", "t2"])
        z = torch.randn(3, generator=generator, dtype=torch.float64).numpy() * 2.0
        expected = 3 * np.exp(z) / np.exp(z).sum()
        assert [balancer.weight(t) for t in ("t0", "t1", "t2")] == pytest.approx(expected.tolist(), rel=1e-12)


def test_dwa_period_is_at_least_one_step_when_an_epoch_is_shorter():
    balancer = build_balancer({"name": "dwa"}, _setup(2, steps_per_epoch=0.4))
    balancer.end_step({"t0": 1.0, "t1": 1.0})
    balancer.end_step({"t0": 0.5, "t1": 1.0})
    assert balancer.weight("t0") < 1.0 < balancer.weight("t1")  # a period per step: weighted after two


def test_famo_logits_decay_at_the_papers_gamma():
    """FAMO regularises its logits with weight decay gamma (paper: 1e-3); two steps from 0 show it."""
    from mtdnn.balancers import LearnedValues

    balancer = build_balancer({"name": "famo", "weight_decay": 0.25, "lr": 0.1}, _setup(2))
    reference = LearnedValues(["t0", "t1"], 0.0, 0.1, 0.25)
    assert balancer.logits.optimizer.param_groups[0]["weight_decay"] == 0.25
    for direction in ([1.0, -1.0], [0.5, 0.5]):  # the second step's decay acts on non-zero logits
        balancer.logits.step(torch.tensor(direction, dtype=torch.float64))
        reference.step(torch.tensor(direction, dtype=torch.float64))
    assert balancer.logits.values.tolist() == reference.values.tolist()
    undecayed = LearnedValues(["t0", "t1"], 0.0, 0.1, 0.0)
    for direction in ([1.0, -1.0], [0.5, 0.5]):
        undecayed.step(torch.tensor(direction, dtype=torch.float64))
    assert undecayed.values.tolist() != reference.values.tolist()


def test_no_balancer_weighs_every_task_one():
    """balancer=none (and the gradient balancers' loss weights) leave each task's loss as it is."""
    for name in ("none", "pcgrad", "cagrad"):
        balancer = build_balancer({"name": name}, _setup(3))
        assert [balancer.weight(t) for t in ("t0", "t1", "t2")] == [1.0, 1.0, 1.0], name


def test_pooling_by_hand():
    """cls: the first token; mean: the average over real tokens only (one token: itself; only padding: 0s)."""
    from mtdnn.kinds.heads import pool

    hidden = torch.arange(24, dtype=torch.float64).reshape(3, 4, 2)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert pool(hidden, mask, "cls", None).tolist() == [[0.0, 1.0], [8.0, 9.0], [16.0, 17.0]]
    assert pool(hidden, mask, "mean", None).tolist() == [[0.0, 1.0], [11.0, 12.0], [0.0, 0.0]]
    pooler = torch.ones(3, 2)
    assert pool(hidden, mask, "pooler", pooler) is pooler
    with pytest.raises(ValueError, match="needs an encoder with a pooler layer"):
        pool(hidden, mask, "pooler", None)
