"""The toolkit against the HF Trainer on the same data, encoder and hyperparameters: time to the same
validation accuracy, examples per second, peak memory, in one run.

    python scripts/bench_trainer.py [--epochs 1] [--eval-every 32] [--json trainer.json]

Arms, each in its own process (so each has its own peak memory), one after the other:
  hf_defaults     the HF Trainer as run_glue.py runs it: every row padded to max_seq_length (128)
  hf_grouped      the HF Trainer with train_sampling_strategy=group_by_length and dynamic padding
                  (run_glue's --pad_to_max_length False --group_by_length)
  toolkit         `python -m mtdnn.train task=rt_polarity encoder=minilm` (length buckets, padding to a
                  multiple of 8), through mtdnn.train.run
  toolkit_compile the same with trainer.compile=true

Same rows (rt_polarity's train and validation splits), the same MiniLM-L6 weights, batch 32, AdamW at 5e-5
for encoder and head, weight decay 0.01, 10% linear warmup then linear decay, gradient clipping at 1.0,
seed 0, validation every --eval-every steps. The heads differ as a user gets them: the HF model's
BertForSequenceClassification (pooler + linear) against the toolkit's mean-pooled classification head.

Time is training time only (evaluation and checkpoints excluded) from the first step. The target is the
lowest of the arms' best validation accuracies, so every arm reaches it; the table gives each arm's
training time until its first evaluation at or above the target, and the speed-up against hf_defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASK = "rt_polarity"
ARMS = ("hf_defaults", "hf_grouped", "toolkit", "toolkit_compile")
LR, BATCH, EVAL_BATCH, MAX_LENGTH, WARMUP, DECAY, SEED = 5e-5, 32, 128, 128, 0.1, 0.01, 0


def peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM, which starts afresh at exec. (ru_maxrss carries the parent's peak
    across fork + exec: an arm started by scripts/bench.py would report bench.py's own memory.)"""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- the HF Trainer arms


def hf_arm(grouped: bool, epochs: float, eval_every: int, out: Path) -> dict:
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from mtdnn.data.tasks import load_tasks
    from mtdnn.model.encoders import pretrained_source
    from mtdnn.training.build import prepare_data

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench import encoder_config

    (spec,) = load_tasks(["rt_polarity"])
    data = prepare_data([spec])[spec.name]
    source = pretrained_source(encoder_config("minilm"))
    tokenizer = AutoTokenizer.from_pretrained(source)
    labels = {name: i for i, name in enumerate(spec.labels)}

    def encode(rows):  # run_glue's preprocess_function: pad to max_seq_length unless grouping
        padding = False if grouped else "max_length"
        out = tokenizer(rows[spec.columns.text], padding=padding, max_length=MAX_LENGTH, truncation=True)
        out["label"] = [labels[str(v)] for v in rows[spec.columns.label]]
        return out

    splits = {
        name: data.raw[name].map(encode, batched=True, remove_columns=data.raw[name].column_names)
        for name in ("train", "validation")
    }
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=len(labels))
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=EVAL_BATCH,
        learning_rate=LR,
        weight_decay=DECAY,
        warmup_steps=WARMUP,
        num_train_epochs=epochs,
        max_grad_norm=1.0,
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=SEED,
        use_cpu=True,
        train_sampling_strategy="group_by_length" if grouped else "random",
    )
    clock = TrainingClock()

    class Timed(Trainer):
        def evaluate(self, *a, **k):  # evaluation time is not training time
            clock.pause()
            try:
                return super().evaluate(*a, **k)
            finally:
                clock.resume()

    class Record(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock.resume()

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            clock.evaluation(state.global_step, metrics["eval_accuracy"])

    def accuracy(pred) -> dict:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    trainer = Timed(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=DataCollatorWithPadding(tokenizer) if grouped else default_data_collator,
        compute_metrics=accuracy,
        callbacks=[Record()],
    )
    trainer.train()
    clock.pause()
    return clock.result(len(splits["train"]), epochs)


class TrainingClock:
    """Training seconds with evaluations paused out, and the accuracy at each evaluation."""

    def __init__(self):
        self.seconds, self.since, self.evaluations = 0.0, None, []

    def resume(self) -> None:
        self.since = time.perf_counter()

    def pause(self) -> None:
        if self.since is not None:
            self.seconds += time.perf_counter() - self.since
            self.since = None

    def evaluation(self, step: int, accuracy: float) -> None:
        self.evaluations.append({"step": step, "train_seconds": self.seconds, "accuracy": accuracy})

    def result(self, rows: int, epochs: float) -> dict:
        return {"train_seconds": self.seconds, "train_rows": rows * epochs, "evaluations": self.evaluations}


# ---------------------------------------------------------------- the toolkit arms


def toolkit_arm(compiled: bool, epochs: float, eval_every: int, out: Path) -> dict:
    from hydra import compose, initialize_config_dir

    from mtdnn.core.paths import conf_dir
    from mtdnn.train import run

    overrides = [
        "task=rt_polarity",
        "encoder=minilm",
        f"trainer.epochs={epochs}",
        f"trainer.lr={LR}",
        f"trainer.head_lr={LR}",
        f"trainer.batch_size={BATCH}",
        f"trainer.eval_batch_size={EVAL_BATCH}",
        f"trainer.warmup_ratio={WARMUP}",
        f"trainer.weight_decay={DECAY}",
        f"trainer.eval_every={eval_every}",
        "trainer.progress_bar=false",
        "trainer.keep_last=1",
        "predict_test=false",
        f"seed={SEED}",
        f"trainer.compile={str(compiled).lower()}",
    ]
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        summary = run(compose("train", overrides=overrides), out)
    metrics = json.loads((out / "metrics.json").read_text())
    evaluations = [
        {"step": e["step"], "train_seconds": e["train_seconds"], "accuracy": e["metrics"][TASK]["accuracy"]}
        for e in metrics
        if e["split"] == "validation"
    ]
    rows = summary["tasks"]["rt_polarity"]["examples_seen"]
    return {"train_seconds": summary["train_seconds"], "train_rows": rows, "evaluations": evaluations}


def one_arm(arm: str, epochs: float, eval_every: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"mtdnn-bench-{arm}-"))
    if arm.startswith("hf"):
        result = hf_arm(arm == "hf_grouped", epochs, eval_every, out)
    else:
        result = toolkit_arm(arm == "toolkit_compile", epochs, eval_every, out)
    return {**result, "peak_rss_mb": peak_rss_mb(), "peak_rss": "VmHWM"}


