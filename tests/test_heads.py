"""Span, ranking and tagging: windows and offsets, metrics by hand, bad rows, and tiny models learning toy
rules."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from conftest import WORDS, compose_train, tiny_overrides, write_task

from mtdnn.core.errors import MtdnnError
from mtdnn.data.loading import encode_splits
from mtdnn.data.tasks import load_tasks
from mtdnn.kinds import ranking, span, tagging
from mtdnn.kinds.ranking import RankingHead
from mtdnn.kinds.span import SpanHead
from mtdnn.kinds.tagging import TaggingHead
from mtdnn.model.encoders import train_wordpiece
from mtdnn.train import run
from mtdnn.training.build import prepare_data

COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]


def squad_rows(n: int, seed: int, length=(6, 14)) -> list[dict]:
    """Toy span rule: the answer is the one colour word in the context."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = rng.choices(WORDS, k=rng.randint(*length))
        colour = rng.choice(COLORS)
        words.insert(rng.randint(0, len(words)), colour)
        context = " ".join(words)
        rows.append(
            {
                "id": f"q{i}",
                "question": "which colour is named",
                "context": context,
                "answers": {
                    "text": [colour],
                    "answer_start": [
                        context.index(f" {colour}") + 1 if not context.startswith(colour) else 0
                    ],
                },
            }
        )
    return rows


def ranking_rows(n: int, seed: int) -> list[dict]:
    """Toy ranking rule: the correct candidate contains 'yes'; groups have 3 to 5 candidates."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        size = rng.randint(3, 5)
        candidates = [" ".join(rng.choices(WORDS, k=4)) for _ in range(size)]
        correct = rng.randrange(size)
        candidates[correct] += " yes"
        rows.append({"qid": f"g{i}", "question": "which one", "options": candidates, "answer": correct})
    return rows


CITIES, PEOPLE = ["paris", "london", "rome"], ["alice", "bob", "carol"]


def tagging_rows(n: int, seed: int) -> list[dict]:
    """Toy NER rule: cities are LOC ('new york' is one two-word LOC), first names PER."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words, tags = [], []
        for _ in range(rng.randint(4, 9)):
            kind = rng.random()
            if kind < 0.15:
                words += ["new", "york"]
                tags += ["B-LOC", "I-LOC"]
            elif kind < 0.3:
                words.append(rng.choice(CITIES))
                tags.append("B-LOC")
            elif kind < 0.45:
                words.append(rng.choice(PEOPLE))
                tags.append("B-PER")
            else:
                words.append(rng.choice(WORDS))
                tags.append("O")
        rows.append({"words": words, "ner": tags})
    return rows


def _span_task(folder, rows_train, rows_val, **extra):
    return write_task(
        folder,
        "toy_squad",
        "span",
        {"train": rows_train, "validation": rows_val},
        {"id": "id", "question": "question", "context": "context", "answers": "answers"},
        fmt="jsonl",
        **{"max_length": 32, "doc_stride": 8, **extra},
    )


def _rank_task(folder, rows_train, rows_val, **extra):
    return write_task(
        folder,
        "toy_rank",
        "ranking",
        {"train": rows_train, "validation": rows_val},
        {"id": "qid", "query": "question", "candidates": "options", "label": "answer"},
        fmt="jsonl",
        **extra,
    )


def _tag_task(folder, rows_train, rows_val, **extra):
    return write_task(
        folder,
        "toy_ner",
        "tagging",
        {"train": rows_train, "validation": rows_val},
        {"tokens": "words", "tags": "ner"},
        fmt="jsonl",
        labels=["O", "B-LOC", "I-LOC", "B-PER", "I-PER"],
        **extra,
    )


# ---------------------------------------------------------------- span windows and decoding


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_windows_and_offsets_recover_the_exact_answer(tmp_path, where):
    rng = random.Random(0)
    words = [rng.choice(WORDS) for _ in range(80)]
    position = {"first": 2, "middle": 40, "last": 77}[where]
    words[position] = "crimson"
    context = " ".join(words)
    start = len(" ".join(words[:position])) + 1
    row = {
        "id": "x",
        "question": "which colour",
        "context": context,
        "answers": {"text": ["crimson"], "answer_start": [start]},
    }
    _span_task(tmp_path, [row], [row])
    data = prepare_data(load_tasks(["toy_squad"], [str(tmp_path)]))["toy_squad"]
    encode_splits(data, train_wordpiece([context, "which colour"], 200))
    windows = data.encoded["train"]
    assert len(windows) >= 4  # 80 words in 32-token windows
    hits = [i for i in range(len(windows)) if windows[i]["labels"] != [0, 0]]
    assert hits, "no window holds the answer"
    expected_window = {"first": 0, "middle": None, "last": len(windows) - 1}[where]
    if expected_window is not None:
        assert expected_window in hits
    else:
        assert any(0 < i < len(windows) - 1 for i in hits)
    for i in hits:
        s, e = windows[i]["labels"]
        offsets = windows[i]["offsets"]
        assert context[offsets[s][0] : offsets[e][1]] == "crimson"
    # decoding peaked logits at the gold tokens gives back the gold text, across all windows
    logits = []
    for i in range(len(windows)):
        x = np.full((len(windows[i]["offsets"]), 2), -5.0)
        s, e = windows[i]["labels"]
        x[s, 0], x[e, 1] = (5.0, 5.0) if i in hits else (0.0, 0.0)
        logits.append(x)
    records = span.decode(data.spec, data.raw["train"], windows, logits)
    assert records[0]["answer"] == "crimson"
    assert span.span_metrics(data.spec, data.raw["train"], records)["exact_match"] == 1.0


