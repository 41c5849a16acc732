"""`stylelora tune` (optuna search), `stylelora suggest`, `train --auto` and `inspect --ranks`."""

from __future__ import annotations

import json
import os
from dataclasses import replace
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from stylelora.adapters.formats import read_lora, write_lora
from stylelora.cli.main import main as cli
from stylelora.errors import ConfigError, TrainingInterrupted
from stylelora.files import read_safetensors
from stylelora.mini.evaluate import folder_style
from stylelora.train.config import TrainConfig
from stylelora.train.settings import from_dict, load_toml
from stylelora.train.loop import train
from stylelora.train.suggest import fill_unset, steps_for, suggest
from stylelora.tune.results import best_of, spearman
from stylelora.tune.search import tune
from stylelora.tune.space import TuneConfig, parse_duration, tune_config_from_dict

ROOT = Path(__file__).resolve().parent.parent
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
QUIET = dict(log=lambda m: None)


def _tiny_study(tiny_base, image_folder, out, **overrides) -> TuneConfig:
    values = dict(data=image_folder, out=out, trials=3, min_steps=2, max_steps=4, train={"base": str(tiny_base),
                  "batch_size": 2})
    return TuneConfig(**(values | overrides))


def _study(out: Path):
    return optuna.load_study(study_name=None, storage=f"sqlite:///{out / 'study.db'}")


def test_a_three_trial_tune_writes_a_best_toml_that_trains_the_winner_again_on_every_image(tiny_base, image_folder,
                                                                                           tmp_path):
    result = tune(_tiny_study(tiny_base, image_folder, tmp_path / "study"), **QUIET)
    assert [t.state for t in result.trials] == ["COMPLETE"] * 3
    losses = [t.value for t in result.trials]
    assert losses == sorted(losses) and result.best is result.trials[0]  # best first, lowest validation loss
    assert (tmp_path / "study" / "results.md").read_text().count("| complete |") == 3
    assert {p.name for p in result.files} >= {"results.md", "results.json", "history.png"}
    best, settings = result.best, load_toml(result.best_toml)
    trial_images = int(read_safetensors(best.attrs["adapter"]).metadata["stylelora.image_count"])
    # The trial held images out and chose its step by them; best.toml trains its settings on every image, with
    # no held-out images and no stopping rule, for as many passes over the images as the kept step made.
    images = len(list(image_folder.glob("*.png")))
    steps = round(best.attrs["kept_step"] * images / trial_images)
    assert settings["max-steps"] == steps
    assert settings["rank"] == best.settings["rank"]
    assert settings["learning-rate"] == pytest.approx(best.settings["learning_rate"])
    assert not {"validation-split", "validation-data", "select-by", "keep", "early-stop"} & settings.keys()
    assert f"{steps} steps: the {best.attrs['kept_step']} its trial kept" in result.best_toml.read_text()
    assert cli(["train", "--config", str(result.best_toml), "--out", str(tmp_path / "again"), "--quiet"]) == 0
    again = read_safetensors(tmp_path / "again" / "again.safetensors").metadata
    assert trial_images < images and int(again["stylelora.image_count"]) == images
    assert int(again["stylelora.steps"]) == steps


def test_the_score_objective_keeps_each_trial_s_best_scored_step_and_ranks_by_its_score(tiny_base, image_folder,
                                                                                         tmp_path):
    lines = []
    result = tune(_tiny_study(tiny_base, image_folder, tmp_path / "study", trials=2, objective="score", confirm=0),
                  log=lines.append)
    assert [t.state for t in result.trials] == ["COMPLETE"] * 2
    scores = [t.value for t in result.trials]
    assert scores == sorted(scores, reverse=True) and result.best is result.trials[0]  # best first: highest score
    for trial in result.trials:
        a = trial.attrs
        assert a["score"] == trial.value == pytest.approx(a["style_score"] * a["prompt_score"], rel=1e-12)
        assert a["train_config"]["select_by"] == "score" and a["train_config"]["keep"] == "best"
        kept = read_safetensors(a["adapter"]).metadata
        assert float(kept["stylelora.style_score"]) == pytest.approx(a["style_score"], rel=1e-12)
    assert "| score |" in (tmp_path / "study" / "results.md").read_text()
    assert any(line.startswith("trial ") and "score 0." in line for line in lines)
    assert result.best_toml.read_text().startswith(f"# The best trial ({result.best.number}) of study")
    assert "max-steps" in load_toml(result.best_toml) and "select-by" not in load_toml(result.best_toml)


