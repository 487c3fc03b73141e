"""The Python API (`from mtdnn import load_run`): the same records as `mtdnn.predict` for every head kind,
from texts, pairs or rows, without Hydra or files."""

from __future__ import annotations

import json

import pytest
from conftest import compose_train, tiny_overrides, write_toy_tasks
from test_heads import _rank_task, _span_task, _tag_task, ranking_rows, squad_rows, tagging_rows

from mtdnn.core.errors import MtdnnError
from mtdnn.train import run

TASKS = ["toy_sent", "toy_count", "toy_squad", "toy_rank", "toy_ner"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = write_toy_tasks(tmp_path_factory.mktemp("predictor") / "tasks")
    _span_task(folder, squad_rows(30, 1), squad_rows(8, 2))
    _rank_task(folder, ranking_rows(30, 3), ranking_rows(8, 4))
    _tag_task(folder, tagging_rows(30, 5), tagging_rows(8, 6))
    out = folder.parent / "run"
    run(
        compose_train(
            tiny_overrides(
                folder,
                f"task=[{','.join(TASKS)}]",
                "trainer.max_steps=6",
                "trainer.eval_every=6",
                "predict_test=false",
            )
        ),
        out,
    )
    return folder, out


def _rows(path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    import pandas as pd

    return pd.read_csv(path).to_dict("records")


@pytest.mark.parametrize("task", TASKS)
def test_the_api_gives_the_predict_commands_records_for_every_kind(trained, task, tmp_path):
    from mtdnn import load_run
    from mtdnn.predict import PredictConfig, predict

    folder, out = trained
    source = next(folder.glob(f"{task}_validation.*"))
    written = predict(
        PredictConfig(run_dir=str(out), task=task, input=str(source), out=str(tmp_path / "p.jsonl"))
    )
    expected = [json.loads(line) for line in written.read_text().splitlines()]
    got = load_run(out, device="cpu").predict(task, _rows(source), batch_size=128)  # predict's batch size
    assert len(got) == len(expected) > 0
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_texts_pairs_and_sentences_are_accepted_as_they_are(trained):
    from mtdnn import load_run

    _, out = trained
    model = load_run(out, device="cpu")
    assert sorted(model.tasks) == sorted(TASKS)
    texts = ["a good film", "an awful plot"]
    as_texts = model.predict("toy_sent", texts)
    assert as_texts == model.predict("toy_sent", [{"sentence": t} for t in texts])
    assert [r["text"] for r in as_texts] == texts and all(r["label"] in ("neg", "pos") for r in as_texts)
    pairs = model.predict("toy_count", [("one two", "three"), ("four", "five six seven")])
    assert [type(r["prediction"]) for r in pairs] == [float, float]
    tags = model.predict("toy_ner", ["alice met bob in paris"])
    assert len(tags[0]["tags"]) == 5
    with pytest.raises(
        MtdnnError, match=r"inputs\[0\]: task toy_count \(regression\) takes a \(text, text_pair\)"
    ):
        model.predict("toy_count", ["just one text"])
    with pytest.raises(
        MtdnnError, match="predict\\(\\) input: columns.text: split 'test' row 2: text is empty"
    ):
        model.predict("toy_sent", ["fine", "  "])
    with pytest.raises(MtdnnError, match="task: 'nope' was not trained"):
        model.predict("nope", texts)


@pytest.mark.parametrize(
    "task, inputs",
    [
        ("toy_sent", ["a good film", "an awful plot", "good", "awful awful awful and long"]),
        ("toy_sent", [{"sentence": "good", "extra": 1}, {"sentence": "an awful plot", "extra": 2}]),
        ("toy_count", [("one two", "three"), ("four", "five six seven"), ("eight", "nine")]),
    ],
)
def test_clean_texts_skip_datasets_and_give_the_checked_paths_records(trained, task, inputs, monkeypatch):
    """Clean texts are served from memory (no `datasets` table is built); the records are those of the
    checked path, batch for batch."""
    import datasets

    from mtdnn import load_run
    from mtdnn.serving import predictor

    model = load_run(trained[1], device="cpu")

    def refuse(*_args, **_kwargs):
        raise AssertionError("a datasets table was built")

    with monkeypatch.context() as patched:
        patched.setattr(datasets.Dataset, "from_list", refuse)
        fast = model.predict(task, inputs, batch_size=2)
    monkeypatch.setattr(predictor, "clean_texts", lambda spec, rows: False)
    checked = model.predict(task, inputs, batch_size=2)
    assert len(fast) == len(inputs) and json.dumps(fast) == json.dumps(checked)


def test_inputs_the_checks_must_see_take_the_checked_path(trained):
    from mtdnn.serving.predictor import clean_texts

    model = trained[1]
    from mtdnn import load_run

    spec = load_run(model, device="cpu").loaded.specs["toy_sent"]
    assert clean_texts(spec, [{"sentence": "fine"}, {"sentence": "good"}])
    assert not clean_texts(spec, [{"sentence": "fine"}, {"sentence": "  "}])  # blank: its message
    assert not clean_texts(spec, [{"sentence": "fine"}, {"sentence": 3}])  # not a text
    assert not clean_texts(spec, [{"sentence": "fine"}, {"sentence": "x", "other": 1}])  # ragged columns
    assert not clean_texts(spec, [{"sentence": "fine", "label": "pos"}])  # gold labels: scored, checked
    assert not clean_texts(spec, [{"text": "fine"}])  # the task's column missing
    ranking = load_run(model, device="cpu").loaded.specs["toy_rank"]
    assert not clean_texts(ranking, [{"query": "q", "candidate": "c", "group": 1, "label": 1}])


def test_one_off_rows_skip_hashing_the_tokenizer_and_training_splits_keep_their_content_key(tmp_path):
    """map_rows: predict() input gets a fresh fingerprint instead of pickling the tokenizer per call;
    training data (in memory or read from disk) keeps datasets' content fingerprint, which cache files and
    soft-target stores are keyed by."""
    import datasets

    from mtdnn.kinds import ONE_OFF_ROWS, map_rows

    def upper(batch):
        return {"t": [x.upper() for x in batch["t"]]}

    memory = datasets.Dataset.from_dict({"t": ["a", "b"]})
    assert map_rows(memory, upper, "x")._fingerprint == map_rows(memory, upper, "x")._fingerprint
    token = ONE_OFF_ROWS.set(True)
    try:
        first, second = map_rows(memory, upper, "x"), map_rows(memory, upper, "x")
        memory.save_to_disk(str(tmp_path / "ds"))
        disk = datasets.load_from_disk(str(tmp_path / "ds"))
        assert disk.cache_files
        assert map_rows(disk, upper, "x")._fingerprint == map_rows(disk, upper, "x")._fingerprint
    finally:
        ONE_OFF_ROWS.reset(token)
    assert first["t"] == ["A", "B"] and first._fingerprint != second._fingerprint


def test_predict_draws_no_progress_bar_and_leaves_the_setting_as_it_was(trained, capsys):
    import datasets

    from mtdnn import load_run

    _, out = trained
    model = load_run(out, device="cpu")
    datasets.enable_progress_bars()
    model.predict("toy_sent", ["a good film"])
    assert "tokenising" not in capsys.readouterr().err
    assert not datasets.are_progress_bars_disabled()


def test_inputs_without_the_tasks_id_column_are_numbered_by_position():
    from mtdnn.data.tasks import ColumnsSpec, SourceSpec, TaskSpec
    from mtdnn.serving.predictor import as_row, with_id

    spec = TaskSpec(
        name="sim",
        head="regression",
        source=SourceSpec(kind="files"),
        columns=ColumnsSpec(text="a", text_pair="b", label="score", id="pair"),
    )
    assert with_id(spec, as_row(spec, ("x", "y"), 3), 3) == {"a": "x", "b": "y", "pair": 3}
    assert with_id(spec, {"a": "x", "b": "y", "pair": "p7"}, 0)["pair"] == "p7"  # a given id is kept


@pytest.mark.parametrize("one", ["a good film", b"a good film", {"sentence": "a good film"}])
def test_one_input_instead_of_a_list_is_refused_not_predicted_piece_by_piece(trained, one):
    from mtdnn import load_run
    from mtdnn.core.errors import MtdnnError

    _, out = trained
    model = load_run(out, device="cpu")
    with pytest.raises(
        MtdnnError, match=r"^inputs: give a list of inputs, not one (str|bytes|dict): predict"
    ):
        model.predict("toy_sent", one)
    assert len(model.predict("toy_sent", [one if not isinstance(one, bytes) else one.decode()])) == 1


def test_classification_records_are_the_model_s_own_argmax_and_the_command_writes_them(trained, tmp_path):
    """A reference independent of the decoding code: the raw model's logits for each text, softmaxed here, and
    the label at the argmax of the task's label list; the command line (a child process) writes the same."""
    import os
    import subprocess
    import sys

    import torch

    from mtdnn import load_run
    from mtdnn.serving.loading import open_run

    _, out = trained
    texts = ["a good film", "an awful plot", "good good fine", "awful bad film"]
    loaded = open_run(str(out), "best", torch.device("cpu"))
    encoded = loaded.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        probabilities = loaded.model("toy_sent", **encoded).float().softmax(-1)
    labels = loaded.specs["toy_sent"].labels
    records = load_run(out, device="cpu").predict("toy_sent", texts)
    assert [r["label"] for r in records] == [labels[int(i)] for i in probabilities.argmax(-1)]
    for record, row in zip(records, probabilities.tolist()):
        assert [record["scores"][name] for name in labels] == pytest.approx(row, abs=1e-5)

    source = tmp_path / "inputs.csv"
    source.write_text("sentence\n" + "\n".join(texts) + "\n")
    written = tmp_path / "out.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtdnn.predict",
            f"run_dir={out}",
            "task=toy_sent",
            f"input={source}",
            f"out={written}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert [json.loads(line)["label"] for line in written.read_text().splitlines()] == [
        r["label"] for r in records
    ]
