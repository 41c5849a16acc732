"""`stylelora serve` as a person runs it: a real process on loopback, called with curl, loaded with concurrent
requests, and as two Ray Serve replicas."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import httpx
import pytest

from serve_helpers import make_adapter, start_serve, stop_serve
from stylelora.model.base import load_base
from stylelora.serve.loadtest import random_requests, run_load_test


@pytest.fixture(scope="module")
def adapter_folder(tiny_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    pipe = load_base(str(tiny_base))
    for index in range(6):
        make_adapter(pipe, folder / f"style{index}.safetensors", index, text_encoder=index % 2 == 1,
                     conv=index % 3 == 2, bias=index == 4)
    return folder


@pytest.mark.slow
def test_curl_as_readme_shows_then_a_bounded_load_test(tiny_base, adapter_folder, tmp_path):
    process, url = start_serve("--base", str(tiny_base), "--adapters", str(adapter_folder))
    try:
        if shutil.which("curl"):
            out = tmp_path / "circle.png"
            subprocess.run(["curl", "-s", "-X", "POST", f"{url}/v1/generate", "-H", "Content-Type: application/json",
                            "-H", "Accept: image/png", "-d", '{"prompt": "a red circle", "steps": 4, '
                            '"adapters": [{"name": "style0", "weight": 0.7}]}', "-o", str(out)], check=True, timeout=120)
            assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        names = [a["name"] for a in httpx.get(f"{url}/v1/adapters").json()["adapters"]]
        report = run_load_test(url, random_requests(names, 48, max_stack=3, steps=4, seed=1), concurrency=8)
        assert report.errors == 0
        assert report.checked == 48
        # batched and alone differ by float32 rounding only: at most one level in a pixel, on this random base
        assert report.max_pixel_difference <= 1, report
        metrics = httpx.get(f"{url}/metrics").text
        batches = [line for line in metrics.splitlines() if line.startswith("stylelora_batch_images_count")]
        single = [line for line in metrics.splitlines() if line.startswith('stylelora_batch_images_bucket{le="1.0"}')]
        assert float(batches[0].split()[1]) > float(single[0].split()[1])  # some calls painted several requests
    finally:
        stop_serve(process)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="Ray Serve is the [ray] extra: pip install -e '.[ray]'")
def test_two_ray_replicas_both_answer(tiny_base, adapter_folder):
    process, url = start_serve("--base", str(tiny_base), "--adapters", str(adapter_folder), "--ray", "--replicas", "2",
                               timeout=600)
    try:
        replicas = set()
        with httpx.Client(timeout=120) as client:
            for _ in range(200):
                replicas.add(client.get(f"{url}/healthz").json()["replica"])
                if len(replicas) == 2:
                    break
            assert len(replicas) == 2
            reply = client.post(f"{url}/v1/generate", json={"prompt": "a red circle", "steps": 2,
                                                            "adapters": [{"name": "style1", "weight": 0.5}]})
            assert reply.status_code == 200 and len(reply.json()["images"]) == 1
            # an upload to one replica is served by every one: they share the folder
            files = {"file": ("shared.safetensors", (adapter_folder / "style0.safetensors").read_bytes())}
            assert client.post(f"{url}/v1/adapters", files=files).status_code == 201
            answered = {client.post(f"{url}/v1/generate", json={"prompt": "x", "steps": 1,
                                                                  "adapters": [{"name": "shared"}]}).status_code
                        for _ in range(6)}
            assert answered == {200}
    finally:
        output = stop_serve(process)
        (adapter_folder / "shared.safetensors").unlink(missing_ok=True)
    assert "Traceback" not in output, output[-2000:]
