"""Deployment speed: a MiniLM-L6 teacher vs its distilled 3-layer student, each in PyTorch and on ONNX
Runtime (fp32 and int8), on the offline rt_polarity task.

    python scripts/bench_inference.py [--work bench_inference] [--rows 2000] [--threads 2] [--repeats 5]
        [--json out.json]

It trains what `--work` does not hold yet: the teacher on `--rows` training rows for 2 epochs, and two
students distilled from the teacher's soft targets on the same rows (distill.student_from_teacher):
`student` keeps layers 0, 2, 4 of the teacher (keep_every=2), `student-2l` layers 0, 3 (keep_every=3). Each
run is exported with `python -m mtdnn.export ... format=onnx quantize=int8`. Then, for each (model,
backend) pair, on the full validation split (1,281 reviews), with `--threads` intra-op threads:

  throughput   examples/s at batch 32 (median of --repeats passes over the split, pairs interleaved)
  latency      p50 / p95 milliseconds of single-example requests (300 requests)
  memory       resident-set growth of this process when the model is loaded and run once (MB; a rough figure)
  quality      validation accuracy, and the share of labels equal to the teacher in PyTorch

Goal (issue #17): an int8 student at >= 4x the PyTorch teacher's throughput with >= 97% of its accuracy.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TASK = "rt_polarity"
STUDENTS = {"student": 2, "student-2l": 3}  # name -> distill.keep_every (6 teacher layers -> 3, 2)


def command(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], check=True, env=ENV)


def train_models(work: Path, rows: int) -> dict[str, Path]:
    """The teacher and the students (trained unless `work` holds them already), by name."""
    teacher = work / "teacher"
    common = [
        f"task={TASK}",
        f"+task_overrides.{TASK}.train_rows={rows}",
        "trainer.epochs=2",
        "trainer.batch_size=16",
        "trainer.progress_bar=false",
        "predict_test=false",
        "seed=1",
    ]
    if not (teacher / "summary.json").is_file():
        command("mtdnn.train", *common, f"output_dir={teacher}")
    for name, keep_every in STUDENTS.items():
        if not (work / name / "summary.json").is_file():
            command(
                "mtdnn.distill",
                *common,
                f"distill.teachers=[{teacher}]",
                "distill.student_from_teacher=true",
                f"distill.keep_every={keep_every}",
                f"output_dir={work / name}",
            )
    return {"teacher": teacher, **{name: work / name for name in STUDENTS}}


def export(run_dir: Path, out: Path) -> Path:
    if not (out / "model_int8.onnx").is_file():
        command(
            "mtdnn.export",
            str(run_dir),
            f"task={TASK}",
            f"out={out}",
            "format=onnx",
            "quantize=int8",
            "overwrite=true",
        )
    return out


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def validation_rows(spec) -> list[dict]:
    from mtdnn.data.loading import load_raw

    raw = load_raw(spec)["validation"]
    return [{"text": text} for text in raw[spec.columns.text]], list(raw[spec.columns.label])


def measure(name: str, folder: Path, backend: str, texts: list[dict], args) -> dict:
    from mtdnn import load_run

    gc.collect()
    before = rss_mb()
    predictor = load_run(folder, backend=backend, device="cpu")
    predictor.predict(TASK, texts[:32], batch_size=32)  # warm-up: graph optimisation, allocator
    memory = rss_mb() - before
    return {
        "name": name,
        "backend": backend,
        "predictor": predictor,
        "memory_mb": memory,
        "passes": [],
        "latency_ms": [],
    }


def one_pass(entry: dict, texts: list[dict]) -> list[str]:
    started = time.perf_counter()
    records = entry["predictor"].predict(TASK, texts, batch_size=32)
    entry["passes"].append(len(texts) / (time.perf_counter() - started))
    return [r["label"] for r in records]


def latencies(entry: dict, texts: list[dict], requests: int = 300) -> None:
    for text in texts[:requests]:
        started = time.perf_counter()
        entry["predictor"].predict(TASK, [text], batch_size=1)
        entry["latency_ms"].append(1000 * (time.perf_counter() - started))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench_inference"))
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # ONNX Runtime's sessions read it at creation
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    folders = train_models(work, args.rows)
    onnx = {name: export(run, work / f"{name}_onnx") for name, run in folders.items()}

    from mtdnn.data.tasks import load_tasks

    texts, gold = validation_rows(load_tasks([TASK], [])[0])
    entries = []
    for name in folders:
        entries += [
            measure(name, folders[name], "torch", texts, args),
            measure(name, onnx[name], "onnx", texts, args),
            measure(name, onnx[name], "onnx-int8", texts, args),
        ]
    labels = {}
    for _ in range(args.repeats):  # interleaved: machine noise falls on every pair alike
        for entry in entries:
            labels[(entry["name"], entry["backend"])] = one_pass(entry, texts)
    for entry in entries:
        latencies(entry, texts)
    reference = labels[("teacher", "torch")]
    base = statistics.median(entries[0]["passes"])
    results = []
    for entry in entries:
        predicted = labels[(entry["name"], entry["backend"])]
        results.append(
            {
                "model": entry["name"],
                "backend": entry["backend"],
                "examples_per_s": round(statistics.median(entry["passes"]), 1),
                "speedup_vs_teacher_torch": round(statistics.median(entry["passes"]) / base, 2),
                "latency_p50_ms": round(percentile(entry["latency_ms"], 0.5), 2),
                "latency_p95_ms": round(percentile(entry["latency_ms"], 0.95), 2),
                "memory_mb": round(entry["memory_mb"], 1),
                "accuracy": round(sum(p == g for p, g in zip(predicted, gold)) / len(gold), 4),
                "agrees_with_teacher": round(
                    sum(p == r for p, r in zip(predicted, reference)) / len(gold), 4
                ),
            }
        )
    teacher_accuracy = results[0]["accuracy"]
    print(f"rt_polarity validation ({len(texts)} reviews), {args.threads} threads, batch 32 for throughput\n")
    print(
        "| model | backend | examples/s | × teacher (torch) | p50 ms | p95 ms | memory MB | accuracy | "
        "of teacher's | same label as teacher |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['model']} | {r['backend']} | {r['examples_per_s']} | {r['speedup_vs_teacher_torch']:.2f} "
            "| "
            f"{r['latency_p50_ms']} | {r['latency_p95_ms']} | {r['memory_mb']} | {r['accuracy']:.4f} | "
            f"{100 * r['accuracy'] / teacher_accuracy:.1f}% | {100 * r['agrees_with_teacher']:.1f}% |"
        )
    for goal in (r for r in results if r["model"] in STUDENTS and r["backend"] == "onnx-int8"):
        met = goal["speedup_vs_teacher_torch"] >= 4 and goal["accuracy"] >= 0.97 * teacher_accuracy
        print(
            f"goal ({goal['model']}): int8 >= 4x the teacher's throughput at >= 97% of its accuracy: "
            f"{goal['speedup_vs_teacher_torch']:.2f}x at {100 * goal['accuracy'] / teacher_accuracy:.1f}% -> "
            f"{'met' if met else 'not met'}"
        )
    if args.json:
        args.json.write_text(json.dumps({"threads": args.threads, "results": results}, indent=2))


if __name__ == "__main__":
    main()
