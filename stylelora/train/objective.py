"""The denoising objective a base trains with, one small object each: which timesteps a training step draws, how
it noises the latents there, what the denoiser should predict, and each sample's loss weight. Pure functions of
tensors and the base's own scheduler; no models, no state.

- `DDPM`: epsilon or v-prediction (SD1.x, SD2.x, SDXL, the miniature) through the scheduler's `add_noise`.
- `FlowMatching`: rectified flow (SD3.x, Flux.1), as diffusers' train_dreambooth_lora_sd3.py and
  train_dreambooth_lora_flux.py define it: noisy = (1 - sigma) x0 + sigma eps, target = eps - x0, with Flux's
  resolution-dependent shift taken from its scheduler (`time_shift`).

Timesteps are drawn from a density over [0, 1): uniform, logit-normal or mode (diffusers.training_utils'
`compute_density_for_timestep_sampling`, used as it is), or biased toward high noise, where style lives
('style'), or toward low noise ('content'), as ai-toolkit's `content_or_style` draws them: 1 - u^3 and u^3.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError
from .loss import min_snr_weights, noise_target

TIMESTEP_SAMPLINGS = ("auto", "uniform", "logit-normal", "mode", "style", "content")


class Noised(NamedTuple):
    """One batch at its timesteps: the denoiser's input, the timesteps it is told, what it should predict, and
    each sample's loss weight (None: all equal)."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor | None


