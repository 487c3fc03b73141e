"""Property-based fuzzing (Hypothesis) of what a user hands the commands that read a finished run: damaged run
and ONNX folders, any Python value given to `load_run(...).predict`, and any override under
`resume=auto resume_allow_changes=true`.

The properties:
- a run or ONNX folder with any one file deleted, cut short or overwritten: every command on it (evaluate,
  predict, export, `load_run(...).predict`) either gives the *same* result as on the intact folder, or exits 2
  with one `error:` line (`MtdnnError` in Python) naming the file or setting; never a traceback, never a
  different result;
- any value passed as predict's inputs: records, one per input, when the inputs are valid; otherwise one
  `MtdnnError` of one line;
- any override resuming a finished run with changes allowed: either the change is applied (exit 0) and the
  run then evaluates, or it is refused (exit 2, one `error:` line) with every file of the folder unchanged.

Profiles as in test_fuzz.py: a derandomized few in the default run, many more under `pytest -m slow`.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import compose_train, count_rows, sentiment_rows, tiny_overrides, write_task
from hypothesis import settings
from hypothesis import strategies as st
from test_bad_input import _digest
from test_fuzz import COUNTS, FAST, KEYS, LONG, ODD, PROFILES, VALUES, _run_cli, explore

from mtdnn.core.errors import MtdnnError

TEXTS = ["a good film", "awful plot", "fine"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished two-task run, its ONNX export (task toy_sent), and what every command gives on them."""
    from mtdnn.train import run

    root = tmp_path_factory.mktemp("folders")
    tasks = root / "tasks"
    write_task(
        tasks,
        "toy_sent",
        "classification",
        {"train": sentiment_rows(60, 1), "validation": sentiment_rows(20, 2)},
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
    )
    write_task(
        tasks,
        "toy_count",
        "regression",
        {"train": count_rows(60, 3), "validation": count_rows(20, 4)},
        {"text": "a", "text_pair": "b", "label": "score"},
    )
    base = tiny_overrides(tasks, "task=[toy_sent,toy_count]", "trainer.max_steps=6", "trainer.eval_every=3")
    run(compose_train(base), root / "run")
    code, err = _call(
        "mtdnn.export.__main__",
        [str(root / "run"), "task=toy_sent", f"out={root / 'onnx'}", "format=onnx", "quantize=int8"],
    )
    assert code == 0, err
    world = {"root": root, "tasks": tasks, "base": base, "run": root / "run", "onnx": root / "onnx"}
    world["expected"] = {kind: _outcomes(world[kind], kind) for kind in ("run", "onnx")}
    assert all(result[0] == "ok" for result in world["expected"]["run"].values())
    assert all(result[0] == "ok" for result in world["expected"]["onnx"].values())
    return world


def _call(module: str, args: list[str]) -> tuple[int, str]:
    """A command's main() in-process: (exit code, stderr)."""
    import importlib

    main = importlib.import_module(module).main
    argv, sys.argv = sys.argv, ["mtdnn", *args]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main()
        return 0, err.getvalue()
    except SystemExit as exit_:
        return (exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1), err.getvalue()
    finally:
        sys.argv = argv


def _outcomes(folder: Path, kind: str) -> dict[str, tuple[str, object]]:
    """Each command on `folder`: ('ok', what it produced) or ('refused', its one error line)."""
    from mtdnn.serving.predictor import load_run

    scratch = Path(tempfile.mkdtemp(dir=folder.parent))
    backend = ["backend=onnx"] if kind == "onnx" else []
    results = {}
    code, err = _call("mtdnn.evaluate", [f"run_dir={folder}", *backend])
    results["evaluate"] = _result(code, err, lambda: _read_evaluation(folder))
    out = scratch / "predictions.jsonl"
    code, err = _call(
        "mtdnn.predict", [f"run_dir={folder}", "task=toy_sent", "split=validation", f"out={out}", *backend]
    )
    results["predict"] = _result(code, err, out.read_text)
    if kind == "run":
        code, err = _call("mtdnn.export.__main__", [str(folder), "task=toy_sent", f"out={scratch / 'hf'}"])
        results["export"] = _result(code, err, lambda: (scratch / "hf" / "config.json").is_file())
    try:
        results["load_run"] = ("ok", load_run(folder).predict("toy_sent", TEXTS))
    except MtdnnError as err:
        assert len(str(err).splitlines()) == 1, str(err)
        results["load_run"] = ("refused", str(err))
    return results


def _read_evaluation(folder: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((folder / "eval").glob("*.json"))}


