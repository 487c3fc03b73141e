"""The speed benchmark: every figure a ratio measured side by side in one process (medians and spread).

    python scripts/bench.py [--quick] [--reps 5] [--json bench.json] [--page report.md]
    python scripts/bench.py --render bench.json --page report.md     # the page again from a saved report

  1. step      toolkit train step vs a minimal hand-written PyTorch + transformers loop (same encoder, batch,
               sequence length, initial weights): MiniLM-L6 and the tiny encoder
  2. batching  time per epoch on the demo task with the toolkit's batching (length buckets + padding to a
               multiple of 8) vs padding every batch to max_length, plus validation accuracy after the same
               steps
  3. mfu       encoder matmul FLOP/s of a training step / FLOP/s of a large matmul measured in the same run
  4. bf16      bf16 autocast vs fp32 step time, and the accuracy difference after the same short training
               (skipped, with the reason in the report, where the hardware has no bf16 matmul: emulated bf16
               on such a CPU is several times slower than fp32 and says nothing about bf16 training)
  5. memory    peak RSS (and CUDA memory on a GPU) per configuration
  6. startup   time to the first training batch with a cold vs a warm tokenisation cache (two subprocesses)
  7. packing    encoder FLOPs of an epoch of real rows in length buckets vs packed into max_length sequences
  8. trainer    the HF Trainer (run_glue defaults; group_by_length) against the toolkit (eager; compiled) to
                the same validation accuracy (scripts/bench_trainer.py; full run only, --no-trainer skips)
The step comparison (1) also times the toolkit compiled (trainer.compile) and with the other attention
implementation (eager vs sdpa) on the main encoder.

--quick uses the tiny encoder on a toy task written to a temporary folder (no download; for CI); the full run
uses MiniLM-L6 and rt_polarity from their PyPI wheels. The same script runs unchanged on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from mtdnn.core.config import EncoderConfig, TrainerConfig
from mtdnn.core.paths import conf_dir
from mtdnn.data.loading import Collator, TaskBatches, encode_splits, task_seed
from mtdnn.data.tasks import load_tasks
from mtdnn.evaluation.engine import collator_for, evaluate_split
from mtdnn.model.compiled import compile_encoder
from mtdnn.model.encoders import attention_of, build_encoder, build_tokenizer, pretrained_source
from mtdnn.model.multitask import MultiTaskModel
from mtdnn.training.build import prepare_data, train_texts
from mtdnn.training.loop import forward_backward
from mtdnn.training.optim import build_optimizer, build_scheduler

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- helpers


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def interleaved(fns: dict[str, callable], reps: int, warmup: int = 2) -> dict[str, list[float]]:
    """Run the variants in turns (rotating who goes first), after a warm-up of each."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names, times = list(fns), {n: [] for n in fns}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            times[name].append(timed(fns[name]))
    return times


def reset_peak_memory() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:  # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb() -> dict:
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    if DEVICE.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def encoder_config(name: str) -> EncoderConfig:
    node = OmegaConf.load(conf_dir() / "encoder" / f"{name}.yaml")
    node.pop("defaults", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EncoderConfig), node))


# ---------------------------------------------------------------- 1. toolkit step vs plain loop


def train_step(model, task: str, batch: dict, optimizer, scheduler, cfg: TrainerConfig, bf16: bool) -> None:
    """The body of mtdnn.training.loop.train for one micro-batch without regularizers: what the toolkit
    runs."""
    forward_backward(model, task, batch, {}, 1.0, bf16)
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


class PlainModel(nn.Module):
    """What a user writes by hand: encoder, [CLS] state, dropout, linear."""

    def __init__(self, encoder: nn.Module, labels: int):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(0.1)
        self.out = nn.Linear(encoder.config.hidden_size, labels)

    def forward(self, input_ids, attention_mask, token_type_ids):
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        return self.out(self.dropout(hidden[:, 0]))


def random_batch(batch: int, tokens: int, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * tokens)
    ids = torch.randint(5, vocab, (batch, tokens), generator=gen)
    return {
        k: v.to(DEVICE)
        for k, v in {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 2, (batch,), generator=gen),
        }.items()
    }


