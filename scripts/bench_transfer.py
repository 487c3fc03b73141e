"""Where does multi-task training help? MT-DNN's domain-adaptation protocol on the four VADER sentiment
domains (tasks/vader_domain_*.yaml: tweets, movie, Amazon and NYT snippets, deduplicated across domains).

    python scripts/bench_transfer.py [--targets tweets amazon nyt] [--sizes 30 100 300 1000 full]
        [--seeds 1 2 3 4 5] [--arms single mtdnn stilts joint] [--jobs 1] [--threads 1] [--work DIR]
        [--set encoder=tiny ...]                         # extra overrides for every run (a smoke test)
    python scripts/bench_transfer.py --report-only      # tables and plot from the finished runs

Run scripts/bench_affinity.py first: the stilts arm starts from its single-domain models and probes.

For each target domain, the *other* domains train one multi-task source model (MiniLM-L6, one epoch over their
train splits, batch 16, proportional sampling, seed 0), shared by every size and seed. Then for each target
size (a fixed subset of the target's train split per seed: `train_rows`, drawn with `train_rows_seed` = the
seed, the same rows for every arm of a seed) and seed:

  single   fine-tune the pretrained encoder on the target rows
  mtdnn    fine-tune the source model on the target rows (MT-DNN: init_from the source run, a fresh head)
  stilts   fine-tune the single-domain model that the affinity probes rank highest for the target (STILTs;
           scripts/bench_affinity.py makes the probes and the single-domain models first)
  joint    one multi-task run on the sources and the target rows together, tasks drawn uniformly, as many
           steps as the source model's epoch

Fine-tuning runs take max(40, 3 epochs) optimizer steps of batch 16, lr 5e-5, head 1e-3, and are evaluated
once at the end on the target's whole validation split (Pearson; no checkpoint selection). Every run is the
real command (`python -m mtdnn.train ...` in a child process); a rerun skips finished runs (summary.json), and
checkpoints are deleted except the source models'. Before any run, every experiment's texts are checked: no
text of a training task may appear in the target's validation or test split.

Writes into --work and docs/transfer/: summary.md (the guide's table: single, mtdnn and stilts side by side
with their paired differences), report.md (per target and size: each arm's mean ± sd, the paired difference to
`single` with its 95% t interval and the seeds it won, the step-time ratio to `single`, and the source model's
training time amortised over the target's cells), report.csv (one row per run) and report.png
(learning curves: target size vs validation Pearson, one line per arm, 95% intervals).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import bench_quality as bq
from vader_domains import normalise  # the leak check compares texts as the deduplication did

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("tweets", "movies", "amazon", "nyt")
BATCH = 16
ARMS = ("single", "mtdnn", "stilts", "joint")


def task(domain: str) -> str:
    return f"vader_domain_{domain}"


@dataclass(frozen=True)
class Cell:
    target: str
    size: str  # a number of rows, or "full"
    seed: int
    arm: str

    def folder(self, work: Path) -> Path:
        return work / self.target / f"n{self.size}" / self.arm / f"seed{self.seed}"


def common() -> list[str]:
    return [
        "trainer.batch_size=16",
        "trainer.lr=5e-5",
        "trainer.head_lr=1e-3",
        "trainer.eval_every=1000000",
        "trainer.log_every=10",
        "trainer.progress_bar=false",
        "predict_test=false",
    ]


def train_rows(size: str, target: str, rows: dict[str, int]) -> int:
    return rows[target] if size == "full" else int(size)


def fine_tune_steps(n: int) -> int:
    return max(40, math.ceil(3 * n / BATCH))


def source_command(target: str, sources: list[str], out: Path, extra: list[str]) -> list[str]:
    tasks = ",".join(task(d) for d in sources)
    return [
        sys.executable,
        "-m",
        "mtdnn.train",
        f"task=[{tasks}]",
        "trainer.epochs=1",
        "seed=0",
        *common(),
        f"output_dir={out}",
        *extra,
    ]


def cell_command(cell: Cell, args, rows: dict[str, int]) -> list[str]:
    n = train_rows(cell.size, cell.target, rows)
    subset = [
        f"+task_overrides.{task(cell.target)}.train_rows={n}",
        f"+task_overrides.{task(cell.target)}.train_rows_seed={cell.seed}",
    ]
    out = cell.folder(args.work)
    base = [
        sys.executable,
        "-m",
        "mtdnn.train",
        *common(),
        f"seed={cell.seed}",
        *subset,
        f"output_dir={out}",
        *args.set,
    ]
    if cell.arm == "single":
        return [*base, f"task={task(cell.target)}", f"trainer.max_steps={fine_tune_steps(n)}"]
    if cell.arm == "mtdnn":
        source = source_folder(args.work, cell.target)
        return [
            *base,
            f"task={task(cell.target)}",
            f"trainer.max_steps={fine_tune_steps(n)}",
            f"init_from={source}",
        ]
    if cell.arm == "stilts":
        source = args.work / "sources" / f"only_{best_source(args.work, cell.target)}"
        return [
            *base,
            f"task={task(cell.target)}",
            f"trainer.max_steps={fine_tune_steps(n)}",
            f"init_from={source}",
        ]
    if cell.arm == "joint":
        tasks = ",".join(task(d) for d in [cell.target, *sources_of(cell.target)])
        steps = json.loads((source_folder(args.work, cell.target) / "summary.json").read_text())["steps"]
        return [
            *base,
            f"task=[{tasks}]",
            "sampler=uniform",
            f"trainer.max_steps={steps}",
            f"trainer.best_metric={task(cell.target)}/pearson",
        ]
    raise SystemExit(f"unknown arm {cell.arm}")


def best_source(work: Path, target: str, affinity_csv: Path | None = None) -> str:
    """The single source domain the affinity probes rank highest for `target` (mean lookahead into it);
    scripts/bench_affinity.py makes the probes and the single-source models, and records the same means in
    docs/transfer/affinity.csv, which names it once the probes' folders are gone."""
    probes = sorted((work / "probes").glob("seed*/summary.json"))
    if probes:
        looks = [json.loads(p.read_text())["task_affinity"]["lookahead"] for p in probes]
        into = {
            d: statistics.fmean(look[f"{task(d)}->{task(target)}"] for look in looks)
            for d in sources_of(target)
        }
    elif affinity_csv is not None and affinity_csv.is_file():
        with affinity_csv.open() as handle:
            into = {
                r["source"]: float(r["predicted_lookahead"])
                for r in csv.DictReader(handle)
                if r["target"] == target
            }
    else:
        raise SystemExit("the stilts arm needs the affinity probes: run scripts/bench_affinity.py first")
    return max(into, key=into.get)


