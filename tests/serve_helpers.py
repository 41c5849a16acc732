"""Adapter files for the server's tests, made directly (no training): LoRA on the attention projections, and
optionally on the text encoder, on 3x3 ResNet convolutions (LoCon) and with trained biases (diff_b)."""

from __future__ import annotations

from pathlib import Path

import torch

from stylelora.adapters.formats import write_lora
from stylelora.methods.layouts import LoraModule

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def make_adapter(pipe, path: Path, seed: int, scale: float = 0.15, rank: int = 4, text_encoder: bool = False,
                 conv: bool = False, bias: bool = False, metadata: dict | None = None) -> Path:
    g = torch.Generator().manual_seed(seed)
    weights = {}
    for name, layer in pipe.unet.named_modules():
        if isinstance(layer, torch.nn.Linear) and name.endswith(ATTENTION):
            weights[("unet", name)] = LoraModule(torch.randn(rank, layer.in_features, generator=g) * scale,
                                                 torch.randn(layer.out_features, rank, generator=g) * scale, rank * 2.0,
                                                 torch.randn(layer.out_features, generator=g) * 0.01
                                                 if bias and layer.bias is not None else None)
        elif conv and isinstance(layer, torch.nn.Conv2d) and name.endswith("resnets.0.conv1"):
            weights[("unet", name)] = LoraModule(torch.randn(rank, layer.in_channels, 3, 3, generator=g) * scale / 3,
                                                 torch.randn(layer.out_channels, rank, 1, 1, generator=g) * scale, float(rank))
    if text_encoder:
        for name, layer in pipe.text_encoder.named_modules():
            if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj")):
                weights[("text_encoder", "text_model." + name)] = LoraModule(
                    torch.randn(rank, layer.in_features, generator=g) * scale,
                    torch.randn(layer.out_features, rank, generator=g) * scale, float(rank))
    return write_lora(weights, "kohya", path, metadata or {})


def start_serve(*args: str, timeout: float = 300) -> tuple["subprocess.Popen", str]:
    """`stylelora serve ARGS` on a free port; returns the process and its URL once /healthz answers."""
    import os
    import subprocess
    import sys
    import tempfile
    import time

    import httpx
    from ui_helpers import ROOT, free_port

    port = free_port()
    # Its output goes to a file, never a pipe: a pipe nobody reads fills, and the server blocks on its next log line.
    log = tempfile.NamedTemporaryFile("w+", prefix="stylelora-serve-", suffix=".log", delete=False)
    process = subprocess.Popen([sys.executable, "-m", "stylelora", "serve", "--port", str(port), *args], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
    process.log_path = log.name
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    process.wait()
    raise RuntimeError(f"stylelora serve did not answer: {Path(process.log_path).read_text()[-3000:]}")


def stop_serve(process, timeout: float = 120) -> str:
    """Ctrl-C, as a person stops it; the output it printed."""
    import signal

    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=timeout)
    except Exception:  # noqa: BLE001
        process.kill()
        process.wait()
    output = Path(process.log_path).read_text()
    Path(process.log_path).unlink(missing_ok=True)
    return output
