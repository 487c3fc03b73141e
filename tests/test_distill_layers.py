"""Layer-wise distillation (mtdnn/distill/layers.py): each term against a hand computation in numpy, the
captured queries and keys against the encoder's own attention maps, the layer map, the settings' checks, and
students that train, resume exactly and get closer to their teachers' layers."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import compose_train, straight_and_resumed, tiny_overrides, write_task
from test_distill import noisy_rows

from mtdnn.distill.layers import (
    LayerTerms,
    TeacherLayers,
    hidden_distance,
    relation_kl,
    relation_log_probs,
    uniform_layer_map,
    watching,
)
from mtdnn.train import run

MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _relations_by_hand(a: np.ndarray, b: np.ndarray, heads: int, mask: np.ndarray) -> np.ndarray:
    """softmax over the real keys of a_h . b_h / sqrt(d_h), one head, one query row at a time."""
    batch, length, width = a.shape
    size = width // heads
    out = np.zeros((batch, heads, length, length))
    for n in range(batch):
        real = mask[n].astype(bool)
        for h in range(heads):
            cols = slice(h * size, (h + 1) * size)
            for i in range(length):
                scores = np.array([a[n, i, cols] @ b[n, j, cols] for j in range(length)]) / np.sqrt(size)
                out[n, h, i, real] = _softmax(scores[real])
    return out


def _kl_by_hand(p: np.ndarray, q: np.ndarray, mask: np.ndarray) -> float:
    """Mean over heads and real query rows of sum_j p log(p / q) over the real keys."""
    rows = []
    for n in range(p.shape[0]):
        real = mask[n].astype(bool)
        for h in range(p.shape[1]):
            for i in np.flatnonzero(real):
                rows.append(float((p[n, h, i, real] * np.log(p[n, h, i, real] / q[n, h, i, real])).sum()))
    return float(np.mean(rows))


# ---------------------------------------------------------------- each term by hand


def test_relations_and_their_kl_match_a_hand_computation():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    got = relation_log_probs(q, k, 3, MASK).exp()
    expected = _relations_by_hand(q.numpy(), k.numpy(), 3, MASK.numpy())
    assert np.allclose(got.numpy(), expected, atol=1e-6)
    assert got[0, :, :, 3].abs().max() < 1e-30  # the padded key gets nothing
    other = relation_log_probs(torch.randn(2, 4, 6), torch.randn(2, 4, 6), 3, MASK)
    kl = relation_kl(got, other, MASK).item()
    assert kl == pytest.approx(_kl_by_hand(expected, other.exp().numpy(), MASK.numpy()), rel=1e-5)
    same = relation_log_probs(q, k, 3, MASK)
    assert relation_kl(got, same, MASK).item() == pytest.approx(0.0, abs=1e-6)


def test_relation_heads_need_not_be_the_models_heads():
    """MiniLMv2: a student of width 6 and a teacher of width 12 give relations of one shape for any r
    dividing both."""
    torch.manual_seed(1)
    student = relation_log_probs(torch.randn(2, 4, 6), torch.randn(2, 4, 6), 2, MASK)
    teacher = relation_log_probs(torch.randn(2, 4, 12), torch.randn(2, 4, 12), 2, MASK)
    assert student.shape == teacher.shape == (2, 2, 4, 4)


def test_hidden_distances_by_hand_skip_padding():
    torch.manual_seed(2)
    s, t = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    real = MASK.numpy().astype(bool)
    sn, tn = s.numpy()[real], t.numpy()[real]
    mse = ((sn - tn) ** 2).mean()
    cos = (1 - (sn * tn).sum(-1) / (np.linalg.norm(sn, axis=-1) * np.linalg.norm(tn, axis=-1))).mean()
    assert hidden_distance(s, t, MASK, "mse").item() == pytest.approx(mse, rel=1e-5)
    assert hidden_distance(s, t, MASK, "cosine").item() == pytest.approx(cos, rel=1e-5)
    t[0, 3] += 100.0  # a padded position changes nothing
    assert hidden_distance(s, t, MASK, "mse").item() == pytest.approx(mse, rel=1e-5)


def test_uniform_layer_map_is_tinybert_s():
    assert uniform_layer_map(3, 6) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert uniform_layer_map(2, 6) == [(0, 0), (1, 3), (2, 6)]
    assert uniform_layer_map(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]


def _settings(**changes):
    base = dict(
        hidden_weight=2.0,
        attention_weight=3.0,
        value_weight=5.0,
        hidden_loss="mse",
        layer_map=None,
        relation_heads=None,
    )
    return SimpleNamespace(**{**base, **changes})


def test_the_weighted_terms_sum_the_mapped_layers_with_a_projection_where_widths_differ():
    student_config = SimpleNamespace(hidden_size=4, num_hidden_layers=1, num_attention_heads=2)
    teacher_config = SimpleNamespace(hidden_size=6, num_hidden_layers=2, num_attention_heads=3)
    terms = LayerTerms(_settings(), student_config, [teacher_config], torch.device("cpu"))
    assert terms.layer_map == [(0, 0), (1, 2)] and terms.heads == 2
    assert terms.projection.in_features == 4 and terms.projection.out_features == 6
    torch.manual_seed(3)
    student_hidden = (torch.randn(2, 4, 4), torch.randn(2, 4, 4))
    teacher_hidden = [torch.randn(2, 4, 6) for _ in range(3)]
    seen = {name: torch.randn(2, 4, 4, requires_grad=True) for name in "qkv"}
    teacher_q, teacher_k, teacher_v = (torch.randn(2, 4, 6) for _ in range(3))
    teacher = TeacherLayers(
        teacher_hidden,
        relation_log_probs(teacher_q, teacher_k, 2, MASK).exp(),
        relation_log_probs(teacher_v, teacher_v, 2, MASK).exp(),
    )
    got = terms.terms(teacher, student_hidden, seen, MASK)

    w, b = terms.projection.weight.detach().numpy(), terms.projection.bias.detach().numpy()
    real = MASK.numpy().astype(bool)
    mse = [
        (((student_hidden[s].numpy() @ w.T + b)[real] - teacher_hidden[t].numpy()[real]) ** 2).mean()
        for s, t in [(0, 0), (1, 2)]
    ]
    assert got["distill_hidden"].item() == pytest.approx(2.0 * np.mean(mse), rel=1e-5)
    mask = MASK.numpy()
    attention = _kl_by_hand(
        _relations_by_hand(teacher_q.numpy(), teacher_k.numpy(), 2, mask),
        _relations_by_hand(seen["q"].detach().numpy(), seen["k"].detach().numpy(), 2, mask),
        mask,
    )
    values = _kl_by_hand(
        _relations_by_hand(teacher_v.numpy(), teacher_v.numpy(), 2, mask),
        _relations_by_hand(seen["v"].detach().numpy(), seen["v"].detach().numpy(), 2, mask),
        mask,
    )
    assert got["distill_attention"].item() == pytest.approx(3.0 * attention, rel=1e-4)
    assert got["distill_values"].item() == pytest.approx(5.0 * values, rel=1e-4)
    assert all(term.requires_grad for term in got.values())  # each term trains the student


def test_equal_widths_need_no_projection_and_a_map_can_be_given():
    config = SimpleNamespace(hidden_size=4, num_hidden_layers=2, num_attention_heads=2)
    terms = LayerTerms(
        _settings(layer_map=[[2, 1]], attention_weight=0.0, value_weight=0.0),
        config,
        [config],
        torch.device("cpu"),
    )
    assert terms.projection is None and terms.layer_map == [(2, 1)] and not terms.relations
    s, t = torch.randn(2, 4, 4), torch.randn(2, 4, 4)
    got = terms.terms(TeacherLayers([None, t, None], None, None), (None, None, s), {}, MASK)
    assert got.keys() == {"distill_hidden"}
    assert got["distill_hidden"].item() == pytest.approx(2.0 * hidden_distance(s, t, MASK, "mse").item())


def test_captured_queries_and_keys_give_the_encoders_own_last_attention_map():
    """The reference is the model itself: BERT's eager attention probabilities of its last layer."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(4)
    config = BertConfig(
        vocab_size=50, hidden_size=12, num_hidden_layers=3, num_attention_heads=3, intermediate_size=16
    )
    model = BertModel(config, add_pooling_layer=False).eval()
    model.set_attn_implementation("eager")
    ids = torch.randint(0, 50, (2, 4))
    with watching(model) as seen, torch.no_grad():
        out = model(input_ids=ids, attention_mask=MASK, output_attentions=True)
    ours = relation_log_probs(seen["q"], seen["k"], 3, MASK).exp()
    assert torch.allclose(ours, out.attentions[-1], atol=1e-5)
    assert not model.encoder.layer[-1].attention.self.query._forward_hooks  # hooks removed after the block