def toolkit_stepper(spec, encoder: nn.Module, batch: dict, attention: str | None, compiled: bool):
    """One toolkit training step as a function (its own model copy, optimizer, schedule)."""
    model = MultiTaskModel(copy.deepcopy(encoder), [spec], pooling="cls").to(DEVICE).train()
    if attention:
        model.encoder.set_attn_implementation(attention)
    if compiled:
        compile_encoder(model.encoder)
    cfg = TrainerConfig()
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, 10_000)
    return model, lambda: train_step(model, spec.name, batch, optimizer, scheduler, cfg, bf16=False)


def step_vs_plain(spec, encoder: nn.Module, shape: tuple[int, int], reps: int, variants: bool) -> dict:
    """The toolkit step against the plain loop at equal batch; with `variants` also the toolkit compiled
    and with the other attention implementation (eager vs sdpa), all interleaved."""
    batch = random_batch(*shape, encoder.config.vocab_size)
    toolkit, toolkit_step = toolkit_stepper(spec, encoder, batch, None, compiled=False)
    steps = {"toolkit": toolkit_step}
    default = attention_of(encoder)
    if variants:
        other = "eager" if default == "sdpa" else "sdpa"
        steps[f"toolkit {other}"] = toolkit_stepper(spec, encoder, batch, other, compiled=False)[1]
        steps["toolkit compiled"] = toolkit_stepper(spec, encoder, batch, None, compiled=True)[1]
    plain = PlainModel(copy.deepcopy(encoder), 2).to(DEVICE).train()
    plain.out.load_state_dict(toolkit.heads[spec.name].out.state_dict())
    cfg = TrainerConfig()
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    def plain_step():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        F.cross_entropy(plain(**inputs), batch["labels"]).backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        plain_opt.step()
        plain_opt.zero_grad(set_to_none=True)

    times = interleaved({**steps, "plain": plain_step}, reps)  # warm-up runs include compiling
    result = {name: summary(values) for name, values in times.items()}
    result["attention"] = default
    result["ratio"] = result["toolkit"]["median"] / result["plain"]["median"]
    result["ratios"] = {name: result[name]["median"] / result["plain"]["median"] for name in steps}
    return result


# ---------------------------------------------------------------- 3. model FLOPs utilisation


