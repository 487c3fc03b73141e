"""Sweep reports from a real Hydra multirun: grouping by everything but the seed, mean and std by hand."""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys

import pytest
from conftest import write_toy_tasks

from mtdnn.report import ReportConfig, report

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    folder = write_toy_tasks(root / "tasks")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtdnn.train",
            "-m",
            "encoder=tiny",
            f"task_dirs=[{folder}]",
            "task=toy_sent",
            "regularizer=none,r3f",
            "seed=1,2",
            "trainer.max_steps=8",
            "trainer.progress_bar=false",
            "trainer.lr=1e-3",
            "trainer.batch_size=16",
            "predict_test=false",
            f"hydra.sweep.dir={root / 'multirun'}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "multirun"


def test_report_groups_seeds_and_computes_mean_and_std(sweep):
    (sweep / "9" / ".hydra").mkdir(parents=True)  # a job that died before writing its summary
    (sweep / "9" / ".hydra" / "overrides.yaml").write_text("- regularizer=smart\n- seed=1\n")
    out = report(ReportConfig(sweep_dir=str(sweep)))
    summaries = {}
    for job in sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        name = "regularizer=r3f" if "regularizer=r3f" in overrides else "regularizer=none"
        summaries.setdefault(name, []).append(json.loads((job / "summary.json").read_text())["validation"])
    rows = {(r["group"], r["metric"]): r for r in csv.DictReader((out / "report.csv").open())}
    assert {g for g, _ in rows} == {
        "regularizer=none",
        "regularizer=r3f",
    }  # seeds folded, common keys dropped
    for group, runs in summaries.items():
        values = [r["toy_sent"]["accuracy"] for r in runs]
        row = rows[(group, "accuracy")]
        assert int(row["n"]) == 2 == len(values)
        assert float(row["mean"]) == pytest.approx(statistics.fmean(values))
        assert float(row["std"]) == pytest.approx(statistics.stdev(values))
    text = (out / "report.md").read_text()
    assert "| regularizer=none |" in text and "± " in text and "toy_sent/accuracy" in text
    assert "Jobs without a summary" in text and "regularizer=smart seed=1" in text
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_cli_errors_are_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mtdnn.report", str(tmp_path)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "holds no Hydra jobs" in done.stderr.strip().splitlines()[-1]
