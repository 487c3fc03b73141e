"""Out-of-domain generalisation of the regularizers: train on one VADER sentiment domain, score on the
others.

    python scripts/bench_ood.py [--train tweets] [--size 1000] [--epochs 3] [--seeds 1 2 3 4 5]
        [--methods none smart r3f ...] [--threads 2] [--jobs 1] [--work bench_ood] [--also EARLIER ...]

Child-Tuning and LNSR claim better out-of-domain generalisation, SMART robustness. Each run is the
regularizer protocol's (scripts/bench_quality.py: MiniLM-L6, `--size` rows of the training domain fixed by
seed 0, batch 16, lr 5e-5 / head 1e-3, `--epochs` epochs, each method at its YAML defaults, the final
weights), on the training domain; then `python -m mtdnn.evaluate ... data=<the other domains>` scores it on
every other domain's validation split (the same regression head: each domain's raters use the same -4..+4
scale). Reported per method: in-domain and mean out-of-domain Pearson (mean ± sd over seeds), each paired
against `none` with its 95% t interval, the seeds it won out of domain, and the median step-time ratio to
`none` on the same seed. Writes docs/ood/report.md and report.csv.

`--also` adds the other methods of earlier batches of the same protocol (their work folders, or the
report.csv a batch wrote where its folders are gone): each is paired with its own batch's `none` runs,
since step times compare only within one session (the machine's speed changes between sessions); the
report gives the largest gap between the batches' `none` scores (deterministic runs, up to float rounding).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_quality as bq
from bench_transfer import DOMAINS, task

ROOT = Path(__file__).resolve().parent.parent


def score_elsewhere(arm: bq.Arm, args) -> Path:
    """The run's Pearson on every other domain's validation split (mtdnn.evaluate data=...)."""
    out = arm.folder(args.work)
    result = out / "eval" / "ood.json"
    if result.is_file():
        return result
    others = ",".join(task(d) for d in DOMAINS if task(d) != arm.task)
    command = [
        sys.executable,
        "-m",
        "mtdnn.evaluate",
        f"run_dir={out}",
        f"task={arm.task}",
        f"data={others}",
        "checkpoint=last",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"evaluate failed on {out}: {done.stderr.strip().splitlines()[-1:]}")
    (out / "eval" / "last_validation.json").rename(result)
    return result


def read(arm: bq.Arm, work: Path) -> dict | None:
    out = arm.folder(work)
    if not (out / "summary.json").is_file() or not (out / "eval" / "ood.json").is_file():
        return None
    summary = json.loads((out / "summary.json").read_text())
    own = summary["validation"][arm.task]["pearson"]
    elsewhere = json.loads((out / "eval" / "ood.json").read_text())
    by_domain = {name.split("@")[1]: scores["pearson"] for name, scores in elsewhere.items()}
    return {
        "method": arm.method,
        "seed": arm.seed,
        "batch": str(work),
        "in_domain": own,
        "out_of_domain": statistics.fmean(by_domain.values()),
        "step_seconds": summary["train_seconds"] / max(summary["steps"], 1),
        **by_domain,
    }


def table(args, rows: list[dict], command_line: str) -> str:
    lines = [
        f"`{command_line}`",
        "",
        f"trained on {task(args.train)} ({args.size} rows, {args.epochs:g} epochs)",
        "",
        "| method | seeds | in-domain Pearson | vs none | out-of-domain Pearson (mean of 3) | vs none "
        "| wins | step x none |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {(r["batch"], r["seed"]): r for r in rows if r["method"] == "none"}
    present = {*args.methods, *(r["method"] for r in rows)}
    methods = [m for m in bq.METHODS if m in present] + sorted(present - set(bq.METHODS))
    for method in methods:
        # each method against the `none` runs of its own batch (same session: the step times compare)
        mine = {(r["batch"], r["seed"]): r for r in rows if r["method"] == method}
        if method == "none":
            mine = {key: r for key, r in mine.items() if key[0] == str(args.work)}
        if not mine:
            continue
        cells = []
        for key in ("in_domain", "out_of_domain"):
            values = [r[key] for r in mine.values()]
            sd = statistics.stdev(values) if len(values) > 1 else float("nan")
            diff, half, wins, n = bq.paired(
                {s: {"value": r[key]} for s, r in mine.items()},
                {s: {"value": r[key]} for s, r in base.items()},
            )
            versus = "–" if method == "none" else f"{diff:+.4f} [{diff - half:+.4f}, {diff + half:+.4f}]"
            cells += [f"{statistics.fmean(values):.4f} ± {sd:.4f}", versus]
        cells.append("–" if method == "none" else f"{wins}/{n}")
        ratios = [r["step_seconds"] / base[key]["step_seconds"] for key, r in mine.items() if key in base]
        cells.append(f"{statistics.median(ratios):.2f}" if ratios else "–")
        lines.append(f"| {method} | {len(mine)} | " + " | ".join(cells) + " |")
    lines += batches_note(args, rows, base)
    return "\n".join(lines) + "\n"


def batches_note(args, rows: list[dict], base: dict) -> list[str]:
    """Which methods came from which earlier batch, and how far its `none` scores are from this batch's (the
    runs are deterministic up to float rounding: the same seed gives the same weights)."""
    if not args.also:
        return []
    note = [
        "",
        "Each method is paired with the `none` runs of its own batch (the same session: step times compare):",
    ]
    for work in sorted({r["batch"] for r in rows} - {str(args.work)}):
        methods = sorted({r["method"] for r in rows if r["batch"] == work} - {"none"})
        gaps = [
            abs(base[(work, seed)][key] - base[(str(args.work), seed)][key])
            for seed in args.seeds
            if (work, seed) in base and (str(args.work), seed) in base
            for key in ("in_domain", "out_of_domain")
        ]
        agree = (
            f"differ from this batch's by at most {max(gaps):.1e}" if gaps else "not paired with this batch's"
        )
        note.append(f"- {', '.join(methods)}: an earlier batch, `{work}`; its `none` scores {agree}")
    return note


def train_and_score(arm: bq.Arm, quality: argparse.Namespace, args) -> dict | None:
    """Train one arm (unless done), score it on the other domains, drop its weights; its row."""
    out = arm.folder(args.work)
    log = out.parent / f"seed{arm.seed}_{arm.method}.log"
    print(
        bq.run_child(bq.command(arm, quality, out), out, log, args.threads, keep_checkpoints=True), flush=True
    )
    if (out / "summary.json").is_file():
        score_elsewhere(arm, args)
    for checkpoint in (out / "checkpoints").glob("step_*"):  # scored: the weights can go
        shutil.rmtree(checkpoint, ignore_errors=True)
    return read(arm, args.work)


def earlier_batches(args) -> list[dict]:
    """The finished runs of the --also batches (earlier batches of this protocol, same task, size and
    epochs), for the methods this command does not run; `none` too, each batch's own base."""
    rows = []
    for work in args.also:
        mine = recorded_batch(work) if work.is_file() else batch_folder_rows(work, args)
        rows += [
            r
            for r in mine
            if r["seed"] in args.seeds and (r["method"] == "none" or r["method"] not in args.methods)
        ]
    return rows


