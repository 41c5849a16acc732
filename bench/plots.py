"""PNG plots of the benchmark results (matplotlib, from the [bench] extra)."""

from __future__ import annotations

import io
from pathlib import Path

from stylelora.files import write_atomically


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training(rows: list[dict], path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    labels = [r["label"] for r in rows]
    axes[0].bar(labels, [r["ours"] / r["floor"] for r in rows], color="#4c72b0")
    axes[0].axhline(1.10, color="red", linestyle="--", label="target 1.10")
    axes[0].set_title("our step / physical floor (lower is better)")
    axes[1].bar(labels, [r["naive"] / r["ours"] for r in rows], color="#55a868")
    axes[1].axhline(1.4, color="red", linestyle="--", label="target 1.4")
    axes[1].set_title("naive loop / ours (higher is better)")
    for axis in axes:
        axis.legend()
    _save(plt, figure, path)


def plot_scaling(scaling: list[dict], path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for s in scaling:
        axes[0].plot(list(s["batch"]), list(s["batch"].values()), marker="o", label=s["label"])
        axes[1].plot(list(s["rank"]), list(s["rank"].values()), marker="o", label=s["label"])
    axes[0].set(title="step time vs batch size (rank 4)", xlabel="batch", ylabel="relative to batch 1")
    axes[1].set(title="step time vs rank", xlabel="rank", ylabel="relative to rank 4", xscale="log")
    for axis in axes:
        axis.legend()
    _save(plt, figure, path)


def plot_generation(results, path: Path) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 3.5), squeeze=False)
    for axis, g in zip(axes[0], results):
        counts = list(g.unfused)
        width = 0.38
        axis.bar([c - width / 2 for c in counts], list(g.unfused.values()), width, label="unfused")
        axis.bar([c + width / 2 for c in counts], list(g.fused.values()), width, label="fused")
        axis.axhline(1.02, color="red", linestyle="--", label="fused target 1.02")
        axis.set(title=f"{g.label}: step / base step", xlabel="adapters", xticks=counts)
        axis.legend()
    _save(plt, figure, path)


def _save(plt, figure, path: Path) -> None:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_atomically(path, buffer.getvalue())
