"""Bugs a full read of the code found (issue 15), each with a test that fails on the code before the fix."""

from __future__ import annotations

import re

import datasets
import pytest
import torch
from conftest import compose_train, tiny_overrides
from safetensors.torch import load_file
from test_smart import _batch, _spec, _tiny_model

from mtdnn import kinds
from mtdnn.core.config import TrainerConfig
from mtdnn.core.errors import MtdnnError
from mtdnn.regularizers import build_regularizers, child_tuning
from mtdnn.train import run


def GPU(test):  # noqa: N802  (a decorator: marked for -m gpu, skipped without a visible GPU)
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


def _last_weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(sorted((folder / "checkpoints").iterdir())[-1] / "model.safetensors"))


def test_max_grad_norm_zero_means_no_clipping_not_zero_gradients(tmp_path, toy_tasks):
    base = tiny_overrides(toy_tasks, "task=toy_sent", "trainer.max_steps=3", "predict_test=false")
    run(compose_train(base + ["trainer.max_grad_norm=0"]), tmp_path / "zero")
    run(compose_train(base + ["trainer.max_grad_norm=1e9"]), tmp_path / "huge")
    zero, huge = _last_weights(tmp_path / "zero"), _last_weights(tmp_path / "huge")
    assert all(torch.equal(zero[k], huge[k]) for k in zero)  # 0 = never clip = an unreachable bound


def test_head_lr_zero_is_a_rate_and_a_negative_one_an_error(toy_tasks):
    from mtdnn.training.optim import param_groups

    model = _tiny_model(_spec("t"))
    groups = param_groups(model, TrainerConfig(lr=1e-3, head_lr=0.0))
    heads = {id(p) for p in model.heads.parameters()}
    assert {g["lr"] for g in groups if id(g["params"][0]) in heads} == {0.0}
    assert {g["lr"] for g in groups if id(g["params"][0]) not in heads} == {1e-3}
    with pytest.raises(MtdnnError, match=r"trainer.head_lr: must be >= 0"):
        run(compose_train(tiny_overrides(toy_tasks, "task=toy_sent", "trainer.head_lr=-1")), toy_tasks / "x")


def _micro_batch(regularizer: dict, monkeypatch, timed: bool = False) -> tuple[int, dict]:
    import mtdnn.training.loop as loop

    made = []
    real = loop.DropoutReplay
    monkeypatch.setattr(loop, "DropoutReplay", lambda device: made.append(1) or real(device))
    model = _tiny_model(_spec("t")).train()
    regs = build_regularizers(regularizer, model, [_spec("t")])
    terms = loop.forward_backward(model, "t", _batch(), regs, 1.0, False, timed=timed)
    return len(made), terms


def test_dropout_masks_are_recorded_only_for_regularizers_that_replay_them(monkeypatch):
    assert _micro_batch({"l2_sp": {}}, monkeypatch)[0] == 0
    assert _micro_batch({"r3f": {}}, monkeypatch)[0] == 1


def test_regularizer_cost_is_timed_only_when_asked(monkeypatch):
    assert not any(k.startswith("cost_s/") for k in _micro_batch({"r3f": {}}, monkeypatch)[1])
    assert "cost_s/r3f" in _micro_batch({"r3f": {}}, monkeypatch, timed=True)[1]


