"""Precision: the bf16 probe and its verdicts, what auto and an explicit bf16 do on each kind of CPU,
and that nothing in the suite computes in bfloat16 without asking first."""

from __future__ import annotations

import ast
import os
import signal
from pathlib import Path

import pytest

from stylelora.cli.main import main
from stylelora.cli.stop import StopRequest
from stylelora.errors import ConfigError
from stylelora.model import precision
from stylelora.model.base import load_base, denoiser_parameter_count
from stylelora.model.precision import BELOW_AMX, ISA_VARIABLE, Bf16Support, ProbeRun, choose_precision, probe

SIGILL = ProbeRun("crashed", "was killed by SIGILL")
SLOW = ProbeRun("ok", "ran", bf16_seconds=0.09, fp32_seconds=0.06)  # AVX512-BF16 alone: 1.5x slower
FAST = ProbeRun("ok", "ran", bf16_seconds=0.02, fp32_seconds=0.05)


def _runner(*outcomes: ProbeRun):
    """A stand-in for the child process: answers `outcomes` in turn and records each environment."""
    seen: list[dict] = []

    def run(env: dict) -> ProbeRun:
        seen.append(env)
        return outcomes[len(seen) - 1]

    return run, seen


def test_a_probe_killed_by_sigill_is_retried_below_amx_and_slower_bf16_is_not_faster():
    run, seen = _runner(SIGILL, SLOW)
    support, settled = probe({"PATH": "/bin"}, runner=run)
    assert settled and [env.get(ISA_VARIABLE) for env in seen] == [None, BELOW_AMX]
    assert support.runs and support.isa_cap == BELOW_AMX and not support.faster
    assert support.speedup == pytest.approx(0.06 / 0.09)
    assert support.reason == (f"bfloat16 runs on this CPU with oneDNN capped at {BELOW_AMX} "
                              "(uncapped, the probe was killed by SIGILL), 0.67x the speed of float32")


def test_a_cpu_where_bf16_dies_even_below_amx_has_no_bf16():
    run, _ = _runner(SIGILL, SIGILL)
    support, settled = probe({}, runner=run)
    assert settled and not support.runs and support.isa_cap is None and not support.faster
    assert support.reason == ("bfloat16 does not run on this CPU (a probe was killed by SIGILL; "
                              f"capped at {BELOW_AMX}, was killed by SIGILL)")


def test_a_working_fast_cpu_needs_no_cap_and_a_users_own_cap_is_not_second_guessed():
    run, seen = _runner(FAST)
    support, _ = probe({}, runner=run)
    assert support.runs and support.faster and support.isa_cap is None and len(seen) == 1
    run, seen = _runner(SIGILL)
    support, _ = probe({ISA_VARIABLE: "AVX2"}, runner=run)  # the user chose a cap: one probe, under it
    assert not support.runs and len(seen) == 1


def test_a_probe_that_failed_for_another_reason_is_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(precision, "run_probe", lambda env: ProbeRun("failed", "took longer than 120 s"))
    support = precision.bf16_support()
    assert not support.runs and support.reason == "bfloat16 does not run on this CPU (a probe took longer than 120 s)"
    assert not (tmp_path / "stylelora" / "cpu-bf16.json").exists()  # the next run probes again


