"""Deployment speed and quality: a MiniLM-L6 multi-task teacher against its distilled 3- and 2-layer students
(output-only and layer-wise distillation, several seeds each), in PyTorch and on ONNX Runtime (fp32, int8),
on rt_polarity (classification) and vader_domain_amazon (regression), both offline.

    python scripts/bench_inference.py [--work bench_inference] [--rows 2000] [--seeds 1 2 3] [--threads 2]
        [--repeats 5] [--students NAME ...] [--train-only [--claim]] [--out docs/inference]

It trains what `--work` does not hold yet (stop and rerun at will; several `--train-only --claim` processes
may share one --work, each claiming a run before it trains it: clear <work>/claims after stopping one): the
teacher on both tasks (`--rows` rt_polarity rows, every amazon row, 2 epochs), then per seed the students cut
from it (distill.student_from_teacher: keep_every=2 keeps layers 0, 2, 4; keep_every=3 layers 0, 3), each
distilled on the same rows with `distill=ensemble` (the teacher's outputs) or `distill=layerwise` (outputs,
hidden states, last-layer attention and value relations). The 2-layer student is also distilled with a
transfer set (the teacher's outputs on rt_polarity's other train texts and on 4 noisy copies of every labelled
row, which carry no labels: `distill.transfer`, `distill.augment`) for 2 and 3 epochs, and at 3 epochs with
one setting changed (lr 1e-4; alpha 0), with 8 copies for 2 epochs, and at lr 1e-4 with texts of other
domains for amazon, which has no unlabelled texts of its own (rt_polarity's; then also tweets and news
sentences of two more VADER domains) (METHODS). A third student keeps layers 0, 2, 4 with half of each layer's
feed-forward neurons (distill.keep_ffn=0.5: the compute of two full layers), distilled from outputs. Every run
is exported once as one multi-task ONNX graph (`task=all format=onnx quantize=int8`). Then, with `--threads`
intra-op threads:

  quality      each student seed's int8 graph on both validation splits (where each run chose its checkpoint),
               then on both test splits (which chose nothing): accuracy / Pearson as a share of the teacher's
               PyTorch figure; mean and a 95% t-interval over seeds
  throughput   examples/s at batch 32 (median of --repeats interleaved passes over rt_polarity's validation)
  latency      p50 / p95 ms of single-text requests (300), and of the tokenizer alone on the same texts
  memory       resident-set growth when the model is loaded and run once (MB; a rough figure)
  one graph    the first student's multi-task int8 graph serving both tasks against two per-task graphs:
               memory, latency

Goal (issue #40): a student at >= 97% of the teacher's quality with int8 throughput >= 4x the teacher's
PyTorch fp32, on both tasks, mean over seeds; its single-request p50 <= 3 ms.

With `--resplit SPLIT_SEED ...` it measures instead whether a student's share holds on other cuts of
vader_domain_amazon: per split seed (`+task_overrides.vader_domain_amazon.source.split_seed`), a teacher and
the students (`--methods`, `--seeds`) trained on that cut, and their int8 graphs' share of that teacher on its
validation and test rows; each cut's share and their mean with a 95% t-interval over cuts.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import t_quantile  # noqa: E402

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TASKS = ("rt_polarity", "vader_domain_amazon")
SPEED_TASK = TASKS[0]
TRANSFER = "{work}/rt_polarity_unlabelled.csv"  # rt_polarity's train rows the teacher did not see, texts only
# those and every text of two more VADER domains (deduplicated against amazon by tasks/vader_domain_*.yaml)
MORE_TEXTS = ("vader_domain_tweets", "vader_domain_nyt")
SENTIMENT = "{work}/sentiment_unlabelled.csv"
METHODS = {  # name -> the distillation's overrides
    "outputs": ["distill=ensemble"],
    "layer-wise": ["distill=layerwise"],
    # the teacher's outputs on a transfer set too: the rest of rt_polarity's train texts (no labels) and
    # 4 noisy copies of every labelled row of both tasks (mtdnn/distill/transfer.py)
    "transfer set": ["distill=ensemble", f"+distill.transfer.{TASKS[0]}={TRANSFER}", "distill.augment=4"],
}
# the same for 3 epochs instead of 2 (the 2-epoch students' validation scores still rose in their last epoch)
METHODS["transfer set, 3 epochs"] = [*METHODS["transfer set"], "trainer.epochs=3"]
# two single changes to it: twice the learning rate (small students often want more), and no hard labels (the
# student learns the teacher's outputs alone, as TinyBERT's prediction-layer distillation does)
METHODS["transfer set, 3 epochs, lr 1e-4"] = [*METHODS["transfer set, 3 epochs"], "trainer.lr=1e-4"]
METHODS["transfer set, 3 epochs, alpha 0"] = [*METHODS["transfer set, 3 epochs"], "distill.alpha=0"]
# twice the noisy copies (TinyBERT makes 20 per row) for 2 epochs: about the steps of 3 epochs of the above,
# but more distinct rows instead of a third pass over the same ones
METHODS["transfer set x8"] = [*METHODS["transfer set"], "distill.augment=8"]
# amazon has no unlabelled texts of its own: the teacher's amazon head labels rt_polarity's unlabelled reviews
# too (a near domain), so the regression student learns from ~8,400 more texts than its noisy copies
METHODS["transfer set for both tasks"] = [
    *METHODS["transfer set, 3 epochs, lr 1e-4"],
    f"+distill.transfer.{TASKS[1]}={TRANSFER}",
]
# and ~9,200 tweets and news sentences more for amazon: do more texts of other domains still help?
METHODS["transfer set for both tasks, more texts"] = [
    *METHODS["transfer set, 3 epochs, lr 1e-4"],
    f"+distill.transfer.{TASKS[1]}={SENTIMENT}",
]
# beside outputs-only, a method is paired with the one it changes a single setting of
CHANGES = {
    "transfer set, 3 epochs, lr 1e-4": "transfer set, 3 epochs",
    "transfer set, 3 epochs, alpha 0": "transfer set, 3 epochs",
    "transfer set x8": "transfer set",
    "transfer set for both tasks": "transfer set, 3 epochs, lr 1e-4",
    "transfer set for both tasks, more texts": "transfer set for both tasks",
}
STUDENTS = {  # name -> distill.keep_every (6 teacher layers -> 2, 3), distill.keep_ffn, distillations
    "2 layers": (
        3,
        1.0,
        (
            "outputs",
            "layer-wise",
            "transfer set",
            "transfer set, 3 epochs",
            "transfer set, 3 epochs, lr 1e-4",
            "transfer set, 3 epochs, alpha 0",
            "transfer set x8",
            "transfer set for both tasks",
            "transfer set for both tasks, more texts",
        ),
    ),
    "3 layers": (2, 1.0, ("outputs", "layer-wise")),
    # half of each layer's feed-forward neurons: the compute of 2 full layers (outputs only: layer-wise was
    # behind on both other students)
    "3 layers, half FFN": (2, 0.5, ("outputs",)),
}


def command(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, env=ENV)


def common(rows: int, seed: int) -> list[str]:
    return [
        f"task=[{','.join(TASKS)}]",
        f"+task_overrides.{TASKS[0]}.train_rows={rows}",
        "trainer.epochs=2",
        "trainer.batch_size=16",
        "trainer.progress_bar=false",
        "predict_test=false",
        f"seed={seed}",
    ]


def slug(name: str) -> str:
    """A student's or method's name as part of a folder name."""
    return re.sub("[^A-Za-z0-9-]", "", name)


def student_dir(work: Path, size: str, method: str, seed: int) -> Path:
    return work / f"{slug(size)}-{slug(method)}-s{seed}"


def transfer_files(work: Path, rows: int) -> None:
    """rt_polarity's train texts outside the `rows` the teacher learnt from, as a CSV without labels; and
    those with every text of the MORE_TEXTS domains (all splits: no run here evaluates those tasks)."""
    import dataclasses

    import pandas as pd

    from mtdnn.data.loading import load_raw, train_subset_rows
    from mtdnn.data.tasks import load_tasks

    path, more = Path(TRANSFER.format(work=work)), Path(SENTIMENT.format(work=work))
    if not path.is_file():
        spec = load_tasks([TASKS[0]], [])[0]
        train = load_raw(spec)["train"]
        seen = set(train_subset_rows(dataclasses.replace(spec, train_rows=rows), len(train)).tolist())
        texts = [text for i, text in enumerate(train[spec.columns.text]) if i not in seen]
        pd.DataFrame({spec.columns.text: texts}).to_csv(path, index=False)
    if not more.is_file():
        texts = pd.read_csv(path, dtype=str, keep_default_na=False).iloc[:, 0].tolist()
        for spec in load_tasks(list(MORE_TEXTS), []):
            texts += [text for split in load_raw(spec).values() for text in split[spec.columns.text]]
        column = load_tasks([TASKS[1]], [])[0].columns.text  # the file is amazon's transfer set
        pd.DataFrame({column: texts}).to_csv(more, index=False)


def claimed(work: Path, out: Path) -> bool:
    """Claim a run for this process (several `--train-only --claim` processes share one --work)."""
    try:
        (work / "claims").mkdir(exist_ok=True)
        (work / "claims" / out.name).mkdir()
        return True
    except FileExistsError:
        return False


def train_models(
    work: Path, rows: int, seeds: list[int], claim: bool = False, overrides: tuple[str, ...] = ()
) -> tuple[Path, dict]:
    """The teacher and every student (trained unless `work` holds them, or, with `claim`, another process
    claimed them), each with `overrides` too: (teacher, {(size, method, seed): run})."""
    teacher = work / "teacher"
    if not (teacher / "summary.json").is_file():
        command("mtdnn.train", *common(rows, 1), *overrides, f"output_dir={teacher}")
    transfer_files(work, rows)
    students = {}
    for size, (keep_every, keep_ffn, methods) in STUDENTS.items():
        for method in methods:  # a method's seeds first: claiming processes finish one method at a time
            for seed in seeds:
                out = student_dir(work, size, method, seed)
                if claim and not (out / "summary.json").is_file() and not claimed(work, out):
                    continue
                if not (out / "summary.json").is_file():
                    soft = slug(method.split(",")[0])  # one cache per transfer set
                    given = [
                        *common(rows, seed),
                        *overrides,
                        *[o.format(work=work) for o in METHODS[method]],
                        f"distill.soft_targets_dir={work}/soft_targets/{soft}",
                        f"distill.teachers=[{teacher}]",
                        "distill.student_from_teacher=true",
                        f"distill.keep_every={keep_every}",
                        f"distill.keep_ffn={keep_ffn}",
                        f"output_dir={out}",
                    ]
                    # a method's own setting replaces the common one (Hydra refuses a key given twice)
                    command("mtdnn.distill", *{a.split("=", 1)[0]: a for a in given}.values())
                students[(size, method, seed)] = out
    return teacher, students


def export(run_dir: Path, task: str = "all") -> Path:
    """The run's int8 ONNX graph (every task by default; one task's alone when `task` names it)."""
    out = (
        run_dir.parent / f"{run_dir.name}_onnx"
        if task == "all"
        else run_dir.parent / f"{run_dir.name}_{task}"
    )
    if not (out / "model_int8.onnx").is_file():
        command(
            "mtdnn.export",
            str(run_dir),
            f"task={task}",
            f"out={out}",
            "format=onnx",
            "quantize=int8",
            "overwrite=true",
        )
    return out


def labelled_texts(overrides: dict | None = None) -> dict[str, dict[str, tuple[list[dict], list]]]:
    """{split: {task: (texts, gold)}} for the validation and test splits, each task loaded once."""
    from mtdnn.data.loading import load_raw
    from mtdnn.data.tasks import load_tasks

    splits: dict[str, dict] = {"validation": {}, "test": {}}
    for task in TASKS:
        spec = load_tasks([task], [], {task: overrides[task]} if task in (overrides or {}) else None)[0]
        raw = load_raw(spec)
        for split, data in splits.items():
            data[task] = (
                [{"text": t} for t in raw[split][spec.columns.text]],
                list(raw[split][spec.columns.label]),
            )
    return splits


def outputs(records: list[dict]) -> np.ndarray:
    """The predicted labels (classification) or values (regression) of a predictor's records."""
    return np.array([r["label"] if "label" in r else r["prediction"] for r in records])


