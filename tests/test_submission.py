"""Benchmark submission files (`mtdnn.predict format=glue|superglue`) from a task YAML's `submission:`
block."""

from __future__ import annotations

import json

import pytest
from conftest import compose_train, sentiment_rows, tiny_overrides, write_task
from test_heads import _rank_task, ranking_rows

from mtdnn.core.errors import MtdnnError
from mtdnn.predict import PredictConfig, predict
from mtdnn.train import run


def test_glue_and_superglue_files_hold_the_servers_labels_in_id_order(tmp_path):
    folder = tmp_path / "tasks"

    def with_ids(rows: list[dict]) -> list[dict]:  # ids in reverse order: the file must come out sorted
        return [{**row, "idx": len(rows) - 1 - i} for i, row in enumerate(rows)]

    write_task(
        folder,
        "sst",
        "classification",
        {
            "train": with_ids(sentiment_rows(60, 1)),
            "validation": with_ids(sentiment_rows(20, 2)),
            "test": with_ids(sentiment_rows(10, 3)),
        },
        {"text": "sentence", "label": "label", "id": "idx"},
        labels=["neg", "pos"],
        submission={"benchmark": "glue", "file": "SST-2.tsv", "labels": ["0", "1"]},
    )
    _rank_task(
        folder,
        ranking_rows(30, 3),
        ranking_rows(8, 4),
        submission={"benchmark": "superglue", "file": "COPA.jsonl"},
    )
    out = tmp_path / "run"
    run(
        compose_train(
            tiny_overrides(
                folder,
                "task=[sst,toy_rank]",
                "trainer.max_steps=6",
                "trainer.eval_every=6",
                "predict_test=false",
            )
        ),
        out,
    )
    records = [
        json.loads(line)
        for line in predict(PredictConfig(run_dir=str(out), task="sst")).read_text().splitlines()
    ]
    tsv = predict(PredictConfig(run_dir=str(out), task="sst", format="glue"))
    assert tsv == out / "submission" / "SST-2.tsv"
    lines = tsv.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 11
    by_id = {r["id"]: str(["neg", "pos"].index(r["label"])) for r in records}
    assert [line.split("\t") for line in lines[1:]] == [[str(i), by_id[i]] for i in range(10)]

    ranked = predict(
        PredictConfig(
            run_dir=str(out),
            task="toy_rank",
            split="validation",
            format="superglue",
            out=str(tmp_path / "COPA.jsonl"),
        )
    )
    rows = [json.loads(line) for line in ranked.read_text().splitlines()]
    expected = [
        json.loads(line)
        for line in predict(
            PredictConfig(
                run_dir=str(out), task="toy_rank", split="validation", out=str(tmp_path / "r.jsonl")
            )
        )
        .read_text()
        .splitlines()
    ]
    assert rows == [
        {"idx": r["id"], "label": r["ranking"][0]} for r in sorted(expected, key=lambda r: r["id"])
    ]
    assert len(rows) == 8
    with pytest.raises(MtdnnError, match="format: task toy_rank has no `submission: {benchmark: glue"):
        predict(PredictConfig(run_dir=str(out), task="toy_rank", format="glue"))
    with pytest.raises(MtdnnError, match="format: must be jsonl, glue or superglue, got 'kaggle'"):
        predict(PredictConfig(run_dir=str(out), task="sst", format="kaggle"))


def test_shipped_glue_tasks_name_the_servers_files():
    from mtdnn.data.tasks import load_tasks

    files = {
        s.name: s.submission.file
        for s in load_tasks(["cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"])
    }
    assert files == {
        "cola": "CoLA.tsv",
        "sst2": "SST-2.tsv",
        "mrpc": "MRPC.tsv",
        "qqp": "QQP.tsv",
        "stsb": "STS-B.tsv",
        "mnli": "MNLI-m.tsv",
        "qnli": "QNLI.tsv",
        "rte": "RTE.tsv",
        "wnli": "WNLI.tsv",
    }


def test_a_submission_label_list_of_the_wrong_length_is_a_task_yaml_problem(tmp_path):
    from pathlib import Path

    from mtdnn.data.tasks import parse_task

    data = {
        "name": "t",
        "head": "classification",
        "labels": ["neg", "pos"],
        "columns": {"text": "s", "label": "y"},
        "source": {"kind": "files", "splits": {"train": "t.csv"}},
        "submission": {"benchmark": "glue", "file": "T.tsv", "labels": ["0", "1", "2"]},
    }
    _, problems = parse_task(Path(tmp_path / "t.yaml"), data)
    assert problems == [f"{tmp_path / 't.yaml'}: submission.labels: 3 strings for 2 labels"]
