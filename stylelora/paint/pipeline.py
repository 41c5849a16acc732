"""What every painting does around a loaded pipeline, written once: the device and
dtype, an adapter file read for this base (checked to fit, as plain LoRA), the sampler, the size, one generator per
image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapters.formats import LoraWeights, read_lora
from ..adapters.merge import MERGE_RULES
from ..adapters.stack import plain_lora
from ..errors import ConfigError
from ..families import Family, architecture_of_weights, check_fits, family_of_weights
from ..model.precision import check_bf16_runs
from .multilora import Stack

# merge, switch and composite; then the merge rules, merged once per stack and fused (paint/sparse_blend.py)
BLENDS = ("merge", "switch", "composite", *MERGE_RULES)
# The samplers by --scheduler name: diffusers' class and its options (the class is looked up when used, so the
# option declarations that list these names stay light).
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
}


@dataclass(frozen=True)
class AdapterForBase:
    """An adapter file read for one base: its modules as plain LoRA at scale 1, how many modules the file has,
    and the words that say what it was made for (for the errors that refuse it)."""

    plain: LoraWeights
    modules: int
    made_for: str


def painting_device(device: str | None, dtype: torch.dtype | None) -> tuple[str, torch.dtype]:
    """Where and in what to paint when not told: CUDA in float16 if there is one, else the CPU in float32. A
    CPU that lists bf16 but dies on it gets a message for bfloat16, not SIGILL (Styler and the server)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.float16 if device == "cuda" else torch.float32)
    if dtype == torch.bfloat16 and torch.device(device).type == "cpu":
        check_bf16_runs()
    return device, dtype


def read_for_base(path: Path, base: str, family: Family, models: dict[str, torch.nn.Module]) -> AdapterForBase:
    """Read an adapter file (any layout; pickles and damaged files refused), refuse one made for another family,
    and convert it to plain LoRA against this base's weights (a DoRA change depends on them)."""
    weights, metadata, _ = read_lora(path)
    check_fits(path, family_of_weights(weights, metadata), base, family)
    made_for = f"made for {architecture_of_weights(weights, metadata)}, but base {base!r} is {family.label}"
    return AdapterForBase(plain_lora(weights, models, Path(path), made_for), len(weights), made_for)


def check_sampler_and_blend(scheduler: str, blend: str) -> None:
    if scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler {scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if blend not in BLENDS:
        raise ConfigError(f"--blend {blend!r}: choose one of {', '.join(BLENDS)}")


# The samplers of a flow-matching base (SD3.x): its own Euler, and DPM-Solver++ over flow sigmas.
FLOW_SCHEDULERS = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                              "use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
}


def use_scheduler(pipe, name: str, flow_config=None) -> None:
    """Swap the pipeline's sampler for `name`, built from its own scheduler config; for a flow-matching base, the
    flow form of it, built from `flow_config` (the base's own scheduler config, its shift carried over)."""
    import diffusers

    if flow_config is None:
        kind, options = SCHEDULERS[name]
        pipe.scheduler = getattr(diffusers, kind).from_config(pipe.scheduler.config, **options)
        return
    if name not in FLOW_SCHEDULERS:
        raise ConfigError(f"--scheduler {name!r} has no flow-matching form; this base paints with "
                          f"{' or '.join(FLOW_SCHEDULERS)}")
    kind, options = FLOW_SCHEDULERS[name]
    shift = {"flow_shift": flow_config.get("shift", 1.0)} if kind != "FlowMatchEulerDiscreteScheduler" else {}
    pipe.scheduler = getattr(diffusers, kind).from_config(flow_config, **options, **shift)


def image_size(width: int | None, height: int | None, size: int | None, native: int) -> tuple[int, int]:
    """(width, height): each as given, else the square `size`, else the base's native side."""
    return width or size or native, height or size or native


def generators(seed: int, count: int) -> list[torch.Generator]:
    """One generator per image: image i is reproduced alone by seed + i."""
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def blend_passes(samples: list[Stack], blend: str, call: int) -> tuple[list[list[Stack]], list[int]]:
    """The blends, once for both painters: the rows' stacks for each UNet pass of call number `call`, and how many
    passes count for each row. merge: one pass, each row its whole stack; switch: one adapter of each row's stack,
    in turn per call; composite: one pass per adapter, averaged (Zhong et al. 2024, Multi-LoRA Composition)."""
    if blend == "switch":
        return [[(s[call % len(s)],) if len(s) > 1 else s for s in samples]], [1] * len(samples)
    if blend == "composite":
        width = max(max(len(s) for s in samples), 1)
        passes = [[(s[k],) if k < len(s) and len(s) > 1 else s for s in samples] for k in range(width)]
        return passes, [max(len(s), 1) if len(s) > 1 else 1 for s in samples]
    return [samples], [1] * len(samples)


def average_outputs(outputs: list, counts: list[int]):
    """Each row's mean over the passes that count for it (`counts` per row of the batch). Guidance is linear in the
    UNet output, so averaging raw outputs equals averaging each adapter's guided prediction."""
    first = outputs[0]
    tensors = [o[0] if isinstance(o, tuple) else o.sample for o in outputs]
    shape = (len(counts),) + (1,) * (tensors[0].dim() - 1)
    total = 0
    for k, tensor in enumerate(tensors):
        counted = torch.tensor([float(k < n) for n in counts], dtype=tensor.dtype).view(shape)
        total = total + tensor * counted
    mean = total / torch.tensor(counts, dtype=tensors[0].dtype).view(shape)
    if isinstance(first, tuple):
        return (mean,)
    first.sample = mean
    return first