def score(predicted: np.ndarray, gold: np.ndarray) -> float:
    """Accuracy (labels) or Pearson's r (values) of the predictions against the gold column."""
    if predicted.dtype.kind in "OUS":
        return float(np.mean(predicted == gold))
    return float(np.corrcoef(predicted, gold)[0, 1])


def rows_interval(
    teacher: np.ndarray, students: list[np.ndarray], gold: np.ndarray, resamples: int = 1000
) -> tuple[float, float]:
    """The 95% percentile interval of the students' mean share of the teacher's score when the evaluation rows
    are resampled (the same rows for the teacher and every seed): the uncertainty the seeds do not show."""
    rng = np.random.default_rng(0)
    shares = []
    for _ in range(resamples):
        rows = rng.integers(len(gold), size=len(gold))
        base = score(teacher[rows], gold[rows])
        shares.append(statistics.mean(score(s[rows], gold[rows]) for s in students) / base)
    low, high = np.percentile(shares, [2.5, 97.5])
    return float(low), float(high)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def interval(values: list[float]) -> tuple[float, float]:
    """The 95% t-interval of the mean (a point when there is one value)."""
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, mean
    half = t_quantile(len(values)) * statistics.stdev(values) / len(values) ** 0.5
    return mean - half, mean + half


def quality(teacher: Path, students: dict, splits: dict[str, dict]) -> dict[str, list[dict]]:
    """Each student seed's int8 graph on both tasks, as a share of the teacher's PyTorch score, per split
    ({split: {task: (texts, gold)}}); every model is loaded once for all splits."""
    from mtdnn import load_run

    reference = load_run(teacher, device="cpu")
    gold = {split: {t: np.array(g) for t, (_, g) in data.items()} for split, data in splits.items()}
    ref = {
        split: {t: outputs(reference.predict(t, x, batch_size=64)) for t, (x, _) in data.items()}
        for split, data in splits.items()
    }
    base = {split: {t: score(ref[split][t], gold[split][t]) for t in TASKS} for split in splits}
    rows = {
        split: [
            {"model": "teacher", "method": "-", "task": t, "values": [base[split][t]], "share": [1.0]}
            for t in TASKS
        ]
        for split in splits
    }
    for size, (_, _, methods) in STUDENTS.items():
        for method in methods:
            graphs = [
                load_run(export(run_dir), backend="onnx-int8", device="cpu")
                for (s, m, _seed), run_dir in students.items()
                if (s, m) == (size, method)
            ]
            for split, data in splits.items():
                for task in TASKS:
                    predicted = [outputs(g.predict(task, data[task][0], batch_size=64)) for g in graphs]
                    values = [score(p, gold[split][task]) for p in predicted]
                    rows[split].append(
                        {
                            "model": size,
                            "method": method,
                            "task": task,
                            "values": values,
                            "share": [v / base[split][task] for v in values],
                            "rows_interval": rows_interval(ref[split][task], predicted, gold[split][task]),
                        }
                    )
    return rows


