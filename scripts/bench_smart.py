"""What SMART costs per training step, relative to a vanilla step, measured side by side in one process.

    python scripts/bench_smart.py [--reps 7] [--encoder minilm|tiny] [--json out.json]

For each shape (batch x tokens) it times three variants of the toolkit's real training step
(mtdnn.training.loop.forward_backward + gradient clipping + AdamW step + regularizer after_step) on the
same model: vanilla, SMART without the teacher (mu=0: the smoothness term alone) and full SMART (with the
momentum teacher). The variants take turns within every repetition (interleaved, order rotated), and the
table reports median step times, their spread (min-max) and the ratios of medians.

The anchor is mt-dnn's own SMART perturbation code (HEAD, its calling bug worked around, K=1, no proximal
term), measured on this CPU with MiniLM-L6: 2.43x a vanilla step at 16 x 64 and 2.01x at 32 x 128. Ratios
depend on the vanilla step they divide by, so a fourth variant runs mt-dnn's perturbation structure on this
same model and vanilla step: clean pass, noise, one ascent pass with fresh dropout draws, autograd.grad to
the noise, per-token l_inf normalisation, a final perturbed pass, symmetric KL added to the loss (its
`adv_train` path, K=1). Its absolute time is what "no slower than mt-dnn" compares against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from mtdnn.core.config import EncoderConfig, TrainerConfig
from mtdnn.core.paths import conf_dir
from mtdnn.data.tasks import ColumnsSpec, SourceSpec, TaskSpec
from mtdnn.kinds.heads import symmetric_kl
from mtdnn.model.encoders import build_encoder, pretrained_source
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.regularizers.smart import Config, Smart
from mtdnn.training.loop import forward_backward
from mtdnn.training.optim import build_optimizer

SHAPES = [(16, 64), (32, 128)]
MTDNN_ANCHOR = {(16, 64): 2.43, (32, 128): 2.01}


def load_encoder(name: str) -> torch.nn.Module:
    node = OmegaConf.load(conf_dir() / "encoder" / f"{name}.yaml")
    node.pop("defaults", None)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EncoderConfig), node))
    return build_encoder(cfg, pretrained_source(cfg), vocab_size=1000)


def random_batch(batch: int, tokens: int, vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(batch * tokens)
    ids = torch.randint(1000, vocab, (batch, tokens), generator=generator)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
        "labels": torch.randint(0, 2, (batch,), generator=generator),
    }


def variants(model: MultiTaskModel, spec: TaskSpec) -> dict[str, dict | str]:
    return {
        "vanilla": {},
        "smart, no teacher": {"smart": Smart(Config(mu=0.0), model, [spec])},
        "smart, full": {"smart": Smart(Config(), model, [spec])},
        "mt-dnn structure": "mt-dnn",
    }


def mtdnn_structure(model: MultiTaskModel, batch: dict) -> None:
    """mt-dnn's adv_train step, K=1, on our model: nothing is replayed, every pass draws its own dropout."""
    embeds = model.embed(batch["input_ids"])
    logits = model("bench", **batch, inputs_embeds=embeds)
    loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
    noise = (torch.randn_like(embeds) * 1e-5).requires_grad_()
    adv_logits = model("bench", **batch, inputs_embeds=embeds.detach() + noise)
    (grad,) = torch.autograd.grad(symmetric_kl(adv_logits, logits.detach()).sum(), noise)
    step = noise + grad * 1e-3
    noise = (step / (step.abs().amax(-1, keepdim=True) + 1e-6)).detach()  # its per-token l_inf normalisation
    adv_logits = model("bench", **batch, inputs_embeds=embeds + noise)
    (loss + symmetric_kl(adv_logits, logits).mean()).backward()


def time_step(model, optimizer, regularizers, batch) -> float:
    start = time.perf_counter()
    if regularizers == "mt-dnn":
        mtdnn_structure(model, batch)
    else:
        forward_backward(model, "bench", batch, regularizers, 1.0, bf16=False)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    for reg in regularizers.values() if isinstance(regularizers, dict) else []:
        reg.after_step(model, 1, 100, 5e-5)
    return time.perf_counter() - start


