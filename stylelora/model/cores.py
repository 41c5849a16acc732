"""How many CPU threads a stylelora process computes with: its share of the cores among the stylelora processes
running on this machine.

torch starts a compute thread per core in every process, and two such processes on one machine stall on each
other's spin-waits: on a 2-core machine, two 300-step trainings started together took 339.8 s to finish
both, against 33.9 s for one alone, and 44.1 s for the two with one thread each. So each stylelora process
that computes registers in a small folder under the user's cache (a file named by its process id) and sets
torch's threads to its share: the cores divided by the live registered processes, at least one. A training
looks again every few seconds, so a run that started alone gives up cores when a second one starts, and takes
them back when it ends. `--threads N`, or OMP_NUM_THREADS set by the user, fixes the number instead.

No maintained library does this across processes: torch, accelerate and threadpoolctl set threads within
one process only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ..paths import user_cache
from .allocator import keep_freed_memory

THREADS_HELP = "CPU threads to compute with"  # --threads, as train, generate and grid declare it
THREADS_DEFAULT = "this machine's cores, shared among the stylelora processes computing on it"
RECHECK_SECONDS = 2.0  # how often a running training counts the registered processes again


def registry() -> Path:
    return user_cache("processes")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def live_processes(folder: Path) -> list[int]:
    """The registered processes that still run; the files of those that do not (a kill, a crash) are removed."""
    alive = []
    for entry in folder.glob("*.pid"):
        try:
            pid = int(entry.stem)
        except ValueError:
            continue
        if _alive(pid):
            alive.append(pid)
        else:
            entry.unlink(missing_ok=True)
    return sorted(alive)


class CoreShare:
    """This process's share of the cores while it computes. Use as a context manager; nested uses in one
    process (a training inside the UI) count the process once."""

    _depth = 0  # this process's nesting of shares: registered while above 0

    def __init__(self, threads: int | None = None, say: Callable[[str], None] = lambda message: None,
                 folder: Path | None = None, cores: int | None = None):
        user_omp = os.environ.get("OMP_NUM_THREADS", "")
        self.fixed = threads or (int(user_omp) if user_omp.isdigit() and int(user_omp) > 0 else None)
        self.fixed_by = "--threads" if threads else "OMP_NUM_THREADS"
        self.say, self.folder = say, folder or registry()
        self.cores = cores or os.cpu_count() or 1
        self.threads: int | None = None
        self.count = 1  # the stylelora processes sharing the machine at the last look
        self.checked = 0.0
        self.before: int | None = None

    def __enter__(self) -> CoreShare:
        import torch

        keep_freed_memory()  # every process that computes comes through here (allocator.py)
        self.before = torch.get_num_threads()
        if CoreShare._depth == 0:  # a fixed number of threads still takes a share of the machine
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                (self.folder / f"{os.getpid()}.pid").write_text(str(os.getpid()))
            except OSError:  # a read-only cache: compute with every core, as torch would
                pass
        CoreShare._depth += 1
        self.refresh(force=True)
        return self

    def __exit__(self, *exc_info) -> None:
        import torch

        CoreShare._depth -= 1
        if CoreShare._depth == 0:
            (self.folder / f"{os.getpid()}.pid").unlink(missing_ok=True)
        if self.before is not None:
            torch.set_num_threads(self.before)

    def share(self) -> tuple[int, int]:
        """The threads this process should use, and how many stylelora processes share the machine."""
        if self.fixed is not None:
            return self.fixed, 1
        try:
            count = max(1, len(live_processes(self.folder)))
        except OSError:
            count = 1
        return max(1, self.cores // count), count

    def refresh(self, force: bool = False) -> int:
        """Set torch's threads to the current share (at most every RECHECK_SECONDS unless forced); say it
        in one line when it is first set and whenever it changes."""
        import torch

        if not force and time.monotonic() - self.checked < RECHECK_SECONDS:
            return self.threads or torch.get_num_threads()
        self.checked = time.monotonic()
        threads, count = self.share()
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.say(self.describe(threads, count, first=self.threads is None))
            self.threads, self.count = threads, count
        return threads

    def announce(self, say: Callable[[str], None]) -> None:
        """Say the share now (a training says it once its folder and base have loaded, so that a bad folder is
        still a one-line error), and every change from here on."""
        self.say = say
        say(self.describe(self.threads or 1, self.count, first=True))

    def describe(self, threads: int, count: int, first: bool) -> str:
        now = "" if first else " now"
        if self.fixed is not None:
            return f"CPU threads: {threads} (set by {self.fixed_by})."
        if count == 1:
            return f"CPU threads{now}: {threads}, all {self.cores} cores (no other stylelora process is computing; " \
                   "--threads N to choose)."
        return (f"CPU threads{now}: {threads} of {self.cores} cores, shared with {count - 1} other stylelora "
                f"process{'es' if count > 2 else ''} on this machine (--threads N to choose).")
