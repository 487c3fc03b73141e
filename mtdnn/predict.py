"""`python -m mtdnn.predict run_dir=DIR task=NAME [split=test | input=FILE] [out=FILE.jsonl]
[format=jsonl|glue|superglue]`

Writes one JSON line per input row: id, the input text(s), the predicted label name (classification) or
value (regression), and the scores. `input` may be any csv/tsv/json/jsonl/parquet file with the task's text
columns. With format=glue or superglue, the file the benchmark's server expects instead (the task YAML's
`submission:` block; default out: <run_dir>/submission/<its file>). An existing output file is never
overwritten unless overwrite=true.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import MISSING

from mtdnn.core.commands import argv, cli_errors, parse_args
from mtdnn.core.distributed import pick_device
from mtdnn.core.errors import MtdnnError, raise_if
from mtdnn.data.loading import load_raw
from mtdnn.data.tasks import SourceSpec, TaskSpec
from mtdnn.evaluation.engine import write_records
from mtdnn.serving.loading import open_run, select_tasks
from mtdnn.serving.predictor import records_of
from mtdnn.serving.submission import FORMATS, submission_problems, write_submission


@dataclass
class PredictConfig:
    run_dir: str = MISSING
    task: Optional[str] = None  # required when the run trained several tasks
    split: str = "test"
    input: Optional[str] = None  # a file to predict instead of a split of the task's source
    out: Optional[str] = None  # default: <run_dir>/predictions/<task>_<split or input name>.jsonl
    overwrite: bool = False
    checkpoint: str = "best"
    batch_size: int = 128
    bf16: bool = False
    device: str = "auto"
    format: str = "jsonl"  # jsonl (records) | glue | superglue (the benchmark's submission file)
    backend: str = "auto"  # torch | onnx | onnx-int8 (a folder from mtdnn.export format=onnx)


def input_spec(spec: TaskSpec, path: str) -> TaskSpec:
    """The task with its source swapped for one local file, read as the task's test split."""
    file = Path(path).expanduser().resolve()
    return spec.with_changes(
        source=SourceSpec(kind="files", splits={"test": str(file)}), file=str(file), on_bad_row="error"
    )


def predict(cfg: PredictConfig) -> Path:
    run = open_run(cfg.run_dir, cfg.checkpoint, pick_device(cfg.device), cfg.backend)
    tasks = select_tasks(run, cfg.task)
    if len(tasks) != 1:
        raise MtdnnError(f"task: this run trained {', '.join(run.specs)}; name one with task=...")
    if cfg.format not in ("jsonl", *FORMATS):
        raise MtdnnError(f"format: must be jsonl, {' or '.join(FORMATS)}, got '{cfg.format}'")
    if cfg.format != "jsonl":
        raise_if(submission_problems(tasks[0], cfg.format), "cannot write a submission file")
    spec = input_spec(tasks[0], cfg.input) if cfg.input else tasks[0]
    split = "test" if cfg.input else cfg.split
    stem = Path(cfg.input).stem if cfg.input else split
    default = (
        run.run_dir / "submission" / spec.submission.file
        if cfg.format != "jsonl"
        else run.run_dir / "predictions" / f"{spec.name}_{stem}.jsonl"
    )
    out = Path(cfg.out).expanduser() if cfg.out else default
    if out.exists() and not cfg.overwrite:
        raise MtdnnError(f"out: {out} already exists; pass overwrite=true or another out=")
    raw = load_raw(spec)
    if split not in raw:
        raise MtdnnError(f"split: task {spec.name} has no '{split}' split (it has {', '.join(raw)})")
    records = records_of(run, spec, split, raw[split], cfg.batch_size, cfg.bf16)
    if cfg.format != "jsonl":
        return write_submission(out, spec, records)
    write_records(out, spec, records)
    return out


@cli_errors
def main() -> None:
    print(f"wrote {predict(parse_args(PredictConfig, argv()))}")


if __name__ == "__main__":
    main()
