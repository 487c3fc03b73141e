"""End to end with a tiny encoder: multi-task training learns toy rules, the run folder is complete, a
reloaded checkpoint predicts identically, resume continues exactly, and evaluate/predict work on the run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import compose_train, sentiment_rows, tiny_overrides, write_task, write_toy_tasks
from safetensors.torch import load_file

from mtdnn.core.errors import MtdnnError
from mtdnn.evaluate import EvaluateConfig, evaluate
from mtdnn.predict import PredictConfig, predict
from mtdnn.serving.loading import open_run
from mtdnn.train import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One multi-task run shared by the tests below (training is the slow part)."""
    root = tmp_path_factory.mktemp("e2e")
    folder = write_toy_tasks(root / "my_tasks")
    cfg = compose_train(
        tiny_overrides(
            folder,
            "task=[toy_sent,toy_count]",
            "trainer.max_steps=150",
            "trainer.eval_every=50",
            "sampler=uniform",
        )
    )
    summary = run(cfg, root / "run")
    return root, folder, summary


def test_multi_task_training_learns_both_toy_rules(trained):
    root, _, summary = trained
    assert summary["steps"] == 150
    assert summary["validation"]["toy_sent"]["accuracy"] > 0.9  # chance is ~0.5
    assert summary["validation"]["toy_count"]["pearson"] > 0.8  # chance is ~0
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert [m["step"] for m in metrics] == [50, 100, 150]
    losses = _tb_losses(root / "run" / "tb", "train/loss/toy_sent")
    assert losses[-1] < 0.5 * losses[0]
    seen = summary["tasks"]
    assert seen["toy_sent"]["examples_seen"] + seen["toy_count"]["examples_seen"] == 150 * 16


