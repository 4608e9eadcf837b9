"""Ctrl-C and SIGTERM during training: remember the request, let the loop stop cleanly.

The engine polls ``requested`` at window boundaries and between eval batches. Stopping in the
middle of a window would leave half-accumulated gradients inside the backend's optimizer state
(optax.MultiSteps keeps them there), so the checkpoint would not be the state of a step.
A second Ctrl-C raises KeyboardInterrupt at once, for a user who cannot wait.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number, as shells report them


class StopRequest:
    """Context manager: SIGINT/SIGTERM set ``requested`` instead of killing the process."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread; elsewhere (a library
        # caller's worker thread) the default behaviour stays.
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
