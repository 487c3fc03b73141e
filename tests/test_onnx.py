"""ONNX export (format=onnx, quantize=int8) and the ONNX Runtime backend: the graph gives PyTorch's outputs
for every head kind (adapter runs included), and the same decoded records through predict and the Python
API."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import compose_train, tiny_overrides
from test_predictor import TASKS, _rows, trained  # noqa: F401  (its module fixture: a run of every kind)

from mtdnn import load_run
from mtdnn.core.errors import MtdnnError
from mtdnn.evaluation.engine import collator_for
from mtdnn.export import ExportConfig, export
from mtdnn.serving.loading import open_run as load_run_folder
from mtdnn.train import run


def _batch(loaded, task: str, rows: list[dict]) -> dict:
    import datasets

    from mtdnn.data.loading import TaskData, encode_splits

    spec = loaded.specs[task]
    data = TaskData(spec, {"test": datasets.Dataset.from_list(rows)})
    from mtdnn.data.loading import check_rows

    check_rows(data)
    encode_splits(data, loaded.tokenizer)
    encoded = data.encoded["test"]
    return collator_for(spec, loaded.tokenizer, 8)(encoded[list(range(len(encoded)))])


def test_one_graph_serves_every_task_with_each_head_s_outputs(trained, tmp_path):
    """task=all: the encoder once and every head in one ONNX graph; each head's raw outputs equal PyTorch's,
    and the predictor serves every task of the run from the one folder."""
    folder, trained_run = trained
    out = export(
        ExportConfig(
            run_dir=str(trained_run), task="all", out=str(tmp_path / "onnx"), format="onnx", quantize="int8"
        )
    )
    meta = json.loads((out / "onnx.json").read_text())
    assert sorted(meta["tasks"]) == sorted(TASKS) and len(list(out.glob("*.onnx"))) == 2  # fp32 + int8
    torch_run = load_run_folder(str(trained_run), "best", torch.device("cpu"))
    onnx_run = load_run_folder(str(out), "best", torch.device("cpu"), "onnx")
    served = load_run(out)
    assert sorted(served.tasks) == sorted(TASKS)
    for task in TASKS:
        rows = _rows(next(folder.glob(f"{task}_validation.*")))
        batch = _batch(torch_run, task, rows)
        with torch.no_grad():
            expected = torch_run.model(task, **batch)
        got = onnx_run.model(task, **batch)
        assert got.shape == expected.shape and (got - expected).abs().max().item() < 1e-4, task
        records_torch = load_run(trained_run, device="cpu").predict(task, rows)
        keys = {"label", "ranking", "tags", "answer", "prediction_text"} & set(records_torch[0])
        assert [{k: r[k] for k in keys} for r in served.predict(task, rows)] == [
            {k: r[k] for k in keys} for r in records_torch
        ], task
    with pytest.raises(MtdnnError, match="format=hf writes one task's model"):
        export(ExportConfig(run_dir=str(trained_run), task="all", out=str(tmp_path / "hf")))


@pytest.mark.parametrize("task", TASKS)
def test_onnx_outputs_equal_pytorchs_for_every_kind(trained, task, tmp_path):
    folder, trained_run = trained
    out = export(ExportConfig(run_dir=str(trained_run), task=task, out=str(tmp_path / "onnx"), format="onnx"))
    assert {p.name for p in out.iterdir()} >= {
        "model.onnx",
        "onnx.json",
        "tokenizer",
        "tasks",
        "config.yaml",
        "README.md",
    }
    torch_run = load_run_folder(str(trained_run), "best", torch.device("cpu"))
    onnx_run = load_run_folder(str(out), "best", torch.device("cpu"), "onnx")
    rows = _rows(next(folder.glob(f"{task}_validation.*")))
    # a padded batch of every validation row: batch and sequence axes vary
    batch = _batch(torch_run, task, rows)
    with torch.no_grad():
        expected = torch_run.model(task, **batch)
    got = onnx_run.model(task, **batch)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4
    records_torch = load_run(trained_run, device="cpu").predict(task, rows)
    records_onnx = load_run(out).predict(task, rows)
    keys = {"label", "ranking", "tags", "answer", "prediction_text"} & set(records_torch[0])
    assert [{k: r[k] for k in keys} for r in records_onnx] == [{k: r[k] for k in keys} for r in records_torch]


def test_int8_agrees_with_fp32_on_a_trained_model_and_adapter_runs_export(tmp_path, toy_tasks):
    out = tmp_path / "run"
    run(
        compose_train(
            tiny_overrides(
                toy_tasks,
                "task=toy_sent",
                "trainer.max_steps=60",
                "trainer.eval_every=60",
                "predict_test=false",
            )
        ),
        out,
    )
    folder = export(
        ExportConfig(
            run_dir=str(out), task="toy_sent", out=str(tmp_path / "onnx"), format="onnx", quantize="int8"
        )
    )
    assert json.loads((folder / "onnx.json").read_text())["files"] == ["model.onnx", "model_int8.onnx"]
    fp32_bytes = sum(p.stat().st_size for p in folder.glob("model.onnx*"))  # the graph + its external weights
    assert (folder / "model_int8.onnx").stat().st_size < 0.4 * fp32_bytes
    rows = _rows(toy_tasks / "toy_sent_validation.csv")
    fp32_records = load_run(folder, backend="onnx").predict("toy_sent", rows)
    int8_records = load_run(folder, backend="onnx-int8").predict("toy_sent", rows)
    # the int8 backend runs the int8 graph: its scores are not fp32's (a backend that loaded the fp32 graph
    # would agree on every label and every score)
    moved = [abs(a["scores"]["pos"] - b["scores"]["pos"]) for a, b in zip(fp32_records, int8_records)]
    assert max(moved) > 1e-4, max(moved)
    fp32, int8 = [r["label"] for r in fp32_records], [r["label"] for r in int8_records]
    agreement = sum(a == b for a, b in zip(fp32, int8)) / len(rows)
    print(f"int8 vs fp32 label agreement: {agreement:.2f}")
    assert len(rows) == 100 and agreement >= 0.9, agreement

    adapted = tmp_path / "adapted"
    run(
        compose_train(
            tiny_overrides(
                toy_tasks,
                "task=toy_sent",
                "adapter=bottleneck",
                "trainer.max_steps=4",
                "trainer.eval_every=4",
                "predict_test=false",
            )
        ),
        adapted,
    )
    graph = export(
        ExportConfig(run_dir=str(adapted), task="toy_sent", out=str(tmp_path / "adapted_onnx"), format="onnx")
    )
    assert [r["label"] for r in load_run(graph).predict("toy_sent", rows)] == [
        r["label"] for r in load_run(adapted, device="cpu").predict("toy_sent", rows)
    ]


def test_backend_and_format_mistakes_are_one_line(trained, tmp_path):
    _, trained_run = trained
    with pytest.raises(MtdnnError, match="is a training run; export it first"):
        load_run(trained_run, backend="onnx")
    with pytest.raises(MtdnnError, match="quantize: only int8, and only with format=onnx"):
        export(
            ExportConfig(run_dir=str(trained_run), task="toy_sent", out=str(tmp_path / "x"), quantize="int8")
        )
    with pytest.raises(
        MtdnnError, match="format: must be hf, onnx, peft, sentence-transformers or state-dict, got 'tflite'"
    ):
        export(
            ExportConfig(run_dir=str(trained_run), task="toy_sent", out=str(tmp_path / "x"), format="tflite")
        )
