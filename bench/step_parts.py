"""Where a training step's time goes beyond its floor, part by part, timed side by side in one run (float32):

    python bench/step_parts.py              # the miniature base (64 px, batch 4)
    python bench/step_parts.py --sdxl 512   # the SDXL-shaped base at 512 px, batch 1 (about 15 minutes)

- floor: one forward and backward through the frozen denoiser, with gradients for its input only;
- LoRA, forward and backward: the same denoiser with peft's LoRA (rank 4) on the default targets (to_q, to_k, to_v,
  to_out.0), gradients for the LoRA weights only, no optimizer;
- LoRA on to_q and to_out.0 only: the same, without the LoRA on to_k and to_v, whose gradients are the only ones
  that run back through the cross-attention's keys and values;
- LoRA step: the LoRA forward and backward, clipping and the AdamW step (bench/training_bench.py's lora_step);
- ours: stylelora's own train() on four stripes images, the median time between steps.

Prints each as a ratio to the floor, and writes nothing. Measure alone: another CPU-heavy process skews every part.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from stylelora.adapters.in_model import attach_lora  # noqa: E402
from stylelora.families import family_of_pipe  # noqa: E402
from stylelora.model.allocator import keep_freed_memory  # noqa: E402
from stylelora.model.base import load_base  # noqa: E402
from stylelora.train.config import TrainConfig  # noqa: E402
from stylelora.train.loop import train  # noqa: E402
from stylelora.train.loss import ddpm_loss  # noqa: E402

from models import MINI, Base, sdxl  # noqa: E402
from training_bench import STRIPES, _inputs, _objective, _targets, floor_step, lora_step, timed  # noqa: E402


def lora_forward_backward(pipe, base: Base, targets: tuple[str, ...] | None = None):
    """peft's LoRA on `targets` (the family's default ones if None): forward, loss and backward, nothing else."""
    family, objective = family_of_pipe(pipe), _objective(pipe)
    denoiser = family.denoiser_of(pipe)
    attach_lora(denoiser, targets or _targets(pipe), 4, 4, 0.0)
    latents, text, t = _inputs(pipe, base.batch, base.resolution)
    noise = latents.clone().normal_()

    def step():
        noised = objective.noised(latents, noise, t)
        ddpm_loss(family.predict(denoiser, noised.noisy, t, text).float(), noised.target).backward()
        denoiser.zero_grad(set_to_none=True)

    return step


def our_step(base: Base, steps: int) -> float:
    """Median seconds between steps of train() on four stripes images, float32, leaving out the first two."""
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "four"
        data.mkdir()
        for image in sorted(STRIPES.glob("*.png"))[:4]:
            shutil.copy(image, data)
            shutil.copy(image.with_suffix(".txt"), data)
        train(TrainConfig(data=data, out=Path(work) / "out", base=base.spec, batch_size=base.batch,
                          resolution=base.resolution, max_steps=steps, precision="no"),
              on_progress=lambda p: stamps.append(time.perf_counter()), progress_bar=False, log=lambda m: None)
    return statistics.median(b - a for a, b in zip(stamps[2:], stamps[3:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdxl", type=int, metavar="PX", help="the SDXL-shaped base at PX pixels")
    args = parser.parse_args()
    base, repeats, steps = (sdxl(args.sdxl), 3, 8) if args.sdxl else (MINI, 20, 40)
    keep_freed_memory()  # as training runs (model/allocator.py)
    parts = {"floor": lambda: floor_step(load_base(base.spec), base),
             "LoRA, forward and backward": lambda: lora_forward_backward(load_base(base.spec), base),
             "LoRA on to_q and to_out.0 only": lambda: lora_forward_backward(load_base(base.spec), base,
                                                                             ("to_q", "to_out.0")),
             "LoRA step (with clipping and AdamW)": lambda: lora_step(load_base(base.spec), base)}
    seconds = {name: timed(build(), repeats) for name, build in parts.items()}
    seconds["ours"] = our_step(base, steps)
    print(f"{base.label}, {base.resolution} px, batch {base.batch}, float32, median of {repeats} (ours: of "
          f"{steps - 3} steps)")
    for name, value in seconds.items():
        print(f"  {name:40s} {value * 1000:9.1f} ms  {value / seconds['floor']:.3f} of the floor")


if __name__ == "__main__":
    main()
