"""`scripts/bench.py --quick` runs offline in CI and writes a well-formed report (speed itself is not tested)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


def test_quick_benchmark_writes_a_complete_report(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--reps", "2", "--steps", "6", "--json", str(out)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    step = report["step"]["tiny"]
    assert step["toolkit"]["n"] == step["plain"]["n"] == 2
    assert step["ratio"] == step["toolkit"]["median"] / step["plain"]["median"] > 0
    assert 0 < report["mfu"]["mfu"] < 1.5 and report["mfu"]["matmul_peak_flops"] > 1e8
    for name in ("toolkit batching", "pad to max_length", "toolkit batching, bf16"):
        run = report["training"][name]
        assert run["steps"] == 6 and 0 <= run["accuracy"] <= 1 and run["epoch_seconds"] > 0
        assert run["peak_rss_mb"] > 50
    assert report["batching"]["epoch_speedup"] > 0 and math.isfinite(report["bf16"]["accuracy_difference"])
    assert report["startup"]["cold_seconds"] > 0 and report["startup"]["warm_seconds"] > 0
    assert "train step, batch 8 x 32 tokens" in done.stdout and "MFU (tiny" in done.stdout
