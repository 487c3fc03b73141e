"""`python -m mtdnn.evaluate [run_dir=]DIR [split=validation] [task=a,b] [checkpoint=best|last|DIR]
[data=x,y]`

Re-scores a saved run on a split of each task and writes eval/<checkpoint>_<split>.json in the run folder.
With `data=`, one trained task (task=T) is scored on other tasks' data instead (out-of-domain evaluation: the
same head kind and labels, read through each other task's source and columns; results named T@other).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from mtdnn.core.atomic import write_json
from mtdnn.core.commands import argv, cli_errors, parse_args
from mtdnn.core.distributed import pick_device
from mtdnn.core.errors import MtdnnError, raise_if
from mtdnn.data.loading import TaskData, check_columns, check_rows, encode_splits, load_raw
from mtdnn.data.tasks import load_tasks
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
    data: Optional[str] = None  # comma-separated tasks whose data the one selected task is scored on
    task_dirs: Optional[str] = None  # comma-separated folders of task YAMLs for `data` (besides the run's)


def evaluate(cfg: EvaluateConfig) -> dict[str, dict[str, float]]:
    run = open_run(cfg.run_dir, cfg.checkpoint, pick_device(cfg.device), cfg.backend)
    device = model_device(run.model)
    results, problems = {}, []
    for label, spec in scored_specs(run, cfg):
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
        results[label] = scores
    raise_if(problems, "cannot evaluate")
    label = (
        cfg.checkpoint
        if cfg.checkpoint in ("best", "last") or cfg.checkpoint.startswith("best_")
        else "custom"
    )
    write_json(run.run_dir / "eval" / f"{label}_{cfg.split}.json", results)
    return results


def scored_specs(run, cfg: EvaluateConfig) -> list[tuple[str, object]]:
    """(label, spec) of each selected task, or with `data=` of the one selected task read from each other
    task's data (labelled task@other)."""
    selected = select_tasks(run, cfg.task)
    if cfg.data is None:
        return [(spec.name, spec) for spec in selected]
    if len(selected) != 1:
        raise MtdnnError(
            f"task: data= scores one trained task on other data; name one of {', '.join(run.specs)}"
        )
    trained = selected[0]
    dirs = [*run.config.get("task_dirs", []), *(cfg.task_dirs.split(",") if cfg.task_dirs else [])]
    others = load_tasks([n.strip() for n in cfg.data.split(",") if n.strip()], dirs)
    problems = [
        f"data: {o.name} is a {o.head} task with labels {o.labels}; {trained.name} is {trained.head} with "
        f"labels {trained.labels}"
        for o in others
        if o.head != trained.head or o.labels != trained.labels
    ]
    raise_if(problems, "cannot score on that data")
    return [
        (f"{trained.name}@{o.name}", trained.with_changes(source=o.source, columns=o.columns, file=o.file))
        for o in others
    ]


@cli_errors
def main() -> None:
    cfg = parse_args(EvaluateConfig, argv("run_dir"))
    results = evaluate(cfg)
    print(f"{cfg.run_dir}: checkpoint {cfg.checkpoint}, {cfg.split} split")
    for task, scores in results.items():
        print(f"{task:<16} " + "  ".join(f"{m}={show(v)}" for m, v in scores.items()))


if __name__ == "__main__":
    main()
