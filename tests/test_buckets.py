"""Aspect-ratio bucketing: kohya's bucket list, assignment and crops, batches of one bucket in a pure order,
the bucket-keyed latent cache, buckets.json, --no-upscale and the flags' errors."""

from __future__ import annotations

import json

import pytest

from stylelora.data.buckets import BucketSettings, bucket_sizes, plan_buckets, sample_order
from stylelora.data.folder import scan_folder
from stylelora.errors import ConfigError
from stylelora.train.config import TrainConfig
from stylelora.train.loop import train
from stylelora.train.step_loss import StepLoss

QUIET = dict(progress_bar=False, log=lambda m: None)


def _config(base, data, out, **overrides) -> TrainConfig:
    return TrainConfig(**(dict(data=data, out=out, base=str(base), max_steps=4, batch_size=2) | overrides))


def test_the_bucket_list_is_kohyas():
    # kohya's make_bucket_resolutions(max_reso=(512, 512), min_size=256, max_size=1024, divisible=64), worked by hand
    one_way = {(256, 1024), (320, 768), (384, 640), (448, 576), (512, 512), (576, 448), (640, 384), (704, 320),
               (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256)}
    assert set(bucket_sizes(512, 64, 256, 1024)) == one_way | {(h, w) for w, h in one_way}
    assert all(w * h <= 512 * 512 and w % 64 == 0 == h % 64 for w, h in bucket_sizes(512, 64, 256, 1024))


def test_images_go_to_the_nearest_bucket_and_lose_at_most_the_remainder(mixed_aspect_folder):
    plan = plan_buckets(scan_folder(mixed_aspect_folder).examples, 32, BucketSettings(step=8))
    report = plan.report()
    assert [(b["width"], b["height"], b["images"]) for b in report["buckets"]] == [(24, 40, 3), (32, 32, 1), (40, 24, 3)]
    by_size = {tuple(i["size"]): (tuple(i["bucket"]), i["cropped_pixels"]) for i in report["images"]}
    # 96x48 covers 40x24 at 48x24: 8 columns cropped; 64x64 is exactly 32x32
    assert by_size == {(96, 48): ((40, 24), 8 * 24), (48, 96): ((24, 40), 8 * 24), (64, 64): ((32, 32), 0)}
    assert report["warnings"] == [f"bucket 32x32 holds a single image ({mixed_aspect_folder / '6.png'}): it trains "
                                  "alone in its batches; add images of that shape or widen --bucket-step"]


def test_no_upscale_never_enlarges_an_image(mixed_aspect_folder):
    plan = plan_buckets(scan_folder(mixed_aspect_folder).examples, 64, BucketSettings(step=8, no_upscale=True))
    for example, (width, height) in zip(plan.examples, plan.targets):
        assert width <= example.size[0] and height <= example.size[1] and width * height <= 64 * 64
    assert set(plan.targets) == {(88, 40), (40, 88), (64, 64)}


def test_batches_hold_one_bucket_in_an_order_that_is_a_pure_function_of_seed_and_number(mixed_aspect_folder):
    examples = scan_folder(mixed_aspect_folder).examples
    plan = plan_buckets(examples, 32, BucketSettings(step=8))
    again = plan_buckets(list(examples), 32, BucketSettings(step=8))
    batches = [plan.batch(k, 2, seed=3) for k in range(40)]
    assert batches == [again.batch(k, 2, seed=3) for k in range(40)]
    assert batches != [plan.batch(k, 2, seed=4) for k in range(40)]
    assert all(len({plan.targets[i] for i in batch}) == 1 for batch in batches)
    drawn = [i for batch in batches for i in batch]
    assert sorted(set(drawn)) == list(range(len(examples)))  # every image trains
    counts = [drawn.count(i) for i in range(len(examples))]
    assert max(counts) - min(counts) <= 6  # each bucket's round-robin keeps the images about even
    square = plan_buckets(examples, 32, BucketSettings(enabled=False))
    # One bucket: the plain endless per-epoch shuffle, batch after batch (what training did before buckets).
    assert [square.batch(k, 3, 5) for k in range(6)] == [sample_order(7, 5, 3 * k, 3) for k in range(6)]


