"""`python -m mtdnn.predict [run_dir=]DIR task=NAME [split=test | input=FILE] [out=FILE.jsonl]
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
    input_format: Optional[str] = None  # csv | tsv | json | jsonl | parquet, when the file's suffix says none
    input_encoding: Optional[str] = None  # e.g. latin-1, when the file is not utf-8
    out: Optional[str] = None  # default: <run_dir>/predictions/<task>_<split or input name>.jsonl
    overwrite: bool = False
    checkpoint: str = "best"
    batch_size: int = 128
    bf16: bool = False
    device: str = "auto"
    format: str = "jsonl"  # jsonl (records) | glue | superglue (the benchmark's submission file)
    backend: str = "auto"  # torch | onnx | onnx-int8 (a folder from mtdnn.export format=onnx)


# the task-YAML settings that data loading names, and predict's own for an input file
INPUT_SETTINGS = {
    "source.read_options.encoding": "input_encoding",
    "source.format": "input_format",
    "source.splits.test": "input",
}


def input_spec(spec: TaskSpec, cfg: PredictConfig) -> TaskSpec:
    """The task with its source swapped for one local file, read as the task's test split."""
    file = Path(cfg.input).expanduser().resolve()
    options = {"encoding": cfg.input_encoding} if cfg.input_encoding else {}
    source = SourceSpec(
        kind="files", splits={"test": str(file)}, format=cfg.input_format, read_options=options
    )
    return spec.with_changes(source=source, file=str(file), on_bad_row="error")


def load_input(spec: TaskSpec, cfg: PredictConfig) -> dict:
    """The rows to predict; a problem with an input file names predict's settings, not the task YAML's."""
    try:
        return load_raw(spec)
    except MtdnnError as err:
        if not cfg.input:
            raise
        problems = []
        for problem in err.problems:
            for yaml_setting, own in INPUT_SETTINGS.items():
                problem = problem.replace(yaml_setting, own)
            problems.append(problem)
        raise MtdnnError(problems) from None


def predict(cfg: PredictConfig) -> Path:
    run = open_run(cfg.run_dir, cfg.checkpoint, pick_device(cfg.device), cfg.backend)
    tasks = select_tasks(run, cfg.task)
    if len(tasks) != 1:
        raise MtdnnError(f"task: this run trained {', '.join(run.specs)}; name one with task=...")
    if cfg.format not in ("jsonl", *FORMATS):
        raise MtdnnError(f"format: must be jsonl, {' or '.join(FORMATS)}, got '{cfg.format}'")
    if cfg.format != "jsonl":
        raise_if(submission_problems(tasks[0], cfg.format), "cannot write a submission file")
    spec = input_spec(tasks[0], cfg) if cfg.input else tasks[0]
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
    raw = load_input(spec, cfg)
    if split not in raw:
        raise MtdnnError(f"split: task {spec.name} has no '{split}' split (it has {', '.join(raw)})")
    records = records_of(run, spec, split, raw[split], cfg.batch_size, cfg.bf16)
    if cfg.format != "jsonl":
        return write_submission(out, spec, records)
    write_records(out, spec, records)
    return out


@cli_errors
def main() -> None:
    print(f"wrote {predict(parse_args(PredictConfig, argv('run_dir')))}")


if __name__ == "__main__":
    main()
