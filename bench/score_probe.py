"""Which VAE-encoder statistic tells the mini's sample styles apart? For each style as the reference (its even
images) and each style's odd images as candidates, the distance of the candidates to the reference, per
statistic and depth, as a set (the mean statistic) and picture by picture (each candidate's nearest reference).
A statistic that works puts each style's own candidates nearest. Measured 2026-12-06: as sets, no statistic at
any depth puts all three styles' own candidates nearest; picture by picture (each candidate's nearest reference),
"gram", "moments" (depths 1 and 2) and "correlation" (depth 2) at the encoder's last block do, for all three.
"high-pass" separates the textures (stripes, dots), not the palette (pastel). Agreement with the judge over
checkpoints is the next measurement.

    python bench/score_probe.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from stylelora.data.folder import scan_folder  # noqa: E402
from stylelora.model.base import load_base  # noqa: E402
from stylelora.score.style import (STATISTICS, encoder_features, nearest_distance, per_picture, pixels_of,  # noqa: E402
                                   texture_statistics)

STYLES = ("stripes", "dots", "pastel")


def main() -> None:
    vae = load_base("mini").vae
    features = {s: encoder_features(vae, pixels_of([Image.open(e.path) for e in scan_folder(ROOT / "datasets" / s)
                                                    .examples], 64)) for s in STYLES}
    for statistic in STATISTICS:
        for depth in range(len(features["stripes"])):
            for reference in STYLES:
                ref = features[reference][depth][0::2]
                as_set = {s: float((texture_statistics(features[s][depth][1::2], statistic)
                                    - texture_statistics(ref, statistic)).norm()
                                   / texture_statistics(ref, statistic).norm()) for s in STYLES}
                nearest = {s: nearest_distance(per_picture(features[s][depth][1::2], statistic),
                                               per_picture(ref, statistic)) for s in STYLES}
                right = [min(d, key=d.get) == reference for d in (as_set, nearest)]
                print(f"{statistic:12} depth {depth} reference {reference:8} set {'ok ' if right[0] else 'no '}"
                      f"nearest {'ok ' if right[1] else 'no '}", {s: round(v, 3) for s, v in nearest.items()})


if __name__ == "__main__":
    main()
