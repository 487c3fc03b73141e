"""Adapters: identity at the start, a frozen encoder, per-task parameter counts, hypernetwork generation."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_train, tiny_overrides
from test_smart import _batch, _spec, _tiny_model

from mtdnn.evaluate import EvaluateConfig, evaluate
from mtdnn.model.adapters import trainable_parameters
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.serving.loading import open_run
from mtdnn.train import run


def _pair(kind: str) -> tuple[MultiTaskModel, MultiTaskModel]:
    plain = _tiny_model(_spec("a"), _spec("b"))
    adapted = MultiTaskModel(
        copy.deepcopy(plain.encoder),
        [_spec("a"), _spec("b")],
        "mean",
        {"kind": kind, "bottleneck": 8, "task_dim": 4, "layer_dim": 4, "hyper_dim": 8},
    )
    adapted.heads.load_state_dict(plain.heads.state_dict())
    return plain.eval(), adapted.eval()


@pytest.mark.parametrize("kind", ["bottleneck", "hyper"])
def test_adapters_start_as_the_identity_and_freeze_all_but_layer_norms(kind):
    plain, adapted = _pair(kind)
    batch = _batch()
    assert torch.equal(plain("a", **batch), adapted("a", **batch))
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert all("LayerNorm" in n for n in trainable if n.startswith("encoder."))
    assert any(n.startswith("adapters.") for n in trainable) and any(
        n.startswith("heads.") for n in trainable
    )


def test_parameter_counts_by_hand():
    _, bottleneck = _pair("bottleneck")
    counts = trainable_parameters(bottleneck)
    head = 16 * 3 + 3  # hidden 16 -> 3 labels
    adapters = 2 * (8 * 16 + 8 + 16 * 8 + 16)  # 2 layers x (down W, b, up W, b), bottleneck 8
    norms = 16 * 2 * (1 + 2 * 2)  # embeddings LayerNorm + 2 per layer, weight and bias
    assert counts["per_task"] == {"a": head + adapters, "b": head + adapters}
    assert counts["shared"] == norms
    _, hyper = _pair("hyper")
    counts = trainable_parameters(hyper)
    assert counts["per_task"] == {"a": head + 4, "b": head + 4}  # a head and a task embedding
    generators = 2 * (8 * 8 + 8) + (8 * (8 * 16 + 8) + 8 * 16 + 8) + (8 * (16 * 8 + 16) + 16 * 8 + 16)
    assert counts["shared"] == norms + 2 * 4 + generators  # + layer embeddings, projector, generators


def test_a_copy_applies_its_own_adapters():
    """SMART's teacher is a deepcopy: its layer hooks must use the copy's adapter weights, not the
    original's."""
    _, adapted = _pair("bottleneck")
    teacher = copy.deepcopy(adapted)
    with torch.no_grad():
        for p in teacher.adapters.weights.up_w.values():
            p.normal_()
    batch = _batch()
    assert not torch.equal(teacher("a", **batch), adapted("a", **batch))
    plain, _ = _pair("bottleneck")
    assert torch.equal(adapted("a", **batch), plain("a", **batch))  # the original is untouched


@pytest.mark.parametrize("kind", ["bottleneck", "hyper"])
def test_adapter_training_learns_with_a_frozen_encoder(tmp_path, toy_tasks, kind):
    # mean pooling: a frozen *random* tiny encoder's first token carries little of the sentence
    cfg = compose_train(
        tiny_overrides(
            toy_tasks,
            "task=[toy_sent,toy_count]",
            f"adapter={kind}",
            "adapter.bottleneck=16",
            "encoder.pooling=mean",
            "trainer.head_lr=1e-2",
            "trainer.max_steps=150",
            "predict_test=false",
        )
    )
    summary = run(cfg, tmp_path / "run")
    loaded = open_run(str(tmp_path / "run"), "best", torch.device("cpu"))
    assert summary["validation"]["toy_sent"]["accuracy"] > 0.8
    assert summary["trainable_parameters"]["frozen"] > 0
    # run folder rebuilds them
    again = evaluate(EvaluateConfig(run_dir=str(tmp_path / "run"), split="validation"))
    assert again["toy_sent"]["accuracy"] == pytest.approx(summary["validation"]["toy_sent"]["accuracy"])
    if kind == "hyper":  # one hypernetwork, different weights per task and per layer
        gen = loaded.model.adapters.weights
        with torch.no_grad():
            a0, a1, c0 = (
                gen.generate("toy_sent", 0),
                gen.generate("toy_sent", 1),
                gen.generate("toy_count", 0),
            )
        assert not torch.allclose(a0[2], c0[2]) and not torch.allclose(a0[2], a1[2])


