"""peft adapters (LoRA, IA3): shared or per task, starting from the unchanged encoder, counted by hand,
learning with a frozen encoder, each task's adapter its own, and merged into a plain transformers model on
export."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_train, straight_and_resumed, tiny_overrides
from test_smart import _batch, _spec, _tiny_model

from mtdnn.core.errors import MtdnnError
from mtdnn.model.adapters import trainable_parameters
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.serving.loading import open_run
from mtdnn.train import run


def _pair(per_task: bool, kind: str = "lora") -> tuple[MultiTaskModel, MultiTaskModel]:
    plain = _tiny_model(_spec("a"), _spec("b"))
    adapted = MultiTaskModel(
        copy.deepcopy(plain.encoder),
        [_spec("a"), _spec("b")],
        "mean",
        {"kind": kind, "rank": 4, "alpha": 8, "per_task": per_task, "train_layer_norms": False},
    )
    adapted.heads.load_state_dict(plain.heads.state_dict())
    return plain.eval(), adapted.eval()


@pytest.mark.parametrize("kind", ["lora", "ia3"])
@pytest.mark.parametrize("per_task", [False, True])
def test_peft_adapters_start_as_the_encoder_and_count_by_hand(per_task, kind):
    plain, adapted = _pair(per_task, kind)
    batch = _batch()
    assert torch.allclose(plain("a", **batch), adapted("a", **batch), atol=1e-6)  # B = 0, scales = 1
    # LoRA: 2 layers x (query, value) x rank 4 x (A: 16 in, B: 16 out). IA3: 2 layers x (key 16, value 16, and
    # a
    # scale per input channel of every module named *output.dense: the attention output 16, the feed-forward
    # 32)
    lora = 2 * 2 * 4 * (16 + 16) if kind == "lora" else 2 * (16 + 16 + 16 + 32)
    head = 16 * 3 + 3
    counts = trainable_parameters(adapted)
    if per_task:
        assert counts["per_task"] == {"a": head + lora, "b": head + lora} and counts["shared"] == 0
    else:
        assert counts["per_task"] == {"a": head, "b": head} and counts["shared"] == lora
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or ".ia3_l." in n for n in trainable if n.startswith("encoder."))
    adapted("b", **batch)  # switching tasks keeps every task's LoRA trainable (peft's set_adapter would not)
    assert {n for n, p in adapted.named_parameters() if p.requires_grad} == trainable


def test_per_task_lora_is_each_tasks_own():
    _, adapted = _pair(per_task=True)
    batch = _batch()
    with torch.no_grad():
        before_a, before_b = adapted("a", **batch), adapted("b", **batch)
        for name, param in adapted.named_parameters():
            if ".lora_B.b." in name:
                param.normal_()
        assert torch.equal(adapted("a", **batch), before_a)  # b's update leaves task a alone
        assert not torch.allclose(adapted("b", **batch), before_b)


@pytest.mark.parametrize("kind, per_task", [("lora", False), ("lora", True), ("ia3", True)])
def test_peft_adapters_learn_with_a_frozen_encoder_and_export_merged(tmp_path, toy_tasks, kind, per_task):
    from transformers import AutoModelForSequenceClassification

    from mtdnn.export import ExportConfig, export

    cfg = compose_train(
        tiny_overrides(
            toy_tasks,
            "task=[toy_sent,toy_count]",
            f"adapter={kind}",
            *(["adapter.rank=8"] if kind == "lora" else []),  # IA3 has no rank: refused at compose
            f"adapter.per_task={str(per_task).lower()}",
            "encoder.pooling=mean",
            "trainer.head_lr=1e-2",
            "trainer.max_steps=150",
            "predict_test=false",
        )
    )
    summary = run(cfg, tmp_path / "run")
    # IA3 owns 320 scales per task on the frozen *random* tiny encoder, LoRA at rank 8 2,048 weights: IA3
    # learns less
    assert summary["validation"]["toy_sent"]["accuracy"] > (0.8 if kind == "lora" else 0.7)  # chance: 0.52
    loaded = open_run(str(tmp_path / "run"), "best", torch.device("cpu"))
    out = export(ExportConfig(run_dir=str(tmp_path / "run"), task="toy_sent", out=str(tmp_path / "hf")))
    plain = AutoModelForSequenceClassification.from_pretrained(str(out), trust_remote_code=True).eval()
    assert not any("lora" in n or "ia3" in n for n, _ in plain.named_parameters())
    enc = loaded.tokenizer(
        ["the movie great", "plot awful awful", "a film"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        assert torch.allclose(plain(**enc).logits, loaded.model("toy_sent", **enc), atol=1e-5)
    assert_adapter_only_checkpoints(tmp_path / "run", loaded.model)
    peft_folder = export(
        ExportConfig(
            run_dir=str(tmp_path / "run"), task="toy_sent", out=str(tmp_path / "peft"), format="peft"
        )
    )
    assert_peft_folder_adapts_the_base_like_the_run(peft_folder, tmp_path / "run", loaded, enc)


def assert_adapter_only_checkpoints(run_dir, model):
    """Checkpoints hold what trains (adapters, heads); the frozen encoder is written once beside them."""
    from safetensors import safe_open

    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    with safe_open(str(run_dir / "encoder" / "frozen.safetensors"), "pt") as handle:
        assert set(handle.keys()) == frozen
    for checkpoint in (run_dir / "checkpoints").glob("step_*"):
        with safe_open(str(checkpoint / "model.safetensors"), "pt") as handle:
            saved = set(handle.keys())
        assert saved and not saved & frozen and saved | frozen >= {n for n, _ in model.named_parameters()}
    (run_dir / "encoder" / "frozen.safetensors").rename(run_dir / "frozen.moved")
    try:
        with pytest.raises(MtdnnError, match="holds adapter weights only.*frozen.safetensors.*are missing"):
            open_run(str(run_dir), "best", torch.device("cpu"))
    finally:
        (run_dir / "frozen.moved").rename(run_dir / "encoder" / "frozen.safetensors")


def assert_peft_folder_adapts_the_base_like_the_run(folder, run_dir, loaded, enc):
    """PeftModel.from_pretrained(base, folder) computes the run's adapted encoder (the base rebuilt here
    from the run's frozen weights: the tiny test encoder is on no hub)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    base = AutoModel.from_config(AutoConfig.from_pretrained(str(run_dir / "encoder")))
    frozen = load_file(str(run_dir / "encoder" / "frozen.safetensors"))
    missing, _ = base.load_state_dict(
        {k.removeprefix("encoder.").replace(".base_layer.", "."): v for k, v in frozen.items()}, strict=False
    )
    assert not [k for k in missing if "position_ids" not in k]
    adapted = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        ours = loaded.model.encode("toy_sent", **enc).last_hidden_state
        theirs = adapted(**enc).last_hidden_state
    assert torch.allclose(theirs, ours, atol=1e-5)


