"""`stylelora tune`: a Bayesian search over training settings, on optuna.

optuna does the search (TPE sampler), the pruning (MedianPruner on each trial's validation losses), the
storage (SQLite by default; any database URL, shared by many processes or machines) and the plots. What
it lacks, written here:
- a trial's training resumes from its own checkpoints after a kill, so a retried trial repeats no step;
- a trial whose process died on this machine is failed and retried at once (optuna's heartbeat does it
  for other machines, after its grace period);
- the study ends at N finished trials over every process sharing it, not N per process.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
import warnings
from typing import Any, Callable

from ..data.folder import scan_folder
from ..errors import ConfigError, TrainingError, TrainingInterrupted
from ..train.checkpoint import latest_checkpoint
from ..train.config import TrainConfig
from .confirm import confirm_best
from .results import TrialReport, TuneResult, progress_line, ranked, report_of, write_results
from .space import TuneConfig, default_params, sample, validate_tune

HEARTBEAT_SECONDS, GRACE_SECONDS = 30, 120  # another machine's trial counts as dead after 2 minutes of silence
COUNTED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")  # a killed trial's FAIL is retried, a surplus one never ran


class SurplusTrial(Exception):
    """Another process took the last trial of the budget between our count and our start."""


class TrialFailed(Exception):
    """The trial's own settings failed its training (a NaN loss): recorded, and the study goes on."""


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead_here(owner: str | None) -> bool:
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def open_study(config: TuneConfig):
    """Create the study, or load it to continue; refuse one made with another objective or search space."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial says it
    config.out_dir.mkdir(parents=True, exist_ok=True)
    url = config.storage_url
    # SQLite locks the whole file per write: with several processes on one study, wait rather than fail.
    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    try:
        storage = RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                             grace_period=GRACE_SECONDS, heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
    except Exception as error:  # a bad URL, a missing driver, an unreachable server: one line
        raise ConfigError(f"--storage = {url!r}: optuna cannot open it ({type(error).__name__}: "
                          f"{str(error).splitlines()[0]})") from None
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=3) if config.pruner == "median" and config.objective != "judge"
              else optuna.pruners.NopPruner())
    study = optuna.create_study(storage=storage, study_name=config.name, load_if_exists=True, pruner=pruner,
                                sampler=trial_seeded_tpe(config.seed, config.name),
                                direction="minimize" if config.objective == "loss" else "maximize")
    space, wanted = study.user_attrs.get("space"), config.space()
    if space is None:
        study.set_user_attr("space", wanted)
        # skip_if_exists: two processes opening a new study together enqueue it once
        study.enqueue_trial(default_params(config), user_attrs={"defaults": True}, skip_if_exists=True)
    # Only what the study recorded is compared: one made by an older stylelora recorded fewer settings.
    elif changed := ", ".join(k for k in space if k in wanted and wanted[k] != space[k]):
        raise ConfigError(f"{config.out_dir}: the study {config.name!r} there was made with other settings ({changed}); "
                          "run again with the same settings to continue it, or choose another --out or --study-name")
    return study


def trial_seeded_tpe(seed: int, study_name: str = ""):
    """optuna's TPE sampler, its randomness reseeded from (seed, study name, trial number) before each trial.
    With one seed for the whole sampler, two processes that open a study together draw the same settings for
    their first trials, and with the seed alone two studies (of two folders) repeat each other's first trials;
    this way no two trials share a draw, and a study run alone is reproducible."""
    import optuna

    study_key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:4], "little")

    class TrialSeededTPE(optuna.samplers.TPESampler):
        def before_trial(self, study, trial) -> None:
            for state in (self._rng, self._random_sampler._rng):  # optuna keeps no public per-trial seed
                state.rng.seed((seed * 1_000_003 + trial.number + study_key) % 2 ** 32)
            super().before_trial(study, trial)

    return TrialSeededTPE(seed=seed, n_startup_trials=5)


def recover_killed_trials(study) -> None:
    """Fail and retry the running trials of processes on this machine that no longer exist (a kill, a crash).
    Uses the storage calls optuna's own heartbeat check uses: it has no call to fail a trial by owner."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _dead_here(trial.user_attrs.get("owner")):
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                RetryHeartbeatStaleTrialCallback()(study, study._storage.get_trial(trial._trial_id))


def _failed_by_its_settings(trial) -> bool:
    return trial.state.name == "FAIL" and "error" in trial.user_attrs


def _finished_count(study) -> int:
    return sum(t.state.name in ("COMPLETE", "PRUNED") or _failed_by_its_settings(t)
               for t in study.get_trials(deepcopy=False))


def _counted(study) -> list:
    """The trials that use up the budget: finished (a trial whose settings diverged included), running or queued."""
    return [t for t in study.get_trials(deepcopy=False) if t.state.name in COUNTED or _failed_by_its_settings(t)]