def test_squad_normalisation_and_metrics_by_hand():
    assert span.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert span.exact_match("the Eiffel Tower", "Eiffel Tower.") == 1.0
    assert span.token_f1("eiffel tower in paris", "the eiffel tower") == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert span.token_f1("", "") == 1.0 and span.token_f1("x", "") == 0.0

    class Spec:
        metrics = ["f1", "exact_match"]

        class options:
            allow_no_answer = True

        class columns:
            answers = "answers"

    import datasets

    raw = datasets.Dataset.from_dict(
        {
            "answers": [
                {"text": ["Paris", "in Paris"], "answer_start": [0, 0]},
                {"text": [], "answer_start": []},
            ]
        }
    )
    records = [{"answer": "paris france"}, {"answer": ""}]
    scores = span.span_metrics(Spec, raw, records)
    assert scores["exact_match"] == 0.5  # row 1 wrong, row 2 (no answer) right
    # max over gold: 'in paris' -> F1 1/2, 'paris' -> 2/3
    assert scores["f1"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores["has_answer_f1"] == pytest.approx(2 / 3) and scores["no_answer_exact_match"] == 1.0


# ---------------------------------------------------------------- ranking and tagging metrics


def test_mrr_map_with_ties_and_unequal_groups_by_hand():
    # ties keep candidate order: scores [1, 1, 0] with the correct one second -> rank 2
    assert ranking.group_metrics(np.array([1.0, 1.0, 0.0]), [0, 1, 0]) == {
        "accuracy": 0.0,
        "mrr": 0.5,
        "map": 0.5,
    }
    # two relevant of five: ranks 1 and 3 -> AP = (1/1 + 2/3) / 2
    got = ranking.group_metrics(np.array([0.9, 0.1, 0.5, 0.7, 0.0]), [1, 0, 1, 0, 0])
    assert got["mrr"] == 1.0 and got["map"] == pytest.approx((1 + 2 / 3) / 2) and got["accuracy"] == 1.0

    class Spec:
        metrics = ["accuracy", "mrr", "map"]

    import datasets

    raw = datasets.Dataset.from_dict(
        {
            "id": ["a", "b"],
            "query": ["q", "r"],
            "candidates": [["x", "y", "z"], ["u", "v"]],
            "relevance": [[0, 0, 1], [1, 0]],
        }
    )
    records, scores = ranking.group_records(Spec, raw, [np.array([0.3, 0.2, 0.1]), np.array([0.0, 2.0])])
    assert scores == {
        "accuracy": 0.0,
        "mrr": pytest.approx((1 / 3 + 1 / 2) / 2),
        "map": pytest.approx((1 / 3 + 1 / 2) / 2),
    }
    assert records[1]["ranking"] == [1, 0]


def test_entity_f1_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "O"]]
    pred = [["B-PER", "I-PER", "O", "B-PER"], ["B-LOC", "O", "O"]]
    scores = tagging.tag_metrics(pred, gold)
    # gold entities: PER(0-1), LOC(3), LOC(0-1); predicted: PER(0-1), PER(3), LOC(0) -> 1 correct of 3 and 3
    assert scores["entity_precision"] == pytest.approx(1 / 3) and scores["entity_recall"] == pytest.approx(
        1 / 3
    )
    assert scores["entity_f1"] == pytest.approx(1 / 3)
    assert scores["token_accuracy"] == pytest.approx(5 / 7)
    assert tagging.entities(["I-LOC", "I-LOC", "O", "I-PER"]) == {("LOC", 0, 1), ("PER", 3, 3)}


# ---------------------------------------------------------------- bad rows


