"""The quality protocol for regularizers: does a method make a low-resource fine-tune better, and at what
cost?

    python scripts/bench_quality.py [--tasks rt_polarity vader_tweets] [--sizes 500 2000] [--epochs 3 1]
        [--seeds 1 2 3 4 5] [--methods none smart ...] [--jobs 2] [--work bench_quality] [--record report.csv]

Every run is the real command a user types (`python -m mtdnn.train ...` in a child process): MiniLM-L6, a
fixed low-resource subset of the task's train split (`train_rows`, drawn once with seed 0, the same rows
for every method and seed), batch 16, lr 5e-5 / head 1e-3, `--epochs` epochs (one value, or one per size),
each method at its YAML defaults, evaluated once at the end on the full validation split (no checkpoint
selection, so no selection on the reported split). Every method gets the same seeds. Rerunning skips
finished runs (a run is finished when its summary.json exists); checkpoints are deleted after each run.

Writes into --work: report.md (the table), report.csv (one row per run), report.png (paired differences).
Per task, size and method: mean and sample std of the main metric over seeds; the paired difference to
`none` (same seed) with a 95% t interval; how many seeds it beat `none`; collapsed runs (classification:
accuracy within 0.5 points of always answering the majority label; regression: Pearson below 0.05); each of
the method's logged terms (SMART: smart_adv and smart_prox apart) relative to the task loss; and the
step-time ratio to `none` (median over seeds of the seconds per optimizer step, training steps only).

`--record docs/quality/report.csv` tabulates an earlier protocol's rows beside new runs: the runs of the
regularizer guide's table took several sessions and their folders are not kept. Each row keeps its step-time
ratio to `none` as measured in its own session (`step_x_none`), since sessions ran on machines of different
speeds.
Delete a method's rows from the record to rerun it (after its defaults change).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

METHODS = ["none", "smart", "r3f", "r4f", "alice", "freelb", "child_tuning", "lnsr", "mixout", "l2_sp"]


@dataclass(frozen=True)
class Arm:
    task: str
    size: int
    method: str
    seed: int

    epochs: float

    def folder(self, work: Path) -> Path:
        return work / self.task / f"{self.size}x{self.epochs:g}ep" / self.method / f"seed{self.seed}"


def command(arm: Arm, args: argparse.Namespace, out: Path) -> list[str]:
    regularizer, *variant = args.variants.get(arm.method, [arm.method])
    return [
        sys.executable,
        "-m",
        "mtdnn.train",
        f"task={arm.task}",
        f"+task_overrides.{arm.task}.train_rows={arm.size}",
        f"regularizer={regularizer}",
        *variant,
        f"seed={arm.seed}",
        f"trainer.epochs={arm.epochs:g}",
        f"trainer.batch_size={args.batch_size}",
        "trainer.eval_every=1000000",
        "trainer.log_every=5",
        "trainer.progress_bar=false",
        "predict_test=false",
        f"output_dir={out}",
        *([f"task_dirs=[{','.join(str(d) for d in args.task_dirs)}]"] if args.task_dirs else []),
        *args.set,
    ]


def run_one(arm: Arm, args: argparse.Namespace, threads: int) -> str:
    """One training run in a child process, unless its summary is already there. Returns a status line."""
    out = arm.folder(args.work)
    return run_child(command(arm, args, out), out, out.parent / f"seed{arm.seed}.log", threads)


def run_child(cmd: list[str], out: Path, log_file: Path, threads: int, keep_checkpoints: bool = False) -> str:
    """Run `cmd` (a training run writing into `out`) in a child process with `threads` threads, unless
    out's summary.json exists; keep its output in `log_file`, drop its checkpoints (unless
    `keep_checkpoints`: a run that is loaded again later). Returns a status line."""
    if (out / "summary.json").is_file():
        return f"done already: {out}"
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
    }
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    log_file.write_text(done.stdout + done.stderr)
    if not keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)  # ~260 MB a run; the summary and logs stay
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"FAILED ({done.returncode}) {out}: {tail[0]} (log: {log_file})"
    return f"{time.perf_counter() - started:6.1f}s {out}"


# ---------------------------------------------------------------- reading the runs back


def main_metric(task: str, task_dirs: list[str]) -> tuple[str, str]:
    """(main metric, head) from the task's YAML."""
    from mtdnn.data.tasks import load_tasks

    spec = load_tasks([task], task_dirs)[0]
    return spec.metrics[0], spec.head


