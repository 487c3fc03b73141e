"""A sequence-level head over a mean-pooled HuggingFace encoder, for models trained with
encoder.pooling=mean.

mtdnn.export copies this file next to the exported weights (as modeling_mtdnn_export.py, named in
config.json's auto_map), so `AutoModelForSequenceClassification.from_pretrained(dir,
trust_remote_code=True)` and `pipeline("text-classification", model=dir, trust_remote_code=True)` load it
with only torch and transformers.
"""

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class MeanPooledForSequenceClassification(PreTrainedModel):
    config_class = PretrainedConfig
    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)  # mean over real tokens
        return SequenceClassifierOutput(logits=self.classifier(pooled))
