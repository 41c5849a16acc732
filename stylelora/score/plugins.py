"""Which scorer a --scorer value names: the base's own (base, paired) or a model saved on this machine (clip:PATH,
dinov2:PATH). Light, with no torch: the CLI's checks read it at start-up."""

from __future__ import annotations

from pathlib import Path

BASE_SCORERS = ("base", "paired")  # need nothing beyond the base
MODEL_SCORERS = ("clip", "dinov2")  # KIND:PATH, a model folder on this machine; nothing is downloaded


def scorer_model(spec: str) -> tuple[str, Path] | None:
    """(kind, model folder) of a `clip:PATH` or `dinov2:PATH` scorer; None for the base's own or anything else."""
    kind, colon, path = spec.partition(":")
    return (kind, Path(path).expanduser()) if colon and kind in MODEL_SCORERS and path else None


def scorer_named(spec: str) -> bool:
    """Whether `spec` names a scorer this machine can build: one of the base's, or a model kind with a folder."""
    return spec in BASE_SCORERS or ((model := scorer_model(spec)) is not None and model[1].is_dir())
