"""`python -m launcher.torchrun_node <torchrun arguments>`: torchrun for one node of a Slurm job, stopping cleanly
on SIGTERM and SIGUSR1.

Under Slurm's usual process tracking (proctrack/cgroup) a signal for the job step reaches only the task leader,
torchrun, never its workers, so torchrun has to pass it on. Plain torchrun can (`--signals-to-handle`), but then
dies with a `SignalException` traceback and exit code 1 after its workers have checkpointed and exited 0, and
every further signal (Slurm's re-sent warning, the SIGTERM of the time limit) interrupts its wait for the workers.
This wrapper runs torchrun's own `run` with one handler of its own for both signals: the first one raises
torchrun's SignalException inside the agent, which forwards it to every worker and waits for them (up to
TORCH_ELASTIC_SHUTDOWN_TIMEOUT); later ones are ignored; the process then exits 0 with one line saying why. A
signal that arrives before the workers started ends the node at once, with nothing to save.

The workers (launcher.train) checkpoint at the end of their current step and exit 0 (launcher/preemption.py);
whether the job is requeued is decided after the step by slurm/train.sbatch and launcher/requeue.py.
"""

from __future__ import annotations

import signal
import sys
from typing import Optional

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
TORCHRUN_HANDLES = "SIGINT,SIGHUP,SIGQUIT"  # torchrun's own handling, minus the two handled here


class _Stopped(Exception):
    """The node was told to stop (before its agent ran, or by the agent's SignalException)."""


_received: list[signal.Signals] = []
_phase = "starting"  # starting -> running (torchrun's agent) -> done


def _on_stop_signal(signum: int, frame) -> None:  # noqa: ARG001 - signal handler signature
    if _received or _phase == "done":
        return  # already stopping (the agent is waiting for the workers), or finished: nothing to do
    _received.append(signal.Signals(signum))
    if _phase == "starting":
        raise _Stopped()  # no worker yet: nothing to tell, nothing to save
    from torch.distributed.elastic.multiprocessing.api import SignalException

    raise SignalException(f"torchrun node got {signal.Signals(signum).name}", sigval=signal.Signals(signum))


def _ignore_stop_signals() -> None:
    """SIG_IGN, not a handler: Python resets its own handlers to "terminate" while the interpreter exits."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _launch(argv: list[str]) -> None:
    global _phase
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import record
    from torch.distributed.run import parse_args, run

    args = parse_args([f"--signals-to-handle={TORCHRUN_HANDLES}", *argv])

    @record  # a failing worker is reported the way torchrun reports it
    def launch() -> None:
        run(args)

    _phase = "running"
    try:
        launch()
    except SignalException as exc:
        raise _Stopped() from exc
    finally:
        _phase = "done"


def main(argv: Optional[list[str]] = None) -> int:
    for sig in STOP_SIGNALS:  # first, before the seconds of importing torch
        signal.signal(sig, _on_stop_signal)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        _launch(argv)
    except _Stopped:
        _ignore_stop_signals()
        print(
            f"loom: torchrun node stopped on {_received[0].name}: the workers were asked to checkpoint and exit",
            flush=True,
        )
        return 0
    _ignore_stop_signals()
    return 0


if __name__ == "__main__":
    sys.exit(main())
