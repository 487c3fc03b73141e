"""The regularizers of the literature: each one's defining formula on small tensors, every head type end to
end, composition, exact resume, and plain checkpoints for the ones that reparametrize the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_train, straight_and_resumed, tiny_overrides, write_toy_tasks
from safetensors.torch import load_file
from test_heads import _rank_task, _span_task, _tag_task, ranking_rows, squad_rows, tagging_rows
from test_smart import _batch, _context, _spec, _tiny_model

from mtdnn.regularizers import (
    alice,
    available,
    build_regularizers,
    child_tuning,
    freelb,
    l2_sp,
    lnsr,
    mixout,
    r4f,
    regularizer_problems,
)
from mtdnn.train import run

NEW = ["alice", "r4f", "freelb", "child_tuning", "lnsr", "mixout", "l2_sp"]


def test_every_method_has_a_module_and_a_yaml():
    from pathlib import Path

    conf = Path(__file__).parents[1] / "conf" / "regularizer"
    for name in NEW + ["smart", "r3f"]:
        assert name in available() and (conf / f"{name}.yaml").is_file(), name


# ---------------------------------------------------------------- ALICE


def _alice_reference(
    model, batch, embeds, objective, eps: float, step: float, noise_std: float
) -> torch.Tensor:
    """One ascent step written out (K = 1, l_inf, token scale): start at N(0, (noise_std x token RMS)^2),
    move each token by step x its max|x| along its gradient divided by the gradient's max|g|, clip each
    coordinate to eps x max|x|; padding never moves."""
    mask = batch["attention_mask"].unsqueeze(-1).float()
    size = embeds.abs().amax(-1, keepdim=True)
    rms = embeds.pow(2).mean(-1, keepdim=True).sqrt()
    delta = (torch.randn(embeds.shape) * noise_std * rms * mask).requires_grad_(True)
    (grad,) = torch.autograd.grad(objective(model("t", **batch, inputs_embeds=embeds + delta)), delta)
    grad = grad * mask
    moved = delta.detach() + step * size * grad / grad.abs().amax(-1, keepdim=True).clamp_min(1e-30)
    return torch.maximum(torch.minimum(moved, eps * size), -eps * size) * mask


def test_alice_terms_are_the_loss_and_divergence_at_their_own_adversarial_points():
    model = _tiny_model(_spec("t")).eval()  # no dropout: the reference below needs no replay
    batch = _batch()
    ctx = _context(model, "t", batch)
    cfg = alice.Config(epsilon=1e-2, step_size=1e-2, noise_std=1e-3)
    torch.manual_seed(3)
    terms = alice.Alice(cfg).penalty(ctx)
    head = model.head("t")
    embeds, clean = ctx.embeds.detach(), ctx.logits.detach()

    def sym_kl(a, b):
        p, q = a.softmax(-1), b.softmax(-1)
        return ((p - q) * (p.log() - q.log())).sum(-1)

    torch.manual_seed(3)  # same draws: the label perturbation first, then the virtual one
    d_label = _alice_reference(model, batch, embeds, lambda out: head.loss(out, batch), 1e-2, 1e-2, 1e-3)
    d_virtual = _alice_reference(model, batch, embeds, lambda out: sym_kl(out, clean).sum(), 1e-2, 1e-2, 1e-3)
    with torch.no_grad():
        label = head.loss(model("t", **batch, inputs_embeds=embeds + d_label), batch)
        virtual = sym_kl(model("t", **batch, inputs_embeds=embeds + d_virtual), clean).mean()
    assert terms["alice_label"].item() == pytest.approx(label.item(), rel=1e-4)
    assert terms["alice_virtual"].item() == pytest.approx(virtual.item(), rel=1e-4)
    assert label.item() > head.loss(clean, batch).item()  # the label ascent raised the task loss
    assert d_label[batch["attention_mask"] == 0].abs().max() == 0 and terms["alice_virtual"].item() > 0


def test_alice_weights_switch_terms_off():
    ctx = _context(_tiny_model(_spec("t")).train(), "t", _batch())
    assert set(alice.Alice(alice.Config(virtual_weight=0)).penalty(ctx)) == {"alice_label"}
    assert alice.Alice(alice.Config(label_weight=0, virtual_weight=0)).penalty(ctx) == {}


# ---------------------------------------------------------------- FreeLB


def test_freelb_accumulates_the_mean_gradient_of_its_k_adversarial_passes():
    model = _tiny_model(_spec("t")).eval()  # no dropout: the hand computation below sees the same network
    batch = _batch()
    cfg = freelb.Config(steps=3, step_size=0.05, init_mag=0.1, epsilon=0.08)
    params = [p for p in model.parameters()]
    ctx = _context(model, "t", batch)
    torch.manual_seed(1)
    term = freelb.FreeLB(cfg).penalty(ctx)["freelb"]
    got = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    model.zero_grad(set_to_none=True)
    head, mask = model.head("t"), batch["attention_mask"]
    embeds = model.embed(batch["input_ids"])
    # the paper's start, written out: U(-1, 1) on real tokens x init_mag / sqrt(L_real x H)
    torch.manual_seed(1)
    real = mask.unsqueeze(-1).float()
    delta = (
        (torch.rand_like(embeds) * 2 - 1)
        * real
        * cfg.init_mag
        / (mask.sum(1) * embeds.shape[-1]).sqrt().view(-1, 1, 1)
    )
    expected = [torch.zeros_like(p) for p in params]
    losses = []
    for _ in range(cfg.steps):
        delta.requires_grad_(True)
        loss = head.loss(model("t", **batch, inputs_embeds=embeds + delta), batch)
        grads = torch.autograd.grad(loss, params + [delta], retain_graph=True, allow_unused=True)
        for e, g in zip(expected, grads[:-1]):
            if g is not None:
                e += g / cfg.steps
        losses.append(loss.item())
        # ascent along g / ||g||_2 per example, then back onto the l2 ball of radius epsilon
        g = grads[-1] * real
        delta = delta.detach() + cfg.step_size * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)
        delta = delta * (cfg.epsilon / delta.flatten(1).norm(dim=1).clamp_min(cfg.epsilon)).view(-1, 1, 1)
        assert delta.flatten(1).norm(dim=1).max() <= cfg.epsilon + 1e-6
        assert delta[mask == 0].abs().max() == 0
    assert term.item() == pytest.approx(np.mean(losses), rel=1e-5)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-7)


def test_freelb_trains_on_the_batch_training_loss_it_is_given():
    """Under distillation the loop hands over the distillation loss; FreeLB's passes must use it."""
    model = _tiny_model(_spec("t")).train()
    ctx = _context(model, "t", _batch())
    ctx.loss_of = lambda out: out.float().pow(2).mean()  # any loss: here the mean squared logit
    torch.manual_seed(2)
    term = freelb.FreeLB(freelb.Config(steps=1, init_mag=0.0)).penalty(ctx)["freelb"]
    with ctx.dropout.replay():
        expected = model("t", **_batch(), inputs_embeds=ctx.embeds).pow(2).mean()
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)


