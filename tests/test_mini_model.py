"""The built-in miniature model: installed in the diffusers layout, it draws its world, and an adapter
learns a style on it. Small samples and loose bounds; bench/style_report.py measures in earnest."""

from pathlib import Path

import pytest
from diffusers import StableDiffusionPipeline

from stylelora.mini.evaluate import measure
from stylelora.model.base import MINI_WEIGHTS
from stylelora.paint.styler import Styler
from stylelora.train.config import TrainConfig
from stylelora.train.loop import train

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


def train_briefly(style: str, out: Path) -> Path:
    config = TrainConfig(data=ROOT / "datasets" / style, out=out, max_steps=300)
    return train(config, progress_bar=False, log=lambda m: None).adapter_path


def shares(styler: Styler, weights: dict[str, float]) -> tuple[float, float, float]:
    styler.set_weights(weights)
    rates = measure(styler, per_prompt=2, steps=15)
    return rates.share("striped"), rates.share("pastel"), rates.share("colour")


@pytest.mark.slow
def test_style_adapters_pull_their_style_out_and_blend(mini_styler, tmp_path):
    # Default settings but 300 steps each, of the mini's 400, to keep the suite short. bench/style_report.py
    # measures the defaults on 96 images per setting (docs/guides/mini.md); here 24 images, fixed seeds, and loose
    # bounds.
    stripes_path = train_briefly("stripes", tmp_path / "stripes.v1")
    assert stripes_path == tmp_path / "stripes.v1" / "stripes.v1.safetensors"  # a dotted folder name is a folder
    stripes, pastel = mini_styler.load(stripes_path), mini_styler.load(train_briefly("pastel", tmp_path / "pastel"))

    base = shares(mini_styler, {})
    only_pastel = shares(mini_styler, {pastel: 1.0})  # stripes weight w = 0
    half = shares(mini_styler, {stripes: 0.5, pastel: 0.5})
    only_stripes = shares(mini_styler, {stripes: 1.0})  # w = 1
    assert only_stripes[0] >= base[0] + 0.3 and only_pastel[1] >= base[1] + 0.2, (base, only_stripes, only_pastel)
    assert only_pastel[0] < half[0] < only_stripes[0], (only_pastel, half, only_stripes)  # striped rises with w
    assert only_pastel[1] > half[1] > only_stripes[1], (only_pastel, half, only_stripes)  # pastel falls with w
    assert half[0] > base[0] and half[1] > base[1], (base, half)  # at w = 0.5 both above the base
    assert min(only_stripes[2], only_pastel[2], half[2]) >= 0.6, (only_stripes, only_pastel, half)
