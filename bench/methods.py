"""The methods scoreboard: every adapter method trained on the same style folders, steps and seeds, judged alike.

    python bench/methods.py            # 8 images per prompt (96 per setting)
    python bench/methods.py --quick    # 3 images per prompt

Each method trains on the stripes, dots and pastel folders of the miniature base with the default
settings of the mini's earlier recipe (800 steps at 2e-3, rank 4); LoRA also at ranks 2, 8 and 16 on stripes,
LoHa at rank 2 (about rank-4 LoRA's parameter count), and one rank-8 DyLoRA run on stripes judged
at ranks 1, 2, 4 and 8 (`stylelora resize` truncates it).
Writes docs/results/methods.md, methods.json and methods.png, and the table into its docs page between
its scoreboard markers. `--from-results` re-renders all of that from methods.json without training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.adapters.formats import read_lora  # noqa: E402
from stylelora.methods import METHODS  # noqa: E402
from stylelora.mini.evaluate import measure  # noqa: E402
from stylelora.adapters.resize import ResizeConfig, resize  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.train.loop import train  # noqa: E402

from report_section import write_section  # noqa: E402  (bench/ is on the path when run as a script)
from timesteps import EARLIER_MINI  # noqa: E402

RESULTS = ROOT / "docs" / "results"
STYLES = {"stripes": "striped", "dots": "dotted", "pastel": "pastel"}
EXTRA_LORA_RANKS = (2, 8, 16)


def truncated(run: dict, rank: int) -> dict:
    """A rank-`rank` copy of a DyLoRA run's adapter, by its own truncation."""
    path = Path(run["path"])
    result = resize(ResizeConfig(path, path.with_name(f"{path.stem}-r{rank}.safetensors"), rank=rank))
    weights, _, _ = read_lora(result.path)
    return run | {"path": str(result.path), "parameters": sum(m.parameter_count for m in weights.values()),
                  "file_bytes": result.path.stat().st_size}


def train_one(work: Path, style: str, method: str, rank: int = 4) -> dict:
    out = work / f"{method}-r{rank}" / style
    result = train(TrainConfig(data=ROOT / "datasets" / style, out=out, method=method, rank=rank, seed=0,
                               **EARLIER_MINI),
                   progress_bar=False, log=lambda m: None)
    weights, _, _ = read_lora(result.adapter_path)
    return {"path": str(result.adapter_path), "parameters": sum(m.parameter_count for m in weights.values()),
            "file_bytes": result.adapter_path.stat().st_size}


def judge(styler: Styler, weights: dict, per_prompt: int) -> dict:
    styler.set_weights(weights)
    rates = measure(styler, per_prompt=per_prompt)
    return {key: rates.share(key) for key in ("colour", "shape", *STYLES.values())}


def score(label: str, runs: dict[str, dict], styler: Styler, per_prompt: int) -> dict:
    names = {style: styler.load(Path(run["path"]), f"{label}_{style}".replace("-", "_")) for style, run in runs.items()}
    row = {"label": label, "styles": {}}
    for style, name in names.items():
        row["styles"][style] = judge(styler, {name: 1.0}, per_prompt)
    if {"stripes", "pastel"} <= set(names):
        row["blend"] = judge(styler, {names["stripes"]: 0.5, names["pastel"]: 0.5}, per_prompt)
    first = next(iter(runs.values()))
    row |= {"parameters": first["parameters"], "file_bytes": first["file_bytes"]}
    for name in names.values():
        styler.unload(name)
    return row


def speed_of(label: str, speeds: dict[str, float]) -> float:
    return speeds["dylora rank 8"] if label.startswith("dylora rank") and "of one" in label else speeds[label]


def table(rows: list[dict], base: dict, speeds: dict[str, float]) -> str:
    lines = ["| method | style at weight 1 (stripes / dots / pastel) | colour kept | shape kept | "
             "stripes 0.5 + pastel 0.5: striped / pastel | parameters | file | step time vs LoRA |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |",
             f"| base, no adapter | {base['striped']:.0%} / {base['dotted']:.0%} / {base['pastel']:.0%} | "
             f"{base['colour']:.0%} | {base['shape']:.0%} | | | | |"]
    for row in rows:
        styles = row["styles"]
        own = " / ".join(f"{styles[s][STYLES[s]]:.0%}" if s in styles else "-" for s in STYLES)
        colour = sum(v["colour"] for v in styles.values()) / len(styles)
        shape = sum(v["shape"] for v in styles.values()) / len(styles)
        blend = f"{row['blend']['striped']:.0%} / {row['blend']['pastel']:.0%}" if "blend" in row else "-"
        lines.append(f"| {row['label']} | {own} | {colour:.0%} | {shape:.0%} | {blend} | {row['parameters']:,} | "
                     f"{row['file_bytes'] / 1024:.0f} KiB | {speeds['lora'] / speed_of(row['label'], speeds):.2f} |")
    return "\n".join(lines) + "\n"


def short_label(label: str) -> str:
    return (label.replace(" of one rank-8 run", "").replace("dylora rank ", "dylora r8->r")
            .replace(" rank ", " r"))


