"""trainer.compile: the compiled encoder trains the same model as eager (same draws), a graph that cannot
compile falls back to eager with one warning, and the run records which it was."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import compose_train, tiny_overrides, write_toy_tasks
from safetensors.torch import load_file

from mtdnn.model import compiled
from mtdnn.train import run

STEPS = 4


def train_once(tmp_path, name: str, *more: str) -> tuple[dict, dict[str, torch.Tensor]]:
    folder = write_toy_tasks(tmp_path / "tasks")
    overrides = tiny_overrides(
        folder,
        "task=[toy_sent,toy_count]",
        f"trainer.max_steps={STEPS}",
        f"trainer.eval_every={STEPS}",
        "predict_test=false",
        *more,
    )
    summary = run(compose_train(overrides), tmp_path / name)
    saved = tmp_path / name / "checkpoints" / f"step_{STEPS:07d}" / "model.safetensors"
    return summary, load_file(str(saved))


@pytest.mark.slow
def test_the_compiled_encoder_trains_the_same_weights_as_eager(tmp_path, monkeypatch):
    """Two tasks a step under PCGrad (its per-task backward passes go through the compiled encoder too):
    Inductor's kernels reorder float sums, so the weights agree to float error, not bit for bit; dropout
    draws from the eager RNG."""
    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)  # the same dropout masks as eager
    pcgrad = ("balancer=pcgrad", "trainer.tasks_per_step=2")
    eager_summary, eager = train_once(tmp_path, "eager", *pcgrad)
    torch._dynamo.reset()
    counters.clear()
    summary, weights = train_once(tmp_path, "compiled", *pcgrad, "trainer.compile=true")
    assert summary["compiled"] is True and eager_summary["compiled"] is False
    assert counters["stats"]["unique_graphs"] >= 2  # a training graph and an evaluation graph were built
    for key, value in eager.items():
        assert torch.allclose(value, weights[key], atol=2e-5, rtol=1e-4), key
    assert summary["validation"].keys() == eager_summary["validation"].keys()
    for task, scores in eager_summary["validation"].items():
        for metric, value in scores.items():
            assert summary["validation"][task][metric] == pytest.approx(value, abs=1e-4), (task, metric)


def test_a_graph_that_cannot_compile_runs_eager_with_one_warning(tmp_path, monkeypatch, caplog):
    """The fallback: the first call's compile failure is one warning, that call and every later one run
    eager, and the weights are exactly those of an eager run."""
    from torch._dynamo.exc import Unsupported

    calls = []

    def failing_compile(fn, dynamic=None):
        def traced(*args, **kwargs):
            calls.append(1)
            raise Unsupported("a data-dependent branch in the attention mask")

        return traced

    _, eager = train_once(tmp_path, "eager")
    monkeypatch.setattr(compiled.torch, "compile", failing_compile)
    with caplog.at_level(logging.WARNING, logger="mtdnn"):
        summary, weights = train_once(tmp_path, "fallback", "trainer.compile=true")
    warnings = [r.getMessage() for r in caplog.records if "trainer.compile" in r.getMessage()]
    assert len(warnings) == 1 and "runs eager" in warnings[0] and "data-dependent branch" in warnings[0]
    assert len(calls) == 1  # tried once, never again
    assert summary["compiled"] is False
    for key, value in eager.items():
        assert torch.equal(value, weights[key]), key


def test_a_compile_failure_is_not_mistaken_for_a_user_error():
    """An error that eager raises too (a wrong input) is not swallowed as a compile failure."""
    encoder = torch.nn.Linear(3, 2)
    compiled.compile_encoder(encoder)
    guard = encoder._compiled_call_impl
    guard.compiled = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("mat1 and mat2 shapes"))
    with pytest.raises(RuntimeError, match="shapes"):
        encoder(torch.zeros(1, 3))
    assert compiled.is_compiled(encoder)  # still compiled: that was not a compile failure
    compiled.uncompile(encoder)
    assert not compiled.is_compiled(encoder)
    assert encoder(torch.zeros(1, 3)).shape == (1, 2)
