"""Two CPU processes under `accelerate launch` (torchrun + gloo): one adapter, written by the main process."""

import os
import subprocess
import sys
from pathlib import Path

from stylelora.files import read_safetensors


def test_two_process_cpu_run_writes_one_adapter(tmp_path, tiny_base, image_folder):
    out = tmp_path / "ddp"
    launcher = Path(sys.executable).with_name("accelerate")
    run = subprocess.run(
        [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
         "-m", "stylelora", "train", str(image_folder), "--base", str(tiny_base), "--max-steps", "3",
         "--batch-size", "2", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "batch 2 x 2 process(es)" in run.stderr
    assert run.stdout.count("Adapter written to") == 1
    assert [p.name for p in out.glob("*.safetensors")] == ["ddp.safetensors"]
    assert read_safetensors(out / "ddp.safetensors").metadata["stylelora.steps"] == "3"
