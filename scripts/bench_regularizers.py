"""Every regularizer on the offline demo task (rt_polarity, MiniLM-L6), same seed and budget: one table of
the validation accuracy each reaches and its training-step time relative to no regularizer.

    python scripts/bench_regularizers.py [--steps 150] [--reps 5] [--only smart r3f ...] [--json out.json]

1. Quality: `python -m mtdnn.train` with each `regularizer=<name>` at its YAML defaults (one seed: a smoke
   check; scripts/bench_quality.py is the multi-seed quality protocol),
   seed 42, `trainer.max_steps=--steps`, batch 32, lr 5e-5, evaluated at the end; accuracy on the 1,281-row
   validation split (standard error ~0.011: differences under ~0.02 are noise at one seed). The run's wall
   time includes setup (Child-Tuning D's Fisher pass over the whole training split).
2. Speed: one full training step (forward, regularizer passes, backward, clip, optimizer, hooks) on a 32 x 128
   batch, each method on its own copy of the model, repetitions interleaved across methods, medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_smart import load_encoder, random_batch  # scripts/ is on sys.path when run as a script
from omegaconf import OmegaConf

from mtdnn.core.config import TrainerConfig
from mtdnn.core.paths import conf_dir
from mtdnn.data.tasks import ColumnsSpec, SourceSpec, TaskSpec
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.regularizers import available, build_regularizers
from mtdnn.training.loop import forward_backward
from mtdnn.training.optim import build_optimizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
METHODS = [
    "none",
    "smart",
    "r3f",
    "r4f",
    "alice",
    "freelb",
    "child_tuning",
    "child_tuning_f",
    "lnsr",
    "mixout",
    "l2_sp",
]


def overrides(method: str) -> list[str]:
    """child_tuning_f is Child-Tuning's task-free mode; every other name is a conf/regularizer file."""
    if method == "child_tuning_f":
        return ["regularizer=child_tuning", "regularizer.child_tuning.mode=F"]
    return [f"regularizer={method}"]


def regularizer_node(method: str) -> dict:
    name = "child_tuning" if method == "child_tuning_f" else method
    if name == "none":
        return {}
    node = OmegaConf.to_container(OmegaConf.load(conf_dir() / "regularizer" / f"{name}.yaml"))
    if method == "child_tuning_f":
        node["child_tuning"]["mode"] = "F"
    return node


def quality(method: str, steps: int, work: Path) -> dict:
    """One real training run (a child process: the same command a user types)."""
    out = work / method
    if not (out / "summary.json").is_file():
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "mtdnn.train",
                *overrides(method),
                f"trainer.max_steps={steps}",
                "trainer.evals_per_epoch=1",
                "trainer.progress_bar=false",
                "predict_test=false",
                f"output_dir={out}",
            ],
            check=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        )
        (out / "wall_s").write_text(str(time.perf_counter() - started))
    summary = json.loads((out / "summary.json").read_text())
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return {
        "accuracy": summary["validation"]["rt_polarity"]["accuracy"],
        "wall_s": float((out / "wall_s").read_text()),
        "final_loss": log[-1]["loss/rt_polarity"],
    }


class Trainee:
    """One method's model copy, optimizer and regularizers, and its full training step."""

    def __init__(self, method: str, base: MultiTaskModel, spec: TaskSpec, batch: dict):
        self.model = copy.deepcopy(base).train()
        self.regs = build_regularizers(regularizer_node(method), self.model, [spec])
        self.optimizer = build_optimizer(self.model, TrainerConfig())
        self.batch = batch
        started = time.perf_counter()
        for reg in self.regs.values():  # Child-Tuning D: a (short) Fisher pass so the mask exists
            reg.prepare(self.model, [("bench", batch)] * 4, torch.device("cpu"))
        self.setup_s = time.perf_counter() - started

    def step(self) -> float:
        started = time.perf_counter()
        forward_backward(self.model, "bench", self.batch, self.regs, 1.0, bf16=False)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        for reg in self.regs.values():
            reg.before_step(self.model)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for reg in self.regs.values():
            reg.after_step(self.model, 1, 100, 5e-5)
        return time.perf_counter() - started


def speed(methods: list[str], reps: int, shape: tuple[int, int]) -> dict[str, list[float]]:
    torch.manual_seed(0)
    spec = TaskSpec(
        name="bench",
        head="classification",
        source=SourceSpec(kind="files"),
        columns=ColumnsSpec(text="t", label="y"),
        labels=["a", "b"],
    )
    base = MultiTaskModel(load_encoder("minilm"), [spec], pooling="cls")
    batch = random_batch(*shape, base.encoder.config.vocab_size)
    trainees = {m: Trainee(m, base, spec, batch) for m in methods}
    for trainee in trainees.values():  # warm-up: allocator, kernels, first touch of copies
        trainee.step(), trainee.step()
    times: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(reps):
        order = methods[rep % len(methods) :] + methods[: rep % len(methods)]  # rotate who goes first
        for method in order:
            times[method].append(trainees[method].step())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--work", type=Path, default=None, help="runs already finished here are reused")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    methods = args.only or METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown or set(METHODS) - {"none", "child_tuning_f"} != set(available()):
        sys.exit(f"error: unknown methods {unknown} or METHODS out of date with {available()}")
    methods = ["none", *[m for m in methods if m != "none"]]  # the baseline is always measured

    times = speed(methods, args.reps, (32, 128))
    base_s = statistics.median(times["none"])
    rows = {
        m: {"step_s": statistics.median(t), "step_ratio": statistics.median(t) / base_s}
        for m, t in times.items()
    }
    if not args.skip_quality:
        work = args.work or Path(tempfile.mkdtemp(prefix="bench_regularizers."))
        for method in methods:
            rows[method].update(quality(method, args.steps, work))
            print(f"{method}: {rows[method]}", flush=True)

    print(
        f"\nrt_polarity, MiniLM-L6, seed 42, {args.steps} steps x 32; step time: 32x128 batch, median of "
        f"{args.reps} interleaved reps, {torch.get_num_threads()} threads"
    )
    print(
        f"{'regularizer':<16} {'val acc':>8} {'final loss':>11} {'step s':>8} {'x none':>7} "
        f"{'run wall s':>11}"
    )
    for method, row in rows.items():
        acc = f"{row['accuracy']:.4f}" if "accuracy" in row else "-"
        loss = f"{row['final_loss']:.4f}" if "final_loss" in row else "-"
        wall = f"{row['wall_s']:.0f}" if "wall_s" in row else "-"
        print(f"{method:<16} {acc:>8} {loss:>11} {row['step_s']:>8.3f} {row['step_ratio']:>7.2f} {wall:>11}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
