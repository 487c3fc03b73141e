"""Building a run from its configuration: the output folder, the checked data, the tokenizer and encoder
(fresh, from a saved run, or cut from a teacher)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from mtdnn import kinds
from mtdnn.core.errors import MtdnnError, raise_if
from mtdnn.data.loading import TaskData, check_columns, check_rows, empty_split_problems, load_raw
from mtdnn.data.tasks import TaskSpec
from mtdnn.distill import shallow_student
from mtdnn.model.encoders import (
    build_encoder,
    build_tokenizer,
    pretrained_source,
    saved_tokenizer_and_encoder,
)
from mtdnn.runs.checkpoints import list_checkpoints


def prepare_output_dir(output_dir: Path, resuming: bool) -> None:
    """Never write a new run over an existing one: that would lose its checkpoints and metrics."""
    if (
        output_dir.exists()
        and not resuming
        and (
            list_checkpoints(output_dir)
            or (output_dir / "best.json").exists()
            or (output_dir / "summary.json").exists()
        )
    ):
        raise MtdnnError(
            f"output_dir: {output_dir} already holds a run; pass resume=auto to continue it "
            "or choose another output_dir"
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise MtdnnError(f"output_dir: cannot write to {output_dir}: {err.strerror}") from None


def prepare_data(specs: list[TaskSpec]) -> dict[str, TaskData]:
    """Load every split of every task and check all columns and rows; one error lists every problem."""
    tasks, problems = {}, []
    for spec in specs:
        try:
            data = TaskData(spec, load_raw(spec))
        except MtdnnError as err:
            problems += err.problems
            continue
        column_problems = empty_split_problems(spec, data.raw) or check_columns(spec, data.raw)
        problems += column_problems or check_rows(data)
        tasks[spec.name] = data
    raise_if(problems, "the data has problems")
    return tasks


def train_texts(tasks: dict[str, TaskData]):
    """Every training text, for learning a tiny tokenizer (rows are in each kind's layout by now)."""
    for data in tasks.values():
        yield from kinds.of(data.spec).train_texts(data.spec, data.raw["train"])


def tokenizer_and_encoder(cfg: DictConfig, tasks: dict[str, TaskData], saved_run: Path | None):
    """(tokenizer, encoder, head weights to start from): a saved run's architecture (resume, init_from;
    weights come later), a student cut from a teacher, or the configured pretrained encoder."""
    if saved_run is not None:
        return (*saved_tokenizer_and_encoder(saved_run), {})
    if cfg.distill.mode == "ensemble" and cfg.distill.student_from_teacher:
        return shallow_student(
            cfg.distill.teachers[0], cfg.distill.teacher_checkpoint, cfg.distill.keep_every
        )
    source = pretrained_source(cfg.encoder)
    tokenizer = build_tokenizer(cfg.encoder, source, train_texts(tasks))
    return tokenizer, build_encoder(cfg.encoder, source, len(tokenizer)), {}


def quiet_library_progress_bars() -> None:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
