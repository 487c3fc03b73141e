"""Does the toolkit's affinity predict transfer? Pairwise transfer between the four VADER sentiment domains,
measured, against the lookahead affinity `python -m mtdnn.affinity` predicts.

    python scripts/bench_affinity.py [--size 100] [--seeds 1 2 3 4 5] [--probe-seeds 1 2 3]
        [--probe-steps 300] [--threads 2] [--jobs 1] [--work bench_transfer]

Measured: one single-source model per domain (MiniLM-L6, one epoch over its train split, seed 0); for every
ordered pair (source -> target) and seed, the source model fine-tuned on `--size` target rows exactly as
scripts/bench_transfer.py's `single` arm (the same rows, steps and settings, which it shares); the gain is the
paired difference in validation Pearson to `single`, averaged over seeds. Predicted: the mean lookahead
Z_source->target of `python -m mtdnn.affinity` probes over all four domains (`--probe-steps` steps, a
measurement every 20, one probe per probe seed, averaged). Reported: the Spearman rank correlation between
predicted and measured over the 12 pairs with a 95% bootstrap interval (resampling pairs), and per target
whether the predicted best source is the measured best. Writes docs/transfer/affinity.{md,csv,png}.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bench_transfer as bt

ROOT = Path(__file__).resolve().parent.parent


def single_source_folder(work: Path, domain: str) -> Path:
    return work / "sources" / f"only_{domain}"


def pair_command(target: str, source: str, seed: int, args, rows: dict[str, int]) -> list[str]:
    """The `single` arm's command for this cell, started from the source model."""
    cell = bt.Cell(target, str(args.size), seed, "single")
    command = bt.cell_command(cell, args, rows)
    out = bt.Cell(target, str(args.size), seed, f"from_{source}").folder(args.work)
    command = [c if not c.startswith("output_dir=") else f"output_dir={out}" for c in command]
    return [*command, f"init_from={single_source_folder(args.work, source)}"]


def probe_command(seed: int, args) -> list[str]:
    target, *others = (bt.task(d) for d in bt.DOMAINS)
    return [
        sys.executable,
        "-m",
        "mtdnn.affinity",
        f"target={target}",
        f"candidates=[{','.join(others)}]",
        f"steps={args.probe_steps}",
        "every=20",
        f"seed={seed}",
        *probe_settings(),
        f"output_dir={args.work / 'probes' / f'seed{seed}'}",
        *args.set,
    ]


def probe_settings() -> list[str]:
    """The fine-tuning settings, less what the affinity command sets itself (evaluation, predictions)."""
    return [c for c in bt.common() if not c.startswith(("trainer.eval_every=", "predict_test="))]


def run_everything(args) -> None:
    rows = bt.check_no_leaks(list(bt.DOMAINS))
    for domain in bt.DOMAINS:
        out = single_source_folder(args.work, domain)
        command = [
            sys.executable,
            "-m",
            "mtdnn.train",
            f"task={bt.task(domain)}",
            "trainer.epochs=1",
            "seed=0",
            *bt.common(),
            f"output_dir={out}",
            *args.set,
        ]
        print(bt.run_child(command, out, args.threads * args.jobs, keep_checkpoints=True), flush=True)
    for seed in args.probe_seeds:
        out = args.work / "probes" / f"seed{seed}"
        print(bt.run_child(probe_command(seed, args), out, args.threads * args.jobs), flush=True)
    cells = []  # (command, folder) of every pair and of each target's `single` baseline
    for seed in args.seeds:
        for target in bt.DOMAINS:
            baseline = bt.Cell(target, str(args.size), seed, "single")
            cells.append((bt.cell_command(baseline, args, rows), baseline.folder(args.work)))
            for source in bt.sources_of(target):
                out = bt.Cell(target, str(args.size), seed, f"from_{source}").folder(args.work)
                cells.append((pair_command(target, source, seed, args, rows), out))
    with ThreadPoolExecutor(args.jobs) as pool:
        for line in pool.map(lambda c: bt.run_child(c[0], c[1], args.threads), cells):
            print(line, flush=True)


