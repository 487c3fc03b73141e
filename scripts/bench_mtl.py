"""Does multi-task training help, and which balancer? Single-task vs multi-task vs every balancer, real
data.

    python scripts/bench_mtl.py [--tasks rt_polarity vader_tweets] [--rows 500 1000] [--epochs 4]
        [--seeds 1 2 3] [--arms single mtdnn none uncertainty ...] [--jobs 2 --threads 1] [--work bench_mtl]

Every run is the command a user types (`python -m mtdnn.train ...` in a child process): MiniLM-L6, each
task a fixed low-resource subset of its train split (`train_rows`, drawn once with seed 0: the same rows in
every arm and seed), batch 16, lr 5e-5 / head 1e-3, evaluated once at the end on the full validation
splits. Arms:

  single        each task alone, for as many epochs of it as the multi-task arms with two tasks per step
                give it
  mtdnn         all tasks, one task per step drawn by the proportional sampler (MT-DNN's recipe), --epochs
                passes over the mix
  none          all tasks in every step (trainer.tasks_per_step = number of tasks), gradients summed
  <balancer>    as `none`, with that balancer (uncertainty, dwa, rlw, gradnorm, pcgrad, cagrad, famo)

Every arm gets the same seeds. Per task: mean and std of its main metric, the paired difference to `single`
(same seed) with a 95% t interval, seeds won, and the step-time ratio to `none` (training seconds per
optimizer step; a `none` step trains one batch of every task). Rerunning skips finished runs. Writes
report.md, report.csv and report.png into --work.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_quality import main_metric, paired, paired_plot, run_child, write_table_files

ARMS = ["single", "mtdnn", "none", "uncertainty", "dwa", "rlw", "gradnorm", "pcgrad", "cagrad", "famo"]


def single_epochs(args: argparse.Namespace, task: str) -> float:
    """Epochs of one task that a multi-task run with every task in each step gives it: steps x batch /
    rows."""
    per_step = len(args.tasks)  # micro-batches per step, one per task
    steps = math.ceil(args.epochs * sum(args.rows) / args.batch_size / per_step)
    return round(steps * args.batch_size / args.rows[args.tasks.index(task)], 2)


def runs_of(arm: str, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(folder name, overrides) of the runs an arm is made of: `single` is one run per task."""
    rows = [f"+task_overrides.{t}.train_rows={n}" for t, n in zip(args.tasks, args.rows)]
    if arm == "single":
        return [
            (
                f"single_{t}",
                [
                    f"task={t}",
                    f"+task_overrides.{t}.train_rows={n}",
                    f"trainer.epochs={single_epochs(args, t):g}",
                ],
            )
            for t, n in zip(args.tasks, args.rows)
        ]
    tasks = f"task=[{','.join(args.tasks)}]"
    if arm == "mtdnn":
        return [(arm, [tasks, *rows, f"trainer.epochs={args.epochs:g}"])]
    return [
        (
            arm,
            [
                tasks,
                *rows,
                f"trainer.epochs={args.epochs:g}",
                f"balancer={arm}",
                f"trainer.tasks_per_step={len(args.tasks)}",
            ],
        )
    ]


def run_one(name: str, overrides: list[str], seed: int, args: argparse.Namespace, threads: int) -> str:
    out = args.work / name / f"seed{seed}"
    command = [
        sys.executable,
        "-m",
        "mtdnn.train",
        *overrides,
        f"seed={seed}",
        f"trainer.batch_size={args.batch_size}",
        "trainer.eval_every=1000000",
        "trainer.log_every=5",
        "trainer.progress_bar=false",
        "predict_test=false",
        f"output_dir={out}",
        *args.set,
    ]
    return run_child(command, out, out.parent / f"seed{seed}.log", threads)


def read(args: argparse.Namespace, arm: str, task: str, seed: int, metric: str) -> dict | None:
    folder = args.work / (f"single_{task}" if arm == "single" else arm) / f"seed{seed}"
    if not (folder / "summary.json").is_file():
        return None
    summary = json.loads((folder / "summary.json").read_text())
    value = summary["validation"][task][metric]
    return {
        "value": math.nan if value is None else float(value),
        "step_s": summary["train_seconds"] / max(1, summary["steps"]),
        "epochs_seen": summary["tasks"][task]["epochs_seen"],
    }