def test_the_best_trials_are_scored_again_on_more_pictures_and_the_winner_is_the_best_of_those(tiny_base, image_folder,
                                                                                               tmp_path):
    config = _tiny_study(tiny_base, image_folder, tmp_path / "study", trials=3, objective="score", confirm=2)
    lines = []
    result = tune(config, log=lines.append)
    confirmed = [t for t in result.trials if "confirmed" in t.attrs]
    two_best = sorted((t for t in result.trials if t.state == "COMPLETE"), key=lambda t: -t.value)[:2]
    # the two best by their own score, and the defaults (trial 0) beside them
    assert {t.number for t in confirmed} == {t.number for t in two_best} | {0}
    winner = max(confirmed, key=lambda t: t.attrs["confirmed"])
    assert result.best is winner and result.trials[0] is winner  # named by the score read again
    assert best_of(result.trials, "score") is winner  # as the UI stars it
    assert f"# The best trial ({winner.number}) of study" in result.best_toml.read_text()
    assert sum("scored again on 4x the pictures at new seeds" in line for line in lines) == len(confirmed)
    assert "| scored again |" in (tmp_path / "study" / "results.md").read_text()
    stored = json.loads((tmp_path / "study" / "confirmed.json").read_text())
    assert {int(k): v["confirmed"] for k, v in stored.items()} == {t.number: t.attrs["confirmed"] for t in confirmed}
    # A rerun paints nothing again and names the same winner; painted again from scratch, the same scores.
    rerun_lines = []
    again = tune(config, log=rerun_lines.append)
    assert not any("scored again" in line for line in rerun_lines) and again.best.number == winner.number
    (tmp_path / "study" / "confirmed.json").unlink()
    assert stored == json.loads((tune(config, **QUIET).out_dir / "confirmed.json").read_text())


def test_trial_0_trains_the_defaults_so_a_study_never_ends_worse_than_them(tiny_base, image_folder, tmp_path):
    config = _tiny_study(tiny_base, image_folder, tmp_path / "study", trials=2, ranks=(2, 4, 8), min_steps=2,
                         max_steps=6)
    result = tune(config, **QUIET)
    first = next(t for t in result.trials if t.number == 0)
    fixed = config.base_train_config()
    assert first.attrs["defaults"] is True
    assert first.settings["rank"] == fixed.rank == 4 and first.settings["max_steps"] == 6  # 800, clamped
    assert first.settings["learning_rate"] == pytest.approx(fixed.effective_learning_rate)
    from stylelora.tune.results import DEFAULTS_WON  # results.md says so exactly when the study's winner is trial 0
    said = DEFAULTS_WON.format(number=0) in (result.out_dir / "results.md").read_text()
    assert said == bool(result.best.attrs.get("defaults"))
    again = tune(replace(config, trials=3), **QUIET)  # a rerun continues: the defaults are not queued twice
    assert sum(bool(t.attrs.get("defaults")) for t in again.trials) == 1


def test_results_say_when_the_defaults_won_and_only_then(tmp_path):
    from stylelora.tune.results import TrialReport, best_mark, results_markdown

    config = TuneConfig(data=tmp_path, out=tmp_path / "study", objective="score")
    settings = {"rank": 4, "alpha": 4.0, "learning_rate": 3e-3, "max_steps": 400, "method": "lora", "targets": "attn",
                "train_text_encoder": False}
    defaults = TrialReport(0, "COMPLETE", 0.8, settings, {"defaults": True, "score": 0.8, "kept_step": 320})
    found = TrialReport(7, "COMPLETE", 0.9, settings | {"rank": 16}, {"score": 0.9, "kept_step": 160})
    pruned = TrialReport(3, "PRUNED", None, settings, {"pruned_at": 80})
    won = results_markdown(config, [pruned, defaults, found], None, defaults)
    assert won.rstrip().endswith("Trial 0, the best, is the defaults' own settings: nothing else this study tried "
                                 "did better on the pictures that named the winner, so the defaults are as good a "
                                 "choice here.")
    assert "defaults' own settings" not in results_markdown(config, [found, defaults], None, found)
    assert best_mark(defaults) == " ★ best (the defaults)" and best_mark(found) == " ★ best"


def test_two_studies_of_the_same_seed_draw_different_trials_and_one_study_draws_the_same_again():
    from stylelora.tune.search import trial_seeded_tpe

    def first_draws(name: str) -> list[int]:
        study = optuna.create_study(sampler=trial_seeded_tpe(0, name))
        study.optimize(lambda trial: trial.suggest_int("rank", 1, 10_000), n_trials=3)
        return [t.params["rank"] for t in study.trials]

    assert first_draws("stripes") == first_draws("stripes")  # reproducible
    assert first_draws("stripes") != first_draws("dots")  # not repeated across studies


