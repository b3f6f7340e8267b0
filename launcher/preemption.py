"""Graceful stop on SIGTERM / SIGUSR1 (Slurm sends USR1 ahead of preemption with --signal=USR1@120).

The handler only sets a flag; the loop checks it at the end of each step (all ranks agree through an all-reduce),
saves a checkpoint and exits 0, so the job can be requeued and resume exactly.
"""
from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)


class StopRequest:
    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def install(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.requested = True
        self.signal_name = signal.Signals(signum).name