# ---------------------------------------------------------------- the comparison


def time_to(target: float, evaluations: list[dict]) -> float | None:
    return next((e["train_seconds"] for e in evaluations if e["accuracy"] >= target), None)


def compare(results: dict[str, dict]) -> dict:
    target = min(max(e["accuracy"] for e in r["evaluations"]) for r in results.values())
    base = time_to(target, results["hf_defaults"]["evaluations"]) if "hf_defaults" in results else None
    table = {}
    for arm, r in results.items():
        reached = time_to(target, r["evaluations"])
        table[arm] = {
            "seconds_to_target": reached,
            "speedup_to_target": base / reached if base and reached else None,
            "best_accuracy": max(e["accuracy"] for e in r["evaluations"]),
            "examples_per_second": r["train_rows"] / r["train_seconds"],
            # reports made before the fix measured ru_maxrss, which holds a parent process's peak
            "peak_rss_mb": r["peak_rss_mb"] if r.get("peak_rss") == "VmHWM" else None,
        }
    return {"target_accuracy": target, "arms": table}


def print_table(comparison: dict, threads: int) -> None:
    print(
        f"\nrt_polarity, MiniLM-L6, batch {BATCH}, lr {LR}, {threads} threads; target accuracy = "
        f"{comparison['target_accuracy']:.4f} (the lowest arm's best)"
    )
    head = f"{'s to target':>11} {'speed-up':>9} {'best acc':>9} {'ex/s':>7} {'peak RSS MB':>12}"
    print(f"  {'arm':<16} {head}")
    for arm, r in comparison["arms"].items():
        reached = f"{r['seconds_to_target']:.1f}" if r["seconds_to_target"] else "never"
        speedup = f"{r['speedup_to_target']:.2f}x" if r["speedup_to_target"] else "-"
        print(
            f"  {arm:<16} {reached:>11} {speedup:>9} {r['best_accuracy']:>9.4f} "
            f"{r['examples_per_second']:>7.1f} {r['peak_rss_mb'] or float('nan'):>12.0f}"
        )


def side_by_side(epochs: float, eval_every: int, arms: tuple[str, ...] = ARMS) -> dict:
    """Every arm in a subprocess of this script, in order; their results and the comparison."""
    results = {}
    for arm in arms:
        command = [sys.executable, __file__, "--arm", arm, "--epochs", f"{epochs}"]
        done = subprocess.run(
            [*command, "--eval-every", f"{eval_every}"],
            env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            sys.exit(f"arm {arm} failed:\n{done.stderr[-3000:]}")
        results[arm] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{arm}: {results[arm]['train_seconds']:.1f} s training", file=sys.stderr, flush=True)
    return {"results": results, **compare(results)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--eval-every", type=int, default=32)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)  # one arm, in its own process
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(one_arm(args.arm, args.epochs, args.eval_every)))
        return
    import torch

    report = side_by_side(args.epochs, args.eval_every, tuple(args.arms))
    print_table(report, torch.get_num_threads())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