def bench_shape(model, optimizer, runs: dict[str, dict], batch: dict, reps: int) -> dict[str, list[float]]:
    names = list(runs)
    for name in names:  # warm-up: allocator, kernels, the teacher copy's first touch
        for _ in range(2):
            time_step(model, optimizer, runs[name], batch)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate who goes first
        for name in order:
            times[name].append(time_step(model, optimizer, runs[name], batch))
    return times


def pass_costs(model: MultiTaskModel, batch: dict, reps: int) -> dict[str, float]:
    """Median seconds of each pass the smoothness term is made of, timed alone: the floor of its cost."""
    from mtdnn.regularizers.dropout import DropoutReplay

    def clean_forward():
        embeds = model.embed(batch["input_ids"])
        with replay.record():
            return embeds, model("bench", **batch, inputs_embeds=embeds)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    costs: dict[str, list[float]] = {
        "train forward (draws dropout)": [],
        "replayed forward": [],
        "backward, weights + input": [],
        "backward, input only": [],
    }
    for _ in range(reps + 1):
        replay = DropoutReplay(torch.device("cpu"))
        costs["train forward (draws dropout)"].append(timed(clean_forward))
        delta = torch.zeros_like(model.embed(batch["input_ids"])).requires_grad_()
        with replay.replay():
            start = time.perf_counter()
            out = model("bench", **batch, inputs_embeds=model.embed(batch["input_ids"]).detach() + delta)
            costs["replayed forward"].append(time.perf_counter() - start)
        costs["backward, input only"].append(timed(lambda: torch.autograd.grad(out.sum(), delta)))
        _, logits = clean_forward()
        costs["backward, weights + input"].append(timed(lambda: logits.sum().backward()))
        model.zero_grad(set_to_none=True)
    return {name: statistics.median(values[1:]) for name, values in costs.items()}  # first rep: warm-up


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--encoder", default="minilm")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--passes", action="store_true", help="also time each pass alone (the cost floor)")
    args = parser.parse_args()

    torch.manual_seed(0)
    spec = TaskSpec(
        name="bench",
        head="classification",
        source=SourceSpec(kind="files"),
        columns=ColumnsSpec(text="t", label="y"),
        labels=["a", "b"],
    )
    model = MultiTaskModel(load_encoder(args.encoder), [spec], pooling="mean").train()
    optimizer = build_optimizer(model, TrainerConfig())
    runs = variants(model, spec)
    vocab = model.encoder.config.vocab_size
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"encoder {args.encoder} ({params:.1f}M parameters), {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {args.reps} interleaved repetitions per shape\n"
    )
    print(
        f"{'shape':<10} {'variant':<18} {'median s':>9} {'min-max s':>15} {'x vanilla':>10} "
        f"{'mt-dnn anchor':>14}"
    )
    report = []
    for batch_size, tokens in SHAPES:
        times = bench_shape(model, optimizer, runs, random_batch(batch_size, tokens, vocab), args.reps)
        base = statistics.median(times["vanilla"])
        for name, values in times.items():
            median = statistics.median(values)
            anchor = MTDNN_ANCHOR[(batch_size, tokens)]
            limit = {
                "vanilla": "",
                "smart, no teacher": f"<= {anchor:.2f}",
                "smart, full": f"<= {anchor + 0.5:.2f}",
                "mt-dnn structure": "",
            }
            print(
                f"{batch_size}x{tokens:<7} {name:<18} {median:>9.3f} {min(values):>7.3f}-{max(values):<7.3f} "
                f"{median / base:>10.2f} {limit[name]:>14}"
            )
            report.append(
                {
                    "batch": batch_size,
                    "tokens": tokens,
                    "variant": name,
                    "median_s": median,
                    "min_s": min(values),
                    "max_s": max(values),
                    "ratio": median / base,
                    "times": values,
                }
            )
        if args.passes:
            costs = pass_costs(model, random_batch(batch_size, tokens, vocab), args.reps)
            floor = (
                costs["replayed forward"] * 2
                + costs["backward, input only"]
                + costs["backward, weights + input"]
            )
            for name, value in costs.items():
                print(f"{batch_size}x{tokens:<7}   pass: {name:<32} {value:>7.3f} s")
            print(
                f"{batch_size}x{tokens:<7}   smoothness floor (vanilla + 2 replayed forwards + both "
                "backwards): "
                f"{(base + floor) / base:.2f}x"
            )
        print()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0)


if __name__ == "__main__":
    main()
