"""Training survives SIGKILL, Ctrl-C, a kill in the middle of a save, a full disk and NaN/inf,
with nothing lost: the resumed adapter equals an uninterrupted run and no checkpoint is left corrupt."""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from stylelora import files
from stylelora.errors import TrainingError
from stylelora.files import read_safetensors, save_safetensors
from stylelora.train import loop as training
from stylelora.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from stylelora.train.loop import train

QUIET = dict(progress_bar=False, log=lambda m: None)
STEPS, SAVE_EVERY = 30, 3
# How long a stopped run may take to save and exit. Generous on purpose: the run only finishes its step
# and writes a checkpoint (about a second here), but a loaded machine can be many times slower.
EXIT_BOUND = 600


def _run_settings(out: Path) -> dict:
    return dict(out=out, max_steps=STEPS, save_every=SAVE_EVERY, batch_size=2, learning_rate=1e-2, flip=True,
                caption_dropout=0.2)


def _cli_args(image_folder: Path, tiny_base: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "stylelora", "train", str(image_folder), "--base", str(tiny_base), "--out", str(out),
            "--max-steps", str(STEPS), "--save-every", str(SAVE_EVERY), "--batch-size", "2", "--lr", "1e-2",
            "--flip", "--caption-dropout", "0.2", "--quiet", "--resume"]