def _f_mask(seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # what seed_everything does before the regularizers are built
    model = _tiny_model(_spec("t"))
    torch.manual_seed(seed)
    reg = child_tuning.ChildTuning(child_tuning.Config(mode="F", reserve_p=0.5), model)
    for p in reg.params.values():
        p.grad = torch.ones_like(p)
    reg.before_step(model)
    return torch.cat([p.grad.flatten() for p in reg.params.values()])


def test_child_tuning_f_masks_depend_on_the_run_seed():
    assert torch.equal(_f_mask(1), _f_mask(1))  # reproducible (and the same on every torchrun rank)
    assert not torch.equal(_f_mask(1), _f_mask(2))


def test_the_fisher_pass_sees_every_task_even_with_a_batch_limit():
    from mtdnn.data.loading import TaskBatches, one_pass_in_turn
    from mtdnn.kinds.collate import Collator

    def rows(n):
        return datasets.Dataset.from_dict(
            {"input_ids": [[2, 5, 3]] * n, "attention_mask": [[1, 1, 1]] * n, "labels": [0] * n}
        )

    batches = {
        "a": TaskBatches(rows(8), 4, 0, Collator(0, 1)),
        "b": TaskBatches(rows(4), 4, 0, Collator(0, 1)),
    }
    order = [task for task, _ in one_pass_in_turn(batches)]
    assert order == ["a", "b", "a"]  # in turn; every batch of every task once
    seen = []
    model = _tiny_model(_spec("a"), _spec("b"))
    real = model.head

    def spy(task):
        seen.append(task)
        return real(task)

    model.head = spy
    child_tuning.fisher_information(model, one_pass_in_turn(batches), torch.device("cpu"), limit=2)
    assert seen == ["a", "b"]


class _SpanSpec:
    metrics = ["f1", "exact_match"]

    class options:
        allow_no_answer = False

    class columns:
        answers = "answers"


def test_span_rows_without_gold_answers_are_unlabelled_outside_v2():
    raw = datasets.Dataset.from_dict(
        {"answers": [{"text": ["Paris"], "answer_start": [0]}, {"text": [], "answer_start": []}]}
    )
    from mtdnn.kinds.span import span_metrics

    assert span_metrics(_SpanSpec, raw, [{"answer": "Paris"}, {"answer": "anything"}]) == {
        "f1": 1.0,
        "exact_match": 1.0,
    }  # the unanswered row neither helps nor hurts
    unlabelled = datasets.Dataset.from_dict({"answers": [{"text": [], "answer_start": []}] * 2})
    assert span_metrics(_SpanSpec, unlabelled, [{"answer": ""}, {"answer": "x"}]) is None


def test_a_missing_ranking_label_is_unlabelled_not_wrong(tmp_path):
    from conftest import write_task

    from mtdnn.data.tasks import load_tasks
    from mtdnn.training.build import prepare_data

    nan = float("nan")
    train = [
        {"q": "q1", "g": 1, "c": "a", "y": 1},
        {"q": "q1", "g": 1, "c": "b", "y": 0},
        {"q": "q2", "g": 2, "c": "c", "y": 1},
        {"q": "q2", "g": 2, "c": "d", "y": nan},
    ]
    test = [{"q": "q3", "g": 3, "c": "e", "y": 1}, {"q": "q3", "g": 3, "c": "f", "y": nan}]
    write_task(
        tmp_path,
        "rank",
        "ranking",
        {"train": train, "test": test},
        {"query": "q", "group": "g", "text": "c", "label": "y"},
        fmt="csv",
    )
    with pytest.raises(MtdnnError, match=r"split 'train' row 2: group '2' has candidates without a label"):
        prepare_data(load_tasks(["rank"], [str(tmp_path)]))
    write_task(
        tmp_path,
        "rank",
        "ranking",
        {"train": train[:2], "test": test},
        {"query": "q", "group": "g", "text": "c", "label": "y"},
        fmt="csv",
    )
    data = prepare_data(load_tasks(["rank"], [str(tmp_path)]))["rank"]
    assert data.raw["test"]["relevance"] == [[1, -1]]  # not [1, 0]
    records, scores = kinds.get("ranking").evaluate(
        data.spec, data.raw["test"], None, [torch.tensor([0.1, 0.9])]
    )
    assert scores is None and records[0]["ranking"] == [1, 0]  # a half-labelled group is not scored
    from mtdnn.kinds.ranking import _flag, _relevance

    assert _flag(nan) == _flag(None) == _flag("") == -1 and _relevance(nan, 3) == [
        -1,
        -1,
        -1,
    ]  # pandas reads NaN


def test_resume_refuses_settings_the_checkpoint_was_not_trained_with(tmp_path, toy_tasks):
    base = tiny_overrides(toy_tasks, "task=toy_sent", "trainer.max_steps=2", "predict_test=false")
    run(compose_train(base), tmp_path / "run")
    with pytest.raises(MtdnnError) as info:
        run(compose_train(base + ["resume=auto", "trainer.lr=5e-3", "regularizer=smart"]), tmp_path / "run")
    text = str(info.value)
    assert "trainer.lr: 0.001 -> 0.005" in text and "regularizer.smart" in text
    # a longer run is fine
    summary = run(
        compose_train(base[:-2] + ["trainer.max_steps=3", "predict_test=false", "resume=auto"]),
        tmp_path / "run",
    )
    assert summary["steps"] == 3
    # config.yaml says what it ran with
    assert "max_steps: 3" in (tmp_path / "run" / "config.yaml").read_text()


def _lrs(run_dir) -> dict[int, float]:
    import json

    return {
        r["step"]: r["lr"] for r in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines())
    }


