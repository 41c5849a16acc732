"""Generation with stacked adapters: one denoising step unfused and fused, reweighting, loading,
and 20 adapters loaded with 2 active.

Each ratio interleaves the two settings (A, B, A, B, ...) and takes the median of the pairs'
ratios, so that the machine's drift between the two cancels out.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stylelora.paint.styler import Styler

from models import Base, random_adapters
from training_bench import timed


@dataclass
class GenerationResult:
    label: str
    unfused: dict[int, float] = field(default_factory=dict)  # adapters -> step / base step
    fused: dict[int, float] = field(default_factory=dict)
    reweight_seconds: float = 0.0
    load_seconds: float = 0.0
    twenty_vs_two_unfused: float = 0.0
    twenty_vs_two_fused: float = 0.0


def _denoising_step(styler: Styler, base: Base) -> Callable[[], None]:
    unet = styler.pipe.unet
    side = base.resolution // styler.pipe.vae_scale_factor
    # Classifier-free guidance runs the UNet on a batch of 2: the prompt and the empty prompt.
    x = torch.randn(2, 4, side, side, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, styler.pipe.tokenizer.model_max_length, unet.config.cross_attention_dim)
    t = torch.tensor([500, 500])

    def step():
        with torch.no_grad():
            unet(x, t, text)

    return step


def interleaved_ratio(setup_a: Callable[[], object], step_a: Callable[[], None], setup_b: Callable[[], object],
                      step_b: Callable[[], None], pairs: int, runs: int) -> float:
    """Median over `pairs` of time(B) / time(A), each time a median of `runs` steps right after its setup."""
    ratios = []
    for _ in range(pairs):
        setup_a()
        a = timed(step_a, runs)
        setup_b()
        b = timed(step_b, runs)
        ratios.append(b / a)
    return statistics.median(ratios)


def measure_generation(base: Base, pairs: int, runs: int) -> GenerationResult:
    styler = Styler(base.spec)
    step = _denoising_step(styler, base)
    result = GenerationResult(base.label)
    with tempfile.TemporaryDirectory() as folder:
        paths = random_adapters(styler.pipe.unet, 20, Path(folder))
        start = time.perf_counter()
        names = [styler.load(p) for p in paths[:5]]
        result.load_seconds = (time.perf_counter() - start) / 5
        off = lambda: styler.set_weights({})  # noqa: E731  (the bare base: every adapter at weight 0)
        for count in (1, 3, 5):
            blend = {name: 0.5 for name in names[:count]}
            result.unfused[count] = interleaved_ratio(off, step, lambda: styler.set_weights(blend), step, pairs, runs)
            result.fused[count] = interleaved_ratio(
                off, step, lambda: (styler.set_weights(blend), styler.fuse()), step, pairs, runs)
        reweights = []
        for weight in (0.1, 0.2, 0.3, 0.4, 0.5):  # what moving a slider costs: unfuse, set the scales, fuse
            start = time.perf_counter()
            styler.set_weights({name: weight for name in names})
            styler.fuse()
            reweights.append(time.perf_counter() - start)
        result.reweight_seconds = statistics.median(reweights)
        for name in names[2:]:
            styler.unload(name)
        crowded = Styler(base.spec)  # the same base with all 20 loaded, side by side with the 2-adapter one
        crowded_names = [crowded.load(p) for p in paths]
        crowded_step = _denoising_step(crowded, base)
        two = {names[0]: 1.0, names[1]: 1.0}
        two_of_twenty = {crowded_names[0]: 1.0, crowded_names[1]: 1.0}
        result.twenty_vs_two_unfused = interleaved_ratio(
            lambda: styler.set_weights(two), step, lambda: crowded.set_weights(two_of_twenty), crowded_step, pairs, runs)
        result.twenty_vs_two_fused = interleaved_ratio(
            lambda: (styler.set_weights(two), styler.fuse()), step,
            lambda: (crowded.set_weights(two_of_twenty), crowded.fuse()), crowded_step, pairs, runs)
    return result