def test_the_progress_line_and_results_name_every_trial(tiny_base, image_folder, tmp_path):
    lines = []
    tune(_tiny_study(tiny_base, image_folder, tmp_path / "study", trials=2), log=lines.append)
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 2 and trial_lines[0].startswith("trial 0 (1/2) complete: rank ")
    assert "validation loss" in trial_lines[1] and trial_lines[1].startswith("trial 1 (2/2) complete")


def test_a_rerun_continues_the_study_and_a_changed_space_is_refused(tiny_base, image_folder, tmp_path):
    out = tmp_path / "study"
    tune(_tiny_study(tiny_base, image_folder, out, trials=2), **QUIET)
    tune(_tiny_study(tiny_base, image_folder, out, trials=3), **QUIET)  # one more trial, the first two kept
    trials = _study(out).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    with pytest.raises(ConfigError, match=r"made with other settings \(ranks\)"):
        tune(_tiny_study(tiny_base, image_folder, out, ranks=(4,)), **QUIET)


def _wait_for(condition, timeout: float = 300, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _tune_command(tiny_base, image_folder, out, trials: int, steps: int) -> list[str]:
    return [sys.executable, "-m", "stylelora", "tune", str(image_folder), "--out", str(out), "--base", str(tiny_base),
            "--trials", str(trials), "--min-steps", str(steps), "--max-steps", str(steps), "--batch-size", "2"]


def _checkpoint_saved(out: Path, number: int) -> bool:
    """Only the file system is looked at: opening the study on every poll is slow enough on a loaded machine to
    miss the whole window between trial `number`'s first checkpoint and its end."""
    return any((out / "trials" / f"trial-{number:04d}" / "checkpoints").glob("step-*"))


def _kill_when(process: subprocess.Popen, condition, log: Path, what: str, timeout: float = 600) -> None:
    """SIGKILL `process` as soon as `condition` holds; fail at once, with its output, if it ended before."""
    deadline = time.time() + timeout
    try:
        while not condition():
            if process.poll() is not None:
                raise AssertionError(f"tune ended (exit {process.returncode}) before {what}:\n{log.read_text()}")
            if time.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_a_killed_tune_continues_with_no_trial_lost_or_repeated(tiny_base, image_folder, tmp_path):
    out, log = tmp_path / "study", tmp_path / "tune.log"
    with log.open("w") as output:
        process = subprocess.Popen(_tune_command(tiny_base, image_folder, out, 3, 40) + ["--pruner", "none"], env=ENV,
                                   stdout=output, stderr=subprocess.STDOUT)
        _kill_when(process, lambda: _checkpoint_saved(out, 1), log, what="trial 1 to save a checkpoint")
    assert _study(out).get_trials()[1].state.name == "RUNNING", "trial 1 ended before the kill: the test saw nothing"
    killed = _study(out).get_trials()[1]
    result = tune(_tiny_study(tiny_base, image_folder, out, min_steps=40, max_steps=40, pruner="none"), **QUIET)
    trials = _study(out).get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and len(result.trials) == 3
    assert trials[1].state.name == "FAIL"  # the killed one, retried as a later trial with the same settings
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == killed.params
    assert sorted(t.user_attrs["run"] for t in complete) == [0, 1, 3]  # every run folder trained once
    # The retry resumed the killed run's checkpoint: every step is in its metrics once.
    steps = [json.loads(line)["step"] for line in (out / "trials" / "trial-0001" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 41))


@pytest.mark.slow
def test_two_processes_on_one_study_run_disjoint_trials(tiny_base, image_folder, tmp_path):
    out = tmp_path / "shared"
    command = _tune_command(tiny_base, image_folder, out, 4, 40)
    first = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: (out / "study.db").exists(), what="the study")  # one creates it, the other joins
    second = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for process in (first, second):
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors
    trials = _study(out).get_trials()
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]  # the median pruner may stop the last
    assert len(finished) == 4 and len(trials) == 4
    assert len({t.user_attrs.get("run", t.number) for t in finished}) == 4
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == 4  # no settings drawn twice
    owners = {t.user_attrs["owner"] for t in finished}
    assert len(owners) == 2, f"one process ran every trial: {owners}"


