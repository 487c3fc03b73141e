"""Shared pieces of the run-folder commands (evaluate, predict): key=value arguments and loading a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from omegaconf import DictConfig, OmegaConf

from mtdnn.core.errors import MtdnnError, damaged, reading_saved
from mtdnn.data.tasks import TaskSpec
from mtdnn.model.encoders import saved_tokenizer, saved_tokenizer_and_encoder
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.runs.checkpoints import load_weights, run_checkpoint
from mtdnn.runs.folder import load_run_specs

T = TypeVar("T")


@dataclass
class LoadedRun:
    run_dir: Path
    model: MultiTaskModel
    tokenizer: object
    specs: dict[str, TaskSpec]
    config: object


BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


def open_run(run_dir: str, checkpoint: str, device: torch.device, backend: str = "auto") -> LoadedRun:
    """Rebuild a trained model from its run folder alone: no hub, no original config files. A folder
    written by `mtdnn.export format=onnx` runs on ONNX Runtime (backend onnx, or onnx-int8 for its
    quantized graph)."""
    from mtdnn.serving.onnx import is_onnx_folder, load_onnx_model

    folder = Path(run_dir).expanduser().resolve()
    if backend not in BACKENDS:
        raise MtdnnError(f"backend: must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if not (folder / "config.yaml").is_file():
        raise MtdnnError(f"run_dir: {folder} is not an mtdnn run folder (no config.yaml)")
    config = saved_config(folder / "config.yaml")
    specs = load_run_specs(folder)
    if is_onnx_folder(folder):
        if backend == "torch":
            raise MtdnnError(f"backend: {folder} is an ONNX export; use backend=onnx or onnx-int8")
        model = load_onnx_model(folder, backend)
        missing_task_files(folder, model.tasks, specs)
        tokenizer = saved_tokenizer(folder / "tokenizer")
        return LoadedRun(folder, model, tokenizer, {s.name: s for s in specs}, config)
    if backend.startswith("onnx"):
        raise MtdnnError(
            f"backend: {folder} is a training run; export it first: python -m mtdnn.export {folder} "
            "task=... out=... format=onnx"
        )
    trained = OmegaConf.select(config, "task")
    missing_task_files(folder, [trained] if isinstance(trained, str) else list(trained or []), specs)
    weights = run_checkpoint(folder, checkpoint)
    tokenizer, encoder = saved_tokenizer_and_encoder(folder)
    adapter = OmegaConf.select(config, "adapter")  # runs from before adapters existed have none
    model = MultiTaskModel(
        encoder,
        specs,
        config.encoder.pooling,
        OmegaConf.to_container(adapter) if adapter is not None else None,
    )
    load_weights(model, weights)
    return LoadedRun(folder, model.to(device).eval(), tokenizer, {s.name: s for s in specs}, config)


SAVED_CONFIG_KEYS = ("task", "encoder.pooling")  # what loading reads; every run's config.yaml has them


def saved_config(path: Path):
    """A run's config.yaml, refused when it is not a mapping holding what loading reads (cut short: an empty
    file loads as an empty config, and a missing key would surface later as a library error)."""
    with reading_saved(path):
        config = OmegaConf.load(path)
    if not isinstance(config, DictConfig):
        raise damaged(path, "run_dir", "not a mapping of settings")
    lacking = [key for key in SAVED_CONFIG_KEYS if OmegaConf.select(config, key, default=None) is None]
    if lacking:
        raise damaged(path, "run_dir", f"no {' or '.join(lacking)}")
    return config


def missing_task_files(folder: Path, names: list[str], specs: list[TaskSpec]) -> None:
    """Every task the weights hold has its saved spec (else a checkpoint's heads would not fit, which says
    nothing about the cause, and an ONNX folder would score no task at all)."""
    saved = {s.name for s in specs}
    for name in names:
        if name not in saved:
            raise MtdnnError(
                f"run_dir: {folder / 'tasks' / f'{name}.yaml'} is missing; the folder is damaged: restore it "
                "from a copy, or train the run again"
            )


def select_tasks(run: LoadedRun, task: str | None) -> list[TaskSpec]:
    if task is None:
        return list(run.specs.values())
    names = [t.strip() for t in task.split(",")]
    unknown = [n for n in names if n not in run.specs]
    if unknown:
        raise MtdnnError(f"task: {', '.join(unknown)} not trained in this run; it has {', '.join(run.specs)}")
    return [run.specs[n] for n in names]