def speed(folders: dict[str, tuple[Path, str]], texts: list[dict], repeats: int) -> list[dict]:
    """Throughput at batch 32, single-request latency, tokenizer latency and memory, per (model, backend)."""
    from mtdnn import load_run

    entries = []
    for name, (folder, backend) in folders.items():
        gc.collect()
        before = rss_mb()
        predictor = load_run(folder, backend=backend, device="cpu")
        predictor.predict(SPEED_TASK, texts[:32], batch_size=32)  # warm-up: graph optimisation, allocator
        entries.append({"name": name, "predictor": predictor, "memory_mb": rss_mb() - before, "passes": []})
    for _ in range(repeats):  # interleaved: machine noise falls on every model alike
        for entry in entries:
            started = time.perf_counter()
            entry["predictor"].predict(SPEED_TASK, texts, batch_size=32)
            entry["passes"].append(len(texts) / (time.perf_counter() - started))
    for entry in entries:
        entry["latency"] = single_requests(entry["predictor"], texts)
        tokenizer = entry["predictor"].loaded.tokenizer
        entry["tokenizer"] = []
        for row in texts[:300]:
            started = time.perf_counter()
            tokenizer(row["text"], truncation=True)
            entry["tokenizer"].append(1000 * (time.perf_counter() - started))
    base = statistics.median(entries[0]["passes"])
    return [
        {
            "model": entry["name"],
            "examples_per_s": round(statistics.median(entry["passes"]), 1),
            "speedup_vs_teacher_torch": round(statistics.median(entry["passes"]) / base, 2),
            "latency_p50_ms": round(percentile(entry["latency"], 0.5), 2),
            "latency_p95_ms": round(percentile(entry["latency"], 0.95), 2),
            "tokenizer_p50_ms": round(percentile(entry["tokenizer"], 0.5), 3),
            "memory_mb": round(entry["memory_mb"], 1),
        }
        for entry in entries
    ]


