"""Where mtdnn finds its shipped configs and task registry, and where it caches downloads."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # mtdnn/, the package (this file is in mtdnn/core/)


def _shipped_dir(name: str) -> Path:
    # an installed wheel carries conf/ and tasks/ inside the package; a checkout has them beside it
    for candidate in (PACKAGE_DIR / name, PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mtdnn: cannot find its '{name}/' folder next to {PACKAGE_DIR}")


def conf_dir() -> Path:
    return _shipped_dir("conf")


def tasks_dir() -> Path:
    return _shipped_dir("tasks")


def project_root() -> Path:
    """The folder relative data paths in shipped task YAMLs are resolved against."""
    return tasks_dir().parent


def cache_dir() -> Path:
    """Downloads and extracted artifacts; MTDNN_CACHE overrides the default under ~/.cache."""
    root = os.environ.get("MTDNN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "mtdnn"
    )
    return Path(root)
