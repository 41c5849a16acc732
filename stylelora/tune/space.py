"""What `stylelora tune` searches, and how: `TuneConfig`, checked in one place (`validate_tune`), and the
search space that turns an optuna trial into the settings of one training run."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..methods import METHODS, TARGET_PRESETS
from ..mini.evaluate import STYLES as JUDGE_STYLES  # the looks the strict judge counts
from ..options import UiField, option, read_toml
from ..train.config import TrainConfig, validate
from ..train.settings import from_dict

OBJECTIVES = ("loss", "score", "judge")
PRUNERS = ("median", "none")
DEFAULT_TRIALS = 20
# Settings the search owns; a fixed training setting (--train-config, or the flags) may not name them.
SEARCHED = ("rank", "alpha", "learning_rate", "max_steps", "method", "targets", "train_text_encoder")


BUDGET, OBJECTIVE, SPACE, INSIDE = "budget", "objective", "search space (one value fixes a setting)", "inside each trial"


@dataclass
class TuneConfig:
    """One study, each option declared once (options.option): the `stylelora tune` flags, the TOML [tune] keys
    and the docs' option table are built from these fields."""

    data: Path = option(help="folder of captioned images", cli=False)
    out: Path | None = option(None, "folder for the study, the trials' adapters and the results",
                              default_text="tune/<folder name>")
    storage: str | None = option(None, "database URL optuna accepts, shared by every process of the study, e.g. "
                                       "postgresql://user:pass@host/db", default_text="SQLite in --out")
    study_name: str | None = option(None, "the study's name in the storage", default_text="the folder's name")
    trials: int | None = option(None, "finished trials in all, over every process", BUDGET,
                                default_text=f"{DEFAULT_TRIALS} unless --timeout",
                                ui=UiField("Trials", "integer", "tune-trials", default=10))
    timeout: float | None = option(None, "no new trial starts after this long in this process: 30m, 2h, 900 "
                                         "(seconds)", BUDGET, cli_type=str, default_text="none")
    max_steps: int = option(1600, "cap on each trial's steps", BUDGET,
                           ui=UiField("Most steps a trial trains", "integer", "tune-max-steps"))
    min_steps: int = option(100, "fewest steps a trial trains", BUDGET,
                           ui=UiField("Fewest steps a trial trains", "integer", "tune-min-steps"))
    objective: str = option("loss", "loss: the held-out validation loss (any base); score: the kept step's preview "
                                    "score, style x prompt, as --select-by score reads it (any base); judge: the "
                                    "style rate the mini's judge reads on fixed prompts and seeds, colour kept as a "
                                    "constraint (--base mini only)", OBJECTIVE, choices=OBJECTIVES,
                            ui=UiField("Objective (loss: held-out validation loss; score: the previews' style x "
                                       "prompt; judge: the mini's style rate)", "dropdown", "tune-objective"))
    judge_style: str | None = option(None, "the style the judge counts", OBJECTIVE, choices=JUDGE_STYLES,
                                     default_text="what it sees most in the folder")
    judge_images: int = option(2, "images per colour x shape prompt the judge reads (12 prompts)", OBJECTIVE)
    confirm: int = option(3, "after the budget, score the best N trials and the defaults' trial again on 4x the "
                             "pictures at new seeds, and name the winner by that (score and judge objectives; "
                             "0 = off)", OBJECTIVE,
                          ui=UiField("Best trials scored again before naming the winner", "integer", "tune-confirm"))
    ranks: tuple[int, ...] = option((2, 4, 8, 16), "ranks to try", SPACE, cli_type=str,
                                    ui=UiField("Ranks to try", "textbox", "tune-ranks"))
    alpha_ratios: tuple[float, ...] = option((0.5, 1.0, 2.0), "alpha as a multiple of the rank", SPACE, cli_type=str)
    lr_range: tuple[float, float] | None = option(None, "learning rates, log scale, LOW:HIGH", SPACE, cli_type=str,
                                                  default_text="the base's default / 10 to x 5")
    methods: tuple[str, ...] = option(("lora",), "adapter methods to try, comma-separated", SPACE, cli_type=str,
                                      choices=lambda: list(METHODS),
                                      ui=UiField("Methods to try", "multiselect", "tune-methods"))
    target_presets: tuple[str, ...] = option(("attn", "attn-mlp"), "module presets to try, of attn, attn-mlp, "
                                                                   "all-linear, all", SPACE, cli_type=str,
                                             choices=tuple(TARGET_PRESETS),
                                             ui=UiField("Module presets to try", "multiselect", "tune-targets"))
    text_encoder: tuple[bool, ...] = option((False,), "off, on, or off,on to search it", SPACE, cli_type=str)
    early_stop: int = option(5, "stop a trial after PATIENCE validations without improvement, keeping its best step "
                                "(loss and score objectives; 0 = off)", INSIDE, metavar="PATIENCE")
    pruner: str = option("median", "stop a trial whose validation loss (or score) is worse than the median of "
                                   "earlier trials at the same step (loss and score objectives)", INSIDE,
                         choices=PRUNERS)
    seed: int = option(0, "the sampler's seed and every trial's training seed", INSIDE)
    train: dict[str, Any] = field(default_factory=dict)  # fixed training settings (flag names as keys)

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else Path("tune") / (Path(self.data).resolve().name or "study")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.out_dir / 'study.db').resolve()}"

    @property
    def name(self) -> str:
        return self.study_name or Path(self.data).resolve().name or "study"

    @property
    def trial_budget(self) -> int | None:
        if self.trials is None and self.timeout is None:
            return DEFAULT_TRIALS
        return self.trials

    def base_train_config(self) -> TrainConfig:
        """The fixed part of every trial's TrainConfig: the user's settings, validation on, quiet outputs."""
        values = {"data": self.data, "seed": self.seed} | {k.replace("-", "_"): v for k, v in self.train.items()}
        if values.get("validation_data") is None and not values.get("validation_split"):
            values["validation_split"] = 0.2
        return from_dict(values)

    def learning_rates(self) -> tuple[float, float]:
        if self.lr_range is not None:
            return self.lr_range
        default = self.base_train_config().effective_learning_rate
        return default / 10, default * 5

    def space(self) -> dict[str, Any]:
        """What a study was made with: a rerun on the same study must search the same space."""
        return {"data": str(Path(self.data).resolve()), "objective": self.objective, "ranks": list(self.ranks),
                "alpha_ratios": list(self.alpha_ratios), "lr_range": list(self.learning_rates()), "steps": [self.min_steps, self.max_steps],
                "methods": list(self.methods), "target_presets": list(self.target_presets),
                "text_encoder": list(self.text_encoder), "early_stop": self.early_stop, "seed": self.seed,
                "judge_style": self.judge_style, "judge_images": self.judge_images,
                "train": {k: str(v) for k, v in sorted(self.train.items())}}


