"""Staged (STILTs) training: one command runs every stage; each starts from the previous stage's best
weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from conftest import write_toy_tasks
from safetensors.torch import load_file

from mtdnn.runs.checkpoints import best_checkpoint

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
FROZEN = "'trainer.lr=1e-12','trainer.head_lr=1e-12'"  # a stage that (numerically) does not move the weights


def _weights(stage_dir):
    return load_file(str(best_checkpoint(stage_dir) / "model.safetensors"))


def test_stages_chain_encoder_and_heads_in_one_command(tmp_path):
    folder = write_toy_tasks(tmp_path / "tasks")
    stages = (
        "stages=[{name: first, overrides: ['task=toy_sent','trainer.max_steps=80']},"
        f"{{name: both, overrides: ['task=[toy_sent,toy_count]','trainer.max_steps=4',{FROZEN}]}},"
        f"{{name: fresh, overrides: ['task=toy_sent','trainer.max_steps=2',{FROZEN}], heads: reset}}]"
    )
    command = [
        sys.executable,
        "-m",
        "mtdnn.train",
        "encoder=tiny",
        f"task_dirs=[{folder}]",
        "trainer.lr=1e-3",
        "trainer.batch_size=16",
        "trainer.progress_bar=false",
        "predict_test=false",
        f"output_dir={tmp_path / 'run'}",
        stages,
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    root = tmp_path / "run" / "stages"
    first, both, fresh = _weights(root / "1_first"), _weights(root / "2_both"), _weights(root / "3_fresh")
    for key, value in first.items():  # stage 2 started from stage 1's best encoder and kept toy_sent's head
        assert torch.allclose(both[key], value, atol=1e-6), key
    assert "heads.toy_count.out.weight" in both  # a task new in stage 2 got a new head
    assert not torch.allclose(fresh["heads.toy_sent.out.weight"], first["heads.toy_sent.out.weight"])  # reset
    assert torch.allclose(
        fresh["encoder.pooler.dense.weight"], first["encoder.pooler.dense.weight"], atol=1e-6
    )

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["first", "both", "fresh"]
    assert set(summary["stages"][1]["validation"]) == {"toy_sent", "toy_count"}
    # the toy rule is learned (chance 0.5)
    assert summary["stages"][0]["validation"]["toy_sent"]["accuracy"] > 0.85
    assert summary["best_score"] == summary["stages"][-1]["best_score"]

    again = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("already done") == 3

    (root / "3_fresh" / "summary.json").unlink()  # as if killed after its last checkpoint, before its summary
    resumed = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # finished stages are not run twice
    assert json.loads((root / "3_fresh" / "summary.json").read_text())["resumed_at_step"] == 2


def test_init_from_a_missing_run_is_a_clear_error(tmp_path):
    folder = write_toy_tasks(tmp_path / "tasks")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtdnn.train",
            "encoder=tiny",
            f"task_dirs=[{folder}]",
            "task=toy_sent",
            f"init_from={tmp_path / 'nothing'}",
            f"output_dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "init_from:" in done.stderr and "is not a finished mtdnn run" in done.stderr
