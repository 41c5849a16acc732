"""Knowing when to stop: a held-out validation loss that is a stable number, early stopping on it, the
best step kept, and an exponential moving average (EMA) of the adapter weights.

The validation loss is stable because nothing in it is drawn per evaluation: each held-out image has its
own fixed noise (seeded by the run's seed and the image's content) and is measured at the same
VALIDATION_TIMESTEPS timesteps spread over the schedule, in the same batches. kohya's docs/validation.md
(fixed timesteps) and ai-toolkit's fixed sigmas do the same. Two evaluations of the same weights agree
exactly; a change in the number is a change in the weights.
"""

from __future__ import annotations

import hashlib
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from diffusers.training_utils import EMAModel

from ..families import Placement
from ..score.previews import PreviewScores

VALIDATION_TIMESTEPS = 8
VALIDATIONS_PER_RUN = 20  # how often --validate-every's default validates


def fixed_timesteps(num_train_timesteps: int, count: int = VALIDATION_TIMESTEPS) -> torch.Tensor:
    """`count` timesteps at the centres of equal slices of the schedule: 62, 187, ... 937 of 1000."""
    return ((torch.arange(count, dtype=torch.float64) + 0.5) * num_train_timesteps / count).long()


def validate_every(requested: int | None, steps: int) -> int:
    return requested or max(1, steps // VALIDATIONS_PER_RUN)


@dataclass
class ValidationSet:
    """Every (held-out image, fixed timestep) pair, flattened: latents, noise, timesteps and captions."""

    latents: torch.Tensor  # scaled, one row per pair
    noise: torch.Tensor
    timesteps: torch.Tensor
    captions: list[str]
    placements: list[Placement] = field(default_factory=list)  # each row's image in its square (SDXL's time ids)

    @classmethod
    def build(cls, latents: list[torch.Tensor], captions: list[str], keys: list[str], seed: int,
              num_train_timesteps: int, placements: list[Placement] | None = None) -> ValidationSet:
        """`keys` (the images' content hashes) seed each image's noise, so it does not depend on their order."""
        timesteps = fixed_timesteps(num_train_timesteps)
        rows = len(timesteps)
        noise = [torch.randn((rows, *latent.shape), generator=_generator(seed, key)) for latent, key in zip(latents, keys)]
        return cls(torch.cat([latent.expand(rows, *latent.shape) for latent in latents]), torch.cat(noise),
                   timesteps.repeat(len(latents)), [caption for caption in captions for _ in range(rows)],
                   [where for where in placements or [] for _ in range(rows)])

    def __len__(self) -> int:
        return len(self.captions)


def _generator(seed: int, key: str) -> torch.Generator:
    digest = hashlib.sha256(f"validation-noise/{seed}/{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@dataclass
class EarlyStopping:
    """Stop after `patience` validations in a row that did not lower the best loss by more than `min_delta`
    (patience 0: never). That same rule picks the best step."""

    patience: int = 0
    min_delta: float = 0.0
    best_loss: float = math.inf
    best_step: int = 0
    since_best: int = 0

    def update(self, step: int, loss: float) -> bool:
        """Record a validation; return whether it is the new best."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_step, self.since_best = loss, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.since_best >= self.patience

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_step": self.best_step, "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_step, self.since_best = state["best_loss"], state["best_step"], state["since_best"]


class AdapterAverage:
    """The weights to validate and save, where they are not the ones stepped: an EMA of the trainable adapter
    tensors (decay 0: off), or a schedule-free optimizer's own average (`averaging`: its eval() puts it in the
    parameters, its train() takes it back). diffusers' EMAModel does the EMA, with its warm-up: the first update
    copies the weights and the decay at update n > 1 is min(decay, n / (n + 9)), so the average is not held back
    by the zero-change start."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float, averaging: torch.optim.Optimizer | None = None):
        self.parameters = parameters
        self.ema = EMAModel(parameters, decay=decay, foreach=True) if decay else None
        self.averaging = averaging

    def update(self) -> None:
        if self.ema is not None:
            self.ema.step(self.parameters)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in place of the trained ones, for validating, previews and saving."""
        if self.averaging is not None:
            self.averaging.eval()
            try:
                yield
            finally:
                self.averaging.train()
            return
        if self.ema is None:
            yield
            return
        self.ema.store(self.parameters)
        self.ema.copy_to(self.parameters)
        try:
            yield
        finally:
            self.ema.restore(self.parameters)

    def state_dict(self) -> dict:
        return self.ema.state_dict() if self.ema is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.ema is not None and state:
            self.ema.load_state_dict(state)


@dataclass
class Watch:
    """Between optimizer steps: validate when due, track the best step and keep its adapter tensors, and
    say when to stop. `evaluate` returns the validation loss of the weights as they are, and `score` (with
    --select-by score) their previews' scores; both run under the EMA weights when there are some. The best step
    is the lowest loss, or the highest score quality. `export` returns a copy of the adapter tensors
    (Outputs.adapter_tensors, which applies the EMA itself)."""

    every: int
    total_steps: int
    keep_best: bool
    stopping: EarlyStopping
    evaluate: Callable[[], float] | None  # None: no validation
    export: Callable[[], dict[str, torch.Tensor]]
    average: AdapterAverage
    score: Callable[[], tuple[PreviewScores, list]] | None = None  # None: select by the loss
    best_tensors: dict[str, torch.Tensor] | None = None
    last_loss: float | None = None
    last_scores: PreviewScores | None = None
    last_previews: list = field(default_factory=list)  # the pictures the last scores were read from, with prompts
    best_loss: float | None = None  # the best step's validation loss
    best_scores: PreviewScores | None = None  # the best step's, with --select-by score
    base_loss: float | None = None  # the base's own, before the first step

    @property
    def measure(self) -> str:
        return "the validation loss" if self.score is None else "the preview score (style x prompt)"

    def due(self, step: int) -> bool:
        measures = self.evaluate is not None or self.score is not None
        return measures and (step % self.every == 0 or step == self.total_steps)

    def baseline(self) -> float | None:
        """The base's own validation loss (every adapter starts as a zero change), measured before the first
        step as a reference: logged and recorded in the file, but no candidate for the best step, which
        holds a trained adapter. None without validation."""
        if self.evaluate is None:
            return None
        with torch.no_grad():
            self.base_loss = self.evaluate()
        return self.base_loss

    def after_step(self, step: int) -> bool:
        """Whether a validation was due at `step`, and so measured: its loss in last_loss (None without validation
        data), its previews' scores in last_scores (with --select-by score)."""
        if not self.due(step):
            return False
        with self.average.applied(), torch.no_grad():
            self.last_loss = self.evaluate() if self.evaluate is not None else None
            if self.score is not None:
                self.last_scores, self.last_previews = self.score()
        # EarlyStopping lowers its number: the loss, or what the quality lacks of 1
        selected = self.last_loss if self.last_scores is None else 1.0 - self.last_scores.quality
        if self.stopping.update(step, selected):
            self.best_loss, self.best_scores = self.last_loss, self.last_scores
            if self.keep_best:
                self.best_tensors = self.export()
        return True

    @property
    def should_stop(self) -> bool:
        return self.stopping.should_stop

    def stop_reason(self, step: int) -> str:
        if self.should_stop:
            return (f"early stop at step {step}: {self.measure} did not improve by more than "
                    f"{self.stopping.min_delta:g} for {self.stopping.patience} validations")
        return f"reached the last step, {step}"

    def state_dict(self) -> dict:
        scores = {name: None if value is None else [value.style, value.prompt]
                  for name, value in (("last_scores", self.last_scores), ("best_scores", self.best_scores))}
        return {"stopping": self.stopping.state_dict(), "last_loss": self.last_loss, "base_loss": self.base_loss,
                "best_loss": self.best_loss, **scores}

    def load_state_dict(self, state: dict, best_tensors: dict[str, torch.Tensor] | None) -> None:
        if not state:
            return
        self.stopping.load_state_dict(state["stopping"])
        self.last_loss = state["last_loss"]
        self.base_loss = state.get("base_loss")
        # checkpoints from before --select-by held the best loss in the stopping rule only
        self.best_loss = state.get("best_loss", self.stopping.best_loss)
        self.last_scores, self.best_scores = (None if state.get(name) is None else PreviewScores(*state[name])
                                              for name in ("last_scores", "best_scores"))
        self.best_tensors = best_tensors

