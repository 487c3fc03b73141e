"""The multilabel kind (one new module, mtdnn/kinds/multilabel.py): YAML checks, metrics and divergence
against independent computations, end-to-end training, unlabelled test rows, distillation and export."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import WORDS, compose_train, tiny_overrides, write_task

from mtdnn import kinds
from mtdnn.core.errors import MtdnnError
from mtdnn.data.tasks import load_tasks
from mtdnn.train import run

COLOURS = ["red", "green", "blue"]


def colour_rows(n: int, seed: int, hide: bool = False) -> list[dict]:
    """Learnable rule: a label for every colour word the sentence contains (possibly none)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        chosen = [c for c in COLOURS if rng.random() < 0.4]
        words = rng.choices(WORDS, k=rng.randint(3, 7)) + chosen
        rng.shuffle(words)
        rows.append({"sentence": " ".join(words), "tags": None if hide else chosen})
    return rows


def _task(folder, train=None, validation=None, test=None, **extra):
    splits = {"train": train or colour_rows(300, 1), "validation": validation or colour_rows(80, 2)}
    if test is not None:
        splits["test"] = test
    return write_task(
        folder,
        "colours",
        "multilabel",
        splits,
        {"text": "sentence", "label": "tags"},
        fmt="jsonl",
        labels=COLOURS,
        **extra,
    )


def test_yaml_problems_are_reported_together(tmp_path):
    _task(
        tmp_path,
        thresholds={"red": 1.5, "purple": 0.3},
        label_smoothing=2.0,
        metrics=["f1_micro", "accuracy"],
    )
    with pytest.raises(MtdnnError) as info:
        load_tasks(["colours"], [str(tmp_path)])
    text = str(info.value)
    for part in (
        "thresholds: every threshold must be in (0, 1)",
        "thresholds.purple: not among the labels",
        "label_smoothing: must be in [0, 1)",
        "metrics[1]: 'accuracy' does not apply to multilabel",
    ):
        assert part in text, text


def test_bad_label_rows_name_the_row(tmp_path):
    from mtdnn.training.build import prepare_data

    rows = colour_rows(20, 1)
    rows[6]["tags"] = ["red", "purple"]
    rows[9]["tags"] = None
    _task(tmp_path, train=rows)
    with pytest.raises(MtdnnError) as info:
        prepare_data(load_tasks(["colours"], [str(tmp_path)]))
    text = str(info.value)
    assert "columns.label: split 'train' row 7: label 'purple' is not in labels" in text
    assert "row 10: labels are missing" in text


def _by_hand(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    tp, fp, fn = (pred & gold).sum(0), (pred & ~gold).sum(0), (~pred & gold).sum(0)
    per_label = [2 * t / (2 * t + p + n) if 2 * t + p + n else 0.0 for t, p, n in zip(tp, fp, fn)]
    return {
        "f1_micro": 2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()),
        "f1_macro": float(np.mean(per_label)),
        "exact_match": float((pred == gold).all(1).mean()),
        "hamming_loss": float((pred != gold).mean()),
    }


def test_metrics_thresholds_and_records_match_a_hand_computation(tmp_path):
    import datasets

    _task(
        tmp_path, thresholds={"green": 0.8}, metrics=["f1_micro", "f1_macro", "exact_match", "hamming_loss"]
    )
    (spec,) = load_tasks(["colours"], [str(tmp_path)])
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(0, 2, size=(40, 3)), dtype=torch.float32)
    gold = rng.random((40, 3)) < 0.4
    encoded = datasets.Dataset.from_dict({"labels": gold.astype(float).tolist()})
    raw = datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(40)]})
    records, scores = kinds.get("multilabel").evaluate(spec, raw, encoded, list(logits))
    probs = 1 / (1 + np.exp(-logits.numpy()))
    pred = probs >= np.array([0.5, 0.8, 0.5])  # green's own threshold
    expected = _by_hand(pred, gold)
    assert scores == pytest.approx(expected, abs=1e-6)
    assert records[3]["labels"] == [c for c, on in zip(COLOURS, pred[3]) if on]
    assert records[3]["scores"]["blue"] == pytest.approx(probs[3, 2], abs=1e-6)


