"""No silent hang: a rank whose peer died, vanished or stalled says which one and exits, well before the collective
timeout.

Why by hand: torch's own watchdog covers NCCL only (and reports a timed-out collective, not who failed to arrive);
gloo blocks until `trainer.dist_timeout_s` in a partition and raises "Connection reset by peer" naming nobody when a
node dies. This runs beside the process group, through the rendezvous store every launcher already has (torchrun's
agent store, or rank 0's store under a plain srun), on a client connection of its own, in a daemon thread:

- Heartbeats. Every `interval` seconds each rank writes `<seq> <progress> <what its main thread is doing>` under
  its own key. Rank 0 reads every rank's key in one round trip; the others read rank 0's. A rank whose sequence
  number has not moved for `trainer.peer_timeout_s` (measured on the reader's own clock) is lost: killed, stopped,
  its node down or cut off. A rank that cannot reach the store for that long is itself cut off (or rank 0's node,
  which holds the store under srun, is lost).
- Hangs. `progress` counts finished steps, and evaluation batches and saves inside a step (`note_progress`).
  Once every rank has finished its first step (compilation excluded), rank 0 declares a hang when no rank's
  progress moved for `trainer.hang_timeout_s`: the ranks with the least progress are the ones that did not arrive,
  and among them those whose main thread is not waiting inside torch.distributed or autograd (an endless loop, a
  stuck read) are named first.
- The verdict goes into the store; every rank that reads it (or reaches one itself) logs it, dumps the Python
  stacks of all its threads to stderr (faulthandler), dumps the NCCL flight recorder when the backend is NCCL, and
  exits with EXIT_PEER_FAILURE (75). torchrun then stops the node's other ranks and exits non-zero, so Slurm
  requeues, and the relaunch resumes from the newest checkpoint.

Bounds: a lost peer is named within peer_timeout_s + 2 x interval of its last heartbeat (interval =
peer_timeout_s / 10, at least 1 s); a hang within hang_timeout_s + 2 x interval. When a collective fails first
(gloo's "Connection reset by peer" when a node's processes die), the trainer waits up to that bound for the
verdict that names the lost rank before it gives up and raises the raw error (`explain_failure`).
"""

from __future__ import annotations

import contextlib
import datetime
import faulthandler
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

log = logging.getLogger("launcher")

EXIT_PEER_FAILURE = 75  # EX_TEMPFAIL: a peer was lost or the run hung; relaunching resumes from the last checkpoint
_VERDICT = "verdict"
# Where a main thread waits on its peers: a collective (torch.distributed, DeepSpeed's comm) or a backward that
# runs DDP's/FSDP's gradient collectives inside autograd.
_WAITING_PLACES = ("/torch/distributed/", "/torch/autograd/", "/deepspeed/comm/", "/torch/nn/parallel/")

_active: Optional["Watchdog"] = None


def note_progress() -> None:
    """The main thread moved on (a step, an evaluation batch, a save): the watchdog's hang clock restarts."""
    if _active is not None:
        _active.progress += 1


@contextlib.contextmanager
def watch_peers(rank: int, world_size: int, peer_timeout_s: float, hang_timeout_s: float):
    """The watchdog around a run's body (nothing for one process). A collective that fails in the body waits for
    the verdict naming the lost peer (`Watchdog.explain_failure`) before its error goes on."""
    import torch.distributed as dist

    watchdog = Watchdog.start_for_run(rank, world_size, peer_timeout_s, hang_timeout_s)
    try:
        yield watchdog
    except (dist.DistError, RuntimeError) as exc:
        if watchdog is not None and _is_peer_failure(exc):
            log.error("a collective failed (%s): waiting for the watchdog to name the lost peer", exc)
            watchdog.explain_failure()
        raise
    finally:
        if watchdog is not None:
            watchdog.close()


