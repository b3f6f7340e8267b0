"""Process ownership shared by training and the data pipeline: one owner per directory, and no orphans. The data
pipeline uses it for its output directory and its pool workers, training for the run directory and the ranks
torchrun or srun started.

- `hold_lock(directory, what)`: an exclusive flock on `<directory>/.lock` held for the holder's lifetime (the kernel
  drops it however the process ends, kill -9 included), with the holder's host, pid and start time inside, so a
  second run on the same directory fails at once naming the holder.
- `die_with_parent(parent_pid)`: the calling process exits when `parent_pid` dies. On Linux the kernel sends
  SIGKILL when the parent exits (prctl PR_SET_PDEATHSIG; it follows the parent *thread* that forked us, which is
  the main thread for a process pool and for torchrun); a daemon thread watching the parent pid backs it up where
  prctl is missing, and covers the parent dying before the signal was armed.

In cluster/, below both `launcher` and `data_pipeline`, because both need it: the data pipeline may not import the
launcher, and the launcher imports the data pipeline only for the packed-shard format and the default corpus. Like
the rest of cluster/ it imports neither of them (nor torch).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

LOCK_FILE = ".lock"
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
WATCHDOG_INTERVAL_S = 0.5


class DirectoryInUse(ValueError):
    """Another live process holds the directory's lock (the message names it)."""


def hold_lock(directory: str | os.PathLike, what: str) -> TextIO:
    """Hold `<directory>/.lock` until the returned file is closed (or the process ends); DirectoryInUse naming the
    holder when another process holds it. `what` names the directory in the message, e.g. "output=/data/x"."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    lock = open(Path(directory) / LOCK_FILE, "a+")
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown holder"
        lock.close()
        raise DirectoryInUse(
            f"{what} is in use by another run ({holder}): wait for it to finish or stop it, or choose another directory"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
    lock.flush()
    return lock


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(WATCHDOG_INTERVAL_S)


def die_with_parent(parent_pid: int) -> None:
    """Make this process die with `parent_pid` (its parent now): see the module docstring."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="die-with-parent").start()
