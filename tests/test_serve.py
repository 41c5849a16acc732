"""`stylelora serve`: the same images as `stylelora generate`, mixed-adapter batches equal to each request
served alone, the resident pool, and a JSON error (never a traceback) for each kind of bad input."""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from serve_helpers import make_adapter
from stylelora.adapters.library import list_adapters
from stylelora.adapters.stack import StyleWeight
from stylelora.cli.main import main
from stylelora.errors import ServerBusyError
from stylelora.model.base import load_base
from stylelora.paint.engine import Engine, PaintJob
from stylelora.paint.generate import generate
from stylelora.paint.request import GenerateConfig
from stylelora.serve.app import build_app
from stylelora.serve.batcher import Batcher
from stylelora.serve.config import ServeConfig


@pytest.fixture(scope="module")
def served(tiny_base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    pipe = load_base(str(tiny_base))
    paths = {"plain": make_adapter(pipe, folder / "plain.safetensors", 1),
             "words": make_adapter(pipe, folder / "words.safetensors", 2, text_encoder=True),
             "locon": make_adapter(pipe, folder / "locon.safetensors", 3, conv=True, bias=True)}
    app = build_app(ServeConfig(base=str(tiny_base), adapters=folder, max_count=4, max_side=64, max_steps=30))
    with TestClient(app) as client:
        yield client, app.state.engine, paths, folder


def pngs(reply) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(image["png"]))) for image in reply.json()["images"]]


def job(stack, seed=1, count=1, blend="merge", prompt="a red circle", steps=6) -> PaintJob:
    config = GenerateConfig(prompt=prompt, seed=seed, count=count, steps=steps, blend=blend)
    return PaintJob(config, tuple((name, StyleWeight(w, w)) for name, w in stack))


def test_a_served_image_is_the_image_generate_paints_with_the_same_settings(served, tiny_base, tmp_path):
    client, _, paths, _ = served
    body = {"prompt": "a red circle", "adapters": [{"name": "words", "weight": 0.7}, {"name": "locon", "weight": 0.5}],
            "seed": 3, "count": 2, "steps": 6}
    reply = client.post("/v1/generate", json=body)
    assert reply.status_code == 200, reply.text
    config = GenerateConfig(prompt="a red circle", loras=(f"{paths['words']}:0.7", f"{paths['locon']}:0.5"),
                            base=str(tiny_base), seed=3, count=2, steps=6, out=tmp_path)
    for served_image, path in zip(pngs(reply), generate(config)):
        painted = Image.open(path)
        assert np.array_equal(np.asarray(served_image), np.asarray(painted))  # bitwise: the fused path
        assert served_image.text == painted.text  # the same PNG metadata, key for key
    assert json.loads(served_image.text["stylelora"])["loras"][0] == {"file": str(paths["words"]), "unet": 0.7, "te": 0.7}


@pytest.mark.parametrize("blend", ["switch", "composite"])
def test_switch_and_composite_blends_paint_what_generate_paints(served, tiny_base, tmp_path, blend):
    client, _, paths, _ = served
    body = {"prompt": "a blue square", "adapters": [{"name": "plain", "weight": 0.8}, {"name": "locon", "weight": 0.6}],
            "seed": 5, "steps": 6, "blend": blend}
    served_image = pngs(client.post("/v1/generate", json=body))[0]
    config = GenerateConfig(prompt="a blue square", loras=(f"{paths['plain']}:0.8", f"{paths['locon']}:0.6"),
                            base=str(tiny_base), seed=5, count=1, steps=6, blend=blend, out=tmp_path)
    painted = np.asarray(Image.open(generate(config)[0])).astype(int)
    # Unfused per-row hooks here, a batch of one there: the same sums, rounded apart by float32 only.
    assert np.abs(np.asarray(served_image).astype(int) - painted).max() <= 1


