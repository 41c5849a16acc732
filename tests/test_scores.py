"""The scores from the base alone: the style score (VAE encoder texture statistics) and the prompt score (the base
as a zero-shot classifier), on the miniature base and its sample folders."""

import json
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


@pytest.mark.parametrize("statistic", ["high-pass", "gram"])
def test_the_paired_style_scores_are_zero_for_the_base_s_own_pictures_and_one_for_the_training_images(mini, statistic):
    stripes, pastel = _folder("stripes")[0][:6], _folder("pastel")[0][:6]  # pastel stands for the base's pictures
    reference = StyleReference(mini.vae, stripes, 64, statistic, depths=(0, 2))
    base = reference.statistics(pastel)
    assert reference.shift(pastel, base) == 0.0 and reference.gain(pastel, base) == 0.0
    # the training images themselves: the whole way along the line, and at distance 0 from their nearest
    assert reference.shift(stripes, base) == pytest.approx(1.0, abs=1e-5)
    assert reference.gain(stripes, base) == 1.0
    others = _folder("stripes")[0][6:12]
    assert reference.shift(others, base) == reference.shift(others, base)  # deterministic: no noise, no sampling


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


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    """A randomly initialised CLIP (32 px, 32 wide) saved with its tokenizer and image processor: what a user's
    local CLIP folder holds, built here so nothing is downloaded."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from stylelora.mini.tokenizer import write_tokenizer
    from stylelora.mini.world import COLOURS, SHAPES

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = write_tokenizer(folder, [*COLOURS, *SHAPES, "a"])
    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(text_config=tower | dict(vocab_size=tokenizer.vocab_size, max_position_embeddings=77),
                        vision_config=tower | dict(image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_a_local_clip_scores_the_same_two_things_deterministically(tiny_clip):
    from stylelora.score.clip import ClipScorer

    images, captions = _folder("dots")
    scorer = ClipScorer(tiny_clip)
    _assert_style_is_one_on_the_references_and_deterministic(scorer, images)
    candidates = list(dict.fromkeys(captions))
    prompt = scorer.prompt(images[:6], captions[:6], candidates)
    assert 0 < prompt < 1 and prompt == scorer.prompt(images[:6], captions[:6], candidates)


def test_training_selects_by_a_local_clip_and_a_bad_scorer_is_one_line(train_config, tiny_clip, tmp_path):
    from stylelora.errors import ConfigError
    from stylelora.train.config import validate
    from stylelora.train.loop import train

    config = train_config(out=tmp_path / "clip", validation_split=0.2, max_steps=4, validate_every=2,
                          select_by="score", scorer=f"clip:{tiny_clip}")
    result = train(config, progress_bar=False, log=lambda m: None)
    rows = [line for line in (config.out / "metrics.jsonl").read_text().splitlines() if '"score"' in line]
    assert len(rows) == 2 and result.scores is not None and 0 <= result.scores.quality <= 1
    with pytest.raises(ConfigError, match=r"^--scorer = 'clip:/nowhere': give base, paired, clip:PATH or dinov2:PATH"):
        validate(train_config(validation_split=0.2, select_by="score", scorer="clip:/nowhere"))
    with pytest.raises(ConfigError, match=r"^--scorer = 'clip:.*': the scorer reads the previews of --select-by score"):
        validate(train_config(scorer=f"clip:{tiny_clip}"))
    not_clip = tmp_path / "not-clip"
    not_clip.mkdir()
    with pytest.raises(ConfigError, match=r"^--scorer clip:.*not-clip: not a CLIP model folder"):
        train(train_config(out=tmp_path / "bad", validation_split=0.2, select_by="score", scorer=f"clip:{not_clip}"),
              progress_bar=False, log=lambda m: None)


def test_a_paired_scorer_reads_the_base_s_own_previews_as_no_style_and_the_training_images_as_all_of_it(mini):
    from stylelora.score.previews import PreviewScorer

    images, captions = _folder("stripes")
    scorer = PreviewScorer(mini, family_of_pipe(mini), images[:12], captions[:2], captions, [], 64, seed=3,
                           scorer="paired")
    # the held-out captions first, then the training captions, up to six prompts: 12 previews
    assert scorer.prompts == list(dict.fromkeys(captions))[:6] and len(scorer.base[0]) == 12
    scores, previews = scorer()  # painted by the bare base: each preview is the base's own picture
    assert scores.style == 0.0 and scorer()[0] == scores  # deterministic: the same previews, the same scores
    asked = [prompt for prompt in scorer.prompts for _ in range(2)]
    assert scorer.score(images[:12], asked).style == pytest.approx(1.0, abs=1e-5)  # the training images: the whole way


def test_training_selects_by_the_paired_score(train_config, tmp_path):
    from stylelora.train.loop import train

    config = train_config(out=tmp_path / "paired", validation_split=0.2, max_steps=4, validate_every=2,
                          learning_rate=5e-2, scorer="paired")
    result = train(config, progress_bar=False, log=lambda m: None)
    rows = [json.loads(line) for line in (config.out / "metrics.jsonl").read_text().splitlines() if '"score"' in line]
    assert [row["step"] for row in rows] == [2, 4] and all(0 <= row["style_score"] <= 1 for row in rows)
    best = max(rows, key=lambda row: row["score"])
    assert result.kept_step == best["step"] and result.scores.style == best["style_score"]


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> Path:
    """A randomly initialised DINOv2 (32 px, 32 wide) saved with its image processor: what a user's local DINOv2
    folder holds, built here so nothing is downloaded."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("tiny-dinov2")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=32,
                             patch_size=8)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_a_local_image_model_scores_the_style_deterministically(tiny_dinov2):
    from stylelora.score.image_model import ImageModelScorer

    _assert_style_is_one_on_the_references_and_deterministic(ImageModelScorer(tiny_dinov2), _folder("pastel")[0])


def _assert_style_is_one_on_the_references_and_deterministic(scorer, images: list) -> None:
    references = scorer.image_embeddings(images[0::2])
    assert scorer.style(images[0::2], references) == pytest.approx(1.0, abs=1e-5)  # each its own nearest
    style = scorer.style(images[1::2], references)
    assert 0 <= style < 1 and style == scorer.style(images[1::2], references)


def test_training_selects_by_a_local_dinov2_with_the_base_reading_the_prompt(train_config, tiny_dinov2, tmp_path):
    from stylelora.errors import ConfigError
    from stylelora.train.loop import train

    config = train_config(out=tmp_path / "dinov2", validation_split=0.2, max_steps=4, validate_every=2,
                          select_by="score", scorer=f"dinov2:{tiny_dinov2}")
    result = train(config, progress_bar=False, log=lambda m: None)
    rows = [json.loads(line) for line in (config.out / "metrics.jsonl").read_text().splitlines() if '"score"' in line]
    assert [row["step"] for row in rows] == [2, 4] and 0 <= result.scores.style <= 1
    assert 0 < result.scores.prompt <= 1  # the base's zero-shot probability, as with --scorer base
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(ConfigError, match=r"^--scorer dinov2:.*empty: not an image model folder"):
        train(train_config(out=tmp_path / "bad", validation_split=0.2, select_by="score", scorer=f"dinov2:{not_a_model}"),
              progress_bar=False, log=lambda m: None)
