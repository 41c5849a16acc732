"""README.md stays true: every flag of `stylelora train` is in its option table, and CI runs its test command."""

import argparse

import pytest
from pathlib import Path

from stylelora.cli import build_parser

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


def test_readme_scoreboard_is_what_bench_methods_wrote():
    """The methods table in README.md is bench/methods.py's output, between its markers, never typed by hand."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- methods-scoreboard:start -->\n", 1)[1].split("<!-- methods-scoreboard:end -->", 1)[0]
    assert section == (ROOT / "bench" / "results" / "methods.md").read_text()


def test_readme_stopping_report_is_what_bench_stopping_wrote():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- stopping-report:start -->\n", 1)[1].split("<!-- stopping-report:end -->", 1)[0]
    assert section == (ROOT / "bench" / "results" / "stopping.md").read_text()


def test_readme_tune_report_is_what_bench_tune_wrote():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- tune-report:start -->\n", 1)[1].split("<!-- tune-report:end -->", 1)[0]
    assert section == (ROOT / "bench" / "results" / "tune.md").read_text()


def test_readme_quantize_report_is_what_bench_quantize_wrote():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- quantize-report:start -->\n", 1)[1].split("<!-- quantize-report:end -->", 1)[0]
    assert section == (ROOT / "bench" / "results" / "quantize.md").read_text()


def test_readme_serve_report_is_what_bench_serve_wrote():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("<!-- serve-report:start -->\n", 1)[1].split("<!-- serve-report:end -->", 1)[0]
    assert section == (ROOT / "bench" / "results" / "serve.md").read_text()
