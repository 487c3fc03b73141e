"""`python -m mtdnn.report SWEEP_DIR [out=DIR] [split=validation]`

Collects every job of a Hydra multirun (`python -m mtdnn.train -m regularizer=none,smart,r3f seed=1,2,3`):
each job's command-line overrides (`.hydra/overrides.yaml`) and final metrics (`summary.json`). Jobs that
differ only in `seed` form one group; each group gets mean +- sample std over its seeds for every task and
metric. Writes into `out` (default SWEEP_DIR/report):

  report.md    one table: a row per group, a column per task/metric, "mean ± std (n)"
  report.csv   one row per group x task x metric: mean, std, n and the per-seed values
  report.png   each task's first (main) metric per group, with std error bars
  trials.png   for an Optuna search (hydra/sweeper=search): each trial's score and the best so far; report.md
               then also lists the best trial and every trial's score

Jobs that failed (with their error), have no summary yet, or never ran (planned in multirun.yaml, no
folder) are listed, not guessed at.
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from omegaconf import MISSING

from mtdnn.core.atomic import write_atomic
from mtdnn.core.commands import argv, cli_errors, parse_args
from mtdnn.core.errors import MtdnnError
from mtdnn.training.sweeps import FAILED, planned_jobs

SEED_KEYS = ("seed",)  # overrides that distinguish repetitions, not configurations
RUN_KEYS = ("resume",)  # overrides of how a job was run (continued), not of what it computes


def _what(overrides: list) -> list[str]:
    return [str(o) for o in overrides or [] if str(o).split("=", 1)[0].lstrip("+~") not in RUN_KEYS]


@dataclass
class ReportConfig:
    sweep_dir: str = MISSING
    out: str | None = None
    split: str = "validation"


@dataclass
class Job:
    folder: Path | None  # None: planned, never ran
    overrides: list[str]
    metrics: dict[str, dict[str, float]] | None  # task -> metric -> value; None: no summary
    error: str | None = None  # why it failed (its failed.json), if it did
    score: float | None = None  # the run's best validation score (what a search sweeper optimised)

    @property
    def state(self) -> str:
        return (
            "done"
            if self.metrics
            else "failed"
            if self.error
            else "unfinished"
            if self.folder
            else "never ran"
        )


@dataclass
class Group:
    label: str
    jobs: list[Job] = field(default_factory=list)

    def values(self, task: str, metric: str) -> list[float]:
        return [v for j in self.jobs if j.metrics and (v := j.metrics.get(task, {}).get(metric)) is not None]


def read_jobs(sweep: Path, split: str) -> list[Job]:
    """Every job with a folder, then the jobs the sweep planned (multirun.yaml) that have none (never ran)."""
    jobs = []
    for overrides_file in sorted(sweep.rglob(".hydra/overrides.yaml")):
        folder = overrides_file.parent.parent
        summary, failed = folder / "summary.json", folder / FAILED
        metrics = yaml.safe_load(summary.read_text()).get(split) if summary.is_file() else None
        error = yaml.safe_load(failed.read_text()).get("error") if failed.is_file() and not metrics else None
        best = yaml.safe_load(summary.read_text()).get("best_score") if summary.is_file() else None
        jobs.append(Job(folder, _what(yaml.safe_load(overrides_file.read_text())), metrics, error, best))
    seen = {tuple(j.overrides) for j in jobs}
    jobs += [
        Job(None, _what(planned), None)
        for planned in planned_jobs(sweep)
        if tuple(_what(planned)) not in seen
    ]
    if not jobs:
        raise MtdnnError(
            f"sweep_dir: {sweep} holds no Hydra jobs (no */.hydra/overrides.yaml); "
            "pass the folder of a `python -m mtdnn.train -m ...` sweep"
        )
    return jobs


def group_jobs(jobs: list[Job]) -> list[Group]:
    """Group by the overrides other than the seed; label a group by what varies between groups."""

    def config_of(job: Job) -> tuple[str, ...]:
        return tuple(o for o in job.overrides if o.split("=", 1)[0].lstrip("+~") not in SEED_KEYS)

    keys = list(dict.fromkeys(config_of(j) for j in jobs))
    shared = set.intersection(*(set(k) for k in keys)) if keys else set()
    groups = {k: Group(" ".join(o for o in k if o not in shared) or "(all jobs)") for k in keys}
    for job in jobs:
        groups[config_of(job)].jobs.append(job)
    return list(groups.values())


def columns(groups: list[Group]) -> list[tuple[str, str]]:
    found: dict[tuple[str, str], None] = {}
    for group in groups:
        for job in group.jobs:
            for task, metrics in (job.metrics or {}).items():
                for metric in metrics:
                    found[(task, metric)] = None
    return list(found)


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def markdown(groups: list[Group], cols: list[tuple[str, str]], missing: list[Job], shared: str) -> str:
    lines = [
        f"# Sweep report\n\nCommon to every job: `{shared or '-'}`\n",
        "| group | " + " | ".join(f"{t}/{m}" for t, m in cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for group in groups:
        cells = []
        for task, metric in cols:
            values = group.values(task, metric)
            cells.append("-" if not values else "{:.4f} ± {:.4f} ({})".format(*mean_std(values), len(values)))
        lines.append(f"| {group.label} | " + " | ".join(cells) + " |")
    for state, title in (
        ("failed", "Jobs that failed"),
        ("unfinished", "Jobs without a summary (unfinished or killed)"),
        ("never ran", "Jobs that never ran"),
    ):
        listed = [job for job in missing if job.state == state]
        if listed:
            lines += ["", f"{title} ({len(listed)}):"]
            lines += [
                f"- `{job.folder or '-'}` ({' '.join(job.overrides)})"
                + (f": {job.error}" if job.error else "")
                for job in listed
            ]
    return "\n".join(lines) + "\n"


def csv_text(groups: list[Group], cols: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["group", "task", "metric", "mean", "std", "n", "values"])
    for group in groups:
        for task, metric in cols:
            values = group.values(task, metric)
            if values:
                writer.writerow(
                    [
                        group.label,
                        task,
                        metric,
                        *mean_std(values),
                        len(values),
                        " ".join(repr(v) for v in values),
                    ]
                )
    return buffer.getvalue()


def plot(groups: list[Group], cols: list[tuple[str, str]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    main = list({task: (task, metric) for task, metric in reversed(cols)}.values())[
        ::-1
    ]  # first metric per task
    fig, axes = plt.subplots(1, len(main), figsize=(max(4, 1.2 * len(groups)) * len(main), 4), squeeze=False)
    for ax, (task, metric) in zip(axes[0], main):
        stats = [mean_std(v) if (v := g.values(task, metric)) else (float("nan"), 0.0) for g in groups]
        ax.bar(
            range(len(groups)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color="#4c72b0"
        )
        ax.set_xticks(range(len(groups)), [g.label for g in groups], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{task}: {metric}")
    fig.tight_layout()
    staging = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(staging, dpi=120)
    plt.close(fig)
    staging.replace(path)


def report(cfg: ReportConfig) -> Path:
    sweep = Path(cfg.sweep_dir).expanduser().resolve()
    if not sweep.is_dir():
        raise MtdnnError(f"sweep_dir: {sweep} is not a folder")
    jobs = read_jobs(sweep, cfg.split)
    done = [j for j in jobs if j.metrics]
    if not done:
        raise MtdnnError(
            f"sweep_dir: none of the {len(jobs)} jobs in {sweep} has a summary.json with "
            f"'{cfg.split}' metrics yet"
        )
    groups = group_jobs(done)
    shared = " ".join(sorted(set.intersection(*(set(j.overrides) for j in done))))
    cols = columns(groups)
    out = Path(cfg.out).expanduser() if cfg.out else sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.md", markdown(groups, cols, [j for j in jobs if not j.metrics], shared))
    write_atomic(out / "report.csv", csv_text(groups, cols))
    plot(groups, cols, out / "report.png")
    search = sweep / "optimization_results.yaml"
    if search.is_file():  # an Optuna search (hydra/sweeper=search): its best trial and score vs trial
        with open(out / "report.md", "a", encoding="utf-8") as handle:
            handle.write(search_section(yaml.safe_load(search.read_text()) or {}, done))
        plot_trials(done, out / "trials.png")
    return out


def search_section(results: dict, done: list[Job]) -> str:
    params = " ".join(f"{k}={v}" for k, v in (results.get("best_params") or {}).items())
    lines = [
        "",
        "## Search (Optuna)",
        "",
        f"Best trial: score {results.get('best_value')} with `{params}`",
        "",
        "| trial | score | overrides |",
        "|---|---|---|",
    ]
    lines += [
        f"| {job.folder.name} | {job.score if job.score is not None else '-'} | `{' '.join(job.overrides)}` |"
        for job in sorted(done, key=_trial_number)
    ]
    return "\n".join(lines) + "\n"


def _trial_number(job: Job) -> int:
    return int(job.folder.name) if job.folder.name.isdigit() else 0


def plot_trials(done: list[Job], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = sorted((j for j in done if j.score is not None), key=_trial_number)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    scores = [j.score for j in trials]
    ax.plot([_trial_number(j) for j in trials], scores, "o", label="trial")
    ax.plot(
        [_trial_number(j) for j in trials],
        [max(scores[: i + 1]) for i in range(len(scores))],
        "-",
        label="best so far",
    )
    ax.set_xlabel("trial")
    ax.set_ylabel("best validation score")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@cli_errors
def main() -> None:
    out = report(parse_args(ReportConfig, argv("sweep_dir")))
    print((out / "report.md").read_text())
    print(f"wrote {out / 'report.md'}, report.csv, report.png")
    sys.exit(0)


if __name__ == "__main__":
    main()
