"""`python -m mtdnn.export run_dir=DIR task=NAME out=DIR [checkpoint=best] [overwrite=false]`
(the run folder may also come first, without `run_dir=`).

Writes one task of a run as a HuggingFace model folder (config.json with id2label/label2id, model.safetensors,
tokenizer) that transformers' Auto classes and pipelines load without mtdnn (transformers 5 has no QA pipeline;
span tasks load with AutoModelForQuestionAnswering):

  head                          class                                  how the head maps
  span                          AutoModelForQuestionAnswering          qa_outputs = the span layer (exact)
  tagging                       AutoModelForTokenClassification        classifier = the tag layer (exact)
  classification, regression,   AutoModelForSequenceClassification     pooling=pooler: HF's pooler + classifier
  ranking (a cross-encoder        (num_labels 1 for regression and       (exact); pooling=cls: HF's dense+tanh set
  score per query-candidate pair)  ranking scores)                       to a near-identity (see `near_identity`);
                                                                         pooling=mean: no standard class mean-pools,
                                                                         so a 30-line modeling file is written next
                                                                         to the weights (pipeline(...,
                                                                         trust_remote_code=True))

Sequence-classification heads are mapped for BERT-style (pooler + classifier: BERT and its clones, MiniLM among
them) and RoBERTa-style (classifier.dense + classifier.out_proj) models; others get a clear error.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING
from torch import nn

from mtdnn.cli import argv, load_run, parse_args, select_tasks
from mtdnn.errors import MtdnnError, cli_errors
from mtdnn.export_modeling import MeanPooledForSequenceClassification  # also shipped as remote code
from mtdnn.tasks import TaskSpec

SCALE = 1e-4  # near-identity factor for the cls-pooling mapping
REMOTE_CODE = "modeling_mtdnn_export.py"


@dataclass
class ExportConfig:
    run_dir: str = MISSING
    task: str = MISSING
    out: str = MISSING
    checkpoint: str = "best"
    overwrite: bool = False


def hf_config(run, spec: TaskSpec):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(run.run_dir / "encoder"))
    if spec.head in ("classification", "tagging"):
        config.id2label = dict(enumerate(spec.labels))
        config.label2id = {label: i for i, label in enumerate(spec.labels)}
    elif spec.head in ("regression", "ranking"):
        config.num_labels = 1
        config.problem_type = "regression"
    if spec.head == "classification":
        config.problem_type = "single_label_classification"
    return config


def load_encoder_into(base: nn.Module, encoder: nn.Module) -> None:
    """Our encoder's weights into the HF model's base; only a pooler the HF class does not have may be left."""
    missing, unexpected = base.load_state_dict(encoder.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]
    if missing or unexpected:
        raise MtdnnError(f"export: the {type(base).__name__} body does not match the trained encoder "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")


@torch.no_grad()
def copy_linear(target: nn.Linear, source: nn.Linear, scale: float = 1.0) -> None:
    target.weight.copy_(source.weight / scale)
    target.bias.copy_(source.bias)


@torch.no_grad()
def near_identity(dense: nn.Linear) -> None:
    """tanh(s*h) = s*h * (1 - (s*h)^2/3 + ...): with dense = s*I (s = 1e-4) and the classifier divided by s, the
    HF head's dense+tanh passes the first token through to ~1e-7 relative for hidden values up to ~3."""
    dense.weight.copy_(torch.eye(dense.out_features, dense.in_features) * SCALE)
    dense.bias.zero_()


def map_sequence_head(model: nn.Module, head: nn.Module, pooling: str, encoder: nn.Module) -> None:
    classifier = getattr(model, "classifier", None)
    pooler = getattr(model.base_model, "pooler", None)
    if isinstance(classifier, nn.Linear) and pooler is not None:  # BERT style: pooler -> dropout -> classifier
        if pooling == "pooler":
            pooler.load_state_dict(encoder.pooler.state_dict())
            copy_linear(classifier, head.out)
        else:
            near_identity(pooler.dense)
            copy_linear(classifier, head.out, SCALE)
        return
    if hasattr(classifier, "dense") and hasattr(classifier, "out_proj"):  # RoBERTa style: dense+tanh -> out_proj
        if pooling == "pooler":
            classifier.dense.load_state_dict(encoder.pooler.dense.state_dict())
            copy_linear(classifier.out_proj, head.out)
        else:
            near_identity(classifier.dense)
            copy_linear(classifier.out_proj, head.out, SCALE)
        return
    raise MtdnnError(f"export: no mapping for {type(model).__name__}'s classification head; supported are "
                     "BERT-style (pooler + classifier) and RoBERTa-style (classifier.dense + out_proj) models")


def build_hf_model(run, spec: TaskSpec) -> nn.Module:
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification
    from transformers import AutoModelForTokenClassification

    if run.model.adapters is not None:
        raise MtdnnError("export: this run trained adapters (adapter.kind="
                         f"{run.config.adapter.kind}); standard HuggingFace classes have no place for them")
    config = hf_config(run, spec)
    head, encoder, pooling = run.model.head(spec.name), run.model.encoder, run.config.encoder.pooling
    if spec.head == "span":
        model = AutoModelForQuestionAnswering.from_config(config)
        load_encoder_into(model.base_model, encoder)
        copy_linear(model.qa_outputs, head.out)
    elif spec.head == "tagging":
        model = AutoModelForTokenClassification.from_config(config)
        load_encoder_into(model.base_model, encoder)
        copy_linear(model.classifier, head.out)
    elif pooling == "mean":
        model = MeanPooledForSequenceClassification(config)
        load_encoder_into(model.encoder, encoder)
        copy_linear(model.classifier, head.out)
    else:
        model = AutoModelForSequenceClassification.from_config(config)
        load_encoder_into(model.base_model, encoder)  # first: the head mapping may overwrite the pooler
        map_sequence_head(model, head, pooling, encoder)
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
    model = build_hf_model(run, spec)
    staging = out.with_name(f".{out.name}.export")
    shutil.rmtree(staging, ignore_errors=True)
    if isinstance(model, MeanPooledForSequenceClassification):
        model.config.auto_map = {"AutoModelForSequenceClassification": f"{REMOTE_CODE[:-3]}.{type(model).__name__}"}
        model.config.architectures = [type(model).__name__]
    model.save_pretrained(str(staging))
    run.tokenizer.save_pretrained(str(staging))
    if isinstance(model, MeanPooledForSequenceClassification):
        shutil.copy(Path(__file__).with_name("export_modeling.py"), staging / REMOTE_CODE)
    if out.exists():  # written completely first: a failed export never leaves half a folder behind
        shutil.rmtree(out)
    staging.rename(out)
    return out


@cli_errors
def main() -> None:
    out = export(parse_args(ExportConfig, argv("run_dir")))
    print(f"wrote {out}")
    sys.exit(0)


if __name__ == "__main__":
    main()