def test_methods_that_need_a_trainable_encoder_warn_once_under_adapters(caplog):
    from mtdnn.model.multitask import MultiTaskModel

    base = _tiny_model(_spec("t"))
    model = MultiTaskModel(base.encoder, [_spec("t")], "mean", {"kind": "bottleneck", "bottleneck": 4})
    with caplog.at_level("WARNING"):
        mixout.Mixout(mixout.Config(), model)
        child_tuning.ChildTuning(child_tuning.Config(), model)
    assert "regularizer.mixout: the encoder's linear layers are frozen" in caplog.text
    assert "regularizer.child_tuning: the Transformer layers' weight matrices are frozen" in caplog.text


def test_freelb_initial_perturbation_is_scaled_by_length_and_zero_on_padding():
    torch.manual_seed(0)
    embeds = torch.zeros(2, 7, 16)
    mask = _batch()["attention_mask"]
    delta = freelb.initial_delta(embeds, mask, 0.1)
    bound = 0.1 / torch.sqrt(mask.sum(1).float() * 16)
    assert (delta.abs().amax((1, 2)) <= bound).all() and delta[mask == 0].abs().max() == 0
    assert freelb.initial_delta(embeds, mask, 0.0).abs().max() == 0


# ---------------------------------------------------------------- Child-Tuning


