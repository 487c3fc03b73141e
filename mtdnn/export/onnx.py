"""`format=onnx`: one task of a run, or several in one graph, as an ONNX graph (torch.onnx's dynamo
exporter), optionally int8 (ONNX Runtime's dynamic quantization), in a folder that `mtdnn.serving.onnx` serves
as a run folder."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from mtdnn.core.atomic import write_json
from mtdnn.core.errors import MtdnnError, quiet_logger
from mtdnn.core.file_faults import root_cause
from mtdnn.data.tasks import TaskSpec
from mtdnn.export.card import write_card
from mtdnn.kinds.collate import MODEL_INPUTS
from mtdnn.serving.onnx import FILES, META

SUMMARY = (
    "an ONNX graph of the encoder and the task's head for ONNX Runtime (task=a,b or all: one graph, the "
    "encoder once and every head; quantize=int8: also int8)"
)
QUANTIZES = ("int8",)


def write(run, spec: TaskSpec, cfg, staging: Path) -> None:
    write_tasks(run, [spec], cfg, staging)


def write_tasks(run, specs: list[TaskSpec], cfg, staging: Path) -> None:
    """Several tasks in one graph: a user serving them loads one ONNX Runtime session."""
    problems = [
        f"task: {s.name}'s head reads {', '.join(reads)} besides the encoder's inputs; export it alone"
        for s in specs
        if (reads := getattr(run.model.head(s.name), "reads", ())) and len(specs) > 1
    ]
    if problems:
        raise MtdnnError(problems)
    export_onnx(run, specs, staging, cfg.quantize)
    copy_run_files(run.run_dir, specs, staging, run.tokenizer)
    write_card(run, specs[0], cfg, staging)
    if len(specs) > 1:
        with (staging / "README.md").open("a", encoding="utf-8") as card:
            card.write(
                "\n## Tasks in this graph\n\nOne ONNX graph computes the shared encoder once and the head of "
                f"each of these tasks (output_i is task i's): {', '.join(s.name for s in specs)}. The card's "
                f"metrics above are {specs[0].name}'s.\n"
            )


class TasksGraph(nn.Module):
    """The model's forward pass for its tasks with positional tensor inputs, as the exporter wants it: the
    encoder once (once per task where per-task adapters change it) and a tuple of every task's raw output."""

    def __init__(self, model: nn.Module, tasks: list[str]):
        super().__init__()
        self.model, self.tasks = model, tasks

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        outputs, shared = [], None
        for task in self.tasks:
            if shared is None or self.model.adapters is not None:
                shared = self.model.encode(task, input_ids, attention_mask, token_type_ids)
            head = self.model.head(task)
            outputs.append(
                head(shared.last_hidden_state, attention_mask, getattr(shared, "pooler_output", None))
            )
        return tuple(outputs)


def export_onnx(run, specs: list[TaskSpec], staging: Path, quantize: str | None) -> None:
    """Write model.onnx (and model_int8.onnx) for `specs`' tasks of `run` into `staging`."""
    sample = run.tokenizer(
        ["a short example text", "and another, a little longer than the first one"],
        ["a second text", "pair"],
        padding=True,
        return_tensors="pt",
    )
    inputs = [name for name in MODEL_INPUTS if name in sample]
    tasks = [s.name for s in specs]
    graph = TasksGraph(run.model.cpu().eval(), tasks).eval()
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    outputs = ["output"] if len(tasks) == 1 else [f"output_{i}" for i in range(len(tasks))]
    try:
        with known_harmless_warnings_off():
            torch.onnx.export(
                graph,
                tuple(sample[n] for n in inputs),
                str(staging / FILES["onnx"]),
                dynamo=True,
                input_names=inputs,
                output_names=outputs,
                dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs},
                verbose=False,
            )
    except Exception as err:  # noqa: BLE001  (the exporter raises many types; all mean "this model cannot")
        raise MtdnnError(f"export: ONNX export of {', '.join(tasks)} failed: {root_cause(err)}") from None
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # per channel: one scale per output row; per tensor cost the 3-layer rt_polarity student 0.6 points of
        # accuracy (0.7744 vs fp32's 0.7806; per channel: 0.7806) at the same speed
        with known_harmless_warnings_off():
            quantize_dynamic(
                str(staging / FILES["onnx"]),
                str(staging / FILES["onnx-int8"]),
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
    write_json(
        staging / META,
        {
            "task": tasks[0],
            "tasks": tasks,
            "inputs": inputs,
            "files": [f for f in FILES.values() if (staging / f).is_file()],
        },
    )


@contextmanager
def known_harmless_warnings_off() -> Iterator[None]:
    """The exporter's and the quantizer's routine notices (torchvision's ops not registered, axis renaming,
    "consider pre-processing") are not the user's business; MTDNN_VERBOSE=1 shows them."""
    if os.environ.get("MTDNN_VERBOSE") == "1":
        yield
        return
    with warnings.catch_warnings(), quiet_logger("torch.onnx"), quiet_logger(""):
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def copy_run_files(run_dir: Path, specs: list[TaskSpec], staging: Path, tokenizer) -> None:
    """What reading the folder as a run needs besides the graph: the tasks' specs, config and tokenizer."""
    (staging / "tasks").mkdir(parents=True, exist_ok=True)
    for spec in specs:
        shutil.copy(run_dir / "tasks" / f"{spec.name}.yaml", staging / "tasks" / f"{spec.name}.yaml")
    shutil.copy(run_dir / "config.yaml", staging / "config.yaml")
    tokenizer.save_pretrained(str(staging / "tokenizer"))
