"""Benchmark submission files, from a task YAML's `submission:` block (as mt-dnn and jiant write them):

    submission: {benchmark: glue, file: SST-2.tsv, labels: ["0", "1"]}       # the server's label strings
    submission: {benchmark: superglue, file: COPA.jsonl}

GLUE: a TSV with a header `index<TAB>prediction`, one row per test example in id order; SuperGLUE: one JSON
line `{"idx": id, "label": value}` per example. A classification record's label is written as the server's
string for it (`labels`, in the order of the task's label list; default: the label names), a predicted
value as its number (STS-B), ranked candidates as the index of the top one (COPA's choice). `mtdnn.predict
format=glue|superglue` writes these; a new benchmark task is a YAML block, not code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtdnn import kinds
from mtdnn.core.atomic import write_atomic
from mtdnn.data.tasks import TaskSpec

FORMATS = ("glue", "superglue")


def submission_problems(spec: TaskSpec, fmt: str) -> list[str]:
    sub = spec.submission
    if sub is None or sub.benchmark != fmt:
        return [
            f"format: task {spec.name} has no `submission: {{benchmark: {fmt}, file: ...}}` in {spec.file}; "
            "add one to write its submission file"
        ]
    return []


def write_submission(path: Path, spec: TaskSpec, records: list[dict]) -> Path:
    value = kinds.of(spec).submission_value  # what the server expects for one record: each head kind says
    rows = sorted(((record["id"], value(spec, record)) for record in records), key=lambda r: _order(r[0]))
    if spec.submission.benchmark == "glue":
        text = "index\tprediction\n" + "".join(f"{index}\t{value}\n" for index, value in rows)
    else:
        text = "".join(json.dumps({"idx": index, "label": value}) + "\n" for index, value in rows)
    write_atomic(path, text)
    return path


def _order(index: Any) -> tuple:
    return (0, int(index), "") if str(index).lstrip("-").isdigit() else (1, 0, str(index))