def single_requests(predictor, texts: list[dict], task: str = SPEED_TASK, requests: int = 300) -> list[float]:
    times = []
    for row in texts[:requests]:
        started = time.perf_counter()
        predictor.predict(task, [row], batch_size=1)
        times.append(1000 * (time.perf_counter() - started))
    return times


def one_graph_or_two(run_dir: Path, texts: dict) -> list[dict]:
    """Serving both tasks: the multi-task int8 graph (one session) against one per-task graph each."""
    from mtdnn import load_run

    rows = []
    for label, folders in [("one multi-task graph", [export(run_dir)] * 2), ("a graph per task", None)]:
        folders = folders or [export(run_dir, task) for task in TASKS]
        gc.collect()
        before = rss_mb()
        served = {}
        for task, folder in zip(TASKS, folders):
            served[task] = served.get(folder) or load_run(folder, backend="onnx-int8", device="cpu")
            served[folder] = served[task]
            served[task].predict(task, texts[task][:32], batch_size=32)
        memory = rss_mb() - before
        for task in TASKS:
            latency = single_requests(served[task], texts[task], task)
            rows.append(
                {
                    "serving": label,
                    "task": task,
                    "memory_mb": round(memory, 1),
                    "latency_p50_ms": round(percentile(latency, 0.5), 2),
                }
            )
    return rows


