"""Pretrain the miniature Stable Diffusion from a fixed seed, on the procedural world.

    python -m stylelora.mini.pretrain [--out stylelora/mini/weights] [--vae-steps N] [--unet-steps N]
                                      [--polish-steps N]

Three phases: the VAE learns to reconstruct the world's images; then the UNet and text
encoder learn to denoise its latents, with 10% caption dropout so classifier-free
guidance works; then a polish goes on at a lower learning rate on a balanced corpus (every
shape x colour x texture x palette x background equally often) while an exponential moving
average of the weights is kept, and the average is what is saved. Each phase's result is
kept in --work, so a stopped run picks up after the last finished phase. The weights are
saved in float16 in the diffusers layout.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel

from ..train.loss import ddpm_loss, min_snr_weights
from .architecture import DEFAULT, build_pipeline
from .world import NAME_RATE, corpus

WEIGHTS = Path(__file__).parent / "weights"
SNR_GAMMA = 5.0


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(vae: AutoencoderKL, images: torch.Tensor, steps: int, batch: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, 100, steps)
    vae.train()
    start = time.time()
    for step in range(steps):
        index = torch.randint(0, len(images), (batch,), generator=generator)
        posterior = vae.encode(images[index]).latent_dist
        reconstruction = vae.decode(posterior.sample(generator)).sample
        # L1 keeps flat colours and hard edges crisp; a small KL weight keeps the latent space
        # smooth without blurring the textures away.
        target = images[index]
        loss = (F.l1_loss(reconstruction, target) + F.mse_loss(reconstruction, target)
                + 1e-6 * posterior.kl().mean())
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            print(f"vae step {step}/{steps} loss {loss.item():.5f} {time.time() - start:.0f}s", flush=True)
    vae.eval()


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.encode(images[i : i + 256]).latent_dist.mode() for i in range(0, len(images), 256)])


def _denoiser_parameters(pipe: StableDiffusionPipeline) -> list[torch.nn.Parameter]:
    """What the denoising phases train (and the polish averages): the UNet's and the text encoder's weights."""
    return list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())


def train_denoiser(pipe: StableDiffusionPipeline, latents: torch.Tensor, captions: list[str], steps: int,
                   batch: int, seed: int, lr: float = 4e-4, warmup: int = 200, average: EMAModel | None = None,
                   label: str = "unet") -> None:
    generator = torch.Generator().manual_seed(seed)
    unet, text_encoder, scheduler = pipe.unet, pipe.text_encoder, pipe.scheduler
    tokens = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
    empty = pipe.tokenizer([""], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                           return_tensors="pt").input_ids
    params = _denoiser_parameters(pipe)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    schedule = get_cosine_schedule_with_warmup(optimizer, warmup, steps)
    unet.train()
    text_encoder.train()
    start = time.time()
    for step in range(steps):
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        ids = tokens[index].clone()
        dropped = torch.rand(batch, generator=generator) < 0.1  # caption dropout, for guidance
        ids[dropped] = empty
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, t), t, text_encoder(ids)[0]).sample
        # Min-SNR weighting: the texture and palette are decided at the noisier steps, where the
        # caption matters; the easy low-noise steps otherwise dominate the gradient.
        weights = min_snr_weights(t, scheduler.alphas_cumprod, SNR_GAMMA, "epsilon")
        loss = ddpm_loss(prediction, noise, weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if average is not None:
            average.step(params)
        if step % 50 == 0 or step == steps - 1:
            print(f"{label} step {step}/{steps} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    unet.eval()
    text_encoder.eval()


def _denoiser_phase(pipe: StableDiffusionPipeline, folder: Path, run) -> None:
    """Load the phase's saved UNet and text encoder from `folder`, or run it and save them there."""
    if (folder / "unet" / "config.json").exists():
        pipe.unet.load_state_dict(UNet2DConditionModel.from_pretrained(folder / "unet").state_dict())
        pipe.text_encoder.load_state_dict(CLIPTextModel.from_pretrained(folder / "text_encoder").state_dict())
        print(f"resumed from {folder}", flush=True)
        return
    run()
    pipe.unet.save_pretrained(folder / "unet")
    pipe.text_encoder.save_pretrained(folder / "text_encoder")


def polish(pipe: StableDiffusionPipeline, args: argparse.Namespace) -> None:
    """Go on at a lower learning rate on a balanced corpus, keeping an EMA of the weights, and leave the
    average in the pipeline (the last raw weights are kept in --work/polish-raw, to compare)."""
    images, captions, _ = corpus(args.images, seed=args.seed + 2, name_rate=args.name_rate, balanced=True)
    latents = encode_all(pipe.vae, _images_to_tensor(images)) * pipe.vae.config.scaling_factor
    params = _denoiser_parameters(pipe)
    average = EMAModel(params, decay=args.ema_decay)
    train_denoiser(pipe, latents, captions, args.polish_steps, batch=64, seed=args.seed + 3, lr=args.polish_lr,
                   warmup=100, average=average, label="polish")
    pipe.unet.save_pretrained(args.work / "polish-raw" / "unet")
    pipe.text_encoder.save_pretrained(args.work / "polish-raw" / "text_encoder")
    average.copy_to(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--work", type=Path, default=Path("mini-pretrain"))
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--unet-steps", type=int, default=3800)
    parser.add_argument("--polish-steps", type=int, default=2200)
    parser.add_argument("--polish-lr", type=float, default=1.5e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name-rate", type=float, default=NAME_RATE,
                        help="share of captions that name texture / palette")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    images, captions, _ = corpus(args.images, seed=args.seed, name_rate=args.name_rate)
    pixels = _images_to_tensor(images)
    pipe = build_pipeline(args.work / "init", DEFAULT, seed=args.seed)

    vae_dir = args.work / "vae"
    if (vae_dir / "config.json").exists():
        # Weights only: the saved config would otherwise carry this machine's work folder path.
        pipe.vae.load_state_dict(AutoencoderKL.from_pretrained(vae_dir).state_dict())
    else:
        train_vae(pipe.vae, pixels, args.vae_steps, batch=32, seed=args.seed)
        pipe.vae.save_pretrained(vae_dir)
    latents = encode_all(pipe.vae, pixels)
    # Unit-variance latents, as Stable Diffusion's 0.18215 does for its own VAE.
    pipe.vae.register_to_config(scaling_factor=float(1 / latents.std()))
    latents = latents * pipe.vae.config.scaling_factor
    print(f"latents {tuple(latents.shape)} scaling_factor {pipe.vae.config.scaling_factor:.4f}", flush=True)

    _denoiser_phase(pipe, args.work / "denoiser",
                    lambda: train_denoiser(pipe, latents, captions, args.unet_steps, batch=64, seed=args.seed + 1))
    if args.polish_steps:
        _denoiser_phase(pipe, args.work / "polish", lambda: polish(pipe, args))
    pipe.to(torch.float16).save_pretrained(args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
