"""The docs site's reference pages are generated from the schemas: stale pages, and settings without a written
meaning, fail here."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import docs_reference  # noqa: E402


def test_the_reference_pages_are_what_the_schemas_give():
    for path, text in docs_reference.pages().items():
        assert path.read_text() == text, f"{path} is stale: run python scripts/docs_reference.py"


def test_every_setting_has_a_line_with_its_meaning():
    from mtdnn.core import config
    from mtdnn.data import tasks

    pages = "".join(docs_reference.pages().values())
    lines = [line for line in pages.splitlines() if line.startswith("| `")]
    assert lines and all(not line.rstrip().endswith("|  |") for line in lines), [
        line for line in lines if line.rstrip().endswith("|  |")
    ]
    for schema, prefix in [(config.TrainerConfig, "trainer."), (tasks.SourceSpec, "source.")]:
        for field in dataclasses.fields(schema):
            assert f"| `{prefix}{field.name}` |" in pages, f"{prefix}{field.name} has no reference line"


def test_every_reference_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    for path in docs_reference.pages():
        assert str(path.relative_to(ROOT / "docs")) in nav