def test_span_answer_that_does_not_match_its_context(tmp_path):
    rows = squad_rows(5, 0)
    rows[3]["answers"]["answer_start"] = [0]
    rows[3]["answers"]["text"] = ["zebra"]
    path = _span_task(tmp_path, rows, squad_rows(3, 1))
    with pytest.raises(MtdnnError) as info:
        prepare_data(load_tasks(["toy_squad"], [str(tmp_path)]))
    assert str(info.value).startswith(
        f"{path}: columns.answers: split 'train' row 4: answer 'zebra' does not match the context at offset 0"
    )


def test_ranking_group_without_a_correct_candidate_and_skip_mode(tmp_path):
    rows = ranking_rows(6, 0)
    rows[2]["answer"] = []
    path = _rank_task(tmp_path, rows, ranking_rows(3, 1))
    with pytest.raises(MtdnnError) as info:
        prepare_data(load_tasks(["toy_rank"], [str(tmp_path)]))
    assert (
        str(info.value) == f"{path}: columns.label: split 'train' row 3: group 'g2' has no correct candidate"
    )
    _rank_task(tmp_path, rows, ranking_rows(3, 1), on_bad_row="skip")
    data = prepare_data(load_tasks(["toy_rank"], [str(tmp_path)]))["toy_rank"]
    assert data.skipped_rows == {"train": 1} and len(data.raw["train"]) == 5


def test_mismatched_word_and_tag_lengths(tmp_path):
    rows = tagging_rows(5, 0)
    rows[1]["ner"] = rows[1]["ner"][:-1]
    path = _tag_task(tmp_path, rows, tagging_rows(2, 1))
    with pytest.raises(MtdnnError) as info:
        prepare_data(load_tasks(["toy_ner"], [str(tmp_path)]))
    n = len(rows[1]["words"])
    assert str(info.value) == f"{path}: columns.tags: split 'train' row 2: {n} words but {n - 1} tags"


def test_one_row_per_candidate_layout_regroups(tmp_path):
    flat = [
        {"qid": g, "q": "which", "cand": c, "ok": int(c.endswith("yes"))}
        for g, row in enumerate(ranking_rows(4, 2))
        for c in row["options"]
    ]
    write_task(
        tmp_path,
        "flat",
        "ranking",
        {"train": flat},
        {"query": "q", "text": "cand", "group": "qid", "label": "ok"},
    )
    data = prepare_data(load_tasks(["flat"], [str(tmp_path)]))["flat"]
    assert len(data.raw["train"]) == 4
    assert all(sum(r) == 1 for r in data.raw["train"]["relevance"])


# ---------------------------------------------------------------- heads


def test_ranking_loss_softmaxes_within_groups_of_unequal_size():
    scores = torch.tensor([2.0, 0.0, 1.0, 0.5, 0.5])  # group 0: 3 candidates, group 1: 2
    batch = {
        "group": torch.tensor([0, 0, 0, 1, 1]),
        "slot": torch.tensor([0, 1, 2, 0, 1]),
        "labels": torch.tensor([[0, 0, 1], [1, 0, 0]]),
    }
    expected = (-torch.log_softmax(torch.tensor([2.0, 0.0, 1.0]), 0)[2] - torch.log(torch.tensor(0.5))) / 2
    assert RankingHead.loss(scores, batch).item() == pytest.approx(expected.item(), rel=1e-6)
    assert RankingHead.divergence(scores, scores, batch).tolist() == [0.0, 0.0]


def test_span_and_tagging_heads_ignore_padding():
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    logits = SpanHead(8, 1, 0.0)(hidden, mask, None)
    assert (logits[0, 4:] < -1e3).all()
    tagger = TaggingHead(8, 3, 0.0)
    a = tagger(hidden, mask, None)
    b = a.clone()
    b[0, 4:] += 10.0  # changes only at padding positions
    assert TaggingHead.divergence(a, b, {"attention_mask": mask})[0].item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- learning toy rules, all heads together


