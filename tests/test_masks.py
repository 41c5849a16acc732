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


def test_the_mask_prior_pulls_the_masked_out_half_toward_the_base_by_its_weight(image_folder, tmp_path, train_config,
                                                                                 monkeypatch):
    """--mask-prior: outside the masks the gradient is the weighted squared error against the base's own prediction
    (the inverted mask scaled to a mean of 1), nothing else; inside it, the style loss is still there."""
    from stylelora.train import step_loss
    from stylelora.train.loop import train

    images, masks = _masked_folder(image_folder, tmp_path)
    predictions, grads, bases = [], [], []
    real_predict, real_base = step_loss.predict, step_loss.StepLoss.base_prediction

    def predict(*args, **kwargs):
        out = real_predict(*args, **kwargs)
        if out.requires_grad:
            predictions.append(out.detach().clone())
            out.register_hook(grads.append)
        return out

    def base_prediction(self, *args, **kwargs):
        bases.append(real_base(self, *args, **kwargs))
        return bases[-1]

    monkeypatch.setattr(step_loss, "predict", predict)
    monkeypatch.setattr(step_loss.StepLoss, "base_prediction", base_prediction)
    train(train_config(data=images, masks=masks, mask_prior=0.5, max_steps=2, batch_size=2, learning_rate=1e-2),
          progress_bar=False, log=lambda m: None)
    assert len(grads) == len(bases) == 2
    for prediction, grad, base in zip(predictions, grads, bases):
        right = slice(grad.shape[-1] // 2, None)
        # d/dp of 0.5 * mean(2 * (p - b)^2) over the right half (the inverted mask is 1 on half the pixels: 2 there)
        expected = 0.5 * 2 * 2 * (prediction - base).float() / prediction.numel()
        torch.testing.assert_close(grad[..., right].float(), expected[..., right], rtol=1e-4, atol=1e-12)
        assert torch.all(grad[..., : grad.shape[-1] // 2] != 0)
    assert torch.all(grads[0][..., right] == 0)  # the adapter starts as the base: nothing to pull back
    assert (grads[1][..., right] != 0).float().mean() > 0.9  # once it has moved, it is pulled back


def test_the_mask_prior_needs_masks_and_a_weight_of_0_or_more(train_config, image_folder, tmp_path):
    _, masks = _masked_folder(image_folder, tmp_path)
    with pytest.raises(ConfigError, match=r"--mask-prior = 0.5: it acts outside loss masks: add --masks DIR"):
        validate(train_config(mask_prior=0.5))
    with pytest.raises(ConfigError, match=r"--mask-prior = -1.0: the weight must be 0 or more"):
        validate(train_config(masks=masks, mask_prior=-1.0))
