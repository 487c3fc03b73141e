"""Sweeps survive a failed job: it is reported in one line and marked, the others finish, the sweep exits 2
with a list of what failed, `mtdnn.report` lists failed and never-run jobs, and `resume=auto` finishes the
sweep without touching the jobs that were done."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import sentiment_rows, tiny_overrides, write_task, write_toy_tasks

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
ENV.pop("HYDRA_FULL_ERROR", None)
ENV.pop("MTDNN_DEBUG", None)


def _sweep(folder: Path, sweep_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "mtdnn.train",
        "-m",
        *tiny_overrides(folder),
        "task=toy_sent,toy_bad,toy_count",
        "trainer.max_steps=3",
        "trainer.eval_every=3",
        "predict_test=false",
        f"hydra.sweep.dir={sweep_dir}",
        *extra,
    ]
    return subprocess.run(command, cwd=folder.parent, env=ENV, capture_output=True, text=True, timeout=600)


def _bad_task(folder: Path, label: str) -> None:
    rows = sentiment_rows(40, 7)
    rows[5]["label"] = label
    write_task(
        folder,
        "toy_bad",
        "classification",
        {"train": rows, "validation": sentiment_rows(20, 8)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )


def _bytes(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_failed_job_is_reported_the_sweep_goes_on_and_resume_finishes_it(tmp_path):
    tasks, sweep = write_toy_tasks(tmp_path / "tasks"), tmp_path / "sweep"
    _bad_task(tasks, "neutral")
    done = _sweep(tasks, sweep)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, done.stderr[-2000:]
    assert errors[0].startswith("error: job 1 (") and "task=toy_bad" in errors[0]
    assert "toy_bad.yaml: columns.label: split 'train' row 6: label 'neutral' is not in labels" in errors[0]
    assert errors[1].startswith(f"error: 1 job(s) of the sweep in {sweep} failed: 1 (")
    assert "resume=auto" in errors[1]
    assert (sweep / "0" / "summary.json").is_file() and (sweep / "2" / "summary.json").is_file()
    assert json.loads((sweep / "1" / "failed.json").read_text())["error"].startswith(
        str(tasks / "toy_bad.yaml")
    )

    shutil.rmtree(sweep / "2")  # as if the sweep had been killed before its last job started
    report = subprocess.run(
        [sys.executable, "-m", "mtdnn.report", str(sweep)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    text = (sweep / "report" / "report.md").read_text()
    failed, never = text.split("Jobs that failed (1):")[1], text.split("Jobs that never ran (1):")[1]
    assert "task=toy_bad" in failed.splitlines()[1] and "label 'neutral' is not in labels" in failed
    assert "task=toy_count" in never.splitlines()[1]

    first_job = _bytes(sweep / "0" / "summary.json")
    _bad_task(tasks, "pos")  # the user fixes the data
    again = _sweep(tasks, sweep, "resume=auto")
    assert again.returncode == 0, again.stderr[-2000:]
    assert _bytes(sweep / "0" / "summary.json") == first_job  # a finished job is kept as it is
    assert (sweep / "1" / "summary.json").is_file() and not (sweep / "1" / "failed.json").exists()
    assert json.loads((sweep / "2" / "summary.json").read_text())["steps"] == 3

    finished = {job: _bytes(sweep / job / "summary.json") for job in ("0", "1", "2")}
    rerun = _sweep(tasks, sweep)  # the finished sweep's command again, without resume=auto
    errors = [line for line in rerun.stderr.splitlines() if line.startswith("error: ")]
    assert rerun.returncode == 2 and "Traceback" not in rerun.stderr, rerun.stderr[-2000:]
    assert errors[-1].startswith(f"error: 3 job(s) of the sweep in {sweep} have finished runs already")
    assert not list(sweep.glob("*/failed.json"))  # finished jobs are never marked failed
    assert {job: _bytes(sweep / job / "summary.json") for job in finished} == finished
    assert _sweep(tasks, sweep, "resume=auto").returncode == 0


def test_a_bad_value_in_a_sweep_is_one_line_before_any_job_runs(tmp_path):
    tasks, sweep = write_toy_tasks(tmp_path / "tasks"), tmp_path / "sweep"
    for bad, expected in (
        ("regularizer=none,smrt", "error: regularizer=smrt: no such option (did you mean 'smart'?)"),
        ("trainer.max_steps=2,x", "error: trainer.max_steps: Value 'x' of type 'str' could not be"),
        ("seed=1,[2", "error: seed=1,[2: "),
    ):
        command = [
            sys.executable,
            "-m",
            "mtdnn.train",
            "-m",
            *tiny_overrides(tasks),
            "task=toy_sent",
            bad,
            f"hydra.sweep.dir={sweep}",
        ]
        done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith(expected), done.stderr[-2000:]
        assert not sweep.exists()


def test_an_optuna_search_returns_each_trials_score_and_the_report_names_the_best(tmp_path):
    tasks, sweep = write_toy_tasks(tmp_path / "tasks"), tmp_path / "search"
    command = [
        sys.executable,
        "-m",
        "mtdnn.train",
        "-m",
        "hydra/sweeper=search",
        *tiny_overrides(tasks),
        "task=toy_sent",
        "regularizer=smart",
        "trainer.max_steps=4",
        "trainer.eval_every=4",
        "predict_test=false",
        "hydra.sweeper.n_trials=3",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    import yaml

    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    scores = [json.loads((sweep / str(i) / "summary.json").read_text())["best_score"] for i in range(3)]
    assert results["best_value"] == max(scores)  # the sweeper saw each trial's best validation score
    # lr and batch size are fixed on this command line, so only SMART's weight is searched
    assert set(results["best_params"]) == {"regularizer.smart.lambda_s"}
    report = subprocess.run(
        [sys.executable, "-m", "mtdnn.report", str(sweep)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[-2000:]
    text = (sweep / "report" / "report.md").read_text()
    section = text.split("## Search (Optuna)", 1)[1]
    assert f"Best trial: score {results['best_value']}" in section
    assert [
        line.split(" | ")[0] for line in section.splitlines() if line.startswith("| ") and "trial" not in line
    ] == ["| 0", "| 1", "| 2"]
    assert (sweep / "report" / "trials.png").stat().st_size > 0


def test_a_ctrl_c_that_a_job_turns_into_an_error_stops_the_sweep_instead_of_failing_the_job(tmp_path):
    # the job catches the KeyboardInterrupt and raises an input error, as library code can: not a failed job
    tasks, sweep = write_toy_tasks(tmp_path / "tasks"), tmp_path / "sweep"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import mtdnn.train
        from mtdnn.core.errors import MtdnnError

        def job(cfg):
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                raise MtdnnError("toy_sent.yaml: columns.label: row 1 is not a label")

        mtdnn.train._main = job
        sys.argv = ["mtdnn.train", "-m", *{tiny_overrides(tasks)!r}, "task=toy_sent,toy_count",
                    "hydra.sweep.dir={sweep}"]
        mtdnn.train.main()
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (
        done.stderr.strip().splitlines()[-1].startswith("error: interrupted; every checkpoint written so far")
    )
    # the sweep stopped at job 0
    assert not (sweep / "0" / "failed.json").exists() and not (sweep / "1").exists()


@pytest.mark.parametrize(
    ("searched", "expected"),
    [
        (
            ["trainer.lr=tag(log, interval(0, 1e-3))", "regularizer=smart"],
            "error: trainer.lr: Optuna cannot search tag(log, interval(0, 1e-3)): The `low` value must be "
            "larger than 0 for a log distribution",
        ),
        (
            ["trainer.lr=interval(1e-3, 1e-5)", "regularizer=smart"],
            "error: trainer.lr: Optuna cannot search interval(1e-3, 1e-5): The `low` value must be smaller",
        ),
        (  # the shipped search space tunes SMART's weight: without regularizer=smart no trial could set it
            ["trainer.lr=choice(1e-3, 1e-4)"],
            "error: regularizer.smart.lambda_s: searched, but a trial cannot set it: regularizer.smart:",
        ),
    ],
)
def test_a_search_range_optuna_rejects_is_one_line_before_any_trial(tmp_path, searched, expected):
    tasks = write_toy_tasks(tmp_path / "tasks")
    command = [
        sys.executable,
        "-m",
        "mtdnn.train",
        "-m",
        "hydra/sweeper=search",
        *tiny_overrides(tasks),
        "task=toy_sent",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweep.dir={tmp_path / 'search'}",
        *searched,
    ]
    done = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr
    assert done.stderr.startswith(expected), done.stderr
    assert not (tmp_path / "search").exists()  # no trial ran