def test_all_head_types_train_together_and_learn_their_toy_rules(tmp_path):
    folder = tmp_path / "tasks"
    _span_task(folder, squad_rows(300, 1), squad_rows(60, 2))
    _rank_task(folder, ranking_rows(300, 3), ranking_rows(60, 4))
    _tag_task(folder, tagging_rows(300, 5), tagging_rows(60, 6))
    write_task(
        folder,
        "toy_sent",
        "classification",
        {
            "train": [{"s": f"{w} great", "y": "pos"} for w in WORDS] * 10
            + [{"s": f"{w} awful", "y": "neg"} for w in WORDS] * 10,
            "validation": [{"s": "movie great", "y": "pos"}, {"s": "plot awful", "y": "neg"}],
        },
        {"text": "s", "label": "y"},
        labels=["neg", "pos"],
    )
    cfg = compose_train(
        tiny_overrides(
            folder,
            "task=[toy_squad,toy_rank,toy_ner,toy_sent]",
            "sampler=uniform",
            "trainer.max_steps=320",
            "trainer.evals_per_epoch=1",
            "predict_test=false",
            "encoder.tokenizer_vocab_size=300",
        )
    )
    summary = run(cfg, tmp_path / "run")
    val = summary["validation"]
    assert val["toy_squad"]["exact_match"] > 0.8  # chance: about 1 in 10 tokens
    assert val["toy_rank"]["accuracy"] > 0.8 and val["toy_rank"]["mrr"] > 0.85  # chance: ~0.25
    assert val["toy_ner"]["entity_f1"] > 0.8
    assert val["toy_sent"]["accuracy"] == 1.0
    from mtdnn.predict import PredictConfig, predict

    out = predict(PredictConfig(run_dir=str(tmp_path / "run"), task="toy_squad", split="validation"))
    official = json.loads(out.with_suffix(".json").read_text())  # the official SQuAD evaluation's input
    gold = {r["id"]: r["answers"]["text"][0] for r in squad_rows(60, 2)}
    assert official.keys() == gold.keys()
    assert sum(official[k] == gold[k] for k in gold) / len(gold) > 0.8
    ranked = [
        json.loads(line)
        for line in predict(PredictConfig(run_dir=str(tmp_path / "run"), task="toy_rank", split="validation"))
        .read_text()
        .splitlines()
    ]
    assert len(ranked) == 60 and all(len(r["ranking"]) == len(r["scores"]) >= 3 for r in ranked)
    gold = {r["qid"]: r["answer"] for r in ranking_rows(60, 4)}  # ids are the group column's own values
    top_right = sum(r["ranking"][0] == gold[r["id"]] for r in ranked) / 60
    assert top_right == pytest.approx(val["toy_rank"]["accuracy"])  # the records rank as the metric says
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in ranked)  # best first


def test_smart_on_span_ranking_and_tagging(tmp_path):
    folder = tmp_path / "tasks"
    _span_task(folder, squad_rows(40, 1), squad_rows(10, 2))
    _rank_task(folder, ranking_rows(40, 3), ranking_rows(10, 4))
    _tag_task(folder, tagging_rows(40, 5), tagging_rows(10, 6))
    cfg = compose_train(
        tiny_overrides(
            folder,
            "task=[toy_squad,toy_rank,toy_ner]",
            "regularizer=smart",
            "trainer.max_steps=24",
            "trainer.log_every=1",
            "predict_test=false",
            "regularizer.smart.epsilon=1e-3",
            "regularizer.smart.noise_std=1e-3",
            "regularizer.smart.mu=1",
        )
    )
    run(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    for task in ("toy_squad", "toy_rank", "toy_ner"):
        adv = [r[f"smart_adv/{task}"] for r in log if f"smart_adv/{task}" in r]
        prox = [r[f"smart_prox/{task}"] for r in log if f"smart_prox/{task}" in r]
        assert adv and min(adv) > 0 and prox and all(np.isfinite(prox))
    assert log[-1]["smart_skipped"] == 0


# a negative threshold answers even when [CLS] is ahead by less than 1.5
@pytest.mark.parametrize(
    "threshold, null_score, expected",
    [
        (0.0, 3.0, "hello world"),  # best span 2 + 2 = 4 beats the [CLS] score 3 by 1 > 0
        (1.5, 3.0, ""),  # ... but not by more than 1.5
        (0.0, 5.0, ""),  # the [CLS] score wins
        (-1.5, 5.0, "hello world"),
    ],
)
def test_v2_decoding_answers_only_when_the_span_beats_no_answer_by_the_threshold(
    threshold, null_score, expected
):
    import datasets

    from mtdnn.data.tasks import ColumnsSpec, SourceSpec, TaskSpec

    spec = TaskSpec(
        name="q",
        head="span",
        source=SourceSpec(kind="files"),
        columns=ColumnsSpec(question="question", context="context", answers="answers"),
    )
    spec.options.allow_no_answer, spec.options.no_answer_threshold = True, threshold
    raw = datasets.Dataset.from_dict({"question": ["what"], "context": ["hello world"], "answers": [None]})
    offsets = [[-1, -1], [0, 5], [6, 11], [-1, -1]]  # [CLS] hello world [SEP]
    encoded = datasets.Dataset.from_dict({"example": [0], "offsets": [offsets]})
    logits = np.full((4, 2), -9.0)
    logits[0] = null_score / 2  # start and end at [CLS]: the no-answer score
    logits[1, 0], logits[2, 1] = 2.0, 2.0  # start at 'hello', end at 'world'
    (record,) = span.decode(spec, raw, encoded, [logits])
    assert record["answer"] == expected and record["no_answer_score"] == pytest.approx(null_score)
    assert record["score"] == pytest.approx(4.0)
