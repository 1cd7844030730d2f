"""Stopping training cleanly: SIGINT/SIGTERM set a flag, --duration sets a deadline.

The epoch loop checks both between epochs and ends with a checkpoint; Part 1 and Part 2 may
call `stop_requested()` or `deadline_passed()` inside a long epoch. A second signal while the
first is pending restores the previous handlers and re-raises it, so a run that does not stop
in time can still be interrupted the ordinary way.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: Optional[int] = None
_deadline: Optional[float] = None
_previous: dict[int, Any] = {}


def _handler(signum: int, frame: Any) -> None:
    global _received
    if _received is not None:
        restore()
        signal.raise_signal(signum)
        return
    _received = signum


def install(started: float, duration: Optional[float]) -> None:
    """Catch SIGINT/SIGTERM (main thread only: elsewhere Python cannot) and set the deadline
    `duration` seconds after the time.perf_counter() value `started`."""
    global _received, _deadline
    _received = None
    _deadline = None if duration is None else started + duration
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            _previous[signum] = signal.signal(signum, _handler)


def restore() -> None:
    """Put back the handlers install() replaced and forget the deadline (the flag stays readable)."""
    global _deadline
    _deadline = None
    while _previous:
        signum, handler = _previous.popitem()
        signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def stop_requested() -> Optional[int]:
    """The signal number that asked training to stop, or None."""
    return _received


def deadline_passed() -> bool:
    """True once --duration seconds of training have passed."""
    return _deadline is not None and time.perf_counter() >= _deadline
