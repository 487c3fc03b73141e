"""Bad input gives one clear message naming the file and field (and row for data), all problems at once."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from conftest import sentiment_rows, write_task

from mtdnn.core.errors import MtdnnError
from mtdnn.data.tasks import load_tasks
from mtdnn.training.build import prepare_data


def _task(folder, name="t", **changes):
    path = write_task(
        folder,
        name,
        "classification",
        {"train": sentiment_rows(20, 0), "validation": sentiment_rows(10, 1)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    spec = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        target = spec
        *parents, leaf = key.split(".")
        for p in parents:
            target = target[p]
        target[leaf] = value
    path.write_text(yaml.safe_dump(spec))
    return path


def _data_error(folder, name="t") -> str:
    specs = load_tasks([name], [str(folder)])
    with pytest.raises(MtdnnError) as info:
        prepare_data(specs)
    return str(info.value)


def test_misspelled_column_names_file_field_and_suggests(tmp_path):
    path = _task(tmp_path, **{"columns.text": "sentnce"})
    message = _data_error(tmp_path)
    assert str(path) in message and "columns.text" in message
    assert "'sentnce' not found" in message and "did you mean 'sentence'" in message


def test_label_not_in_label_list_names_row(tmp_path):
    rows = sentiment_rows(20, 0)
    rows[6]["label"] = "neutral"
    path = write_task(
        tmp_path,
        "t",
        "classification",
        {"train": rows},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    message = _data_error(tmp_path)
    assert message == (
        f"{path}: columns.label: split 'train' row 7: label 'neutral' is not in labels ['neg', 'pos']"
    )


def test_unknown_head_type(tmp_path):
    path = _task(tmp_path, head="clasification")
    with pytest.raises(MtdnnError) as info:
        load_tasks(["t"], [str(tmp_path)])
    assert str(info.value).startswith(f"{path}: head: unknown head type 'clasification'")
    assert "did you mean 'classification'" in str(info.value)


def test_unknown_task_suggests_close_names():
    with pytest.raises(MtdnnError) as info:
        load_tasks(["mnlii"])
    assert "task=mnlii: unknown task (did you mean 'mnli'" in str(info.value)


def test_every_problem_in_every_task_is_reported_at_once(tmp_path):
    _task(tmp_path, "a", head="regresion", max_length=2)
    _task(tmp_path, "b", **{"source.kind": "ftp", "metrics": ["acuracy"], "colour": "red"})
    with pytest.raises(MtdnnError) as info:
        load_tasks(["a", "b", "zzz"], [str(tmp_path)])
    message = str(info.value)
    for expected in [
        "a.yaml: head: unknown head type 'regresion'",
        "a.yaml: max_length: must be at least 8",
        "b.yaml: colour: unknown field",
        "b.yaml: source.kind: unknown source kind 'ftp'",
        "b.yaml: metrics[0]: 'acuracy' does not apply",
        "task=zzz: unknown task",
    ]:
        assert expected in message
    assert message.startswith("the task configuration has problems (6 problems):")


def test_wrong_field_types_are_named(tmp_path):
    path = _task(tmp_path, max_length="long", labels="neg,pos", loss_weight=[1])
    with pytest.raises(MtdnnError) as info:
        load_tasks(["t"], [str(tmp_path)])
    message = str(info.value)
    assert f"{path}: max_length: expected int, got 'long'" in message
    assert f"{path}: labels: expected a list" in message and f"{path}: loss_weight: expected float" in message


def test_malformed_yaml_names_file_and_line(tmp_path):
    (tmp_path / "broken.yaml").write_text("name: broken\nhead: [classification\n")
    with pytest.raises(MtdnnError) as info:
        load_tasks(["broken"], [str(tmp_path)])
    assert "broken.yaml: line" in str(info.value) and "malformed YAML" in str(info.value)


def test_empty_text_and_bad_regression_targets_name_rows(tmp_path):
    rows = [
        {"a": "one", "b": "x", "score": 1.0},
        {"a": " ", "b": "x", "score": 2.0},
        {"a": "three", "b": "x", "score": "high"},
        {"a": "four", "b": "x", "score": float("nan")},
    ]
    write_task(
        tmp_path, "r", "regression", {"train": rows}, {"text": "a", "text_pair": "b", "label": "score"}
    )
    message = _data_error(tmp_path, "r")
    assert "columns.text: split 'train' row 2: text is empty" in message
    assert (
        "columns.label: split 'train' row 3: regression target is not a finite number (and 1 more rows)"
        in message
    )


def test_on_bad_row_skip_drops_and_counts(tmp_path):
    rows = sentiment_rows(20, 0)
    rows[3]["label"] = "maybe"
    rows[5]["sentence"] = ""
    write_task(
        tmp_path,
        "t",
        "classification",
        {"train": rows},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
        on_bad_row="skip",
    )
    (spec,) = load_tasks(["t"], [str(tmp_path)])
    data = prepare_data([spec])["t"]
    assert data.skipped_rows == {"train": 2}
    assert len(data.raw["train"]) == 18


def test_empty_data_file_and_missing_file(tmp_path):
    path = _task(tmp_path)
    (tmp_path / "t_validation.csv").write_text("")
    (tmp_path / "t_train.csv").unlink()
    message = _data_error(tmp_path)
    assert f"{path}: source.splits.train: file not found" in message
    assert f"{path}: source.splits.validation: data file is empty" in message


def test_cli_prints_one_line_without_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mtdnn.train", "task=rt_polarty", f"output_dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    from mtdnn.data.tasks import known_tasks

    assert done.stderr.strip() == (
        "error: task=rt_polarty: unknown task (did you mean 'rt_polarity'?); known: "
        + ", ".join(known_tasks([]))
    )


def test_cli_bad_override_type_fails_fast(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mtdnn.train", "trainer.lr=fast", f"output_dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "trainer.lr" in done.stderr and "fast" in done.stderr
    assert not (tmp_path / "run").exists()


def test_hub_source_offline_gives_a_clear_error():
    specs = load_tasks(["rte"])
    with pytest.raises(MtdnnError) as info:
        prepare_data(specs)
    message = str(info.value)
    assert "rte.yaml: source.splits.train: cannot load nyu-mll/glue/rte split 'train' from the hub" in message
    assert "rte.yaml: source.splits.validation:" in message  # every split reported, not just the first


def test_encoder_path_that_does_not_exist(tmp_path):
    from conftest import compose_train

    from mtdnn.train import run

    cfg = compose_train(
        [
            "encoder=bert-base-uncased",
            f"encoder.name={tmp_path}/no_such_model",
            "task=rt_polarity",
            "trainer.device=cpu",
        ]
    )
    with pytest.raises(
        MtdnnError, match=f"encoder.name: local path does not exist: {tmp_path}/no_such_model"
    ):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing created before the config was found valid


@pytest.mark.parametrize(
    "module,args,expected",
    [
        (
            "mtdnn.predict",
            ["run_dir=/no/such/run"],
            "error: run_dir: /no/such/run is not an mtdnn run folder",
        ),
        ("mtdnn.evaluate", [], "error: run_dir: required (pass run_dir=...)"),
        ("mtdnn.evaluate", ["run_dir=x", "batch_size=many"], "batch_size"),
        ("mtdnn.predict", ["/no/such/run", "stray"], "error: arguments are key=value; cannot read: stray"),
        ("mtdnn.evaluate", ["/no/such/run"], "error: run_dir: /no/such/run is not an mtdnn run folder"),
    ],
)
def test_run_folder_commands_fail_cleanly(module, args, expected):
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1