def encoder_train_flops(config, batch: int, tokens: int) -> float:
    """Matmul FLOPs of one training step (forward x 3): projections, feed-forward and attention scores."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * inner) + 2 * 2 * tokens * hidden
    return 3.0 * per_token * layers * batch * tokens


def matmul_peak(size: int, reps: int) -> float:
    a, b = torch.randn(size, size, device=DEVICE), torch.randn(size, size, device=DEVICE)
    times = interleaved({"mm": lambda: a @ b}, reps, warmup=2)["mm"]
    return 2 * size**3 / statistics.median(times)


# ---------------------------------------------------------------- 2 & 4. training on the demo task


def demo_task(quick: bool):
    """(spec, TaskData, tokenizer, encoder) for the batching and precision comparisons."""
    if quick:
        folder = Path(tempfile.gettempdir()) / "mtdnn-bench-toy"  # fixed, so a second run can hit the cache
        if not (folder / "toy.yaml").is_file():
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from conftest import sentiment_rows, write_task

            write_task(
                folder,
                "toy",
                "classification",
                {"train": sentiment_rows(1024, 1), "validation": sentiment_rows(256, 2)},
                {"text": "sentence", "label": "label"},
                labels=["neg", "pos"],
                max_length=64,
            )
        (spec,) = load_tasks(["toy"], [str(folder)])
        encoder_name = "tiny"
    else:
        (spec,) = load_tasks(["rt_polarity"])
        encoder_name = "minilm"
    data = prepare_data([spec])[spec.name]
    enc_cfg = encoder_config(encoder_name)
    source = pretrained_source(enc_cfg)
    tokenizer = build_tokenizer(enc_cfg, source, train_texts({spec.name: data}))
    encode_splits(data, tokenizer)
    torch.manual_seed(0)
    encoder = build_encoder(enc_cfg, source, len(tokenizer))
    return spec, data, tokenizer, encoder, enc_cfg.pooling


def train_and_score(
    spec, data, tokenizer, encoder, pooling, steps: int, bucket: int, multiple: int, bf16: bool
) -> dict:
    """Train `steps` batches from the same initial weights and data order seed; time, memory, accuracy."""
    torch.manual_seed(0)
    model = MultiTaskModel(copy.deepcopy(encoder), [spec], pooling).to(DEVICE).train()
    cfg = TrainerConfig(lr=1e-4, head_lr=1e-3)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, steps)
    collate = Collator(tokenizer.pad_token_id or 0, multiple)
    batches = TaskBatches(data.encoded["train"], 32, task_seed(0, spec.name), collate, bucket)
    reset_peak_memory()
    step_times = []
    for _ in range(steps):
        batch = {k: v.to(DEVICE) for k, v in batches.next().items()}

        step_times.append(timed(lambda: train_step(model, spec.name, batch, optimizer, scheduler, cfg, bf16)))
    memory = peak_memory_mb()
    _, scores = evaluate_split(
        model,
        spec,
        data.raw["validation"],
        data.encoded["validation"],
        collator_for(spec, tokenizer, 8),
        128,
        DEVICE,
        bf16,
    )
    return {
        "steps": steps,
        "seconds": sum(step_times),
        "step": summary(step_times),
        "epoch_seconds": sum(step_times) / steps * len(batches),
        "accuracy": scores["accuracy"],
        **memory,
    }


def bf16_hardware() -> str | None:
    """None where bf16 matmuls run natively; otherwise why the bf16 arm is skipped."""
    if DEVICE.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else "this GPU has no bf16 support"
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # AVX-512 BF16 / AMX: oneDNN runs bf16 natively
        return None
    return f"this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 matmul; bf16 would be emulated"


# ---------------------------------------------------------------- 7. packing: what it could save


def packing_bound(data, config, max_length: int, multiple: int = 8) -> dict:
    """Encoder FLOPs of one epoch of real rows under the toolkit's length buckets against packing the same
    rows into max_length sequences (first fit, longest first). On CPU, attention over a packed sequence
    is dense (a block-diagonal mask still computes every pair), so packing saves padding tokens but pays
    attention over the whole pack; the ratio is the most that packing could gain over bucketing."""
    batches = TaskBatches(data.encoded["train"], 32, task_seed(0, "bench"), Collator(0, multiple), 50)
    lengths = np.asarray(batches.lengths)

    def flops(rows: int, length: int) -> float:  # the MFU section's count (its constant factors cancel here)
        return encoder_train_flops(config, rows, length)

    def padded(rows) -> int:  # the batch's length: its longest row, rounded up to the multiple
        return -(-int(lengths[rows].max()) // multiple) * multiple

    plan = batches._plan(0)
    bucketed = sum(flops(len(rows), padded(rows)) for rows in plan)
    packs: list[int] = []  # free room left in each packed sequence
    for length in sorted(lengths.tolist(), reverse=True):
        slot = next((i for i, room in enumerate(packs) if room >= length), None)
        if slot is None:
            packs.append(max_length - length)
        else:
            packs[slot] -= length
    real = int(lengths.sum())
    return {
        "rows": len(lengths),
        "real_tokens": real,
        "bucketed_tokens": sum(len(rows) * padded(rows) for rows in plan),
        "packed_sequences": len(packs),
        "packed_tokens": len(packs) * max_length,
        "flops_ratio": bucketed / flops(len(packs), max_length),  # > 1: packing would be faster
    }


# ---------------------------------------------------------------- 6. cold vs warm start

STARTUP = """
import sys, time, json
from bench import demo_task
from mtdnn.data.loading import TaskBatches
from mtdnn.evaluation.engine import collator_for
start = time.perf_counter()  # after the imports: what differs between the runs is the data work
spec, data, tokenizer, encoder, pooling = demo_task({quick})
batch = TaskBatches(data.encoded['train'], 32, 0, collator_for(spec, tokenizer, 8)).next()
print(json.dumps({{'seconds': time.perf_counter() - start}}))
"""


def startup(quick: bool) -> dict:
    cache = tempfile.mkdtemp(prefix="mtdnn-bench-hf-")
    env = {**os.environ, "HF_DATASETS_CACHE": cache, "PYTHONPATH": str(Path(__file__).parent)}
    runs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-c", STARTUP.format(quick=quick)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    return {"cold_seconds": runs[0], "warm_seconds": runs[1], "ratio": runs[1] / runs[0]}


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny encoder and toy data: seconds, no download"
    )
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="training steps per batching/precision run")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--page", type=Path, help="write the results as a markdown page (the docs' report)")
    parser.add_argument("--render", type=Path, help="no measuring: the --page of a saved --json report")
    parser.add_argument(
        "--no-trainer", dest="trainer", action="store_false", help="skip the HF Trainer side by side"
    )
    parser.add_argument("--trainer-epochs", type=float, default=1.0)
    parser.add_argument(
        "--bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="the bf16 arm: auto runs it only where the hardware has bf16 matmuls",
    )
    args = parser.parse_args()
    if args.render:
        if args.page is None:
            parser.error("--render needs --page: where to write the page")
        args.page.write_text(render_page(json.loads(args.render.read_text())))
        return
    reps = args.reps or (3 if args.quick else 7)
    steps = args.steps or (20 if args.quick else 80)
    report = {
        "command": " ".join(["python scripts/bench.py", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "device": str(DEVICE),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "quick": args.quick,
    }

    spec, data, tokenizer, encoder, pooling = demo_task(args.quick)
    encoders = {"tiny" if args.quick else "minilm": encoder}
    if not args.quick:
        tiny_cfg = encoder_config("tiny")
        encoders["tiny"] = build_encoder(tiny_cfg, None, 1000)
    shape = (8, 32) if args.quick else (32, 128)
    main_name = "tiny" if args.quick else "minilm"
    report["step"] = {
        name: step_vs_plain(spec, enc, shape, reps, variants=name == main_name)
        for name, enc in encoders.items()
    }
    print_step(report["step"], shape)

    flops = encoder_train_flops(encoders[main_name].config, *shape)
    peak = matmul_peak(1024 if args.quick else 4096, reps)
    achieved = flops / report["step"][main_name]["toolkit"]["median"]
    achieved_compiled = flops / report["step"][main_name]["toolkit compiled"]["median"]
    report["mfu"] = {
        "encoder": main_name,
        "shape": list(shape),
        "train_flops": flops,
        "achieved_flops": achieved,
        "matmul_peak_flops": peak,
        "mfu": achieved / peak,
        "mfu_compiled": achieved_compiled / peak,
    }
    print(
        f"\nMFU ({main_name}, {shape[0]}x{shape[1]}): {achieved / 1e9:.1f} GFLOP/s of a "
        f"{peak / 1e9:.1f} GFLOP/s matmul peak = {achieved / peak:.1%} "
        f"(compiled {achieved_compiled / peak:.1%})"
    )

    no_bf16 = {"auto": bf16_hardware(), "on": None, "off": "--bf16 off"}[args.bf16]
    runs = {
        "toolkit batching": dict(bucket=50, multiple=8, bf16=False),
        "pad to max_length": dict(bucket=1, multiple=spec.max_length, bf16=False),
    }
    if no_bf16 is None:
        runs["toolkit batching, bf16"] = dict(bucket=50, multiple=8, bf16=True)
    results = {
        name: train_and_score(spec, data, tokenizer, encoder, pooling, steps, **kw)
        for name, kw in runs.items()
    }
    report["training"] = results
    base, padded = results["toolkit batching"], results["pad to max_length"]
    report["batching"] = {
        "epoch_speedup": padded["epoch_seconds"] / base["epoch_seconds"],
        "accuracy_difference": base["accuracy"] - padded["accuracy"],
    }
    print_training(results, steps)
    print(
        f"default batching vs pad-to-max: {report['batching']['epoch_speedup']:.2f}x faster per epoch, "
        f"accuracy {report['batching']['accuracy_difference']:+.4f}"
    )
    report["bf16"] = bf16_report(results, no_bf16)

    report["packing"] = packing_bound(data, encoder.config, spec.max_length)
    p = report["packing"]
    print(
        f"packing vs length buckets ({p['rows']} rows, {p['real_tokens']} real tokens): buckets compute "
        f"{p['bucketed_tokens']} tokens, packing {p['packed_tokens']} in {p['packed_sequences']} sequences; "
        f"encoder FLOPs buckets / packing = {p['flops_ratio']:.2f}"
    )

    report["startup"] = startup(args.quick)
    s = report["startup"]
    print(
        f"time to the first batch: cold cache {s['cold_seconds']:.1f}s, warm {s['warm_seconds']:.1f}s "
        f"({s['ratio']:.2f}x)"
    )
    if args.trainer and not args.quick:  # the HF Trainer side by side (scripts/bench_trainer.py)
        from bench_trainer import print_table, side_by_side

        report["hf_trainer"] = side_by_side(args.trainer_epochs, eval_every=32)
        print_table(report["hf_trainer"], torch.get_num_threads())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.page:
        args.page.write_text(render_page(report))


def machine() -> str:
    """The CPU's model name (and the GPU's, on one) and its vector extensions as PyTorch sees them."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    name = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), "unknown CPU")
    cpu = f"{name} ({torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores)"
    return f"{torch.cuda.get_device_name()}, {cpu}" if DEVICE.type == "cuda" else cpu


