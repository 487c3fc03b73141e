"""A run directory holds everything needed to evaluate, predict or resume without the original inputs:

    config.yaml            resolved run config
    tasks/<name>.yaml      resolved task specs (label maps included)
    tokenizer/             the tokenizer, saved
    encoder/config.json    the encoder architecture (weights live in checkpoints)
    checkpoints/step_N/    model.safetensors + trainer_state.pt (optimizer, scheduler, sampler, RNG)
    best/                  model.safetensors + best.json, the best evaluation so far
    metrics.json           every evaluation, appended
    summary.json           the final report
    predictions/           <task>_<split>.jsonl
    tb/                    TensorBoard scalars

Every file is written to a temporary name, fsynced and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors.torch import load_model, save_model

from mtdnn.errors import MtdnnError
from mtdnn.tasks import TaskSpec, spec_from_dict, spec_to_dict

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# ---------------------------------------------------------------- atomic files

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap a fully written folder into place; the old one is removed only after the new one is there."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


# ---------------------------------------------------------------- RNG

def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": _numpy_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> list:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), pos, has_gauss, cached]  # plain lists: loadable with weights_only=True


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ---------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, trainer_state: dict, keep_last: int) -> Path:
    final = run_dir / CHECKPOINTS / f"step_{step:07d}"
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent if final.parent.exists()
                                    else _mkdir(final.parent)))
    try:
        save_model(model, str(staging / "model.safetensors"))
        torch.save(trainer_state, staging / "trainer_state.pt")
        _fsync_tree(staging)
        _replace_dir(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for stale in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def save_best(run_dir: Path, model: torch.nn.Module, record: dict) -> None:
    final = run_dir / "best"
    staging = Path(tempfile.mkdtemp(prefix=".best.", dir=run_dir))
    try:
        save_model(model, str(staging / "model.safetensors"))
        (staging / "best.json").write_text(json.dumps(record, indent=2) + "\n")
        _fsync_tree(staging)
        _replace_dir(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (staging folders start with '.' and are never listed)."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name))
             and (p / "model.safetensors").is_file() and (p / "trainer_state.pt").is_file()]
    return [p for _, p in sorted(found)]


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise MtdnnError(f"{path}: cannot read checkpoint weights: {type(err).__name__}: {err}") from None
    if missing or unexpected:
        raise MtdnnError(f"{path}: checkpoint does not fit the model (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")


def load_trainer_state(checkpoint: Path) -> dict:
    path = checkpoint / "trainer_state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MtdnnError(f"{path}: cannot read trainer state: {type(err).__name__}: {err}") from None


def resolve_resume(resume: str, default_run_dir: Path) -> Path:
    """`auto` = newest checkpoint of this run dir; a run dir = its newest; a checkpoint folder = itself."""
    target = default_run_dir if resume == "auto" else Path(os.path.expanduser(resume)).resolve()
    if not target.exists():
        raise MtdnnError(f"resume: no such checkpoint or run folder: {target}")
    if (target / "model.safetensors").is_file() and (target / "trainer_state.pt").is_file():
        return target
    found = list_checkpoints(target)
    if not found:
        raise MtdnnError(f"resume: no complete checkpoint under {target}/{CHECKPOINTS}")
    return found[-1]


# ---------------------------------------------------------------- run files

def save_run_files(run_dir: Path, config_yaml: str, specs: list[TaskSpec], tokenizer, encoder_config) -> None:
    write_atomic(run_dir / "config.yaml", config_yaml)
    for spec in specs:
        write_atomic(run_dir / "tasks" / f"{spec.name}.yaml", yaml.safe_dump(spec_to_dict(spec), sort_keys=False))
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    encoder_config.save_pretrained(str(run_dir / "encoder"))


def load_run_specs(run_dir: Path) -> list[TaskSpec]:
    folder = run_dir / "tasks"
    if not folder.is_dir():
        raise MtdnnError(f"run_dir: {run_dir} is not an mtdnn run folder (no tasks/ inside)")
    return [spec_from_dict(yaml.safe_load(p.read_text())) for p in sorted(folder.glob("*.yaml"))]


def run_checkpoint(run_dir: Path, which: str) -> Path:
    """'best', 'last', or a checkpoint folder -> the model.safetensors to load."""
    if which == "best":
        path = run_dir / "best" / "model.safetensors"
    elif which == "last":
        found = list_checkpoints(run_dir)
        path = found[-1] / "model.safetensors" if found else run_dir / CHECKPOINTS / "<none>"
    else:
        path = Path(which) / "model.safetensors"
    if not path.is_file():
        raise MtdnnError(f"checkpoint: {path} not found")
    return path
