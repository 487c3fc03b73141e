"""How mtdnn's encoder and heads map onto transformers' task classes (used by each kind's export_model):

  pooled heads (one output vector per input)
      AutoModelForSequenceClassification; pooling=pooler: HF's pooler + classifier (exact); pooling=cls: HF's
      dense+tanh set to a near-identity (see `near_identity`); pooling=mean: no standard class mean-pools, so
      mtdnn/kinds/hf_modeling.py is shipped beside the weights (trust_remote_code=True)
  token heads
      AutoModelForTokenClassification / AutoModelForQuestionAnswering, the head's linear layer copied (exact)

Sequence-classification heads are mapped for BERT-style (pooler + classifier: BERT and its clones, MiniLM
among them) and RoBERTa-style (classifier.dense + classifier.out_proj) models; others get a clear error.
"""

from __future__ import annotations

import torch
from torch import nn

from mtdnn.core.errors import MtdnnError
from mtdnn.kinds.hf_modeling import MeanPooledForSequenceClassification

SCALE = 1e-4  # near-identity factor for the cls-pooling mapping


def load_encoder_into(base: nn.Module, encoder: nn.Module) -> None:
    """Our encoder's weights into the HF model's base; only a pooler the HF class does not have may be
    left."""
    missing, unexpected = base.load_state_dict(encoder.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]
    if missing or unexpected:
        raise MtdnnError(
            f"export: the {type(base).__name__} body does not match the trained encoder "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


@torch.no_grad()
def copy_linear(target: nn.Linear, source: nn.Linear, scale: float = 1.0) -> None:
    target.weight.copy_(source.weight / scale)
    target.bias.copy_(source.bias)


@torch.no_grad()
def near_identity(dense: nn.Linear) -> None:
    """tanh(s*h) = s*h * (1 - (s*h)^2/3 + ...): with dense = s*I (s = 1e-4) and the classifier divided by
    s, the HF head's dense+tanh passes the first token through to ~1e-7 relative for hidden values up to
    ~3."""
    dense.weight.copy_(torch.eye(dense.out_features, dense.in_features) * SCALE)
    dense.bias.zero_()


def map_sequence_head(model: nn.Module, head: nn.Module, pooling: str, encoder: nn.Module) -> None:
    classifier = getattr(model, "classifier", None)
    pooler = getattr(model.base_model, "pooler", None)
    # BERT style: pooler -> dropout -> classifier
    if isinstance(classifier, nn.Linear) and pooler is not None:
        if pooling == "pooler":
            pooler.load_state_dict(encoder.pooler.state_dict())
            copy_linear(classifier, head.out)
        else:
            near_identity(pooler.dense)
            copy_linear(classifier, head.out, SCALE)
        return
    # RoBERTa style: dense+tanh -> out_proj
    if hasattr(classifier, "dense") and hasattr(classifier, "out_proj"):
        if pooling == "pooler":
            classifier.dense.load_state_dict(encoder.pooler.dense.state_dict())
            copy_linear(classifier.out_proj, head.out)
        else:
            near_identity(classifier.dense)
            copy_linear(classifier.out_proj, head.out, SCALE)
        return
    raise MtdnnError(
        f"export: no mapping for {type(model).__name__}'s classification head; supported are "
        "BERT-style (pooler + classifier) and RoBERTa-style (classifier.dense + out_proj) models"
    )


def sequence_model(config, head: nn.Module, encoder: nn.Module, pooling: str) -> nn.Module:
    """A pooled head (`head.out`, one output per input) as a sequence-classification model."""
    from transformers import AutoModelForSequenceClassification

    if pooling == "mean":
        model = MeanPooledForSequenceClassification(config)
        load_encoder_into(model.encoder, encoder)
        copy_linear(model.classifier, head.out)
        return model
    model = AutoModelForSequenceClassification.from_config(config)
    load_encoder_into(model.base_model, encoder)  # first: the head mapping may overwrite the pooler
    map_sequence_head(model, head, pooling, encoder)
    return model


def token_model(auto_class, config, layer: nn.Linear, encoder: nn.Module, attribute: str) -> nn.Module:
    """A token-level head (one linear layer over every token) as `auto_class`'s model."""
    model = auto_class.from_config(config)
    load_encoder_into(model.base_model, encoder)
    copy_linear(getattr(model, attribute), layer)
    return model
