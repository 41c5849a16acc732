"""What a miniature base draws on its own, under the strict judge: 8 images for each of the 12 colour x shape
prompts (fixed seeds), with the named colour, the named shape and broken pictures counted.

    python bench/mini_base.py                                  # the committed base, guidance 4, DPM++ 20 steps
    python bench/mini_base.py --base path/to/pipeline --cfg 6  # another base folder (e.g. a pretrain --out)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stylelora.mini.evaluate import measure  # noqa: E402
from stylelora.paint.styler import Styler  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="mini")
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--scheduler", default="dpm++")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--per-prompt", type=int, default=8)
    args = parser.parse_args()
    start = time.time()
    rates = measure(Styler(args.base), per_prompt=args.per_prompt, steps=args.steps, cfg=args.cfg,
                    scheduler=args.scheduler)
    styles = ", ".join(f"{k} {rates.share(k):.0%}" for k in ("striped", "dotted", "solid", "pastel", "normal"))
    print(f"{args.base}, guidance {args.cfg:g}, {args.scheduler} {args.steps} steps, {rates.images} images: "
          f"colour {rates.share('colour'):.0%}, shape {rates.share('shape'):.0%}, broken {rates.share('broken'):.0%}; "
          f"{styles} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