def test_resume_allow_changes_applies_the_new_learning_rate_and_records_it(tmp_path, toy_tasks, caplog):
    """The learning rate a resumed run uses is the new one (not the optimizer state's), on the new
    schedule: the logged lr of steps 5-8 equals that of a run trained with the new settings from the start."""
    base = tiny_overrides(
        toy_tasks, "task=toy_sent", "predict_test=false", "trainer.log_every=1", "trainer.eval_every=4"
    )
    run(compose_train(base + ["trainer.max_steps=4"]), tmp_path / "run")
    changed = base + ["trainer.max_steps=8", "trainer.lr=5e-4", "trainer.head_lr=5e-4", "resume=auto"]
    with pytest.raises(MtdnnError, match="pass resume_allow_changes=true to apply them"):
        run(compose_train(changed), tmp_path / "run")
    with caplog.at_level("WARNING"):
        run(compose_train(changed + ["resume_allow_changes=true"]), tmp_path / "run")
    run(
        compose_train(base + ["trainer.max_steps=8", "trainer.lr=5e-4", "trainer.head_lr=5e-4"]),
        tmp_path / "fresh",
    )
    resumed, fresh = _lrs(tmp_path / "run"), _lrs(tmp_path / "fresh")
    assert [resumed[s] for s in range(5, 9)] == [fresh[s] for s in range(5, 9)]
    assert resumed[4] != fresh[4]  # the first 4 steps ran at the old rate
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert config.startswith("# resumed from step_0000004 with resume_allow_changes: ")
    assert "trainer.lr: 0.001 -> 0.0005" in config.splitlines()[0] and "  lr: 0.0005" in config
    assert "resume_allow_changes: trainer.lr: 0.001 -> 0.0005" in caplog.text
    # a change the weights were built from (a task, the encoder's shape, an adapter) is refused before
    # anything is read or written, and leaves the run folder as it was (its lock aside)
    before = {f: f.read_bytes() for f in (tmp_path / "run").rglob("*") if f.is_file() and f.name != ".lock"}
    for change, named in [
        ("task=[toy_sent,toy_count]", "task: ['toy_sent'] -> ['toy_sent', 'toy_count']"),
        ("task=[toy_count]", "task: ['toy_sent'] -> ['toy_count']"),
        ("encoder.from_config.hidden_size=64", "encoder.from_config.hidden_size: 32 -> 64"),
        ("adapter=lora", "adapter.kind: 'none' -> 'lora'"),
    ]:
        resumed = base + ["trainer.max_steps=10", change, "resume=auto", "resume_allow_changes=true"]
        with pytest.raises(
            MtdnnError,
            match=f"resume_allow_changes: .*{re.escape(named)}.*: the checkpoints' weights were built",
        ):
            run(compose_train(resumed), tmp_path / "run")
    after = {f: f.read_bytes() for f in (tmp_path / "run").rglob("*") if f.is_file() and f.name != ".lock"}
    assert after == before


@GPU
def test_dropout_replay_is_exact_on_cuda():
    """A zero perturbation replayed on the GPU gives zero divergence: every dropout mask, those SDPA draws
    inside its kernel included, is the clean pass's."""
    from test_smart import _context

    model = _tiny_model(_spec("t")).cuda().train()
    batch = {k: v.cuda() for k, v in _batch().items()}
    ctx = _context(model, "t", batch)
    with ctx.dropout.replay():
        again = model("t", **batch, inputs_embeds=ctx.embeds)
    assert model.head("t").divergence(again, ctx.logits, batch).abs().max().item() == 0.0


@GPU
def test_cached_target_teachers_wait_on_the_cpu(tmp_path, toy_tasks):
    from mtdnn.distill import Distiller

    teacher = tmp_path / "teacher"
    run(
        compose_train(
            tiny_overrides(toy_tasks, "task=toy_sent", "trainer.max_steps=2", "predict_test=false")
        ),
        teacher,
    )
    cfg = compose_train(
        tiny_overrides(toy_tasks, "task=toy_sent", "distill=ensemble", f"distill.teachers=[{teacher}]")
    ).distill
    distiller = Distiller(cfg, [], torch.device("cuda"))
    assert next(distiller.teachers[0].model.parameters()).device.type == "cpu"


def test_label_smoothing_is_cross_entropy_against_smoothed_targets(tmp_path):
    from conftest import write_task

    from mtdnn.data.tasks import load_tasks

    write_task(
        tmp_path,
        "s",
        "classification",
        {"train": [{"t": "x", "y": "a"}]},
        {"text": "t", "label": "y"},
        labels=["a", "b", "c"],
        label_smoothing=0.3,
    )
    (spec,) = load_tasks(["s"], [str(tmp_path)])
    head = kinds.of(spec).head(8, spec, "cls")
    logits, labels = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([1])
    log_p = logits.log_softmax(-1)[0]
    target = torch.full((3,), 0.3 / 3) + torch.nn.functional.one_hot(labels, 3)[0] * 0.7
    assert head.loss(logits, {"labels": labels}).item() == pytest.approx(
        -(target * log_p).sum().item(), rel=1e-6
    )
    write_task(
        tmp_path,
        "s",
        "classification",
        {"train": [{"t": "x", "y": "a"}]},
        {"text": "t", "label": "y"},
        labels=["a", "b"],
        label_smoothing=1.5,
        doc_stride=64,
    )
    with pytest.raises(MtdnnError) as info:
        load_tasks(["s"], [str(tmp_path)])
    assert "label_smoothing: must be in [0, 1)" in str(info.value)
    assert "doc_stride: unknown field" in str(info.value)  # a span field on a classification task


def test_a_saved_spec_holds_each_field_once_and_reads_back(tmp_path):
    from mtdnn.data.tasks import load_tasks, spec_from_dict, spec_to_dict

    (spec,) = load_tasks(["squad_v2"])
    saved = spec_to_dict(spec)
    assert "options" not in saved and saved["allow_no_answer"] is True
    again = spec_from_dict({**saved, "n_best": 5, "a_field_of_an_older_version": 1})
    assert again.options.n_best == 5 and again.options.allow_no_answer and again.name == "squad_v2"
