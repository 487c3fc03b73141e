"""What a run reports while it trains: TensorBoard scalars, metrics.json, a progress bar and log lines."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch

from mtdnn.core.atomic import write_atomic, write_json
from mtdnn.kinds.metrics import show

log = logging.getLogger("mtdnn")


class LossMeter:
    """Sums per-task losses on the device; read only at logging steps (no host sync in the hot loop)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, key: str, loss: torch.Tensor) -> None:
        self.sums[key] = self.sums[key] + loss if key in self.sums else loss.clone()
        self.counts[key] += 1

    def flush(self) -> dict[str, float]:
        means = {t: (s / self.counts[t]).item() for t, s in self.sums.items()}
        self.sums.clear()
        self.counts.clear()
        return means


class Tracker:
    def __init__(self, run_dir: Path, total_steps: int, start_step: int, progress_bar: bool):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.run_dir = run_dir
        self.tb = SummaryWriter(str(run_dir / "tb"))
        # disable=None: no bar when stderr is not a terminal (a log file gets no "\r" lines)
        self.bar = tqdm(
            total=total_steps,
            initial=start_step,
            disable=None if progress_bar else True,
            desc="train",
            dynamic_ncols=True,
        )
        # log lines (evaluations, warnings) are printed above the bar, never into it
        self.redirect = logging_redirect_tqdm(loggers=[logging.getLogger()])
        self.redirect.__enter__()
        path = run_dir / "metrics.json"
        self.evaluations: list[dict] = json.loads(path.read_text()) if path.is_file() else []
        self.log_path = run_dir / "train_log.jsonl"
        self._trim_log(start_step)

    def _trim_log(self, start_step: int) -> None:
        """A resumed run repeats the steps after its checkpoint: drop what the crashed run logged for them."""
        if not self.log_path.is_file():
            return
        lines = [
            line
            for line in self.log_path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= start_step
        ]
        write_atomic(self.log_path, "".join(line + "\n" for line in lines))

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def train_scalars(
        self, step: int, terms: dict[str, float], lr: float, grad_norm: float, stats: dict[str, float]
    ) -> None:
        """`terms` are '<term>/<task>' means (loss/<task>, smart_adv/<task>, ...); `stats` run-wide
        counters."""
        for name, value in {**terms, **stats}.items():
            self.tb.add_scalar(f"train/{name}", value, step)
        # repr-exact floats: resume is checked on it
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(
                json.dumps({"step": step, "lr": lr, "grad_norm": grad_norm, **terms, **stats}) + "\n"
            )
        self.tb.add_scalar("train/lr", lr, step)
        self.tb.add_scalar("train/grad_norm", grad_norm, step)
        losses = [v for k, v in terms.items() if k.startswith("loss/")]
        self.bar.set_postfix({"loss": f"{sum(losses) / max(1, len(losses)):.4f}", "lr": f"{lr:.2e}"})

    def evaluation(
        self, step: int, epoch: float, split: str, results: dict[str, dict[str, float]], train_seconds: float
    ) -> None:
        """`train_seconds`: time spent in training steps so far (what time-to-accuracy is measured in)."""
        # a resumed run re-evaluates steps after its checkpoint: keep one record per (step, split)
        self.evaluations = [e for e in self.evaluations if (e["step"], e["split"]) != (step, split)]
        record = {"step": step, "epoch": round(epoch, 4), "train_seconds": round(train_seconds, 3)}
        self.evaluations.append({**record, "split": split, "metrics": results})
        write_json(self.run_dir / "metrics.json", self.evaluations)
        for task, scores in results.items():
            for metric, value in scores.items():
                self.tb.add_scalar(f"{split}/{task}/{metric}", value, step)
        text = "  ".join(
            f"{t}: " + ", ".join(f"{m}={show(v)}" for m, v in s.items()) for t, s in results.items()
        )
        self.bar.write(f"step {step} (epoch {epoch:.2f}) {split}  {text}")

    def close(self) -> None:
        self.redirect.__exit__(None, None, None)
        self.bar.close()
        self.tb.close()


class SilentTracker:
    """What ranks other than 0 track under torchrun: nothing (rank 0 writes the logs)."""

    def step(self, n: int = 1) -> None:
        return None

    def train_scalars(self, *args, **kwargs) -> None:
        return None

    def evaluation(self, *args, **kwargs) -> None:
        return None

    def close(self) -> None:
        return None
