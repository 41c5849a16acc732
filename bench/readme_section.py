"""Benchmarks write their reports into README.md between named markers, so its numbers are never typed
by hand (tests/test_docs.py checks each section equals the report file it came from)."""

from __future__ import annotations

from pathlib import Path

from stylelora.files import write_atomically

README = Path(__file__).resolve().parent.parent / "README.md"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(name: str, text: str) -> None:
    """Replace what lies between README.md's `name` markers with `text`."""
    start, end = markers(name)
    readme = README.read_text()
    before, rest = readme.split(start, 1)
    _, after = rest.split(end, 1)
    write_atomically(README, (before + start + "\n" + text + end + after).encode())