@dataclass(frozen=True)
class Sampling:
    """Where on the schedule training steps land: `kind` (TIMESTEP_SAMPLINGS, 'auto' resolved by the objective)
    and the logit-normal and mode densities' parameters (the SD3 paper's defaults)."""

    kind: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    @classmethod
    def given(cls, kind: str, **parameters: float | None) -> "Sampling":
        """A sampling with the parameters given (None: this class's own default, the one place it is set)."""
        return cls(kind, **{name: value for name, value in parameters.items() if value is not None})

    def positions(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` positions in [0, 1), 0 the least noise and 1 the most."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        if self.kind in ("style", "content"):
            u = torch.rand(count, generator=generator)
            return 1 - u ** 3 if self.kind == "style" else u ** 3
        scheme = {"logit-normal": "logit_normal", "mode": "mode"}.get(self.kind, "uniform")
        u = compute_density_for_timestep_sampling(scheme, count, self.logit_mean, self.logit_std, self.mode_scale,
                                                  generator=generator)
        return 1 - u  # diffusers' u indexes the schedule from the most noise down


@dataclass(frozen=True)
class DDPM:
    """Discrete-time denoising over the base's DDPM-family scheduler: its `add_noise`, its epsilon or v target,
    and Min-SNR-gamma weights when asked."""

    scheduler: object
    prediction_type: str = "epsilon"
    sampling: Sampling = Sampling()
    min_snr_gamma: float = 0.0

    @property
    def steps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def draw(self, count: int, generator: torch.Generator, latent_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Training timesteps, integers in [0, steps) (whatever the image size). Uniform draws exactly as before
        this seam existed (torch.randint), so runs and resumes keep their numbers."""
        if self.sampling.kind in ("auto", "uniform"):
            return torch.randint(0, self.steps, (count,), generator=generator)
        return (self.sampling.positions(count, generator) * self.steps).long().clamp(0, self.steps - 1)

    def noised(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> Noised:
        timesteps = timesteps.to(latents.device)
        alphas_cumprod = self.scheduler.alphas_cumprod
        weights = (min_snr_weights(timesteps, alphas_cumprod, self.min_snr_gamma, self.prediction_type)
                   if self.min_snr_gamma > 0 else None)
        return Noised(self.scheduler.add_noise(latents, noise, timesteps), timesteps,
                      noise_target(self.prediction_type, latents, noise, timesteps, alphas_cumprod), weights)

    def noise_to_signal(self, timesteps: torch.Tensor) -> torch.Tensor:
        """sqrt((1 - alpha_bar) / alpha_bar) at each timestep: the noise's scale over the image's."""
        alpha_bar = self.scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        return ((1 - alpha_bar) / alpha_bar).sqrt()


@dataclass(frozen=True)
class FlowMatching:
    """Rectified flow over the base's FlowMatchEulerDiscreteScheduler, whose static `shift` (SD3) is already in
    its sigmas. A scheduler that shifts by resolution (Flux: use_dynamic_shifting) has its shift applied here to
    each drawn sigma, with mu from the latent's token count as FluxPipeline computes it."""

    scheduler: object
    sampling: Sampling = Sampling("logit-normal")
    patch: int = 2  # latent pixels per token side (Flux packs 2x2)

    @property
    def steps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def draw(self, count: int, generator: torch.Generator, latent_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Training timesteps (sigma x steps): the scheduler's own timesteps at the drawn positions, or, when it
        shifts by resolution, the drawn sigma shifted for an image of `latent_size`."""
        u = self.sampling.positions(count, generator)
        config = self.scheduler.config
        if config.get("use_dynamic_shifting") and latent_size is not None:
            tokens = (latent_size[0] // self.patch) * (latent_size[1] // self.patch)
            return self.scheduler.time_shift(flux_mu(tokens, config), 1.0, u.clamp(1e-5, 1.0)) * self.steps
        indices = (u * self.steps).long().clamp(0, self.steps - 1)
        return self.scheduler.timesteps[self.steps - 1 - indices]  # the schedule runs from most noise to least

    def noised(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> Noised:
        timesteps = timesteps.to(latents.device)
        sigmas = (timesteps.float() / self.steps).view(-1, *[1] * (latents.dim() - 1))
        noisy = ((1.0 - sigmas) * latents.float() + sigmas * noise.float()).to(latents.dtype)
        return Noised(noisy, timesteps, (noise.float() - latents.float()).to(latents.dtype), None)

    def noise_to_signal(self, timesteps: torch.Tensor) -> torch.Tensor:
        sigmas = timesteps.float() / self.steps
        return sigmas / (1 - sigmas).clamp(min=1e-6)


def objective_for(scheduler, prediction_type: str, sampling: Sampling, min_snr_gamma: float = 0.0
                  ) -> DDPM | FlowMatching:
    """The objective a base's scheduler trains with: flow matching for a flow-matching scheduler (it has sigmas
    and no alphas_cumprod), DDPM otherwise; 'auto' sampling resolved for it."""
    if hasattr(scheduler, "alphas_cumprod"):
        return DDPM(scheduler, prediction_type, replace(sampling, kind=sampling.kind.replace("auto", "uniform")),
                    min_snr_gamma)
    if min_snr_gamma > 0:
        raise ConfigError("--min-snr-gamma weighs DDPM timesteps; this base trains by flow matching: leave it out")
    # A copy, as diffusers' SD3 script keeps one: previews set the pipeline's own scheduler to their few steps.
    return FlowMatching(copy.deepcopy(scheduler), replace(sampling, kind=sampling.kind.replace("auto", "logit-normal")))


def flux_mu(tokens: int, config) -> float:
    """Flux's resolution-dependent shift, as FluxPipeline computes it (diffusers' `calculate_shift`, used as it is):
    mu grows linearly with the token count, from base_shift at base_image_seq_len tokens to max_shift at
    max_image_seq_len."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(tokens, config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096),
                           config.get("base_shift", 0.5), config.get("max_shift", 1.15))


def sampling_checks(c: Any) -> list[tuple[bool, str, str]]:
    """What a TrainConfig's --timestep-sampling and its parameters refuse: (holds, field, what to do instead), as
    config.validate lists them."""
    return [
        (c.timestep_sampling in TIMESTEP_SAMPLINGS, "timestep_sampling", f"choose one of {', '.join(TIMESTEP_SAMPLINGS)}"),
        (c.logit_std is None or c.logit_std > 0, "logit_std", "the spread must be above 0; 1 is usual"),
        (c.timestep_sampling in ("auto", "logit-normal") or (c.logit_mean is None and c.logit_std is None),
         "logit_mean" if c.logit_mean is not None else "logit_std",
         "the logit-normal parameters need --timestep-sampling logit-normal"),
        (c.timestep_sampling in ("auto", "mode") or c.mode_scale is None, "mode_scale",
         "the mode scale needs --timestep-sampling mode"),
    ]
