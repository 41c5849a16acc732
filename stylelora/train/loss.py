"""The denoising objective. Pure functions of tensors: no models, no state."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

LOSSES = ("l2", "huber", "smooth-l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")  # the first is the default, as kohya's
HUBER_C = 0.1  # kohya's default threshold


def noise_target(prediction_type: str, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                 alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict: the noise itself, or the velocity for v-prediction bases (SD 2.x 768)."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        alpha_bar = alphas_cumprod.to(latents.device)[timesteps].float().view(-1, 1, 1, 1)
        return (alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents).to(latents.dtype)
    raise ValueError(f"prediction_type {prediction_type!r} is not supported: use 'epsilon' or 'v_prediction'")


def min_snr_weights(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma weights (Hang et al. 2023): cap the weight of easy, low-noise steps so they stop
    dominating the gradient. Written for the epsilon/v targets, so the SNR cap is divided out."""
    alpha_bar = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alpha_bar / (1 - alpha_bar)
    capped = torch.clamp(snr, max=gamma)
    return capped / (snr + 1) if prediction_type == "v_prediction" else capped / snr


def offset_noise(noise: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add a per-channel constant to the noise so the model can learn to shift overall brightness
    (the 'noise offset' trick); plain Gaussian noise never moves the image mean far."""
    if strength == 0:
        return noise
    shift = torch.randn(noise.shape[0], noise.shape[1], 1, 1, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + strength * shift


def huber_thresholds(schedule: str, c: float, timesteps: torch.Tensor, steps: int,
                     noise_to_signal: torch.Tensor) -> torch.Tensor:
    """Each sample's Huber threshold, as kohya's scheduled Huber sets it (train_util.get_huber_threshold_if_needed,
    Kaiqi Gao et al. 2024): 'constant' c; 'exponential' from 1 at t = 0 down to c at the last timestep;
    'snr' (1 - c) / (1 + sigma)^2 + c, sigma the noise-to-signal ratio, so near 1 (squared error) at low noise
    and near c (robust) at high noise."""
    if schedule == "constant":
        return torch.full(timesteps.shape, c, device=timesteps.device)
    if schedule == "exponential":
        return torch.exp(math.log(c) / steps * timesteps.float())
    return (1 - c) / (1 + noise_to_signal.float()) ** 2 + c


def per_sample_error(prediction: torch.Tensor, target: torch.Tensor, kind: str = "l2",
                     thresholds: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> torch.Tensor:
    """Each sample's mean error over its pixels, in float32: squared ('l2'), or kohya's pseudo-Huber
    2c(sqrt(d^2 + c^2) - c) ('huber') and 2(sqrt(d^2 + c^2) - c) ('smooth-l1'), c per sample. `masks`
    (batch, 1, height, width) weighs each latent pixel before the mean, as kohya's masked loss does."""
    prediction, target = prediction.float(), target.float()
    dims = tuple(range(1, prediction.dim()))
    if kind == "l2":
        error = F.mse_loss(prediction, target, reduction="none")
    else:
        c = thresholds.float().view(-1, *[1] * len(dims))
        root = torch.sqrt((prediction - target) ** 2 + c ** 2) - c
        error = 2 * c * root if kind == "huber" else 2 * root
    return (error if masks is None else error * masks.float()).mean(dim=dims)


def ddpm_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None, kind: str = "l2",
              thresholds: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> torch.Tensor:
    """The denoising loss: mean squared error in float32 (bf16 MSE loses the small residuals late in training),
    or a pseudo-Huber one (`per_sample_error`), optionally weighted per sample and per latent pixel."""
    per_sample = per_sample_error(prediction, target, kind, thresholds, masks)
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).mean()


def loss_checks(c: Any) -> list[tuple[bool, str, str]]:
    """What a TrainConfig's --loss, --huber-c and --huber-schedule refuse: (holds, field, what to do instead), as
    config.validate lists them."""
    return [
        (c.loss in LOSSES, "loss", f"choose one of {', '.join(LOSSES)}"),
        (c.huber_c is None or 0 < c.huber_c <= 1, "huber_c", "the Huber threshold must be in (0, 1]; 0.1 is usual"),
        (c.huber_schedule is None or c.huber_schedule in HUBER_SCHEDULES, "huber_schedule",
         f"choose one of {', '.join(HUBER_SCHEDULES)}"),
        (c.loss != "l2" or (c.huber_c is None and c.huber_schedule is None),
         "huber_c" if c.huber_c is not None else "huber_schedule", "the Huber settings need --loss huber or smooth-l1"),
    ]
