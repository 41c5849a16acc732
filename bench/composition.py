"""Composing two styles on the miniature base: every blend and merge method, on three pairs, judged by the strict
judge. Which one keeps both styles?

    python bench/composition.py               # 8 images per prompt (96 per setting)
    python bench/composition.py --quick       # 2 images per prompt

Pairs: stripes + pastel and dots + pastel (a texture and a palette: both can be present in one picture), and
stripes + dots (two textures for one fill: the judge names one texture a picture, so "both" cannot happen there;
the report gives each one's rate and how often either shows). Each adapter is the mini's earlier recipe's (800 steps at
2e-3, seed 0; the ones bench/timesteps.py trained are reused). Methods, each at a small grid of settings:
- the weighted sum (`--blend merge`, the same change as `merge --method cat`), switch and composite;
- `merge --method svd` at rank 4;
- the merge rules (TIES, DARE linear and with TIES, magnitude pruning, K-LoRA) at three densities.
For each pair and method, the setting whose poorer style rate is highest is reported (ties broken by colour),
with every setting in docs/results/composition.json. Every judged setting is stored as it comes, so an
interrupted run continues. Writes docs/results/composition.md and the table into the painting guide between the
composition-report markers. The cost column is the painting's UNet passes a step against one adapter's, plus the
one-time merge, which is cached.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stylelora.adapters.stack import StyleWeight  # noqa: E402
from stylelora.files import write_atomically  # noqa: E402
from stylelora.mini.evaluate import prompts  # noqa: E402
from stylelora.paint.merge_job import MergeConfig, merge  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402

from judged import Store, judged  # noqa: E402
from report_section import write_section  # noqa: E402
from timesteps import RESULTS, STYLES, images_per_prompt, train_run  # noqa: E402

STORE = RESULTS / "composition.json"
PAIRS = (("stripes", "pastel"), ("dots", "pastel"), ("stripes", "dots"))
DENSITIES = (0.3, 0.5, 0.7)
# (method, blend, settings): each setting is (weight A, weight B, density or svd rank or None)
METHODS = [("weighted sum", "merge", [(0.5, 0.5, None), (0.75, 0.75, None), (1.0, 1.0, None)]),
           ("switch", "switch", [(1.0, 1.0, None)]),
           ("composite", "composite", [(1.0, 1.0, None)]),
           ("svd, rank 4", "svd", [(0.75, 0.75, 4), (1.0, 1.0, 4)]),
           *[(rule, rule, [(1.0, 1.0, d) for d in DENSITIES]) for rule in ("ties", "dare-linear", "dare-ties",
                                                                             "magnitude-prune", "klora")]]
COST = {"merge": "1x", "switch": "1x", "composite": "2x", "svd": "1x (a merged file)"}


def stored() -> dict:
    return Store(STORE).read()


def store(key: str, value) -> None:
    Store(STORE).put(key, value)


def adapters() -> dict[str, Path]:
    """Each style's default-recipe adapter (bench/timesteps.py's uniform runs where they are)."""
    work = RESULTS / "timestep-adapters"
    return {style: train_run(work, style, "uniform") / f"{style}.safetensors" for style in STYLES}


def setting_key(a: str, b: str, method: str, setting: tuple) -> str:
    return f"{a}+{b}/{method}/{setting[0]:g},{setting[1]:g}" + ("" if setting[2] is None else f",{setting[2]:g}")


def judge_setting(styler: Styler, files: dict[str, Path], a: str, b: str, blend: str, setting: tuple,
                  per_prompt: int, work: Path) -> dict:
    w_a, w_b, extra = setting
    if blend == "svd":  # a merged file, painted alone
        out = work / f"{a}-{b}-svd.safetensors"
        merge(MergeConfig((f"{files[a]}:{w_a}", f"{files[b]}:{w_b}"), out, "svd", extra))
        name = styler.load(out, f"svd-{a}-{b}-{w_a}")
        styler.set_weights({name: 1.0})
        try:
            return judged(styler, prompts(), per_prompt)
        finally:
            styler.unload(name)
    names = [styler.load(files[a], a), styler.load(files[b], b)]
    styler.set_weights({names[0]: StyleWeight(w_a, w_a), names[1]: StyleWeight(w_b, w_b)})
    paint = {"blend": blend} | ({"blend_density": extra} if extra is not None else {})
    try:
        return judged(styler, prompts(), per_prompt, **paint)
    finally:
        for name in names:
            styler.unload(name)


def both(m: dict, a: str, b: str) -> float:
    """The share of pictures that show both styles (a texture with pastel), or either (two textures)."""
    words = {"stripes": "striped", "dots": "dotted"}
    if b == "pastel":
        return m["pairs"].get(f"{words[a]} pastel", 0.0)
    return m[STYLES[a]] + m[STYLES[b]]


def report(per_prompt: int) -> str:
    measured = stored()
    images = 12 * per_prompt
    lines = [f"Measured on the miniature base by `python bench/composition.py`: {images} images per setting, "
             f"strict judge, one seed; a rate's standard error is at most {0.5 / images ** 0.5:.0%} (binomial).", ""]
    if "base" in measured:
        base = measured["base"]
        lines += [f"The base alone: {base['striped']:.0%} striped, {base['dotted']:.0%} dotted, {base['pastel']:.0%} "
                  f"pastel, colour right {base['colour']:.0%}.", ""]
    lines += ["| pair | method | best setting (A, B, density or rank) | A's style | B's style | both (or either, for "
              "two textures) | colour right | shape right | broken | UNet passes a step |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for a, b in PAIRS:
        for method, blend, settings in METHODS:
            done = [(s, measured[setting_key(a, b, method, s)]) for s in settings
                    if setting_key(a, b, method, s) in measured]
            if not done:
                continue
            setting, m = max(done, key=lambda item: (min(item[1][STYLES[a]], item[1][STYLES[b]]), item[1]["colour"]))
            shown = ", ".join(f"{v:g}" for v in setting if v is not None)
            lines.append(f"| {a} + {b} | {method} | {shown} | {m[STYLES[a]]:.0%} | {m[STYLES[b]]:.0%} | "
                         f"{both(m, a, b):.0%} | {m['colour']:.0%} | {m['shape']:.0%} | {m['broken']:.0%} | "
                         f"{COST.get(blend, '1x (merged once, cached)')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    per_prompt = images_per_prompt(__doc__)
    Store(STORE).begin(per_prompt)
    files = adapters()
    styler = Styler("mini")
    if "base" not in stored():
        store("base", judged(styler, prompts(), per_prompt))
    with tempfile.TemporaryDirectory() as work:
        for a, b in PAIRS:
            for method, blend, settings in METHODS:
                for setting in settings:
                    key = setting_key(a, b, method, setting)
                    if key not in stored():
                        store(key, judge_setting(styler, files, a, b, blend, setting, per_prompt, Path(work)))
                        print(key, {k: v for k, v in stored()[key].items() if k != "pairs"}, flush=True)
                text = report(per_prompt)
                write_atomically(RESULTS / "composition.md", text.encode())
                write_section("composition-report", text)
    print(report(per_prompt))


if __name__ == "__main__":
    main()