def _start(args: list[str]) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    # A shell starts background jobs with SIGINT ignored, and Python keeps that: give the child the
    # default disposition, so the Ctrl-C test works however pytest itself was started.
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _run_to_the_end(args: list[str]) -> None:
    finished = subprocess.run(args, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    assert finished.returncode == 0, finished.stderr


def _logged_steps(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _wait_for_training(process: subprocess.Popen, out: Path, more_than: int, timeout: float = 600) -> bool:
    """Wait until the run has logged more steps than `more_than`; False if it ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return False
        if _logged_steps(out) > more_than:
            return True
        time.sleep(0.01)
    process.kill()
    raise AssertionError("training did not start in time")


def _max_difference(a: Path, b: Path) -> float:
    x, y = read_safetensors(a).tensors, read_safetensors(b).tensors
    assert x.keys() == y.keys()
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def _assert_checkpoints_sound(out: Path) -> None:
    """Every visible checkpoint loads. (A kill mid-save may leave a hidden staging folder, which resume
    never reads and the next save removes.)"""
    for folder in (out / "checkpoints").glob("step-*") if (out / "checkpoints").is_dir() else []:
        load_checkpoint(folder)  # raises on any damage


@pytest.fixture
def straight_run(train_config, tmp_path) -> Path:
    return train(train_config(**_run_settings(tmp_path / "straight")), **QUIET).adapter_path


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(straight_run, image_folder, tiny_base,
                                                                          tmp_path):
    out = tmp_path / "killed"
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        process = _start(_cli_args(image_folder, tiny_base, out))
        if not _wait_for_training(process, out, _logged_steps(out)):
            break  # it finished first
        time.sleep(rng.uniform(0, 0.3))  # somewhere in a step, or in a checkpoint save
        process.send_signal(signal.SIGKILL)
        kills += process.wait() == -signal.SIGKILL
        _assert_checkpoints_sound(out)
    _run_to_the_end(_cli_args(image_folder, tiny_base, out))
    assert kills >= 3, f"only {kills} kills landed before the run finished"
    assert _max_difference(straight_run, out / "killed.safetensors") <= 1e-6
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, STEPS + 1)), "metrics.jsonl should hold each step once, in order"


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(straight_run, image_folder, tiny_base, tmp_path):
    out = tmp_path / "interrupted"
    process = _start(_cli_args(image_folder, tiny_base, out))
    assert _wait_for_training(process, out, 4)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=EXIT_BOUND)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert "training stopped at step" in message and "--resume" in message
    stopped_at = int(message.split("training stopped at step ")[1].split()[0])
    assert latest_checkpoint(out).name == f"step-{stopped_at:06d}"
    # SIGTERM (a plain `kill`) is treated the same way.
    process = _start(_cli_args(image_folder, tiny_base, out))
    assert _wait_for_training(process, out, stopped_at + 1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=EXIT_BOUND)
    assert process.returncode == 130 and "--resume" in stderr, stderr
    _run_to_the_end(_cli_args(image_folder, tiny_base, out))
    assert _max_difference(straight_run, out / "interrupted.safetensors") <= 1e-6


KILL_IN_SAVE = textwrap.dedent("""
    import os, signal, sys, torch
    from stylelora import files
    from stylelora.train.checkpoint import save_checkpoint
    # The fault: the process dies after the new bytes are written and synced, before the rename.
    os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    target, kind = sys.argv[1], sys.argv[2]
    tensors = {"x.lora_down.weight": torch.full((2, 2), 2.0)}
    if kind == "adapter":
        files.save_safetensors(target, tensors, {"version": "new"})
    else:
        save_checkpoint(__import__("pathlib").Path(target), 9, tensors, {}, {}, {}, {}, tensors)
""")


@pytest.mark.parametrize("kind", ["adapter", "checkpoint"])
def test_a_kill_between_write_and_rename_leaves_the_previous_file_intact(tmp_path, kind):
    old = {"x.lora_down.weight": torch.ones(2, 2)}
    if kind == "adapter":
        target = tmp_path / "style.safetensors"
        save_safetensors(target, old, {"version": "old"})
    else:
        target = tmp_path / "run"
        save_checkpoint(target, 6, old, {}, {"state": {}, "param_groups": []}, {}, {"rank": 4}, old)
    run = subprocess.run([sys.executable, "-c", KILL_IN_SAVE, str(target), kind], capture_output=True, text=True)
    assert run.returncode == -signal.SIGKILL, run.stderr
    if kind == "adapter":
        assert read_safetensors(target).metadata == {"version": "old"}
        assert torch.equal(read_safetensors(target).tensors["x.lora_down.weight"], old["x.lora_down.weight"])
    else:
        assert latest_checkpoint(target).name == "step-000006"
        adapter, state, _ = load_checkpoint(latest_checkpoint(target))
        assert torch.equal(adapter.tensors["x.lora_down.weight"], old["x.lora_down.weight"])
        assert state["step"] == 6
        # The next save clears the dead run's staging folder.
        assert any(p.name.startswith(".step-000009") for p in (target / "checkpoints").iterdir())
        save_checkpoint(target, 12, old, {}, {}, {}, {}, old)
        assert sorted(p.name for p in (target / "checkpoints").iterdir()) == ["step-000006", "step-000012"]


def test_a_full_disk_while_saving_is_a_clear_error_and_keeps_the_last_checkpoint(train_config, monkeypatch):
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up once the checkpoint of step 4 is being written
        if "step-000004" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    config = train_config(max_steps=6, save_every=2)
    with pytest.raises(TrainingError) as raised:
        train(config, **QUIET)
    message = str(raised.value)
    assert "No space left on device" in message and "step-000004" in message and "\n" not in message
    assert f"the last good checkpoint, {config.out / 'checkpoints' / 'step-000002'}, is intact" in message
    assert [p.name for p in (config.out / "checkpoints").iterdir()] == ["step-000002"]
    load_checkpoint(config.out / "checkpoints" / "step-000002")
    assert not config.adapter_path.exists()


def test_cli_reports_a_full_disk_in_one_line(train_config, monkeypatch, capsys, image_folder, tiny_base, tmp_path):
    from stylelora.cli import main as cli

    real_fsync = os.fsync

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and ".full.safetensors" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    code = cli.main(["train", str(image_folder), "--base", str(tiny_base), "--out", str(tmp_path / "full"),
                     "--max-steps", "2", "--batch-size", "2", "--no-cache-latents", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) >= 1
    assert "No space left on device" in err[-1] and "full.safetensors" in err[-1]


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_inf_or_nan_gradients_stop_training_and_keep_the_last_checkpoint(train_config, monkeypatch, bad):
    real_attach = training.attach
    calls = iter(range(1000))

    def attach_and_poison(model, *args, **kwargs):
        real_attach(model, *args, **kwargs)
        first = next(p for p in model.parameters() if p.requires_grad)
        # From the third backward pass on, one LoRA gradient turns non-finite.
        first.register_hook(lambda grad: grad * bad if next(calls) >= 2 else grad)

    monkeypatch.setattr(training, "attach", attach_and_poison)
    config = train_config(max_steps=5, save_every=1)
    with pytest.raises(TrainingError, match=r"the gradients became (inf|nan) at step 3"):
        train(config, **QUIET)
    last = latest_checkpoint(config.out)
    assert last.name == "step-000002"
    adapter, _, _ = load_checkpoint(last)
    assert all(torch.isfinite(t).all() for t in adapter.tensors.values())
    assert not config.adapter_path.exists()


@pytest.mark.parametrize("change, difference", [
    (dict(rank=8), "rank: 4 -> 8"),
    (dict(target_modules=("to_q", "to_v")), "target_modules: ['to_q', 'to_k', 'to_v', 'to_out.0'] -> ['to_q', 'to_v']"),
    (dict(train_text_encoder=True), "train_text_encoder: False -> True"),
])
def test_resume_with_changed_settings_names_the_difference(train_config, change, difference):
    train(train_config(max_steps=2, save_every=1), **QUIET)
    with pytest.raises(TrainingError) as raised:
        train(train_config(max_steps=4, resume=True, **change), **QUIET)
    assert difference in str(raised.value) and "--out" in str(raised.value)


def test_resume_on_another_base_is_refused_and_more_steps_are_allowed(train_config, tiny_vpred_base):
    train(train_config(max_steps=2, save_every=1), **QUIET)
    with pytest.raises(TrainingError, match="base: .* -> .*tiny-vpred"):
        train(train_config(max_steps=4, resume=True, base=str(tiny_vpred_base)), **QUIET)
    assert train(train_config(max_steps=4, resume=True), **QUIET).steps == 4


def test_a_fresh_run_never_mixes_with_an_earlier_runs_checkpoints(train_config):
    train(train_config(max_steps=2, save_every=1), **QUIET)
    with pytest.raises(TrainingError, match="holds a checkpoint of an earlier run; add --resume"):
        train(train_config(max_steps=2, seed=5), **QUIET)


def test_a_damaged_latent_cache_file_is_encoded_again(train_config):
    first = train(train_config(max_steps=2), **QUIET)
    expected = read_safetensors(first.adapter_path).tensors
    cached = sorted((train_config().out / "cache" / "latents").glob("*.safetensors"))
    assert len(cached) == 6
    cached[0].write_bytes(cached[0].read_bytes()[:50])
    again = train(train_config(max_steps=2), **QUIET)
    got = read_safetensors(again.adapter_path).tensors
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert len(cached[0].read_bytes()) > 50  # rewritten whole


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_give_the_modes_the_umask_asks_for(tmp_path, umask, file_mode, folder_mode):
    # tempfile makes 0600 files and 0700 folders; outputs must not stay private to their writer.
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        os.umask({umask:#o})
        from stylelora.files import folder_written_atomically, write_atomically
        root = Path(sys.argv[1])
        write_atomically(root / "image.png", b"x")
        with folder_written_atomically(root / "run") as staging:
            write_atomically(staging / "adapter.safetensors", b"y")
    """)
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    assert (tmp_path / "image.png").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "run").stat().st_mode & 0o777 == folder_mode
    assert (tmp_path / "run" / "adapter.safetensors").stat().st_mode & 0o777 == file_mode
