"""When to stop, measured on the miniature base: overfitting, early stopping, EMA and base-output preservation.

    python bench/stopping.py            # 6 images per prompt (72 per setting)
    python bench/stopping.py --quick    # 2 images per prompt, shorter runs

Part 1, overfitting: six striped circles trained far too long, validated on the other 30 striped images.
It compares the last step's adapter with the early-stopped (best) one on the style rate, colour and
shape kept, and prompts outside the folder (squares and triangles). Preservation on those outside
prompts and an EMA run are measured the same way.

Part 2, blending: stripes and pastel trained with trigger words, with and without preservation on the
trigger-less captions (ai-toolkit's recipe). It measures how far each style leaks into prompts without
its trigger, and what stripes 0.5 + pastel 0.5 paints.

Writes docs/results/stopping.md, the same text into its docs page between its stopping-report markers, and
docs/results/overfit_curve.png. --quick writes docs/results/stopping-quick.md only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.mini.evaluate import Rates, measure  # noqa: E402
from stylelora.mini.world import COLOURS, SHAPES  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.train.loop import TrainResult, train  # noqa: E402

from report_section import write_section  # noqa: E402  (bench/ is on the path when run as a script)
from timesteps import EARLIER_MINI  # noqa: E402

RESULTS = ROOT / "docs" / "results"
STRIPES, PASTEL = ROOT / "datasets" / "stripes", ROOT / "datasets" / "pastel"
INSIDE = [f"a {colour} circle" for colour in COLOURS]
OUTSIDE = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES if shape != "circle"]


def split_stripes(work: Path) -> tuple[Path, Path]:
    """Six striped circles to train on; every other striped image to validate on."""
    small, held = work / "six-circles", work / "held-out"
    small.mkdir(parents=True, exist_ok=True)
    held.mkdir(parents=True, exist_ok=True)
    circles = [p for p in sorted(STRIPES.glob("*.png")) if "circle" in p.with_suffix(".txt").read_text()][:6]
    for image in sorted(STRIPES.glob("*.png")):
        target = small if image in circles else held
        shutil.copy(image, target / image.name)
        shutil.copy(image.with_suffix(".txt"), target / image.with_suffix(".txt").name)
    return small, held


def run(label: str, **settings) -> TrainResult:
    start = time.time()
    result = train(TrainConfig(**(EARLIER_MINI | settings)), progress_bar=False, log=lambda m: None)
    print(f"{label}: {result.steps} steps in {time.time() - start:.0f}s, kept step {result.kept_step}, "
          f"validation loss {result.validation_loss}", flush=True)
    return result


def rates(styler: Styler, prompts: list[str], per_prompt: int) -> Rates:
    """Judge `per_prompt` images of each prompt (the prompt's last two words name its colour and shape)."""
    return measure(styler, per_prompt=per_prompt, among=[(prompt, *prompt.split()[-2:]) for prompt in prompts])


def validation_curve(result: TrainResult) -> list[tuple[int, float, float]]:
    """(step, mean training loss over the interval, validation loss) from the run's metrics.jsonl; the
    first row is the base's own validation loss at step 0 (no training loss: nan)."""
    rows = [json.loads(line) for line in (result.adapter_path.parent / "metrics.jsonl").read_text().splitlines()]
    curve, window = [], []
    for row in rows:
        if "loss" in row:
            window.append(row["loss"])
        if "validation_loss" in row:
            curve.append((row["step"], sum(window) / len(window) if window else float("nan"), row["validation_loss"]))
            window = []
    return curve


def plot_curve(curve: list[tuple[int, float, float]], best: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2))
    steps = [c[0] for c in curve]
    axis.plot(steps, [c[1] for c in curve], label="training loss (mean since last validation)", color="#4c72b0")
    axis.plot(steps, [c[2] for c in curve], label="validation loss (30 held-out images)", color="#dd8452")
    axis.axvline(best, color="grey", linestyle="--", label=f"best validation, step {best}")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend(fontsize=7)
    figure.tight_layout()
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_atomically(path, buffer.getvalue())