def _is_peer_failure(exc: BaseException) -> bool:
    """An error of the process group's transport (a peer gone), not one the run raises on every rank on purpose."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or any(
        sign in text for sign in ("Connection reset", "Connection closed", "Broken pipe", "gloo", "NCCL")
    )


@dataclass
class _Seen:
    seq: int = -1
    at: float = 0.0  # reader's monotonic time when `seq` last changed


class Watchdog:
    def __init__(
        self,
        store,
        rank: int,
        world_size: int,
        *,
        peer_timeout_s: float,
        hang_timeout_s: float,
        store_address: str,
        interval_s: Optional[float] = None,
    ) -> None:
        self.store, self.rank, self.world_size = store, rank, world_size
        self.peer_timeout_s, self.hang_timeout_s = peer_timeout_s, hang_timeout_s
        self.interval_s = interval_s or max(1.0, peer_timeout_s / 10)
        self.store_address = store_address
        self.host = socket.gethostname()
        self.progress = 0
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="loom-watchdog", daemon=True)
        self._monitor_thread = threading.Thread(target=self._monitor, name="loom-watchdog-monitor", daemon=True)
        self._reached_store_at = 0.0
        self._store_error = ""
        self._acting = threading.Lock()
        self._seen = [_Seen() for _ in range(world_size)]
        self._hosts: list[str] = []
        self._last_progress: tuple[int, ...] = ()
        self._progress_moved_at = 0.0
        self._failed_collective = threading.Event()

    # ------------------------------------------------------------------------------------------ lifecycle
    @classmethod
    def start_for_run(cls, rank: int, world_size: int, peer_timeout_s: float, hang_timeout_s: float):
        """The watchdog of this rank, started, or None for one process or peer_timeout_s=0. The store is the one
        at MASTER_ADDR:MASTER_PORT (torchrun's agent store, or rank 0's under srun), through a new client."""
        global _active
        if world_size < 2 or peer_timeout_s <= 0:
            return None
        import torch.distributed as dist

        if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
            log.warning("peer watchdog off: no MASTER_ADDR/MASTER_PORT to find the rendezvous store at")
            return None
        host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        interval = max(1.0, peer_timeout_s / 10)
        try:
            store = dist.TCPStore(
                host, port, is_master=False, timeout=datetime.timedelta(seconds=interval), wait_for_workers=False
            )
        except (RuntimeError, dist.DistError) as exc:  # the process group reached it a moment ago: say so, go on
            log.warning("peer watchdog off: no client to the rendezvous store at %s:%d (%s)", host, port, exc)
            return None
        # Keys of this launch only: torchrun's agent store outlives a restart of its workers.
        run = "/".join(
            os.environ.get(name, "")
            for name in ("TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "SLURM_JOB_ID", "SLURM_RESTART_COUNT")
        )
        watchdog = cls(
            dist.PrefixStore(f"loom_watchdog/{run}/", store),
            rank,
            world_size,
            peer_timeout_s=peer_timeout_s,
            hang_timeout_s=hang_timeout_s,
            store_address=f"{host}:{port}",
            interval_s=interval,
        )
        watchdog.start()
        _active = watchdog
        return watchdog

    def start(self) -> None:
        self.store.set(f"host/{self.rank}", f"{self.host} (pid {os.getpid()})")
        self._publish(0)
        now = time.monotonic()
        for seen in self._seen:
            seen.at = now
        self._progress_moved_at = self._reached_store_at = now
        self._thread.start()
        self._monitor_thread.start()

    def close(self) -> None:
        """Stop watching (the run ended normally: ranks leave at slightly different times)."""
        global _active
        self._stop.set()
        if _active is self:
            _active = None

    def explain_failure(self) -> None:
        """A collective failed in the main thread: wait (up to the detection bound) for the verdict naming the
        lost peer, which ends the process; return if none comes, and the caller raises the original error."""
        self._failed_collective.set()
        deadline = time.monotonic() + self.peer_timeout_s + 3 * self.interval_s
        while time.monotonic() < deadline and (self._thread.is_alive() or self._acting.locked()):
            time.sleep(0.2)

    # ------------------------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        seq, last_turn = 0, time.monotonic()
        while not self._stop.wait(self.interval_s):
            last_turn = self._forgive_own_pause(last_turn)
            try:
                seq += 1
                self._publish(seq)
                verdict = self.store.get(_VERDICT).decode() if self.store.check([_VERDICT]) else None
                if verdict is None:
                    verdict = self._judge_everyone() if self.rank == 0 else self._judge_rank_0()
                    if verdict is not None:
                        self.store.set(_VERDICT, verdict)
                self._reached_store_at = time.monotonic()
            except Exception as exc:  # noqa: BLE001 - the store out of reach: the monitor thread judges that
                self._store_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                continue
            if verdict is not None and not self._stop.is_set():
                self._act(verdict)
                return

    def _monitor(self) -> None:
        """The store's own clock: in a partition a TCPStore call can block for ever (its timeout covers waiting
        for a key, not a dead socket), so this thread, which never touches the store, watches the other."""
        last_turn = time.monotonic()
        while not self._stop.wait(self.interval_s):
            last_turn = self._forgive_own_pause(last_turn)
            away = time.monotonic() - self._reached_store_at
            if away > self.peer_timeout_s and not self._stop.is_set():
                self._act(
                    f"rank {self.rank} on {self.host} has not reached the rendezvous store at {self.store_address} "
                    f"for {away:.0f} s ({self._store_error or 'a store call has not returned'}): the node holding "
                    f"it (rank 0's, or the first node's) is lost, or this node is cut off"
                )
                return

    def _forgive_own_pause(self, last_turn: float) -> float:
        """When this process itself was not running (stopped with the whole job, as a Slurm test or a debugger
        does; a suspended VM), the silence of the others and of the store during that time says nothing about
        them: every clock restarts. Returns this turn's time."""
        now = time.monotonic()
        if now - last_turn > 3 * self.interval_s:
            for seen in self._seen:
                seen.at = now
            self._progress_moved_at = self._reached_store_at = now
        return now

    def _publish(self, seq: int) -> None:
        self.store.set(f"beat/{self.rank}", f"{seq} {self.progress} {self._main_thread_place()}")

    def _main_thread_place(self) -> str:
        """`waiting <file>:<line> <function>` when the main thread waits on peers, else `running ...`."""
        frame = sys._current_frames().get(self._main)
        if frame is None:
            return "running (main thread gone)"
        code = frame.f_code
        state = "waiting" if any(place in code.co_filename for place in _WAITING_PLACES) else "running"
        return f"{state} {code.co_filename}:{frame.f_lineno} {code.co_name}"

    def _beats(self, ranks: list[int]) -> list[tuple[int, int, str]]:
        values = self.store.multi_get([f"beat/{r}" for r in ranks])
        parsed = []
        for value in values:
            seq, progress, place = value.decode().split(" ", 2)
            parsed.append((int(seq), int(progress), place))
        return parsed

    def _host(self, rank: int) -> str:
        if not self._hosts:
            self._hosts = [v.decode() for v in self.store.multi_get([f"host/{r}" for r in range(self.world_size)])]
        return self._hosts[rank]

    def _judge_rank_0(self) -> Optional[str]:
        (seq, _, _), now = self._beats([0])[0], time.monotonic()
        return self._stale([0], [seq], now)

    def _judge_everyone(self) -> Optional[str]:
        ranks = list(range(self.world_size))
        if not self.store.check([f"beat/{r}" for r in ranks]):
            return None  # not every rank has started its watchdog yet (each publishes before training starts)
        beats, now = self._beats(ranks), time.monotonic()
        lost = self._stale(ranks, [b[0] for b in beats], now)
        if lost is not None or self.hang_timeout_s <= 0:
            return lost
        progress = tuple(b[1] for b in beats)
        if progress != self._last_progress:
            self._last_progress, self._progress_moved_at = progress, now
        if min(progress) < 1 or now - self._progress_moved_at < self.hang_timeout_s:
            return None  # before every rank's first step (compilation), or still moving
        least = min(progress)
        behind = [r for r in ranks if progress[r] == least]
        named = [r for r in behind if beats[r][2].startswith("running")] or behind
        who = "; ".join(f"rank {r} on {self._host(r)} at {beats[r][2]}" for r in named)
        return (
            f"hang: no rank made progress for {now - self._progress_moved_at:.0f} s (trainer.hang_timeout_s="
            f"{self.hang_timeout_s:g}); did not arrive: {who}"
        )

    def _stale(self, ranks: list[int], seqs: list[int], now: float) -> Optional[str]:
        lost = []
        for rank, seq in zip(ranks, seqs):
            seen = self._seen[rank]
            if seq != seen.seq:
                seen.seq, seen.at = seq, now
            elif now - seen.at > self.peer_timeout_s:
                lost.append(rank)
        if not lost:
            return None
        silent = max(now - self._seen[r].at for r in lost)
        who = ", ".join(f"rank {r} on {self._host(r)}" for r in lost)
        return (
            f"lost {who}: no heartbeat for {silent:.0f} s (trainer.peer_timeout_s={self.peer_timeout_s:g}): its "
            f"process was killed or stopped, or its node is down or cut off"
        )

    def _act(self, verdict: str) -> None:
        """Say it, dump this rank's stacks (and NCCL's flight recorder), give the other ranks time to read the
        verdict, and end the process: the main thread may be blocked in a collective that never returns."""
        if not self._acting.acquire(blocking=False):
            return  # the other watchdog thread is already on its way out
        header = f"watchdog (rank {self.rank} on {self.host}, pid {os.getpid()}): {verdict}"
        log.error("%s", header)
        print(header, file=sys.stderr, flush=True)
        print(f"watchdog: Python stacks of rank {self.rank} on {self.host}:", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        _dump_flight_recorder(self.rank)
        sys.stderr.flush()
        time.sleep(2 * self.interval_s)  # rank 0 may hold the store (srun): let the others read the verdict
        os._exit(EXIT_PEER_FAILURE)


def _dump_flight_recorder(rank: int) -> None:
    """Under NCCL, write the flight recorder's record of the recent collectives (TORCH_NCCL_TRACE_BUFFER_SIZE, set
    by launcher/distributed.py) to TORCH_FR_DUMP_TEMP_FILE<rank>. Nothing for gloo."""
    import torch.distributed as dist

    try:
        if not dist.is_initialized() or dist.get_backend() != "nccl":
            return
        from torch._C._distributed_c10d import _dump_fr_trace

        path = os.environ.get("TORCH_FR_DUMP_TEMP_FILE", "/tmp/nccl_trace_rank_") + str(rank)
        with open(path, "wb") as out:
            out.write(_dump_fr_trace())
        print(f"watchdog: NCCL flight recorder of rank {rank} written to {path}", file=sys.stderr, flush=True)
    except Exception as exc:  # noqa: BLE001 - the dump is a best effort on the way out
        print(f"watchdog: NCCL flight recorder dump failed: {exc}", file=sys.stderr, flush=True)