def test_a_mixed_batch_paints_each_request_as_it_is_painted_alone(served):
    _, engine, _, _ = served
    jobs = [job([("plain", 0.7)], seed=1), job([("words", 1.0), ("locon", 0.4)], seed=2), job([], seed=3),
            job([("locon", -0.5)], seed=4, count=2), job([("plain", 0.3), ("words", 0.3)], seed=6, prompt="a cat")]
    batched = engine.paint(jobs, output_type="latent")
    assert engine.lora.fused_stack is None  # the batch went through the per-row path
    for one, latents in zip(jobs, batched):
        alone = engine.paint([one], output_type="latent")[0]
        for a, b in zip(latents, alone):
            # 1e-5 of the latents' size: this random base's latents reach about 27 (std 7), not 1
            assert (a - b).abs().max() <= 1e-5 * b.abs().max(), (one.stack, (a - b).abs().max())
    # and every row really carried its own stack: the images differ from the bare base's
    bare = engine.paint([job([], seed=1)], output_type="latent")[0][0]
    assert (batched[0][0] - bare).abs().max() > 1e-3


def test_weight_zero_is_the_bare_base_and_only_the_named_weight_changes(served):
    client, _, _, _ = served
    base = {"prompt": "a red circle", "seed": 9, "steps": 6}
    bare = np.asarray(pngs(client.post("/v1/generate", json=base))[0])
    zero = np.asarray(pngs(client.post("/v1/generate", json=base | {"adapters": [{"name": "plain", "weight": 0}]}))[0])
    styled = np.asarray(pngs(client.post("/v1/generate", json=base | {"adapters": [{"name": "plain", "weight": 1}]}))[0])
    assert np.array_equal(bare, zero)
    assert not np.array_equal(bare, styled)


def test_one_png_is_returned_as_image_png_when_asked(served):
    client, _, _, _ = served
    reply = client.post("/v1/generate", json={"prompt": "a red circle", "steps": 4}, headers={"Accept": "image/png"})
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    assert json.loads(Image.open(io.BytesIO(reply.content)).text["stylelora"])["steps"] == 4