def _fail(flag: str, value: Any, fix: str) -> ConfigError:
    return ConfigError(f"--{flag} = {value!r}: {fix}")


def validate_tune(config: TuneConfig) -> TuneConfig:
    """Check every field; raise ConfigError naming the first bad flag. Returns the config unchanged."""
    c = config
    lr = c.lr_range
    checks: list[tuple[bool, str, Any, str]] = [
        (c.trials is None or c.trials >= 1, "trials", c.trials, "run at least 1 trial"),
        (c.timeout is None or c.timeout > 0, "timeout", c.timeout, "give a time above 0, e.g. 30m, 2h or 900 (seconds)"),
        (c.objective in OBJECTIVES, "objective", c.objective, f"choose one of {', '.join(OBJECTIVES)}"),
        (c.objective != "judge" or c.train.get("base", "mini") == "mini", "objective", c.objective,
         "the judge reads the miniature world's shapes and colours: use it with --base mini, or --objective loss"),
        (c.judge_style is None or c.judge_style in JUDGE_STYLES, "judge-style", c.judge_style,
         f"choose one of {', '.join(JUDGE_STYLES)}"),
        (c.judge_style is None or c.objective == "judge", "judge-style", c.judge_style,
         "the style is what --objective judge measures; add --objective judge"),
        (c.judge_images >= 1, "judge-images", c.judge_images, "judge at least 1 image per prompt"),
        (c.confirm >= 0, "confirm", c.confirm, "score 0 (off) or more of the best trials again"),
        (bool(c.ranks) and all(r >= 1 for r in c.ranks), "ranks", ",".join(map(str, c.ranks)),
         "give whole numbers of at least 1, e.g. 2,4,8,16"),
        (bool(c.alpha_ratios) and all(r > 0 for r in c.alpha_ratios), "alpha-ratios",
         ",".join(map(str, c.alpha_ratios)), "give ratios above 0, e.g. 0.5,1,2 (alpha = rank x ratio)"),
        (lr is None or (0 < lr[0] <= lr[1] and all(map(math.isfinite, lr))), "lr-range",
         lr and f"{lr[0]:g}:{lr[1]:g}", "give LOW:HIGH with 0 < LOW <= HIGH, e.g. 1e-4:1e-2"),
        (c.min_steps >= 1, "min-steps", c.min_steps, "train each trial for at least 1 step"),
        (c.max_steps >= c.min_steps, "max-steps", c.max_steps, f"the cap must be at least --min-steps ({c.min_steps})"),
        (bool(c.methods) and all(m in METHODS for m in c.methods), "methods", ",".join(c.methods),
         f"choose among {', '.join(METHODS)}"),
        (bool(c.target_presets) and all(t in TARGET_PRESETS for t in c.target_presets), "target-presets",
         ",".join(c.target_presets), f"choose among {', '.join(TARGET_PRESETS)}"),
        (bool(c.text_encoder), "text-encoder", "", "give off, on or off,on"),
        (c.early_stop >= 0, "early-stop", c.early_stop, "the patience is a number of validations, 0 (off) or more"),
        (c.pruner in PRUNERS, "pruner", c.pruner, f"choose one of {', '.join(PRUNERS)}"),
    ]
    for ok, flag, value, fix in checks:
        if not ok:
            raise _fail(flag, value, fix)
    taken = sorted(k for k in c.train if k.replace("-", "_") in SEARCHED)
    if taken:
        raise ConfigError(f"{', '.join(taken)}: the search sets {'these' if len(taken) > 1 else 'this'}; give a "
                          "single value to the search instead (e.g. --ranks 4, --methods lora, --lr-range 1e-3:1e-3)")
    validate(c.base_train_config())
    return config


