"""Benchmarks: training step cost against its physical floor and a naive loop, and stacked-adapter generation.

    python bench/run.py --quick      # a few minutes here
    python bench/run.py              # more repeats, and the SD1.5-shaped UNet in every section

Everything is a ratio taken side by side in one run: absolute times on shared machines are noise.
Writes bench/results/benchmarks.md and bench/results/*.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stylelora.adapter import attach_lora  # noqa: E402
from stylelora.base import load_base  # noqa: E402
from stylelora.config import UNET_TARGETS, TrainConfig  # noqa: E402
from stylelora.data import load_rgb, preprocess, scan_folder  # noqa: E402
from stylelora.loss import ddpm_loss  # noqa: E402
from stylelora.training import train  # noqa: E402

RESULTS = ROOT / "bench" / "results"
STRIPES = ROOT / "datasets" / "stripes"


def timed(fn, repeats: int, warmup: int = 1) -> float:
    """Median seconds of `fn()` over `repeats` runs, after `warmup` unmeasured runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def sd15_pipeline(folder: Path) -> Path:
    """Stable Diffusion 1.5's UNet, VAE and text-encoder shapes with random weights, saved once."""
    if (folder / "model_index.json").is_file():
        return folder
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from stylelora.mini.architecture import build_scheduler
    from stylelora.mini.tokenizer import write_tokenizer
    from stylelora.mini.world import WORDS

    torch.manual_seed(0)
    tokenizer = write_tokenizer(folder / "tokenizer", WORDS, max_length=77)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
                                        pad_token_id=len(tokenizer) - 1))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=build_scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder)
    return folder


def floor_step(pipe, batch: int, resolution: int):
    """One forward and one backward (input gradients only) through the frozen UNet: a LoRA step's floor."""
    unet = pipe.unet.requires_grad_(False)
    side = resolution // pipe.vae_scale_factor
    latents = torch.randn(batch, 4, side, side, requires_grad=True)
    text = torch.randn(batch, pipe.tokenizer.model_max_length, unet.config.cross_attention_dim)
    t = torch.randint(0, 1000, (batch,))

    def step():
        latents.grad = None
        unet(latents, t, text).sample.float().pow(2).mean().backward()

    return step