@pytest.mark.parametrize("body, status, words", [
    ({"prompt": "x", "adapters": [{"name": "nope"}]}, 404, "no adapter named 'nope'"),
    ({"prompt": "x", "adapters": [{"name": "plain", "weight": "NaN"}]}, 422, "weight"),
    ({"prompt": "x", "count": 5}, 422, "count = 5: this server allows at most 4 (--max-count)"),
    ({"prompt": "x", "width": 128}, 422, "at most 64 (--max-side)"),
    ({"prompt": "x", "width": 12}, 422, "width = 12: use a multiple of 8"),
    ({"prompt": "x", "steps": 0}, 422, "at least 1 denoising step"),
    ({"prompt": "x", "steps": 31}, 422, "at most 30 (--max-steps)"),
    ({"prompt": " "}, 422, "give a prompt"),
    ({"prompt": "x", "adapters": [{"name": "plain", "weight": "unet=1,zz=2"}]}, 422, "adapters[0] weight"),
    ({"prompt": "x", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ({"prompt": "x", "blend": "average"}, 422, "blend"),
])
def test_bad_requests_get_one_json_line(served, body, status, words):
    client, _, _, _ = served
    text = json.dumps(body).replace('"NaN"', "NaN")  # a bare NaN, as a careless client sends it
    reply = client.post("/v1/generate", content=text, headers={"Content-Type": "application/json"})
    assert reply.status_code == status
    assert words in reply.json()["error"] and "Traceback" not in reply.text


def test_a_non_finite_weight_is_refused_with_422(served):
    client, _, _, _ = served
    for literal in ("NaN", "Infinity", "-Infinity"):
        text = '{"prompt": "x", "adapters": [{"name": "plain", "weight": %s}]}' % literal
        reply = client.post("/v1/generate", content=text, headers={"Content-Type": "application/json"})
        assert reply.status_code == 422 and "finite" in reply.json()["error"]


def test_an_oversized_body_gets_413_before_it_is_read(served):
    client, _, _, _ = served
    reply = client.post("/v1/generate", content=b'{"prompt": "' + b"x" * (2 * 2**20) + b'"}',
                        headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and "limit" in reply.json()["error"]


def test_a_prompt_over_the_text_encoders_limit_is_cut_and_the_reply_says_so(served):
    client, engine, _, _ = served
    reply = client.post("/v1/generate", json={"prompt": "red " * 60, "steps": 2}).json()
    assert reply["prompt_cut"] is True
    assert f"past the text encoder's {engine.prompt_limit}" in reply["notes"][0]
    assert client.post("/v1/generate", json={"prompt": "red", "steps": 2}).json()["prompt_cut"] is False


def test_adapters_are_listed_uploaded_served_and_deleted(served):
    client, _, paths, folder = served
    listed = {a["name"]: a for a in client.get("/v1/adapters").json()["adapters"]}
    assert set(listed) >= {"plain", "words", "locon"}
    assert listed["plain"]["rank"] == 4 and listed["plain"]["size"] == paths["plain"].stat().st_size
    reply = client.post("/v1/adapters", files={"file": ("../../fresh.safetensors", paths["plain"].read_bytes())})
    assert reply.status_code == 201 and reply.json()["name"] == "fresh"
    assert (folder / "fresh.safetensors").exists()  # inside the folder, whatever the client called it
    assert "fresh" in {entry.name for entry in list_adapters(folder)}  # the UI's library sees it too
    served_now = client.post("/v1/generate", json={"prompt": "x", "steps": 2, "adapters": [{"name": "fresh"}]})
    assert served_now.status_code == 200
    assert client.post("/v1/adapters", files={"file": ("fresh.safetensors", paths["plain"].read_bytes())}).status_code == 409
    assert client.delete("/v1/adapters/fresh").json() == {"deleted": "fresh"}
    assert not (folder / "fresh.safetensors").exists()
    assert client.delete("/v1/adapters/fresh").status_code == 404


@pytest.mark.parametrize("name, data, words", [
    ("notes.exe", b"MZ\x90\x00", "only .safetensors adapters"),
    ("model.ckpt", b"\x80\x04pickle", "only .safetensors adapters"),
    ("broken.safetensors", b"garbage", "broken.safetensors: not a valid .safetensors file"),
])
def test_malformed_uploads_are_refused_and_nothing_is_written(served, name, data, words):
    client, _, _, folder = served
    before = sorted(p.name for p in folder.rglob("*"))
    reply = client.post("/v1/adapters", files={"file": (name, data)})
    assert reply.status_code == 422 and words in reply.json()["error"]
    assert sorted(p.name for p in folder.rglob("*")) == before


def test_an_adapter_for_another_architecture_is_refused_on_upload(served, tmp_path):
    client, _, _, folder = served
    other = load_base("mini")  # context width 64, layers the tiny base does not have
    path = make_adapter(other, tmp_path / "other.safetensors", 7)
    reply = client.post("/v1/adapters", files={"file": ("other.safetensors", path.read_bytes())})
    assert reply.status_code == 422 and "does not fit this base" in reply.json()["error"]
    assert not (folder / "other.safetensors").exists()


def test_without_the_api_key_every_request_gets_401(tiny_base, tmp_path):
    app = build_app(ServeConfig(base=str(tiny_base), adapters=tmp_path, api_key="sesame"))
    with TestClient(app) as client:
        for method, url in (("get", "/healthz"), ("get", "/metrics"), ("get", "/v1/adapters"), ("post", "/v1/generate")):
            assert getattr(client, method)(url).status_code == 401
        assert client.get("/healthz", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/healthz", headers={"Authorization": "Bearer sesame"}).status_code == 200
        assert client.get("/healthz", headers={"X-API-Key": "sesame"}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(served, monkeypatch):
    client, _, _, _ = served
    batcher = client.app.state.batcher

    def busy(job):
        raise ServerBusyError("the queue holds 64 requests (--max-queue); try again shortly")

    monkeypatch.setattr(batcher, "submit", busy)
    reply = client.post("/v1/generate", json={"prompt": "x"})
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "1" and "--max-queue" in reply.json()["error"]


class _BlockedEngine:
    """An engine whose paint waits for a signal, so the queue's state can be seen."""

    class pool:
        @staticmethod
        def prefetch(names):
            list(names)

    def __init__(self):
        self.started, self.release = threading.Event(), threading.Event()
        self.batches = []

    def paint(self, jobs):
        self.started.set()
        self.release.wait(30)
        self.batches.append(len(jobs))
        return [[f"image of {j.config.seed}"] * j.config.count for j in jobs]


def test_the_batcher_bounds_its_queue_and_batches_what_waits_together():
    engine = _BlockedEngine()
    batcher = Batcher(engine, max_queue=3, max_batch_images=8, window_seconds=0.0)
    try:
        first = batcher.submit(job([], seed=0))
        assert engine.started.wait(30)  # the worker holds the first job: the queue is empty again
        waiting = [batcher.submit(job([("a", 1.0)], seed=i)) for i in (1, 2, 3)]
        with pytest.raises(ServerBusyError, match="--max-queue"):
            batcher.submit(job([], seed=4))
        engine.release.set()
        assert first.result(30) == ["image of 0"]
        assert [f.result(30) for f in waiting] == [["image of 1"], ["image of 2"], ["image of 3"]]
        assert engine.batches == [1, 3]  # the three that waited together were painted in one call
    finally:
        engine.release.set()
        batcher.close()


def test_the_pool_keeps_at_most_max_resident_adapters_and_reloads_on_demand(tiny_base, served):
    _, _, _, folder = served
    engine = Engine(str(tiny_base), folder, max_resident=2)
    engine.paint([job([("plain", 1.0), ("words", 1.0), ("locon", 1.0)], steps=1)])  # one batch needs three
    assert len(engine.pool.resident) == 3  # the batch's own adapters are never evicted from under it
    engine.paint([job([("plain", 1.0)], steps=1)])
    assert len(engine.pool.resident) == 2 and "plain" in engine.pool.resident
    loads = engine.pool.loads
    engine.paint([job([("words", 1.0)], steps=1)])
    assert engine.pool.loads in (loads, loads + 1) and len(engine.pool.resident) == 2
    resident = engine.pool.resident["plain"]
    assert resident.nbytes == sum(t.numel() * 4 for m in resident.modules.values() for t in (m.down, m.up))


def test_metrics_count_requests_adapters_and_switches(served):
    client, _, _, _ = served
    client.post("/v1/generate", json={"prompt": "x", "steps": 2, "adapters": [{"name": "plain"}]})
    text = client.get("/metrics").text
    assert 'stylelora_requests_total{endpoint="/v1/generate",status="200"}' in text
    assert "stylelora_request_seconds_bucket" in text and "stylelora_queue_depth 0.0" in text
    resident = float(next(l for l in text.splitlines() if l.startswith("stylelora_resident_adapters ")).split()[1])
    assert resident >= 1
    assert float(next(l for l in text.splitlines() if l.startswith("stylelora_adapter_switches_total")).split()[1]) >= 1


def test_serve_flags_are_checked_before_anything_loads(capsys, tmp_path):
    assert main(["serve", "--replicas", "2"]) == 2
    assert "--replicas = 2: several replicas run under Ray: add --ray" in capsys.readouterr().err
    assert main(["serve", "--max-resident", "0"]) == 2
    assert "--max-resident = 0" in capsys.readouterr().err
    (tmp_path / "serve.toml").write_text('[serve]\nmax-queue = 0\n')
    assert main(["serve", "--config", str(tmp_path / "serve.toml")]) == 2
    assert "--max-queue = 0" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text('[serve]\ncolours = 4\n')
    assert main(["serve", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "unknown serve setting 'colours'" in capsys.readouterr().err


def test_an_nf4_base_is_served_with_the_adapters_unfused(tiny_base, served, tmp_path):
    pytest.importorskip("bitsandbytes")
    _, _, paths, folder = served
    engine = Engine(str(tiny_base), folder, quantize="nf4")
    styled = engine.paint([job([("plain", 0.8)], seed=2)])[0][0]
    assert engine.lora.fused_stack is None  # never fused into 4-bit weights
    bare = engine.paint([job([], seed=2)])[0][0]
    assert not np.array_equal(np.asarray(styled), np.asarray(bare))
    config = GenerateConfig(prompt="a red circle", loras=(f"{paths['plain']}:0.8",), base=str(tiny_base), seed=2,
                            count=1, steps=6, quantize_base="nf4", out=tmp_path)
    painted = np.asarray(Image.open(generate(config)[0])).astype(int)  # peft's bitsandbytes LoRA layers
    assert np.abs(np.asarray(styled).astype(int) - painted).max() <= 1


def test_two_threads_asking_for_one_adapter_read_its_file_once(served):
    from stylelora.paint.pool import AdapterPool

    _, engine, _, folder = served
    reads, gate = [], threading.Event()

    def slow_read(path):
        reads.append(path)
        gate.wait(30)
        return engine.read_adapter(path)

    pool = AdapterPool(folder, slow_read)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(pool.get("plain"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    while not reads:  # the first reader is in; let the second queue behind it
        threading.Event().wait(0.01)
    gate.set()
    for thread in threads:
        thread.join(30)
    assert len(reads) == 1 and len(results) == 2 and results[0] is results[1]
    pool.close()


def test_ray_without_its_extra_is_one_line_naming_it(monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # as if `pip install -e '.[ray]'` was never run
    assert main(["serve", "--ray", "--replicas", "2"]) == 2
    assert "--ray needs Ray Serve: pip install -e '.[ray]'" in capsys.readouterr().err


def test_train_and_serve_settings_are_read_by_one_function():
    from stylelora.errors import ConfigError
    from stylelora.train.settings import from_dict
    from stylelora.serve.config import serve_config_from_dict

    train = from_dict({"data": "images", "target-modules": "to_q,to_k", "out": None, "rank": 8})
    assert train.data == Path("images") and train.target_modules == ("to_q", "to_k") and train.out is None
    with pytest.raises(ConfigError, match=r"unknown setting 'colour': see `stylelora train --help`"):
        from_dict({"data": "images", "colour": "red"})
    serve = serve_config_from_dict({"adapters": "lib", "max-resident": 5})
    assert serve.adapters == Path("lib") and serve.max_resident == 5


def test_a_ties_blend_paints_the_merged_file_and_merges_once(served, tiny_base, tmp_path, monkeypatch):
    """--blend ties (served, and in generate) paints as `merge --method ties` then painting that file does, and a
    second painting of the same stack reads the cached merge rather than merging again."""
    from stylelora.paint import sparse_blend
    from stylelora.paint.merge_job import MergeConfig, merge

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    client, _, paths, _ = served
    body = {"prompt": "a blue square", "adapters": [{"name": "plain", "weight": 0.8}, {"name": "locon", "weight": 0.6}],
            "seed": 5, "steps": 6, "blend": "ties", "blend_density": 0.4}
    served_image = pngs(client.post("/v1/generate", json=body))[0]
    assert json.loads(served_image.text["stylelora"])["blend_density"] == 0.4
    merged = tmp_path / "ties.safetensors"
    merge(MergeConfig((f"{paths['plain']}:0.8", f"{paths['locon']}:0.6"), merged, "ties", base=str(tiny_base),
                      density=0.4))
    config = GenerateConfig(prompt="a blue square", loras=(f"{merged}:1",), base=str(tiny_base), seed=5, count=1,
                            steps=6, out=tmp_path)
    painted = np.asarray(Image.open(generate(config)[0])).astype(int)
    assert np.abs(np.asarray(served_image).astype(int) - painted).max() <= 1  # float32 rounding apart
    calls = []
    monkeypatch.setattr(sparse_blend, "merge_sparse", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(
        AssertionError("merged again")))
    again = pngs(client.post("/v1/generate", json=body))[0]
    assert np.array_equal(np.asarray(again), np.asarray(served_image)) and calls == []
    reply = client.post("/v1/generate", json=body | {"blend_density": 0})
    assert reply.status_code == 422
