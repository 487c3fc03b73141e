"""adapter=loha (the adapter family's seam: one module, one YAML, this test): LoHa starts from the unchanged
encoder, trains only its own weights and the heads, learns with the encoder frozen, and merges into a plain
transformers model on export."""

from __future__ import annotations

import copy

import torch
from conftest import compose_train, tiny_overrides
from test_smart import _batch, _spec, _tiny_model

from mtdnn.model.adapters import available, trainable_parameters
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.serving.loading import open_run
from mtdnn.train import run


def test_loha_is_found_without_a_list():
    assert "loha" in available()


def test_loha_starts_as_the_identity_and_only_its_weights_and_the_heads_train():
    plain = _tiny_model(_spec("a"), _spec("b")).eval()
    node = {"kind": "loha", "rank": 4, "alpha": 4, "per_task": True}
    adapted = MultiTaskModel(copy.deepcopy(plain.encoder), [_spec("a"), _spec("b")], "mean", node).eval()
    adapted.heads.load_state_dict(plain.heads.state_dict())
    batch = _batch()
    with torch.no_grad():
        assert torch.allclose(adapted("a", **batch), plain("a", **batch), atol=1e-6)
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".hada_" in n or n.startswith("heads.") for n in trainable)
    # per task: 4 factors (16 x 4 or 4 x 16) on query and value (16 x 16) in each of 2 layers
    counts = trainable_parameters(adapted)
    heads = sum(p.numel() for p in adapted.heads["a"].parameters())
    assert counts["per_task"]["a"] == heads + 4 * (16 * 4) * 2 * 2


def test_loha_learns_with_a_frozen_encoder_and_exports_merged(tmp_path, toy_tasks):
    from transformers import AutoModelForSequenceClassification

    from mtdnn.export import ExportConfig, export

    overrides = ["task=[toy_sent,toy_count]", "adapter=loha", "encoder.pooling=mean", "trainer.head_lr=1e-2"]
    cfg = compose_train(tiny_overrides(toy_tasks, *overrides, "trainer.max_steps=150", "predict_test=false"))
    summary = run(cfg, tmp_path / "run")
    assert summary["validation"]["toy_sent"]["accuracy"] > 0.8  # chance: 0.52
    loaded = open_run(str(tmp_path / "run"), "best", torch.device("cpu"))
    out = export(ExportConfig(run_dir=str(tmp_path / "run"), task="toy_sent", out=str(tmp_path / "hf")))
    merged = AutoModelForSequenceClassification.from_pretrained(str(out), trust_remote_code=True).eval()
    assert not any("hada" in n for n, _ in merged.named_parameters())
    enc = loaded.tokenizer(
        ["the movie great", "plot awful awful", "a film"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.allclose(merged(**enc).logits, loaded.model("toy_sent", **enc), atol=1e-5)
