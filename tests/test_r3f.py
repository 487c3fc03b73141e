"""R3F: the noise, the term by hand, every head, and composition with SMART in one run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_train, tiny_overrides
from test_smart import _batch, _spec, _tiny_model

from mtdnn.regularizers import StepContext, regularizer_problems
from mtdnn.regularizers.dropout import DropoutReplay
from mtdnn.regularizers.r3f import R3F, Config, sample_noise
from mtdnn.train import run


def test_noise_is_bounded_and_never_on_padding():
    torch.manual_seed(0)
    mask = _batch()["attention_mask"].repeat(32, 1)  # 6,144 real values: the sample std is within ~1%
    like = torch.zeros(*mask.shape, 16)
    uniform = sample_noise(like, mask, Config(eps=0.1, scale="absolute"))
    assert uniform.abs().max() <= 0.1 and uniform[mask == 0].abs().max() == 0
    assert uniform[mask == 1].abs().min() > 0
    assert uniform[mask == 1].std().item() == pytest.approx(0.1 / 3**0.5, rel=0.05)  # U(-eps, eps)
    normal = sample_noise(like, mask, Config(eps=0.1, noise="normal", scale="absolute"))
    assert normal[mask == 0].abs().max() == 0
    assert normal[mask == 1].std().item() == pytest.approx(0.1, rel=0.05)  # N(0, eps^2)


def test_token_scale_noise_is_a_fraction_of_each_tokens_rms():
    torch.manual_seed(0)
    sizes = torch.tensor([0.01, 1.0, 100.0, 1.0, 1.0, 1.0, 1.0]).view(1, 7, 1)
    like = torch.randn(2, 7, 16) * sizes
    mask = _batch()["attention_mask"]
    noise = sample_noise(like, mask, Config(eps=0.1))
    rms = like.pow(2).mean(-1, keepdim=True).sqrt()
    assert (noise.abs() <= 0.1 * rms + 1e-9).all() and noise[mask == 0].abs().max() == 0
    assert (noise.abs().amax(-1) > 0.05 * rms.squeeze(-1))[
        mask == 1
    ].all()  # U(-1, 1) x 16: some draw is large


def test_term_equals_the_divergence_to_the_noisy_pass():
    """The reference is written here: uniform noise in [-eps, eps] times each token's RMS, none on padding,
    one noisy pass, and the symmetric KL by its formula (eval mode: no dropout to replay)."""
    model = _tiny_model(_spec("t")).eval()
    batch = _batch()
    dropout = DropoutReplay(torch.device("cpu"))
    embeds = model.embed(batch["input_ids"])
    with dropout.record():
        logits = model("t", **batch, inputs_embeds=embeds)
    ctx = StepContext(model, "t", batch, embeds, logits, dropout)
    torch.manual_seed(5)
    term = R3F(Config(weight=2.0, eps=1e-2)).penalty(ctx)["r3f"]
    torch.manual_seed(5)
    rms = embeds.detach().pow(2).mean(-1, keepdim=True).sqrt()
    noise = (torch.rand_like(embeds) * 2 - 1) * 1e-2 * rms * batch["attention_mask"].unsqueeze(-1)
    with torch.no_grad():
        noisy = model("t", **batch, inputs_embeds=embeds + noise)
    p, q = logits.detach().softmax(-1), noisy.softmax(-1)
    expected = 2.0 * ((p - q) * (p.log() - q.log())).sum(-1).mean()
    assert term.item() == pytest.approx(expected.item(), rel=1e-4)
    assert term.item() > 0


def test_config_problems_are_named():
    text = "\n".join(regularizer_problems({"r3f": {"eps": 0, "noise": "gaussian", "wieght": 1}}, []))
    assert (
        "regularizer.r3f.eps: must be > 0" in text
        and "regularizer.r3f.noise: must be uniform or normal" in text
    )
    assert "regularizer.r3f.wieght: unknown field (did you mean 'weight'?)" in text


def test_r3f_and_smart_compose_on_classification_and_regression(tmp_path, toy_tasks):
    cfg = compose_train(
        tiny_overrides(
            toy_tasks,
            "task=[toy_sent,toy_count]",
            "regularizer=[smart,r3f]",
            "regularizer.r3f.eps=1e-3",
            "trainer.max_steps=140",
            "trainer.log_every=1",
            "predict_test=false",
        )
    )
    summary = run(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    for task in ("toy_sent", "toy_count"):  # regression is regularized too (squared error), not skipped
        r3f = [r[f"r3f/{task}"] for r in log if f"r3f/{task}" in r]
        adv = [r[f"smart_adv/{task}"] for r in log if f"smart_adv/{task}" in r]
        assert r3f and min(r3f) > 0 and adv and min(adv) >= 0
    assert summary["steps"] == 140 and summary["validation"]["toy_sent"]["accuracy"] > 0.8
