"""Staged (STILTs) training and starting a run from an earlier run's weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from mtdnn.core.atomic import write_json
from mtdnn.core.distributed import Distributed
from mtdnn.core.errors import MtdnnError, raise_if
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.runs.checkpoints import best_checkpoint, list_checkpoints, read_weights

log = logging.getLogger("mtdnn")


def init_from_run(model: MultiTaskModel, run_dir: Path, keep_heads: bool) -> dict[str, torch.Tensor]:
    """Load an earlier run's best encoder weights into `model`; return its head weights to keep (or none)."""
    weights = read_weights(best_checkpoint(run_dir) / "model.safetensors")
    encoder = {k.removeprefix("encoder."): v for k, v in weights.items() if k.startswith("encoder.")}
    missing, unexpected = model.encoder.load_state_dict(encoder, strict=False)
    if missing or unexpected:
        raise MtdnnError(
            f"init_from: {run_dir}'s encoder does not fit this run's (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    if not keep_heads:
        return {}
    heads = {k.removeprefix("heads."): v for k, v in weights.items() if k.startswith("heads.")}
    for key, value in heads.items():
        task = key.split(".")[0]
        mine = model.heads.state_dict().get(key) if task in model.heads else None
        if mine is not None and mine.shape != value.shape:
            raise MtdnnError(
                f"init_from: task {task}'s head in {run_dir} has shape {tuple(value.shape)} for {key}, "
                f"this run's has {tuple(mine.shape)} (a different label set?); pass init_heads=false"
            )
    return heads


def run_stages(
    cfg: DictConfig, output_dir: Path, compose_stage, run_one, dist: Distributed | None = None
) -> dict:
    """Staged (STILTs) training: each stage is this run's config plus its own overrides (composed by
    `compose_stage(overrides)`), written to <output_dir>/stages/<n>_<name>, and starts from the previous
    stage's best checkpoint; `run_one(cfg, folder, dist)` trains one stage. Rerunning the command skips
    finished stages and resumes an interrupted one."""
    names = [stage.name for stage in cfg.stages]
    raise_if(
        [
            f"stages[{i}].heads: must be keep or reset, got '{s.heads}'"
            for i, s in enumerate(cfg.stages)
            if s.heads not in ("keep", "reset")
        ]
        + [f"stages: the name '{n}' is used twice" for n in sorted(set(names)) if names.count(n) > 1],
        "the stage configuration has problems",
    )
    results, previous = [], None
    for number, stage in enumerate(cfg.stages, start=1):
        stage_dir = output_dir / "stages" / f"{number}_{stage.name}"
        chained = [f"init_from={previous}", f"init_heads={stage.heads == 'keep'}"] if previous else []
        resume = "auto" if list_checkpoints(stage_dir) else "null"  # an interrupted stage continues
        stage_cfg = compose_stage(
            [*stage.overrides, *chained, f"output_dir={stage_dir}", f"resume={resume}", "stages=[]"]
        )
        if (stage_dir / "summary.json").is_file():
            log.info("stage %s: already done (%s)", stage.name, stage_dir)
            summary = json.loads((stage_dir / "summary.json").read_text())
        else:
            log.info("stage %d/%d: %s", number, len(cfg.stages), stage.name)
            summary = run_one(stage_cfg, stage_dir, dist)
        results.append({"stage": stage.name, **summary})
        previous = stage_dir
    if dist is not None and not dist.is_main:
        return {}
    summary = {"run_dir": str(output_dir), "stages": results, "best_score": results[-1]["best_score"]}
    write_json(output_dir / "summary.json", summary)
    return summary