def test_training_writes_buckets_json_and_batches_one_bucket(tiny_base, mixed_aspect_folder, tmp_path, monkeypatch):
    shapes = []
    real = StepLoss.latents
    monkeypatch.setattr(StepLoss, "latents", lambda self, examples, *a: (lambda out: shapes.append(
        tuple(out[0].shape)) or out)(real(self, examples, *a)))
    lines: list[str] = []
    train(_config(tiny_base, mixed_aspect_folder, tmp_path / "run", max_steps=8), progress_bar=False, log=lines.append)
    report = json.loads((tmp_path / "run" / "buckets.json").read_text())
    assert {(b["width"], b["height"]) for b in report["buckets"]} == {(24, 40), (32, 32), (40, 24)}
    assert "Buckets: 24x40 (3), 32x32 (1), 40x24 (3); the most cropped image loses 16.7% (0.png)." in lines
    assert {shape[2:] for shape in shapes} == {(20, 12), (16, 16), (12, 20)}  # latents at half the pixel size


def test_the_latent_cache_is_keyed_by_bucket(tiny_base, mixed_aspect_folder, tmp_path):
    lines: list[str] = []
    config = _config(tiny_base, mixed_aspect_folder, tmp_path / "run", max_steps=1)
    train(config, progress_bar=False, log=lines.append)
    (tmp_path / "run" / "run.safetensors").unlink()
    again: list[str] = []
    train(_config(tiny_base, mixed_aspect_folder, tmp_path / "run", max_steps=1), progress_bar=False, log=again.append)
    squares: list[str] = []
    train(_config(tiny_base, mixed_aspect_folder, tmp_path / "run", max_steps=1, buckets=False), progress_bar=False,
          log=squares.append)
    assert "Latent cache: 0 read from disk, 7 encoded." in lines
    assert "Latent cache: 7 read from disk, 0 encoded." in again
    assert "Latent cache: 1 read from disk, 6 encoded." in squares  # only the square image's bucket is unchanged


def test_no_buckets_trains_centre_squares(tiny_base, mixed_aspect_folder, tmp_path):
    train(_config(tiny_base, mixed_aspect_folder, tmp_path / "run", max_steps=1, buckets=False), **QUIET)
    report = json.loads((tmp_path / "run" / "buckets.json").read_text())
    assert report["enabled"] is False and report["buckets"] == [{"width": 32, "height": 32, "images": 7}]


@pytest.mark.parametrize("flags, message", [
    (["--bucket-step", "12"], "--bucket-step = 12: bucket sides step by a positive multiple of 8"),
    (["--no-buckets", "--bucket-step", "8"], "--bucket-step = 8: bucket settings need bucketing"),
    (["--min-bucket", "64", "--max-bucket", "32"], "--min-bucket = 64: the shortest bucket side must not exceed"),
    (["--bucket-step", "64"], "--bucket-step = 64: too coarse for 32 px training; use at most 8"),
])
def test_bad_bucket_flags_are_one_line_errors(tiny_base, mixed_aspect_folder, tmp_path, flags, message, capsys):
    """In process, through the command line's own main (tests/test_train.py runs one such error as a process)."""
    from stylelora.cli.main import main as cli

    code = cli(["train", str(mixed_aspect_folder), "--base", str(tiny_base), "--max-steps", "1",
                "--out", str(tmp_path / "x"), "--quiet", *flags])
    stderr = capsys.readouterr().err
    assert code != 0 and message in stderr and "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("stylelora: error:")]
    assert len(errors) == 1 and message in errors[0], stderr


def test_validate_names_the_flag():
    with pytest.raises(ConfigError, match="--max-bucket = 12"):
        from stylelora.train.config import validate

        validate(TrainConfig(data=".", max_bucket=12))


def test_the_toml_config_takes_the_bucket_settings(tmp_path):
    from stylelora.train.settings import from_dict, load_toml

    (tmp_path / "style.toml").write_text("[train]\nbucket-step = 16\nmin-bucket = 32\nmax-bucket = 96\nno-upscale = true\n")
    config = from_dict({"data": str(tmp_path)} | load_toml(tmp_path / "style.toml"))
    assert config.bucket_settings(64) == BucketSettings(True, 16, 32, 96, True)
    assert from_dict({"data": str(tmp_path), "buckets": False}).bucket_settings(64).enabled is False
