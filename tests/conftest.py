"""Shared test helpers: tiny task files written to tmp_path, and Hydra composition of the real configs."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# two test processes share the cores: one thread each, or they fight
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
# the suite runs on the CPU (exact-equality checks assume one device);
if os.environ.get("MTDNN_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # GPU tests: MTDNN_TEST_GPU=1 pytest -m gpu


# under pytest-xdist: the workers' counts, summed on the controller
_WORKER_FUZZ_COUNTS: Counter[str] = Counter()


def _fuzz_counts() -> dict[str, int]:
    import sys

    fuzz = sys.modules.get("test_fuzz")
    return dict(fuzz.COUNTS) if fuzz is not None else {}


def pytest_sessionfinish(session):
    """An xdist worker hands its fuzz counts to the controller, which prints the sum."""
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fuzz_counts"] = _fuzz_counts()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    _WORKER_FUZZ_COUNTS.update(getattr(node, "workeroutput", {}).get("fuzz_counts", {}))


def pytest_terminal_summary(terminalreporter):
    """How many generated cases the fuzz tests ran (the issue asks for the number, fast and long profiles)."""
    counts = Counter(_fuzz_counts()) + _WORKER_FUZZ_COUNTS
    if counts:
        terminalreporter.write_line(
            "fuzz cases run: " + "; ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        )


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # artifact extraction must never touch (or depend on) the user's cache
    monkeypatch.setenv("MTDNN_CACHE", str(tmp_path_factory.getbasetemp() / "mtdnn-cache"))


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from mtdnn.core.paths import conf_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


WORDS = "the a movie film plot actor scene story music script ending cast".split()


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Learnable rule: 'pos' iff the sentence contains 'great' (else it contains 'awful')."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 9))
        label = rng.choice(["neg", "pos"])
        words.insert(rng.randint(0, len(words)), "great" if label == "pos" else "awful")
        rows.append({"sentence": " ".join(words), "label": label})
    return rows


def count_rows(n: int, seed: int) -> list[dict]:
    """Regression rule: the target is the number of times 'wow' occurs (0-3), in a text pair."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(0, 3)
        words = rng.choices(WORDS, k=rng.randint(3, 7)) + ["wow"] * k
        rng.shuffle(words)
        rows.append({"a": " ".join(words), "b": " ".join(rng.choices(WORDS, k=3)), "score": float(k)})
    return rows


def write_task(
    folder: Path,
    name: str,
    head: str,
    splits: dict[str, list[dict]],
    columns: dict,
    fmt: str = "csv",
    **extra,
) -> Path:
    """Write each split as a data file plus the task YAML pointing at them (paths relative to the YAML)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in splits.items():
        path = folder / f"{name}_{split}.{fmt}"
        frame = pd.DataFrame(rows)
        if fmt == "csv":
            frame.to_csv(path, index=False)
        elif fmt == "tsv":
            frame.to_csv(path, index=False, sep="\t")
        elif fmt == "jsonl":
            frame.to_json(path, orient="records", lines=True)
        elif fmt == "json":
            frame.to_json(path, orient="records", lines=True)
        elif fmt == "parquet":
            frame.to_parquet(path)
        files[split] = path.name
    spec = {
        "name": name,
        "head": head,
        "source": {"kind": "files", "splits": files},
        "columns": columns,
        "max_length": 32,
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_toy_tasks(folder: Path) -> Path:
    """Two toy tasks in a user folder: sentiment classification and pair regression."""
    write_task(
        folder,
        "toy_sent",
        "classification",
        {
            "train": sentiment_rows(400, 1),
            "validation": sentiment_rows(100, 2),
            "test": sentiment_rows(50, 3),
        },
        {"text": "sentence", "label": "label"},
        labels=["neg", "pos"],
        metrics=["accuracy", "f1"],
    )
    write_task(
        folder,
        "toy_count",
        "regression",
        {"train": count_rows(400, 4), "validation": count_rows(100, 5)},
        {"text": "a", "text_pair": "b", "label": "score"},
        fmt="jsonl",
    )
    return folder


@pytest.fixture
def toy_tasks(tmp_path) -> Path:
    return write_toy_tasks(tmp_path / "my_tasks")


@contextlib.contextmanager
def reaped(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """A test's subprocess, killed if the test ends (an assertion, pytest-timeout) while it still runs: an
    orphaned 100,000-step training run once took a core for the rest of the session."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_as_a_user(folder: Path, words: list[str]) -> subprocess.CompletedProcess:
    """A documented `python ...` command line run offline in `folder`, a user's working folder that holds the
    repository's `examples/` (as a clone does), with this checkout's package importable."""
    import sys

    root = Path(__file__).resolve().parent.parent
    if not (folder / "examples").exists():
        (folder / "examples").symlink_to(root / "examples")
    assert words[0] == "python", words
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(root)}
    return subprocess.run(
        [sys.executable, *words[1:]], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )


def tiny_overrides(folder: Path, *more: str) -> list[str]:
    return [
        "encoder=tiny",
        f"task_dirs=[{folder}]",
        "trainer.progress_bar=false",
        "trainer.lr=1e-3",
        "trainer.head_lr=1e-3",
        "trainer.batch_size=16",
        "trainer.warmup_ratio=0.05",
        *more,
    ]


def straight_and_resumed(base: list[str], root: Path, steps: int, cut: int) -> tuple[list[dict], list[dict]]:
    """Train `base` (trainer.max_steps=`steps`) straight through, and again with the last checkpoint
    removed so that resume=auto continues from step `cut`; assert both end with the same weights, bit for
    bit. Returns the two runs' train logs (straight, resumed) for the caller's own per-step comparisons."""
    import json
    import shutil

    import torch
    from safetensors.torch import load_file

    from mtdnn.train import run

    run(compose_train(base), root / "straight")
    run(compose_train(base), root / "cut")
    last = Path("checkpoints") / f"step_{steps:07d}"
    shutil.rmtree(root / "cut" / last)
    assert run(compose_train(base + ["resume=auto"]), root / "cut")["resumed_at_step"] == cut
    wa, wb = (load_file(str(root / d / last / "model.safetensors")) for d in ("straight", "cut"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    return tuple(
        [json.loads(line) for line in (root / d / "train_log.jsonl").read_text().splitlines()]
        for d in ("straight", "cut")
    )