def _tb_losses(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_run_folder_is_complete(trained):
    root, _, summary = trained
    out = root / "run"
    for rel in [
        "config.yaml",
        "tasks/toy_sent.yaml",
        "tasks/toy_count.yaml",
        "tokenizer/tokenizer.json",
        "encoder/config.json",
        "best.json",
        "summary.json",
        "train_log.jsonl",
        "predictions/toy_sent_test.jsonl",
    ]:
        assert (out / rel).is_file(), rel
    best = json.loads((out / "best.json").read_text())
    assert (
        best["step"] == summary["best_step"] and best["checkpoint"] == f"checkpoints/step_{best['step']:07d}"
    )
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    task_best = {
        task: json.loads((out / f"best_{task}.json").read_text()) for task in ("toy_sent", "toy_count")
    }
    for task, record in task_best.items():  # each task's own best, as MT-DNN reports per-task bests
        assert record["step"] == summary["task_best"][task]["step"]
        evaluations = json.loads((out / "metrics.json").read_text())
        main = "accuracy" if task == "toy_sent" else "pearson"
        assert record["validation"][task][main] == max(e["metrics"][task][main] for e in evaluations)
    from mtdnn.runs.checkpoints import run_checkpoint  # checkpoint=best_<task> in evaluate, predict, export

    assert (
        run_checkpoint(out, "best_toy_sent")
        == out / task_best["toy_sent"]["checkpoint"] / "model.safetensors"
    )
    kept = {
        "step_0000100",
        "step_0000150",
        f"step_{best['step']:07d}",  # keep_last=2 plus the best ones
        *(f"step_{r['step']:07d}" for r in task_best.values()),
    }
    assert set(checkpoints) == kept
    lines = (out / "predictions" / "toy_sent_test.jsonl").read_text().splitlines()
    assert len(lines) == 50
    first = json.loads(lines[0])
    assert first["label"] in ("neg", "pos") and set(first["scores"]) == {"neg", "pos"}
    assert sum(first["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert summary["test"]["toy_sent"]["accuracy"] > 0.9


def test_reloaded_checkpoint_predicts_identically(trained):
    root, _, _ = trained
    loaded = open_run(str(root / "run"), "best", torch.device("cpu"))
    best = json.loads((root / "run" / "best.json").read_text())["checkpoint"]
    weights = load_file(str(root / "run" / best / "model.safetensors"))
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    out = predict(PredictConfig(run_dir=str(root / "run"), task="toy_sent", out=str(root / "again.jsonl")))
    assert out.read_text() == (root / "run" / "predictions" / "toy_sent_test.jsonl").read_text()


def test_evaluate_matches_an_independent_computation(trained):
    """mtdnn.evaluate against metrics computed here from the raw rows: the tokenizer and model called
    directly (no mtdnn batching, sorting or collation) and accuracy, F1 of 'pos', Pearson written out with
    numpy."""
    import numpy as np
    import pandas as pd

    root, folder, summary = trained
    results = evaluate(EvaluateConfig(run_dir=str(root / "run")))
    loaded = open_run(str(root / "run"), "best", torch.device("cpu"))

    def outputs(task: str, frame: pd.DataFrame, first: str, second: str | None = None) -> torch.Tensor:
        enc = loaded.tokenizer(
            list(frame[first]),
            list(frame[second]) if second else None,
            padding=True,
            truncation=True,
            max_length=32,
            return_tensors="pt",
        )
        with torch.no_grad():
            return loaded.model(task, **enc)

    sent = pd.read_csv(folder / "toy_sent_validation.csv")
    predicted = outputs("toy_sent", sent, "sentence").argmax(-1).numpy()
    gold = (sent["label"] == "pos").to_numpy().astype(int)
    tp, fp, fn = (
        ((predicted == 1) & (gold == 1)).sum(),
        ((predicted == 1) & (gold == 0)).sum(),
        ((predicted == 0) & (gold == 1)).sum(),
    )
    assert results["toy_sent"]["accuracy"] == pytest.approx((predicted == gold).mean(), abs=1e-6)
    assert results["toy_sent"]["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-6)
    count = pd.read_json(folder / "toy_count_validation.jsonl", lines=True)
    values = outputs("toy_count", count, "a", "b").numpy()
    assert results["toy_count"]["pearson"] == pytest.approx(
        np.corrcoef(values, count["score"])[0, 1], abs=1e-5
    )
    assert results == {
        t: pytest.approx(v, abs=1e-5) for t, v in summary["validation"].items()
    }  # = the run's own
    assert (root / "run" / "eval" / "best_validation.json").is_file()


def test_predict_on_a_user_file_and_regression_values(trained, tmp_path):
    root, _, _ = trained
    (tmp_path / "new.csv").write_text("a,b\nwow wow wow the film,a b c\nthe movie,a b c\n")
    out = predict(PredictConfig(run_dir=str(root / "run"), task="toy_count", input=str(tmp_path / "new.csv")))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and rows[0]["text_pair"] == "a b c"
    assert rows[0]["prediction"] > rows[1]["prediction"] + 1.0  # real values, not all zeros
    with pytest.raises(MtdnnError, match="already exists"):
        predict(PredictConfig(run_dir=str(root / "run"), task="toy_count", input=str(tmp_path / "new.csv")))


def test_new_run_refuses_to_overwrite_an_existing_one(trained):
    root, folder, _ = trained
    before = (root / "run" / "best.json").read_bytes()
    cfg = compose_train(tiny_overrides(folder, "task=toy_sent", "trainer.max_steps=2"))
    with pytest.raises(MtdnnError, match="already holds a run"):
        run(cfg, root / "run")
    assert (root / "run" / "best.json").read_bytes() == before


def test_early_stopping_ends_the_run_after_evaluations_without_improvement(tmp_path, toy_tasks):
    cfg = compose_train(
        tiny_overrides(
            toy_tasks,
            "task=toy_sent",
            "trainer.max_steps=40",
            "trainer.eval_every=5",
            "trainer.early_stopping=2",
            "trainer.lr=1e-12",
            "trainer.head_lr=0",
            "trainer.best_metric=toy_sent/accuracy",
            "predict_test=false",
        )
    )
    summary = run(cfg, tmp_path / "run")  # nothing learns: the first evaluation stays the best
    assert summary["stopped_early"] and summary["steps"] == 15 and summary["best_step"] == 5
    assert [m["step"] for m in json.loads((tmp_path / "run" / "metrics.json").read_text())] == [5, 10, 15]


def test_resume_continues_exactly(tmp_path, toy_tasks):
    """20 steps straight == 10 steps, stop, resume from the step-10 checkpoint, 10 more."""
    base = tiny_overrides(
        toy_tasks,
        "task=[toy_sent,toy_count]",
        "trainer.max_steps=20",
        "trainer.eval_every=10",
        "trainer.keep_last=5",
        "predict_test=false",
        "trainer.grad_accum=2",
    )
    run(compose_train(base), tmp_path / "straight")
    run(compose_train(base), tmp_path / "interrupted")
    # pretend the second run died after step 10: drop everything it wrote later
    import shutil

    shutil.rmtree(tmp_path / "interrupted" / "checkpoints" / "step_0000020")
    resumed = run(compose_train(base + [f"resume={tmp_path / 'interrupted'}"]), tmp_path / "unused")
    assert resumed["resumed_at_step"] == 10 and resumed["steps"] == 20
    a = load_file(str(tmp_path / "straight" / "checkpoints" / "step_0000020" / "model.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "checkpoints" / "step_0000020" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not (tmp_path / "unused").exists()


def test_user_task_in_own_folder_trains_from_the_command_line(tmp_path):
    """The README's 'add a task' flow: one YAML in a user folder, no code, via the real CLI."""
    folder = tmp_path / "mine"
    write_task(
        folder,
        "my_reviews",
        "classification",
        {"train": sentiment_rows(64, 1), "validation": sentiment_rows(32, 2)},
        {"text": "sentence", "label": "label"},
        fmt="parquet",
        labels=["neg", "pos"],
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtdnn.train",
            "task=my_reviews",
            f"task_dirs=[{folder}]",
            "encoder=tiny",
            "trainer.max_steps=4",
            "trainer.progress_bar=false",
            f"hydra.run.dir={tmp_path}/hydra_run",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "hydra_run" / "summary.json").read_text())
    assert summary["steps"] == 4 and "accuracy" in summary["validation"]["my_reviews"]

    # resume names only the run (and a longer run): it continues with the command that made it
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtdnn.train",
            "resume=auto",
            f"output_dir={tmp_path}/hydra_run",
            "trainer.max_steps=6",
            f"hydra.run.dir={tmp_path}/hydra_resume",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads((tmp_path / "hydra_run" / "summary.json").read_text())
    assert summary["steps"] == 6 and "accuracy" in summary["validation"]["my_reviews"]


def test_hub_kind_source_reads_split_names_through_datasets(tmp_path):
    """kind: hub goes through datasets.load_dataset(path, name, split=...); a local data set folder takes
    the same path as a hub id, so the code path is exercised offline."""
    import pandas as pd
    import yaml

    from mtdnn.data.tasks import load_tasks
    from mtdnn.training.build import prepare_data

    repo = tmp_path / "hub_repo"
    repo.mkdir()
    pd.DataFrame(sentiment_rows(30, 1)).to_csv(repo / "train.csv", index=False)
    pd.DataFrame(sentiment_rows(10, 2)).to_csv(repo / "test.csv", index=False)
    spec = {
        "name": "hubby",
        "head": "classification",
        "labels": ["neg", "pos"],
        "source": {"kind": "hub", "path": str(repo), "splits": {"train": "train", "validation": "test"}},
        "columns": {"text": "sentence", "label": "label"},
    }
    (tmp_path / "hubby.yaml").write_text(yaml.safe_dump(spec))
    data = prepare_data(load_tasks(["hubby"], [str(tmp_path)]))["hubby"]
    assert {s: len(d) for s, d in data.raw.items()} == {"train": 30, "validation": 10}


def test_bf16_autocast_trains(tmp_path, toy_tasks):
    cfg = compose_train(
        tiny_overrides(
            toy_tasks, "task=toy_sent", "trainer.max_steps=60", "trainer.bf16=true", "predict_test=false"
        )
    )
    summary = run(cfg, tmp_path / "run")
    assert summary["validation"]["toy_sent"]["accuracy"] > 0.8


def test_resume_auto_picks_the_newest_checkpoint(tmp_path, toy_tasks):
    base = tiny_overrides(toy_tasks, "task=toy_sent", "trainer.eval_every=5", "predict_test=false")
    run(compose_train(base + ["trainer.max_steps=10"]), tmp_path / "run")
    summary = run(compose_train(base + ["trainer.max_steps=15", "resume=auto"]), tmp_path / "run")
    assert summary["resumed_at_step"] == 10 and summary["steps"] == 15
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert [m["step"] for m in metrics] == [5, 10, 15]


def test_every_micro_batch_comes_from_one_task(tmp_path, toy_tasks, monkeypatch):
    import mtdnn.training.loop as loop

    seen = []
    real = loop.forward_backward

    def spy(model, task, batch, *args, **kwargs):
        seen.append((task, batch["labels"].dtype, len(batch["labels"])))
        return real(model, task, batch, *args, **kwargs)

    monkeypatch.setattr(loop, "forward_backward", spy)
    run(
        compose_train(
            tiny_overrides(
                toy_tasks,
                "task=[toy_sent,toy_count]",
                "trainer.max_steps=30",
                "trainer.bucket_batches=4",
                "predict_test=false",
            )
        ),
        tmp_path / "run",
    )
    assert {t for t, _, _ in seen} == {"toy_sent", "toy_count"}
    for task, dtype, size in seen:  # classification batches carry class ids, regression batches real targets
        assert dtype == (torch.long if task == "toy_sent" else torch.float32) and 0 < size <= 16


def test_evaluate_scores_a_task_on_another_tasks_data_out_of_domain(trained, tmp_path):
    import shutil

    import yaml

    root, folder, _ = trained
    spec = yaml.safe_load((folder / "toy_sent.yaml").read_text())
    other = tmp_path / "other"
    other.mkdir()
    for name in ("toy_sent_train.csv", "toy_sent_validation.csv", "toy_sent_test.csv"):
        shutil.copy(folder / name, other / name)  # the same rows under another task's name
    (other / "toy_other.yaml").write_text(yaml.safe_dump({**spec, "name": "toy_other"}))
    own = evaluate(EvaluateConfig(run_dir=str(root / "run"), task="toy_sent"))
    scored = evaluate(
        EvaluateConfig(run_dir=str(root / "run"), task="toy_sent", data="toy_other", task_dirs=str(other))
    )
    assert scored == {"toy_sent@toy_other": own["toy_sent"]}
    with pytest.raises(MtdnnError, match="data: toy_count is a regression task.*toy_sent is classification"):
        evaluate(EvaluateConfig(run_dir=str(root / "run"), task="toy_sent", data="toy_count"))
    with pytest.raises(MtdnnError, match="task: data= scores one trained task"):
        evaluate(EvaluateConfig(run_dir=str(root / "run"), data="toy_other", task_dirs=str(other)))