def naive_step(pipe, images: list, batch: int, resolution: int, rank: int):
    """A loop like the diffusers example script's: VAE encode and text encoder every step, nothing cached."""
    attach_lora(pipe.unet, UNET_TARGETS, rank, rank, 0.0, adapter_name="naive")
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    pixels = torch.stack([preprocess(load_rgb(p), resolution, False, False) for p in images[:batch]])
    ids = pipe.tokenizer(["a red circle"] * batch, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids

    def step():
        with torch.no_grad():
            latents = pipe.vae.encode(pixels).latent_dist.sample() * pipe.vae.config.scaling_factor
            text = pipe.text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,))
        loss = ddpm_loss(pipe.unet(pipe.scheduler.add_noise(latents, noise, t), t, text).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def our_step_seconds(base: str, batch: int, resolution: int | None, steps: int, **options) -> float:
    """Median time between steps of stylelora's own train(), after the first two."""
    stamps = []
    with tempfile.TemporaryDirectory() as out:
        train(TrainConfig(data=STRIPES, out=Path(out), base=base, batch_size=batch, resolution=resolution,
                          max_steps=steps, **options),
              on_progress=lambda p: stamps.append(time.perf_counter()), progress_bar=False, log=lambda m: None)
    gaps = [b - a for a, b in zip(stamps[2:], stamps[3:])]
    return statistics.median(gaps)


def training_section(base: str, label: str, batch: int, resolution: int, steps: int, repeats: int) -> list[str]:
    images = [e.path for e in scan_folder(STRIPES).examples]
    pipe = load_base(base)
    floor = timed(floor_step(pipe, batch, resolution), repeats)
    naive = timed(naive_step(pipe, images, batch, resolution, 4), repeats)
    del pipe
    ours = our_step_seconds(base, batch, resolution, steps)
    return [f"| {label} | {resolution}px, batch {batch} | {ours / floor:.2f} | {naive / ours:.2f} |"]


def scaling_section(steps: int) -> list[str]:
    rows = ["", "| mini: step time relative to batch 1, rank 4 | 1 | 2 | 4 |", "| --- | --- | --- | --- |"]
    base = our_step_seconds("mini", 1, None, steps)
    rows.append("| batch size | 1.00 | " + " | ".join(f"{our_step_seconds('mini', b, None, steps) / base:.2f}" for b in (2, 4)) + " |")
    rows += ["", "| mini, batch 4: step time relative to rank 4 | 4 | 16 | 64 |", "| --- | --- | --- | --- |"]
    rank4 = our_step_seconds("mini", 4, None, steps, rank=4)
    rows.append("| rank | 1.00 | " + " | ".join(f"{our_step_seconds('mini', 4, None, steps, rank=r) / rank4:.2f}" for r in (16, 64)) + " |")
    rows += ["", "| mini, batch 4: option on the CPU | step time vs default |", "| --- | --- |"]
    default = our_step_seconds("mini", 4, None, steps)
    for label, options in (("bf16 autocast", {"precision": "bf16"}), ("gradient checkpointing", {"gradient_checkpointing": True})):
        rows.append(f"| {label} | {our_step_seconds('mini', 4, None, steps, **options) / default:.2f} |")
    return rows


def generation_section(repeats: int) -> list[str]:
    """One denoising step of the mini UNet with stacked adapters, unfused and fused."""
    from stylelora.styler import Styler

    styler = Styler("mini")
    with tempfile.TemporaryDirectory() as folder:
        first = Path(folder) / "a0.safetensors"
        train(TrainConfig(data=STRIPES, out=first, max_steps=2), progress_bar=False, log=lambda m: None)
        paths = [first] + [Path(folder) / f"a{i}.safetensors" for i in range(1, 20)]
        for path in paths[1:]:
            path.write_bytes(first.read_bytes())
        unet = styler.pipe.unet
        side = unet.config.sample_size
        x, text = torch.randn(2, 4, side, side), torch.randn(2, styler.pipe.tokenizer.model_max_length, unet.config.cross_attention_dim)

        def one_step():
            with torch.no_grad():
                unet(x, torch.tensor([500, 500]), text)

        base = timed(one_step, repeats, warmup=3)
        rows = ["", "| generation, mini UNet step (CFG batch 2) | unfused / base | fused / base |", "| --- | --- | --- |"]
        start = time.perf_counter()
        names = [styler.load(p) for p in paths[:5]]
        load_seconds = (time.perf_counter() - start) / 5
        for n in (1, 3, 5):
            styler.set_weights({name: 0.5 for name in names[:n]})
            unfused = timed(one_step, repeats, warmup=2)
            styler.fuse()
            fused = timed(one_step, repeats, warmup=2)
            rows.append(f"| {n} adapter(s) | {unfused / base:.2f} | {fused / base:.2f} |")
        start = time.perf_counter()
        for w in (0.1, 0.2, 0.3):
            styler.set_weights({name: w for name in names})
            styler.fuse()
        reweight = (time.perf_counter() - start) / 3
        styler.set_weights({names[0]: 1.0, names[1]: 1.0})
        two_loaded = timed(one_step, repeats, warmup=2)
        names += [styler.load(p) for p in paths[5:]]
        styler.set_weights({names[0]: 1.0, names[1]: 1.0})
        twenty_loaded = timed(one_step, repeats, warmup=2)
        rows += ["", f"- Reweighting a 5-adapter stack (unfuse, set, fuse): {reweight * 1000:.0f} ms on the mini UNet.",
                 f"- Loading an adapter: {load_seconds * 1000:.0f} ms.",
                 f"- 20 adapters loaded, 2 active (unfused), against 2 loaded: {twenty_loaded / two_loaded:.2f}x."]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-sd15", action="store_true", help="leave out the SD1.5-shaped UNet")
    args = parser.parse_args()
    repeats, steps = (3, 8) if args.quick else (7, 20)
    torch.manual_seed(0)
    lines = ["| training base | size | our step / floor (target <= 1.10) | naive step / ours (target >= 1.4) |",
             "| --- | --- | --- | --- |"]
    lines += training_section("mini", "miniature", 4, 64, steps, repeats)
    if not args.skip_sd15:
        folder = sd15_pipeline(Path(tempfile.gettempdir()) / "stylelora-bench-sd15")
        lines += training_section(str(folder), "SD1.5-shaped UNet", 1, 256, max(6, steps // 2), max(2, repeats // 2))
    lines += scaling_section(steps)
    lines += generation_section(repeats * 5)
    header = f"Measured by `python bench/run.py{' --quick' if args.quick else ''}` on {torch.get_num_threads()} CPU threads.\n\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "benchmarks.md").write_text(header + "\n".join(lines) + "\n")
    print(header + "\n".join(lines))


if __name__ == "__main__":
    main()
