"""`python -m mtdnn.export RUN task=NAME out=DIR format=sentence-transformers`: a task's encoder in the
sentence-transformers folder layout, so `SentenceTransformer(DIR)` embeds texts as the task's bi-encoder does.

    config.json model.safetensors tokenizer files   the encoder (adapters merged), as transformers saves it
    modules.json                                    Transformer (this folder) -> Pooling (1_Pooling)
    sentence_bert_config.json                       max_seq_length = the task's max_length
    1_Pooling/config.json                           mean pooling (what the bi-encoder heads use)
    config_sentence_transformers.json               similarity_fn_name: cosine (a ranking task's bi_score: dot
    -> dot)

The layout is the long-standing one (sentence-transformers 2.x to 6.x read it; the hub's all-MiniLM-L6-v2
uses it), written by hand so exporting needs no sentence-transformers install. A classification pair task's
softmax head is a training objective (as in SBERT) and is not part of the embedding model; the cosine head
has no weights.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mtdnn.core.atomic import write_json
from mtdnn.data.tasks import TaskSpec
from mtdnn.export._encoder import plain_encoder
from mtdnn.export.card import write_card

SUMMARY = "a bi-encoder task's embedding model in the sentence-transformers layout"

MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
]


def pooling_config(dimension: int) -> dict:
    return {
        "word_embedding_dimension": dimension,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": False,
        "include_prompt": True,
    }


def write(run, spec: TaskSpec, cfg, staging: Path) -> None:
    export_sentence_transformers(plain_encoder(run, spec), run.tokenizer, spec, staging)
    write_card(run, spec, cfg, staging)


def export_sentence_transformers(encoder: nn.Module, tokenizer, spec: TaskSpec, staging: Path) -> None:
    """Write `encoder` (a plain transformers model) and `tokenizer` into `staging` in the layout above."""
    encoder.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    write_json(staging / "modules.json", MODULES)
    write_json(
        staging / "sentence_bert_config.json", {"max_seq_length": spec.max_length, "do_lower_case": False}
    )
    (staging / "1_Pooling").mkdir()
    write_json(staging / "1_Pooling" / "config.json", pooling_config(encoder.config.hidden_size))
    write_json(
        staging / "config_sentence_transformers.json",
        {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": similarity(spec)},
    )


def similarity(spec: TaskSpec) -> str:
    """How the task compares two embeddings: cosine, or the dot product for a ranking task scored by it."""
    return "dot" if getattr(spec.options, "bi_score", None) == "dot" else "cosine"
