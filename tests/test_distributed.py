"""torchrun data parallelism: 2 CPU processes (gloo) follow the single-process run with the doubled batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import write_toy_tasks

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# no dropout anywhere: two ranks draw their masks for 8 rows each, one process for 16, and the curves must agree
NO_DROPOUT = ["+encoder.from_config.hidden_dropout_prob=0.0", "+encoder.from_config.attention_probs_dropout_prob=0.0",
              "+task_overrides.toy_sent.dropout=0.0", "+task_overrides.toy_count.dropout=0.0"]


def _log(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]


def test_two_gloo_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    folder = write_toy_tasks(tmp_path / "tasks")
    common = ["encoder=tiny", f"task_dirs=[{folder}]", "task=[toy_sent,toy_count]", "trainer.progress_bar=false",
              "trainer.lr=1e-3", "trainer.head_lr=1e-3", "trainer.max_steps=16", "trainer.log_every=1",
              "trainer.eval_every=8", "trainer.grad_accum=2", "predict_test=false", "regularizer=r3f", *NO_DROPOUT,
              # each rank draws R3F's noise for its own rows: only noise far below the tolerance keeps the curves
              # comparable (the test is about the gradient averaging, not the noise)
              "regularizer.r3f.scale=absolute", "regularizer.r3f.eps=1e-7"]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "mtdnn.train",
                          *common, "trainer.batch_size=8", f"output_dir={tmp_path / 'two'}"],
                         capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, "-m", "mtdnn.train", *common, "trainer.batch_size=16",
                          f"output_dir={tmp_path / 'one'}"], capture_output=True, text=True, env=ENV, cwd=tmp_path,
                         timeout=600)
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
