import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stylelora.data.folder import load_rgb, preprocess, scan_folder, training_caption
from stylelora.errors import DatasetError

RED = np.full((16, 16, 3), (200, 10, 10), np.uint8)


def _png(path: Path, array=RED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_caption_precedence_txt_caption_jsonl_default(tmp_path):
    for name in ("a", "b", "c", "d"):
        _png(tmp_path / "sub" / f"{name}.png")
    (tmp_path / "sub" / "a.txt").write_text("from txt")
    (tmp_path / "sub" / "a.caption").write_text("not used")
    (tmp_path / "sub" / "b.caption").write_text("from caption")
    rows = [{"file_name": "sub/b.png", "text": "not used"}, {"file_name": "sub/c.png", "text": "from jsonl"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    folder = scan_folder(tmp_path, default_caption="fallback", trigger="zxq")
    captions = {e.path.stem: (e.caption, e.caption_source) for e in folder.examples}
    assert captions == {
        "a": ("zxq, from txt", ".txt"),
        "b": ("zxq, from caption", ".caption"),
        "c": ("zxq, from jsonl", "metadata.jsonl"),
        "d": ("zxq, fallback", "--caption"),
    }
    assert folder.captions_found == 3
    # Where a person would edit each caption: named in warnings about it.
    sub = tmp_path / "sub"
    assert {e.path.stem: e.caption_file for e in folder.examples} == {
        "a": sub / "a.txt", "b": sub / "b.caption", "c": tmp_path / "metadata.jsonl", "d": sub / "d.png"}


def test_unreadable_files_are_skipped_by_name(tmp_path):
    _png(tmp_path / "good.png")
    (tmp_path / "text.png").write_text("hello")
    (tmp_path / "empty.jpg").write_bytes(b"")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(RED).save(tmp_path / "anim.gif")
    folder = scan_folder(tmp_path)
    assert [e.path.name for e in folder.examples] == ["good.png"]
    skipped = {p.name: reason for p, reason in folder.skipped}
    assert set(skipped) == {"text.png", "empty.jpg", "truncated.png", "anim.gif"}
    assert "convert it to PNG" in skipped["anim.gif"]


def test_missing_and_empty_folders_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        scan_folder(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no usable image"):
        scan_folder(tmp_path)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[0, 0, 3] = 255  # one opaque red pixel, the rest fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_rgb(tmp_path / "a.png"))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[1, 1]) == (255, 255, 255)
    palette = Image.fromarray(rgba, "RGBA").convert("P")
    palette.info["transparency"] = palette.getpixel((1, 1))
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((1, 1)))
    assert tuple(np.asarray(load_rgb(tmp_path / "p.png"))[1, 1]) == (255, 255, 255)
    la = Image.fromarray(np.stack([np.full((4, 4), 0, np.uint8), np.zeros((4, 4), np.uint8)], -1), "LA")
    la.save(tmp_path / "la.png")
    assert tuple(np.asarray(load_rgb(tmp_path / "la.png"))[0, 0]) == (255, 255, 255)


def test_cmyk_16bit_and_grey_become_rgb(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    red = np.asarray(load_rgb(tmp_path / "c.jpg"))[0, 0]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "w16.png")
    assert tuple(np.asarray(load_rgb(tmp_path / "w16.png"))[0, 0]) == (255, 255, 255)
    Image.fromarray(np.full((4, 4), 128, np.uint8), "L").save(tmp_path / "g.png")
    assert load_rgb(tmp_path / "g.png").mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(np.zeros((10, 20, 3), np.uint8))  # 20 wide, 10 tall
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (10, 20)


def test_decompression_bombs_are_refused(tmp_path, monkeypatch):
    _png(tmp_path / "big.png", np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="decompression-bomb"):
        load_rgb(tmp_path / "big.png")


def test_preprocess_center_crop_resizes_and_flips():
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    out = preprocess(image, 8, random_crop=False, flip=False)
    assert out.shape == (3, 8, 8) and out.min() >= -1 and out.max() <= 1
    assert out[:, :, 0].mean() > out[:, :, -1].mean()  # white side stays left
    flipped = preprocess(image, 8, random_crop=False, flip=True)
    assert np.allclose(flipped.numpy(), out.flip(-1).numpy())
    crops = {tuple(preprocess(image, 8, True, False, random.Random(s)).flatten()[:8].tolist()) for s in range(8)}
    assert len(crops) > 1


def test_caption_dropout_and_tag_shuffle_keep_the_trigger():
    rng = random.Random(0)
    assert training_caption("t, a, b", "t", 0.999, False, 0, rng) == ""
    seen = {training_caption("t, a, b, c, d", "t", 0.0, True, 1, random.Random(s)) for s in range(20)}
    assert all(c.startswith("t, a, ") for c in seen) and len(seen) > 1