# The categorical settings by their optuna parameter name, and the field their choices come from.
_CHOICES = {"rank": "ranks", "alpha_ratio": "alpha_ratios", "method": "methods", "targets": "target_presets",
            "text_encoder": "text_encoder"}


def sample(trial, config: TuneConfig) -> dict[str, Any]:
    """Draw the trial's searched settings; return all its settings (`settings_of`). A setting with one choice
    is fixed, not searched. The draw order is part of a seeded study's reproducibility: keep it."""
    def choose(name: str) -> None:
        if len(choices := getattr(config, _CHOICES[name])) > 1:
            trial.suggest_categorical(name, list(choices))

    choose("rank")
    choose("alpha_ratio")
    low, high = config.learning_rates()
    if high > low:
        trial.suggest_float("learning_rate", low, high, log=True)
    if config.max_steps > config.min_steps:
        trial.suggest_int("steps", config.min_steps, config.max_steps, log=True)
    for name in ("method", "targets", "text_encoder"):
        choose(name)
    return settings_of(trial.params, config)


def default_params(config: TuneConfig) -> dict[str, Any]:
    """The untuned recipe as optuna parameters, for trial 0: a study then never ends worse than the defaults. Each
    searched setting at its default (the base's usual learning rate and steps, train/recipe.py),
    clamped into its range; a choice whose default is not among the choices is left to the sampler."""
    fixed = config.base_train_config()
    defaults = {"rank": fixed.rank, "alpha_ratio": fixed.effective_alpha / fixed.rank, "method": fixed.method,
                "targets": fixed.targets or "attn", "text_encoder": fixed.train_text_encoder}
    params = {name: value for name, value in defaults.items()
              if len(choices := getattr(config, _CHOICES[name])) > 1 and value in choices}
    low, high = config.learning_rates()
    if high > low:
        params["learning_rate"] = min(max(fixed.effective_learning_rate, low), high)
    if config.max_steps > config.min_steps:
        params["steps"] = min(max(fixed.max_steps or fixed.recipe.steps, config.min_steps), config.max_steps)
    return params


