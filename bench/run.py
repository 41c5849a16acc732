"""Benchmarks: the training step against its physical floor and a naive loop, memory, the latent cache,
scaling and CPU options; and generation with stacked adapters.

    pip install -e ".[bench]"
    python bench/run.py --quick      # under 10 minutes on a 2-core CPU
    python bench/run.py              # more repeats, and torch.compile
    python bench/run.py --flux 512   # one large base alone: --sdxl, --flux or --sd35, at PX pixels

Every number is a ratio of two things timed side by side in this run: absolute times on shared
machines are noise. Writes docs/results/benchmarks.md and docs/results/*.png.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable, NamedTuple

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from stylelora.model.allocator import keep_freed_memory  # noqa: E402
from stylelora.model.base import load_base  # noqa: E402
from stylelora.families import family_of_pipe  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.model.precision import bf16_support, choose_precision  # noqa: E402

from generation_bench import GenerationResult, measure_generation  # noqa: E402
from models import MINI, Base, flux, sd15, sd35, sdxl  # noqa: E402
from report_section import write_section  # noqa: E402
from plots import plot_generation, plot_scaling, plot_training  # noqa: E402
from training_bench import (cache_cost, floor_step, lora_step, naive_step, our_step_seconds,  # noqa: E402
                            peak_rss, timed)

RESULTS = BENCH.parent / "docs" / "results"


# Identical work timed twice (a fused step against the bare base) differs by up to about 2% here,
# so "no slower" means at most 1.02, and ratios are judged as printed, to two decimals.
NOISE = 1.02


def verdict(value: float, limit: float, at_least: bool = False) -> str:
    value = round(value, 2)
    return "met" if (value >= limit if at_least else value <= limit) else "**MISSED**"


def training_rows(base: Base, repeats: int, steps: int, cache_sample: int) -> dict:
    """Floor, naive loop (fp32 and bf16 autocast), and our train() (fp32 and its default), side by side."""
    row: dict = {"label": base.label, "size": f"{base.resolution}px, batch {base.batch}"}
    pipe = load_base(base.spec)
    parameters = sum(p.numel() for p in family_of_pipe(pipe).denoiser_of(pipe).parameters())
    row["floor"] = timed(floor_step(pipe, base), repeats)
    del pipe
    row["naive"] = timed(naive_step(load_base(base.spec), base), repeats)
    row["naive_bf16"] = (timed(naive_step(load_base(base.spec), base, autocast=True), repeats)
                         if bf16_support().runs else float("nan"))
    gc.collect()
    row["ours"] = our_step_seconds(base, steps, precision="no")
    row["default_precision"] = choose_precision("auto", "cpu", parameters).name
    row["ours_default"] = (row["ours"] if row["default_precision"] == "no"
                           else our_step_seconds(base, steps, precision=row["default_precision"]))
    row["cache_seconds"], row["cache_bytes"] = cache_cost(base, cache_sample)
    saved_per_step = row["naive"] - row["ours"]
    row["breakeven"] = row["cache_seconds"] / saved_per_step if saved_per_step > 0 else float("inf")
    return row


def memory_row(base: Base, steps: int) -> dict:
    return {"label": base.label, "ours": peak_rss("ours", base, steps), "naive": peak_rss("naive", base, steps)}


def scaling_rows(base: Base, repeats: int) -> dict:
    """LoRA step time on cached inputs against batch size (rank 4) and rank (the base's batch)."""
    def step_seconds(batch: int, rank: int) -> float:
        sized = Base(base.label, base.spec, base.resolution, batch)
        return timed(lora_step(load_base(base.spec), sized, rank=rank), repeats)

    one = step_seconds(1, 4)
    rank4 = step_seconds(base.batch, 4)
    return {"label": base.label, "batch": {1: 1.0} | {b: step_seconds(b, 4) / one for b in (2, 4)},
            "rank": {4: 1.0} | {r: step_seconds(base.batch, r) / rank4 for r in (16, 64)}}


def option_rows(base: Base, repeats: int, with_compile: bool) -> dict[str, float]:
    """Each CPU option's LoRA step time divided by the plain float32 step, on the same inputs."""
    plain = timed(lora_step(load_base(base.spec), base), repeats)
    options = {"channels_last": dict(channels_last=True), "gradient checkpointing": dict(checkpointing=True)}
    if bf16_support().runs:  # never run what this CPU was measured to die on
        options["bf16 autocast"] = dict(autocast=True)
    if with_compile:
        options["torch.compile"] = dict(compiled=True)
    return {name: timed(lora_step(load_base(base.spec), base, **flags), repeats, warmup=2) / plain
            for name, flags in options.items()}


def training_table(rows: list[dict], memory: list[dict], memory_target: float = 1.00) -> list[str]:
    lines = ["## Training", "",
             "| base | size | our step / floor (target <= 1.10) | naive / ours, both fp32 (target >= 1.4 on SD1.5) "
             "| each at its default precision: naive (fp32) / ours | naive in bf16 autocast / ours | latent cache: one-time cost, size per image, pays off after |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        limit, naive = r["ours"] / r["floor"], r["naive"] / r["ours"]
        naive_target = f" ({verdict(naive, 1.4, at_least=True)})" if ("SD1.5" in r["label"] or "SDXL" in r["label"]) else ""
        lines.append(f"| {r['label']} | {r['size']} | {limit:.2f} ({verdict(limit, 1.10)}) | {naive:.2f}{naive_target} "
                     f"| {r['naive'] / r['ours_default']:.2f} (ours in {r['default_precision'].replace('no', 'fp32')}) "
                     f"| {r['naive_bf16'] / r['ours_default']:.2f} "
                     f"| {r['cache_seconds']:.1f} s, "
                     f"{r['cache_bytes'] / 1024:.1f} KiB, {r['breakeven']:.0f} steps |")
    lines += ["", f"| base | peak memory, ours / naive (target <= {memory_target:.2f}) |", "| --- | --- |"]
    lines += [f"| {m['label']} | {m['ours'] / m['naive']:.2f} ({verdict(m['ours'] / m['naive'], memory_target)}) "
              f"({m['ours'] / 2**30:.2f} GiB vs {m['naive'] / 2**30:.2f} GiB) |" for m in memory]
    return lines


def scaling_table(scaling: list[dict], options: dict[str, dict[str, float]]) -> list[str]:
    lines = ["", "## Scaling", "", "| base | step time at batch 1 / 2 / 4 (rank 4) | at rank 4 / 16 / 64 |",
             "| --- | --- | --- |"]
    for s in scaling:
        lines.append(f"| {s['label']} | {' / '.join(f'{v:.2f}' for v in s['batch'].values())} "
                     f"| {' / '.join(f'{v:.2f}' for v in s['rank'].values())} |")
    lines += ["", "## CPU options (LoRA step time / plain float32; below 1 helps)", "",
              "| option | " + " | ".join(options) + " |", "| --- |" + " --- |" * len(options)]
    names = sorted({name for per_base in options.values() for name in per_base})
    for name in names:
        lines.append(f"| {name} | " + " | ".join(f"{options[b].get(name, float('nan')):.2f}" for b in options) + " |")
    return lines


def generation_table(results: list[GenerationResult]) -> list[str]:
    lines = ["", "## Generation with stacked adapters (one denoising step, CFG batch 2)", "",
             "| base | unfused 1 / 3 / 5 adapters | fused 1 / 3 / 5 (target <= 1.02) | reweight 5 (target < 1 s) "
             "| load one | 20 loaded, 2 active / 2 loaded: fused, as `generate` runs (target: no slower, <= 1.02) | same, unfused |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for g in results:
        worst_fused = max(g.fused.values())
        lines.append(
            f"| {g.label} | {' / '.join(f'{v:.2f}' for v in g.unfused.values())} "
            f"| {' / '.join(f'{v:.2f}' for v in g.fused.values())} ({verdict(worst_fused, 1.02)}) "
            f"| {g.reweight_seconds * 1000:.0f} ms ({verdict(g.reweight_seconds, 1.0)}) | {g.load_seconds * 1000:.0f} ms "
            f"| {g.twenty_vs_two_fused:.2f} ({verdict(g.twenty_vs_two_fused, NOISE)}) | {g.twenty_vs_two_unfused:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no torch.compile (under 10 minutes)")
    for name, large in LARGE.items():
        parser.add_argument(f"--{name}", type=int, metavar="PX", help=f"only the {large.what} rows, at PX pixels "
                            f"(docs/results/{name}.md; {large.minutes})")
    args = parser.parse_args()
    support = bf16_support()  # before any kernel runs, so a needed oneDNN cap takes hold
    for name, large in LARGE.items():
        if getattr(args, name):
            return large_rows(name, getattr(args, name), support)
    torch.manual_seed(0)
    # Every timed loop of this process runs with stylelora's malloc settings (model/allocator.py), the floor and the
    # naive loop too: the floor is then the least a step can cost, and naive / ours compares the loops alone.
    allocator = keep_freed_memory()
    mini, sd = MINI, sd15()
    bases = [mini, sd]
    # Repeats per base: the SD1.5-shaped step takes seconds, the mini's a tenth of one.
    if args.quick:
        repeats, scaling_repeats, pairs, steps = {mini: 5, sd: 2}, {mini: 5, sd: 1}, {mini: 6, sd: 2}, 7
    else:
        repeats, scaling_repeats, pairs, steps = {mini: 9, sd: 5}, {mini: 9, sd: 5}, {mini: 10, sd: 6}, 16
    memory = [memory_row(b, steps) for b in bases]
    rows = [training_rows(b, repeats[b] + 1, steps, cache_sample=10 if args.quick else 30) for b in bases]
    scaling = [scaling_rows(b, scaling_repeats[b]) for b in bases]
    options = {b.label: option_rows(b, repeats[b], with_compile=not args.quick) for b in bases}
    generation = [measure_generation(b, pairs[b], runs=3 if b is mini else 1) for b in bases]
    header = ["# Benchmarks", "",
              f"Measured by `python bench/run.py{' --quick' if args.quick else ''}` on {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}; {support.reason} (probe: a 320-channel "
              "convolution and an attention projection). Ratios of times taken side by side in one run"
              + ("; every timed loop, the floor and the naive one too, with stylelora's malloc settings (allocator.py), "
                 "and the memory rows each in a process of its own, ours with them and the naive loop without."
                 if allocator else "."), ""]
    lines = header + training_table(rows, memory) + scaling_table(scaling, options) + generation_table(generation)
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS / "benchmarks.md", ("\n".join(lines) + "\n").encode())
    raw = {"training": rows, "memory": memory, "scaling": scaling, "options": options,
           "generation": [vars(g) for g in generation]}
    write_atomically(RESULTS / "benchmarks.json", (json.dumps(raw, indent=1, default=str) + "\n").encode())
    plot_training(rows, RESULTS / "training.png")
    plot_scaling(scaling, RESULTS / "scaling.png")
    plot_generation(generation, RESULTS / "generation.png")
    print("\n".join(lines))


class Large(NamedTuple):
    """A base too large for the main run, benchmarked alone: how to build it at a size, what it is, how long its
    run takes here, and its peak-memory target against the naive loop."""

    build: Callable[[int], Base]
    what: str
    minutes: str
    memory_target: float
    about: str


LARGE = {
    "sdxl": Large(sdxl, "SDXL-shaped", "about 40 minutes at 512", 1.00,
                  "SDXL base 1.0's UNet, VAE and both text encoders at their real sizes, random weights."),
    "flux": Large(lambda px: flux(resolution=px), "Flux.1-shaped", "about 12 minutes at 512", 0.70,
                  "Flux.1-dev's transformer widths with 2 of its 19 double and 4 of its 38 single blocks (1.3 billion "
                  "parameters), its VAE and CLIP-L at their real sizes, T5 at T5-XXL's width with 2 of its 24 "
                  "layers and 128 tokens; random weights."),
    "sd35": Large(lambda px: sd35(resolution=px), "SD3.5-Large-shaped", "about 12 minutes at 512", 0.70,
                  "SD3.5 Large's transformer widths with 6 of its 38 blocks (1.3 billion parameters), its VAE, CLIP-L "
                  "and CLIP-G at their real sizes, T5 at T5-XXL's width with 2 of its 24 layers and 128 tokens; "
                  "random weights."),
}


def large_rows(name: str, resolution: int, support) -> None:
    """One large base's training and memory rows (docs/results/NAME.md, and its guide between the NAME-bench
    markers), against the step / floor target of the main rows and the base's own memory target."""
    large = LARGE[name]
    base = large.build(resolution)
    memory = [memory_row(base, 4)]
    rows = [training_rows(base, 3, 4, cache_sample=3)]
    lines = [f"Measured by `python bench/run.py --{name} {resolution}` on {platform.processor() or platform.machine()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}; {support.reason}. {large.about}", ""
             ] + training_table(rows, memory, large.memory_target)[2:]  # under the guide's own heading
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS / f"{name}.md", ("\n".join(lines) + "\n").encode())
    write_atomically(RESULTS / f"{name}.json", (json.dumps({"training": rows, "memory": memory}, indent=1,
                                                           default=str) + "\n").encode())
    write_section(f"{name}-bench", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
