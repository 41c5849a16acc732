"""The scores from the base alone: the style score (VAE encoder texture statistics) and the prompt score (the base
as a zero-shot classifier), on the miniature base and its sample folders."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from stylelora.data.folder import scan_folder
from stylelora.model.base import load_base
from stylelora.families import family_of_pipe
from stylelora.score.prompt import PromptJudge
from stylelora.score.style import StyleReference

DATASETS = Path(__file__).resolve().parent.parent / "datasets"


def _folder(style: str) -> tuple[list[Image.Image], list[str]]:
    examples = scan_folder(DATASETS / style).examples
    return [Image.open(e.path).convert("RGB") for e in examples], [e.caption for e in examples]


@pytest.fixture(scope="module")
def mini():
    return load_base("mini")


def test_the_style_score_is_one_on_the_training_images_and_lower_on_another_style(mini):
    stripes, _ = _folder("stripes")
    reference = StyleReference(mini.vae, stripes[0::2], 64)
    assert reference.score(stripes[0::2]) == 1.0  # each picture is its own nearest reference
    own, other = reference.score(stripes[1::2]), reference.score(_folder("pastel")[0][1::2])
    assert own == reference.score(stripes[1::2])  # deterministic: no noise, no sampling
    assert own > other


@pytest.mark.parametrize("statistic", ["gram", "moments"])
def test_each_style_s_held_out_pictures_are_nearest_their_own_folder(mini, statistic):
    """The measurement bench/score_probe.py made, kept: picture by picture at the encoder's last block, stripes,
    dots and pastel's odd images are each nearest their own folder's even images."""
    halves = {style: _folder(style)[0] for style in ("stripes", "dots", "pastel")}
    for style, images in halves.items():
        reference = StyleReference(mini.vae, images[0::2], 64, statistic)
        distances = {other: reference.distance(pictures[1::2]) for other, pictures in halves.items()}
        assert min(distances, key=distances.get) == style, distances


def test_a_statistic_that_does_not_exist_is_refused_naming_the_choices(mini):
    with pytest.raises(ValueError, match="choose one of gram, moments"):
        StyleReference(mini.vae, _folder("dots")[0][:2], 64, "fourier")


def test_the_base_classifies_its_own_folder_s_pictures_by_their_captions_the_same_each_time(mini):
    images, captions = _folder("stripes")
    judge = PromptJudge(mini, family_of_pipe(mini), captions)
    first = judge.score(images[:12], captions[:12], 64)
    assert first.pictures == 12 and first.accuracy >= 0.9  # measured: 12 of 12
    again = judge.score(images[:12], captions[:12], 64)
    assert (again.accuracy, again.probability) == (first.accuracy, first.probability)
    shuffled = captions[1:12] + captions[:1]  # each picture asked for the next one's prompt
    assert judge.score(images[:12], shuffled, 64).probability < first.probability


def test_the_error_under_some_prompts_is_the_error_under_all_of_them_taken_in_that_order(mini):
    images, captions = _folder("dots")
    judge = PromptJudge(mini, family_of_pipe(mini), captions)
    every = judge.errors(images[0], 64)
    chosen = [judge.candidates[3], judge.candidates[0]]
    assert torch.allclose(judge.errors(images[0], 64, chosen), every[[3, 0]], rtol=1e-5, atol=1e-7)
