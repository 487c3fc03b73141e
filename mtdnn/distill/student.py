"""A shallower student cut from a teacher: its encoder keeps layers 0, k, 2k, ... (DistilBERT's
initialisation)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from mtdnn.core.errors import MtdnnError, reading_saved
from mtdnn.distill.targets import teacher_weights
from mtdnn.model.encoders import saved_tokenizer
from mtdnn.runs.checkpoints import read_weights

log = logging.getLogger("mtdnn")


def shallow_student(teacher_dir: str, checkpoint: str, keep_every: int):
    """(tokenizer, encoder, head weights) of a teacher whose encoder keeps layers 0, k, 2k, ...
    (DistilBERT)."""
    from transformers import AutoConfig, AutoModel

    folder = Path(os.path.expanduser(teacher_dir))
    with reading_saved(folder / "encoder" / "config.json", "distill.student_from_teacher"):
        config = AutoConfig.from_pretrained(str(folder / "encoder"))
    teacher_layers = config.num_hidden_layers
    kept = list(range(0, teacher_layers, keep_every))
    config.num_hidden_layers = len(kept)
    encoder = AutoModel.from_config(config)
    weights = read_weights(teacher_weights(teacher_dir, checkpoint))
    renumber = {old: new for new, old in enumerate(kept)}
    state, heads = {}, {}
    for key, tensor in weights.items():
        if key.startswith("heads."):
            heads[key.removeprefix("heads.")] = tensor
            continue
        key = key.removeprefix("encoder.")
        match = re.match(r"^(.*\blayer\.)(\d+)(\..*)$", key)
        if match:
            if int(match.group(2)) not in renumber:
                continue
            key = f"{match.group(1)}{renumber[int(match.group(2))]}{match.group(3)}"
        state[key] = tensor
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MtdnnError(
            f"distill.student_from_teacher: cannot map {folder}'s encoder weights "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    log.info("student: layers %s of %s's %d-layer encoder", kept, folder, teacher_layers)
    return saved_tokenizer(folder / "tokenizer", "distill.student_from_teacher"), encoder, heads
