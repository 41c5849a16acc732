"""What the SD3.x and Flux.1 tests share: a training config for a tiny DiT base, and the exact-resume check."""

from pathlib import Path

import pytest

from stylelora.files import read_safetensors
from stylelora.train.config import TrainConfig
from stylelora.train.loop import TrainingInterrupted, train


def dit_config_maker(base: Path, image_folder: Path, tmp_path_factory):
    """TrainConfig for a tiny DiT base: 3 steps at 32 px, batch 2, each run in its own folder."""
    def make(**overrides) -> TrainConfig:
        values = dict(data=image_folder, out=tmp_path_factory.mktemp("dit-run"), base=str(base), max_steps=3,
                      batch_size=2, learning_rate=1e-2, resolution=32)
        return TrainConfig(**(values | overrides))

    return make


def assert_resume_is_exact(make, tmp_path: Path) -> None:
    """4 steps straight, and 2 + a resume to 4, give the same adapter within 1e-6."""
    quiet = dict(progress_bar=False, log=lambda message: None)
    straight = train(make(out=tmp_path / "straight", max_steps=4, save_every=2), **quiet)
    stopped = make(out=tmp_path / "resumed", max_steps=4, save_every=2)
    done: list[int] = []
    with pytest.raises(TrainingInterrupted):
        train(stopped, on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 2, **quiet)
    stopped.resume = True
    a, b = read_safetensors(straight.adapter_path).tensors, read_safetensors(train(stopped, **quiet).adapter_path).tensors
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6

