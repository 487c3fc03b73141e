"""Crash and resume, atomic checkpoints, numerical faults, and what a killed process leaves behind."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import compose_train, reaped, tiny_overrides
from safetensors.torch import load_file

from mtdnn.core.errors import MtdnnError
from mtdnn.kinds.classification import ClassificationHead
from mtdnn.runs import checkpoints as rundir
from mtdnn.runs.checkpoints import checkpoint_problem, list_checkpoints, load_trainer_state, save_checkpoint
from mtdnn.runs.folder import resolve_resume
from mtdnn.train import run

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _cli(folder: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mtdnn.train",
        *tiny_overrides(folder),
        "task=[toy_sent,toy_count]",
        "regularizer=smart",
        "regularizer.smart.mu=1",
        "trainer.max_steps=60",
        "trainer.eval_every=7",
        "trainer.log_every=1",
        "trainer.grad_accum=2",
        "trainer.keep_last=3",
        "predict_test=false",
        f"output_dir={out}",
        *extra,
    ]


def _log(out: Path) -> list[dict]:
    """Every logged number except wall-clock costs (cost_s/...), which no two runs share."""
    records = [
        json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()
    ]
    return [{k: v for k, v in r.items() if not k.startswith("cost_s/")} for r in records]


def test_sigkill_at_a_random_step_then_resume_reproduces_every_loss_exactly(tmp_path, toy_tasks):
    """A real subprocess is SIGKILLed mid-training; `resume=auto` must give the uninterrupted run's
    per-step losses (task, SMART adversarial and proximal terms), learning rates and gradient norms, bit
    for bit."""
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    subprocess.run(
        _cli(toy_tasks, straight), cwd=tmp_path, env=ENV, check=True, capture_output=True, timeout=600
    )
    # log lines (steps) before the kill: drawn anew each run, after the first checkpoint (step 7) and before
    # the end; the draw is in every failure message, and MTDNN_KILL_AFTER replays one
    kill_after = int(os.environ.get("MTDNN_KILL_AFTER") or random.Random().randint(9, 52))
    log_file = crashed / "train_log.jsonl"
    with reaped(
        subprocess.Popen(
            _cli(toy_tasks, crashed),
            cwd=tmp_path,
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ) as proc:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if log_file.is_file() and len(log_file.read_text().splitlines()) >= kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        assert proc.wait(timeout=60) == -signal.SIGKILL, f"finished before the kill after {kill_after} steps"
    last_checkpoint = int(list_checkpoints(crashed)[-1].name.split("_")[1])
    done = subprocess.run(
        _cli(toy_tasks, crashed, "resume=auto"),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"killed after {kill_after}: {done.stderr[-2000:]}"
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["resumed_at_step"] == last_checkpoint and summary["steps"] == 60, kill_after
    expected, got = _log(straight), _log(crashed)
    assert [r["step"] for r in got] == list(range(1, 61)), kill_after
    assert got == expected, f"killed after {kill_after}"  # every logged number, after the crash and before
    assert _evaluations(crashed) == _evaluations(straight)
    # the training time carries over the crash: later evaluations never report less time than earlier ones
    seconds = [e["train_seconds"] for e in json.loads((crashed / "metrics.json").read_text())]
    assert seconds == sorted(seconds) and seconds[0] > 0


def _evaluations(run: Path) -> list[dict]:
    """metrics.json without the wall-clock training time (every other number must be reproduced)."""
    records = json.loads((run / "metrics.json").read_text())
    return [{k: v for k, v in e.items() if k != "train_seconds"} for e in records]


CRASH_POINTS = {
    # after the weights are written into the staging folder, before the trainer state
    "between files": """
        real = rundir.save_model
        def hook(model, path):
            real(model, path)
            Path(MARK).touch()
            time.sleep(120)
        rundir.save_model = hook
    """,
    # in the middle of writing the trainer state: half the bytes are on disk
    "inside a file": """
        real = rundir.torch.save
        def hook(obj, path):
            real(obj, path)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            Path(MARK).touch()
            time.sleep(120)
        rundir.torch.save = hook
    """,
}


@pytest.mark.parametrize("moment", list(CRASH_POINTS))
def test_kill_during_a_checkpoint_write_leaves_the_previous_one_loadable(tmp_path, moment):
    mark = tmp_path / "writing"
    script = (
        textwrap.dedent("""
        import time, torch
        from pathlib import Path
        from mtdnn.runs import checkpoints as rundir
        RUN, MARK = Path({run!r}), {mark!r}
        model = torch.nn.Linear(8, 3)
        rundir.save_checkpoint(RUN, 1, model, {{"train": {{"step": 1}}}})
        rundir.save_best(RUN, 1, {{"score": 0.5}})
    """).format(run=str(tmp_path / "run"), mark=str(mark))
        + textwrap.dedent(CRASH_POINTS[moment])
        + "rundir.save_checkpoint(RUN, 2, model, {'train': {'step': 2}})\n"
    )
    with reaped(subprocess.Popen([sys.executable, "-c", script], env=ENV)) as proc:
        deadline = time.time() + 120
        while not mark.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        assert mark.exists(), "the writer never reached the crash point"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    run_dir = tmp_path / "run"
    assert list_checkpoints(run_dir) == [run_dir / "checkpoints" / "step_0000001"]
    good = resolve_resume("auto", run_dir)
    assert good.name == "step_0000001" and checkpoint_problem(good) is None
    assert load_trainer_state(good)["train"]["step"] == 1
    restored = torch.nn.Linear(8, 3)
    rundir.load_weights(restored, good / "model.safetensors")
    assert json.loads((run_dir / "best.json").read_text())["checkpoint"] == "checkpoints/step_0000001"
    rundir.remove_staging(run_dir)
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_0000001"]


def test_resume_auto_skips_a_corrupted_newest_checkpoint_and_explicit_resume_refuses_it(tmp_path, caplog):
    model = torch.nn.Linear(4, 2)
    for step in (1, 2):
        save_checkpoint(tmp_path, step, model, {"train": {"step": step}})
    newest = tmp_path / "checkpoints" / "step_0000002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:40])
    assert resolve_resume("auto", tmp_path).name == "step_0000001"
    assert "skipping damaged checkpoint" in caplog.text
    with pytest.raises(MtdnnError, match=r"resume: .*step_0000002/model.safetensors: corrupted"):
        resolve_resume(str(newest.parent), tmp_path)


def test_disk_full_during_a_checkpoint_write_is_a_clear_error_and_keeps_the_previous(tmp_path, monkeypatch):
    model = torch.nn.Linear(4, 2)
    save_checkpoint(tmp_path, 1, model, {"train": {}})

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.torch, "save", full)
    with pytest.raises(MtdnnError) as info:
        save_checkpoint(tmp_path, 2, model, {"train": {}})
    assert "step_0000002: cannot write checkpoint: No space left on device" in str(info.value)
    assert "the previous checkpoint" in str(info.value) and "step_0000001 is intact" in str(info.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000001"]  # no staging left over


def test_a_full_disk_that_safetensors_reports_is_the_same_clear_error(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    model = torch.nn.Linear(4, 2)
    save_checkpoint(tmp_path, 1, model, {"train": {}})

    def full(*_args, **_kwargs):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })'
        )

    monkeypatch.setattr(rundir, "save_model", full)
    with pytest.raises(MtdnnError) as info:
        save_checkpoint(tmp_path, 2, model, {"train": {}})
    assert "step_0000002: cannot write checkpoint: Error while serializing: IoError(Os { code: 28" in str(
        info.value
    )
    assert "step_0000001 is intact" in str(info.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_0000001"]


def _nan_loss_on(calls: set[int], monkeypatch):
    real = ClassificationHead.loss
    counter = {"n": 0}

    def loss(self, logits, batch):
        counter["n"] += 1
        value = real(self, logits, batch)
        return value * float("nan") if counter["n"] in calls else value

    monkeypatch.setattr(ClassificationHead, "loss", loss)


def test_nan_steps_are_skipped_counted_and_training_goes_on(tmp_path, toy_tasks, monkeypatch):
    _nan_loss_on({5, 6, 7}, monkeypatch)
    summary = run(
        compose_train(
            tiny_overrides(
                toy_tasks,
                "task=toy_sent",
                "trainer.max_steps=80",
                "trainer.log_every=1",
                "predict_test=false",
            )
        ),
        tmp_path / "run",
    )
    assert summary["skipped_steps"] == 3 and summary["steps"] == 80
    assert summary["validation"]["toy_sent"]["accuracy"] > 0.8
    log = _log(tmp_path / "run")
    assert [r["skipped_steps"] for r in log[3:8]] == [0, 1, 2, 3, 3]
    weights = load_file(str(list_checkpoints(tmp_path / "run")[-1] / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_too_many_nan_steps_in_a_row_stop_with_the_last_checkpoint_intact(tmp_path, toy_tasks, monkeypatch):
    _nan_loss_on(set(range(13, 1000)), monkeypatch)
    cfg = compose_train(
        tiny_overrides(
            toy_tasks,
            "task=toy_sent",
            "trainer.max_steps=100",
            "trainer.eval_every=5",
            "trainer.max_consecutive_skips=4",
            "trainer.keep_last=5",
            "predict_test=false",
        )
    )
    with pytest.raises(MtdnnError, match="training stopped at step 16: 4 steps in a row had a NaN/inf loss"):
        run(cfg, tmp_path / "run")
    kept = list_checkpoints(tmp_path / "run")
    assert [p.name for p in kept] == ["step_0000005", "step_0000010", "step_0000015"]
    for folder in kept:
        assert checkpoint_problem(folder) is None
        weights = load_file(str(folder / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())


def test_loading_is_safe_by_construction():
    """No pickle of untrusted files: torch.load only with weights_only=True, YAML only safe_load,
    trust_remote_code off unless set."""
    import ast

    import mtdnn
    from mtdnn.core.config import EncoderConfig

    loads = 0
    for path in Path(mtdnn.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            # every call of a `load` on torch or yaml, however it is written or wrapped over lines
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
            ):
                owner = ast.unparse(node.func.value)
                if owner == "torch":
                    loads += 1
                    flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
                    assert isinstance(flag, ast.Constant) and flag.value is True, f"{path}:{node.lineno}"
                assert owner != "yaml", f"{path}:{node.lineno}: yaml.load (use safe_load)"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill") for n in names), f"{path}:{node.lineno}"
    assert loads > 0  # the check saw the checkpoint loading it guards
    assert EncoderConfig().trust_remote_code is False


def test_a_second_run_into_a_folder_in_use_stops_at_once_and_the_lock_dies_with_its_holder(
    tmp_path, toy_tasks
):
    from mtdnn.core.errors import MtdnnError
    from mtdnn.runs.folder import run_lock

    folder = tmp_path / "run"
    folder.mkdir()
    cfg = compose_train(
        tiny_overrides(toy_tasks, "task=toy_sent", "trainer.max_steps=2", "predict_test=false")
    )
    # another run holds the folder (a lock conflicts across open files, as across processes)
    with run_lock(folder):
        with pytest.raises(MtdnnError, match=r"output_dir: .* is in use by another run \(pid \d+\)"):
            run(cfg, folder)
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # the refused run wrote nothing
    with reaped(
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sys, time; sys.path.insert(0, sys.argv[1]); "
                "from mtdnn.runs.folder import run_lock; from pathlib import Path\n"
                "with run_lock(Path(sys.argv[2])):\n    print('held', flush=True); time.sleep(600)",
                str(Path(__file__).parent.parent),
                str(folder),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
    ) as holder:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(MtdnnError, match="is in use by another run"):
            run(cfg, folder)
        holder.kill()  # SIGKILL: no chance to unlock; the OS releases the lock with the process
        holder.wait()
    assert run(cfg, folder)["steps"] == 2


def test_ctrl_c_is_one_line_saying_how_to_resume(tmp_path, toy_tasks):
    cmd = [
        sys.executable,
        "-m",
        "mtdnn.train",
        *tiny_overrides(
            toy_tasks,
            "task=toy_sent",
            "trainer.max_steps=100000",
            "trainer.log_every=1",
            "trainer.eval_every=5",
            f"output_dir={tmp_path / 'run'}",
        ),
    ]
    log_file, deadline = tmp_path / "run" / "train_log.jsonl", time.time() + 300
    with reaped(
        subprocess.Popen(
            cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
    ) as proc:
        while (
            proc.poll() is None
            and time.time() < deadline
            and not (log_file.is_file() and len(log_file.read_text().splitlines()) >= 6)
        ):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("error: interrupted; every checkpoint written so far is intact")
    )
    assert list_checkpoints(tmp_path / "run")  # step 5's checkpoint is there to resume from


def _python(script: str) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter: the CLI's SIGINT handler belongs to a main thread of its own."""
    return subprocess.run(
        [sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "turned_into", ["ValueError('could not determine the shape')", "MtdnnError('bad row')"]
)
def test_ctrl_c_that_a_library_turns_into_another_error_still_exits_as_an_interrupt(turned_into):
    # torch.tensor(datasets.Column) answered a Ctrl-C mid-read with a ValueError: any such swallow must read
    # as Ctrl-C
    script = textwrap.dedent(f"""
        import os, signal
        from mtdnn.core.commands import cli_errors
        from mtdnn.core.errors import MtdnnError

        @cli_errors
        def main():
            try:
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                raise {turned_into}

        main()
    """)
    done = _python(script)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().startswith("error: interrupted; every checkpoint written so far is intact")


def test_an_error_with_no_ctrl_c_before_it_is_not_called_an_interrupt():
    script = textwrap.dedent("""
        from mtdnn.core.commands import cli_errors
        from mtdnn.core.errors import MtdnnError

        @cli_errors
        def main():
            raise MtdnnError("tasks/x.yaml: labels: row 3 is empty")

        main()
    """)
    done = _python(script)
    assert (done.returncode, done.stderr.strip()) == (2, "error: tasks/x.yaml: labels: row 3 is empty")


SAFE_POINT_BODIES = {  # what runs under the CLI's handler, and the steps that must have run
    "the step in hand finishes, the next safe point stops": (
        """
        for step in range(3):
            stop_if_interrupted()
            os.kill(os.getpid(), signal.SIGINT)
            steps.append(step)
    """,
        [0],
    ),
    "a second Ctrl-C stops at once": (
        """
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("first held")
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("never")
    """,
        ["first held"],
    ),
    "one after the last safe point stops on leaving the block": (
        """
        os.kill(os.getpid(), signal.SIGINT)
        steps.append("last step")
    """,
        ["last step"],
    ),
}


@pytest.mark.parametrize("case", SAFE_POINT_BODIES)
def test_in_the_training_loop_ctrl_c_waits_for_a_safe_point(case):
    # what the loop runs under: raised anywhere, a Ctrl-C mid-notify hung TensorBoard's close for 120 s
    body, expected = SAFE_POINT_BODIES[case]
    script = textwrap.dedent("""
        import os, signal
        from mtdnn.core.commands import cli_errors
        from mtdnn.core.interrupts import interrupts_at_safe_points, stop_if_interrupted
        steps = []

        @cli_errors
        def main():
            with interrupts_at_safe_points():
        {body}
            steps.append("after the block")

        try:
            main()
        finally:
            print(steps, flush=True)
    """).format(body=textwrap.indent(textwrap.dedent(body), " " * 8).rstrip())
    done = _python(script)
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip() == str(expected)