def sources_of(target: str) -> list[str]:
    return [d for d in DOMAINS if d != target]


def source_folder(work: Path, target: str) -> Path:
    return work / "sources" / f"without_{target}"


def run_child(cmd: list[str], out: Path, threads: int, keep_checkpoints: bool = False) -> str:
    """One training run in a child process, unless its summary.json exists (bench_quality's runner; the log
    beside the run folder). Returns a status line."""
    return bq.run_child(cmd, out, out.parent / f"{out.name}.log", threads, keep_checkpoints)


def check_no_leaks(targets: list[str]) -> dict[str, int]:
    """Every experiment trains on the other domains: none of their texts may be in the target's validation
    or test split. Returns each domain's train rows."""
    from mtdnn.data.loading import load_raw
    from mtdnn.data.tasks import load_tasks

    raw = {spec.name: load_raw(spec) for spec in load_tasks([task(d) for d in DOMAINS])}
    texts = {
        name: {split: {normalise(t) for t in ds["text"]} for split, ds in splits.items()}
        for name, splits in raw.items()
    }
    for target in targets:
        held_out = texts[task(target)]["validation"] | texts[task(target)]["test"]
        for source in sources_of(target):
            leaked = held_out & texts[task(source)]["train"]
            if leaked:
                raise SystemExit(
                    f"leak: {len(leaked)} texts of {task(source)}'s train split are in "
                    f"{task(target)}'s validation/test, e.g. {sorted(leaked)[0]!r}"
                )
        own = texts[task(target)]["train"] & held_out
        if own:
            raise SystemExit(
                f"leak: {len(own)} of {task(target)}'s train texts are in its own held-out splits"
            )
    return {d: len(raw[task(d)]["train"]) for d in DOMAINS}


