"""Pair tasks as bi-encoders (`pair_encoding: bi`): stacked batches, SBERT heads, zero-shot scores,
training beside cross-encoder tasks, distillation from a cross-encoder teacher, and the
sentence-transformers export."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import compose_train, tiny_overrides, write_task, write_toy_tasks

from mtdnn.core.errors import MtdnnError
from mtdnn.kinds._bi import BiClassificationHead, CosineHead
from mtdnn.kinds.collate import Collator
from mtdnn.kinds.ranking import BiRankingHead, GroupCollator
from mtdnn.kinds.regression import FeatureRegressionHead
from mtdnn.train import run

TOPICS = ["cat", "dog", "car", "tree", "boat", "lamp"]
FILLER = "the a of and with near over under big small old new".split()


def topic_pairs(n: int, seed: int) -> list[dict]:
    """Two short texts, each about one topic word among filler; score 4 when the topics match, else 0."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        first = rng.choice(TOPICS)
        second = first if rng.random() < 0.5 else rng.choice([t for t in TOPICS if t != first])

        def text(topic: str) -> str:
            words = rng.choices(FILLER, k=rng.randint(1, 3))
            words.insert(rng.randint(0, len(words)), topic)
            return " ".join(words)

        rows.append(
            {
                "a": text(first),
                "b": text(second),
                "score": 4.0 if first == second else 0.0,
                "same": "yes" if first == second else "no",
            }
        )
    return rows


def topic_text(rng: random.Random, topic: str) -> str:
    words = rng.choices(FILLER, k=rng.randint(1, 3))
    words.insert(rng.randint(0, len(words)), topic)
    return " ".join(words)


