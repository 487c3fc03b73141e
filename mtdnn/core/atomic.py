"""Files written atomically: to a temporary name, fsynced, renamed, so a crash never leaves half a file
(JSON with non-finite numbers written as null); whole folders replaced in one rename."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_json(path: Path, data: Any) -> None:
    """Strict JSON: a number JSON cannot hold (NaN: undefined; an infinite score) is written as null."""
    write_atomic(
        path, json.dumps(_non_finite_to_null(data), indent=2, sort_keys=False, allow_nan=False) + "\n"
    )


def _non_finite_to_null(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _non_finite_to_null(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_non_finite_to_null(v) for v in data]
    return data


def replace_dir(staging: Path, final: Path) -> None:
    """Swap a fully written folder into place; the old one is removed only after the new one is there."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    _fsync_dir(final.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    for file in folder.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
