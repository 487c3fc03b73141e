"""`format=onnx`: one task of a run as an ONNX graph (torch.onnx's dynamo exporter), optionally int8 (ONNX
Runtime's dynamic quantization), in a folder that `mtdnn.serving.onnx` serves as a run folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from mtdnn.core.atomic import write_json
from mtdnn.core.errors import MtdnnError
from mtdnn.core.file_faults import root_cause
from mtdnn.data.tasks import TaskSpec
from mtdnn.export.card import write_card
from mtdnn.kinds.collate import MODEL_INPUTS
from mtdnn.serving.onnx import FILES, META

SUMMARY = "an ONNX graph of the encoder and the task's head for ONNX Runtime (quantize=int8: also int8)"
QUANTIZES = ("int8",)


def write(run, spec: TaskSpec, cfg, staging: Path) -> None:
    export_onnx(run, spec, staging, cfg.quantize)
    copy_run_files(run.run_dir, spec, staging, run.tokenizer)
    write_card(run, spec, cfg, staging)


class TaskGraph(nn.Module):
    """The model's forward pass for one task with positional tensor inputs, as the exporter wants it."""

    def __init__(self, model: nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        return self.model(self.task, input_ids=input_ids, attention_mask=attention_mask, **extra)


def export_onnx(run, spec: TaskSpec, staging: Path, quantize: str | None) -> None:
    """Write model.onnx (and model_int8.onnx) for `spec`'s task of `run` into `staging`."""
    sample = run.tokenizer(
        ["a short example text", "and another, a little longer than the first one"],
        ["a second text", "pair"],
        padding=True,
        return_tensors="pt",
    )
    inputs = [name for name in MODEL_INPUTS if name in sample]
    graph = TaskGraph(run.model.cpu().eval(), spec.name).eval()
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    try:
        torch.onnx.export(
            graph,
            tuple(sample[n] for n in inputs),
            str(staging / FILES["onnx"]),
            dynamo=True,
            input_names=inputs,
            output_names=["output"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in inputs},
            verbose=False,
        )
    except Exception as err:  # noqa: BLE001  (the exporter raises many types; all mean "this model cannot")
        raise MtdnnError(f"export: ONNX export of {spec.name} failed: {root_cause(err)}") from None
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # per channel: one scale per output row; per tensor cost the 3-layer rt_polarity student 0.6 points of
        # accuracy (0.7744 vs fp32's 0.7806; per channel: 0.7806) at the same speed
        quantize_dynamic(
            str(staging / FILES["onnx"]),
            str(staging / FILES["onnx-int8"]),
            weight_type=QuantType.QInt8,
            per_channel=True,
        )
    write_json(
        staging / META,
        {
            "task": spec.name,
            "inputs": inputs,
            "files": [f for f in FILES.values() if (staging / f).is_file()],
        },
    )


def copy_run_files(run_dir: Path, spec: TaskSpec, staging: Path, tokenizer) -> None:
    """What reading the folder as a run needs besides the graph: the task spec, config and tokenizer."""
    (staging / "tasks").mkdir(parents=True, exist_ok=True)
    shutil.copy(run_dir / "tasks" / f"{spec.name}.yaml", staging / "tasks" / f"{spec.name}.yaml")
    shutil.copy(run_dir / "config.yaml", staging / "config.yaml")
    tokenizer.save_pretrained(str(staging / "tokenizer"))
