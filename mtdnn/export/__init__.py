"""`python -m mtdnn.export run_dir=DIR task=NAME out=DIR [checkpoint=best] [overwrite=false]
[format=hf|onnx|sentence-transformers|peft] [quantize=int8]`
(the run folder may also come first, without `run_dir=`).

Writes one task of a run as a HuggingFace model folder (config.json, model.safetensors, tokenizer, and a
README.md model card in the Hub's format, see mtdnn/model_card.py) that
transformers' Auto classes and pipelines load without mtdnn. Each head kind says which class it becomes and
how its
head maps (`export_model` in mtdnn/kinds/<kind>.py; the mappings are in mtdnn/hf_mapping.py): span ->
AutoModelForQuestionAnswering, tagging -> AutoModelForTokenClassification, classification, regression and
ranking
(a cross-encoder score per pair) -> AutoModelForSequenceClassification (pooling=mean ships a 30-line modeling
file beside the weights: trust_remote_code=True). A `pair_encoding: bi` task exports as a
sentence-transformers
folder (format=sentence-transformers, mtdnn/st_export.py). A LoRA / IA3 run's task adapter alone exports as a
peft adapter folder (format=peft: `PeftModel.from_pretrained(AutoModel.from_pretrained(base), DIR)`; no head).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import MISSING
from torch import nn

from mtdnn import kinds
from mtdnn.core.config import AdapterConfig
from mtdnn.core.errors import MtdnnError
from mtdnn.data.tasks import TaskSpec
from mtdnn.export.card import model_card
from mtdnn.export.onnx import copy_run_files, export_onnx
from mtdnn.export.sentence_transformers import export_sentence_transformers
from mtdnn.kinds._bi import is_bi
from mtdnn.kinds.hf_modeling import MeanPooledForSequenceClassification  # also shipped as remote code
from mtdnn.model.adapters.peft_methods import SHARED, PeftAdapters, merged_encoder, write_peft_folder
from mtdnn.serving.loading import load_run, select_tasks

REMOTE_CODE = "modeling_mtdnn_export.py"


@dataclass
class ExportConfig:
    run_dir: str = MISSING
    task: str = MISSING
    out: str = MISSING
    checkpoint: str = "best"
    overwrite: bool = False
    language: str = "en"  # the model card's language tag
    format: str = "hf"  # hf (a transformers model folder) | onnx (ONNX Runtime; see mtdnn/onnx_backend.py)
    #                     | sentence-transformers (a bi-encoder task's embedding model; mtdnn/st_export.py)
    #                     | peft (a LoRA / IA3 run's task adapter as a peft adapter folder)
    quantize: Optional[str] = (
        None  # with format=onnx: int8 also writes model_int8.onnx (dynamic quantization)
    )


def adapter_name(run, spec: TaskSpec) -> str:
    """The name of `spec`'s peft adapter in the run's encoder."""
    return spec.name if run.model.adapters.per_task else SHARED


def plain_encoder(run, spec: TaskSpec) -> nn.Module:
    """The run's encoder as a plain transformers model for `spec`'s task (LoRA / IA3 merged in)."""
    encoder = run.model.encoder
    if isinstance(run.model.adapters, PeftAdapters):  # LoRA / IA3 merge into the weights: a plain model again
        encoder = merged_encoder(encoder, adapter_name(run, spec))
    elif run.model.adapters is not None:
        raise MtdnnError(
            "export: this run trained adapters (adapter.kind="
            f"{run.config.adapter.kind}); standard HuggingFace classes have no place for them "
            "(format=onnx exports them)"
        )
    return encoder


def build_hf_model(run, spec: TaskSpec) -> nn.Module:
    from transformers import AutoConfig

    encoder = plain_encoder(run, spec)
    config = AutoConfig.from_pretrained(str(run.run_dir / "encoder"))
    model = kinds.of(spec).export_model(
        spec, config, run.model.head(spec.name), encoder, run.config.encoder.pooling
    )
    return model.eval()


def export(cfg: ExportConfig) -> Path:
    run = load_run(cfg.run_dir, cfg.checkpoint, torch.device("cpu"))
    specs = select_tasks(run, cfg.task)
    if len(specs) != 1:
        raise MtdnnError(f"task: export writes one task's model; name one of {', '.join(run.specs)}")
    spec = specs[0]
    out = Path(cfg.out).expanduser()
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise MtdnnError(f"out: {out} already exists and is not empty; pass overwrite=true or another out=")
    if cfg.format not in ("hf", "onnx", "sentence-transformers", "peft"):
        raise MtdnnError(f"format: must be hf, onnx, sentence-transformers or peft, got '{cfg.format}'")
    if cfg.format == "peft" and not isinstance(run.model.adapters, PeftAdapters):
        raise MtdnnError(
            "format: peft exports a LoRA / IA3 adapter, and this run trained "
            f"{'no adapter' if run.model.adapters is None else 'adapter.kind=' + run.config.adapter.kind}"
        )
    if is_bi(spec) and cfg.format not in ("sentence-transformers", "peft"):
        raise MtdnnError(
            f"format: task {spec.name} is a bi-encoder (pair_encoding: bi): export it with "
            f"format=sentence-transformers, not {cfg.format}"
        )
    if cfg.quantize not in (None, "int8") or (cfg.quantize and cfg.format != "onnx"):
        raise MtdnnError(
            f"quantize: only int8, and only with format=onnx (got quantize={cfg.quantize}, "
            f"format={cfg.format})"
        )
    staging = out.with_name(f".{out.name}.export")
    shutil.rmtree(staging, ignore_errors=True)
    if cfg.format == "onnx":
        staging.mkdir(parents=True)
        export_onnx(run, spec, staging, cfg.quantize)
        copy_run_files(run.run_dir, spec, staging, run.tokenizer)
        (staging / "README.md").write_text(
            model_card(run, spec, cfg.checkpoint, cfg.language), encoding="utf-8"
        )
        return _replace(staging, out)
    if cfg.format == "peft":
        staging.mkdir(parents=True)
        write_peft_folder(
            run.model.encoder,
            adapter_name(run, spec),
            AdapterConfig(**run.config.adapter),
            run.config.encoder.name,
            staging,
        )
        return _replace(staging, out)
    if cfg.format == "sentence-transformers":
        staging.mkdir(parents=True)
        export_sentence_transformers(plain_encoder(run, spec), run.tokenizer, spec, staging)
        (staging / "README.md").write_text(
            model_card(run, spec, cfg.checkpoint, cfg.language), encoding="utf-8"
        )
        return _replace(staging, out)
    model = build_hf_model(run, spec)
    if isinstance(model, MeanPooledForSequenceClassification):
        model.config.auto_map = {
            "AutoModelForSequenceClassification": f"{REMOTE_CODE[:-3]}.{type(model).__name__}"
        }
        model.config.architectures = [type(model).__name__]
    model.save_pretrained(str(staging))
    run.tokenizer.save_pretrained(str(staging))
    (staging / "README.md").write_text(model_card(run, spec, cfg.checkpoint, cfg.language), encoding="utf-8")
    if isinstance(model, MeanPooledForSequenceClassification):
        shutil.copy(Path(__file__).with_name("export_modeling.py"), staging / REMOTE_CODE)
    return _replace(staging, out)


def _replace(staging: Path, out: Path) -> Path:
    if out.exists():  # written completely first: a failed export never leaves half a folder behind
        shutil.rmtree(out)
    staging.rename(out)
    return out
