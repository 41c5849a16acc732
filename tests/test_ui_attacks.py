"""The web UI under load and attack: parallel sessions, training beside generation, hostile uploads,
outside files, binding and --auth."""

from __future__ import annotations

import http.cookiejar
import io
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ui_helpers import CHROMIUM, CHROMIUM_ARGS, fill, start_ui, stop_ui, text_of

playwright = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def server(ui_server):
    return ui_server


def _status(page) -> str:
    """The status line, without the timer Gradio shows above it while a poll is in flight."""
    lines = text_of(page, "#train-status").strip().splitlines()
    return lines[-1] if lines else ""


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@needs_chromium
@pytest.mark.slow
def test_parallel_sessions_generate_while_training_runs_and_a_second_start_is_refused(server, tiny_base,
                                                                                      image_folder):
    url, workspace, adapters = server
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        trainer, rival, *painters = [browser.new_context().new_page() for _ in range(5)]
        for page in (trainer, rival, *painters):
            page.goto(url)
            page.wait_for_selector("#start", timeout=60_000)

        # One session starts a long training run from a folder on this machine.
        fill(trainer, "folder", image_folder)
        trainer.click("#use-folder")
        trainer.wait_for_selector("#data-message :text('6 images')", timeout=60_000)
        fill(trainer, "train-base", tiny_base)
        fill(trainer, "steps", 100_000)
        trainer.click("#start")
        _wait(lambda: _status(trainer).startswith("Training"), 120, "training to start")

        # Another session's start is refused with a message, not queued behind it silently.
        fill(rival, "folder", image_folder)
        rival.click("#use-folder")
        rival.wait_for_selector("#data-message :text('6 images')", timeout=60_000)
        fill(rival, "train-base", tiny_base)
        rival.click("#start")
        _wait(lambda: "already running" in rival.locator("#start-message").inner_text(), 60,
              "the second start to be refused")

        # Three sessions press Generate at the same moment: queued, and all complete.
        for index, page in enumerate(painters):
            page.get_by_role("tab", name="Generate").click()
            fill(page, "gen-base", tiny_base)
            fill(page, "gen-steps", 2)
            fill(page, "count", 1)
            fill(page, "prompt", f"a red circle {index}")
        for page in painters:
            page.click("#generate")
        for page in painters:
            page.wait_for_selector("#gen-status :text('1 image')", timeout=180_000)
            assert page.locator("#gallery img").count() >= 1
        prompts = {Image.open(p).text["prompt"] for p in (workspace / "outputs").glob("*.png")}
        assert prompts == {f"a red circle {i}" for i in range(3)}
        assert _status(trainer).startswith("Training"), "training should still be running beside generation"

        trainer.click("#stop")
        _wait(lambda: _status(trainer).startswith("Stopped"), 120, "training to stop")
        assert "--resume" in _status(trainer) or "checkpoint" in _status(trainer)
        assert any((adapters / "mystyle" / "checkpoints").glob("step-*"))

        # Starting the same adapter again is refused until "continue" is ticked; then it resumes.
        trainer.click("#start")
        _wait(lambda: "earlier run" in _status(trainer), 60, "a fresh start over a checkpoint to be refused")
        trainer.get_by_text("Advanced").click()
        trainer.locator("#resume input").check()
        trainer.click("#start")
        _wait(lambda: _status(trainer).startswith("Training"), 120, "the resumed training to start")
        trainer.click("#stop")
        _wait(lambda: _status(trainer).startswith("Stopped"), 120, "the resumed training to stop")
        browser.close()


def _png(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@needs_chromium
def test_uploads_with_escaping_names_land_inside_the_workspace(server, tmp_path):
    url, workspace, _ = server
    before = {p for p in Path("/tmp").iterdir()}
    names = ["../../escaped.png", "/etc/cron.d/evil.png", "..\\..\\windows.png", "ok name.png"]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#start", timeout=60_000)
        fill(page, "adapter-name", "../../uploads")
        page.locator("#uploads input[type=file]").set_input_files(
            [{"name": name, "mimeType": "image/png", "buffer": _png()} for name in names])
        page.wait_for_selector("#data-message :text('images')", timeout=60_000)
        browser.close()
    landed = [p for p in workspace.rglob("*.png")]
    assert landed and all(p.resolve().is_relative_to(workspace.resolve()) for p in landed)
    assert not Path("/etc/cron.d/evil.png").exists()
    assert not any(p.name in ("escaped.png", "windows.png") for p in set(Path("/tmp").iterdir()) - before)


def _multipart(field: str, name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_oversized_uploads_are_refused(server):
    url = server[0]
    body, content_type = _multipart("files", "huge.png", b"\0" * (51 * 1024 * 1024))
    request = urllib.request.Request(url + "/gradio_api/upload", data=body, headers={"Content-Type": content_type})
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 413
    small, content_type = _multipart("files", "small.png", _png())
    accepted = urllib.request.urlopen(urllib.request.Request(url + "/gradio_api/upload", data=small,
                                                             headers={"Content-Type": content_type}), timeout=60)
    assert accepted.status == 200


@pytest.mark.parametrize("path", [
    "/file=/etc/passwd", "/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../etc/passwd",
    "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/gradio_api/file=//etc/passwd",
    "/gradio_api/file=WORKSPACE/../../../etc/passwd",
])
def test_no_file_outside_the_workspace_is_served(server, path):
    url, workspace, _ = server
    try:
        body = urllib.request.urlopen(url + path.replace("WORKSPACE", str(workspace)), timeout=10).read()
    except urllib.error.HTTPError as error:
        assert error.code in (400, 403, 404)
    else:
        assert b"root:" not in body


def test_it_listens_on_localhost_only(server):
    port = int(server[0].rsplit(":", 1)[1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # no packet is sent; this only picks the outward interface
        outward = probe.getsockname()[0]
    if outward.startswith("127."):
        pytest.skip("this machine has no address besides loopback")
    with pytest.raises(OSError):
        socket.create_connection((outward, port), timeout=3).close()


def test_auth_refuses_unauthenticated_requests(tmp_path):
    process, url = start_ui(tmp_path / "ws", tmp_path / "lib", "--auth", "ann:s3cret")
    try:
        for path in ("/config", "/gradio_api/info"):
            with pytest.raises(urllib.error.HTTPError) as raised:
                urllib.request.urlopen(url + path, timeout=10)
            assert raised.value.code == 401, path
        cookies = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        wrong = urllib.parse.urlencode({"username": "ann", "password": "guess"}).encode()
        with pytest.raises(urllib.error.HTTPError):
            cookies.open(url + "/login", data=wrong, timeout=10)
        right = urllib.parse.urlencode({"username": "ann", "password": "s3cret"}).encode()
        assert cookies.open(url + "/login", data=right, timeout=10).status == 200
        assert cookies.open(url + "/config", timeout=10).status == 200
    finally:
        stop_ui(process)
