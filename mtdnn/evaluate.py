"""`python -m mtdnn.evaluate run_dir=DIR [split=validation] [task=a,b] [checkpoint=best|last|DIR]`

Re-scores a saved run on a split of each task and writes eval/<checkpoint>_<split>.json in the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from mtdnn.core.atomic import write_json
from mtdnn.core.commands import argv, cli_errors, parse_args
from mtdnn.core.distributed import pick_device
from mtdnn.core.errors import raise_if
from mtdnn.data.loading import TaskData, check_columns, check_rows, encode_splits, load_raw
from mtdnn.evaluation.engine import collator_for, evaluate_split, model_device
from mtdnn.kinds.metrics import show
from mtdnn.serving.loading import open_run, select_tasks


@dataclass
class EvaluateConfig:
    run_dir: str = MISSING
    split: str = "validation"
    task: Optional[str] = None  # comma-separated subset of the run's tasks
    checkpoint: str = "best"  # best | best_<task> | last | a checkpoint folder
    batch_size: int = 128
    bf16: bool = False
    device: str = "auto"
    backend: str = "auto"  # torch | onnx | onnx-int8 (a folder from mtdnn.export format=onnx)


def evaluate(cfg: EvaluateConfig) -> dict[str, dict[str, float]]:
    run = open_run(cfg.run_dir, cfg.checkpoint, pick_device(cfg.device), cfg.backend)
    device = model_device(run.model)
    results, problems = {}, []
    for spec in select_tasks(run, cfg.task):
        if cfg.split not in spec.source.splits and cfg.split not in spec.source.split_fractions:
            problems.append(f"split: task {spec.name} has no '{cfg.split}' split")
            continue
        data = TaskData(spec, {cfg.split: load_raw(spec)[cfg.split]})
        raise_if(check_columns(spec, data.raw) or check_rows(data), "the data has problems")
        encode_splits(data, run.tokenizer)
        collate = collator_for(spec, run.tokenizer, 8)
        _, scores = evaluate_split(
            run.model,
            spec,
            data.raw[cfg.split],
            data.encoded[cfg.split],
            collate,
            cfg.batch_size,
            device,
            cfg.bf16,
        )
        if scores is None:
            problems.append(f"split: task {spec.name}'s '{cfg.split}' split has no labels; use mtdnn.predict")
            continue
        results[spec.name] = scores
    raise_if(problems, "cannot evaluate")
    label = (
        cfg.checkpoint
        if cfg.checkpoint in ("best", "last") or cfg.checkpoint.startswith("best_")
        else "custom"
    )
    write_json(run.run_dir / "eval" / f"{label}_{cfg.split}.json", results)
    return results


@cli_errors
def main() -> None:
    results = evaluate(parse_args(EvaluateConfig, argv()))
    for task, scores in results.items():
        print(f"{task:<16} " + "  ".join(f"{m}={show(v)}" for m, v in scores.items()))


if __name__ == "__main__":
    main()
