"""The one painter: one loaded base, its adapters by name, and `paint`, which renders a batch of requests in one
pipeline call, each request with its own adapter stack, prompt, negative and seed. The server calls it directly; the
CLI, the UI, grids, merges and tuning call it through `Styler`, its front for one stack at a time."""

from __future__ import annotations

import copy
import itertools
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from PIL import Image

from ..errors import AdapterFileError, ConfigError
from ..families import family_of_pipe
from ..model.base import load_base
from .multilora import ModuleLora, MultiLora, Stack
from .pipeline import (average_outputs, blend_passes, generators, image_size, painting_device, read_for_base,
                       use_scheduler)
from .peft_view import PeftView
from .pool import AdapterPool, AdapterTensors
from .request import GenerateConfig
from .sparse_blend import blended_stack


@dataclass
class PaintJob:
    """One request: its settings (the same config `stylelora generate` takes) and its adapter stack by name."""

    config: GenerateConfig
    stack: Stack

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one pipeline call: the same steps, guidance, sampler and size."""
        c = self.config
        return c.steps, c.cfg, c.scheduler, c.width, c.height, c.blend if len(self.stack) > 1 else "merge"


@dataclass
class SwitchTimes:
    """How long making each batch's adapters active took (fusing a stack, or binding the rows' stacks)."""

    seconds: list[float]
    count: int = 0


class Engine:
    """Paint with one base and any of the adapters in `folder` (or added by name), many per batch."""

    def __init__(self, base: str = "mini", folder: Path | None = Path("adapters"), device: str | None = None,
                 dtype: torch.dtype | None = None, quantize: str = "none", max_resident: int | None = None,
                 max_bytes: int | None = None):
        device, dtype = painting_device(device, dtype)
        self.base, self.quantize, self.dtype = base, quantize, dtype
        self.pipe = load_base(base, dtype=dtype, device=device, quantize=quantize)
        self.family = family_of_pipe(self.pipe)
        self.flow_config = self.pipe.scheduler.config if self.family.flow_matching else None  # before any swap
        self.lora = MultiLora(self.family.models(self.pipe))
        self.pool = AdapterPool(folder, self.read_adapter, max_resident, max_bytes)
        self.peft = PeftView(self.pipe, self.family)
        self.switches = SwitchTimes([])
        self._painting = threading.Lock()  # one batch at a time: they share the base's weights
        self._counting = threading.Lock()
        self._counter = None  # the tokenizer copy tokens_over counts with
        self.cores = None  # a CoreShare the server takes: looked at again before each batch

    @property
    def native_size(self) -> int:
        return self.family.native_size(self.pipe)

    @property
    def prompt_limit(self) -> int:
        return getattr(self.pipe, self.family.text_encoders[0].tokenizer).model_max_length

    def tokens_over(self, prompt: str) -> int:
        """How many tokens of `prompt` the text encoder cuts off (0 if it fits). Counted with a copy of the
        tokenizer: a fast (Rust) tokenizer used by two threads at once fails ("Already borrowed"), and the
        painting thread uses the pipeline's own."""
        with self._counting:
            if self._counter is None:
                self._counter = copy.deepcopy(getattr(self.pipe, self.family.text_encoders[0].tokenizer))
            return max(0, len(self._counter(prompt).input_ids) - self._counter.model_max_length)

    def read_adapter(self, path: Path) -> AdapterTensors:
        """An adapter file as plain LoRA tensors in the base's dtype, checked to fit the base module by module
        (refused with a one-line AdapterFileError otherwise: a module the base lacks, or one of another shape)."""
        read = read_for_base(path, self.base, self.family, self.lora.models)
        made_for = read.made_for
        present = sum(self.lora.layer(key) is not None for key in read.plain)
        if present < read.modules:
            # A partial match would paint a quietly different style: refuse it and say so.
            raise AdapterFileError(f"{path}: only {present} of its {read.modules} modules exist in this base, so it "
                                   f"does not fit this base: {made_for}")
        tensors: AdapterTensors = {}
        for key, adapter in read.plain.items():
            layer = self.lora.layer(key)
            if not _fits(layer, adapter.down, adapter.up):
                raise AdapterFileError(f"{path}: module {key[1]} does not fit this base; {made_for}")
            # A layer without a bias has none to change: as ComfyUI applies diff_b, and as fusing does.
            has_bias = getattr(layer, "bias", None) is not None
            bias = adapter.bias.to(self.dtype) if adapter.bias is not None and has_bias else None
            tensors[key] = ModuleLora(adapter.down.to(self.dtype).contiguous(), adapter.up.to(self.dtype).contiguous(), bias)
        return tensors

    def add(self, name: str, path: Path) -> None:
        """Paint the file at `path` under `name`; read and checked now (AdapterFileError if it does not fit)."""
        self.pool.pin(name, path)
        try:
            self.pool.get(name)
        except BaseException:
            self.pool.forget(name)
            raise

    def remove(self, name: str) -> None:
        with self._painting:
            if any(n == name for n, _ in self.lora.fused_stack or ()):
                self.lora.unfuse()
            self.peft.forget(name)
            self.pool.forget(name)

    def adapters(self, stack: Stack) -> dict[str, AdapterTensors]:
        self.check_weights([stack])
        names = [name for name, _ in stack]
        return {name: self.pool.get(name, keep=names).modules for name in names}

    def check_weights(self, stacks: list[Stack]) -> None:
        """Refuse per-block weights on a base without UNet blocks, where they would silently apply nowhere."""
        if not self.family.unet_blocks and any(weight and weight.blocks for stack in stacks for _, weight in stack):
            raise ConfigError(f"per-block weights (down=, mid=, up=) name UNet blocks, and {self.family.label} has "
                              "none; give one weight, or unet= and te=")

    def show(self, stack: Stack) -> None:
        """Between paintings, let the models' own forward add `stack`, unfused, at peft's exact scales (a Styler's
        model is probed, judged and compared so). Every adapter added by name is handed to peft, so its layers
        stay the same objects from the first load on. The base's weights are put back first, exactly."""
        with self._painting:
            self.lora.unfuse()
            self.lora.unbind()
            named = tuple((name, None) for name in self.pool.pinned if all(name != n for n, _ in stack))
            self.peft.show(stack, self.adapters(stack + named))

    def fuse(self, stack: Stack) -> None:
        """Add `stack` into the base's weights (not over a quantized base: a change added to NF4, int8 or fp8
        weights would round away, so there the adapters stay separate float paths)."""
        if self.quantize != "none":
            return
        with self._painting:
            self.peft.off()
            self.lora.fuse(stack, self.adapters(stack))

    @property
    def fused(self) -> bool:
        """Whether a stack with adapters is added into the base's weights now."""
        return bool(self.lora.fused_stack)

    @torch.no_grad()
    def paint(self, jobs: list[PaintJob], output_type: str = "pil") -> list[list[Image.Image]]:
        """Render every job in one pipeline call (their batch keys must be equal); the images of each job."""
        with self._painting:
            if self.cores is not None:
                self.cores.refresh()  # another stylelora process started or ended: take this one's share
            jobs = [self._merged_by_rule(job) for job in jobs]
            first = jobs[0].config
            self.check_weights([job.stack for job in jobs])
            self.peft.off()  # the stacks are added by the engine's hooks, or fused, from here on
            names = list(dict.fromkeys(name for job in jobs for name, _ in job.stack))
            adapters = {name: self.pool.get(name, keep=names).modules for name in names}
            for modules in adapters.values():
                self.lora.attach(modules)
            samples = [job.stack for job in jobs for _ in range(job.config.count)]
            fused = self.quantize == "none" and len(set(samples)) == 1 and (first.blend == "merge" or len(samples[0]) < 2)
            if fused:
                self._make_active(samples[0], samples, first, adapters)
            else:
                self.lora.unfuse()  # the text encoders too, before they encode with each job's own stack
            embeds = [self._encode(job, adapters, fused) for job in jobs]
            if not fused:
                self._make_active(None, samples, first, adapters)
            # The job's sampler for this call only: a pipe shared with another painter (the preview scorer paints
            # with the pipe's own sampler) is left as it was found, so what it paints does not depend on this call.
            sampler = self.pipe.scheduler
            use_scheduler(self.pipe, first.scheduler, self.flow_config)
            seeded = [g for job in jobs for g in generators(job.config.seed, job.config.count)]
            width, height = image_size(first.width, first.height, first.size, self.native_size)
            try:
                with self._rows(None if fused else samples, first.blend, adapters):
                    images = self.pipe(**_joined(embeds), num_inference_steps=first.steps, guidance_scale=first.cfg,
                                       generator=seeded, height=height, width=width, output_type=output_type).images
            finally:
                self.pipe.scheduler = sampler
        bounds = list(itertools.accumulate(job.config.count for job in jobs))
        return [list(images[end - job.config.count:end]) for job, end in zip(jobs, bounds)]

    def _merged_by_rule(self, job: PaintJob) -> PaintJob:
        """A job whose stack blends by a merge rule (ties, dare-*, magnitude-prune, klora): one merged adapter, fused."""
        stack = blended_stack(job.stack, job.config.blend, job.config.blend_density, self.pool.path_of,
                              lambda path: read_for_base(path, self.base, self.family, self.lora.models).plain,
                              self.pool.pin)
        return job if stack is job.stack else PaintJob(replace(job.config, blend="merge"), stack)

    def _make_active(self, stack: Stack | None, samples: list[Stack], first: GenerateConfig,
                     adapters: dict[str, AdapterTensors]) -> None:
        """Fuse `stack` into the base, or (None) unfuse and bind each UNet row its sample's stack: timed as a
        switch. The first UNet call then finds its rows bound already."""
        start = time.perf_counter()
        if stack is not None:
            if stack == self.lora.fused_stack:
                return  # already this stack: nothing to switch
            self.lora.fuse(stack, adapters)
        else:
            self.lora.unfuse()
            rows = blend_passes(samples, first.blend, 0)[0][0]
            self.lora.bind(rows * (2 if self._guided(first) else 1), adapters, parts={"unet"})
        self.switches.count += 1
        self.switches.seconds.append(time.perf_counter() - start)
        del self.switches.seconds[:-1000]

    def _guided(self, config: GenerateConfig) -> bool:
        """Whether the pipeline runs classifier-free guidance (a negative row per sample), as it decides."""
        return self.family.guided(self.pipe, config.cfg)

    def _encode(self, job: PaintJob, adapters: dict[str, AdapterTensors], fused: bool) -> dict:
        """The job's prompt embeddings, through text encoders carrying its own stack (fused, or bound)."""
        c = job.config
        if not fused:
            self.lora.bind([job.stack], adapters, parts=set(self.lora.models) - {"unet"})
        try:
            return self.family.paint_embeddings(self.pipe, c.prompt, c.negative, c.count, self._guided(c))
        finally:
            self.lora.unbind()

    @contextmanager
    def _rows(self, samples: list[Stack] | None, blend: str, adapters: dict[str, AdapterTensors]):
        """While the pipeline runs, the UNet's forward is `blend_forward`'s."""
        if samples is None:
            yield
            return
        denoiser = self.family.denoiser_of(self.pipe)
        denoiser.forward = self.blend_forward(samples, blend, adapters)
        try:
            yield
        finally:
            del denoiser.forward  # back to the class's own forward
            self.lora.unbind()

    def blend_forward(self, samples: list[Stack], blend: str, adapters: dict[str, AdapterTensors]):
        """A UNet forward that binds each row its sample's stack ('merge'), or one adapter of it per step in turn
        ('switch'), or each adapter in its own pass, the passes averaged ('composite')."""
        for modules in adapters.values():
            self.lora.attach(modules)  # (paint attached them already; a Styler's caller may not have)
        denoiser = self.family.denoiser_of(self.pipe)
        original = type(denoiser).forward
        calls = itertools.count()

        def forward(*args, **kwargs):
            self.peft.off()
            sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
            repeat = sample.shape[0] // len(samples)  # 2 under classifier-free guidance: negatives, then prompts
            passes, counts = blend_passes(samples, blend, next(calls))
            outputs = []
            for rows in passes:
                self.lora.bind(rows * repeat, adapters, parts={"unet"})
                outputs.append(original(denoiser, *args, **kwargs))
            if len(outputs) == 1:
                return outputs[0]
            return average_outputs(outputs, counts * repeat)

        return forward

    def close(self) -> None:
        self.pool.close()


def _joined(embeds: list[dict]) -> dict:
    """The jobs' embeddings as one batch (None stays None: no negatives without guidance)."""
    return {key: None if embeds[0][key] is None else torch.cat([e[key] for e in embeds]) for key in embeds[0]}


def _fits(layer: torch.nn.Module, down: torch.Tensor, up: torch.Tensor) -> bool:
    if down.dim() == 4:
        return (isinstance(layer, torch.nn.Conv2d) and layer.groups == 1 and down.shape[1] == layer.in_channels
                and tuple(down.shape[2:]) == tuple(layer.kernel_size) and up.shape[0] == layer.out_channels)
    return getattr(layer, "in_features", None) == down.shape[1] and getattr(layer, "out_features", None) == up.shape[0]
