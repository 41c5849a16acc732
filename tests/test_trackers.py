"""--log-with: TensorBoard and Weights & Biases through accelerate's trackers. W&B runs offline here (no API key:
stylelora picks offline itself), so nothing is sent anywhere; a resumed run logs on into the same W&B run."""

from __future__ import annotations

import json

import pytest

from stylelora.errors import ConfigError
from stylelora.train.config import validate
from stylelora.train.loop import train
from stylelora.train.trackers import check_trackers, wandb_mode

QUIET = dict(progress_bar=False, log=lambda m: None)


@pytest.fixture
def no_wandb_login(monkeypatch, tmp_path):
    """No API key, no netrc, no WANDB_MODE: what a fresh machine has."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "home" / ".config" / "wandb"))


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_the_same_numbers_as_metrics_jsonl(train_config, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train(train_config(out=out, max_steps=3, validation_split=0.34, validate_every=3), **QUIET)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    rows = _rows(out)
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged == pytest.approx({r["step"]: r["loss"] for r in rows if "loss" in r}, rel=1e-6)
    validation = {e.step: e.value for e in events.Scalars("validation/loss")}
    assert validation == pytest.approx({r["step"]: r["validation_loss"] for r in rows if "validation_loss" in r},
                                       rel=1e-6) and set(validation) == {0, 3}
    for key in ("style_score", "prompt_score", "score"):  # selected by score, the default with validation
        scored = {e.step: e.value for e in events.Scalars(f"validation/{key}")}
        assert scored == pytest.approx({r["step"]: r[key] for r in rows if key in r}, rel=1e-6) and set(scored) == {3}


def test_wandb_logs_offline_without_a_login_and_a_resume_continues_its_run(train_config, tmp_path, no_wandb_login):
    pytest.importorskip("wandb")
    assert wandb_mode() == "offline"
    out = tmp_path / "wb"
    config = train_config(out=out, max_steps=4, save_every=2, log_with="wandb")
    done: list[int] = []
    from stylelora.errors import TrainingInterrupted

    with pytest.raises(TrainingInterrupted):
        train(config, on_progress=lambda p: done.append(p.step), should_stop=lambda: len(done) >= 2, **QUIET)
    config.resume = True
    train(config, **QUIET)
    run_id = (out / "wandb-run-id").read_text()
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") for r in runs)  # one W&B run, logged twice
    files = [r / f"run-{run_id}.wandb" for r in runs]
    # (train/loss found, bytes) per run, said on failure: an empty file and a lost record are different faults
    logged = {f.parent.name: (b"train/loss" in f.read_bytes(), f.stat().st_size) for f in files}
    assert all(found for found, _ in logged.values()), logged
    assert not (out / "tensorboard").exists()


def test_log_with_none_writes_metrics_jsonl_alone_and_bad_choices_are_refused(train_config, tmp_path, monkeypatch):
    out = tmp_path / "none"
    train(train_config(out=out, max_steps=2, log_with="none"), **QUIET)
    assert [r["step"] for r in _rows(out) if "loss" in r] == [1, 2]
    assert not (out / "tensorboard").exists() and not (out / "wandb").exists()
    with pytest.raises(ConfigError, match="--log-with = 'mlflow': choose one of tensorboard, wandb, all, none"):
        validate(train_config(log_with="mlflow"))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"--log-with all: Weights & Biases is not installed; pip install "
                                          r"'stylelora\[wandb\]', or choose --log-with tensorboard"):
        check_trackers("all")


def test_a_tracker_that_cannot_start_is_one_line_naming_it(train_config, tmp_path, monkeypatch):
    from stylelora.errors import TrainingError

    class Refused:
        name = "wandb"

        def start(self):
            raise RuntimeError("api key refused\nmore lines")

    monkeypatch.setattr("stylelora.train.loop.trackers_for", lambda *args: [Refused()])
    with pytest.raises(TrainingError, match=r"^--log-with: wandb could not start \(api key refused\); choose "
                                            r"--log-with tensorboard, or set WANDB_MODE=offline$"):
        train(train_config(out=tmp_path / "refused", max_steps=1, log_with="wandb"), **QUIET)
