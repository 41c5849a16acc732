"""The Train tab's live view without a browser: the loss plot's axes and curves, and the progress line."""

from __future__ import annotations

import math
import random
import re

import pytest

from stylelora.train.jobs import JobState
from stylelora.ui.train_view import loss_figure, loss_svg, progress_text, smoothed, smoothing_weight


def _spiky_losses(steps: int, seed: int = 0) -> list[tuple[int, float]]:
    """Per-step losses as a run logs them: a slow decline with spikes of up to ten times the level."""
    rng = random.Random(seed)
    return [(s, 0.12 * math.exp(-s / 80) + 0.01 + (0.1 * rng.random() if rng.random() < 0.1 else 0.003 * rng.random()))
            for s in range(1, steps + 1)]


def _drawn_y_ticks(svg: str) -> list[float]:
    """The y tick labels as the SVG draws them, bottom to top (matplotlib groups them as ytick_N)."""
    ticks = re.findall(r'<g id="ytick_\d+">.*?<text [^>]*? y="([\d.]+)"[^>]*>([^<]+)</text>', svg, re.S)
    return [float(label) for _, label in sorted(ticks, key=lambda tick: -float(tick[0]))]


@pytest.mark.parametrize("steps", [2, 12, 120])
@pytest.mark.parametrize("log_y", [False, True])
def test_the_y_axis_is_numeric_and_increasing(steps, log_y):
    losses = _spiky_losses(steps)
    ticks = _drawn_y_ticks(loss_svg(losses, [], log_y))
    assert len(ticks) >= 3 and ticks == sorted(set(ticks)), ticks
    values = [v for _, v in losses]
    assert ticks[0] <= max(values) and ticks[-1] >= min(values)  # the ticks span the data, not categories


def test_a_loss_that_barely_moves_still_gets_distinct_numeric_ticks():
    ticks = _drawn_y_ticks(loss_svg([(1, 1.08520), (2, 1.08525), (3, 1.08531)], []))
    assert len(ticks) >= 3 and ticks == sorted(set(ticks)), ticks


def test_the_raw_loss_is_faint_and_the_smoothed_curve_is_calmer():
    losses = _spiky_losses(120)
    figure = loss_figure(losses, [(40, 0.05), (80, 0.04)], log_y=True)
    raw, smooth, validation = figure.axes[0].get_lines()
    assert raw.get_alpha() < 0.5 and smooth.get_alpha() is None
    assert [line.get_label() for line in (raw, smooth, validation)] == [
        "training (each step)", "training (smoothed)", "validation"]
    assert figure.axes[0].get_yscale() == "log"

    def roughness(ys):
        return sum(abs(b - a) for a, b in zip(ys, ys[1:]))

    assert roughness(smooth.get_ydata()) < roughness(raw.get_ydata()) / 3


