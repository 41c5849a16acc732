"""Which precision to compute in: the one place that decides, from what this CPU was measured to run.

/proc/cpuinfo is no proof. On some cloud VMs it lists AMX, yet the hypervisor never enables AMX's
tile state, and the first bfloat16 matmul oneDNN runs there kills the process with SIGILL. So a
child process tries bfloat16 (a matmul and a convolution) and times it against float32; if it dies,
a second child tries again with oneDNN capped below AMX (ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16). The
verdict is cached per CPU model, torch version and ISA setting under the user's cache folder, so
later runs read a small JSON file instead of probing. No library offers this; torch's own
`torch.cpu._is_amx_tile_supported()` reads the same CPUID flags that mislead.

Whether bfloat16 runs is a fact, and is kept. How fast it runs is a measurement, and a busy machine spoils
it: under another program's load the probe once timed bfloat16 at 0.93x float32 on a CPU where it runs
3.1-3.6x, and that verdict then chose float32 for good. So a timing taken while the machine was busy, or
whose rounds disagree, or that falls near the threshold, is kept as uncertain, said so on the precision
line, and measured again on later runs (up to MAX_MEASUREMENTS in all) until one is sound. A speed that was
only ever timed under load is measured again after that too, when a run starts on a quiet machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..paths import user_cache


ISA_VARIABLE = "ONEDNN_MAX_CPU_ISA"
OUR_CAP_VARIABLE = "STYLELORA_ONEDNN_CAP"  # marks a cap we set, so children still key as the user's setting
BELOW_AMX = "AVX512_CORE_BF16"
# bfloat16 must beat float32 by this much on the probe's work before "auto" picks it: a near tie
# on a conv and a matmul is a loss on a whole step, which also pays for the casts.
MIN_SPEEDUP = 1.15
PROBE_TIMEOUT = 120
BUSY_LOAD = 0.3  # the share of the CPUs in use by others above which the machine counts as busy
MAX_SPREAD = 1.35  # per-round speedups further apart than this: something else ran during the probe
MARGIN = 1.1  # a speedup within this factor of MIN_SPEEDUP is too close to call from one timing
MAX_MEASUREMENTS = 4  # an uncertain speed is measured again on later runs, up to this many times in all

# The child: first the bare operations (the SIGILL, if any, lands here), then timings of what an SD1.5
# LoRA step at 256 px is made of: a 320-channel 3x3 convolution and an attention-sized matmul, forward
# and backward to the input (a LoRA step's backward runs through the frozen base). Backward matters:
# where only AVX512-BF16 runs, bf16 forward is near float32 but backward is 1.3x slower. The two
# precisions are timed in alternation, so a burst of other work on the machine hits both alike.
PROBE_SCRIPT = """
import json, time, torch
small = torch.randn(64, 64, dtype=torch.bfloat16)
small @ small
torch.nn.functional.conv2d(torch.randn(1, 8, 8, 8, dtype=torch.bfloat16), torch.randn(8, 8, 3, 3, dtype=torch.bfloat16))
def inputs(dtype):
    return (torch.randn(1, 320, 32, 32).to(dtype).requires_grad_(), torch.randn(320, 320, 3, 3).to(dtype),
            torch.randn(1024, 320).to(dtype).requires_grad_(), torch.randn(320, 1280).to(dtype))
def seconds(x, w, a, b):
    start = time.perf_counter()
    (torch.nn.functional.conv2d(x, w, padding=1).float().sum() + (a @ b).float().sum()).backward()
    return time.perf_counter() - start
bf16, fp32 = inputs(torch.bfloat16), inputs(torch.float32)
seconds(*bf16), seconds(*fp32)
times = {"bf16": [], "fp32": []}
for _ in range(7):
    times["bf16"].append(seconds(*bf16))
    times["fp32"].append(seconds(*fp32))
