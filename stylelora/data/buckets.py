"""Aspect-ratio bucketing: each image trains at the bucket nearest its shape instead of a centre square.

The buckets follow kohya's sd-scripts (library/model_util.make_bucket_resolutions): sides from `min_side` to
`max_side` in steps of `step`, each with the longest other side that keeps the area within resolution².
An image goes to the bucket nearest its aspect ratio, is resized to cover it, and loses at most the rounding
remainder to a (centre or random) crop. With `no_upscale` an image is never enlarged: its bucket is its own size
(shrunk to the area if larger), rounded down to the step. Bucketing off is one square bucket of the resolution,
which is the centre square crop.

A batch holds images of one bucket. Which bucket a batch comes from, and which images, are a pure function of
(seed, batch number), so resume stays exact; with one bucket the order is the plain per-epoch shuffle.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..files import write_atomically
from .folder import Example, Size, placement


@dataclass(frozen=True)
class BucketSettings:
    enabled: bool = True
    step: int = 64
    min_side: int | None = None  # None: half the resolution, rounded to the step
    max_side: int | None = None  # None: twice the resolution
    no_upscale: bool = False


def bucket_checks(c: Any) -> list[tuple[bool, str, str]]:
    """What a TrainConfig's --resolution and bucket settings refuse: (holds, field, what to do instead), as
    config.validate lists them."""
    return [
        (c.resolution is None or (c.resolution >= 8 and c.resolution % 8 == 0), "resolution",
         "the resolution must be a positive multiple of 8, e.g. 512"),
        (c.bucket_step is None or (c.bucket_step >= 8 and c.bucket_step % 8 == 0), "bucket_step",
         "bucket sides step by a positive multiple of 8: 64 is usual (8 for the miniature base)"),
        (c.min_bucket is None or (c.min_bucket >= 8 and c.min_bucket % 8 == 0), "min_bucket",
         "the shortest bucket side must be a positive multiple of 8, e.g. 256"),
        (c.max_bucket is None or (c.max_bucket >= 8 and c.max_bucket % 8 == 0), "max_bucket",
         "the longest bucket side must be a positive multiple of 8, e.g. 1024"),
        (c.min_bucket is None or c.max_bucket is None or c.min_bucket <= c.max_bucket, "min_bucket",
         f"the shortest bucket side must not exceed --max-bucket {c.max_bucket}"),
        (c.buckets or not (c.no_upscale or c.bucket_step or c.min_bucket or c.max_bucket),
         "no_upscale" if c.no_upscale else "bucket_step" if c.bucket_step else "min_bucket" if c.min_bucket else "max_bucket",
         "bucket settings need bucketing: leave out --no-buckets"),
    ]


def bucket_sizes(resolution: int, step: int, min_side: int, max_side: int) -> list[Size]:
    """Every (width, height) bucket: kohya's scheme, plus the square of the resolution."""
    max_area = resolution * resolution
    square = resolution // step * step
    sizes = {(square, square)}
    width = min_side
    while width <= max_side:
        height = min(max_side, (max_area // width) // step * step)
        if height >= min_side:
            sizes |= {(width, height), (height, width)}
        width += step
    return sorted(sizes)


def nearest_bucket(size: Size, buckets: Sequence[Size]) -> Size:
    """The bucket whose aspect ratio is nearest the image's (kohya compares the ratios themselves)."""
    aspect = size[0] / size[1]
    return min(buckets, key=lambda b: (abs(b[0] / b[1] - aspect), -b[0] * b[1]))


def own_bucket(size: Size, resolution: int, step: int) -> Size:
    """--no-upscale: the image's own size (shrunk to the resolution's area if larger), rounded down to the step."""
    width, height = size
    if width * height > resolution * resolution:
        scale = math.sqrt(resolution * resolution / (width * height))
        width, height = width * scale, height * scale
    return max(step, int(width) // step * step), max(step, int(height) // step * step)


@dataclass
class BucketPlan:
    """Each training image's bucket, and the batches drawn from them."""

    resolution: int
    settings: BucketSettings
    targets: list[Size]  # per example, in folder order
    examples: list[Example]

    def target(self, example: Example) -> Size:
        """An image's bucket (width, height), by its content."""
        return self.by_content[example.sha256]

    @cached_property
    def by_content(self) -> dict[str, Size]:
        return {example.sha256: target for example, target in zip(self.examples, self.targets)}

    @cached_property
    def groups(self) -> list[list[int]]:
        """Example indices per bucket, buckets in size order."""
        return [[i for i, t in enumerate(self.targets) if t == bucket] for bucket in sorted(set(self.targets))]

    def batch(self, number: int, batch_size: int, seed: int) -> list[int]:
        """The example indices of batch `number` (counting every micro-batch of every process): a pure function
        of (seed, number). Each round gives every bucket as many batches as it fills; the rounds' batch order is
        shuffled; within a bucket the images follow their own endless per-epoch shuffle. A bucket smaller than
        the batch gives batches of its size."""
        groups = self.groups
        sizes = [min(batch_size, len(group)) for group in groups]
        slots = [math.ceil(len(group) / size) for group, size in zip(groups, sizes)]
        round_number, position = divmod(number, sum(slots))
        schedule = [b for b, count in enumerate(slots) for _ in range(count)]
        if len(groups) > 1:
            random.Random(f"{seed}/buckets/{round_number}").shuffle(schedule)
        bucket = schedule[position]
        batch_in_bucket = round_number * slots[bucket] + schedule[:position].count(bucket)
        order = sample_order(len(groups[bucket]), seed + 7919 * bucket, batch_in_bucket * sizes[bucket], sizes[bucket])
        return [groups[bucket][i] for i in order]

    def report(self) -> dict:
        """buckets.json: every bucket's size and image count, every image's bucket and crop, and warnings."""
        images = []
        for example, target in zip(self.examples, self.targets):
            resized, _, _ = placement(example.size, target)
            cropped = resized[0] * resized[1] - target[0] * target[1]
            images.append({"file": str(example.path), "size": list(example.size), "bucket": list(target),
                           "cropped_pixels": cropped, "cropped_fraction": round(cropped / (resized[0] * resized[1]), 4)})
        buckets = [{"width": w, "height": h, "images": self.targets.count((w, h))} for w, h in sorted(set(self.targets))]
        warnings = [f"bucket {b['width']}x{b['height']} holds a single image "
                    f"({next(i['file'] for i in images if i['bucket'] == [b['width'], b['height']])}): it trains alone "
                    "in its batches; add images of that shape or widen --bucket-step"
                    for b in buckets if b["images"] == 1 and len(buckets) > 1]
        return {"resolution": self.resolution, "enabled": self.settings.enabled, "step": self.settings.step,
                "no_upscale": self.settings.no_upscale, "buckets": buckets, "images": images, "warnings": warnings}

    def describe(self, say: Callable[[str], None]) -> None:
        """The buckets in a line, their warnings, and every image that is enlarged to fill its bucket."""
        report = self.report()
        for example, (width, height) in zip(self.examples, self.targets):
            if example.size[0] < width or example.size[1] < height:
                bucket = str(width) if width == height else f"its bucket {width}x{height}"
                say(f"  warning: {example.path} is {example.size[0]}x{example.size[1]}, smaller than {bucket}; upscaling it")
        if not self.settings.enabled:
            return
        sizes = ", ".join(f"{b['width']}x{b['height']} ({b['images']})" for b in report["buckets"])
        worst = max(report["images"], key=lambda i: i["cropped_fraction"])
        say(f"Buckets: {sizes}; the most cropped image loses {worst['cropped_fraction']:.1%} "
            f"({Path(worst['file']).name}).")
        for warning in report["warnings"]:
            say(f"  warning: {warning}")

    def write_report(self, folder: Path) -> Path:
        path = folder / "buckets.json"
        write_atomically(path, json.dumps(self.report(), indent=2).encode())
        return path


def plan_buckets(examples: list[Example], resolution: int, settings: BucketSettings) -> BucketPlan:
    """Assign each image its bucket (one square bucket of the resolution with bucketing off)."""
    if not settings.enabled:
        return BucketPlan(resolution, settings, [(resolution, resolution)] * len(examples), examples)
    if settings.step > resolution // 2:
        raise ConfigError(f"--bucket-step = {settings.step}: too coarse for {resolution} px training; use at most "
                          f"{max(8, resolution // 4 // 8 * 8)}")
    if settings.no_upscale:
        targets = [own_bucket(e.size, resolution, settings.step) for e in examples]
    else:
        sizes = bucket_sizes(resolution, settings.step, *side_limits(resolution, settings))
        targets = [nearest_bucket(e.size, sizes) for e in examples]
    return BucketPlan(resolution, settings, targets, examples)


def default_step(family_step: int, resolution: int) -> int:
    """The family's step (64; the mini's 8), made finer for small test resolutions so there are buckets at all."""
    return min(family_step, max(8, resolution // 4 // 8 * 8))


def side_limits(resolution: int, settings: BucketSettings) -> tuple[int, int]:
    """--min-bucket and --max-bucket, or kohya's usual limits: half and twice the resolution, on the step."""
    low = settings.min_side or max(settings.step, resolution // 2 // settings.step * settings.step)
    high = settings.max_side or resolution * 2
    return low, high


def sample_order(count: int, seed: int, start: int, length: int) -> list[int]:
    """Indices `start` .. `start+length` of the endless sequence of per-epoch shuffles of `count` examples."""
    order = []
    for k in range(start, start + length):
        epoch, position = divmod(k, count)
        permutation = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        order.append(int(permutation[position]))
    return order


def plan_for_config(config) -> BucketPlan:
    """The buckets a training run of `config` (a TrainConfig) would use, read without loading the base: what the
    UI's Train tab shows before a run starts."""
    from ..model.base import base_family, native_resolution
    from .folder import scan_folder
    from .split import split_examples

    resolution = config.resolution or native_resolution(config.base)
    if resolution is None:
        raise ConfigError(f"--base {config.base}: its native size is read when it loads; give --resolution to see "
                          "the buckets first")
    examples = scan_folder(config.data, config.caption, config.trigger).examples
    if config.validation_split:  # the images a run holds out do not train: leave them out, as training does
        examples, _ = split_examples(examples, config.validation_split, config.seed)
    return plan_for_run(config, examples, resolution, base_family(config.base).bucket_step)


def plan_for_run(config, examples: list[Example], resolution: int, family_step: int) -> BucketPlan:
    """The buckets a run of `config` (a TrainConfig) trains `examples` in: --bucket-step, or the family's."""
    return plan_buckets(examples, resolution, config.bucket_settings(default_step(family_step, resolution)))


def report_as_markdown(plan: BucketPlan) -> str:
    """The bucket report as a person reads it: a table of buckets, the most cropped images, the warnings."""
    report = plan.report()
    lines = [f"**{len(report['buckets'])} bucket(s)** at {report['resolution']} px"
             + ("" if report["enabled"] else " (bucketing off: centre squares)"), "",
             "| bucket | images |", "|---|---|"]
    lines += [f"| {b['width']}x{b['height']} | {b['images']} |" for b in report["buckets"]]
    cropped = sorted(report["images"], key=lambda i: -i["cropped_fraction"])[:5]
    lines += ["", "Most cropped: " + ", ".join(f"{Path(i['file']).name} {i['cropped_fraction']:.0%}" for i in cropped)]
    lines += [f"- warning: {w}" for w in report["warnings"]]
    return "\n".join(lines)
