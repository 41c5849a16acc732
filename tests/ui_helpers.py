"""Start the web UI in a subprocess and open headless Chromium on it (shared by the UI tests)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ui(workspace: Path, adapters: Path, *extra: str, env: dict[str, str] | None = None,
             cwd: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """`stylelora ui` on a free port, started in `cwd`; returns the process and its URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stylelora", "ui", "--workspace", str(workspace), "--adapters", str(adapters),
         "--port", str(port), *extra], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"} | (env or {}))
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(url, timeout=1)
            return process, url
        except urllib.error.HTTPError:
            return process, url  # it answers (an auth-protected page may answer 401)
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(process.stdout.read())


def stop_ui(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(10)


def fill(page, elem_id: str, value) -> None:
    """Type into the Gradio textbox or number field with this elem_id, then leave it (which submits it).
    A field that was just revealed (an accordion opened for the first time) can still be given its initial
    value after the typing: so type again until the value holds."""
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    for _ in range(5):
        box.fill(str(value))
        box.press("Tab")
        try:
            page.wait_for_function("([box, want]) => box.value === want", arg=[box.element_handle(), str(value)],
                                   timeout=2_000)
            return
        except Exception:  # playwright's TimeoutError: overwritten, type again
            continue
    raise AssertionError(f"#{elem_id} would not keep the value {value!r}")


def fill_all(page, values: dict[str, object]) -> None:
    """fill() each field, then check them all once more and type again any that a late first render of their
    accordion reset (seen on a loaded machine): a field revealed for the first time can receive its starting
    value after fill() saw the typed one hold."""
    for _ in range(5):
        for elem_id, value in values.items():
            fill(page, elem_id, value)
        page.wait_for_timeout(500)
        boxes = {elem_id: page.locator(f"#{elem_id} input, #{elem_id} textarea").first for elem_id in values}
        if all(box.input_value() == str(values[elem_id]) for elem_id, box in boxes.items()):
            return
    raise AssertionError(f"the fields {list(values)} would not keep {list(values.values())}")


def slug(name: str) -> str:
    """The elem_id suffix the Generate tab gives an adapter's row."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", name.lower())


def paint_with(page, chosen: dict[str, float], waited_for: str | None = None) -> None:
    """In the Generate tab, refresh the adapter rows (waiting for `waited_for`'s row, one that has just
    joined the library), tick only the `chosen` adapters and set their weights."""
    page.click("#gen-refresh")
    for name in [waited_for] if waited_for else chosen:
        page.locator(f"#on-{slug(name)} input").wait_for(timeout=30_000)
    for box in page.locator("[id^='on-'] input[type=checkbox]").all():
        box.uncheck()
    for name, weight in chosen.items():
        page.locator(f"#on-{slug(name)} input").check()
        fill(page, f"weight-{slug(name)}", weight)


def y_ticks(page) -> list[float]:
    """The loss plot's y tick labels as drawn, from the bottom of the axis to the top."""
    # the first figure is the loss plot; a run selected by score draws its scores in a second one below it
    ticks = page.evaluate("""() => Array.from(document.querySelector('#loss-plot svg').querySelectorAll(
        'g[id^="ytick"] text')).map(t => [parseFloat(t.getAttribute('y')), t.textContent])""")
    return [float(label) for _, label in sorted(ticks, key=lambda tick: -tick[0])]


def text_of(page, selector: str) -> str:
    """What a Markdown block shows, without the progress overlay Gradio draws over an event's outputs while it runs
    (a running timer, "0.2s", read into inner_text when a test looks at the wrong moment)."""
    shown = page.locator(f"{selector} [data-testid='markdown']")
    return shown.first.inner_text() if shown.count() else page.locator(selector).inner_text()