def topic_groups(n: int, seed: int, size: int = 4) -> list[dict]:
    """A query about one topic and `size` candidate texts, exactly one about the same topic (the answer)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        topics = rng.sample(TOPICS, size)
        answer = rng.randrange(size)
        rows.append(
            {
                "q": topic_text(rng, topics[answer]),
                "opts": [topic_text(rng, t) for t in topics],
                "ans": answer,
            }
        )
    return rows


def write_bi_tasks(folder):
    splits = {"train": topic_pairs(240, 1), "validation": topic_pairs(80, 2)}
    write_task(
        folder,
        "toy_sim",
        "regression",
        splits,
        {"text": "a", "text_pair": "b", "label": "score"},
        pair_encoding="bi",
        label_range=[0, 4],
    )
    write_task(
        folder,
        "toy_same",
        "classification",
        splits,
        {"text": "a", "text_pair": "b", "label": "same"},
        labels=["no", "yes"],
        pair_encoding="bi",
    )
    return folder


# SMART at a size that acts on the tiny random encoder (its defaults are sized for a pretrained one and log
# "too small to matter" here): the bi-encoder paths then train with a real adversarial term
ACTING_SMART = [
    "regularizer=smart",
    "regularizer.smart.scale=absolute",
    "regularizer.smart.norm=l2",
    "regularizer.smart.epsilon=0.05",
    "regularizer.smart.noise_std=0.01",
]


@pytest.fixture(scope="module")
def bi_run(tmp_path_factory):
    folder = write_bi_tasks(write_toy_tasks(tmp_path_factory.mktemp("bi") / "tasks"))
    out = folder.parent / "run"
    summary = run(
        compose_train(
            tiny_overrides(
                folder,
                "task=[toy_sim,toy_same,toy_sent]",
                "trainer.max_steps=240",
                "trainer.lr=3e-3",
                "trainer.eval_every=80",
                "predict_test=false",
                *ACTING_SMART,
            )
        ),
        out,
    )
    return folder, out, summary


@pytest.fixture(scope="module")
def find_run(tmp_path_factory):
    """A bi-encoder ranking task (in-batch negatives) trained beside a cross-encoder task, SMART on."""
    folder = write_toy_tasks(tmp_path_factory.mktemp("find") / "tasks")
    write_task(
        folder,
        "toy_find",
        "ranking",
        {"train": topic_groups(160, 5), "validation": topic_groups(60, 6)},
        {"query": "q", "candidates": "opts", "label": "ans"},
        fmt="jsonl",
        pair_encoding="bi",
        metrics=["accuracy", "mrr"],
    )
    out = folder.parent / "run"
    summary = run(
        compose_train(
            tiny_overrides(
                folder,
                "task=[toy_find,toy_sent]",
                "trainer.max_steps=120",
                "trainer.lr=3e-3",
                "trainer.eval_every=120",
                "predict_test=false",
                *ACTING_SMART,
            )
        ),
        out,
    )
    return out, summary


def test_a_bi_ranking_task_learns_to_find_the_candidate_and_reports_its_zero_shot_score(find_run):
    _, summary = find_run
    found = summary["validation"]["toy_find"]["accuracy"]  # chance: 1 in 4
    assert found > 0.9 and found > summary["zero_shot"]["toy_find"]["accuracy"] + 0.3
    assert set(summary["zero_shot"]) == {"toy_find"}


def test_the_collator_stacks_both_texts_of_each_pair_and_keeps_one_label_per_pair():
    rows = {
        "input_ids": [[2, 5, 3], [2, 6, 7, 8, 3]],
        "attention_mask": [[1, 1, 1], [1] * 5],
        "input_ids_b": [[2, 9, 9, 9, 9, 9, 3], [2, 4, 3]],
        "attention_mask_b": [[1] * 7, [1, 1, 1]],
        "labels": [1.0, 0.0],
    }
    batch = Collator(0, 8, label_dtype=torch.float32)(rows)
    assert batch["input_ids"].shape == (4, 8) and batch["labels"].shape == (2,)
    assert batch["input_ids"][2, :7].tolist() == [
        2,
        9,
        9,
        9,
        9,
        9,
        3,
    ]  # row B + 0: the first pair's second text
    assert batch["attention_mask"].sum(1).tolist() == [3, 5, 7, 3]


def test_the_heads_compute_sbert_objectives_on_mean_pooled_halves():
    torch.manual_seed(0)
    hidden, mask = (
        torch.randn(4, 5, 6),
        torch.tensor([[1, 1, 1, 0, 0], [1] * 5, [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]]),
    )
    mean = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)
    u, v = mean[:2], mean[2:]
    cosine = CosineHead((1.0, 5.0))
    prediction = cosine(hidden, mask, None)
    assert torch.allclose(prediction, 1 + 4 * F.cosine_similarity(u, v))
    labels = torch.tensor([5.0, 1.0])  # CosineSimilarityLoss: MSE(cos, label scaled to [0, 1])
    assert torch.allclose(
        cosine.loss(prediction, {"labels": labels}),
        F.mse_loss(F.cosine_similarity(u, v), torch.tensor([1.0, 0.0])),
    )
    head = BiClassificationHead(6, 3, 0.0).eval()
    expected = head.out(torch.cat([u, v, (u - v).abs()], -1))
    assert torch.allclose(head(hidden, mask, None), expected)
    features = FeatureRegressionHead(6, 0.0).eval()  # bi_score: features, trained as a RegressionHead
    expected = features.out(torch.cat([u, v, (u - v).abs(), u * v], -1)).squeeze(-1)
    assert torch.allclose(features(hidden, mask, None), expected)
    assert torch.allclose(features.loss(expected, {"labels": labels}), F.mse_loss(expected, labels))


def test_bi_tasks_train_beside_a_cross_task_and_report_the_zero_shot_score(bi_run):
    _, out, summary = bi_run
    zero, tuned = summary["zero_shot"]["toy_sim"], summary["validation"]["toy_sim"]
    assert set(summary["zero_shot"]) == {"toy_sim"}  # the softmax head needs training: no zero-shot score
    assert json.loads((out / "zero_shot.json").read_text()) == summary["zero_shot"]
    # the rule, learnt through cosines
    assert tuned["pearson"] > 0.8 and tuned["pearson"] > zero["pearson"] + 0.3
    assert summary["validation"]["toy_same"]["accuracy"] > 0.85
    assert summary["validation"]["toy_sent"]["accuracy"] > 0.9


def bi_ranking_batch(dim: int = 6):
    """Two queries (2 and 3 candidates; the answers: slot 1, slot 0) as the collator stacks them."""
    torch.manual_seed(0)
    rows = {
        "input_ids": [[2, 5, 3], [2, 6, 3]],
        "input_ids_b": [[[2, 7, 3], [2, 8, 8, 3]], [[2, 9, 3]] * 3],
        "labels": [[0, 1], [1, 0, 0]],
    }
    rows["attention_mask"] = [[1] * len(ids) for ids in rows["input_ids"]]
    rows["attention_mask_b"] = [[[1] * len(ids) for ids in group] for group in rows["input_ids_b"]]
    batch = GroupCollator(0, 4)(rows)
    return batch, torch.randn(len(batch["input_ids"]), batch["input_ids"].shape[1], dim)


def test_bi_ranking_batches_queries_then_candidates_and_its_loss_is_multiple_negatives_ranking():
    batch, hidden = bi_ranking_batch()
    assert batch["input_ids"].shape == (7, 4) and batch["group"].tolist() == [0, 0, 1, 1, 1]
    assert batch["slot"].tolist() == [0, 1, 0, 1, 2] and batch["labels"].tolist() == [[0, 1, 0], [1, 0, 0]]
    mask = batch["attention_mask"]
    mean = F.normalize((hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True), dim=-1)
    scores = 20 * mean[:2] @ mean[2:].T  # every query against every candidate of the batch
    head = BiRankingHead("cosine", 20.0, in_batch_negatives=True)
    out = head(hidden, mask, None, group=batch["group"])
    assert torch.allclose(out, scores, atol=1e-5)
    answers = torch.tensor([1, 2])  # flat indices of each query's correct candidate
    assert torch.allclose(head.loss(out, batch), F.cross_entropy(scores, answers), atol=1e-5)
    own = BiRankingHead("cosine", 20.0, in_batch_negatives=False)
    expected = (
        F.cross_entropy(scores[:1, :2], torch.tensor([1]))
        + F.cross_entropy(scores[1:, 2:], torch.tensor([0]))
    ) / 2
    assert torch.allclose(own.loss(out, batch), expected, atol=1e-5)
    assert (
        head.divergence(out, out.flip(1), batch).shape == (2,)
        and head.divergence(out, out, batch).abs().max() < 1e-6
    )
    # candidate 1 (query 0's answer) gets the text of query 1's answer: for query 1 that copy is left out
    # rather
    # than made a negative (a candidate pool shared by queries must not fight itself); for query 0 it stays
    # its own
    batch["input_ids"][3] = batch["input_ids"][4]
    logits = head.softmax_logits(out, batch)
    assert logits[1, 1] < -1e3 and logits[1, 0] == out[1, 0] and logits[0, 1] == out[0, 1]


def test_bi_ranking_inference_encodes_each_distinct_text_once_and_scores_like_embedding_each_alone(find_run):
    from mtdnn import load_run
    from mtdnn.kinds.heads import pool

    out, _ = find_run
    model = load_run(out, device="cpu")
    pool_texts = ["a cat near", "the old boat", "big dog", "tree"]
    queries = ["the cat", "a boat", "old dog", "the tree", "small lamp"]
    seen = []
    hook = model.loaded.model.encoder.register_forward_hook(
        lambda m, args, kwargs, o: seen.append(len(o[0])), with_kwargs=True
    )
    try:
        records = model.predict("toy_find", [{"q": q, "opts": pool_texts} for q in queries], batch_size=4)
    finally:
        hook.remove()
    assert sum(seen) == len(queries) + len(pool_texts)  # not queries x candidates
    assert [r["ranking"][0] for r in records[:4]] == [0, 1, 2, 3]
    tok = model.loaded.tokenizer

    def embed(text: str) -> torch.Tensor:
        enc = tok([text], return_tensors="pt")
        with torch.no_grad():
            return F.normalize(
                pool(
                    model.loaded.model.encoder(**enc).last_hidden_state, enc["attention_mask"], "mean", None
                ),
                dim=-1,
            )[0]

    alone = torch.stack([20 * embed(queries[0]) @ embed(c) for c in pool_texts])
    got = torch.tensor(records[0]["scores"])[torch.argsort(torch.tensor(records[0]["ranking"]))]
    assert torch.allclose(got, alone, atol=1e-4)


def test_the_python_api_scores_pairs_of_a_bi_task_like_evaluate(bi_run):
    from mtdnn import load_run

    _, out, summary = bi_run
    model = load_run(out, device="cpu")
    same, other = model.predict("toy_sim", [("the cat", "a cat near"), ("the cat", "a boat near")])
    assert same["prediction"] > 3 and other["prediction"] < 1
    assert model.predict("toy_same", [("old dog", "the dog")])[0]["label"] == "yes"


def _with_sentence_transformers(folder, expression: str) -> str:
    """`expression` of the folder loaded as `m = SentenceTransformer(folder)`, in a child process without
    mtdnn: what a user of the export gets."""
    code = (
        "import sys, json\nsys.modules['mtdnn'] = None\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"m = SentenceTransformer({str(folder)!r}, device='cpu')\nprint({expression})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_sentence_transformers_export_embeds_like_the_run(bi_run, tmp_path):
    from mtdnn.export import ExportConfig, export
    from mtdnn.kinds._bi import halves
    from mtdnn.serving.loading import open_run

    _, out, _ = bi_run
    folder = export(
        ExportConfig(
            run_dir=str(out), task="toy_sim", out=str(tmp_path / "st"), format="sentence-transformers"
        )
    )
    texts = ["the cat near the tree", "a big old boat", "dog"]
    loaded = open_run(str(out), "best", torch.device("cpu"))
    enc = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = loaded.model.encoder(**enc).last_hidden_state
    # the run's own pair embedding (what its bi head compares), not a pooling written here
    ours, _ = halves(torch.cat([hidden, hidden]), torch.cat([enc["attention_mask"]] * 2))
    encoded = _with_sentence_transformers(folder, f"json.dumps(m.encode({texts!r}).tolist())")
    theirs = torch.tensor(json.loads(encoded))
    assert torch.allclose(theirs, ours, atol=1e-5)
    card = (folder / "README.md").read_text()
    assert "library_name: sentence-transformers" in card and "pipeline_tag: sentence-similarity" in card
    with pytest.raises(MtdnnError, match="bi-encoder.*format=sentence-transformers"):
        export(ExportConfig(run_dir=str(out), task="toy_sim", out=str(tmp_path / "hf")))


@pytest.mark.parametrize("score", ["cosine", "dot"])
def test_the_sentence_transformers_export_compares_embeddings_as_the_task_scores_them(
    find_run, tmp_path, score
):
    """A ranking task scored by the dot product exports similarity_fn_name dot, cosine otherwise; the
    loaded SentenceTransformer reports it."""
    import shutil

    import yaml

    from mtdnn.export import ExportConfig, export

    out, _ = find_run
    run_dir = tmp_path / "run"
    shutil.copytree(out, run_dir)
    spec_file = run_dir / "tasks" / "toy_find.yaml"
    spec = yaml.safe_load(spec_file.read_text())
    spec["bi_score"] = score
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    folder = export(
        ExportConfig(
            run_dir=str(run_dir), task="toy_find", out=str(tmp_path / "st"), format="sentence-transformers"
        )
    )
    assert _with_sentence_transformers(folder, "m.similarity_fn_name") == score


def test_bi_students_distil_from_cross_encoder_teachers(tmp_path):
    """Regression and ranking teachers read pairs jointly; the students read them apart (pair_encoding:
    bi)."""
    folder = write_toy_tasks(tmp_path / "tasks")
    write_task(
        folder,
        "toy_sim",
        "regression",
        {"train": topic_pairs(200, 3), "validation": topic_pairs(60, 4)},
        {"text": "a", "text_pair": "b", "label": "score"},
    )
    write_task(
        folder,
        "toy_find",
        "ranking",
        {"train": topic_groups(120, 7), "validation": topic_groups(60, 8)},
        {"query": "q", "candidates": "opts", "label": "ans"},
        fmt="jsonl",
        metrics=["accuracy"],
    )
    common = [
        "task=[toy_sim,toy_find]",
        "trainer.max_steps=100",
        "trainer.eval_every=100",
        "predict_test=false",
    ]
    run(compose_train(tiny_overrides(folder, *common)), tmp_path / "teacher")
    student = run(
        compose_train(
            tiny_overrides(
                folder,
                *common,
                "distill=ensemble",
                f"distill.teachers=[{tmp_path / 'teacher'}]",
                "+task_overrides.toy_sim.pair_encoding=bi",
                "+task_overrides.toy_sim.label_range=[0,4]",
                "+task_overrides.toy_find.pair_encoding=bi",
            )
        ),
        tmp_path / "student",
    )
    assert set(student["zero_shot"]) == {"toy_sim", "toy_find"}
    assert {r["task"] for r in student["distillation"]} == {"toy_sim", "toy_find"}
    for task, metric in (("toy_sim", "pearson"), ("toy_find", "accuracy")):
        assert student["validation"][task][metric] > student["zero_shot"][task][metric] + 0.1, task
    with pytest.raises(MtdnnError, match="on_the_fly .* pair_encoding cross"):
        run(
            compose_train(
                tiny_overrides(
                    folder,
                    *common,
                    "distill=ensemble",
                    "distill.soft_targets=on_the_fly",
                    f"distill.teachers=[{tmp_path / 'teacher'}]",
                    "+task_overrides.toy_sim.pair_encoding=bi",
                )
            ),
            tmp_path / "s2",
        )


@pytest.mark.parametrize(
    "override, message",
    [
        ("+task_overrides.toy_sent.pair_encoding=bi", "columns.text_pair: required with pair_encoding: bi"),
        ("+task_overrides.toy_count.pair_encoding=both", "pair_encoding: must be cross or bi"),
        ("+task_overrides.toy_count.label_range=[2,1]", "label_range: must be \\[low, high\\]"),
    ],
)
def test_bad_pair_settings_are_one_clear_line_each(toy_tasks, tmp_path, override, message):
    with pytest.raises(MtdnnError, match=message):
        run(compose_train(tiny_overrides(toy_tasks, "task=[toy_sent,toy_count]", override)), tmp_path / "run")


def test_bad_bi_ranking_settings_are_reported_together(tmp_path):
    from mtdnn.data.tasks import load_tasks

    write_task(
        tmp_path,
        "find",
        "ranking",
        {"train": topic_groups(4, 1)},
        {"query": "q", "candidates": "opts", "label": "ans"},
        fmt="jsonl",
        pair_encoding="bi",
        bi_score="euclid",
        bi_scale=-1,
        in_batch_negatives="yes",
    )
    with pytest.raises(MtdnnError) as err:
        load_tasks(["find"], [str(tmp_path)])
    text = str(err.value)
    assert (
        "bi_score: must be cosine or dot, got 'euclid'" in text
        and "bi_scale: must be a positive number" in text
    )
    assert (
        "in_batch_negatives: expected bool" in text
        and "text_pair" not in text
        and text.count("in_batch") == 1
    )
    assert text.count("find.yaml") >= 3  # every line names the file


def test_smart_acts_in_the_bi_encoder_runs(bi_run, find_run):
    """The fixtures' SMART is not inert: its adversarial term is a real share of the bi tasks' loss."""
    for out in (bi_run[1], find_run[0]):
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        shares = [r[key] for r in log for key in r if key.startswith("smart_adv_to_loss")]
        assert shares and sum(shares) / len(shares) > 1e-3, (out, shares[:5])
