"""Shared pieces of the run-folder commands (evaluate, predict): key=value arguments and loading a run."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mtdnn.config import AdapterConfig
from mtdnn.encoders import saved_tokenizer_and_encoder
from mtdnn.errors import MtdnnError, config_error_line
from mtdnn.model import MultiTaskModel
from mtdnn.rundir import load_run_specs, load_weights, run_checkpoint
from mtdnn.tasks import TaskSpec

T = TypeVar("T")


def parse_args(schema: type[T], argv: list[str]) -> T:
    """`key=value ...` onto a dataclass, with the same typed checking as the Hydra configs."""
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise MtdnnError(f"arguments are key=value; cannot read: {' '.join(bad)}")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(argv))
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise MtdnnError(f"{missing[0]}: required (pass {missing[0]}=...)")
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        raise MtdnnError(config_error_line(err)) from None


@dataclass
class LoadedRun:
    run_dir: Path
    model: MultiTaskModel
    tokenizer: object
    specs: dict[str, TaskSpec]
    config: object


BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


def load_run(run_dir: str, checkpoint: str, device: torch.device, backend: str = "auto") -> LoadedRun:
    """Rebuild a trained model from its run folder alone: no hub, no original config files. A folder written by
    `mtdnn.export format=onnx` runs on ONNX Runtime (backend onnx, or onnx-int8 for its quantized graph)."""
    from mtdnn.onnx_backend import is_onnx_folder, load_onnx_model

    folder = Path(run_dir).expanduser().resolve()
    if backend not in BACKENDS:
        raise MtdnnError(f"backend: must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if not (folder / "config.yaml").is_file():
        raise MtdnnError(f"run_dir: {folder} is not an mtdnn run folder (no config.yaml)")
    config = OmegaConf.load(folder / "config.yaml")
    specs = load_run_specs(folder)
    if is_onnx_folder(folder):
        if backend == "torch":
            raise MtdnnError(f"backend: {folder} is an ONNX export; use backend=onnx or onnx-int8")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
        return LoadedRun(folder, load_onnx_model(folder, backend), tokenizer, {s.name: s for s in specs}, config)
    if backend.startswith("onnx"):
        raise MtdnnError(f"backend: {folder} is a training run; export it first: python -m mtdnn.export {folder} "
                         "task=... out=... format=onnx")
    weights = run_checkpoint(folder, checkpoint)
    tokenizer, encoder = saved_tokenizer_and_encoder(folder)
    adapter = OmegaConf.select(config, "adapter")  # runs from before adapters existed have none
    model = MultiTaskModel(encoder, specs, config.encoder.pooling,
                           AdapterConfig(**adapter) if adapter is not None else None)
    load_weights(model, weights)
    return LoadedRun(folder, model.to(device).eval(), tokenizer, {s.name: s for s in specs}, config)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise MtdnnError(f"trainer.device: '{name}' is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MtdnnError(f"trainer.device: '{name}' requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise MtdnnError(f"trainer.device: '{name}' but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def select_tasks(run: LoadedRun, task: str | None) -> list[TaskSpec]:
    if task is None:
        return list(run.specs.values())
    names = [t.strip() for t in task.split(",")]
    unknown = [n for n in names if n not in run.specs]
    if unknown:
        raise MtdnnError(f"task: {', '.join(unknown)} not trained in this run; it has {', '.join(run.specs)}")
    return [run.specs[n] for n in names]


def argv(positional: str | None = None) -> list[str]:
    """The command's key=value arguments; with `positional`, a first argument without '=' is that key's value
    (`python -m mtdnn.export RUN_DIR task=...`)."""
    args = sys.argv[1:]
    if positional and args and "=" not in args[0]:
        return [f"{positional}={args[0]}", *args[1:]]
    return args
