"""What --quantize-base saves and costs: peak memory, step time and bytes per parameter on the SD1.5-shaped,
SDXL-shaped and Flux.1-shaped bases (bench/models.py), and the style an adapter learns over an NF4 miniature base.

    python bench/quantize.py                   # the SD1.5-shaped rows and the miniature's: about 25 minutes on a
                                               # 2-core CPU (fp8's steps are slow there)
    python bench/quantize.py --bases sdxl,flux,sd35  # the large bases' rows (the first run builds them: minutes, ~8 GB)
    python bench/quantize.py --quick           # fewer steps and images

Each row of a shaped base is a fresh process that trains on the stripes folder at 256 px, batch 1, rank 4, at the
default precision; its peak is the whole process's (VmHWM). The rows of the bases not run are kept from the last
run. Writes docs/results/quantize.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = BENCH.parent / "docs" / "results"
BEFORE = "loaded by diffusers (before the streamed loader)"
# A row: (label, --quantize-base, load through diffusers' own from_pretrained instead of the streamed loader).
# fp8 is left out of the large bases: its steps on a CPU are 10x the float run's (the SD1.5 rows).
QUANTIZED = (("none", "none", False), ("nf4", "nf4", False), ("int8", "int8", False))


@dataclass(frozen=True)
class ShapedBase:
    label: str
    build: str  # the bench/models.py function that builds it (once, cached on disk) and returns its Base
    rows: tuple[tuple[str, str, bool], ...]
    build_args: tuple = ()


SHAPED = {
    "sd15": ShapedBase("SD1.5-shaped UNet", "sd15",
                       ((f"none, {BEFORE}", "none", True), *QUANTIZED, ("fp8", "fp8", False))),
    "sdxl": ShapedBase("SDXL-shaped UNet (2.6 billion parameters)", "sdxl", QUANTIZED, build_args=(256,)),
    "flux": ShapedBase("Flux.1-shaped transformer: Flux.1-dev's widths with 2 of its 19 double and 4 of its 38 single "
                       "blocks (1.3 billion parameters), T5 cut to 2 layers and 128 tokens", "flux",
                       ((f"nf4, {BEFORE}", "nf4", True), *QUANTIZED)),
    "sd35": ShapedBase("SD3.5-Large-shaped transformer: its widths with 6 of its 38 blocks (1.3 billion parameters), "
                       "CLIP-L and CLIP-G at their sizes, T5 cut to 2 layers and 128 tokens", "sd35",
                       ((f"nf4, {BEFORE}", "nf4", True), *QUANTIZED)),
}


def shaped_base(name: str):
    import models

    return getattr(models, SHAPED[name].build)(*SHAPED[name].build_args)


def _child(base_name: str, mode: str, diffusers_load: bool, steps: int, queue) -> None:
    """Train `steps` steps in this fresh process; report its peak memory, median step time and denoiser bytes."""
    try:
        import stylelora.model.base as base_module
        from training_bench import STRIPES, _high_water_mark
        from stylelora.train.config import TrainConfig
        from stylelora.model.quantize import quantized_share
        from stylelora.train.loop import train

        if diffusers_load:
            base_module.stream_denoiser = lambda *args, **kwargs: None
        base, stamps, held = shaped_base(base_name), [], {}
        real_load = base_module.load_denoiser

        def load_and_measure(*args, **kwargs):
            denoiser = real_load(*args, **kwargs)
            held["unet"] = quantized_share(denoiser, "denoiser")
            return denoiser

        import stylelora.train.frozen_base as training_module

        training_module.load_denoiser = load_and_measure
        with tempfile.TemporaryDirectory() as out:
            train(TrainConfig(data=STRIPES, out=Path(out), base=base.spec, batch_size=1, resolution=256, max_steps=steps,
                              quantize_base=mode), progress_bar=False, log=lambda m: None,
                  on_progress=lambda p: stamps.append(time.perf_counter()))
        share = held["unet"]
        queue.put({"peak": _high_water_mark(), "step": statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:])),
                   "unet_bytes": share.bytes, "unet_parameters": share.parameters, "quantized_share": share.share})
    except BaseException as error:  # the parent waits for an answer
        queue.put({"error": f"{type(error).__name__}: {error}"})
        raise


def shaped_row(base_name: str, mode: str, diffusers_load: bool, steps: int) -> dict:
    from training_bench import in_fresh_process

    return in_fresh_process(_child, base_name, mode, diffusers_load, steps)


def mini_rows(per_prompt: int, steps: int | None) -> dict:
    """A default stripes run over the float and the NF4 miniature base, judged painted over the same base, and the
    NF4 base's own rates with no adapter."""
    from stylelora.train.config import TrainConfig
    from stylelora.mini.evaluate import measure
    from stylelora.paint.styler import Styler
    from stylelora.train.loop import train

    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for mode in ("none", "nf4"):
            result = train(TrainConfig(data=BENCH.parent / "datasets" / "stripes", out=Path(work) / mode, max_steps=steps,
                                       quantize_base=mode), progress_bar=False, log=lambda m: None)
            styler = Styler("mini", quantize=mode)
            bare = measure(styler, per_prompt=per_prompt)
            styler.set_weights({styler.load(result.adapter_path): 1.0})
            styled = measure(styler, per_prompt=per_prompt)
            rows[mode] = {"steps": result.steps, "base_colour": bare.share("colour"), "base_shape": bare.share("shape"),
                          "striped": styled.share("striped"), "colour": styled.share("colour"),
                          "images": styled.images}
    return rows


