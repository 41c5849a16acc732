"""Hostile images, broken or malicious adapter files and out-of-range flags: each one is used correctly
or refused by name in one line, and nothing runs code or crashes the trainer."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from stylelora.adapters.formats import read_lora
from stylelora.data.folder import scan_folder
from stylelora.errors import AdapterFileError
from stylelora.train.config import TrainConfig
from stylelora.train.loop import train

RED = np.full((40, 40, 3), (200, 10, 10), np.uint8)


def _png_bytes(array: np.ndarray = RED, **kwargs) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kwargs.pop("format", "PNG"), **kwargs)
    return buffer.getvalue()


def _hostile_folder(root: Path) -> tuple[set[str], dict[str, str]]:
    """Write every kind of awkward file; return (names that must be used, name -> reason it must give)."""
    root.mkdir()
    jpeg = _png_bytes(format="JPEG")
    (root / "zero bytes.png").write_bytes(b"")
    (root / "truncated.png").write_bytes(_png_bytes()[:60])
    (root / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "text.png").write_text("this is not an image")
    Image.new("L", (20000, 20000)).save(root / "bomb.png", optimize=True)  # 400 Mpx of zeros: a few KB
    Image.fromarray(np.full((1, 1, 3), 9, np.uint8)).save(root / "one pixel.png")
    Image.fromarray(np.zeros((3, 10000, 3), np.uint8)).save(root / "sliver.png")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "cmyk.jpg")
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(root / "sixteen bit.png")
    palette = Image.fromarray(RED).convert("P")
    palette.save(root / "palette.png", transparency=0)
    frames = [Image.fromarray(np.full((40, 40, 3), v, np.uint8)) for v in (10, 250)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    frames[0].save(root / "animated.webp", save_all=True, append_images=frames[1:], lossless=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(root / "rotated.jpg", exif=exif)
    (root / "locked.png").write_bytes(_png_bytes())
    (root / "locked.png").chmod(0)
    (root / "loop.png").symlink_to(root / "loop.png")
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)  # a folder loop
    (root / "ünï cödé ✓.png").write_bytes(_png_bytes())
    (root / "ünï cödé ✓.txt").write_text("a red circle ✓", encoding="utf-8")
    (root / "latin1 caption.png").write_bytes(_png_bytes())
    (root / "latin1 caption.txt").write_bytes("a café square".encode("latin-1"))
    (root / "huge caption.png").write_bytes(_png_bytes())
    (root / "huge caption.txt").write_text("a red circle " * 100_000)
    used = {"one pixel.png", "cmyk.jpg", "sixteen bit.png", "palette.png", "animated.webp", "rotated.jpg",
            "ünï cödé ✓.png", "latin1 caption.png", "huge caption.png"}
    refused = {"zero bytes.png": "not a readable image", "truncated.png": "cannot be decoded",
               "truncated.jpg": "cannot be decoded", "text.png": "not a readable image",
               "bomb.png": "decompression-bomb", "sliver.png": "crop it", "animated.gif": "convert it to PNG",
               "locked.png": "permission denied", "loop.png": "looping symlink"}
    return used, refused


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    used, refused = _hostile_folder(tmp_path / "hostile")
    if os.geteuid() == 0:  # root reads mode-000 files anyway: make the read fail as it would for a user
        real = Path.read_bytes
        monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "denied"))
                            if self.name == "locked.png" else real(self))
    return tmp_path / "hostile", used, refused


def test_every_hostile_image_is_used_correctly_or_refused_by_name(hostile):
    root, used, refused = hostile
    folder = scan_folder(root)
    assert {e.path.name for e in folder.examples} == used
    reasons = {path.name: reason for path, reason in folder.skipped}
    assert set(reasons) >= set(refused)
    for name, reason in refused.items():
        assert reason in reasons[name], (name, reasons[name])
    examples = {e.path.name: e for e in folder.examples}
    assert examples["rotated.jpg"].size == (20, 40)  # the EXIF rotation is applied
    assert examples["ünï cödé ✓.png"].caption == "a red circle ✓"
    assert examples["latin1 caption.png"].caption == "a café square"
    assert any("latin1 caption.txt" in w and "not UTF-8" in w for w in folder.warnings)
    assert any("animated.webp" in w and "first frame" in w for w in folder.warnings)


@pytest.mark.slow
def test_the_trainer_runs_on_the_hostile_folder_and_names_every_refusal(hostile, tiny_base, tmp_path):
    root, used, refused = hostile
    lines: list[str] = []
    train_result = train(TrainConfig(data=root, out=tmp_path / "out", base=str(tiny_base), max_steps=3, batch_size=3),
                         progress_bar=False, log=lines.append)
    assert train_result.adapter_path.is_file()
    log = "\n".join(lines)
    assert f"Found {len(used)} images" in log
    for name in refused:
        assert f"skipped {root / name}" in log, name
    # Too long for the text encoder (77 tokens in Stable Diffusion, fewer in the tiny base): said, not silently cut.
    assert f"{root / 'huge caption.txt'}: the caption is longer than" in log
    assert "one pixel.png is 1x1" in log


# ---- adapter files -------------------------------------------------------------------------------

def _valid_adapter() -> bytes:
    tensors = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.ones(2, 8),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.ones(8, 2),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha": torch.tensor(2.0)}
    return safetensors.torch.save(tensors)


def _assert_one_line_refusal_or_valid(path: Path) -> None:
    try:
        read_lora(path)
    except AdapterFileError as error:
        assert "\n" not in str(error) and str(path) in str(error)


DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "XYZ", ""]
NAME = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(
    st.sampled_from([f"{NAME}.lora_down.weight", f"{NAME}.lora_up.weight", f"{NAME}.alpha", "other"]),
    st.sampled_from(DTYPES),
    st.lists(st.integers(min_value=-2, max_value=70), max_size=4),
    st.tuples(st.integers(min_value=-8, max_value=2000), st.integers(min_value=-8, max_value=2000))),
    max_size=4),
    payload=st.binary(max_size=600), header_junk=st.sampled_from(["", " ", "\x00", "}", "{"]),
    claimed_length=st.one_of(st.none(), st.integers(min_value=0, max_value=2**63)))
def test_fuzzed_safetensors_headers_give_one_line_errors(tmp_path, entries, payload, header_junk, claimed_length):
    header = {name: {"dtype": dtype, "shape": shape, "data_offsets": list(offsets)}
              for name, dtype, shape, offsets in entries}
    text = (json.dumps(header) + header_junk).encode()
    length = len(text) if claimed_length is None else claimed_length
    path = tmp_path / "fuzzed.safetensors"
    path.write_bytes(struct.pack("<Q", length) + text + payload)
    _assert_one_line_refusal_or_valid(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=len(_valid_adapter()) - 1),
       flip=st.tuples(st.integers(min_value=0, max_value=len(_valid_adapter()) - 1), st.integers(1, 255)))
def test_truncated_or_bit_flipped_adapters_give_one_line_errors(tmp_path, cut, flip):
    data = bytearray(_valid_adapter())
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(data[:cut]))
    _assert_one_line_refusal_or_valid(path)
    data[flip[0]] ^= flip[1]
    path.write_bytes(bytes(data))
    _assert_one_line_refusal_or_valid(path)


@pytest.mark.parametrize("down, up, alpha, reason", [
    (torch.ones(2, 8, dtype=torch.int64), torch.ones(8, 2), 2.0, "integer"),
    (torch.ones(2, 8), torch.ones(8, 3), 2.0, "rank"),
    (torch.ones(2, 8), torch.full((8, 2), float("nan")), 2.0, "NaN"),
    (torch.ones(2, 8), torch.ones(8, 2), float("inf"), "alpha"),
    (torch.ones(2, 8), torch.ones(8, 2), torch.ones(3), "alpha"),
])
def test_wrong_dtypes_shapes_and_values_are_refused(tmp_path, down, up, alpha, reason):
    alpha = alpha if isinstance(alpha, torch.Tensor) else torch.tensor(alpha)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors.torch.save({f"{NAME}.lora_down.weight": down, f"{NAME}.lora_up.weight": up,
                                             f"{NAME}.alpha": alpha}))
    with pytest.raises(AdapterFileError, match=reason) as raised:
        read_lora(path)
    assert "\n" not in str(raised.value)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin", ".safetensors"])
def test_pickle_files_never_run_code(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(AdapterFileError) as raised:
        read_lora(path)
    assert "\n" not in str(raised.value) and not marker.exists()


# ---- flags ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, flag", [
    (["train", "IMAGES", "--rank", "0"], "--rank"),
    (["train", "IMAGES", "--max-steps", "-5"], "--max-steps"),
    (["train", "IMAGES", "--resolution", "100"], "--resolution"),
    (["train", "IMAGES", "--learning-rate", "-1"], "--learning-rate"),
    (["train", "IMAGES", "--batch-size", "0"], "--batch-size"),
    (["train", "IMAGES", "--caption-dropout", "1.5"], "--caption-dropout"),
    (["train", "IMAGES", "--rank", "abc"], "--rank"),
    (["generate", "a red circle", "--lora", "ADAPTER:abc"], "--lora"),
    (["generate", "a red circle", "--count", "0"], "--count"),
    (["generate", "a red circle", "--steps", "-1"], "--steps"),
    (["generate", "a red circle", "--size", "65"], "--size"),
    (["grid", "a red circle", "--lora", "ADAPTER", "--weights", "0,x"], "--weights"),
])
def test_out_of_range_flags_name_the_flag(args, flag, image_folder, two_adapters, capsys):
    from stylelora.cli import main as cli

    args = [str(image_folder) if a == "IMAGES" else a.replace("ADAPTER", str(two_adapters[0])) for a in args]
    try:
        code = cli.main(args)
    except SystemExit as exit_:  # argparse's own type errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert flag in err.strip().splitlines()[-1] and "Traceback" not in err