def test_top_fraction_mask_uses_one_threshold_over_all_tensors():
    scores = {"a": torch.tensor([1.0, 5.0, 3.0, 0.0]), "b": torch.tensor([[4.0, 2.0]])}
    mask = child_tuning.top_fraction_mask(scores, keep=2 / 6)
    assert mask["a"].tolist() == [False, True, False, False] and mask["b"].tolist() == [[True, False]]


def test_fisher_is_the_sum_of_squared_gradients_over_batches():
    model = _tiny_model(_spec("t"))
    b1, b2 = _batch(), {**_batch(), "labels": torch.tensor([1, 1])}
    fisher = child_tuning.fisher_information(model, [("t", b1), ("t", b2)], torch.device("cpu"), limit=0)
    name = "encoder.encoder.layer.1.output.dense.weight"
    expected = torch.zeros_like(fisher[name])
    model.eval()
    for b in (b1, b2):
        model.zero_grad()
        model.head("t").loss(model("t", **b), b).backward()
        expected += dict(model.named_parameters())[name].grad.pow(2)
    torch.testing.assert_close(fisher[name], expected)
    assert not any(n.startswith(("heads.", "encoder.embeddings", "encoder.pooler")) for n in fisher)


def _grads_after_mask(reg: child_tuning.ChildTuning, model) -> tuple[dict, dict]:
    batch = _batch()
    model.train()
    model.head("t").loss(model("t", **batch), batch).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    reg.before_step(model)
    return before, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_child_tuning_f_keeps_a_p_fraction_rescaled_and_leaves_heads_whole():
    model = _tiny_model(_spec("t"))
    reg = child_tuning.ChildTuning(child_tuning.Config(mode="F", reserve_p=0.25), model)
    before, after = _grads_after_mask(reg, model)
    kept, total = 0, 0
    for name in reg.params:
        nonzero = after[name] != 0
        torch.testing.assert_close(after[name][nonzero], before[name][nonzero] / 0.25)
        kept, total = kept + int(nonzero.sum()), total + nonzero.numel()
    assert 0.2 < kept / total < 0.3
    for name in before:
        if name not in reg.params:  # heads, embeddings, pooler
            assert torch.equal(before[name], after[name]), name


def test_child_tuning_d_masks_with_the_fisher_top_fraction():
    model = _tiny_model(_spec("t"))
    reg = child_tuning.ChildTuning(child_tuning.Config(mode="D", reserve_p=0.3), model)
    reg.prepare(model, [("t", _batch())], torch.device("cpu"))
    assert reg.stats()["child_tuning_kept"] == pytest.approx(0.3, abs=0.01)
    before, after = _grads_after_mask(reg, model)
    for name, keep in reg.mask.items():
        assert torch.equal(after[name], before[name] * keep)
    fresh = child_tuning.ChildTuning(child_tuning.Config(mode="D", reserve_p=0.3), model)  # as a resumed run
    fresh.load_state_dict(reg.state_dict())
    assert fresh.mask.keys() == reg.mask.keys() and all(
        torch.equal(fresh.mask[n], reg.mask[n]) for n in reg.mask
    )
    assert fresh.stats()["child_tuning_kept"] == reg.stats()["child_tuning_kept"]


# ---------------------------------------------------------------- LNSR


def test_layer_distances_by_hand():
    clean = (torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), torch.ones(1, 3, 2))
    noisy = (torch.ones(1, 3, 2), torch.full((1, 3, 2), 2.0), torch.ones(1, 3, 2) * 4)
    mask = torch.tensor([[1, 1, 0]])
    # layer 1: every real token moved by (2, 2) -> 8; layer 2: by (3, 3) -> 18; layer 0 is the noisy one
    # itself
    assert lnsr.layer_distances(noisy, clean, mask, after=0).tolist() == [8.0, 18.0]


