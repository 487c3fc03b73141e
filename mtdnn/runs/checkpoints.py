"""Checkpoints of a run folder: `checkpoints/step_N/` (weights + trainer state) written whole or not at
all, rotated, the best one named in `best.json`; weights read and written with safetensors (an adapter
run's frozen encoder stored once, beside the checkpoints)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from safetensors.torch import save as save_bytes

from mtdnn.core.atomic import fsync_tree, replace_dir, write_atomic, write_json
from mtdnn.core.errors import MtdnnError, first_line
from mtdnn.model.multitask import inference_state_dict, parametrized_modules

CHECKPOINTS = "checkpoints"


# an adapter run's frozen encoder weights, relative to the run
FROZEN = Path("encoder") / "frozen.safetensors"


FROZEN_KEY = "frozen_weights"  # checkpoint metadata: where its frozen weights are, relative to its folder


_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / CHECKPOINTS / f"step_{step:07d}"


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, trainer_state: dict) -> Path:
    """Write into a hidden staging folder, fsync, then rename into place; a failed write leaves the
    previous checkpoints untouched and says so."""
    final = checkpoint_dir(run_dir, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save_weights(model, staging / "model.safetensors", run_dir / FROZEN)
        torch.save(trainer_state, staging / "trainer_state.pt")
        fsync_tree(staging)
        replace_dir(staging, final)
    except (OSError, SafetensorError) as err:  # safetensors reports a full disk as its own error type
        kept = list_checkpoints(run_dir)
        raise MtdnnError(
            f"{final}: cannot write checkpoint: {getattr(err, 'strerror', None) or first_line(err)}; "
            + (f"the previous checkpoint {kept[-1]} is intact" if kept else "no earlier checkpoint")
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def remove_staging(run_dir: Path) -> None:
    """Half-written checkpoints of a killed run live in hidden staging folders; they are never read, only
    removed."""
    for leftover in (run_dir / CHECKPOINTS).glob(".step_*") if (run_dir / CHECKPOINTS).is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)


def rotate_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints plus those best.json and each best_<task>.json name."""
    named = {best_checkpoint(run_dir, required=False, name=path.name) for path in run_dir.glob("best*.json")}
    found = list_checkpoints(run_dir)
    for stale in found[: max(0, len(found) - keep_last)]:
        if stale not in named:
            shutil.rmtree(stale, ignore_errors=True)


def save_best(run_dir: Path, step: int, record: dict, name: str = "best.json") -> None:
    """Point best.json (or a task's best_<task>.json) at an already complete checkpoint (one atomic
    rename)."""
    write_json(run_dir / name, {"checkpoint": f"{CHECKPOINTS}/step_{step:07d}", "step": step, **record})


def best_checkpoint(run_dir: Path, required: bool = True, name: str = "best.json") -> Path | None:
    path = run_dir / name
    if not path.is_file():
        if required:
            raise MtdnnError(f"{path}: not found; this run has no evaluated checkpoint yet")
        return None
    try:
        return run_dir / json.loads(path.read_text())["checkpoint"]
    except (ValueError, KeyError) as err:
        raise MtdnnError(
            f"{path}: unreadable ({type(err).__name__}); use checkpoint=last or a checkpoint folder"
        ) from None