class TrialRunner:
    """The objective: train one adapter with the trial's settings, then score it."""

    def __init__(self, config: TuneConfig, fixed: TrainConfig, log: Callable[[str], None],
                 should_stop: Callable[[], bool] | None):
        self.config, self.fixed, self.log, self.should_stop = config, fixed, log, should_stop
        self.judge = None
        if config.objective == "judge":
            from .judging import StyleJudge

            self.judge = StyleJudge(self.fixed, config.judge_style, config.judge_images, log)

    def __call__(self, trial) -> float:
        budget = self.config.trial_budget
        if budget is not None and sum(t.number <= trial.number for t in _counted(trial.study)) > budget:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial()
        trial.set_user_attr("owner", _owner())
        settings = sample(trial, self.config)
        # A retry continues the killed trial's run, in its folder.
        number = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial", trial.number)
        trial.set_user_attr("run", number)
        run_config = self.trial_config(number, settings)
        trial.set_user_attr("train_config", run_config.to_json_dict())  # what best.toml writes back
        started = time.time()
        try:
            result = self._train(trial, run_config)
        except TrainingInterrupted:
            raise
        except TrainingError as error:  # this trial's settings diverged (a NaN loss): a failed trial, not a failed study
            trial.set_user_attr("error", str(error))
            raise TrialFailed(str(error)) from None
        finally:
            trial.set_user_attr("seconds", round(time.time() - started, 1))
        attrs = {"adapter": str(result.adapter_path), "kept_step": result.kept_step,
                 "trained_steps": result.steps, "validation_loss": result.validation_loss,
                 "base_validation_loss": result.base_validation_loss, "stop_reason": result.stop_reason}
        if self.config.objective == "score":
            attrs |= {"style_score": result.scores.style, "prompt_score": result.scores.prompt,
                      "score": result.scores.quality}
            value = result.scores.quality
        elif self.judge is None:
            value = result.validation_loss
        else:
            style, colour = self.judge.rate(result.adapter_path)
            attrs |= {"style": style, "colour": colour, "colour_shortfall": self.judge.colour_floor - colour}
            # Colour is a constraint, not a score: feasible while within 5 points of the base's own rate.
            trial.set_constraint("colour", self.judge.colour_floor - colour)
            value = style
        for key, item in attrs.items():
            trial.set_user_attr(key, item)
        return value

    def trial_config(self, number: int, settings: dict[str, Any]) -> TrainConfig:
        out = self.config.out_dir / "trials" / f"trial-{number:04d}"
        judged = self.judge is not None
        steps = settings["max_steps"]
        validate_every = max(self.config.max_steps // 20, 1)  # the same steps in every trial, so the pruner compares
        return TrainConfig(**(vars(self.fixed) | settings | {
            "out": out, "name": f"trial-{number:04d}", "resume": latest_checkpoint(out) is not None, "auto": False,
            "save_every": max(steps // 10, 1), "validate_every": validate_every,
            "early_stop": 0 if judged else self.config.early_stop, "keep": "last" if judged else "best",
            "select_by": "score" if self.config.objective == "score" else "loss"}))

    def _train(self, trial, run_config: TrainConfig):
        from ..train.loop import train

        pruned = []

        def on_progress(progress) -> None:
            if progress.validation_loss is not None and self.judge is None:
                trial.report(progress.validation_loss if progress.scores is None else progress.scores.quality,
                             progress.step)
                if trial.should_prune():
                    pruned.append(progress.step)

        def stop() -> bool:
            return bool(pruned) or (self.should_stop is not None and self.should_stop())

        try:
            return train(run_config, on_progress=on_progress, should_stop=stop, log=lambda m: None, progress_bar=False)
        except TrainingInterrupted:
            import optuna

            if pruned:
                trial.set_user_attr("pruned_at", pruned[0])
                raise optuna.TrialPruned(f"pruned at step {pruned[0]}") from None
            # Stopped on request: queue the trial again, so a rerun resumes its checkpoint instead of losing it.
            from optuna.storages import RetryHeartbeatStaleTrialCallback

            RetryHeartbeatStaleTrialCallback()(trial.study, trial.storage.get_trial(trial._trial_id))
            raise


def tune(config: TuneConfig, on_trial: Callable[[TrialReport], None] | None = None,
         should_stop: Callable[[], bool] | None = None, log: Callable[[str], None] = print) -> TuneResult:
    """Run (or continue) the study until its trial budget or this process's timeout; write the results.
    Raises StyleloraError on bad settings and TrainingInterrupted when stopped on request."""
    import optuna

    validate_tune(config)
    fixed = config.base_train_config()
    scan_folder(fixed.data, fixed.caption, fixed.trigger)  # a missing or empty folder fails before any study is made
    with warnings.catch_warnings():
        # The heartbeat, the retry callback and the matplotlib plots are marked experimental in optuna 5.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _run_study(config, fixed, on_trial, should_stop, log)


def _run_study(config: TuneConfig, fixed: TrainConfig, on_trial: Callable[[TrialReport], None] | None,
               should_stop: Callable[[], bool] | None, log: Callable[[str], None]) -> TuneResult:

    study = open_study(config)
    runner = TrialRunner(config, fixed, log, should_stop)
    deadline = time.time() + config.timeout if config.timeout else math.inf
    budget = config.trial_budget
    log(f"Study {config.name!r} in {config.storage_url}: objective {config.objective}, "
        f"{'no trial limit' if budget is None else f'{budget} trial' + ('' if budget == 1 else 's')}"
        f"{', no new trial after %.0f s' % config.timeout if config.timeout else ''}.")

    def finished(study_, frozen) -> None:
        if "surplus" in frozen.user_attrs:  # never ran: another process took the budget's last trial
            return
        report = report_of(frozen, config)
        log(progress_line(report, _finished_count(study_), budget))
        if on_trial is not None:
            on_trial(report)

    while True:
        recover_killed_trials(study)
        # A queued trial (the defaults, trial 0, or a stopped trial queued again) is still to run: not spent yet.
        if budget is not None and sum(t.state.name != "WAITING" for t in _counted(study)) >= budget:
            break
        if time.time() >= deadline or (should_stop is not None and should_stop()):
            break
        study.optimize(runner, n_trials=1, catch=(SurplusTrial, TrialFailed), callbacks=[finished])
    reports = ranked(study, config)
    if not (should_stop is not None and should_stop()):  # a stop asked for now, not after more painting
        confirm_best(reports, config, runner.judge, log)
    return write_results(study, config, reports)