def test_the_encoder_stays_frozen_through_training(tmp_path, toy_tasks):
    from mtdnn.runs.checkpoints import (  # a checkpoint's trained weights + the frozen file
        best_checkpoint,
        read_weights,
    )

    base = tiny_overrides(
        toy_tasks,
        "task=toy_sent",
        "adapter=bottleneck",
        "trainer.max_steps=20",
        "trainer.eval_every=20",
        "predict_test=false",
        "seed=7",
    )
    run(compose_train(base), tmp_path / "run")
    trained = read_weights(best_checkpoint(tmp_path / "run") / "model.safetensors")
    # same seed, so the same random encoder; one step at lr 1e-30 leaves every weight as initialised
    run(
        compose_train(base + ["trainer.max_steps=1", "trainer.lr=1e-30", "trainer.head_lr=1e-30"]),
        tmp_path / "zero",
    )
    untouched = read_weights(best_checkpoint(tmp_path / "zero") / "model.safetensors")
    frozen = [k for k in trained if k.startswith("encoder.") and "LayerNorm" not in k]
    assert frozen and all(torch.equal(trained[k], untouched[k]) for k in frozen)
    assert any(not torch.equal(trained[k], untouched[k]) for k in trained if "LayerNorm" in k)


def test_an_encoder_without_a_layer_list_is_a_clear_error():
    from types import SimpleNamespace

    from mtdnn.core.errors import MtdnnError
    from mtdnn.model.adapters import bottleneck

    class Flat(torch.nn.Module):  # layers kept as separate attributes: no ModuleList to hook
        config = SimpleNamespace(num_hidden_layers=2, hidden_size=8)

        def __init__(self):
            super().__init__()
            self.first, self.second = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    with pytest.raises(MtdnnError, match="^adapter: cannot find the Transformer layers of Flat"):
        bottleneck.build(Flat(), ["a"], bottleneck.Config())


# how run folders saved `adapter:` before each method had its own Config: every method's fields
FLAT_ADAPTER = {
    "bottleneck": 64,
    "task_dim": 64,
    "layer_dim": 64,
    "hyper_dim": 128,
    "train_layer_norms": True,
    "rank": 8,
    "alpha": 16.0,
    "dropout": 0.0,
    "target_modules": None,
    "per_task": False,
}


@pytest.mark.parametrize("kind", ["none", "bottleneck"])
def test_a_run_folder_with_the_older_flat_adapter_node_loads_and_resumes(tmp_path, toy_tasks, kind):
    import yaml

    base = tiny_overrides(toy_tasks, "task=toy_sent", f"adapter={kind}", "predict_test=false")
    run(compose_train([*base, "trainer.max_steps=6"]), tmp_path / "run")
    path = tmp_path / "run" / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    flat = {**FLAT_ADAPTER, **saved["adapter"], "kind": kind}
    path.write_text(yaml.safe_dump({**saved, "adapter": flat}))
    loaded = open_run(str(tmp_path / "run"), "best", torch.device("cpu"))
    assert (loaded.model.adapters is None) == (kind == "none")
    if kind == "bottleneck":
        assert loaded.model.adapters.weights.down_w["toy_sent"].shape[1] == flat["bottleneck"]
    resumed = run(compose_train([*base, "trainer.max_steps=9", "resume=auto"]), tmp_path / "run")
    assert resumed["resumed_at_step"] == 6 and resumed["steps"] == 9
