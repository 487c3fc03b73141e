"""The README.md model card every export folder gets, in the Hugging Face Hub's format: YAML metadata
(library, pipeline tag, language, base model, data set, metrics with their values as a model-index) built
with `huggingface_hub`'s ModelCardData, then how the model was trained, the exact config, the metrics
table, the intended use and the limitations. Built from the run folder alone: no network."""

from __future__ import annotations

import json
from pathlib import Path

from mtdnn import kinds
from mtdnn.core.errors import reading_saved
from mtdnn.data.tasks import TaskSpec
from mtdnn.kinds.metrics import show


def embeds(spec: TaskSpec) -> bool:
    """The task's model is an embedding model (a bi-encoder): its natural format is sentence-transformers."""
    return kinds.of(spec).export_formats(spec)[0] == "sentence-transformers"


def write_card(run, spec: TaskSpec, cfg, staging: Path) -> None:
    """README.md: the model card of an export folder."""
    (staging / "README.md").write_text(model_card(run, spec, cfg.checkpoint, cfg.language), encoding="utf-8")


def model_card(run, spec: TaskSpec, checkpoint: str, language: str) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    summary = _read(run.run_dir / "summary.json")
    scores = (summary.get("validation") or {}).get(spec.name, {}) if checkpoint == "best" else {}
    pipeline, library = (
        ("sentence-similarity", "sentence-transformers")
        if embeds(spec)
        else (kinds.of(spec).pipeline_tag, "transformers")
    )
    dataset = spec.source.path or spec.name
    data = ModelCardData(
        language=language,
        library_name=library,
        pipeline_tag=pipeline,
        tags=["mtdnn", spec.head],
        base_model=_hub_id(run.config.encoder.name),
        datasets=[spec.source.path] if spec.source.path else None,
        model_name=f"{spec.name} ({run.run_dir.name})",
        metrics=list(scores) or None,
        eval_results=[
            EvalResult(
                task_type=pipeline,
                dataset_type=dataset,
                dataset_name=spec.name,
                dataset_config=spec.source.name,
                dataset_split="validation",
                metric_type=name,
                metric_value=round(value, 4),
            )
            for name, value in scores.items()
            if value is not None
        ]
        or None,
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{_body(run, spec, summary, scores, checkpoint)}"))


def _usage(spec: TaskSpec) -> str:
    if embeds(spec):
        return (
            "from sentence_transformers import SentenceTransformer\n\n"
            'model = SentenceTransformer("path/or/hub-id")\n'
            'embeddings = model.encode(["a first text", "a second text"])\n'
            "similarity = model.similarity(embeddings[:1], embeddings[1:])  # cosine"
        )
    tag = kinds.of(spec).pipeline_tag
    return f'from transformers import pipeline\n\nmodel = pipeline("{tag}", model="path/or/hub-id")'


def _read(path: Path) -> dict:
    if not path.is_file():
        return {}
    with reading_saved(path):
        return dict(json.loads(path.read_text()))


def _hub_id(name: str | None) -> str | None:
    """The encoder's hub id when it has one (a local folder or random init is no base model on the Hub)."""
    if not name or name.startswith(("/", ".", "~")) or Path(name).exists() or name.count("/") > 1:
        return None
    return name


def _body(run, spec: TaskSpec, summary: dict, scores: dict, checkpoint: str) -> str:
    from omegaconf import OmegaConf

    cfg = run.config
    tasks = ", ".join(run.specs)
    regularizers = ", ".join(cfg.regularizer) if cfg.get("regularizer") else "none"
    labels = f"Labels: {', '.join(map(str, spec.labels))}." if spec.labels else ""
    source = spec.source.path or spec.source.package or spec.source.file or "local files"
    table = (
        "\n".join(f"| {name} | {show(value)} |" for name, value in scores.items())
        or f"| (checkpoint {checkpoint}: not the evaluated best; run `mtdnn.evaluate`) | |"
    )
    return f"""
# {spec.name}

A `{spec.head}` model for the task **{spec.name}**, exported by mtdnn from a multi-task run
(tasks trained together: {tasks}). {spec.description}

## Training

- Encoder: `{cfg.encoder.name or "random init from a config"}`, pooling `{cfg.encoder.pooling}`, max_length
  {spec.max_length}.
- Data: {source}{f" ({spec.source.name})" if spec.source.name else ""}; {labels}
- {summary.get("steps", "?")} optimizer steps (best at step {summary.get("best_step", "?")}), batch
  {cfg.trainer.batch_size}, lr {cfg.trainer.lr}, sampler `{cfg.sampler.name}`,
  regularizers: {regularizers}, seed {cfg.seed}. Exported checkpoint: {checkpoint}.

## Validation metrics

| metric | value |
|---|---|
{table}

## Use

```python
{_usage(spec)}
```

Intended for {spec.head} on text like the training data ({source}); inputs longer than {spec.max_length}
tokens are
truncated. Scores are from the validation split the run selected its checkpoint on, so they are optimistic for
new data.

## Limitations

Trained on one data set's label set and domain; not evaluated for fairness, robustness to other domains, or
calibration. Check it on your own data before you rely on it.

## Config

The exact run configuration (`config.yaml`):

```yaml
{OmegaConf.to_yaml(cfg).strip()}
```
"""
