"""Export formats: one module per format in this package, found without a central list (like the head
kinds).

    python -m mtdnn.export RUN_DIR task=NAME out=DIR [format=hf] [checkpoint=best] [overwrite=false]
                           [quantize=int8]

writes one task of a run in a format; the folder is written whole under a temporary name, then renamed, so
a failed export never leaves half a folder behind.

A module `mtdnn/export/<format>.py` (the format's name is the module's, with '-' for '_') provides
    SUMMARY                         one line for `--help` and the docs
    write(run, spec, cfg, staging)  write the task's folder into `staging` (a new, empty folder)
    write_tasks(run, specs, ...)    optional: several tasks in one folder (onnx: one graph; task=a,b or all)
    problems(run, spec, cfg)        optional: why this run or task cannot be written in this format
    MODEL_OF_ANY_KIND = True        optional: the format does not hold the task's head (peft: the adapter
                                    alone), so the head kind's `export_formats(spec)` is not consulted
    QUANTIZES = ("int8",)           optional: the values of `quantize=` the format takes
Shipped: hf (a transformers model folder), onnx (ONNX Runtime, optionally int8), sentence-transformers (a
bi-encoder task's embedding model), peft (a LoRA / IA3 task adapter); `card.py` writes the model card they
share.

May import: core, kinds, data, model, runs, evaluation, serving (a format writes a loaded run).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch
from omegaconf import MISSING

from mtdnn import kinds
from mtdnn.core import plugins
from mtdnn.core.errors import MtdnnError
from mtdnn.data.tasks import TaskSpec
from mtdnn.serving.loading import LoadedRun, open_run, select_tasks

BI = ", a bi-encoder: pair_encoding: bi"


@dataclass
class ExportConfig:
    run_dir: str = MISSING
    task: str = MISSING  # the task; with format=onnx also a,b,... or all: one graph serving each
    out: str = MISSING
    checkpoint: str = "best"
    overwrite: bool = False
    language: str = "en"  # the model card's language tag
    format: str = "hf"  # a module of mtdnn/export/ (hf, onnx, sentence-transformers, peft, ...)
    quantize: Optional[str] = None  # with a format that quantizes (onnx): int8 also writes model_int8.onnx


def available() -> list[str]:
    return [name.replace("_", "-") for name in plugins.names(__name__, "write")]


def format_module(name: str) -> ModuleType:
    if name not in available():
        raise MtdnnError(f"format: must be {', '.join(available()[:-1])} or {available()[-1]}, got '{name}'")
    return plugins.load(__name__, "write", name.replace("-", "_"))


def format_problems(fmt: ModuleType, run: LoadedRun, spec: TaskSpec, cfg: ExportConfig) -> list[str]:
    """Every reason the chosen format cannot write this task of this run."""
    problems = list(fmt.problems(run, spec, cfg)) if hasattr(fmt, "problems") else []
    supported = kinds.of(spec).export_formats(spec)
    if not getattr(fmt, "MODEL_OF_ANY_KIND", False) and cfg.format not in supported:
        problems.append(
            f"format: task {spec.name} ({spec.head}{BI if spec.pair_encoding == 'bi' else ''}) exports as "
            f"{' or '.join(f'format={f}' for f in supported)}, not {cfg.format}"
        )
    if cfg.quantize is not None and cfg.quantize not in getattr(fmt, "QUANTIZES", ()):
        problems.append(
            f"quantize: only int8, and only with format=onnx "
            f"(got quantize={cfg.quantize}, format={cfg.format})"
        )
    return problems


def export(cfg: ExportConfig) -> Path:
    fmt = format_module(cfg.format)
    run = open_run(cfg.run_dir, cfg.checkpoint, torch.device("cpu"))
    specs = select_tasks(run, None if cfg.task == "all" else cfg.task)
    if len(specs) != 1 and not hasattr(fmt, "write_tasks"):
        raise MtdnnError(
            f"task: format={cfg.format} writes one task's model; name one of {', '.join(run.specs)} "
            "(format=onnx holds several in one graph)"
        )
    spec = specs[0]
    out = Path(cfg.out).expanduser()
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise MtdnnError(f"out: {out} already exists and is not empty; pass overwrite=true or another out=")
    problems = [p for s in specs for p in format_problems(fmt, run, s, cfg)]
    if problems:
        raise MtdnnError(
            problems[0] if len(problems) == 1 else ["export: cannot write this format:", *problems]
        )
    staging = out.with_name(f".{out.name}.export")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if len(specs) == 1:
        fmt.write(run, spec, cfg, staging)
    else:
        fmt.write_tasks(run, specs, cfg, staging)
    if out.exists():  # written completely first: a failed export never leaves half a folder behind
        shutil.rmtree(out)
    staging.rename(out)
    return out