def overfitting(work: Path, steps: int, per_prompt: int) -> list[str]:
    small, held = split_stripes(work)
    keep_out = work / "outside-prompts.txt"
    keep_out.write_text("\n".join(OUTSIDE) + "\n")
    common = dict(data=small, validation_data=held, max_steps=steps, validate_every=max(steps // 60, 1), seed=0,
              select_by="loss")  # as measured: this bench is the held-out loss's own
    runs = {
        "last step": run("long", out=work / "long", keep="last", **common),
        "early-stopped (best)": run("early", out=work / "early", early_stop=5, **common),
        "EMA 0.99, last step": run("ema", out=work / "ema", keep="last", ema_decay=0.99, **common),
        "preservation, last step": run("preserve", out=work / "preserve", keep="last", preserve_prompts=keep_out, **common),
    }
    curve = validation_curve(runs["last step"])
    best_step = min(curve[1:], key=lambda c: c[2])[0]
    plot_curve(curve, best_step, RESULTS / ("overfit_curve-quick.png" if per_prompt < 6 else "overfit_curve.png"))
    styler = Styler("mini")
    lines = [f"Six striped circles, {steps} steps (batch 4, about {steps * 4 // 6} epochs), validated every "
             f"{common['validate_every']} steps on the other 30 striped images. Inside: the 4 circle prompts; outside: "
             f"the 8 square and triangle prompts the folder never shows. {per_prompt} images per prompt.", "",
             "| adapter | kept step | validation loss | inside: striped | inside: colour right | outside: striped "
             "| outside: colour right | outside: shape right |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    styler.set_weights({})
    base_in, base_out = rates(styler, INSIDE, per_prompt), rates(styler, OUTSIDE, per_prompt)
    lines.append(_row("base, no adapter", "", "", base_in, base_out))
    for label, result in runs.items():
        name = styler.load(result.adapter_path, label.split()[0].strip(","))
        styler.set_weights({name: 1.0})
        lines.append(_row(label, result.kept_step, f"{result.validation_loss:.5f}", rates(styler, INSIDE, per_prompt),
                          rates(styler, OUTSIDE, per_prompt)))
        styler.unload(name)
    minimum = min(c[2] for c in curve[1:])
    lines += ["", f"Validation loss of the long run: {curve[0][2]:.5f} for the base alone (step 0), lowest {minimum:.5f} "
              f"at step {best_step}, {curve[-1][2]:.5f} at step {curve[-1][0]}; its training loss fell from "
              f"{curve[1][1]:.5f} (mean over the first interval) to {curve[-1][1]:.5f} (the last). The early-stopped "
              f"run stopped at step {runs['early-stopped (best)'].steps}. The curve is `docs/results/overfit_curve.png`."]
    return lines


def _row(label, step, loss, inside: Rates, outside: Rates) -> str:
    return (f"| {label} | {step} | {loss} | {inside.share('striped'):.0%} | {inside.share('colour'):.0%} | "
            f"{outside.share('striped'):.0%} | {outside.share('colour'):.0%} | {outside.share('shape'):.0%} |")


def blending(work: Path, steps: int, per_prompt: int) -> list[str]:
    plain = [f"a {colour} {shape}" for colour in COLOURS for shape in SHAPES]
    work.mkdir(parents=True, exist_ok=True)
    keep_plain = work / "plain-prompts.txt"
    keep_plain.write_text("\n".join(plain) + "\n")
    adapters = {}
    for preserve in (False, True):
        for name, folder, trigger in (("stripes", STRIPES, "zstripes"), ("pastel", PASTEL, "zpastel")):
            extra = dict(preserve_prompts=keep_plain) if preserve else {}
            result = run(f"{name} preserve={preserve}", data=folder, out=work / f"{name}-{preserve}", trigger=trigger,
                         max_steps=steps, **extra)
            adapters[(name, preserve)] = result.adapter_path
    styler = Styler("mini")
    lines = [f"stripes and pastel, each trained on its 36 images for {steps} steps with a trigger word (`zstripes`, "
             f"`zpastel`), without and with preservation on the 12 trigger-less captions. {per_prompt} images per "
             "prompt over the 12 colour x shape prompts.", "",
             "| preservation | stripes alone, no trigger: striped | stripes alone, with trigger: striped "
             "| pastel alone, no trigger: pastel | pastel alone, with trigger: pastel | blend 0.5 + 0.5, both "
             "triggers: striped | pastel | colour right |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for preserve in (False, True):
        stripes = styler.load(adapters[("stripes", preserve)], f"stripes{int(preserve)}")
        pastel = styler.load(adapters[("pastel", preserve)], f"pastel{int(preserve)}")
        styler.set_weights({stripes: 1.0})
        s_plain, s_trigger = rates(styler, plain, per_prompt), rates(styler, [f"zstripes, {p}" for p in plain], per_prompt)
        styler.set_weights({pastel: 1.0})
        p_plain, p_trigger = rates(styler, plain, per_prompt), rates(styler, [f"zpastel, {p}" for p in plain], per_prompt)
        styler.set_weights({stripes: 0.5, pastel: 0.5})
        blend = rates(styler, [f"zstripes, zpastel, {p}" for p in plain], per_prompt)
        lines.append(f"| {'on' if preserve else 'off'} | {s_plain.share('striped'):.0%} | {s_trigger.share('striped'):.0%} "
                     f"| {p_plain.share('pastel'):.0%} | {p_trigger.share('pastel'):.0%} | {blend.share('striped'):.0%} "
                     f"| {blend.share('pastel'):.0%} | {blend.share('colour'):.0%} |")
        styler.unload(stripes)
        styler.unload(pastel)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, help="keep the adapters here (default: a temporary folder)")
    args = parser.parse_args()
    per_prompt, long_steps, blend_steps = (2, 300, 200) if args.quick else (6, 1500, 800)
    work = args.work or Path(tempfile.mkdtemp(prefix="stylelora-stopping-"))
    started = time.time()
    lines = ["### Overfitting and early stopping", ""] + overfitting(work / "overfit", long_steps, per_prompt)
    lines += ["", "### Preservation and blending", ""] + blending(work / "blend", blend_steps, per_prompt)
    header = (f"Measured by `python bench/stopping.py{' --quick' if args.quick else ''}` in "
              f"{(time.time() - started) / 60:.0f} min: 20 DPM++ steps, guidance 4, judged by `stylelora.mini.judge`.\n\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = header + "\n".join(lines) + "\n"
    write_atomically(RESULTS / ("stopping-quick.md" if args.quick else "stopping.md"), report.encode())
    if not args.quick:
        write_section("stopping-report", report)
    print(report)


if __name__ == "__main__":
    main()
