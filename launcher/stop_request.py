"""The stop flag SIGTERM and SIGUSR1 set (Slurm sends USR1 ahead of a time limit or preemption, SIGTERM on
`scontrol requeue`): the handler only records the signal, and the training loop saves a checkpoint and exits 0 at
the end of the step (launcher/preemption.py makes every rank agree on that step).

Apart from launcher/preemption.py and free of torch, so `python -m launcher.train` installs it first thing: a
signal that arrives while the ranks are still importing torch or building the model is kept, not fatal.
"""

from __future__ import annotations

import signal


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
