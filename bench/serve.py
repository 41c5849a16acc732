"""`stylelora serve` measured: adapter switch latency with 100 resident adapters, throughput of 8 concurrent
requests (8 adapters, 1 adapter, and the naive load-fuse-paint-unload way), memory per resident adapter, and a
bounded load test of the real server on loopback. Writes docs/results/serve.md/json and its docs page's section.

    python bench/serve.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from stylelora.adapters.stack import StyleWeight
from stylelora.model.allocator import keep_freed_memory
from stylelora.paint.request import GenerateConfig
from stylelora.paint.styler import Styler
from stylelora.paint.engine import Engine, PaintJob
from stylelora.serve.loadtest import random_requests, run_load_test

from models import MINI, random_adapters, sd15

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
ROOT = Path(__file__).resolve().parent.parent


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def job(names: list[str], seed: int, steps: int, size: int) -> PaintJob:
    config = GenerateConfig(prompt="a red circle", seed=seed, count=1, steps=steps, size=size)
    return PaintJob(config, tuple((name, StyleWeight(1.0, 1.0)) for name in names))


def switch_latency(engine: Engine, names: list[str], trials: int) -> dict:
    """Time making a stack active: fusing one adapter (the path one-stack batches take), and binding 8 rows
    their own adapters (the path mixed batches take), each from a different state than the last."""
    pick = random.Random(0)
    adapters = {name: engine.pool.get(name).modules for name in names}
    for modules in adapters.values():
        engine.lora.attach(modules)  # as paint does before a batch
    first = job([], 0, 1, 64).config
    fused, bound = [], []
    for _ in range(trials + 1):
        stack = ((pick.choice(names), StyleWeight(1.0, 1.0)),)
        start = time.perf_counter()
        engine._make_active(stack, [stack], first, adapters)
        fused.append(time.perf_counter() - start)
        samples = [((name, StyleWeight(1.0, 1.0)),) for name in pick.sample(names, 8)]
        start = time.perf_counter()
        engine._make_active(None, samples, first, adapters)
        bound.append(time.perf_counter() - start)
    engine.lora.unbind()
    # The first switch of each kind allocates the buffers every later one reuses (on SD1.5, 4,000 and 12,600 page
    # faults, against none after): a server pays it once, so it is reported apart from the percentiles.
    (first_fuse, *fused), (first_bind, *bound) = fused, bound
    return {"fuse_p50_ms": 1000 * statistics.median(fused), "fuse_p99_ms": 1000 * percentile(fused, 0.99),
            "bind_p50_ms": 1000 * statistics.median(bound), "bind_p99_ms": 1000 * percentile(bound, 0.99),
            "fuse_first_ms": 1000 * first_fuse, "bind_first_ms": 1000 * first_bind}


def throughput(engine: Engine, names: list[str], steps: int, size: int, repeats: int) -> dict:
    """Images/s for 8 requests painted together: 8 distinct adapters, all on one adapter, and naive."""
    distinct = [job([names[i]], i, steps, size) for i in range(8)]
    same = [job([names[0]], i, steps, size) for i in range(8)]
    engine.paint(distinct[:1])  # warm up
    times = {"distinct": [], "one": []}
    for _ in range(repeats):  # interleaved pairs, so the machine's drift falls on both
        for label, jobs in (("distinct", distinct), ("one", same)):
            start = time.perf_counter()
            engine.paint(jobs)
            times[label].append(time.perf_counter() - start)
    pair_ratios = [one / distinct for distinct, one in zip(times["distinct"], times["one"])]
    styler = Styler(engine.base)
    paths = {name: engine.pool.entry(name).path for name in names[:8]}
    naive = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i, name in enumerate(names[:8]):  # the naive way: load, fuse, paint, unload per request
            loaded = styler.load(paths[name])
            styler.set_weights({loaded: 1.0})
            styler.generate("a red circle", count=1, steps=steps, seed=i, size=size)
            styler.unload(loaded)
        naive.append(time.perf_counter() - start)
    rate = {label: 8 / statistics.median(values) for label, values in times.items()} | {"naive": 8 / statistics.median(naive)}
    return rate | {"distinct_vs_one": statistics.median(pair_ratios), "distinct_vs_naive": rate["distinct"] / rate["naive"],
                   "pairs": len(pair_ratios)}


def base_rows(label: str, spec: str, size: int, steps: int, adapters: int, repeats: int, trials: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        engine = Engine(spec, Path(folder))
        names = [p.stem for p in random_adapters(engine.pipe.unet, adapters, Path(folder))]
        for name in names:
            engine.pool.get(name)
        files = sum((Path(folder) / f"{name}.safetensors").stat().st_size for name in names)
        row = {"base": label, "resident": len(engine.pool.resident), "bytes_per_adapter": engine.pool.resident_bytes / len(names),
               "file_bytes_per_adapter": files / len(names), **switch_latency(engine, names, trials),
               **throughput(engine, names, steps, size, repeats), "steps": steps, "size": size}
        engine.close()
    print(label, row, flush=True)
    return row


def load_test(requests: int, concurrency: int, adapters: int, steps: int) -> dict:
    """The real server (`stylelora serve` on the mini) on loopback, and `requests` requests against it."""
    sys.path.insert(0, str(ROOT / "tests"))
    from serve_helpers import start_serve, stop_serve

    with tempfile.TemporaryDirectory() as folder:
        engine = Engine("mini", Path(folder))
        names = [p.stem for p in random_adapters(engine.pipe.unet, adapters, Path(folder))]
        engine.close()
        process, url = start_serve("--adapters", folder)
        try:
            report = run_load_test(url, random_requests(names, requests, 3, steps, seed=0), concurrency)
        finally:
            stop_serve(process)
    print("load test", report, flush=True)
    return vars(report) | {"adapters": adapters, "steps": steps}


def report(rows: list[dict], load: dict, quick: bool, allocator: bool) -> list[str]:
    device = f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    malloc = ", with the server's malloc settings (model/allocator.py)" if allocator else ""
    lines = [f"Measured by `python bench/serve.py{' --quick' if quick else ''}` on {device}, torch {torch.__version__}, "
             f"float32{malloc}. "
             f"{rows[0]['resident']} random rank-4 adapters resident (attention projections). A switch is making a "
             "batch's adapters active: fusing one stack into the base, or binding 8 rows their own adapters (the per-row path); the first of each kind, "
             "which allocates what the rest reuse, is timed apart. '8 adapters vs 1' is the median of interleaved pairs "
             f"({rows[0]['pairs']} on the mini, {rows[-1]['pairs']} on SD1.5).", "",
             "| base | switch: fuse p50 / p99 | switch: bind 8 rows p50 / p99 | 8 requests, 8 adapters | 8 requests, 1 adapter | naive (load, fuse, paint, unload) | 8 adapters vs 1 | vs naive | RAM per resident adapter | its file |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['base']} ({r['size']} px, {r['steps']} steps) | {r['fuse_p50_ms']:.1f} / {r['fuse_p99_ms']:.1f} ms "
                     f"(first {r['fuse_first_ms']:.0f} ms) | {r['bind_p50_ms']:.1f} / {r['bind_p99_ms']:.1f} ms "
                     f"(first {r['bind_first_ms']:.0f} ms) | {r['distinct']:.2f} images/s | {r['one']:.2f} images/s "
                     f"| {r['naive']:.2f} images/s | {r['distinct_vs_one']:.2f}x | {r['distinct_vs_naive']:.2f}x "
                     f"| {r['bytes_per_adapter'] / 2**10:.0f} KiB | {r['file_bytes_per_adapter'] / 2**10:.0f} KiB |")
    lines += ["", f"Load test of `stylelora serve` on the miniature base over loopback: {load['requests']} requests, "
              f"{load['concurrency']} at a time, each a random stack of 0 to 3 of {load['adapters']} adapters, "
              f"{load['steps']} steps; then each asked for again alone:", "",
              "| errors | images/s | latency p50 | latency p99 | images checked | bitwise equal alone | largest pixel difference |",
              "| --- | --- | --- | --- | --- | --- | --- |",
              f"| {load['errors']} | {load['images_per_second']:.2f} | {load['p50_seconds']:.2f} s | {load['p99_seconds']:.2f} s "
              f"| {load['checked']} | {load['bitwise_equal']} ({load['bitwise_equal'] / max(load['checked'], 1):.0%}) "
              f"| {load['max_pixel_difference']} of 255 |"]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    allocator = keep_freed_memory()  # as `stylelora serve` runs (CoreShare applies it in every computing process)
    rows = [base_rows("miniature", MINI.spec, 64, 20, 100, 3 if args.quick else 9, 50 if args.quick else 200),
            base_rows("SD1.5-shaped UNet", sd15().spec, 256, 4 if args.quick else 8, 100, 1 if args.quick else 2,
                      20 if args.quick else 100)]
    load = load_test(60 if args.quick else 300, 16, 50, 4 if args.quick else 8)
    lines = report(rows, load, args.quick, allocator)
    from report_section import write_section
    from stylelora.files import write_atomically

    RESULTS.mkdir(parents=True, exist_ok=True)
    write_atomically(RESULTS / "serve.md", ("\n".join(lines) + "\n").encode())
    write_atomically(RESULTS / "serve.json", (json.dumps({"bases": rows, "load_test": load}, indent=1) + "\n").encode())
    write_section("serve-report", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
