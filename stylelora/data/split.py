"""Holding images out: the validation split, chosen by the seed alone."""

from __future__ import annotations

import random

from ..errors import ConfigError


def held_out_count(count: int, fraction: float) -> int:
    """How many of `count` images --validation-split `fraction` holds out: round(fraction x count), at least 1."""
    return max(1, round(fraction * count))


def split_examples(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(training, held out): round(fraction * count) images, at least 1, chosen by the seed alone, so the same
    command holds out the same images (and a resume trains on the same ones)."""
    count = len(examples)
    held = held_out_count(count, fraction)
    if held >= count:
        raise ConfigError(f"--validation-split = {fraction!r}: it holds out {held} of the {count} images and leaves "
                          "none to train on; lower it or add images")
    chosen = set(random.Random(f"validation/{seed}").sample(range(count), held))
    return ([e for i, e in enumerate(examples) if i not in chosen], [e for i, e in enumerate(examples) if i in chosen])