def majority_rate(task: str, task_dirs: list[str]) -> float | None:
    """Accuracy of always answering the validation split's most frequent label (classification only)."""
    from collections import Counter

    from mtdnn.data.loading import load_raw
    from mtdnn.data.tasks import load_tasks

    spec = load_tasks([task], task_dirs)[0]
    if spec.head != "classification":
        return None
    labels = load_raw(spec)["validation"][spec.columns.label]
    return max(Counter(labels).values()) / len(labels)


def read_run(arm: Arm, work: Path, metric: str, record: dict | None = None) -> dict | None:
    """The run's result from its folder, else from `record` (rows of an earlier report.csv, by arm)."""
    folder = arm.folder(work)
    if not (folder / "summary.json").is_file():
        recorded = (record or {}).get(arm)
        return {**recorded, "recorded": True} if recorded else None
    summary = json.loads((folder / "summary.json").read_text())
    log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
    value = summary["validation"][arm.task][metric]
    terms = terms_to_loss(log, arm.task)
    return {
        "value": float("nan") if value is None else float(value),
        "step_s": summary.get("train_seconds", summary["seconds"]) / max(1, summary["steps"]),
        "term_to_loss": sum(terms.values()) if terms else None,
        "terms_to_loss": terms,
        "recorded": False,
    }


def terms_to_loss(log: list[dict], task: str) -> dict[str, float]:
    """Each of the method's logged terms (mean over log rows) over the mean task loss; {} if it logs none."""
    suffix = f"/{task}"
    names = sorted(
        {
            k[: -len(suffix)]
            for row in log
            for k in row
            if k.endswith(suffix) and k != f"loss{suffix}" and not k.startswith("cost_s/")
        }
    )
    losses = [row[f"loss{suffix}"] for row in log if f"loss{suffix}" in row]
    if not names or not losses:
        return {}
    loss = max(statistics.fmean(losses), 1e-12)
    return {n: statistics.fmean(row.get(n + suffix, 0.0) for row in log) / loss for n in names}


def read_record(path: Path | None) -> dict:
    """Rows of an earlier report.csv by arm: results of runs whose folders were not kept."""
    if path is None:
        return {}
    record = {}
    for row in csv.DictReader(path.open()):
        arm = Arm(row["task"], int(row["size"]), row["method"], int(row["seed"]), float(row["epochs"]))
        record[arm] = {
            "value": float(row["value"]),
            "step_s": float(row["step_s"]),
            "term_to_loss": float(row["term_to_loss"]) if row.get("term_to_loss") else None,
            "terms_to_loss": {
                k: float(v)
                for k, v in (kv.split("=") for kv in (row.get("terms_to_loss") or "").split(";") if kv)
            },
            "step_x_none": float(row["step_x_none"]) if row.get("step_x_none") else None,
        }
    return record


def terms_cell(results: list[dict]) -> str:
    """Each term's ratio to the loss, averaged over seeds ('smart_adv 4.1e-02, smart_prox 8.0e-02'); runs
    that recorded only the sum (earlier reports) show the sum."""
    split = [r["terms_to_loss"] for r in results if r["terms_to_loss"]]
    if split:
        names = sorted({n for terms in split for n in terms})
        return ", ".join(f"{n} {statistics.fmean(t.get(n, 0.0) for t in split):.1e}" for n in names)
    sums = [r["term_to_loss"] for r in results if r["term_to_loss"] is not None]
    return f"{statistics.fmean(sums):.1e}" if sums else "–"


# ---------------------------------------------------------------- statistics


def t_quantile(n: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1)) if n > 1 else math.inf


def paired(method: dict[int, dict], base: dict[int, dict]) -> tuple[float, float, int, int]:
    """Mean paired difference, half-width of its 95% t interval, seeds it won, seeds paired."""
    seeds = sorted(set(method) & set(base))
    diffs = [method[s]["value"] - base[s]["value"] for s in seeds]
    if not diffs:
        return math.nan, math.nan, 0, 0
    half = (
        t_quantile(len(diffs)) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        if len(diffs) > 1
        else math.inf
    )
    return statistics.fmean(diffs), half, sum(d > 0 for d in diffs), len(diffs)


def collapsed(value: float, head: str, majority: float | None) -> bool:
    if head == "classification" and majority is not None:
        return value <= majority + 0.005
    return not value > 0.05  # regression: no correlation left (NaN counts too)


