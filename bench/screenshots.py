"""Take the docs' screenshots of the web UI in headless Chromium, on the miniature base, with real work.

    python bench/screenshots.py [--out docs/screenshots]

- Library: the three style adapters (stripes, dots, pastel), trained here with the defaults and a preview
  every 400 steps (about 70 s each).
- Generate: stripes 0.7 + pastel 0.4 on "a red circle".
- Train: datasets/stripes with the defaults, mid-run, once the loss plot has a few hundred steps and the
  previews have come (then the run is stopped).

About 8 minutes in all. Needs Debian's chromium and playwright (the test
extras); it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from ui_helpers import CHROMIUM, CHROMIUM_ARGS, fill, paint_with, start_ui, stop_ui  # noqa: E402

STYLES = ("stripes", "dots", "pastel")


def train_styles(folder: Path) -> None:
    """The three style adapters, with the defaults, into `folder`: adapters/<name>/<name>.safetensors and
    the previews the library and the Generate rows show."""
    from stylelora.train.config import TrainConfig
    from stylelora.train.loop import train

    for name in STYLES:
        print(f"training {name} ...", flush=True)
        train(TrainConfig(data=ROOT / "datasets" / name, out=folder / name, sample_every=400), progress_bar=False,
              log=lambda m: None)


def library_shot(page, out: Path) -> None:
    page.get_by_role("tab", name="Library").click()
    for name in STYLES:  # listed when the page loaded: no Refresh
        page.locator("#library [role=gridcell]", has_text=name).first.wait_for(timeout=30_000)
    page.locator("#library [role=gridcell]", has_text="stripes").first.click()  # its file, settings and preview
    page.wait_for_selector("#library-details :text('stripes.safetensors')", timeout=30_000)
    page.wait_for_function("() => [...document.querySelectorAll('#library-preview img')].some(i => i.naturalWidth)",
                           timeout=30_000)
    page.screenshot(path=str(out / "library.png"), full_page=True)


def generate_shot(page, out: Path) -> None:
    page.get_by_role("tab", name="Generate").click()
    paint_with(page, {"stripes": 0.7, "pastel": 0.4})
    fill(page, "prompt", "a red circle")
    fill(page, "count", 8)
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#gen-status').innerText.match(/^(8 images|Error)/)",
                           timeout=300_000)
    page.wait_for_function("() => document.querySelectorAll('#gallery img').length >= 8", timeout=30_000)
    page.screenshot(path=str(out / "generate.png"), full_page=True)


def train_shot(page, out: Path, min_step: int) -> None:
    page.get_by_role("tab", name="Train").click()
    fill(page, "adapter-name", "stripes-again")
    fill(page, "folder", "datasets/stripes")  # relative to where the UI runs: no machine path in the picture
    page.click("#use-folder")
    page.wait_for_selector("#data-message :text('36 images')", timeout=60_000)
    page.click("#start")
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        found = re.match(r"step (\d+) /", page.locator("#train-progress-text").inner_text() or "")
        if found and int(found.group(1)) >= min_step and page.locator("#samples img").count() >= 4:
            break
        page.wait_for_timeout(500)
    page.wait_for_timeout(1500)  # one more poll: the plot and the gallery draw what the last one sent
    page.screenshot(path=str(out / "train.png"), full_page=True)
    page.click("#stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--min-step", type=int, default=300, help="the Train shot waits for this step")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="stylelora-shots-"))
    library = work / "adapters"
    train_styles(library)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "datasets" / "stripes", work / "datasets" / "stripes")
    # Started in `work`, with paths relative to it, so the pictures show no path of this machine
    process, url = start_ui(Path("workspace"), Path("adapters"), cwd=work)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#start", timeout=60_000)
            library_shot(page, args.out)
            generate_shot(page, args.out)
            train_shot(page, args.out, args.min_step)
            browser.close()
    finally:
        stop_ui(process)
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {', '.join(str(args.out / n) for n in ('library.png', 'generate.png', 'train.png'))}")


if __name__ == "__main__":
    main()