# ---------------------------------------------------------------- reading the runs back


def read_run(folder: Path, target: str) -> dict | None:
    path = folder / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    scores = summary["validation"][task(target)]
    return {
        "pearson": scores["pearson"],
        "spearman": scores["spearman"],
        "mse": scores["mse"],
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "seconds": summary["seconds"],
    }


def mean_interval(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (values[0] if values else math.nan), math.inf
    return statistics.fmean(values), bq.t_quantile(len(values)) * statistics.stdev(values) / math.sqrt(
        len(values)
    )


def recorded(args) -> dict[Cell, dict]:
    """Runs of earlier sessions, from --record (their folders are not kept): a recorded cell is not rerun."""
    if args.record is None or not args.record.is_file():
        return {}
    with args.record.open() as handle:
        rows = list(csv.DictReader(handle))
    numbers = ("pearson", "spearman", "mse", "train_seconds", "seconds")
    return {
        Cell(r["target"], r["size"], int(r["seed"]), r["arm"]): {
            **r,
            "seed": int(r["seed"]),
            "steps": int(r["steps"]),
            **{k: float(r[k]) for k in numbers},
        }
        for r in rows
    }


def collect(args) -> list[dict]:
    record = recorded(args)
    rows = []
    for target in args.targets:
        for size in args.sizes:
            for arm in args.arms:
                for seed in args.seeds:
                    cell = Cell(target, size, seed, arm)
                    result = read_run(cell.folder(args.work), target)
                    if result is not None:
                        rows.append({"target": target, "size": size, "arm": arm, "seed": seed, **result})
                    elif cell in record:
                        rows.append(record[cell])
    return rows


def step_seconds(run: dict) -> float:
    return run["train_seconds"] / max(run["steps"], 1)


def paired(by: dict, key: tuple[str, str], arm: str, base: str, seeds: list[int]) -> dict | None:
    """`arm` minus `base` on one (target, size), seed by seed: mean, 95% half-width, wins, n, and the median
    step-time ratio; None when no seed has both."""
    both = [s for s in seeds if (*key, arm, s) in by and (*key, base, s) in by]
    if not both:
        return None
    diffs = [by[(*key, arm, s)]["pearson"] - by[(*key, base, s)]["pearson"] for s in both]
    mean, half = mean_interval(diffs)
    ratios = [step_seconds(by[(*key, arm, s)]) / step_seconds(by[(*key, base, s)]) for s in both]
    return {
        "mean": mean,
        "half": half,
        "wins": f"{sum(d > 0 for d in diffs)}/{len(diffs)}",
        "ratio": statistics.median(ratios),
    }


def report(args, rows: list[dict], command_line: str) -> str:
    by = {(r["target"], r["size"], r["arm"], r["seed"]): r for r in rows}
    lines = [
        f"`{command_line}`",
        "",
        "| target | rows | arm | seeds | Pearson (mean ± sd) | vs single (paired, 95% t) | wins "
        "| step x single |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in args.targets:
        for size in args.sizes:
            for arm in args.arms:
                values = [
                    by[(target, size, arm, s)]["pearson"] for s in args.seeds if (target, size, arm, s) in by
                ]
                if not values:
                    continue
                sd = statistics.stdev(values) if len(values) > 1 else math.nan
                versus = paired(by, (target, size), arm, "single", args.seeds) if arm != "single" else None
                if versus is None:
                    vs, wins, ratio = "–", "–", "1.00" if arm == "single" else "–"
                else:
                    low, high = versus["mean"] - versus["half"], versus["mean"] + versus["half"]
                    vs = f"{versus['mean']:+.4f} [{low:+.4f}, {high:+.4f}]"
                    wins, ratio = versus["wins"], f"{versus['ratio']:.2f}"
                cell = f"{statistics.fmean(values):.4f} ± {sd:.4f}"
                lines.append(
                    f"| {target} | {size} | {arm} | {len(values)} | {cell} | {vs} | {wins} | {ratio} |"
                )
    lines += ["", "Source models (one per target, shared by all its cells):", ""]
    cells = len(args.sizes) * len(args.seeds)
    times = source_seconds(args)
    for target in args.targets:
        if target in times:
            seconds = times[target]
            lines.append(
                f"- without {target}: {seconds:.0f} s of training, {seconds / cells:.1f} s per "
                f"({len(args.sizes)} sizes x {len(args.seeds)} seeds) cell"
            )
    return "\n".join(lines) + "\n"


def summary(args, rows: list[dict]) -> str:
    """The guide's table: per target and size, single, mtdnn and stilts side by side with their paired
    differences (95% t interval, seeds won, median step-time ratio); then the joint arm where it ran."""
    by = {(r["target"], r["size"], r["arm"], r["seed"]): r for r in rows}
    affinity_csv = (args.record.parent if args.record else args.work) / "affinity.csv"

    def score(key: tuple[str, str], arm: str) -> str:
        values = [by[(*key, arm, s)]["pearson"] for s in args.seeds if (*key, arm, s) in by]
        if not values:
            return "–"
        sd = statistics.stdev(values) if len(values) > 1 else math.nan
        return f"{statistics.fmean(values):.3f} ± {sd:.3f}"

    def versus(key: tuple[str, str], arm: str, base: str, steps: bool = True) -> str:
        found = paired(by, key, arm, base, args.seeds)
        if found is None:
            return "–"
        mean, half = found["mean"], found["half"]
        ratio = f", {found['ratio']:.2f}x" if steps else ""
        return f"{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}], {found['wins']}{ratio}"

    lines = [
        "| target | rows | single | mtdnn | mtdnn - single | stilts | stilts - single | mtdnn - stilts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for target in args.targets:
        for size in args.sizes:
            key = (target, size)
            if score(key, "single") == "–":
                continue
            stilts = score(key, "stilts")
            if stilts != "–" and ((args.work / "probes").is_dir() or affinity_csv.is_file()):
                stilts += f" ({best_source(args.work, target, affinity_csv)})"
            lines.append(
                f"| {target} | {size} | {score(key, 'single')} | {score(key, 'mtdnn')} "
                f"| {versus(key, 'mtdnn', 'single')} | {stilts} | {versus(key, 'stilts', 'single')} "
                f"| {versus(key, 'mtdnn', 'stilts')} |"
            )
    joint = [
        (t, n) for t in args.targets for n in args.sizes if any((t, n, "joint", s) in by for s in args.seeds)
    ]
    if joint:  # one multi-task run in place of source + fine-tuning: its cost is the whole run, not a step
        lines += [
            "",
            "| target | rows | joint | joint - single | mtdnn - joint | joint's training, s (median) |",
            "|---|---|---|---|---|---|",
        ]
        for key in joint:
            seconds = [
                by[(*key, "joint", s)]["train_seconds"] for s in args.seeds if (*key, "joint", s) in by
            ]
            lines.append(
                f"| {key[0]} | {key[1]} | {score(key, 'joint')} | {versus(key, 'joint', 'single', False)} "
                f"| {versus(key, 'mtdnn', 'joint', False)} | {statistics.median(seconds):.0f} |"
            )
    return "\n".join(lines) + "\n"


def source_seconds(args) -> dict[str, float]:
    """Each target's source model's training seconds: from its folder, else from the record's sources.csv."""
    times = {}
    if args.record is not None and (args.record.parent / "sources.csv").is_file():
        with (args.record.parent / "sources.csv").open() as handle:
            times = {r["target"]: float(r["train_seconds"]) for r in csv.DictReader(handle)}
    for target in DOMAINS:
        path = source_folder(args.work, target) / "summary.json"
        if path.is_file():
            times[target] = json.loads(path.read_text())["train_seconds"]
    return times


def plot(args, rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(args.targets), figsize=(4.5 * len(args.targets), 3.6), squeeze=False)
    for axis, target in zip(axes[0], args.targets):
        for arm in args.arms:
            xs, means, halves = [], [], []
            for size in args.sizes:
                values = [
                    r["pearson"] for r in rows if (r["target"], r["size"], r["arm"]) == (target, size, arm)
                ]
                if values:
                    mean, half = mean_interval(values)
                    n = int(size) if size != "full" else max(int(s) for s in args.sizes if s != "full") * 3
                    xs.append(n), means.append(mean), halves.append(0 if math.isinf(half) else half)
            if xs:
                axis.errorbar(xs, means, yerr=halves, marker="o", capsize=3, label=arm)
        axis.set_xscale("log"), axis.set_title(target), axis.set_xlabel("target train rows (full at right)")
        ticks = sorted({int(n) for n in args.sizes if n != "full"})
        axis.set_xticks(ticks, [str(t) for t in ticks]), axis.minorticks_off()
        axis.set_ylabel("validation Pearson"), axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def write(args, rows: list[dict], command_line: str) -> None:
    text = report(args, rows, command_line)
    seconds = sorted(source_seconds(args).items())  # read before the record's own sources.csv is rewritten
    # a run with extra overrides (--set) is a trial, not the protocol: its report stays in --work
    for folder in (args.work, *([] if args.set else [ROOT / "docs" / "transfer"])):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "report.md").write_text(text)
        (folder / "summary.md").write_text(summary(args, rows))
        with (folder / "report.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["target"])
            writer.writeheader(), writer.writerows(rows)
        with (folder / "sources.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["target", "train_seconds"])
            writer.writerows(seconds)
        if rows:
            plot(args, rows, folder / "report.png")
    print(text)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--targets", nargs="+", default=["tweets", "amazon", "nyt"], choices=DOMAINS)
    parser.add_argument("--sizes", nargs="+", default=["30", "100", "300", "1000", "full"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4, 5])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--set", nargs="*", default=[], help="extra overrides for every run (a smoke test)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--work", type=Path, default=ROOT / "bench_transfer")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--record",
        type=Path,
        default=ROOT / "docs" / "transfer" / "report.csv",
        help="rows of earlier sessions: recorded cells are not rerun and stay in the report",
    )
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.set:  # a trial with extra overrides neither reads nor writes the protocol's record
        args.record = None
    command_line = "python scripts/bench_transfer.py " + " ".join(sys.argv[1:])
    if not args.report_only:
        rows = check_no_leaks(args.targets)
        print(f"no leaks; train rows: {rows}", flush=True)
        # smallest sizes first, seed by seed, each cell's arms together: a run cut short has complete, paired
        # small sizes (where transfer should matter most); joint runs last
        cells = sorted(
            (
                Cell(t, n, s, a)
                for t in args.targets
                for n in args.sizes
                for s in args.seeds
                for a in args.arms
            ),
            key=lambda c: (c.arm == "joint", args.sizes.index(c.size), c.seed, c.target, ARMS.index(c.arm)),
        )
        done = recorded(args)
        cells = [c for c in cells if c not in done]
        # the source models first, those that a cell still to run needs (mtdnn starts from it, joint copies
        # its number of steps)
        for target in sorted(
            {c.target for c in cells if c.arm in ("mtdnn", "joint")}, key=args.targets.index
        ):
            print(
                run_child(
                    source_command(target, sources_of(target), source_folder(args.work, target), args.set),
                    source_folder(args.work, target),
                    args.threads * args.jobs,
                    keep_checkpoints=True,
                ),
                flush=True,
            )
        with ThreadPoolExecutor(args.jobs) as pool:
            for line in pool.map(
                lambda c: run_child(cell_command(c, args, rows), c.folder(args.work), args.threads), cells
            ):
                print(line, flush=True)
    write(args, collect(args), command_line)


if __name__ == "__main__":
    main()