def plot(rows: list[dict], base: dict, path: Path) -> None:
    from plots import _pyplot, _save  # bench/plots.py

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(11, 4))
    for offset, style in enumerate(STYLES):
        values = [r["styles"].get(style, {}).get(STYLES[style], 0) for r in rows]
        axis.bar([i + (offset - 1) * 0.27 for i in range(len(rows))], values, width=0.27, label=f"{style}: {STYLES[style]}")
    axis.axhline(sum(base[v] for v in STYLES.values()) / 3, color="grey", linestyle="--", label="base, no adapter (mean)")
    axis.set_xticks(range(len(rows)), [f"{short_label(r['label'])}\n{r['parameters'] / 1000:.0f}k" for r in rows],
                    fontsize=7, rotation=30)
    axis.set_ylim(0, 1.2)
    axis.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axis.set_title("share of images judged in the trained style at weight 1 (higher is better); k = parameters")
    axis.legend(fontsize=7, loc="upper center", ncol=4)
    _save(plt, figure, path)




SPEED_STEPS = 100


def measure_speed(rounds: int = 2) -> dict[str, float]:
    """Steps per second of each setting on stripes, timed apart from the quality runs (which a busy machine
    slows unevenly): SPEED_STEPS steps each, the settings in turn, `rounds` times, averaged. The loop's own
    rate leaves out loading and caching."""
    settings = {method: (method, 4) for method in METHODS}
    settings |= {f"lora rank {rank}": ("lora", rank) for rank in EXTRA_LORA_RANKS}
    settings |= {"loha rank 2": ("loha", 2), "dylora rank 8": ("dylora", 8)}
    rates: dict[str, list[float]] = {label: [] for label in settings}
    work = RESULTS / "method-adapters" / "speed"
    for _ in range(rounds):
        for label, (method, rank) in settings.items():
            out = work / label.replace(" ", "-")
            train(TrainConfig(data=ROOT / "datasets" / "stripes", out=out, method=method, rank=rank,
                              max_steps=SPEED_STEPS), progress_bar=False, log=lambda m: None)
            rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            rates[label].append([row for row in rows if "loss" in row][-1]["steps_per_second"])
    return {label: sum(values) / len(values) for label, values in rates.items()}


def measure_all(per_prompt: int) -> dict:
    work = RESULTS / "method-adapters"
    styler = Styler("mini")
    base = judge(styler, {}, per_prompt)
    rows = []
    for method in METHODS:
        runs = {style: train_one(work, style, method) for style in STYLES}
        rows.append(score(method, runs, styler, per_prompt))
        print(f"{method}: {rows[-1]}", flush=True)
    extra = [(f"lora rank {rank}", lambda rank=rank: train_one(work, "stripes", "lora", rank)) for rank in EXTRA_LORA_RANKS]
    extra.append(("loha rank 2", lambda: train_one(work, "stripes", "loha", 2)))
    for label, run in extra:
        rows.append(score(label, {"stripes": run()}, styler, per_prompt))
        print(f"{label}: {rows[-1]}", flush=True)
    dylora = train_one(work, "stripes", "dylora", 8)
    for rank in (1, 2, 4, 8):
        rows.append(score(f"dylora rank {rank} of one rank-8 run", {"stripes": truncated(dylora, rank)}, styler, per_prompt))
        print(f"dylora rank {rank}: {rows[-1]}", flush=True)
    return {"base": base, "rows": rows, "per_prompt": per_prompt}


def report(results: dict) -> str:
    per_prompt = results["per_prompt"]  # images per prompt: 3 with --quick, else 8
    header = (f"Measured by `python bench/methods.py{' --quick' if per_prompt == 3 else ''}`: each method trained with "
              "the mini's earlier recipe (800 steps, rank 4, alpha 4, learning rate 2e-3, seed 0, attention modules) on each "
              f"sample folder; {per_prompt} images for each of the 12 colour x shape prompts per setting, 20 DPM++ "
              "steps, guidance 4, judged by `stylelora.mini.judge`. AdaLoRA prunes from rank 4 to an average of 2. "
              "The rows below the six methods train on stripes only. With 36 images per setting one image is "
              "3 points, so differences under about 10 points are within the noise. Step time: "
              f"{SPEED_STEPS} steps per setting on stripes, timed apart from the quality runs, two rounds, "
              "relative to rank-4 LoRA (the DyLoRA truncations share their rank-8 run's).\n\n")
    return header + table(results["rows"], results["base"], results["speeds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 images per prompt instead of 8")
    parser.add_argument("--from-results", action="store_true",
                        help="re-render the report, plot and docs section from docs/results/methods.json")
    parser.add_argument("--speed-only", action="store_true",
                        help="re-time the step speeds only, keeping the quality numbers in methods.json")
    args = parser.parse_args()
    if args.from_results or args.speed_only:
        results = json.loads((RESULTS / "methods.json").read_text())
    else:
        results = measure_all(3 if args.quick else 8)
    if not args.from_results:
        results["speeds"] = measure_speed()
        RESULTS.mkdir(parents=True, exist_ok=True)
        write_atomically(RESULTS / "methods.json", json.dumps(results, indent=2).encode())
    text = report(results)
    write_atomically(RESULTS / "methods.md", text.encode())
    plot(results["rows"], results["base"], RESULTS / "methods.png")
    write_section("methods-scoreboard", text)
    print(text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