def report(shaped: dict[str, list], notes: dict[str, str], mini: dict | None) -> list[str]:
    lines = ["Measured by `python bench/quantize.py --bases NAME`, each base in a run of its own (said under its "
             "heading). Each base at 256 px, batch 1, rank 4, default precision; ratios against its `none` row; peak "
             "memory is the whole process's."]
    for name, rows in shaped.items():
        lines += ["", f"**{SHAPED[name].label}**: {notes.get(name, 'an earlier run')}", ""] + shaped_table(rows)
    if mini:
        lines += ["", f"Miniature base, a stripes run with default settings ({mini['none']['steps']} steps) over each "
                  f"base, painted over the same base and judged by `stylelora.mini.judge` ({mini['none']['images']} "
                  "images a setting):", "",
                  "| base | striped (style rate) | colour kept | base alone: colour right | base alone: shape right |",
                  "| --- | --- | --- | --- | --- |"]
        for mode, row in mini.items():
            lines.append(f"| {mode} | {row['striped']:.0%} | {row['colour']:.0%} | {row['base_colour']:.0%} | {row['base_shape']:.0%} |")
    return lines


def shaped_table(rows: list) -> list[str]:
    reference = dict(rows)["none"]
    lines = ["| --quantize-base | peak memory | vs none | step time | vs none | denoiser weights | bits a parameter | denoiser parameters quantized |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, row in rows:
        if "error" in row:
            lines.append(f"| {label} | failed: {row['error'][:120]} | | | | | | |")
            continue
        lines.append(f"| {label} | {row['peak'] / 2**30:.2f} GiB | {row['peak'] / reference['peak']:.2f} "
                     f"| {row['step']:.2f} s | {row['step'] / reference['step']:.2f} | {row['unet_bytes'] / 2**30:.2f} GiB "
                     f"| {8 * row['unet_bytes'] / row['unet_parameters']:.1f} | {row['quantized_share']:.0%} |")
    return lines


def stored_results() -> dict:
    """The last run's rows: {"shaped": {base: rows}, "mini": rows}."""
    try:
        stored = json.loads((RESULTS / "quantize.json").read_text())
    except (OSError, ValueError):
        return {"shaped": {}, "notes": {}, "mini": None}
    return {"shaped": stored.get("shaped", {"sd15": stored["sd15"]} if "sd15" in stored else {}),
            "notes": stored.get("notes", {}), "mini": stored.get("mini")}


def run_note(quick: bool) -> str:
    """Where and when a base's rows were measured."""
    import torch

    from stylelora.model.precision import bf16_support

    device = "CUDA" if torch.cuda.is_available() else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    return (f"measured {time.strftime('%Y-%m-%d')}{' with --quick' if quick else ''} on {device}, torch "
            f"{torch.__version__}; {bf16_support().reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--bases", default="sd15,mini", help=f"which rows to measure: any of {', '.join(SHAPED)}, mini")
    args = parser.parse_args()
    chosen = args.bases.split(",")
    unknown = set(chosen) - set(SHAPED) - {"mini"}
    if unknown:
        parser.error(f"--bases: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SHAPED)}, mini")
    results = stored_results()
    for name in (name for name in SHAPED if name in chosen):
        shaped_base(name)  # built once, here, so that no row's peak holds the building
        rows = []
        for label, mode, diffusers_load in SHAPED[name].rows:
            steps = 4 if mode == "fp8" else (6 if args.quick else 10)
            rows.append((label, shaped_row(name, mode, diffusers_load, steps)))
            print(name, label, rows[-1][1], flush=True)
        results["shaped"][name], results["notes"][name] = rows, run_note(args.quick)
    if "mini" in chosen:
        results["mini"] = mini_rows(per_prompt=3 if args.quick else 8, steps=300 if args.quick else None)
    lines = report(results["shaped"], results["notes"], results["mini"])
    from report_section import write_section
    from stylelora.files import write_atomically

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS / "quantize.md", ("\n".join(lines) + "\n").encode())
    write_section("quantize-report", "\n".join(lines) + "\n")
    write_atomically(RESULTS / "quantize.json", (json.dumps(results, indent=1) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
