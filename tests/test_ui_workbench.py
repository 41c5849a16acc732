"""The web UI as a person's workbench, in headless Chromium: a folder anywhere on the machine, the library read
without a Refresh, an adapter handed over as its file, settings loaded back, and messages that say what is so."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ui_helpers import CHROMIUM, CHROMIUM_ARGS, fill, paint_with, start_ui, stop_ui, text_of

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def workbench(tmp_path_factory, two_adapters):
    """The UI started in a folder of its own, with its own temporary folder: the tests' image folders (under
    the system's /tmp) are then outside everything Gradio serves by default. One adapter is in the library
    before the page first loads."""
    home = tmp_path_factory.mktemp("started-here")
    workspace, adapters, private_tmp = home / "ws", home / "lib", home / "tmp"
    for folder in (adapters, private_tmp):
        folder.mkdir()
    shutil.copy(two_adapters[0], adapters / "alpha.safetensors")
    process, url = start_ui(workspace, adapters, cwd=home,
                            env={"TMPDIR": str(private_tmp), "GRADIO_TEMP_DIR": str(private_tmp)})
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1800})
        page.goto(url)
        page.wait_for_selector("#start", timeout=60_000)
        yield page, workspace, adapters
        browser.close()
    stop_ui(process)


def test_the_library_is_listed_when_the_page_loads(workbench):
    page, _, _ = workbench
    page.get_by_role("tab", name="Library").click()
    # No Refresh pressed: the page read the library as it loaded
    page.locator("#library [role=gridcell]", has_text="alpha").first.wait_for(timeout=30_000)


def test_stop_with_nothing_running_says_so(workbench):
    page, _, _ = workbench
    page.get_by_role("tab", name="Train").click()
    page.click("#stop")
    page.wait_for_selector("#start-message :text('Nothing is training')", timeout=30_000)


def test_a_folder_outside_the_working_directory_shows_and_trains_and_the_new_adapter_is_listed(
        workbench, image_folder, tiny_base):
    page, workspace, adapters = workbench
    assert not image_folder.is_relative_to(workspace.parent)
    page.get_by_role("tab", name="Train").click()
    fill(page, "adapter-name", "faraway")
    fill(page, "folder", image_folder)
    page.click("#use-folder")
    page.wait_for_selector("#data-message :text('6 images')", timeout=60_000)
    # Every thumbnail is a picture the browser could load: a copy in the workspace, not the user's file
    page.wait_for_function("() => { const imgs = [...document.querySelectorAll('#thumbs img')];"
                           " return imgs.length === 6 && imgs.every(i => i.complete && i.naturalWidth > 0) }",
                           timeout=30_000)
    sources = page.evaluate("() => [...document.querySelectorAll('#thumbs img')].map(i => i.src)")
    assert not any(str(image_folder) in source for source in sources), sources
    assert "Error" not in page.locator("#thumbs").inner_text()
    fill(page, "train-base", tiny_base)
    fill(page, "steps", 2)
    fill(page, "rank", 3)
    page.click("#start")
    page.wait_for_selector("#start-message :text-matches('Training started|Error')", timeout=60_000)
    assert text_of(page, "#start-message").startswith("Training started"), \
        text_of(page, "#start-message")
    page.wait_for_selector("#train-status :text-matches('Done|Error')", timeout=300_000)
    assert text_of(page, "#train-status").startswith("Done"), text_of(page, "#train-status")
    # The Library and Generate list the new adapter without a Refresh
    page.get_by_role("tab", name="Library").click()
    page.locator("#library [role=gridcell]", has_text="faraway").first.wait_for(timeout=30_000)
    page.get_by_role("tab", name="Generate").click()
    page.locator("#on-faraway input").wait_for(timeout=30_000)
    assert (adapters / "faraway" / "faraway.safetensors").exists()


def test_the_library_hands_over_the_file_and_its_settings(workbench, image_folder, tiny_base):
    page, _, adapters = workbench
    trained = adapters / "faraway" / "faraway.safetensors"
    if not trained.exists():
        pytest.skip("needs the adapter the folder test trains")
    page.get_by_role("tab", name="Library").click()
    page.locator("#library [role=gridcell]", has_text="faraway").first.click()
    page.wait_for_selector("#library-details :text('faraway')", timeout=30_000)
    details = text_of(page, "#library-details")
    for shown in ("LoRA", "rank", "3", "steps", "2", "the last step", "faraway/faraway.safetensors"):
        assert shown in details, details
    assert str(adapters.parent) not in details  # shown relative to where the UI was started
    with page.expect_download() as download:
        page.click("#library-download")
    assert Path(download.value.path()).read_bytes() == trained.read_bytes()
    # The settings go back into the Train tab, which is shown
    page.get_by_role("tab", name="Train").click()
    fill(page, "rank", 7)
    fill(page, "steps", 999)
    page.get_by_role("tab", name="Library").click()
    page.click("#library-load")
    page.wait_for_function("() => document.querySelector('#rank input').value === '3'", timeout=30_000)
    assert page.locator("#steps input").input_value() == "2"
    assert page.locator("#folder input, #folder textarea").first.input_value() == str(image_folder)
    assert page.locator("#adapter-name input, #adapter-name textarea").first.input_value() == "faraway"
    page.wait_for_selector("#data-message :text('6 images')", timeout=30_000)


def test_a_failed_paint_clears_the_old_pictures_and_names_the_field(workbench, tiny_base):
    page, workspace, _ = workbench
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-base", tiny_base)
    paint_with(page, {"alpha": 1.0})
    fill(page, "gen-steps", 2)
    fill(page, "count", 1)
    page.click("#generate")
    page.wait_for_selector("#gen-status :text('1 image')", timeout=120_000)
    assert page.locator("#gallery img").count() >= 1
    assert "saved in ws/outputs" in text_of(page, "#gen-status")  # relative to where the UI started
    fill(page, "prompt", "")
    page.click("#generate")
    page.wait_for_selector("#gen-status :text('Error')", timeout=60_000)
    status = text_of(page, "#gen-status")
    assert "--prompt" not in status and "Prompt" in status, status
    page.wait_for_function("() => document.querySelectorAll('#gallery img').length === 0", timeout=30_000)


def test_the_grid_is_shown_whole_with_its_axes_named_after_the_adapters(workbench, two_adapters, tiny_base):
    page, workspace, adapters = workbench
    shutil.copy(two_adapters[1], adapters / "beta.safetensors")
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-base", tiny_base)
    fill(page, "prompt", "a red circle")
    paint_with(page, {"alpha": 1.0, "beta": 1.0}, waited_for="beta")
    fill(page, "gen-steps", 2)
    page.get_by_text("Save this blend / X-Y grid").click()
    fill(page, "grid-weights", "0,1")
    fill(page, "grid-weights-b", "0,1")
    page.click("#grid")  # an earlier test's error may still show until "Painting the grid…" replaces it
    page.wait_for_function("() => /^(Grid saved|Error)/.test(document.querySelector('#gen-status').innerText.trim())"
                           " && !document.querySelector('#gen-status').innerText.includes('Prompt')", timeout=180_000)
    assert text_of(page, "#gen-status").startswith("Grid saved"), text_of(page, "#gen-status")
    label = page.locator("#grid-image").inner_text()
    assert "alpha's weight across" in label and "beta's weight down" in label, label
    from PIL import Image

    grid = Image.open(max((workspace / "outputs").glob("grid-*.png"), key=lambda p: p.stat().st_mtime))
    assert (grid.text["columns"], grid.text["rows"]) == ("alpha", "beta")
    assert json.loads(grid.text["weights"]) == [0, 1]


def test_a_preset_fills_the_train_form_and_none_puts_the_defaults_back(workbench):
    page, _, _ = workbench
    page.get_by_role("tab", name="Train").click()
    fill(page, "train-base", "my-own-base")
    page.locator("#preset input").click()
    page.get_by_role("option", name="sd15-style", exact=True).click()
    page.wait_for_function("() => document.querySelector('#rank input').value === '16'", timeout=30_000)
    assert page.locator("#steps input").input_value() == "1500"
    assert page.locator("#resolution input").input_value() == "512"
    assert page.locator("#train-base input").input_value() == "my-own-base"  # the preset names no base: kept
    page.locator("#preset input").click()
    page.get_by_role("option", name="none", exact=True).click()
    page.wait_for_function("() => document.querySelector('#rank input').value === '4'", timeout=30_000)
    assert page.locator("#resolution input").input_value() == "0"
    assert page.locator("#steps input").input_value() == "0"  # the base's usual steps

