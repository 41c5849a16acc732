"""The Train tab's live view of a run: the progress line and the loss plot, drawn from a job snapshot.

The plot is a matplotlib figure written as inline SVG with its text kept as text, so its axes are
numeric by construction (Gradio's LinePlot once read a short run's losses as categories) and a
browser test can read the tick labels it shows.
"""

from __future__ import annotations

import io
import math

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from stylelora.train.jobs import JobState

RAW_COLOUR, SMOOTH_COLOUR, VALIDATION_COLOUR = "#f97316", "#c2410c", "#2563eb"


def smoothing_weight(points: int) -> float:
    """How much of the running average each new point keeps: none for a handful of steps, up to 0.95 for a
    long run, so the trend shows through per-step noise without hiding a short run's few points."""
    return 0.0 if points < 10 else min(0.95, 1 - 10 / points)


def smoothed(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the curve starts at the first
    value rather than at zero."""
    average, out = 0.0, []
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** count) if weight else value)
    return out


def _finite(points: list[tuple[int, float]], log_y: bool) -> list[tuple[int, float]]:
    return [(s, v) for s, v in points if math.isfinite(v) and (v > 0 or not log_y)]


def _tick_formatter(ticks: list[float]) -> FuncFormatter:
    """Labels with the fewest significant digits (at least 3) that keep every tick's label distinct: a
    loss that barely moves gets 1.0852 and 1.0853, not 1.09 twice."""
    digits = next((d for d in range(3, 12) if len({f"{t:.{d}g}" for t in ticks}) == len(ticks)), 12)
    return FuncFormatter(lambda value, _position=None: f"{value:.{digits}g}")


def loss_figure(losses: list[tuple[int, float]], validation: list[tuple[int, float]], log_y: bool = False) -> Figure:
    """Training loss by step, faint, with its smoothed curve on top, and the validation loss when there is
    one; a numeric y axis, linear or logarithmic."""
    # Colours set here, not taken from matplotlib's global style, so every run's plot looks the same
    figure = Figure(figsize=(9, 2.8), dpi=100, layout="tight", facecolor="white")
    axes = figure.add_subplot(facecolor="white")
    raw = _finite(losses, log_y)
    if raw:
        steps, values = zip(*raw)
        axes.plot(steps, values, color=RAW_COLOUR, alpha=0.3, linewidth=1, label="training (each step)")
        axes.plot(steps, smoothed(list(values), smoothing_weight(len(values))), color=SMOOTH_COLOUR, linewidth=2,
                  label="training (smoothed)")
    if held_out := _finite(validation, log_y):
        axes.plot(*zip(*held_out), color=VALIDATION_COLOUR, marker="o", markersize=3, linewidth=1.5,
                  label="validation")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if log_y and (raw or held_out):
        axes.set_yscale("log")
        low, high = axes.get_ylim()
        decades = math.log10(high / low)
        locator = LogLocator(subs=range(1, 10) if decades < 1 else (1, 2, 5) if decades < 3 else (1,))
        if sum(low <= tick <= high for tick in locator.tick_values(low, high)) < 3:  # a narrow range: spread 5 ticks
            locator = FixedLocator(np.geomspace(low, high, 7)[1:-1])
        axes.yaxis.set_major_locator(locator)
        axes.yaxis.set_minor_formatter(NullFormatter())
    low, high = axes.get_ylim()
    axes.yaxis.set_major_formatter(_tick_formatter([t for t in axes.yaxis.get_major_locator()() if low <= t <= high]))
    axes.grid(alpha=0.25)
    if raw or held_out:
        axes.legend(loc="upper right", fontsize=8, frameon=False)
    return figure


def score_figure(scores: list[tuple[int, float, float]]) -> Figure:
    """With --select-by score: each validation's preview scores by step, style and prompt, and their product,
    which picks the kept step."""
    figure = Figure(figsize=(9, 2.2), dpi=100, layout="tight", facecolor="white")
    axes = figure.add_subplot(facecolor="white")
    steps, style, prompt = zip(*scores)
    axes.plot(steps, style, color=RAW_COLOUR, marker="o", markersize=3, label="style score")
    axes.plot(steps, prompt, color=VALIDATION_COLOUR, marker="o", markersize=3, label="prompt score")
    axes.plot(steps, [a * b for a, b in zip(style, prompt)], color="#171717", linewidth=2, label="style x prompt (picks the step)")
    axes.set_xlabel("step")
    axes.set_ylabel("score")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.25)
    axes.legend(loc="lower right", fontsize=8, frameon=False)
    return figure


def _svg(figure: Figure) -> str:
    """A figure as inline SVG markup, its labels as <text> elements."""
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "stylelora"}):
        figure.savefig(buffer, format="svg")
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]  # no XML prolog or doctype inside an HTML page


def loss_svg(losses: list[tuple[int, float]], validation: list[tuple[int, float]], log_y: bool = False,
             scores: list[tuple[int, float, float]] = ()) -> str:
    """loss_figure, and score_figure below it when the run scores its previews, as inline SVG."""
    return _svg(loss_figure(losses, validation, log_y)) + (_svg(score_figure(list(scores))) if scores else "")


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def progress_text(state: JobState, now: float) -> str:
    """"step N / M" and, while running, speed, time left and the current loss; once finished, how long it took."""
    parts = [f"step {state.step} / {state.total_steps or '?'}"]
    if state.status in ("running", "stopping") and state.step:
        parts += [f"{state.steps_per_second:.2f} steps/s", f"{_duration(state.seconds_left)} left"]
    elif state.finished_at:
        parts.append(f"took {_duration(state.finished_at - state.started_at)}")
    elif state.status == "running":
        parts.append(f"preparing ({_duration(now - state.started_at)})")
    if state.losses:
        parts.append(f"loss {state.losses[-1][1]:.4f}")
    if state.validation_losses:
        parts.append(f"validation loss {state.validation_losses[-1][1]:.4f}")
    if state.scores:
        parts.append(f"score {state.scores[-1][1] * state.scores[-1][2]:.3f}")
    return " · ".join(parts)


def progress_html(state: JobState, now: float) -> str:
    """A bar with the progress text written on it, which stays, full or where it stopped, after the run."""
    share = min(1.0, state.step / state.total_steps) if state.total_steps else 0.0
    colour = {"failed": "#dc2626", "stopped": "#a3a3a3"}.get(state.status, "#f97316")
    return (f'<div style="position:relative;height:1.9em;border-radius:6px;background:#e5e5e5;overflow:hidden">'
            f'<div id="train-bar" data-share="{share:.4f}" style="position:absolute;inset:0;width:{share * 100:.1f}%;'
            f'background:{colour};opacity:.55"></div>'
            f'<div id="train-progress-text" style="position:relative;padding:.3em .7em;font-variant-numeric:'
            f'tabular-nums">{progress_text(state, now)}</div></div>')