def batch_folder_rows(work: Path, args) -> list[dict]:
    folder = work / task(args.train) / f"{args.size}x{args.epochs:g}ep"
    methods = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    arms = [bq.Arm(task(args.train), args.size, m, seed, args.epochs) for m in methods for seed in args.seeds]
    return [row for row in (read(arm, work) for arm in arms) if row]


def recorded_batch(report: Path) -> list[dict]:
    """An earlier batch's report.csv (its run folders are not kept): the rows as read() makes them."""
    with report.open() as handle:
        rows = list(csv.DictReader(handle))
    text = ("method", "batch")
    return [
        {
            **{k: (v if k in text else float(v)) for k, v in r.items()},
            "seed": int(r["seed"]),
            "batch": r.get("batch") or str(report),  # a combined report keeps each row's batch
        }
        for r in rows
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train", default="tweets", choices=DOMAINS)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--methods", nargs="+", default=bq.METHODS)
    parser.add_argument("--threads", type=int, default=2, help="threads per run")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once")
    parser.add_argument("--work", type=Path, default=ROOT / "bench_ood")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run (a smoke test)")
    parser.add_argument(
        "--also",
        nargs="*",
        type=Path,
        default=[],
        help="earlier batches (work folders or their report.csv): their other methods join the table, each "
        "against its own none",
    )
    args = parser.parse_args()
    quality = argparse.Namespace(variants={}, batch_size=16, task_dirs=[], set=args.set, work=args.work)
    arms = [
        bq.Arm(task(args.train), args.size, m, seed, args.epochs) for seed in args.seeds for m in args.methods
    ]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [row for row in pool.map(lambda arm: train_and_score(arm, quality, args), arms) if row]
    rows += earlier_batches(args)
    text = table(args, rows, "python scripts/bench_ood.py " + " ".join(sys.argv[1:]))
    bq.write_markdown_and_csv(args.work if args.set else ROOT / "docs" / "ood", "report", text, rows)
    print(text)


if __name__ == "__main__":
    main()
