"""The judge objective: how often an adapter paints its folder's style on the miniature base, with the
named colour kept. Fixed prompts (the 12 colour x shape ones) and fixed seeds, so two trials are judged on
the same pictures' noise."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..data.folder import load_rgb, scan_folder
from ..errors import ConfigError
from ..train.config import TrainConfig

COLOUR_SLACK = 0.05  # a trial may lose at most 5 points of the base's colour rate and stay feasible
JUDGE_STEPS, JUDGE_CFG = 20, 4.0  # the sampler settings of every measurement of the mini (bench/style_report.py)


class StyleJudge:
    def __init__(self, train: TrainConfig, style: str | None, per_prompt: int, log: Callable[[str], None]):
        from ..mini.evaluate import folder_style

        self.train, self.per_prompt, self.log = train, per_prompt, log
        if style is None:
            folder = scan_folder(train.data, train.caption, train.trigger)
            size = 64
            try:
                style = folder_style([np.asarray(load_rgb(e.path).resize((size, size))) for e in folder.examples])
            except ValueError:
                raise ConfigError(f"--objective judge: the judge sees no striped, dotted, pastel or flat image in "
                                  f"{train.data}; name the style with --judge-style") from None
            log(f"Judge: the folder's style is {style} (as the judge reads its images).")
        self.style = style
        self._styler = None
        self._base: tuple[float, float] | None = None

    @property
    def styler(self):
        if self._styler is None:
            from ..paint.styler import Styler

            self._styler = Styler(self.train.base)
        return self._styler

    def _measure(self, per_prompt: int | None = None, seed: int = 0) -> tuple[float, float]:
        from ..mini.evaluate import measure

        rates = measure(self.styler, per_prompt=per_prompt or self.per_prompt, steps=JUDGE_STEPS, cfg=JUDGE_CFG,
                        seed=seed)
        return rates.share(self.style), rates.share("colour")

    @property
    def base_rates(self) -> tuple[float, float]:
        if self._base is None:
            self._base = self._measure()
            self.log(f"Judge: the base alone paints {self.style} {self._base[0]:.0%} of the time, colour right "
                     f"{self._base[1]:.0%} ({12 * self.per_prompt} images).")
        return self._base

    @property
    def colour_floor(self) -> float:
        return self.base_rates[1] - COLOUR_SLACK

    def rate(self, adapter: Path, per_prompt: int | None = None, seed: int = 0) -> tuple[float, float]:
        """(style share, colour-right share) of the adapter at weight 1, from `per_prompt` pictures of each prompt
        (default: the study's) at seeds from `seed`."""
        self.base_rates  # noqa: B018  (measured first, with no adapter loaded)
        name = self.styler.load(adapter)
        try:
            self.styler.set_weights({name: 1.0})
            return self._measure(per_prompt, seed)
        finally:
            self.styler.unload(name)
