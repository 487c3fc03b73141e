"""Parameter-efficient fine-tuning vs full fine-tuning: trainable parameters, step time, memory and the
accuracy each reaches in the same budget, several seeds.

    python scripts/bench_adapters.py [--work bench_adapters] [--seeds 1 2 3] [--rows 2000] [--epochs 1]
        [--arms full bottleneck hyper lora] [--threads 2]

Every run is the command a user types (`python -m mtdnn.train ...` in a child process): MiniLM-L6 on a fixed
subset of rt_polarity's train split (`train_rows`, the same rows for every arm and seed), batch 16, --epochs
epochs, evaluated once at the end on the full validation split (1,281 reviews). Arms:
  full        every weight trains (lr 5e-5, heads 1e-3)
  bottleneck  frozen encoder + a bottleneck adapter (64) after each layer (adapters and heads at 1e-3)
  hyper       frozen encoder + hyperformer adapters generated from task and layer embeddings (1e-3)
  lora        frozen encoder + LoRA rank 8, alpha 16 on query and value through peft (1e-3)
Adapter arms train their new weights at trainer.head_lr, as docs/guide/adapters.md says. Reports per arm:
accuracy (mean, sd), the paired difference to `full` with a 95% t interval, trainable parameters, seconds per
step (training steps only; ratio to full) and the peak resident memory of the process (summary.json's
peak_memory_mb).
Rerunning skips finished runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import paired, run_child, write_table_files  # noqa: E402

ARMS = {
    "full": [],
    "bottleneck": ["adapter=bottleneck", "adapter.bottleneck=64"],
    "hyper": ["adapter=hyper"],
    "lora": ["adapter=lora", "adapter.rank=8", "adapter.alpha=16"],
}
TASK = "rt_polarity"


def command(arm: str, seed: int, args: argparse.Namespace, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mtdnn.train",
        f"task={TASK}",
        f"+task_overrides.{TASK}.train_rows={args.rows}",
        f"seed={seed}",
        f"trainer.epochs={args.epochs:g}",
        "trainer.batch_size=16",
        "trainer.lr=5e-5",
        "trainer.head_lr=1e-3",
        "trainer.eval_every=1000000",
        "trainer.progress_bar=false",
        "predict_test=false",
        "trainer.keep_last=1",
        f"output_dir={out}",
        *ARMS[arm],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench_adapters"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = args.work.resolve()
    runs: dict[str, dict[int, dict]] = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            out = work / arm / f"seed{seed}"
            print(
                run_child(command(arm, seed, args, out), out, out.parent / f"seed{seed}.log", args.threads),
                flush=True,
            )
            summary = json.loads((out / "summary.json").read_text())
            runs[arm][seed] = {
                "value": summary["validation"][TASK]["accuracy"],
                "step_s": summary["train_seconds"] / summary["steps"],
                "trainable": summary["trainable_parameters"]["total"],
                "rss_mb": summary["peak_memory_mb"]["process_rss"],
            }

    full_step = statistics.median(r["step_s"] for r in runs["full"].values()) if "full" in runs else None
    lines = [
        f"| arm | accuracy (mean ± sd, {len(args.seeds)} seeds) | vs full (paired, 95% CI) | trainable "
        "params "
        "| s/step | step ratio | peak RSS MB |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    for arm, by_seed in runs.items():
        values = [r["value"] for r in by_seed.values()]
        step = statistics.median(r["step_s"] for r in by_seed.values())
        if arm != "full" and "full" in runs:
            mean, half, won, n = paired(by_seed, runs["full"])
            versus = f"{mean:+.4f} ± {half:.4f} ({won}/{n} higher)"
        else:
            versus = "-"
        lines.append(
            f"| {arm} | {statistics.fmean(values):.4f} ± "
            f"{statistics.stdev(values) if len(values) > 1 else 0:.4f}"
            f" | {versus} | {by_seed[args.seeds[0]]['trainable']:,} | {step:.3f} | "
            f"{step / full_step if full_step else float('nan'):.2f}x | "
            f"{statistics.fmean(r['rss_mb'] for r in by_seed.values()):,.0f} |"
        )
        rows += [
            {
                "arm": arm,
                "seed": s,
                "accuracy": r["value"],
                "step_s": r["step_s"],
                "trainable": r["trainable"],
                "rss_mb": r["rss_mb"],
            }
            for s, r in by_seed.items()
        ]
    text = "\n".join(lines)
    print(text)
    command_line = "python scripts/bench_adapters.py " + " ".join(sys.argv[1:])
    write_table_files(
        work, text, rows, command_line, ["arm", "seed", "accuracy", "step_s", "trainable", "rss_mb"]
    )


if __name__ == "__main__":
    main()