print(json.dumps(times))
"""


@dataclass(frozen=True)
class ProbeRun:
    """What one child process did: 'ok' (with timings), 'crashed' (killed by a signal) or 'failed'."""

    outcome: str
    detail: str = ""
    bf16_seconds: float | None = None
    fp32_seconds: float | None = None
    speedups: tuple[float, ...] = ()  # each round's float32 time over its bfloat16 time
    load: float | None = None  # the share of the machine's CPUs in use as the child started

    def doubt(self) -> str:
        """Why this run's timing may not be this CPU's own ("" when it looks sound)."""
        if self.load is not None and self.load > BUSY_LOAD:
            return f"measured while the machine was busy ({self.load:.0%} of its CPUs in use)"
        middle = self.middle_rounds()
        if middle and max(middle) > MAX_SPREAD * min(middle):
            return f"the probe's rounds disagreed ({min(middle):.2f}x to {max(middle):.2f}x)"
        return ""

    def middle_rounds(self) -> tuple[float, ...]:
        """The per-round speedups without the fastest and the slowest (from five rounds on): one round that the
        scheduler preempted says nothing about the CPU, several that disagree do."""
        ordered = sorted(self.speedups)
        return tuple(ordered[1:-1]) if len(ordered) >= 5 else tuple(ordered)


@dataclass(frozen=True)
class Bf16Support:
    """The verdict on bfloat16 for this CPU, as measured."""

    runs: bool
    isa_cap: str | None  # set ONEDNN_MAX_CPU_ISA to this before the first oneDNN kernel
    speedup: float | None  # float32 time over bfloat16 time on the probe's work
    reason: str  # one line for people
    doubt: str = ""  # why the speed may not be this CPU's own ("" when it was measured soundly)
    measurements: int = 1  # how many probes the speed is drawn from

    @property
    def faster(self) -> bool:
        return self.runs and self.speedup is not None and self.speedup >= MIN_SPEEDUP

    @property
    def worth_measuring_again(self) -> bool:
        """An uncertain or too-close speed, not yet measured MAX_MEASUREMENTS times."""
        close = self.speedup is not None and MIN_SPEEDUP / MARGIN <= self.speedup <= MIN_SPEEDUP * MARGIN
        return self.runs and (bool(self.doubt) or close) and self.measurements < MAX_MEASUREMENTS

    @property
    def waits_for_a_quiet_machine(self) -> bool:
        """A speed timed only under load, MAX_MEASUREMENTS times: timing it under load again would say nothing
        new, so it is measured again when a run starts on a quiet machine."""
        return self.runs and bool(self.doubt) and self.measurements >= MAX_MEASUREMENTS

    def described(self) -> str:
        """The reason, and, when the speed is uncertain, why and when it is measured again."""
        if not self.doubt:
            return self.reason
        when = "when a run starts on a quiet machine" if self.waits_for_a_quiet_machine else "on a later run"
        return f"{self.reason} (uncertain: {self.doubt}; measured again {when})"


def decide(plain: ProbeRun, capped: ProbeRun | None) -> Bf16Support:
    """The verdict from the child runs: `plain` as the environment is, `capped` below AMX (None if not tried)."""
    for run, cap in ((plain, None), (capped, BELOW_AMX)):
        if run is not None and run.outcome == "ok":
            speedup = run.fp32_seconds / max(run.bf16_seconds, 1e-12)
            how = f" with oneDNN capped at {BELOW_AMX} (uncapped, the probe {plain.detail})" if cap else ""
            return Bf16Support(True, cap, speedup,
                               f"bfloat16 runs on this CPU{how}, {speedup:.2f}x the speed of float32", run.doubt())
    tried = plain.detail + (f"; capped at {BELOW_AMX}, {capped.detail}" if capped is not None else "")
    return Bf16Support(False, None, None, f"bfloat16 does not run on this CPU (a probe {tried})")


def machine_load(window: float = 0.3) -> float | None:
    """The share of the CPUs in use right now, 0 to 1, from /proc/stat over `window` seconds; elsewhere the
    1-minute load average per core, which lags (a job that ended a minute ago still counts). None if unknown."""

    def ticks() -> tuple[int, int]:
        counts = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(counts), counts[3] + counts[4]  # all, and idle + waiting for I/O

    try:
        total, idle = ticks()
        time.sleep(window)
        total_after, idle_after = ticks()
        return 1 - (idle_after - idle) / max(total_after - total, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0] / (os.cpu_count() or 1)
    except (OSError, AttributeError):
        return None


def _quiet() -> bool:
    load = machine_load()
    return load is not None and load <= BUSY_LOAD


def run_probe(env: dict[str, str], script: str | None = None) -> ProbeRun:
    """Run `script` (PROBE_SCRIPT unless given) in a child with `env`; never raises."""
    import subprocess  # here and in machine_key, not at the top: `import stylelora` runs this module

    load = machine_load()
    try:
        child = subprocess.run([sys.executable, "-c", script or PROBE_SCRIPT], env=env, capture_output=True, text=True,
                               timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return ProbeRun("failed", f"took longer than {PROBE_TIMEOUT} s")
    except OSError as error:
        return ProbeRun("failed", f"could not start: {error}")
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name if -child.returncode in signal.valid_signals() else "a signal"
        return ProbeRun("crashed", f"was killed by {name}")
    if child.returncode == 128 + signal.SIGILL:  # some shells report a signal this way
        return ProbeRun("crashed", "was killed by SIGILL")
    try:
        times = json.loads(child.stdout.strip().splitlines()[-1])
        bf16, fp32 = [float(t) for t in times["bf16"]], [float(t) for t in times["fp32"]]
        return ProbeRun("ok", "ran", min(bf16), min(fp32), tuple(f / max(b, 1e-12) for b, f in zip(bf16, fp32)),
                        load)
    except (ValueError, IndexError, KeyError, TypeError):
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeRun("failed", f"failed: {last[:200]}")


def users_environment() -> dict[str, str]:
    """os.environ without the cap we set ourselves: the environment the user gave."""
    env = dict(os.environ)
    if env.get(OUR_CAP_VARIABLE) and env.get(ISA_VARIABLE) == env[OUR_CAP_VARIABLE]:
        del env[ISA_VARIABLE], env[OUR_CAP_VARIABLE]
    return env


def probe(env: dict[str, str] | None = None,
          runner: Callable[[dict[str, str]], ProbeRun] | None = None) -> tuple[Bf16Support, bool]:
    """Probe as the environment is; if that dies and no ISA cap was set by the user, probe below AMX.
    Returns the verdict and whether it may be cached: a child that ran or was killed by a signal says
    something about the CPU; one that failed otherwise (a timeout on a busy machine) may not next time."""
    env = users_environment() if env is None else dict(env)
    runner = runner or run_probe
    plain = runner(env)
    capped = None
    if plain.outcome == "crashed" and ISA_VARIABLE not in env:
        capped = runner(env | {ISA_VARIABLE: BELOW_AMX})
    settled = all(run.outcome != "failed" for run in (plain, capped) if run is not None)
    return decide(plain, capped), settled


def cache_file() -> Path:
    return user_cache("cpu-bf16.json")


def machine_key() -> str:
    """CPU model and flags, torch version and the user's ISA setting: what the verdict depends on."""
    model, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = (part.strip() for part in line.partition(":"))
            if name == "model name" and not model:
                model = value
            if name in ("flags", "Features") and not flags:
                flags = hashlib.sha256(value.encode()).hexdigest()[:12]
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "?"
    users_isa = users_environment().get(ISA_VARIABLE, "")
    return f"{model}|flags {flags}|torch {torch_version}|{ISA_VARIABLE}={users_isa}"


