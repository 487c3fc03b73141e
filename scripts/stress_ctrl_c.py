"""Ctrl-C at random moments of real training runs: each must end within --limit seconds with exit code 130,
one `error: interrupted` line and no traceback. A run that does not is dumped (every thread's stack, via
Python's faulthandler on SIGABRT) to --dump and counted.

    python scripts/stress_ctrl_c.py [--runs 100] [--seed 1] [--limit 30] [--dump ctrl_c_dumps]

Each run trains the tiny encoder on a toy task (log every step, evaluate every 5), waits for 6 logged steps
and a further random 0-0.5 s, then sends one SIGINT. Before the safe-point handling
(errors.interrupts_at_safe_points) 4 of ~230 runs hung for up to 120 s in TensorBoard's writer close; run
two copies side by side to load the cores."""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import tiny_overrides, write_toy_tasks  # noqa: E402  (the tests' toy tasks, no download)

ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "OMP_NUM_THREADS": "1",
}
ENV.pop("MTDNN_DEBUG", None)
ENV.pop("HYDRA_FULL_ERROR", None)


def one_run(root: Path, tasks: Path, index: int, rng: random.Random, limit: float) -> tuple[bool, str]:
    """(ended cleanly, what it printed on stderr)."""
    out = root / f"run{index}"
    command = [
        sys.executable,
        "-X",
        "faulthandler",
        "-m",
        "mtdnn.train",
        *tiny_overrides(
            tasks,
            "task=toy_sent",
            "trainer.max_steps=100000",
            "trainer.log_every=1",
            "trainer.eval_every=5",
            f"output_dir={out}",
        ),
    ]
    proc = subprocess.Popen(
        command, cwd=root, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    log = out / "train_log.jsonl"
    while proc.poll() is None and not (log.is_file() and len(log.read_text().splitlines()) >= 6):
        time.sleep(0.05)
    time.sleep(rng.random() * 0.5)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        _, err = proc.communicate()
        return False, err
    clean = (
        proc.returncode == 130
        and "Traceback" not in err
        and err.strip().splitlines()[-1].startswith("error: interrupted")
    )
    return clean, err


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1, help="draws the wait before each Ctrl-C")
    parser.add_argument(
        "--limit", type=float, default=30.0, help="seconds a run may take to end after its Ctrl-C"
    )
    parser.add_argument(
        "--dump", type=Path, default=Path("ctrl_c_dumps"), help="stderr of each run that failed"
    )
    args = parser.parse_args()
    rng, bad = random.Random(args.seed), 0
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        tasks = write_toy_tasks(root / "tasks")
        for index in range(args.runs):
            clean, err = one_run(root, tasks, index, rng, args.limit)
            if not clean:
                bad += 1
                args.dump.mkdir(parents=True, exist_ok=True)
                (args.dump / f"seed{args.seed}_run{index}.txt").write_text(err)
            print(f"run {index}: {'ok' if clean else 'FAILED'} ({bad} failed so far)", flush=True)
    print(f"{bad} of {args.runs} runs did not end cleanly within {args.limit:g} s of their Ctrl-C")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