def _result(code: int, stderr: str, produced) -> tuple[str, object]:
    assert "Traceback" not in stderr, stderr[-3000:]
    if code == 0:
        return "ok", produced()
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1, f"exit {code}:\n{stderr[-3000:]}"
    return "refused", errors[0]


# ---------------------------------------------------------------- damaged folders


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock" and "tb" not in p.parts
    )


def damages(world) -> st.SearchStrategy:
    def for_kind(kind: str) -> st.SearchStrategy:
        return st.tuples(
            st.just(kind),
            st.sampled_from(_files(world[kind])),
            st.one_of(
                st.just(("delete", None)),
                st.tuples(st.just("truncate"), st.floats(0.0, 0.99)),
                st.tuples(st.just("replace"), st.binary(max_size=64)),
            ),
        )

    return st.one_of(for_kind("run"), for_kind("onnx"))


def _damaged_case(world, case) -> None:
    kind, name, (how, detail) = case
    with tempfile.TemporaryDirectory(dir=world["root"]) as scratch:
        folder = Path(scratch) / kind
        shutil.copytree(world[kind], folder)
        path = folder / name
        if how == "delete":
            path.unlink()
        elif how == "truncate":
            data = path.read_bytes()
            path.write_bytes(data[: int(len(data) * detail)])
        else:
            path.write_bytes(detail)
        for command, (outcome, value) in _outcomes(folder, kind).items():
            COUNTS[f"damaged {kind} folder, {command} {outcome}"] = (
                COUNTS.get(f"damaged {kind} folder, {command} {outcome}", 0) + 1
            )
            if outcome == "ok":  # it ran: it must have given exactly what the intact folder gives
                expected = world["expected"][kind][command][1]
                if command == "evaluate":
                    value = {k: v for k, v in value.items() if k in expected}
                assert value == expected, f"{command} on {kind} with {name} {how}: a different result"


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_damaged_run_and_onnx_folders(finished, profile):
    explore(profile, damages(finished), lambda case: _damaged_case(finished, case))


# ---------------------------------------------------------------- any value to predict()


INPUTS = st.one_of(
    ODD,
    st.lists(st.one_of(st.sampled_from(TEXTS), ODD), max_size=4),
    st.lists(st.dictionaries(st.sampled_from(["sentence", "label", "other"]), ODD, max_size=3), max_size=3),
    st.lists(st.sampled_from(TEXTS), min_size=1, max_size=4),
    st.tuples(st.sampled_from(TEXTS), st.sampled_from(TEXTS)),
)


def _valid(inputs) -> bool | None:
    """What predict(task toy_sent, ...) must accept: a list or tuple of texts, or of dicts holding a text in
    `sentence`; a text is not blank. None where validity depends on more than this model says (a label
    other than neg/pos/None, or an extra column): then the check is only that any refusal is one line."""
    if not isinstance(inputs, (list, tuple)):
        return False
    texts = [x if isinstance(x, str) else x.get("sentence") if isinstance(x, dict) else None for x in inputs]
    if not all(isinstance(t, str) and t.strip() for t in texts):
        return False
    rows = [x for x in inputs if isinstance(x, dict)]
    if any(r.get("label") not in (None, "neg", "pos") or "other" in r for r in rows):
        return None
    return True


@pytest.mark.parametrize("profile", PROFILES)
def test_fuzz_any_value_to_predict(finished, profile):
    from mtdnn.serving.predictor import load_run

    predictor = load_run(finished["run"])

    def check(inputs) -> None:
        try:
            records = predictor.predict("toy_sent", inputs)
        except MtdnnError as err:
            COUNTS["predict() input, refused"] = COUNTS.get("predict() input, refused", 0) + 1
            assert len(str(err).splitlines()) == 1, str(err)
            assert _valid(inputs) is not True, f"valid inputs refused: {inputs!r}: {err}"
            return
        COUNTS["predict() input, predicted"] = COUNTS.get("predict() input, predicted", 0) + 1
        assert _valid(inputs) is not False, f"invalid inputs gave records: {inputs!r}"
        assert len(records) == len(inputs) and all(r["label"] in ("neg", "pos") for r in records), records

    explore(profile, INPUTS, check)


# ---------------------------------------------------------------- any change when resuming


# the fuzzed settings, less those that point elsewhere (another folder, another checkpoint), plus a longer run
RESUME_KEYS = [
    k.replace(".t.", ".toy_sent.") for k in KEYS if k not in ("resume", "output_dir", "init_from")
] + ["trainer.max_steps", "encoder.max_length"]
RESUME_VALUES = [v for v in VALUES if "<precious>" not in v] + ["8", "[toy_sent]", "[toy_sent,toy_count]"]