def render_page(report: dict) -> str:
    """The docs' speed report: every figure of one run of this script, with the command and the machine."""
    main_name = report["mfu"]["encoder"]
    shape = "x".join(str(n) for n in report["mfu"]["shape"])
    lines = [
        "# Training speed",
        "",
        f"Generated by `{report.get('command', 'python scripts/bench.py')}` on {report.get('date', '?')}: "
        f"{report.get('machine', '?')}, {report['threads']} threads, torch {report['torch']}. "
        "What the figures mean and which defaults follow from them: [Speed](../guide/speed.md).",
        "",
        f"## The training step ({shape} tokens)",
        "",
        "Medians of interleaved repetitions; x plain is the toolkit step over a hand-written PyTorch + "
        "transformers loop with the same encoder, batch and initial weights.",
        "",
        "| encoder | step | median s | x plain | spread (min-max) s |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["step"].items():
        for variant, ratio in {**r["ratios"], "plain": 1.0}.items():
            label = f"{variant} ({r['attention']})" if variant == "toolkit" else variant
            t = r[variant]
            lines.append(
                f"| {name} | {label} | {t['median']:.4f} | {ratio:.3f} | {t['min']:.4f}-{t['max']:.4f} |"
            )
    m = report["mfu"]
    lines += [
        "",
        f"Model FLOPs utilisation ({main_name}, fp32): {m['achieved_flops'] / 1e9:.1f} GFLOP/s of a "
        f"{m['matmul_peak_flops'] / 1e9:.1f} GFLOP/s large-matmul peak = **{m['mfu']:.1%}** "
        f"(compiled {m['mfu_compiled']:.1%}).",
        "",
        "## Batching and precision",
        "",
        "| configuration | median step s | epoch s | accuracy | peak RSS MB |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["training"].items():
        lines.append(
            f"| {name} | {r['step']['median']:.4f} | {r['epoch_seconds']:.1f} | {r['accuracy']:.4f} | "
            f"{r.get('peak_rss_mb', float('nan')):.0f} |"
        )
    b, bf16 = report["batching"], report["bf16"]
    lines += [
        "",
        f"Length buckets vs padding to max_length: **{b['epoch_speedup']:.2f}x** faster per epoch, accuracy "
        f"{b['accuracy_difference']:+.4f} after the same steps.",
        "",
        f"bf16: skipped: {bf16['skipped']}."
        if "skipped" in bf16
        else f"bf16 vs fp32: {bf16['step_speedup']:.2f}x per step, accuracy "
        f"{bf16['accuracy_difference']:+.4f}.",
    ]
    p = report["packing"]
    lines += [
        "",
        "## Packing: what it could save",
        "",
        f"One epoch of the demo task ({p['rows']:,} rows, {p['real_tokens']:,} real tokens):",
        "",
        "| | tokens computed | encoder FLOPs (relative) |",
        "|---|---|---|",
        f"| length buckets (the default) | {p['bucketed_tokens']:,} | {p['flops_ratio']:.3f} |",
        f"| packed into {p['packed_sequences']:,} sequences | {p['packed_tokens']:,} | 1.000 |",
    ]
    st = report["startup"]
    lines += [
        "",
        "## Start-up",
        "",
        f"Time to the first training batch: cold tokenisation cache {st['cold_seconds']:.1f} s, warm "
        f"{st['warm_seconds']:.1f} s.",
    ]
    if "hf_trainer" in report:
        from bench_trainer import compare  # again from the arms' raw results: the table's rules in one place

        lines += ["", *trainer_lines(compare(report["hf_trainer"]["results"]))]
    lines += ["", *goal_lines(report)]
    return "\n".join(lines) + "\n"


ARM_NAMES = {
    "hf_defaults": "HF Trainer, run_glue defaults (pad to 128)",
    "hf_grouped": "HF Trainer, group_by_length + dynamic padding",
    "toolkit": "mtdnn (length buckets)",
    "toolkit_compile": "mtdnn, trainer.compile=true",
}


def trainer_lines(comparison: dict) -> list[str]:
    target = comparison["target_accuracy"]
    lines = [
        "## Against the HF Trainer",
        "",
        "Each arm in its own process, training time only (evaluations excluded); the target is the lowest "
        "of the arms' best validation accuracies.",
        "",
        f"| arm | seconds to {target:.4f} | speed-up | best accuracy | examples/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for arm, r in comparison["arms"].items():
        reached = f"{r['seconds_to_target']:.1f}" if r["seconds_to_target"] else "never"
        speedup = f"{r['speedup_to_target']:.2f}x" if r["speedup_to_target"] else "-"
        lines.append(
            f"| {ARM_NAMES.get(arm, arm)} | {reached} | {speedup} | {r['best_accuracy']:.4f} | "
            f"{r['examples_per_second']:.1f} | {memory(r.get('peak_rss_mb'))} |"
        )
    return lines


def memory(peak_rss_mb: float | None) -> str:
    return "-" if peak_rss_mb is None else f"{peak_rss_mb:.0f}"


def goal_lines(report: dict) -> list[str]:
    """The speed goals, each judged on this run's figures."""
    main = report["step"][report["mfu"]["encoder"]]["ratios"]
    compiled = main.get("toolkit compiled")
    lines = ["## Goals", ""]
    if compiled is not None:
        lines.append(
            f"- compiled toolkit step <= 0.8x the plain loop: {compiled:.3f}, "
            f"{'met' if compiled <= 0.8 else 'not met'}"
        )
    lines.append(
        f"- fp32 MFU >= 60%: {report['mfu']['mfu']:.1%}, "
        f"{'met' if report['mfu']['mfu'] >= 0.6 else 'not met'}"
    )
    arms = report["hf_trainer"]["arms"] if "hf_trainer" in report else {}
    if (speedup := arms.get("toolkit", {}).get("speedup_to_target")) is not None:
        lines.append(
            f"- >= 2x faster than the HF Trainer's defaults to the same accuracy: {speedup:.2f}x, "
            f"{'met' if speedup >= 2 else 'not met'}"
        )
    return lines


def bf16_report(results: dict, no_bf16: str | None) -> dict:
    if no_bf16 is not None:
        print(f"bf16: skipped, {no_bf16}")
        return {"skipped": no_bf16}
    base, bf16 = results["toolkit batching"], results["toolkit batching, bf16"]
    report = {
        "step_speedup": base["step"]["median"] / bf16["step"]["median"],
        "accuracy_difference": bf16["accuracy"] - base["accuracy"],
    }
    print(f"bf16 vs fp32: {report['step_speedup']:.2f}x, accuracy {report['accuracy_difference']:+.4f}")
    return report


def print_step(step: dict, shape) -> None:
    print(f"train step, batch {shape[0]} x {shape[1]} tokens ({DEVICE}, {torch.get_num_threads()} threads)")
    print(f"  {'encoder':<8} {'step':<24} {'median s':>9} {'x plain':>8}   spread (min-max)")
    for name, r in step.items():
        for variant, ratio in {**r["ratios"], "plain": 1.0}.items():
            label = f"{variant} ({r['attention']})" if variant == "toolkit" else variant
            print(
                f"  {name:<8} {label:<24} {r[variant]['median']:>9.4f} {ratio:>8.3f}   "
                f"{r[variant]['min']:.4f}-{r[variant]['max']:.4f}"
            )


def print_training(results: dict, steps: int) -> None:
    print(f"\n{steps} training steps on the demo task, batch 32, same initial weights")
    print(f"  {'configuration':<24} {'median step s':>13} {'epoch s':>9} {'accuracy':>9} {'peak RSS MB':>12}")
    for name, r in results.items():
        print(
            f"  {name:<24} {r['step']['median']:>13.4f} {r['epoch_seconds']:>9.1f} {r['accuracy']:>9.4f} "
            f"{r.get('peak_rss_mb', float('nan')):>12.0f}"
        )


if __name__ == "__main__":
    main()
