"""Make the sample style folders from the miniature world, deterministically.

    python datasets/make.py            # writes datasets/stripes, datasets/dots, datasets/pastel

The same as `stylelora sample-data datasets`, which a wheel install has too (stylelora/mini/samples.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from stylelora.mini.samples import COUNT, FIRST_SEED, STYLES, make  # noqa: E402


def main() -> None:
    root = Path(__file__).resolve().parent
    for seed, (name, fixed) in enumerate(STYLES.items(), start=FIRST_SEED):
        make(root / name, fixed, seed)
        print(f"wrote {COUNT} images to {root / name}")


if __name__ == "__main__":
    main()
