"""Export: one task of a run as a standard HuggingFace model that loads without mtdnn and predicts the
same."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import compose_train, tiny_overrides, write_toy_tasks
from test_heads import _rank_task, _span_task, _tag_task, ranking_rows, squad_rows, tagging_rows

from mtdnn.core.errors import MtdnnError
from mtdnn.export import ExportConfig, export
from mtdnn.serving.loading import open_run
from mtdnn.train import run

SENTENCES = ["the movie great", "plot awful awful", "a film", "the cast great but the ending awful"]
NO_MTDNN = "import sys, json; sys.modules['mtdnn'] = None\n"  # any import of mtdnn in the child fails


def _train(folder, out, *more: str):
    cfg = compose_train(tiny_overrides(folder, "trainer.max_steps=30", "predict_test=false", *more))
    run(cfg, out)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    folder = write_toy_tasks(root / "tasks")
    _span_task(folder, squad_rows(40, 1), squad_rows(10, 2))
    _tag_task(folder, tagging_rows(40, 5), tagging_rows(10, 6))
    runs = {
        pooling: _train(folder, root / pooling, f"encoder.pooling={pooling}", "task=[toy_sent,toy_count]")
        for pooling in ("cls", "pooler", "mean")
    }
    runs["token"] = _train(folder, root / "token", "task=[toy_squad,toy_ner]")
    return root, runs


def _child(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", NO_MTDNN + code],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("pooling", ["cls", "pooler", "mean"])
def test_sequence_tasks_export_to_auto_classes_with_the_same_outputs(trained, pooling):
    root, runs = trained
    loaded = open_run(str(runs[pooling]), "best", torch.device("cpu"))
    enc = loaded.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    pair = loaded.tokenizer(SENTENCES, SENTENCES[::-1], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours_sent = loaded.model("toy_sent", **enc).softmax(-1)
        ours_count = loaded.model("toy_count", **pair)
    sent = export(
        ExportConfig(run_dir=str(runs[pooling]), task="toy_sent", out=str(root / f"{pooling}_sent"))
    )
    count = export(
        ExportConfig(run_dir=str(runs[pooling]), task="toy_count", out=str(root / f"{pooling}_count"))
    )
    remote = pooling == "mean"  # mean pooling ships its 30-line modeling file
    got = _child(f"""
from transformers import pipeline
clf = pipeline("text-classification", model={str(sent)!r}, trust_remote_code={remote}, top_k=None)
reg = pipeline("text-classification", model={str(count)!r}, trust_remote_code={remote},
function_to_apply="none")
scores = [{{d["label"]: d["score"] for d in row}} for row in clf({SENTENCES!r})]
values = [r["score"] for r in reg([{{"text": a, "text_pair": b}} for a, b in zip({SENTENCES!r},
{SENTENCES[::-1]!r})])]
print(json.dumps({{"scores": scores, "values": values}}))
""")
    expected = [{"neg": float(p[0]), "pos": float(p[1])} for p in ours_sent]
    assert len(got["scores"]) == len(expected) == len(SENTENCES)  # zip below must not pass on an empty list
    for mine, theirs in zip(expected, got["scores"]):
        assert mine == pytest.approx(theirs, abs=1e-5)
    assert got["values"] == pytest.approx(ours_count.tolist(), abs=1e-4)
    assert (sent / "modeling_mtdnn_export.py").is_file() == remote
    assert json.loads((sent / "config.json").read_text())["id2label"] == {"0": "neg", "1": "pos"}


def test_span_and_tagging_export_exactly(trained):
    root, runs = trained
    loaded = open_run(str(runs["token"]), "best", torch.device("cpu"))
    qa = export(ExportConfig(run_dir=str(runs["token"]), task="toy_squad", out=str(root / "qa")))
    ner = export(ExportConfig(run_dir=str(runs["token"]), task="toy_ner", out=str(root / "ner")))
    question, context = ["who made it"], ["the film by alice was a great one"]
    words = "alice went to new york".split()
    enc = loaded.tokenizer(question, context, return_tensors="pt")
    tagged = loaded.tokenizer([words], is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        span = loaded.model("toy_squad", **enc)
        tags = loaded.model("toy_ner", **tagged)
    got = _child(f"""
import torch
from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline
tok = AutoTokenizer.from_pretrained({str(qa)!r})
qa = AutoModelForQuestionAnswering.from_pretrained({str(qa)!r}).eval()
out = qa(**tok({question!r}, {context!r}, return_tensors="pt"))
ner = pipeline("token-classification", model={str(ner)!r})
tok = AutoTokenizer.from_pretrained({str(ner)!r})
logits = ner.model(**tok([{words!r}], is_split_into_words=True, return_tensors="pt")).logits
print(json.dumps({{"start": out.start_logits[0].tolist(), "end": out.end_logits[0].tolist(),
                   "tags": logits[0].tolist(), "entities": [e["entity"] for e in ner({" ".join(words)!r})]}}))