def settings_of(params: dict[str, Any], config: TuneConfig) -> dict[str, Any]:
    """A trial's training settings, as TrainConfig fields, from its optuna parameters and the fixed part of the
    space: the one place that says what each parameter means."""
    fixed = {name: getattr(config, field_name)[0] for name, field_name in _CHOICES.items()}
    p = fixed | {"learning_rate": config.learning_rates()[0], "steps": config.max_steps} | params
    return {"rank": p["rank"], "alpha": p["rank"] * p["alpha_ratio"], "learning_rate": p["learning_rate"],
            "max_steps": p["steps"], "method": p["method"], "targets": p["targets"],
            "train_text_encoder": p["text_encoder"]}


# ---- turning flag text into values (the CLI and the TOML config share these) ----

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")


def parse_duration(text: str | float | int, flag: str = "--timeout") -> float:
    """'30m', '2h', '1h30m', '900' (seconds) -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    parts = _DURATION.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.strip().lower()):
        raise ConfigError(f"{flag} = {text!r}: give a time such as 30m, 2h, 1h30m or 900 (seconds)")
    return sum(float(n) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[u] for n, u in parts)


def parse_list(text: str | list | tuple, flag: str, kind: type = str) -> tuple:
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        if kind is bool:
            words = {"on": True, "off": False, "true": True, "false": False, True: True, False: False}
            return tuple(words[item.strip().lower() if isinstance(item, str) else item] for item in items)
        return tuple(kind(item.strip()) if isinstance(item, str) else kind(item) for item in items if str(item).strip())
    except (KeyError, ValueError):
        example = {int: "2,4,8", float: "0.5,1,2", bool: "off,on"}.get(kind, "a,b")
        raise ConfigError(f"{flag} = {text!r}: give a comma-separated list, e.g. {example}") from None


def parse_range(text: str | list | tuple, flag: str) -> tuple[float, float]:
    try:
        low, high = (text.split(":") if isinstance(text, str) else text)
        return float(low), float(high)
    except ValueError:
        raise ConfigError(f"{flag} = {text!r}: give LOW:HIGH, e.g. 1e-4:1e-2") from None


_CONVERT = {"ranks": lambda v: parse_list(v, "--ranks", int),
            "alpha_ratios": lambda v: parse_list(v, "--alpha-ratios", float),
            "methods": lambda v: parse_list(v, "--methods"),
            "target_presets": lambda v: parse_list(v, "--target-presets"),
            "text_encoder": lambda v: parse_list(v, "--text-encoder", bool),
            "lr_range": lambda v: parse_range(v, "--lr-range"),
            "timeout": parse_duration,
            "data": Path, "out": Path}


def tune_config_from_dict(values: dict[str, Any]) -> TuneConfig:
    """A TuneConfig from plain values (a TOML [tune] table, UI fields, flags); unknown keys are errors. Keys
    that are `stylelora train` settings (base, validation-split, batch-size...) become the fixed part."""
    known = {f.name for f in dataclasses.fields(TuneConfig)} - {"train"}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    converted: dict[str, Any] = {"train": dict(values.get("train", {}))}
    for key, value in values.items():
        name = key.replace("-", "_")
        if key == "train" or value is None:
            continue
        if name in known:
            converted[name] = _CONVERT.get(name, lambda v: v)(value)
        elif name in train_keys:
            converted["train"][name] = value
        else:
            raise ConfigError(f"unknown setting {key!r}: see `stylelora tune --help` for the list")
    if "data" not in converted:
        raise ConfigError("no image folder given: pass it as the first argument, e.g. `stylelora tune ./images`")
    return TuneConfig(**converted)


def load_tune_toml(path: Path) -> dict[str, Any]:
    """A --config file for tune: a [tune] table (or top-level keys), with an optional [train] table of fixed
    training settings."""
    table = read_toml(path)
    values = dict(table.get("tune", {k: v for k, v in table.items() if k != "train"}))
    if "train" in table:
        values["train"] = dict(table["train"])
    return values
