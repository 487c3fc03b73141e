"""What do the affinity diagnostics cost a multi-task run at their default interval?

    python scripts/bench_affinity_overhead.py [--steps 900] [--seeds 1 2 3] [--jobs 2] [--threads 1]
        [--work bench_affinity_overhead] [--set encoder=tiny ...]

Three VADER domains (tweets, amazon, nyt) trained together with MiniLM-L6 (batch 16, the transfer protocol's
settings) for `--steps` steps, once with `trainer.affinity_every` at its default (25 K (K + 1) = 300 steps for
K = 3 tasks) and once with it off (0), for each seed; the same seed's two runs see the same batches. Reported
per seed and in the mean:

  in-run share   the seconds the run spent measuring (summary.json task_affinity.seconds) over its training
                 seconds: the overhead itself, unaffected by what else the machine runs
  paired ratio   training seconds with the diagnostics over without them (the same seed): what a user sees,
                 noisier on a shared machine

Writes docs/transfer/affinity_overhead.md and .csv (with --set: into --work only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_quality as bq
import bench_transfer as bt

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ("tweets", "amazon", "nyt")


def command(seed: int, every: str, out: Path, args) -> list[str]:
    tasks = ",".join(bt.task(d) for d in TARGETS)
    return [
        sys.executable,
        "-m",
        "mtdnn.train",
        f"task=[{tasks}]",
        f"trainer.max_steps={args.steps}",
        f"trainer.affinity_every={every}",
        f"seed={seed}",
        *bt.common(),
        f"output_dir={out}",
        *args.set,
    ]


def folder(args, seed: int, every: str) -> Path:
    return args.work / f"every_{every}" / f"seed{seed}"


def read(args, seed: int) -> dict | None:
    on, off = (folder(args, seed, e) / "summary.json" for e in ("null", "0"))
    if not (on.is_file() and off.is_file()):
        return None
    on, off = json.loads(on.read_text()), json.loads(off.read_text())
    affinity = on["task_affinity"]
    return {
        "seed": seed,
        "steps": on["steps"],
        "measurements": affinity["measurements"],
        "measuring_seconds": affinity["seconds"],
        "train_seconds_on": on["train_seconds"],
        "train_seconds_off": off["train_seconds"],
        "in_run_share": affinity["seconds"] / on["train_seconds"],
        "paired_ratio": on["train_seconds"] / off["train_seconds"],
    }


def table(rows: list[dict], command_line: str) -> str:
    lines = [
        f"`{command_line}`",
        "",
        "| seed | steps | measurements | seconds measuring | train s (on) | train s (off) | in-run share "
        "| paired ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['steps']} | {r['measurements']} | {r['measuring_seconds']:.1f} | "
            f"{r['train_seconds_on']:.1f} | {r['train_seconds_off']:.1f} | {100 * r['in_run_share']:.2f}% | "
            f"{r['paired_ratio']:.3f} |"
        )
    if rows:
        share = [r["in_run_share"] for r in rows]
        ratio = [r["paired_ratio"] for r in rows]
        lines += [
            "",
            f"Mean in-run share {100 * statistics.fmean(share):.2f}% (range {100 * min(share):.2f}-"
            f"{100 * max(share):.2f}%); mean paired ratio {statistics.fmean(ratio):.3f} (range "
            f"{min(ratio):.3f}-{max(ratio):.3f}), over {len(rows)} seeds.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--work", type=Path, default=ROOT / "bench_affinity_overhead")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run (a smoke test)")
    args = parser.parse_args()
    runs = [(seed, every) for seed in args.seeds for every in ("null", "0")]  # each seed's pair side by side
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(
            lambda r: bq.run_child(
                command(r[0], r[1], folder(args, *r), args),
                folder(args, *r),
                folder(args, *r).parent / f"seed{r[0]}.log",
                args.threads,
            ),
            runs,
        ):
            print(line, flush=True)
    rows = [row for row in (read(args, seed) for seed in args.seeds) if row]
    text = table(rows, "python scripts/bench_affinity_overhead.py " + " ".join(sys.argv[1:]))
    out = args.work if args.set else ROOT / "docs" / "transfer"
    bq.write_markdown_and_csv(out, "affinity_overhead", text, rows)
    print(text)


if __name__ == "__main__":
    main()
