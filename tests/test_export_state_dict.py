"""format=state-dict: one task's weights as a plain safetensors file (the export family's seam: one
module)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import compose_train, tiny_overrides, write_toy_tasks
from safetensors import safe_open

from mtdnn.core.errors import MtdnnError
from mtdnn.export import ExportConfig, available, export
from mtdnn.serving.loading import open_run
from mtdnn.train import run


@pytest.fixture(scope="module")
def two_task_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("state_dict")
    folder = write_toy_tasks(root / "tasks")
    cfg = compose_train(
        tiny_overrides(folder, "trainer.max_steps=10", "predict_test=false", "task=[toy_sent,toy_count]")
    )
    run(cfg, root / "run")
    return root


def test_the_format_is_found_without_a_list():
    assert "state-dict" in available()


def test_the_file_holds_the_encoder_and_this_tasks_head_only_with_the_trained_values(two_task_run):
    out = export(
        ExportConfig(
            run_dir=str(two_task_run / "run"),
            task="toy_sent",
            out=str(two_task_run / "sd"),
            format="state-dict",
        )
    )
    loaded = open_run(str(two_task_run / "run"), "best", torch.device("cpu"))
    expected = loaded.model.state_dict()
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in keys}
    assert any(k.startswith("heads.toy_sent.") for k in keys)
    assert not any(k.startswith("heads.toy_count.") for k in keys)  # the other task's head stays out
    assert keys == {k for k in expected if not k.startswith("heads.toy_count.")}
    for key, tensor in tensors.items():
        assert torch.equal(tensor, expected[key]), key
    assert meta["task"] == "toy_sent" and meta["head"] == "classification"
    assert yaml.safe_load((out / "task.yaml").read_text())["labels"] == loaded.specs["toy_sent"].labels
    assert (out / "config.json").is_file() and (out / "tokenizer").is_dir()


def test_quantize_is_refused_for_this_format(two_task_run):
    with pytest.raises(MtdnnError, match="quantize: only int8, and only with format=onnx"):
        export(
            ExportConfig(
                run_dir=str(two_task_run / "run"),
                task="toy_sent",
                out=str(two_task_run / "q"),
                format="state-dict",
                quantize="int8",
            )
        )
