"""Ctrl-C and SIGTERM during a long job (train, tune): finish the step in flight, save, then stop."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class StopRequest:
    """Ctrl-C or `kill` (SIGTERM) during training asks the loop to stop after the step in flight, which it
    saves as a checkpoint; a second signal stops at once. A KeyboardInterrupt raised at an arbitrary
    point could land inside TensorBoard's writer queue and leave its thread unwoken, so that closing it
    waited up to its two-minute flush timer: the first signal only sets this flag."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstylelora: stopping after this step (press Ctrl-C again to stop at once)", file=sys.stderr)

    @contextmanager
    def on_signals(self) -> Iterator[None]:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for number, handler in previous.items():
            if handler is not signal.SIG_IGN:  # nohup and background jobs ignore SIGINT: keep that
                signal.signal(number, self._handle)
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
