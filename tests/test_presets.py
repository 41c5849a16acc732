"""Presets: each shipped one makes a valid config, flags and --config keys win over it, --print-config prints
what a run would use as a file that reads back the same, and the UI's Preset field fills the form."""

from __future__ import annotations

import pytest

from stylelora.cli.main import main
from stylelora.train.config import validate
from stylelora.train.settings import config_toml, from_dict, load_toml
from stylelora.train.settings import preset_values, presets


@pytest.mark.parametrize("name", list(presets()))
def test_each_shipped_preset_makes_a_valid_config_with_its_settings(name, image_folder):
    config = validate(from_dict({"data": image_folder, "preset": name}))
    for key, value in preset_values(name).items():
        assert getattr(config, key.replace("-", "_")) == value, key
    assert presets()[name]["about"]


def test_flags_win_over_the_config_file_which_wins_over_the_preset(image_folder, tmp_path, capsys):
    toml = tmp_path / "style.toml"
    toml.write_text('preset = "sd15-style"\nmax-steps = 123\n')
    assert main(["train", str(image_folder), "--config", str(toml), "--rank", "8", "--print-config"]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "printed.toml").write_text(printed)
    resolved = from_dict(load_toml(tmp_path / "printed.toml"))
    assert (resolved.rank, resolved.max_steps, resolved.targets, resolved.resolution) == (8, 123, "attn-mlp", 512)
    # What --print-config prints trains the same run: it reads back to the same config
    direct = from_dict(load_toml(toml) | {"data": image_folder, "rank": 8})
    assert resolved == direct and config_toml(resolved) == printed
    assert not (tmp_path / "adapters").exists()  # printing trains nothing


def test_an_unknown_preset_is_a_one_line_error_naming_the_presets(image_folder, capsys):
    assert main(["train", str(image_folder), "--preset", "sdxl", "--print-config"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--preset 'sdxl': no such preset; choose one of mini-fast, sd15-style" in error


def test_the_ui_preset_fills_every_field_and_leaves_the_base_unless_it_names_one():
    from stylelora.ui.train_tab import preset_settings

    fast, sdxl, none = preset_settings("mini-fast"), preset_settings("sdxl-style"), preset_settings("")
    assert (fast["max_steps"], fast["base"], fast["rank"]) == (200, "mini", 4)
    assert "base" not in sdxl and (sdxl["rank"], sdxl["resolution"], sdxl["targets"]) == (16, 1024, "attn-mlp")
    assert "base" not in none and none["max_steps"] is None and none["rank"] == 4
    assert not {"data", "out", "name"} & set(fast)