def checkpoint_problem(folder: Path) -> str | None:
    """Cheap completeness check: a truncated safetensors or torch zip file fails its header/trailer check."""
    weights, state = folder / "model.safetensors", folder / "trainer_state.pt"
    for path in (weights, state):
        if not path.is_file():
            return f"{path}: missing"
    try:
        with safe_open(str(weights), "pt"):
            pass
    except Exception as err:  # safetensors raises its own error types
        return f"{weights}: corrupted ({first_line(err)})"
    if not zipfile.is_zipfile(state):
        return f"{state}: corrupted (not a complete torch archive)"
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (staging folders start with '.' and are never listed)."""
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _STEP_DIR.match(p.name))
        and (p / "model.safetensors").is_file()
        and (p / "trainer_state.pt").is_file()
    ]
    return [p for _, p in sorted(found)]


def save_weights(model: torch.nn.Module, path: Path, frozen_file: Path | None = None) -> None:
    """Plain weights: a reparametrized weight (R4F, Mixout) is stored at its inference value, under its
    usual name. With `frozen_file`, an adapter model's frozen weights go there once and `path` holds only
    the rest."""
    frozen = frozen_names(model) if frozen_file is not None else set()
    if frozen:
        state = model.state_dict()
        if not frozen_file.is_file():  # they never change: written once per run
            write_atomic(frozen_file, save_bytes({k: state[k].contiguous() for k in sorted(frozen)}))
        relative = os.path.relpath(frozen_file, path.parent)  # a staging folder sits beside its final place
        save_file(
            {k: v.contiguous() for k, v in state.items() if k not in frozen},
            str(path),
            metadata={FROZEN_KEY: relative},
        )
    elif parametrized_modules(model):
        save_file({k: v.contiguous() for k, v in inference_state_dict(model).items()}, str(path))
    else:
        save_model(model, str(path))


def frozen_names(model: torch.nn.Module) -> set[str]:
    """Weights that never change in training: an adapter model's frozen encoder (none otherwise, or when a
    regularizer reparametrized weights)."""
    if getattr(model, "adapters", None) is None or parametrized_modules(model):
        return set()
    return {name for name, param in model.named_parameters() if not param.requires_grad}


def frozen_weights_of(path: Path) -> str | None:
    """Where an adapter-only checkpoint's frozen weights are, relative to its folder (None: a whole
    checkpoint)."""
    with safe_open(str(path), "pt") as handle:
        return (handle.metadata() or {}).get(FROZEN_KEY)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights, an adapter-only checkpoint's frozen encoder weights merged in."""
    frozen = frozen_weights_of(path)
    weights = load_file(str(path))
    if frozen is None:
        return weights
    base = (path.parent / frozen).resolve()
    if not base.is_file():
        raise MtdnnError(
            f"{path}: holds adapter weights only, and the frozen encoder weights it was trained on, "
            f"{base}, are missing (copy the whole run folder)"
        )
    return {**load_file(str(base)), **weights}


def _load_into_parametrized(model: torch.nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Plain weights into a reparametrized model: `m.weight` goes to `m.parametrizations.weight.original`;
    the parametrizations' own state (power-iteration vectors, pretrained anchors) comes with the
    regularizer's."""
    state = read_weights(path)
    for name, module in parametrized_modules(model).items():
        prefix = f"{name}." if name else ""
        for tensor_name in module.parametrizations:
            if prefix + tensor_name in state:
                state[f"{prefix}parametrizations.{tensor_name}.original"] = state.pop(prefix + tensor_name)
    missing, unexpected = model.load_state_dict(state, strict=False)
    return [k for k in missing if ".parametrizations." not in k or k.endswith(".original")], unexpected


def load_weights(model: torch.nn.Module, path: Path) -> None:
    try:
        if parametrized_modules(model):
            missing, unexpected = _load_into_parametrized(model, path)
        elif frozen_weights_of(path) is not None:
            missing, unexpected = model.load_state_dict(read_weights(path), strict=False)
        else:  # safetensors' loader restores tensors saved once for several names (tied weights)
            missing, unexpected = load_model(model, str(path), strict=False)
    except MtdnnError:
        raise
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise MtdnnError(f"{path}: cannot read checkpoint weights: {type(err).__name__}: {err}") from None
    if missing or unexpected:
        raise MtdnnError(
            f"{path}: checkpoint does not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )


def load_trainer_state(checkpoint: Path) -> dict:
    path = checkpoint / "trainer_state.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise MtdnnError(f"{path}: cannot read trainer state: {type(err).__name__}: {err}") from None


def run_checkpoint(run_dir: Path, which: str) -> Path:
    """'best', 'best_<task>' (that task's own best), 'last', or a checkpoint folder -> the
    model.safetensors."""
    if which == "best" or (which.startswith("best_") and (run_dir / f"{which}.json").is_file()):
        path = best_checkpoint(run_dir, name=f"{which}.json") / "model.safetensors"
    elif which == "last":
        found = list_checkpoints(run_dir)
        path = found[-1] / "model.safetensors" if found else run_dir / CHECKPOINTS / "<none>"
    else:
        path = Path(which) / "model.safetensors"
    if not path.is_file():
        raise MtdnnError(f"checkpoint: {path} not found")
    return path