# ---------------------------------------------------------------- students end to end


@pytest.fixture(scope="module")
def teacher_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("layers")
    folder = root / "tasks"
    write_task(
        folder,
        "toy_sent",
        "classification",
        {"train": noisy_rows(300, 1, 0.2), "validation": noisy_rows(100, 2, 0.0)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    scored = lambda n, seed: [  # noqa: E731
        {"sentence": r["sentence"], "score": float(r["label"] == "pos")} for r in noisy_rows(n, seed, 0)
    ]
    write_task(
        folder,
        "toy_score",
        "regression",
        {"train": scored(200, 3), "validation": scored(60, 4)},
        {"text": "sentence", "label": "score"},
    )
    runs = []
    for seed in (1, 2):
        out = root / f"teacher{seed}"
        run(
            compose_train(
                tiny_overrides(
                    folder,
                    "task=[toy_sent,toy_score]",
                    f"seed={seed}",
                    "trainer.max_steps=60",
                    "predict_test=false",
                    "encoder.from_config.num_hidden_layers=4",
                )
            ),
            out,
        )
        runs.append(out)
    return folder, runs


def _layered(folder, runs, *extra) -> list[str]:
    return tiny_overrides(
        folder,
        "task=[toy_sent,toy_score]",
        "distill=layerwise",
        f"distill.teachers=[{','.join(map(str, runs))}]",
        "predict_test=false",
        "trainer.max_steps=30",
        *extra,
    )


def _terms(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_a_layerwise_student_learns_its_teachers_layers(teacher_runs, tmp_path):
    """A fresh 2-layer student of the 4-layer teachers (same tokenizer): every term is logged per task, and
    each falls during training. (The relation KLs of models this small start near 0.001: weighted up so
    that they, not the task loss, lead the student.)"""
    folder, runs = teacher_runs
    heavy = ["trainer.log_every=1", "distill.attention_weight=300", "distill.value_weight=300"]
    run(compose_train(_layered(folder, runs, *heavy)), tmp_path / "student")
    rows = _terms(tmp_path / "student")
    for term in ("distill_hidden", "distill_attention", "distill_values"):
        values = [v for row in rows for k, v in row.items() if k.startswith(f"{term}/")]
        assert len(values) == 30, term  # one per step: each step draws one task
        first, last = np.mean(values[:5]), np.mean(values[-5:])
        assert last < 0.8 * first, (term, first, last)


def test_a_narrower_student_trains_its_projection_and_resumes_it_exactly(teacher_runs, tmp_path):
    """Width 16 against the teachers' 32: the projection is learned, checkpointed and restored bit for bit."""
    folder, runs = teacher_runs
    narrow = ["encoder.from_config.hidden_size=16", "trainer.max_steps=12", "trainer.eval_every=4"]
    base = _layered(folder, runs, *narrow)
    straight, resumed = straight_and_resumed(base, tmp_path, steps=12, cut=8)
    # the last logged window (steps 11-12) lies wholly after the resume: its terms match to the bit
    last = [{k: v for k, v in rows[-1].items() if k.startswith("distill_")} for rows in (straight, resumed)]
    assert len(last[0]) == 6 and last[0] == last[1]
    state = torch.load(
        tmp_path / "straight" / "checkpoints" / "step_0000012" / "trainer_state.pt", weights_only=False
    )
    assert state["distiller"]["weight"].shape == (32, 16)


def test_layer_settings_that_cannot_work_are_one_line_each(teacher_runs, tmp_path):
    folder, runs = teacher_runs
    cases = [
        ("distill.hidden_loss=l1", "distill.hidden_loss: must be mse or cosine"),
        ("distill.layers_from=5", "distill.layers_from: must be mean or a teacher's index 0..1"),
        ("distill.attention_weight=-1", "distill.attention_weight: must be >= 0"),
        ("distill.layer_map=[[1,9]]", "distill.layer_map[0]: [1, 9] is outside"),
        ("distill.relation_heads=3", "distill.relation_heads: 3 does not divide the student's width 32"),
    ]
    for override, expected in cases:
        command = [sys.executable, "-m", "mtdnn.train", *_layered(folder, runs, override)]
        done = subprocess.run(
            [*command, f"output_dir={tmp_path}"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 2 and expected in done.stderr, (override, done.stderr[-500:])
        assert "Traceback" not in done.stderr