def _read_cache() -> dict:
    try:
        data = json.loads(cache_file().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def cached_bf16_support(key: str | None = None) -> Bf16Support | None:
    """The cached verdict for this machine, or None if it was never probed (no child process here).
    Runs at every `import stylelora`: with no cache file, it returns before reading the CPU's details."""
    cache = _read_cache()
    if not cache:
        return None
    entry = cache.get(key or machine_key())
    if not isinstance(entry, dict):
        return None
    if "doubt" not in entry:  # written before speeds were judged: its facts stand, its speed is re-measured
        entry = entry | {"doubt": "measured by an older stylelora, which did not check the machine's load"}
    try:
        return Bf16Support(**entry)
    except TypeError:  # written by another version
        return None


def _cache(key: str, support: Bf16Support) -> None:
    from ..files import write_atomically  # here, not at the top: importing this module stays free of torch

    try:
        write_atomically(cache_file(), json.dumps(_read_cache() | {key: asdict(support)}, indent=1).encode())
    except OSError:
        pass  # a read-only home: probe again next time rather than fail


def apply_isa_cap(support: Bf16Support | None) -> None:
    """Cap oneDNN below AMX where AMX dies. oneDNN reads the variable when it first picks a kernel, so
    this must run before the process's first convolution or bfloat16 matmul; a user's own setting wins."""
    if support is not None and support.isa_cap and ISA_VARIABLE not in os.environ:
        os.environ[ISA_VARIABLE] = os.environ[OUR_CAP_VARIABLE] = support.isa_cap


def combine(earlier: Bf16Support, fresh: Bf16Support) -> Bf16Support:
    """The verdict after measuring an uncertain speed again: a sound timing replaces the earlier one; of two
    doubtful ones the higher speedup is kept, because load slowed bfloat16 here far more than float32
    (0.93x under load against 3.1-3.6x quiet). Whether bfloat16 runs is the fresh probe's fact."""
    count = earlier.measurements + 1
    if not fresh.runs or not fresh.doubt or not earlier.runs:
        return dataclasses.replace(fresh, measurements=count)
    best = max((earlier, fresh), key=lambda s: s.speedup or 0.0)
    return dataclasses.replace(best, measurements=count)


def bf16_support() -> Bf16Support:
    """This CPU's verdict: from the cache, or probed now (once per machine, and again while its speed is
    uncertain) and cached. Applies the cap."""
    key = machine_key()  # before the cap is applied: the key holds the user's own setting
    support = cached_bf16_support(key)
    if support is None or support.worth_measuring_again or (support.waits_for_a_quiet_machine and _quiet()):
        fresh, settled = probe()
        if settled:
            support = fresh if support is None else combine(support, fresh)
            _cache(key, support)
        support = support or fresh
    apply_isa_cap(support)
    return support


# On a CPU, bfloat16 pays only where the model is big enough for the arithmetic to outweigh the casts:
# bench/run.py measured the 5.8M-parameter miniature base about 1.2x slower in bf16 even where bf16
# matmuls are fast, and an SD1.5-shaped LoRA step 1.5-2x faster where AMX runs.
BF16_MIN_PARAMETERS = 50_000_000
PRECISION_NAMES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class PrecisionChoice:
    name: str  # "no" (float32), "fp16" or "bf16", as accelerate names them
    reason: str  # one line for people: why this one

    def describe(self) -> str:
        return f"Precision: {PRECISION_NAMES.get(self.name, self.name)} ({self.reason})."


def choose_precision(requested: str, device_type: str, unet_parameters: int | None) -> PrecisionChoice:
    """The precision to train or paint in. On a CPU, bfloat16 is chosen only where it was measured to run,
    and "auto" chooses it only where it was also measured faster. Raises ConfigError for an explicit
    bf16 that this CPU cannot run. `unet_parameters` None means "not known": "auto" then answers float32."""
    from ..errors import ConfigError

    if device_type == "cuda":
        if requested != "auto":
            return PrecisionChoice(requested, "as asked")
        import torch

        return (PrecisionChoice("bf16", "auto: this GPU supports bfloat16") if torch.cuda.is_bf16_supported()
                else PrecisionChoice("fp16", "auto: this GPU has no bfloat16"))
    if device_type != "cpu" and requested == "auto":  # Apple's mps and the rest
        return PrecisionChoice("no", "auto: float32 on this device")
    if device_type != "cpu":
        return PrecisionChoice(requested, "as asked")
    if requested == "bf16":
        support = bf16_support()
        if not support.runs:
            raise ConfigError(f"--precision bf16: {support.reason}; use --precision no (float32) or auto")
        slower = "" if support.faster else "; float32 is as fast or faster here, and auto would choose it"
        return PrecisionChoice("bf16", f"as asked; {support.described()}{slower}")
    if requested != "auto":
        return PrecisionChoice(requested, "as asked")
    if unet_parameters is None:
        return PrecisionChoice("no", "auto: the denoiser's size is not known yet")
    if unet_parameters < BF16_MIN_PARAMETERS:
        return PrecisionChoice("no", f"auto: the denoiser has {unet_parameters:,} parameters, too few for bfloat16 "
                                     f"to pay on a CPU (it can from {BF16_MIN_PARAMETERS:,})")
    support = bf16_support()
    if support.faster:
        return PrecisionChoice("bf16", f"auto: {support.described()}")
    return PrecisionChoice("no", f"auto: {support.described()}" + ("; float32 is faster" if support.runs else ""))


def check_bf16_runs() -> None:
    """Raise ConfigError if this CPU cannot run bfloat16: for callers about to compute in it."""
    choose_precision("bf16", "cpu", None)
