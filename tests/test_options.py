"""Each option is declared once (stylelora.options): the CLI parser, the TOML keys, the web UI's fields and the
docs' option tables all come from the declaration, and agree with it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from stylelora.cli.main import build_parser
from stylelora.cli.reference import section_of, sections
from stylelora.options import SAME, declaration, declared, default_of, default_words, flag_of, page_values
from stylelora.paint.request import GenerateConfig, GridConfig
from stylelora.serve.config import ServeConfig, serve_config_from_dict
from stylelora.train.config import TrainConfig
from stylelora.train.settings import from_dict
from stylelora.tune.space import TuneConfig, tune_config_from_dict

ROOT = Path(__file__).resolve().parent.parent
JOBS = {"train": TrainConfig, "tune": TuneConfig, "serve": ServeConfig, "generate": GenerateConfig, "grid": GridConfig}


def _subparser(command: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command]


@pytest.mark.parametrize("command", JOBS)
def test_every_declared_option_is_a_flag_with_its_default_said_once(command):
    actions = {a.dest: a for a in _subparser(command)._actions}
    for f, opt in declared(JOBS[command]):
        if not opt.cli:
            continue
        action = actions[f.name]
        assert flag_of(f, opt) in action.option_strings and action.default is None, f.name
        assert action.help == f"{opt.help} ({default_words(f, opt)})", f.name
        assert action.help.count(f"({default_words(f, opt)})") == 1
        if opt.choice_list() is not None and not isinstance(default_of(f), tuple):  # a list flag is one word
            assert list(action.choices) == opt.choice_list(), f.name


def test_flags_parse_into_the_config_the_declarations_describe(tmp_path):
    args = _subparser("train").parse_args(["imgs", "--rank", "8", "--lr", "3e-4", "--target-modules", "to_q, to_k",
                                           "--sample-prompt", "a", "--sample-prompt", "b", "--no-buckets"])
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("config", "quiet")}
    config = from_dict(flags)
    assert (config.rank, config.learning_rate, config.target_modules) == (8, 3e-4, ("to_q", "to_k"))
    assert config.sample_prompts == ("a", "b") and config.buckets is False


@pytest.mark.parametrize("command, build", [("train", from_dict), ("tune", tune_config_from_dict),
                                            ("serve", serve_config_from_dict)])
def test_every_declared_option_is_a_toml_key_that_reads_back_its_default(command, build):
    kind = JOBS[command]
    values = {f.name.replace("_", "-"): default_of(f) for f, _ in declared(kind)
              if default_of(f) is not dataclasses.MISSING and default_of(f) is not None}
    values |= {"data": "imgs"} if command != "serve" else {}
    built = build(values)
    for f, _ in declared(kind):
        if default_of(f) is not dataclasses.MISSING and f.name not in ("data",):
            assert getattr(built, f.name) == default_of(f), f.name


def test_the_docs_option_tables_are_the_declarations():
    page = (ROOT / "docs" / "reference" / "options.md").read_text()
    for name, body in sections().items():
        assert section_of(page, name) == body, f"run `python -m stylelora.cli.reference` ({name} is stale)"


def test_a_ui_default_that_differs_is_declared_and_said_in_the_docs():
    differing = {f.name: opt.ui.default for f, opt in declared(TrainConfig) if opt.ui and opt.ui.default is not SAME}
    assert differing == {"name": "mystyle", "targets": "attn", "save_every": 50, "sample_every": 100}
    assert "| `--sample-every` | 0 | render preview images every N steps (0 = off); without validation they are " \
           "scored and the best step kept (--select-by, --keep); the web UI starts at 100 |" in \
        sections()["options-train"]


@pytest.mark.parametrize("kind, least", [(TrainConfig, 30), (TuneConfig, 7), (GenerateConfig, 8)])
def test_the_page_shows_each_declared_field_as_declared(kind, least, tmp_path):
    pytest.importorskip("gradio")
    from stylelora.ui.app import build_app
    from stylelora.ui.fields import page_default

    demo = build_app(tmp_path / "workspace", tmp_path / "adapters")
    by_id = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}
    shown = [(f, opt) for f, opt in declared(kind) if opt.ui is not None]
    assert len(shown) >= least
    for f, opt in shown:
        block = by_id[opt.ui.elem_id or flag_of(f, opt)[2:]]
        assert block.label == opt.ui.label, f.name
        expected = page_default(kind, f.name)
        expected = ("" if opt.ui.widget in ("textbox", "dropdown") else 0) if expected is None else expected
        if isinstance(expected, tuple):
            expected = list(expected) if opt.ui.widget == "multiselect" else ",".join(str(v) for v in expected)
        assert block.value == expected, f.name


def test_page_values_leave_blank_and_unset_zero_at_their_defaults():
    values = page_values(TrainConfig, {"rank": 8.0, "learning_rate": 0, "alpha": 0.0, "seed": 0, "resolution": 0,
                                       "sample_prompts": "a red circle", "validation_data": "", "keep": "",
                                       "max_steps": 120.0, "flip": True})
    assert values == {"rank": 8, "sample_prompts": ("a red circle",), "max_steps": 120, "flip": True}
    assert page_values(TrainConfig, {"preserve_weight": 0, "seed": 3, "buckets": True}) == {"preserve_weight": 0.0,
                                                                                       "seed": 3}
    assert isinstance(values["rank"], int)


def test_grid_takes_generates_painting_options_as_declared_there():
    """grid's --steps, --cfg, --scheduler and the rest are generate's declarations (options.like), not copies."""
    for name in ("base", "steps", "cfg", "scheduler", "quantize_base"):
        assert declaration(GridConfig, name)[1].help == declaration(GenerateConfig, name)[1].help
        assert default_of(declaration(GridConfig, name)[0]) == default_of(declaration(GenerateConfig, name)[0])
    assert declaration(GridConfig, "seed")[1].help == "the seed of every cell"  # a change said where it differs
    args = _subparser("grid").parse_args(["a", "b", "--lora", "x.safetensors", "--weights", "0,1", "--steps", "3"])
    assert (args.prompts, args.lora, args.weights, args.steps, args.cfg) == (["a", "b"], "x.safetensors", "0,1", 3, None)
