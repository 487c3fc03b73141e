"""Distillation: soft-target aggregation and the KD loss by hand, the stored targets and their staleness,
students from shallower copies of a teacher, and a distilled student that follows its teachers."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import WORDS, compose_train, tiny_overrides, write_task
from safetensors.torch import load_file, save_file

from mtdnn import kinds
from mtdnn.core.errors import MtdnnError
from mtdnn.distill.targets import soft_targets
from mtdnn.train import run


def noisy_rows(n: int, seed: int, noise: float) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["neg", "pos"])
        words = rng.choices(WORDS, k=rng.randint(3, 8))
        words.insert(rng.randint(0, len(words)), "great" if label == "pos" else "awful")
        if rng.random() < noise:
            label = "pos" if label == "neg" else "neg"
        rows.append({"sentence": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    folder = root / "tasks"
    write_task(
        folder,
        "toy_sent",
        "classification",
        {"train": noisy_rows(400, 1, 0.25), "validation": noisy_rows(200, 2, 0.0)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    runs = []
    for seed in (1, 2):
        run(
            compose_train(
                tiny_overrides(
                    folder, "task=toy_sent", f"seed={seed}", "trainer.max_steps=80", "predict_test=false"
                )
            ),
            root / f"teacher{seed}",
        )
        runs.append(root / f"teacher{seed}")
    return root, folder, runs


def _student(folder, teachers_, *extra):
    return compose_train(
        tiny_overrides(
            folder,
            "task=toy_sent",
            "distill=ensemble",
            f"distill.teachers=[{','.join(map(str, teachers_))}]",
            "trainer.max_steps=40",
            "predict_test=false",
            *extra,
        )
    )


# ---------------------------------------------------------------- formulas


def test_soft_targets_average_tempered_probabilities_and_values():
    a, b = np.array([[2.0, 0.0]]), np.array([[0.0, 1.0]])
    t = 2.0
    expected = (np.exp(a / t) / np.exp(a / t).sum() + np.exp(b / t) / np.exp(b / t).sum()) / 2
    got = soft_targets(kinds.get("classification"), [[a[0]], [b[0]]], t)
    assert np.allclose(got[0], expected[0], atol=1e-6) and got[0].sum() == pytest.approx(1.0)
    assert soft_targets(kinds.get("regression"), [[np.array(1.0)], [np.array(3.0)]], 5.0)[0] == pytest.approx(
        2.0
    )
    groups = soft_targets(
        kinds.get("ranking"), [[np.array([0.0, 0.0, 0.0])], [np.array([10.0, 0.0, 0.0])]], 1.0
    )
    assert groups[0].shape == (3,) and groups[0][0] > 0.6 and groups[0].sum() == pytest.approx(1.0)


def test_kd_term_is_t_squared_kl_of_teacher_to_tempered_student():
    logits = torch.tensor([[1.0, -1.0, 0.5]])
    teacher = torch.tensor([[0.2, 0.3, 0.5]])
    t = 3.0
    student = F.softmax(logits / t, -1)
    expected = t**2 * (teacher * (teacher.log() - student.log())).sum()
    assert kinds.get("classification").kd_term(logits, teacher, {}, t).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    assert kinds.get("regression").kd_term(
        torch.tensor([1.0, 2.0]), torch.tensor([1.5, 2.0]), {}, 9.0
    ).item() == pytest.approx(0.125)


# ---------------------------------------------------------------- the stage end to end


def test_alpha_one_and_temperature_one_is_plain_training(teachers, tmp_path):
    root, folder, runs = teachers
    base = tiny_overrides(folder, "task=toy_sent", "trainer.max_steps=15", "predict_test=false")
    run(compose_train(base), tmp_path / "plain")
    run(
        compose_train(
            base
            + [
                "distill=ensemble",
                f"distill.teachers=[{runs[0]}]",
                "distill.alpha=1.0",
                "distill.temperature=1.0",
            ]
        ),
        tmp_path / "kd",
    )
    a = load_file(str(tmp_path / "plain" / "checkpoints" / "step_0000015" / "model.safetensors"))
    b = load_file(str(tmp_path / "kd" / "checkpoints" / "step_0000015" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_soft_targets_are_stored_reused_and_stale_files_rebuilt_or_refused(teachers, tmp_path, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="mtdnn")
    root, folder, runs = teachers
    store = tmp_path / "soft"
    first = run(
        _student(folder, runs, f"distill.soft_targets_dir={store}", "trainer.max_steps=2"), tmp_path / "a"
    )
    files = list(store.glob("toy_sent-*.safetensors"))
    assert len(files) == 1
    meta = json.loads(json.dumps(__import__("safetensors").safe_open(str(files[0]), "pt").metadata()))
    assert meta["format"] == "mtdnn-soft-targets/1" and meta["temperature"] == "2.0" and meta["rows"] == "400"
    assert [t["run_dir"] for t in json.loads(meta["teachers"])] == [str(r) for r in runs]
    stamp = files[0].stat().st_mtime_ns
    run(_student(folder, runs, f"distill.soft_targets_dir={store}", "trainer.max_steps=2"), tmp_path / "b")
    assert files[0].stat().st_mtime_ns == stamp and "reused" in caplog.text  # computed once, then reused
    # a teacher changes (retrained): its weights no longer match the file
    best = runs[0] / json.loads((runs[0] / "best.json").read_text())["checkpoint"] / "model.safetensors"
    original = best.read_bytes()
    weights = load_file(str(best))
    weights = {k: v + 0.01 if k.startswith("heads.") else v for k, v in weights.items()}
    try:
        save_file(weights, str(best))
        with pytest.raises(
            MtdnnError, match=r"stale soft targets: its teachers differs \(teachers changed\)"
        ):
            run(
                _student(folder, runs, f"distill.soft_targets_dir={store}", "distill.rebuild_stale=false"),
                tmp_path / "c",
            )
        run(
            _student(folder, runs, f"distill.soft_targets_dir={store}", "trainer.max_steps=2"), tmp_path / "d"
        )
        assert "stale soft targets" in caplog.text and files[0].stat().st_mtime_ns != stamp
    finally:
        best.write_bytes(original)
    assert first["distillation"][0]["model"] == "student"


def test_on_the_fly_targets_train_the_same_student_as_the_stored_ones(teachers, tmp_path):
    """Teachers sharing the student's tokenizer: `soft_targets=on_the_fly` (teachers run on every batch)
    and the cached targets give the same student, run end to end (targets equal to float precision, same
    seed)."""
    root, folder, runs = teachers
    common = [
        "distill.student_from_teacher=true",
        "distill.keep_every=1",
        "distill.alpha=0",
        "trainer.max_steps=6",
    ]
    run(_student(folder, runs, *common, f"distill.soft_targets_dir={tmp_path / 'soft'}"), tmp_path / "cached")
    run(_student(folder, runs, *common, "distill.soft_targets=on_the_fly"), tmp_path / "fly")
    cached, fly = (
        load_file(str(sorted((tmp_path / d / "checkpoints").iterdir())[-1] / "model.safetensors"))
        for d in ("cached", "fly")
    )
    assert cached.keys() == fly.keys()
    for key in cached:
        torch.testing.assert_close(fly[key], cached[key], rtol=1e-4, atol=1e-5)
    start = load_file(str(sorted((runs[0] / "checkpoints").iterdir())[-1] / "model.safetensors"))
    # it trained
    assert not torch.allclose(cached["heads.toy_sent.out.weight"], start["heads.toy_sent.out.weight"])


def test_student_from_teacher_keeps_every_kth_layer(teachers, tmp_path):
    root, folder, runs = teachers
    run(
        _student(
            folder,
            runs[:1],
            "distill.student_from_teacher=true",
            "distill.keep_every=2",
            "trainer.max_steps=1",
            "trainer.lr=1e-12",
            "trainer.head_lr=1e-12",
        ),
        tmp_path / "run",
    )
    config = json.loads((tmp_path / "run" / "encoder" / "config.json").read_text())
    assert config["num_hidden_layers"] == 1  # layer 0 of the teacher's 2
    teacher = load_file(
        str(runs[0] / json.loads((runs[0] / "best.json").read_text())["checkpoint"] / "model.safetensors")
    )
    student = load_file(str(tmp_path / "run" / "checkpoints" / "step_0000001" / "model.safetensors"))
    key = "encoder.encoder.layer.0.attention.self.query.weight"
    assert torch.allclose(student[key], teacher[key], atol=1e-6)
    assert "encoder.encoder.layer.1.attention.self.query.weight" not in student


def test_teachers_with_another_tokenizer_and_the_comparison_table(teachers, tmp_path):
    root, folder, runs = teachers
    summary = run(
        _student(
            folder,
            runs,
            "encoder.tokenizer_vocab_size=300",
            f"distill.soft_targets_dir={tmp_path}",
            "trainer.max_steps=5",
        ),
        tmp_path / "run",
    )
    table = summary["distillation"]
    assert [r["model"] for r in table] == ["student", "teacher teacher1", "teacher teacher2"]
    assert all(r["metric"] == "accuracy" and r["parameters"] > 0 and r["examples_per_s"] > 0 for r in table)
    assert table[1]["value"] > 0.8  # the teachers read the data through their own tokenizer


def _agreement(run_dir, teachers_, folder) -> float:
    """Share of validation examples where the run predicts what the teacher ensemble predicts."""
    from mtdnn.data.loading import TaskData, encode_splits, load_raw
    from mtdnn.data.tasks import load_tasks
    from mtdnn.evaluation.engine import collator_for, forward_rows
    from mtdnn.serving.loading import open_run

    (spec,) = load_tasks(["toy_sent"], [str(folder)])
    raw = load_raw(spec)["validation"]

    def probs(path):
        loaded = open_run(str(path), "last", torch.device("cpu"))
        data = TaskData(spec, {"validation": raw})
        encode_splits(data, loaded.tokenizer)
        logits, _ = forward_rows(
            loaded.model,
            spec,
            data.encoded["validation"],
            collator_for(spec, loaded.tokenizer, 8),
            64,
            torch.device("cpu"),
        )
        return torch.stack(logits).softmax(-1)

    ensemble = torch.stack([probs(t) for t in teachers_]).mean(0).argmax(-1)
    return (probs(run_dir).argmax(-1) == ensemble).float().mean().item()


def test_distilled_student_follows_its_teachers_more_than_a_hard_label_student(tmp_path):
    """Teachers that learned the opposite rule ('awful' = pos): a student distilled from them (alpha=0)
    must agree with them more often than a student trained on the gold labels, which agrees with them only
    by accident."""
    gold, flipped = tmp_path / "gold", tmp_path / "flipped"
    train, val = noisy_rows(400, 1, 0.0), noisy_rows(200, 2, 0.0)
    swap = {"pos": "neg", "neg": "pos"}
    write_task(
        gold,
        "toy_sent",
        "classification",
        {"train": train, "validation": val},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    write_task(
        flipped,
        "toy_sent",
        "classification",
        {"train": [dict(r, label=swap[r["label"]]) for r in train], "validation": val},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    runs = []
    for seed in (1, 2):
        run(
            compose_train(
                tiny_overrides(
                    flipped, "task=toy_sent", f"seed={seed}", "trainer.max_steps=80", "predict_test=false"
                )
            ),
            tmp_path / f"teacher{seed}",
        )
        runs.append(tmp_path / f"teacher{seed}")
    base = tiny_overrides(gold, "task=toy_sent", "trainer.max_steps=80", "predict_test=false", "seed=7")
    run(compose_train(base), tmp_path / "hard")
    run(
        compose_train(
            base
            + [
                "distill=ensemble",
                f"distill.teachers=[{runs[0]},{runs[1]}]",
                "distill.alpha=0.0",
                f"distill.soft_targets_dir={tmp_path}",
            ]
        ),
        tmp_path / "kd",
    )
    hard, kd = _agreement(tmp_path / "hard", runs, gold), _agreement(tmp_path / "kd", runs, gold)
    assert kd > hard, (kd, hard)


def test_span_and_tagging_distil_from_teachers_sharing_the_tokenizer(tmp_path):
    from test_heads import _span_task, _tag_task, squad_rows, tagging_rows

    folder = tmp_path / "tasks"
    _span_task(folder, squad_rows(80, 1), squad_rows(20, 2))
    _tag_task(folder, tagging_rows(80, 3), tagging_rows(20, 4))
    both = "task=[toy_squad,toy_ner]"
    run(
        compose_train(tiny_overrides(folder, both, "trainer.max_steps=60", "predict_test=false")),
        tmp_path / "teacher",
    )
    store = tmp_path / "soft"
    summary = run(
        compose_train(
            tiny_overrides(
                folder,
                both,
                "distill=ensemble",
                f"distill.teachers=[{tmp_path / 'teacher'}]",
                "trainer.max_steps=20",
                "distill.student_from_teacher=true",
                "distill.keep_every=2",
                f"distill.soft_targets_dir={store}",
                "predict_test=false",
            )
        ),
        tmp_path / "student",
    )
    assert {r["task"] for r in summary["distillation"]} == {"toy_squad", "toy_ner"}
    span_file = load_file(str(next(store.glob("toy_squad-*.safetensors"))))
    targets, sizes = span_file["targets"], span_file["sizes"]
    assert targets.shape == (int(sizes.sum()), 2)  # one (start, end) probability per token of every window
    first = targets[: int(sizes[0])]
    assert torch.allclose(first.sum(0), torch.ones(2), atol=1e-4)  # distributions over the window's tokens
    from mtdnn.data.loading import encode_splits
    from mtdnn.data.tasks import load_tasks
    from mtdnn.serving.loading import open_run
    from mtdnn.training.build import prepare_data

    teacher = open_run(str(tmp_path / "teacher"), "best", torch.device("cpu"))  # the first window, recomputed
    data = prepare_data(load_tasks(["toy_squad"], [str(folder)]))["toy_squad"]
    encode_splits(data, teacher.tokenizer)
    window = data.encoded["train"][0]
    ids = torch.tensor([window["input_ids"]])
    with torch.no_grad():
        logits = teacher.model(
            "toy_squad",
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            token_type_ids=torch.tensor([window["token_type_ids"]]),
        )[0]
    # T = 2 (the default)
    torch.testing.assert_close(first, torch.softmax(logits / 2.0, 0), atol=1e-5, rtol=1e-4)
    tag_file = load_file(str(next(store.glob("toy_ner-*.safetensors"))))
    assert torch.allclose(tag_file["targets"].sum(-1), torch.ones(len(tag_file["targets"])), atol=1e-4)
    log = [json.loads(line) for line in (tmp_path / "student" / "train_log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r[f"loss/{t}"]) for r in log for t in ("toy_squad", "toy_ner") if f"loss/{t}" in r)
    # a student with its own tokenizer cannot take per-token targets
    with pytest.raises(
        MtdnnError, match="tokenises differently from the student, but span targets are per token"
    ):
        run(
            compose_train(
                tiny_overrides(
                    folder,
                    "task=toy_squad",
                    "distill=ensemble",
                    "trainer.max_steps=2",
                    f"distill.teachers=[{tmp_path / 'teacher'}]",
                    "encoder.tokenizer_vocab_size=50",
                    f"distill.soft_targets_dir={store}",
                )
            ),
            tmp_path / "mismatch",
        )


def test_student_log_names_the_teachers_real_layer_count(teachers, tmp_path, caplog):
    """2 teacher layers, every 3rd kept: the student has layer 0 of a 2-layer encoder (not '3-layer')."""
    root, folder, runs = teachers
    with caplog.at_level("INFO", logger="mtdnn"):
        run(
            _student(
                folder,
                runs[:1],
                "distill.student_from_teacher=true",
                "distill.keep_every=3",
                "trainer.max_steps=1",
            ),
            tmp_path / "run",
        )
    assert "layers [0] of" in caplog.text and "2-layer encoder" in caplog.text


def test_kd_terms_of_span_tagging_and_ranking_by_hand():
    """Each kind's KD term written out with plain loops: T^2 * KL(teacher || softmax(student / T))."""
    t = 2.0

    def kl(p: torch.Tensor, z: torch.Tensor) -> float:  # KL(p || softmax(z / t)), p may hold zeros
        q = torch.softmax(z / t, -1)
        return float(sum(pi * (pi / qi).log() for pi, qi in zip(p, q) if pi > 0))

    torch.manual_seed(0)
    # span: (windows, tokens, 2); start and end distributions over each window's tokens, averaged over 2 x
    # windows
    logits = torch.randn(2, 5, 2)
    soft = torch.softmax(torch.randn(2, 5, 2), 1)
    expected = sum(kl(soft[w, :, e], logits[w, :, e]) for w in range(2) for e in range(2)) / 4 * t**2
    assert kinds.get("span").kd_term(logits, soft, {}, t).item() == pytest.approx(expected, rel=1e-5)
    # tagging: (sentences, tokens, tags); per real token over the tags, averaged over the real tokens
    logits = torch.randn(2, 4, 3)
    soft = torch.softmax(torch.randn(2, 4, 3), -1)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    real = [(i, j) for i in range(2) for j in range(4) if mask[i, j]]
    expected = sum(kl(soft[i, j], logits[i, j]) for i, j in real) / len(real) * t**2
    got = kinds.get("tagging").kd_term(logits, soft, {"attention_mask": mask}, t).item()
    assert got == pytest.approx(expected, rel=1e-5)
    # ranking: candidate scores of two groups (3 and 2 candidates), softmax within each group
    scores = torch.tensor([0.5, -1.0, 2.0, 0.3, 0.1])
    batch = {
        "group": torch.tensor([0, 0, 0, 1, 1]),
        "slot": torch.tensor([0, 1, 2, 0, 1]),
        "labels": torch.zeros(2, 3),
    }
    soft = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]])
    expected = (kl(soft[0], scores[:3]) + kl(soft[1, :2], scores[3:])) / 2 * t**2
    assert kinds.get("ranking").kd_term(scores, soft, batch, t).item() == pytest.approx(expected, rel=1e-4)


