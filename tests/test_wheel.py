"""The built wheel works without the repository: in a fresh venv, from a folder that is no checkout, the quickstart
runs (sample data, train, paint) and the web UI answers. The dependencies come from the suite's own environment
(a .pth line), so this checks what the wheel itself carries: code, the mini's weights, rules.json, the UI as
stylelora.ui, and the `stylelora` command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(command: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout}\n{done.stderr}"
    return done


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.wheel
def test_the_wheel_runs_the_quickstart_and_the_ui_without_the_repository(tmp_path):
    wheels = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
          str(ROOT)], tmp_path, os.environ.copy())
    wheel = next(wheels.glob("stylelora-*.whl"))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    # the suite's packages for the dependencies; not its editable stylelora, whose finder a .pth line never runs
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    python = env_dir / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], tmp_path,
         os.environ.copy())
    work = tmp_path / "user"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {
        "HF_HUB_OFFLINE": "1", "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    where = _run([str(python), "-c", "import stylelora, stylelora.ui.app; print(stylelora.__file__)"], work, env)
    assert str(site) in where.stdout, where.stdout  # the wheel's copy, not the checkout
    stylelora = str(env_dir / "bin" / "stylelora")
    _run([stylelora, "sample-data", "data"], work, env)
    assert len(list((work / "data" / "stripes").glob("*.png"))) == 36
    _run([stylelora, "train", "data/stripes", "--max-steps", "4", "--quiet"], work, env)
    assert (work / "adapters" / "stripes" / "stripes.safetensors").is_file()
    _run([stylelora, "generate", "a red circle", "--lora", "adapters/stripes/stripes.safetensors", "-n", "1",
          "--steps", "2"], work, env)
    assert len(list((work / "outputs").glob("*.png"))) == 1
    port = _free_port()
    ui = subprocess.Popen([stylelora, "ui", "--port", str(port)], cwd=work, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    try:
        deadline, answered = time.monotonic() + 300, False
        while time.monotonic() < deadline and ui.poll() is None and not answered:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as page:
                    answered = page.status == 200 and b"stylelora" in page.read().lower()
            except OSError:
                time.sleep(0.5)
        assert answered, ui.stderr.read() if ui.poll() is not None else "the UI did not answer in 300 s"
    finally:
        ui.terminate()
        ui.wait(30)