def _lnsr_penalty(model, batch, std: float, seed: int | None = 0):
    logits, hidden = model("t", **batch, hidden_states=True)
    ctx = _context(model, "t", batch)
    ctx.hidden_states = hidden
    if seed is not None:
        torch.manual_seed(seed)
    reg = lnsr.LNSR(lnsr.Config(noise_std=std), model)
    return reg.penalty(ctx)["lnsr"].item(), reg.noise.noise, (reg, ctx)


def test_lnsr_noise_skips_padding_and_the_term_grows_with_the_noise_squared():
    model = _tiny_model(_spec("t")).eval()
    batch = _batch()
    _, noise, _ = _lnsr_penalty(model, batch, 0.5)
    change = noise.abs().amax(-1)
    assert (change[batch["attention_mask"] == 0] == 0).all() and (
        change[batch["attention_mask"] == 1] > 0
    ).all()
    assert noise[batch["attention_mask"] == 1].std().item() == pytest.approx(0.5, rel=0.15)
    # warm-up: the very first forward takes a slightly different numerical path
    _lnsr_penalty(model, batch, 1e-3)
    small, double = _lnsr_penalty(model, batch, 1e-3)[0], _lnsr_penalty(model, batch, 2e-3)[0]
    assert small > 0 and double / small == pytest.approx(4.0, rel=0.02)  # linear regime: squared distance


def test_lnsr_noise_comes_from_the_main_stream_not_the_replayed_one():
    """Drawn inside the dropout replay, the noise would be the clean pass's own random numbers: the same on
    every call for one clean pass. Drawn outside, two calls on one clean pass see different noise."""
    model = _tiny_model(_spec("t")).train()
    batch = _batch()
    logits, hidden = model("t", **batch, hidden_states=True)
    ctx = _context(model, "t", batch)
    ctx.hidden_states = hidden
    reg = lnsr.LNSR(lnsr.Config(noise_std=0.1), model)
    first, second = reg.penalty(ctx)["lnsr"].item(), reg.penalty(ctx)["lnsr"].item()
    assert first != second


def test_lnsr_layer_beyond_the_encoder_is_an_error():
    from mtdnn.core.errors import MtdnnError

    with pytest.raises(MtdnnError, match="regularizer.lnsr.layer: must be below 2"):
        lnsr.LNSR(lnsr.Config(layer=2), _tiny_model(_spec("t")))


# ---------------------------------------------------------------- Mixout


def test_mixout_keeps_the_expectation_and_routes_gradients_to_kept_weights():
    torch.manual_seed(0)
    w, u = torch.randn(40, 30), torch.randn(40, 30)
    mix = mixout.MixoutWeight(u, 0.6).train()
    mean = torch.stack([mix(w) for _ in range(3000)]).mean(0)
    assert (mean - w).abs().mean() < 0.03 and torch.equal(mix.eval()(w), w)
    mix.train()
    w.requires_grad_(True)
    torch.manual_seed(1)
    mix(w).sum().backward()
    torch.manual_seed(1)
    swapped = torch.empty_like(w).bernoulli_(0.6).bool()
    torch.testing.assert_close(w.grad, (~swapped).float() / 0.4)  # kept weights only, rescaled
    with torch.no_grad():
        torch.manual_seed(1)
        expected = (torch.where(swapped, u, w) - 0.6 * u) / 0.4
        torch.testing.assert_close(mix(w), expected)


# ---------------------------------------------------------------- L2-SP


def test_l2_sp_says_once_when_its_pull_over_the_run_is_negligible(caplog):
    model = _tiny_model(_spec("t"))
    quiet, weak = l2_sp.L2SP(l2_sp.Config(weight=200.0), model), l2_sp.L2SP(l2_sp.Config(weight=0.01), model)
    with caplog.at_level("WARNING", logger="mtdnn.regularizers.l2_sp"):
        for step in range(1, 321):  # 320 steps at lr 5e-5: the protocol's 500-row run
            quiet.after_step(model, step, 320, lr=5e-5)
            weak.after_step(model, step, 320, lr=5e-5)
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "weight=0.01 pulls back at most 1.6e-04" in said[0] and "= 62.5 acts" in said[0]


