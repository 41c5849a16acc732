"""The run queue: runs added with `stylelora train`'s flags, trained one after another, a failed run marked with its
error while the queue goes on, and a queue killed with SIGKILL mid-run that ends, after `queue run`, with the
adapters of an uninterrupted queue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stylelora.adapters.formats import read_safetensors
from stylelora.cli.main import main
from stylelora.train.run_queue import read_queue, run_queue, shown_runs

QUIET = dict(log=lambda m: None, progress_bar=False)


def _add(queue: Path, *flags: str) -> int:
    return main(["queue", "add", *flags, "--file", str(queue)])


def test_add_keeps_paths_absolute_and_checkpoints_on_and_refuses_bad_runs_at_once(image_folder, tmp_path, capsys,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    queue = tmp_path / "q.json"
    assert _add(queue, str(image_folder), "--name", "one", "--max-steps", "5", "--rank", "2") == 0
    assert "Queued run 1, one: 5 steps, into " in capsys.readouterr().out
    (run,) = read_queue(queue)
    assert run.settings == {"data": str(image_folder), "out": str(tmp_path / "adapters" / "one"), "name": "one",
                            "rank": 2, "max_steps": 5, "save_every": 100}
    assert _add(queue, str(image_folder), "--name", "one") == 2
    assert capsys.readouterr().err.strip() == (f"stylelora: error: queued run 1 already writes to "
                                               f"{tmp_path / 'adapters' / 'one'}; give another --out or --name")
    assert _add(queue, str(image_folder), "--rank", "0") == 2
    assert "--rank = 0: the rank must be" in capsys.readouterr().err and len(read_queue(queue)) == 1
    assert main(["queue", "remove", "7", "--file", str(queue)]) == 2
    assert "no run 7; `stylelora queue list` shows the runs" in capsys.readouterr().err
    assert main(["queue", "list", "--file", str(queue)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split("\t")[:5] == ["1", "waiting", "one", str(image_folder), "5 steps"]
    assert main(["queue", "remove", "1", "--file", str(queue)]) == 0 and read_queue(queue) == []
    queue.write_text("not json")
    assert main(["queue", "list", "--file", str(queue)]) == 2
    assert "not a stylelora queue file" in capsys.readouterr().err


def test_a_failed_run_is_marked_with_its_error_and_the_queue_goes_on(image_folder, tiny_base, tmp_path):
    queue = tmp_path / "q.json"
    base = ["--base", str(tiny_base), "--max-steps", "2", "--batch-size", "2"]
    assert _add(queue, str(tmp_path / "gone"), "--out", str(tmp_path / "a"), *base) == 0
    assert _add(queue, str(image_folder), "--out", str(tmp_path / "b"), *base) == 0
    done = run_queue(queue, **QUIET)
    failed, trained = read_queue(queue)
    assert (failed.state, trained.state) == ("failed", "done") and [r.id for r in done] == [2]
    assert failed.message == f"{tmp_path / 'gone'}: no such folder; give the folder that holds your training images"
    assert trained.message == str(tmp_path / "b" / "b.safetensors") and Path(trained.message).is_file()
    assert run_queue(queue, **QUIET) == []  # nothing is waiting: a second run trains nothing again


def _queue_of_two(queue: Path, image_folder: Path, tiny_base: Path, out: Path) -> None:
    common = ["--base", str(tiny_base), "--batch-size", "2", "--learning-rate", "1e-2", "--flip"]
    assert _add(queue, str(image_folder), "--out", str(out / "first"), "--max-steps", "4", *common) == 0
    assert _add(queue, str(image_folder), "--out", str(out / "second"), "--max-steps", "300", "--save-every", "20",
                "--rank", "2", *common) == 0


def _wait_for(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:.0f} s for {what}")
        time.sleep(0.05)


def test_a_queue_killed_mid_run_ends_with_the_adapters_of_an_uninterrupted_queue(image_folder, tiny_base, tmp_path):
    straight = tmp_path / "straight.json"
    _queue_of_two(straight, image_folder, tiny_base, tmp_path / "straight")
    run_queue(straight, **QUIET)

    killed = tmp_path / "killed.json"
    _queue_of_two(killed, image_folder, tiny_base, tmp_path / "killed")
    env = os.environ | {"HF_HUB_OFFLINE": "1"}
    runner = subprocess.Popen([sys.executable, "-m", "stylelora", "queue", "run", "--quiet", "--file", str(killed)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = tmp_path / "killed" / "second" / "checkpoints"
    try:
        _wait_for(lambda: any(checkpoints.glob("step-*")) or runner.poll() is not None, "the second run's checkpoint")
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    assert runner.returncode == -signal.SIGKILL, runner.stderr.read().decode()[-2000:]
    assert [r.state for r in shown_runs(killed)] == ["done", "interrupted"]
    assert json.loads(killed.read_text())["runs"][1]["state"] == "running"

    assert [r.id for r in run_queue(killed, **QUIET)] == [2]
    assert [r.state for r in read_queue(killed)] == ["done", "done"]
    for name in ("first", "second"):
        a = read_safetensors(tmp_path / "straight" / name / f"{name}.safetensors").tensors
        b = read_safetensors(tmp_path / "killed" / name / f"{name}.safetensors").tensors
        assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_one_runner_at_a_time(tmp_path):
    from stylelora.errors import ConfigError
    from stylelora.train.run_queue import _locked

    queue = tmp_path / "q.json"
    with _locked(queue, ".run.lock") as held:
        assert held
        with pytest.raises(ConfigError, match="another `stylelora queue run` is training this queue"):
            run_queue(queue, **QUIET)
    assert run_queue(queue, **QUIET) == []