def test_a_real_child_killed_by_sigill_is_reported_as_such(monkeypatch):
    monkeypatch.setattr(precision, "PROBE_SCRIPT", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    assert precision.run_probe(dict(os.environ)) == ProbeRun("crashed", "was killed by SIGILL")
    monkeypatch.setattr(precision, "PROBE_SCRIPT", "raise RuntimeError('no bf16 kernels')")
    assert precision.run_probe(dict(os.environ)) == ProbeRun("failed", "failed: RuntimeError: no bf16 kernels")


def _support(monkeypatch, support: Bf16Support | None) -> None:
    def answer() -> Bf16Support:
        if support is None:
            raise AssertionError("the probe should not be needed here")
        return support

    monkeypatch.setattr(precision, "bf16_support", answer)


WORKS_FAST = Bf16Support(True, None, 2.4, "bfloat16 runs on this CPU, 2.40x the speed of float32")
WORKS_CAPPED_SLOW = Bf16Support(True, BELOW_AMX, 0.67, "bfloat16 runs ... capped, 0.67x the speed of float32")
DIES = Bf16Support(False, None, None, "bfloat16 does not run on this CPU (a probe was killed by SIGILL)")


@pytest.mark.parametrize("support, parameters, expected", [
    (WORKS_FAST, 860_000_000, "bf16"),
    (WORKS_CAPPED_SLOW, 860_000_000, "no"),  # runs, but slower: auto keeps float32
    (DIES, 860_000_000, "no"),
    (None, 5_800_000, "no"),  # small models never probe
    (None, None, "no"),  # size unknown yet
])
def test_auto_on_a_cpu_picks_bf16_only_where_measured_to_run_faster(monkeypatch, support, parameters, expected):
    _support(monkeypatch, support)
    choice = choose_precision("auto", "cpu", parameters)
    assert choice.name == expected
    assert choice.reason.startswith("auto: ")
    if support is not None:
        assert support.reason in choice.reason


def test_explicit_bf16_on_a_cpu_that_dies_on_it_is_a_one_line_error(monkeypatch):
    _support(monkeypatch, DIES)
    with pytest.raises(ConfigError) as error:
        choose_precision("bf16", "cpu", 860_000_000)
    assert str(error.value) == (f"--precision bf16: {DIES.reason}; use --precision no (float32) or auto")
    _support(monkeypatch, WORKS_CAPPED_SLOW)
    choice = choose_precision("bf16", "cpu", 5_000_000)
    assert choice.name == "bf16" and "auto would choose it" in choice.reason


def test_cli_train_with_bf16_on_such_a_cpu_exits_2_with_that_line(monkeypatch, capsys, image_folder, tiny_base,
                                                                  tmp_path):
    _support(monkeypatch, DIES)
    code = main(["train", str(image_folder), "--base", str(tiny_base), "--out", str(tmp_path / "x"),
                 "--max-steps", "1", "--precision", "bf16", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"stylelora: error: --precision bf16: {DIES.reason}; use --precision no (float32) or auto"
    assert "Traceback" not in "\n".join(err)


def test_the_styler_refuses_bf16_on_such_a_cpu(monkeypatch, tiny_base):
    import torch

    from stylelora.paint.styler import Styler

    _support(monkeypatch, DIES)
    with pytest.raises(ConfigError, match="does not run on this CPU"):
        Styler(str(tiny_base), device="cpu", dtype=torch.bfloat16)


def test_training_says_which_precision_it_chose_and_why(train_config):
    logs: list[str] = []
    from stylelora.train.loop import train

    train(train_config(max_steps=1), progress_bar=False, log=logs.append)
    parameters = denoiser_parameter_count(str(train_config().base))
    assert parameters == sum(p.numel() for p in load_base(str(train_config().base)).unet.parameters())
    assert (f"Precision: float32 (auto: the denoiser has {parameters:,} parameters, too few for bfloat16 to pay on a CPU "
            "(it can from 50,000,000)).") in logs


def test_a_real_probe_here_is_cached_and_read_back_without_a_child(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = precision.bf16_support()
    cached = (tmp_path / "stylelora" / "cpu-bf16.json").read_text()
    assert precision.machine_key() in cached
    assert first.runs == (first.speedup is not None)
    if first.worth_measuring_again:  # timed on a busy machine (the suite runs beside it): measured once more
        assert precision.bf16_support().measurements == 2
        first = precision.cached_bf16_support()
    if not first.worth_measuring_again:
        monkeypatch.setattr(precision, "run_probe", lambda env: pytest.fail("probed again despite the cache"))
    assert precision.bf16_support().runs == first.runs


# A real child made slow on purpose: each "kernel" is a sleep, so the timings hold on a loaded machine too; in
# SLOWED, the first three bfloat16 rounds take four times as long, as when another program takes the CPU.
TIMED_CHILD = """
import json, time
def seconds(pause):
    start = time.perf_counter(); time.sleep(pause); return time.perf_counter() - start
times = {"bf16": [], "fp32": []}
for round in range(7):
    times["bf16"].append(seconds(0.05 * (4 if SLOWED and round < 3 else 1)))
    times["fp32"].append(seconds(0.1))
print(json.dumps(times))
"""


def test_a_probe_child_slowed_on_purpose_is_judged_unsound_and_a_steady_one_sound(monkeypatch):
    monkeypatch.setattr(precision, "machine_load", lambda: 0.0)
    slowed = precision.run_probe(dict(os.environ), "SLOWED = True" + TIMED_CHILD)
    assert slowed.outcome == "ok" and slowed.doubt().startswith("the probe's rounds disagreed (0.5"), slowed
    # A steady child on a loaded machine (a test suite beside it) can still be preempted in two rounds of seven;
    # like the next run of stylelora, it is then measured again.
    for _ in range(3):
        steady = precision.run_probe(dict(os.environ), "SLOWED = False" + TIMED_CHILD)
        if steady.doubt() == "":
            break
    assert steady.outcome == "ok" and steady.doubt() == "" and steady.fp32_seconds / steady.bf16_seconds > 1.8
    monkeypatch.setattr(precision, "machine_load", lambda: 0.6)
    busy = precision.run_probe(dict(os.environ), "SLOWED = False" + TIMED_CHILD)
    assert busy.doubt() == "measured while the machine was busy (60% of its CPUs in use)"


def test_one_preempted_round_of_seven_is_not_a_disagreement():
    preempted = ProbeRun("ok", "ran", 0.05, 0.1, (2.0, 2.0, 0.49, 2.0, 1.98, 2.0, 2.01), 0.0)
    assert preempted.doubt() == ""
    twice = ProbeRun("ok", "ran", 0.05, 0.1, (2.0, 2.0, 0.49, 2.0, 0.6, 2.0, 2.01), 0.0)
    assert twice.doubt() == "the probe's rounds disagreed (0.60x to 2.00x)"


def _timed(speedup: float, load: float) -> ProbeRun:
    return ProbeRun("ok", "ran", 0.1 / speedup, 0.1, (speedup,) * 7, load)


def test_a_speed_timed_under_load_is_said_uncertain_kept_as_a_fact_only_and_measured_again(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    answers = [_timed(0.93, 0.55), _timed(3.1, 0.05)]  # as measured: under load, then quiet
    monkeypatch.setattr(precision, "run_probe", lambda env: answers.pop(0))
    first = precision.bf16_support()
    assert first.runs and not first.faster and first.worth_measuring_again
    assert first.described() == ("bfloat16 runs on this CPU, 0.93x the speed of float32 (uncertain: measured while "
                                 "the machine was busy (55% of its CPUs in use); measured again on a later run)")
    # The next run measures again, on a quiet machine now, and auto picks bfloat16 for a big UNet
    choice = choose_precision("auto", "cpu", 900_000_000)
    assert choice.name == "bf16" and choice.reason == "auto: bfloat16 runs on this CPU, 3.10x the speed of float32"
    assert not answers
    monkeypatch.setattr(precision, "run_probe", lambda env: pytest.fail("a sound speed is not measured again"))
    assert precision.bf16_support().speedup == pytest.approx(3.1) and precision.bf16_support().measurements == 2


def test_two_doubtful_timings_keep_the_faster_and_a_close_call_stops_after_the_last_measurement(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    answers = [_timed(0.9, 0.9), _timed(1.6, 0.8), _timed(1.2, 0.0), _timed(1.18, 0.0)]
    monkeypatch.setattr(precision, "run_probe", lambda env: answers.pop(0))
    assert precision.bf16_support().speedup == pytest.approx(0.9)
    second = precision.bf16_support()  # busy again: of the two, the faster stands, still uncertain
    assert second.speedup == pytest.approx(1.6) and second.doubt and second.measurements == 2
    third = precision.bf16_support()  # quiet, but 1.2x is within 10% of the 1.15x threshold: measured again
    assert third.speedup == pytest.approx(1.2) and not third.doubt and third.worth_measuring_again
    fourth = precision.bf16_support()
    assert fourth.measurements == precision.MAX_MEASUREMENTS and not fourth.worth_measuring_again and not answers
    monkeypatch.setattr(precision, "run_probe", lambda env: pytest.fail("measured more than MAX_MEASUREMENTS times"))
    assert precision.bf16_support() == fourth


def test_a_speed_only_ever_timed_under_load_waits_for_a_quiet_machine_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    answers = [_timed(0.9 + i / 10, 0.6) for i in range(precision.MAX_MEASUREMENTS)] + [_timed(3.2, 0.0)]
    monkeypatch.setattr(precision, "run_probe", lambda env: answers.pop(0))
    monkeypatch.setattr(precision, "machine_load", lambda: 0.6)
    for _ in range(precision.MAX_MEASUREMENTS):
        busy = precision.bf16_support()
    assert busy.measurements == precision.MAX_MEASUREMENTS and busy.doubt and not busy.worth_measuring_again
    assert precision.bf16_support() == busy  # still busy: not timed again
    assert busy.described().endswith("(uncertain: measured while the machine was busy (60% of its CPUs in use); "
                                      "measured again when a run starts on a quiet machine)")
    monkeypatch.setattr(precision, "machine_load", lambda: 0.1)
    quiet = precision.bf16_support()
    assert quiet.speedup == pytest.approx(3.2) and not quiet.doubt and not answers
    assert quiet.described() == "bfloat16 runs on this CPU, 3.20x the speed of float32"


def test_a_verdict_cached_by_an_older_version_keeps_its_facts_and_has_its_speed_measured_again(monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "stylelora").mkdir()
    old = {"runs": True, "isa_cap": None, "speedup": 0.93, "reason": "bfloat16 runs on this CPU, 0.93x the speed of float32"}
    (tmp_path / "stylelora" / "cpu-bf16.json").write_text(json.dumps({precision.machine_key(): old}))
    assert precision.cached_bf16_support().worth_measuring_again
    monkeypatch.setattr(precision, "run_probe", lambda env: _timed(3.4, 0.0))
    assert precision.bf16_support().speedup == pytest.approx(3.4)


@pytest.fixture
def isa_environment(monkeypatch):
    """The ISA variables as they were, put back afterwards: apply_isa_cap writes os.environ itself."""
    for name in (ISA_VARIABLE, precision.OUR_CAP_VARIABLE):
        monkeypatch.setenv(name, "")  # recorded, so the teardown restores the real state
        monkeypatch.delenv(name)


def test_our_own_cap_is_set_once_and_does_not_change_the_machine_key(isa_environment, monkeypatch):
    key = precision.machine_key()
    precision.apply_isa_cap(WORKS_CAPPED_SLOW)
    assert os.environ[ISA_VARIABLE] == BELOW_AMX
    assert precision.machine_key() == key and ISA_VARIABLE not in precision.users_environment()
    monkeypatch.setenv(ISA_VARIABLE, "AVX2")  # the user's own setting wins and keys the cache
    precision.apply_isa_cap(WORKS_CAPPED_SLOW)
    assert os.environ[ISA_VARIABLE] == "AVX2" and precision.machine_key().endswith(f"{ISA_VARIABLE}=AVX2")


def test_train_on_a_cpu_whose_amx_dies_caps_onednn_and_says_what_it_chose(isa_environment, monkeypatch, capsys,
                                                                           tmp_path, image_folder, tiny_base):
    """The VM of the report, end to end: the uncapped child dies with SIGILL, the capped one runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "PROBE_SCRIPT", "import os, signal\nif not os.environ.get('ONEDNN_MAX_CPU_ISA'): "
                        "os.kill(os.getpid(), signal.SIGILL)\n" + precision.PROBE_SCRIPT)
    monkeypatch.setattr(precision, "BF16_MIN_PARAMETERS", 0)  # the tiny base stands in for an SD1.5-sized one
    code = main(["train", str(image_folder), "--base", str(tiny_base), "--out", str(tmp_path / "x"), "--max-steps", "1",
                 "--quiet"])
    line = next(l for l in capsys.readouterr().err.splitlines() if l.startswith("Precision: "))
    assert code == 0 and os.environ[ISA_VARIABLE] == BELOW_AMX
    assert line.startswith("Precision: ") and (f"auto: bfloat16 runs on this CPU with oneDNN capped at {BELOW_AMX} "
                                               "(uncapped, the probe was killed by SIGILL), ") in line


def test_a_first_signal_asks_to_stop_after_the_step_and_a_second_stops_at_once():
    stop = StopRequest()
    assert not stop()
    stop._handle(signal.SIGINT, None)
    assert stop()
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGTERM, None)


def test_a_stop_while_caching_latents_says_so(train_config):
    from stylelora.errors import TrainingInterrupted
    from stylelora.train.loop import train

    with pytest.raises(TrainingInterrupted, match="while caching latents, before the first step"):
        train(train_config(), should_stop=lambda: True, progress_bar=False, log=lambda m: None)


# What computes in bfloat16 outside the library's own guard: a test doing this must carry the marker.
COMPUTES_IN_BF16 = ("torch.bfloat16", 'precision="bf16"', "autocast(")


def test_every_test_that_computes_in_bf16_is_marked_so_it_is_skipped_where_bf16_dies():
    unmarked = []
    for path in sorted(Path(__file__).parent.glob("test_*.py")):
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef) or not node.name.startswith("test_"):
                continue
            body = ast.get_source_segment(source, node)
            simulated = "_support(monkeypatch" in body  # the probe's answer is faked: nothing runs in bf16
            marked = any("mark.bf16" in ast.get_source_segment(source, d) for d in node.decorator_list)
            if any(p in body for p in COMPUTES_IN_BF16) and not simulated and not marked:
                unmarked.append(f"{path.name}::{node.name}")
    assert unmarked == []