@st.composite
def resume_overrides(draw) -> list[str]:
    pairs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(RESUME_KEYS), st.one_of(st.sampled_from(RESUME_VALUES), st.text(max_size=6))
            ),
            min_size=1,
            max_size=2,
            unique_by=lambda p: p[0],
        )
    )
    return [f"{key}={value}" for key, value in pairs]


def _resume_case(world, overrides: list[str], capsys) -> None:
    with tempfile.TemporaryDirectory(dir=world["root"]) as scratch:
        folder = Path(scratch) / "run"
        shutil.copytree(world["run"], folder)
        before = _digest(folder)
        from omegaconf import OmegaConf

        args = [
            *world["base"],
            f"output_dir={folder}",
            "resume=auto",
            "resume_allow_changes=true",
            *overrides,
        ]
        code, stderr = _run_cli(args, capsys, Path(scratch))
        assert "Traceback" not in stderr, stderr[-3000:]
        outcome = "applied" if code == 0 else "refused"
        COUNTS[f"resume with changes, {outcome}"] = COUNTS.get(f"resume with changes, {outcome}", 0) + 1
        if code == 0:
            assert OmegaConf.load(folder / "config.yaml") is not None
            code, err = _call("mtdnn.evaluate", [f"run_dir={folder}", "checkpoint=last"])
            assert code == 0, f"the resumed run does not evaluate: {err[-2000:]}"
        else:
            errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
            assert code == 2 and len(errors) == 1, f"exit {code}:\n{stderr[-3000:]}"
            assert _digest(folder) == before, "a refused change touched the run folder"


# each case trains: fewer in the default run
RESUME_PROFILES = [
    pytest.param(settings(FAST, max_examples=6), id="fast"),
    pytest.param(LONG, id="long", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("profile", RESUME_PROFILES)
def test_fuzz_any_override_when_resuming_with_changes(finished, capsys, profile):
    explore(profile, resume_overrides(), lambda overrides: _resume_case(finished, overrides, capsys))


@pytest.mark.parametrize(
    ("kind", "name", "named"),
    [
        ("run", "tokenizer/tokenizer_config.json", "tokenizer/tokenizer_config.json is missing"),
        ("run", "encoder/config.json", "encoder/config.json is missing"),
        ("run", "tasks/toy_count.yaml", "tasks/toy_count.yaml is missing"),
        ("onnx", "model.onnx", "model.onnx is missing"),
        ("onnx", "model.onnx.data", "model.onnx cannot be read"),
        ("onnx", "tasks/toy_sent.yaml", "tasks/toy_sent.yaml is missing"),
    ],
)
def test_every_command_names_the_missing_file(finished, tmp_path, kind, name, named):
    folder = tmp_path / kind
    shutil.copytree(finished[kind], folder)
    (folder / name).unlink()
    for command, (outcome, message) in _outcomes(folder, kind).items():
        assert outcome == "refused" and f"{folder}/{named}" in message, (command, message)
        assert "the folder is damaged" in message, (command, message)


@pytest.mark.parametrize(("kind", "content"), [("run", ""), ("run", "- a list\n"), ("onnx", "seed: 1\n")])
def test_a_config_yaml_cut_short_is_named_by_every_command(finished, tmp_path, kind, content):
    """Found by the long profile: an empty config.yaml loads as an empty config, and a missing key surfaced
    as omegaconf's traceback."""
    folder = tmp_path / kind
    shutil.copytree(finished[kind], folder)
    (folder / "config.yaml").write_text(content)
    for command, (outcome, message) in _outcomes(folder, kind).items():
        assert outcome == "refused" and f"{folder}/config.yaml cannot be read" in message, (command, message)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ([{"sentence": 0}, {"sentence": []}], "columns.text: row 1: text must be a string, got int (and 1"),
        ([{"sentence": False}, {}], "columns.text: row 1: text must be a string, got bool"),
        ([{"sentence": "a", "label": 0}, {"sentence": "b", "label": []}], "a column holds values of diff"),
    ],
)
def test_inputs_arrow_cannot_hold_are_one_line(finished, inputs, message):
    """Found by the long profile: columns mixing types reached Arrow, whose exception escaped."""
    from mtdnn.serving.predictor import load_run

    with pytest.raises(MtdnnError, match=re.escape(message)) as refused:
        load_run(finished["run"]).predict("toy_sent", inputs)
    assert len(str(refused.value).splitlines()) == 1