def test_a_trial_worse_than_the_median_is_pruned_and_stops_training(tiny_base, image_folder, tmp_path, monkeypatch):
    """The wiring: validation losses reach trial.report, and should_prune stops the run at the next step."""
    from stylelora.train import loop as training

    scripted = {0: [1.0, 0.9], 1: [1.0, 0.9], 2: [1.0, 0.9], 3: [5.0, 5.0]}
    stopped_at = {}

    def fake_train(config, on_progress, should_stop, **_):
        number = int(config.name.split("-")[1])
        for step, loss in zip((10, 20), scripted[number]):
            on_progress(training.Progress(step, 20, loss, 1e-3, 1.0, 0.0, validation_loss=loss))
            if should_stop():
                stopped_at[number] = step
                raise TrainingInterrupted("stopped")
        return training.TrainResult(config.adapter_path, 20, 0.1, 1.0, True, 20, scripted[number][-1], "", None)

    monkeypatch.setattr(training, "train", fake_train)
    result = tune(_tiny_study(tiny_base, image_folder, tmp_path / "study", trials=4, min_steps=20, max_steps=20),
                  **QUIET)
    states = {t.number: t.state for t in result.trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "PRUNED"} and stopped_at == {3: 10}
    assert result.trials[-1].attrs["pruned_at"] == 10


@pytest.mark.slow
def test_a_stop_request_queues_the_trial_in_flight_again(tiny_base, image_folder, tmp_path):
    out = tmp_path / "study"

    def stop_once_a_checkpoint_is_saved() -> bool:  # the first trial is stopped mid-run
        return any((out / "trials").glob("*/checkpoints/step-*"))

    with pytest.raises(TrainingInterrupted):
        tune(_tiny_study(tiny_base, image_folder, out, min_steps=8, max_steps=8, trials=2),
             should_stop=stop_once_a_checkpoint_is_saved, **QUIET)
    trials = _study(out).get_trials()
    assert trials[-1].state.name == "WAITING" and trials[-1].system_attrs["failed_trial"] == trials[-2].number
    result = tune(_tiny_study(tiny_base, image_folder, out, min_steps=8, max_steps=8, trials=2), **QUIET)
    assert sum(t.state == "COMPLETE" for t in result.trials) == 2
    assert result.trials[0].attrs["run"] == 0 or result.trials[1].attrs["run"] == 0  # the stopped run, resumed


@pytest.mark.parametrize("flags, message", [
    (["--trials", "0"], "--trials = 0: run at least 1 trial"),
    (["--timeout", "soon"], "--timeout = 'soon': give a time such as 30m"),
    (["--lr-range", "1e-2:1e-4"], "--lr-range = '0.01:0.0001': give LOW:HIGH with 0 < LOW <= HIGH"),
    (["--lr-range", "fast"], "--lr-range = 'fast': give LOW:HIGH"),
    (["--ranks", "0,4"], "--ranks = '0,4': give whole numbers of at least 1"),
    (["--ranks", "four"], "--ranks = 'four': give a comma-separated list"),
    (["--methods", "lora,magic"], "--methods = 'lora,magic': choose among lora"),
    (["--min-steps", "50", "--max-steps", "10"], "--max-steps = 10: the cap must be at least --min-steps (50)"),
    (["--objective", "judge", "--base", "some/model"], "--objective = 'judge': the judge reads the miniature world"),
    (["--judge-style", "striped"], "--judge-style = 'striped': the style is what --objective judge measures"),
    (["--text-encoder", "maybe"], "--text-encoder = 'maybe': give a comma-separated list, e.g. off,on"),
    (["--validation-split", "1.5"], "--validation-split = 1.5: hold out a fraction"),
    (["--storage", "nosuchdb://x"], "--storage = 'nosuchdb://x': optuna cannot open it"),
])
def test_bad_tune_flags_are_one_line_errors_naming_the_flag(flags, message, image_folder, tmp_path, capsys):
    code = cli(["tune", str(image_folder), "--out", str(tmp_path / "s")] + flags)
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith(f"stylelora: error: {message}") and "\n" not in error


def test_a_searched_setting_among_the_fixed_ones_is_refused(image_folder, tmp_path, capsys):
    (tmp_path / "train.toml").write_text("rank = 8\nbatch-size = 2\n")
    code = cli(["tune", str(image_folder), "--train-config", str(tmp_path / "train.toml")])
    assert code == 2 and "rank: the search sets this; give a single value to the search" in capsys.readouterr().err


