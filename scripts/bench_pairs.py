"""Pair similarity: the encoder untouched (zero-shot, bi-encoder cosine) vs fine-tuned as a cross-encoder
vs fine-tuned as a bi-encoder, on real news-document pairs, several seeds.

    python scripts/bench_pairs.py [--work bench_pairs] [--seeds 1 2 3] [--epochs 3] [--threads 2]

Data: Lee, Pincombe & Welsh (2005), 50 news documents (Australian Broadcasting Corporation) with the mean
human similarity of all 1,225 pairs on [0, 1], as gensim 4.4.0's wheel ships it for its tests
(gensim/test/test_data/lee.cor and similarities0-1.txt; gensim is LGPL-2.1; fetched with pip download,
sha256-checked, never installed). Split by document so validation pairs always hold a document training
never saw: train = the 703 pairs among documents 0-37, validation = the 522 pairs with a document from
38-49.

Arms (same seeds, MiniLM-L6, max_length 128, batch 16, --epochs epochs, lr as trainer's default):
  zero-shot   the bi task's score before its first step (summary zero_shot)
  cross       pair_encoding: cross, a regression head on the joint sequence (documents truncated to fit 128)
  bi          pair_encoding: bi, cosine head (each document up to 128 tokens)
Reports Pearson / Spearman per arm (mean, sd), the paired difference bi - cross with a 95% t interval, the
step-time ratio, and inference throughput (validation pairs per second through load_run(...).predict).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quality import paired, run_child, write_table_files  # noqa: E402

GENSIM = {
    "package": "gensim==4.4.0",
    "sha256": "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
}
TRAIN_DOCS = 38


def lee_pairs() -> tuple[list[dict], list[dict]]:
    from mtdnn.core.artifacts import fetch_member

    docs = fetch_member("gensim/test/test_data/lee.cor", **GENSIM).read_text(encoding="latin-1").splitlines()
    matrix = [
        line.split()
        for line in fetch_member("gensim/test/test_data/similarities0-1.txt", **GENSIM)
        .read_text()
        .splitlines()
    ]
    assert len(docs) == len(matrix) == 50, (len(docs), len(matrix))
    train, validation = [], []
    for i, j in itertools.combinations(range(50), 2):
        row = {"id": f"{i}-{j}", "a": docs[i].strip(), "b": docs[j].strip(), "score": float(matrix[i][j])}
        (train if j < TRAIN_DOCS else validation).append(row)
    return train, validation


def write_tasks(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    train, validation = lee_pairs()
    pd.DataFrame(train).to_csv(folder / "lee_train.csv", index=False)
    pd.DataFrame(validation).to_csv(folder / "lee_validation.csv", index=False)
    for encoding in ("cross", "bi"):
        spec = {
            "name": f"lee_{encoding}",
            "head": "regression",
            "description": "Lee et al. 2005 news-document similarity (gensim 4.4.0 test data), split by "
            "document",
            "source": {
                "kind": "files",
                "splits": {"train": "lee_train.csv", "validation": "lee_validation.csv"},
            },
            "columns": {"text": "a", "text_pair": "b", "label": "score", "id": "id"},
            "metrics": ["pearson", "spearman"],
            "max_length": 128,
            "pair_encoding": encoding,
        }
        (folder / f"lee_{encoding}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def throughput(run_dir: Path, task: str, pairs: list[tuple[str, str]]) -> float:
    from mtdnn import load_run

    model = load_run(run_dir, device="cpu")
    model.predict(task, pairs[:16], batch_size=32)
    started = time.perf_counter()
    model.predict(task, pairs, batch_size=32)
    return len(pairs) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench_pairs"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = args.work.resolve()
    write_tasks(work / "tasks")
    runs: dict[str, dict[int, dict]] = {"zero-shot": {}, "cross": {}, "bi": {}}
    for seed, encoding in itertools.product(args.seeds, ("cross", "bi")):
        out = work / "runs" / f"{encoding}_s{seed}"
        cmd = [
            sys.executable,
            "-m",
            "mtdnn.train",
            f"task=lee_{encoding}",
            f"task_dirs=[{work / 'tasks'}]",
            f"seed={seed}",
            f"trainer.epochs={args.epochs}",
            "trainer.batch_size=16",
            "predict_test=false",
            "trainer.progress_bar=false",
            f"output_dir={out}",
        ]
        keep = seed == args.seeds[0]  # its models are loaded again for the inference throughput
        print(run_child(cmd, out, work / "runs" / f"{encoding}_s{seed}.log", args.threads, keep), flush=True)
        summary = json.loads((out / "summary.json").read_text())
        task = f"lee_{encoding}"
        runs[encoding][seed] = {
            **summary["validation"][task],
            "step_s": summary["train_seconds"] / summary["steps"],
            "run": out,
        }
        if encoding == "bi":
            runs["zero-shot"][seed] = summary["zero_shot"][task]
    validation = pd.read_csv(work / "tasks" / "lee_validation.csv")
    pairs = list(zip(validation["a"], validation["b"]))
    speed = {
        encoding: throughput(runs[encoding][args.seeds[0]]["run"], f"lee_{encoding}", pairs)
        for encoding in ("cross", "bi")
    }

    rows, lines = (
        [],
        [
            "| arm | Pearson (mean ± sd) | Spearman (mean ± sd) | step s | pairs/s (inference) |",
            "|---|---|---|---|---|",
        ],
    )
    for arm, by_seed in runs.items():

        def stat(metric: str) -> str:
            values = [by_seed[s][metric] for s in args.seeds]
            spread = statistics.stdev(values) if len(values) > 1 else math.nan
            return f"{statistics.fmean(values):.3f} ± {spread:.3f}"

        step = statistics.fmean(r["step_s"] for r in by_seed.values()) if arm != "zero-shot" else None
        lines.append(
            f"| {arm} | {stat('pearson')} | {stat('spearman')} | "
            f"{f'{step:.2f}' if step else '-'} | {f'{speed[arm]:.0f}' if arm in speed else '-'} |"
        )
        rows += [
            {
                "arm": arm,
                "seed": s,
                "pearson": by_seed[s]["pearson"],
                "spearman": by_seed[s]["spearman"],
                "step_s": by_seed[s].get("step_s"),
            }
            for s in args.seeds
        ]
    for metric in ("pearson", "spearman"):
        for method, base in (("bi", "cross"), ("bi", "zero-shot"), ("cross", "zero-shot")):
            as_value = {
                name: {s: {"value": runs[name][s][metric]} for s in args.seeds} for name in (method, base)
            }
            mean, half, won, n = paired(as_value[method], as_value[base])
            lines.append(
                f"- {metric}: {method} - {base} = {mean:+.3f} ± {half:.3f} (95% t interval; "
                f"{method} higher on {won}/{n} seeds)"
            )
    ratio = statistics.fmean(r["step_s"] for r in runs["bi"].values()) / statistics.fmean(
        r["step_s"] for r in runs["cross"].values()
    )
    lines.append(
        f"- step time bi / cross: {ratio:.2f}x; inference bi / cross: {speed['bi'] / speed['cross']:.2f}x"
    )
    text = "\n".join(lines)
    print(text)
    command_line = "python scripts/bench_pairs.py " + " ".join(sys.argv[1:])
    write_table_files(work, text, rows, command_line, ["arm", "seed", "pearson", "spearman", "step_s"])
    (work / "results.json").write_text(
        json.dumps(
            {
                "runs": {
                    a: {str(s): {k: v for k, v in r.items() if k != "run"} for s, r in by_seed.items()}
                    for a, by_seed in runs.items()
                },
                "inference_pairs_per_s": speed,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