def test_divergence_is_the_summed_symmetric_kl_of_bernoullis():
    head = kinds.get("multilabel")
    a, b = torch.tensor([[0.3, -1.2, 2.0]]), torch.tensor([[-0.5, -1.0, 2.5]])
    p, q = a.sigmoid(), b.sigmoid()

    def kl(x, y):
        return x * (x / y).log() + (1 - x) * ((1 - x) / (1 - y)).log()

    expected = (kl(p, q) + kl(q, p)).sum(-1)
    from mtdnn.kinds.multilabel import MultilabelHead

    assert MultilabelHead.divergence(a, b, {}).item() == pytest.approx(expected.item(), rel=1e-5)
    assert MultilabelHead.divergence(a, a, {}).item() == 0.0
    soft = torch.tensor([[0.9, 0.1, 0.5]])
    t = 2.0
    student = (a / t).sigmoid()
    bce = -(soft * student.log() + (1 - soft) * (1 - student).log()).mean() * t**2
    assert head.kd_term(a, soft, {}, t).item() == pytest.approx(bce.item(), rel=1e-5)


def test_trains_predicts_and_leaves_unlabelled_test_rows_unscored(tmp_path):
    folder = tmp_path / "tasks"
    _task(folder, test=colour_rows(30, 3, hide=True))
    summary = run(
        compose_train(tiny_overrides(folder, "task=colours", "trainer.max_steps=150")), tmp_path / "run"
    )
    assert summary["validation"]["colours"]["f1_micro"] > 0.9  # the rule is learnable; chance is far lower
    assert summary["test"] == {}  # hidden labels: predictions, no scores
    lines = [json.loads(line) for line in (tmp_path / "run" / "predictions" / "colours_test.jsonl").open()]
    assert len(lines) == 30 and set(lines[0]) == {"id", "text", "labels", "scores"}
    right = sum(set(r["labels"]) == {c for c in COLOURS if c in r["text"].split()} for r in lines)
    assert right >= 25
    # texts alone take predict()'s in-memory path: the records the command wrote from the file
    from mtdnn import load_run

    served = load_run(tmp_path / "run", device="cpu").predict("colours", [r["text"] for r in lines])
    assert json.dumps(served) == json.dumps(lines)


def test_distills_and_exports(tmp_path):
    from mtdnn.export import ExportConfig, export
    from mtdnn.serving.loading import open_run

    folder = tmp_path / "tasks"
    _task(folder)
    teacher = tmp_path / "teacher"
    run(
        compose_train(tiny_overrides(folder, "task=colours", "trainer.max_steps=120", "predict_test=false")),
        teacher,
    )
    student = run(
        compose_train(
            tiny_overrides(
                folder,
                "task=colours",
                "distill=ensemble",
                f"distill.teachers=[{teacher}]",
                "distill.alpha=0",
                "distill.student_from_teacher=true",
                "distill.keep_every=1",
                f"distill.soft_targets_dir={tmp_path / 'soft'}",
                "trainer.max_steps=40",
                "predict_test=false",
            )
        ),
        tmp_path / "student",
    )
    # learned from the teacher's probabilities alone
    assert student["validation"]["colours"]["f1_micro"] > 0.9

    from transformers import AutoModelForSequenceClassification

    out = export(ExportConfig(run_dir=str(teacher), task="colours", out=str(tmp_path / "hf")))
    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.problem_type == "multi_label_classification" and hf.config.id2label[2] == "blue"
    loaded = open_run(str(teacher), "best", torch.device("cpu"))
    enc = loaded.tokenizer(["the red movie", "blue green plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(hf(**enc).logits, loaded.model("colours", **enc), atol=1e-4)
