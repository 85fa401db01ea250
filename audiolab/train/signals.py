"""Ctrl-C and SIGTERM during training: finish the step, save, stop; a second signal aborts at once.

Under torchrun one Ctrl-C arrives twice, from the terminal and again from torchrun, which forwards the
signal it got to its workers; so a repeat within `REPEAT_WINDOW_S` of the first counts as the same one.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("audiolab.train")

REPEAT_WINDOW_S = 2.0

# The recording scopes now open, innermost last: a nested scope shares the outer one's record, so a signal
# heard while a run is starting (before the loop) still stops the loop. Without an outer scope, such a
# signal raises KeyboardInterrupt wherever the interpreter is, and Python drops it when that is a weakref or
# __del__ callback (seen: SQLAlchemy's class registry during the trial's start), so the run never stopped.
_open_scopes: list[list[int]] = []


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """While active, SIGINT/SIGTERM only record themselves; the loop checks and stops cleanly."""
    if _open_scopes:
        yield _open_scopes[-1]
        return
    received: list[int] = []
    first_at: list[float] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if received:
            if time.monotonic() - first_at[0] < REPEAT_WINDOW_S:
                return  # the launcher forwarding the same Ctrl-C
            raise KeyboardInterrupt  # a second signal: the user means it
        received.append(signum)
        first_at.append(time.monotonic())
        log.warning("received %s: finishing this step, saving last.pt and stopping",
                    signal.Signals(signum).name)

    for s in previous:
        signal.signal(s, handler)
    _open_scopes.append(received)
    try:
        yield received
    finally:
        _open_scopes.pop()
        for s, h in previous.items():
            signal.signal(s, h)
