"""The built-in miniature model: installed in the diffusers layout, it draws its world, and an adapter
learns a style on it. Small samples and loose bounds; bench/style_report.py measures in earnest."""

from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline

from stylelora.base import MINI_WEIGHTS
from stylelora.config import TrainConfig
from stylelora.mini.evaluate import measure
from stylelora.styler import Styler
from stylelora.training import train

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not (MINI_WEIGHTS / "model_index.json").is_file(), reason="mini weights not built")


def test_mini_loads_like_any_diffusers_checkpoint_and_is_small():
    pipe = StableDiffusionPipeline.from_pretrained(MINI_WEIGHTS)
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and type(pipe.vae).__name__ == "AutoencoderKL"
    assert type(pipe.text_encoder).__name__ == "CLIPTextModel" and type(pipe.tokenizer).__name__ == "CLIPTokenizer"
    size = sum(p.stat().st_size for p in MINI_WEIGHTS.rglob("*") if p.is_file())
    assert size <= 25 * 2**20


@pytest.fixture(scope="module")
def mini_styler():
    return Styler("mini")


def test_mini_draws_the_named_colour_and_shape(mini_styler):
    mini_styler.set_weights({})
    rates = measure(mini_styler, per_prompt=2, steps=15)
    assert rates.images == 24
    assert rates.share("colour") >= 0.6, rates
    assert rates.share("shape") >= 0.4, rates


@pytest.mark.slow
def test_a_stripes_adapter_raises_the_striped_share(mini_styler, tmp_path):
    # Default settings (800 steps). bench/style_report.py measures all three styles on 96 images each
    # (striped 39% -> 94%, the widest gap); here 24 images and a loose bound.
    result = train(TrainConfig(data=ROOT / "datasets" / "stripes", out=tmp_path / "stripes.v1"),
                   progress_bar=False, log=lambda m: None)
    assert result.adapter_path == tmp_path / "stripes.v1" / "stripes.v1.safetensors"  # a dotted folder name is a folder
    mini_styler.set_weights({})
    before = measure(mini_styler, per_prompt=2, steps=15).share("striped")
    name = mini_styler.load(result.adapter_path)
    mini_styler.set_weights({name: 1.0})
    after = measure(mini_styler, per_prompt=2, steps=15)
    assert after.share("striped") >= before + 0.3, (before, after)
    assert after.share("colour") >= 0.6, after