def summarise(quality_rows: list[dict], speed_rows: list[dict]) -> list[str]:
    """The quality table (mean share of the teacher with its interval) and whether each student meets the
    goal."""
    int8 = {r["model"]: r for r in speed_rows}
    lines = [
        "| student | distillation | task | score (mean of seeds) | of teacher's | 95% interval, seeds "
        "| 95% interval, rows | int8 × teacher |",
        "|---|---|---|---|---|---|---|---|",
    ]
    verdicts = {}
    for row in quality_rows:
        low, high = interval(row["share"])
        mean = statistics.mean(row["share"])
        fast = int8.get(f"{row['model']} int8", {}).get("speedup_vs_teacher_torch", float("nan"))
        lines.append(
            f"| {row['model']} | {row['method']} | {row['task']} | {statistics.mean(row['values']):.4f} | "
            f"{100 * mean:.1f}% | {percent_interval(low, high)} | {rows_text(row)} | {fast:.2f} |"
        )
        if row["model"] != "teacher":
            key = (row["model"], row["method"])
            verdicts[key] = verdicts.get(key, True) and mean >= 0.97 and fast >= 4
    by = {(r["model"], r["method"], r["task"]): r["share"] for r in quality_rows}
    lines.append(
        "\npaired by seed, minus the same student distilled from outputs (points of the teacher's score, "
        "95% interval):"
    )
    for size, (_, _, methods) in STUDENTS.items():
        for method in methods[1:] if methods[0] == "outputs" else []:
            for task in TASKS:
                lines.append(f"- {size}, {method}, {task}: {paired(by, size, method, 'outputs', task)}")
    changed = [
        (size, m) for size, (_, _, methods) in STUDENTS.items() for m in methods if CHANGES.get(m) in methods
    ]
    if changed:
        lines.append("\npaired by seed, minus the method it changes one setting of:")
    for size, method in changed:
        for task in TASKS:
            base = CHANGES[method]
            lines.append(f"- {size}, {method} minus {base}, {task}: {paired(by, size, method, base, task)}")
    for (model, method), met in verdicts.items():
        lines.append(
            f"goal ({model}, {method}): >= 97% of the teacher on both tasks at >= 4x: "
            f"{'met' if met else 'not met'}"
        )
    return lines