def predicted(args) -> dict[tuple[str, str], float]:
    """Mean lookahead source -> target over the probes."""
    probes = [
        json.loads((args.work / "probes" / f"seed{s}" / "summary.json").read_text())["task_affinity"]
        for s in args.probe_seeds
        if (args.work / "probes" / f"seed{s}" / "summary.json").is_file()
    ]
    pairs = {}
    for source in bt.DOMAINS:
        for target in bt.sources_of(source):
            key = f"{bt.task(source)}->{bt.task(target)}"
            pairs[(source, target)] = statistics.fmean(p["lookahead"][key] for p in probes)
    return pairs


def measured(args) -> dict[tuple[str, str], float]:
    """Mean paired Pearson gain of fine-tuning from the source over fine-tuning the pretrained encoder."""
    gains = {}
    for target in bt.DOMAINS:
        for source in bt.sources_of(target):
            diffs = []
            for seed in args.seeds:
                base = bt.read_run(bt.Cell(target, str(args.size), seed, "single").folder(args.work), target)
                moved = bt.read_run(
                    bt.Cell(target, str(args.size), seed, f"from_{source}").folder(args.work), target
                )
                if base and moved:
                    diffs.append(moved["pearson"] - base["pearson"])
            if diffs:
                gains[(source, target)] = statistics.fmean(diffs)
    return gains


def spearman(x: list[float], y: list[float]) -> float:
    from scipy import stats

    return float(stats.spearmanr(x, y).statistic)


def bootstrap(pairs: list[tuple[float, float]], rounds: int = 10000) -> tuple[float, float]:
    rng = random.Random(0)
    values = []
    for _ in range(rounds):
        sample = [rng.choice(pairs) for _ in pairs]
        if len({p for p, _ in sample}) > 1 and len({m for _, m in sample}) > 1:
            values.append(spearman([p for p, _ in sample], [m for _, m in sample]))
    values.sort()
    return values[int(0.025 * len(values))], values[int(0.975 * len(values)) - 1]


def write(args, command_line: str) -> None:
    predict, measure = predicted(args), measured(args)
    keys = sorted(set(predict) & set(measure))
    rho = spearman([predict[k] for k in keys], [measure[k] for k in keys])
    low, high = bootstrap([(predict[k], measure[k]) for k in keys])
    lines = [
        f"`{command_line}`",
        "",
        "| source -> target | predicted lookahead | measured gain (Pearson) |",
        "|---|---|---|",
        *(f"| {s} -> {t} | {predict[(s, t)]:+.3e} | {measure[(s, t)]:+.4f} |" for s, t in keys),
        "",
        f"Spearman rank correlation over {len(keys)} pairs: {rho:+.3f} (95% bootstrap interval "
        f"[{low:+.3f}, {high:+.3f}])",
        "",
    ]
    for target in bt.DOMAINS:
        mine = [k for k in keys if k[1] == target]
        if mine:
            best_p, best_m = max(mine, key=predict.get)[0], max(mine, key=measure.get)[0]
            lines.append(f"- {target}: predicted best source {best_p}, measured best {best_m}")
    text = "\n".join(lines) + "\n"
    folder = ROOT / "docs" / "transfer" if not args.set else args.work
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "affinity.md").write_text(text)
    with (folder / "affinity.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source", "target", "predicted_lookahead", "measured_gain"])
        writer.writerows([s, t, predict[(s, t)], measure[(s, t)]] for s, t in keys)
    plot(keys, predict, measure, rho, folder / "affinity.png")
    print(text)


def plot(keys, predict, measure, rho: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 4))
    axis.scatter([predict[k] for k in keys], [measure[k] for k in keys])
    for s, t in keys:
        axis.annotate(f"{s}->{t}", (predict[(s, t)], measure[(s, t)]), fontsize=7)
    axis.axhline(0, color="grey", lw=0.5), axis.axvline(0, color="grey", lw=0.5)
    axis.set_xlabel("predicted: lookahead affinity"), axis.set_ylabel("measured: Pearson gain over single")
    axis.set_title(f"Spearman {rho:+.2f}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--probe-seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="threads per run")
    parser.add_argument(
        "--jobs", type=int, default=1, help="fine-tuning runs at once (sources and probes: one)"
    )
    parser.add_argument("--work", type=Path, default=ROOT / "bench_transfer")
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run (a smoke test)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if not args.report_only:
        run_everything(args)
    write(args, "python scripts/bench_affinity.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