def table(args: argparse.Namespace) -> tuple[str, list[dict]]:
    lines, rows = [], []
    for task in args.tasks:
        metric, _ = main_metric(task, [])
        runs = {
            arm: {s: r for s in args.seeds if (r := read(args, arm, task, s, metric))} for arm in args.arms
        }
        base, none = runs.get("single", {}), runs.get("none", {})
        lines += [
            f"\n**{task}** ({args.rows[args.tasks.index(task)]} training rows; validation {metric})\n",
            f"| arm | n | {metric} mean ± std | Δ vs single [95% CI] | beats single | epochs of {task} | "
            "step time × none |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm in args.arms:
            done = runs[arm]
            if not done:
                continue
            values = [r["value"] for r in done.values()]
            std = statistics.stdev(values) if len(values) > 1 else math.nan
            diff, half, wins, n = paired(done, base) if arm != "single" else (math.nan, math.nan, 0, 0)
            ratios = [done[s]["step_s"] / none[s]["step_s"] for s in done if s in none]
            lines.append(
                f"| {arm} | {len(values)} | {statistics.fmean(values):.4f} ± {std:.4f} | "
                f"{'–' if arm == 'single' else f'{diff:+.4f} [{diff - half:+.4f}, {diff + half:+.4f}]'} | "
                f"{'–' if arm == 'single' else f'{wins}/{n}'} | "
                f"{statistics.fmean(r['epochs_seen'] for r in done.values()):.1f} | "
                f"{f'{statistics.median(ratios):.2f}' if ratios else '–'} |"
            )
            rows += [{"task": task, "arm": arm, "seed": s, "metric": metric, **r} for s, r in done.items()]
    return "\n".join(lines), rows


def plot(rows: list[dict], path: Path) -> None:
    """One panel per task: each arm's paired differences to `single`, seeds as dots, mean as a bar."""
    panels = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        base = {r["seed"]: r["value"] for r in mine if r["arm"] == "single"}
        diffs = {
            a: [r["value"] - base[r["seed"]] for r in mine if r["arm"] == a and r["seed"] in base]
            for a in dict.fromkeys(r["arm"] for r in mine)
            if a != "single"
        }
        panels.append((f"{task}: {mine[0]['metric']} − single-task", diffs))
    paired_plot(panels, path)


def write_reports(work: Path, text: str, rows: list[dict], command_line: str) -> None:
    write_table_files(
        work, text, rows, command_line, ["task", "arm", "seed", "metric", "value", "step_s", "epochs_seen"]
    )
    plot(rows, work / "report.png")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["rt_polarity", "vader_tweets"])
    parser.add_argument("--rows", nargs="+", type=int, default=[500, 1000], help="train rows per task")
    parser.add_argument(
        "--epochs", type=float, default=4.0, help="passes over the mix in the multi-task arms"
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--arms", nargs="+", default=ARMS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="threads per run (default: cores/jobs)")
    parser.add_argument("--work", type=Path, default=Path("bench_mtl"))
    parser.add_argument(
        "--set", nargs="*", default=[], help="more overrides for every run, e.g. encoder=tiny"
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if len(args.rows) != len(args.tasks):
        parser.error(f"--rows: give one per task ({len(args.tasks)}), got {len(args.rows)}")
    args.work = args.work.resolve()
    return args


def main() -> None:
    args = parse()
    args.work.mkdir(parents=True, exist_ok=True)
    # seeds outermost: a bench stopped half-way still has every arm on its first seeds (paired)
    jobs = [
        (name, overrides, seed)
        for seed in args.seeds
        for arm in args.arms
        for name, overrides in runs_of(arm, args)
    ]
    if not args.report_only:
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        with ThreadPoolExecutor(args.jobs) as pool:
            for status in pool.map(lambda job: run_one(*job, args, threads), jobs):
                print(status, flush=True)
    text, rows = table(args)
    write_reports(args.work, text, rows, "python scripts/bench_mtl.py " + " ".join(sys.argv[1:]))
    print(text)
    print(f"\nwritten: {args.work / 'report.md'}, report.csv, report.png")


if __name__ == "__main__":
    main()
