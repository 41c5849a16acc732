"""Each shipped preset's peak memory at batch 1, on its shaped bench model (bench/models.py):

    python bench/presets.py                          # every preset this machine can hold
    python bench/presets.py --only mini-fast,sd15-style

Each row is a fresh process that trains 2 steps with the preset's settings (its resolution, rank, targets,
precision, quantization and checkpointing) and batch 1, on two stripes images: mini-fast on the built-in mini,
sd15-style on the SD1.5-shaped base, the SDXL presets on the SDXL-shaped base, sd35-style and flux-style on the
SD3.5- and Flux.1-shaped bases, whose transformers hold a few of their blocks (SD3.5 Large's 8 billion and Flux.1's
12 billion random parameters do not fit this machine's 24 GiB in float32 while they are made): their rows count
those blocks only. The peak is the whole process's (VmHWM): weights, caches, activations, gradients and optimizer
state. A process that grows past --limit GiB is stopped and its row says so.
Writes docs/results/presets.md and the table into the option reference between the presets-memory markers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODELS = {"mini-fast": "mini", "sd15-style": "sd15", "sdxl-style-lowmem": "sdxl", "sdxl-style": "sdxl",
          "sd35-style": "sd35", "flux-style": "flux"}


def _child(preset: str, model: str, queue) -> None:
    """Train 2 steps of `preset` on its shaped model in this fresh process; report the peak and the settings."""
    try:
        from models import flux, sd15, sd35, sdxl
        from training_bench import STRIPES, _high_water_mark
        from stylelora.train.loop import train
        from stylelora.train.settings import from_dict

        spec = {"mini": lambda: "mini", "sd15": lambda: sd15().spec, "sdxl": lambda: sdxl(1024).spec,
                "sd35": lambda: sd35().spec, "flux": lambda: flux().spec}[model]()
        with tempfile.TemporaryDirectory() as work:
            images = Path(work) / "images"
            images.mkdir()
            for name in ("000.png", "000.txt", "001.png", "001.txt"):
                shutil.copy(STRIPES / name, images / name)
            config = from_dict({"preset": preset, "data": str(images), "out": str(Path(work) / "out"), "base": spec,
                                "batch_size": 1, "max_steps": 2, "log_with": "none"})
            said: list[str] = []
            train(config, progress_bar=False, log=said.append)
        queue.put({"peak": _high_water_mark(), "precision": next((s for s in said if s.startswith("Precision")), ""),
                   "resolution": config.resolution, "quantize": config.quantize_base,
                   "checkpointing": config.gradient_checkpointing})
    except BaseException as error:  # the parent waits for an answer
        queue.put({"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"})
        raise


def measured(preset: str, model: str, limit_gib: float) -> dict:
    """The child's answer, or a row saying it was stopped at the limit."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(preset, model, queue))
    process.start()
    stopped = threading.Event()

    def watch() -> None:
        while process.is_alive():
            try:
                rss = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                           if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                return
            if rss > limit_gib * 2**30:
                stopped.set()
                process.kill()
                queue.put({"error": f"more than {limit_gib:g} GiB: stopped there (--limit; this machine has "
                                    f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB)"})
                return
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    answer = queue.get()
    process.join()
    return answer


def report(rows: dict[str, dict], limit_gib: float) -> str:
    import torch

    from stylelora.train.settings import preset_values

    lines = [f"Measured by `python bench/presets.py` on CPU ({platform.machine()}, {torch.get_num_threads()} threads), "
             f"torch {torch.__version__}: two training steps at batch 1 with the preset's settings, in a fresh "
             "process; the peak is the whole process's resident memory (VmHWM), on the shaped bench model named.", "",
             "| preset | bench model | resolution | base held in | gradient checkpointing | precision | peak memory |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    models = {"mini": "the built-in mini", "sd15": "SD1.5-shaped", "sdxl": "SDXL-shaped",
              "sd35": "SD3.5-Large-shaped, 6 of its 38 blocks", "flux": "Flux.1-shaped, 2 of 19 double and 4 of 38 "
              "single blocks"}
    for preset, row in rows.items():
        if "error" in row and row["error"].startswith("more than"):  # stopped at --limit: a lower bound
            settings = preset_values(preset)
            lines.append(f"| `{preset}` | {models[MODELS[preset]]} | {settings.get('resolution', 'native')} px | "
                         f"{settings.get('quantize-base', 'its own dtype')} | "
                         f"{'on' if settings.get('gradient-checkpointing') else 'off'} | | {row['error']} |")
        elif "error" in row:
            lines.append(f"| `{preset}` | {models[MODELS[preset]]} | | | | | not measured: {row['error'][:140]} |")
        else:
            precision = row["precision"].split("(")[0].removeprefix("Precision:").strip()
            lines.append(f"| `{preset}` | {models[MODELS[preset]]} | {row['resolution'] or 'native'} px | "
                         f"{row['quantize'] if row['quantize'] != 'none' else 'its own dtype'} | "
                         f"{'on' if row['checkpointing'] else 'off'} | {precision} | {row['peak'] / 2**30:.2f} GiB |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated presets")
    parser.add_argument("--limit", type=float, default=20.0, help="stop a run that grows past this many GiB (20)")
    parser.add_argument("--report", action="store_true", help="only write the table again, from presets.json")
    args = parser.parse_args()
    from report_section import write_section
    from stylelora.files import write_atomically
    from stylelora.train.settings import presets

    wanted = [] if args.report else args.only.split(",") if args.only else list(presets())
    results = BENCH.parent / "docs" / "results"
    earlier = json.loads((results / "presets.json").read_text()) if (results / "presets.json").is_file() else {}
    rows = {}
    for preset in presets():
        if preset not in wanted:
            rows[preset] = earlier.get(preset, {"error": "not run yet"})
            continue
        rows[preset] = measured(preset, MODELS[preset], args.limit)
        print(preset, rows[preset], flush=True)
        write_atomically(results / "presets.json", json.dumps(rows | {k: v for k, v in earlier.items() if k not in rows},
                                                              indent=1).encode())
    text = report(rows, args.limit)
    write_atomically(results / "presets.md", text.encode())
    write_section("presets-memory", text)
    print(text)


if __name__ == "__main__":
    main()
