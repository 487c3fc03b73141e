"""ONNX export of one task of a run, int8 dynamic quantization, and an ONNX Runtime backend for predict and
the Python API.

`python -m mtdnn.export RUN task=NAME out=DIR format=onnx [quantize=int8]` writes

    model.onnx        the encoder + the task's head, raw head outputs (logits, start/end, token logits,
                      value), dynamic batch and sequence axes (torch.onnx's dynamo exporter)
    model_int8.onnx   with quantize=int8: ONNX Runtime's dynamic quantization (int8 weights of every MatMul,
                      one scale per output channel)
    tokenizer/  tasks/<name>.yaml  config.yaml  onnx.json  README.md (model card)

Every head kind exports, adapter runs included (the graph holds whatever the forward pass computes). The
folder is a run folder for `mtdnn.predict run_dir=DIR [backend=onnx|onnx-int8]` and `mtdnn.load_run(DIR)`:
the same decoding (span windows, tagging word alignment, ranking groups) runs on ONNX Runtime's outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mtdnn.core.errors import MtdnnError, reading_saved

META = "onnx.json"
FILES = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}


class OnnxModel(nn.Module):
    """An ONNX Runtime session behind MultiTaskModel's call (`model(task, **batch) -> raw outputs`); a graph
    of several tasks gives each task's head output (output i is task i's)."""

    def __init__(self, path: Path, tasks: list[str], inputs: list[str]):
        super().__init__()
        import onnxruntime as ort

        with reading_saved(path):  # a missing or truncated graph, or its external .onnx.data
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.tasks, self.inputs = tasks, inputs
        self.outputs = [o.name for o in self.session.get_outputs()]

    def forward(self, task: str, **batch: torch.Tensor) -> torch.Tensor:
        if task not in self.tasks:
            raise MtdnnError(f"task: this ONNX model holds {', '.join(self.tasks)}, not {task}")
        feed = {name: batch[name].cpu().numpy().astype("int64") for name in self.inputs}
        wanted = self.outputs[self.tasks.index(task)]  # ONNX Runtime computes only what this output needs
        return torch.from_numpy(self.session.run([wanted], feed)[0])


def is_onnx_folder(folder: Path) -> bool:
    return (folder / META).is_file()


def load_onnx_model(folder: Path, backend: str) -> OnnxModel:
    with reading_saved(folder / META):
        meta = json.loads((folder / META).read_text())
        files, inputs = list(meta["files"]), list(meta["inputs"])
        tasks = [str(t) for t in meta.get("tasks") or [meta["task"]]]  # older exports name one task
    name = FILES.get("onnx" if backend == "auto" else backend)
    if name is None or name not in files:
        raise MtdnnError(
            f"backend: {folder} holds {', '.join(files)}; backend={backend} needs "
            f"{name or 'one of ' + ', '.join(FILES)} (export with quantize=int8 for onnx-int8)"
        )
    return OnnxModel(folder / name, tasks, inputs)
