"""Masked loss: a mask's zero area contributes nothing, masks follow their image into its bucket, and the
options refuse what cannot work in one line."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image

from stylelora.data.folder import scan_folder
from stylelora.data.masks import LossMasks, check_masks
from stylelora.errors import ConfigError, DatasetError
from stylelora.train.config import validate
from stylelora.train.loss import per_sample_error


def _square(height: int, width: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, height, width)
    mask[..., 1:3, 1:3] = 1.0
    return mask


@pytest.mark.parametrize("kind", ["l2", "huber", "smooth-l1"])
def test_the_loss_has_no_gradient_outside_the_mask(kind):
    prediction = torch.randn(1, 4, 6, 6, requires_grad=True)
    target = torch.randn(1, 4, 6, 6)
    per_sample_error(prediction, target, kind, torch.tensor([0.1]), _square(6, 6)).sum().backward()
    outside = _square(6, 6).expand(1, 4, 6, 6) == 0
    assert torch.all(prediction.grad[outside] == 0) and torch.all(prediction.grad[~outside] != 0)


def _masked_folder(image_folder, tmp_path, left_half: bool = True):
    """A copy of the folder and, beside it, masks white on the left half of each image only."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    shutil.copytree(image_folder, images)
    masks.mkdir()
    for path in sorted(images.glob("*.png")):
        width, height = Image.open(path).size
        mask = Image.new("L", (width, height), 0)
        mask.paste(255, (0, 0, width // 2 if left_half else width, height))
        mask.save(masks / path.name)
    return images, masks


def test_a_mask_follows_its_image_into_the_bucket_and_flips_with_it(image_folder, tmp_path):
    images, masks = _masked_folder(image_folder, tmp_path)
    example = scan_folder(images).examples[0]
    loaded = LossMasks(masks, False)
    plain = loaded.of(example, example.size, False, (4, 4))
    assert plain.shape == (1, 4, 4) and torch.equal(plain[0, :, :2], torch.ones(4, 2))
    assert torch.equal(plain[0, :, 2:], torch.zeros(4, 2))
    assert torch.equal(loaded.of(example, example.size, True, (4, 4)), plain.flip(-1))
    # The alpha channel as the mask: transparent right half
    rgba = Image.open(example.path).convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    alpha.paste(255, (0, 0, rgba.size[0] // 2, rgba.size[1]))
    rgba.putalpha(alpha)
    rgba.save(example.path)
    assert torch.equal(LossMasks(None, True).of(example, example.size, False, (4, 4)), plain)


def test_training_with_masks_takes_no_gradient_from_the_masked_out_half(image_folder, tmp_path, train_config,
                                                                        monkeypatch):
    from stylelora.train import step_loss
    from stylelora.train.loop import train

    images, masks = _masked_folder(image_folder, tmp_path)
    grads = []
    real_predict = step_loss.predict

    def predict(*args, **kwargs):
        out = real_predict(*args, **kwargs)
        if out.requires_grad:
            out.register_hook(grads.append)
        return out

    monkeypatch.setattr(step_loss, "predict", predict)
    train(train_config(data=images, masks=masks, max_steps=1, batch_size=2), progress_bar=False, log=lambda m: None)
    (grad,) = grads
    width = grad.shape[-1]
    assert torch.all(grad[..., width // 2:] == 0) and torch.all(grad[..., : width // 2] != 0)


def test_masks_refuse_what_cannot_work_in_one_line(image_folder, tmp_path, train_config):
    images, masks = _masked_folder(image_folder, tmp_path)
    sorted(masks.glob("*.png"))[0].unlink()
    with pytest.raises(DatasetError, match=r"no mask for 0.png; give each training image a greyscale mask"):
        check_masks(masks, scan_folder(images).examples)
    with pytest.raises(DatasetError, match="no such folder"):
        check_masks(tmp_path / "nope", scan_folder(images).examples)
    with pytest.raises(ConfigError, match="--masks DIR or --mask-from-alpha, not both"):
        validate(train_config(masks=masks, mask_from_alpha=True))
    with pytest.raises(ConfigError, match="drop --random-crop"):
        validate(train_config(mask_from_alpha=True, random_crop=True))


def test_a_masked_run_resumes_exactly_and_differs_from_an_unmasked_one(image_folder, tmp_path, train_config):
    from test_optimizers import _resumed

    images, masks = _masked_folder(image_folder, tmp_path)
    straight, resumed = _resumed(train_config, tmp_path, data=images, masks=masks, flip=True)
    assert max((straight.tensors[k] - resumed.tensors[k]).abs().max().item() for k in straight.tensors) <= 1e-6
    unmasked, _ = _resumed(train_config, tmp_path / "plain", data=images, flip=True)
    assert any(not torch.equal(straight.tensors[k], unmasked.tensors[k]) for k in straight.tensors)
