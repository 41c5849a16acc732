"""Benchmarks write their reports into the docs pages between named markers, so their numbers are never typed by
hand (tests/test_docs.py checks each section equals the report file it came from)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from stylelora.files import write_atomically

DOCS = Path(__file__).resolve().parent.parent / "docs"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def page_with(name: str) -> Path:
    """The docs page that holds the `name` markers."""
    start, _ = markers(name)
    for page in sorted(DOCS.rglob("*.md")):
        if start in page.read_text():
            return page
    raise SystemExit(f"no page under {DOCS} holds the {start} marker")


def write_section(name: str, text: str) -> None:
    """Replace what lies between the `name` markers of its docs page with `text`."""
    start, end = markers(name)
    page = page_with(name)
    before, rest = page.read_text().split(start, 1)
    _, after = rest.split(end, 1)
    write_atomically(page, (before + start + "\n" + text + end + after).encode())


def run_bench(description: str, measure: Callable[[], None], report: Callable[[], str], section: str,
              path: Path) -> None:
    """A bench's command line: measure what is not stored yet (unless --report), then write its report to `path`
    and into the docs between the `section` markers, and print it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--report", action="store_true", help="only write the report from the stored numbers")
    if not parser.parse_args().report:
        measure()
    text = report()
    write_atomically(path, (text + "\n").encode())
    write_section(section, text + "\n")
    print(text)
