"""Ctrl-C and SIGTERM during training: finish the step, save, stop; a second signal aborts at once."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("audiolab.train")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[list[int]]:
    """While active, SIGINT/SIGTERM only record themselves; the loop checks and stops cleanly."""
    received: list[int] = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: Any) -> None:
        if received:  # a second signal: the user means it
            raise KeyboardInterrupt
        received.append(signum)
        log.warning("received %s: finishing this step, saving last.pt and stopping",
                    signal.Signals(signum).name)

    for s in previous:
        signal.signal(s, handler)
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