def test_l2_sp_pulls_the_encoder_towards_pretrained_weights_by_lr_times_weight():
    model = _tiny_model(_spec("t"))
    reg = l2_sp.L2SP(l2_sp.Config(weight=0.5), model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # every weight 1 away from its anchor (heads too)
    before = {n: p.clone() for n, p in model.named_parameters()}
    squared = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("heads."))
    assert reg.stats()["l2_sp"] == pytest.approx(0.5 / 2 * squared)
    reg.after_step(model, 1, 10, lr=0.1)
    for name, p in model.named_parameters():
        shift = 0.0 if name.startswith("heads.") else 0.1 * 0.5  # theta - lr * weight * (theta - theta_0)
        torch.testing.assert_close(p, before[name] - shift)


# ---------------------------------------------------------------- R4F


def test_r4f_normalises_the_head_and_checkpoints_plain_weights(tmp_path, toy_tasks):
    model = _tiny_model(_spec("t"))
    reg = r4f.R4F(r4f.Config(), model)
    model.train()
    for _ in range(30):  # power iteration converges over training forwards
        model("t", **_batch())
    weight = model.head("t").out.weight
    assert torch.linalg.matrix_norm(weight.detach(), ord=2).item() == pytest.approx(1.0, rel=1e-3)
    assert "t.out.parametrizations.weight.original" in reg.state_dict()

    cfg = compose_train(
        tiny_overrides(
            toy_tasks,
            "task=toy_sent",
            "regularizer=[r4f,mixout]",
            "trainer.max_steps=8",
            "trainer.eval_every=8",
            "predict_test=false",
        )
    )
    summary = run(cfg, tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / "checkpoints" / "step_0000008" / "model.safetensors"))
    assert "heads.toy_sent.out.weight" in saved and not any("parametrizations" in k for k in saved)
    assert torch.linalg.matrix_norm(saved["heads.toy_sent.out.weight"], ord=2).item() == pytest.approx(
        1, rel=0.05
    )
    from mtdnn.evaluate import EvaluateConfig, evaluate  # a plain model loads the checkpoint, same scores

    again = evaluate(EvaluateConfig(run_dir=str(tmp_path / "run"), split="validation"))
    assert again["toy_sent"]["accuracy"] == pytest.approx(summary["validation"]["toy_sent"]["accuracy"])


# ---------------------------------------------------------------- configuration


def test_config_problems_of_every_new_method_are_reported_at_once():
    text = "\n".join(
        regularizer_problems(
            {
                "alice": {"steps": 0, "norm": "l3"},
                "freelb": {"step_size": -1},
                "child_tuning": {"mode": "E", "reserve_p": 0},
                "lnsr": {"noise_std": 0},
                "mixout": {"p": 1},
                "l2_sp": {"weight": -1},
                "r4f": {"eps": 0, "power_iterations": 0},
            },
            [],
        )
    )
    for expected in (
        "regularizer.alice.steps",
        "regularizer.alice.norm",
        "regularizer.freelb.step_size",
        "regularizer.child_tuning.mode",
        "regularizer.child_tuning.reserve_p",
        "regularizer.lnsr.noise_std",
        "regularizer.mixout.p",
        "regularizer.l2_sp.weight",
        "regularizer.r4f.eps",
        "regularizer.r4f.power_iterations",
    ):
        assert expected in text, expected


def test_model_changing_methods_are_built_first():
    model = _tiny_model(_spec("t"))
    built = build_regularizers({"smart": {"mu": 1.0}, "mixout": {"p": 0.5}}, model, [_spec("t")])
    assert list(built) == ["mixout", "smart"]
    teacher = built["smart"].teacher  # copied after mixout: same structure, so the EMA pairs line up
    assert [n for n, _ in teacher.named_parameters()] == [n for n, _ in model.named_parameters()]