""")
    assert got["start"] == pytest.approx(span[0, :, 0].tolist(), abs=1e-5)
    assert got["end"] == pytest.approx(span[0, :, 1].tolist(), abs=1e-5)
    assert torch.allclose(torch.tensor(got["tags"]), tags[0], atol=1e-5)
    labels = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    expected = [labels[i] for i in tags[0].argmax(-1).tolist()[1:-1] if labels[i] != "O"]
    assert got["entities"] == expected  # the pipeline tags the words as mtdnn does


def test_export_errors_are_one_clear_line(trained, tmp_path):
    root, runs = trained
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    for args, expected in [
        ([str(runs["cls"]), "task=toy_sent", f"out={tmp_path / 'taken'}"], "already exists and is not empty"),
        (
            [f"run_dir={runs['cls']}", "task=nope", f"out={tmp_path / 'x'}"],
            "task: nope not trained in this run",
        ),
        ([f"run_dir={tmp_path}", "task=toy_sent", f"out={tmp_path / 'x'}"], "is not an mtdnn run folder"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "mtdnn.export", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env={"HF_HUB_OFFLINE": "1", "PATH": ""},
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert expected in done.stderr.strip().splitlines()[-1], done.stderr
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_ranking_exports_a_cross_encoder_with_the_same_scores(tmp_path, model_type):
    """Each (query, candidate) pair's score from the exported model equals mtdnn's, for BERT-style (pooler
    + classifier) and RoBERTa-style (classifier.dense + out_proj) sequence heads."""
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "tasks"
    _rank_task(folder, ranking_rows(30, 1), ranking_rows(10, 2))
    extra = (
        ["encoder.from_config.model_type=roberta", "+encoder.from_config.pad_token_id=1"]
        if model_type == "roberta"
        else []
    )
    _train(folder, tmp_path / "run", "task=toy_rank", "trainer.max_steps=10", *extra)
    out = export(ExportConfig(run_dir=str(tmp_path / "run"), task="toy_rank", out=str(tmp_path / "hf")))
    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    assert hf.config.num_labels == 1 and hf.config.model_type == model_type
    loaded = open_run(str(tmp_path / "run"), "best", torch.device("cpu"))
    enc = loaded.tokenizer(
        ["which one", "which one", "another question"],
        ["a b yes", "c d", "e f g"],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        ours, theirs = loaded.model("toy_rank", **enc), hf(**enc).logits.squeeze(-1)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_export_refuses_an_adapter_run(tmp_path):
    folder = write_toy_tasks(tmp_path / "tasks")
    _train(folder, tmp_path / "run", "task=toy_sent", "trainer.max_steps=2", "adapter=bottleneck")
    with pytest.raises(MtdnnError, match="export: this run trained adapters"):
        export(ExportConfig(run_dir=str(tmp_path / "run"), task="toy_sent", out=str(tmp_path / "hf")))
    assert not (tmp_path / "hf").exists()


def test_every_export_carries_a_hub_model_card_with_the_runs_metrics(trained):
    from huggingface_hub import ModelCard

    root, runs = trained
    summary = json.loads((runs["token"] / "summary.json").read_text())
    for task, pipeline in (("toy_squad", "question-answering"), ("toy_ner", "token-classification")):
        out = export(
            ExportConfig(run_dir=str(runs["token"]), task=task, out=str(root / f"card_{task}"), language="de")
        )
        card = ModelCard.load(out / "README.md")  # the Hub's own parser
        assert card.data.pipeline_tag == pipeline and card.data.library_name == "transformers"
        assert card.data.language == "de" and "mtdnn" in card.data.tags
        results = {r.metric_type: r.metric_value for r in card.data.eval_results}
        expected = {k: round(v, 4) for k, v in summary["validation"][task].items()}
        assert results == expected and len(results) >= 2
        assert "## Validation metrics" in card.text and "## Limitations" in card.text
        config = card.text.split("```yaml\n", 1)[1].split("```", 1)[0]
        assert "max_steps: 30" in config and "task:" in config  # the exact run config
    last = export(
        ExportConfig(
            run_dir=str(runs["cls"]), task="toy_sent", out=str(root / "card_last"), checkpoint="last"
        )
    )
    # no metrics claimed for an unevaluated pick
    assert ModelCard.load(last / "README.md").data.eval_results is None
