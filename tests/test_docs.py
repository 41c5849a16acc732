"""README.md stays true: every flag of `stylelora train` is in its option table, and CI runs its test command."""

import argparse

import pytest
from pathlib import Path

from stylelora.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", ["train", "tune", "suggest", "serve"])
def test_every_flag_is_documented(command):
    readme = (ROOT / "README.md").read_text()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = [o for a in commands.choices[command]._actions for o in a.option_strings
             if o.startswith("--") and not o.startswith("--no-") and o != "--help"]
    missing = [f for f in flags if f"`{f}`" not in readme]
    assert flags and not missing, f"add these to README.md's option table of {command}: {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    marker = readme.index("<!-- test-command -->")
    assert readme[marker + 1] == "```" and "pytest" in readme[marker + 2]
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("section, report", [
    ("methods-scoreboard", "methods.md"), ("stopping-report", "stopping.md"), ("tune-report", "tune.md"),
    ("quantize-report", "quantize.md"), ("serve-report", "serve.md"), ("style-report", "style_report.md"),
    ("quickstart-report", "quickstart.md")])
def test_readme_section_is_what_its_bench_script_wrote(section, report):
    """Each measured table in README.md is its bench script's output, between its markers, never typed by hand."""
    readme = (ROOT / "README.md").read_text()
    text = readme.split(f"<!-- {section}:start -->\n", 1)[1].split(f"<!-- {section}:end -->", 1)[0]
    assert text == (ROOT / "bench" / "results" / report).read_text()