def test_the_distill_command_runs_a_student_and_reports_it(teachers, tmp_path):
    """`python -m mtdnn.distill` itself: it is `mtdnn.train distill=ensemble`, and a missing teacher list is
    one clear line with exit code 2."""
    import subprocess
    import sys

    root, folder, runs = teachers
    common = [
        sys.executable,
        "-m",
        "mtdnn.distill",
        "encoder=tiny",
        "task=toy_sent",
        f"task_dirs=[{folder}]",
        "trainer.progress_bar=false",
        "predict_test=false",
        "trainer.max_steps=3",
    ]
    done = subprocess.run(
        common
        + [
            f"distill.teachers=[{','.join(map(str, runs))}]",
            f"distill.soft_targets_dir={tmp_path / 'soft'}",
            f"output_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [r["model"] for r in summary["distillation"]][:1] == ["student"] and len(
        summary["distillation"]
    ) == 3
    missing = subprocess.run(
        common + [f"output_dir={tmp_path / 'none'}"], capture_output=True, text=True, timeout=300
    )
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "distill.teachers: required with distill=ensemble" in missing.stderr


def test_ranking_and_regression_distil_end_to_end(tmp_path):
    """A student trained on the teacher's targets alone (alpha 0) learns the ranking and the regression
    rule; the stored regression targets are the teacher's own predictions."""
    from conftest import count_rows
    from test_heads import _rank_task, ranking_rows

    folder = tmp_path / "tasks"
    _rank_task(folder, ranking_rows(200, 1), ranking_rows(40, 2))
    write_task(
        folder,
        "toy_count",
        "regression",
        {"train": count_rows(300, 3), "validation": count_rows(60, 4)},
        {"text": "a", "text_pair": "b", "label": "score"},
        fmt="jsonl",
    )
    both = "task=[toy_rank,toy_count]"
    teacher = run(
        compose_train(
            tiny_overrides(folder, both, "trainer.max_steps=200", "predict_test=false", "sampler=uniform")
        ),
        tmp_path / "teacher",
    )
    store = tmp_path / "soft"
    student = run(
        compose_train(
            tiny_overrides(
                folder,
                both,
                "distill=ensemble",
                f"distill.teachers=[{tmp_path / 'teacher'}]",
                "distill.alpha=0",
                "distill.student_from_teacher=true",
                "distill.keep_every=1",
                f"distill.soft_targets_dir={store}",
                "trainer.max_steps=40",
                "sampler=uniform",
                "predict_test=false",
                "trainer.lr=1e-4",
                "trainer.head_lr=1e-4",
            )
        ),
        tmp_path / "student",
    )
    for task, metric in (("toy_rank", "accuracy"), ("toy_count", "pearson")):
        assert teacher["validation"][task][metric] > 0.8, (task, teacher["validation"][task])
        assert student["validation"][task][metric] > 0.8, (task, student["validation"][task])
    from mtdnn.data.loading import encode_splits
    from mtdnn.data.tasks import load_tasks
    from mtdnn.evaluation.engine import collator_for, forward_rows
    from mtdnn.serving.loading import open_run
    from mtdnn.training.build import prepare_data

    loaded = open_run(str(tmp_path / "teacher"), "best", torch.device("cpu"))
    data = prepare_data(load_tasks(["toy_count"], [str(folder)]))["toy_count"]
    encode_splits(data, loaded.tokenizer)
    outputs, _ = forward_rows(
        loaded.model,
        data.spec,
        data.encoded["train"],
        collator_for(data.spec, loaded.tokenizer, 8),
        64,
        torch.device("cpu"),
    )
    stored = load_file(str(next(store.glob("toy_count-*.safetensors"))))["targets"].squeeze(-1)
    torch.testing.assert_close(stored, torch.stack(outputs), atol=1e-5, rtol=1e-5)


def test_narrower_feed_forward_keeps_the_neurons_with_the_largest_weight_products():
    """Neuron j's importance is ||W_in[j]|| * ||W_out[:, j]||: here 1*3, 2*0, 2*1, 1*1 (3, 0, 2, 1), so width
    2 keeps neurons 0 and 2, in the teacher's order; a neuron whose output weights are zero contributes
    nothing, so dropping it leaves the block's function unchanged."""
    from mtdnn.distill.student import narrower_feed_forward

    w_in = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 1.0]])
    w_out = torch.tensor([[3.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    b_in = torch.tensor([0.1, 0.2, 0.3, 0.4])
    names = "encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.intermediate.dense.bias"
    state = {names[0]: w_in, names[1]: b_in, "encoder.layer.0.output.dense.weight": w_out, "other": b_in}
    narrow = narrower_feed_forward(state, 2, "teacher")
    assert torch.equal(narrow[names[0]], w_in[[0, 2]]) and torch.equal(narrow[names[1]], b_in[[0, 2]])
    assert torch.equal(narrow["encoder.layer.0.output.dense.weight"], w_out[:, [0, 2]])
    assert narrow["other"] is b_in and state[names[0]] is w_in  # the rest as it was; the input untouched

    three = narrower_feed_forward(state, 3, "teacher")  # drops neuron 1 only, whose W_out column is zero
    x = torch.randn(5, 2)

    def block(s):
        hidden = torch.nn.functional.gelu(x @ s[names[0]].T + s[names[1]])
        return hidden @ s["encoder.layer.0.output.dense.weight"].T

    torch.testing.assert_close(block(three), block(state))
    with pytest.raises(MtdnnError, match="distill.keep_ffn: t's encoder has no BERT-style feed-forward"):
        narrower_feed_forward({"ffn.lin1.weight": w_in}, 2, "t")


def test_student_from_teacher_keeps_a_share_of_each_layers_feed_forward_neurons(teachers, tmp_path):
    """keep_ffn=0.5 on the tiny teacher (64 feed-forward neurons a layer): a student with 32, the teacher's
    32 most important neurons of each layer, attention weights unchanged."""
    root, folder, runs = teachers
    run(
        _student(
            folder,
            runs[:1],
            "distill.student_from_teacher=true",
            "distill.keep_every=1",
            "distill.keep_ffn=0.5",
            "trainer.max_steps=1",
            "trainer.lr=1e-12",
            "trainer.head_lr=1e-12",
        ),
        tmp_path / "run",
    )
    config = json.loads((tmp_path / "run" / "encoder" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["intermediate_size"]) == (2, 32)
    teacher = load_file(
        str(runs[0] / json.loads((runs[0] / "best.json").read_text())["checkpoint"] / "model.safetensors")
    )
    student = load_file(str(tmp_path / "run" / "checkpoints" / "step_0000001" / "model.safetensors"))
    for layer in (0, 1):
        prefix = f"encoder.encoder.layer.{layer}."
        w_in, w_out = teacher[prefix + "intermediate.dense.weight"], teacher[prefix + "output.dense.weight"]
        kept = (w_in.norm(dim=1) * w_out.norm(dim=0)).argsort(descending=True)[:32].sort().values
        close = dict(atol=1e-6, rtol=0)
        torch.testing.assert_close(student[prefix + "intermediate.dense.weight"], w_in[kept], **close)
        torch.testing.assert_close(student[prefix + "output.dense.weight"], w_out[:, kept], **close)
        key = prefix + "attention.self.query.weight"
        torch.testing.assert_close(student[key], teacher[key], **close)


def test_keep_ffn_outside_zero_to_one_is_refused_before_training(teachers, tmp_path):
    root, folder, runs = teachers
    with pytest.raises(MtdnnError, match=r"distill.keep_ffn: must be in \(0, 1\], got 0.0"):
        run(_student(folder, runs[:1], "distill.student_from_teacher=true", "distill.keep_ffn=0"), tmp_path)


# ---------------------------------------------------------------- the transfer set


class _ScriptedRng:
    """Stands in for numpy's Generator: random() and integers() return the scripted values in turn."""

    def __init__(self, rolls: list[float], ints: list[int]):
        self.rolls, self.ints = iter(rolls), iter(ints)

    def random(self) -> float:
        return next(self.rolls)

    def integers(self, high: int) -> int:
        return next(self.ints) % high


def test_augmented_copies_drop_swap_and_replace_words_as_scripted():
    from mtdnn.distill.transfer import augmented

    # words a b c d e: a swaps with b (roll < p, op 1), c is kept (roll >= p), d is dropped (op 0),
    # e is replaced (op 2) by vocabulary word 7 of "a b c d e x y z" ("z")
    # (every word draws a roll and an operation; x, y and z roll 0.9 and are kept)
    rng = _ScriptedRng([0.0, 0.9, 0.0, 0.0, 0.9, 0.9, 0.9], [1, 0, 0, 2, 7, 0, 0, 0])
    assert augmented(["a b c d e", "x y z"], 1, 0.5, rng) == [["b a c z", "x y z"]]
    # a one-word text is never emptied: a drop of its only word replaces it instead (vocabulary word 1)
    assert augmented(["solo", "other"], 1, 0.5, _ScriptedRng([0.0, 0.9], [0, 1, 0])) == [["other", "other"]]


def test_augmented_copies_are_seeded_and_change_about_p_of_the_words():
    from mtdnn.distill.transfer import augmented

    texts = [" ".join(f"w{i}_{j}" for j in range(20)) for i in range(200)]
    one = augmented(texts, 3, 0.1, np.random.default_rng(0))
    assert one == augmented(texts, 3, 0.1, np.random.default_rng(0)) and len(one) == 3
    # a copy is unchanged when none of its 20 words rolls below p: 0.9^20 of the copies
    unchanged = np.mean([t == c for copy in one for t, c in zip(texts, copy)])
    assert unchanged == pytest.approx(0.9**20, abs=0.05)


def test_the_hard_loss_skips_rows_only_the_teachers_label():
    from mtdnn.distill.distiller import Distiller

    class Head:
        @staticmethod
        def loss(logits, batch):
            return F.cross_entropy(logits, batch["labels"])

    class Model:
        @staticmethod
        def head(task):
            return Head

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [3.0, -1.0]], requires_grad=True)
    labels = torch.tensor([1, 1, 0, 0])
    mask = torch.tensor([True, False, False, True])
    per_row = F.cross_entropy(logits, labels, reduction="none")
    got = Distiller._hard(Model, "t", logits, {"labels": labels, "labelled": mask})
    assert got.item() == pytest.approx((per_row[0] + per_row[3]).item() / 4)  # each labelled row weighs 1/n
    none = Distiller._hard(
        Model, "t", logits, {"labels": labels, "labelled": torch.zeros(4, dtype=torch.bool)}
    )
    assert none.item() == 0.0 and none.requires_grad
    every = Distiller._hard(
        Model, "t", logits, {"labels": labels, "labelled": torch.ones(4, dtype=torch.bool)}
    )
    assert every.item() == pytest.approx(per_row.mean().item())


def test_a_transfer_set_adds_rows_the_teachers_label_and_the_hard_loss_ignores(teachers, tmp_path, caplog):
    """40 labelled rows, a file of 300 texts and 2 noisy copies of each labelled row: the soft targets cover
    all 420 rows. At alpha=1 (labels only) the 380 unlabelled rows carry the first row's label as a
    placeholder; were it learnt, the student would call every text by that one label."""
    import logging

    from safetensors import safe_open

    caplog.set_level(logging.INFO, logger="mtdnn")
    root, folder, runs = teachers
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"sentence": [r["sentence"] for r in noisy_rows(300, 5, 0.0)]}).to_csv(texts, index=False)
    common = ["+task_overrides.toy_sent.train_rows=40", f"distill.soft_targets_dir={tmp_path / 'soft'}"]
    common += [f"+distill.transfer.toy_sent={texts}", "distill.augment=2", "trainer.max_steps=400"]
    run(_student(folder, runs[:1], *common, "distill.alpha=1.0"), tmp_path / "hard")
    assert "transfer set for toy_sent: 380 rows only the teachers label" in caplog.text
    (stored,) = (tmp_path / "soft").glob("toy_sent-*.safetensors")
    with safe_open(str(stored), "pt") as handle:
        assert handle.metadata()["rows"] == "420"
    summary = json.loads((tmp_path / "hard" / "summary.json").read_text())
    assert summary["validation"]["toy_sent"]["accuracy"] > 0.8, summary["validation"]