def test_per_task_lora_composes_with_smart_whose_teacher_copies_the_adapted_model(tmp_path, toy_tasks):
    import json

    cfg = compose_train(
        tiny_overrides(
            toy_tasks,
            "task=[toy_sent,toy_count]",
            "adapter=lora",
            "adapter.per_task=true",
            "regularizer=smart",
            "regularizer.smart.epsilon=5e-2",
            "regularizer.smart.noise_std=5e-2",
            "regularizer.smart.mu=1",
            "regularizer.smart.teacher_memory=null",  # beta 0.99: a teacher that lags
            "trainer.max_steps=8",
            "trainer.log_every=1",
            "trainer.eval_every=8",
            "predict_test=false",
        )
    )
    run(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    for task in ("toy_sent", "toy_count"):
        prox = [r[f"smart_prox/{task}"] for r in log if f"smart_prox/{task}" in r]
        assert prox and max(prox) > 0  # the teacher (a copy with its own LoRA) drifts behind the student
    loaded = open_run(str(tmp_path / "run"), "best", torch.device("cpu"))
    names = [n for n, _ in loaded.model.named_parameters() if ".lora_A.toy_sent." in n]
    assert names and all(
        n.replace("toy_sent", "toy_count") in dict(loaded.model.named_parameters()) for n in names
    )


def test_an_adapter_only_checkpoint_resumes_exactly(tmp_path, toy_tasks):
    from safetensors.torch import load_file

    base = tiny_overrides(
        toy_tasks,
        "task=[toy_sent,toy_count]",
        "adapter=lora",
        "adapter.per_task=true",
        "regularizer=smart",
        "trainer.max_steps=8",
        "trainer.eval_every=4",
        "trainer.log_every=1",
        "trainer.keep_last=5",
        "predict_test=false",
    )
    straight, resumed = straight_and_resumed(base, tmp_path, steps=8, cut=4)
    assert [r.get("loss/toy_sent") for r in straight] == [r.get("loss/toy_sent") for r in resumed]
    saved = load_file(str(tmp_path / "cut" / "checkpoints" / "step_0000008" / "model.safetensors"))
    assert not any(".base_layer." in k or "embeddings" in k for k in saved)  # adapters and heads only


def test_target_modules_the_encoder_lacks_are_one_line_naming_the_setting():
    with pytest.raises(MtdnnError, match=r"^adapter.target_modules: Target modules \{'nothere'\} not found"):
        MultiTaskModel(
            _tiny_model(_spec("a")).encoder,
            [_spec("a")],
            "mean",
            {"kind": "lora", "target_modules": ["nothere"]},
        )