def step_ratio(seed: int, run: dict, base_step: dict) -> float:
    """The run's step time over `none`'s on its seed in its own session; a recorded ratio was taken in its
    own session and stands as it is; nan where its session ran no `none` on that seed."""
    if run.get("step_x_none") is not None:
        return run["step_x_none"]
    key = (seed, run["recorded"])
    return run["step_s"] / base_step[key] if key in base_step else math.nan


def table(
    work: Path,
    tasks: list[str],
    budgets: list[tuple[int, float]],
    methods: list[str],
    seeds: list[int],
    task_dirs: list[str],
    record: dict | None = None,
) -> tuple[str, list]:
    lines, rows = [], []
    for task in tasks:
        metric, head = main_metric(task, task_dirs)
        majority = majority_rate(task, task_dirs)
        for size, epochs in budgets:
            runs = {
                m: {
                    s: r
                    for s in seeds
                    if (r := read_run(Arm(task, size, m, s, epochs), work, metric, record))
                }
                for m in methods
            }
            if not any(runs.values()):
                continue  # this task was not run at this budget
            base = runs.get("none", {})
            # step times compare within one source: recorded runs ran on another machine, in another session
            base_step = {(s, r["recorded"]): r["step_s"] for s, r in base.items()}
            base_step |= {
                (s, True): r["step_s"]
                for s in seeds
                if (r := (record or {}).get(Arm(task, size, "none", s, epochs)))
            }
            lines += [
                f"\n**{task}, {size} training rows, {epochs:g} epochs** (validation {metric}; "
                f"{'majority class ' + format(majority, '.3f') if majority else 'regression'})\n",
                f"| method | n | {metric} mean ± std | Δ vs none [95% CI] | beats none | collapsed "
                "| terms / loss | step time × none |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for method in methods:
                done = runs[method]
                values = [r["value"] for r in done.values()]
                if not values:
                    continue  # not run at this budget
                std = statistics.stdev(values) if len(values) > 1 else math.nan
                diff, half, wins, n = paired(done, base) if method != "none" else (math.nan, math.nan, 0, 0)
                step_x_none = {s: step_ratio(s, r, base_step) for s, r in done.items()}
                ratios = [x for x in step_x_none.values() if not math.isnan(x)]
                stuck = sum(collapsed(v, head, majority) for v in values)
                lines.append(
                    f"| {method} | {len(values)} | {statistics.fmean(values):.4f} ± {std:.4f} | "
                    + ("–" if method == "none" else f"{diff:+.4f} [{diff - half:+.4f}, {diff + half:+.4f}]")
                    + " | "
                    f"{'–' if method == 'none' else f'{wins}/{n}'} | {stuck}/{len(values)} | "
                    f"{terms_cell(list(done.values()))} | "
                    f"{f'{statistics.median(ratios):.2f}' if ratios else '–'} |"
                )
                rows += [
                    {
                        "task": task,
                        "size": size,
                        "epochs": epochs,
                        "method": method,
                        "seed": s,
                        "metric": metric,
                        **{k: v for k, v in r.items() if k != "recorded"},
                        "step_x_none": step_x_none[s],
                        "terms_to_loss": ";".join(f"{k}={v:.3g}" for k, v in r["terms_to_loss"].items()),
                    }
                    for s, r in done.items()
                ]
    return "\n".join(lines), rows


def plot(rows: list[dict], path: Path) -> None:
    """One panel per task and size: each method's paired differences to `none`, seeds as dots, mean as a
    bar."""
    panels = []
    for task, size, epochs in sorted({(r["task"], r["size"], r["epochs"]) for r in rows}):
        mine = [r for r in rows if (r["task"], r["size"], r["epochs"]) == (task, size, epochs)]
        base = {r["seed"]: r["value"] for r in mine if r["method"] == "none"}
        diffs = {
            m: [r["value"] - base[r["seed"]] for r in mine if r["method"] == m and r["seed"] in base]
            for m in dict.fromkeys(r["method"] for r in mine)
            if m != "none"
        }
        panels.append((f"{task}, {size} rows x {epochs:g} ep: {mine[0]['metric']} − none", diffs))
    paired_plot(panels, path)


def paired_plot(panels: list[tuple[str, dict[str, list[float]]]], path: Path) -> None:
    """One panel per (title, {arm: paired differences}): seeds as dots, their mean as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title, arms) in zip(axes[0], panels):
        for i, diffs in enumerate(arms.values()):
            if diffs:
                ax.bar(i, statistics.fmean(diffs), color="lightsteelblue")
                ax.scatter([i] * len(diffs), diffs, color="black", s=8, zorder=3)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(arms)), list(arms), rotation=60, ha="right")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_markdown_and_csv(folder: Path, stem: str, text: str, rows: list[dict]) -> None:
    """A benchmark's table as <stem>.md and its rows as <stem>.csv in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.md").write_text(text)
    with (folder / f"{stem}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["run"])
        writer.writeheader(), writer.writerows(rows)


def write_reports(work: Path, text: str, rows: list[dict], command_line: str) -> None:
    write_table_files(
        work,
        text,
        rows,
        command_line,
        [
            "task",
            "size",
            "epochs",
            "method",
            "seed",
            "metric",
            "value",
            "step_s",
            "step_x_none",
            "term_to_loss",
            "terms_to_loss",
        ],
    )
    plot(rows, work / "report.png")


def write_table_files(work: Path, text: str, rows: list[dict], command_line: str, fields: list[str]) -> None:
    """report.md (the command that reproduces it, then the table) and report.csv (one row per run)."""
    (work / "report.md").write_text(f"Reproduce: `{command_line}`\n{text}\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    (work / "report.csv").write_text(buffer.getvalue())


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["rt_polarity", "vader_tweets"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[500, 2000])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--methods", nargs="+", default=METHODS, help="methods and --variant names")
    parser.add_argument("--epochs", nargs="+", type=float, default=[3, 1], help="one value, or one per size")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores/jobs threads)")
    parser.add_argument("--threads", type=int, default=None, help="threads per run (default: cores/jobs)")
    parser.add_argument("--work", type=Path, default=Path("bench_quality"))
    parser.add_argument(
        "--task-dirs", nargs="*", type=Path, default=[], help="folders of your own task YAMLs"
    )
    parser.add_argument(
        "--set", nargs="*", default=[], help="more overrides for every run, e.g. encoder=tiny"
    )
    parser.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME=METHOD [OVERRIDE]",
        help="a method at other settings, named as an arm of its own: "
        "--variant smart_lambda3=smart regularizer.smart.lambda_s=3 (then --methods ... smart_lambda3)",
    )
    parser.add_argument("--report-only", action="store_true", help="tabulate what is there, run nothing")
    parser.add_argument(
        "--record",
        type=Path,
        default=None,
        help="an earlier report.csv: its rows stand for runs whose folders are not in --work "
        "(not rerun; a folder in --work wins)",
    )
    return parser.parse_args()


def variants(given: list[list[str]]) -> dict[str, list[str]]:
    """{'smart_lambda3': ['smart', 'regularizer.smart.lambda_s=3']} from --variant smart_lambda3=smart ..."""
    found = {}
    for name_method, *overrides in given:
        name, _, method = name_method.partition("=")
        if not name or method not in METHODS:
            sys.exit(f"error: --variant {name_method}: write NAME=METHOD, METHOD one of {', '.join(METHODS)}")
        found[name] = [method, *overrides]
    return found


def main() -> None:
    args = parse()
    args.variants = variants(args.variant)
    if len(args.epochs) not in (1, len(args.sizes)):
        sys.exit(
            f"error: --epochs: give one value or one per size ({len(args.sizes)}), got {len(args.epochs)}"
        )
    budgets = list(zip(args.sizes, args.epochs * len(args.sizes) if len(args.epochs) == 1 else args.epochs))
    args.work = args.work.resolve()
    args.task_dirs = [d.resolve() for d in args.task_dirs]
    args.work.mkdir(parents=True, exist_ok=True)
    # seeds outermost: a protocol stopped half-way still has every method on its first seeds (paired)
    arms = [
        Arm(t, size, m, s, ep)
        for size, ep in budgets
        for s in args.seeds
        for t in args.tasks
        for m in args.methods
    ]
    record = read_record(args.record)
    arms = [arm for arm in arms if arm not in record]  # recorded results are not rerun
    if not args.report_only:
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        with ThreadPoolExecutor(args.jobs) as pool:
            for status in pool.map(lambda arm: run_one(arm, args, threads), arms):
                print(status, flush=True)
    text, rows = table(
        args.work, args.tasks, budgets, args.methods, args.seeds, [str(d) for d in args.task_dirs], record
    )
    write_reports(args.work, text, rows, "python scripts/bench_quality.py " + " ".join(sys.argv[1:]))
    print(text)
    print(f"\nwritten: {args.work / 'report.md'}, report.csv, report.png")


if __name__ == "__main__":
    main()