def test_transfer_settings_that_cannot_work_are_reported_together(teachers, tmp_path):
    import dataclasses

    from mtdnn.core.config import DistillConfig
    from mtdnn.data.tasks import load_tasks
    from mtdnn.distill import distill_problems

    root, folder, runs = teachers
    (spec,) = load_tasks(["toy_sent"], [str(folder)])
    ranked = dataclasses.replace(spec, name="toy_rank", head="ranking")
    (tmp_path / "texts.csv").write_text("review\nnice\n")
    cfg = DistillConfig(
        mode="ensemble",
        teachers=[str(runs[0])],
        transfer={
            "toy_sent": str(tmp_path / "texts.csv"),
            "toy_rank": str(tmp_path / "texts.csv"),
            "nope": str(tmp_path / "texts.txt"),
        },
        augment=-1,
        augment_p=1.5,
    )
    problems = distill_problems(cfg, [spec, ranked])
    for expected in (
        "distill.augment: must be >= 0 copies per row, got -1",
        "distill.augment_p: must be in (0, 1), got 1.5",
        f"distill.transfer.toy_sent: {tmp_path / 'texts.csv'}: no column sentence (the task's text columns)",
        "distill.transfer.toy_rank: ranking tasks have no one-output-per-row transfer set",
        "distill.transfer.nope: no such task in this run (tasks: toy_sent, toy_rank)",
    ):
        assert expected in problems, problems
    plain = DistillConfig(mode="none", transfer={"toy_sent": "x.csv"}, augment=2)
    assert distill_problems(plain, [spec]) == [
        "distill.transfer: transfer files given but distill.mode is none; choose distill=ensemble",
        "distill.augment: copies given but distill.mode is none; choose distill=ensemble",
    ]


