"""The docs stay true: every flag is in the option reference, CI runs README's test command, the measured tables
are the bench scripts' output, and the site builds strictly."""

import argparse

import pytest
from pathlib import Path

from stylelora.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", ["train", "tune", "suggest", "serve", "reg-images"])
def test_every_flag_is_documented(command):
    readme = (ROOT / "docs" / "reference" / "options.md").read_text()
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = [o for a in commands.choices[command]._actions for o in a.option_strings
             if o.startswith("--") and not o.startswith("--no-") and o != "--help"]
    missing = [f for f in flags if f"`{f}`" not in readme]
    assert flags and not missing, f"add these to docs/reference/options.md's table of {command}: {missing}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    marker = readme.index("<!-- test-command -->")
    assert readme[marker + 1] == "```" and "pytest" in readme[marker + 2]
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("section, report", [
    ("methods-scoreboard", "methods.md"), ("stopping-report", "stopping.md"), ("tune-report", "tune.md"),
    ("quantize-report", "quantize.md"), ("serve-report", "serve.md"), ("style-report", "style_report.md"),
    ("quickstart-report", "quickstart.md"), ("timesteps-report", "timesteps.md"),
    ("optimizers-report", "optimizers.md"), ("knobs-report", "knobs.md"), ("presets-memory", "presets.md"),
    ("scores-agreement", "scores.md"), ("selection-report", "selection.md"), ("selection-previews", "selection-previews.md"),
    ("selection-statistics", "selection-statistics.md"),
    ("selection-cost", "selection-cost.md"), ("tune-score-report", "tune-score.md"),
    ("tune-agreement", "tune-agreement.md"), ("suggest-score", "suggest-compare.md"),
    ("preview-agreement", "agreement.md"),
    ("composition-report", "composition.md"), ("recipe-report", "recipe.md"), ("sdxl-bench", "sdxl.md"),
    ("flux-bench", "flux.md"), ("sd35-bench", "sd35.md")])
def test_readme_section_is_what_its_bench_script_wrote(section, report):
    """Each measured table in the docs is its bench script's output, between its markers, never typed by hand."""
    readme = next(p.read_text() for p in (ROOT / "docs").rglob("*.md") if f"<!-- {section}:start -->" in p.read_text())
    text = readme.split(f"<!-- {section}:start -->\n", 1)[1].split(f"<!-- {section}:end -->", 1)[0]
    assert text == (ROOT / "docs" / "results" / report).read_text()


def test_the_docs_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing page or an image outside docs/ fails the suite."""
    import os
    import subprocess
    import sys

    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, env=env)
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()


def test_the_readme_is_short():
    """README.md is the front door (what, setup, train, paint, UI, server, results, links); the rest is in docs/."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
