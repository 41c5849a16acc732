"""Regularisation (class) images, kohya's reg_data_dir and diffusers' prior preservation: a folder of pictures of
the class the style is painted on ("a circle"), each with its caption and no trigger. Every micro-batch draws as
many of them as it has training images, a pure function of (seed, batch number) like the training batches, so
resume stays exact; their denoising loss, times --reg-weight, is added to the objective (step_loss.StepLoss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..data.buckets import BucketPlan
from ..data.folder import Example, scan_folder
from ..errors import DatasetError
from .config import TrainConfig

# The regularisation batches' own stream of bucket shuffles, apart from the training batches'.
SEED_OFFSET = 104_729


@dataclass
class Regularisation:
    """The regularisation images, their buckets, and the weight of their loss."""

    examples: list[Example]
    buckets: BucketPlan
    weight: float

    def batch(self, number: int, batch_size: int, seed: int) -> list[Example]:
        """The regularisation images that join training batch `number`."""
        return [self.examples[i] for i in self.buckets.batch(number, batch_size, seed + SEED_OFFSET)]


def read_regularisation(config: TrainConfig, say: Callable[[str], None]) -> list[Example]:
    """The --reg-data folder's images and captions (its own captions, without --trigger: a class image must not
    teach the trigger); [] without --reg-data."""
    if config.reg_data is None:
        return []
    try:
        folder = scan_folder(config.reg_data, config.caption,
                             holds="the class images (`stylelora reg-images \"a circle\" --out DIR` paints them)")
    except DatasetError as error:
        raise DatasetError(f"--reg-data: {error}") from None
    for path, reason in folder.skipped:
        say(f"  skipped {path}: {reason}")
    uncaptioned = sum(e.caption_source == "none" for e in folder.examples)
    say(f"Regularisation: {len(folder.examples)} images from {config.reg_data}, weight {config.reg_weight:g}; each "
        "batch trains on as many of them, on their own captions"
        + (f" ({uncaptioned} have none: add .txt captions such as 'a circle')" if uncaptioned else "") + ".")
    return folder.examples