def percent_interval(low: float, high: float) -> str:
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def rows_text(row: dict) -> str:
    return percent_interval(*row["rows_interval"]) if "rows_interval" in row else "-"


def paired(by: dict, size: str, method: str, base: str, task: str) -> str:
    """The per-seed difference of two methods' shares of the teacher, in points: mean, 95% interval, wins."""
    diffs = [100 * (a - b) for a, b in zip(by[(size, method, task)], by[(size, base, task)])]
    low, high = interval(diffs)
    wins = sum(d > 0 for d in diffs)
    return f"{statistics.mean(diffs):+.2f} [{low:+.2f}, {high:+.2f}], {wins}/{len(diffs)} seeds"


def plot(quality_rows: list[dict], speed_rows: list[dict], out: Path) -> None:
    """Speed (int8 × teacher) against quality (share of the teacher), one marker per student and task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    int8 = {r["model"]: r["speedup_vs_teacher_torch"] for r in speed_rows}
    methods = list(dict.fromkeys(r["method"] for r in quality_rows if r["model"] != "teacher"))
    figure, axes = plt.subplots(figsize=(9.6, 4.2))
    for row in quality_rows:
        if row["model"] == "teacher":
            continue
        low, high = interval(row["share"])
        mean = statistics.mean(row["share"])
        axes.errorbar(
            int8[f"{row['model']} int8"] + 0.04 * (methods.index(row["method"]) - len(methods) / 2),
            100 * mean,
            yerr=[[100 * (mean - low)], [100 * (high - mean)]],
            fmt="o" if row["task"] == TASKS[0] else "s",
            color=f"C{methods.index(row['method'])}",
            label=f"{row['method']}, {row['task']}",
            capsize=3,
        )
    axes.axhline(97, color="grey", linestyle="--", linewidth=0.8)
    axes.axvline(4, color="grey", linestyle="--", linewidth=0.8)
    axes.set_xlabel(
        "int8 throughput, × the teacher in PyTorch fp32\n"
        "(the methods side by side: each runs at its shape's speed)"
    )
    axes.set_ylabel("% of the teacher's score (mean of seeds, 95% CI)")
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes.legend(unique.values(), unique.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    figure.tight_layout()
    figure.savefig(out, dpi=120)


def resplit(work: Path, seed: int) -> tuple[Path, tuple[str, ...], dict]:
    """The regression task cut by another split seed: its runs' folder, the command-line override and the
    loader's."""
    return (
        work / f"{TASKS[1]}-split-{seed}",
        (f"+task_overrides.{TASKS[1]}.source.split_seed={seed}",),
        {TASKS[1]: {"source": {"split_seed": seed}}},
    )


def resplits(work: Path, args: argparse.Namespace) -> dict[int, dict[str, list[dict]]]:
    """--resplit: per split seed of the regression task, a teacher and its students trained on that split
    (each a separate claim with --claim), then their quality on its validation and test rows:
    {split seed: {split: quality rows}} (empty with --train-only)."""
    measured = {}
    for seed in args.resplit:
        folder, given, loader = resplit(work, seed)
        if args.claim and args.train_only and not claimed(work, folder):
            continue
        folder.mkdir(exist_ok=True)
        teacher, students = train_models(folder, args.rows, args.seeds, overrides=given)
        for run_dir in [teacher, *students.values()]:
            export(run_dir)
        if not args.train_only:
            measured[seed] = quality(teacher, students, labelled_texts(loader))
    return measured


