"""The Train tab's run queue in headless Chromium: runs added from the form, trained one after another by "Run the
queue", and the queue still there when the UI starts again on the same workspace. A file of its own: the
workbench tests hold a Playwright session open for their whole module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ui_helpers import CHROMIUM, CHROMIUM_ARGS, fill, start_ui, stop_ui, text_of

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


def test_the_queue_trains_runs_one_after_another_and_outlives_the_page(tmp_path, image_folder, tiny_base):
    """Two runs added from the form, trained by "Run the queue", each marked done; a UI started again on the same
    workspace shows the same queue."""
    workspace, adapters = tmp_path / "ws", tmp_path / "lib"
    adapters.mkdir()
    process, url = start_ui(workspace, adapters, cwd=tmp_path)
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1800})
            page.goto(url)
            page.wait_for_selector("#start", timeout=60_000)
            fill(page, "folder", image_folder)
            page.click("#use-folder")
            page.wait_for_selector("#data-message :text('6 images')", timeout=60_000)
            fill(page, "train-base", tiny_base)
            fill(page, "steps", 2)
            for name in ("first", "second"):
                fill(page, "adapter-name", name)
                page.click("#queue-add")
                page.wait_for_selector(f"#start-message :text-matches('Queued run .*{name}|Error')", timeout=60_000)
                assert text_of(page, "#start-message").startswith("Queued"), \
                    text_of(page, "#start-message")
            page.locator("#queue [role=gridcell]", has_text="second").first.wait_for(timeout=30_000)
            page.click("#queue-add")  # the same name again: refused, in one line, by its label
            page.wait_for_selector("#start-message :text('already writes to')", timeout=30_000)
            page.click("#queue-run")
            page.wait_for_selector("#train-status :text-matches('Done|Error')", timeout=300_000)
            assert "the queue is done: 2 run(s) trained" in text_of(page, "#train-status")
            browser.close()
    finally:
        stop_ui(process)
    runs = json.loads((workspace / "queue.json").read_text())["runs"]
    assert [(r["settings"]["name"], r["state"]) for r in runs] == [("first", "done"), ("second", "done")]
    assert all((adapters / name / f"{name}.safetensors").is_file() for name in ("first", "second"))
    process, url = start_ui(workspace, adapters, cwd=tmp_path)  # the UI again: the queue is still there
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            page.locator("#queue [role=gridcell]", has_text="first").first.wait_for(timeout=60_000)
            assert page.locator("#queue [role=gridcell]", has_text="done").count() >= 2
            browser.close()
    finally:
        stop_ui(process)
