"""A smaller student cut from a teacher: its encoder keeps layers 0, k, 2k, ... (DistilBERT's
initialisation) and, optionally, a share of each kept layer's feed-forward neurons (width pruning, as in CoFi
and DynaBERT: the feed-forward block is two thirds of a BERT layer's compute, so a 3-layer student with half
its feed-forward neurons costs what a 2-layer one does)."""

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


def shallow_student(teacher_dir: str, checkpoint: str, keep_every: int, keep_ffn: float = 1.0):
    """(tokenizer, encoder, head weights) of a teacher whose encoder keeps layers 0, k, 2k, ... (DistilBERT)
    and the `keep_ffn` share of each kept layer's feed-forward neurons (see `narrower_feed_forward`)."""
    from transformers import AutoConfig, AutoModel

    folder = Path(os.path.expanduser(teacher_dir))
    with reading_saved(folder / "encoder" / "config.json", "distill.student_from_teacher"):
        config = AutoConfig.from_pretrained(str(folder / "encoder"))
    teacher_layers = config.num_hidden_layers
    kept = list(range(0, teacher_layers, keep_every))
    config.num_hidden_layers = len(kept)
    width = config.intermediate_size
    config.intermediate_size = max(1, round(keep_ffn * width))
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
    if config.intermediate_size < width:
        state = narrower_feed_forward(state, config.intermediate_size, str(folder))
    encoder = AutoModel.from_config(config)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MtdnnError(
            f"distill.student_from_teacher: cannot map {folder}'s encoder weights "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    log.info(
        "student: layers %s of %s's %d-layer encoder, %d of %d feed-forward neurons each",
        kept,
        folder,
        teacher_layers,
        config.intermediate_size,
        width,
    )
    return saved_tokenizer(folder / "tokenizer", "distill.student_from_teacher"), encoder, heads


def narrower_feed_forward(state: dict, width: int, teacher: str) -> dict:
    """Each layer's feed-forward block cut to its `width` most important neurons. A neuron j computes
    `W_out[:, j] * act(W_in[j] x + b_in[j])`; its importance is ||W_in[j]|| * ||W_out[:, j]||, a bound on how
    much it can move the layer's output per unit of input (magnitude pruning; the distillation that follows
    recovers the rest). BERT-style names (`intermediate.dense`, `output.dense`: BERT, RoBERTa, MiniLM)."""
    inputs = [k for k in state if k.endswith("intermediate.dense.weight")]
    if not inputs:
        raise MtdnnError(
            f"distill.keep_ffn: {teacher}'s encoder has no BERT-style feed-forward layers "
            "(intermediate.dense / output.dense); use keep_ffn=1"
        )
    state = dict(state)
    for key in inputs:
        layer = key.removesuffix("intermediate.dense.weight")
        w_in, w_out = state[key], state[f"{layer}output.dense.weight"]
        importance = w_in.norm(dim=1) * w_out.norm(dim=0)
        keep = importance.topk(width).indices.sort().values  # the teacher's order: same function, fewer terms
        state[key] = w_in[keep].clone()
        state[f"{layer}intermediate.dense.bias"] = state[f"{layer}intermediate.dense.bias"][keep].clone()
        state[f"{layer}output.dense.weight"] = w_out[:, keep].clone()
    return state
