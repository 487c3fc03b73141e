"""Distil an ensemble of 3 MiniLM-L6 teachers into a 3-layer student on the offline demo task
(rt_polarity).

    python scripts/bench_distill.py [--teachers RUN RUN RUN] [--work DIR] [--epochs 1] [--json out.json]

Without --teachers it trains them first (seeds 1, 2, 3; about 4-5 minutes each on 2 CPU cores). The student
keeps layers 0, 2 and 4 of the first teacher's encoder (distill.student_from_teacher, keep_every=2) and
learns from the ensemble's soft targets. Printed, all measured in this run: teacher-ensemble accuracy, each
teacher's accuracy, the student's, and student vs teacher inference speed (examples/s over the validation
split, medians of interleaved repetitions). Targets: student >= 97% of the ensemble's accuracy, >= 1.8x
faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from mtdnn.data.loading import TaskData, encode_splits, load_raw
from mtdnn.data.tasks import load_tasks
from mtdnn.evaluation.engine import collator_for, forward_rows
from mtdnn.serving.loading import open_run

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def train(args: list[str]) -> None:
    subprocess.run([sys.executable, "-m", *args, "trainer.progress_bar=false"], check=True, env=ENV)


def validation_probs(run_dir: Path, spec, raw) -> tuple[torch.Tensor, torch.Tensor, callable]:
    loaded = open_run(str(run_dir), "best", torch.device("cpu"))
    data = TaskData(spec, {"validation": raw})
    encode_splits(data, loaded.tokenizer)
    collate = collator_for(spec, loaded.tokenizer, 8)

    def predict():  # validation probabilities and gold labels, in row order
        logits, gold = forward_rows(
            loaded.model, spec, data.encoded["validation"], collate, 128, torch.device("cpu")
        )
        return torch.stack(logits).softmax(-1), torch.stack(gold)

    probs, gold = predict()
    return probs, gold, predict


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--teachers", nargs="*", type=Path)
    parser.add_argument("--work", type=Path, default=Path("outputs/bench_distill"))
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    teachers = args.teachers or []
    if not teachers:
        for seed in (1, 2, 3):
            folder = args.work / f"teacher_seed{seed}"
            if not (folder / "summary.json").is_file():
                train(["mtdnn.train", f"seed={seed}", f"output_dir={folder}", "predict_test=false"])
            teachers.append(folder)
    student = args.work / "student"
    started = time.time()
    train(
        [
            "mtdnn.distill",
            f"distill.teachers=[{','.join(str(t) for t in teachers)}]",
            "distill.student_from_teacher=true",
            "distill.keep_every=2",
            f"trainer.epochs={args.epochs}",
            f"output_dir={student}",
            "predict_test=false",
        ]
    )
    distill_seconds = time.time() - started

    (spec,) = load_tasks(["rt_polarity"])
    raw = load_raw(spec)["validation"]
    teacher_probs, gold, teacher_predict = [], None, None
    for folder in teachers:
        probs, gold, predict = validation_probs(folder, spec, raw)
        teacher_probs.append(probs)
        teacher_predict = teacher_predict or predict
    student_probs, _, student_predict = validation_probs(student, spec, raw)
    accuracy = {
        f"teacher {t.name}": (p.argmax(-1) == gold).float().mean().item()
        for t, p in zip(teachers, teacher_probs)
    }
    ensemble = (torch.stack(teacher_probs).mean(0).argmax(-1) == gold).float().mean().item()
    student_acc = (student_probs.argmax(-1) == gold).float().mean().item()

    times = {"teacher": [], "student": []}
    for rep in range(args.reps):  # interleaved, order alternating
        for name in ("teacher", "student") if rep % 2 == 0 else ("student", "teacher"):
            fn = teacher_predict if name == "teacher" else student_predict
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    speed = {name: len(raw) / statistics.median(values) for name, values in times.items()}

    print(f"\nvalidation accuracy on rt_polarity ({len(raw)} examples)")
    for name, value in accuracy.items():
        print(f"  {name:<28} {value:.4f}")
    print(f"  {'teacher ensemble (3)':<28} {ensemble:.4f}")
    print(
        f"  {'student (3 layers)':<28} {student_acc:.4f}   = {student_acc / ensemble:.1%} of the ensemble "
        f"(target >= 97%)"
    )
    print(
        f"inference: teacher {speed['teacher']:.0f} examples/s, student {speed['student']:.0f} examples/s "
        f"= {speed['student'] / speed['teacher']:.2f}x faster (target >= 1.8x); distillation took "
        f"{distill_seconds:.0f}s"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "teachers": accuracy,
                    "ensemble": ensemble,
                    "student": student_acc,
                    "student_share_of_ensemble": student_acc / ensemble,
                    "examples_per_s": speed,
                    "speedup": speed["student"] / speed["teacher"],
                    "distill_seconds": distill_seconds,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