def test_smoothing_starts_at_the_first_value_and_leaves_short_runs_alone():
    assert smoothing_weight(5) == 0 and smoothed([3.0, 1.0, 2.0], 0.0) == [3.0, 1.0, 2.0]
    assert smoothing_weight(120) == pytest.approx(1 - 10 / 120) and smoothing_weight(10_000) == 0.95
    assert smoothed([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no climb from zero


def test_a_non_finite_loss_is_left_out_of_the_plot():
    figure = loss_figure([(1, 0.1), (2, float("nan")), (3, 0.08)], [])
    assert list(figure.axes[0].get_lines()[0].get_xdata()) == [1, 3]


def test_the_progress_line_while_running_and_after():
    running = JobState(status="running", step=40, total_steps=800, steps_per_second=2.5, seconds_left=304,
                       losses=[(40, 0.04321)], started_at=100.0)
    assert progress_text(running, now=120.0) == "step 40 / 800 · 2.50 steps/s · 5 min 04 s left · loss 0.0432"
    done = JobState(status="done", step=800, total_steps=800, losses=[(800, 0.01)], validation_losses=[(800, 0.02)],
                    started_at=100.0, finished_at=100.0 + 3723)
    assert progress_text(done, now=0) == "step 800 / 800 · took 1 h 02 min · loss 0.0100 · validation loss 0.0200"
    starting = JobState(status="running", started_at=100.0)
    assert progress_text(starting, now=107.0) == "step 0 / ? · preparing (7 s)"


def test_a_new_run_clears_the_last_runs_plot_while_it_prepares():
    """Issue: a new run showed the last run's loss curve while 'preparing'. The status tick now blanks the plot
    once (and leaves it alone while nothing was drawn)."""
    from types import SimpleNamespace

    from stylelora.ui.train_tab import train_status

    finished = JobState("done", "done", 3, 3, losses=[(1, 0.5), (2, 0.4), (3, 0.3)], started_at=1.0)
    preparing = JobState("running", "preparing", 0, 300, started_at=2.0)
    session = SimpleNamespace(job=SimpleNamespace(snapshot=lambda: finished))
    _, _, plot, _, drawn = train_status(session, False, None)
    assert "<svg" in plot and drawn is not None
    session.job.snapshot = lambda: preparing
    _, _, plot, previews, drawn_now = train_status(session, False, drawn)
    assert plot == "" and previews == [] and drawn_now is None
    _, _, plot, _, _ = train_status(session, False, None)
    assert not isinstance(plot, str)  # nothing drawn: nothing to blank again (gr.skip())


def test_a_poll_draws_no_progress_overlay_over_what_it_updates(tmp_path):
    """Timers poll every second or two; a progress overlay on their outputs would flicker "0.1s" over the status."""
    pytest.importorskip("gradio")
    from stylelora.ui.app import build_app

    demo = build_app(tmp_path / "workspace", tmp_path / "adapters")
    polls = [fn for fn in demo.fns.values()
             if any(type(demo.blocks.get(block)).__name__ == "Timer" for block, _ in fn.targets)]
    assert len(polls) == 4  # the library, the training status, the queue table, the study table
    assert {fn.show_progress for fn in polls} == {"hidden"}


def test_a_run_selected_by_score_shows_its_score_curves_and_the_kept_step_s_previews(tmp_path):
    from types import SimpleNamespace

    from stylelora.ui.train_tab import train_status

    kept = [tmp_path / "step-000004-0.png", tmp_path / "step-000004-1.png"]
    finished = JobState("done", "done", 6, 6, losses=[(s, 0.5 / s) for s in range(1, 7)],
                        validation_losses=[(2, 0.3), (4, 0.29), (6, 0.31)],
                        scores=[(2, 0.70, 0.90), (4, 0.80, 0.95), (6, 0.82, 0.80)], kept_previews=kept,
                        samples=[tmp_path / "step-000006-0.png"], started_at=1.0, finished_at=9.0)
    session = SimpleNamespace(job=SimpleNamespace(snapshot=lambda: finished))
    _, progress, plot, previews, _ = train_status(session, False, None)
    assert plot.count("<svg") == 2 and "style score" in plot and "prompt score" in plot
    assert "score 0.656" in progress  # the last validation's style x prompt
    assert previews == [(str(kept[0]), "kept step 4, scored"), (str(kept[1]), "kept step 4, scored"),
                        (str(tmp_path / "step-000006-0.png"), "step 6")]


def test_the_tune_tab_sends_how_many_best_trials_are_scored_again(tmp_path):
    from stylelora.tune.space import tune_config_from_dict, validate_tune
    from stylelora.ui.tune_tab import study_settings

    settings = study_settings(tmp_path, "images", "mini", "score", 1.0, 2, 0, 20, 60, "4,8", ["lora"], ["attn"], "off")
    config = validate_tune(tune_config_from_dict(settings))
    assert (config.objective, config.confirm, config.trials, config.timeout) == ("score", 1, 2, None)
    assert config.out == tmp_path / "tune" / "images"
