"""The denoising objective. Pure functions of tensors: no models, no state."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def ddpm_loss(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in float32 (bf16 MSE loses the small residuals late in training),
    optionally weighted per sample."""
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights).mean()