def test_the_tune_toml_config_has_a_tune_and_a_train_table(tmp_path, image_folder):
    path = tmp_path / "tune.toml"
    path.write_text(f'[tune]\ndata = "{image_folder}"\ntrials = 7\ntimeout = "1h30m"\nranks = [4, 8]\n'
                    'lr-range = "1e-4:1e-2"\ntext-encoder = "off,on"\n[train]\nbatch-size = 2\n')
    from stylelora.tune.space import load_tune_toml

    config = tune_config_from_dict(load_tune_toml(path))
    assert (config.trials, config.timeout, config.ranks, config.lr_range) == (7, 5400.0, (4, 8), (1e-4, 1e-2))
    assert config.text_encoder == (False, True) and config.train == {"batch-size": 2}
    assert parse_duration("30m") == 1800 and parse_duration("900") == 900


def test_spearman_rank_correlation():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)
    assert spearman([1, 2], [1, 2]) is None


def test_folder_style_reads_what_each_sample_folder_teaches():
    import numpy as np
    from PIL import Image

    for folder, style in (("stripes", "striped"), ("dots", "dotted"), ("pastel", "pastel")):
        images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((ROOT / "datasets" / folder).glob("*.png"))[:12]]
        assert folder_style(images) == style


def test_the_held_out_flat_style_is_read_as_flat_and_counted_as_one_look(tmp_path):
    import numpy as np
    from PIL import Image

    from stylelora.mini.evaluate import Rates
    from stylelora.mini.judge import judge
    from stylelora.mini.samples import HELD_OUT, HELD_OUT_SEED, make

    make(tmp_path, HELD_OUT["flat"], HELD_OUT_SEED, count=12)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(tmp_path.glob("*.png"))]
    assert folder_style(images) == "flat"
    rates = Rates()
    for image in images:  # flat is a solid shape in a normal colour: counted when the judge reads both
        rates.count(judge(image), "red", "circle")
    make(tmp_path / "striped", {"texture": "striped", "palette": "normal"}, 0, count=1)
    make(tmp_path / "pastel", {"texture": "solid", "palette": "pastel"}, 0, count=1)
    for other in ("striped", "pastel"):  # striped and normal, solid and pastel: neither is flat
        rates.count(judge(np.asarray(Image.open(tmp_path / other / "000.png").convert("RGB"))), "red", "circle")
    assert rates.share("flat") == 12 / 14
    assert rates.share("solid") == 13 / 14 and rates.share("normal") == 13 / 14


@pytest.mark.slow
def test_the_judge_objective_scores_style_with_colour_as_a_constraint(tmp_path):
    folder = tmp_path / "stripes"
    folder.mkdir()
    for image in sorted((ROOT / "datasets" / "stripes").glob("*"))[:16]:
        shutil.copy(image, folder / image.name)
    lines = []
    result = tune(TuneConfig(data=folder, out=tmp_path / "study", trials=1, objective="judge", min_steps=10,
                             max_steps=10, judge_images=1), log=lines.append)
    trial = result.best
    assert 0 <= trial.value <= 1 and trial.value == trial.attrs["style"]
    assert any(line.startswith("Judge: the folder's style is striped") for line in lines)
    assert _study(tmp_path / "study").get_trials()[0].system_attrs["constraints:colour"] == \
        pytest.approx(trial.attrs["colour_shortfall"])
    # Scored again (--confirm): the judge on 4x the pictures at new seeds, its colour constraint read again.
    confirmed = json.loads((tmp_path / "study" / "confirmed.json").read_text())["0"]
    assert trial.attrs["confirmed"] == confirmed["confirmed"] and 0 <= confirmed["confirmed"] <= 1
    assert "confirmed_colour_shortfall" in confirmed
    assert "| scored again |" in (tmp_path / "study" / "results.md").read_text()
    assert any(line.startswith("trial 0 scored again on 4x the pictures") for line in lines)


# ---- suggest and --auto ----

RULES = {"studies": 9, "steps": {"a": 100.0, "b": 0.5, "low": 100, "high": 1600}, "learning_rate": 0.003,
         "rank": 8, "alpha_ratio": 1.0, "evidence": []}