def test_a_transfer_file_row_without_a_text_is_named_by_row_and_what_it_holds(teachers, tmp_path):
    from mtdnn.data.tasks import load_tasks
    from mtdnn.distill.transfer import checked_texts

    root, folder, runs = teachers
    (spec,) = load_tasks(["toy_sent"], [str(folder)])
    rows = ['{"sentence": "fine"}', '{"sentence": 42}', '{"sentence": "  "}', '{"sentence": null}']
    rows += ['{"sentence": ["a", "b"]}', '{"sentence": 1.5}']
    (tmp_path / "texts.jsonl").write_text("\n".join(rows) + "\n")
    texts, problems = checked_texts(spec, str(tmp_path / "texts.jsonl"))
    where = f"distill.transfer.toy_sent: {tmp_path / 'texts.jsonl'}"
    assert problems == [
        f"{where}: row 2: column sentence: not a text but int 42",
        f"{where}: row 3: column sentence: empty text",
        f"{where}: row 4: column sentence: empty text",
        f"{where}: row 5: column sentence: not a text but list ['a', 'b']",
        f"{where}: row 6: column sentence: not a text but float 1.5",
    ]
    many = ['{"sentence": ""}'] * 25
    (tmp_path / "many.jsonl").write_text("\n".join(many) + "\n")
    problems = checked_texts(spec, str(tmp_path / "many.jsonl"))[1]
    assert len(problems) == 21 and problems[-1].endswith("... and 5 more rows without a text")


def test_a_transfer_sets_soft_targets_are_stored_beside_the_plain_ones(teachers, tmp_path):
    from mtdnn.core.config import DistillConfig
    from mtdnn.data.tasks import load_tasks
    from mtdnn.distill.targets import SoftTargetFile

    root, folder, runs = teachers
    (spec,) = load_tasks(["toy_sent"], [str(folder)])
    identity = [{"run_dir": str(runs[0]), "checkpoint": "best", "sha256": "0"}]

    def path(**settings):
        return SoftTargetFile(tmp_path, spec, DistillConfig(mode="ensemble", **settings), identity, "d").path

    plain, copies, texts = path(), path(augment=2), path(transfer={"toy_sent": "a.csv"})
    assert len({plain, copies, texts, path(augment=2, augment_p=0.2)}) == 4
    assert path(augment=2) == copies and path() == plain
