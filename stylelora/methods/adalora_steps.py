"""AdaLoRA's work around each optimizer step: it reallocates its rank budget and adds its orthogonality penalty.
Their state is part of a checkpoint (`state_dict`), so a resumed run continues exactly."""

from __future__ import annotations

import weakref

import torch
from peft import AdaLoraConfig
from peft.tuners.adalora import AdaLoraModel

from .method import StepHooks

# The AdaLoRA tuner of each adapted model. diffusers' add_adapter keeps only the adapted model, but
# peft's update_and_allocate (the rank budget) lives on the tuner, so the tuner is built directly
# and kept here, beside the model, not inside it (a submodule pointing back at its parent would loop).
ADALORA_TUNERS: "weakref.WeakKeyDictionary[torch.nn.Module, AdaLoraModel]" = weakref.WeakKeyDictionary()


class AdaLoraSteps(StepHooks):
    """peft's AdaLoRA schedule (Zhang et al. 2023): after each optimizer step, update the importance scores
    and prune the least important singular values toward the target budget; the orthogonality penalty
    peft adds inside AdaLoraModel.forward is added to our loss here, since our loop calls the UNet itself."""

    def __init__(self, models: list[torch.nn.Module]):
        self.tuners = [ADALORA_TUNERS[model] for model in models]

    def extra_loss(self) -> torch.Tensor | float:
        total = 0.0
        for tuner in self.tuners:
            name = tuner.trainable_adapter_name
            weight = tuner.peft_config[name].orth_reg_weight
            penalties = []
            for parameter_name, p in tuner.model.named_parameters():
                if ("lora_A" in parameter_name or "lora_B" in parameter_name) and name in parameter_name:
                    covariance = p @ p.T if "lora_A" in parameter_name else p.T @ p
                    penalties.append(torch.linalg.matrix_norm(covariance - torch.eye(*covariance.shape)))
            if penalties:
                total = total + weight * torch.stack(penalties).mean()
        return total

    def after_optimizer_step(self, step: int) -> None:
        for tuner in self.tuners:
            tuner.update_and_allocate(step)

    def state_dict(self) -> dict:
        states = []
        for tuner in self.tuners:
            allocator = tuner.rankallocator
            config = tuner.peft_config[tuner.trainable_adapter_name]
            states.append({"ipt": allocator.ipt, "exp_avg_ipt": allocator.exp_avg_ipt,
                           "exp_avg_unc": allocator.exp_avg_unc, "rank_pattern": config.rank_pattern or {}})
        return {"adalora": states}

    def load_state_dict(self, state: dict) -> None:
        for tuner, saved in zip(self.tuners, state.get("adalora", [])):
            allocator = tuner.rankallocator
            allocator.ipt, allocator.exp_avg_ipt, allocator.exp_avg_unc = (
                dict(saved["ipt"]), dict(saved["exp_avg_ipt"]), dict(saved["exp_avg_unc"]))
            tuner.peft_config[tuner.trainable_adapter_name].rank_pattern = dict(saved["rank_pattern"]) or None


def adalora_config(rank: int, target_rank: int, alpha: float, targets: tuple[str, ...], total_steps: int) -> AdaLoraConfig:
    """AdaLoRA from --rank (the initial rank) down to --target-rank on average: budget held for the first
    tenth of the run, pruned every 10 steps until the last fifth, then fixed (the paper's three phases)."""
    tinit, tfinal = total_steps // 10, total_steps // 5
    if tinit + tfinal >= total_steps:
        tinit = tfinal = 0
    return AdaLoraConfig(init_r=rank, target_r=target_rank, lora_alpha=alpha, target_modules=list(targets),
                         total_step=total_steps, tinit=tinit, tfinal=tfinal, deltaT=10, init_lora_weights=True)
