"""`format=hf`: a transformers model folder (config.json, model.safetensors, the tokenizer and a model card)
that transformers' Auto classes and pipelines load without mtdnn. Each head kind says which class it becomes
and how its head maps (`export_model` in mtdnn/kinds/<kind>.py, mappings in mtdnn/kinds/hf_mapping.py):
span -> AutoModelForQuestionAnswering, tagging -> AutoModelForTokenClassification, classification,
regression and ranking (a cross-encoder score per pair) -> AutoModelForSequenceClassification.
pooling=mean ships a 30-line modeling file beside the weights (trust_remote_code=True)."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

from torch import nn

from mtdnn import kinds
from mtdnn.data.tasks import TaskSpec
from mtdnn.export._encoder import plain_encoder
from mtdnn.export.card import write_card
from mtdnn.kinds.hf_modeling import MeanPooledForSequenceClassification  # also shipped as remote code

SUMMARY = "a transformers model folder (AutoModelFor... and pipelines load it)"
REMOTE_CODE = "modeling_mtdnn_export.py"


def build_hf_model(run, spec: TaskSpec) -> nn.Module:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(run.run_dir / "encoder"))
    head = run.model.head(spec.name)
    model = kinds.of(spec).export_model(
        spec, config, head, plain_encoder(run, spec), run.config.encoder.pooling
    )
    return model.eval()


def write(run, spec: TaskSpec, cfg, staging: Path) -> None:
    model = build_hf_model(run, spec)
    remote = isinstance(model, MeanPooledForSequenceClassification)
    if remote:
        model.config.auto_map = {
            "AutoModelForSequenceClassification": f"{REMOTE_CODE[:-3]}.{type(model).__name__}"
        }
        model.config.architectures = [type(model).__name__]
    model.save_pretrained(str(staging))
    run.tokenizer.save_pretrained(str(staging))
    write_card(run, spec, cfg, staging)
    if remote:
        shutil.copy(inspect.getsourcefile(MeanPooledForSequenceClassification), staging / REMOTE_CODE)
