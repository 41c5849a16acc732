"""The knowing-when-to-stop options' rules, light enough for the CLI to read at start-up (validation.py holds the
machinery): what selection means, and the checks train/config.py's validate runs with the rest."""

from __future__ import annotations

from ..score.plugins import scorer_named

WITH_VALIDATION = "add --validation-split 0.2 or --validation-data DIR"
WITH_CANDIDATES = f"{WITH_VALIDATION}, or --sample-every N to score previews"
SELECT_BY = ("loss", "score")  # what --keep best and --early-stop go by (score: stylelora/score/previews.py)


class Selection:
    """What the knowing-when-to-stop options come to, read off TrainConfig's fields (it inherits these)."""

    @property
    def selection(self) -> str:
        """What picks the best step: --select-by, else the previews' score whenever there is validation or
        previews (--sample-every)."""
        return self.select_by or ("score" if self.validating or self.sample_every else "loss")

    @property
    def selecting(self) -> bool:
        """Whether candidate steps are measured, so a best one can be kept: with validation, or with previews
        (--sample-every) scored by --select-by score, unless --keep last asks for no choosing."""
        return self.validating or (bool(self.sample_every) and self.selection == "score" and self.keep != "last")

    @property
    def paints_while_training(self) -> bool:
        """Whether the VAE and the text encoders stay after caching: previews, or candidate steps scored by them."""
        return bool(self.sample_every) or (self.selection == "score" and self.validating)

    @property
    def validating(self) -> bool:
        return bool(self.validation_split) or self.validation_data is not None

    @property
    def keep_step(self) -> str:
        return self.keep or ("best" if self.selecting else "last")


def stopping_checks(c) -> list[tuple[bool, str, str]]:
    """The validation, early stopping, best-step selection and EMA options' checks (train/config.py's validate
    runs them with the rest): (holds, field, what to do)."""
    return [
        (0 <= c.validation_split < 1, "validation_split", "hold out a fraction in [0, 1), e.g. 0.2"),
        (not (c.validation_split and c.validation_data is not None), "validation_data",
         "give --validation-split (held out of the folder) or --validation-data (another folder), not both"),
        (c.validate_every is None or c.validate_every >= 1, "validate_every", "validate every N steps, N >= 1"),
        (c.validate_every is None or c.validating, "validate_every",
         f"there is nothing to validate on: {WITH_VALIDATION}"),
        (c.early_stop >= 0, "early_stop", "the patience is a number of validations, 0 (never stop early) or more"),
        (not c.early_stop or c.selecting, "early_stop",
         f"early stopping watches the validations or the scored previews: {WITH_CANDIDATES}"),
        (c.min_delta >= 0, "min_delta", "the least improvement that counts must be 0 or more, e.g. 0.0005"),
        (c.keep in (None, "best", "last"), "keep", "choose best or last"),
        (c.keep != "best" or c.selecting, "keep",
         f"the best step is the best validation's or the best-scored previews': {WITH_CANDIDATES}"),
        (c.select_by in (None, *SELECT_BY), "select_by", f"choose one of {', '.join(SELECT_BY)}"),
        (c.select_by != "loss" or c.validating, "select_by", f"the loss is the held-out images': {WITH_VALIDATION}"),
        (c.select_by != "score" or c.selecting, "select_by",
         f"the scored previews are painted from the held-out captions or the --sample-prompts: {WITH_CANDIDATES}"),
        (scorer_named(c.scorer), "scorer", "give base, paired, clip:PATH or dinov2:PATH, with PATH a folder holding "
                                           "that model (save_pretrained, with its processor)"),
        (c.scorer == "base" or (c.selection == "score" and c.selecting), "scorer",
         f"the scorer reads the previews of --select-by score: {WITH_CANDIDATES}"),
        (0 <= c.ema_decay < 1, "ema_decay", "the EMA decay is in [0, 1), e.g. 0.99; 0 = off"),
    ]
