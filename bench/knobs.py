"""The training knobs of the training-knobs issue, measured on the miniature base with the strict judge:

    python bench/knobs.py                     # 8 images per prompt (96 per judged point)
    python bench/knobs.py --quick             # 2 images per prompt
    python bench/knobs.py --parts masks,reg   # some parts only (masks, reg, curves, leak); the rest keep their numbers

- masks: a stripes folder whose backgrounds are all black, trained without and with shape-only loss masks
  (--masks), and with the masks and --mask-prior 0.5, 1 and 2. How often does each adapter paint a dark background
  for prompts that name none, against the base?
- reg: stripes and pastel trained with a trigger word, with nothing, with base-output preservation on the 12
  trigger-less captions, and with regularisation images (--reg-data: 4 class images per trigger-less caption,
  painted by the base with `stylelora reg-images`). Style and colour with the trigger; leak without it.
- curves: the optimizers and timestep samplings bench/optimizers.py and bench/timesteps.py did not measure,
  each on stripes, dots and pastel with the mini's earlier recipe (bench/timesteps.py), judged at steps 100, 200, 400 and 800.
- leak: every optimizer and timestep sampling, and the masks, on stripes trained with the trigger word (as reg's
  "none"): style and colour with the trigger, leak without it. The masked rows train on the black-background folder.

Every trained adapter is kept under docs/results/knob-adapters (a rerun judges it again rather than retraining),
and every judged number goes to docs/results/knobs.json as it comes, so an interrupted run continues. Writes
docs/results/knobs.md and the table into the optimizers guide between the knobs-report markers. The numbers are
judged pictures, not timings, but measure alone anyway: the run takes about 90 minutes on 2 cores, and the leak
part (12 adapters, each judged with and without its trigger) 65 minutes more beside other work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import stylelora.train.checkpoint as checkpoint  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.mini.evaluate import prompts  # noqa: E402
from stylelora.mini.world import BACKGROUNDS, COLOURS, SHAPES, random_scene, render, shape_mask  # noqa: E402
from stylelora.paint.reg_images import RegImagesConfig, write_reg_images  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402
from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.train.loop import train  # noqa: E402

from judged import Store, judged  # noqa: E402
from report_section import write_section  # noqa: E402
from timesteps import JUDGED_STEPS, RESULTS, STYLES, earlier_recipe, judge_run, judged_table, train_run  # noqa: E402

WORK = RESULTS / "knob-adapters"
STORE = RESULTS / "knobs.json"
CURVES = {"adamw-schedulefree": {"optimizer": "adamw-schedulefree"},
          "prodigy-schedulefree": {"optimizer": "prodigy-schedulefree"},
          "lion": {"optimizer": "lion"}, "adamw8bit": {"optimizer": "adamw8bit"},
          "logit-normal": {"timestep_sampling": "logit-normal"}, "content": {"timestep_sampling": "content"},
          "mode": {"timestep_sampling": "mode"}}
TRIGGERS = {"stripes": "zstripes", "pastel": "zpastel"}
# The leak part's stripes runs with the trigger: every optimizer and timestep sampling (AdamW, uniform is reg's
# "none" run) and the masked-loss settings, on the black-background folder for those
LEAK_RUNS = {"adamw, uniform": {}, **{name: {"optimizer": name} for name in
                                      ("adamw8bit", "prodigy", "adamw-schedulefree", "prodigy-schedulefree", "lion")},
             **{name: {"timestep_sampling": name} for name in ("logit-normal", "style", "content", "mode")},
             "black folder, unmasked": {"mask_prior": None}, "black folder, masked": {"mask_prior": 0.0},
             "black folder, masked, --mask-prior 1": {"mask_prior": 1.0}}
# The masked-loss adapters by name (a folder name too): each one's --mask-prior weight, None where it has no masks
MASK_RUNS = {"unmasked": None, "masked": 0.0, "prior-0.5": 0.5, "prior-1": 1.0, "prior-2": 2.0}
PLAIN = [prompt for prompt, _, _ in prompts()]


def mask_label(label: str) -> str:
    if label == "base":
        return "base, no adapter"
    return f"masked, --mask-prior {MASK_RUNS[label]:g}" if label.startswith("prior-") else label


def stored() -> dict:
    return Store(STORE).read()


def store(key: str, value) -> None:
    Store(STORE).put(key, value)


def with_adapter(styler: Styler, path: Path | None, among, per_prompt: int) -> dict[str, float]:
    if path is None:
        styler.set_weights({})
        return judged(styler, among, per_prompt)
    name = styler.load(path, path.parent.name + "-" + path.stem)
    styler.set_weights({name: 1.0})
    try:
        return judged(styler, among, per_prompt)
    finally:
        styler.unload(name)


def black_folder(folder: Path) -> tuple[Path, Path]:
    """36 striped images of every colour x shape, all on the world's black background, and beside them each
    image's shape as a mask (white on the shape, black elsewhere)."""
    images, masks = folder / "images", folder / "masks"
    if (masks / "035.png").is_file():
        return images, masks
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    for index in range(36):
        colour, shape = list(COLOURS)[index % 4], SHAPES[index // 4 % 3]
        scene = random_scene(rng, shape=shape, colour=colour, texture="striped", background=BACKGROUNDS.index((24, 24, 24)))
        Image.fromarray(render(scene)).save(images / f"{index:03d}.png")
        (images / f"{index:03d}.txt").write_text(f"a {colour} {shape}\n")
        Image.fromarray((shape_mask(scene) * 255).astype(np.uint8)).save(masks / f"{index:03d}.png")
    return images, masks


def trained(out: Path, **settings) -> Path:
    path = out / f"{out.name}.safetensors"
    if not path.is_file():
        train(TrainConfig(out=out, name=out.name, seed=0, **earlier_recipe(**settings)), progress_bar=False, log=lambda m: None)
    return path


def masks_part(styler: Styler, per_prompt: int) -> None:
    images, masks = black_folder(WORK / "black-stripes")
    among = prompts()
    for label in ("base", *MASK_RUNS):
        key = f"masks/{label}"
        if key in stored():
            continue
        prior = MASK_RUNS.get(label)
        settings = {} if prior is None else {"masks": masks, "mask_prior": prior}
        path = None if label == "base" else trained(WORK / "black-stripes" / label, data=images, **settings)
        store(key, with_adapter(styler, path, among, per_prompt))
        print(key, stored()[key], flush=True)


def reg_part(styler: Styler, per_prompt: int) -> None:
    plain_file = WORK / "plain-prompts.txt"
    write_atomically(plain_file, ("\n".join(PLAIN) + "\n").encode())
    reg = WORK / "class-images"
    styler.set_weights({})  # the base alone paints the class images
    write_reg_images(RegImagesConfig(prompts=tuple(PLAIN), out=reg, count=4, steps=20, cfg=4.0), styler)
    variants = {"none": {}, "preservation": {"preserve_prompts": plain_file}, "reg images": {"reg_data": reg}}
    for style, trigger in TRIGGERS.items():
        for label, settings in variants.items():
            key = f"reg/{style}/{label}"
            if key in stored():
                continue
            path = trained(WORK / "reg" / style / label.replace(" ", "-"), data=ROOT / "datasets" / style,
                           trigger=trigger, **settings)
            store(key, with_and_without_trigger(styler, path, trigger, per_prompt))
            print(key, stored()[key], flush=True)


def with_and_without_trigger(styler: Styler, path: Path, trigger: str, per_prompt: int) -> dict:
    with_trigger = with_adapter(styler, path, [(f"{trigger}, {p}", c, s) for p, c, s in prompts()], per_prompt)
    return {"trigger": with_trigger, "plain": with_adapter(styler, path, prompts(), per_prompt)}


def leak_part(styler: Styler, per_prompt: int) -> None:
    images, masks = black_folder(WORK / "black-stripes")
    for label, settings in LEAK_RUNS.items():
        key = f"leak/{label}"
        if key in stored() or (label == "adamw, uniform" and "reg/stripes/none" in stored()):
            continue
        settings = dict(settings)
        data = ROOT / "datasets" / "stripes"
        if "mask_prior" in settings:
            data, prior = images, settings.pop("mask_prior")
            settings |= {} if prior is None else {"masks": masks, "mask_prior": prior}
        folder = WORK / "leak" / label.replace(", ", "-").replace(" ", "-").replace("--", "")
        path = trained(folder, data=data, trigger=TRIGGERS["stripes"], **settings)
        store(key, with_and_without_trigger(styler, path, TRIGGERS["stripes"], per_prompt))
        print(key, stored()[key], flush=True)


def curves_part(styler: Styler, per_prompt: int) -> None:
    checkpoint.KEEP = len(JUDGED_STEPS) * 10  # keep every checkpoint: each judged step is one
    for name, settings in CURVES.items():
        for style in STYLES:
            key = f"curves/{name}/{style}"
            if key in stored():
                continue
            out = train_run(WORK / "curves", style, name, **settings)
            store(key, judge_run(styler, out, style, per_prompt))
            print(key, stored()[key], flush=True)


def report(per_prompt: int) -> str:
    measured = stored()
    images = 12 * per_prompt
    lines = [f"Measured on the miniature base by `python bench/knobs.py`: {images} images per judged point, strict "
             f"judge, one seed; a rate's standard error is at most {0.5 / images ** 0.5:.0%} (binomial)."]
    if all(f"masks/{k}" in measured for k in ("base", "unmasked", "masked")):
        lines += ["", "**Masked loss.** 36 striped images, every one on a black background; the adapter trained "
                  "without masks, with each image's shape as its mask, and with the masks and the base's own "
                  "prediction as the target outside them (`--mask-prior`). Prompts name colour and shape only.", "",
                  "| adapter | dark background | striped | colour right | shape right | broken |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for label in (label for label in ("base", *MASK_RUNS) if f"masks/{label}" in measured):
            m = measured[f"masks/{label}"]
            lines.append(f"| {mask_label(label)} | {m['dark']:.0%} | {m['striped']:.0%} | "
                         f"{m['colour']:.0%} | {m['shape']:.0%} | {m['broken']:.0%} |")
    rows = [(style, label) for style in TRIGGERS for label in ("none", "preservation", "reg images")
            if f"reg/{style}/{label}" in measured]
    if rows:
        lines += ["", "**Regularisation images against preservation.** Each style trained with a trigger word "
                  "(`zstripes`, `zpastel`), 800 steps; preservation on the 12 trigger-less captions; regularisation "
                  "on 48 class images the base painted for them (`stylelora reg-images`, 4 per caption). Leak: the "
                  "style's rate on prompts without the trigger.", "",
                  "| style | against leaking | style, with trigger | colour right, with trigger | broken | leak, "
                  "without trigger | colour right, without trigger |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for style, label in rows:
            m, word = measured[f"reg/{style}/{label}"], STYLES[style]
            lines.append(f"| {style} | {label} | {m['trigger'][word]:.0%} | {m['trigger']['colour']:.0%} | "
                         f"{m['trigger']['broken']:.0%} | {m['plain'][word]:.0%} | {m['plain']['colour']:.0%} |")
        if "masks/base" in measured:
            base = measured["masks/base"]
            lines.append(f"| base, no adapter | | | | | {base['striped']:.0%} striped, {base['pastel']:.0%} pastel | "
                         f"{base['colour']:.0%} |")
    done = {name: {style: measured[f"curves/{name}/{style}"] for style in STYLES} for name in CURVES
            if all(f"curves/{name}/{style}" in measured for style in STYLES)}
    if done and "masks/base" in measured:
        lines += ["", "**Optimizers and timestep samplings** not in the two tables above, each with the mini's earlier recipe "
                  "otherwise (800 steps, seed 0):", ""]
        table = judged_table(done, measured["masks/base"], per_prompt, "knobs.py", ", one seed", ["setting"],
                             {name: [name] for name in done})
        lines += table.split("\n", 2)[2].rstrip("\n").split("\n")
    lines += leak_table(measured)
    return "\n".join(lines) + "\n"


def leak_table(measured: dict) -> list[str]:
    runs = {label: measured.get(f"leak/{label}") for label in LEAK_RUNS}
    runs["adamw, uniform"] = runs["adamw, uniform"] or measured.get("reg/stripes/none")  # the same run
    if not all(runs.values()) or "masks/base" not in measured:
        return []
    lines = ["", "**Leak, by optimizer, timestep sampling and masks.** Stripes trained with the trigger word `zstripes` "
             "and nothing against leaking (the mini's earlier recipe: 800 steps, AdamW at 2e-3, uniform timesteps, "
             "unless the row changes one); the black folder's rows on the masked-loss table's 36 black-background "
             "images. Leak: the striped rate on prompts without the trigger; dark: backgrounds painted dark.", "",
             "| setting | striped, with trigger | colour right, with trigger | broken | leak, without trigger | colour "
             "right, without trigger | dark background, without trigger |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for label, m in runs.items():
        lines.append(f"| {label} | {m['trigger']['striped']:.0%} | {m['trigger']['colour']:.0%} | "
                     f"{m['trigger']['broken']:.0%} | {m['plain']['striped']:.0%} | {m['plain']['colour']:.0%} | "
                     f"{m['plain']['dark']:.0%} |")
    base = measured["masks/base"]
    lines.append(f"| base, no adapter | | | | {base['striped']:.0%} | {base['colour']:.0%} | {base['dark']:.0%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--parts", default="masks,reg,curves,leak")
    args = parser.parse_args()
    per_prompt = 2 if args.quick else 8
    Store(STORE).begin(per_prompt)
    styler = Styler("mini")
    parts = {"masks": masks_part, "reg": reg_part, "curves": curves_part, "leak": leak_part}
    for part in args.parts.split(","):
        parts[part](styler, per_prompt)
        text = report(per_prompt)
        write_atomically(RESULTS / "knobs.md", text.encode())
        write_section("knobs-report", text)
    print(report(per_prompt))


if __name__ == "__main__":
    main()