# ---------------------------------------------------------------- end to end


@pytest.fixture
def all_heads(tmp_path):
    folder = write_toy_tasks(tmp_path / "tasks")
    _span_task(folder, squad_rows(40, 1), squad_rows(10, 2))
    _rank_task(folder, ranking_rows(40, 3), ranking_rows(10, 4))
    _tag_task(folder, tagging_rows(40, 5), tagging_rows(10, 6))
    return folder


TERMS = {
    "alice": ["alice_label", "alice_virtual"],
    "r4f": ["r4f"],
    "freelb": ["freelb"],
    "lnsr": ["lnsr"],
    "child_tuning": [],
    "mixout": [],
    "l2_sp": [],
}
HEAD_TASKS = ["toy_sent", "toy_count", "toy_squad", "toy_rank", "toy_ner"]


@pytest.mark.parametrize("name", NEW)
def test_each_method_trains_every_head_type(tmp_path, all_heads, name):
    cfg = compose_train(
        tiny_overrides(
            all_heads,
            f"task=[{','.join(HEAD_TASKS)}]",
            f"regularizer={name}",
            "sampler=uniform",
            "trainer.max_steps=20",
            "trainer.log_every=1",
            "trainer.eval_every=20",
            "predict_test=false",
            "regularizer.child_tuning.fisher_batches=4" if name == "child_tuning" else "seed=0",
        )
    )
    summary = run(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    for task in HEAD_TASKS:
        assert any(f"cost_s/{name}/{task}" in r for r in log), task  # its extra cost is logged per task
        for term in TERMS[name]:
            values = [r[f"{term}/{task}"] for r in log if f"{term}/{task}" in r]
            assert values and all(np.isfinite(values)) and max(values) > 0, (term, task)
        assert summary["validation"][task]  # evaluated
    if name in ("alice", "freelb"):  # NaN/inf skips are counted and logged (none here)
        assert log[-1][f"{name}_skipped"] == 0
    if name == "l2_sp":
        assert log[-1]["l2_sp"] > 0
    if name == "child_tuning":
        assert log[-1]["child_tuning_kept"] == pytest.approx(0.3, abs=0.01)
    # every linear layer of the tiny BERT: 2 layers x (q, k, v, attn out, ffn in, ffn out) + pooler
    if name == "mixout":
        assert log[-1]["mixout_layers"] == 13


def test_smart_child_tuning_and_l2_sp_compose_and_learn(tmp_path, toy_tasks):
    cfg = compose_train(
        tiny_overrides(
            toy_tasks,
            "task=[toy_sent,toy_count]",
            "regularizer=[smart,child_tuning,l2_sp]",
            "regularizer.child_tuning.mode=F",
            "regularizer.child_tuning.reserve_p=0.5",
            "regularizer.smart.mu=0",
            "trainer.max_steps=200",
            "trainer.log_every=1",
            "predict_test=false",
        )
    )
    summary = run(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all("smart_adv/toy_sent" in r or "smart_adv/toy_count" in r for r in log)
    assert log[-1]["l2_sp"] > log[0]["l2_sp"] > 0  # the encoder drifted, and the drift is measured
    assert summary["validation"]["toy_sent"]["accuracy"] > 0.8


def test_resume_is_exact_with_model_changing_and_stateful_methods(tmp_path, toy_tasks):
    base = tiny_overrides(
        toy_tasks,
        "task=toy_sent",
        "regularizer=[r4f,mixout,l2_sp,child_tuning]",
        "regularizer.mixout.p=0.5",
        "regularizer.child_tuning.fisher_batches=3",
        "trainer.max_steps=12",
        "trainer.eval_every=6",
        "trainer.keep_last=5",
        "trainer.log_every=1",
        "predict_test=false",
    )
    logs = straight_and_resumed(base, tmp_path, steps=12, cut=6)
    assert [r["loss/toy_sent"] for r in logs[0]] == [r["loss/toy_sent"] for r in logs[1]]
