"""Negative-transfer diagnostics (mtdnn/training/affinity.py): gradient cosine and TAG's lookahead against
computations made here with plain autograd on copies of the model, measuring never changes training, and a
task the others hurt is named."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from conftest import compose_train, tiny_overrides
from test_smart import _batch, _spec, _tiny_model

from mtdnn.train import run
from mtdnn.training.affinity import measure


def _probes() -> dict[str, dict]:
    first, second = _batch(), _batch()
    second["labels"] = torch.tensor([2, 1])  # the same texts, other labels: the tasks disagree
    return {"a": first, "b": second, "c": {**_batch(), "labels": torch.tensor([0, 2])}}


def _loss(model, task: str, batch: dict) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(model(task, **batch), batch["labels"])


def test_cosine_and_lookahead_equal_a_computation_by_hand():
    model = _tiny_model(_spec("a"), _spec("b"), _spec("c")).eval()
    probes, lr = _probes(), 0.5
    found = measure(model, probes, lr)
    shared = [(n, p) for n, p in model.named_parameters() if not n.startswith("heads.")]
    grads, losses = {}, {}
    for task, batch in probes.items():  # each task's gradient by an ordinary backward on a fresh copy
        twin = copy.deepcopy(model)
        loss = _loss(twin, task, batch)
        loss.backward()
        named = dict(twin.named_parameters())
        # the pooler is unused with mean pooling
        grads[task] = torch.cat(
            [
                (named[n].grad if named[n].grad is not None else torch.zeros_like(p)).reshape(-1)
                for n, p in shared
            ]
        )
        losses[task] = loss.item()
    for i, j in (("a", "b"), ("a", "c"), ("b", "c")):
        cos = (grads[i] @ grads[j]) / (grads[i].norm() * grads[j].norm())
        assert found["cos"][f"{i},{j}"] == pytest.approx(cos.item(), abs=1e-5)
    for i in probes:  # theta - lr g_i on a copy, then each other task's loss there
        stepped = copy.deepcopy(model)
        named = dict(stepped.named_parameters())
        offset = 0
        with torch.no_grad():
            for n, p in shared:
                named[n].sub_(lr * grads[i][offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        for j in probes:
            if j != i:
                expected = 1 - _loss(stepped, j, probes[j]).item() / losses[j]
                assert found["lookahead"][f"{i}->{j}"] == pytest.approx(expected, abs=1e-5)


def test_measuring_leaves_weights_mode_and_random_stream_unchanged():
    model = _tiny_model(_spec("a"), _spec("b")).train()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    rng = torch.get_rng_state()
    measure(model, {"a": _batch(), "b": _batch()}, lr=1.0)
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_run_with_measurements_trains_exactly_as_one_without(tmp_path, toy_tasks):
    def train(every: int, name: str):
        overrides = ["task=[toy_sent,toy_count]", "trainer.max_steps=12", f"trainer.affinity_every={every}"]
        summary = run(
            compose_train(tiny_overrides(toy_tasks, *overrides, "trainer.log_every=2")), tmp_path / name
        )
        lines = [json.loads(x) for x in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]
        return summary, lines

    with_it, log_with = train(4, "on")
    without, log_without = train(0, "off")
    strip = [
        {k: v for k, v in line.items() if not k.startswith("affinity/") and k != "cost_s"}
        for line in log_with
    ]
    assert [line["loss/toy_sent"] for line in strip if "loss/toy_sent" in line] == [
        line["loss/toy_sent"] for line in log_without if "loss/toy_sent" in line
    ]
    assert with_it["validation"] == without["validation"]
    assert [line["affinity/step"] for line in log_with if "affinity/step" in line] == [4.0, 8.0, 12.0]
    affinity = with_it["task_affinity"]
    assert affinity["measurements"] == 3 and set(affinity["lookahead"]) == {
        "toy_sent->toy_count",
        "toy_count->toy_sent",
    }
    assert set(affinity["gradient_cosine"]) == {"toy_count,toy_sent"}
    assert (tmp_path / "on" / "affinity.png").is_file() and "task_affinity" not in without


def test_a_task_the_others_keep_hurting_is_named_once_after_five_measurements(monkeypatch, caplog):
    import mtdnn.training.affinity as affinity

    # b is hurt by both others in every measurement, c by one of them only: only b is named, once
    record = {
        "cos": {},
        "lookahead": {"a->b": -0.1, "c->b": -0.2, "a->c": -0.1, "b->c": 0.3, "b->a": 0.1, "c->a": 0.1},
    }
    monkeypatch.setattr(affinity, "measure", lambda model, probes, lr: record)
    monitor = affinity.AffinityMonitor({"a": {}, "b": {}, "c": {}}, every=1)
    with caplog.at_level(logging.WARNING, logger="mtdnn"):
        for step in range(1, 5):
            monitor.measure(None, step, 0.1)
        assert not caplog.records  # four measurements: too few to judge
        for step in range(5, 9):
            monitor.measure(None, step, 0.1)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith(
        "task b: a step on any other task raised its loss in 5 of 5"
    )
    assert monitor.stats()["affinity/lookahead/c->b"] == -0.2 and monitor.stats() == {}  # taken once


def test_the_default_interval_keeps_the_cost_near_three_percent_and_zero_turns_it_off():
    from mtdnn.training.affinity import interval

    assert [interval(None, k) for k in (2, 3, 4, 8)] == [150, 300, 500, 1800]
    assert interval(0, 5) == 0 and interval(7, 5) == 7


def test_a_negative_interval_is_refused(tmp_path, toy_tasks):
    from mtdnn.core.errors import MtdnnError

    with pytest.raises(MtdnnError, match="trainer.affinity_every: must be >= 0"):
        run(compose_train(tiny_overrides(toy_tasks, "trainer.affinity_every=-1")), tmp_path / "run")


def test_the_affinity_command_ranks_candidates_for_a_target(tmp_path, toy_tasks):
    import subprocess
    import sys

    folder = tmp_path / "probe"
    args = [
        "target=toy_sent",
        "candidates=[toy_count]",
        "steps=12",
        "every=4",
        "encoder=tiny",
        f"task_dirs=[{toy_tasks}]",
        f"output_dir={folder}",
        "trainer.progress_bar=false",
    ]
    done = subprocess.run(
        [sys.executable, "-m", "mtdnn.affinity", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((folder / "affinity.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())["task_affinity"]
    assert [r["candidate"] for r in result["ranked"]] == ["toy_count"]
    assert result["ranked"][0]["lookahead"] == summary["lookahead"]["toy_count->toy_sent"]
    assert (
        "auxiliary tasks for toy_sent (3 measurements" in done.stdout and (folder / "affinity.md").is_file()
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["candidates=[a]"], "error: target: required"),
        (["target=a", "candidates=[a,b]"], "error: candidates: give other tasks than the target"),
        (["target=a", "candidates=[b]", "steps=few"], "error: steps: must be a whole number >= 1, got 'few'"),
    ],
)
def test_affinity_command_mistakes_are_one_line(args, message):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mtdnn.affinity", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stderr.strip() == message or done.stderr.startswith(message), (
        done.stderr
    )
