"""Mutation testing of the core math with mutmut: which planted changes (an operator flipped, a constant
moved, an argument dropped) the tests catch. Not part of CI: a full run takes about 25 minutes on 2 cores.

    python scripts/mutation.py --run [--max-children 2]   # mutate and test (resumable: mutmut keeps results)
    python scripts/mutation.py                            # only write the report from mutmut's stored results

What is mutated and which tests run are set in pyproject.toml's [tool.mutmut]: the balancers, the metrics, the
heads' shared divergences, SMART's perturbation and projection, the task sampler, the distillation targets and
the layer-wise terms, on the lines the selected unit tests cover. A surviving mutant that cannot change any
result (an equivalent mutant) is listed with its reason in docs/mutation/equivalent.yaml; every other survivor
is either killed by a new test or shown in the report.

Writes docs/mutation/report.md and report.csv: per module, mutants killed (a test failed, or it timed out),
survived, equivalent, untested, and the share killed of the non-equivalent ones.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "mutation"
LINE = re.compile(r"^\s+(?P<name>[\w.]+__mutmut_\d+): (?P<status>.+)$")
GOAL = 0.85


# mutmut forks a child per mutant from a process that has run torch: a forked OpenMP thread pool hangs, so
# every test would "time out". One thread per process avoids the pool (and the children share the cores).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def mutmut(*args: str, capture: bool = False) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=ROOT,
        env={**os.environ, **ONE_THREAD, **OFFLINE},
        text=True,
        capture_output=capture,
        check=False,
    )
    return done.stdout if capture else ""


def module_of(mutant: str) -> str:
    """mtdnn.balancers.pcgrad.x_project__mutmut_3 -> mtdnn.balancers.pcgrad"""
    return re.sub(r"\.(x_|xǁ).*$", "", mutant)


def results() -> dict[str, str]:
    found = {}
    for line in mutmut("results", "--all", "true", capture=True).splitlines():
        if match := LINE.match(line):
            found[match["name"]] = match["status"]
    return found


def table(statuses: dict[str, str], equivalent: dict[str, str]) -> list[dict]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for name, status in statuses.items():
        outcome = "equivalent" if name in equivalent and status == "survived" else status
        outcome = "killed" if outcome == "timeout" else outcome
        counts[module_of(name)][outcome] += 1
    rows = []
    for module, count in sorted(counts.items()):
        tested = count["killed"] + count["survived"]
        rows.append(
            {
                "module": module,
                "mutants": sum(count.values()),
                "killed": count["killed"],
                "survived": count["survived"],
                "equivalent": count["equivalent"],
                "untested": count["no tests"] + count["not checked"],
                "killed_share": round(count["killed"] / tested, 3) if tested else None,
            }
        )
    return rows


def report(rows: list[dict], survivors: list[str], equivalent: dict[str, str]) -> str:
    killed = sum(r["killed"] for r in rows)
    tested = killed + sum(r["survived"] for r in rows)
    lines = [
        "# Mutation testing of the core math",
        "",
        "```bash",
        "python scripts/mutation.py --run --max-children 2",
        "```",
        "",
        "mutmut plants one small change at a time in the modules below (on the lines their unit tests "
        "cover) and runs the tests that reach the changed function; a mutant is killed when a test fails "
        "(or it runs past its timeout). Equivalent mutants (no result can change) are listed in "
        "`equivalent.yaml` with the reason.",
        "",
        "| module | mutants | killed | survived | equivalent | untested | killed of non-equivalent |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        share = "-" if r["killed_share"] is None else f"{100 * r['killed_share']:.1f}%"
        lines.append(
            f"| `{r['module']}` | {r['mutants']} | {r['killed']} | {r['survived']} | {r['equivalent']} | "
            f"{r['untested']} | {share} |"
        )
    total = f"{100 * killed / tested:.1f}%" if tested else "-"
    lines += [
        "",
        f"All modules: {killed} of {tested} non-equivalent mutants killed ({total}; goal {GOAL:.0%}).",
        "",
    ]
    if survivors:
        lines += ["## Surviving mutants", "", "`python -m mutmut show <name>` prints each one's change.", ""]
        lines += [f"- `{name}`" for name in survivors]
    if equivalent:
        lines += ["", "## Equivalent mutants", ""]
        lines += [f"- `{name}`: {why}" for name, why in sorted(equivalent.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="run mutmut first (else report stored results)")
    parser.add_argument("--max-children", type=int, default=2)
    args = parser.parse_args()
    if args.run:
        mutmut("run", "--max-children", str(args.max_children))
    equivalent_file = OUT / "equivalent.yaml"
    equivalent = yaml.safe_load(equivalent_file.read_text()) or {} if equivalent_file.is_file() else {}
    statuses = results()
    if not statuses:
        sys.exit("no mutmut results: run with --run first")
    rows = table(statuses, equivalent)
    survivors = sorted(n for n, s in statuses.items() if s == "survived" and n not in equivalent)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.md").write_text(report(rows, survivors, equivalent))
    with (OUT / "report.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print((OUT / "report.md").read_text())


if __name__ == "__main__":
    main()
