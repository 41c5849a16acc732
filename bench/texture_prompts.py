"""What the miniature base draws when a prompt names the style outright: the ceiling an adapter starts from.

    python bench/texture_prompts.py     # 24 images per style word, about a minute

Prints, for "a striped red circle", "a red circle in pastel colours" and so on over the 12 colour x
shape pairs, how often the judge sees the named texture or palette, and how often the colour is right.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stylelora.mini.judge import judge  # noqa: E402
from stylelora.mini.world import COLOURS, SHAPES  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402

WORDS = (("striped", "texture"), ("dotted", "texture"), ("solid", "texture"), ("pastel", "palette"),
         ("normal", "palette"))


def prompt_for(word: str, kind: str, colour: str, shape: str) -> str:
    return f"a {word} {colour} {shape}" if kind == "texture" else f"a {colour} {shape} in {word} colours"


def main() -> None:
    styler = Styler("mini")
    for word, kind in WORDS:
        seen, colour_right, images = Counter(), 0, 0
        for i, colour in enumerate(COLOURS):
            for j, shape in enumerate(SHAPES):
                for image in styler.generate(prompt_for(word, kind, colour, shape), count=2, steps=20, cfg=4.0,
                                             seed=100 * i + j):
                    verdict = judge(np.asarray(image.convert("RGB")))
                    seen[getattr(verdict, kind)] += 1
                    colour_right += verdict.colour == colour
                    images += 1
        print(f"'{word}' named: judged {word} {seen[word] / images:.0%} of {images}, colour right "
              f"{colour_right / images:.0%}  ({dict(seen)})", flush=True)


if __name__ == "__main__":
    main()
