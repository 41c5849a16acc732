"""DyLoRA (Valipour et al. 2023): one run trains every rank up to --rank; the file holds --export-rank of them
as plain LoRA at that rank's scale (dylora_layer.py has the layer, the rank draw and the scale)."""

from __future__ import annotations

import math
from typing import Any

from .method import Method, StepHooks


class DyloraMethod(Method):
    def export_rank(self, config: Any) -> int:
        return config.export_rank or config.rank

    def file_rank(self, config: Any) -> int:
        return self.export_rank(config)

    def file_alpha(self, config: Any) -> float:
        """Exported at rank k with alpha*sqrt(k/rank): its trained scale at k (dylora_layer.dylora_scale)."""
        return config.effective_alpha * math.sqrt(self.export_rank(config) / config.rank)

    def network_args(self, config: Any) -> dict[str, str]:
        return {"unit": "1"}  # kohya's networks.dylora: one component per step

    def metadata(self, config: Any, spec) -> dict[str, Any]:
        return {"stylelora.export_rank": self.export_rank(config)}

    def truncates_on_resize(self) -> bool:
        return True  # every truncation of a DyLoRA is a trained adapter of its own

    def after_attach(self, model, adapter_name: str) -> None:
        from .dylora_layer import make_dylora

        make_dylora(model, adapter_name)

    def step_hooks(self, models: list, seed: int, rank: int) -> StepHooks:
        from .dylora_layer import DyLoraSteps

        return DyLoraSteps(models, seed, rank)


DYLORA = DyloraMethod("dylora", "DyLoRA", network_module="networks.dylora", quantized_bases=("nf4", "int8", "fp8"),
                      own_option="export_rank", own_option_fix="only --method dylora trains every rank at once; for "
                      "other methods use `stylelora resize FILE --rank R` after training",
                      own_option_range_fix="DyLoRA trains ranks 1 to --rank {rank}: export one of those")
