"""`python -m mtdnn.affinity target=T candidates=[a,b,...] [steps=300] [every=20] [output_dir=DIR] [...]`

Which auxiliary tasks would help a target? A short probe: one multi-task run of the target and the
candidates (`steps` optimizer steps, tasks drawn uniformly, one evaluation at the end) that measures every
`every` steps how a step on each task changes every other task's loss (TAG's lookahead affinity) and the
cosine between the tasks' gradients (mtdnn/training/affinity.py). Ranks the candidates by their mean
lookahead into the target (a step on it lowers the target's loss: > 0), proposes who to train the target
with and which pairs help each other, and writes affinity.md (the table), affinity.json and the run's
affinity.png into the probe's run folder. Any `python -m mtdnn.train` override applies to the probe
(encoder=..., task_dirs=[...], trainer.batch_size=...).
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from mtdnn.core.atomic import write_atomic, write_json
from mtdnn.core.commands import HELP, cli_errors
from mtdnn.core.errors import MtdnnError
from mtdnn.core.paths import conf_dir
from mtdnn.train import run
from mtdnn.training.command_line import check_overrides

OWN = {"target": None, "candidates": None, "steps": "300", "every": "20"}


def split_arguments(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """This command's own key=value arguments, and the training overrides."""
    own, overrides = dict(OWN), []
    for arg in args:
        key, _, value = arg.partition("=")
        if key in OWN:
            own[key] = value
        else:
            overrides.append(arg)
    missing = [k for k in ("target", "candidates") if not own[k]]
    if missing:
        raise MtdnnError(f"{missing[0]}: required (python -m mtdnn.affinity target=T candidates=[a,b,...])")
    for key in ("steps", "every"):
        if not own[key].isdigit() or int(own[key]) < 1:
            raise MtdnnError(f"{key}: must be a whole number >= 1, got '{own[key]}'")
    return own, overrides


def candidates_of(value: str, target: str) -> list[str]:
    names = [n.strip() for n in value.strip("[]").split(",") if n.strip()]
    if not names or target in names or len(set(names)) != len(names):
        raise MtdnnError(f"candidates: give other tasks than the target, each once, got '{value}'")
    return names


def probe_config(own: dict[str, str], overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    tasks = [own["target"], *candidates_of(own["candidates"], own["target"])]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    probe = [
        f"task=[{','.join(tasks)}]",
        "sampler=uniform",
        f"trainer.max_steps={own['steps']}",
        f"trainer.affinity_every={own['every']}",
        "trainer.eval_every=1000000",
        "predict_test=false",
        *(
            []
            if any(o.startswith("output_dir=") for o in overrides)
            else [f"output_dir=outputs/affinity/{stamp}"]
        ),
        *overrides,
    ]
    check_overrides(probe)
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose("train", overrides=probe)
    finally:
        GlobalHydra.instance().clear()


def rank(target: str, affinity: dict) -> list[dict]:
    """Candidates by their mean lookahead into the target, then by gradient cosine."""
    rows = []
    for key, into_target in affinity["lookahead"].items():
        source, _, to = key.partition("->")
        if to == target:
            pair = f"{min(source, target)},{max(source, target)}"
            rows.append(
                {
                    "candidate": source,
                    "lookahead": into_target,
                    "from_target": affinity["lookahead"][f"{target}->{source}"],
                    "cosine": affinity["gradient_cosine"][pair],
                }
            )
    return sorted(rows, key=lambda r: (r["lookahead"], r["cosine"]), reverse=True)


def mutual_pairs(affinity: dict) -> list[str]:
    """Pairs of tasks that help each other (lookahead > 0 both ways)."""
    look = affinity["lookahead"]
    pairs = {tuple(sorted(k.split("->"))) for k in look}
    return [f"{a} + {b}" for a, b in sorted(pairs) if look[f"{a}->{b}"] > 0 and look[f"{b}->{a}"] > 0]


def report(target: str, ranking: list[dict], affinity: dict) -> str:
    helpful = [r["candidate"] for r in ranking if r["lookahead"] > 0]
    lines = [
        f"auxiliary tasks for {target} ({affinity['measurements']} measurements; lookahead > 0: a step on "
        "the candidate lowered the target's loss)",
        "",
        "| rank | candidate | lookahead into target | lookahead from target | gradient cosine |",
        "|---|---|---|---|---|",
        *(
            f"| {i} | {r['candidate']} | {r['lookahead']:+.3e} | {r['from_target']:+.3e} "
            f"| {r['cosine']:+.4f} |"
            for i, r in enumerate(ranking, 1)
        ),
        "",
        f"train {target} with: {', '.join(helpful) if helpful else 'none of them (every candidate hurt it)'}",
        f"pairs that help each other: {', '.join(mutual_pairs(affinity)) or 'none'}",
    ]
    return "\n".join(lines) + "\n"


@cli_errors
def main() -> None:
    if any(a in HELP for a in sys.argv[1:]):
        print(f"{__doc__.strip()}\n\ndocs: docs/guide/transfer.md")
        sys.exit(0)
    own, overrides = split_arguments(sys.argv[1:])
    cfg = probe_config(own, overrides)
    output_dir = Path(cfg.output_dir).expanduser().resolve()
    summary = run(cfg, output_dir)
    affinity = summary.get("task_affinity")
    if affinity is None:
        raise MtdnnError(
            f"steps: {own['steps']} steps made no measurement every {own['every']}; take more steps"
        )
    ranking = rank(own["target"], affinity)
    text = report(own["target"], ranking, affinity)
    write_atomic(output_dir / "affinity.md", text)
    write_json(
        output_dir / "affinity.json",
        {
            "target": own["target"],
            "ranked": ranking,
            "mutual_pairs": mutual_pairs(affinity),
            "config": OmegaConf.to_container(cfg.trainer, resolve=True),
        },
    )
    print(text + f"written to {output_dir}")
    sys.exit(0)


if __name__ == "__main__":
    main()
