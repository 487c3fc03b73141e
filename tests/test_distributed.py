"""torchrun data parallelism: 2 CPU processes (gloo) follow the single-process run with the doubled batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import write_toy_tasks

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# no dropout anywhere: two ranks draw their masks for 8 rows each, one process for 16, and the curves must
# agree
NO_DROPOUT = [
    "+encoder.from_config.hidden_dropout_prob=0.0",
    "+encoder.from_config.attention_probs_dropout_prob=0.0",
    "+task_overrides.toy_sent.dropout=0.0",
    "+task_overrides.toy_count.dropout=0.0",
]


def _torchrun() -> list[str]:
    """torchrun with 2 ranks on a free port (the default 29500 may still be held by a previous test's run)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    folder = write_toy_tasks(tmp_path / "tasks")
    common = [
        "encoder=tiny",
        f"task_dirs=[{folder}]",
        "task=[toy_sent,toy_count]",
        "trainer.progress_bar=false",
        "trainer.lr=1e-3",
        "trainer.head_lr=1e-3",
        "trainer.max_steps=16",
        "trainer.log_every=1",
        "trainer.eval_every=8",
        "trainer.grad_accum=2",
        "trainer.affinity_every=4",  # rank 0 measures; every rank logs the measured step (a collective)
        "predict_test=false",
        "regularizer=r3f",
        *NO_DROPOUT,
        # each rank draws R3F's noise for its own rows: only noise far below the tolerance keeps the curves
        # comparable (the test is about the gradient averaging, not the noise)
        "regularizer.r3f.scale=absolute",
        "regularizer.r3f.eps=1e-7",
    ]
    two = subprocess.run(
        [
            sys.executable,
            *_torchrun(),
            "-m",
            "mtdnn.train",
            *common,
            "trainer.batch_size=8",
            f"output_dir={tmp_path / 'two'}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtdnn.train",
            *common,
            "trainer.batch_size=16",
            f"output_dir={tmp_path / 'one'}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]

    single, parallel = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["step"] for r in parallel] == list(range(1, 17))  # rank 0 alone logged, once per step
    assert len(single) == len(parallel) == 16
    compared = 0
    for a, b in zip(single, parallel):
        for key in ("loss/toy_sent", "loss/toy_count", "grad_norm", "lr"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
                compared += 1
    assert compared >= 16 * 3  # every step: a task loss, the gradient norm and the learning rate
    s1, s2 = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert s2["tasks"]["toy_sent"]["examples_seen"] == s1["tasks"]["toy_sent"]["examples_seen"]
    for task in ("toy_sent", "toy_count"):  # evaluated once, by rank 0, on the whole split: the same metrics
        for metric, value in s1["validation"][task].items():
            assert s2["validation"][task][metric] == pytest.approx(value, abs=1e-4)
    evaluations = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert sorted(e["step"] for e in evaluations) == [8, 16]  # once per evaluation, rows shared by the ranks


def _two_and_one(tmp_path, common: list[str]) -> tuple[list[dict], list[dict], dict, dict]:
    runs = {}
    for name, launch, batch in (("two", _torchrun(), 8), ("one", [], 16)):
        done = subprocess.run(
            [
                sys.executable,
                *launch,
                "-m",
                "mtdnn.train",
                *common,
                f"trainer.batch_size={batch}",
                f"output_dir={tmp_path / name}",
            ],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=tmp_path,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
    return _log(tmp_path / "two"), _log(tmp_path / "one"), runs["two"], runs["one"]


def test_smart_teacher_and_child_tuning_masks_agree_across_ranks_through_an_uneven_last_batch(tmp_path):
    """Ranks that disagreed on Child-Tuning F's masks or SMART's teacher would drift apart, and rank 0
    would leave the single-process curve. 401 rows: the epoch's last global batch has 1 row, fewer than the
    ranks."""
    from conftest import sentiment_rows, write_task

    folder = tmp_path / "tasks"
    write_task(
        folder,
        "toy_sent",
        "classification",
        {"train": sentiment_rows(401, 1), "validation": sentiment_rows(3, 2)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    common = [
        "encoder=tiny",
        f"task_dirs=[{folder}]",
        "task=toy_sent",
        "trainer.progress_bar=false",
        "trainer.lr=1e-3",
        "trainer.head_lr=1e-3",
        "trainer.max_steps=28",
        "trainer.log_every=1",
        "trainer.eval_every=14",
        "predict_test=false",
        "regularizer=[smart,child_tuning]",
        "regularizer.child_tuning.mode=F",
        "regularizer.smart.scale=absolute",
        "regularizer.smart.epsilon=1e-7",
        "regularizer.smart.noise_std=1e-7",
        "regularizer.smart.mu=1",
        *NO_DROPOUT[:3],
    ]
    parallel, single, s2, s1 = _two_and_one(tmp_path, common)
    assert len(parallel) == len(single) == 28
    for a, b in zip(single, parallel):
        for key in ("loss/toy_sent", "smart_prox/toy_sent", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (a["step"], key)
    assert single[-1]["smart_prox/toy_sent"] > 0  # the teacher moved away from the student: a real comparison
    assert (
        s2["tasks"]["toy_sent"]["examples_seen"] == s1["tasks"]["toy_sent"]["examples_seen"] == 28 * 16 - 15
    )
    assert s2["validation"] == s1["validation"]  # 3 validation rows over 2 ranks: accuracy in thirds, exact


def test_span_ranking_and_tagging_evaluate_the_same_sharded(tmp_path):
    from test_heads import _rank_task, _span_task, _tag_task, ranking_rows, squad_rows, tagging_rows

    folder = tmp_path / "tasks"
    _span_task(folder, squad_rows(40, 1), squad_rows(11, 2))
    _rank_task(folder, ranking_rows(40, 3), ranking_rows(11, 4))
    _tag_task(folder, tagging_rows(40, 5), tagging_rows(11, 6))
    common = [
        "encoder=tiny",
        f"task_dirs=[{folder}]",
        "task=[toy_squad,toy_rank,toy_ner]",
        "sampler=uniform",
        "trainer.progress_bar=false",
        "trainer.max_steps=6",
        "trainer.eval_every=6",
        "predict_test=false",
        *NO_DROPOUT[:2],
        "+task_overrides.toy_squad.dropout=0.0",
        "+task_overrides.toy_rank.dropout=0.0",
        "+task_overrides.toy_ner.dropout=0.0",
    ]
    parallel, single, s2, s1 = _two_and_one(tmp_path, common)
    assert set(s1["validation"]) == {"toy_squad", "toy_rank", "toy_ner"}
    for task, scores in s1[
        "validation"
    ].items():  # windows, groups and sentences split over 2 ranks and gathered
        assert s2["validation"][task] == pytest.approx(scores, abs=1e-4), task


def test_pcgrad_on_two_gloo_ranks_equals_one_process_with_the_doubled_batch(tmp_path):
    """Each task's gradient is averaged over the ranks before PCGrad projects it: the same combination as
    one process computing it from the whole batch (and the same task losses, which FAMO-like balancers
    read)."""
    folder = write_toy_tasks(tmp_path / "tasks")
    common = [
        "encoder=tiny",
        f"task_dirs=[{folder}]",
        "task=[toy_sent,toy_count]",
        "trainer.progress_bar=false",
        "trainer.lr=1e-3",
        "trainer.head_lr=1e-3",
        "trainer.max_steps=10",
        "trainer.log_every=1",
        "trainer.eval_every=10",
        "predict_test=false",
        "balancer=pcgrad",
        "trainer.tasks_per_step=2",
        *NO_DROPOUT,
    ]
    parallel, single, s2, s1 = _two_and_one(tmp_path, common)
    assert len(parallel) == len(single) == 10
    for a, b in zip(single, parallel):
        for key in (
            "loss/toy_sent",
            "loss/toy_count",
            "grad_norm",
            "balancer_weight/toy_sent",
            "pcgrad_conflicts",
        ):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    # gradients did conflict: the projection was exercised
    assert any(r["pcgrad_conflicts"] > 0 for r in single)
    for task in ("toy_sent", "toy_count"):
        for metric, value in s1["validation"][task].items():
            assert s2["validation"][task][metric] == pytest.approx(value, abs=1e-4)


@pytest.mark.slow
def test_per_task_lora_and_a_bi_ranking_task_on_two_gloo_ranks_equal_one_process(tmp_path):
    """Each task's own LoRA (the other's unused in a step) and a bi-encoder ranking task whose batches
    stack queries and candidates: two ranks follow one process with the doubled batch. In-batch negatives
    would differ by construction (each rank's batch has its own negatives), so the ranking task ranks
    within its groups here."""
    from conftest import write_task
    from test_bi_encoder import topic_groups

    folder = write_toy_tasks(tmp_path / "tasks")
    write_task(
        folder,
        "toy_find",
        "ranking",
        {"train": topic_groups(64, 5), "validation": topic_groups(9, 6)},
        {"query": "q", "candidates": "opts", "label": "ans"},
        fmt="jsonl",
        pair_encoding="bi",
        in_batch_negatives=False,
    )
    common = [
        "encoder=tiny",
        f"task_dirs=[{folder}]",
        "task=[toy_sent,toy_find]",
        "trainer.progress_bar=false",
        "trainer.lr=1e-3",
        "trainer.head_lr=1e-2",
        "trainer.max_steps=8",
        "trainer.log_every=1",
        "trainer.eval_every=8",
        "predict_test=false",
        "adapter=lora",
        "adapter.per_task=true",
        "adapter.dropout=0.0",
        *NO_DROPOUT[:3],
    ]
    parallel, single, s2, s1 = _two_and_one(tmp_path, common)
    assert len(parallel) == len(single) == 8
    compared = 0
    for a, b in zip(single, parallel):
        for key in ("loss/toy_sent", "loss/toy_find", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
                compared += 1
    assert compared >= 8 * 2 and any("loss/toy_find" in r for r in single)
    for task in ("toy_sent", "toy_find"):
        for metric, value in s1["validation"][task].items():
            assert s2["validation"][task][metric] == pytest.approx(value, abs=1e-4)


def test_affinity_measured_between_logging_steps_keeps_the_ranks_in_step(tmp_path):
    """Rank 0 alone measures, but every rank logs the measured step: logging averages across the ranks, so a
    step logged on one rank only would hang the job."""
    folder = write_toy_tasks(tmp_path / "tasks")
    command = [
        sys.executable,
        *_torchrun(),
        "-m",
        "mtdnn.train",
        "encoder=tiny",
        f"task_dirs=[{folder}]",
        "task=[toy_sent,toy_count]",
        "trainer.progress_bar=false",
        "trainer.max_steps=10",
        "trainer.log_every=10",
        "trainer.affinity_every=3",
        "predict_test=false",
        f"output_dir={tmp_path / 'run'}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [r["step"] for r in _log(tmp_path / "run")]
    assert steps == [3, 6, 9, 10]  # the measured steps and the last one
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["task_affinity"]["measurements"] == 3