def resplit_tables(measured: dict[int, dict[str, list[dict]]], own: int | None = None) -> list[str]:
    """Per student and distillation: each split seed's share of its own teacher (mean of the student seeds) on
    both tasks' validation and test rows, then the mean over split seeds with its 95% t-interval (`own`: the
    task YAML's split seed, marked)."""
    columns = [(task, split) for task in TASKS for split in ("validation", "test")]
    shares: dict[tuple, dict[tuple, list[float]]] = {}  # (model, method) -> (task, split) -> one per cut
    teachers: dict[tuple, list[float]] = {column: [] for column in columns}
    for by_split in measured.values():
        for split, rows in by_split.items():
            for row in rows:
                column = (row["task"], split)
                if row["model"] == "teacher":
                    teachers[column].append(row["values"][0])
                else:
                    shares.setdefault((row["model"], row["method"]), {}).setdefault(column, [])
                    shares[(row["model"], row["method"])][column].append(statistics.mean(row["share"]))
    head = " | ".join(f"{task} {split}" for task, split in columns)
    lines = []
    for (model, method), by_column in shares.items():
        lines += [
            f"{model}, {method}: share of its split's teacher (mean of the student seeds)",
            "",
            f"| split seed | {head} |",
            "|---|" + "---|" * len(columns),
        ]
        for i, seed in enumerate(measured):
            cells = " | ".join(f"{100 * by_column[c][i]:.1f}%" for c in columns)
            lines.append(f"| {seed}{' (the YAML’s)' if seed == own else ''} | {cells} |")
        means = [(statistics.mean(by_column[c]), interval(by_column[c])) for c in columns]
        cells = " | ".join(f"**{100 * m:.1f}%** {percent_interval(*i)}" for m, i in means)
        lines += [f"| mean, 95% interval over splits | {cells} |", ""]
        for split in ("validation", "test"):
            met = all(statistics.mean(by_column[(t, split)]) >= 0.97 for t in TASKS)
            lines.append(
                f"goal on {split}, mean over split seeds >= 97% on both tasks: {'met' if met else 'not met'}"
            )
        lines.append("")
    cells = " | ".join(f"{statistics.mean(teachers[c]):.4f}" for c in columns)
    lines += ["The teachers' own scores (accuracy, Pearson's r), mean over split seeds:", ""]
    lines += [f"| {head} |", "|" + "---|" * len(columns), f"| {cells} |"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench_inference"))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--students",
        nargs="+",
        choices=list(STUDENTS),
        default=list(STUDENTS),
        help="train and measure these",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-only", action="store_true", help="train and export, measure nothing")
    parser.add_argument(
        "--claim", action="store_true", help="with --train-only: skip runs another such process claimed"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=list(METHODS), help="distill the students only these ways"
    )
    parser.add_argument(
        "--resplit",
        type=int,
        nargs="+",
        metavar="SPLIT_SEED",
        help=f"instead: cut {TASKS[1]} by each of these split seeds, train a teacher and the students on "
        "each cut and report their quality on it (no speed)",
    )
    parser.add_argument("--out", type=Path, help="write report.md, results.json and curve.png here")
    args = parser.parse_args()
    for name in set(STUDENTS) - set(args.students):
        del STUDENTS[name]
    for name, (keep_every, keep_ffn, methods) in list(STUDENTS.items()):
        kept = tuple(m for m in methods if m in (args.methods or methods))
        STUDENTS[name] = (keep_every, keep_ffn, kept)
        if not kept:  # a shape none of the --methods is run for
            del STUDENTS[name]
    if not STUDENTS:
        parser.error(f"--methods: none of {args.methods} is run for the students {args.students}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.resplit:
        report_resplits(resplits(work, args), args)
        return
    teacher, students = train_models(work, args.rows, args.seeds, args.claim and args.train_only)
    for run_dir in [teacher, *students.values()]:
        export(run_dir)
    if args.train_only:
        return
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # ONNX Runtime's sessions read it at creation
    splits = labelled_texts()
    data = splits["validation"]
    texts = {t: d[0] for t, d in data.items()}
    first = args.seeds[0]
    folders = {"teacher torch": (teacher, "torch"), "teacher int8": (export(teacher), "onnx-int8")}
    for size, (_, _, methods) in STUDENTS.items():
        run_dir = students[(size, methods[-1], first)]
        folders |= {f"{size} torch": (run_dir, "torch"), f"{size} int8": (export(run_dir), "onnx-int8")}
    speed_rows = speed(folders, texts[SPEED_TASK], args.repeats)
    size, (_, _, methods) = next(iter(STUDENTS.items()))
    # before quality: memory is read as the resident set's growth, and quality leaves freed memory behind
    serving = one_graph_or_two(students[(size, methods[0], first)], texts)
    by_split = quality(teacher, students, splits)
    quality_rows, test_rows = by_split["validation"], by_split["test"]
    lines = [
        f"{args.threads} threads; throughput at batch 32 on {SPEED_TASK} validation "
        f"({len(texts[SPEED_TASK])} rows); students for speed: seed {first} (the shape sets the "
        "speed, not the distillation)\n",
        "| model | examples/s | × teacher (torch) | p50 ms | p95 ms | tokenizer p50 ms | memory MB |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['examples_per_s']} | {r['speedup_vs_teacher_torch']:.2f} | "
        f"{r['latency_p50_ms']} | {r['latency_p95_ms']} | {r['tokenizer_p50_ms']} | {r['memory_mb']} |"
        for r in speed_rows
    ]
    lines += [
        "",
        f"Quality: the int8 graphs of the students, seeds {args.seeds}, on the validation splits. Two 95% "
        "intervals of the share of the teacher: over the student seeds (t), and over the evaluation rows (a "
        "bootstrap resampling the rows, the same ones for the teacher and every seed).",
        "",
    ]
    lines += summarise(quality_rows, speed_rows)
    # every run chose its checkpoint, and we chose among the methods, on validation: test was used for nothing
    lines += ["", "The same on the test splits, which chose nothing:", ""]
    lines += summarise(test_rows, speed_rows)
    lines += ["", f"Serving both tasks from the {size} student ({methods[0]}, seed {first}):", ""]
    lines += ["| serving both tasks | task | memory MB | p50 ms |", "|---|---|---|---|"]
    lines += [f"| {r['serving']} | {r['task']} | {r['memory_mb']} | {r['latency_p50_ms']} |" for r in serving]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        write_report(args.out, "Inference: students, backends, latency", text)
        results = {"threads": args.threads, "seeds": args.seeds, "speed": speed_rows, "quality": quality_rows}
        results["quality_test"] = test_rows
        (args.out / "results.json").write_text(json.dumps({**results, "serving": serving}, indent=2))
        plot(quality_rows, speed_rows, args.out / "curve.png")


def report_resplits(measured: dict[int, dict[str, list[dict]]], args: argparse.Namespace) -> None:
    from mtdnn.data.tasks import load_tasks

    if not measured:
        return
    seeds = ", ".join(map(str, args.seeds))
    text = "\n".join(
        [
            f"{TASKS[1]} cut into train, validation and test by each split seed (its YAML's fractions), a "
            f"teacher trained on each cut (seed 1) and the students distilled from it (seeds {seeds}); their "
            "int8 graphs against their own teacher in PyTorch, on that cut's validation rows (which chose "
            "the checkpoints) and its test rows (which chose nothing). Speed is the shape's: see the main "
            "report.",
            "",
            *resplit_tables(measured, load_tasks([TASKS[1]], [])[0].source.split_seed),
        ]
    )
    print(text)
    if args.out:
        write_report(args.out, f"Inference: students on other cuts of {TASKS[1]}", text + "\n")
        (args.out / "results.json").write_text(
            json.dumps({"seeds": args.seeds, "resplit": measured}, indent=2)
        )


def write_report(out: Path, title: str, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    given = [a for a, b in zip(sys.argv[1:], [None, *sys.argv[1:]]) if "--work" not in (a, b)]
    command_line = "python scripts/bench_inference.py " + shlex.join(given)  # where it worked is not part
    (out / "report.md").write_text(f"# {title}\n\n```bash\n{command_line}\n```\n\n{text}")


if __name__ == "__main__":
    main()
