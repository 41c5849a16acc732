"""The web UI end to end in headless Chromium: upload, caption, train, library, generate, errors, safety."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from pathlib import Path

import pytest

from stylelora.files import read_safetensors
from ui_helpers import CHROMIUM, CHROMIUM_ARGS, ROOT, fill, fill_all, paint_with, y_ticks, text_of

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots of each tab, for people to look at


@pytest.fixture(scope="module")
def server(ui_server):
    return ui_server


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 1800})
        tab.goto(server[0])
        tab.wait_for_selector("#start", timeout=60_000)
        yield tab
        browser.close()


def test_the_server_is_local_only_and_serves_no_outside_file(server):
    url = server[0]
    assert url.startswith("http://127.0.0.1:")
    for path in ("/file=/etc/passwd", "/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../etc/passwd"):
        try:
            body = urllib.request.urlopen(url + path, timeout=5).read()
        except urllib.error.HTTPError as error:
            assert error.code in (403, 404)
        else:
            assert b"root:" not in body


def test_upload_caption_train_library_generate(page, server, image_folder, tiny_base, two_adapters, tmp_path):
    _, workspace, adapters = server
    # Upload four images, one text file posing as an image, and a file with a path-escaping name.
    sneaky = tmp_path / "sneaky"
    sneaky.mkdir()
    files = sorted(image_folder.glob("*.png"))[:4]
    (tmp_path / "notes.exe").write_text("not an image")
    page.locator("#uploads input[type=file]").set_input_files([str(f) for f in files] + [str(tmp_path / "notes.exe")])
    page.wait_for_selector("#data-message :text('4 images')", timeout=60_000)
    # Said where the images went; the refused file is listed once, as refused, with its reason, and leaves
    # the list of files to train on.
    assert text_of(page, "#data-message").startswith("4 images in datasets/mystyle.")
    assert "1 file refused, listed below" in text_of(page, "#data-message")
    assert "notes.exe" not in text_of(page, "#data-message")
    assert "notes.exe: not an image" in text_of(page, "#refused")
    listed = "() => document.querySelector('#uploads').innerText.replace(/\\n/g, '')"  # a name shows as "0\n.png"
    page.wait_for_function(f"names => names.every(n => ({listed})().includes(n)) && !({listed})().includes('notes')",
                           arg=[f.name for f in files], timeout=30_000)
    dataset = workspace / "datasets" / "mystyle"
    assert sorted(p.name for p in dataset.glob("*.png")) == [f.name for f in files]

    # Edit the first caption and save it as a sidecar file.
    cell = page.locator("#captions [data-testid='cell-0-1']")
    cell.dblclick()
    editor = cell.locator("textarea, input").first
    editor.fill("a zzstripe circle")
    editor.press("Enter")
    page.click("#save-captions")
    page.wait_for_selector("#data-message :text('Saved 4 captions')", timeout=30_000)
    assert (dataset / files[0].with_suffix(".txt").name).read_text().strip() == "a zzstripe circle"

    # Train a tiny LoHa and watch the progress and the loss curve move. Choosing LoHa hides the
    # LoRA-only fields; choosing the "all" modules shows the conv rank and alpha.
    page.locator("#method input").click()
    page.get_by_role("option", name="dylora", exact=True).click()
    page.wait_for_selector("#export-rank", state="visible", timeout=30_000)
    page.locator("#method input").click()
    page.get_by_role("option", name="loha", exact=True).click()
    page.wait_for_selector("#rslora", state="hidden", timeout=30_000)
    page.wait_for_selector("#export-rank", state="hidden", timeout=30_000)
    assert page.locator("#conv-rank").count() == 0 or not page.locator("#conv-rank").is_visible()
    page.locator("#targets input").click()
    page.get_by_role("option", name="all-linear", exact=True).click()
    fill(page, "train-base", tiny_base)
    fill(page, "steps", 12)
    # Hold one of the four images out, validate every 3 steps, average the weights, preserve a prompt, and train
    # on class images (here the test's image folder stands in for them).
    page.get_by_text("Knowing when to stop").click()
    fill_all(page, {"validation-split": 0.25, "validate-every": 3, "ema-decay": 0.5, "preserve-prompts": "a blue square",
                    "reg-data": image_folder, "reg-weight": 0.5})
    page.click("#start")
    page.wait_for_selector("#start-message :text-matches('Training started|Error')", timeout=60_000)
    assert text_of(page, "#start-message").startswith("Training started"), text_of(page, "#start-message")
    status = _wait_text(page, "#train-status", ("Done", "**Error", "Error", "Stopped"), timeout=180)
    assert status.startswith("Done") and "validation loss" in status, status
    assert re.match(r"step 12 / 12 · took \d+ s · loss \d\.\d{4} · validation loss",
                    page.locator("#train-progress-text").inner_text()), page.locator("#train-progress-text").inner_text()
    page.locator("#loss-plot", has_text="validation").wait_for(timeout=30_000)  # the second curve's legend
    ticks = y_ticks(page)
    assert len(ticks) >= 2 and ticks == sorted(set(ticks)), ticks  # a numeric axis, not one tick per value
    from stylelora.adapters.formats import read_lora

    meta = read_safetensors(adapters / "mystyle" / "mystyle.safetensors").metadata
    settings = json.loads(meta["stylelora.config"])
    assert (settings["validation_split"], settings["validate_every"], settings["ema_decay"]) == (0.25, 3, 0.5)
    assert Path(settings["preserve_prompts"]).read_text() == "a blue square\n"
    assert (settings["reg_data"], settings["reg_weight"]) == (str(image_folder), 0.5)
    assert float(meta["stylelora.validation_loss"]) > 0 and meta["stylelora.keep"] == "best"
    trained, _, _ = read_lora(adapters / "mystyle" / "mystyle.safetensors")
    assert {m.kind for m in trained.values()} == {"loha"} and any(k[1].endswith("proj_in") for k in trained)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "train.png"), full_page=True)

    # The library lists it; importing a pickle is refused with a readable message; a real file imports.
    page.get_by_role("tab", name="Library").click()
    page.click("#library-refresh")
    page.locator("#library [role=gridcell]", has_text="mystyle").first.wait_for(timeout=30_000)
    page.locator("#library [role=gridcell]", has_text="LoHa").first.wait_for(timeout=30_000)
    # the command that serves this same folder over HTTP
    assert f"stylelora serve --adapters {adapters}" in page.locator("#library-serve").inner_text()
    (tmp_path / "evil.ckpt").write_bytes(b"\x80\x04K\x01.")
    page.locator("#import input[type=file]").set_input_files(str(tmp_path / "evil.ckpt"))
    page.wait_for_selector("#library-message :text('only .safetensors')", timeout=30_000)
    assert "Traceback" not in page.content()
    page.locator("#import input[type=file]").set_input_files(str(two_adapters[0]))
    page.wait_for_selector("#library-message :text('Imported alpha.safetensors')", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "library.png"), full_page=True)

    # Generate with two adapters at different weights: one row per adapter, in the library's order.
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-base", tiny_base)
    paint_with(page, {"mystyle": 1.2, "alpha": 0.4}, waited_for="alpha")
    rows = page.evaluate("() => Array.from(document.querySelectorAll('[id^=\"row-\"]')).map(r => r.id)")
    from stylelora.adapters.library import list_adapters

    assert rows == [f"row-{e.name}" for e in list_adapters(adapters)], rows
    fill(page, "gen-steps", 2)
    fill(page, "count", 2)
    page.click("#generate")
    page.wait_for_selector("#gen-status :text('2 images')", timeout=120_000)
    assert page.locator("#gallery img").count() >= 2
    page.screenshot(path=str(ARTIFACTS / "generate.png"), full_page=True)
    outputs = sorted((workspace / "outputs").glob("*.png"))
    assert len(outputs) == 2
    from PIL import Image

    settings = Image.open(outputs[0]).text["loras"]
    assert "alpha.safetensors:0.4" not in settings and '"unet": 0.4' in settings and '"unet": 1.2' in settings

    # Moving alpha's slider changes alpha's weight only, and the picture; alpha alone at 0 is the base's picture.
    fill(page, "count", 1)
    first_weights, first = _weights_and_pixels(_paint(page, workspace))
    fill(page, "weight-alpha", 1.5)
    second_weights, second = _weights_and_pixels(_paint(page, workspace))
    assert (first_weights, second_weights) == ({"mystyle": 1.2, "alpha": 0.4}, {"mystyle": 1.2, "alpha": 1.5})
    assert first != second
    # A weight is read as the command line reads it: not clamped, and text that is no weight is refused by name
    for typed in ("abc", "1,5"):
        fill(page, "weight-alpha", typed)
        page.click("#generate")
        page.wait_for_function("t => document.querySelector('#gen-status').innerText.includes(t)",
                               arg=f"alpha weight '{typed}': give a number like 0.7", timeout=30_000)
    fill(page, "weight-alpha", 5)
    assert _weights_and_pixels(_paint(page, workspace))[0] == {"mystyle": 1.2, "alpha": 5.0}
    paint_with(page, {})
    no_weights, base_picture = _weights_and_pixels(_paint(page, workspace))
    paint_with(page, {"alpha": 0})
    zero_weights, zero_picture = _weights_and_pixels(_paint(page, workspace))
    assert (no_weights, zero_weights) == ({}, {"alpha": 0}) and zero_picture == base_picture


def test_previews_fill_during_a_run_and_the_progress_line_advances(page, server, image_folder, tiny_base):
    _, workspace, adapters = server
    _train_on(page, "previewed", image_folder, 6, tiny_base)
    fill(page, "steps", 5000)
    if not page.locator("#sample-every").is_visible():
        page.locator("button", has_text="Advanced").first.click()
    fill(page, "sample-every", 4)  # and no preview prompt: the folder's first captions are drawn
    if not page.locator("#validation-split").is_visible():
        page.get_by_text("Knowing when to stop").click()
    # With validation the previews are plain samples (without, they are scored: test_validation.py); an earlier
    # test may have left a split in the form, so this one sets its own.
    fill(page, "validation-split", 0.25)
    page.click("#start")
    _wait_progress(page, "/ 5000")  # this run's, not an earlier run's
    seen = []
    deadline = time.monotonic() + 300
    first_preview = adapters / "previewed" / "samples" / "step-000004-0.png"
    # The gallery may still show an earlier run's previews: wait for this run's first one on disk as well.
    while ((page.locator("#samples img").count() < 2 or len(set(seen)) < 2 or not first_preview.is_file())
           and time.monotonic() < deadline):
        if (found := re.match(r"step (\d+) / 5000", page.locator("#train-progress-text").inner_text())):
            seen.append(int(found.group(1)))
        page.wait_for_timeout(200)
    status = text_of(page, "#train-status")
    progress = page.locator("#train-progress-text").inner_text()
    page.click("#stop")
    assert status.startswith("Training"), status  # the previews came while the run went on
    assert re.search(r"[\d.]+ steps/s · .+ left · loss \d\.\d{4}", progress), progress
    assert len(set(seen)) >= 2 and seen == sorted(seen), seen
    assert _wait_text(page, "#train-status", ("Stopped", "Error", "**Error")).startswith("Stopped")
    from PIL import Image

    from stylelora.data.folder import scan_folder

    captions = {e.caption for e in scan_folder(image_folder).examples}  # the first ones not held out
    assert Image.open(first_preview).text["prompt"] in captions


def _train_on(page, name: str, folder: Path, images: int, base: Path) -> None:
    """In the Train tab: name the adapter, use a folder on this machine (waiting for its image count), set the base."""
    page.get_by_role("tab", name="Train").click()
    fill(page, "adapter-name", name)
    fill(page, "folder", folder)
    page.click("#use-folder")
    page.wait_for_selector(f"#data-message :text('{images} images')", timeout=60_000)
    fill(page, "train-base", base)


def _wait_progress(page, text: str) -> None:
    page.wait_for_function("text => (document.querySelector('#train-progress-text') || {innerText: ''}).innerText"
                           ".includes(text)", arg=text, timeout=120_000)


def _paint(page, workspace: Path):
    """Click Generate and return the one picture this click wrote, read into memory at once (the same
    prompt and seed rewrite the file)."""
    def written():
        folder = workspace / "outputs"
        return {(p, p.stat().st_mtime_ns) for p in folder.glob("*.png")} if folder.exists() else set()

    before, said_before = written(), text_of(page, "#gen-status")
    page.click("#generate")
    deadline = time.monotonic() + 180
    # On a loaded machine the click's "Painting…" can come after a first look: an earlier paint's error still
    # showing is not this click's, so an error counts only once the status has changed.
    while not (new := {p for p, _ in written() - before}) and time.monotonic() < deadline:
        said = text_of(page, "#gen-status")
        assert said == said_before or "Error" not in said, said
        page.wait_for_timeout(100)
    page.wait_for_function("() => !document.querySelector('#gen-status').innerText.includes('processing')",
                           timeout=60_000)
    assert len(new) == 1, new
    from PIL import Image

    picture = Image.open(new.pop())
    picture.load()
    return picture


def _weights_and_pixels(picture) -> tuple[dict[str, float], bytes]:
    """The adapter weights a painted PNG records, and its pixels."""
    return ({Path(d["file"]).stem: d["unet"] for d in json.loads(picture.text["loras"])},
            picture.convert("RGB").tobytes())


def _wait_text(page, selector: str, starts: tuple[str, ...], timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = text_of(page, selector)
        if text.startswith(starts):
            return text
        time.sleep(0.3)
    return text_of(page, selector)


def test_suggest_fills_the_train_fields_and_the_tune_tab_trains_the_best_trial(page, server, image_folder, tiny_base):
    _, workspace, adapters = server
    from stylelora.train.suggest import suggest

    page.get_by_role("tab", name="Train").click()
    fill(page, "folder", image_folder)
    page.click("#use-folder")
    page.wait_for_selector("#data-message :text('6 images')", timeout=60_000)
    fill(page, "train-base", tiny_base)
    page.click("#suggest")
    page.wait_for_selector("#start-message :text('Suggested')", timeout=60_000)
    wanted = suggest(image_folder, str(tiny_base)).values()
    page.wait_for_function("want => document.querySelector('#steps input').value === want", arg=str(wanted["max_steps"]),
                           timeout=30_000)
    assert page.locator("#rank input").input_value() == str(wanted["rank"])

    page.get_by_role("tab", name="Tune").click()
    fill(page, "tune-folder", image_folder)
    fill(page, "tune-base", tiny_base)
    fill(page, "tune-trials", 2)
    fill(page, "tune-min-steps", 2)
    fill(page, "tune-max-steps", 3)
    page.click("#tune-start")
    page.wait_for_selector("#tune-start-message :text-matches('Study started|Error')", timeout=60_000)
    assert text_of(page, "#tune-start-message").startswith("Study started")
    status = _wait_text(page, "#tune-status", ("Done", "**Error", "Error", "Stopped"))
    assert status.startswith("Done: 2 trials in"), status
    table = page.locator("#tune-trials-table")
    # A header and two trials; the table follows the status within a poll.
    table.locator("[role=grid][aria-rowcount='3']").wait_for(timeout=30_000)
    assert table.inner_text().count("complete") == 2, table.inner_text()
    page.click("#tune-train-best")
    page.wait_for_selector("#tune-best-message :text-matches('Training|Error')", timeout=60_000)
    assert text_of(page, "#tune-best-message").startswith("Training"), text_of(page, "#tune-best-message")
    tuned = adapters / f"{image_folder.name}-tuned" / f"{image_folder.name}-tuned.safetensors"
    deadline = time.time() + 180
    while not tuned.exists() and time.time() < deadline:
        time.sleep(0.3)
    assert tuned.exists()
    assert (workspace / "tune" / image_folder.name / "best.toml").exists()
    # The Train tab's fields show what runs, not what was typed there before
    from stylelora.train.settings import from_dict, load_toml

    best = from_dict(load_toml(workspace / "tune" / image_folder.name / "best.toml"))
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("want => document.querySelector('#rank input').value === want", arg=str(best.rank),
                           timeout=30_000)
    assert page.locator("#steps input").input_value() == str(best.max_steps)
    assert "★ best" in table.inner_text()
    page.screenshot(path=str(ARTIFACTS / "tune.png"), full_page=True)


def test_sdxl_folder_shows_its_buckets_trains_and_paints_at_a_chosen_size(page, server, mixed_aspect_folder,
                                                                         tiny_sdxl_base):
    _, workspace, adapters = server
    _train_on(page, "xlstyle", mixed_aspect_folder, 7, tiny_sdxl_base)
    fill(page, "steps", 2)
    fill(page, "rank", 2)
    if not page.locator("#validation-split").is_visible():  # an earlier test may have opened it
        page.get_by_text("Knowing when to stop").click()
    fill(page, "validation-split", 0.34)
    page.get_by_text("Aspect-ratio buckets").click()
    page.click("#show-buckets")
    page.wait_for_selector("#bucket-report :text('bucket(s)')", timeout=60_000)
    report = text_of(page, "#bucket-report")
    from stylelora.data.buckets import plan_for_config
    from stylelora.train.config import TrainConfig

    shown = plan_for_config(TrainConfig(data=mixed_aspect_folder, base=str(tiny_sdxl_base), validation_split=0.34))
    assert sum(b["images"] for b in shown.report()["buckets"]) < 7  # the held-out images are left out
    for bucket in shown.report()["buckets"]:
        assert f"{bucket['width']}x{bucket['height']}\t{bucket['images']}" in report, report
    page.click("#start")
    page.wait_for_selector("#start-message :text-matches('Training started|Error')", timeout=60_000)
    assert text_of(page, "#start-message").startswith("Training started"), text_of(page, "#start-message")
    # The status still shows an earlier test's finished run until the poll reports this one: wait for its name.
    page.wait_for_selector("#train-status :text-matches('xlstyle|Error')", timeout=300_000)
    status = text_of(page, "#train-status")
    assert status.startswith("Done") and "xlstyle" in status, status
    _wait_progress(page, "step 2 / 2")
    ticks = y_ticks(page)  # a two-step run's plot has a numeric axis too
    assert len(ticks) >= 2 and ticks == sorted(set(ticks)), ticks
    page.screenshot(path=str(ARTIFACTS / "train-buckets.png"), full_page=True)
    written = json.loads((adapters / "xlstyle" / "buckets.json").read_text())["buckets"]
    assert written == shown.report()["buckets"]  # the run trains in the buckets the page showed
    assert read_safetensors(adapters / "xlstyle" / "xlstyle.safetensors").metadata["ss_base_model_version"] == "sdxl_base_v1-0"

    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-base", tiny_sdxl_base)
    paint_with(page, {"xlstyle": 1.0})  # and an earlier test's mini adapters off
    fill(page, "gen-steps", 2)
    fill(page, "count", 1)
    fill(page, "gen-width", 48)
    fill(page, "gen-height", 32)
    # An earlier test's "1 image" may still be shown: _paint waits for this click's own picture.
    weights, _ = _weights_and_pixels(_paint(page, workspace))
    assert weights == {"xlstyle": 1.0}
    assert text_of(page, "#gen-status").startswith("1 image"), text_of(page, "#gen-status")
    from PIL import Image

    newest = max((workspace / "outputs").glob("*.png"), key=lambda p: p.stat().st_mtime)
    assert Image.open(newest).size == (48, 32)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_transformer_base_trains_and_paints_from_the_page(page, server, image_folder, tiny_sd3_base, tiny_flux_base,
                                                          family):
    """The page picks the family up from the base: an SD3 or Flux.1 adapter trains and paints like a UNet's."""
    _, workspace, adapters = server
    base = {"sd3": tiny_sd3_base, "flux": tiny_flux_base}[family]
    name = f"{family}style"
    _train_on(page, name, image_folder, 6, base)
    fill(page, "steps", 2)
    fill(page, "rank", 2)
    if not page.locator("#validation-split").is_visible():
        page.get_by_text("Knowing when to stop").click()
    # The SDXL test's split stays in the form; scored validation over a 256 px DiT took 50 s of this test's 60.
    fill(page, "validation-split", 0)
    page.click("#start")
    page.wait_for_selector("#start-message :text-matches('Training started|Error')", timeout=60_000)
    assert text_of(page, "#start-message").startswith("Training started"), text_of(page, "#start-message")
    page.wait_for_selector(f"#train-status :text-matches('{name}|Error')", timeout=300_000)
    status = text_of(page, "#train-status")
    assert status.startswith("Done") and name in status, status
    metadata = read_safetensors(adapters / name / f"{name}.safetensors").metadata
    assert metadata["ss_base_model_version"] == {"sd3": "sd3", "flux": "flux1"}[family]
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-base", base)
    paint_with(page, {name: 0.8}, waited_for=name)
    fill(page, "gen-steps", 2)
    fill(page, "count", 1)
    weights, _ = _weights_and_pixels(_paint(page, workspace))
    assert weights == {name: 0.8}
    assert text_of(page, "#gen-status").startswith("1 image"), text_of(page, "#gen-status")


def test_painting_over_an_nf4_base_from_the_generate_tab(page, server, tiny_base, two_adapters):
    _, workspace, adapters = server
    import shutil

    shutil.copy(two_adapters[0], adapters / "quantstyle.safetensors")
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen-base", tiny_base)
    paint_with(page, {"quantstyle": 1.0})
    if not page.locator("#gen-quantize-base").is_visible():
        page.locator("button", has_text="Advanced").last.click()
    page.locator("#gen-quantize-base input").click()
    page.get_by_role("option", name="nf4", exact=True).click()
    fill(page, "gen-steps", 2)
    fill(page, "count", 1)
    fill(page, "gen-width", 0)
    fill(page, "gen-height", 0)
    # An earlier test's "1 image" may still be shown: _paint waits for this click's own picture.
    painted = _paint(page, workspace)
    assert text_of(page, "#gen-status").startswith("1 image"), text_of(page, "#gen-status")
    assert json.loads(painted.text["stylelora"])["quantize_base"] == "nf4"
