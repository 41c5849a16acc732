"""What the SD3.x and Flux.1 tests share: a training config for a tiny DiT base, the exact-resume check, and the\nserved-equals-generated check."""

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



def assert_served_is_generated(base: Path, adapter: Path, tmp_path: Path) -> None:
    """A request to `stylelora serve`'s app with `adapter` at 0.7 is, pixel for pixel, what `generate` paints."""
    import base64
    import io
    import shutil

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    from stylelora.paint.generate import generate
    from stylelora.paint.request import GenerateConfig
    from stylelora.serve.app import build_app
    from stylelora.serve.config import ServeConfig

    folder = tmp_path / "adapters"
    folder.mkdir()
    path = shutil.copy(adapter, folder / "style.safetensors")
    app = build_app(ServeConfig(base=str(base), adapters=folder, max_count=2, max_side=64, max_steps=10))
    with TestClient(app) as client:
        reply = client.post("/v1/generate", json={"prompt": "a red circle", "adapters": [{"name": "style", "weight": 0.7}],
                                                  "seed": 3, "steps": 3, "scheduler": "euler"})
    assert reply.status_code == 200, reply.text
    served = Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]["png"])))
    painted = Image.open(generate(GenerateConfig(prompt="a red circle", loras=(f"{path}:0.7",), base=str(base),
                                                 seed=3, count=1, steps=3, scheduler="euler", out=tmp_path / "g"))[0])
    assert np.array_equal(np.asarray(served), np.asarray(painted))
