"""Regularisation (class) images: `stylelora reg-images` paints them with their captions and keeps what is there;
training draws them per batch as a pure function of (seed, batch), on their own captions without the trigger,
and resumes exactly; bad settings are refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stylelora.adapters.formats import read_safetensors
from stylelora.cli.main import main
from stylelora.data.folder import scan_folder
from stylelora.errors import ConfigError, DatasetError
from stylelora.train.config import validate
from stylelora.train.loop import train

QUIET = dict(progress_bar=False, log=lambda m: None)


@pytest.fixture(scope="module")
def class_images(tiny_base, image_folder, tmp_path_factory):
    """Four class images of one prompt, painted by the tiny base."""
    out = tmp_path_factory.mktemp("reg")
    assert main(["reg-images", "a circle", "-n", "4", "--steps", "2", "--base", str(tiny_base), "-o", str(out)]) == 0
    return out


def test_reg_images_writes_each_image_with_its_caption_and_paints_only_what_is_missing(class_images, tiny_base,
                                                                                      capsys):
    names = sorted(p.name for p in class_images.iterdir())
    assert names == [f"a-circle-{i:04d}.{ext}" for i in range(4) for ext in ("png", "txt")]
    assert all((class_images / f"a-circle-{i:04d}.txt").read_text() == "a circle" for i in range(4))
    assert Image.open(class_images / "a-circle-0002.png").text["seed"] == "3"  # image i at seed + i (seed 1)
    before = {i: np.asarray(Image.open(class_images / f"a-circle-{i:04d}.png")) for i in range(4)}
    (class_images / "a-circle-0001.txt").unlink()  # an image without its caption counts as not done
    mtime = (class_images / "a-circle-0000.png").stat().st_mtime_ns
    argv = ["reg-images", "a circle", "-n", "4", "--steps", "2", "--base", str(tiny_base), "-o", str(class_images)]
    capsys.readouterr()
    assert main(argv) == 0
    assert "Wrote 1 class images" in capsys.readouterr().out
    assert (class_images / "a-circle-0000.png").stat().st_mtime_ns == mtime  # kept, not painted again
    # Painted alone, image 1 is what the batch of four painted: its own seed, whatever the batch (up to the
    # rounding of batched float arithmetic, a level or two of 255).
    again = np.asarray(Image.open(class_images / "a-circle-0001.png")).astype(int)
    assert np.abs(again - before[1]).max() <= 2 and np.abs(again - before[2]).max() > 20


def test_reg_images_refuses_bad_input_in_one_line(tmp_path, capsys):
    assert main(["reg-images", "-o", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == ('stylelora: error: give a class prompt, e.g. stylelora reg-images '
                                               '"a circle", or --prompts-file FILE')
    assert main(["reg-images", "x", "-n", "0", "-o", str(tmp_path)]) == 2
    assert "--count = 0: paint at least 1 image per prompt" in capsys.readouterr().err
    assert main(["reg-images", "--prompts-file", str(tmp_path / "none.txt"), "-o", str(tmp_path)]) == 2
    assert "--prompts-file" in capsys.readouterr().err and not list(tmp_path.glob("*.png"))
    assert main(["reg-images", "a circle", "A circle!", "-o", str(tmp_path)]) == 2
    assert "the prompts 'a circle' and 'A circle!' would share file names (a-circle-0000..." in capsys.readouterr().err


def test_regularisation_batches_are_a_pure_function_of_seed_and_batch(class_images, tiny_base):
    from stylelora.data.buckets import plan_buckets, BucketSettings
    from stylelora.train.regularisation import Regularisation

    examples = scan_folder(class_images).examples
    plan = plan_buckets(examples, 32, BucketSettings(enabled=False))
    first, again = Regularisation(examples, plan, 1.0), Regularisation(list(examples), plan, 1.0)
    draws = [[e.path.name for e in first.batch(n, 2, 0)] for n in range(4)]
    assert draws == [[e.path.name for e in again.batch(n, 2, 0)] for n in range(4)]
    assert sorted(sum(draws[:2], [])) == sorted(e.path.name for e in examples)  # an epoch shows each image once
    assert draws != [[e.path.name for e in first.batch(n, 2, 1)] for n in range(4)]  # another seed, another order


def test_class_images_train_on_their_own_captions_without_the_trigger(class_images, train_config, monkeypatch):
    from stylelora.train.step_loss import StepLoss

    seen: list[list[str]] = []
    real = StepLoss.denoising_loss

    def spy(self, latents, captions, *args, **kwargs):
        seen.append(list(captions))
        return real(self, latents, captions, *args, **kwargs)

    monkeypatch.setattr(StepLoss, "denoising_loss", spy)
    train(train_config(reg_data=class_images, trigger="zqx style", max_steps=2), **QUIET)
    style, regularisation = seen[0::2], seen[1::2]
    assert len(seen) == 4 and all(c.startswith("zqx style") for batch in style for c in batch)
    assert all(c == "a circle" for batch in regularisation for c in batch)


def test_weight_zero_trains_exactly_the_plain_adapter_and_a_run_with_class_images_resumes_exactly(
        class_images, train_config, tmp_path):
    from test_optimizers import _resumed

    plain = read_safetensors(train(train_config(out=tmp_path / "plain"), **QUIET).adapter_path).tensors
    nothing = read_safetensors(train(train_config(out=tmp_path / "zero", reg_data=class_images, reg_weight=0.0),
                                     **QUIET).adapter_path).tensors
    assert all(torch.equal(plain[k], nothing[k]) for k in plain)
    straight, resumed = _resumed(train_config, tmp_path / "resume", reg_data=class_images, flip=True)
    assert max((straight.tensors[k] - resumed.tensors[k]).abs().max().item() for k in straight.tensors) <= 1e-6
    assert any(not torch.equal(straight.tensors[k], plain[k]) for k in plain)


def test_regularisation_settings_are_refused_in_one_line(train_config, tmp_path):
    with pytest.raises(ConfigError, match="--reg-weight = 0.5: the weight is for regularisation images: add "
                                          "--reg-data DIR"):
        validate(train_config(reg_weight=0.5))
    with pytest.raises(ConfigError, match="--reg-weight = -1.0: the regularisation weight must be 0 or more"):
        validate(train_config(reg_data=tmp_path, reg_weight=-1.0))
    with pytest.raises(DatasetError, match=r"--reg-data: .*nope: no such folder; give the folder that holds the "
                                           r"class images \(`stylelora reg-images"):
        train(train_config(reg_data=tmp_path / "nope"), **QUIET)