def test_suggest_follows_the_measured_rules_and_is_deterministic(image_folder):
    first, second = suggest(image_folder, rules=RULES), suggest(image_folder, rules=RULES)
    assert first == second
    assert first.values() == {"rank": 8, "alpha": 8.0, "learning_rate": 0.003, "max_steps": steps_for(6, RULES)}
    assert steps_for(6, RULES) == 240 and steps_for(400, RULES) == 1600 and steps_for(1, RULES) == 100
    assert first.summary.startswith("6 images, 64-64 px, aspect 1.00-1.00")
    assert suggest(image_folder, base="some/sd15", rules=RULES).values()["learning_rate"] == 1e-4
    reasons = {s.flag: s.reason for s in first.settings}
    assert reasons["max-steps"] == ("6 images: steps = 100 x images^0.50, fitted to the best trials' steps (from 9 "
                                    "tuning studies on the mini)")


def test_suggest_applies_the_fit_to_the_score_studies_and_says_so(image_folder):
    """The committed rules are bench/tune.py's fit to the --objective score studies (their best trials' kept steps)."""
    from stylelora.train.suggest import load_rules

    rules = load_rules()
    assert rules["objective"] == "score"
    suggestion = suggest(image_folder)
    reasons = {s.flag: s.reason for s in suggestion.settings}
    assert reasons["rank"].startswith(f"the rank the best trials chose most (from {rules['studies']} score-objective "
                                      "tuning studies on the mini)")
    assert "fitted to the steps the best trials kept" in reasons["max-steps"]
    assert suggestion.values() == {"rank": rules["rank"], "alpha": rules["rank"] * rules["alpha_ratio"],
                                   "learning_rate": rules["learning_rate"], "max_steps": steps_for(6, rules)}


def test_suggest_cli_prints_each_setting_with_its_reason_and_a_toml_train_accepts(image_folder, tmp_path, capsys):
    assert cli(["suggest", str(image_folder)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{image_folder}: 6 images")
    assert [line.split()[0] for line in printed[1:5]] == ["--rank", "--alpha", "--learning-rate", "--max-steps"]
    assert all(": " in line for line in printed[1:5])
    assert cli(["suggest", str(image_folder), "--toml"]) == 0
    (tmp_path / "s.toml").write_text(capsys.readouterr().out)
    config = from_dict(load_toml(tmp_path / "s.toml") | {"data": str(image_folder)})
    assert config.max_steps == suggest(image_folder).values()["max_steps"]


def test_auto_fills_only_the_settings_left_at_their_defaults(image_folder, tmp_path):
    said = []
    filled = fill_unset(TrainConfig(data=image_folder, rank=8, auto=True), said.append)
    wanted = suggest(image_folder).values()
    assert filled.rank == 8 and filled.alpha == wanted["alpha"] and filled.max_steps == wanted["max_steps"]
    assert filled.learning_rate == wanted["learning_rate"] and not filled.auto
    assert said[0].startswith("Auto: --alpha") and "--rank" not in said[0]
    epochs = fill_unset(TrainConfig(data=image_folder, epochs=3, auto=True), said.append)
    assert epochs.max_steps is None  # --epochs already says how long


def test_train_auto_from_the_cli_and_toml(train_config, tmp_path, capsys):
    config = train_config()
    code = cli(["train", str(config.data), "--base", config.base, "--auto", "--max-steps", "2", "--out",
                str(tmp_path / "a"), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0 and "Auto: --rank" in printed.err
    rules = suggest(config.data).values()  # the summary names the settings trained, the suggested ones
    assert f"rank {rules['rank']}, alpha {rules['alpha']:g}, base {config.base}" in printed.out.splitlines()[1]
    (tmp_path / "auto.toml").write_text("auto = true\n")
    assert from_dict(load_toml(tmp_path / "auto.toml") | {"data": "x"}).auto is True


# ---- inspect --ranks ----

def test_inspect_ranks_finds_the_rank_a_change_really_uses(train_config, tmp_path, capsys):
    result = train(train_config(rank=4), progress_bar=False, **QUIET)
    weights, metadata, _ = read_lora(result.adapter_path)
    for module in weights.values():  # keep one component: every change becomes rank 1
        module.up[:, 1:] = 0
    write_lora(weights, "kohya", tmp_path / "rank1.safetensors", metadata)
    assert cli(["inspect", str(tmp_path / "rank1.safetensors"), "--ranks", "--json", "--base",
                train_config().base]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {(m["rank"], m["90%"], m["95%"], m["99%"]) for m in info["modules"]} == {(4, 1, 1, 1)}
    assert "--rank 1 would likely have done" in info["verdict"]
    assert cli(["inspect", str(result.adapter_path), "--ranks", "--base", train_config().base]) == 0
    text = capsys.readouterr().out
    assert "rank   90%   95%   99%" in text and text.strip().splitlines()[-1].strip().startswith(("every", "some"))
